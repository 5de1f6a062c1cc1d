//! `vramctl`: the command line for vramd. It talks HTTP to the daemon's socket (tables for
//! people, `--json` for scripts), and `vramctl notify` is the desktop notification agent.
//!
//! Exit status: 0 on success; 1 when vramd refused or failed the request (the message says
//! why, with the HTTP status and error code); 2 for a bad command line; 3 when vramd cannot
//! be reached at all.

mod client;
mod format;
mod notify;
mod sentences;
mod stream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use client::{Client, ClientError};

#[derive(Parser, Debug)]
#[command(name = "vramctl", version, about = "Control and watch vramd, the GPU memory arbiter")]
struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = "VRAMD_SOCKET", default_value = "/run/vramd/vramd.sock")]
    socket: PathBuf,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Memory and every model: state, bytes held, page-cache residency, last use.
    Status,
    /// The models that hold memory now, with their workers.
    Ps,
    /// Load a model now (a failed model is retried).
    Load { model: String },
    /// Unload a model: hard stops its worker (the default); soft keeps the weights.
    Unload {
        model: String,
        /// Free the KV cache and compute buffers, keep the weights loaded.
        #[arg(long, conflicts_with = "hard")]
        soft: bool,
        /// Stop the worker, giving back everything (the default).
        #[arg(long)]
        hard: bool,
    },
    /// Never evict this model to make room.
    Pin { model: String },
    /// Let this model be evicted again.
    Unpin { model: String },
    /// How much memory a model needs: an image model at a size, an LLM at a context.
    Estimate {
        model: String,
        /// Image size, WIDTHxHEIGHT.
        #[arg(long, value_parser = parse_size)]
        size: Option<(u32, u32)>,
        /// LLM context length in tokens.
        #[arg(long)]
        context: Option<u32>,
    },
    /// Follow what vramd does, one line per event.
    Events {
        /// Start with the last N events.
        #[arg(long, default_value_t = 0)]
        replay: usize,
    },
    /// Chat with an LLM: each line you type is a turn; answers stream as they come.
    Chat {
        model: String,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
        #[arg(long)]
        max_tokens: Option<u32>,
    },
    /// Generate an image into a PNG file, with a progress bar.
    Image {
        model: String,
        prompt: String,
        /// Where to write the PNG.
        #[arg(short, long)]
        output: PathBuf,
        /// WIDTHxHEIGHT (default 512x512).
        #[arg(long, value_parser = parse_size)]
        size: Option<(u32, u32)>,
        #[arg(long)]
        steps: Option<u32>,
        #[arg(long)]
        seed: Option<i64>,
        #[arg(long)]
        negative: Option<String>,
    },
    /// Show vramd's signals as desktop notifications (run by vramd-notify.service).
    Notify {
        /// Models or kinds (`llm`, `image`) never to notify about; comma-separated, repeatable.
        #[arg(long, value_name = "LIST")]
        quiet_for: Vec<String>,
        /// How long a burst of signals may stay quiet before it is shown, in milliseconds.
        #[arg(long, default_value_t = 800, hide = true)]
        settle_ms: u64,
    },
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X', '×'])
        .ok_or_else(|| format!("{s:?} is not WIDTHxHEIGHT"))?;
    let n = |t: &str| {
        t.trim()
            .parse::<u32>()
            .map_err(|_| format!("{s:?} is not WIDTHxHEIGHT"))
    };
    Ok((n(w)?, n(h)?))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Notify { quiet_for, settle_ms } = &cli.command {
        return notify_agent(quiet_for, *settle_ms);
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vramctl: {e}");
            match e {
                ClientError::Unreachable { .. } => ExitCode::from(3),
                _ => ExitCode::from(1),
            }
        }
    }
}

fn notify_agent(quiet_for: &[String], settle_ms: u64) -> ExitCode {
    let opts = notify::Options {
        quiet: sentences::Quiet::parse(quiet_for.iter().map(String::as_str)),
        settle: Duration::from_millis(settle_ms),
        max_burst: Duration::from_millis(settle_ms * 4),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vramctl notify: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(notify::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vramctl notify: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print(json_out: bool, value: &Value, human: impl FnOnce(&Value) -> String) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(value).expect("JSON prints"));
    } else {
        print!("{}", human(value));
    }
}

fn run(cli: &Cli) -> Result<(), ClientError> {
    let c = Client::new(&cli.socket);
    let j = cli.json;
    let model_path = |m: &str, action: &str| format!("/v1/models/{}/{action}", url_segment(m));
    match &cli.command {
        Cmd::Status => print(j, &c.get("/v1/status")?, format::status),
        Cmd::Ps => {
            let status = c.get("/v1/status")?;
            if j {
                print(true, &Value::Array(format::running(&status)), |_| String::new());
            } else {
                print!("{}", format::ps(&status));
            }
        }
        Cmd::Load { model } => {
            let v = c.post(&model_path(model, "load"), &json!({}))?;
            print(j, &v, |v| match v["load_ms"].as_u64() {
                Some(ms) => format!(
                    "{model} loaded in {:.1} s: {}\n",
                    ms as f64 / 1000.0,
                    vramd::units::format_size_human(v["bytes"]["total"].as_u64().unwrap_or(0))
                ),
                None => format!("{model} was already loaded\n"),
            });
        }
        Cmd::Unload { model, soft, .. } => {
            let mode = if *soft { "soft" } else { "hard" };
            let v = c.post(&model_path(model, "unload"), &json!({ "mode": mode }))?;
            print(j, &v, |v| {
                format!(
                    "{model} {}: {} freed\n",
                    if *soft {
                        "soft-unloaded (weights kept)"
                    } else {
                        "unloaded"
                    },
                    vramd::units::format_size_human(v["freed_bytes"].as_u64().unwrap_or(0))
                )
            });
        }
        Cmd::Pin { model } => {
            let v = c.post(&model_path(model, "pin"), &json!({}))?;
            print(j, &v, |_| format!("{model} pinned: it is never evicted to make room\n"));
        }
        Cmd::Unpin { model } => {
            let v = c.post(&model_path(model, "unpin"), &json!({}))?;
            print(j, &v, |_| format!("{model} unpinned\n"));
        }
        Cmd::Estimate { model, size, context } => {
            let mut path = format!("/v1/estimate?model={}", url_segment(model));
            if let Some((w, h)) = size {
                path.push_str(&format!("&width={w}&height={h}"));
            }
            if let Some(n) = context {
                path.push_str(&format!("&context={n}"));
            }
            let e = c.get(&path)?;
            let free = c
                .get("/v1/status")
                .ok()
                .and_then(|s| s["memory"]["free_bytes"].as_u64());
            print(j, &e, |e| format::estimate(e, free));
        }
        Cmd::Events { replay } => stream::events(&c, *replay, j)?,
        Cmd::Chat {
            model,
            system,
            max_tokens,
        } => stream::chat(&c, model, system.as_deref(), *max_tokens, j)?,
        Cmd::Image {
            model,
            prompt,
            output,
            size,
            steps,
            seed,
            negative,
        } => stream::image(
            &c,
            &stream::ImageArgs {
                model,
                prompt,
                output,
                size: *size,
                steps: *steps,
                seed: *seed,
                negative: negative.as_deref(),
            },
            j,
        )?,
        Cmd::Notify { .. } => unreachable!("handled in main"),
    }
    Ok(())
}

/// Percent-encodes what is not allowed in a path segment or query value (model names are
/// letters, digits and `._-:`, but a mistyped one must still reach vramd intact).
fn url_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b':' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_segments() {
        assert_eq!(parse_size("1024x768"), Ok((1024, 768)));
        assert_eq!(parse_size("512×512"), Ok((512, 512)));
        assert!(parse_size("big").is_err());
        assert_eq!(url_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(url_segment("llama3:8b"), "llama3:8b");
    }

    #[test]
    fn the_command_line_parses() {
        Cli::command_for_tests().debug_assert();
        let cli = Cli::try_parse_from(["vramctl", "--json", "unload", "chat", "--soft"]).unwrap();
        assert!(cli.json);
        assert!(matches!(cli.command, Cmd::Unload { soft: true, .. }));
        assert!(Cli::try_parse_from(["vramctl", "unload", "chat", "--soft", "--hard"]).is_err());
    }

    impl Cli {
        fn command_for_tests() -> clap::Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}

//! `vramctl`: the command line for vramd. It talks HTTP to the daemon's socket (tables for
//! people, `--json` for scripts); `vramctl top` is a live view in the terminal, and
//! `vramctl notify` the desktop notification agent.
//!
//! Exit status: 0 on success; 1 when vramd refused or failed the request (the message says
//! why, with the HTTP status and error code); 2 for a bad command line; 3 when vramd cannot
//! be reached at all.

mod bus_choice;
mod client;
mod escalate;
mod format;
mod keys;
mod notify;
mod sentences;
mod story;
mod stream;
mod top;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use vramd::cli::ctl::{Cli, Cmd};
use vramd::config::BusKind;

use client::{Client, ClientError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Notify { .. } = &cli.command {
        return notify_agent(&cli.command);
    }
    if let Cmd::Keys { action, file } = &cli.command {
        return keys::run(action, file, cli.json);
    }
    if let Cmd::Top { once, replay } = &cli.command {
        let opts = top::Options {
            once: *once,
            replay: *replay,
        };
        return top::run(&cli.socket, &opts);
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

/// `vramctl notify`: runs until the session ends; exits 0 at once when there is nothing to
/// do (vramd's D-Bus interface is off, or another agent runs in this session).
fn notify_agent(cmd: &Cmd) -> ExitCode {
    let Cmd::Notify {
        bus,
        config,
        show_routine,
        quiet_for,
        wait_notice_ms,
    } = cmd
    else {
        unreachable!("called for notify only")
    };
    let opts = notify::Options {
        settings: story::Settings {
            quiet: sentences::Quiet::parse(quiet_for.iter().map(String::as_str)),
            routine: *show_routine,
            wait_notice_after: Duration::from_millis(*wait_notice_ms),
        },
        bus: bus.as_deref().map(|b| match b {
            "session" => BusKind::Session,
            _ => BusKind::System,
        }),
        config: config.clone(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vramctl notify: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(notify::run(opts));
    ExitCode::SUCCESS
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
    match &cli.command {
        Cmd::Status => print(j, &c.get("/v1/status")?, format::status),
        Cmd::Ps => ps(&c, j)?,
        Cmd::Load { model } => or_over_dbus(load(&c, model, j), "Load", &(model.as_str(),), || {
            format!("{model} loaded")
        })?,
        Cmd::Unload { model, soft, .. } => {
            let mode = if *soft { "soft" } else { "hard" };
            or_over_dbus(unload(&c, model, *soft, j), "Unload", &(model.as_str(), mode), || {
                format!("{model} unloaded ({mode})")
            })?
        }
        Cmd::Pin { model } => {
            let done = c.post(&model_path(model, "pin"), &json!({})).map(|v| {
                print(j, &v, |_| format!("{model} pinned: it is never evicted to make room\n"));
            });
            or_over_dbus(done, "SetPinned", &(model.as_str(), true), || format!("{model} pinned"))?
        }
        Cmd::Unpin { model } => {
            let done = c.post(&model_path(model, "unpin"), &json!({})).map(|v| {
                print(j, &v, |_| format!("{model} unpinned\n"));
            });
            or_over_dbus(done, "SetPinned", &(model.as_str(), false), || {
                format!("{model} unpinned")
            })?
        }
        Cmd::Estimate { model, size, context } => estimate(&c, model, *size, *context, j)?,
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
        Cmd::Notify { .. } | Cmd::Top { .. } | Cmd::Keys { .. } => unreachable!("handled in main"),
    }
    Ok(())
}

/// `/v1/models/{model}/{action}`, the model name encoded.
fn model_path(model: &str, action: &str) -> String {
    format!("/v1/models/{}/{action}", url_segment(model))
}

/// `vramctl ps`: the models that hold memory.
fn ps(c: &Client, j: bool) -> Result<(), ClientError> {
    let status = c.get("/v1/status")?;
    if j {
        print(true, &Value::Array(format::running(&status)), |_| String::new());
    } else {
        print!("{}", format::ps(&status));
    }
    Ok(())
}

/// `vramctl load MODEL`.
fn load(c: &Client, model: &str, j: bool) -> Result<(), ClientError> {
    let v = c.post(&model_path(model, "load"), &json!({}))?;
    print(j, &v, |v| match v["load_ms"].as_u64() {
        Some(ms) => format!(
            "{model} loaded in {:.1} s: {}\n",
            ms as f64 / 1000.0,
            vramd::units::format_size_human(v["bytes"]["total"].as_u64().unwrap_or(0))
        ),
        None => format!("{model} was already loaded\n"),
    });
    Ok(())
}

/// A state change the socket refused with 403, tried again over D-Bus, where polkit may let
/// an administrator allow it (see `escalate.rs`); any other result is the socket's.
fn or_over_dbus<B>(
    done: Result<(), ClientError>,
    method: &'static str,
    body: &B,
    said: impl Fn() -> String,
) -> Result<(), ClientError>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    match done {
        Err(ClientError::Daemon {
            status: 403,
            code,
            message,
        }) => match escalate::call(method, body) {
            escalate::Outcome::Allowed => {
                println!("{} (over D-Bus, allowed by polkit)", said());
                Ok(())
            }
            escalate::Outcome::Refused(message) => Err(ClientError::Daemon {
                status: 403,
                code: "access_denied".into(),
                message,
            }),
            escalate::Outcome::Unavailable => Err(ClientError::Daemon {
                status: 403,
                code,
                message,
            }),
        },
        other => other,
    }
}

/// `vramctl unload MODEL [--soft|--hard]`.
fn unload(c: &Client, model: &str, soft: bool, j: bool) -> Result<(), ClientError> {
    let mode = if soft { "soft" } else { "hard" };
    let v = c.post(&model_path(model, "unload"), &json!({ "mode": mode }))?;
    print(j, &v, |v| {
        format!(
            "{model} {}: {} freed\n",
            if soft {
                "soft-unloaded (weights kept)"
            } else {
                "unloaded"
            },
            vramd::units::format_size_human(v["freed_bytes"].as_u64().unwrap_or(0))
        )
    });
    Ok(())
}

/// `vramctl estimate MODEL [--size WxH] [--context N]`, with what is free now.
fn estimate(
    c: &Client,
    model: &str,
    size: Option<(u32, u32)>,
    context: Option<u32>,
    j: bool,
) -> Result<(), ClientError> {
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
    use vramd::cli::ctl::parse_size;

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
        <Cli as clap::CommandFactory>::command().debug_assert();
        let cli = Cli::try_parse_from(["vramctl", "--json", "unload", "chat", "--soft"]).unwrap();
        assert!(cli.json);
        assert!(matches!(cli.command, Cmd::Unload { soft: true, .. }));
        assert!(Cli::try_parse_from(["vramctl", "unload", "chat", "--soft", "--hard"]).is_err());
        let cli = Cli::try_parse_from(["vramctl", "notify", "--bus", "session", "--show-routine"]).unwrap();
        assert!(
            matches!(cli.command, Cmd::Notify { show_routine: true, ref bus, .. } if bus.as_deref() == Some("session"))
        );
        assert!(Cli::try_parse_from(["vramctl", "notify", "--bus", "none"]).is_err());
        let cli = Cli::try_parse_from(["vramctl", "top", "--once"]).unwrap();
        assert!(matches!(cli.command, Cmd::Top { once: true, replay: 20 }));
    }
}

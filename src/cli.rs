//! The command-line definitions of `vramd` and `vramctl`, shared by the binaries and by the
//! man-page and shell-completion generator (`examples/gen-manpages.rs`, run at package build
//! time), so that what is documented is exactly what is parsed.

/// `vramd`'s command line.
pub mod daemon {
    use std::path::PathBuf;

    use clap::Parser;

    /// Lets one GPU serve a local LLM and Stable Diffusion, arbitrating its memory.
    #[derive(Parser, Debug)]
    #[command(name = "vramd", version, about, long_about = None)]
    pub struct Cli {
        /// Configuration file [default: /etc/vramd/vramd.toml]; model drop-ins are read from
        /// `models.d/*.toml` beside it.
        #[arg(long, env = "VRAMD_CONFIG", value_name = "PATH")]
        pub config: Option<PathBuf>,
        /// Unix socket to bind when not socket-activated (overrides `[daemon] socket`).
        #[arg(long, value_name = "PATH")]
        pub socket: Option<PathBuf>,
        /// Also serve the API on this loopback TCP address when not socket-activated (what
        /// `vramd-tcp.socket` gives under systemd), e.g. `127.0.0.1:7867`.
        #[arg(long, value_name = "ADDR")]
        pub tcp: Option<std::net::SocketAddr>,
        /// Validate the configuration, print it resolved, and exit.
        #[arg(long)]
        pub check_config: bool,
    }
}

/// `vramctl`'s command line.
pub mod ctl {
    use std::path::PathBuf;

    use clap::{Parser, Subcommand};

    #[derive(Parser, Debug)]
    #[command(name = "vramctl", version, about = "Control and watch vramd, the GPU memory arbiter")]
    pub struct Cli {
        /// The daemon's socket.
        #[arg(long, global = true, env = "VRAMD_SOCKET", default_value = "/run/vramd/vramd.sock")]
        pub socket: PathBuf,
        /// Print JSON for scripts instead of tables.
        #[arg(long, global = true)]
        pub json: bool,
        #[command(subcommand)]
        pub command: Cmd,
    }

    #[derive(Subcommand, Debug)]
    pub enum Cmd {
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
        /// A live view: the memory bar, every model, the last decisions (`q` quits).
        ///
        /// Redraws in place on each event and every second; when stdout is not a terminal,
        /// prints a frame of plain lines after each batch of events. `--json` does not apply.
        Top {
            /// Print one frame and exit (exit status 3 when vramd cannot be reached).
            #[arg(long)]
            once: bool,
            /// Start the log with the last N decisions.
            #[arg(long, default_value_t = 20)]
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
        /// Show what vramd does as desktop notifications, one per request (run by
        /// vramd-notify.service or the XDG autostart entry; one agent per session).
        Notify {
            /// The bus vramd serves on [default: `[dbus] bus` in --config, else system].
            #[arg(long, value_parser = ["system", "session"])]
            bus: Option<String>,
            /// vramd's configuration file, read for `[dbus] bus` when --bus is not given.
            #[arg(
                long,
                env = "VRAMD_CONFIG",
                value_name = "PATH",
                default_value = "/etc/vramd/vramd.toml"
            )]
            config: PathBuf,
            /// Also notify routine events: models loaded, and unloaded when idle or on request.
            #[arg(long)]
            show_routine: bool,
            /// Models or kinds (`llm`, `image`) never to notify about; comma-separated, repeatable.
            #[arg(long, value_name = "LIST")]
            quiet_for: Vec<String>,
            /// How long a request waits before its "waiting" notice shows, in milliseconds.
            #[arg(long, default_value_t = 2000, hide = true)]
            wait_notice_ms: u64,
        },
        /// API keys for TCP clients (Open WebUI, SillyTavern…): make, list, revoke. Works on
        /// the keys file directly (run it as root); vramd reads the file again when it
        /// changes. Once the file lists a key, TCP requests need one.
        Keys {
            #[command(subcommand)]
            action: KeysCmd,
            /// The keys file (`[daemon] keys_file`).
            #[arg(long, global = true, value_name = "PATH", default_value = "/etc/vramd/keys.toml")]
            file: PathBuf,
        },
    }

    #[derive(Subcommand, Debug)]
    pub enum KeysCmd {
        /// Make a key and print it (once: the file keeps only its SHA-256).
        Create {
            /// A name for the client that uses it (letters, digits, `-`, `_`, `.`).
            name: String,
            /// `generate`: use the models, choose the A1111 checkpoint, interrupt its images;
            /// `control`: also load, unload and pin.
            #[arg(long, value_parser = ["generate", "control"], default_value = "generate")]
            role: String,
        },
        /// The keys' names, roles and when they were made.
        List,
        /// Remove a key: requests with it are refused from the next one on.
        Revoke { name: String },
    }

    pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
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
}

//! `vramd`: the daemon's entry point. Wiring only: read the configuration, take the
//! sockets, start the arbiter and the server, and turn signals and idleness into a clean exit.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use vramd::activity::{idle_exit_in, Activity, IdleInputs};
use vramd::arbiter::ArbiterHandle;
use vramd::cli::daemon::Cli;
use vramd::config::{self, Config};
use vramd::{api, arbiter, dbus, listeners, logging, memory, server, systemd_notify, worker};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match config::load(cli.config.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vramd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        print_config(&loaded);
        return ExitCode::SUCCESS;
    }
    let mut config = loaded.config;
    if let Some(socket) = cli.socket {
        config.daemon.socket = socket;
    }
    logging::init(&config.daemon.log);
    match run(config, cli.tcp) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            systemd_notify::stopping(&format!("failed: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn print_config(loaded: &config::LoadedConfig) {
    if loaded.sources.is_empty() {
        println!(
            "# no configuration file at {}: built-in defaults",
            config::DEFAULT_CONFIG_PATH
        );
    }
    for s in &loaded.sources {
        println!("# read {}", s.display());
    }
    print!("{}", loaded.config.to_toml());
}

fn run(config: Config, tcp: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    // Before any thread exists: this unsets LISTEN_* so workers do not inherit them.
    let mut sockets = listeners::from_systemd().context("taking sockets from systemd")?;
    if sockets.is_empty() {
        // TCP first: whoever waits for the socket file to appear (a test, a script) may then
        // connect to either.
        if let Some(addr) = tcp {
            sockets.push(listeners::bind_tcp(addr).context("binding the TCP listener")?);
        }
        sockets.insert(
            0,
            listeners::bind_unix(&config.daemon.socket).context("binding the API socket")?,
        );
    }
    let source = memory::open_source(&config.memory).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, sockets, source))
}

async fn serve(
    config: Config,
    sockets: Vec<listeners::Listener>,
    source: Box<dyn memory::MemorySource>,
) -> anyhow::Result<()> {
    warn_about_open_tcp(&config, &sockets);
    let paths = worker::WorkerPaths::resolve(&config.daemon).context("preparing the worker runtime folder")?;
    tracing::info!(workers = %paths.dir.display(), sockets = %paths.runtime_dir.display(), "worker paths");
    let private_dir = paths.private.then(|| paths.runtime_dir.clone());
    let config = std::sync::Arc::new(config);
    let arbiter = arbiter::spawn(config.clone(), source, paths);
    let activity = Activity::default();
    let app = api::router(api::AppState::new(
        config.clone(),
        arbiter.clone(),
        activity.clone(),
        std::sync::Arc::new(vramd::chat::Templates::load(&config)),
    ));
    let idle_limit = config.daemon.idle_exit.0;
    let shutdown = {
        let (arbiter, activity) = (arbiter.clone(), activity.clone());
        async move {
            let why = tokio::select! {
                s = signal() => s,
                _ = idle(idle_limit, &arbiter, &activity) => "idle".to_owned(),
            };
            tracing::info!("stopping: {why}");
            systemd_notify::stopping(&format!("stopping: {why}"));
        }
    };
    let watchdog = systemd_notify::watchdog_interval();
    let status = arbiter.snapshot().status_line();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "ready: {status}");
    systemd_notify::ready(&status);
    tokio::spawn(systemd_notify::follow(arbiter.subscribe(), watchdog));
    // D-Bus never gates the HTTP API: it connects (and reconnects) on its own.
    tokio::spawn(dbus::serve(
        config.dbus.bus,
        arbiter.clone(),
        config.daemon.control_group.clone(),
    ));
    let limits = server::Limits {
        drain: config.daemon.shutdown_timeout.0.unwrap_or(Duration::from_secs(3600)),
        header_timeout: config.daemon.header_timeout.0.unwrap_or(Duration::from_secs(10)),
        idle_timeout: config.daemon.idle_timeout.0.unwrap_or(Duration::from_secs(75)),
        max_connections: config.daemon.max_connections as usize,
    };
    let served = server::run(sockets, app, activity, limits, shutdown).await?;
    if served.abandoned > 0 {
        tracing::warn!(connections = served.abandoned, "exited with connections still open");
    }
    if let Some(dir) = private_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

async fn signal() -> String {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM".into(),
        _ = int.recv() => "SIGINT".into(),
    }
}

/// Resolves once the daemon has been idle for `limit` (see [`idle_exit_in`]).
async fn idle(limit: Option<Duration>, arbiter: &ArbiterHandle, activity: &Activity) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        let inputs = IdleInputs {
            loaded_models: arbiter.snapshot().loaded_count(),
            connections: activity.connections(),
            requests: activity.requests(),
            idle_for: activity.last_activity().elapsed(),
        };
        match idle_exit_in(Some(limit), inputs) {
            Some(d) if d.is_zero() => return,
            Some(d) => tokio::time::sleep(d.min(Duration::from_secs(1))).await,
            None => tokio::time::sleep(limit.min(Duration::from_secs(1))).await,
        }
    }
}

/// A TCP listener with no API keys lets any local user generate (the Unix socket's group does
/// not apply there): said once at start, with what to do about it.
fn warn_about_open_tcp(config: &Config, sockets: &[listeners::Listener]) {
    let tcp = sockets.iter().any(|l| matches!(l, listeners::Listener::Tcp { .. }));
    if !tcp {
        return;
    }
    match vramd::keys::KeyStore::new(config.daemon.keys_file.clone()).current() {
        vramd::keys::Loaded::Keys(k) if k.keys.is_empty() => tracing::warn!(
            "no API keys in {}: any local user can generate over TCP; `vramctl keys create NAME` makes one, and TCP then needs it",
            config.daemon.keys_file.display()
        ),
        vramd::keys::Loaded::Keys(k) => tracing::info!(keys = k.keys.len(), "TCP clients need an API key"),
        // Logged by the store; TCP refuses every request until the file is fixed.
        vramd::keys::Loaded::Broken(_) => {}
    }
}

//! `vramctl top`: a live view of vramd in a terminal, with what the status page shows: the
//! memory bar, a row per model, and the last decisions.
//!
//! It follows `GET /v1/events` (SSE, with a replay) on a thread and redraws at once on an
//! event, and every second besides (idle times move), reading `/v1/status` for each frame.
//! The frame itself is [`view::frame`], a pure function; this module is the thin loop
//! around it. When the daemon goes away the view says so and both reconnect.
//!
//! Plain ANSI, not a TUI library (ratatui, crossterm): the view is lines redrawn in place,
//! which takes the alternate screen, a hidden cursor, "home" and "clear to end of line"
//! (`term.rs`, with `TIOCGWINSZ` and `termios` through `libc`, already a dependency). A
//! library would bring its own terminal backend and widget layout for what is a few escape
//! sequences, and would make the frame harder to test as plain text.
//!
//! When stdout is not a terminal, frames are printed one after another as plain lines, each
//! with the decisions since the one before; `--once` prints one frame and exits.
//!
//! Exit status: 0 when the view was closed (`q`, Ctrl-C, SIGTERM) or `--once` printed a
//! frame; with `--once`, 3 when vramd cannot be reached (the frame says so) and 1 when it
//! answered with an error.

mod term;
mod view;

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::client::{Client, ClientError};
use crate::stream::read_sse;

pub struct Options {
    /// Print one frame and exit.
    pub once: bool,
    /// Past events to start the log with.
    pub replay: usize,
}

/// Redraw at least this often: idle times and request ages move.
const REDRAW: Duration = Duration::from_secs(1);
/// How often the loop looks at the signal flags between messages.
const TICK: Duration = Duration::from_millis(100);
/// Wait between attempts to reach a daemon that went away.
const RETRY: Duration = Duration::from_secs(1);
/// A replay arrives in one piece: this long without an event, it is over.
const REPLAY_QUIET: Duration = Duration::from_millis(150);
/// The longest `--once` waits for the replay.
const REPLAY_MAX: Duration = Duration::from_secs(2);
/// Log lines kept (more than a terminal shows; the frame takes the newest that fit).
const LOG_KEEP: usize = 200;

/// What the event thread (and the key reader) tell the loop.
enum Msg {
    Connected,
    /// An event's identity (to skip one a reconnection replays again) and its log line.
    Event(Option<(u64, u64)>, String),
    Lost,
    Quit,
}

pub fn run(socket: &Path, opts: &Options) -> ExitCode {
    let (tx, rx) = mpsc::channel();
    follow_events(socket.to_owned(), opts.replay, tx.clone());
    let client = Client::new(socket);
    if opts.once {
        once(&client, &rx)
    } else if std::io::stdout().is_terminal() {
        live(&client, &rx, tx)
    } else {
        plain(&client, &rx)
    }
}

/// Follows `/v1/events` on a thread, reconnecting after [`RETRY`] whenever the stream
/// cannot be opened or ends, until the loop is gone.
fn follow_events(socket: PathBuf, replay: usize, tx: Sender<Msg>) {
    std::thread::spawn(move || {
        let client = Client::new(&socket);
        while follow_once(&client, replay, &tx) {
            std::thread::sleep(RETRY);
        }
    });
}

/// One connection to the event stream; `false` when the loop stopped listening.
fn follow_once(client: &Client, replay: usize, tx: &Sender<Msg>) -> bool {
    let Ok(mut resp) = client.stream("GET", &format!("/v1/events?replay={replay}"), None) else {
        return tx.send(Msg::Lost).is_ok();
    };
    if tx.send(Msg::Connected).is_err() {
        return false;
    }
    let mut listening = true;
    let _ = read_sse(&mut resp.body, |ev| {
        let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
        let key = v["id"].as_u64().zip(v["at"].as_f64().map(f64::to_bits));
        listening = tx.send(Msg::Event(key, view::log_line(&ev.event, &v))).is_ok();
        Ok(listening)
    });
    listening && tx.send(Msg::Lost).is_ok()
}

/// The recent decisions, oldest first, each event once.
#[derive(Default)]
struct Log {
    lines: VecDeque<(Option<(u64, u64)>, String)>,
    /// How many lines were added in all (for "the lines since the last frame").
    added: usize,
}

impl Log {
    fn push(&mut self, key: Option<(u64, u64)>, line: String) {
        if key.is_some() && self.lines.iter().any(|(k, _)| *k == key) {
            return;
        }
        if self.lines.len() == LOG_KEEP {
            self.lines.pop_front();
        }
        self.lines.push_back((key, line));
        self.added += 1;
    }

    /// The newest `n` lines, oldest first.
    fn last(&self, n: usize) -> Vec<String> {
        let skip = self.lines.len().saturating_sub(n);
        self.lines.iter().skip(skip).map(|(_, l)| l.clone()).collect()
    }
}

/// What a message changes: `None` to quit, else whether the view should be redrawn.
fn apply(msg: Msg, log: &mut Log) -> Option<bool> {
    match msg {
        Msg::Quit => None,
        Msg::Event(key, line) => {
            log.push(key, line);
            Some(true)
        }
        Msg::Connected | Msg::Lost => Some(true),
    }
}

/// `--once`: the replay, then one frame.
fn once(client: &Client, rx: &Receiver<Msg>) -> ExitCode {
    let mut log = Log::default();
    collect_replay(rx, &mut log);
    let status = client.get("/v1/status");
    let why = status.as_ref().err().map(|e| away(e, false));
    let shown = status.as_ref().map_err(|_| why.as_deref().unwrap_or_default());
    print_lines(&view::frame(shown, &log.last(LOG_KEEP), term::size().cols, now()));
    match status {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vramctl: {e}");
            ExitCode::from(if matches!(e, ClientError::Unreachable { .. }) {
                3
            } else {
                1
            })
        }
    }
}

/// Waits for the event stream to open and its replay to arrive, bounded by [`REPLAY_MAX`].
fn collect_replay(rx: &Receiver<Msg>, log: &mut Log) {
    let deadline = Instant::now() + REPLAY_MAX;
    let Ok(Msg::Connected) = rx.recv_timeout(REPLAY_MAX) else {
        return;
    };
    while Instant::now() < deadline {
        match rx.recv_timeout(REPLAY_QUIET) {
            Ok(Msg::Event(key, line)) => log.push(key, line),
            _ => return,
        }
    }
}

/// The sentence shown instead of the daemon's state.
fn away(e: &ClientError, retrying: bool) -> String {
    let then = if retrying { "; retrying…" } else { "" };
    match e {
        ClientError::Unreachable { .. } => format!("vramd is not reachable{then}"),
        e => format!("vramd did not answer: {e}{then}"),
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn print_lines(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    let _ = out.flush();
}

/// On a terminal: redrawn in place on each event and every second, until `q`, Ctrl-C or
/// SIGTERM; the terminal is restored when `screen` drops.
fn live(client: &Client, rx: &Receiver<Msg>, tx: Sender<Msg>) -> ExitCode {
    term::catch_signals();
    let mut screen = match term::Screen::enter() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vramctl top: cannot draw on the terminal: {e}");
            return ExitCode::FAILURE;
        }
    };
    term::on_q(move || {
        let _ = tx.send(Msg::Quit);
    });
    let mut log = Log::default();
    let mut next_draw = Instant::now();
    while !term::stop_requested() {
        let Some(changed) = wait(rx, &mut log, TICK) else { break };
        if changed || term::resized() || Instant::now() >= next_draw {
            if screen.draw(&fitted_frame(client, &log)).is_err() {
                break;
            }
            next_draw = Instant::now() + REDRAW;
        }
    }
    ExitCode::SUCCESS
}

/// Applies what arrives within `timeout`; `None` to quit, else whether anything changed.
fn wait(rx: &Receiver<Msg>, log: &mut Log, timeout: Duration) -> Option<bool> {
    let first = match rx.recv_timeout(timeout) {
        Ok(msg) => msg,
        Err(RecvTimeoutError::Timeout) => return Some(false),
        Err(RecvTimeoutError::Disconnected) => return None,
    };
    let mut changed = apply(first, log)?;
    while let Ok(msg) = rx.try_recv() {
        changed |= apply(msg, log)?;
    }
    Some(changed)
}

/// A frame that fits the terminal: as many of the newest log lines as there are rows left.
fn fitted_frame(client: &Client, log: &Log) -> Vec<String> {
    let status = client.get("/v1/status").map_err(|e| away(&e, true));
    let shown = status.as_ref().map_err(String::as_str);
    let (size, at) = (term::size(), now());
    let Some(rows) = size.rows else {
        return view::frame(shown, &log.last(LOG_KEEP), size.cols, at);
    };
    // Without log lines the frame has one placeholder line where they go.
    let base = view::frame(shown, &[], size.cols, at).len();
    let mut lines = view::frame(shown, &log.last((rows + 1).saturating_sub(base)), size.cols, at);
    lines.truncate(rows);
    lines
}

/// Not a terminal: a frame after the replay, then one after each batch of events and each
/// time what stands in for the daemon's state changes (it went away, it came back), with
/// the decisions since the previous frame. The daemon is asked every second even when the
/// event stream is silent, so a daemon that went away is noticed all the same.
fn plain(client: &Client, rx: &Receiver<Msg>) -> ExitCode {
    let mut log = Log::default();
    collect_replay(rx, &mut log);
    let (mut printed, mut away_was) = (0, Some(String::new()));
    loop {
        let status = client.get("/v1/status").map_err(|e| away(&e, true));
        let new = log.added - printed;
        if new > 0 || away_was.as_ref() != status.as_ref().err() {
            let shown = status.as_ref().map_err(String::as_str);
            print_lines(&view::frame(shown, &log.last(new), term::size().cols, now()));
            println!();
            (printed, away_was) = (log.added, status.err());
        }
        if wait(rx, &mut log, REDRAW).is_none() {
            break;
        }
    }
    ExitCode::SUCCESS
}

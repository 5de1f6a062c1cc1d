//! The integration-test harness: start the real `vramd` binary and talk HTTP to it.
//!
//! - [`Daemon::start`] writes a configuration into a fresh temporary folder, starts `vramd`
//!   on a socket there and waits until it answers. Dropping it kills the daemon; its stderr
//!   is kept in `vramd.log` in that folder and printed by [`Daemon::log`].
//! - [`http`] is a deliberately small HTTP/1.1 client over a Unix socket (`Connection:
//!   close`, `Content-Length` or chunked bodies), so tests see exactly what a client sees.
//! - [`NotifySocket`] is a `NOTIFY_SOCKET` the test owns, to read what vramd tells systemd.
//! - [`events`] replays what the daemon did; [`UsedWatcher`] follows what it holds.

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const VRAMD: &str = env!("CARGO_BIN_EXE_vramd");

/// A configuration with nothing loaded-by-default and idle exit off: tests opt in to more.
pub const BASE_CONFIG: &str = "[daemon]\nidle_exit = \"0\"\n[memory]\nbackend = \"budget\"\nbudget = \"8GiB\"\n";

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub child: Child,
}

impl Daemon {
    /// Starts `vramd --config <dir>/vramd.toml --socket <dir>/vramd.sock` and waits for it.
    pub fn start(config: &str) -> Daemon {
        Self::start_with(config, |_| {})
    }

    /// Like [`Daemon::start`], letting the test adjust the command (environment, files).
    pub fn start_with(config: &str, adjust: impl FnOnce(&mut Command)) -> Daemon {
        Self::start_in(tempfile::tempdir().expect("tempdir"), config, adjust)
    }

    /// Starts the daemon in a folder the test prepared (its socket is `<dir>/vramd.sock`).
    pub fn start_in(dir: tempfile::TempDir, config: &str, adjust: impl FnOnce(&mut Command)) -> Daemon {
        let cfg = dir.path().join("vramd.toml");
        // Never the system's /var/lib/vramd: each daemon gets its own state folder, and its
        // worker sockets go in the test's folder too (a killed daemon cannot clean up after
        // itself, and the fallback, /tmp/vramd-UID-PID, would be left behind).
        // A test of the fallback says `# runtime_dir` in a comment.
        let mut lines = String::new();
        if !config.contains("state_dir") {
            lines += &format!("state_dir = \"{}\"\n", dir.path().join("state").display());
        }
        if !config.contains("runtime_dir") {
            lines += &format!("runtime_dir = \"{}\"\n", dir.path().join("run").display());
        }
        let config = match config.contains("[daemon]\n") {
            true => config.replacen("[daemon]\n", &format!("[daemon]\n{lines}"), 1),
            false => format!("[daemon]\n{lines}{config}"),
        };
        // Never the system bus: a test that wants D-Bus says `[dbus] bus = "session"` and
        // points DBUS_SESSION_BUS_ADDRESS at its own bus (see `dbus_util`).
        let config = if config.contains("[dbus]") {
            config
        } else {
            format!("{config}\n[dbus]\nbus = \"none\"\n")
        };
        std::fs::write(&cfg, config).unwrap();
        let socket = dir.path().join("vramd.sock");
        let log = std::fs::File::create(dir.path().join("vramd.log")).unwrap();
        let mut cmd = Command::new(VRAMD);
        cmd.arg("--config")
            .arg(&cfg)
            .arg("--socket")
            .arg(&socket)
            .env("RUST_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        adjust(&mut cmd);
        let child = cmd.spawn().expect("spawn vramd");
        let mut d = Daemon { dir, socket, child };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("vramd exited early with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("vramd did not start listening:\n{}", self.log());
    }

    pub fn get(&self, path: &str) -> Response {
        http(&self.socket, "GET", path, &[], b"")
    }

    pub fn post_json(&self, path: &str, body: &str) -> Response {
        http(
            &self.socket,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vramd.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the daemon to exit on its own, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        wait_exit(&mut self.child, limit)
            .unwrap_or_else(|| panic!("vramd still running after {limit:?}:\n{}", self.log()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts the vramd error shape and returns the error object.
    pub fn error(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "body: {}", String::from_utf8_lossy(&self.body));
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        let e = v["error"].clone();
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string() && e["code"].is_string(), "{v}");
        e
    }
}

/// One HTTP/1.1 request over a fresh connection to a Unix socket.
pub fn http(socket: &Path, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut s = UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    send_request(&mut s, method, path, headers, body);
    read_response(&mut s)
}

pub fn send_request(s: &mut impl Write, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: vramd\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let framed = |h: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(h));
    if !framed("content-length") && !framed("transfer-encoding") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    // One write: a server that answers before reading the body (an early 400) and closes
    // must not turn into a broken pipe here; the response is what the test wants to see.
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    if let Err(e) = s.write_all(&bytes) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "sending the request: {e}");
    }
}

pub fn read_response(s: &mut impl Read) -> Response {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    Response { status, headers, body }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16).unwrap();
        rest = &rest[nl + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A `NOTIFY_SOCKET` owned by the test.
pub struct NotifySocket {
    pub path: PathBuf,
    sock: UnixDatagram,
    pub seen: Vec<String>,
}

impl NotifySocket {
    pub fn new(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            path,
            sock,
            seen: Vec::new(),
        }
    }

    /// Waits until a datagram contains the line `line`; returns that whole datagram.
    pub fn wait_for(&mut self, line: &str, limit: Duration) -> String {
        if let Some(m) = self.seen.iter().find(|m| m.lines().any(|l| l == line)) {
            return m.clone();
        }
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            self.sock
                .set_read_timeout(Some(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                ))
                .unwrap();
            let Ok(n) = self.sock.recv(&mut buf) else {
                continue;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(msg.clone());
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
        panic!("no {line:?} on NOTIFY_SOCKET within {limit:?}; saw {:?}", self.seen);
    }
}

/// A folder to use as `[daemon] worker_dir` whose `vramd-llm-worker` is the fake worker
/// (`examples/fake-worker.rs`, built by `cargo test`; its header says how to drive it).
pub fn fake_worker_dir() -> tempfile::TempDir {
    let examples = Path::new(VRAMD).parent().unwrap().join("examples");
    let fake = examples.join("fake-worker");
    assert!(
        fake.is_file(),
        "{} is missing: build it with `cargo build --examples`",
        fake.display()
    );
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&fake, dir.path().join("vramd-llm-worker")).unwrap();
    dir
}

impl Daemon {
    /// The `/v1/status` entry of one model.
    pub fn model_status(&self, name: &str) -> serde_json::Value {
        let s = self.get("/v1/status").json();
        s["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no model {name} in {s}"))
    }

    /// Polls until `pred` holds for the model's status entry, or panics after `limit`.
    pub fn wait_model(
        &self,
        name: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let m = self.model_status(name);
            if pred(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "model {name} never reached the expected state: {m}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

pub fn pid_alive(pid: u64) -> bool {
    // Zombies still have a /proc entry; a reaped process does not.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Reads Server-Sent Events `data:` payloads from a response body.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_owned))
        .collect()
}

pub const GIB: u64 = 1 << 30;

/// A model file for the fake worker: its behaviour line, then zeros up to `size` (sparse:
/// free on disk; the fake reports the file's size as its weights).
pub fn model_file(dir: &Path, name: &str, line: &str, size: u64) -> PathBuf {
    let path = dir.join(format!("{name}.bin"));
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "{line}").unwrap();
    f.set_len(size).unwrap();
    path
}

/// Fake workers (both kinds) and two models in a 3 GiB budget: `chat` (1.5 GiB weights +
/// 0.5 GiB KV cache) and `sd` (`sd_size`, behaviour `sd_line`), so that a 512² image after a
/// chat soft-unloads chat and tiles the VAE. `extra_daemon` goes into `[daemon]`. Background
/// restores are off (`restore_after = "0"`), so that states stay as the test left them; a test
/// of restores replaces that line. Returns the configuration and the folders to keep alive.
pub fn fake_two_models(sd_size: u64, sd_line: &str, extra_daemon: &str) -> (String, Vec<tempfile::TempDir>) {
    let workers = fake_worker_dir();
    std::os::unix::fs::symlink(
        workers.path().join("vramd-llm-worker"),
        workers.path().join("vramd-sd-worker"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chat = model_file(
        dir.path(),
        "chat",
        &format!("ok context={} compute=0", GIB / 2),
        GIB + GIB / 2,
    );
    let sd = model_file(dir.path(), "sd", sd_line, sd_size);
    let config = format!(
        "[daemon]\nidle_exit = \"0\"\nworker_dir = \"{}\"\n{extra_daemon}\
         [memory]\nbackend = \"budget\"\nbudget = \"3GiB\"\nreserve = 0\n\
         [policy]\nwait_timeout = \"5s\"\nretry_after = \"7s\"\nrestore_after = \"0\"\n\
         [[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"{}\"\n\
         [[models]]\nname = \"sd\"\nkind = \"image\"\npath = \"{}\"\n",
        workers.path().display(),
        chat.display(),
        sd.display()
    );
    (config, vec![workers, dir])
}

/// Polls `/v1/status` in the background and remembers the most memory the registry ever
/// said was held; [`UsedWatcher::stop`] returns it with the status of that moment (for the
/// failure message).
pub struct UsedWatcher {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, serde_json::Value)>,
}

impl UsedWatcher {
    pub fn start(socket: &Path) -> UsedWatcher {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (socket, flag) = (socket.to_owned(), done.clone());
        let thread = std::thread::spawn(move || {
            let mut max = (0, serde_json::Value::Null);
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                let status: serde_json::Value = http(&socket, "GET", "/v1/status", &[], b"").json();
                let used = status["memory"]["used_bytes"].as_u64().unwrap();
                if used > max.0 || max.1.is_null() {
                    max = (used, status);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            max
        });
        UsedWatcher { done, thread }
    }

    pub fn stop(self) -> (u64, serde_json::Value) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Starts a streamed `POST /v1/completions` and leaves it open, for tests that act in the
/// middle of a generation (kill the worker, hang up). Read it with [`next_data`].
pub fn open_stream(d: &Daemon, body: &serde_json::Value) -> std::io::BufReader<UnixStream> {
    let body = body.to_string();
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::io::BufReader::new(s)
}

/// The next Server-Sent Event's `data:` from a live stream; `None` at its end.
pub fn next_data(r: &mut std::io::BufReader<UnixStream>) -> Option<String> {
    use std::io::BufRead;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(d) = line.trim_end().strip_prefix("data: ") {
            return Some(d.to_owned());
        }
    }
}

/// The events so far, from the replay of `GET /v1/events`, as JSON; [`kinds`] makes them
/// `"type model"` lines.
pub fn events(d: &Daemon) -> Vec<serde_json::Value> {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    write!(s, "GET /v1/events?replay=256 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let mut r = std::io::BufReader::new(s);
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut r, &mut line).is_ok_and(|n| n > 0) {
        if let Some(d) = line.trim_end().strip_prefix("data: ") {
            out.push(serde_json::from_str(d).unwrap());
        }
        line.clear();
    }
    out
}

/// `type model` of each event but `request_finished`, in order.
pub fn kinds(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        // Each request's end is checked on its own (`grant.rs`): these lists are decisions.
        .filter(|e| e["type"] != "request_finished")
        .map(|e| format!("{} {}", e["type"].as_str().unwrap(), e["model"].as_str().unwrap_or("-")))
        .collect()
}

/// The load test of the arbiter: 50 requests from 8 concurrent clients, request `i` of
/// client `c` being `request(c, i)` (a path and a JSON body). Every request must be answered,
/// with a result or with 503 and `Retry-After`; at least half must succeed; and what the
/// registry says is held (reservations included) must never exceed `budget`.
pub fn fifty_from_eight_clients(
    socket: &Path,
    budget: u64,
    request: fn(u32, u32) -> (&'static str, serde_json::Value),
) {
    let watcher = UsedWatcher::start(socket);
    let clients: Vec<_> = (0..8u32)
        .map(|c| {
            let socket = socket.to_owned();
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                for i in (0..7u32).take_while(|i| c * 7 + i < 50) {
                    let (path, body) = request(c, i);
                    let r = http(
                        &socket,
                        "POST",
                        path,
                        &[("Content-Type", "application/json")],
                        body.to_string().as_bytes(),
                    );
                    match r.status {
                        200 => {}
                        503 => assert!(r.header("retry-after").is_some(), "a 503 says when to retry"),
                        s => panic!("{s}: {}", String::from_utf8_lossy(&r.body)),
                    }
                    statuses.push(r.status);
                }
                statuses
            })
        })
        .collect();
    let statuses: Vec<u16> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let (max_used, at_max) = watcher.stop();
    assert_eq!(statuses.len(), 50);
    assert!(statuses.iter().filter(|s| **s == 200).count() >= 25, "{statuses:?}");
    assert!(
        max_used <= budget,
        "held {max_used} bytes with a budget of {budget}: {at_max:#}"
    );
}

/// A free loopback TCP port, for a daemon's `--tcp` listener.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether python3 imports `modules` (an official client). Without them a test says so and
/// passes, unless `VRAMD_REQUIRE_WORKERS=1` (scripts/test), which makes it a failure.
pub fn python_has(modules: &str) -> bool {
    let have = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("VRAMD_REQUIRE_WORKERS").is_none(),
            "python3 with {modules} is required (pip install -r tests/requirements.txt)"
        );
        eprintln!("skipped: python3 -c 'import {modules}' failed");
    }
    have
}

/// Runs `tests/python/<script> <args>` against daemon `d` and returns the JSON line it prints;
/// a failure shows the script's stderr and the daemon's log.
pub fn run_python(d: &Daemon, script: &str, args: &[&str]) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let out = Command::new("python3").arg(path).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{script} {args:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Sends `POST path` with a JSON `body` from another thread (a request that will wait, or
/// one of many concurrent clients); join the handle for its response.
pub fn post_in_background(
    socket: &Path,
    path: &'static str,
    body: serde_json::Value,
) -> std::thread::JoinHandle<Response> {
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        let headers = [("Content-Type", "application/json")];
        http(&socket, "POST", path, &headers, body.to_string().as_bytes())
    })
}

/// The JSON body of a response that must be a 200 (else the failure shows the body).
pub fn ok(r: Response) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

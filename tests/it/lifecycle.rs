//! Starting and stopping by hand: SIGTERM with requests in flight, the drain bound, idle
//! exit, and a second daemon refusing to steal a live socket.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{read_response, Daemon, NotifySocket, BASE_CONFIG, VRAMD};

const MODEL: &str = "[[models]]\nname = \"m\"\nkind = \"llm\"\npath = \"/x\"\n";

/// Sends the head and half the body of a request, leaving it in flight.
fn half_sent_request(d: &Daemon) -> (UnixStream, &'static [u8]) {
    let body: &[u8] = b"{\"mode\":\"soft\"}";
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /v1/models/m/unload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body[..5]).unwrap();
    (s, &body[5..])
}

/// Waits until the daemon logged that it is waiting for the in-flight request.
fn wait_for_log(d: &Daemon, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains(needle) {
        assert!(Instant::now() < deadline, "{needle:?} never logged:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::new(dir.path());
    let path = notify.path.clone();
    let mut d = Daemon::start_with(&format!("{BASE_CONFIG}{MODEL}"), |c| {
        c.env("NOTIFY_SOCKET", &path);
    });
    notify.wait_for("READY=1", Duration::from_secs(5));
    let (mut s, rest) = half_sent_request(&d);
    std::thread::sleep(Duration::from_millis(200)); // let the daemon start reading it
    d.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1", Duration::from_secs(5));
    wait_for_log(&d, "waiting for in-flight requests");
    // Not accepting any more: the socket file is gone.
    assert!(!d.socket.exists(), "socket file should be removed on shutdown");
    s.write_all(rest).unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["model"], "m");
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", d.log());
}

#[test]
fn drain_is_bounded_by_shutdown_timeout() {
    let config = format!("{BASE_CONFIG}{MODEL}").replace("[daemon]\n", "[daemon]\nshutdown_timeout = \"1s\"\n");
    let mut d = Daemon::start(&config);
    let (_s, _rest) = half_sent_request(&d); // never finished
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    d.signal(libc::SIGINT);
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "exited before the drain bound"
    );
    assert!(d.log().contains("drain timeout reached"), "{}", d.log());
}

#[test]
fn idle_daemon_exits_zero_but_not_while_a_client_is_connected() {
    let config = BASE_CONFIG.replace("idle_exit = \"0\"", "idle_exit = \"1s\"");
    let mut d = Daemon::start(&config);
    // An open connection keeps it alive past the idle limit.
    let conn = UnixStream::connect(&d.socket).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "exited with a client connected:\n{}",
        d.log()
    );
    drop(conn);
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(d.log().contains("stopping: idle"), "{}", d.log());
}

#[test]
fn second_daemon_refuses_a_live_socket() {
    let d = Daemon::start(BASE_CONFIG);
    let out = Command::new(VRAMD)
        .arg("--config")
        .arg(d.dir.path().join("vramd.toml"))
        .arg("--socket")
        .arg(&d.socket)
        .env_remove("LISTEN_FDS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving on"), "{err}");
    assert_eq!(d.get("/health").status, 200, "the first daemon must keep serving");
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("vramd.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let d = Daemon::start_in(dir, BASE_CONFIG, |_| {});
    assert_eq!(d.socket, stale);
    assert_eq!(d.get("/health").status, 200);
    assert!(d.log().contains("removing stale socket"), "{}", d.log());
}

#[test]
fn logs_go_to_the_journal_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("vramd.log");
    std::fs::write(&log, "").unwrap(); // the harness truncates it, keeping the inode
    let meta = std::fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let d = Daemon::start_in(dir, BASE_CONFIG, |c| {
        c.env("JOURNAL_STREAM", &stream);
    });
    let _ = d.get("/health"); // served: startup logging is over
    let text = d.log();
    if Path::new("/run/systemd/journal/socket").exists() {
        // A machine with journald: the log went there, not to stderr.
        assert!(!text.contains("ready:"), "{text}");
    } else {
        // No journald (containers, CI): detected, tried, and said so on stderr.
        assert!(text.contains("cannot open the journal"), "{text}");
        assert!(text.contains("ready:"), "{text}");
    }
    // A JOURNAL_STREAM that is not our stderr (inherited from a parent) is ignored.
    let d = Daemon::start_with(BASE_CONFIG, |c| {
        c.env("JOURNAL_STREAM", "0:0");
    });
    wait_for_log(&d, "ready:");
    assert!(!d.log().contains("cannot open the journal"));
}

//! Socket activation under `systemd-socket-activate`: the passed fds are served, systemd
//! hears READY=1 / STATUS= / WATCHDOG=1 / STOPPING=1, idle exit happens, and the socket
//! activates a fresh daemon again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{http, wait_exit, NotifySocket, VRAMD};

struct Activated {
    dir: tempfile::TempDir,
    api: PathBuf,
    notify: NotifySocket,
}

impl Activated {
    fn new(config: &str) -> Activated {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vramd.toml"), config).unwrap();
        let notify = NotifySocket::new(dir.path());
        Activated {
            api: dir.path().join("api.sock"),
            dir,
            notify,
        }
    }

    /// Starts `systemd-socket-activate` listening on `listen` (several `-l`), waiting for the
    /// first connection before it execs vramd with the fds.
    fn activate(&self, listen: &[String], fdnames: &str, extra_env: &[&str]) -> Child {
        // A previous instance's socket file stays behind; remove it so that waiting for the
        // path below waits for the new listener.
        let _ = std::fs::remove_file(&listen[0]);
        let mut cmd = Command::new("systemd-socket-activate");
        for l in listen {
            cmd.arg("-l").arg(l);
        }
        cmd.arg(format!("--fdname={fdnames}"))
            .arg("-E")
            .arg(format!("NOTIFY_SOCKET={}", self.notify.path.display()))
            .arg("-E")
            .arg(format!("VRAMD_CONFIG={}", self.dir.path().join("vramd.toml").display()))
            .arg("-E")
            .arg("RUST_LOG=debug")
            // What vramd.service's RuntimeDirectory= gives it: worker sockets go there.
            .arg("-E")
            .arg(format!("RUNTIME_DIRECTORY={}", self.dir.path().join("run").display()));
        for e in extra_env {
            cmd.arg("-E").arg(e);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("vramd.log"))
            .unwrap();
        let child = cmd
            .arg(VRAMD)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("systemd-socket-activate (package systemd) must be installed");
        wait_for_path(listen[0].as_ref());
        child
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vramd.log")).unwrap_or_default()
    }
}

fn wait_for_path(p: &Path) {
    if !p.is_absolute() {
        return std::thread::sleep(Duration::from_millis(300));
    }
    for _ in 0..500 {
        if p.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never appeared", p.display());
}

const CONFIG: &str =
    "[daemon]\nsocket = \"SOCK\"\nidle_exit = \"1s\"\nstate_dir = \"/nonexistent/state\"\n[memory]\nbackend = \"budget\"\n";

#[test]
fn serves_the_passed_fd_notifies_idles_out_and_is_activated_again() {
    let mut a = Activated::new("");
    let own = a.dir.path().join("never-bound.sock");
    std::fs::write(
        a.dir.path().join("vramd.toml"),
        CONFIG.replace("SOCK", own.to_str().unwrap()),
    )
    .unwrap();
    let listen = vec![a.api.display().to_string()];
    let mut child = a.activate(&listen, "api", &[]);

    let r = http(&a.api, "GET", "/health", &[], b"");
    assert_eq!(r.status, 200, "{}", a.log());
    let ready = a.notify.wait_for("READY=1", Duration::from_secs(10));
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=0 of 0 models loaded; memory 0 B used of 8.0 GiB")),
        "{ready:?}"
    );
    assert!(!own.exists(), "a socket-activated daemon must not bind its own socket");

    // Nothing loaded, nobody connected: it exits 0 after idle_exit.
    let status = wait_exit(&mut child, Duration::from_secs(15)).expect("idle exit");
    assert_eq!(status.code(), Some(0), "{}", a.log());
    a.notify.wait_for("STOPPING=1", Duration::from_secs(1));
    assert!(a.log().contains("stopping: idle"), "{}", a.log());

    // The socket unit's role: the next connection starts a fresh daemon, which serves it.
    let mut again = a.activate(&listen, "api", &[]);
    let r = http(&a.api, "GET", "/v1/status", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["memory"]["backend"], "budget");
    assert_eq!(
        a.notify
            .seen
            .iter()
            .filter(|m| m.lines().any(|l| l == "READY=1"))
            .count(),
        1
    );
    a.notify.seen.clear();
    a.notify.wait_for("READY=1", Duration::from_secs(10));
    let _ = again.kill();
    let _ = again.wait();
}

#[test]
fn api_tcp_fd_serves_the_same_api_and_watchdog_pings() {
    let a = Activated::new(&CONFIG.replace("SOCK", "/nonexistent/x.sock").replace("\"1s\"", "\"0\""));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = vec![a.api.display().to_string(), format!("127.0.0.1:{port}")];
    let mut child = a.activate(&listen, "api:api-tcp", &["WATCHDOG_USEC=400000"]);
    let mut notify = a.notify;
    assert_eq!(
        http(&a.api, "GET", "/health", &[], b"").status,
        200,
        "{}",
        std::fs::read_to_string(a.dir.path().join("vramd.log")).unwrap_or_default()
    );
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    crate::util::send_request(&mut tcp, "GET", "/v1/models", &[], b"");
    let r = crate::util::read_response(&mut tcp);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"], "list");
    notify.wait_for("READY=1", Duration::from_secs(5));
    notify.wait_for("WATCHDOG=1", Duration::from_secs(5));
    let _ = child.kill();
    let _ = child.wait();
}

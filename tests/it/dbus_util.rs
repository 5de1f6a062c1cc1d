//! The D-Bus part of the harness: a private `dbus-daemon` per test, so tests never touch
//! the machine's system or session bus and can run in parallel.
//!
//! - [`PrivateBus::start`] starts `dbus-daemon --nofork --print-address` on a socket in a
//!   fresh folder (mode 0755, so a client dropped to another uid can reach it), with a
//!   policy that lets anyone connect, own any name and send anything;
//!   [`PrivateBus::start_with_policy`] takes other `<policy>` elements instead.
//! - [`PrivateBus::daemon`] starts vramd with `[dbus] bus = "session"` on that bus and waits
//!   until it owns `org.vramd.Vramd1`.
//! - [`PrivateBus::busctl`] and [`PrivateBus::busctl_as`] run `busctl --address=…`, the
//!   latter as another uid/gid through `setpriv`.
//! - [`runtime`] is the tokio runtime the tests run their `zbus` clients on.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::Daemon;

pub const NAME: &str = "org.vramd.Vramd1";
pub const PATH: &str = "/org/vramd/Vramd1";

/// Lets anyone connect, own any name and send or receive anything.
pub const OPEN_POLICY: &str = r#"<policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>"#;

/// The configuration file of a private bus listening on `socket`.
pub fn bus_config(socket: &std::path::Path, policy: &str) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  {policy}
</busconfig>
"#,
        socket.display()
    )
}

pub struct PrivateBus {
    /// Holds the socket and the bus's configuration; removed on drop.
    _dir: tempfile::TempDir,
    /// `unix:path=…`, for `DBUS_*_BUS_ADDRESS` and `busctl --address`.
    pub address: String,
    child: Child,
}

impl PrivateBus {
    pub fn start() -> PrivateBus {
        Self::start_with_policy(OPEN_POLICY)
    }

    pub fn start_with_policy(policy: &str) -> PrivateBus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let address = format!("unix:path={}", dir.path().join("bus").display());
        let child = start_bus_at(&dir.path().join("bus"), policy);
        PrivateBus {
            _dir: dir,
            address,
            child,
        }
    }

    /// A bus at an address chosen beforehand (for a daemon started before its bus).
    pub fn start_at(dir: tempfile::TempDir) -> PrivateBus {
        let socket = dir.path().join("bus");
        let address = format!("unix:path={}", socket.display());
        let child = start_bus_at(&socket, OPEN_POLICY);
        PrivateBus {
            _dir: dir,
            address,
            child,
        }
    }

    /// Starts vramd on this bus; `config` must not have a `[dbus]` section.
    pub fn daemon(&self, config: &str) -> Daemon {
        let d = self.daemon_no_wait(config);
        self.wait_for_name(NAME, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("vramd never owned {NAME}:\n{}", d.log()));
        d
    }

    pub fn daemon_no_wait(&self, config: &str) -> Daemon {
        let config = format!("{config}\n[dbus]\nbus = \"session\"\n");
        let address = self.address.clone();
        Daemon::start_with(&config, move |c| {
            c.env("DBUS_SESSION_BUS_ADDRESS", address);
        })
    }

    /// `busctl --address=<bus> ARGS`.
    pub fn busctl(&self, args: &[&str]) -> Output {
        Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args(args)
            .output()
            .expect("busctl (from systemd) must be installed")
    }

    /// `busctl` as `uid`/`gid`, with no supplementary groups.
    pub fn busctl_as(&self, uid: u32, gid: u32, args: &[&str]) -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg("busctl")
            .arg(format!("--address={}", self.address))
            .args(args)
            .output()
            .expect("setpriv (from util-linux) must be installed")
    }

    /// Waits until `name` has an owner; returns the owner's unique name.
    pub fn wait_for_name(&self, name: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let out = self.busctl(&[
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "GetNameOwner",
                "s",
                name,
            ]);
            if out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout);
                return Some(text.trim().trim_start_matches("s ").trim_matches('"').to_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// A `zbus` connection to this bus.
    pub async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap()
    }
}

fn start_bus_at(socket: &std::path::Path, policy: &str) -> Child {
    let dir = socket.parent().unwrap();
    let config = dir.join("bus.conf");
    std::fs::write(&config, bus_config(socket, policy)).unwrap();
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config.display()))
        .arg("--nofork")
        .arg("--print-address")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon must be installed (packaging/build-deps.txt)");
    // It prints its address once it listens.
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("unix:path="), "dbus-daemon said {line:?}");
    child
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The runtime tests run `zbus` on (zbus's tokio integration needs one).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A folder other uids can enter (tempdirs are 0700).
pub fn open_dir(path: &std::path::Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Lets uid 65534 reach the daemon's socket (tempdirs are 0700, sockets 0755 by umask).
pub fn open_socket(d: &Daemon) {
    open_dir(d.dir.path());
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o777)).unwrap();
}

pub use crate::util::GIB;

/// Fake workers and two models in a 3 GiB budget ([`crate::util::fake_two_models`]); an
/// image step takes 4 ms.
pub fn two_models(extra_daemon: &str) -> (String, Vec<tempfile::TempDir>) {
    crate::util::fake_two_models(GIB, "ok delay_ms=4", extra_daemon)
}

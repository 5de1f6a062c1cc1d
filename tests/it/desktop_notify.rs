//! `vramctl notify` against a fake `org.freedesktop.Notifications` (recording what it is
//! asked to show and close, with the icon and hints) and a fake vramd that emits signals on
//! cue, both on ONE private session bus: the agent runs with `--bus session`, as it does for
//! a per-user vramd (`[dbus] bus = "session"`). Then the choice of bus, one agent per session,
//! a vramd that starts after the agent, and once the real daemon with fake workers.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::zvariant::OwnedValue;

use crate::dbus_util::{runtime, two_models, PrivateBus, GIB, NAME, PATH};

const VRAMCTL: &str = env!("CARGO_BIN_EXE_vramctl");
const MIB: u64 = 1 << 20;
/// What the agent logs once it follows vramd.
const FOLLOWING: &str = "showing its notifications";

#[derive(Clone, Debug)]
struct Shown {
    id: u32,
    app_name: String,
    replaces_id: u32,
    app_icon: String,
    summary: String,
    body: String,
    urgency: Option<u8>,
    desktop_entry: Option<String>,
}

/// What the notification server was asked, in order.
#[derive(Clone, Debug)]
enum Seen {
    Notify(Shown),
    Close(u32),
}

struct FakeNotifications {
    seen: Arc<Mutex<Vec<Seen>>>,
    next_id: u32,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl FakeNotifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &mut self,
        app_name: String,
        replaces_id: u32,
        app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        hints: HashMap<String, OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let id = if replaces_id != 0 {
            replaces_id
        } else {
            self.next_id += 1;
            self.next_id
        };
        self.seen.lock().unwrap().push(Seen::Notify(Shown {
            id,
            app_name,
            replaces_id,
            app_icon,
            summary,
            body,
            urgency: hints.get("urgency").and_then(|v| u8::try_from(v).ok()),
            desktop_entry: hints
                .get("desktop-entry")
                .and_then(|v| String::try_from(v.clone()).ok()),
        }));
        id
    }

    fn close_notification(&mut self, id: u32) {
        self.seen.lock().unwrap().push(Seen::Close(id));
    }
}

/// What the agent asks vramd: the models and their kinds, and the backend.
struct FakeVramd {
    backend: &'static str,
}

#[zbus::interface(name = "org.vramd.Vramd1")]
impl FakeVramd {
    fn list_models(&self) -> Vec<(String, String, String, u64, u64, i64)> {
        [("chat", "llm"), ("sd", "image")]
            .into_iter()
            .map(|(n, k)| (n.into(), k.into(), "loaded".into(), 0, 0, -1))
            .collect()
    }

    #[zbus(property)]
    fn backend(&self) -> String {
        self.backend.into()
    }
}

/// A running `vramctl notify` and what it has logged so far.
struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// `vramctl notify ARGS` with the session bus at `session` and, unless `env` says
    /// otherwise, a system bus that does not exist (no test reaches the machine's own).
    fn start(session: &str, args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(VRAMCTL);
        cmd.arg("notify")
            .args(args)
            .env_remove("VRAMD_CONFIG")
            .env("DBUS_SESSION_BUS_ADDRESS", session)
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                "unix:path=/nonexistent/vramd-test-system-bus",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let keep = lines.clone();
        std::thread::spawn(move || {
            stderr
                .lines()
                .map_while(Result::ok)
                .for_each(|l| keep.lock().unwrap().push(l))
        });
        Agent { child, lines }
    }

    fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a logged line contains `needle`.
    fn wait_for_line(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.log().iter().any(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "the agent never said {needle:?}: {:?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the agent to exit by itself.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent did not exit: {:?}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One private session bus with the fake notification server on it.
struct Desktop {
    rt: tokio::runtime::Runtime,
    bus: PrivateBus,
    seen: Arc<Mutex<Vec<Seen>>>,
    _server: zbus::Connection,
}

impl Desktop {
    fn new() -> Desktop {
        let rt = runtime();
        let bus = PrivateBus::start();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let server = FakeNotifications {
            seen: seen.clone(),
            next_id: 0,
        };
        let server = rt.block_on(async {
            zbus::connection::Builder::address(bus.address.as_str())
                .unwrap()
                .serve_at("/org/freedesktop/Notifications", server)
                .unwrap()
                .name("org.freedesktop.Notifications")
                .unwrap()
                .build()
                .await
                .unwrap()
        });
        Desktop {
            rt,
            bus,
            seen,
            _server: server,
        }
    }

    /// Owns `org.vramd.Vramd1` on `bus`, as the daemon would; dropping it is vramd leaving.
    fn fake_vramd(&self, bus: &PrivateBus, backend: &'static str) -> Vramd<'_> {
        let conn = self.rt.block_on(async {
            zbus::connection::Builder::address(bus.address.as_str())
                .unwrap()
                .serve_at(PATH, FakeVramd { backend })
                .unwrap()
                .name(NAME)
                .unwrap()
                .build()
                .await
                .unwrap()
        });
        Vramd { rt: &self.rt, conn }
    }

    /// The agent with `--bus session`, once it follows a fake vramd with `backend`.
    fn with_vramd(&self, backend: &'static str, args: &[&str]) -> (Vramd<'_>, Agent) {
        let vramd = self.fake_vramd(&self.bus, backend);
        let args: Vec<&str> = ["--bus", "session"].iter().chain(args).copied().collect();
        let agent = Agent::start(&self.bus.address, &args, &[]);
        agent.wait_for_line(FOLLOWING);
        (vramd, agent)
    }

    fn shown(&self) -> Vec<Shown> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter_map(|s| match s {
                Seen::Notify(n) => Some(n.clone()),
                Seen::Close(_) => None,
            })
            .collect()
    }

    fn closed(&self) -> Vec<u32> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter_map(|s| match s {
                Seen::Close(id) => Some(*id),
                Seen::Notify(_) => None,
            })
            .collect()
    }

    /// Waits for the `n`th notification (1-based) and returns it.
    fn wait_shown(&self, n: usize) -> Shown {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.shown().get(n - 1) {
                return s.clone();
            }
            assert!(Instant::now() < deadline, "no notification #{n}: {:?}", self.shown());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Nothing more than `n` notifications, a little while later.
    fn no_more_than(&self, n: usize) {
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(self.shown().len(), n, "{:?}", self.shown());
    }
}

/// A fake vramd's connection, to emit its signals; dropping it is vramd leaving the bus.
struct Vramd<'a> {
    rt: &'a tokio::runtime::Runtime,
    conn: zbus::Connection,
}

impl Drop for Vramd<'_> {
    fn drop(&mut self) {
        // Closed now, not whenever zbus's own tasks let go of the connection.
        let _ = self.rt.block_on(self.conn.clone().close());
    }
}

impl Vramd<'_> {
    fn emit<B>(&self, member: &str, body: &B)
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.rt.block_on(async {
            self.conn
                .emit_signal(None::<&str>, PATH, NAME, member, body)
                .await
                .unwrap()
        });
    }

    /// `RequestFinished` for image `id`, as the contract lays it out.
    #[allow(clippy::too_many_arguments)]
    fn finished(
        &self,
        id: &str,
        outcome: &str,
        waited: f64,
        (needed, free): (u64, u64),
        (vae, vae_seconds, slower): (&str, f64, f64),
        freed: &[(&str, &str, u64)],
    ) {
        let body = (
            "sd",
            id,
            "image",
            outcome,
            if outcome == "done" { "" } else { "the daemon's reason" },
            waited,
            needed,
            free,
            vae,
            vae_seconds,
            slower,
            freed.to_vec(),
        );
        self.emit("RequestFinished", &body);
    }

    fn crash(&self, model: &str) {
        self.emit("WorkerCrashed", &(model, "killed by signal 9"));
    }
}

const ON_GPU: (&str, f64, f64) = ("gpu", 0.4, 0.0);

#[test]
fn a_soft_unload_for_an_image_is_one_notification_in_plain_words() {
    let d = Desktop::new();
    let (vramd, _agent) = d.with_vramd("nvml", &[]);
    let chat_reason = "waiting for chat: needs 149.6 MiB, 111.1 MiB free and 0 B could be freed now";
    vramd.emit(
        "ModelUnloaded",
        &("chat", "soft", chat_reason, 512 * MIB, "room", "sd", "req-1", 600 * MIB),
    );
    vramd.finished("req-1", "done", 0.0, (0, 0), ON_GPU, &[("chat", "soft", 512 * MIB)]);
    let n = d.wait_shown(1);
    assert_eq!(n.summary, "Image ready");
    assert_eq!(
        n.body,
        "To make room, the chat model set aside its working memory (512 MiB); its next answer may start a little slower"
    );
    assert_eq!((n.app_name.as_str(), n.app_icon.as_str()), ("vramd", "vramd"));
    assert_eq!(n.desktop_entry.as_deref(), Some("vramd-notify"));
    assert_eq!((n.urgency, n.replaces_id), (Some(1), 0));
    d.no_more_than(1);
}

#[test]
fn the_last_step_on_the_cpu_says_how_much_slower() {
    let d = Desktop::new();
    let (vramd, _agent) = d.with_vramd("nvml", &[]);
    vramd.emit("VaeOffloaded", &("sd", 1024u32, 1024u32, "tiled", "r", "req-1"));
    vramd.emit("VaeOffloaded", &("sd", 1024u32, 1024u32, "cpu", "r", "req-1"));
    vramd.finished("req-1", "done", 0.0, (0, 0), ("cpu", 30.2, 28.3), &[]);
    let n = d.wait_shown(1);
    assert_eq!(
        (n.summary.as_str(), n.body.as_str()),
        (
            "Image ready",
            "The last step of the image ran on the CPU: about 28 s slower"
        )
    );
    // Not measured on the device yet: what it took, never a guess.
    vramd.finished("req-2", "done", 0.0, (0, 0), ("cpu", 30.0, -1.0), &[]);
    let n = d.wait_shown(2);
    assert_eq!(n.body, "The last step of the image ran on the CPU and took 30 s");
    assert_eq!(n.replaces_id, 0, "another request, another notification");
    d.no_more_than(2);
}

#[test]
fn a_request_that_waited_then_timed_out_replaces_its_waiting_notice() {
    let d = Desktop::new();
    let (vramd, _agent) = d.with_vramd("nvml", &["--wait-notice-ms", "200"]);
    let queued = |id: &str| ("sd", "waiting for chat (busy)", id.to_owned(), "chat", GIB, 300 * MIB);
    vramd.emit("RequestQueued", &queued("req-7"));
    let waiting = d.wait_shown(1);
    assert_eq!(
        (waiting.summary.as_str(), waiting.body.as_str(), waiting.urgency),
        ("Image waiting", "It starts when the chat model is finished", Some(1))
    );
    vramd.finished("req-7", "timed_out", 60.0, (GIB, 300 * MIB), ("", 0.0, -1.0), &[]);
    let failed = d.wait_shown(2);
    assert_eq!(
        failed.replaces_id, waiting.id,
        "the outcome replaces the waiting notice"
    );
    assert_eq!(
        (failed.summary.as_str(), failed.body.as_str(), failed.urgency),
        (
            "The image could not be made",
            "It gave up after waiting 1 min for the chat model to finish (it needs 1 GiB and 300 MiB is free)",
            Some(2)
        )
    );
    // A wait that ends with nothing to tell closes its notice.
    vramd.emit("RequestQueued", &queued("req-8"));
    let waiting = d.wait_shown(3);
    vramd.finished("req-8", "cancelled", 3.0, (0, 0), ("", 0.0, -1.0), &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.closed() != [waiting.id] {
        assert!(Instant::now() < deadline, "not closed: {:?}", d.seen.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    // A refusal at once (no waiting notice) is a notification of its own.
    vramd.finished(
        "req-9",
        "refused",
        0.0,
        (GIB + GIB / 5, 300 * MIB),
        ("", 0.0, -1.0),
        &[],
    );
    let refused = d.wait_shown(4);
    assert_eq!(
        (refused.body.as_str(), refused.urgency, refused.replaces_id),
        (
            "It needs 1.2 GiB of GPU memory and only 300 MiB could be freed",
            Some(2),
            0
        )
    );
}

#[test]
fn a_worker_crash_is_its_own_critical_notification() {
    let d = Desktop::new();
    let (vramd, agent) = d.with_vramd("nvml", &[]);
    vramd.crash("chat");
    let n = d.wait_shown(1);
    assert_eq!((n.summary.as_str(), n.urgency), ("Chat model crashed", Some(2)));
    assert!(
        !n.body.contains("signal 9"),
        "the daemon's reason is for the log: {}",
        n.body
    );
    agent.wait_for_line("chat crashed: killed by signal 9");
}

#[test]
fn a_long_load_right_after_an_offload_does_not_hide_it() {
    let d = Desktop::new();
    let (vramd, _agent) = d.with_vramd("nvml", &["--show-routine"]);
    vramd.finished("req-1", "done", 0.0, (0, 0), ("cpu", 30.0, 28.0), &[]);
    vramd.emit("ModelLoaded", &("chat", 2 * GIB, 14.2f64, false));
    let offload = d.wait_shown(1);
    let load = d.wait_shown(2);
    assert_eq!(offload.summary, "Image ready");
    assert_eq!(
        (load.summary.as_str(), load.body.as_str(), load.urgency),
        (
            "Chat model loaded",
            "Loaded into GPU memory in 14.2 s (2 GiB, read from disk)",
            Some(0)
        )
    );
    assert_eq!(load.replaces_id, 0, "the load is a notification of its own");
    d.no_more_than(2);
    assert!(d.closed().is_empty());
}

#[test]
fn routine_events_are_quiet_by_default() {
    let d = Desktop::new();
    let (vramd, _agent) = d.with_vramd("nvml", &[]);
    vramd.emit("ModelLoaded", &("chat", 2 * GIB, 0.9f64, true));
    vramd.emit(
        "ModelUnloaded",
        &("chat", "hard", "idle 10 min", 2 * GIB, "idle", "", "", 0u64),
    );
    vramd.emit(
        "ModelUnloaded",
        &("sd", "hard", "requested", GIB, "requested", "", "", 0u64),
    );
    vramd.emit("ModelUnloaded", &("chat", "soft", "r", GIB, "room", "sd", "req-1", GIB));
    vramd.emit("VaeOffloaded", &("sd", 512u32, 512u32, "tiled", "r", "req-1"));
    vramd.emit("ModelRestored", &("chat", 512 * MIB, "r"));
    // Signals are handled in order: once the crash shows, none of the above did.
    vramd.crash("sd");
    assert_eq!(d.wait_shown(1).summary, "Image model crashed");
    d.no_more_than(1);
}

#[test]
fn memory_back_is_told_for_what_it_told_was_set_aside() {
    let d = Desktop::new();
    let (vramd, _agent) = d.with_vramd("nvml", &[]);
    vramd.finished("req-1", "done", 0.0, (0, 0), ON_GPU, &[("chat", "soft", 512 * MIB)]);
    d.wait_shown(1);
    vramd.emit("ModelRestored", &("chat", 512 * MIB, "restored after the image"));
    let n = d.wait_shown(2);
    assert_eq!(
        (n.summary.as_str(), n.urgency, n.replaces_id),
        ("Chat model has its memory back", Some(0), 0)
    );
    vramd.emit("ModelRestored", &("chat", 512 * MIB, "again"));
    d.no_more_than(2);
}

#[test]
fn the_budget_backend_never_says_gpu() {
    let d = Desktop::new();
    let (vramd, _agent) = d.with_vramd("budget", &["--show-routine", "--wait-notice-ms", "0"]);
    vramd.emit("RequestQueued", &("sd", "r", "req-1", "", GIB, 300 * MIB));
    vramd.finished(
        "req-1",
        "done",
        5.0,
        (0, 0),
        ("tiled", 3.0, 2.0),
        &[("chat", "hard", 2 * GIB)],
    );
    vramd.finished("req-2", "too_large", 0.0, (9 * GIB, GIB), ("", 0.0, -1.0), &[]);
    vramd.emit("ModelLoaded", &("chat", 2 * GIB, 0.9f64, true));
    d.wait_shown(4);
    let bodies: Vec<String> = d.shown().into_iter().map(|n| n.body).collect();
    assert_eq!(
        bodies[1],
        "To make room, the chat model was unloaded (2 GiB); its next answer waits for it to load again\n\
         The last step of the image ran in smaller pieces to fit in memory: about 2 s slower\n\
         It waited 5 s for memory to free up"
    );
    for b in &bodies {
        assert!(!b.contains("GPU"), "{b}");
    }
}

#[test]
fn the_bus_comes_from_the_option_or_the_config_file() {
    let d = Desktop::new();
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let session = config(
        "session.toml",
        "[daemon]\nidle_exit = \"0\"\n[dbus]\nbus = \"session\"\n",
    );
    let off = config("off.toml", "[dbus]\nbus = \"none\"\n");
    let absent = dir.path().join("absent.toml").display().to_string();

    // `bus = "none"`: said once, nothing to do.
    let mut agent = Agent::start(&d.bus.address, &["--config", &off], &[]);
    assert!(agent.wait_exit().success());
    assert_eq!(agent.log().len(), 1, "{:?}", agent.log());
    assert!(agent.log()[0].contains("turned off"), "{:?}", agent.log());
    // --bus wins over the file.
    let agent = Agent::start(&d.bus.address, &["--config", &off, "--bus", "session"], &[]);
    agent.wait_for_line("vramd is not running");
    drop(agent);

    // `bus = "session"`: vramd's signals on the session bus.
    let vramd = d.fake_vramd(&d.bus, "nvml");
    let agent = Agent::start(&d.bus.address, &["--config", &session], &[]);
    agent.wait_for_line("vramd is running on the session bus");
    vramd.crash("chat");
    assert_eq!(d.wait_shown(1).summary, "Chat model crashed");
    drop((agent, vramd));

    // No file: the system bus (here, a second private bus).
    let system = PrivateBus::start();
    let vramd = d.fake_vramd(&system, "nvml");
    let env = [("DBUS_SYSTEM_BUS_ADDRESS", system.address.as_str())];
    let agent = Agent::start(&d.bus.address, &["--config", &absent], &env);
    agent.wait_for_line("vramd is running on the system bus");
    vramd.crash("sd");
    assert_eq!(d.wait_shown(2).summary, "Image model crashed");
}

#[test]
fn a_second_agent_in_the_session_exits_saying_so() {
    let d = Desktop::new();
    let (_vramd, mut first) = d.with_vramd("nvml", &[]);
    let mut second = Agent::start(&d.bus.address, &["--bus", "session"], &[]);
    assert!(second.wait_exit().success());
    let log = second.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].contains("another vramctl notify already shows"), "{log:?}");
    assert!(first.child.try_wait().unwrap().is_none(), "the first one keeps running");
}

#[test]
fn vramd_absent_at_start_is_said_once_then_followed_when_it_appears() {
    let d = Desktop::new();
    let agent = Agent::start(&d.bus.address, &["--bus", "session"], &[]);
    agent.wait_for_line("vramd is not running; notifications start when it does");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(agent.log().len(), 1, "then quiet: {:?}", agent.log());
    let vramd = d.fake_vramd(&d.bus, "nvml");
    agent.wait_for_line(FOLLOWING);
    vramd.crash("chat");
    assert_eq!(d.wait_shown(1).summary, "Chat model crashed");
    drop(vramd);
    agent.wait_for_line("vramd stopped");
}

#[test]
fn an_unreachable_bus_is_said_once_with_its_cause_once() {
    let d = Desktop::new();
    let agent = Agent::start(&d.bus.address, &["--bus", "system"], &[]);
    agent.wait_for_line("cannot connect to the system bus");
    // Retries at 1 s and 2 s happen meanwhile, quietly.
    std::thread::sleep(Duration::from_millis(3500));
    let log = agent.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].matches("No such file or directory").count(), 1, "{log:?}");
}

#[test]
fn the_real_daemon_making_room_for_an_image() {
    let d = Desktop::new();
    // vramd serves on the same (session) bus as the notification server.
    let (config, _keep) = two_models("");
    // Contexts set aside come back by themselves (off in `two_models`).
    let config = config.replace("restore_after = \"0\"", "restore_after = \"300ms\"");
    let daemon = d.bus.daemon(&config);
    let agent = Agent::start(&d.bus.address, &["--bus", "session"], &[]);
    agent.wait_for_line(FOLLOWING);
    let r = daemon.post_json("/v1/completions", r#"{"model":"chat","prompt":"hi","max_tokens":2}"#);
    assert_eq!(r.status, 200);
    let r = daemon.post_json(
        "/v1/images/generations",
        r#"{"model":"sd","prompt":"a cat","size":"512x512","steps":2}"#,
    );
    assert_eq!(r.status, 200);
    // The chat's load was routine: the first notification is the image's story.
    let n = d.wait_shown(1);
    assert_eq!(n.summary, "Image ready", "{n:?}\n{}", daemon.log());
    assert!(
        n.body.starts_with(
            "To make room, the chat model set aside its working memory (512 MiB); its next answer may start a little slower"
        ),
        "{}",
        n.body
    );
    assert!(!n.body.contains("GPU"), "the budget backend: {}", n.body);
    // The chat's context comes back by itself once the image is done.
    let back = d.wait_shown(2);
    assert_eq!(
        (back.summary.as_str(), back.urgency),
        ("Chat model has its memory back", Some(0))
    );
}

#[test]
fn the_user_unit_verifies() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/systemd/vramd-notify.service")).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/vramctl notify"));
    assert!(text.contains("WantedBy=graphical-session.target"));
    let dir = tempfile::tempdir().unwrap();
    let runtime_dir = dir.path().join("run");
    std::fs::create_dir(&runtime_dir).unwrap();
    let unit = dir.path().join("vramd-notify.service");
    // The installed path does not exist on a build machine: point at the built binary.
    std::fs::write(&unit, text.replace("/usr/bin/vramctl", VRAMCTL)).unwrap();
    // A user manager needs a runtime folder; the test gives it one.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--user", "--man=no"])
        .arg(&unit)
        .env("XDG_RUNTIME_DIR", &runtime_dir)
        .output()
        .expect("systemd-analyze (the systemd package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("Unknown key") && !text.contains("Invalid"), "{text}");
}

#[test]
fn the_autostart_entry_and_the_icon() {
    let root = env!("CARGO_MANIFEST_DIR");
    let entry = format!("{root}/packaging/xdg/vramd-notify.desktop");
    let text = std::fs::read_to_string(&entry).unwrap();
    for line in [
        "Exec=vramctl notify",
        "Icon=vramd",
        "X-systemd-skip=true",
        "NoDisplay=true",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    // desktop-file-utils comes with rpmlint (packaging/build-deps.txt).
    let out = Command::new("desktop-file-validate")
        .arg(&entry)
        .output()
        .expect("desktop-file-validate (desktop-file-utils)");
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.is_empty(), "{said}");
    let icon = std::fs::read_to_string(format!("{root}/packaging/icons/vramd.svg")).unwrap();
    assert!(icon.starts_with("<svg ") && icon.contains("viewBox=") && icon.trim_end().ends_with("</svg>"));
}

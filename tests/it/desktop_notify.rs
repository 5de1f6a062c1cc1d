//! `vramctl notify` against a fake `org.freedesktop.Notifications` on a private session bus,
//! with vramd's signals on a private "system" bus: emitted by the test itself (owning
//! `org.vramd.Vramd1`, so every signal can be sent on cue), and once by the real daemon.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::zvariant::OwnedValue;

use crate::dbus_util::{runtime, two_models, PrivateBus, GIB, NAME, PATH};

const VRAMCTL: &str = env!("CARGO_BIN_EXE_vramctl");

#[derive(Clone, Debug)]
struct Shown {
    app_name: String,
    replaces_id: u32,
    summary: String,
    body: String,
    urgency: Option<u8>,
}

#[derive(Default)]
struct FakeNotifications {
    shown: Arc<Mutex<Vec<Shown>>>,
    next_id: u32,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl FakeNotifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &mut self,
        app_name: String,
        replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        hints: HashMap<String, OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let urgency = hints.get("urgency").and_then(|v| u8::try_from(v).ok());
        self.shown.lock().unwrap().push(Shown {
            app_name,
            replaces_id,
            summary,
            body,
            urgency,
        });
        if replaces_id != 0 {
            return replaces_id;
        }
        self.next_id += 1;
        self.next_id
    }
}

/// What the agent asks vramd: the models and their kinds.
struct FakeVramd;

#[zbus::interface(name = "org.vramd.Vramd1")]
impl FakeVramd {
    fn list_models(&self) -> Vec<(String, String, String, u64, u64, i64)> {
        [("chat", "llm"), ("sd", "image")]
            .into_iter()
            .map(|(n, k)| (n.into(), k.into(), "loaded".into(), 0, 0, -1))
            .collect()
    }
}

struct Setup {
    rt: tokio::runtime::Runtime,
    system: PrivateBus,
    _session: PrivateBus,
    shown: Arc<Mutex<Vec<Shown>>>,
    _desktop: zbus::Connection,
    agent: Child,
}

impl Setup {
    /// Both buses, the fake notification server, and the agent, listening.
    fn new(agent_args: &[&str]) -> Setup {
        let rt = runtime();
        let (system, session) = (PrivateBus::start(), PrivateBus::start());
        let shown = Arc::new(Mutex::new(Vec::new()));
        let desktop = rt.block_on(async {
            zbus::connection::Builder::address(session.address.as_str())
                .unwrap()
                .serve_at(
                    "/org/freedesktop/Notifications",
                    FakeNotifications {
                        shown: shown.clone(),
                        next_id: 0,
                    },
                )
                .unwrap()
                .name("org.freedesktop.Notifications")
                .unwrap()
                .build()
                .await
                .unwrap()
        });
        let mut agent = Command::new(VRAMCTL)
            .arg("notify")
            .args(["--settle-ms", "300"])
            .args(agent_args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &system.address)
            .env("DBUS_SESSION_BUS_ADDRESS", &session.address)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(agent.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(line.contains("listening for org.vramd.Vramd1 signals"), "{line}");
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in stderr.lines() {});
        Setup {
            rt,
            system,
            _session: session,
            shown,
            _desktop: desktop,
            agent,
        }
    }

    /// Owns `org.vramd.Vramd1` on the system bus, as the daemon would.
    fn fake_vramd(&self) -> zbus::Connection {
        self.rt.block_on(async {
            zbus::connection::Builder::address(self.system.address.as_str())
                .unwrap()
                .serve_at(PATH, FakeVramd)
                .unwrap()
                .name(NAME)
                .unwrap()
                .build()
                .await
                .unwrap()
        })
    }

    fn emit<B>(&self, conn: &zbus::Connection, member: &str, body: &B)
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.rt
            .block_on(async { conn.emit_signal(None::<&str>, PATH, NAME, member, body).await.unwrap() });
    }

    /// Waits for the `n`th notification (1-based) and returns it.
    fn wait_shown(&self, n: usize) -> Shown {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.shown.lock().unwrap().get(n - 1) {
                return s.clone();
            }
            assert!(Instant::now() < deadline, "no notification #{n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count(&self) -> usize {
        self.shown.lock().unwrap().len()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

#[test]
fn each_signal_becomes_the_right_notification() {
    let s = Setup::new(&[]);
    let vramd = s.fake_vramd();
    let freed = 4 * GIB + GIB / 10;
    type Case<'a> = (Box<dyn Fn() + 'a>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            Box::new(|| s.emit(&vramd, "ModelUnloaded", &("chat", "hard", "requested", freed))),
            "GPU memory freed",
            "Chat model moved out of GPU memory on request — 4.1 GiB freed",
        ),
        (
            Box::new(|| {
                s.emit(
                    &vramd,
                    "ModelUnloaded",
                    &("chat", "soft", "chat is idle (11 min)", GIB / 2),
                )
            }),
            "GPU memory freed",
            "Chat model set its working memory aside after sitting idle — 512.0 MiB freed; its weights stay loaded",
        ),
        (
            Box::new(|| s.emit(&vramd, "VaeOffloaded", &("sd", 512u32, 512u32, "cpu", "no room"))),
            "Slower image decode",
            "This image's VAE decode runs on the CPU: about 2 s slower",
        ),
        (
            Box::new(|| s.emit(&vramd, "VaeOffloaded", &("sd", 1024u32, 1024u32, "tiled", "no room"))),
            "Slower image decode",
            "This image's VAE decode runs in tiles to fit in GPU memory: a little slower",
        ),
        (
            Box::new(|| s.emit(&vramd, "RequestQueued", &("sd", "waiting for chat: it is busy"))),
            "Request waiting",
            "Image model request is waiting: waiting for chat: it is busy",
        ),
        (
            Box::new(|| s.emit(&vramd, "WorkerCrashed", &("chat", "killed by signal 9"))),
            "A model crashed",
            "Chat model stopped unexpectedly (killed by signal 9); it restarts with the next request",
        ),
        (
            Box::new(|| s.emit(&vramd, "ModelLoaded", &("chat", 2 * GIB, 1.25f64, true))),
            "Model loaded",
            "Chat model loaded into GPU memory in 1.2 s (2.0 GiB, from RAM)",
        ),
    ];
    let mut last_id = 0;
    for (i, (emit, summary, body)) in cases.iter().enumerate() {
        emit();
        let n = s.wait_shown(i + 1);
        assert_eq!((n.summary.as_str(), n.body.as_str()), (*summary, *body));
        assert_eq!(n.app_name, "vramd");
        // Each replaces the one before instead of stacking.
        assert_eq!(n.replaces_id, last_id, "#{}", i + 1);
        last_id = 1;
        let urgent = *summary == "A model crashed";
        assert_eq!(n.urgency, Some(if urgent { 2 } else { 1 }));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.count(), cases.len(), "one notification per separate signal");
}

#[test]
fn a_burst_is_one_notification() {
    let s = Setup::new(&[]);
    let vramd = s.fake_vramd();
    s.emit(
        &vramd,
        "ModelUnloaded",
        &(
            "chat",
            "hard",
            "chat is idle (12 min): unloading it frees 4.1 GiB",
            4 * GIB + GIB / 10,
        ),
    );
    s.emit(&vramd, "VaeOffloaded", &("sd", 512u32, 512u32, "cpu", "r"));
    s.emit(&vramd, "ModelLoaded", &("sd", GIB, 0.5f64, true));
    let n = s.wait_shown(1);
    assert_eq!(n.summary, "GPU memory freed");
    assert_eq!(
        n.body,
        "Chat model moved out of GPU memory to make room for an image — 4.1 GiB freed\n\
         This image's VAE decode runs on the CPU: about 2 s slower"
    );
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(s.count(), 1, "the burst was coalesced");
}

#[test]
fn quiet_for_silences_models_and_kinds() {
    let s = Setup::new(&["--quiet-for", "image", "--quiet-for", "other"]);
    let vramd = s.fake_vramd();
    s.emit(&vramd, "VaeOffloaded", &("sd", 512u32, 512u32, "cpu", "r"));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(s.count(), 0, "image models are silenced");
    s.emit(&vramd, "WorkerCrashed", &("chat", "oops"));
    assert_eq!(s.wait_shown(1).summary, "A model crashed");
}

#[test]
fn the_real_daemon_making_room_for_an_image() {
    let s = Setup::new(&[]);
    // The daemon serves on the bus the agent watches as its system bus.
    let (config, _keep) = two_models("");
    let d = s.system.daemon(&config);
    let r = d.post_json("/v1/completions", r#"{"model":"chat","prompt":"hi","max_tokens":2}"#);
    assert_eq!(r.status, 200);
    let first = s.wait_shown(1);
    assert_eq!(first.summary, "Model loaded");
    assert!(
        first.body.starts_with("Chat model loaded into GPU memory in "),
        "{}",
        first.body
    );
    let r = d.post_json(
        "/v1/images/generations",
        r#"{"model":"sd","prompt":"a cat","size":"512x512","steps":2}"#,
    );
    assert_eq!(r.status, 200);
    let n = s.wait_shown(2);
    assert_eq!(n.summary, "GPU memory freed");
    assert_eq!(
        n.body,
        "Chat model set its working memory aside to make room for an image — 512.0 MiB freed; its weights stay loaded\n\
         This image's VAE decode runs in tiles to fit in GPU memory: a little slower"
    );
    assert_eq!(n.replaces_id, 1, "it replaced the load notification");
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

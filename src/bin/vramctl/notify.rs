//! `vramctl notify`: the per-user desktop notification agent (`vramd-notify.service`, or
//! the XDG autostart entry where the session is not run by systemd).
//!
//! Thin D-Bus glue around pure parts: [`crate::bus_choice`] picks the bus vramd serves on,
//! [`crate::story`] decides what to show, replace and close, [`crate::sentences`] words it.
//! Here the agent owns `org.vramd.Notify` on the session bus (one agent per session, however
//! it was started), follows `org.vramd.Vramd1`'s signals and whether that name has an owner,
//! and calls `org.freedesktop.Notifications`. What stops it (no bus, vramd not running) is
//! said once in plain words, then it waits or retries quietly: it lives as long as the
//! graphical session. Errors are printed with `{}` only: zbus's messages already hold their
//! cause, which `{:#}` would print a second time.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use vramd::config::BusKind;
use vramd::dbus::proxy::Vramd1Proxy;
use vramd::dbus::{Backoff, BUS_NAME, INTERFACE, OBJECT_PATH};
use zbus::fdo::{DBusProxy, RequestNameFlags, RequestNameReply};
use zbus::message::{Message, Type as MessageType};
use zbus::zvariant::Value;
use zbus::{MatchRule, MessageStream};

use crate::bus_choice;
use crate::sentences::{Ctx, Finished, Freed, Signal};
use crate::story::{Action, Key, Settings, Story};

/// Owned on the session bus while an agent runs there.
pub const AGENT_NAME: &str = "org.vramd.Notify";
/// The icon (`/usr/share/icons/hicolor/scalable/apps/vramd.svg`) and the desktop entry
/// (`vramd-notify.desktop`, the XDG autostart entry) that notification servers show.
const ICON: &str = "vramd";
const DESKTOP_ENTRY: &str = "vramd-notify";

#[zbus::proxy(
    interface = "org.freedesktop.Notifications",
    default_service = "org.freedesktop.Notifications",
    default_path = "/org/freedesktop/Notifications",
    gen_blocking = false
)]
trait Notifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: &str,
        replaces_id: u32,
        app_icon: &str,
        summary: &str,
        body: &str,
        actions: &[&str],
        hints: HashMap<&str, Value<'_>>,
        expire_timeout: i32,
    ) -> zbus::Result<u32>;

    fn close_notification(&self, id: u32) -> zbus::Result<()>;
}

pub struct Options {
    pub settings: Settings,
    /// `--bus`; else `[dbus] bus` in `config`.
    pub bus: Option<BusKind>,
    pub config: PathBuf,
}

/// Runs until the session ends; returns early only when there is nothing to do (vramd's
/// D-Bus interface is off) or another agent already runs in this session.
pub async fn run(opts: Options) {
    let Some(bus) = which_bus(&opts) else {
        return;
    };
    let mut log = Log::default();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let started = Instant::now();
        if session(&opts, bus, &mut log).await == Ended::Duplicate {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn say(text: impl Display) {
    eprintln!("vramctl notify: {text}");
}

fn which_bus(opts: &Options) -> Option<BusKind> {
    let bus = opts.bus.unwrap_or_else(|| {
        let (bus, remark) = bus_choice::from_config(&opts.config, std::fs::read_to_string(&opts.config));
        remark.into_iter().for_each(say);
        bus
    });
    if bus == BusKind::None {
        say(format!(
            "vramd's D-Bus interface is turned off ([dbus] bus = \"none\" in {}), so there is nothing to show",
            opts.config.display()
        ));
        return None;
    }
    Some(bus)
}

/// Says each state of a topic once: a retry that fails the same way again is quiet.
#[derive(Default)]
struct Log {
    said: HashMap<&'static str, &'static str>,
}

impl Log {
    fn say(&mut self, topic: &'static str, state: &'static str, text: impl Display) {
        if self.said.insert(topic, state) != Some(state) {
            say(text);
        }
    }

    /// The topic is fine again: its next trouble is worth saying.
    fn forget(&mut self, topic: &'static str) {
        self.said.remove(topic);
    }
}

/// A zbus error in plain words: I/O errors as the system says them, without zbus's prefix.
fn plain(e: &zbus::Error) -> String {
    match e {
        zbus::Error::InputOutput(io) => io.to_string(),
        e => e.to_string(),
    }
}

#[derive(PartialEq)]
enum Ended {
    /// The session bus went away (or never came): try again.
    Lost,
    /// Another agent owns [`AGENT_NAME`].
    Duplicate,
}

/// One connection to the session bus: own the agent's name, then follow vramd (on this
/// bus or the system bus) until the session bus goes away.
async fn session(opts: &Options, bus: BusKind, log: &mut Log) -> Ended {
    let desktop = match zbus::Connection::session().await {
        Ok(c) => c,
        Err(e) => {
            let why = plain(&e);
            log.say(
                "session",
                "down",
                format!("cannot connect to the session bus ({why}); trying again quietly"),
            );
            return Ended::Lost;
        }
    };
    match claim(&desktop).await {
        Ok(true) => log.forget("session"),
        Ok(false) => {
            say("another vramctl notify already shows vramd's notifications in this session; this one exits");
            return Ended::Duplicate;
        }
        Err(e) => {
            let why = plain(&e);
            log.say(
                "session",
                "claim",
                format!("cannot register on the session bus ({why}); trying again quietly"),
            );
            return Ended::Lost;
        }
    }
    let mut screen = match NotificationsProxy::new(&desktop).await {
        Ok(proxy) => Screen {
            proxy,
            ids: HashMap::new(),
        },
        Err(e) => {
            log.say(
                "session",
                "proxy",
                format!("cannot reach the notification server ({})", plain(&e)),
            );
            return Ended::Lost;
        }
    };
    let mut story = Story::new(opts.settings.clone());
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let connected = match bus {
            BusKind::Session => Ok(desktop.clone()),
            _ => zbus::Connection::system().await,
        };
        match connected {
            Ok(conn) => {
                backoff.reset();
                tokio::select! {
                    e = follow(&conn, bus, &mut story, &mut screen, log) => {
                        log.say("vramd", "lost", format!("lost the connection to vramd's bus ({}); reconnecting quietly", plain(&e)));
                    }
                    () = desktop.closed() => {}
                }
                screen.apply(story.vramd_gone(), log).await;
            }
            Err(e) => {
                let why = plain(&e);
                let text =
                    format!("cannot connect to the system bus, where vramd serves ({why}); trying again quietly");
                log.say("vramd", "no bus", text);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = desktop.closed() => {}
        }
        if desktop.is_closed() {
            log.say("session", "lost", "lost the session bus; reconnecting quietly");
            return Ended::Lost;
        }
    }
}

/// Owns [`AGENT_NAME`] without queueing; `false` when another agent has it.
async fn claim(desktop: &zbus::Connection) -> zbus::Result<bool> {
    let reply = DBusProxy::new(desktop)
        .await?
        .request_name(AGENT_NAME.try_into()?, RequestNameFlags::DoNotQueue.into())
        .await?;
    Ok(matches!(
        reply,
        RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner
    ))
}

/// The notification server, and the id shown last under each key (what the next
/// notification under that key replaces or closes).
struct Screen {
    proxy: NotificationsProxy<'static>,
    ids: HashMap<Key, u32>,
}

impl Screen {
    async fn apply(&mut self, actions: Vec<Action>, log: &mut Log) {
        for action in actions {
            match action {
                Action::Show { key, note, last } => {
                    let replaces = self.ids.get(&key).copied().unwrap_or(0);
                    let hints = HashMap::from([
                        ("urgency", Value::U8(note.urgency)),
                        ("desktop-entry", Value::from(DESKTOP_ENTRY)),
                    ]);
                    let shown = self
                        .proxy
                        .notify("vramd", replaces, ICON, &note.summary, &note.body, &[], hints, -1)
                        .await;
                    match shown {
                        Ok(id) => {
                            if last {
                                self.ids.remove(&key);
                            } else {
                                self.ids.insert(key, id);
                            }
                            log.forget("notifications");
                        }
                        Err(e) => {
                            let text = format!(
                                "cannot show a notification ({}); is a notification server running?",
                                plain(&e)
                            );
                            log.say("notifications", "down", text);
                        }
                    }
                }
                Action::Close(key) => {
                    if let Some(id) = self.ids.remove(&key) {
                        // Already gone (the person closed it) is fine.
                        let _ = self.proxy.close_notification(id).await;
                    }
                }
            }
        }
    }
}

/// Follows vramd on `conn`: its signals, and whether it runs. Returns what broke the
/// connection.
async fn follow(
    conn: &zbus::Connection,
    bus: BusKind,
    story: &mut Story,
    screen: &mut Screen,
    log: &mut Log,
) -> zbus::Error {
    match follow_inner(conn, bus, story, screen, log).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn follow_inner(
    conn: &zbus::Connection,
    bus: BusKind,
    story: &mut Story,
    screen: &mut Screen,
    log: &mut Log,
) -> zbus::Result<std::convert::Infallible> {
    // Subscribed before asking whether vramd runs, so that no signal falls in between. The
    // bus matches the well-known sender to whoever owns it, now or later.
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(BUS_NAME)?
        .interface(INTERFACE)?
        .path(OBJECT_PATH)?
        .build();
    let mut signals = MessageStream::for_match_rule(rule, conn, Some(256)).await?;
    let dbus = DBusProxy::new(conn).await?;
    let mut owners = dbus.receive_name_owner_changed_with_args(&[(0, BUS_NAME)]).await?;
    let closed = || zbus::Error::Failure("the bus closed the connection".into());
    let mut ctx = Ctx::default();
    if dbus.name_has_owner(BUS_NAME.try_into()?).await? {
        ctx = vramd_is_here(conn, bus, log).await;
    } else {
        log.say(
            "vramd",
            "absent",
            "vramd is not running; notifications start when it does",
        );
    }
    loop {
        let due = story.next_due();
        let tick = async move {
            match due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = signals.next() => {
                let Some(signal) = decode(&m.ok_or_else(closed)??) else { continue };
                if !ctx.kinds.contains_key(signal.model()) {
                    ctx = learn(conn, log).await;
                }
                log_reason(&signal);
                screen.apply(story.signal(&signal, &ctx, Instant::now()), log).await;
            }
            c = owners.next() => {
                if c.ok_or_else(closed)?.args()?.new_owner().is_some() {
                    ctx = vramd_is_here(conn, bus, log).await;
                } else {
                    log.say("vramd", "gone", "vramd stopped; notifications start again when it does");
                    screen.apply(story.vramd_gone(), log).await;
                }
            }
            () = tick => screen.apply(story.tick(&ctx, Instant::now()), log).await,
        }
    }
}

/// vramd owns its name: say so once, and learn what the words need.
async fn vramd_is_here(conn: &zbus::Connection, bus: BusKind, log: &mut Log) -> Ctx {
    let word = if bus == BusKind::Session { "session" } else { "system" };
    log.say(
        "vramd",
        "here",
        format!("vramd is running on the {word} bus; showing its notifications"),
    );
    learn(conn, log).await
}

/// The models' kinds and the backend, from vramd; empty when it does not answer (the words
/// then name models by name and never say "GPU").
async fn learn(conn: &zbus::Connection, log: &mut Log) -> Ctx {
    let asked = async {
        let vramd = Vramd1Proxy::builder(conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        let rows = match vramd.list_models().await {
            Ok(rows) => rows,
            Err(vramd::dbus::Error::ZBus(e)) => return Err(e),
            Err(e) => return Err(zbus::Error::Failure(e.to_string())),
        };
        let backend = vramd.backend().await?;
        zbus::Result::Ok((rows, backend))
    };
    match asked.await {
        Ok((rows, backend)) => {
            log.forget("models");
            Ctx {
                kinds: rows.into_iter().map(|r| (r.0, r.1)).collect(),
                gpu: backend == "nvml",
            }
        }
        Err(e) => {
            let why = plain(&e);
            log.say(
                "models",
                "unknown",
                format!("cannot ask vramd about its models ({why})"),
            );
            Ctx::default()
        }
    }
}

/// The daemon's own words (never shown to people) go to the agent's log.
fn log_reason(signal: &Signal) {
    match signal {
        Signal::Crashed { model, reason } => say(format!("{model} crashed: {reason}")),
        Signal::Finished(f) if !f.error.is_empty() => say(format!(
            "{} request {} {}: {}",
            f.model, f.request_id, f.outcome, f.error
        )),
        _ => {}
    }
}

/// `RequestFinished`'s arguments, in order.
type FinishedArgs = (
    String,
    String,
    String,
    String,
    String,
    f64,
    u64,
    u64,
    String,
    f64,
    f64,
    Vec<(String, String, u64)>,
);

/// A signal message as a [`Signal`]; `None` for members the agent does not act on, and for
/// bodies that are not what `dbus/org.vramd.Vramd1.xml` says.
fn decode(m: &Message) -> Option<Signal> {
    let header = m.header();
    let body = m.body();
    Some(match header.member()?.as_str() {
        "ModelLoaded" => {
            let (model, bytes, seconds, from_page_cache) = body.deserialize().ok()?;
            Signal::Loaded {
                model,
                bytes,
                seconds,
                from_page_cache,
            }
        }
        "ModelUnloaded" => {
            // A daemon before `kept_bytes` sends one argument less: the leading ones decide.
            type Unloaded = (String, String, String, u64, String, String, String, u64);
            let (model, mode, _reason, freed_bytes, cause, ..): Unloaded = body
                .deserialize::<(String, String, String, u64, String, String, String, u64, u64)>()
                .map(|(m, mo, r, f, c, fm, fr, n, _kept)| (m, mo, r, f, c, fm, fr, n))
                .or_else(|_| body.deserialize::<Unloaded>())
                .ok()?;
            Signal::Unloaded {
                model,
                mode,
                cause,
                freed_bytes,
            }
        }
        "RequestQueued" => {
            let (model, _reason, request_id, waiting_for, needed_bytes, free_bytes): (
                String,
                String,
                String,
                String,
                u64,
                u64,
            ) = body.deserialize().ok()?;
            Signal::Queued {
                model,
                request_id,
                waiting_for,
                needed_bytes,
                free_bytes,
            }
        }
        "ModelRestored" => {
            let (model, bytes, _reason): (String, u64, String) = body.deserialize().ok()?;
            Signal::Restored { model, bytes }
        }
        "RequestFinished" => Signal::Finished(finished(body.deserialize().ok()?)),
        "WorkerCrashed" => {
            let (model, reason) = body.deserialize().ok()?;
            Signal::Crashed { model, reason }
        }
        _ => return None,
    })
}

fn finished(args: FinishedArgs) -> Finished {
    let (
        model,
        request_id,
        kind,
        outcome,
        error,
        waited_seconds,
        needed_bytes,
        free_bytes,
        vae,
        vae_seconds,
        slower,
        freed,
    ) = args;
    Finished {
        model,
        request_id,
        kind,
        outcome,
        error,
        waited_seconds,
        needed_bytes,
        free_bytes,
        vae_placement: vae,
        vae_seconds,
        slower_seconds: slower,
        freed: (freed.into_iter())
            .map(|(model, mode, bytes)| Freed { model, mode, bytes })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal<B>(member: &str, body: &B) -> Message
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        Message::signal(OBJECT_PATH, INTERFACE, member)
            .unwrap()
            .build(body)
            .unwrap()
    }

    #[test]
    fn signal_messages_decode() {
        let m = signal(
            "ModelUnloaded",
            &("chat", "soft", "r", 512u64, "room", "sd", "req-1", 300u64, 64u64),
        );
        assert_eq!(
            decode(&m),
            Some(Signal::Unloaded {
                model: "chat".into(),
                mode: "soft".into(),
                cause: "room".into(),
                freed_bytes: 512
            })
        );
        let older = signal(
            "ModelUnloaded",
            &("chat", "soft", "r", 512u64, "room", "sd", "req-1", 300u64),
        );
        assert_eq!(decode(&older), decode(&m), "a daemon before kept_bytes");
        let freed = vec![("chat", "soft", 512u64)];
        let m = signal(
            "RequestFinished",
            &(
                "sd", "req-1", "image", "done", "", 1.5f64, 0u64, 0u64, "cpu", 30.0f64, 28.0f64, freed,
            ),
        );
        let Some(Signal::Finished(f)) = decode(&m) else {
            panic!("{:?}", decode(&m))
        };
        assert_eq!(
            (f.request_id.as_str(), f.vae_placement.as_str(), f.slower_seconds),
            ("req-1", "cpu", 28.0)
        );
        assert_eq!(f.freed[0].model, "chat");
        let m = signal("RequestQueued", &("sd", "r", "req-1", "chat", 1u64, 2u64));
        assert!(matches!(decode(&m), Some(Signal::Queued { free_bytes: 2, .. })));
        let m = signal("ModelRestored", &("chat", 512u64, "r"));
        assert!(matches!(decode(&m), Some(Signal::Restored { bytes: 512, .. })));
        // Told by RequestFinished, not on its own.
        let m = signal("VaeOffloaded", &("sd", 512u32, 512u32, "cpu", "r", "req-1"));
        assert_eq!(decode(&m), None);
        // A body that is not the contract's is ignored, not misread.
        let wrong = signal("ModelUnloaded", &("chat", "soft", "r", 512u64));
        assert_eq!(decode(&wrong), None);
    }

    #[test]
    fn errors_are_said_once_with_their_cause_once() {
        let io = zbus::Error::InputOutput(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::NotFound)));
        assert_eq!(plain(&io), "entity not found");
        let mut log = Log::default();
        log.say("t", "down", "first");
        assert_eq!(log.said.get("t"), Some(&"down"));
        log.forget("t");
        assert!(log.said.is_empty());
    }
}

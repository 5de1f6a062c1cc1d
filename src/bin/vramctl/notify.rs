//! `vramctl notify`: the per-user desktop notification agent (`vramd-notify.service`).
//!
//! It follows vramd's signals on the system bus and shows them with
//! `org.freedesktop.Notifications.Notify` on the user's session bus. Signals that arrive
//! close together (one request's evictions, VAE decision and load) are coalesced into one
//! notification, and each notification replaces the previous one rather than stacking.
//! What the notification says is [`crate::sentences`]. Either bus going away, or vramd not
//! running, is logged and retried: the agent lives as long as the graphical session.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use vramd::dbus::proxy::Vramd1Proxy;
use vramd::dbus::Backoff;
use zbus::message::Message;
use zbus::zvariant::Value;

use crate::sentences::{compose, Kinds, Quiet, Signal};

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
}

pub struct Options {
    pub quiet: Quiet,
    /// A burst ends after this long without a signal…
    pub settle: Duration,
    /// …or this long after it began, whichever comes first.
    pub max_burst: Duration,
}

/// Runs until killed; every failure is logged and retried.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut last_id = 0;
    loop {
        let started = Instant::now();
        let e = follow(&opts, &mut last_id).await;
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        eprintln!("vramctl notify: {e:#}; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

/// Follows signals until something fails; returns what failed.
async fn follow(opts: &Options, last_id: &mut u32) -> anyhow::Error {
    match follow_inner(opts, last_id).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn follow_inner(opts: &Options, last_id: &mut u32) -> anyhow::Result<std::convert::Infallible> {
    let system = zbus::Connection::system()
        .await
        .context("connecting to the system bus")?;
    let desktop = zbus::Connection::session()
        .await
        .context("connecting to the session bus")?;
    let vramd = Vramd1Proxy::new(&system).await?;
    let notifications = NotificationsProxy::new(&desktop).await?;
    let mut signals = vramd.inner().receive_all_signals().await?;
    eprintln!("vramctl notify: listening for org.vramd.Vramd1 signals");
    let mut kinds = list_kinds(&vramd).await;
    loop {
        let first = signals.next().await.context("the system bus connection closed")?;
        let mut burst: Vec<Signal> = decode(&first).into_iter().collect();
        let began = Instant::now();
        loop {
            let left = opts.max_burst.saturating_sub(began.elapsed()).min(opts.settle);
            match tokio::time::timeout(left, signals.next()).await {
                Ok(Some(m)) => burst.extend(decode(&m)),
                Ok(None) | Err(_) => break,
            }
        }
        if burst.iter().any(|s| !kinds.contains_key(s.model())) {
            kinds = list_kinds(&vramd).await;
        }
        let Some(n) = compose(&burst, &kinds, &opts.quiet) else {
            continue;
        };
        let hints = HashMap::from([("urgency", Value::U8(n.urgency))]);
        *last_id = notifications
            .notify("vramd", *last_id, "", &n.summary, &n.body, &[], hints, -1)
            .await
            .context("showing a notification")?;
    }
}

/// Model kinds from `ListModels`; empty when vramd does not answer (it may start later).
async fn list_kinds(vramd: &Vramd1Proxy<'_>) -> Kinds {
    match vramd.list_models().await {
        Ok(rows) => rows.into_iter().map(|r| (r.0, r.1)).collect(),
        Err(e) => {
            eprintln!("vramctl notify: cannot list vramd's models ({e}); notifications name models generically");
            Kinds::new()
        }
    }
}

/// A signal message as a [`Signal`]; `None` for other members or malformed bodies.
fn decode(m: &Message) -> Option<Signal> {
    let header = m.header();
    let body = m.body();
    Some(match header.member()?.as_str() {
        "ModelLoaded" => {
            let (model, bytes, seconds, from_page_cache): (String, u64, f64, bool) = body.deserialize().ok()?;
            Signal::Loaded {
                model,
                bytes,
                seconds,
                from_page_cache,
            }
        }
        "ModelUnloaded" => {
            let (model, mode, reason, freed_bytes): (String, String, String, u64) = body.deserialize().ok()?;
            Signal::Unloaded {
                model,
                mode,
                reason,
                freed_bytes,
            }
        }
        "VaeOffloaded" => {
            let (model, width, height, placement, reason): (String, u32, u32, String, String) =
                body.deserialize().ok()?;
            Signal::Vae {
                model,
                width,
                height,
                placement,
                reason,
            }
        }
        "RequestQueued" => {
            let (model, reason): (String, String) = body.deserialize().ok()?;
            Signal::Queued { model, reason }
        }
        "WorkerCrashed" => {
            let (model, reason): (String, String) = body.deserialize().ok()?;
            Signal::Crashed { model, reason }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_messages_decode() {
        let m = Message::signal("/org/vramd/Vramd1", "org.vramd.Vramd1", "ModelUnloaded")
            .unwrap()
            .build(&("chat", "soft", "requested", 512u64))
            .unwrap();
        assert_eq!(
            decode(&m),
            Some(Signal::Unloaded {
                model: "chat".into(),
                mode: "soft".into(),
                reason: "requested".into(),
                freed_bytes: 512
            })
        );
        let m = Message::signal("/org/vramd/Vramd1", "org.vramd.Vramd1", "VaeOffloaded")
            .unwrap()
            .build(&("sd", 512u32, 768u32, "cpu", "r"))
            .unwrap();
        assert!(matches!(decode(&m), Some(Signal::Vae { height: 768, .. })));
        let wrong = Message::signal("/org/vramd/Vramd1", "org.vramd.Vramd1", "ModelLoaded")
            .unwrap()
            .build(&("x",))
            .unwrap();
        assert_eq!(decode(&wrong), None);
    }
}

//! The D-Bus interface: `org.vramd.Vramd1` at `/org/vramd/Vramd1`, on the bus chosen by
//! `[dbus] bus` (see `dbus/org.vramd.Vramd1.xml` for the contract).
//!
//! This module is wiring: connect, serve the interface, own the name, forward signals, and
//! start over when anything fails. D-Bus is an extra window onto the daemon, never a
//! condition for it: no bus, a name someone else holds, or a bus that goes away is logged
//! and retried with a growing delay while the HTTP API serves on.
//!
//! - `interface.rs`: the methods and properties (arbiter commands and snapshots only);
//! - `signals.rs`: events → signals, `FreeBytes` change notifications;
//! - `error.rs`: the typed D-Bus errors;
//! - `proxy.rs`: the client side, for `vramctl notify` and the tests.

mod error;
pub mod interface;
pub mod polkit;
pub mod proxy;
pub mod signals;

use std::time::Duration;

pub use error::Error;

use crate::arbiter::ArbiterHandle;
use crate::config::BusKind;

pub const BUS_NAME: &str = "org.vramd.Vramd1";
pub const OBJECT_PATH: &str = "/org/vramd/Vramd1";
pub const INTERFACE: &str = "org.vramd.Vramd1";

/// Retry delays: from `first`, doubling up to `max`, back to `first` after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Serves the interface on `bus` for as long as the daemon runs (never returns unless the
/// bus is `none`).
pub async fn serve(bus: BusKind, arbiter: ArbiterHandle, control_group: String) {
    if bus == BusKind::None {
        tracing::debug!("D-Bus: disabled ([dbus] bus = \"none\")");
        return;
    }
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match connect(bus, &arbiter, &control_group).await {
            Ok(conn) => {
                tracing::info!("D-Bus: serving {BUS_NAME} on the {} bus", bus_word(bus));
                backoff.reset();
                let iface = conn
                    .object_server()
                    .interface::<_, interface::Vramd1>(OBJECT_PATH)
                    .await;
                let why = match iface {
                    Ok(iface) => tokio::select! {
                        _ = conn.closed() => "the bus closed the connection".to_owned(),
                        e = signals::forward(iface, arbiter.clone()) => format!("emitting a signal failed: {e}"),
                    },
                    Err(e) => format!("the interface is not registered: {e}"),
                };
                tracing::warn!("D-Bus: lost the {} bus: {why}", bus_word(bus));
            }
            Err(e) => {
                let delay = backoff.next;
                tracing::warn!(
                    "D-Bus: cannot serve {BUS_NAME} on the {} bus: {e}; retrying in {delay:?} (the HTTP API is unaffected)",
                    bus_word(bus)
                );
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Connects, registers the interface, then asks for the name (so no call can arrive before
/// the object exists). A name already owned is an error (`NameTaken`): the retry asks again.
async fn connect(bus: BusKind, arbiter: &ArbiterHandle, control_group: &str) -> zbus::Result<zbus::Connection> {
    let builder = match bus {
        BusKind::Session => zbus::connection::Builder::session()?,
        _ => zbus::connection::Builder::system()?,
    };
    let iface = interface::Vramd1 {
        arbiter: arbiter.clone(),
        control_group: control_group.to_owned(),
    };
    builder
        .serve_at(OBJECT_PATH, iface)?
        .name(BUS_NAME)?
        // Neither take the name from another owner nor let one take it from us unnoticed:
        // a second vramd on the same bus waits its turn through the retry.
        .replace_existing_names(false)
        .allow_name_replacements(false)
        .build()
        .await
}

fn bus_word(bus: BusKind) -> &'static str {
    match bus {
        BusKind::System => "system",
        BusKind::Session => "session",
        BusKind::None => "no",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }
}

//! polkit for D-Bus state changes: a fake `org.freedesktop.PolicyKit1` authority on a private
//! bus (it allows only calls made with interactive authorization, as if an administrator
//! typed their password) shows what vramd asks and what it does with the answer. Root and the
//! control group never reach polkit; without polkit the group rule alone decides (`dbus.rs`
//! `an_unprivileged_caller_gets_access_denied`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use zbus::zvariant::OwnedValue;

use crate::dbus_util::{open_socket, runtime, two_models, PrivateBus, NAME, PATH};

const IFACE: &str = "org.vramd.Vramd1";

/// What the fake authority was asked: subject kind, bus name, action, flags.
type Asked = Arc<Mutex<Vec<(String, String, String, u32)>>>;

struct FakeAuthority {
    asked: Asked,
}

#[zbus::interface(name = "org.freedesktop.PolicyKit1.Authority")]
impl FakeAuthority {
    async fn check_authorization(
        &self,
        subject: (String, HashMap<String, OwnedValue>),
        action_id: String,
        _details: HashMap<String, String>,
        flags: u32,
        _cancellation_id: String,
    ) -> (bool, bool, HashMap<String, String>) {
        let name = subject
            .1
            .get("name")
            .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
            .unwrap_or_default();
        self.asked.lock().unwrap().push((subject.0, name, action_id, flags));
        // AllowUserInteraction (1): "the administrator's password was typed".
        (flags & 1 == 1, true, HashMap::new())
    }
}

#[test]
fn polkit_decides_for_callers_outside_the_control_group() {
    let bus = PrivateBus::start();
    let asked: Asked = Arc::default();
    let rt = runtime();
    let _authority = rt.block_on(async {
        zbus::connection::Builder::address(bus.address.as_str())
            .unwrap()
            .name("org.freedesktop.PolicyKit1")
            .unwrap()
            .serve_at(
                "/org/freedesktop/PolicyKit1/Authority",
                FakeAuthority { asked: asked.clone() },
            )
            .unwrap()
            .build()
            .await
            .unwrap()
    });
    let (config, _keep) = two_models("");
    let d = bus.daemon(&config);
    let load_as_nobody = |interactive: bool| {
        let flag = format!(
            "--allow-interactive-authorization={}",
            if interactive { "yes" } else { "no" }
        );
        let out = bus.busctl_as(65534, 65534, &[&flag, "call", NAME, PATH, IFACE, "Load", "s", "chat"]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    };

    // Not interactive: polkit says no, and the error says how it could be yes.
    let (ok, err) = load_as_nobody(false);
    assert!(!ok);
    assert!(err.contains("polkit did not allow org.vramd.manage"), "{err}");
    assert!(err.contains("--allow-interactive-authorization=yes"), "{err}");
    assert_eq!(d.model_status("chat")["state"], "unloaded");

    // Interactive: polkit says yes (the password dialog, here faked), and the model loads.
    let (ok, err) = load_as_nobody(true);
    assert!(ok, "{err}");
    d.wait_model("chat", std::time::Duration::from_secs(20), |m| m["state"] == "loaded");

    // What vramd asked: the caller's own bus name, the one action, the flag as sent.
    let calls = asked.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for ((kind, name, action, _), flags) in calls.iter().zip([0, 1]) {
        assert_eq!(
            (kind.as_str(), action.as_str()),
            ("system-bus-name", "org.vramd.manage")
        );
        assert!(name.starts_with(':'), "a unique bus name: {name}");
        assert_eq!(calls.iter().filter(|c| c.3 == flags).count(), 1);
    }

    // Root is allowed by the group rule, without asking polkit.
    let out = bus.busctl(&["call", NAME, PATH, IFACE, "Unload", "ss", "chat", "hard"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(asked.lock().unwrap().len(), 2, "polkit was not asked for root");

    // vramctl, refused by the socket (403), asks again over D-Bus with interactive
    // authorization: polkit (the dialog, faked) allows it.
    open_socket(&d);
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_vramctl"),
        ])
        .arg("--socket")
        .arg(&d.socket)
        .args(["pin", "chat"])
        .env("VRAMD_BUS", "session")
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "chat pinned (over D-Bus, allowed by polkit)\n");
    assert_eq!(d.model_status("chat")["pinned"], true);
    assert_eq!(
        asked.lock().unwrap().last().map(|c| c.3),
        Some(1),
        "asked interactively"
    );
}

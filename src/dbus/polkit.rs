//! polkit for the D-Bus methods that change state, as fwupd and systemd do it.
//!
//! The action is `org.vramd.manage` (`dbus/org.vramd.policy`): active local users may
//! authenticate as an administrator; the shipped rules file (`dbus/org.vramd.rules`) lets
//! members of the `vramd` group through without a prompt. vramd asks polkit only for callers
//! the access rule refuses (neither root nor in `[daemon] control_group`), so the group
//! check needs no polkit and stays the whole rule where polkit is absent (no
//! `org.freedesktop.PolicyKit1` on the bus). A caller that sets the message flag
//! `ALLOW_INTERACTIVE_AUTHORIZATION` (`busctl --allow-interactive-authorization=yes`,
//! `vramctl` when HTTP refuses it) may be shown the desktop's password dialog.
//!
//! polkit is asked on the bus vramd serves on: the system bus when installed (where polkit
//! lives), a private bus with a fake authority in the tests.

use std::collections::HashMap;

use zbus::zvariant::Value;
use zbus::Connection;

/// The polkit action of every state change over D-Bus.
pub const ACTION: &str = "org.vramd.manage";

#[zbus::proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority",
    gen_blocking = false
)]
trait Authority {
    /// `subject` is `(kind, details)`: here `("system-bus-name", {"name": sender})`.
    #[allow(clippy::type_complexity)]
    fn check_authorization(
        &self,
        subject: &(&str, HashMap<&str, Value<'_>>),
        action_id: &str,
        details: HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<(bool, bool, HashMap<String, String>)>;
}

/// What polkit said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Authorized,
    /// Refused; `challenge`: it would have asked for a password had the caller allowed it.
    NotAuthorized {
        challenge: bool,
    },
    /// No polkit on this bus (or it could not answer): the group rule alone decides.
    Unavailable(String),
}

/// Asks polkit whether `sender` may do [`ACTION`]; `interactive` lets it ask for a password.
pub async fn check(conn: &Connection, sender: &str, interactive: bool) -> Verdict {
    let authority = match AuthorityProxy::new(conn).await {
        Ok(a) => a,
        Err(e) => return Verdict::Unavailable(e.to_string()),
    };
    let subject = ("system-bus-name", HashMap::from([("name", Value::from(sender))]));
    // CheckAuthorizationFlags: 1 = AllowUserInteraction.
    let flags = u32::from(interactive);
    match authority
        .check_authorization(&subject, ACTION, HashMap::new(), flags, "")
        .await
    {
        Ok((true, _, _)) => Verdict::Authorized,
        Ok((false, challenge, _)) => Verdict::NotAuthorized { challenge },
        Err(e) => Verdict::Unavailable(e.to_string()),
    }
}

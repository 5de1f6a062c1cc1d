//! A state change the socket refused (403), asked again over D-Bus with interactive
//! authorization: for a caller who is neither root nor in the control group, vramd then asks
//! polkit (action `org.vramd.manage`), which may show the desktop's password dialog (or
//! `pkttyagent` in a terminal) for an administrator. Where D-Bus, vramd on it or polkit is
//! missing, the socket's refusal stands, word for word.
//!
//! The bus is the system bus (the installed daemon's), or the session bus with
//! `VRAMD_BUS=session` (a per-user vramd, and the tests).

use zbus::proxy::MethodFlags;
use zbus::zvariant::DynamicType;

/// How the second try ended.
pub enum Outcome {
    /// Done over D-Bus.
    Allowed,
    /// vramd answered over D-Bus, and refused too (its message).
    Refused(String),
    /// No answer over D-Bus: the socket's refusal stands.
    Unavailable,
}

/// Calls `method` of `org.vramd.Vramd1` with `body`, allowing interactive authorization.
pub fn call<B>(method: &'static str, body: &B) -> Outcome
where
    B: serde::Serialize + DynamicType,
{
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return Outcome::Unavailable;
    };
    rt.block_on(async {
        let session = std::env::var("VRAMD_BUS").is_ok_and(|b| b == "session");
        let conn = if session {
            zbus::Connection::session().await
        } else {
            zbus::Connection::system().await
        };
        let Ok(conn) = conn else { return Outcome::Unavailable };
        let Ok(proxy) = vramd::dbus::proxy::Vramd1Proxy::new(&conn).await else {
            return Outcome::Unavailable;
        };
        let reply = proxy
            .inner()
            .call_with_flags::<_, B, ()>(method, MethodFlags::AllowInteractiveAuth.into(), body)
            .await;
        match reply {
            Ok(_) => Outcome::Allowed,
            Err(zbus::Error::MethodError(name, message, _)) if name.starts_with("org.vramd.Vramd1.Error.") => {
                Outcome::Refused(message.unwrap_or_else(|| name.to_string()))
            }
            Err(_) => Outcome::Unavailable,
        }
    })
}

//! The HTTP side of the access rule: [`Privileged`], the extractor that state-changing
//! handlers take, and where an HTTP caller's credentials come from.
//!
//! The rule itself, and the credential lookups, are [`crate::access`]'s; a refusal becomes a
//! 403 through `From<Denied> for ApiError` in `error.rs`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::{Extension, Json};

use super::{ApiError, AppState, KeyRole};
use crate::access::{self, Caller};
use crate::server::Peer;

/// An extractor that admits only callers allowed to change state; handlers that do take it
/// as their first argument, so the check runs before the body is read.
pub struct Privileged;

impl FromRequestParts<AppState> for Privileged {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = peer_caller(parts.extensions.get::<Peer>());
        let key = parts.extensions.get::<KeyRole>().map(|k| k.0);
        access::authorize(&caller, key, &state.config.daemon.control_group).map_err(|e| {
            tracing::info!(?caller, "refused: {e}");
            ApiError::from(e)
        })?;
        Ok(Privileged)
    }
}

/// Whether the caller may change state, for a handler to which a refusal is no error:
/// Ollama's `keep_alive: 0` unloads the model for such a caller and is only advice from
/// anyone else (see `ollama.rs`).
pub struct MayChangeState(pub bool);

impl FromRequestParts<AppState> for MayChangeState {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = peer_caller(parts.extensions.get::<Peer>());
        let key = parts.extensions.get::<KeyRole>().map(|k| k.0);
        Ok(MayChangeState(
            access::authorize(&caller, key, &state.config.daemon.control_group).is_ok(),
        ))
    }
}

/// `GET /v1/me`: whether this caller may change state, and over which transport, decided by
/// the one access rule (`access::check`, through [`MayChangeState`]), so that the status page
/// shows its controls only to callers for whom they work, never as buttons that fail.
pub async fn me(MayChangeState(may): MayChangeState, peer: Option<Extension<Peer>>) -> Json<serde_json::Value> {
    let transport = match peer.as_deref() {
        Some(Peer::Unix { .. }) => "unix",
        Some(Peer::Tcp(_)) | None => "tcp",
    };
    Json(serde_json::json!({"may_control": may, "transport": transport}))
}

/// The caller behind an HTTP connection: the Unix socket's peer as the kernel describes it,
/// or nobody to vouch for.
fn peer_caller(peer: Option<&Peer>) -> Caller {
    match peer {
        Some(Peer::Unix { uid, gid, pid, groups }) => {
            access::socket_caller(*uid, *gid, groups, pid.and_then(|p| u32::try_from(p).ok()))
        }
        // No peer (a request not from `server::run`) or TCP: nobody to vouch for.
        Some(Peer::Tcp(_)) | None => Caller::Remote,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unix_peers_are_local() {
        assert_eq!(peer_caller(None), Caller::Remote);
        let tcp = Peer::Tcp("127.0.0.1:4242".parse().unwrap());
        assert_eq!(peer_caller(Some(&tcp)), Caller::Remote);
        // A Unix peer is the socket's caller: the kernel's gid first, then SO_PEERGROUPS'.
        // (Its pid cannot be negative; one that is counts as unknown.)
        let unix = Peer::Unix {
            uid: 65534,
            gid: 12345,
            pid: Some(-1),
            groups: vec![4242, 12345],
        };
        assert_eq!(
            peer_caller(Some(&unix)),
            access::socket_caller(65534, 12345, &[4242, 12345], None)
        );
        let Caller::Local { uid, gids } = peer_caller(Some(&unix)) else {
            panic!("a Unix peer is local")
        };
        assert_eq!((uid, &gids[..2]), (65534, &[12345, 4242][..]));
    }
}

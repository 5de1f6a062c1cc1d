//! The `org.vramd.Vramd1` interface served at `/org/vramd/Vramd1`.
//!
//! Like the HTTP handlers, every method here either reads the arbiter's latest snapshot or
//! sends it a command through the [`ArbiterHandle`]; the interface keeps no state of its own.
//! Methods that change state check the caller first (see [`crate::access`]).
//!
//! The doc comments below are served in the introspection data, and
//! `dbus/org.vramd.Vramd1.xml` is that data checked in (a test compares the two).

// A signal's arguments are the interface's contract (dbus/org.vramd.Vramd1.xml), one D-Bus
// argument each so that `busctl` and every binding read them by name; the functions zbus
// generates for them take one parameter per argument.
#![allow(clippy::too_many_arguments)]

use zbus::fdo::DBusProxy;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::Connection;

use super::error::Error;
use super::polkit::{self, Verdict};
use crate::access::{authorize, bus_caller};
use crate::arbiter::{ArbiterHandle, UnloadMode};
use crate::estimate::EstimateQuery;

/// The largest width or height `Estimate` takes (far above any model's limit).
const MAX_SIDE: u32 = 16384;

pub struct Vramd1 {
    pub(super) arbiter: ArbiterHandle,
    /// `[daemon] control_group`, resolved on each check.
    pub(super) control_group: String,
}

/// One row of `ListModels`: name, kind, state, bytes held, peak bytes, last use.
pub type ModelRow = (String, String, String, u64, u64, i64);

/// vramd: one GPU's memory shared between a local LLM and Stable Diffusion.
///
/// Anyone may read the properties and call ListModels, Status and Estimate. Load, Unload
/// and SetPinned are allowed to root and members of the daemon's control group (`vramd`
/// by default) and fail with org.vramd.Vramd1.Error.AccessDenied otherwise.
#[zbus::interface(name = "org.vramd.Vramd1")]
impl Vramd1 {
    /// The daemon's version.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        self.arbiter.snapshot().version.to_owned()
    }

    /// Where memory figures come from: `nvml` (the device) or `budget` (a configured total).
    #[zbus(property(emits_changed_signal = "const"))]
    fn backend(&self) -> String {
        self.arbiter.snapshot().memory.backend.to_string()
    }

    /// Device memory vramd manages, in bytes.
    #[zbus(property(emits_changed_signal = "const"))]
    fn total_bytes(&self) -> u64 {
        self.arbiter.snapshot().memory.total_bytes
    }

    /// Bytes free for new work (total minus reserve minus what models hold, and never more
    /// than the device reports free). PropertiesChanged is emitted when it moves by more
    /// than 64 MiB.
    #[zbus(property)]
    fn free_bytes(&self) -> u64 {
        self.arbiter.snapshot().memory.free_bytes
    }

    /// Bytes never planned into (`[memory] reserve`).
    #[zbus(property(emits_changed_signal = "const"))]
    fn reserved_bytes(&self) -> u64 {
        self.arbiter.snapshot().memory.reserve_bytes
    }

    /// Every configured model: name, kind (`llm` or `image`), state (`unloaded`, `loading`,
    /// `loaded`, `soft_unloaded`, `busy`, `unloading`, `failed`), bytes held, peak bytes,
    /// and the Unix time of its last use (-1 if never used).
    #[zbus(out_args("models"))]
    fn list_models(&self) -> Vec<ModelRow> {
        self.arbiter
            .snapshot()
            .models
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    m.kind.as_str().to_owned(),
                    state_name(m.state),
                    m.held(),
                    m.peak_bytes,
                    m.last_used.and_then(|t| i64::try_from(t).ok()).unwrap_or(-1),
                )
            })
            .collect()
    }

    /// The daemon's whole state as JSON, exactly what `GET /v1/status` answers.
    #[zbus(out_args("json"))]
    async fn status(&self) -> Result<String, Error> {
        let snapshot = self.arbiter.current().await?;
        Ok(serde_json::to_string(&*snapshot).expect("snapshot serialises"))
    }

    /// Bytes a model needs on the device: for an image model, to make one image of
    /// width × height (0 × 0: 512 × 512); for an LLM, at its configured context (the size
    /// is ignored).
    #[zbus(out_args("bytes"))]
    async fn estimate(&self, model: &str, width: u32, height: u32) -> Result<u64, Error> {
        let query = estimate_query(width, height)?;
        Ok(self.arbiter.estimate(model, query).await?.total)
    }

    /// Loads a model now, making room as the policy allows (a failed model is retried).
    async fn load(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        model: &str,
    ) -> Result<(), Error> {
        self.authorize(&header, conn).await?;
        self.arbiter.load(model).await?;
        Ok(())
    }

    /// Unloads a model: `soft` frees its KV cache and compute buffers and keeps the weights;
    /// `hard` stops its worker, giving back everything.
    async fn unload(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        model: &str,
        mode: &str,
    ) -> Result<(), Error> {
        let mode = unload_mode(mode)?;
        self.authorize(&header, conn).await?;
        self.arbiter.unload(model, mode).await?;
        Ok(())
    }

    /// Pins a model (never evicted to make room) or unpins it.
    async fn set_pinned(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        model: &str,
        pinned: bool,
    ) -> Result<(), Error> {
        self.authorize(&header, conn).await?;
        self.arbiter.set_pinned(model, pinned).await?;
        Ok(())
    }

    /// A model finished loading: bytes it holds, seconds the load took, and whether its
    /// weights were already in RAM (the page cache) when the load started.
    #[zbus(signal)]
    pub async fn model_loaded(
        emitter: &SignalEmitter<'_>,
        model: &str,
        bytes: u64,
        seconds: f64,
        from_page_cache: bool,
    ) -> zbus::Result<()>;

    /// A model gave memory back: mode `soft` (KV cache and compute buffers freed, weights
    /// kept) or `hard` (worker stopped), why, and how many bytes were freed. `cause` is
    /// `room` (it made room for request `for_request` on `for_model`, which needed
    /// `needed_bytes`), `idle` (its keep_alive ran out), `requested`, `interrupted` (its
    /// image was stopped) or `other`; `for_model`, `for_request` and `needed_bytes` are empty
    /// or 0 unless `room`. `kept_bytes`: an LLM's KV copied to host memory by a soft unload
    /// (put back when its context returns, so its conversations need no prefill), else 0.
    #[zbus(signal)]
    pub async fn model_unloaded(
        emitter: &SignalEmitter<'_>,
        model: &str,
        mode: &str,
        reason: &str,
        freed_bytes: u64,
        cause: &str,
        for_model: &str,
        for_request: &str,
        needed_bytes: u64,
        kept_bytes: u64,
    ) -> zbus::Result<()>;

    /// An image's VAE decode does not run whole on the GPU: placement `tiled` (on the GPU in
    /// tiles) or `cpu`, instead of evicting a model; `for_request` is the image's request.
    #[zbus(signal)]
    pub async fn vae_offloaded(
        emitter: &SignalEmitter<'_>,
        model: &str,
        width: u32,
        height: u32,
        placement: &str,
        reason: &str,
        for_request: &str,
    ) -> zbus::Result<()>;

    /// A request for a model waits: for `waiting_for` (a busy or unloading model; empty
    /// when none) to finish, needing `needed_bytes` with `free_bytes` free now.
    #[zbus(signal)]
    pub async fn request_queued(
        emitter: &SignalEmitter<'_>,
        model: &str,
        reason: &str,
        request_id: &str,
        waiting_for: &str,
        needed_bytes: u64,
        free_bytes: u64,
    ) -> zbus::Result<()>;

    /// A model's working memory, set aside to make room for a request, is back (restored in
    /// the background once memory allowed): `bytes` of KV cache and compute buffers.
    #[zbus(signal)]
    pub async fn model_restored(emitter: &SignalEmitter<'_>, model: &str, bytes: u64, reason: &str)
        -> zbus::Result<()>;

    /// A request's whole story, once it is over. `kind`: `text` or `image`. `outcome`:
    /// `done`, `cancelled` (the client left), `interrupted`, `failed` (`error` says why),
    /// `refused` (no room now, HTTP 503), `too_large` (more than the whole budget, 507) or
    /// `timed_out` (waited `[policy] wait_timeout` for memory, 503); `needed_bytes` and
    /// `free_bytes` are set for the last three. `waited_seconds`: time in the queue.
    /// Images: `vae_placement` (`gpu`, `tiled`, `cpu`; empty for text), the measured
    /// `vae_seconds` of the decode, and `slower_seconds` it cost against a whole decode on
    /// the device from this model's measured decodes (-1 until one was measured).
    /// `freed`: the models unloaded to make room for it (model, `soft`/`hard`, bytes).
    /// Sent only for requests worth telling about: one that waited, had memory freed for
    /// it, decoded its VAE off the device, or did not finish (`cancelled` only after a
    /// wait).
    #[zbus(signal)]
    pub async fn request_finished(
        emitter: &SignalEmitter<'_>,
        model: &str,
        request_id: &str,
        kind: &str,
        outcome: &str,
        error: &str,
        waited_seconds: f64,
        needed_bytes: u64,
        free_bytes: u64,
        vae_placement: &str,
        vae_seconds: f64,
        slower_seconds: f64,
        freed: &[(&str, &str, u64)],
    ) -> zbus::Result<()>;

    /// A model's worker process died; it is restarted on the next request.
    #[zbus(signal)]
    pub async fn worker_crashed(emitter: &SignalEmitter<'_>, model: &str, reason: &str) -> zbus::Result<()>;
}

impl Vramd1 {
    /// Checks the message's sender against the access rule, with the credentials the bus
    /// itself vouches for.
    async fn authorize(&self, header: &Header<'_>, conn: &Connection) -> Result<(), Error> {
        let denied = |why: String| Error::AccessDenied(format!("cannot identify the caller: {why}"));
        let sender = header
            .sender()
            .ok_or_else(|| denied("the message has no sender".into()))?;
        let bus = DBusProxy::new(conn).await.map_err(|e| denied(e.to_string()))?;
        let creds = bus
            .get_connection_credentials(sender.clone().into())
            .await
            .map_err(|e| denied(e.to_string()))?;
        let caller = bus_caller(
            creds.unix_user_id(),
            creds.unix_group_ids().cloned(),
            creds.process_id(),
        );
        let refused = match authorize(&caller, None, &self.control_group) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // Not root nor in the group: polkit may still allow it (see `polkit.rs`).
        let interactive = header
            .primary()
            .flags()
            .contains(zbus::message::Flags::AllowInteractiveAuth);
        match polkit::check(conn, sender.as_str(), interactive).await {
            Verdict::Authorized => {
                tracing::info!(%sender, ?caller, "D-Bus: allowed by polkit ({})", polkit::ACTION);
                Ok(())
            }
            Verdict::NotAuthorized { challenge } => {
                tracing::info!(%sender, ?caller, "D-Bus: refused by polkit: {refused}");
                let hint = if challenge && !interactive {
                    "; an administrator's password would allow it: call with interactive authorization (busctl --allow-interactive-authorization=yes)"
                } else {
                    ""
                };
                Err(Error::AccessDenied(format!(
                    "{refused}; polkit did not allow {}{hint}",
                    polkit::ACTION
                )))
            }
            Verdict::Unavailable(why) => {
                tracing::info!(%sender, ?caller, "D-Bus: refused: {refused} (polkit: {why})");
                Err(Error::from(refused))
            }
        }
    }
}

fn state_name(state: crate::registry::ModelState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `soft` or `hard`.
pub fn unload_mode(mode: &str) -> Result<UnloadMode, Error> {
    match mode {
        "soft" => Ok(UnloadMode::Soft),
        "hard" => Ok(UnloadMode::Hard),
        other => Err(Error::InvalidArgument(format!(
            "unload mode must be \"soft\" or \"hard\", not {other:?}"
        ))),
    }
}

/// 0 × 0 means the default size; one side alone, or a side above [`MAX_SIDE`], is refused.
pub fn estimate_query(width: u32, height: u32) -> Result<EstimateQuery, Error> {
    match (width, height) {
        (0, 0) => Ok(EstimateQuery::default()),
        (w, h) if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE => Err(Error::InvalidArgument(format!(
            "width and height must both be 0 (the default size) or both between 1 and {MAX_SIDE}, not {w}×{h}"
        ))),
        (w, h) => Ok(EstimateQuery {
            width: Some(w),
            height: Some(h),
            context: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        assert_eq!(unload_mode("soft").unwrap(), UnloadMode::Soft);
        assert_eq!(unload_mode("hard").unwrap(), UnloadMode::Hard);
        assert!(matches!(unload_mode("gentle"), Err(Error::InvalidArgument(m)) if m.contains("\"gentle\"")));
        assert_eq!(estimate_query(0, 0).unwrap(), EstimateQuery::default());
        assert_eq!(estimate_query(1024, 768).unwrap().width, Some(1024));
        assert!(matches!(estimate_query(512, 0), Err(Error::InvalidArgument(_))));
        assert!(matches!(estimate_query(99999, 512), Err(Error::InvalidArgument(_))));
        assert_eq!(state_name(crate::registry::ModelState::SoftUnloaded), "soft_unloaded");
    }
}

//! The client side of `org.vramd.Vramd1`, for `vramctl notify` and the tests.
//!
//! Methods return the typed [`Error`](super::Error), so a caller can match on
//! `Error::AccessDenied(_)` rather than on an error name.

use super::interface::ModelRow;
use super::Error;

#[zbus::proxy(
    interface = "org.vramd.Vramd1",
    default_service = "org.vramd.Vramd1",
    default_path = "/org/vramd/Vramd1",
    gen_blocking = false
)]
pub trait Vramd1 {
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn backend(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn total_bytes(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn free_bytes(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn reserved_bytes(&self) -> zbus::Result<u64>;

    fn list_models(&self) -> Result<Vec<ModelRow>, Error>;
    fn status(&self) -> Result<String, Error>;
    fn estimate(&self, model: &str, width: u32, height: u32) -> Result<u64, Error>;
    fn load(&self, model: &str) -> Result<(), Error>;
    fn unload(&self, model: &str, mode: &str) -> Result<(), Error>;
    fn set_pinned(&self, model: &str, pinned: bool) -> Result<(), Error>;

    #[zbus(signal)]
    fn model_loaded(&self, model: String, bytes: u64, seconds: f64, from_page_cache: bool) -> zbus::Result<()>;
    #[zbus(signal)]
    #[allow(clippy::too_many_arguments)]
    fn model_unloaded(
        &self,
        model: String,
        mode: String,
        reason: String,
        freed_bytes: u64,
        cause: String,
        for_model: String,
        for_request: String,
        needed_bytes: u64,
        kept_bytes: u64,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    #[allow(clippy::too_many_arguments)]
    fn vae_offloaded(
        &self,
        model: String,
        width: u32,
        height: u32,
        placement: String,
        reason: String,
        for_request: String,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    #[allow(clippy::too_many_arguments)]
    fn request_queued(
        &self,
        model: String,
        reason: String,
        request_id: String,
        waiting_for: String,
        needed_bytes: u64,
        free_bytes: u64,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn model_restored(&self, model: String, bytes: u64, reason: String) -> zbus::Result<()>;
    #[zbus(signal)]
    #[allow(clippy::too_many_arguments)]
    fn request_finished(
        &self,
        model: String,
        request_id: String,
        kind: String,
        outcome: String,
        error: String,
        waited_seconds: f64,
        needed_bytes: u64,
        free_bytes: u64,
        vae_placement: String,
        vae_seconds: f64,
        slower_seconds: f64,
        freed: Vec<(String, String, u64)>,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn worker_crashed(&self, model: String, reason: String) -> zbus::Result<()>;
}

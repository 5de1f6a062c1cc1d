//! Worker processes: where their binaries and sockets are, starting and watching them
//! ([`process`]), and talking to them ([`client`]) with the wire types of `vramd-protocol`.

pub mod client;
mod load;
pub mod process;

pub use load::LoadReport;

use std::path::{Path, PathBuf};

use vramd_protocol::cpu;

use crate::config::{DaemonConfig, ModelKind};

pub const LLM_WORKER: &str = "vramd-llm-worker";
pub const SD_WORKER: &str = "vramd-sd-worker";
pub const LIBEXEC_DIR: &str = "/usr/libexec/vramd";

/// Where workers are found and where their sockets go, resolved once at start.
#[derive(Clone, Debug)]
pub struct WorkerPaths {
    pub dir: PathBuf,
    /// The image worker's file name in `dir`: the build for the highest x86-64 level this
    /// CPU runs that is installed (packages ship one per level; ggml in stable-diffusion.cpp
    /// has no run-time dispatch), else `vramd-sd-worker`.
    pub sd_worker: String,
    pub runtime_dir: PathBuf,
    /// The runtime folder is this process's own (`/tmp/vramd-UID-PID`): remove it on exit.
    pub private: bool,
}

impl WorkerPaths {
    /// `[daemon] worker_dir`, else the folder of the running `vramd` when the workers are
    /// there (a build tree: `target/debug`), else `/usr/libexec/vramd`.
    pub fn resolve(config: &DaemonConfig) -> std::io::Result<WorkerPaths> {
        let dir = config.worker_dir.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(Path::to_owned))
                .filter(|d| d.join(LLM_WORKER).is_file() || d.join(SD_WORKER).is_file())
                .unwrap_or_else(|| PathBuf::from(LIBEXEC_DIR))
        });
        let (runtime_dir, private) = match &config.runtime_dir {
            Some(d) => (d.clone(), false),
            None => default_runtime_dir(),
        };
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let level = cpu::cpuinfo_level(&cpuinfo);
        let sd_worker = cpu::best_variant(SD_WORKER, level, |name| dir.join(name).is_file());
        tracing::info!(cpu = level.unwrap_or("unknown"), %sd_worker, "the image worker for this CPU");
        std::fs::create_dir_all(&runtime_dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&runtime_dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(WorkerPaths {
            dir,
            sd_worker,
            runtime_dir,
            private,
        })
    }

    pub fn binary(&self, kind: ModelKind) -> PathBuf {
        self.dir.join(match kind {
            ModelKind::Llm => LLM_WORKER,
            ModelKind::Image => &self.sd_worker,
        })
    }

    /// A fresh socket path; short, because Unix socket paths are limited to 107 bytes.
    pub fn socket(&self, seq: u64) -> PathBuf {
        self.runtime_dir.join(format!("w{seq}.sock"))
    }
}

/// The worker socket folder when none is configured, and whether it is this process's own.
fn default_runtime_dir() -> (PathBuf, bool) {
    // systemd's RuntimeDirectory= (vramd.service sets RuntimeDirectory=vramd/workers).
    if let Some(first) = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| v.to_str().and_then(|s| s.split(':').next().map(PathBuf::from)))
    {
        return (first, false);
    }
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR") {
        return (PathBuf::from(xdg).join("vramd"), false);
    }
    // SAFETY: getuid cannot fail.
    let dir = format!("/tmp/vramd-{}-{}", unsafe { libc::getuid() }, std::process::id());
    (PathBuf::from(dir), true)
}

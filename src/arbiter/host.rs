//! The arbiter's one boundary to the machine: device memory (NVML or the budget), the
//! page cache of model files (`mincore`, `WILLNEED`, `mlock`) and the calibration file.
//!
//! Everything the arbiter decides is computed from values; every value that comes from
//! outside comes through [`Host`]. Its calls are short and synchronous (an NVML query, a
//! `mincore` over mapped files); the one write, the calibration file, goes to a blocking
//! thread so the arbiter's loop never waits on a disk.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::config::Config;
use crate::estimate::Calibration;
use crate::memory::{BackendName, DeviceReading, MemorySource};
use crate::pagecache::{MappedFile, Residency};

pub(crate) struct Host {
    source: Box<dyn MemorySource>,
    files: HashMap<String, Vec<MappedFile>>,
    calibration_path: PathBuf,
}

impl Host {
    /// Maps every model's files (and locks them in RAM within `pin_ram`).
    pub fn new(config: &Config, source: Box<dyn MemorySource>) -> Host {
        let mut files = HashMap::new();
        for m in &config.models {
            let mapped = m.source.files().iter().map(|(_, p)| MappedFile::open(p)).collect();
            files.insert(m.name.clone(), mapped);
        }
        pin_files(config, &mut files);
        Host {
            source,
            files,
            calibration_path: config.daemon.state_dir.join("calibration.json"),
        }
    }

    pub fn memory(&mut self) -> Option<DeviceReading> {
        self.source.read()
    }

    pub fn backend(&self) -> BackendName {
        self.source.name()
    }

    /// Device bytes per process id (NVML; empty on the budget backend).
    pub fn per_process(&mut self) -> Vec<(u32, u64)> {
        self.source.per_process()
    }

    pub fn source(&mut self) -> &mut dyn MemorySource {
        self.source.as_mut()
    }

    /// How much of `model`'s files the page cache holds.
    pub fn residency(&self, model: &str) -> Residency {
        self.files
            .get(model)
            .into_iter()
            .flatten()
            .map(MappedFile::residency)
            .fold(Residency::default(), Residency::combine)
    }

    /// Asks the kernel to keep (or read back) `model`'s pages, so loading it again is fast.
    pub fn will_need(&self, model: &str) {
        for f in self.files.get(model).into_iter().flatten() {
            f.will_need();
        }
    }

    pub fn load_calibration(&self) -> Calibration {
        Calibration::load(&self.calibration_path).unwrap_or_else(|e| {
            tracing::warn!("ignoring the estimator calibration: {e}");
            Calibration::default()
        })
    }

    pub fn save_calibration(&self, calibration: &Calibration) {
        let (calibration, path) = (calibration.clone(), self.calibration_path.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = calibration.save(&path) {
                tracing::debug!("cannot save calibration to {}: {e}", path.display());
            }
        });
    }
}

/// Locks model files in RAM, in configuration order, while they fit `pin_ram`.
fn pin_files(config: &Config, files: &mut HashMap<String, Vec<MappedFile>>) {
    let mut budget = config.memory.pin_ram.0;
    if budget == 0 {
        return;
    }
    for m in &config.models {
        for f in files.get_mut(&m.name).into_iter().flatten() {
            if f.len() > budget {
                tracing::info!(file = %f.path.display(), "not locked in RAM: beyond [memory] pin_ram");
                continue;
            }
            match f.lock() {
                Ok(()) => budget -= f.len(),
                Err(e) => tracing::warn!(file = %f.path.display(), "cannot lock in RAM: {e}"),
            }
        }
    }
}

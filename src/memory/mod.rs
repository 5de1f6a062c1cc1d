//! Where memory figures come from, and how free memory is computed from them.
//!
//! The device's own "free" figure lags behind allocations a worker has just made, so vramd
//! plans with `min(device free, total − reserve − what the registry holds)`.

pub mod simulated;

use serde::Serialize;

use crate::config::{BackendKind, MemoryConfig};

/// The backend actually in use (`auto` resolves to one of these at start).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    Nvml,
    Budget,
}

impl std::fmt::Display for BackendName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendName::Nvml => "nvml",
            BackendName::Budget => "budget",
        })
    }
}

/// One reading of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceReading {
    pub total: u64,
    pub free: u64,
}

/// A source of device memory readings. Readings may block briefly (NVML), so the arbiter
/// takes them, never an HTTP handler.
pub trait MemorySource: Send {
    fn name(&self) -> BackendName;
    /// `None` when the source has no device to ask (the budget backend).
    fn read(&mut self) -> Option<DeviceReading>;
    /// Device bytes used by each process, where the source can tell (NVML).
    fn per_process(&mut self) -> Vec<(u32, u64)> {
        Vec::new()
    }
}

/// NVIDIA's management library, on one device. `libnvidia-ml.so` is opened at run time, so
/// vramd builds and runs without the driver; [`open_source`] falls back when it is missing.
pub struct Nvml {
    nvml: nvml_wrapper::Nvml,
    index: u32,
    warned: bool,
}

impl Nvml {
    pub fn init(index: u32) -> Result<Nvml, String> {
        let nvml = nvml_wrapper::Nvml::init().map_err(|e| format!("NVML is not available: {e}"))?;
        let device = nvml
            .device_by_index(index)
            .map_err(|e| format!("NVML has no device {index}: {e}"))?;
        let name = device.name().unwrap_or_else(|_| "unknown".into());
        let mem = device
            .memory_info()
            .map_err(|e| format!("NVML cannot read device {index}'s memory: {e}"))?;
        tracing::info!(device = index, name, total = mem.total, "using NVML");
        Ok(Nvml {
            nvml,
            index,
            warned: false,
        })
    }

    fn warn_once(&mut self, what: &str, e: nvml_wrapper::error::NvmlError) {
        if !self.warned {
            self.warned = true;
            tracing::warn!("NVML: {what} failed: {e} (further failures are not logged)");
        }
    }
}

impl MemorySource for Nvml {
    fn name(&self) -> BackendName {
        BackendName::Nvml
    }

    fn read(&mut self) -> Option<DeviceReading> {
        let r = self.nvml.device_by_index(self.index).and_then(|d| d.memory_info());
        match r {
            Ok(m) => Some(DeviceReading {
                total: m.total,
                free: m.free,
            }),
            Err(e) => {
                self.warn_once("reading memory", e);
                None
            }
        }
    }

    fn per_process(&mut self) -> Vec<(u32, u64)> {
        use nvml_wrapper::enums::device::UsedGpuMemory;
        let r = self
            .nvml
            .device_by_index(self.index)
            .and_then(|d| d.running_compute_processes());
        match r {
            Ok(ps) => ps
                .into_iter()
                .filter_map(|p| match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some((p.pid, b)),
                    UsedGpuMemory::Unavailable => None,
                })
                .collect(),
            Err(e) => {
                self.warn_once("listing processes", e);
                Vec::new()
            }
        }
    }
}

/// The budget backend: a configured total, nothing to measure.
pub struct Budget;

impl MemorySource for Budget {
    fn name(&self) -> BackendName {
        BackendName::Budget
    }
    fn read(&mut self) -> Option<DeviceReading> {
        None
    }
}

/// Memory as `/v1/status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryFigures {
    pub backend: BackendName,
    pub configured_backend: BackendKind,
    pub total_bytes: u64,
    pub reserve_bytes: u64,
    /// What the registry says models hold.
    pub used_bytes: u64,
    /// What may still be planned into.
    pub free_bytes: u64,
    /// The device's own free figure, when there is a device.
    pub device_free_bytes: Option<u64>,
    /// What models hold in host RAM for parts placed on the CPU (`Bytes::host`): shown, so
    /// that a VAE decoded on the CPU is seen somewhere, but in neither `used_bytes` nor
    /// `free_bytes`, since it does not use the device.
    pub host_bytes: u64,
    /// What something outside vramd holds on the device: the device's use (total minus its
    /// free figure) minus what vramd's workers hold. `None` without a device (the budget
    /// backend), where nothing outside vramd is counted.
    pub other_bytes: Option<u64>,
}

impl MemoryFigures {
    /// Combines configuration, a device reading and the registry's held bytes.
    pub fn compute(config: &MemoryConfig, backend: BackendName, reading: Option<DeviceReading>, held: u64) -> Self {
        let total = reading.map_or(config.budget.0, |r| r.total);
        let reserve = config.reserve.0;
        let by_registry = total.saturating_sub(reserve).saturating_sub(held);
        let free = reading.map_or(by_registry, |r| by_registry.min(r.free.saturating_sub(reserve)));
        MemoryFigures {
            backend,
            configured_backend: config.backend,
            total_bytes: total,
            reserve_bytes: reserve,
            used_bytes: held,
            free_bytes: free,
            device_free_bytes: reading.map(|r| r.free),
            host_bytes: 0,
            other_bytes: None,
        }
    }

    /// The same figures, with what is used on the device beyond the `workers`' bytes
    /// counted as held by something outside vramd (`other_bytes`).
    pub fn with_other(self, workers: u64) -> Self {
        let used = self.device_free_bytes.map(|free| self.total_bytes.saturating_sub(free));
        MemoryFigures {
            other_bytes: used.map(|u| u.saturating_sub(workers)),
            ..self
        }
    }

    /// The same figures, with `host` bytes held in host RAM beside them.
    pub fn with_host(self, host: u64) -> Self {
        MemoryFigures {
            host_bytes: host,
            ..self
        }
    }
}

/// Picks the source for the configured backend: `auto` is NVML when it initialises (the
/// reason it did not is logged once), else the budget; an explicit `nvml` must work. (Tests
/// stand a file in for the device: [`simulated`].)
pub fn open_source(config: &MemoryConfig) -> Result<Box<dyn MemorySource>, String> {
    match config.backend {
        BackendKind::Budget => Ok(Box::new(Budget)),
        BackendKind::Nvml | BackendKind::Auto if std::env::var_os(simulated::DEVICE_FILE_ENV).is_some() => {
            Ok(Box::new(simulated::from_env().expect("the variable is set")))
        }
        BackendKind::Nvml => Ok(Box::new(Nvml::init(config.device)?)),
        BackendKind::Auto => match Nvml::init(config.device) {
            Ok(n) => Ok(Box::new(n)),
            Err(e) => {
                tracing::info!("{e}; planning against the configured budget of {}", config.budget);
                Ok(Box::new(Budget))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::ByteSize;

    fn cfg() -> MemoryConfig {
        MemoryConfig {
            backend: BackendKind::Auto,
            budget: ByteSize(1000),
            reserve: ByteSize(100),
            pin_ram: ByteSize(0),
            device: 0,
        }
    }

    #[test]
    fn auto_falls_back_to_the_budget_without_a_driver() {
        // No NVIDIA driver on build machines: auto must still start.
        if std::path::Path::new("/dev/nvidiactl").exists() {
            return; // a GPU machine: covered by the device check instead
        }
        assert_eq!(open_source(&cfg()).unwrap().name(), BackendName::Budget);
        let nvml = MemoryConfig {
            backend: BackendKind::Nvml,
            ..cfg()
        };
        assert!(open_source(&nvml).err().unwrap().contains("NVML is not available"));
    }

    #[test]
    fn budget_free_is_total_minus_reserve_minus_held() {
        let f = MemoryFigures::compute(&cfg(), BackendName::Budget, None, 300);
        assert_eq!((f.total_bytes, f.used_bytes, f.free_bytes), (1000, 300, 600));
        let f = MemoryFigures::compute(&cfg(), BackendName::Budget, None, 5000);
        assert_eq!(f.free_bytes, 0);
    }

    #[test]
    fn what_the_device_uses_beyond_the_workers_is_held_outside_vramd() {
        let busy = DeviceReading { total: 2000, free: 500 };
        let f = MemoryFigures::compute(&cfg(), BackendName::Nvml, Some(busy), 300).with_other(300);
        assert_eq!(f.other_bytes, Some(1200));
        // The device lags behind a fresh allocation: never below zero.
        let lagging = DeviceReading {
            total: 2000,
            free: 2000,
        };
        let f = MemoryFigures::compute(&cfg(), BackendName::Nvml, Some(lagging), 300).with_other(300);
        assert_eq!(f.other_bytes, Some(0));
        // The budget backend has no device to ask.
        let f = MemoryFigures::compute(&cfg(), BackendName::Budget, None, 300).with_other(300);
        assert_eq!(f.other_bytes, None);
    }

    #[test]
    fn device_free_lag_is_covered_by_the_registry() {
        // The device has not yet noticed 300 bytes a worker just allocated.
        let lagging = DeviceReading {
            total: 2000,
            free: 2000,
        };
        let f = MemoryFigures::compute(&cfg(), BackendName::Nvml, Some(lagging), 300);
        assert_eq!(f.free_bytes, 1600);
        // Something outside vramd holds memory: the device figure wins.
        let busy = DeviceReading { total: 2000, free: 500 };
        let f = MemoryFigures::compute(&cfg(), BackendName::Nvml, Some(busy), 300);
        assert_eq!(f.free_bytes, 400);
        assert_eq!(f.device_free_bytes, Some(500));
    }
}

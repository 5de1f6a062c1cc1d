//! Where memory figures come from, and how free memory is computed from them.
//!
//! The device's own "free" figure lags behind allocations a worker has just made, so vramd
//! plans with `min(device free, total − reserve − what the registry holds)`.

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
        }
    }
}

/// Picks the source for the configured backend. NVML support comes with the arbiter; until
/// then `auto` means the budget and an explicit `nvml` is refused at start.
pub fn open_source(config: &MemoryConfig) -> Result<Box<dyn MemorySource>, String> {
    match config.backend {
        BackendKind::Budget | BackendKind::Auto => Ok(Box::new(Budget)),
        BackendKind::Nvml => {
            Err("memory backend \"nvml\" is not available in this build of vramd; use \"auto\" or \"budget\"".into())
        }
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
        }
    }

    #[test]
    fn budget_free_is_total_minus_reserve_minus_held() {
        let f = MemoryFigures::compute(&cfg(), BackendName::Budget, None, 300);
        assert_eq!((f.total_bytes, f.used_bytes, f.free_bytes), (1000, 300, 600));
        let f = MemoryFigures::compute(&cfg(), BackendName::Budget, None, 5000);
        assert_eq!(f.free_bytes, 0);
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

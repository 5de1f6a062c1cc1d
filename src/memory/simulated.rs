//! A test seam for the NVML path: a device whose figures come from a file.
//!
//! No build or CI machine here has a GPU, yet the arbiter's device logic (free memory is the
//! smaller of the device's figure and the registry's; a worker's NVML figure wins when it is
//! larger than its own account; after a hard unload, wait for the device to give the memory
//! back) must be tested end to end. When `VRAMD_TEST_DEVICE_FILE` names a file, the `nvml`
//! and `auto` backends read the device from it instead of from NVML, as NVML would be read:
//! on every reading, so a test changes the device by rewriting the file. Only the calls into
//! `libnvidia-ml.so` themselves are left out. Unset (always, outside tests), nothing changes.
//!
//! The file is JSON: `{"total": BYTES, "free": BYTES, "processes": {"PID": BYTES, …}}`
//! (`processes` optional). An unreadable file reads as "no figure", as an NVML error does.

use std::path::PathBuf;

use super::{BackendName, DeviceReading, MemorySource};

pub const DEVICE_FILE_ENV: &str = "VRAMD_TEST_DEVICE_FILE";

/// The device described by the file the environment names, if it names one.
pub fn from_env() -> Option<DeviceFile> {
    let path = PathBuf::from(std::env::var_os(DEVICE_FILE_ENV)?);
    tracing::warn!(
        file = %path.display(),
        "device figures come from {DEVICE_FILE_ENV} (a test hook), not from NVML"
    );
    Some(DeviceFile { path })
}

pub struct DeviceFile {
    path: PathBuf,
}

#[derive(Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Figures {
    total: u64,
    free: u64,
    #[serde(default)]
    processes: std::collections::BTreeMap<u32, u64>,
}

fn parse(text: &str) -> Result<(DeviceReading, Vec<(u32, u64)>), String> {
    let f: Figures = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if f.free > f.total {
        return Err(format!("free {} is more than total {}", f.free, f.total));
    }
    Ok((
        DeviceReading {
            total: f.total,
            free: f.free,
        },
        f.processes.into_iter().collect(),
    ))
}

impl DeviceFile {
    fn figures(&self) -> Option<(DeviceReading, Vec<(u32, u64)>)> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        parse(&text).ok()
    }
}

impl MemorySource for DeviceFile {
    fn name(&self) -> BackendName {
        BackendName::Nvml
    }

    fn read(&mut self) -> Option<DeviceReading> {
        self.figures().map(|(r, _)| r)
    }

    fn per_process(&mut self) -> Vec<(u32, u64)> {
        self.figures().map(|(_, p)| p).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_and_processes_are_read() {
        let (r, p) = parse(r#"{"total": 100, "free": 40, "processes": {"7": 30, "9": 20}}"#).unwrap();
        assert_eq!(r, DeviceReading { total: 100, free: 40 });
        assert_eq!(p, [(7, 30), (9, 20)]);
        let (_, p) = parse(r#"{"total": 100, "free": 100}"#).unwrap();
        assert!(p.is_empty());
    }

    #[test]
    fn nonsense_is_no_figure() {
        assert!(parse("").is_err());
        assert!(parse(r#"{"total": 1, "free": 2}"#)
            .unwrap_err()
            .contains("more than total"));
        assert!(parse(r#"{"total": 1, "free": 1, "extra": 2}"#).is_err());
        assert!(parse(r#"{"total": 1, "free": 1, "processes": {"x": 1}}"#).is_err());
    }
}

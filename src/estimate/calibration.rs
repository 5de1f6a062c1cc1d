//! Per-model, per-phase corrections learned from measurements, persisted in the state folder.
//!
//! Each measured peak updates `factor = measured / raw estimate` as an exponential moving
//! average (α = 0.5), so a few generations bring estimates onto what this machine really
//! needs, and one odd run does not throw them off. Factors are clamped to [0.05, 20].

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vramd_protocol::VaePlacement;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Text encoders and diffusion sampling.
    Sampling,
    /// The VAE (or TAESD) decode on the device, whole.
    VaeDecode,
    /// The same in tiles: about constant in the image size, so it gets its own factor
    /// (without one, the whole decode's factor stands in).
    VaeTiled,
    /// llama.cpp's compute buffers.
    LlmCompute,
}

const ALPHA: f64 = 0.5;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// model → phase → (factor, samples).
    models: BTreeMap<String, BTreeMap<Phase, Entry>>,
    /// model → VAE placement → (milliseconds per megapixel, samples) of its decodes: what
    /// tells a person how much slower an image was for decoding off the device, measured on
    /// this machine rather than guessed.
    #[serde(default)]
    decode_ms: BTreeMap<String, BTreeMap<VaePlacement, Entry>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    factor: f64,
    samples: u32,
}

impl Calibration {
    pub fn factor(&self, model: &str, phase: Phase) -> Option<f64> {
        self.models.get(model)?.get(&phase).map(|e| e.factor)
    }

    /// Records that `phase` of `model` measured `measured` bytes where the raw estimate said
    /// `raw`.
    pub fn observe(&mut self, model: &str, phase: Phase, measured: u64, raw: u64) {
        if raw == 0 || measured == 0 {
            return;
        }
        let ratio = (measured as f64 / raw as f64).clamp(0.05, 20.0);
        fold(&mut self.models, model, phase, ratio);
    }

    /// Records that a VAE decode of `pixels` pixels at `placement` took `ms` milliseconds.
    pub fn observe_decode(&mut self, model: &str, placement: VaePlacement, pixels: u64, ms: u64) {
        if pixels == 0 || ms == 0 {
            return;
        }
        let rate = ms as f64 * 1e6 / pixels as f64;
        fold(&mut self.decode_ms, model, placement, rate);
    }

    /// What a VAE decode of `pixels` pixels at `placement` takes, from the decodes measured;
    /// `None` before the first.
    pub fn decode_ms(&self, model: &str, placement: VaePlacement, pixels: u64) -> Option<u64> {
        let e = self.decode_ms.get(model)?.get(&placement)?;
        Some((e.factor * pixels as f64 / 1e6).round() as u64)
    }

    /// Reads `path`; a missing or unreadable file means starting over (logged by the caller).
    pub fn load(path: &Path) -> Result<Calibration, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Calibration::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("calibration serialises"))?;
        std::fs::rename(tmp, path)
    }
}

/// Folds `value` into the moving average kept for `model` and `key` (the first value is
/// taken as it is).
fn fold<K: Ord>(table: &mut BTreeMap<String, BTreeMap<K, Entry>>, model: &str, key: K, value: f64) {
    let e = table.entry(model.to_owned()).or_default().entry(key).or_insert(Entry {
        factor: value,
        samples: 0,
    });
    if e.samples > 0 {
        e.factor = ALPHA * value + (1.0 - ALPHA) * e.factor;
    }
    e.samples += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_and_persists() {
        let mut c = Calibration::default();
        c.observe("m", Phase::Sampling, 300, 100);
        assert_eq!(c.factor("m", Phase::Sampling), Some(3.0));
        c.observe("m", Phase::Sampling, 100, 100);
        assert_eq!(c.factor("m", Phase::Sampling), Some(2.0));
        c.observe("m", Phase::Sampling, 1_000_000, 1);
        assert_eq!(
            c.factor("m", Phase::Sampling),
            Some(11.0),
            "clamped to 20 before averaging"
        );
        assert_eq!(c.factor("m", Phase::VaeDecode), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/calibration.json");
        c.save(&path).unwrap();
        assert_eq!(Calibration::load(&path).unwrap(), c);
        assert_eq!(
            Calibration::load(&dir.path().join("none.json")).unwrap(),
            Calibration::default()
        );
        std::fs::write(&path, "{").unwrap();
        assert!(Calibration::load(&path).is_err());
    }

    #[test]
    fn decode_times_scale_with_pixels_and_persist() {
        let mut c = Calibration::default();
        assert_eq!(c.decode_ms("m", VaePlacement::Gpu, 512 * 512), None);
        c.observe_decode("m", VaePlacement::Cpu, 512 * 512, 2000);
        assert_eq!(c.decode_ms("m", VaePlacement::Cpu, 512 * 512), Some(2000));
        assert_eq!(c.decode_ms("m", VaePlacement::Cpu, 1024 * 1024), Some(8000));
        assert_eq!(c.decode_ms("m", VaePlacement::Gpu, 512 * 512), None, "per placement");
        c.observe_decode("m", VaePlacement::Cpu, 512 * 512, 1000);
        assert_eq!(c.decode_ms("m", VaePlacement::Cpu, 512 * 512), Some(1500), "averaged");
        c.observe_decode("m", VaePlacement::Cpu, 0, 1000);
        assert_eq!(
            c.decode_ms("m", VaePlacement::Cpu, 512 * 512),
            Some(1500),
            "nothing to learn"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calibration.json");
        c.save(&path).unwrap();
        assert_eq!(Calibration::load(&path).unwrap(), c);
        // A file from before decode times were kept still reads.
        std::fs::write(&path, r#"{"models":{}}"#).unwrap();
        assert_eq!(Calibration::load(&path).unwrap(), Calibration::default());
    }
}

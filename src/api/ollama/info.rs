//! What Ollama's model listings say about a model file: its size, time, digest, `details`
//! (family, parameter size, quantization) and `model_info` (the GGUF metadata), read from
//! the GGUF header with `vramd-gguf`, and the timestamps in the form Ollama writes them.
//!
//! Reading a header parses the whole tokenizer (hundreds of thousands of strings), so the
//! facts are cached per file and read again only when its size or time changes. The digest
//! is not the file's sha256 (hashing gigabytes for a listing would take minutes): it is a
//! stable hash of the path, size and modification time, in Ollama's 64-hex-digit form, so
//! that it changes exactly when the file does.

pub(super) use crate::clock::rfc3339;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};
use vramd_gguf::{Gguf, GgufFile};

/// What the listings say about one model file.
#[derive(Clone, Debug, PartialEq)]
pub struct Facts {
    pub size: u64,
    pub modified: SystemTime,
    pub digest: String,
    pub family: String,
    pub parameter_size: String,
    pub quantization_level: String,
    /// The GGUF metadata as Ollama shows it (see [`model_info`]).
    pub model_info: Map<String, Value>,
}

impl Facts {
    /// Ollama's `details` object.
    pub fn details(&self) -> Value {
        let families: Vec<&str> = if self.family.is_empty() {
            vec![]
        } else {
            vec![&self.family]
        };
        json!({"parent_model": "", "format": "gguf", "family": self.family, "families": families,
               "parameter_size": self.parameter_size, "quantization_level": self.quantization_level})
    }
}

type Cache = Mutex<HashMap<PathBuf, (u64, SystemTime, Arc<Facts>)>>;

static CACHE: LazyLock<Cache> = LazyLock::new(Cache::default);

/// The facts of the file at `path`, from the cache while the file is unchanged. Blocking
/// (it may read the file): call it from `spawn_blocking`. A file that cannot be read gives
/// what is known (its size, if any) and empty details rather than an error: the listing
/// shows every configured model, and `/v1/status` says why one cannot load.
pub fn facts(path: &Path) -> Arc<Facts> {
    let meta = std::fs::metadata(path).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let modified = meta.and_then(|m| m.modified().ok()).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((s, m, f)) = cache.get(path) {
        if (*s, *m) == (size, modified) {
            return f.clone();
        }
    }
    let gguf = GgufFile::open(path)
        .map_err(|e| tracing::debug!(path = %path.display(), "no GGUF facts: {e}"))
        .ok();
    let facts = Arc::new(read(path, size, modified, gguf.as_deref()));
    cache.insert(path.to_owned(), (size, modified, facts.clone()));
    facts
}

fn read(path: &Path, size: u64, modified: SystemTime, gguf: Option<&Gguf>) -> Facts {
    let family = gguf.and_then(Gguf::architecture).unwrap_or_default().to_owned();
    let parameters = gguf.map_or(0, parameter_count);
    Facts {
        size,
        modified,
        digest: digest(path, size, modified),
        family,
        parameter_size: if parameters > 0 {
            human_number(parameters)
        } else {
            String::new()
        },
        quantization_level: gguf
            .and_then(|g| g.get_u32("general.file_type"))
            .map_or("unknown", file_type_name)
            .to_owned(),
        model_info: gguf.map(|g| model_info(g, parameters)).unwrap_or_default(),
    }
}

/// `general.parameter_count` when the file says, else the elements of its tensors.
fn parameter_count(g: &Gguf) -> u64 {
    g.get_u64("general.parameter_count")
        .unwrap_or_else(|| g.tensors().iter().map(|t| t.n_elements()).sum())
}

/// The metadata as Ollama's `/api/show` gives it: every key but `general.name` and the chat
/// template (shown as `template`), arrays of more than five items emptied (tokenizer
/// vocabularies would be megabytes), and `general.parameter_count` added when absent.
pub fn model_info(g: &Gguf, parameters: u64) -> Map<String, Value> {
    let mut info: Map<String, Value> = g
        .metadata_entries()
        .iter()
        .filter(|(k, _)| k != "general.name" && k != "tokenizer.chat_template")
        .map(|(k, v)| (k.clone(), json_of(v)))
        .collect();
    info.entry("general.parameter_count").or_insert(parameters.into());
    info
}

fn json_of(v: &vramd_gguf::Value) -> Value {
    use vramd_gguf::Value as G;
    match v {
        G::U8(x) => (*x).into(),
        G::I8(x) => (*x).into(),
        G::U16(x) => (*x).into(),
        G::I16(x) => (*x).into(),
        G::U32(x) => (*x).into(),
        G::I32(x) => (*x).into(),
        G::U64(x) => (*x).into(),
        G::I64(x) => (*x).into(),
        // Through its shortest decimal form, so that 1e-5 shows as 1e-5, not 9.99999974e-6.
        G::F32(x) => x
            .to_string()
            .parse()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        G::F64(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        G::Bool(x) => (*x).into(),
        G::String(s) => s.clone().into(),
        G::Array(_, items) if items.len() > 5 => Value::Array(Vec::new()),
        G::Array(_, items) => items.iter().map(json_of).collect(),
    }
}

/// llama.cpp's `llama_ftype` names, as Ollama shows them (`quantization_level`).
pub fn file_type_name(t: u32) -> &'static str {
    const NAMES: [&str; 41] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_1_F16",
        "Q4_2",
        "Q4_3",
        "Q8_0",
        "Q5_0",
        "Q5_1",
        "Q2_K",
        "Q3_K_S",
        "Q3_K_M",
        "Q3_K_L",
        "Q4_K_S",
        "Q4_K_M",
        "Q5_K_S",
        "Q5_K_M",
        "Q6_K",
        "IQ2_XXS",
        "IQ2_XS",
        "Q2_K_S",
        "IQ3_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ3_M",
        "IQ2_S",
        "IQ2_M",
        "IQ4_XS",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "MXFP4_MOE",
        "NVFP4",
        "Q1_0",
    ];
    NAMES.get(t as usize).copied().unwrap_or("unknown")
}

/// Ollama's `format.HumanNumber`: `135M`, `1.71B`-style sizes (`8B`, `7.6B`, `360.82M`).
pub fn human_number(n: u64) -> String {
    let f = n as f64;
    let whole = |x: f64| x == x.floor();
    match n {
        1_000_000_000.. if whole(f / 1e9) => format!("{:.0}B", f / 1e9),
        1_000_000_000.. => format!("{:.1}B", f / 1e9),
        1_000_000.. if whole(f / 1e6) => format!("{:.0}M", f / 1e6),
        1_000_000.. => format!("{:.2}M", f / 1e6),
        1_000.. => format!("{:.0}K", f / 1e3),
        _ => n.to_string(),
    }
}

/// 64 hex digits from FNV-1a over the path, size and time, with four seeds (see the module
/// documentation: stable and cheap, not a content hash).
pub fn digest(path: &Path, size: u64, modified: SystemTime) -> String {
    let nanos = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut bytes = path.as_os_str().as_encoded_bytes().to_vec();
    bytes.extend_from_slice(&size.to_le_bytes());
    bytes.extend_from_slice(&nanos.to_le_bytes());
    (0u64..4)
        .map(|seed| {
            let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for b in &bytes {
                h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            format!("{h:016x}")
        })
        .collect()
}

/// Ollama's model name for a configured one: names carry a tag, `latest` by default.
pub fn tagged(name: &str) -> String {
    if name.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// "Never" as Go writes it: now plus the largest duration (`keep_alive: -1`), 292 years on.
pub fn forever(now: SystemTime) -> SystemTime {
    now + Duration::from_nanos(i64::MAX as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc() {
        let t = |s: u64, n: u32| rfc3339(SystemTime::UNIX_EPOCH + Duration::new(s, n));
        assert_eq!(t(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(t(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(t(1_716_200_000, 500_000_000), "2024-05-20T10:13:20.5Z");
        assert_eq!(t(1_716_200_000, 123_456_789), "2024-05-20T10:13:20.123456789Z");
        // keep_alive: -1, as Go writes it: 292 years on.
        assert!(rfc3339(forever(SystemTime::UNIX_EPOCH + Duration::from_secs(1_716_200_000))).starts_with("2316-"));
    }

    #[test]
    fn sizes_and_types_read_as_ollama_writes_them() {
        assert_eq!(human_number(8_000_000_000), "8B");
        assert_eq!(human_number(7_615_616_512), "7.6B");
        assert_eq!(human_number(134_515_008), "134.52M");
        assert_eq!(human_number(135_000_000), "135M");
        assert_eq!(human_number(95_936), "96K");
        assert_eq!(human_number(512), "512");
        assert_eq!(file_type_name(0), "F32");
        assert_eq!(file_type_name(15), "Q4_K_M");
        assert_eq!(file_type_name(3), "Q4_1");
        assert_eq!(file_type_name(32), "BF16");
        assert_eq!(file_type_name(999), "unknown");
        assert_eq!(tagged("chat"), "chat:latest");
        assert_eq!(tagged("qwen2.5:7b"), "qwen2.5:7b");
    }

    #[test]
    fn the_digest_follows_the_file() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let d = digest(Path::new("/m/a.gguf"), 10, t);
        assert_eq!(d.len(), 64);
        assert!(d.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(d, digest(Path::new("/m/a.gguf"), 10, t), "stable");
        assert_ne!(d, digest(Path::new("/m/a.gguf"), 11, t));
        assert_ne!(d, digest(Path::new("/m/a.gguf"), 10, t + Duration::from_nanos(1)));
        assert_ne!(d, digest(Path::new("/m/b.gguf"), 10, t));
    }

    #[test]
    fn a_tiny_llama_reads_as_ollama_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let spec = vramd_gguf::llama::TinyLlamaSpec::default();
        vramd_gguf::llama::write_tiny_llama(&path, &spec).unwrap();
        let f = facts(&path);
        assert_eq!(f.size, std::fs::metadata(&path).unwrap().len());
        assert_eq!((f.family.as_str(), f.quantization_level.as_str()), ("llama", "F32"));
        assert!(
            f.parameter_size.ends_with('K') || f.parameter_size.ends_with('M'),
            "{f:?}"
        );
        let info = &f.model_info;
        assert_eq!(info["general.architecture"], "llama");
        assert_eq!(info["llama.context_length"], spec.n_ctx_train);
        assert_eq!(
            info["llama.attention.layer_norm_rms_epsilon"],
            json!(1e-5),
            "f32 in its shortest form"
        );
        assert!(!info.contains_key("general.name") && !info.contains_key("tokenizer.chat_template"));
        assert_eq!(info["tokenizer.ggml.tokens"], json!([]), "big arrays are emptied");
        assert!(info["general.parameter_count"].as_u64().unwrap() > 0);
        let d = f.details();
        assert_eq!(
            (d["format"].clone(), d["families"].clone()),
            (json!("gguf"), json!(["llama"]))
        );
        assert!(Arc::ptr_eq(&f, &facts(&path)), "cached while the file is unchanged");
        let missing = facts(&dir.path().join("missing.gguf"));
        assert_eq!((missing.size, missing.family.as_str()), (0, ""));
    }
}

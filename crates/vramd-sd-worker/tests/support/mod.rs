//! What `vramd-sd-worker`'s end-to-end tests share besides `vramd_worker_kit::testing` (which
//! starts the binary on a temporary socket with stdin piped, and speaks HTTP to it):
//!
//! - [`Worker`]: that harness aimed at this binary ([`SdWorker`]): `Worker::start()` runs it
//!   with stable-diffusion.cpp's whole log (`sd=debug`) in `worker.log`, `w.stream(&req)`
//!   starts a generation and reads its [`ImageEvent`]s;
//! - [`zimage`] writes the Z-Image-style model (DiT + Qwen3-style LLM + tiny autoencoder);
//!   [`sd1`] the SD1.x checkpoint, with TAESD or with its full VAE (`sd1_vae.json`), from
//!   the random-weight manifests of `vramd-gguf`'s `testdata/sd-tiny/`;
//! - [`png_facts`] reads what the tests check in a PNG: its size and its `tEXt` chunks.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use vramd_gguf::manifest::{write_from_manifest, ManifestOptions};
use vramd_protocol::{ImageEvent, ImageFiles, ImageLoadRequest, ImageRequest, VaePlacement, IMAGES};
use vramd_worker_kit::testing::WorkerBinary;

/// `vramd-sd-worker` as its tests drive it.
pub enum SdWorker {}

impl WorkerBinary for SdWorker {
    type Event = ImageEvent;
    const PATH: &'static str = env!("CARGO_BIN_EXE_vramd-sd-worker");
    const RUST_LOG: &'static str = "info,sd=debug";
    const STREAM: &'static str = IMAGES;
}

pub type Worker = vramd_worker_kit::testing::Worker<SdWorker>;

/// `crates/vramd-gguf/testdata/sd-tiny/<name>`.
pub fn manifest(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vramd-gguf/testdata/sd-tiny")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One JSON object from several manifests (their tensors together in one file).
pub fn merge(manifests: &[String]) -> String {
    let bodies: Vec<&str> = manifests
        .iter()
        .map(|m| {
            let m = m.trim();
            m.strip_prefix('{')
                .and_then(|m| m.strip_suffix('}'))
                .expect("a manifest is one JSON object")
                .trim()
        })
        .collect();
    format!("{{{}}}", bodies.join(",\n"))
}

/// Writes `manifest_json` as a GGUF at `dir/name`.
pub fn write(dir: &Path, name: &str, manifest_json: &str) -> PathBuf {
    let path = dir.join(name);
    write_from_manifest(&path, manifest_json, &ManifestOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    path
}

/// The Z-Image-style tiny model: `diffusion_model`, `llm`, `taesd`.
pub fn zimage(dir: &Path) -> ImageFiles {
    ImageFiles {
        diffusion_model: Some(write(dir, "zi_dit.gguf", &manifest("zi_dit.json"))),
        llm: Some(write(dir, "zi_llm.gguf", &manifest("zi_llm.json"))),
        taesd: Some(write(dir, "zi_tae.gguf", &manifest("zi_tae.json"))),
        ..ImageFiles::default()
    }
}

/// The SD1.x tiny checkpoint, with TAESD (`vae: false`) or with its full VAE in the
/// checkpoint (`vae: true`, `sd1_vae.json`).
pub fn sd1(dir: &Path, vae: bool) -> ImageFiles {
    if vae {
        let json = merge(&[manifest("sd1_full.json"), manifest("sd1_vae.json")]);
        ImageFiles {
            model: Some(write(dir, "sd1_vae.gguf", &json)),
            ..ImageFiles::default()
        }
    } else {
        ImageFiles {
            model: Some(write(dir, "sd1.gguf", &manifest("sd1_full.json"))),
            taesd: Some(write(dir, "tae_full.gguf", &manifest("tae_full.json"))),
            ..ImageFiles::default()
        }
    }
}

pub fn load_request(name: &str, files: ImageFiles, vae: VaePlacement) -> ImageLoadRequest {
    ImageLoadRequest {
        model: name.into(),
        files,
        mmap: true,
        threads: 2,
        vae,
    }
}

/// 64×64, 2 steps, seed 42, euler, one image, a `parameters` text chunk.
pub fn image_request(vae: VaePlacement) -> ImageRequest {
    ImageRequest {
        request_id: "test".into(),
        prompt: "a red cube on a table".into(),
        negative_prompt: String::new(),
        width: 64,
        height: 64,
        steps: 2,
        cfg_scale: 1.0,
        seed: Some(42),
        sampler: "euler".into(),
        scheduler: String::new(),
        batch_count: 1,
        vae,
        png_text: vec![(
            "parameters".into(),
            "a red cube on a table\nSteps: 2, Sampler: euler, Seed: 42, Size: 64x64".into(),
        )],
        source: None,
        hires: None,
        loras: Vec::new(),
    }
}

/// What the tests read from a PNG: `IHDR`'s size, colour type and the `tEXt` chunks, from
/// the bytes (each chunk's CRC checked), independently of the encoder.
#[derive(Debug, Default)]
pub struct PngFacts {
    pub width: u32,
    pub height: u32,
    pub bit_depth: u8,
    pub color_type: u8,
    pub texts: Vec<(String, String)>,
    pub chunks: Vec<String>,
}

pub fn png_facts(bytes: &[u8]) -> PngFacts {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let mut facts = PngFacts::default();
    let mut at = 8;
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned();
        let data = &bytes[at + 8..at + 8 + len];
        let crc = u32::from_be_bytes(bytes[at + 8 + len..at + 12 + len].try_into().unwrap());
        assert_eq!(crc, crc32(&bytes[at + 4..at + 8 + len]), "CRC of {kind}");
        match kind.as_str() {
            "IHDR" => {
                facts.width = u32::from_be_bytes(data[0..4].try_into().unwrap());
                facts.height = u32::from_be_bytes(data[4..8].try_into().unwrap());
                facts.bit_depth = data[8];
                facts.color_type = data[9];
            }
            "tEXt" => {
                let nul = data.iter().position(|&b| b == 0).expect("tEXt keyword ends with NUL");
                let latin1 = |b: &[u8]| b.iter().map(|&c| c as char).collect::<String>();
                facts.texts.push((latin1(&data[..nul]), latin1(&data[nul + 1..])));
            }
            _ => {}
        }
        facts.chunks.push(kind);
        at += 12 + len;
    }
    assert_eq!(at, bytes.len(), "chunks fill the file");
    assert_eq!(facts.chunks.last().map(String::as_str), Some("IEND"));
    facts
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Standard base64 (with padding) back to bytes.
pub fn unbase64(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let s = s.as_bytes();
    assert_eq!(s.len() % 4, 0, "base64 length");
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for quad in s.chunks(4) {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        let n = quad[..4 - pad].iter().fold(0u32, |acc, &c| (acc << 6) | value(c)) << (6 * pad);
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

//! Every stable-diffusion.cpp manifest in testdata/sd-tiny becomes a GGUF holding exactly its
//! tensors, filled and typed as the README there says.

use vramd_gguf::manifest::{build_from_manifest, parse_manifest, write_from_manifest, Fill, ManifestOptions};
use vramd_gguf::quant::decode_to_f32;
use vramd_gguf::{GgmlType, GgufFile};

const MANIFESTS: [(&str, &str, usize); 5] = [
    ("zi_dit", include_str!("../testdata/sd-tiny/zi_dit.json"), 52),
    ("zi_llm", include_str!("../testdata/sd-tiny/zi_llm.json"), 24),
    ("zi_tae", include_str!("../testdata/sd-tiny/zi_tae.json"), 134),
    ("sd1_full", include_str!("../testdata/sd-tiny/sd1_full.json"), 882),
    ("tae_full", include_str!("../testdata/sd-tiny/tae_full.json"), 134),
];

fn check(name: &str, json: &str, count: usize, opts: &ManifestOptions) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.gguf"));
    write_from_manifest(&path, json, opts).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let manifest = parse_manifest(json).unwrap();
    assert_eq!(manifest.len(), count, "{name}: manifest entries");
    assert_eq!(g.tensors().len(), count, "{name}: tensors written");
    assert_eq!(g.architecture(), Some(opts.architecture.as_str()));
    assert_eq!(g.alignment(), 32);
    for m in &manifest {
        let t = g
            .tensor(&m.name)
            .unwrap_or_else(|| panic!("{name}: {} missing", m.name));
        assert_eq!(t.dims, m.dims, "{}", m.name);
        // Trailing 1s dropped, as ggml's own writer stores ggml_n_dims dimensions.
        assert!(t.dims.len() == 1 || *t.dims.last().unwrap() != 1, "{}", m.name);
        assert_eq!(t.ggml_type, m.ggml_type(opts), "{}", m.name);
        assert_eq!((g.data_offset() + t.offset) % 32, 0, "{}", m.name);
        // Check fills on the small tensors (decoding the big ones costs test time only).
        if t.n_elements() <= 1 << 16 {
            let v = decode_to_f32(g.tensor_data(&m.name).unwrap(), t.ggml_type).unwrap();
            match m.fill() {
                Fill::Zeros => assert!(v.iter().all(|&x| x == 0.0), "{}", m.name),
                Fill::Ones => assert!(v.iter().all(|&x| x == 1.0), "{}", m.name),
                Fill::Normal => {
                    let rms = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
                    let tol = if v.len() >= 4096 { 0.1 } else { 0.5 };
                    assert!((rms / opts.std - 1.0).abs() < tol, "{}: rms {rms}", m.name);
                }
            }
        }
    }
    g.file_len()
}

#[test]
fn z_image_manifests_at_q4_0_and_f16() {
    let q4 = ManifestOptions::default();
    let f16 = ManifestOptions {
        linear_type: GgmlType::F16,
        ..Default::default()
    };
    let mut sizes = (0, 0);
    for (name, json, count) in &MANIFESTS[..3] {
        sizes.0 += check(name, json, *count, &q4);
        sizes.1 += check(name, json, *count, &f16);
    }
    // The README's table: ~13 MB at q4_0 (linear weights), ~34 MB at f16.
    let mb = |b: u64| b as f64 / 1e6;
    assert!((12.5..13.6).contains(&mb(sizes.0)), "q4_0 total {} MB", mb(sizes.0));
    assert!((33.0..35.0).contains(&mb(sizes.1)), "f16 total {} MB", mb(sizes.1));
}

#[test]
fn sd1_manifests_at_q4_0() {
    let opts = ManifestOptions::default();
    let total: u64 = MANIFESTS[3..]
        .iter()
        .map(|(name, json, count)| check(name, json, *count, &opts))
        .sum();
    // The README's table: ~89 MB at q4_0 (linear weights).
    let mb = total as f64 / 1e6;
    assert!((88.0..90.0).contains(&mb), "sd1 q4_0 total {mb} MB");
}

#[test]
fn same_seed_same_model() {
    let (_, json, _) = MANIFESTS[1];
    let a = build_from_manifest(json, &ManifestOptions::default())
        .unwrap()
        .to_bytes();
    let b = build_from_manifest(json, &ManifestOptions::default())
        .unwrap()
        .to_bytes();
    let c = build_from_manifest(
        json,
        &ManifestOptions {
            seed: 9,
            ..Default::default()
        },
    )
    .unwrap()
    .to_bytes();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

//! How `crates/vramd-gguf/testdata/sd-tiny/sd1_vae.json` (the full SD1.x VAE,
//! `first_stage_model.*`) was derived, by the method of that folder's README: from
//! stable-diffusion.cpp's own validation log. Ignored in normal runs; rerun with
//! `cargo test -p vramd-sd-worker --test derive_vae -- --ignored` to write the file again.
//!
//! 1. Load the SD1 checkpoint (`sd1_full.json`) without TAESD: the load fails, and the log
//!    names every VAE tensor it misses (`VAE tensor 'first_stage_model.X' not in model
//!    metadata`).
//! 2. Load it again with each of those tensors present with shape `[1]`: the log gives each
//!    expected shape (`… has wrong shape in model metadata: got [1, 1, 1, 1], expected
//!    [a, b, c, d]`, ggml order).
//! 3. Write the manifest (names sorted, shapes in ggml order with trailing 1s, as the other
//!    manifests) and check that the checkpoint with it loads.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use support::{load_request, manifest, merge, write, Worker};
use vramd_protocol::{ErrorCode, ImageFiles, VaePlacement, WorkerError, LOAD};

fn load_errors(w: &Worker, json: &str, name: &str) -> (u16, String) {
    let before = w.log().len();
    let path = write(w.dir.path(), name, json);
    let files = ImageFiles {
        model: Some(path),
        ..ImageFiles::default()
    };
    let r = w.post(LOAD, &load_request(name, files, VaePlacement::Gpu));
    if r.status != 200 {
        let e: WorkerError = r.json();
        assert_eq!(e.code, ErrorCode::LoadFailed, "{e:?}");
    }
    (r.status, w.log()[before..].to_string())
}

fn quoted_after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &line[line.find(marker)? + marker.len()..];
    Some(&rest[..rest.find('\'')?])
}

#[test]
#[ignore = "writes testdata; run by hand to derive sd1_vae.json again"]
fn derive_sd1_vae_manifest() {
    let w = Worker::start();
    let sd1 = manifest("sd1_full.json");

    let (status, log) = load_errors(&w, &sd1, "step1.gguf");
    assert_eq!(status, 422, "{log}");
    // stable-diffusion.cpp's own lines (target `sd`), not the worker's summary of them.
    let names: BTreeSet<String> = log
        .lines()
        .filter(|l| l.contains(" sd: ") && l.contains("not in model metadata"))
        .filter_map(|l| quoted_after(l, "tensor '"))
        .filter(|n| n.starts_with("first_stage_model."))
        .map(str::to_string)
        .collect();
    assert!(!names.is_empty(), "{log}");
    eprintln!("{} VAE tensors missing", names.len());

    let probe = format!(
        "{{{}}}",
        names
            .iter()
            .map(|n| format!("\"{n}\": [1]"))
            .collect::<Vec<_>>()
            .join(",\n")
    );
    let (status, log) = load_errors(&w, &merge(&[sd1.clone(), probe]), "step2.gguf");
    assert_eq!(status, 422, "{log}");
    let mut shapes = BTreeMap::new();
    for line in log
        .lines()
        .filter(|l| l.contains(" sd: ") && l.contains("has wrong shape"))
    {
        let name = quoted_after(line, "tensor '").unwrap().to_string();
        let dims = line.rsplit_once("expected [").unwrap().1.trim_end_matches(']');
        let dims: Vec<u64> = dims.split(',').map(|d| d.trim().parse().unwrap()).collect();
        shapes.insert(name, dims);
    }
    assert_eq!(shapes.len(), names.len(), "{log}");

    let body: Vec<String> = shapes
        .iter()
        .map(|(name, dims)| {
            let dims: Vec<String> = dims.iter().map(u64::to_string).collect();
            format!("\"{name}\": [\n{}\n]", dims.join(",\n"))
        })
        .collect();
    let json = format!("{{\n{}\n}}\n", body.join(",\n"));
    let (status, log) = load_errors(&w, &merge(&[sd1, json.clone()]), "step3.gguf");
    assert_eq!(status, 200, "{log}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../vramd-gguf/testdata/sd-tiny/sd1_vae.json");
    std::fs::write(&out, json).unwrap();
    eprintln!("wrote {} tensors to {}", shapes.len(), out.display());
}

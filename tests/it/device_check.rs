//! scripts/device-check's logic on the CPU: a fake `nvidia-smi` (tests/fixtures/device-check)
//! over vramd's NVML test seam (`VRAMD_TEST_DEVICE_FILE`), the real workers on the CPU, and a
//! fake outside process that takes device memory. The script must run every check, print its
//! table, and fail when NVML disagrees with a worker's own report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const GIB: u64 = 1 << 30;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/device-check")
}

/// Runs the script with the fake `nvidia-smi` seeing `factor` times each worker's report.
fn device_check(bin: &Path, out: &Path, factor: f64) -> (Output, String) {
    let device = out.with_extension("device.json");
    std::fs::write(&device, format!("{{\"total\": {}, \"free\": {}}}", 24 * GIB, 24 * GIB)).unwrap();
    let path = format!("{}:{}", fixtures().display(), std::env::var("PATH").unwrap_or_default());
    let output = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/device-check"))
        // The fake device gives nothing back when vramd evicts: leave the image room enough.
        .args(["--llm-mb", "100", "--sizes", "256", "--leave-mb", "1536"])
        .arg("--bin")
        .arg(bin)
        .arg("--out")
        .arg(out)
        .env("PATH", path)
        .env("VRAMD_TEST_DEVICE_FILE", &device)
        .env("FAKE_SMI_SOCKET", out.join("vramd.sock"))
        .env("FAKE_SMI_FACTOR", factor.to_string())
        .env("DEVICE_CHECK_HOLD", fixtures().join("hold-vram"))
        .output()
        .unwrap();
    let table = std::fs::read_to_string(out.join("table.md")).unwrap_or_default();
    (output, table)
}

fn row<'t>(table: &'t str, starts: &str) -> &'t str {
    table
        .lines()
        .find(|l| l.starts_with(&format!("| {starts}")))
        .unwrap_or_else(|| panic!("no row {starts:?} in\n{table}"))
}

#[test]
fn device_check_runs_every_check_and_fails_when_nvml_disagrees() {
    let Some(bin) = crate::llm::worker_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (output, table) = device_check(&bin, &dir.path().join("agree"), 1.05);
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{log}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for check in [
        "device total (Fake GPU)",
        "device free",
        "chat: its worker's report vs NVML",
        "zimage: its worker's report vs NVML",
        "VAE decode at 256²",
        "an outside process holding VRAM: seen by vramd",
        "an image under that pressure",
        "warm reload of the LLM",
    ] {
        assert!(row(&table, check).ends_with("| ok |"), "{check}: {table}");
    }
    assert!(dir.path().join("agree/vramd.log").is_file());
    assert!(std::fs::read_to_string(dir.path().join("agree/nvidia-smi.log"))
        .unwrap()
        .contains("--query-compute-apps=pid,used_memory"));

    // NVML sees half as much again as the workers say: both checks fail, and so does the run.
    let (output, table) = device_check(&bin, &dir.path().join("disagree"), 1.5);
    assert_eq!(output.status.code(), Some(1), "{table}");
    assert!(
        row(&table, "chat: its worker's report").ends_with("| FAILED |"),
        "{table}"
    );
    assert!(
        row(&table, "zimage: its worker's report").ends_with("| FAILED |"),
        "{table}"
    );
    assert!(row(&table, "device total").ends_with("| ok |"), "{table}");
}

/// The CUDA workers' libraries are not carried to the GPU machine: the script finds them in a
/// Python environment's nvidia wheels (what PyTorch's cu130 build installs) and names the
/// ones it could not find.
#[test]
fn device_check_finds_the_cuda_libraries_in_a_pythons_nvidia_wheels() {
    let site = tempfile::tempdir().unwrap();
    let lib = site.path().join("nvidia/cu13/lib");
    std::fs::create_dir_all(&lib).unwrap();
    for name in ["libcudart.so.13", "libcublas.so.13"] {
        std::fs::write(lib.join(name), "").unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/device-check");
    let code = format!(
        "import json, runpy, sys\nsys.path.insert(0, {site:?})\n\
         dc = runpy.run_path({script:?}, run_name='device_check')\n\
         print(json.dumps(dc['cuda_library_dirs']()))",
        site = site.path().to_str().unwrap(),
        script = script.to_str().unwrap(),
    );
    let output = Command::new("python3").arg("-c").arg(code).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let found: std::collections::HashMap<String, String> = serde_json::from_slice(&output.stdout).unwrap();
    for name in ["libcudart.so.13", "libcublas.so.13"] {
        // Here, or in a CUDA install on this machine, which is searched first.
        let dir = found.get(name).unwrap_or_else(|| panic!("{name} not found: {found:?}"));
        assert!(Path::new(dir).join(name).exists(), "{name} in {dir}");
    }
    let system = [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/opt/cuda/lib64",
    ];
    if !system.iter().any(|d| Path::new(d).join("libcublasLt.so.13").exists()) {
        assert!(!found.contains_key("libcublasLt.so.13"), "{found:?}");
        assert_eq!(found["libcudart.so.13"], lib.to_str().unwrap());
    }
}

//! Warm versus cold reload of the same model through the daemon and the real llama.cpp
//! worker: warm = from the page cache (what the page-cache keeper maintains after an
//! unload), cold = after dropping the file's pages with `POSIX_FADV_DONTNEED`.
//!
//! `cargo build --workspace --bins --examples && target/debug/examples/bench-reload` (the
//! C++ of the worker is an optimised build even in the dev profile; what is timed is the
//! worker's load). Uses SmolLM2 (scripts/fetch-smollm) when present, else a generated
//! ~150 MB random-weight llama. Prints a table; asserts nothing about speed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vramd::pagecache::{drop_from_cache, MappedFile};

const RUNS: usize = 5;

fn curl(socket: &Path, method: &str, path: &str, body: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(socket)
        .args(["-X", method, "-H", "Content-Type: application/json", "-d", body])
        .arg(format!("http://vramd{path}"))
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{path}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn model_file(dir: &Path) -> PathBuf {
    let smol = PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
        .join(".cache/vramd/SmolLM2-135M-Instruct.Q4_1.gguf");
    if smol.is_file() {
        return smol;
    }
    let path = dir.join("bench-llama.gguf");
    let spec = vramd_gguf::llama::TinyLlamaSpec {
        n_embd: 512,
        n_layer: 8,
        n_ff: 2048,
        n_head: 8,
        n_head_kv: 8,
        ..Default::default()
    };
    vramd_gguf::llama::write_tiny_llama(&path, &spec).expect("write the bench model");
    path
}

fn main() {
    // This example lives in target/<profile>/examples; the binaries one folder up.
    let exe = std::env::current_exe().expect("own path");
    let bin_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_owned();
    let vramd = bin_dir.join("vramd");
    if !bin_dir.join("vramd-llm-worker").is_file() {
        eprintln!(
            "vramd-llm-worker is not built in {}: run `cargo build --workspace --bins`",
            bin_dir.display()
        );
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    let model = model_file(dir.path());
    let socket = dir.path().join("vramd.sock");
    let config = dir.path().join("vramd.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nidle_exit = \"0\"\nworker_dir = \"{}\"\nstate_dir = \"{}\"\n[memory]\nbackend = \"budget\"\n\
             [[models]]\nname = \"m\"\nkind = \"llm\"\npath = \"{}\"\ncontext_length = 512\n",
            bin_dir.display(),
            dir.path().join("state").display(),
            model.display()
        ),
    )
    .unwrap();
    let mut daemon = Command::new(&vramd)
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "vramd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let map = MappedFile::open(&model);
    let mut rows = Vec::new();
    for cold in [false, true] {
        let mut times = Vec::new();
        let mut resident = Vec::new();
        for _ in 0..RUNS {
            curl(&socket, "POST", "/v1/models/m/unload", r#"{"mode":"hard"}"#);
            if cold {
                drop_from_cache(&model).expect("fadvise");
            } else {
                let _ = std::fs::read(&model); // what WILLNEED after the unload brings back
            }
            resident.push(map.residency().resident_bytes as f64 / map.len().max(1) as f64 * 100.0);
            let v = curl(&socket, "POST", "/v1/models/m/load", "");
            times.push(v["load_ms"].as_u64().expect("load_ms") as f64);
        }
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let min = times.iter().copied().fold(f64::MAX, f64::min);
        let max = times.iter().copied().fold(0.0, f64::max);
        let res = resident.iter().sum::<f64>() / resident.len() as f64;
        rows.push((
            if cold {
                "cold (pages dropped)"
            } else {
                "warm (page cache)"
            },
            mean,
            min,
            max,
            res,
        ));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    println!(
        "\nmodel: {} ({:.1} MB), {RUNS} loads each\n",
        model.display(),
        map.len() as f64 / 1e6
    );
    println!("| reload | mean ms | min ms | max ms | file in page cache before load |");
    println!("|---|---:|---:|---:|---:|");
    for (name, mean, min, max, res) in &rows {
        println!("| {name} | {mean:.0} | {min:.0} | {max:.0} | {res:.0} % |");
    }
}

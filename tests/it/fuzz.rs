//! Every endpoint against hostile bodies: the requests of `tests/fuzz/http/` (what OpenAI,
//! Ollama and A1111 clients send), mutated as a fuzzer would (a value swapped for a nasty
//! one, a key dropped or added, the bytes truncated or flipped), sent to a daemon with fake
//! workers. Each must be answered in time, with a JSON error or a success, never a 500 or a
//! 502; afterwards the daemon answers `/health` and holds no reservation. Cases:
//! `VRAMD_FUZZ_CASES` (default 400, CI's bound); see `tests/fuzz/README.md`.

use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::{json, Value};

use crate::a1111::serve;
use crate::util::{http, Response};

fn seeds() -> Vec<(String, String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/http");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            (
                v["method"].as_str().unwrap().to_owned(),
                v["path"].as_str().unwrap().to_owned(),
                v["body"].clone(),
            )
        })
        .collect()
}

/// Values at the edges of what JSON and each field allow.
fn nasty() -> Vec<Value> {
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    vec![
        Value::Null,
        json!(-1),
        json!(0),
        json!(1e308),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.5),
        json!(""),
        json!("x".repeat(20_000)),
        json!([]),
        json!({}),
        json!(true),
        json!("../../etc/passwd"),
        json!("\u{0}"),
        json!("<lora:../x:1>"),
        json!("data:image/png;base64,!!"),
        deep,
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    /// The `n`th value of the tree (depth first) becomes nasty value `v`.
    Replace(usize, usize),
    /// The `n`th object loses a key.
    DropKey(usize),
    /// The `n`th object gains key `k` with nasty value `v`.
    AddKey(usize, usize, usize),
    /// The serialized body is cut at this fraction (per mille).
    Truncate(u16),
    /// A byte of the serialized body is changed.
    Flip(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<usize>()).prop_map(|(n, v)| Mutation::Replace(n, v)),
        2 => any::<usize>().prop_map(Mutation::DropKey),
        2 => (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(n, k, v)| Mutation::AddKey(n, k, v)),
        1 => (0u16..1000).prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
    ]
}

/// Every value of the tree, depth first, as JSON pointers.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, c)| pointers(c, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| pointers(c, format!("{at}/{i}"), out)),
        _ => {}
    }
}

/// The body after the mutations, as bytes (structural ones first, then byte-level).
fn apply(body: &Value, mutations: &[Mutation]) -> Vec<u8> {
    const KEYS: &[&str] = &[
        "stream",
        "model",
        "n",
        "max_tokens",
        "steps",
        "width",
        "mask",
        "tools",
        "keep_alive",
        "vae",
        "seed",
    ];
    let nasty = nasty();
    let mut v = body.clone();
    let mut bytes_edits = Vec::new();
    for m in mutations {
        let mut ptrs = Vec::new();
        pointers(&v, String::new(), &mut ptrs);
        let objects: Vec<String> = ptrs
            .iter()
            .filter(|p| v.pointer(p).is_some_and(Value::is_object))
            .cloned()
            .collect();
        match m {
            Mutation::Replace(n, k) => {
                let p = &ptrs[n % ptrs.len()];
                if let Some(slot) = v.pointer_mut(p) {
                    *slot = nasty[k % nasty.len()].clone();
                }
            }
            Mutation::DropKey(n) if !objects.is_empty() => {
                if let Some(Value::Object(o)) = v.pointer_mut(&objects[n % objects.len()]) {
                    if let Some(k) = o.keys().nth(n % o.len().max(1)).cloned() {
                        o.remove(&k);
                    }
                }
            }
            Mutation::AddKey(n, k, val) if !objects.is_empty() => {
                if let Some(Value::Object(o)) = v.pointer_mut(&objects[n % objects.len()]) {
                    o.insert(KEYS[k % KEYS.len()].into(), nasty[val % nasty.len()].clone());
                }
            }
            other => bytes_edits.push(other.clone()),
        }
    }
    let mut bytes = serde_json::to_vec(&v).unwrap();
    for m in bytes_edits {
        match m {
            Mutation::Truncate(per_mille) => bytes.truncate(bytes.len() * usize::from(per_mille) / 1000),
            Mutation::Flip(i, b) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] = b;
            }
            _ => {}
        }
    }
    bytes
}

/// What a client may get: an answer, or an error that is the client's or the memory's, as
/// JSON (Ollama's shape on `/api/`); never a 500 or 502.
fn check(path: &str, body: &[u8], r: &Response) -> Result<(), String> {
    let shown = || {
        format!(
            "{path} {} -> {} {}",
            String::from_utf8_lossy(&body[..body.len().min(300)]),
            r.status,
            String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
        )
    };
    if matches!(r.status, 500 | 502) || r.status >= 600 {
        return Err(format!("server error: {}", shown()));
    }
    if r.status >= 400 {
        let v: Value = serde_json::from_slice(&r.body).map_err(|_| format!("not JSON: {}", shown()))?;
        let ok = if path.starts_with("/api/") {
            v["error"].is_string()
        } else {
            v["error"]["message"].is_string()
        };
        if !ok {
            return Err(format!("not the error shape: {}", shown()));
        }
    }
    Ok(())
}

fn send(s: &crate::a1111::Served, method: &str, path: &str, body: &[u8]) -> Response {
    http(&s.d.socket, method, path, &[("Content-Type", "application/json")], body)
}

#[test]
fn every_endpoint_answers_mutated_client_requests_with_json() {
    let s = serve("");
    let seeds = seeds();
    assert!(seeds.len() >= 10, "the corpus is in tests/fuzz/http");
    // Each seed as sent first: they are real requests, and all succeed.
    for (method, path, body) in &seeds {
        let bytes = serde_json::to_vec(body).unwrap();
        let r = send(&s, method, path, &bytes);
        assert!(
            r.status < 300,
            "seed {path}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let cases = std::env::var("VRAMD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let strategy = (0..seeds.len(), prop::collection::vec(mutation(), 1..4));
    let started = Instant::now();
    let result = runner.run(&strategy, |(seed, mutations)| {
        let (method, path, body) = &seeds[seed];
        let bytes = apply(body, &mutations);
        let r = send(&s, method, path, &bytes);
        check(path, &bytes, &r).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}\n{}", s.d.log());
    }
    eprintln!("{cases} mutated requests in {:.1} s", started.elapsed().as_secs_f64());
    // The daemon is alive and, once idle, holds no reservation.
    assert_eq!(http(&s.d.socket, "GET", "/health", &[], b"").status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = s.d.get("/v1/status").json();
        let reserved: u64 = status["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["reserved_bytes"].as_u64().unwrap_or(0))
            .sum();
        let busy = status["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["state"] == "busy");
        if reserved == 0 && !busy {
            break;
        }
        assert!(Instant::now() < deadline, "still held after the run: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

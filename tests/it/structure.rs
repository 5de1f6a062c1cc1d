//! The structural invariants of ARCHITECTURE.md that no behaviour test can see, checked on
//! the source itself:
//!
//! - only `src/worker/` names a worker endpoint (`vramd_protocol::HEALTH`, …, `"/internal/…"`),
//!   and only `src/worker/` and `src/arbiter/` name a `WorkerClient`: everyone else reaches a
//!   worker through a `Grant`;
//! - only `src/arbiter/` (and `registry.rs` itself) names the `Registry`: everyone else sees
//!   snapshots;
//! - the top-level modules of `src/` import one another without a cycle;
//! - the daemon's package depends on no inference library, directly or through another crate;
//! - a module of `src/arbiter/` (other than `mod.rs`) imports no sibling but `state`, `host`
//!   and `grant`.
//!
//! Each check is a function of the files it reads, returning what breaks the rule, so the
//! tests at the end show on made-up sources that each one does fail when its rule is broken.
//! Comments are stripped before a check looks at code (string literals are kept).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The crates that carry llama.cpp or stable-diffusion.cpp (and so their own ggml).
const INFERENCE: [&str; 4] = ["llama-cpp-2", "llama-cpp-sys-2", "diffusion-rs", "diffusion-rs-sys"];
/// What an arbiter module other than `mod.rs` may import from beside it.
const ARBITER_SHARED: [&str; 3] = ["state", "host", "grant"];

/// A source file: its path relative to `src/` (with `/`) and its code without comments.
struct Source {
    path: String,
    code: String,
}

fn sources() -> Vec<Source> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<Source>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let rel = path.strip_prefix(base).unwrap().to_string_lossy().replace('\\', "/");
                out.push(Source {
                    path: rel,
                    code: strip_comments(&text),
                });
            }
        }
    }
    let mut out = Vec::new();
    let src = Path::new(ROOT).join("src");
    walk(&src, &src, &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    assert!(out.len() > 20, "expected the daemon's sources under {}", src.display());
    out
}

fn source(path: &str, code: &str) -> Source {
    Source {
        path: path.to_owned(),
        code: strip_comments(code),
    }
}

/// Rust source without its comments (line, block, doc); string and char literals are kept.
fn strip_comments(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c[i] == 'r' && (next == Some('"') || next == Some('#')) && raw_prefix_starts(&c, i) {
            // A raw string r"…" or r#"…"#: copy it to its closing quote and hashes.
            let start = i;
            i += 1;
            let mut hashes = 0;
            while c.get(i) == Some(&'#') {
                hashes += 1;
                i += 1;
            }
            if c.get(i) != Some(&'"') {
                out.extend(&c[start..i]); // `r#ident`, not a string
                continue;
            }
            i += 1;
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#'))) {
                i += 1;
            }
            i = (i + 1 + hashes).min(c.len());
            out.extend(&c[start..i]);
        } else if c[i] == '"' {
            let start = i;
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i = (i + 1).min(c.len());
            out.extend(&c[start..i]);
        } else if c[i] == '\'' && next == Some('\\') {
            // An escaped char literal ('\n', '\'', '\u{..}').
            let start = i;
            i += 2;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i = (i + 1).min(c.len());
            out.extend(&c[start..i]);
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            out.extend(&c[i..i + 3]); // a char literal such as '"'; else a lifetime
            i += 3;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Whether the `r` at `i` begins a raw string's prefix (`r"`, `r#"`, `br"`), not a name's end.
fn raw_prefix_starts(c: &[char], i: usize) -> bool {
    let before = |k: usize| i.checked_sub(k).and_then(|j| c.get(j));
    !ident_char(before(1)) || (before(1) == Some(&'b') && !ident_char(before(2)))
}

fn ident_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// The leading identifier of `s` (empty when it starts with anything else).
fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// Every name `code` reaches through `prefix` (`crate::`, `super::`, …): `prefix name` and
/// each first name of a group `prefix{a, b::c}`. With `chain`, repeats of the prefix's last
/// segment are skipped first (`super::super::x` → `x`).
fn names_after(code: &str, prefix: &str, chain: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(prefix) {
        let start = from + at;
        from = start + prefix.len();
        if ident_char(code[..start].chars().next_back().as_ref()) || code[..start].ends_with("::") {
            continue; // part of a longer path or name (`my_crate::`, `a::crate::`)
        }
        let mut rest = code[from..].trim_start();
        if chain {
            let again = prefix.trim_end_matches("::");
            while let Some(r) = rest.strip_prefix(again).and_then(|r| r.trim_start().strip_prefix("::")) {
                rest = r.trim_start();
            }
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (k, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident(&group[k..]);
                        if !name.is_empty() {
                            out.push(name.to_owned());
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// The worker protocol's endpoint constants: every `pub const NAME: &str = "/internal/…"` of
/// `vramd-protocol`, so that an endpoint added there is covered here.
fn endpoint_constants(protocol: &str) -> Vec<String> {
    strip_comments(protocol)
        .lines()
        .filter(|l| l.contains("\"/internal/"))
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .map(|rest| ident(rest).to_owned())
        .collect()
}

/// Files outside `src/worker/` that name a worker endpoint.
fn endpoints_outside_worker(files: &[Source], endpoints: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for f in files.iter().filter(|f| !f.path.starts_with("worker/")) {
        if f.code.contains("\"/internal/") {
            out.push(format!("{}: a \"/internal/…\" path", f.path));
        }
        for name in names_after(&f.code, "vramd_protocol::", false) {
            if endpoints.contains(&name) {
                out.push(format!("{}: vramd_protocol::{name}", f.path));
            }
        }
    }
    out
}

/// Files outside the `allowed` prefixes of `src/` whose code names `word` (a whole word).
fn named_outside(files: &[Source], word: &str, allowed: &[&str]) -> Vec<String> {
    let names = |code: &str| {
        code.match_indices(word).any(|(at, _)| {
            !ident_char(code[..at].chars().next_back().as_ref())
                && !ident_char(code[at + word.len()..].chars().next().as_ref())
        })
    };
    files
        .iter()
        .filter(|f| !allowed.iter().any(|a| f.path.starts_with(a)) && names(&f.code))
        .map(|f| format!("{} names {word}", f.path))
        .collect()
}

/// The top-level module a file of `src/` belongs to; `None` for the crate roots and binaries.
fn top_module(path: &str) -> Option<&str> {
    if matches!(path, "lib.rs" | "main.rs") || path.starts_with("bin/") {
        return None;
    }
    Some(path.split('/').next()?.trim_end_matches(".rs"))
}

/// Which top-level module of `src/` uses which other (`crate::x`, and `super::x` where
/// `super` is the crate root), with one file that does, for the message.
fn module_graph(files: &[Source]) -> BTreeMap<String, BTreeMap<String, String>> {
    let tops: BTreeSet<&str> = files.iter().filter_map(|f| top_module(&f.path)).collect();
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in files {
        let Some(from) = top_module(&f.path) else {
            continue;
        };
        let mut used = names_after(&f.code, "crate::", false);
        // In `src/x.rs` and `src/x/mod.rs`, `super` is the crate root.
        if !f.path.contains('/') || f.path.ends_with("/mod.rs") {
            used.extend(names_after(&f.code, "super::", false));
        }
        for to in used {
            if to != from && tops.contains(to.as_str()) {
                let edges = graph.entry(from.to_owned()).or_default();
                edges.entry(to).or_insert_with(|| f.path.clone());
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the path that closes it (`a → b → a`), if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// The inference crates a manifest depends on (any dependency table, renames included).
fn inference_in_manifest(manifest: &str) -> Vec<String> {
    let doc: toml::Table = manifest.parse().expect("Cargo.toml parses");
    let mut tables: Vec<&toml::Table> = Vec::new();
    let kinds = ["dependencies", "dev-dependencies", "build-dependencies"];
    tables.extend(kinds.iter().filter_map(|k| doc.get(*k)?.as_table()));
    for target in doc
        .get("target")
        .and_then(|t| t.as_table())
        .into_iter()
        .flat_map(|t| t.values())
    {
        tables.extend(kinds.iter().filter_map(|k| target.get(*k)?.as_table()));
    }
    let mut out = Vec::new();
    for (key, spec) in tables.into_iter().flatten() {
        let name = spec.get("package").and_then(|p| p.as_str()).unwrap_or(key);
        if INFERENCE.contains(&name) {
            out.push(name.to_owned());
        }
    }
    out
}

/// The inference crates in `package`'s dependency closure, from a `Cargo.lock`.
fn inference_in_lock(lock: &str, package: &str) -> Vec<String> {
    let doc: toml::Table = lock.parse().expect("Cargo.lock parses");
    let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in doc["package"].as_array().expect("[[package]]") {
        let name = p["name"].as_str().expect("name");
        let list = p.get("dependencies").and_then(|d| d.as_array()).into_iter().flatten();
        // An entry is "name" or "name version (source)".
        let list = list.filter_map(|d| d.as_str()?.split(' ').next());
        deps.entry(name).or_default().extend(list);
    }
    assert!(deps.contains_key(package), "{package} is in Cargo.lock");
    let (mut seen, mut todo) = (BTreeSet::new(), vec![package]);
    while let Some(p) = todo.pop() {
        if seen.insert(p) {
            todo.extend(deps.get(p).into_iter().flatten().copied());
        }
    }
    INFERENCE
        .iter()
        .filter(|n| seen.contains(**n))
        .map(|n| n.to_string())
        .collect()
}

/// Arbiter modules (not `mod.rs`) that import a sibling other than the shared ones.
fn arbiter_cross_imports(files: &[Source]) -> Vec<String> {
    let arbiter: Vec<&Source> = files.iter().filter(|f| f.path.starts_with("arbiter/")).collect();
    let siblings: BTreeSet<&str> = arbiter
        .iter()
        .filter_map(|f| f.path.strip_prefix("arbiter/")?.strip_suffix(".rs"))
        .filter(|s| !s.contains('/') && *s != "mod")
        .collect();
    let mut out = Vec::new();
    for f in arbiter.iter().filter(|f| f.path != "arbiter/mod.rs") {
        let own = f.path.trim_start_matches("arbiter/").trim_end_matches(".rs");
        let mut used = names_after(&f.code, "super::", true);
        used.extend(names_after(&f.code, "crate::arbiter::", false));
        for name in used {
            let sibling = siblings.contains(name.as_str()) && name != own;
            if sibling && !ARBITER_SHARED.contains(&name.as_str()) {
                out.push(format!("{} imports {name}", f.path));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn only_the_worker_module_names_a_worker_endpoint() {
    let endpoints = endpoint_constants(&read("crates/vramd-protocol/src/lib.rs"));
    for known in ["HEALTH", "LOAD", "GENERATE", "IMAGES"] {
        assert!(endpoints.iter().any(|e| e == known), "{known} not in {endpoints:?}");
    }
    let found = endpoints_outside_worker(&sources(), &endpoints);
    assert!(
        found.is_empty(),
        "only src/worker/ speaks the worker protocol; call WorkerClient's typed methods (through a Grant):\n{}",
        found.join("\n")
    );
}

#[test]
fn handlers_reach_a_worker_only_through_a_grant() {
    let found = named_outside(&sources(), "WorkerClient", &["worker/", "arbiter/"]);
    assert!(
        found.is_empty(),
        "only the arbiter (its grants and lifecycle tasks) holds a WorkerClient:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_arbiter_holds_the_registry() {
    let found = named_outside(&sources(), "Registry", &["arbiter/", "registry.rs"]);
    assert!(
        found.is_empty(),
        "only the arbiter task owns the Registry; others read snapshots:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_top_level_modules_have_no_cycle() {
    let graph = module_graph(&sources());
    assert!(graph.contains_key("arbiter"), "the graph was read: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        let edges: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("{} → {} (in src/{})", w[0], w[1], graph[&w[0]][&w[1]]))
            .collect();
        panic!("a cycle between top-level modules of src/:\n{}", edges.join("\n"));
    }
}

#[test]
fn the_daemon_links_no_inference_library() {
    let direct = inference_in_manifest(&read("Cargo.toml"));
    assert!(direct.is_empty(), "the root Cargo.toml depends on {direct:?}");
    let through = inference_in_lock(&read("Cargo.lock"), "vramd");
    assert!(through.is_empty(), "vramd depends on {through:?} through another crate");
}

#[test]
fn arbiter_modules_import_only_state_host_and_grant() {
    let found = arbiter_cross_imports(&sources());
    assert!(
        found.is_empty(),
        "an arbiter module imports a sibling (only state, host and grant are shared):\n{}",
        found.join("\n")
    );
}

/// The checks above, on made-up sources: each fails when its rule is broken.
#[test]
fn each_check_catches_what_breaks_its_rule() {
    let protocol = "/// `GET /internal/health`\npub const HEALTH: &str = \"/internal/health\";\n\
                    pub const GENERATE: &str = \"/internal/generate\";\npub const IMAGES: &str = \"/internal/images\";\n\
                    pub const VERSION: u32 = 1;\n";
    let endpoints = endpoint_constants(protocol);
    assert_eq!(endpoints, ["HEALTH", "GENERATE", "IMAGES"]);
    let api = |code: &str| {
        let files = [
            source("api/images.rs", code),
            source("worker/client.rs", "vramd_protocol::HEALTH"),
        ];
        endpoints_outside_worker(&files, &endpoints).len()
    };
    assert_eq!(
        api("// vramd_protocol::HEALTH \"/internal/health\"\nlet v = vramd_protocol::VERSION;"),
        0
    );
    assert_eq!(api("let p = vramd_protocol::GENERATE;"), 1);
    assert_eq!(api("use vramd_protocol::{Health, IMAGES};"), 1);
    assert_eq!(api("post(\"/internal/load\")"), 1);

    let client = |code: &str| {
        vec![
            source("api/images.rs", code),
            source("arbiter/grant.rs", "WorkerClient"),
        ]
    };
    let found = |code: &str| named_outside(&client(code), "WorkerClient", &["worker/", "arbiter/"]);
    assert!(found("// a WorkerClient\nlet c: MyWorkerClient;").is_empty());
    assert_eq!(
        found("use crate::worker::client::WorkerClient;"),
        ["api/images.rs names WorkerClient"]
    );
    let registry = [
        source("registry.rs", "pub struct Registry"),
        source("dbus/interface.rs", "r: &Registry"),
    ];
    assert_eq!(
        named_outside(&registry, "Registry", &["arbiter/", "registry.rs"]).len(),
        1
    );

    let tree = |registry: &str| {
        vec![
            source("lib.rs", "pub mod planner; use crate::registry::X;"),
            source("planner/mod.rs", "use crate::model::ModelKind; use super::units;"),
            source("registry.rs", registry),
            source("model.rs", ""),
            source("units.rs", ""),
            source("bin/vramctl/main.rs", "use crate::registry;"),
        ]
    };
    assert_eq!(find_cycle(&module_graph(&tree("use crate::planner::Plan;"))), None);
    let cycle = find_cycle(&module_graph(&tree(
        "// use crate::planner::Plan;\nuse crate::{units, model::X};",
    )));
    assert_eq!(cycle, None);
    let units_cycle = vec![
        source("units.rs", "fn f() -> crate::planner::Plan { todo!() }"),
        source("planner/mod.rs", "use super::units;"),
    ];
    assert!(find_cycle(&module_graph(&units_cycle)).is_some());
    let three = vec![
        source("registry.rs", "use crate::planner::Plan;"),
        source("planner/mod.rs", "use crate::{units, model::ModelKind};"),
        source("model.rs", "pub fn f(_: &crate::registry::Entry) {}"),
        source("units.rs", ""),
    ];
    let cycle = find_cycle(&module_graph(&three)).expect("model → registry → planner → model");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");

    let manifest = "[dependencies]\nserde = \"1\"\n[target.'cfg(unix)'.dev-dependencies]\nllm = { package = \"llama-cpp-2\", version = \"0.1\" }\n";
    assert_eq!(inference_in_manifest(manifest), ["llama-cpp-2"]);
    assert!(inference_in_manifest("[dependencies]\nserde = \"1\"\n").is_empty());
    let lock = r#"
        [[package]]
        name = "vramd"
        dependencies = ["kit 0.1.0", "serde"]
        [[package]]
        name = "kit"
        dependencies = ["diffusion-rs-sys"]
        [[package]]
        name = "serde"
        [[package]]
        name = "diffusion-rs-sys"
        [[package]]
        name = "llama-cpp-2"
    "#;
    assert_eq!(inference_in_lock(lock, "vramd"), ["diffusion-rs-sys"]);
    assert!(inference_in_lock(lock, "serde").is_empty());

    let arbiter = |queue: &str| {
        vec![
            source("arbiter/mod.rs", "mod queue; use self::lifecycle::LoadResult;"),
            source("arbiter/queue.rs", queue),
            source(
                "arbiter/lifecycle.rs",
                "use super::{state::Arbiter, grant::Grant, host::Host, Work};",
            ),
            source("arbiter/state.rs", ""),
            source("arbiter/host.rs", ""),
            source("arbiter/grant.rs", ""),
        ]
    };
    assert!(arbiter_cross_imports(&arbiter("use super::state::Arbiter; // super::lifecycle")).is_empty());
    let found = arbiter_cross_imports(&arbiter("use super::{state::Arbiter, lifecycle::MAX};"));
    assert_eq!(found, ["arbiter/queue.rs imports lifecycle"]);
    assert_eq!(
        arbiter_cross_imports(&arbiter("let r: super::lifecycle::LoadResult;")).len(),
        1
    );
    assert_eq!(
        arbiter_cross_imports(&arbiter("use crate::arbiter::lifecycle;")).len(),
        1
    );
    assert_eq!(
        arbiter_cross_imports(&arbiter("mod tests { use super::super::lifecycle::X; }")).len(),
        1
    );
}

#[test]
fn comments_go_and_literals_stay() {
    let code = "let a = \"// kept\"; // gone\nlet b = r#\"/* kept */\"#; let d = br#\"{\"x\"}\"#; // gone\n/* gone /* nested */ */ let c = '\"'; fn f<'a>() {}";
    let stripped = strip_comments(code);
    assert!(stripped.contains("\"// kept\""), "{stripped}");
    assert!(stripped.contains("r#\"/* kept */\"#"), "{stripped}");
    assert!(stripped.contains("br#\"{\"x\"}\"#;"), "{stripped}");
    assert!(!stripped.contains("gone"), "{stripped}");
    assert!(
        stripped.contains("'\"'") && stripped.contains("fn f<'a>() {}"),
        "{stripped}"
    );
}

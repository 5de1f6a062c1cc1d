//! The configuration parser against hostile text: the seed files of `tests/fuzz/config/`
//! (the packaged configuration, every key set once), mutated as a fuzzer would, must give
//! a configuration or an error that names the file, never a panic. Cases:
//! `VRAMD_FUZZ_CASES` (default 300; the CI's bound), e.g. `VRAMD_FUZZ_CASES=100000 cargo
//! test -p vramd --lib config::fuzz_tests` for a long run.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::{parse_dropin, parse_main, Config};

fn seeds() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/config");
    let mut seeds: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 3, "the corpus is in {}", dir.display());
    seeds
}

/// What a fuzzer inserts: TOML's syntax, this file's keys and values at their limits.
const TOKENS: &[&str] = &[
    "[",
    "]",
    "[[models]]\n",
    "[daemon]\n",
    "=",
    "\"",
    "'",
    "\n",
    "#",
    "{",
    "}",
    ",",
    ".",
    "-1",
    "0",
    "1e999",
    "18446744073709551616",
    "\"\"",
    "\"0\"",
    "\"1EiB\"",
    "\"-5m\"",
    "\"99999999999h\"",
    "name = \"chat\"\n",
    "kind = \"image\"\n",
    "path = \"../../etc/shadow\"\n",
    "\u{0}",
    "\u{feff}",
    "inf",
    "nan",
    "true",
    "[[models]]\nname = \"x\"\nkind = \"llm\"\n",
];

#[derive(Clone, Debug)]
enum Edit {
    Insert(prop::sample::Index, prop::sample::Index),
    Delete(prop::sample::Index, u8),
    Duplicate(prop::sample::Index, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(a, t)| Edit::Insert(a, t)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(a, n)| Edit::Delete(a, n)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(a, n)| Edit::Duplicate(a, n)),
    ]
}

fn mutate(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let len = chars.len().max(1);
        match e {
            Edit::Insert(at, t) => {
                let token = TOKENS[t.index(TOKENS.len())];
                let at = at.index(len).min(chars.len());
                chars.splice(at..at, token.chars());
            }
            Edit::Delete(at, n) => {
                let at = at.index(len).min(chars.len());
                let end = (at + usize::from(*n)).min(chars.len());
                chars.drain(at..end);
            }
            Edit::Duplicate(at, n) => {
                let at = at.index(len).min(chars.len());
                let end = (at + usize::from(*n)).min(chars.len());
                let copy: Vec<char> = chars[at..end].to_vec();
                chars.splice(at..at, copy);
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn every_seed_is_a_valid_configuration() {
    for (path, text) in seeds() {
        let main = parse_main(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Config::assemble(main, Vec::new()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(300)))]

    #[test]
    fn mutated_configurations_parse_or_say_where_they_are_wrong(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let seeds = seeds();
        let (path, text) = &seeds[seed.index(seeds.len())];
        let text = mutate(text, &edits);
        match parse_main(path, &text) {
            Ok(main) => {
                if let Err(e) = Config::assemble(main, Vec::new()) {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
            Err(e) => {
                let shown = e.to_string();
                prop_assert!(shown.contains(&*path.to_string_lossy()), "{}", shown);
            }
        }
        // The same text as a models.d drop-in.
        if let Err(e) = parse_dropin(path, &text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

//! Configuration through the binary: resolution order, drop-ins, `--check-config`, and bad
//! files that must stop the daemon before it binds anything.

use std::path::Path;
use std::process::{Command, Output};

use crate::util::VRAMD;

fn vramd(dir: &Path, args: &[&str]) -> Output {
    Command::new(VRAMD)
        .args(args)
        .arg("--socket")
        .arg(dir.join("vramd.sock"))
        .env_remove("VRAMD_CONFIG")
        .env_remove("LISTEN_FDS")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the daemon on a bad file: it must exit 2 with the file and line, binding nothing.
fn rejects(text: &str, expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vramd.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = vramd(dir.path(), &["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:", cfg.display())), "no file name in {err:?}");
    assert!(err.contains(expect), "expected {expect:?} in {err:?}");
    assert!(
        !dir.path().join("vramd.sock").exists(),
        "a rejected config must not bind"
    );
}

#[test]
fn bad_files_give_file_line_and_reason() {
    rejects(
        "[daemon]\nidle_exit = \"5m\"\nsoket = \"/x\"\n",
        ":3:1: unknown field `soket`",
    );
    rejects("[memory]\nbudget = \"lots\"\n", ":2:10: invalid size \"lots\"");
    rejects(
        "[memory]\nbudget = \"1GiB\"\nreserve = \"4GiB\"\n",
        ":3:11: memory reserve (4GiB) must be smaller",
    );
    rejects(
        "[[models]]\nname = \"chat\"\nkind = \"llm\"\n",
        ":1:1: model \"chat\" needs a `path`",
    );
    rejects("[daemon\n", ":1:8:");
    rejects("[[models]]\nname = \"a\"\nkind = \"llm\"\npath = \"/a\"\n[[models]]\nname = \"a\"\nkind = \"llm\"\npath = \"/b\"\n", "defined twice");
}

#[test]
fn missing_explicit_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = vramd(dir.path(), &["--config", "/nonexistent/vramd.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/vramd.toml: cannot read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_config_prints_the_resolved_configuration_with_dropins() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vramd.toml");
    std::fs::write(
        &cfg,
        "[memory]\nbudget = \"12GiB\"\n[[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"chat.gguf\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("models.d")).unwrap();
    std::fs::write(
        dir.path().join("models.d/20-sd.toml"),
        "[[models]]\nname = \"sd\"\nkind = \"image\"\ndiffusion_model = \"/m/dit.gguf\"\nvae = \"/m/vae.gguf\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("models.d/example.toml.sample"), "this is not toml").unwrap();
    // VRAMD_CONFIG is the second way to name the file.
    let out = Command::new(VRAMD)
        .arg("--check-config")
        .env("VRAMD_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("# read {}", cfg.display())), "{text}");
    assert!(text.contains("20-sd.toml"), "{text}");
    assert!(text.contains("budget = \"12GiB\""), "{text}");
    assert!(text.contains("idle_exit = \"5m\""), "defaults are printed too: {text}");
    assert!(
        text.contains(&format!("path = \"{}\"", dir.path().join("chat.gguf").display())),
        "{text}"
    );
    assert!(text.contains("diffusion_model = \"/m/dit.gguf\""), "{text}");
    // What it prints is itself a valid configuration.
    let elsewhere = tempfile::tempdir().unwrap();
    let again = elsewhere.path().join("printed.toml");
    std::fs::write(
        &again,
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let out = Command::new(VRAMD)
        .arg("--check-config")
        .arg("--config")
        .arg(&again)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn bad_dropin_names_the_dropin() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vramd.toml");
    std::fs::write(&cfg, "").unwrap();
    std::fs::create_dir(dir.path().join("models.d")).unwrap();
    let bad = dir.path().join("models.d/chat.toml");
    std::fs::write(
        &bad,
        "[[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"/a\"\ncontext = 4096\n",
    )
    .unwrap();
    let out = vramd(dir.path(), &["--config", cfg.to_str().unwrap(), "--check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("{}:5:1: unknown field `context`", bad.display())),
        "{}",
        stderr(&out)
    );
}

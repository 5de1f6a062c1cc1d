//! The systemd files in `systemd/`: `systemd-analyze verify` accepts the units, and
//! `systemd-sysusers` / `systemd-tmpfiles` accept our sysusers.d and tmpfiles.d files in a
//! throw-away root.

use std::path::Path;
use std::process::Command;

use crate::util::VRAMD;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (install the systemd package)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for unit in ["vramd.socket", "vramd.service", "vramd-tcp.socket"] {
        let text = std::fs::read_to_string(Path::new(ROOT).join("systemd").join(unit)).unwrap();
        // The installed path does not exist on a build machine: point at the built binary.
        let dest = dir.path().join(unit);
        std::fs::write(&dest, text.replace("/usr/bin/vramd", VRAMD)).unwrap();
        paths.push(dest);
    }
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(&paths));
    assert!(!out.contains("Unknown key") && !out.contains("Invalid"), "{out}");
    let sec = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&paths[1]));
    let line = sec
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .expect("exposure line");
    let score: f64 = line
        .split("vramd.service: ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(score <= 2.0, "the service lost its hardening: {line}");
}

#[test]
fn sysusers_and_tmpfiles_apply_in_a_root() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(Path::new(ROOT).join("systemd/sysusers.d/vramd.conf")));
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("vramd:"))
        .expect("vramd user created");
    assert!(
        user.ends_with(":/var/lib/vramd:/usr/sbin/nologin") || user.contains("nologin"),
        "{user}"
    );
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("vramd:")), "{group}");
    assert!(
        group.lines().any(|l| l.starts_with("video:") && l.contains("vramd")),
        "{group}"
    );

    run(Command::new("systemd-tmpfiles")
        .arg("--create")
        .arg(format!("--root={}", root.path().display()))
        .arg(Path::new(ROOT).join("systemd/tmpfiles.d/vramd.conf")));
    use std::os::unix::fs::PermissionsExt;
    let models = std::fs::metadata(root.path().join("var/lib/vramd/models")).unwrap();
    assert!(models.is_dir());
    let state = std::fs::metadata(root.path().join("var/lib/vramd")).unwrap();
    assert_eq!(state.permissions().mode() & 0o777, 0o750);
}

//! `vramctl keys`: the API keys file, edited in place (see `vramd::keys`). Run as root on an
//! installed system: the file is `root:vramd 0640`, so the daemon (user `vramd`) reads it
//! and nobody else does. The file is replaced atomically (a new file, then a rename), so
//! vramd never reads half of it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use serde_json::json;
use vramd::cli::ctl::KeysCmd;
use vramd::keys::{KeyError, KeyFile, Role};

pub fn run(action: &KeysCmd, file: &Path, json: bool) -> ExitCode {
    match apply(action, file, json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vramctl: {e}");
            ExitCode::from(1)
        }
    }
}

fn apply(action: &KeysCmd, file: &Path, json: bool) -> Result<(), KeyError> {
    let mut keys = KeyFile::read(file)?;
    match action {
        KeysCmd::List => {
            if json {
                let list: Vec<_> = keys
                    .keys
                    .iter()
                    .map(|k| json!({"name": k.name, "role": k.role, "created": k.created}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else if keys.keys.is_empty() {
                println!(
                    "no keys in {}: TCP clients need none (any local user may generate over TCP)",
                    file.display()
                );
            } else {
                println!("{:<24} {:<9} CREATED", "NAME", "ROLE");
                for k in &keys.keys {
                    println!(
                        "{:<24} {:<9} {}",
                        k.name,
                        k.role.to_string(),
                        k.created.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        KeysCmd::Create { name, role } => {
            let role = if role == "control" {
                Role::Control
            } else {
                Role::Generate
            };
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(vramd::clock::unix_secs(SystemTime::now()));
            let created = Some(vramd::clock::rfc3339(now));
            let key = keys.create(name, role, created)?;
            save(&keys, file)?;
            if json {
                println!("{}", json!({"name": name, "role": role, "key": key}));
            } else {
                println!("{key}");
                eprintln!(
                    "key {name:?} ({role}) written to {}; this is the only time it is shown",
                    file.display()
                );
            }
        }
        KeysCmd::Revoke { name } => {
            keys.revoke(name)?;
            save(&keys, file)?;
            if !json {
                eprintln!("key {name:?} revoked: requests with it are refused from now on");
            }
        }
    }
    Ok(())
}

/// Writes the file next to itself and renames it into place: mode 0640, and as root, group
/// `vramd` (the daemon's), so only root and the daemon read it.
fn save(keys: &KeyFile, file: &Path) -> Result<(), KeyError> {
    let io = |source: std::io::Error| KeyError::Io {
        path: file.display().to_string(),
        source,
    };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = file.with_extension("toml.new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(keys.render().as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o640)).map_err(io)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        if let Some(gid) = vramd::access::lookup_group("vramd") {
            use std::os::unix::ffi::OsStrExt;
            let c = std::ffi::CString::new(tmp.as_os_str().as_bytes()).map_err(|e| io(e.into()))?;
            // SAFETY: a NUL-terminated path; -1 keeps the owner.
            if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
                return Err(io(std::io::Error::last_os_error()));
            }
        }
    }
    std::fs::rename(&tmp, file).map_err(io)
}

//! API keys: who may use vramd over TCP, where the socket's group cannot tell.
//!
//! The keys file (`[daemon] keys_file`, `/etc/vramd/keys.toml`; root-owned, readable by the
//! daemon's group only) lists keys by name with a [`Role`] and the SHA-256 of the key, never
//! the key itself, so reading the file gives nobody a key. `vramctl keys create` makes a key,
//! prints it once and writes its digest here; `vramctl keys revoke` removes it. The daemon
//! reads the file again whenever it changes ([`KeyStore`]), so neither needs a restart.
//!
//! A client sends its key as `Authorization: Bearer KEY` (OpenAI and Ollama clients) or as
//! the password of HTTP Basic auth (A1111 clients send `user:password`; the user is not
//! checked). [`KeyFile::find`] compares digests in constant time and looks at every entry,
//! so the time taken says nothing about which key came close. Keys are never logged.
//!
//! This module is the rule and the file format; `api/mod.rs` applies it to requests (401 on
//! TCP without a valid key once keys exist) and `access` counts a `control` key as the right
//! to change state.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a key allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Use the models: generate, choose the A1111 checkpoint, interrupt its images.
    Generate,
    /// Also change state: load, unload, pin.
    Control,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Generate => "generate",
            Role::Control => "control",
        })
    }
}

/// One key as the file holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub name: String,
    pub role: Role,
    /// The key's SHA-256, in hex.
    pub sha256: String,
    /// When it was made (RFC 3339), for people reading the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// The keys file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    #[serde(default, rename = "key")]
    pub keys: Vec<KeyEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("a key named {0:?} exists already")]
    Exists(String),
    #[error("no key is named {0:?}")]
    NoSuchKey(String),
    #[error("a key name is 1 to 64 letters, digits, '-', '_' or '.', got {0:?}")]
    BadName(String),
}

/// The first line of the file, for whoever opens it.
const HEADER: &str = "# vramd API keys (see `vramctl keys --help`): names, roles and SHA-256 digests,\n\
                      # never the keys themselves. vramd reads this file again when it changes.\n";

impl KeyFile {
    pub fn parse(text: &str, path: &Path) -> Result<KeyFile, KeyError> {
        let invalid = |reason: String| KeyError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let file: KeyFile = toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
        for k in &file.keys {
            check_name(&k.name)?;
            if decode_hex(&k.sha256).is_none() {
                return Err(invalid(format!("key {:?}: `sha256` must be 64 hex digits", k.name)));
            }
            if file.keys.iter().filter(|o| o.name == k.name).count() > 1 {
                return Err(invalid(format!("key {:?} is listed twice", k.name)));
            }
        }
        Ok(file)
    }

    /// Reads `path`; a file that does not exist holds no keys.
    pub fn read(path: &Path) -> Result<KeyFile, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => KeyFile::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyFile::default()),
            Err(source) => Err(KeyError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    pub fn render(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!("{HEADER}\n{body}")
    }

    /// The entry whose digest is `key`'s: every entry is compared, each in constant time.
    pub fn find(&self, key: &str) -> Option<&KeyEntry> {
        let digest = sha256(key);
        let mut found = None;
        for entry in &self.keys {
            let same = decode_hex(&entry.sha256).is_some_and(|d| constant_time_eq(&d, &digest));
            if same && found.is_none() {
                found = Some(entry);
            }
        }
        found
    }

    /// Adds a key named `name`; returns the key, which is nowhere else from then on.
    pub fn create(&mut self, name: &str, role: Role, created: Option<String>) -> Result<String, KeyError> {
        check_name(name)?;
        if self.keys.iter().any(|k| k.name == name) {
            return Err(KeyError::Exists(name.to_owned()));
        }
        let key = new_key().map_err(|source| KeyError::Io {
            path: "/dev/urandom".into(),
            source,
        })?;
        self.keys.push(KeyEntry {
            name: name.to_owned(),
            role,
            sha256: hex(&sha256(&key)),
            created,
        });
        Ok(key)
    }

    pub fn revoke(&mut self, name: &str) -> Result<(), KeyError> {
        let before = self.keys.len();
        self.keys.retain(|k| k.name != name);
        if self.keys.len() == before {
            return Err(KeyError::NoSuchKey(name.to_owned()));
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), KeyError> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadName(name.to_owned()))
    }
}

/// A new key: `vramd-` and 256 random bits in URL-safe base64 (no padding), which every
/// client accepts as a bearer token or a Basic password.
fn new_key() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!(
        "vramd-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Equal, in a time that depends only on the length.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key a request presents: `Authorization: Bearer KEY`, or Basic auth's password (its
/// user when the password is empty: some clients put the key there).
pub fn presented(authorization: Option<&str>) -> Option<String> {
    let value = authorization?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':').unwrap_or((text.as_str(), ""));
        let key = if password.is_empty() { user } else { password };
        return (!key.is_empty()).then(|| key.to_owned());
    }
    None
}

/// The keys file as the daemon uses it: read again when it changes (its modification time,
/// size or inode), so `vramctl keys create` and `revoke` take effect at the next request.
pub struct KeyStore {
    path: PathBuf,
    cached: Mutex<(Option<Stamp>, Loaded)>,
}

/// What identifies a version of the file.
type Stamp = (SystemTime, u64, u64);

/// The file as last read: its keys, or why it could not be used.
#[derive(Clone, Debug)]
pub enum Loaded {
    Keys(KeyFile),
    /// A file that exists but cannot be read or parsed: every TCP request is refused until
    /// it is fixed (failing closed), and the reason is logged once per version.
    Broken(String),
}

impl KeyStore {
    pub fn new(path: PathBuf) -> KeyStore {
        KeyStore {
            path,
            cached: Mutex::new((None, Loaded::Keys(KeyFile::default()))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current keys, re-read if the file changed.
    pub fn current(&self) -> Loaded {
        use std::os::unix::fs::MetadataExt;
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()));
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0 != stamp {
            let loaded = match KeyFile::read(&self.path) {
                Ok(file) => Loaded::Keys(file),
                Err(e) => {
                    tracing::error!("API keys: {e}; refusing TCP requests until it is fixed");
                    Loaded::Broken(e.to_string())
                }
            };
            *cached = (stamp, loaded);
        }
        cached.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kept_as_digests_and_found_by_the_key() {
        let mut file = KeyFile::default();
        let web = file.create("open-webui", Role::Generate, None).unwrap();
        let admin = file
            .create("admin", Role::Control, Some("2026-12-02T15:00:00Z".into()))
            .unwrap();
        assert!(web.starts_with("vramd-") && web.len() == 6 + 43, "{web}");
        assert_ne!(web, admin);
        let text = file.render();
        assert!(
            !text.contains(&web) && !text.contains(&admin[6..]),
            "no key in the file"
        );
        let back = KeyFile::parse(&text, Path::new("k")).unwrap();
        assert_eq!(back, file);
        assert_eq!(
            back.find(&web).map(|k| (k.name.as_str(), k.role)),
            Some(("open-webui", Role::Generate))
        );
        assert_eq!(back.find(&admin).map(|k| k.role), Some(Role::Control));
        assert!(back.find("vramd-wrong").is_none());
        assert!(back.find(&web[..web.len() - 1]).is_none());
        assert!(matches!(
            file.create("admin", Role::Generate, None),
            Err(KeyError::Exists(_))
        ));
        assert!(matches!(
            file.create("a b", Role::Generate, None),
            Err(KeyError::BadName(_))
        ));
        file.revoke("open-webui").unwrap();
        assert!(file.find(&web).is_none());
        assert!(matches!(file.revoke("open-webui"), Err(KeyError::NoSuchKey(_))));
    }

    #[test]
    fn broken_files_are_errors_that_say_where() {
        let p = Path::new("/etc/vramd/keys.toml");
        for bad in [
            "[[key]]\nname = \"x\"\nrole = \"root\"\nsha256 = \"00\"\n",
            "[[key]]\nname = \"x\"\nrole = \"generate\"\nsha256 = \"zz\"\n",
            "[[key]]\nname = \"x\"\nrole = \"generate\"\nsha256 = \"00\"\nextra = 1\n",
            "[[key]]\nname = \"../x\"\nrole = \"generate\"\nsha256 = \"00\"\n",
            "not toml",
        ] {
            let e = KeyFile::parse(bad, p).unwrap_err().to_string();
            assert!(e.contains("keys.toml") || e.contains("key name"), "{e}");
        }
        let twice = format!(
            "[[key]]\nname = \"x\"\nrole = \"generate\"\nsha256 = \"{0}\"\n[[key]]\nname = \"x\"\nrole = \"control\"\nsha256 = \"{0}\"\n",
            "0".repeat(64)
        );
        assert!(KeyFile::parse(&twice, p).unwrap_err().to_string().contains("twice"));
        assert_eq!(
            KeyFile::read(Path::new("/nonexistent/keys.toml")).unwrap(),
            KeyFile::default()
        );
    }

    #[test]
    fn bearer_and_basic_present_a_key() {
        assert_eq!(presented(Some("Bearer vramd-abc")).as_deref(), Some("vramd-abc"));
        assert_eq!(presented(Some("bearer  vramd-abc ")).as_deref(), Some("vramd-abc"));
        let basic = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        assert_eq!(
            presented(Some(&basic("sillytavern:vramd-abc"))).as_deref(),
            Some("vramd-abc")
        );
        assert_eq!(presented(Some(&basic("vramd-abc:"))).as_deref(), Some("vramd-abc"));
        assert_eq!(presented(Some(&basic("vramd-abc"))).as_deref(), Some("vramd-abc"));
        for none in [
            None,
            Some(""),
            Some("Bearer "),
            Some("Digest x"),
            Some("Basic !!!"),
            Some(basic(":").as_str()),
        ] {
            assert_eq!(presented(none), None, "{none:?}");
        }
    }

    #[test]
    fn the_store_reads_the_file_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let store = KeyStore::new(path.clone());
        assert!(
            matches!(store.current(), Loaded::Keys(k) if k.keys.is_empty()),
            "no file, no keys"
        );
        let mut file = KeyFile::default();
        let key = file.create("a", Role::Generate, None).unwrap();
        std::fs::write(&path, file.render()).unwrap();
        assert!(matches!(store.current(), Loaded::Keys(k) if k.find(&key).is_some()));
        std::fs::write(&path, "broken").unwrap();
        assert!(
            matches!(store.current(), Loaded::Broken(_)),
            "a broken file fails closed"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(store.current(), Loaded::Keys(k) if k.keys.is_empty()));
    }
}

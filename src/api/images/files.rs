//! Images answered as URLs (OpenAI's `response_format: "url"`): each PNG is written to
//! `[daemon] state_dir`/`images/` under a random 128-bit name and served at
//! `GET /v1/images/files/NAME.png` for [`KEEP`] (one hour, as OpenAI's URLs last); older
//! files are removed whenever one is stored or served, so the folder never grows without
//! bound. The name is the only key: whoever can reach the daemon and has the URL can fetch
//! the image, as with OpenAI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use crate::api::{ApiError, AppState};

/// How long an image URL answers.
pub const KEEP: Duration = Duration::from_secs(3600);

const DIR: &str = "images";

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

/// Writes one PNG (base64) and returns its file name.
pub fn store(state_dir: &Path, png_base64: &str) -> Result<String, ApiError> {
    let unavailable = |e: std::io::Error| ApiError::Unavailable(format!("cannot keep the image for its URL: {e}"));
    let dir = dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(unavailable)?;
    expire(&dir);
    let png = base64::engine::general_purpose::STANDARD
        .decode(png_base64)
        .map_err(|e| ApiError::WorkerFailed(format!("the worker sent an image that is not base64: {e}")))?;
    let name = format!("{}.png", random_name().map_err(unavailable)?);
    std::fs::write(dir.join(&name), png).map_err(unavailable)?;
    Ok(name)
}

/// The URL of a stored image, on the host and port the request came in on (its `Host`
/// header; `localhost` for a client on the Unix socket that sent none).
pub fn url(headers: &HeaderMap, name: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c)))
        .unwrap_or("localhost");
    format!("http://{host}/v1/images/files/{name}")
}

/// `GET /v1/images/files/{name}`: a stored image while it is kept; a 404 afterwards.
pub async fn serve(State(state): State<AppState>, UrlPath(name): UrlPath<String>) -> Result<Response, ApiError> {
    let gone = || {
        ApiError::NotFound(format!(
            "image {name:?} does not exist or has expired (images are kept for an hour)"
        ))
    };
    if !valid_name(&name) {
        return Err(gone());
    }
    let dir = dir(&state.config.daemon.state_dir);
    expire(&dir);
    let png = std::fs::read(dir.join(&name)).map_err(|_| gone())?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("image/png"))], png).into_response())
}

/// Only names this module made: 32 lowercase hex digits and `.png`. Anything else (a path,
/// `..`) never reaches the file system.
fn valid_name(name: &str) -> bool {
    name.strip_suffix(".png")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// 128 bits from the kernel's random source, in hex.
fn random_name() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes the images older than [`KEEP`].
fn expire(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > KEEP);
        if old && valid_name(&entry.file_name().to_string_lossy()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_random_hex_and_nothing_else_is_served() {
        let a = random_name().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_name().unwrap());
        assert!(valid_name(&format!("{a}.png")));
        for bad in [
            "../etc/passwd",
            "x.png",
            &format!("{a}.PNG"),
            &format!("../{a}.png"),
            &a,
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn stored_images_expire_after_an_hour() {
        let state = tempfile::tempdir().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG fake");
        let name = store(state.path(), &b64).unwrap();
        let path = dir(state.path()).join(&name);
        assert_eq!(std::fs::read(&path).unwrap(), b"\x89PNG fake");
        let old = std::time::SystemTime::now() - KEEP - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let fresh = store(state.path(), &b64).unwrap();
        assert!(!path.exists(), "the hour-old image is removed");
        assert!(dir(state.path()).join(fresh).exists());
    }

    #[test]
    fn urls_use_the_request_s_host() {
        let mut h = HeaderMap::new();
        assert_eq!(url(&h, "a.png"), "http://localhost/v1/images/files/a.png");
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7867"));
        assert_eq!(url(&h, "a.png"), "http://127.0.0.1:7867/v1/images/files/a.png");
        h.insert(header::HOST, HeaderValue::from_static("evil/path?x"));
        assert_eq!(url(&h, "a.png"), "http://localhost/v1/images/files/a.png");
    }
}

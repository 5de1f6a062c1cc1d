//! The status page, `GET /ui`: what the GPU is doing, live, for a person with a browser.
//!
//! Plain HTML, CSS and JavaScript in three small files built into the binary with
//! `include_str!`: nothing to build (no Node toolchain, no bundler), nothing fetched from a
//! CDN (the page works on a machine without a network, and its Content-Security-Policy
//! allows only the daemon itself), a few kilobytes served from memory. The page reads what
//! every client reads (`/v1/status`, `/v1/events` and its `text`, `/v1/me`), so it holds no
//! rule of its own: the eviction order, the sentences and who may press a button all come
//! from the daemon.

use axum::http::header::{self, HeaderName};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("index.html");
const CSS: &str = include_str!("ui.css");
const JS: &str = include_str!("ui.js");

/// Only the daemon's own files and connections, no inline script or style, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
                       frame-ancestors 'none'";

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

pub async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

/// An asset with its type, never cached without asking (an upgraded daemon serves the new
/// page at once) and under [`CSP`].
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, &'static str); 4] = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        // The CSP forbids them; a page that relied on them would silently not work.
        let lower = INDEX.to_lowercase();
        assert_eq!(lower.matches("<script").count(), 1, "one script, from a file");
        assert!(lower.contains("<script src=\"/ui/ui.js\""));
        assert!(!lower.contains("style="), "no inline style");
        let handler = lower.split(" on").skip(1).any(|rest| {
            let name_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        });
        assert!(!handler, "no inline event handler");
    }

    #[test]
    fn data_is_never_written_as_html() {
        // Model names and reasons reach the page as text (textContent, createElement) only.
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!JS.contains(bad), "ui.js uses {bad}");
        }
    }
}

//! A small blocking HTTP/1.1 client for the daemon's Unix socket.
//!
//! vramctl makes one request per connection (`Connection: close`), so a response is the
//! status line, headers, and a body that is chunked, sized, or runs to the end. Streamed
//! bodies (`/v1/events`, streamed chat) are read incrementally through [`Client::stream`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket: the daemon is not running or not reachable by us.
    #[error("cannot reach vramd at {}: {source}{}", socket.display(), hint(source))]
    Unreachable { socket: PathBuf, source: io::Error },
    /// The daemon answered with an error (its JSON error shape).
    #[error("{message} ({status} {code})")]
    Daemon { status: u16, code: String, message: String },
    /// The connection broke or the answer was not HTTP/JSON.
    #[error("talking to vramd failed: {0}")]
    Protocol(String),
}

fn hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            " (is it running? `systemctl enable --now vramd.socket`, or pass --socket)"
        }
        io::ErrorKind::PermissionDenied => " (the socket is root:vramd 0660: is your user in the vramd group?)",
        _ => "",
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

pub struct Client {
    pub socket: PathBuf,
}

/// A successful response whose body is still on the wire.
pub struct Streaming {
    pub body: Box<dyn BufRead + Send>,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_owned(),
        }
    }

    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.json("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.json("POST", path, Some(body))
    }

    /// One request; the answer's JSON on 2xx, its error as [`ClientError::Daemon`] otherwise.
    pub fn json(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let mut resp = self.stream(method, path, body)?;
        let mut text = Vec::new();
        resp.body.read_to_end(&mut text)?;
        let value: Value = serde_json::from_slice(&text)
            .map_err(|e| ClientError::Protocol(format!("the answer is not JSON ({e})")))?;
        Ok(value)
    }

    /// Sends a request and returns the response with its body unread. Error statuses are
    /// turned into [`ClientError::Daemon`] here, so a stream is always a success.
    pub fn stream(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Streaming, ClientError> {
        let mut s = UnixStream::connect(&self.socket).map_err(|source| ClientError::Unreachable {
            socket: self.socket.clone(),
            source,
        })?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: vramd\r\nConnection: close\r\nUser-Agent: vramctl\r\n");
        if method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        s.write_all(req.as_bytes())?;
        let mut reader = BufReader::new(s);
        let (status, headers) = read_head(&mut reader)?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let body: Box<dyn BufRead + Send> =
            if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
                Box::new(BufReader::new(Chunked {
                    inner: reader,
                    left: 0,
                    done: false,
                }))
            } else if let Some(n) = header("content-length").and_then(|v| v.parse::<u64>().ok()) {
                Box::new(reader.take(n))
            } else {
                Box::new(reader)
            };
        let mut resp = Streaming { body };
        if !(200..300).contains(&status) {
            let mut text = Vec::new();
            resp.body.read_to_end(&mut text)?;
            return Err(daemon_error(status, &text));
        }
        Ok(resp)
    }
}

/// The daemon's `{"error":{"message","code"}}`, or the raw text when it is not that.
pub fn daemon_error(status: u16, body: &[u8]) -> ClientError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = &v["error"];
    ClientError::Daemon {
        status,
        code: e["code"].as_str().unwrap_or("error").to_owned(),
        message: e["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned()),
    }
}

type Head = (u16, Vec<(String, String)>);

fn read_head(r: &mut impl BufRead) -> Result<Head, ClientError> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("not an HTTP answer: {:?}", line.trim())))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(ClientError::Protocol("the connection closed in the headers".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, headers));
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
}

/// A chunked body as a plain byte stream.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.trim().is_empty() {
                // The CRLF that ends the previous chunk.
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            let size = line.trim().split(';').next().unwrap_or("");
            if size.is_empty() {
                self.done = true;
                return Ok(0);
            }
            self.left = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {size:?}")))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_read_whole() {
        let wire = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        let mut out = String::new();
        Chunked {
            inner: &wire[..],
            left: 0,
            done: false,
        }
        .read_to_string(&mut out)
        .unwrap();
        assert_eq!(out, "hello, world");
    }

    #[test]
    fn heads_and_errors() {
        let mut wire = &b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n\r\n{}"[..];
        let (status, headers) = read_head(&mut wire).unwrap();
        assert_eq!(status, 404);
        assert_eq!(headers[0].1, "application/json");
        let e = daemon_error(
            403,
            br#"{"error":{"message":"needs root","type":"permission_error","code":"access_denied"}}"#,
        );
        assert_eq!(e.to_string(), "needs root (403 access_denied)");
        let e = ClientError::Unreachable {
            socket: "/run/vramd/vramd.sock".into(),
            source: io::ErrorKind::NotFound.into(),
        };
        assert!(e
            .to_string()
            .starts_with("cannot reach vramd at /run/vramd/vramd.sock: "));
        assert!(e.to_string().contains("is it running?"));
    }
}

//! The workers' end-to-end harness (feature `testing`): start a real worker binary and talk
//! the protocol to it.
//!
//! - A [`WorkerBinary`] says what the harness needs to know of one worker: its binary, the
//!   log filter its tests want, the path it streams on and the events it streams. Each
//!   worker's `tests/support` declares one, and names `Worker<ThatOne>` its `Worker`.
//! - [`Worker::start`] runs the binary on a socket in a fresh temporary folder, stdin piped
//!   (as the daemon does), stderr kept in `worker.log` there, and waits until health answers.
//! - [`Worker::call`] / [`Worker::stream`] are a deliberately small HTTP/1.1 client over
//!   the Unix socket (`Connection: close`, `Content-Length` or chunked bodies);
//!   [`Worker::health`], [`Worker::unload`] and [`Response::expect_error`] are the checks
//!   every worker's tests make.

use std::io::{BufRead, BufReader, Read, Write};
use std::marker::PhantomData;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use vramd_protocol::{ErrorCode, Health, UnloadMode, UnloadRequest, WorkerError, HEALTH, UNLOAD};

/// How long a test waits for one answer before it fails (a generation included).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A worker binary as its tests start and drive it.
pub trait WorkerBinary {
    /// The event its stream path answers with, one per NDJSON line.
    type Event: DeserializeOwned;
    /// The binary (`env!("CARGO_BIN_EXE_…")`).
    const PATH: &'static str;
    /// `RUST_LOG` for the worker: what its tests want to find in `worker.log`.
    const RUST_LOG: &'static str;
    /// Where it streams a generation (`GENERATE`, `IMAGES`).
    const STREAM: &'static str;
}

/// A running worker under test; killed when dropped.
pub struct Worker<B> {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub child: Child,
    stdin: Option<ChildStdin>,
    _binary: PhantomData<fn() -> B>,
}

impl<B: WorkerBinary> Worker<B> {
    /// Starts the binary with its `RUST_LOG` and waits until it answers health.
    pub fn start() -> Worker<B> {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("worker.sock");
        let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
        let mut child = Command::new(B::PATH)
            .arg("--socket")
            .arg(&socket)
            .env("RUST_LOG", B::RUST_LOG)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", B::PATH));
        let stdin = child.stdin.take();
        let mut w = Worker {
            dir,
            socket,
            child,
            stdin,
            _binary: PhantomData,
        };
        w.wait_ready();
        w
    }

    /// Starts a generation and returns its status and line reader.
    pub fn stream(&self, body: &impl Serialize) -> (u16, Events<B::Event>) {
        self.stream_at(B::STREAM, body)
    }
}

impl<B> Worker<B> {
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.socket).is_ok() && self.try_call("GET", HEALTH, None).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("worker exited early with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("worker did not start listening:\n{}", self.log());
    }

    /// What the worker wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }

    /// A path in the worker's temporary folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Closes the pipe the worker watches, as a dying daemon does.
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `GET /internal/health`, which must answer 200.
    pub fn health(&self) -> Health {
        let r = self.get(HEALTH);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// `POST /internal/unload` in `mode`, which must answer 200; the health after it.
    pub fn unload(&self, mode: UnloadMode) -> Health {
        let r = self.post(UNLOAD, &UnloadRequest { mode });
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    pub fn get(&self, path: &str) -> Response {
        self.call("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &impl Serialize) -> Response {
        self.call("POST", path, Some(serde_json::to_vec(body).unwrap()))
    }

    pub fn post_raw(&self, path: &str, body: &str) -> Response {
        self.call("POST", path, Some(body.as_bytes().to_vec()))
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Response {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    /// Like [`Worker::call`], but an I/O failure (the worker died) is returned, not a panic.
    pub fn try_call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> std::io::Result<Response> {
        let (status, mut reader) = self.open(method, path, body)?;
        let mut body = Vec::new();
        reader.read_to_end(&mut body)?;
        Ok(Response { status, body })
    }

    /// POSTs `body` to `path` and returns the status and a reader of the NDJSON lines.
    pub fn stream_at<E: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> (u16, Events<E>) {
        let (status, reader) = self
            .open("POST", path, Some(serde_json::to_vec(body).unwrap()))
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log()));
        (status, Events::new(reader))
    }

    fn open(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> std::io::Result<(u16, Box<dyn Read + Send>)> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        let body = body.unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        s.write_all(&body)?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let (mut chunked, mut length) = (false, None);
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (name, value) = l.split_once(':').unwrap_or((l, ""));
            let (name, value) = (name.to_ascii_lowercase(), value.trim());
            if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
            if name == "content-length" {
                length = value.parse::<u64>().ok();
            }
        }
        let reader: Box<dyn Read + Send> = match (chunked, length) {
            (true, _) => Box::new(Chunked {
                inner: r,
                left: 0,
                done: false,
            }),
            (false, Some(n)) => Box::new(r.take(n)),
            (false, None) => Box::new(r),
        };
        Ok((status, reader))
    }
}

impl<B> Drop for Worker<B> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{e}: status {} body {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Checks that this is the protocol's error `code` with HTTP `status`, and returns it.
    pub fn expect_error(&self, status: u16, code: ErrorCode) -> WorkerError {
        assert_eq!(self.status, status, "{}", self.text());
        let e: WorkerError = self.json();
        assert_eq!(e.code, code, "{e:?}");
        e
    }
}

/// The NDJSON lines of a stream, as `E`s.
pub struct Events<E> {
    reader: BufReader<Box<dyn Read + Send>>,
    _event: PhantomData<fn() -> E>,
}

impl<E: DeserializeOwned> Events<E> {
    fn new(reader: Box<dyn Read + Send>) -> Events<E> {
        Events {
            reader: BufReader::new(reader),
            _event: PhantomData,
        }
    }

    pub fn next_event(&mut self) -> Option<E> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read event line");
        if n == 0 {
            return None;
        }
        assert!(line.ends_with('\n'), "event line without newline: {line:?}");
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
    }

    pub fn collect(mut self) -> Vec<E> {
        let mut all = Vec::new();
        while let Some(e) = self.next_event() {
            all.push(e);
        }
        all
    }
}

/// A reader of a chunked transfer-encoded body.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            let size = line.trim_end().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size.trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = size;
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        if self.left == 0 {
            let mut crlf = String::new();
            self.inner.read_line(&mut crlf)?;
        }
        Ok(n)
    }
}

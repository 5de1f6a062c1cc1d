//! Getting the API sockets: from systemd (`LISTEN_FDS`/`LISTEN_FDNAMES`) or bound by hand.
//!
//! The fd named `api` is the Unix socket; an optional `api-tcp` is a loopback TCP socket
//! serving the same API. A hand-started daemon binds `[daemon] socket`, removing a stale
//! socket file but refusing to take over one that another process still answers on.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use socket2::{Domain, Socket};

/// A listening socket, still in blocking std form so it can be made before the runtime.
#[derive(Debug)]
pub enum Listener {
    Unix {
        listener: std::os::unix::net::UnixListener,
        /// Set when vramd bound the path itself and so removes it on exit.
        owned_path: Option<PathBuf>,
        name: String,
    },
    Tcp {
        listener: std::net::TcpListener,
        name: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("invalid socket activation environment: {0}")]
    Environment(io::Error),
    #[error("socket-activated fd {fd} ({name}) is not a listening stream socket: {reason}")]
    BadFd { fd: RawFd, name: String, reason: String },
    #[error(
        "socket-activated fd {fd} ({name}) is TCP on {addr}, which is not loopback; refusing to serve the API on it"
    )]
    NotLoopback {
        fd: RawFd,
        name: String,
        addr: std::net::SocketAddr,
    },
    #[error("socket-activated fds were passed but none is a Unix or TCP stream socket")]
    NoneUsable,
    #[error("another process is already serving on {0}; refusing to take over its socket")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("--tcp {0} is not a loopback address; vramd serves TCP on loopback only")]
    TcpNotLoopback(std::net::SocketAddr),
    #[error("cannot bind TCP {addr}: {source}")]
    BindTcp {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
}

impl Listener {
    pub fn name(&self) -> &str {
        match self {
            Listener::Unix { name, .. } | Listener::Tcp { name, .. } => name,
        }
    }
}

/// Takes the sockets systemd passed, if any. Returns an empty list when not socket-activated.
/// Must run before any thread starts: it unsets `LISTEN_*` so workers do not inherit them.
pub fn from_systemd() -> Result<Vec<Listener>, ListenError> {
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names(true)
        .map_err(ListenError::Environment)?
        .collect();
    if fds.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (fd, name) in fds {
        // SAFETY: systemd passed this fd to us for our exclusive use (LISTEN_PID matched).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        match adopt(fd, &name, owned)? {
            Some(l) => out.push(l),
            None => tracing::warn!(fd, name, "ignoring a passed fd that is not a stream socket"),
        }
    }
    if out.is_empty() {
        return Err(ListenError::NoneUsable);
    }
    if !out.iter().any(|l| l.name() == "api") {
        tracing::warn!(
            "no fd is named \"api\"; serving the API on the passed sockets anyway (set FileDescriptorName=api)"
        );
    }
    Ok(out)
}

fn adopt(fd: RawFd, name: &str, owned: OwnedFd) -> Result<Option<Listener>, ListenError> {
    let socket = Socket::from(owned);
    let bad = |reason: String| ListenError::BadFd {
        fd,
        name: name.to_owned(),
        reason,
    };
    let addr = match socket.local_addr() {
        Ok(a) => a,
        Err(_) => return Ok(None),
    };
    if !socket.is_listener().map_err(|e| bad(e.to_string()))? {
        return Err(bad("it is not listening (Accept=yes is not supported)".into()));
    }
    socket.set_nonblocking(false).map_err(|e| bad(e.to_string()))?;
    match addr.domain() {
        Domain::UNIX => Ok(Some(Listener::Unix {
            listener: std::os::unix::net::UnixListener::from(OwnedFd::from(socket)),
            owned_path: None,
            name: name.to_owned(),
        })),
        Domain::IPV4 | Domain::IPV6 => {
            let sa = addr.as_socket().ok_or_else(|| bad("no address".into()))?;
            if !sa.ip().is_loopback() {
                return Err(ListenError::NotLoopback {
                    fd,
                    name: name.to_owned(),
                    addr: sa,
                });
            }
            Ok(Some(Listener::Tcp {
                listener: std::net::TcpListener::from(OwnedFd::from(socket)),
                name: name.to_owned(),
            }))
        }
        _ => Ok(None),
    }
}

/// Binds a Unix socket at `path` for a hand-started daemon.
pub fn bind_unix(path: &Path) -> Result<Listener, ListenError> {
    let bind_err = |source| ListenError::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => return Err(ListenError::NotASocket(path.to_owned())),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::InUse(path.to_owned())),
            Err(_) => {
                tracing::info!(path = %path.display(), "removing stale socket");
                std::fs::remove_file(path).map_err(bind_err)?;
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(bind_err)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?;
    Ok(Listener::Unix {
        listener,
        owned_path: Some(path.to_owned()),
        name: "api".into(),
    })
}

/// Binds the loopback TCP listener (`api-tcp`) for a hand-started daemon, as
/// `vramd-tcp.socket` does under systemd: what WebUIs that cannot use a Unix socket reach.
pub fn bind_tcp(addr: std::net::SocketAddr) -> Result<Listener, ListenError> {
    if !addr.ip().is_loopback() {
        return Err(ListenError::TcpNotLoopback(addr));
    }
    let listener = std::net::TcpListener::bind(addr).map_err(|source| ListenError::BindTcp { addr, source })?;
    Ok(Listener::Tcp {
        listener,
        name: "api-tcp".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_is_loopback_only() {
        let l = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(l.name(), "api-tcp");
        assert!(matches!(
            bind_tcp("0.0.0.0:0".parse().unwrap()),
            Err(ListenError::TcpNotLoopback(_))
        ));
    }

    #[test]
    fn stale_socket_is_replaced_but_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/vramd.sock");
        let live = bind_unix(&path).unwrap();
        assert!(matches!(bind_unix(&path), Err(ListenError::InUse(_))));
        drop(live); // the file stays behind, with nobody listening: stale
        assert!(path.exists());
        let again = bind_unix(&path).unwrap();
        assert_eq!(again.name(), "api");
    }

    #[test]
    fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vramd.sock");
        std::fs::write(&path, "precious").unwrap();
        assert!(matches!(bind_unix(&path), Err(ListenError::NotASocket(_))));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }

    #[test]
    fn adopts_listening_sockets_by_family() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let unix = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        let fd = unix.as_raw_fd();
        let l = adopt(fd, "api", OwnedFd::from(unix)).unwrap().unwrap();
        assert!(matches!(l, Listener::Unix { ref name, owned_path: None, .. } if name == "api"));

        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = tcp.as_raw_fd();
        let l = adopt(fd, "api-tcp", OwnedFd::from(tcp)).unwrap().unwrap();
        assert!(matches!(l, Listener::Tcp { .. }));

        let wild = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let fd = wild.as_raw_fd();
        assert!(matches!(
            adopt(fd, "api-tcp", OwnedFd::from(wild)),
            Err(ListenError::NotLoopback { .. })
        ));
    }
}

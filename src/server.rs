//! Serving the API on already-open listeners until a shutdown future resolves.
//!
//! [`run`] takes its listeners and its shutdown signal as arguments (as mini-redis does), so
//! `main` passes systemd's sockets and tests pass temporary ones. Shutdown stops accepting,
//! lets in-flight requests finish for up to `drain`, then returns.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::activity::Activity;
use crate::listeners::Listener;

/// Who is on the other end of a connection; handlers that change state check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// From `SO_PEERCRED`, plus the supplementary groups from `SO_PEERGROUPS`.
    Unix {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
        groups: Vec<u32>,
    },
    Tcp(std::net::SocketAddr),
}

/// `SO_PEERGROUPS` (Linux ≥ 4.13): the peer's supplementary groups as they were when it
/// connected. Empty when the kernel does not say.
fn peer_groups(stream: &tokio::net::UnixStream) -> Vec<u32> {
    use std::os::fd::AsRawFd;
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `groups`, which has that room.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return groups;
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) && n > groups.len() {
            groups.resize(n, 0);
            continue;
        }
        return Vec::new();
    }
}

pub struct Served {
    /// Connections still open when the drain bound ran out.
    pub abandoned: usize,
}

/// Serves `app` on every listener until `shutdown` resolves.
pub async fn run(
    listeners: Vec<Listener>,
    app: Router,
    activity: Activity,
    drain: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<Served> {
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut owned_paths = Vec::new();
    for l in listeners {
        let ctx = Ctx {
            app: app.clone(),
            activity: activity.clone(),
            graceful: graceful.clone(),
            stop: stop_rx.clone(),
        };
        match l {
            Listener::Unix {
                listener,
                owned_path,
                name,
            } => {
                listener.set_nonblocking(true)?;
                let listener = tokio::net::UnixListener::from_std(listener)?;
                owned_paths.extend(owned_path);
                tracing::info!(listener = %name, addr = ?listener.local_addr().ok(), "serving");
                tasks.push(tokio::spawn(ctx.accept_unix(listener)));
            }
            Listener::Tcp { listener, name } => {
                listener.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(listener)?;
                tracing::info!(listener = %name, addr = ?listener.local_addr().ok(), "serving");
                tasks.push(tokio::spawn(ctx.accept_tcp(listener)));
            }
        }
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await; // dropping each listener stops accepting
    }
    for path in owned_paths {
        let _ = std::fs::remove_file(path);
    }
    let graceful = Arc::into_inner(graceful).expect("accept loops have ended");
    let open = graceful.count();
    if open > 0 {
        tracing::info!(connections = open, "waiting for in-flight requests");
    }
    let abandoned = match tokio::time::timeout(drain, graceful.shutdown()).await {
        Ok(()) => 0,
        Err(_) => {
            let left = activity.connections();
            tracing::warn!(
                connections = left,
                "drain timeout reached; closing remaining connections"
            );
            left
        }
    };
    Ok(Served { abandoned })
}

struct Ctx {
    app: Router,
    activity: Activity,
    graceful: Arc<GracefulShutdown>,
    stop: watch::Receiver<bool>,
}

impl Ctx {
    async fn accept_unix(mut self, listener: tokio::net::UnixListener) {
        loop {
            tokio::select! {
                _ = self.stop.changed() => return,
                r = listener.accept() => match r {
                    Ok((stream, _)) => {
                        let groups = peer_groups(&stream);
                        let peer = stream.peer_cred().map(|c| Peer::Unix { uid: c.uid(), gid: c.gid(), pid: c.pid(), groups });
                        match peer {
                            Ok(peer) => self.serve(stream, peer),
                            Err(e) => tracing::warn!("cannot read peer credentials: {e}"),
                        }
                    }
                    Err(e) => accept_error(e).await,
                },
            }
        }
    }

    async fn accept_tcp(mut self, listener: tokio::net::TcpListener) {
        loop {
            tokio::select! {
                _ = self.stop.changed() => return,
                r = listener.accept() => match r {
                    Ok((stream, addr)) => self.serve(stream, Peer::Tcp(addr)),
                    Err(e) => accept_error(e).await,
                },
            }
        }
    }

    fn serve<S>(&self, stream: S, peer: Peer)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let guard = self.activity.connection();
        let app = self
            .app
            .clone()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer.clone());
                req
            });
        let service = TowerToHyperService::new(app);
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = self.graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended with an error: {e}");
            }
            drop(guard);
        });
    }
}

/// Accept errors (EMFILE, ECONNABORTED) are transient: log and back off instead of spinning.
async fn accept_error(e: std::io::Error) {
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

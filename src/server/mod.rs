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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::activity::Activity;
use idle::{Idle, Touching};

mod idle;
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

/// What bounds the serving: how connections are kept and how shutdown drains them.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long in-flight requests may run on after shutdown.
    pub drain: Duration,
    /// How long a connection may take to send a request's headers; an idle keep-alive
    /// connection (and a slowloris) is closed after it.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Connections served at once, over all listeners; further ones wait in the backlog.
    pub max_connections: usize,
}

/// Serves `app` on every listener until `shutdown` resolves.
pub async fn run(
    listeners: Vec<Listener>,
    app: Router,
    activity: Activity,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<Served> {
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut tasks = Vec::new();
    let mut owned_paths = Vec::new();
    for l in listeners {
        let ctx = Ctx {
            app: app.clone(),
            activity: activity.clone(),
            graceful: graceful.clone(),
            stop: stop_rx.clone(),
            slots: slots.clone(),
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
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
    let abandoned = match tokio::time::timeout(limits.drain, graceful.shutdown()).await {
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
    /// One permit per open connection (`Limits::max_connections`).
    slots: Arc<Semaphore>,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Ctx {
    /// A free connection slot, or `None` once shutdown began.
    async fn slot(&mut self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            _ = self.stop.changed() => None,
            permit = self.slots.clone().acquire_owned() => permit.ok(),
        }
    }

    async fn accept_unix(mut self, listener: tokio::net::UnixListener) {
        while let Some(slot) = self.slot().await {
            tokio::select! {
                _ = self.stop.changed() => return,
                r = listener.accept() => match r {
                    Ok((stream, _)) => {
                        let groups = peer_groups(&stream);
                        let peer = stream.peer_cred().map(|c| Peer::Unix { uid: c.uid(), gid: c.gid(), pid: c.pid(), groups });
                        match peer {
                            Ok(peer) => self.serve(stream, peer, slot),
                            Err(e) => tracing::warn!("cannot read peer credentials: {e}"),
                        }
                    }
                    Err(e) => accept_error(e).await,
                },
            }
        }
    }

    async fn accept_tcp(mut self, listener: tokio::net::TcpListener) {
        while let Some(slot) = self.slot().await {
            tokio::select! {
                _ = self.stop.changed() => return,
                r = listener.accept() => match r {
                    Ok((stream, addr)) => self.serve(stream, Peer::Tcp(addr), slot),
                    Err(e) => accept_error(e).await,
                },
            }
        }
    }

    /// Serves one connection, holding `slot` until it closes.
    fn serve<S>(&self, stream: S, peer: Peer, slot: OwnedSemaphorePermit)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let guard = self.activity.connection();
        let idle = Idle::new();
        let (app, watched) = (self.app.clone(), idle.clone());
        let app = tower::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            // In flight until its response body is sent to the end.
            let busy = watched.begin();
            let app = app.clone();
            async move {
                let resp = app.oneshot(req).await;
                resp.map(|r| r.map(|body| idle::held(body, busy)))
            }
        });
        let service = TowerToHyperService::new(app);
        // HTTP/1.1 only: every client vramd serves speaks it, and detecting HTTP/2 would read
        // the first bytes with no timeout at all (an idle connection held forever).
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
        // Without a timer hyper enforces no header timeout at all; with it, headers that
        // stall (a slowloris) close the connection. One that sends nothing is `idle`'s.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        let stream = Touching {
            inner: stream,
            idle: idle.clone(),
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = self.graceful.watch(conn);
        let (first, between) = (self.header_timeout, self.idle_timeout);
        tokio::spawn(async move {
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!("connection ended with an error: {e}");
                },
                () = idle.expired(first, between) => tracing::debug!("closing an idle connection"),
            }
            drop(guard);
            drop(slot);
        });
    }
}

/// Accept errors (EMFILE, ECONNABORTED) are transient: log and back off instead of spinning.
async fn accept_error(e: std::io::Error) {
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

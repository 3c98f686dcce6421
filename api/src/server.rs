//! The HTTP server: accepts connections and serves the router on them with
//! hyper-util's builder (HTTP/1.1 and HTTP/2, WebSocket upgrades), with what
//! `axum::serve` leaves out:
//! - a client must send a request's headers within `header_read_timeout`
//!   (a new connection that sends nothing, or a header byte every few
//!   seconds, is closed) — hyper times the headers of every request after
//!   the first; the first one, and the protocol sniffing before it, are
//!   timed here;
//! - a connection with no request in flight for `keepalive_timeout` is
//!   closed (after any response still being written);
//! - at most `max_connections` connections at once: past that, new ones
//!   wait in the kernel's backlog until one closes;
//! - the peer's address rides on every request (`ConnectInfo`), for the
//!   client IP;
//! - on shutdown, idle connections close at once, busy ones after their
//!   response, and whatever still runs after `grace` is abandoned so the
//!   process can exit.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use mage_domain::config::ConnectionSettings;

/// How a connection is doing, seen by its watchdog.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds after `opened` when the last response was ready.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }
}

/// Counts a request in flight until its response is ready (or it is
/// dropped: the client went away).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.requests.fetch_add(1, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets
/// the requests in flight finish for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ConnectionSettings,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Finds peers that vanished without closing; the idle timeout
        // below closes the ones that merely stopped asking.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let permits = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let connections = tokio_util::task::TaskTracker::new();
    let settings = Arc::new(settings);

    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather
                    // than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (builder, router, settings, shutdown) =
            (builder.clone(), router.clone(), settings.clone(), shutdown.clone());
        connections.spawn(async move {
            let _permit = permit;
            let activity = Arc::new(Activity::new());
            let service = {
                let activity = activity.clone();
                hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    let in_flight = InFlight::new(&activity);
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let router = router.clone();
                    async move {
                        let res = router.oneshot(req.map(axum::body::Body::new)).await;
                        drop(in_flight);
                        Ok::<_, Infallible>(res.unwrap_or_else(|never| match never {}))
                    }
                })
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let tick =
                (settings.keepalive_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
            let mut watchdog = tokio::time::interval(tick);
            let mut closing = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = shutdown.cancelled(), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = watchdog.tick(), if !closing => {
                        if activity.requests.load(Ordering::Relaxed) == 0 {
                            // Nothing asked yet: hyper's header timeout has not
                            // started, so it is kept here.
                            if activity.opened.elapsed() >= settings.header_read_timeout {
                                tracing::debug!(%peer, "closing a connection that sent no request in time");
                                break;
                            }
                        } else if activity.in_flight.load(Ordering::Relaxed) == 0 {
                            let idle = activity.now_ms() - activity.idle_since_ms.load(Ordering::Relaxed);
                            if Duration::from_millis(idle) >= settings.keepalive_timeout {
                                conn.as_mut().graceful_shutdown();
                                closing = true;
                            }
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!(
            open = connections.len(),
            "requests still running after the shutdown grace period: abandoned"
        );
    }
}

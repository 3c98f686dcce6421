//! The HTTP server: accepts connections and serves the router on them with
//! hyper-util's builder (HTTP/1.1 and HTTP/2, WebSocket upgrades), with what
//! `axum::serve` leaves out:
//! - a client must send a request's headers within `header_read_timeout`
//!   (a new connection that sends nothing, or a header byte every few
//!   seconds, is closed) — hyper times the headers of every request after
//!   the first; the first one, and the protocol sniffing before it, are
//!   timed here;
//! - a connection with no request in flight for `keepalive_timeout` is
//!   closed; one whose response has not moved for `send_timeout` (the peer
//!   stopped reading) is dropped;
//! - at most `max_connections` connections at once: past that, new ones
//!   wait in the kernel's backlog until one closes; at most
//!   `max_connections_per_ip` from one peer address (trusted proxies
//!   excepted): more are closed at once;
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

use crate::settings::ConnectionSettings;

/// How a connection is doing, seen by its watchdog.
struct Activity {
    opened: Instant,
    /// Requests whose response is not fully written yet.
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds after `opened` when the last response was written.
    idle_since_ms: AtomicU64,
    /// Responses whose body is being written, and when the last piece of
    /// one was taken by the connection (milliseconds after `opened`).
    bodies: AtomicUsize,
    progress_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            bodies: AtomicUsize::new(0),
            progress_ms: AtomicU64::new(0),
        }
    }

    /// How long ago `ms` (milliseconds after `opened`) was; zero for a
    /// moment another task has just stored.
    fn since(&self, ms: &AtomicU64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(ms.load(Ordering::Relaxed)))
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }
}

/// Counts a request in flight until its response is written (or dropped:
/// the client went away).
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

/// A response body that keeps its request in flight until it is written,
/// and notes each piece the connection takes, so a peer that stops reading
/// is seen (`send_timeout`).
struct Tracked {
    inner: axum::body::Body,
    in_flight: Option<InFlight>,
}

impl Tracked {
    fn new(inner: axum::body::Body, in_flight: InFlight) -> Self {
        let activity = &in_flight.0;
        activity.progress_ms.store(activity.now_ms(), Ordering::Relaxed);
        activity.bodies.fetch_add(1, Ordering::Relaxed);
        Self { inner, in_flight: Some(in_flight) }
    }

    fn finish(&mut self) {
        if let Some(f) = self.in_flight.take() {
            f.0.bodies.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish();
    }
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(_))) => {
                if let Some(f) = &self.in_flight {
                    f.0.progress_ms.store(f.0.now_ms(), Ordering::Relaxed);
                }
            }
            std::task::Poll::Ready(_) => self.finish(),
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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
    // Connections open per peer address, for `max_connections_per_ip`.
    let per_peer = Arc::new(crate::slots::PerKey::default());
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
        // One client may not take every connection; proxies (whose
        // connections carry many clients) are not limited this way.
        let ip = peer.ip().to_canonical();
        let slot = if settings.trusted_proxies.iter().any(|net| net.contains(&ip)) {
            None
        } else {
            match per_peer.take(ip, settings.max_connections_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(%peer, "refused a connection: too many from this address");
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (builder, router, settings, shutdown) =
            (builder.clone(), router.clone(), settings.clone(), shutdown.clone());
        connections.spawn(async move {
            let _held = (permit, slot);
            let activity = Arc::new(Activity::new());
            let service = {
                let activity = activity.clone();
                hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    let in_flight = InFlight::new(&activity);
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let router = router.clone();
                    async move {
                        let res = router.oneshot(req.map(axum::body::Body::new)).await;
                        let res = res.unwrap_or_else(|never| match never {});
                        Ok::<_, Infallible>(res.map(|body| Tracked::new(body, in_flight)))
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
                    _ = watchdog.tick() => {
                        if activity.requests.load(Ordering::Relaxed) == 0 {
                            // Nothing asked yet: hyper's header timeout has not
                            // started, so it is kept here.
                            if activity.opened.elapsed() >= settings.header_read_timeout {
                                tracing::debug!(%peer, "closing a connection that sent no request in time");
                                break;
                            }
                        } else if activity.bodies.load(Ordering::Relaxed) > 0
                            && activity.since(&activity.progress_ms) >= settings.send_timeout
                        {
                            // hyper has no write timeout: a peer that stopped
                            // reading would hold the connection for ever.
                            tracing::debug!(%peer, "closing a connection whose peer stopped reading");
                            break;
                        } else if !closing
                            && activity.in_flight.load(Ordering::Relaxed) == 0
                            && activity.since(&activity.idle_since_ms) >= settings.keepalive_timeout
                        {
                            conn.as_mut().graceful_shutdown();
                            closing = true;
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

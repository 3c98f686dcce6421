//! The HTTP client that delivers webhooks to integrators' endpoints. Its
//! resolver is the SSRF guard, so the client connects only to addresses the
//! guard has just checked (a name that rebinds to a private address between
//! the check and the connection gets nowhere). Redirects are returned, never
//! followed, and answers are read up to 4 KiB.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mage_domain::webhooks::guard::{Guard, Refused};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What is kept of an answer's body, for the delivery log.
pub const BODY_LIMIT: usize = 4096;
const USER_AGENT: &str = "Mage-Webhooks/1.0";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Endpoints are many and each sees a delivery now and then: an idle
/// connection is rarely worth keeping, and a short life bounds how long a
/// connection outlives the check of the address it goes to.
const POOL_IDLE: Duration = Duration::from_secs(15);

/// reqwest's resolver: every name goes through `Guard::resolve`.
#[derive(Debug, Clone)]
pub struct GuardedResolver(pub Guard);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            // hyper puts the URL's port on every address; 0 is a placeholder.
            let addrs: Vec<SocketAddr> = guard.resolve(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The delivery client: guarded resolver, no redirects, no proxy (a proxy
/// would resolve the name itself, out of the guard's sight), HTTP/1.1.
pub fn client(guard: Guard, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    let https_only = !guard.policy().allow_http;
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver(guard)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .https_only(https_only)
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .user_agent(USER_AGENT)
        .pool_idle_timeout(POOL_IDLE)
        .http1_only()
        .build()
}

/// An endpoint's answer, whatever its status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The first `BODY_LIMIT` bytes, as lossy UTF-8.
    pub body: String,
    /// From sending the request to the end of what was read of the body.
    pub duration: Duration,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why there is no answer; each message is one line for the delivery log.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("refused: {0}")]
    Refused(#[from] Refused),
    #[error("no answer within {:.1} s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("connection refused")]
    ConnectionRefused,
    #[error("connection reset by the endpoint")]
    ConnectionReset,
    #[error("TLS error: {0}")]
    Tls(String),
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the request failed: {0}")]
    Failed(String),
}

/// POSTs `body` to `url`. The URL is checked here first because reqwest
/// does not call the resolver for an IP-literal host.
pub async fn post(
    client: &reqwest::Client,
    guard: &Guard,
    url: &str,
    headers: &[(&str, String)],
    body: String,
) -> Result<Answer, SendError> {
    let url = guard.parse(url)?;
    let mut request = client.post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let started = Instant::now();
    let mut response = request.send().await.map_err(|e| send_error(&e, started))?;
    let status = response.status().as_u16();
    let mut kept = Vec::with_capacity(BODY_LIMIT);
    // Chunk by chunk, so an endless body costs one chunk past the limit.
    // The status is the endpoint's verdict: a body cut short (timeout,
    // reset) leaves it standing.
    while kept.len() < BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    kept.truncate(BODY_LIMIT);
    Ok(Answer { status, body: String::from_utf8_lossy(&kept).into_owned(), duration: started.elapsed() })
}

fn send_error(err: &reqwest::Error, started: Instant) -> SendError {
    if err.is_timeout() {
        return SendError::Timeout(started.elapsed());
    }
    if err.is_builder() {
        return SendError::Invalid(deepest(err));
    }
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return SendError::Refused(refused.clone());
        }
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return SendError::Tls(tls.to_string());
        }
        source = e.source();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return SendError::ConnectionRefused,
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                    return SendError::ConnectionReset;
                }
                std::io::ErrorKind::TimedOut => return SendError::Timeout(started.elapsed()),
                _ => {}
            }
            // An io::Error's source() skips the error it wraps (hyper-rustls
            // wraps rustls' in two): step into it instead.
            if let Some(inner) = io.get_ref() {
                source = Some(inner);
            }
        }
    }
    if err.is_connect() { SendError::Connect(deepest(err)) } else { SendError::Failed(deepest(err)) }
}

/// The innermost cause, which is where the useful words are.
fn deepest(err: &(dyn StdError + 'static)) -> String {
    let mut e = err;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::{any, post as post_route};
    use mage_domain::webhooks::guard::UrlPolicy;
    use mage_fakes::dns::FakeDns;
    use tokio::net::TcpListener;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn guard(allow_private: bool, nameserver: Option<SocketAddr>) -> Guard {
        Guard::new(UrlPolicy { allow_http: true, allow_private, nameserver })
    }

    async fn send(guard: &Guard, url: &str, timeout: Duration) -> Result<Answer, SendError> {
        let client = client(guard.clone(), timeout).expect("client");
        post(&client, guard, url, &[("content-type", "application/json".to_owned())], "{}".to_owned()).await
    }

    /// A listener nobody should reach, and the proof that nobody did.
    async fn untouched_listener() -> (TcpListener, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        (listener, port)
    }

    async fn assert_untouched(listener: &TcpListener) {
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "the guard let a connection through");
    }

    async fn serve(app: Router) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn loopback_literals_and_localhost_are_refused_without_connecting() {
        let (listener, port) = untouched_listener().await;
        let strict = guard(false, None);
        for url in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://localhost:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            format!("http://2130706433:{port}/"),
        ] {
            let got = send(&strict, &url, TIMEOUT).await;
            assert!(matches!(got, Err(SendError::Refused(_))), "{url}: {got:?}");
        }
        assert_untouched(&listener).await;
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused() {
        let dns = FakeDns::start(vec![
            ("evil.test".to_owned(), "10.0.0.1".parse().expect("ip")),
            ("loop.test".to_owned(), "127.0.0.1".parse().expect("ip")),
            // Public and private answers at once: the rebinding pattern.
            ("mixed.test".to_owned(), "93.184.216.34".parse().expect("ip")),
            ("mixed.test".to_owned(), "127.0.0.1".parse().expect("ip")),
            ("six.test".to_owned(), "::1".parse().expect("ip")),
        ])
        .await
        .expect("fake DNS");
        let (listener, port) = untouched_listener().await;
        let strict = guard(false, Some(dns.addr()));
        for (host, expected) in [
            ("evil.test", "evil.test resolves to 10.0.0.1, a private address"),
            ("loop.test", "loop.test resolves to 127.0.0.1, a loopback address"),
            ("mixed.test", "mixed.test resolves to 127.0.0.1, a loopback address"),
            ("six.test", "six.test resolves to ::1, a loopback address"),
        ] {
            let got = send(&strict, &format!("http://{host}:{port}/"), TIMEOUT).await;
            match got {
                Err(SendError::Refused(refused)) => {
                    assert!(refused.to_string().starts_with(expected), "{refused}")
                }
                other => panic!("{host}: {other:?}"),
            }
        }
        let unknown = send(&strict, &format!("http://nowhere.test:{port}/"), TIMEOUT).await;
        assert!(matches!(unknown, Err(SendError::Refused(Refused::Unresolvable { .. }))), "{unknown:?}");
        assert_untouched(&listener).await;

        // The same check at creation.
        assert!(matches!(strict.check("https://evil.test/hook").await, Err(Refused::Forbidden { .. })));
    }

    #[tokio::test]
    async fn with_private_allowed_the_post_arrives_with_its_headers() {
        let seen: Arc<Mutex<Vec<(HeaderMap, String)>>> = Arc::default();
        let app = Router::new().route(
            "/hook",
            post_route({
                let seen = seen.clone();
                move |headers: HeaderMap, body: String| async move {
                    seen.lock().expect("lock").push((headers, body));
                    (StatusCode::ACCEPTED, "thanks")
                }
            }),
        );
        let addr = serve(app).await;
        // Through the fake DNS too: the resolver path ends at the server.
        let dns = FakeDns::start(vec![("hooks.test".to_owned(), "127.0.0.1".parse().expect("ip"))])
            .await
            .expect("fake DNS");
        let lax = guard(true, Some(dns.addr()));
        let client = client(lax.clone(), TIMEOUT).expect("client");
        for url in [
            format!("http://127.0.0.1:{}/hook", addr.port()),
            format!("http://hooks.test:{}/hook", addr.port()),
        ] {
            let answer = post(
                &client,
                &lax,
                &url,
                &[
                    ("content-type", "application/json".to_owned()),
                    ("mage-signature", "t=1,v1=abc".to_owned()),
                ],
                r#"{"type":"ping"}"#.to_owned(),
            )
            .await
            .expect("delivered");
            assert_eq!(answer.status, 202);
            assert!(answer.is_success());
            assert_eq!(answer.body, "thanks");
        }
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 2);
        for (headers, body) in seen.iter() {
            assert_eq!(headers["mage-signature"], "t=1,v1=abc");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
            assert_eq!(headers[header::USER_AGENT], USER_AGENT);
            assert_eq!(body, r#"{"type":"ping"}"#);
        }
    }

    #[tokio::test]
    async fn redirects_are_returned_not_followed() {
        let followed = Arc::new(Mutex::new(0));
        let app = Router::new()
            .route("/hook", any(|| async { (StatusCode::FOUND, [(header::LOCATION, "/elsewhere")]) }))
            .route(
                "/elsewhere",
                any({
                    let followed = followed.clone();
                    move || async move {
                        *followed.lock().expect("lock") += 1;
                        "followed"
                    }
                }),
            );
        let addr = serve(app).await;
        let answer = send(&guard(true, None), &format!("http://{addr}/hook"), TIMEOUT).await.expect("answer");
        assert_eq!(answer.status, 302);
        assert!(!answer.is_success());
        assert_eq!(*followed.lock().expect("lock"), 0);
    }

    #[tokio::test]
    async fn a_silent_endpoint_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts and reads, never answers.
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let got = send(&guard(true, None), &format!("http://{addr}/"), timeout).await;
        assert!(matches!(got, Err(SendError::Timeout(after)) if after >= timeout), "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn an_endless_body_is_cut_at_4_kib() {
        let app = Router::new().route(
            "/hook",
            any(|| async {
                let chunk = bytes_of(1024);
                let endless =
                    futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
                (StatusCode::OK, Body::from_stream(endless)).into_response()
            }),
        );
        let addr = serve(app).await;
        let answer = send(&guard(true, None), &format!("http://{addr}/hook"), TIMEOUT).await.expect("answer");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body.len(), BODY_LIMIT);
        assert!(answer.body.bytes().all(|b| b == b'x'));
    }

    fn bytes_of(n: usize) -> String {
        "x".repeat(n)
    }

    #[tokio::test]
    async fn connection_failures_say_what_happened() {
        let (listener, port) = untouched_listener().await;
        drop(listener);
        let lax = guard(true, None);
        let got = send(&lax, &format!("http://127.0.0.1:{port}/"), TIMEOUT).await;
        assert!(matches!(got, Err(SendError::ConnectionRefused)), "{got:?}");

        // TLS spoken to a plain-HTTP server.
        let addr = serve(Router::new().route("/", any(|| async { "plain" }))).await;
        let got = send(&lax, &format!("https://{addr}/"), TIMEOUT).await;
        assert!(matches!(got, Err(SendError::Tls(_))), "{got:?}");

        // Plain http when only https is allowed: refused before any request.
        let strict = Guard::new(UrlPolicy { allow_http: false, allow_private: true, nameserver: None });
        let got = send(&strict, &format!("http://{addr}/"), TIMEOUT).await;
        assert!(matches!(got, Err(SendError::Refused(Refused::Scheme { .. }))), "{got:?}");
    }
}

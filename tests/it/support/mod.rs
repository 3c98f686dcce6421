//! The end-to-end harness: Mage's real router on an ephemeral port, over a
//! database and a Redis key prefix of the test's own. A `TestApp` audits the
//! ledger of every account when it is dropped, so no test can forget to.

pub mod process;
pub mod receiver;
pub mod ws;

use std::net::SocketAddr;
use std::time::Duration;

use mage_api::settings::ServerSettings;
use mage_domain::db::DbPool;
use mage_domain::testing::{TestDb, TestRedis};
use mage_jobs::settings::WorkerSettings;
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery";
pub const REGISTER: &str = "mutation($e: String!, $p: String!) { register(email: $e, password: $p) { token refreshToken user { id email } } }";
pub const LOGIN: &str = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }";
/// Opens `/metrics` of a test server (`MAGE_METRICS_TOKEN`).
pub const METRICS_TOKEN: &str = "metrics-token-of-the-tests";

pub struct TestApp {
    pub addr: SocketAddr,
    pub pool: DbPool,
    pub http: reqwest::Client,
    pub settings: ServerSettings,
    pub queues: mage_domain::queue::Queues,
    pub storage: mage_domain::storage::Storage,
    media: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    audit_ledger: bool,
    // Dropped last: the server must stop before its database goes.
    pub redis: TestRedis,
    pub db: TestDb,
}

pub fn settings(addr: SocketAddr) -> ServerSettings {
    ServerSettings {
        addr,
        backends: mage_domain::backends::Backends::synthetic(),
        assets: mage_domain::assets::AssetLimits::default(),
        public_url: format!("http://{addr}"),
        jwt_secret: "test-secret-test-secret-test-secret-000".into(),
        token_ttl: Duration::from_secs(3600),
        session_idle_days: 30,
        signup_credits: 100,
        signup_bonus_requires_verified_email: false,
        request_timeout: Duration::from_secs(30),
        max_body_bytes: 1024 * 1024,
        graphql_max_depth: 16,
        graphql_max_complexity: 5000,
        cors_origins: vec![],
        generation_limits: mage_domain::limits::GenerationLimits { per_minute: 20, active: 4 },
        ws_keepalive: Duration::from_secs(15),
        ws_init_timeout: Duration::from_secs(10),
        dev_mode: false,
        payments: mage_domain::config::PaymentSettings::development(),
        replicate_webhook_secret: None,
        webhooks: mage_domain::webhooks::WebhookSettings::local(),
        stats_tz: "UTC".into(),
        graphql_max_root_mutations: 10,
        // Tests sign many users up and in from one address; the tests of
        // these limits lower them.
        auth_limits: mage_domain::limits::AuthLimits {
            login_failures_per_email: 10,
            login_failures_per_ip: 10_000,
            signups_per_ip_per_hour: 10_000,
        },
        connections: mage_api::settings::ConnectionSettings {
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_ip: 10_000,
            trusted_proxies: vec![],
            ws_max_operations: 100,
            ws_max_sockets_per_ip: 100_000,
        },
        metrics_addr: None,
        metrics_token: Some(METRICS_TOKEN.into()),
        shutdown_grace: Duration::from_secs(30),
    }
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerSettings)) -> Self {
        Self::start_on(TestRedis::new(), tweak).await
    }

    /// On a Redis of the test's choosing (a private server it may flush).
    pub async fn start_on(redis: TestRedis, tweak: impl FnOnce(&mut ServerSettings)) -> Self {
        Self::start_full(redis, tweak, None).await
    }

    /// With media in `storage` (a bucket) instead of a local folder, for the
    /// server and the workers alike.
    pub async fn start_with_storage(storage: mage_domain::storage::Storage) -> Self {
        Self::start_full(TestRedis::new(), |_| {}, Some(storage)).await
    }

    async fn start_full(
        redis: TestRedis,
        tweak: impl FnOnce(&mut ServerSettings),
        storage: Option<mage_domain::storage::Storage>,
    ) -> Self {
        init_tracing();
        let db = TestDb::new().await;
        let pool = db.pool();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut settings = settings(addr);
        tweak(&mut settings);
        let media = tempfile::tempdir().expect("media dir");
        let storage = storage.unwrap_or_else(|| {
            mage_domain::storage::Storage::new(&mage_domain::config::StorageSettings {
                media_dir: media.path().to_path_buf(),
                url: None,
                base_url: None,
            })
            .expect("storage")
        });
        let queues = mage_domain::queue::Queues::connect(redis.redis().url(), redis.redis().prefix())
            .await
            .expect("queues");
        let core = mage_domain::core::Core::new(pool.clone(), redis.redis(), queues.clone(), storage.clone());
        let state = mage_api::AppState::new(core, settings.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(mage_api::serve_on(listener, state, async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        Self {
            addr,
            pool,
            http,
            settings,
            queues,
            storage,
            media,
            shutdown: Some(tx),
            audit_ledger: true,
            redis,
            db,
        }
    }

    pub fn media_dir(&self) -> &std::path::Path {
        self.media.path()
    }

    /// Starts `mage work` (all queues) inside the test; it stops when the
    /// returned guard is dropped.
    pub async fn start_workers(&self) -> Workers {
        self.start_workers_with(|_| {}).await
    }

    /// Workers in this process with the synthetic backend, as tweaked.
    pub async fn start_workers_with(&self, tweak: impl FnOnce(&mut WorkerSettings)) -> Workers {
        let mut settings = WorkerSettings::synthetic(&format!("test-{}", uuid::Uuid::new_v4()));
        // Media links in webhook payloads point at this app, as the API's do.
        settings.public_url = Some(self.settings.public_url.clone());
        tweak(&mut settings);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let core = mage_domain::core::Core::new(
            self.pool.clone(),
            self.redis.redis(),
            self.queues.clone(),
            self.storage.clone(),
        );
        let workers = mage_jobs::Workers { core, settings, run_queues: vec![] };
        let handle = tokio::spawn(async move {
            workers
                .run(async move {
                    let _ = rx.await;
                })
                .await
        });
        Workers { stop: Some(tx), handle: Some(handle) }
    }

    /// Runs SQL statements (test fixtures).
    pub async fn sql(&self, statements: &str) {
        use diesel_async::SimpleAsyncConnection;
        self.conn().await.batch_execute(statements).await.expect("sql");
    }

    /// The plan of `explain` (an EXPLAIN statement) with sequential scans
    /// discouraged, as on a table big enough to matter.
    pub async fn explain(&self, explain: &str) -> String {
        use diesel::QueryableByName;
        use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
        #[derive(QueryableByName)]
        struct Line {
            #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
            line: String,
        }
        let mut conn = self.conn().await;
        conn.batch_execute("SET enable_seqscan = off").await.expect("set");
        let lines: Vec<Line> = diesel::sql_query(explain).load(&mut *conn).await.expect("explain");
        conn.batch_execute("RESET enable_seqscan").await.expect("reset");
        lines.into_iter().map(|l| l.line).collect::<Vec<_>>().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs an operation; returns the whole JSON response.
    pub async fn gql(&self, query: &str, variables: Value, token: Option<&str>) -> Value {
        post_graphql(&self.http, &self.url("/graphql"), query, variables, token).await
    }

    /// Runs the same operation `n` times at once; returns every response.
    pub async fn gql_concurrently(
        &self,
        n: usize,
        query: &str,
        variables: impl Fn(usize) -> Value,
        token: Option<&str>,
    ) -> Vec<Value> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (http, url, query, vars) =
                    (self.http.clone(), self.url("/graphql"), query.to_owned(), variables(i));
                let token = token.map(str::to_owned);
                tokio::spawn(async move { post_graphql(&http, &url, &query, vars, token.as_deref()).await })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    }

    /// Signs `email` up with [`PASSWORD`]; returns its token and user id.
    pub async fn register(&self, email: &str) -> (String, String) {
        register_at(&self.http, &self.url("/graphql"), email).await
    }

    /// `mage <command>` on this app's database, Redis key prefix and media
    /// folder.
    pub fn mage(&self, command: &str) -> std::process::Command {
        let mut cmd = process::mage_on(command, &self.db, &self.redis);
        cmd.env("MAGE_MEDIA_DIR", self.media_dir());
        cmd
    }

    pub async fn conn(&self) -> mage_domain::db::PooledConnection {
        self.pool.get().await.expect("connection")
    }

    /// For a test that writes ledger rows by hand, without the grants and
    /// holds that would balance them: its app skips the audit when dropped.
    pub fn ledger_written_by_hand(&mut self) {
        self.audit_ledger = false;
    }

    pub async fn count(&self, table: &str) -> i64 {
        count(&mut *self.conn().await, table).await
    }
}

pub struct Workers {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), mage_jobs::WorkError>>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // A failing test already says why; a second panic would abort.
        if self.audit_ledger && !std::thread::panicking() {
            let broken = ledger_violations(self.db.url());
            assert!(
                broken.is_empty(),
                "ledger invariants broken when the test ended:\n{}",
                broken.join("\n")
            );
        }
    }
}

/// The accounts whose ledger invariants do not hold, each with its audit.
/// Drop runs inside the test's runtime, which cannot be blocked on (nor can
/// its pool's connections be used while it is): a thread of its own with a
/// small runtime and connection can.
fn ledger_violations(database_url: &str) -> Vec<String> {
    let url = database_url.to_owned();
    let audit = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut conn = mage_domain::db::connect(&url).await.expect("connect to the test database");
            let mut broken = Vec::new();
            for id in all_user_ids(&mut conn).await {
                let audit = mage_domain::credits::audit(&mut conn, id).await.expect("audit");
                if !audit.holds() {
                    broken.push(format!("{id}: {audit:?}"));
                }
            }
            broken
        })
    });
    audit.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Logs of the code under test, shown for failing tests (`MAGE_TEST_LOG`
/// filters them; warnings by default).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAGE_TEST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Signs `email` up with [`PASSWORD`] at a GraphQL endpoint; returns its
/// token and user id.
pub async fn register_at(http: &reqwest::Client, graphql_url: &str, email: &str) -> (String, String) {
    let res = post_graphql(http, graphql_url, REGISTER, json!({ "e": email, "p": PASSWORD }), None).await;
    assert!(res.get("errors").is_none(), "register failed: {res}");
    let token = res["data"]["register"]["token"].as_str().expect("token").to_owned();
    let id = res["data"]["register"]["user"]["id"].as_str().expect("id").to_owned();
    (token, id)
}

/// POSTs an operation to a GraphQL endpoint; returns the whole JSON response.
pub async fn post_graphql(
    http: &reqwest::Client,
    url: &str,
    query: &str,
    variables: Value,
    token: Option<&str>,
) -> Value {
    let mut req = http.post(url).json(&json!({ "query": query, "variables": variables }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("POST /graphql");
    res.json().await.expect("JSON response")
}

pub async fn all_user_ids(conn: &mut mage_domain::db::Connection) -> Vec<uuid::Uuid> {
    use diesel::QueryableByName;
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: uuid::Uuid,
    }
    let rows: Vec<Row> = diesel::sql_query("SELECT id FROM users").load(conn).await.expect("users");
    rows.into_iter().map(|r| r.id).collect()
}

pub async fn count(conn: &mut mage_domain::db::Connection, table: &str) -> i64 {
    scalar_i64(conn, &format!("SELECT count(*) AS n FROM {table}")).await
}

/// The BIGINT column `n` of the one row `sql` returns.
pub async fn scalar_i64(conn: &mut mage_domain::db::Connection, sql: &str) -> i64 {
    use diesel::QueryableByName;
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let row: Row = diesel::sql_query(sql).get_result(conn).await.expect(sql);
    row.n
}

/// The `extensions.code` of the first error.
pub fn code(res: &Value) -> &str {
    res["errors"][0]["extensions"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {res}"))
}

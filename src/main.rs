//! The `mage` command line: one binary, one subcommand per process kind.

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use mage_api::settings::ServerArgs;
use mage_domain::backends::BackendArgs;
use mage_domain::config::{DatabaseArgs, MetricsArgs, MigrateArgs, RedisArgs, ShutdownArgs, StorageArgs};
use mage_domain::core::Core;
use mage_domain::queue::Queues;
use mage_domain::storage::Storage;
use mage_domain::users::Role;
use mage_jobs::settings::WorkerArgs;

/// mimalloc instead of glibc's malloc: a GraphQL response is built from many
/// small allocations (a value tree, then JSON), and glibc's allocator took
/// about a quarter of the API's CPU time under load (perf, `bench/queries`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mage",
    version,
    about = "Mage: credits, generations and live progress for generative-media apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log line format: `text` for people, `json` (one object a line, with
    /// the ids of the spans it is about) for log collectors
    #[arg(long, global = true, env = "MAGE_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once at start and matched once: the size of its largest variant
// costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server: GraphQL API, WebSocket subscriptions, playground
    Serve {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        shutdown: ShutdownArgs,
    },
    /// Run background workers
    Work {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        migrate: MigrateArgs,
        #[command(flatten)]
        storage: StorageArgs,
        #[command(flatten)]
        worker: WorkerArgs,
        #[command(flatten)]
        backends: BackendArgs,
        #[command(flatten)]
        webhooks: mage_domain::webhooks::WebhookArgs,
        #[command(flatten)]
        stats: mage_domain::stats::StatsArgs,
        /// Public base URL of the API: Replicate's webhooks are sent to
        /// MAGE_PUBLIC_URL/webhooks/replicate
        #[arg(long, env = "MAGE_PUBLIC_URL")]
        public_url: Option<String>,
        /// Comma-separated queues to run (default: all); `render` is every
        /// backend's render queue, `render:replicate` one of them
        #[arg(long, env = "MAGE_QUEUES", value_delimiter = ',')]
        queues: Vec<String>,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Run serve and work in one process, with development defaults
    Dev {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        worker: WorkerArgs,
    },
    /// Apply pending database migrations and exit
    Migrate {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Print the GraphQL schema (SDL) to stdout
    PrintSchema,
    /// Manage users
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Daily statistics
    Stats {
        #[command(subcommand)]
        command: StatsCommand,
    },
}

#[derive(Subcommand)]
enum StatsCommand {
    /// Compute (or recompute) the daily statistics of a range of days
    Backfill {
        #[command(flatten)]
        redis: RedisArgs,
        /// First day, YYYY-MM-DD
        #[arg(long)]
        from: chrono::NaiveDate,
        /// Last day, YYYY-MM-DD (inclusive)
        #[arg(long)]
        to: chrono::NaiveDate,
        #[command(flatten)]
        stats: mage_domain::stats::StatsArgs,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    migrate: MigrateArgs,
    #[command(flatten)]
    storage: StorageArgs,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Give a user a role
    Promote {
        /// The user's email
        email: String,
        /// The role to give
        #[arg(long, default_value = "admin")]
        role: Role,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

/// Every setting shows and reports its variable's name (`--addr
/// <MAGE_ADDR>`): a name is spelled once, in its `env`, and a rejected
/// value's one-line error names it.
fn named_by_env(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| match a.get_env().map(|e| e.to_string_lossy().into_owned()) {
        // Leaked: a few dozen names, once per process (clap keeps only
        // 'static names without its `string` feature).
        Some(name) => a.value_name(&*Box::leak(name.into_boxed_str())),
        None => a,
    })
    .mut_subcommands(named_by_env)
}

fn parse() -> Result<Cli, clap::Error> {
    let mut cmd = named_by_env(Cli::command());
    let matches = cmd.try_get_matches_from_mut(std::env::args_os())?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // clap's first line names the flag and its variable; the rest is a
            // hint to read --help, which we keep to a few words.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("error: invalid arguments");
            eprintln!("{first} (see mage --help)");
            return ExitCode::from(2);
        }
    };
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Whatever still runs (a request past the grace period, a blocking
    // task) does not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, no backtrace: configuration mistakes are the common case.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { serve: ServeArgs { db, redis, server, migrate, storage }, shutdown } => {
            let mut settings = server.resolve(false)?;
            settings.shutdown_grace = shutdown.grace();
            let core = connect(&db, &redis, &migrate, &storage).await?;
            let listener = listen(settings.addr).await?;
            let metrics = serve_metrics(settings.metrics_addr, &core).await?;
            let state = mage_api::AppState::new(core, settings);
            mage_api::serve_on(listener, state, shutdown_signal()).await.context("HTTP server")?;
            if let Some(m) = metrics {
                m.abort();
            }
        }
        Command::Work {
            db,
            redis,
            migrate,
            storage,
            worker,
            backends,
            webhooks,
            stats,
            public_url,
            queues: run_queues,
            metrics,
        } => {
            let backends = backends.resolve(mage_domain::backends::Role::Worker)?;
            let mut settings =
                worker.resolve(backends, public_url.map(|u| u.trim_end_matches('/').to_owned()))?;
            settings.webhooks = webhooks.resolve(false)?;
            settings.stats_tz = stats.time_zone();
            let core = connect(&db, &redis, &migrate, &storage).await?;
            mage_domain::metrics::init();
            let metrics = serve_metrics(metrics.metrics_addr, &core).await?;
            mage_jobs::Workers { core, settings, run_queues }.run(shutdown_signal()).await?;
            if let Some(m) = metrics {
                m.abort();
            }
        }
        Command::Dev { serve: ServeArgs { db, redis, server, migrate, storage }, worker } => {
            let mut settings = server.resolve(true)?;
            let backends = server.backends.resolve(mage_domain::backends::Role::Worker)?;
            let mut worker = worker.resolve(backends, Some(settings.public_url.clone()))?;
            // Without MAGE_SMTP_URL, mails are shown at /dev/mail.
            worker.mail.dev_mailbox = true;
            worker.webhooks = settings.webhooks.clone();
            worker.stats_tz = settings.stats_tz.clone();
            settings.shutdown_grace = worker.shutdown_grace;
            let core = connect(&db, &redis, &migrate, &storage).await?;
            let workers = mage_jobs::Workers { core: core.clone(), settings: worker, run_queues: vec![] };
            let listener = listen(settings.addr).await?;
            let metrics = serve_metrics(settings.metrics_addr, &core).await?;
            let state = mage_api::AppState::new(core, settings);
            println!(
                "Mage is running. Web app: {url}/  Playground: {url}/graphql",
                url = state.settings.public_url
            );
            let (api, work) = tokio::join!(
                mage_api::serve_on(listener, state, shutdown_signal()),
                workers.run(shutdown_signal())
            );
            if let Some(m) = metrics {
                m.abort();
            }
            api.context("HTTP server")?;
            work?;
        }
        Command::Migrate { db } => {
            let applied = mage_domain::db::run_migrations(&db.resolve()?.url).await?;
            if applied.is_empty() {
                println!("database is up to date");
            }
            for v in applied {
                println!("applied {v}");
            }
        }
        Command::PrintSchema => print!("{}", mage_api::build_schema().sdl()),
        Command::Stats { command: StatsCommand::Backfill { from, to, stats, db, redis } } => {
            let tz = stats.time_zone();
            anyhow::ensure!(from <= to, "--from must be on or before --to");
            let pool = mage_domain::db::pool(&db.resolve()?)?;
            let redis = mage_domain::kv::Redis::new(&redis.resolve()?)?;
            let mut conn = pool.get().await?;
            anyhow::ensure!(
                mage_domain::stats::valid_time_zone(&mut conn, &tz).await?,
                "MAGE_STATS_TZ: {tz:?} is not a time zone PostgreSQL knows"
            );
            let mut day = from;
            while day <= to {
                let s = mage_domain::stats::recompute(&mut conn, &redis, day, &tz).await?;
                println!(
                    "{day}: {} new users, {} orders paid, {} generations created, {} succeeded",
                    s.new_users, s.orders_paid, s.generations_created, s.generations_succeeded
                );
                day = day.succ_opt().context("date overflow")?;
            }
        }
        Command::User { command: UserCommand::Promote { email, role, db } } => {
            let pool = mage_domain::db::pool(&db.resolve()?)?;
            let user = mage_domain::users::set_role(&pool, &email, role).await?;
            println!("{} is now {}", user.email, user.role);
        }
    }
    Ok(())
}

/// Checks the settings, migrates unless told not to, and opens the
/// process's one set of shared handles.
async fn connect(
    db: &DatabaseArgs,
    redis: &RedisArgs,
    migrate: &MigrateArgs,
    storage: &StorageArgs,
) -> anyhow::Result<Core> {
    let storage = Storage::new(&storage.resolve()?)?;
    let db = db.resolve()?;
    let redis_settings = redis.resolve()?;
    let redis = mage_domain::kv::Redis::new(&redis_settings)?;
    let queues = Queues::connect(&redis_settings.url, &redis_settings.prefix)
        .await
        .context("cannot reach Redis at REDIS_URL")?;
    if !migrate.skip_migrations {
        for v in mage_domain::db::run_migrations(&db.url).await? {
            tracing::info!(version = %v, "migration applied");
        }
    }
    Ok(Core::new(mage_domain::db::pool(&db)?, redis, queues, storage))
}

/// `/metrics` on a listener of its own (MAGE_METRICS_ADDR), when set.
async fn serve_metrics(
    addr: Option<std::net::SocketAddr>,
    core: &Core,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on MAGE_METRICS_ADDR {addr}"))?;
    Ok(Some(tokio::spawn(mage_api::metrics::serve_standalone(
        listener,
        core.redis.clone(),
        core.queues.clone(),
        shutdown_signal(),
    ))))
}

async fn listen(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on MAGE_ADDR {addr}"))
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MAGE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.init(),
        // Every enclosing span's fields (generation_id, order_id, event_id
        // ...) ride on each line, flattened next to the event's own.
        LogFormat::Json => {
            fmt.json().with_current_span(false).with_span_list(true).flatten_event(true).init()
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

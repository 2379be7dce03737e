//! `onceflight`: the service (`serve`), its maintenance (`migrate`), and the
//! operator's commands against a running service (`ls`, `show`, `rm`).

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use onceflight_core::{DEFAULT_RETENTION, HitCacheConfig, RequestStore};
use onceflight_server::auth::Tokens;
use onceflight_server::stores::{self, StoreOptions, redact_url};
use onceflight_server::{AppState, DEFAULT_MAX_SMALL_BODY_BYTES, Limits, serve};
use tokio::net::TcpListener;

/// Run an expensive job once per key across a fleet and share its result.
#[derive(Debug, Parser)]
#[command(name = "onceflight", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve(ServeArgs),
    /// Apply the store's schema migrations and exit.
    Migrate(StoreArgs),
    /// List a running service's records (newest first), as a table or JSON
    /// lines.
    Ls(cli::LsArgs),
    /// Show one record of a running service, its result included.
    Show(cli::ShowArgs),
    /// Delete one record of a running service (asks first, unless --yes).
    Rm(cli::RmArgs),
}

#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// The store: memory://, postgres://…, redis://… or rediss://… (a Redis
    /// Cluster: several comma-separated seed URLs, or redis+cluster://…);
    /// credentials are never logged.
    #[arg(
        long,
        env = "ONCEFLIGHT_STORE",
        default_value = "memory://",
        hide_env_values = true
    )]
    store: String,

    #[command(flatten)]
    postgres: PgArgs,

    /// The prefix of every Redis key and channel (`redis://…`; other stores
    /// ignore it), so that several services share one Redis.
    #[arg(long, env = "ONCEFLIGHT_REDIS_PREFIX", default_value = "onceflight:")]
    redis_prefix: String,

    /// A PEM file of the certificate authority that signed the Redis
    /// server's certificate, for rediss://… with a private CA [default: the
    /// public webpki roots].
    #[arg(long, env = "ONCEFLIGHT_REDIS_TLS_CA_FILE")]
    redis_tls_ca_file: Option<PathBuf>,
}

/// Options of the Postgres store (`postgres://…`); other stores ignore them.
#[derive(Debug, clap::Args)]
struct PgArgs {
    /// The Postgres schema holding onceflight's tables; several services can
    /// share one database, each in its own schema.
    #[arg(long, env = "ONCEFLIGHT_PG_SCHEMA", default_value = "onceflight")]
    pg_schema: String,

    /// Most pooled Postgres connections [default: 10].
    #[arg(long, env = "ONCEFLIGHT_PG_POOL_SIZE", value_parser = clap::value_parser!(u32).range(1..))]
    pg_pool_size: Option<u32>,

    /// What --store reaches: `none` (Postgres itself, or a session-mode
    /// pooler such as Supavisor on port 5432) or `transaction` (a
    /// transaction-mode pooler: PgBouncer `pool_mode = transaction`,
    /// Supavisor on port 6543), which keeps no prepared statements; it
    /// needs --pg-listen-url.
    #[arg(
        long,
        env = "ONCEFLIGHT_PG_POOLER",
        default_value = "none",
        value_parser = ["none", "session", "transaction"]
    )]
    pg_pooler: String,

    /// A direct (or session-mode) Postgres URL of the same database for the
    /// LISTEN connection that wakes long-polls and for migrations; required
    /// with --pg-pooler transaction [default: the store URL].
    #[arg(long, env = "ONCEFLIGHT_PG_LISTEN_URL", hide_env_values = true)]
    pg_listen_url: Option<String>,
}

impl StoreArgs {
    /// How to open the store, keeping results for `retention`.
    fn options(
        &self,
        retention: Duration,
        migrate: bool,
        operation_timeout: Option<Duration>,
    ) -> StoreOptions {
        StoreOptions {
            retention,
            migrate,
            pg_schema: Some(self.postgres.pg_schema.clone()),
            pg_pool_size: self.postgres.pg_pool_size,
            pg_listen_url: self.postgres.pg_listen_url.clone(),
            pg_pooler: Some(self.postgres.pg_pooler.clone()),
            redis_prefix: Some(self.redis_prefix.clone()),
            redis_tls_ca_file: self.redis_tls_ca_file.clone(),
            operation_timeout,
        }
    }

    /// What to log about the store: its URL without credentials, and its
    /// Postgres schema or Redis key prefix.
    fn describe(&self) -> String {
        let url = redact_url(&self.store);
        if url.starts_with("postgres") {
            format!(
                "{url} (schema {}, pooler {})",
                self.postgres.pg_schema, self.postgres.pg_pooler
            )
        } else if url.starts_with("redis") {
            format!("{url} (key prefix {:?})", self.redis_prefix)
        } else {
            url
        }
    }
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,

    /// Address to listen on.
    #[arg(long, env = "ONCEFLIGHT_BIND", default_value = "127.0.0.1:7700")]
    bind: SocketAddr,

    /// File of bearer tokens, one `namespace token` pair a line. Tokens may
    /// also come from ONCEFLIGHT_TOKENS="ns1:token1,ns2:token2".
    #[arg(long, env = "ONCEFLIGHT_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,

    /// Allow binding a non-loopback address without any bearer token.
    #[arg(long, env = "ONCEFLIGHT_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,

    /// How long results and failures are kept, in seconds (at least 1: with
    /// none, every record would be forgotten at once).
    #[arg(long, env = "ONCEFLIGHT_RETENTION_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    retention_secs: u64,

    /// Largest result a `complete` may store, in bytes.
    #[arg(long, env = "ONCEFLIGHT_MAX_RESULT_BYTES", default_value_t = 1024 * 1024)]
    max_result_bytes: usize,

    /// Largest body of claim, heartbeat, fail and release (which carry no
    /// result), in bytes; past it, 413 too_large.
    #[arg(long, env = "ONCEFLIGHT_MAX_SMALL_BODY_BYTES", default_value_t = DEFAULT_MAX_SMALL_BODY_BYTES as u64, value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024))]
    max_small_body_bytes: u64,

    /// Most long-polls (`GET ?wait_ms`) held at once.
    #[arg(long, env = "ONCEFLIGHT_MAX_WAITERS", default_value_t = 10_000)]
    max_waiters: usize,

    /// Longest a store operation may take, in milliseconds, before the
    /// request answers 503 store_unavailable (long-polls get their wait on
    /// top).
    #[arg(long, env = "ONCEFLIGHT_STORE_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    store_timeout_ms: u64,

    /// Longest a client may take to send a request's headers, in
    /// milliseconds, from the moment its connection is ready for them; past
    /// it the connection is closed. Keep-alive connections idle this long are
    /// closed too (at most 24 h).
    #[arg(long, env = "ONCEFLIGHT_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    header_timeout_ms: u64,

    /// Longest a request body may take to arrive whole, in milliseconds from
    /// its headers; past it the request answers 408 request_timeout (at most
    /// 24 h).
    #[arg(long, env = "ONCEFLIGHT_BODY_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    body_timeout_ms: u64,

    /// Largest request header block (request line and headers), in bytes;
    /// past it, 431.
    #[arg(long, env = "ONCEFLIGHT_MAX_HEADER_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
    max_header_bytes: u64,

    /// Most header fields in a request; past it, 431.
    #[arg(long, env = "ONCEFLIGHT_MAX_HEADERS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(8..=10_000))]
    max_headers: u64,

    /// Most connections served at once; further clients wait in the
    /// listen backlog [default: no cap; --max-waiters bounds long-polls].
    #[arg(long, env = "ONCEFLIGHT_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,

    /// Answer repeated claims of completed records from memory, without a
    /// store round trip: a deletion on another server goes unseen at most
    /// this long, in milliseconds (the store's push channel is probed a few
    /// times within it, and while it is down nothing is served from
    /// memory). Not for a Redis Cluster [default: off].
    #[arg(long, env = "ONCEFLIGHT_HIT_CACHE_MAX_STALE_MS", value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    hit_cache_max_stale_ms: Option<u64>,

    /// Most results the hit cache holds (with --hit-cache-max-stale-ms).
    #[arg(long, env = "ONCEFLIGHT_HIT_CACHE_ENTRIES", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    hit_cache_entries: u64,

    /// Largest result the hit cache holds, in bytes (with
    /// --hit-cache-max-stale-ms); larger ones are always read from the store.
    #[arg(long, env = "ONCEFLIGHT_HIT_CACHE_MAX_RESULT_BYTES", default_value_t = 1024 * 1024)]
    hit_cache_max_result_bytes: usize,

    /// How long GET /v1/stats and the store gauges of /metrics keep a
    /// namespace's counts at least before counting the store again, in
    /// milliseconds (0: count on every request); a count that took long is
    /// kept ten times as long. Concurrent requests share one count.
    #[arg(long, env = "ONCEFLIGHT_STATS_MAX_AGE_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    stats_max_age_ms: u64,

    /// Seconds between sweeps of records past retention (housekeeping only).
    #[arg(long, env = "ONCEFLIGHT_SWEEP_SECS", default_value_t = 60)]
    sweep_secs: u64,

    /// Skip schema migrations at start (run `onceflight migrate` instead);
    /// the schema must then exist already.
    #[arg(long, env = "ONCEFLIGHT_NO_MIGRATE")]
    no_migrate: bool,

    /// Log format.
    #[arg(long, env = "ONCEFLIGHT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

fn load_tokens(file: Option<&PathBuf>) -> Result<Tokens> {
    let mut tokens = Tokens::default();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the tokens file {}", path.display()))?;
        tokens = tokens.merge(
            Tokens::from_file_text(&text)
                .with_context(|| format!("in the tokens file {}", path.display()))?,
        );
    }
    if let Ok(list) = std::env::var("ONCEFLIGHT_TOKENS") {
        tokens = tokens.merge(Tokens::from_env_list(&list).context("in ONCEFLIGHT_TOKENS")?);
    }
    Ok(tokens)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: answering held long-polls");
}

/// Sweeps records past retention now and then. Housekeeping only: every
/// operation already treats them as absent.
fn spawn_sweeper(store: Arc<dyn RequestStore>, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            match store.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(swept = n, "swept records past retention"),
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
        }
    });
}

async fn run_serve(args: ServeArgs) -> Result<()> {
    let tokens = load_tokens(args.tokens_file.as_ref())?;
    if tokens.is_empty() && !args.bind.ip().is_loopback() && !args.allow_unauthenticated {
        bail!(
            "refusing to listen on {} without bearer tokens: configure --tokens-file or ONCEFLIGHT_TOKENS, bind a loopback address, or pass --allow-unauthenticated",
            args.bind
        );
    }
    let store_timeout = Duration::from_millis(args.store_timeout_ms);
    let options = args.store.options(
        Duration::from_secs(args.retention_secs),
        !args.no_migrate,
        Some(store_timeout),
    );
    let store = stores::open(&args.store.store, &options)
        .await
        .with_context(|| format!("opening the store {}", args.store.describe()))?;
    spawn_sweeper(
        Arc::clone(&store),
        Duration::from_secs(args.sweep_secs.max(1)),
    );
    let mut limits = Limits::with_result_limit(args.max_result_bytes);
    limits.max_small_body_bytes = usize::try_from(args.max_small_body_bytes)?;
    limits.max_waiters = args.max_waiters;
    limits.store_timeout = store_timeout;
    limits.header_timeout = Duration::from_millis(args.header_timeout_ms);
    limits.body_timeout = Duration::from_millis(args.body_timeout_ms);
    limits.max_header_bytes = usize::try_from(args.max_header_bytes)?;
    limits.max_headers = usize::try_from(args.max_headers)?;
    limits.max_connections = args.max_connections.map(usize::try_from).transpose()?;
    limits.stats_max_age = Duration::from_millis(args.stats_max_age_ms);
    let authenticated = !tokens.is_empty();
    let hit_cache = args.hit_cache_max_stale_ms.map(|ms| {
        HitCacheConfig::default()
            .with_max_stale(Duration::from_millis(ms))
            .with_max_entries(usize::try_from(args.hit_cache_entries).unwrap_or(usize::MAX))
            .with_max_result_bytes(args.hit_cache_max_result_bytes)
    });
    let state = match hit_cache {
        Some(config) => AppState::with_hit_cache(store, tokens, limits, config)
            .context("--hit-cache-max-stale-ms")?,
        None => AppState::new(store, tokens, limits),
    };
    let listener = TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    tracing::info!(
        address = %listener.local_addr()?,
        store = %args.store.describe(),
        authenticated,
        hit_cache_max_stale_ms = args.hit_cache_max_stale_ms,
        "onceflight listening"
    );
    serve(listener, state, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn run_migrate(args: StoreArgs) -> Result<()> {
    // Opening with `migrate` applies the migrations (and logs it); retention
    // is irrelevant here.
    let store = stores::open(&args.store, &args.options(DEFAULT_RETENTION, true, None))
        .await
        .with_context(|| format!("migrating the store {}", args.describe()))?;
    match store.backend() {
        "memory" => tracing::info!("the memory store has no schema: nothing to migrate"),
        backend => tracing::info!(
            backend,
            store = %args.describe(),
            "migrations applied; the schema is up to date"
        ),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logs(args.log_format);
            run_serve(args).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Migrate(args) => {
            init_logs(LogFormat::Human);
            run_migrate(args).await.map(|()| ExitCode::SUCCESS)
        }
        // The operator's commands print their own errors and choose their
        // exit codes (1: the service refused or is unreachable, 2: refused
        // here), so no log setup and no `anyhow` report.
        Command::Ls(args) => Ok(cli::ls(args).await),
        Command::Show(args) => Ok(cli::show(args).await),
        Command::Rm(args) => Ok(cli::rm(args).await),
    }
}

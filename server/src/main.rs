//! `onceflight`: the service (`serve`) and its maintenance (`migrate`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use onceflight_core::RequestStore;
use onceflight_server::auth::Tokens;
use onceflight_server::stores::{self, StoreOptions, redact_url};
use onceflight_server::{AppState, Limits, serve};
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
}

#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// The store: memory://, postgres://…, redis://… (credentials are never
    /// logged).
    #[arg(
        long,
        env = "ONCEFLIGHT_STORE",
        default_value = "memory://",
        hide_env_values = true
    )]
    store: String,
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

    /// How long results and failures are kept, in seconds.
    #[arg(long, env = "ONCEFLIGHT_RETENTION_SECS", default_value_t = 86_400)]
    retention_secs: u64,

    /// Largest result a `complete` may store, in bytes.
    #[arg(long, env = "ONCEFLIGHT_MAX_RESULT_BYTES", default_value_t = 1024 * 1024)]
    max_result_bytes: usize,

    /// Most long-polls (`GET ?wait_ms`) held at once.
    #[arg(long, env = "ONCEFLIGHT_MAX_WAITERS", default_value_t = 10_000)]
    max_waiters: usize,

    /// Seconds between sweeps of records past retention (housekeeping only).
    #[arg(long, env = "ONCEFLIGHT_SWEEP_SECS", default_value_t = 60)]
    sweep_secs: u64,

    /// Skip schema migrations at start.
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
    let options = StoreOptions {
        retention: Duration::from_secs(args.retention_secs),
    };
    let store = stores::open(&args.store.store, &options)
        .await
        .with_context(|| format!("opening the store {}", redact_url(&args.store.store)))?;
    if !args.no_migrate {
        tracing::debug!("no migration to run for the {} store", store.backend());
    }
    spawn_sweeper(
        Arc::clone(&store),
        Duration::from_secs(args.sweep_secs.max(1)),
    );
    let mut limits = Limits::with_result_limit(args.max_result_bytes);
    limits.max_waiters = args.max_waiters;
    let authenticated = !tokens.is_empty();
    let state = AppState::new(store, tokens, limits);
    let listener = TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    tracing::info!(
        address = %listener.local_addr()?,
        store = %redact_url(&args.store.store),
        authenticated,
        "onceflight listening"
    );
    serve(listener, state, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn run_migrate(args: StoreArgs) -> Result<()> {
    let store = stores::open(&args.store, &StoreOptions::default())
        .await
        .with_context(|| format!("opening the store {}", redact_url(&args.store)))?;
    tracing::info!(
        backend = store.backend(),
        "nothing to migrate for this store"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logs(args.log_format);
            run_serve(args).await
        }
        Command::Migrate(args) => {
            init_logs(LogFormat::Human);
            run_migrate(args).await
        }
    }
}

//! Opening connections: the options for each kind of URL, and the checks
//! made once at start-up, so that a wrong URL, a pooler the store was not
//! told about or a refused certificate is a clear error then rather than
//! failing requests later.

use std::str::FromStr;
use std::time::Duration;

use onceflight_core::backend::redact_url;
use onceflight_core::{Error, Result};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};

use crate::config::PgPooler;
use crate::error::{BACKEND, TimedOut, map};

/// How to tell the store it is behind a transaction-mode pooler, for error
/// messages.
pub(crate) const POOLER_HINT: &str = "start with --pg-pooler transaction \
     (ONCEFLIGHT_PG_POOLER=transaction; PgConfig::pooler = PgPooler::Transaction) and \
     --pg-listen-url set to a direct or session-mode URL of the same database";

/// The connect options of `url`.
///
/// Nothing session-wide is asked for: the store's statements name their
/// schema, so `search_path` is never set, and the start-up packet leaves out
/// `extra_float_digits` (the store reads no floats), which a stock PgBouncer
/// refuses. So any pooler accepts the connection, and one the store was not
/// told about is then recognised by [`check_sessions`].
pub(crate) fn options(url: &str, pooler: PgPooler) -> Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| invalid(format!("invalid database URL {}: {e}", redact_url(url))))?;
    let options = options
        .application_name("onceflight")
        .extra_float_digits(None);
    Ok(match pooler {
        PgPooler::None => options,
        // No statement cache: statements there are never prepared.
        PgPooler::Transaction => options.statement_cache_capacity(0),
    })
}

/// What one session reports about itself.
struct Session {
    database: String,
    backend_pid: i32,
}

/// Opens a connection with `options` and asks it which database and backend
/// it reached, in one simple-protocol query (it must work through any
/// pooler).
///
/// Bounded by [`PROBE_TIMEOUT`]: a server that takes the connection but
/// never answers fails start-up rather than hanging it.
async fn open(options: &PgConnectOptions, url: &str) -> Result<(PgConnection, Session)> {
    let probe = async {
        let mut conn = PgConnection::connect_with(options).await?;
        let row = sqlx::raw_sql("SELECT current_database()::text, pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        Ok::<_, sqlx::Error>((conn, row))
    };
    let (conn, row) = tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .map_err(|_| Error::unavailable(BACKEND, TimedOut(PROBE_TIMEOUT)))?
        .map_err(|e| connect_error(url, e))?;
    let session = Session {
        database: row.try_get(0).map_err(map)?,
        backend_pid: row.try_get(1).map_err(map)?,
    };
    Ok((conn, session))
}

/// Longest a start-up probe may take to connect and answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Further rounds of [`check_sessions`]'s probe after the first.
const PROBE_ROUNDS: usize = 2;

/// The pid of the backend that serves `conn`'s next statement.
async fn backend_pid(conn: &mut PgConnection) -> Option<i32> {
    let row = sqlx::raw_sql("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .ok()?;
    row.try_get(0).ok()
}

/// Checks that `url` reaches a database, and returns its name.
pub(crate) async fn check_reachable(options: &PgConnectOptions, url: &str) -> Result<String> {
    let (conn, session) = open(options, url).await?;
    // Closing politely is a courtesy; a failure here changes nothing.
    let _ = conn.close().await;
    Ok(session.database)
}

/// Checks that `url` gives each connection a session of its own, as a
/// direct connection or a session-mode pooler does, and returns the
/// database's name. `what` names the URL in the error.
///
/// Two connections are opened and asked for their backend's pid while both
/// are open. Directly, or through a session-mode pooler, they are two
/// backends. A transaction-mode pooler hands the server connection the first
/// one's query just gave back to the second: the same pid. (It may also open
/// a new one, so a pooler can go unnoticed here; then the first named
/// prepared statement that meets another client's fails with an error that
/// says what to set, see `error::map`.)
pub(crate) async fn check_sessions(
    options: &PgConnectOptions,
    url: &str,
    what: &str,
) -> Result<String> {
    let (mut first, a) = open(options, url).await?;
    let (mut second, b) = open(options, url).await?;
    let mut shared = a.backend_pid == b.backend_pid;
    // A pooler serving other clients may hand out another idle connection;
    // a few more rounds make a shared one likely to show.
    for _ in 0..PROBE_ROUNDS {
        if shared {
            break;
        }
        let (pid_a, pid_b) = (
            backend_pid(&mut first).await,
            backend_pid(&mut second).await,
        );
        shared = pid_a.is_some() && pid_a == pid_b;
    }
    let _ = first.close().await;
    let _ = second.close().await;
    if shared {
        return Err(invalid(format!(
            "{what} {} goes through a transaction-mode pooler (two open connections were served \
             by the same Postgres backend, pid {}); {}",
            redact_url(url),
            a.backend_pid,
            if what == "the store URL" {
                POOLER_HINT
            } else {
                "LISTEN and migrations need a session of their own: use a direct or \
                 session-mode URL (Supabase: the direct host, or the session pooler on port 5432)"
            }
        )));
    }
    Ok(a.database)
}

/// A failure to connect to `url`, worded for the operator: certificates and
/// poolers get a hint, and the URL is shown without its password.
pub(crate) fn connect_error(url: &str, error: sqlx::Error) -> Error {
    // rustls's refusal of a certificate reaches sqlx as an I/O error of kind
    // `InvalidData` during the handshake ("invalid peer certificate: …").
    let refused_certificate = |io: &std::io::Error| {
        io.kind() == std::io::ErrorKind::InvalidData && io.to_string().contains("certificate")
    };
    let tls_refused = |source: &dyn std::fmt::Display| {
        invalid(format!(
            "TLS with {} failed: {source}. With sslmode=verify-full the server's certificate must \
             be signed by the CA in sslrootcert=<file> and name the URL's host; sslmode=require \
             encrypts without checking either",
            redact_url(url)
        ))
    };
    match &error {
        sqlx::Error::Io(source) if refused_certificate(source) => tls_refused(source),
        sqlx::Error::Tls(source) => tls_refused(source),
        sqlx::Error::Database(db) if db.message().contains("unsupported startup parameter") => {
            invalid(format!(
                "{} refused the connection: {}. It is a pooler that passes on no session \
                 options; {POOLER_HINT}",
                redact_url(url),
                db.message()
            ))
        }
        _ => map(error),
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidInput {
        field: "store",
        reason,
    }
}

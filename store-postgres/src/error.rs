//! The Postgres store's failures, mapped into `onceflight_core::Error`.

use onceflight_core::Error;

pub(crate) const BACKEND: &str = "postgres";

/// An operation that ran out of its operation timeout.
#[derive(Debug, thiserror::Error)]
#[error("Postgres did not answer within {0:?}")]
pub(crate) struct TimedOut(pub(crate) std::time::Duration);

/// Maps a sqlx error: anything about reaching or keeping the server
/// (I/O, TLS, pool, a terminated or restarting backend, too many
/// connections, a serialization failure or deadlock) is `Unavailable` and
/// safe to retry; the rest means a bug or a damaged schema.
pub(crate) fn map(error: sqlx::Error) -> Error {
    let retryable = match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P0x: admin/crash shutdown, cannot
            // connect now; 53300: too many connections; 40001/40P01:
            // serialization failure, deadlock; 57014/55P03: the statement
            // ran past `statement_timeout` or waited past `lock_timeout`
            // (the server's side of the operation timeout), rolled back.
            code.starts_with("08")
                || code.starts_with("57P")
                || matches!(
                    code.as_ref(),
                    "53300" | "40001" | "40P01" | "57014" | "55P03"
                )
        }),
        _ => false,
    };
    if retryable {
        Error::unavailable(BACKEND, error)
    } else if let sqlx::Error::Database(db) = &error
        && matches!(db.code().as_deref(), Some("42P05" | "26000"))
    {
        // A named prepared statement that already exists, or has vanished,
        // on a connection that prepared it: a transaction-mode pooler handed
        // this statement to another client's server connection.
        Error::Backend {
            backend: BACKEND,
            message: format!(
                "{error} — the store URL goes through a transaction-mode pooler (PgBouncer, \
                 Supavisor on port 6543), which keeps no prepared statements: {}",
                crate::connect::POOLER_HINT
            ),
        }
    } else {
        Error::Backend {
            backend: BACKEND,
            message: error.to_string(),
        }
    }
}

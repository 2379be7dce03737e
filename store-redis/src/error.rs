//! The Redis store's failures, mapped into `onceflight_core::Error`.

use onceflight_core::Error;
use redis::{ErrorKind, RedisError, ServerErrorKind};

pub(crate) const BACKEND: &str = "redis";

/// Whether Redis answered that it does not know the function called: its
/// functions were lost (a restart or failover without persistence, `FUNCTION
/// FLUSH`), and the function did not run.
pub(crate) fn is_function_missing(error: &RedisError) -> bool {
    error.code() == Some("ERR")
        && error
            .detail()
            .is_some_and(|detail| detail.starts_with("Function not found"))
}

/// Maps a redis error: anything about reaching or keeping the server (I/O,
/// timeouts, a dropped connection, a server loading its data or busy with a
/// script, a cluster resharding or failing over, a read-only replica) is
/// `Unavailable` and safe to retry, as are functions lost under every
/// reload and a write refused because Redis is out of memory; the rest means
/// a bug, a damaged key or a misconfiguration.
pub(crate) fn map(error: RedisError) -> Error {
    let retryable = error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_cluster_error()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                        | ServerErrorKind::NoScript
                )
        )
        // Functions lost again and again under the store.
        || is_function_missing(&error)
        // A script running past `busy-reply-threshold` blocks every client.
        || error.code() == Some("BUSY")
        // Out of memory under `maxmemory-policy noeviction`: Redis refused
        // the call before the function ran (see `lua/lib.lua`), and it
        // succeeds once memory is freed.
        || error.code() == Some("OOM");
    if retryable {
        Error::unavailable(BACKEND, error)
    } else {
        Error::Backend {
            backend: BACKEND,
            message: error.to_string(),
        }
    }
}

pub(crate) fn corrupt(message: String) -> Error {
    Error::Backend {
        backend: BACKEND,
        message,
    }
}

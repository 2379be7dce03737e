//! The memory store's own failures, mapped into `onceflight_core::Error`.

use onceflight_core::Error;

/// The backend name in errors and metrics.
pub(crate) const BACKEND: &str = "memory";

/// What can go wrong inside the memory store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MemoryError {
    /// A shard handed out every token up to 2^53−1.
    #[error("fencing tokens exhausted in this process")]
    TokensExhausted,
}

impl From<MemoryError> for Error {
    fn from(e: MemoryError) -> Self {
        Error::Backend {
            backend: BACKEND,
            message: e.to_string(),
        }
    }
}

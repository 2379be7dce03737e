//! The one error type every store maps its failures into.

use std::sync::Arc;

use crate::types::{ClaimOptions, Kind, RequestKey, Token};

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when talking to a [`crate::RequestStore`].
///
/// Variants say what happened, not where: the server maps each to one HTTP
/// status and error code, and [`Error::is_retryable`] tells a caller whether
/// trying the same operation again can help.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The token is not (or no longer) the current lease of the key: another
    /// worker took over, the lease was released, the record is terminal or was
    /// deleted. Nothing was changed.
    #[error("lease lost: token {token} is not the current lease of key {key:?}")]
    LeaseLost {
        /// The key of the fenced operation.
        key: RequestKey,
        /// The token that was refused.
        token: Token,
    },

    /// The claim's kind or fingerprint differs from the record's. Nothing was
    /// changed.
    #[error("fingerprint mismatch on key {key:?}: {reason}")]
    FingerprintMismatch {
        /// The key of the claim.
        key: RequestKey,
        /// Which value differs.
        reason: String,
    },

    /// A value is outside the limits of the contract. Nothing was changed.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The name of the offending field (`key`, `kind`, `lease_ttl`, …).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The store could not be reached or did not answer in time. The
    /// operation may or may not have taken effect; every operation is safe to
    /// retry (claims are decided atomically and fenced operations are
    /// idempotent for the same token).
    #[error("{backend} store unavailable: {source}")]
    Unavailable {
        /// Which backend (`memory`, `postgres`, `redis`, `http`).
        backend: &'static str,
        /// The underlying error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },

    /// The store answered something it should not have (a corrupt record, an
    /// unexpected reply). Retrying will not help; this is a bug or a damaged
    /// store.
    #[error("{backend} store error: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl Error {
    /// Whether the same operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// The `FingerprintMismatch` a claim with `options` gets on a record of
    /// `record_kind`: the reason names the kinds when they differ, else the
    /// fingerprint. Stores decide *whether* it is a mismatch (docs/protocol.md §3);
    /// this only words it, the same for every store.
    pub fn fingerprint_mismatch(
        key: &RequestKey,
        record_kind: &Kind,
        options: &ClaimOptions,
    ) -> Self {
        let reason = if record_kind != options.kind() {
            format!(
                "the record's kind is {:?}, the claim's is {:?}",
                record_kind.as_str(),
                options.kind().as_str()
            )
        } else {
            "the claim's fingerprint differs from the record's".to_owned()
        };
        Error::FingerprintMismatch {
            key: key.clone(),
            reason,
        }
    }

    /// `LeaseLost` for `token` on `key`.
    pub fn lease_lost(key: &RequestKey, token: Token) -> Self {
        Error::LeaseLost {
            key: key.clone(),
            token,
        }
    }

    /// Wraps a backend's transport error as [`Error::Unavailable`].
    pub fn unavailable(
        backend: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Unavailable {
            backend,
            source: Arc::new(source),
        }
    }
}

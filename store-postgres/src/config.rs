//! Typed configuration of the Postgres store.

use std::fmt;
use std::time::Duration;

use onceflight_core::{DEFAULT_RETENTION, redact_url as redact};

/// How a [`crate::PgStore`] connects and behaves.
///
/// `Debug` never shows the password of either URL.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// The database URL, e.g. `postgres://user:pass@host/db?sslmode=verify-full`
    /// (TLS through rustls: `sslmode=require` or `verify-full`).
    pub url: String,
    /// A separate URL for the LISTEN connection, for deployments whose `url`
    /// goes through a transaction-mode pooler (PgBouncer, Supavisor), which
    /// cannot hold a LISTEN. Default: `url`.
    pub listen_url: Option<String>,
    /// The Postgres schema holding onceflight's tables (default
    /// `onceflight`): lowercase letters, digits and `_`, starting with a
    /// letter or `_`, at most 63 bytes.
    pub schema: String,
    /// Most pooled connections (default 10).
    pub pool_size: u32,
    /// How long results and failures are kept, and abandoned leases after
    /// they end (default 24 h).
    pub retention: Duration,
    /// How often a waiter re-reads its record even without a notification:
    /// the bounded fallback for a lost one (default 5 s).
    pub wait_fallback: Duration,
    /// Longest one operation may take, waiting for a pooled connection
    /// included; past it the operation answers `Unavailable` (default 5 s).
    /// A server that stops answering mid-query (a frozen network path, a
    /// stalled host) then costs a caller this long, not forever.
    pub operation_timeout: Duration,
}

impl PgConfig {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            listen_url: None,
            schema: "onceflight".to_owned(),
            pool_size: 10,
            retention: DEFAULT_RETENTION,
            wait_fallback: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(5),
        }
    }

    /// Sets the operation timeout.
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Sets the schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the retention.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the pool size.
    pub fn with_pool_size(mut self, pool_size: u32) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// Sets the URL of the LISTEN connection.
    pub fn with_listen_url(mut self, listen_url: impl Into<String>) -> Self {
        self.listen_url = Some(listen_url.into());
        self
    }
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &redact(&self.url))
            .field("listen_url", &self.listen_url.as_deref().map(redact))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("retention", &self.retention)
            .field("wait_fallback", &self.wait_fallback)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_passwords() {
        let config =
            PgConfig::new("postgres://app:s3cret@db/x").with_listen_url("postgres://l:pw2@db/x");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("pw2"),
            "{shown}"
        );
        assert!(shown.contains("app:***@db"), "{shown}");
    }
}

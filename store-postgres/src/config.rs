//! Typed configuration of the Postgres store.

use std::fmt;
use std::time::Duration;

use onceflight_core::DEFAULT_RETENTION;
use onceflight_core::backend::redact_url as redact;

/// How a [`crate::PgStore`] connects and behaves.
///
/// `Debug` never shows the password of either URL.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// The database URL, e.g. `postgres://user:pass@host/db?sslmode=verify-full`
    /// (TLS through rustls: `sslmode=require`, or `verify-full` with
    /// `sslrootcert=<CA file>` for a private root such as Supabase's).
    pub url: String,
    /// What `url` reaches: Postgres itself (or a session-mode pooler), or a
    /// transaction-mode pooler. Default: [`PgPooler::None`].
    pub pooler: PgPooler,
    /// A separate URL for the LISTEN connection and for migrations, which
    /// both need a session of their own: a direct or session-mode URL of the
    /// same database. Required with [`PgPooler::Transaction`]. Default:
    /// `url`.
    pub listen_url: Option<String>,
    /// The Postgres schema holding onceflight's tables (default
    /// `onceflight`): lowercase letters, digits and `_`, starting with a
    /// letter or `_`, at most 63 bytes.
    pub schema: String,
    /// Most pooled connections (default 10).
    pub pool_size: u32,
    /// How long results and failures are kept, and abandoned leases after
    /// they end (default 24 h). Must be more than zero.
    pub retention: Duration,
    /// How often a waiter re-reads its record even without a notification:
    /// the bounded fallback for a lost one (default 5 s).
    pub wait_fallback: Duration,
    /// Longest one operation may take, waiting for a pooled connection
    /// included; past it the operation answers `Unavailable` (default 5 s).
    /// A server that stops answering mid-query (a frozen network path, a
    /// stalled host) then costs a caller this long, not forever. Postgres
    /// itself cancels the store's statements a little sooner
    /// (`statement_timeout` and `lock_timeout` of the store's sessions, or
    /// of each statement through a transaction-mode pooler), so a statement
    /// the caller gave up on is rolled back rather than left running, holding
    /// locks and a connection, and committing later.
    pub operation_timeout: Duration,
    /// After this long without a notification, the LISTEN connection is
    /// pinged; one that does not answer within the operation timeout (a
    /// half-open connection after a network failover, say) is replaced
    /// (default 10 s). Until then, waiters rely on `wait_fallback`.
    pub listen_ping: Duration,
}

impl PgConfig {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pooler: PgPooler::None,
            listen_url: None,
            schema: "onceflight".to_owned(),
            pool_size: 10,
            retention: DEFAULT_RETENTION,
            wait_fallback: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(5),
            listen_ping: Duration::from_secs(10),
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

    /// Sets what the URL reaches.
    pub fn with_pooler(mut self, pooler: PgPooler) -> Self {
        self.pooler = pooler;
        self
    }

    /// Sets the URL of the LISTEN connection (and of migrations).
    pub fn with_listen_url(mut self, listen_url: impl Into<String>) -> Self {
        self.listen_url = Some(listen_url.into());
        self
    }
}

/// What a store URL reaches, which decides how statements are sent.
///
/// Transaction-mode poolers (PgBouncer's `pool_mode = transaction`,
/// Supavisor on port 6543) hand each transaction to whichever server
/// connection is free, so nothing may outlive one statement: no named
/// prepared statement (the next statement may meet another client's of the
/// same name, or none), no session setting such as `search_path`, no LISTEN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PgPooler {
    /// Postgres itself, or a session-mode pooler (PgBouncer's
    /// `pool_mode = session`, Supavisor on port 5432): each statement is
    /// prepared once per connection and then sent as one bind-and-execute
    /// round trip.
    #[default]
    None,
    /// A transaction-mode pooler: each operation is one simple-protocol
    /// query, its values written into the SQL as escaped literals, still one
    /// round trip. The LISTEN connection and migrations then need
    /// [`PgConfig::listen_url`].
    Transaction,
}

impl PgPooler {
    /// The value's name in flags and environment variables.
    pub fn as_str(self) -> &'static str {
        match self {
            PgPooler::None => "none",
            PgPooler::Transaction => "transaction",
        }
    }
}

impl fmt::Display for PgPooler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PgPooler {
    type Err = String;

    /// `none` (also `session`: a session-mode pooler needs nothing special)
    /// or `transaction`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "none" | "session" => Ok(PgPooler::None),
            "transaction" => Ok(PgPooler::Transaction),
            other => Err(format!(
                "unknown pooler {other:?}: expected none, session or transaction"
            )),
        }
    }
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &redact(&self.url))
            .field("pooler", &self.pooler)
            .field("listen_url", &self.listen_url.as_deref().map(redact))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("retention", &self.retention)
            .field("wait_fallback", &self.wait_fallback)
            .field("operation_timeout", &self.operation_timeout)
            .field("listen_ping", &self.listen_ping)
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

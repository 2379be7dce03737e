//! Opening the store a URL names: `memory://` (feature `memory`),
//! `postgres://…` / `postgresql://…` (feature `postgres`), `redis://…`,
//! `rediss://…`, a comma-separated list of cluster seeds or
//! `redis+cluster://…` (feature `redis`), and the schemes of
//! stores this build lacks, which are refused with the cargo feature that
//! would bring them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use onceflight_core::{DEFAULT_RETENTION, RequestStore};

/// How a store is opened. The `pg_*` fields only matter to `postgres://`
/// URLs, `redis_prefix` only to Redis URLs; other stores ignore them.
///
/// `Debug` never shows the password of `pg_listen_url`.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// How long results and failures are kept, and abandoned leases after
    /// they end.
    pub retention: Duration,
    /// Apply the store's schema migrations when opening it (default
    /// `true`). Without, opening checks that the schema is there, so that a
    /// missing migration is a clear start-up error rather than failing
    /// requests.
    pub migrate: bool,
    /// The Postgres schema holding onceflight's tables (default
    /// `onceflight`). Several services can share one database, each in a
    /// schema of its own.
    pub pg_schema: Option<String>,
    /// Most pooled Postgres connections (default 10).
    pub pg_pool_size: Option<u32>,
    /// A direct (or session-mode) URL of the same database for Postgres's
    /// LISTEN connection and for migrations, which both need a session of
    /// their own; required when the store URL goes through a
    /// transaction-mode pooler (PgBouncer, Supavisor). Default: the store
    /// URL.
    pub pg_listen_url: Option<String>,
    /// What the Postgres store URL reaches: `none` (default: Postgres
    /// itself or a session-mode pooler), `session` (the same) or
    /// `transaction` (a transaction-mode pooler, which needs
    /// `pg_listen_url`).
    pub pg_pooler: Option<String>,
    /// The prefix of every Redis key and channel (default `onceflight:`), so
    /// that several services share one Redis without meeting.
    pub redis_prefix: Option<String>,
    /// A PEM file of the certificate authority that signed the Redis
    /// server's certificate, for `rediss://` with a private CA.
    pub redis_tls_ca_file: Option<std::path::PathBuf>,
    /// Longest one store operation may take before it answers
    /// `Unavailable` (default: the store's own, 5 s): Postgres's operation
    /// timeout, Redis's response and connect timeouts.
    pub operation_timeout: Option<Duration>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            retention: DEFAULT_RETENTION,
            migrate: true,
            pg_schema: None,
            pg_pool_size: None,
            pg_listen_url: None,
            pg_pooler: None,
            redis_prefix: None,
            redis_tls_ca_file: None,
            operation_timeout: None,
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("retention", &self.retention)
            .field("migrate", &self.migrate)
            .field("pg_schema", &self.pg_schema)
            .field("pg_pool_size", &self.pg_pool_size)
            .field(
                "pg_listen_url",
                &self.pg_listen_url.as_deref().map(redact_url),
            )
            .field("pg_pooler", &self.pg_pooler)
            .field("redis_prefix", &self.redis_prefix)
            .field("redis_tls_ca_file", &self.redis_tls_ca_file)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenStoreError {
    /// The URL names a store this build was compiled without.
    #[error(
        "`{scheme}://` needs the {store} store, which this build does not include: rebuild with `--features {feature}`"
    )]
    NotCompiled {
        /// The URL's scheme.
        scheme: String,
        /// The store's name.
        store: &'static str,
        /// The cargo feature that compiles it in.
        feature: &'static str,
    },
    /// The URL names no known store.
    #[error(
        "unknown store URL {url:?}: expected memory://, postgres://…, or redis://… (rediss://, several for a cluster)"
    )]
    Unknown {
        /// The URL, password removed.
        url: String,
    },
    /// The store could not be reached, or refused the configuration.
    #[error("cannot connect to the {store} store")]
    Connect {
        /// The store's name.
        store: &'static str,
        /// What went wrong.
        #[source]
        source: onceflight_core::Error,
    },
    /// Applying the schema migrations failed.
    #[error("cannot migrate the {store} store's schema {schema:?}")]
    Migrate {
        /// The store's name.
        store: &'static str,
        /// The schema being migrated.
        schema: String,
        /// What went wrong.
        #[source]
        source: onceflight_core::Error,
    },
    /// Migrations were skipped, and the schema is not usable as it is.
    #[error(
        "the {store} store's schema {schema:?} is missing or not migrated (migrations were skipped): run `onceflight migrate` with the same store and schema, or start without --no-migrate"
    )]
    NotMigrated {
        /// The store's name.
        store: &'static str,
        /// The schema that was probed.
        schema: String,
        /// The probe's failure.
        #[source]
        source: onceflight_core::Error,
    },
}

/// The store `url` names, opened with `options`: connected, and for stores
/// with a schema (Postgres) migrated unless `options.migrate` is false.
pub async fn open(
    url: &str,
    options: &StoreOptions,
) -> Result<Arc<dyn RequestStore>, OpenStoreError> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme {
        "memory" => open_memory(options),
        "postgres" | "postgresql" => open_postgres(url, scheme, options).await,
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => {
            open_redis(url, scheme, options).await
        }
        _ => Err(OpenStoreError::Unknown {
            url: redact_url(url),
        }),
    }
}

#[cfg(feature = "memory")]
fn open_memory(options: &StoreOptions) -> Result<Arc<dyn RequestStore>, OpenStoreError> {
    use onceflight_store_memory::{MemoryConfig, MemoryStore};
    let store = MemoryStore::try_new(MemoryConfig::default().with_retention(options.retention))
        .map_err(|source| OpenStoreError::Connect {
            store: "in-memory",
            source,
        })?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "memory"))]
fn open_memory(_options: &StoreOptions) -> Result<Arc<dyn RequestStore>, OpenStoreError> {
    Err(OpenStoreError::NotCompiled {
        scheme: "memory".to_owned(),
        store: "in-memory",
        feature: "memory",
    })
}

#[cfg(feature = "postgres")]
async fn open_postgres(
    url: &str,
    _scheme: &str,
    options: &StoreOptions,
) -> Result<Arc<dyn RequestStore>, OpenStoreError> {
    use onceflight_store_postgres::{PgConfig, PgPooler, PgStore};

    const STORE: &str = "Postgres";
    let mut config = PgConfig::new(url).with_retention(options.retention);
    if let Some(schema) = &options.pg_schema {
        config = config.with_schema(schema.as_str());
    }
    if let Some(pool_size) = options.pg_pool_size {
        config = config.with_pool_size(pool_size);
    }
    if let Some(listen_url) = &options.pg_listen_url {
        config = config.with_listen_url(listen_url.as_str());
    }
    if let Some(timeout) = options.operation_timeout {
        config = config.with_operation_timeout(timeout);
    }
    if let Some(pooler) = &options.pg_pooler {
        let pooler = pooler
            .parse::<PgPooler>()
            .map_err(|reason| OpenStoreError::Connect {
                store: STORE,
                source: onceflight_core::Error::InvalidInput {
                    field: "pg_pooler",
                    reason,
                },
            })?;
        config = config.with_pooler(pooler);
    }
    let store = PgStore::connect(config)
        .await
        .map_err(|source| OpenStoreError::Connect {
            store: STORE,
            source,
        })?;
    let schema = store.schema().to_owned();
    if options.migrate {
        store
            .migrate()
            .await
            .map_err(|source| OpenStoreError::Migrate {
                store: STORE,
                schema: schema.clone(),
                source,
            })?;
        tracing::info!(schema = %schema, "Postgres schema migrated (up to date)");
    } else {
        // Without the schema's tables and functions, or with an older
        // version of them, requests would fail: fail now.
        store.check_migrated().await.map_err(|source| {
            if source.is_retryable() {
                OpenStoreError::Connect {
                    store: STORE,
                    source,
                }
            } else {
                OpenStoreError::NotMigrated {
                    store: STORE,
                    schema: schema.clone(),
                    source,
                }
            }
        })?;
        tracing::info!(schema = %schema, "Postgres migrations skipped (--no-migrate)");
    }
    Ok(Arc::new(store))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(
    _url: &str,
    scheme: &str,
    _options: &StoreOptions,
) -> Result<Arc<dyn RequestStore>, OpenStoreError> {
    Err(OpenStoreError::NotCompiled {
        scheme: scheme.to_owned(),
        store: "Postgres",
        feature: "postgres",
    })
}

/// `url` with any password replaced by `***`, for logs and errors.
pub use onceflight_core::backend::redact_url;

#[cfg(feature = "redis")]
async fn open_redis(
    url: &str,
    _scheme: &str,
    options: &StoreOptions,
) -> Result<Arc<dyn RequestStore>, OpenStoreError> {
    use onceflight_store_redis::{RedisConfig, RedisStore};

    let mut config = RedisConfig::new(url).with_retention(options.retention);
    if let Some(prefix) = &options.redis_prefix {
        config = config.with_prefix(prefix.as_str());
    }
    if let Some(ca_file) = &options.redis_tls_ca_file {
        config = config.with_tls_root_cert(ca_file);
    }
    if let Some(timeout) = options.operation_timeout {
        config.response_timeout = timeout;
        config.connect_timeout = timeout;
    }
    let store = RedisStore::connect(config)
        .await
        .map_err(|source| OpenStoreError::Connect {
            store: "Redis",
            source,
        })?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(
    _url: &str,
    scheme: &str,
    _options: &StoreOptions,
) -> Result<Arc<dyn RequestStore>, OpenStoreError> {
    Err(OpenStoreError::NotCompiled {
        scheme: scheme.to_owned(),
        store: "Redis",
        feature: "redis",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_listen_url_password() {
        let options = StoreOptions {
            pg_listen_url: Some("postgres://app:s3cret@db:5432/x".to_owned()),
            ..StoreOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("app:***@db"), "{shown}");
    }

    #[cfg(not(feature = "postgres"))]
    #[tokio::test]
    async fn postgres_needs_its_feature() {
        for url in ["postgres://localhost/x", "postgresql://localhost/x"] {
            let error = open(url, &StoreOptions::default())
                .await
                .expect_err("no Postgres store in this build");
            assert!(error.to_string().contains("--features postgres"), "{error}");
        }
    }

    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn redis_needs_its_feature() {
        for url in [
            "redis://localhost",
            "rediss://localhost",
            "redis+cluster://a",
        ] {
            let error = open(url, &StoreOptions::default())
                .await
                .expect_err("no Redis store in this build");
            assert!(error.to_string().contains("--features redis"), "{error}");
        }
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn an_unreachable_redis_is_a_connect_error_without_its_password() {
        // Port 1 on loopback: refused at once, nothing leaves the machine.
        let error = open("redis://:s3cret@127.0.0.1:1/", &StoreOptions::default())
            .await
            .expect_err("nothing listens on port 1");
        assert!(
            matches!(error, OpenStoreError::Connect { store: "Redis", .. }),
            "{error}"
        );
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[tokio::test]
    async fn unknown_schemes_are_refused() {
        let error = open("ftp://x", &StoreOptions::default())
            .await
            .expect_err("unknown scheme");
        assert!(matches!(error, OpenStoreError::Unknown { .. }), "{error}");
    }
}

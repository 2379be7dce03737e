//! The stores under measurement, each fresh and isolated: the memory store,
//! a Postgres store in a schema of its own, a Redis store under a prefix of
//! its own.

use onceflight_store_memory::{MemoryConfig, MemoryStore};
use onceflight_store_postgres::{PgConfig, PgPooler, PgStore};
use onceflight_store_redis::{RedisConfig, RedisStore};

/// Pooled Postgres connections: enough for 64 callers to compete for them,
/// as a service's pool would; ours and the baseline share the pool.
pub const PG_POOL: u32 = 16;

pub use onceflight_test_support::{backend_url, unique_name as unique};

/// A fresh memory store.
pub fn memory() -> MemoryStore {
    MemoryStore::new(MemoryConfig::default())
}

/// The PostgreSQL servers the benchmarks measure: one with a test server's
/// settings and one with a production server's durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pg {
    /// `DATABASE_URL`: under `cargo xtask bench`, `fsync`,
    /// `synchronous_commit` and `full_page_writes` off.
    Fast,
    /// `DATABASE_URL_DURABLE`: under `cargo xtask bench`, all three on, so
    /// that every commit waits for its WAL to reach the disk.
    Durable,
}

impl Pg {
    /// Both servers, fast first.
    pub const ALL: [Pg; 2] = [Pg::Fast, Pg::Durable];

    /// The variable that holds the server's URL.
    pub fn var(self) -> &'static str {
        match self {
            Pg::Fast => "DATABASE_URL",
            Pg::Durable => "DATABASE_URL_DURABLE",
        }
    }

    /// The store name its figures carry.
    pub fn name(self) -> &'static str {
        match self {
            Pg::Fast => "postgres",
            Pg::Durable => "postgres-durable",
        }
    }

    /// The server's URL, if it is given: the fast one as every backend
    /// (see [`backend_url`]); the durable one is optional even when backends
    /// are required (`cargo xtask bench --no-durable` leaves it out), so its
    /// absence only skips its figures, saying so.
    pub fn url(self) -> Option<String> {
        match self {
            Pg::Fast => backend_url(self.var()),
            Pg::Durable => {
                let url = std::env::var(self.var())
                    .ok()
                    .filter(|url| !url.trim().is_empty());
                if url.is_none() {
                    eprintln!(
                        "skipped: the durable Postgres figures ({} is not set)",
                        self.var()
                    );
                }
                url
            }
        }
    }
}

/// A migrated Postgres store in a fresh schema, pool of `pool` connections.
pub async fn postgres(pool: u32) -> Option<PgStore> {
    postgres_on(Pg::Fast, pool).await
}

/// A migrated Postgres store on `server` in a fresh schema, pool of `pool`
/// connections.
pub async fn postgres_on(server: Pg, pool: u32) -> Option<PgStore> {
    let url = server.url()?;
    let store = PgStore::connect(
        PgConfig::new(url)
            .with_schema(unique("bench"))
            .with_pool_size(pool),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {}: {e}", server.var()));
    store.migrate().await.expect("migrate");
    Some(store)
}

/// A pool of `size` connections to `DATABASE_URL` whose `search_path` is
/// `schema`, for bare statements written without a schema.
pub async fn postgres_pool_in(schema: &str, size: u32) -> sqlx::PgPool {
    postgres_pool_on(Pg::Fast, schema, size).await
}

/// A pool of `size` connections to `server` whose `search_path` is
/// `schema`, for bare statements written without a schema.
pub async fn postgres_pool_on(server: Pg, schema: &str, size: u32) -> sqlx::PgPool {
    let url = server
        .url()
        .unwrap_or_else(|| panic!("{} (a Postgres store was made)", server.var()));
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("a Postgres URL");
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(size)
        .connect_with(options.options([("search_path", schema)]))
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", server.var()))
}

/// A migrated Postgres store in a fresh schema through the transaction-mode
/// pooler of `PGBOUNCER_URL`, its LISTEN connection and migrations on
/// `DATABASE_URL`, pool of `pool` connections.
pub async fn postgres_pooled(pool: u32) -> Option<PgStore> {
    let pooled = backend_url("PGBOUNCER_URL")?;
    let direct = backend_url("DATABASE_URL")?;
    let store = PgStore::connect(
        PgConfig::new(pooled)
            .with_pooler(PgPooler::Transaction)
            .with_listen_url(direct)
            .with_schema(unique("bench"))
            .with_pool_size(pool),
    )
    .await
    .expect("connect through PGBOUNCER_URL");
    store.migrate().await.expect("migrate");
    Some(store)
}

/// A Redis store under a fresh prefix.
pub async fn redis() -> Option<RedisStore> {
    let url = backend_url("REDIS_URL")?;
    Some(
        RedisStore::connect(RedisConfig::new(url).with_prefix(format!("{}:", unique("bench"))))
            .await
            .expect("connect to REDIS_URL"),
    )
}

/// The bare table of Postgres's baselines: the columns, types, checks and
/// indexes of `onceflight_records` as the first migration made it, and a
/// token sequence like the store's, in the schema of `store`. Returns the
/// table's qualified name and the sequence's, quoted for `nextval`.
pub async fn create_wide_table(store: &PgStore) -> (String, String) {
    let schema = store.schema();
    let table = format!("\"{schema}\".bench_wide");
    let sequence = format!("\"{schema}\".bench_wide_tokens");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SEQUENCE {sequence} AS bigint MAXVALUE 9007199254740991;
         CREATE TABLE {table} (
             key              text        PRIMARY KEY,
             kind             text        NOT NULL,
             fingerprint      text,
             state            text        NOT NULL CHECK (state IN ('processing', 'completed', 'failed')),
             token            bigint      NOT NULL,
             attempt          integer     NOT NULL,
             max_attempts     integer     NOT NULL,
             retry_backoff_ms bigint      NOT NULL,
             lease_ttl_ms     bigint      NOT NULL,
             owner            text,
             lease_expires_at timestamptz,
             released         boolean     NOT NULL DEFAULT false,
             result           bytea,
             error_message    text,
             error_retryable  boolean,
             failures         integer     NOT NULL DEFAULT 0,
             retry_at         timestamptz,
             created_at       timestamptz NOT NULL,
             updated_at       timestamptz NOT NULL,
             completed_at     timestamptz,
             expires_at       timestamptz NOT NULL
         );
         CREATE INDEX ON {table} (expires_at);"
    )))
    .execute(store.pool())
    .await
    .expect("create the same-width baseline table");
    (table, format!("'{sequence}'"))
}

/// The same-width upsert of the fresh-key baseline: one row as a fresh
/// claim writes it (a lease, a token from the sequence), nothing on
/// conflict. `key` is a bind parameter or a quoted literal.
pub fn wide_upsert_sql(table: &str, sequence: &str, key: &str) -> String {
    format!(
        "INSERT INTO {table} (key, kind, fingerprint, state, token, attempt, max_attempts, \
         retry_backoff_ms, lease_ttl_ms, owner, lease_expires_at, created_at, updated_at, \
         expires_at) VALUES ({key}, 'image', NULL, 'processing', nextval({sequence}), 1, 1, \
         1000, 600000, NULL, clock_timestamp() + interval '600 s', clock_timestamp(), \
         clock_timestamp(), clock_timestamp() + interval '1 day') ON CONFLICT DO NOTHING"
    )
}

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

/// A migrated Postgres store in a fresh schema, pool of `pool` connections.
pub async fn postgres(pool: u32) -> Option<PgStore> {
    let url = backend_url("DATABASE_URL")?;
    let store = PgStore::connect(
        PgConfig::new(url)
            .with_schema(unique("bench"))
            .with_pool_size(pool),
    )
    .await
    .expect("connect to DATABASE_URL");
    store.migrate().await.expect("migrate");
    Some(store)
}

/// A pool of `size` connections to `DATABASE_URL` whose `search_path` is
/// `schema`, for bare statements written without a schema.
pub async fn postgres_pool_in(schema: &str, size: u32) -> sqlx::PgPool {
    let url = backend_url("DATABASE_URL").expect("DATABASE_URL (a Postgres store was made)");
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("a Postgres URL");
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(size)
        .connect_with(options.options([("search_path", schema)]))
        .await
        .expect("connect to DATABASE_URL")
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

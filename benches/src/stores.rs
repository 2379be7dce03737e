//! The stores under measurement, each fresh and isolated: the memory store,
//! a Postgres store in a schema of its own, a Redis store under a prefix of
//! its own.

use std::time::{SystemTime, UNIX_EPOCH};

use onceflight_store_memory::{MemoryConfig, MemoryStore};
use onceflight_store_postgres::{PgConfig, PgStore};
use onceflight_store_redis::{RedisConfig, RedisStore};

/// Pooled Postgres connections: enough for 64 callers to compete for them,
/// as a service's pool would; ours and the baseline share the pool.
pub const PG_POOL: u32 = 16;

/// A name no other run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// The URL in `var`, or `None` after saying loudly that the store is
/// skipped — unless `ONCEFLIGHT_REQUIRE_BACKENDS=1`, where it is missing
/// is a failure.
pub fn backend_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("ONCEFLIGHT_REQUIRE_BACKENDS").as_deref() != Ok("1"),
                "{var} is not set but ONCEFLIGHT_REQUIRE_BACKENDS=1 (run `cargo xtask bench`)"
            );
            eprintln!(
                "SKIPPED: {var} is not set; its store is not measured (run `cargo xtask bench`)"
            );
            None
        }
    }
}

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

/// A Redis store under a fresh prefix.
pub async fn redis() -> Option<RedisStore> {
    let url = backend_url("REDIS_URL")?;
    Some(
        RedisStore::connect(RedisConfig::new(url).with_prefix(format!("{}:", unique("bench"))))
            .await
            .expect("connect to REDIS_URL"),
    )
}

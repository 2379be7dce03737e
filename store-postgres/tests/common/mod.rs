//! Fresh, isolated Postgres stores for tests: each in a schema of its own.

// Each test binary uses a part of these helpers.
#![allow(dead_code)]

use std::time::Duration;

use onceflight_core::testkit::SuiteConfig;
use onceflight_store_postgres::{PgConfig, PgStore};

/// The database the tests use (set by `cargo xtask test`).
pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL is set (checked by backend_available)")
}

/// A schema name no other test uses.
pub(crate) fn fresh_schema() -> String {
    onceflight_core::testkit::unique_name("t")
}

/// A migrated store in a fresh schema, with `retention`.
pub(crate) async fn store_with(schema: &str, retention: Duration) -> PgStore {
    let store = PgStore::connect(
        PgConfig::new(database_url())
            .with_schema(schema)
            .with_retention(retention)
            .with_pool_size(4),
    )
    .await
    .expect("connect to DATABASE_URL");
    store.migrate().await.expect("migrate");
    store
}

/// The conformance suite's setup.
pub(crate) async fn setup(config: SuiteConfig) -> PgStore {
    store_with(&fresh_schema(), config.retention).await
}

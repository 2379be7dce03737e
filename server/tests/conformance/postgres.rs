//! The conformance suite over HTTP on PostgreSQL: each case gets its own
//! onceflight service (a `PgStore` in a fresh schema, served on
//! `127.0.0.1:0`) and talks to it through `HttpStore`, so the API of docs/protocol.md
//! §7, the client and the Postgres store together must behave exactly as a
//! store does.
//!
//! The same again through a transaction-mode pooler (`PGBOUNCER_URL`, a
//! PgBouncer in front of `DATABASE_URL`'s server), in module `pooled`.
//!
//! Needs `DATABASE_URL` (and `PGBOUNCER_URL`); without it every case skips
//! and says so, unless `ONCEFLIGHT_REQUIRE_BACKENDS=1`.

use futures::future::BoxFuture;
use onceflight_core::RequestKey;
use onceflight_core::testkit::{Expiry, SuiteConfig};
use onceflight_store_postgres::{PgConfig, PgPooler, PgStore};
use onceflight_test_support::unique_name;

use crate::common::over_http::OverHttp;

/// The store `config` opens, migrated, in a fresh schema with the suite's
/// retention.
async fn open(config: PgConfig, suite: SuiteConfig) -> PgStore {
    let store = PgStore::connect(
        config
            .with_schema(unique_name("t_http"))
            .with_retention(suite.retention)
            .with_pool_size(4),
    )
    .await
    .expect("connect to the test's Postgres");
    store.migrate().await.expect("migrate a fresh schema");
    store
}

fn direct(config: SuiteConfig) -> BoxFuture<'static, PgStore> {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (checked by the macro)");
    Box::pin(open(PgConfig::new(url), config))
}

/// Whether the served store's table holds a row for `key` (a simple query
/// with an escaped literal, so that it also works through the pooler).
fn raw<'a>(store: &'a PgStore, key: &'a RequestKey) -> BoxFuture<'a, bool> {
    Box::pin(async move {
        let sql = format!(
            "SELECT 1 FROM \"{}\".onceflight_records WHERE key = '{}'",
            store.schema(),
            key.as_str().replace('\'', "''")
        );
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .fetch_all(store.pool())
            .await
            .expect("look at the table");
        !rows.is_empty()
    })
}

onceflight_core::conformance_tests!(
    OverHttp::new(direct, raw, Expiry::SweptElsewhere),
    requires || onceflight_test_support::backend_available("DATABASE_URL")
);

/// The suite through PgBouncer in transaction mode, whose server pool is
/// smaller than the store's: every operation an unprepared query on
/// whichever server connection is free; LISTEN and migrations on the
/// direct URL.
mod pooled {
    use super::*;

    fn pooled(config: SuiteConfig) -> BoxFuture<'static, PgStore> {
        let direct = std::env::var("DATABASE_URL").expect("DATABASE_URL (set with PGBOUNCER_URL)");
        let pooled = std::env::var("PGBOUNCER_URL").expect("PGBOUNCER_URL (checked by the macro)");
        let pooled = PgConfig::new(pooled)
            .with_pooler(PgPooler::Transaction)
            .with_listen_url(direct);
        Box::pin(open(pooled, config))
    }

    onceflight_core::conformance_tests!(
        OverHttp::new(pooled, raw, Expiry::SweptElsewhere),
        requires || onceflight_test_support::backend_available("PGBOUNCER_URL")
    );
}

//! The conformance suite over HTTP on PostgreSQL: each case gets its own
//! onceflight service (a `PgStore` in a fresh schema, served on
//! `127.0.0.1:0`) and talks to it through `HttpStore`, so the API of design
//! §7, the client and the Postgres store together must behave exactly as a
//! store does.
//!
//! The same again through a transaction-mode pooler (`PGBOUNCER_URL`, a
//! PgBouncer in front of `DATABASE_URL`'s server), in module `pooled`.
//!
//! Needs `DATABASE_URL` (and `PGBOUNCER_URL`); without it every case skips
//! and says so, unless `ONCEFLIGHT_REQUIRE_BACKENDS=1`.

mod common;

use common::serve_in_process;
use onceflight_core::testkit::{SuiteConfig, unique_name};
use onceflight_server::auth::Tokens;
use onceflight_server::client::HttpStore;
use onceflight_store_postgres::{PgConfig, PgPooler, PgStore};

/// Serves the store `config` opens, migrated, in a fresh schema with the
/// suite's retention, on an ephemeral loopback port for as long as the
/// test's runtime lives; returns a client for it.
async fn serve(config: PgConfig, suite: SuiteConfig) -> HttpStore {
    let store = PgStore::connect(
        config
            .with_schema(unique_name("t_http"))
            .with_retention(suite.retention)
            .with_pool_size(4),
    )
    .await
    .expect("connect to the test's Postgres");
    store.migrate().await.expect("migrate a fresh schema");
    let base = serve_in_process(store, Tokens::default()).await;
    HttpStore::new(&base).expect("a valid base URL")
}

async fn setup(config: SuiteConfig) -> HttpStore {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (checked by the macro)");
    serve(PgConfig::new(url), config).await
}

onceflight_core::conformance_tests!(setup, requires "DATABASE_URL");

/// The suite through PgBouncer in transaction mode, whose server pool is
/// smaller than the store's: every operation an unprepared query on
/// whichever server connection is free; LISTEN and migrations on the
/// direct URL.
mod pooled {
    use super::*;

    async fn setup(config: SuiteConfig) -> HttpStore {
        let direct = std::env::var("DATABASE_URL").expect("DATABASE_URL (set with PGBOUNCER_URL)");
        let pooled = std::env::var("PGBOUNCER_URL").expect("PGBOUNCER_URL (checked by the macro)");
        let pooled = PgConfig::new(pooled)
            .with_pooler(PgPooler::Transaction)
            .with_listen_url(direct);
        serve(pooled, config).await
    }

    onceflight_core::conformance_tests!(setup, requires "PGBOUNCER_URL");
}

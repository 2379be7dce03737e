//! Fresh, isolated Postgres stores for tests: each in a schema of its own.

// Each test binary uses a part of these helpers.
#![allow(dead_code)]

use std::time::Duration;

use sqlx::{Connection, PgConnection};

use onceflight_core::testkit::{Expiry, RawStorage, Setup, SuiteConfig, WithRawStorage};
use onceflight_core::{Claim, ClaimOptions, Kind, Lease, RequestKey};
use onceflight_store_postgres::{PgConfig, PgPooler, PgStore};

/// The database the tests use (set by `cargo xtask test`).
pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL is set (checked by backend_available)")
}

/// A schema name no other test uses.
pub(crate) fn fresh_schema() -> String {
    onceflight_test_support::unique_name("t")
}

/// The store `config` opens, migrated.
async fn migrated(config: PgConfig) -> PgStore {
    let shown = format!("{config:?}");
    let store = PgStore::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connect with {shown}: {e}"));
    store.migrate().await.expect("migrate");
    store
}

/// A migrated store in a fresh schema, with `retention`.
pub(crate) async fn store_with(schema: &str, retention: Duration) -> PgStore {
    migrated(
        PgConfig::new(database_url())
            .with_schema(schema)
            .with_retention(retention)
            .with_pool_size(4),
    )
    .await
}

/// A proxy in front of the test database, and the database's URL through
/// it, TLS off (the proxy only passes bytes), for tests that break the path
/// of one connection, such as the LISTEN connection.
pub(crate) async fn database_through_proxy() -> (onceflight_test_support::proxy::Proxy, String) {
    let (proxy, url) =
        onceflight_test_support::proxy::Proxy::in_front_of(&database_url(), 5432).await;
    let separator = if url.contains('?') { '&' } else { '?' };
    (proxy, format!("{url}{separator}sslmode=disable"))
}

/// The conformance suite's setup.
pub(crate) async fn setup(config: SuiteConfig) -> PgStore {
    store_with(&fresh_schema(), config.retention).await
}

/// The transaction-mode PgBouncer in front of `DATABASE_URL`'s server (set
/// by `cargo xtask test`).
pub(crate) fn pooled_url() -> String {
    std::env::var("PGBOUNCER_URL").expect("PGBOUNCER_URL is set (checked by backend_available)")
}

/// A store in a fresh schema that works through the transaction-mode
/// pooler, its LISTEN connection and migrations on the direct URL, with
/// `retention`. Its pool is larger than the pooler's server pool, so server
/// connections are shared between its own connections too.
pub(crate) async fn pooled_store_with(schema: &str, retention: Duration) -> PgStore {
    migrated(
        PgConfig::new(pooled_url())
            .with_pooler(PgPooler::Transaction)
            .with_listen_url(database_url())
            .with_schema(schema)
            .with_retention(retention)
            .with_pool_size(6),
    )
    .await
}

/// The conformance suite's setup through the pooler.
pub(crate) async fn pooled_setup(config: SuiteConfig) -> PgStore {
    pooled_store_with(&fresh_schema(), config.retention).await
}

/// The URL of the TLS-enabled server (by the host name its certificate
/// names) with `sslmode` and, when given, `sslrootcert`.
pub(crate) fn tls_url(sslmode: &str, root_cert_var: Option<&str>) -> String {
    let base =
        std::env::var("PG_TLS_URL").expect("PG_TLS_URL is set (checked by backend_available)");
    let mut url = format!("{base}?sslmode={sslmode}");
    if let Some(var) = root_cert_var {
        let file = std::env::var(var).unwrap_or_else(|_| panic!("{var} is set with PG_TLS_URL"));
        url.push_str(&format!("&sslrootcert={file}"));
    }
    url
}

/// The conformance suite's setup over TLS, the certificate checked against
/// the private CA (`verify-full`).
pub(crate) async fn tls_setup(config: SuiteConfig) -> PgStore {
    migrated(
        PgConfig::new(tls_url("verify-full", Some("PG_TLS_CA_FILE")))
            .with_schema(fresh_schema())
            .with_retention(config.retention)
            .with_pool_size(4),
    )
    .await
}

/// A database of its own, for tests that read per-database statistics or
/// terminate every connection of a database. Dropped with `drop_database`.
pub(crate) async fn dedicated_database() -> (String, String) {
    let admin_url = database_url();
    let name = fresh_schema();
    let mut admin = PgConnection::connect(&admin_url).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    // Same server and credentials, other database.
    (with_database(&admin_url, &name), name)
}

pub(crate) async fn drop_database(name: &str) {
    let mut admin = PgConnection::connect(&database_url())
        .await
        .expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop database");
}

/// `url` (of the same server) with its database replaced by `database`.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let (base, rest) = url.rsplit_once('/').expect("a URL ending with /<database>");
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{base}/{database}{query}")
}

/// Whether `store`'s table holds a row for `key`, live or past retention:
/// the conformance suite's look past the store's API. A simple-protocol
/// query with the key as an escaped literal, so that it works through a
/// transaction-mode pooler too.
pub(crate) async fn raw_record_exists(store: &PgStore, key: &RequestKey) -> bool {
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
}

/// The conformance suite's setup built by `setup`, with a look at the
/// table; Postgres keeps records past retention until `sweep`.
pub(crate) fn suite<F: Setup<Store = PgStore>>(setup: F) -> impl RawStorage<Store = PgStore> {
    WithRawStorage {
        setup,
        raw: raw_record_exists,
        expiry: Expiry::Swept,
    }
}

/// A test key of kind `image`.
pub(crate) fn key(name: &str) -> RequestKey {
    RequestKey::parse(format!("image|{name}")).expect("a valid test key")
}

/// Claim options of kind `image` with a lease of `lease`.
pub(crate) fn options(lease: Duration) -> ClaimOptions {
    ClaimOptions::new(Kind::parse("image").expect("a valid kind"))
        .with_lease_ttl(lease)
        .expect("a valid lease")
}

/// The lease of an `Acquired` claim; anything else fails the test.
#[track_caller]
pub(crate) fn acquired(claim: Claim) -> Lease {
    match claim {
        Claim::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

//! The real `onceflight` binary on PostgreSQL: results survive a restart,
//! several servers share one database and schema (one lease per key across
//! all of them, long-polls woken across instances through LISTEN/NOTIFY), and
//! `onceflight migrate` prepares a schema that `serve --no-migrate` then uses.
//!
//! Needs `DATABASE_URL`; without it each test skips and says so, unless
//! `ONCEFLIGHT_REQUIRE_BACKENDS=1`. Each test works in a fresh schema and
//! kills its servers when dropped.

use std::process::Output;
use std::time::Duration;

use onceflight_test_support::{backend_available, unique_name};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{Launch, Server, call, claim_and_complete, client, fleet, onceflight};

/// How long a server may take to answer `/readyz` after it is spawned
/// (connecting and migrating included).
const STARTUP: Duration = Duration::from_secs(30);

/// Connections per server: small, so that parallel tests leave room in the
/// database's `max_connections`.
const POOL_SIZE: &str = "4";

/// The prefix of this file's schema names ([`unique_name`]).
const SCHEMA: &str = "t_srv";

/// The database, or `None` (after saying so loudly) when the test must skip.
fn database_url() -> Option<String> {
    if !backend_available("DATABASE_URL") {
        return None;
    }
    std::env::var("DATABASE_URL").ok()
}

/// `onceflight serve` on a free loopback port, on `database` in `schema`,
/// with `extra` arguments and info logs; ready once `/readyz` answers 200
/// (the store answers) within [`STARTUP`].
/// Two servers on one fresh schema, started (and migrating) at once, as a
/// fleet does; `extra` goes to both.
async fn two_servers(database: &str, extra: &[&str]) -> (Server, Server) {
    let schema = unique_name(SCHEMA);
    let mut a = pg_server(database, &schema, extra).spawn();
    let mut b = pg_server(database, &schema, extra).spawn();
    a.wait_ready().await;
    b.wait_ready().await;
    (a, b)
}

fn pg_server(database: &str, schema: &str, extra: &[&str]) -> Launch {
    crate::common::launch()
        .args(&[
            "--store",
            database,
            "--pg-schema",
            schema,
            "--pg-pool-size",
            POOL_SIZE,
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .ready_when("/readyz", STARTUP)
}

/// Runs `onceflight migrate` with `args` to completion.
fn migrate(args: &[&str]) -> Output {
    let mut all = vec!["migrate"];
    all.extend_from_slice(args);
    onceflight(&all)
        .env("RUST_LOG", "info")
        .output()
        .expect("run onceflight migrate")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Claims a key no one has claimed at `url` (a claim route): 201.
async fn a_fresh_claim_is_acquired(url: &str) {
    call(
        &client(),
        Method::POST,
        url,
        Some(json!({"kind": "image"})),
        None,
    )
    .await
    .expect(StatusCode::CREATED);
}

/// A completed result is in the database, not the process: a new server on
/// the same schema serves it, with the same token, and claims get it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_results_survive_a_restart() {
    let Some(database) = database_url() else {
        return;
    };
    let schema = unique_name(SCHEMA);
    let http = client();
    let key = "image%7Crestart";
    let result = json!({"url": "https://cdn/restart.png", "n": [1, 2, 3]});

    let mut first = pg_server(&database, &schema, &[]).start().await;
    let token = claim_and_complete(
        &http,
        &first,
        key,
        json!({"kind": "image", "owner": "w1"}),
        &result,
    )
    .await;
    first.terminate().await;
    drop(first);

    let second = pg_server(&database, &schema, &[]).start().await;
    let record = call(
        &http,
        Method::GET,
        &second.url(&format!("/v1/requests/{key}")),
        None,
        None,
    )
    .await;
    let body = record.expect(StatusCode::OK);
    assert_eq!(body["state"], "completed", "{body}");
    assert_eq!(body["result"], result, "{body}");
    assert_eq!(body["token"], token, "{body}");

    let again = call(
        &http,
        Method::POST,
        &second.url(&format!("/v1/requests/{key}/claim")),
        Some(json!({"kind": "image", "owner": "w2"})),
        None,
    )
    .await;
    let body = again.expect(StatusCode::OK);
    assert_eq!(body["state"], "completed", "{body}");
    assert_eq!(body["result"], result, "{body}");
    assert_eq!(body["token"], token, "{body}");
}

/// Horizontal scale: a herd of concurrent claims for one fresh key, spread
/// over two servers on one schema, grants exactly one lease; everyone else is
/// told it is in flight under that lease's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_schema_grant_one_lease() {
    let Some(database) = database_url() else {
        return;
    };
    let (a, b) = two_servers(&database, &[]).await;
    fleet::a_herd_over_two_servers_gets_one_lease(&a, &b).await;
}

/// A long-poll held on one server is answered as soon as the job completes
/// through another: the wake-up crosses instances (LISTEN/NOTIFY), it is not
/// the store's fallback re-read (every 5 s) nor the 20 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_when_another_server_completes() {
    let Some(database) = database_url() else {
        return;
    };
    let (a, b) = two_servers(&database, &[]).await;
    fleet::a_long_poll_on_one_server_wakes_on_completion_through_the_other(&a, &b).await;
}

/// The pooled URL and the direct one, or `None` (after saying so loudly)
/// when the test must skip.
fn pooled_urls() -> Option<(String, String)> {
    if !backend_available("PGBOUNCER_URL") {
        return None;
    }
    let direct = std::env::var("DATABASE_URL").expect("DATABASE_URL is set with PGBOUNCER_URL");
    Some((std::env::var("PGBOUNCER_URL").ok()?, direct))
}

/// Two servers on one transaction-mode pooler (each its operations through
/// PgBouncer, its LISTEN and migrations on the direct URL, and a hit
/// cache): a herd over both gets one lease, a long-poll on one is woken by a
/// complete on the other, through NOTIFY, and a delete through one reaches
/// the other's cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_pooler_share_leases_and_wake_each_other() {
    let Some((pooled, direct)) = pooled_urls() else {
        return;
    };
    let schema = unique_name(SCHEMA);
    let [cache, max_stale] = fleet::HIT_CACHE_FLAGS;
    let flags = [
        "--pg-pooler",
        "transaction",
        "--pg-listen-url",
        &direct,
        cache,
        max_stale,
    ];
    let mut a = pg_server(&pooled, &schema, &flags).spawn();
    let mut b = pg_server(&pooled, &schema, &flags).spawn();
    a.wait_ready().await;
    b.wait_ready().await;
    fleet::a_herd_over_two_servers_gets_one_lease(&a, &b).await;
    fleet::a_long_poll_on_one_server_wakes_on_completion_through_the_other(&a, &b).await;
    fleet::a_delete_on_one_server_reaches_the_hit_cache_of_the_other(&a, &b).await;
}

/// Two servers with hit caches on one schema: a result served from B's
/// memory and deleted through A is never served by B past the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_server_reaches_the_hit_cache_of_another() {
    let Some(database) = database_url() else {
        return;
    };
    let (a, b) = two_servers(&database, &fleet::HIT_CACHE_FLAGS).await;
    fleet::a_delete_on_one_server_reaches_the_hit_cache_of_the_other(&a, &b).await;
}

/// Through a pooler the server was not told about, `migrate` and `serve`
/// refuse to start, saying which flags to set; `migrate` with them applies
/// the migrations over the direct URL, and `serve --no-migrate` then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_pooler_is_refused_and_the_flags_work() {
    let Some((pooled, direct)) = pooled_urls() else {
        return;
    };
    // A database of its own, so that the pooler's server pool for it
    // serves this test alone and the start-up probe meets a shared backend.
    let database = unique_name("t_srv_db");
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&direct)
        .await
        .expect("connect to DATABASE_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await
        .expect("create a database");
    let in_database = |url: &str| {
        let (base, rest) = url.rsplit_once('/').expect("a URL ending in /<database>");
        let query = rest
            .split_once('?')
            .map(|(_, q)| format!("?{q}"))
            .unwrap_or_default();
        format!("{base}/{database}{query}")
    };
    let (pooled, direct) = (in_database(&pooled), in_database(&direct));
    let schema = unique_name(SCHEMA);
    let base = ["--store", &pooled, "--pg-schema", &schema];
    let transaction = ["--pg-pooler", "transaction"];
    let listen = ["--pg-listen-url", direct.as_str()];
    let output = migrate(&base);
    let logs = text(&output);
    assert!(
        !output.status.success()
            && logs.contains("transaction-mode pooler")
            && logs.contains("--pg-pooler transaction")
            && logs.contains("--pg-listen-url"),
        "migrating through an undeclared pooler is refused, naming the flags:\n{logs}"
    );
    let output = migrate(&[&base[..], &transaction].concat());
    let logs = text(&output);
    assert!(
        !output.status.success() && logs.contains("--pg-listen-url"),
        "transaction mode without a session URL is refused, naming it:\n{logs}"
    );
    let output = migrate(&[&base[..], &transaction, &listen].concat());
    assert!(
        output.status.success(),
        "migrate with the pooler's flags:\n{}",
        text(&output)
    );
    let server = pg_server(
        &pooled,
        &schema,
        &[&["--no-migrate"][..], &transaction, &listen].concat(),
    )
    .start()
    .await;
    a_fresh_claim_is_acquired(&server.url("/v1/requests/image%7Cpooled/claim")).await;
    drop(server);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {database} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop the database");
}

/// `serve` over TLS: `verify-full` with the private CA serves; a wrong CA
/// or a host name the certificate does not name stops start-up with a clear
/// message that does not show the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_checked_at_start_up() {
    if !backend_available("PG_TLS_URL") {
        return;
    }
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
    let base = env("PG_TLS_URL").replacen("postgres@", "postgres:tls-pw-s3cret@", 1);
    let url = |ca: &str| format!("{base}?sslmode=verify-full&sslrootcert={}", env(ca));
    let schema = unique_name(SCHEMA);
    let server = pg_server(&url("PG_TLS_CA_FILE"), &schema, &[])
        .start()
        .await;
    a_fresh_claim_is_acquired(&server.url("/v1/requests/image%7Ctls/claim")).await;
    drop(server);
    for (what, bad) in [
        ("a wrong CA", url("PG_TLS_OTHER_CA_FILE")),
        (
            "a wrong host name",
            url("PG_TLS_CA_FILE").replacen("@localhost:", "@127.0.0.1:", 1),
        ),
    ] {
        let mut server = pg_server(&bad, &schema, &[]).spawn();
        let status = server.wait_exit(STARTUP).await;
        let logs = server.logs();
        assert!(!status.success(), "{what} must stop start-up:\n{logs}");
        assert!(
            logs.contains("TLS") && logs.contains("sslrootcert"),
            "{what}: the message says it is TLS and what to check:\n{logs}"
        );
        assert!(
            !logs.contains("tls-pw-s3cret"),
            "{what}: the password stays out of the logs:\n{logs}"
        );
    }
}

/// `onceflight migrate` prepares a schema (and says so), after which a server
/// started with `--no-migrate` works on it; `--no-migrate` on a schema that
/// was never migrated refuses to start, naming `onceflight migrate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_then_serve_without_migrating() {
    let Some(database) = database_url() else {
        return;
    };
    let schema = unique_name(SCHEMA);
    let output = migrate(&["--store", &database, "--pg-schema", &schema]);
    let logs = text(&output);
    assert!(
        output.status.success(),
        "onceflight migrate: {}\n{logs}",
        output.status
    );
    assert!(
        logs.contains(&schema) && logs.contains("migrat"),
        "migrate logs what it did, naming the schema:\n{logs}"
    );
    // Migrating again is a no-op that succeeds.
    let again = migrate(&["--store", &database, "--pg-schema", &schema]);
    assert!(
        again.status.success(),
        "a second migrate:\n{}",
        text(&again)
    );

    let server = pg_server(&database, &schema, &["--no-migrate"])
        .start()
        .await;
    let http = client();
    claim_and_complete(
        &http,
        &server,
        "image%7Cmigrated",
        json!({"kind": "image"}),
        &json!("done"),
    )
    .await;
    drop(server);

    let mut unmigrated = pg_server(&database, &unique_name(SCHEMA), &["--no-migrate"]).spawn();
    let status = unmigrated.wait_exit(STARTUP).await;
    let logs = unmigrated.logs();
    assert!(
        !status.success(),
        "--no-migrate on an empty schema must not serve:\n{logs}"
    );
    assert!(
        logs.contains("onceflight migrate"),
        "the refusal says how to fix it:\n{logs}"
    );
}

/// A password in the store URL never reaches the logs, even when connecting
/// fails (nothing listens on port 1). Needs no database.
#[tokio::test]
async fn passwords_never_reach_the_logs() {
    let output = migrate(&[
        "--store",
        "postgres://app:hunter2-secret@127.0.0.1:1/x",
        "--pg-schema",
        "onceflight",
    ]);
    let logs = text(&output);
    assert!(
        !output.status.success(),
        "nothing listens on port 1:\n{logs}"
    );
    assert!(
        !logs.contains("hunter2"),
        "the password stays out of the logs:\n{logs}"
    );
    assert!(
        logs.contains("app:***@127.0.0.1:1"),
        "the URL is named, redacted:\n{logs}"
    );
}

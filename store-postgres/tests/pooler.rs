//! The store behind a transaction-mode pooler (PgBouncer in
//! `pool_mode = transaction`, the stand-in for Supavisor on port 6543): one
//! round trip per operation in both modes, counted on the wire; a pooler the
//! store was not told about, a missing session URL and migrations through
//! the pooler refused with what to set; no role-wide setting needed; server
//! connections really shared between clients.

mod common;

use common::{acquired, key, options};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use onceflight_core::{Bytes, Error, JobError, Kind, ListQuery, RequestKey, RequestStore};
use onceflight_store_postgres::{PgConfig, PgPooler, PgStore};
use onceflight_test_support::proxy::server_of;
use onceflight_test_support::{backend_available, unique_name};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy that counts the requests clients send through it: a simple
/// query, or a batch of extended-protocol messages closed by a Sync. Each
/// is one round trip: the client waits for its ReadyForQuery. A Sync alone
/// is counted apart: it is how sqlx checks a connection it takes back into
/// its pool, after the caller already has its answer (and would check one
/// before each use, were that not turned off).
struct RoundTrips {
    addr: SocketAddr,
    count: Arc<AtomicU64>,
    lone_syncs: Arc<AtomicU64>,
}

impl RoundTrips {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let count = Arc::new(AtomicU64::new(0));
        let lone_syncs = Arc::new(AtomicU64::new(0));
        let (counter, lone_counter) = (Arc::clone(&count), Arc::clone(&lone_syncs));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (counter, lone_counter) = (Arc::clone(&counter), Arc::clone(&lone_counter));
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    });
                    // Client to server: the untyped start-up message first
                    // (the URL says sslmode=disable, so no TLS request),
                    // then typed messages.
                    let mut pending = Vec::new();
                    let mut chunk = vec![0; 64 * 1024];
                    let mut started = false;
                    let mut extended = false;
                    loop {
                        let n = match client_read.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if server_write.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                        pending.extend_from_slice(&chunk[..n]);
                        loop {
                            let header = usize::from(started);
                            if pending.len() < header + 4 {
                                break;
                            }
                            let len =
                                u32::from_be_bytes(pending[header..header + 4].try_into().unwrap())
                                    as usize;
                            if pending.len() < header + len {
                                break;
                            }
                            if started {
                                match pending[0] {
                                    b'Q' => {
                                        counter.fetch_add(1, Ordering::SeqCst);
                                    }
                                    b'S' if extended => {
                                        counter.fetch_add(1, Ordering::SeqCst);
                                        extended = false;
                                    }
                                    b'S' => {
                                        lone_counter.fetch_add(1, Ordering::SeqCst);
                                    }
                                    b'P' | b'B' | b'E' | b'D' => extended = true,
                                    _ => {}
                                }
                            }
                            pending.drain(..header + len);
                            started = true;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            count,
            lone_syncs,
        }
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// `url` pointed at this proxy instead of its host, without TLS.
    fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let userinfo = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        let separator = if tail.contains('?') { '&' } else { '?' };
        format!(
            "{scheme}://{userinfo}{}{tail}{separator}sslmode=disable",
            self.addr
        )
    }
}

/// Runs each operation of the store once and returns how many round trips
/// each took.
async fn round_trips_per_operation(store: &PgStore, proxy: &RoundTrips) -> Vec<(String, u64)> {
    let o = options(Duration::from_secs(60));
    let mut counts = Vec::new();
    let mut before = proxy.get();
    let mut count = |what: &str| {
        let now = proxy.get();
        counts.push((what.to_owned(), now - before));
        before = now;
    };
    let run = unique_name("rt");
    let (a, b, c) = (
        key(&format!("{run}-a")),
        key(&format!("{run}-b")),
        key(&format!("{run}-c")),
    );
    let lease = acquired(store.claim_or_get(&a, &o).await.unwrap());
    count("claim (fresh)");
    let _ = store.claim_or_get(&a, &o).await.unwrap();
    count("claim (in flight)");
    store.renew(&a, lease.token, None).await.unwrap();
    count("renew");
    store
        .complete(&a, lease.token, Bytes::from_static(b"\"png\""))
        .await
        .unwrap();
    count("complete");
    let _ = store.claim_or_get(&a, &o).await.unwrap();
    count("claim (completed)");
    let failing = acquired(store.claim_or_get(&b, &o).await.unwrap());
    count("claim (fresh, b)");
    store
        .fail(&b, failing.token, &JobError::retryable("it's \\ broken"))
        .await
        .unwrap();
    count("fail");
    let released = acquired(store.claim_or_get(&c, &o).await.unwrap());
    count("claim (fresh, c)");
    store.release(&c, released.token).await.unwrap();
    count("release");
    store.get(&a).await.unwrap();
    count("get");
    let under = ListQuery::new()
        .with_prefix(format!("image|{run}-"))
        .unwrap()
        .with_kind(Some(Kind::parse("image").unwrap()))
        .with_limit(1)
        .unwrap();
    let page = store.list(&under).await.unwrap();
    count("list");
    let next = page.next.expect("three records, one a page");
    store.list(&under.with_cursor(Some(next))).await.unwrap();
    count("list (next page)");
    store.counts(&format!("image|{run}-")).await.unwrap();
    count("counts");
    store.delete(&a).await.unwrap();
    count("delete");
    store.sweep().await.unwrap();
    count("sweep");
    counts
}

/// Every operation one request, and no more lone Syncs than operations (at
/// most the pool's check when the connection goes back, none before use).
async fn assert_one_each(proxy: &RoundTrips, store: &PgStore, mode: &str) {
    // The pool checks a returned connection in the background: let the
    // checks of earlier operations finish before counting, and after.
    let settle = Duration::from_millis(300);
    tokio::time::sleep(settle).await;
    let lone_before = proxy.lone_syncs.load(Ordering::SeqCst);
    let counts = round_trips_per_operation(store, proxy).await;
    assert!(
        counts.iter().all(|(_, n)| *n == 1),
        "{mode}: every operation must be one round trip: {counts:?}"
    );
    assert_eq!(counts.len(), 15, "{mode}: every operation was counted");
    tokio::time::sleep(settle).await;
    let lone = proxy.lone_syncs.load(Ordering::SeqCst) - lone_before;
    assert!(
        lone <= 15,
        "{mode}: {lone} lone Syncs for 15 operations: a connection is checked before use"
    );
}

/// Through the pooler every operation is one simple-protocol query, from
/// the first call on; directly, once each statement is prepared on the
/// connection, every operation is one bind-and-execute round trip (no ping
/// before it). And nothing of it needs a role-wide `search_path`.
#[tokio::test]
async fn every_operation_is_one_round_trip_in_both_modes() {
    if !backend_available("PGBOUNCER_URL") {
        return;
    }
    let schema = common::fresh_schema();
    let pooled = RoundTrips::start(server_of(&common::pooled_url(), 5432)).await;
    let store = PgStore::connect(
        PgConfig::new(pooled.url(&common::pooled_url()))
            .with_pooler(PgPooler::Transaction)
            .with_listen_url(common::database_url())
            .with_schema(schema.as_str())
            .with_pool_size(1),
    )
    .await
    .expect("connect through the pooler");
    store.migrate().await.expect("migrate");
    assert_one_each(&pooled, &store, "through the pooler").await;

    let direct = RoundTrips::start(server_of(&common::database_url(), 5432)).await;
    let store = PgStore::connect(
        PgConfig::new(direct.url(&common::database_url()))
            .with_schema(schema.as_str())
            .with_pool_size(1),
    )
    .await
    .expect("connect directly");
    // Prepares each statement on the connection (two round trips the first
    // time), then measures the steady state.
    round_trips_per_operation(&store, &direct).await;
    assert_one_each(&direct, &store, "direct, prepared").await;

    let mut admin = PgConnection::connect(&common::database_url())
        .await
        .expect("connect");
    let role_settings: Option<Vec<String>> =
        sqlx::query_scalar("SELECT rolconfig FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut admin)
            .await
            .expect("read the role's settings");
    assert_eq!(
        role_settings, None,
        "the role has no settings of its own (no ALTER ROLE … SET search_path)"
    );
}

/// Store URL through the pooler, and the store not told: start-up is
/// refused with what to set, before anything is created.
#[tokio::test]
async fn an_undeclared_pooler_is_refused_with_what_to_set() {
    if !backend_available("PGBOUNCER_URL") {
        return;
    }
    // A database of its own, so the pooler's server pool for it serves only
    // this test and the probe's two connections meet the same backend.
    let (_, name) = common::dedicated_database().await;
    let pooled = common::with_database(&common::pooled_url(), &name);
    let error = PgStore::connect(PgConfig::new(pooled.as_str()))
        .await
        .expect_err("an undeclared transaction-mode pooler must be refused");
    let message = error.to_string();
    assert!(
        matches!(error, Error::InvalidInput { .. })
            && message.contains("transaction-mode pooler")
            && message.contains("--pg-pooler transaction")
            && message.contains("--pg-listen-url"),
        "the error must say what to set: {message}"
    );
    common::drop_database(&name).await;
}

/// A transaction-mode pooler with no session URL: refused, naming the flag.
#[tokio::test]
async fn transaction_mode_needs_a_session_url() {
    if !backend_available("PGBOUNCER_URL") {
        return;
    }
    let error =
        PgStore::connect(PgConfig::new(common::pooled_url()).with_pooler(PgPooler::Transaction))
            .await
            .expect_err("no listen URL");
    let message = error.to_string();
    assert!(
        message.contains("--pg-listen-url") && message.contains("LISTEN"),
        "the error must name the missing URL: {message}"
    );
}

/// Migrations (and LISTEN) never run through the pooler: a session URL
/// that is the pooler is refused, and nothing is applied.
#[tokio::test]
async fn migrations_refuse_the_pooler() {
    if !backend_available("PGBOUNCER_URL") {
        return;
    }
    let (direct, name) = common::dedicated_database().await;
    let pooled = common::with_database(&common::pooled_url(), &name);
    let error = PgStore::connect(
        PgConfig::new(pooled.as_str())
            .with_pooler(PgPooler::Transaction)
            .with_listen_url(pooled.as_str()),
    )
    .await
    .expect_err("a session URL through the pooler must be refused");
    let message = error.to_string();
    assert!(
        message.contains("migrations need a session") && message.contains("direct or session"),
        "the error must say to use a direct or session connection: {message}"
    );
    let mut conn = PgConnection::connect(&direct).await.expect("connect");
    let schemas: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'onceflight'")
            .fetch_one(&mut conn)
            .await
            .expect("read the catalog");
    assert_eq!(schemas, 0, "nothing was created");
    drop(conn);
    common::drop_database(&name).await;
}

/// Values that could break out of a literal, through the pooler's
/// simple-protocol path: they round-trip byte for byte and change nothing
/// else.
#[tokio::test]
async fn hostile_values_stay_values_through_the_pooler() {
    if !backend_available("PGBOUNCER_URL") {
        return;
    }
    let store = common::pooled_store_with(&common::fresh_schema(), Duration::from_secs(3600)).await;
    for (i, text) in [
        "'; DROP TABLE onceflight_records; --",
        "\\'; SELECT 1; --",
        "$$ $1 $q$ E'\\x00'",
        "é ✓ 🦀 \\\\",
    ]
    .into_iter()
    .enumerate()
    {
        let k = key(&format!("{i}|{text}"));
        let lease = acquired(
            store
                .claim_or_get(&k, &options(Duration::from_secs(60)))
                .await
                .unwrap(),
        );
        let failed = store
            .fail(&k, lease.token, &JobError::retryable(text))
            .await
            .expect("fail");
        assert_eq!(
            failed.error.as_ref().map(|e| e.message()),
            Some(text),
            "the message round-trips"
        );
        let record = store.get(&k).await.unwrap().expect("the record");
        assert_eq!(record.key, k, "the key round-trips");
        let under = ListQuery::new().with_prefix(k.as_str()).unwrap();
        let page = store.list(&under).await.expect("list");
        let listed: Vec<&RequestKey> = page.records.iter().map(|r| &r.key).collect();
        assert_eq!(listed, [&k], "the key is its own prefix");
        let counted = store.counts(k.as_str()).await.expect("counts");
        assert_eq!(counted.states.failed, 1, "the count under the key");
    }
}

/// The pooler really shares its server connections: a store whose pool
/// holds more connections than the pooler has server connections is served,
/// under concurrent claims, by no more backends than the pooler keeps.
#[tokio::test]
async fn server_connections_are_shared_between_clients() {
    if !backend_available("PGBOUNCER_URL") {
        return;
    }
    let (direct, name) = common::dedicated_database().await;
    let store = Arc::new(
        PgStore::connect(
            PgConfig::new(common::with_database(&common::pooled_url(), &name))
                .with_pooler(PgPooler::Transaction)
                .with_listen_url(direct.as_str())
                .with_pool_size(8),
        )
        .await
        .expect("connect through the pooler"),
    );
    store.migrate().await.expect("migrate");
    let claims: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .claim_or_get(
                        &key(&format!("shared-{i}")),
                        &options(Duration::from_secs(60)),
                    )
                    .await
            })
        })
        .collect();
    for claim in claims {
        let _ = claim.await.expect("task").expect("claim");
    }
    let clients = store.pool().size();
    let mut admin = PgConnection::connect(&direct).await.expect("connect");
    // Backends of this database other than this one and the store's LISTEN
    // connection (which is direct): those the pooler opened.
    let backends: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
         AND query NOT LIKE 'LISTEN%'",
    )
    .fetch_one(&mut admin)
    .await
    .expect("count backends");
    assert!(
        clients > 3 && backends <= 3 && (backends as u32) < clients,
        "{clients} client connections must share at most the pooler's 3 server connections, \
         found {backends} backends"
    );
    drop(admin);
    drop(store);
    common::drop_database(&name).await;
}

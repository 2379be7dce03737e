//! Listing on Postgres beyond the shared cases: on a table of thousands of
//! records, every listing statement follows the `(created_at, key)` index
//! (no sequential scan), pages return every record exactly once and in the
//! global order, ties on the creation instant included, and counts agree
//! with the records written.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use onceflight_core::testkit::every_page;
use onceflight_core::{
    Kind, ListCursor, ListOrder, ListQuery, RecordState, RequestKey, RequestStore, StateFilter,
};
use onceflight_store_postgres::PgStore;
use onceflight_test_support::backend_available;

/// Records written straight into the table: enough that reading the whole
/// table is a plan Postgres would weigh against the index.
const ROWS: i64 = 20_000;

/// Records created in the same microsecond: each run of four consecutive
/// numbers shares its `created_at`, so keys break the ties.
const TIED: i64 = 4;

/// What the generator writes for record number `g` (1 ..= [`ROWS`]); the
/// same rules as [`fill`]'s SQL, so that the test knows the answer without
/// asking the store.
#[derive(Clone, Debug)]
struct Row {
    key: String,
    /// The creation instant, in milliseconds after the first.
    created: i64,
    kind: &'static str,
    state: RecordState,
    /// A `processing` record whose lease is over (expired or released).
    stuck: bool,
    /// A `failed` record a claim may retry.
    retry: bool,
    /// Past retention: no listing or count may show it.
    expired: bool,
}

fn row(g: i64) -> Row {
    let state = match g % 5 {
        0 | 1 => RecordState::Processing,
        2 => RecordState::Completed,
        _ => RecordState::Failed,
    };
    Row {
        key: format!("bulk|k{}/{g}", g % 10),
        created: g / TIED,
        kind: ["image", "video", "audio"][(g % 3) as usize],
        state,
        stuck: matches!(g % 10, 5 | 6),
        retry: g % 10 == 3,
        expired: g % 97 == 0,
    }
}

/// Writes [`ROWS`] records with one statement, following [`row`]'s rules:
/// processing records with live, expired and released leases, completed
/// ones, failures that allow a retry and final ones, some past retention,
/// three kinds, ten key prefixes. Then analyzes the table, as autovacuum
/// would, so that the planner knows its size.
async fn fill(store: &PgStore) {
    let sql = format!(
        "INSERT INTO \"{schema}\".onceflight_records AS t (
             key, kind, fingerprint, state, token, attempt, max_attempts, retry_backoff_ms,
             lease_ttl_ms, owner, lease_expires_at, released, result, error_message,
             error_retryable, failures, retry_at, created_at, updated_at, completed_at,
             expires_at)
         SELECT 'bulk|k' || (g % 10) || '/' || g,
                (ARRAY['image', 'video', 'audio'])[g % 3 + 1],
                NULL,
                CASE g % 5 WHEN 0 THEN 'processing' WHEN 1 THEN 'processing'
                           WHEN 2 THEN 'completed' ELSE 'failed' END,
                g, 1, 3, 1000, 30000, 'worker',
                CASE WHEN g % 5 IN (0, 1) THEN
                    CASE WHEN g % 10 IN (5, 6) THEN now() - interval '1 minute'
                         ELSE now() + interval '1 hour' END
                END,
                g % 5 IN (0, 1) AND g % 10 = 6,
                CASE WHEN g % 5 = 2 THEN '\\x7b7d'::bytea END,
                CASE WHEN g % 5 IN (3, 4) THEN 'boom' END,
                CASE WHEN g % 5 IN (3, 4) THEN g % 5 = 3 END,
                CASE WHEN g % 5 = 3 THEN 1 ELSE 0 END,
                CASE WHEN g % 10 = 3 THEN now() + interval '1 hour' END,
                c.at, c.at,
                CASE WHEN g % 5 = 2 THEN c.at END,
                CASE WHEN g % 97 = 0 THEN now() - interval '1 second'
                     ELSE now() + interval '1 day' END
         FROM generate_series(1, {ROWS}) g,
              LATERAL (SELECT now() - interval '1 day'
                              + (g / {TIED}) * interval '1 millisecond' AS at) c",
        schema = store.schema(),
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(store.pool())
        .await
        .expect("fill the table");
    let analyze = format!("ANALYZE \"{}\".onceflight_records", store.schema());
    sqlx::raw_sql(sqlx::AssertSqlSafe(analyze))
        .execute(store.pool())
        .await
        .expect("analyze");
}

/// A fresh store holding [`fill`]'s records.
async fn filled_store() -> PgStore {
    let store = common::store_with(&common::fresh_schema(), Duration::from_secs(3600)).await;
    fill(&store).await;
    store
}

/// A fresh store holding [`fill`]'s records, working through the
/// transaction-mode pooler (every statement unprepared, values literals).
async fn filled_pooled_store() -> PgStore {
    let store = common::pooled_store_with(&common::fresh_schema(), Duration::from_secs(3600)).await;
    fill(&store).await;
    store
}

fn kind(name: &str) -> Option<Kind> {
    Some(Kind::parse(name).expect("a valid kind"))
}

fn with_prefix(query: ListQuery, prefix: &str) -> ListQuery {
    query.with_prefix(prefix).expect("a valid prefix")
}

/// The queries the tests run: every state filter, a kind, a prefix, both
/// orders.
fn queries() -> Vec<(&'static str, ListQuery)> {
    let q = ListQuery::new;
    let failed = |retry_allowed| StateFilter::Failed { retry_allowed };
    let mut cases = Vec::new();
    for order in [ListOrder::NewestFirst, ListOrder::OldestFirst] {
        let q = || q().with_order(order);
        cases.extend([
            ("everything", q()),
            (
                "processing",
                q().with_filter(StateFilter::Processing { stuck_only: false }),
            ),
            (
                "stuck",
                q().with_filter(StateFilter::Processing { stuck_only: true }),
            ),
            ("completed", q().with_filter(StateFilter::Completed)),
            ("failed", q().with_filter(failed(None))),
            ("failed, retry allowed", q().with_filter(failed(Some(true)))),
            ("failed for good", q().with_filter(failed(Some(false)))),
            ("a kind", q().with_kind(kind("video"))),
            ("a prefix", with_prefix(q(), "bulk|k3/")),
        ]);
    }
    cases
}

/// Queries that select under 1% of the records. For these the planner may
/// rightly prefer to read a small table whole and sort what matches over
/// walking the index through thousands of records that do not: their plan
/// is not checked, their answer is.
fn narrow_queries() -> Vec<(&'static str, ListQuery)> {
    [ListOrder::NewestFirst, ListOrder::OldestFirst]
        .into_iter()
        .map(|order| {
            (
                "completed audio under a prefix",
                with_prefix(ListQuery::new().with_order(order), "bulk|k2/")
                    .with_filter(StateFilter::Completed)
                    .with_kind(kind("audio")),
            )
        })
        .collect()
}

/// Whether `row` passes `query`'s filters, judged from the generator's
/// rules.
fn expected_to_match(query: &ListQuery, row: &Row) -> bool {
    let state = match query.filter() {
        StateFilter::Any => true,
        StateFilter::Processing { stuck_only } => {
            row.state == RecordState::Processing && (!stuck_only || row.stuck)
        }
        StateFilter::Completed => row.state == RecordState::Completed,
        StateFilter::Failed { retry_allowed } => {
            row.state == RecordState::Failed && retry_allowed.is_none_or(|r| r == row.retry)
        }
    };
    !row.expired
        && state
        && query.kind().is_none_or(|k| k.as_str() == row.kind)
        && row.key.starts_with(query.prefix())
}

/// Every listing statement, with and without a cursor, follows an index:
/// no plan reads the whole table, whatever the filter or order.
#[tokio::test]
async fn listings_follow_the_index_not_a_table_scan() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    assert_listings_follow_the_index(&filled_store().await).await;
}

/// The same through the transaction-mode pooler, where the statements are
/// sent with their values as literals.
#[tokio::test]
async fn listings_follow_the_index_through_the_pooler() {
    if !backend_available("PGBOUNCER_URL") {
        return;
    }
    assert_listings_follow_the_index(&filled_pooled_store().await).await;
}

async fn assert_listings_follow_the_index(store: &PgStore) {
    for (what, query) in queries() {
        let first = store.list(&query).await.expect("first page");
        let cursor = first
            .next
            .clone()
            .expect("a filled table has a second page");
        for (page, query) in [
            ("first page", query.clone()),
            ("next page", query.clone().with_cursor(Some(cursor))),
        ] {
            let plan = store.explain_listing(&query).await.expect("explain");
            assert!(
                !plan.contains("\"Seq Scan\""),
                "{what} ({:?}, {page}): the plan reads the whole table:\n{plan}",
                query.order()
            );
            assert!(
                plan.contains("onceflight_records_created_at_key"),
                "{what} ({:?}, {page}): the plan does not follow the listing index:\n{plan}",
                query.order()
            );
        }
    }
}

/// Pages of every query return exactly the records it selects, each once,
/// in the global `(created_at, key)` order (ties broken by key, byte by
/// byte), newest or oldest first; and `counts` agrees with the records.
#[tokio::test]
async fn pages_list_each_record_once_in_order_and_counts_agree() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    assert_pages_and_counts(&filled_store().await).await;
}

/// The same through the transaction-mode pooler.
#[tokio::test]
async fn pages_and_counts_through_the_pooler() {
    if !backend_available("PGBOUNCER_URL") {
        return;
    }
    assert_pages_and_counts(&filled_pooled_store().await).await;
}

async fn assert_pages_and_counts(store: &PgStore) {
    let rows: Vec<Row> = (1..=ROWS).map(row).collect();
    for (what, query) in queries().into_iter().chain(narrow_queries()) {
        let query = query.with_limit(500).expect("a valid limit");
        let mut expected: Vec<&Row> = rows
            .iter()
            .filter(|r| expected_to_match(&query, r))
            .collect();
        expected.sort_by(|a, b| (a.created, &a.key).cmp(&(b.created, &b.key)));
        if query.order() == ListOrder::NewestFirst {
            expected.reverse();
        }
        let pages = every_page(store, &query).await;
        let listed: Vec<&str> = pages.iter().flatten().map(|r| r.key.as_str()).collect();
        let expected: Vec<&str> = expected.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            listed.len(),
            expected.len(),
            "{what} ({:?}): how many records were listed",
            query.order()
        );
        assert!(
            listed == expected,
            "{what} ({:?}): the records listed, in order",
            query.order()
        );
        for record in pages.iter().flatten() {
            assert!(
                query.accepts(record),
                "{what}: the store's record {record:?} fails the query"
            );
            assert!(
                record.result.is_none(),
                "{what}: a listing carries no result"
            );
        }
    }

    let stats = store.counts("").await.expect("counts");
    let live: Vec<&Row> = rows.iter().filter(|r| !r.expired).collect();
    let count = |f: &dyn Fn(&Row) -> bool| live.iter().filter(|r| f(r)).count() as u64;
    let of = |state: RecordState| move |r: &Row| r.state == state;
    assert_eq!(
        (
            stats.states.processing,
            stats.states.completed,
            stats.states.failed
        ),
        (
            count(&of(RecordState::Processing)),
            count(&of(RecordState::Completed)),
            count(&of(RecordState::Failed))
        ),
        "by state: {stats:?}"
    );
    for name in ["image", "video", "audio"] {
        let counted = stats.kinds.get(&Kind::parse(name).expect("a valid kind"));
        let counted = counted.map(|c| (c.processing, c.completed, c.failed));
        let in_kind = |state: RecordState| count(&|r: &Row| r.kind == name && r.state == state);
        assert_eq!(
            counted,
            Some((
                in_kind(RecordState::Processing),
                in_kind(RecordState::Completed),
                in_kind(RecordState::Failed)
            )),
            "kind {name}: {stats:?}"
        );
    }
    assert_eq!(
        (stats.leases_live, stats.leases_expired),
        (
            count(&|r: &Row| r.state == RecordState::Processing && !r.stuck),
            count(&|r: &Row| r.state == RecordState::Processing && r.stuck)
        ),
        "leases: {stats:?}"
    );
    // The oldest live lease belongs to a record created about a day ago.
    let age = stats
        .oldest_live_lease_age
        .expect("live leases have an age");
    assert!(
        age > Duration::from_secs(23 * 3600) && age < Duration::from_secs(25 * 3600),
        "the oldest live lease's age: {age:?}"
    );
    let under = store.counts("bulk|k3/").await.expect("counts");
    assert_eq!(
        under.states.total(),
        count(&|r: &Row| r.key.starts_with("bulk|k3/")),
        "under a prefix: {under:?}"
    );
}

/// A prefix is text, not a pattern: `%`, `_`, quotes, backslashes and
/// non-ASCII characters match only themselves, in listings and counts.
#[tokio::test]
async fn prefixes_match_literally() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let store = common::store_with(&common::fresh_schema(), Duration::from_secs(3600)).await;
    let names = [
        "p%_'\\é/1",
        "p%_'\\é/2",
        "pX_'\\é/3",
        "p%a'\\é/4",
        "p%_'\\e/5",
        "p%_'/6",
    ];
    for name in names {
        let k = RequestKey::parse(name).expect("a valid key");
        let _ = common::acquired(
            store
                .claim_or_get(&k, &common::options(Duration::from_secs(60)))
                .await
                .expect("claim"),
        );
    }
    for (prefix, expected) in [
        ("p%_'\\é/", vec!["p%_'\\é/1", "p%_'\\é/2"]),
        (
            "p%",
            vec!["p%_'\\é/1", "p%_'\\é/2", "p%a'\\é/4", "p%_'\\e/5", "p%_'/6"],
        ),
        ("p_", vec![]),
        ("p%_'\\", vec!["p%_'\\é/1", "p%_'\\é/2", "p%_'\\e/5"]),
        ("é", vec![]),
    ] {
        let query = with_prefix(ListQuery::new().with_order(ListOrder::OldestFirst), prefix);
        let pages = every_page(&store, &query).await;
        let mut listed: Vec<&str> = pages.iter().flatten().map(|r| r.key.as_str()).collect();
        listed.sort_unstable();
        let mut expected = expected;
        expected.sort_unstable();
        assert_eq!(listed, expected, "the keys under {prefix:?}");
        let counted = store.counts(prefix).await.expect("counts");
        assert_eq!(
            counted.states.total(),
            expected.len() as u64,
            "the count under {prefix:?}"
        );
    }
}

/// A cursor whose instant no store could have written is refused as
/// invalid input, like any foreign cursor, before anything is sent.
#[tokio::test]
async fn a_cursor_out_of_any_records_range_is_invalid_input() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let store = common::store_with(&common::fresh_schema(), Duration::from_secs(3600)).await;
    let far = chrono::DateTime::from_timestamp(300_000_000_000, 0).expect("a chrono instant");
    let cursor = ListCursor::keyset(far, &RequestKey::parse("a").expect("a valid key"));
    let answer = store
        .list(&ListQuery::new().with_cursor(Some(cursor)))
        .await;
    assert!(
        matches!(
            answer,
            Err(onceflight_core::Error::InvalidInput {
                field: "cursor",
                ..
            })
        ),
        "expected InvalidInput on the cursor, got {answer:?}"
    );
}

/// Counts group in Postgres: the answer for many records is built from a
/// few rows, checked here against a map of what the listing returns.
#[tokio::test]
async fn counts_agree_with_the_listing() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let store = filled_store().await;
    let query = ListQuery::new().with_limit(500).expect("a valid limit");
    let mut by_kind: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    for record in every_page(&store, &query).await.iter().flatten() {
        let slot = match record.state {
            RecordState::Processing => 0,
            RecordState::Completed => 1,
            RecordState::Failed => 2,
        };
        by_kind.entry(record.kind.as_str().to_owned()).or_default()[slot] += 1;
    }
    let stats = store.counts("").await.expect("counts");
    let counted: BTreeMap<String, [u64; 3]> = stats
        .kinds
        .iter()
        .map(|(k, c)| (k.as_str().to_owned(), [c.processing, c.completed, c.failed]))
        .collect();
    assert_eq!(counted, by_kind, "counts by kind and state");
}

/// A namespaced key may be longer than a key parses (a namespace of 64
/// bytes in front of a key of 512): listings and counts read it back.
#[tokio::test]
async fn namespaced_keys_longer_than_a_key_are_listed() {
    if !backend_available("DATABASE_URL") {
        return;
    }
    let store = common::store_with(&common::fresh_schema(), Duration::from_secs(3600)).await;
    let long = RequestKey::parse("k".repeat(512)).expect("a valid key");
    let stored = RequestKey::namespaced(&"n".repeat(64), &long).expect("a namespaced key");
    let _ = common::acquired(
        store
            .claim_or_get(&stored, &common::options(Duration::from_secs(60)))
            .await
            .expect("claim"),
    );
    let listed: Vec<_> = every_page(&store, &ListQuery::new())
        .await
        .into_iter()
        .flatten()
        .map(|r| r.key)
        .collect();
    assert_eq!(listed, [stored], "the long key, listed");
    let counts = store.counts(&"n".repeat(64)).await.expect("counts");
    assert_eq!(counts.states.processing, 1, "counted: {counts:?}");
}

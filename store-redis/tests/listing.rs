//! Listing by `SCAN` with pages far smaller than a `SCAN` batch: every
//! record is listed, no page exceeds its limit, on the single server and on
//! the cluster (where every primary is scanned in turn).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use onceflight_core::testkit::every_page;
use onceflight_core::{
    Claim, ClaimOptions, Kind, ListOrder, ListQuery, RequestKey, RequestStore, StateFilter,
};
use onceflight_store_redis::RedisStore;
use onceflight_test_support::backend_available;
use onceflight_test_support::redis::Redis;

/// Records listed: a few hundred, so that one `SCAN` batch holds many more
/// than a page.
const RECORDS: usize = 300;

/// A store whose key prefix holds every character Redis's globs give a
/// meaning to, so that the scan's pattern must escape them.
async fn store_on(url: &str) -> RedisStore {
    let prefix = format!("{}[*?]\\:", common::fresh_prefix());
    common::store_on(url, &prefix, Duration::from_secs(600)).await
}

/// Claims `RECORDS` keys under `img|p*[` (glob characters again), completes
/// every third, and claims a few keys outside that prefix; returns the keys
/// under it.
async fn fill(store: &RedisStore) -> BTreeSet<String> {
    let options = ClaimOptions::new(Kind::parse("image").expect("valid kind"))
        .with_lease_ttl(Duration::from_secs(600))
        .expect("valid ttl");
    let mut keys = BTreeSet::new();
    for i in 0..RECORDS + 20 {
        let name = if i < RECORDS {
            format!("img|p*[{i:03}")
        } else {
            format!("img|q-{i:03}")
        };
        let key = RequestKey::parse(name.clone()).expect("valid key");
        let Claim::Acquired(lease) = store.claim_or_get(&key, &options).await.expect("claim")
        else {
            panic!("{name} was not acquired");
        };
        if i % 3 == 0 {
            store
                .complete(&key, lease.token, onceflight_core::Bytes::from_static(b"r"))
                .await
                .expect("complete");
        }
        if i < RECORDS {
            keys.insert(name);
        }
    }
    keys
}

/// Every key `query` lists, page by page (each page checked by
/// `every_page`: within the limit, in order of creation, matching, without
/// results; and here, ties of the creation instant in key order).
async fn listed(store: &RedisStore, query: &ListQuery) -> Vec<String> {
    let pages = every_page(store, query).await;
    for page in &pages {
        let ranks: Vec<_> = page
            .iter()
            .map(|r| (r.created_at, r.key.as_str()))
            .collect();
        let mut sorted = ranks.clone();
        sorted.sort();
        if query.order() == ListOrder::NewestFirst {
            sorted.reverse();
        }
        assert_eq!(ranks, sorted, "a page is in the query's order, ties by key");
    }
    pages
        .iter()
        .flatten()
        .map(|r| r.key.as_str().to_owned())
        .collect()
}

/// Pages of 1 to 3 records list every record under the prefix at least
/// once, and no page holds more than its limit.
async fn small_pages_list_every_record(store: &RedisStore) {
    let keys = fill(store).await;
    for limit in 1..=3 {
        for order in [ListOrder::OldestFirst, ListOrder::NewestFirst] {
            let query = ListQuery::new()
                .with_prefix("img|p*[")
                .expect("valid prefix")
                .with_order(order)
                .with_limit(limit)
                .expect("valid limit");
            let listed: BTreeSet<String> = listed(store, &query).await.into_iter().collect();
            assert_eq!(
                listed.len(),
                keys.len(),
                "limit {limit}, {order:?}: {} of {} records listed",
                listed.len(),
                keys.len()
            );
            assert_eq!(listed, keys, "limit {limit}, {order:?}: the keys listed");
        }
    }
    let completed = ListQuery::new()
        .with_filter(StateFilter::Completed)
        .with_limit(2)
        .expect("valid limit");
    let listed: BTreeSet<String> = listed(store, &completed).await.into_iter().collect();
    assert_eq!(
        listed.len(),
        (RECORDS + 20).div_ceil(3),
        "every completed record, in or out of the prefix"
    );
    let stats = store.counts("img|p*[").await.expect("counts");
    assert_eq!(
        (stats.states.total(), stats.states.completed),
        (RECORDS as u64, RECORDS.div_ceil(3) as u64),
        "counts under the prefix: {stats:?}"
    );
}

/// Keys of no store among the store's own, so many that one page's scan
/// budget does not cover them: listings then span many `SCAN` batches, and
/// some pages end on the budget rather than the limit.
const FILLER: usize = 10_000;

#[tokio::test]
async fn small_pages_list_every_record_on_one_server() {
    if !backend_available("REDIS_URL") {
        return;
    }
    let url = common::redis_url();
    let mut raw = common::raw(&url).await;
    let filler = common::fresh_prefix();
    on_each_key(
        &mut raw,
        "SET",
        (0..FILLER).map(|i| format!("{filler}{i}")),
        &["x", "EX", "600"],
    )
    .await;
    let store = store_on(&url).await;
    small_pages_list_every_record(&store).await;

    // Functions lost under the store (a restart without persistence):
    // listing loads them again, as every operation does.
    let () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .expect("FUNCTION FLUSH");
    let every = ListQuery::new().with_limit(500).expect("valid limit");
    let listed: BTreeSet<String> = listed(&store, &every).await.into_iter().collect();
    assert_eq!(
        listed.len(),
        RECORDS + 20,
        "every record, after FUNCTION FLUSH"
    );
    // A prefix nothing has: empty pages, each a bounded part of the scan,
    // until the scan is done.
    let nothing = ListQuery::new()
        .with_prefix("nothing|")
        .expect("valid prefix");
    let mut pages = 0;
    let mut cursor = None;
    loop {
        pages += 1;
        assert!(pages < 10_000, "the listing did not end");
        let page = store
            .list(&nothing.clone().with_cursor(cursor))
            .await
            .expect("list");
        assert!(page.records.is_empty(), "nothing matches: {page:?}");
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert!(
        pages > 1,
        "{FILLER} keys take more than one page's scan budget"
    );
}

#[tokio::test]
async fn small_pages_list_every_record_on_the_cluster() {
    if !backend_available("REDIS_CLUSTER_URLS") {
        return;
    }
    small_pages_list_every_record(&store_on(&common::cluster_urls()).await).await;
}

/// A page that stops in the middle of a `SCAN` batch comes back to that
/// batch; if the batch then reaches further (keys deleted, or the key table
/// shrunk, in between), the page takes it again from its start rather than
/// pass over keys it never read: every record is still listed.
#[tokio::test]
async fn a_batch_that_reaches_further_between_pages_is_taken_again() {
    if !backend_available("REDIS_URL") {
        return;
    }
    // A Redis of the test's own: the keys deleted must be the only change.
    let server = Redis::start().expect("a Redis of the test's own");
    let mut raw = common::raw(&server.url()).await;
    let junk = || (0..JUNK).map(|i| format!("junk:{i}"));
    on_each_key(&mut raw, "SET", junk(), &["x"]).await;
    let store = store_on(&server.url()).await;
    let keys = fill(&store).await;

    let query = ListQuery::new()
        .with_prefix("img|p*[")
        .expect("valid prefix")
        .with_limit(10)
        .expect("valid limit");
    let first = store.list(&query).await.expect("list");
    let mut listed: BTreeSet<String> = names(&first.records);
    let cursor = first.next.expect("more pages");
    let parts: Vec<&str> = cursor.as_str().split('.').collect();
    assert_eq!(
        (parts.len(), parts[2], parts[6]),
        (7, "0", "0"),
        "the first page stops inside the first batch: {cursor:?}"
    );

    // The first batch now reaches further: fewer keys fill it.
    on_each_key(&mut raw, "DEL", junk(), &[]).await;

    let second = store
        .list(&query.clone().with_cursor(Some(cursor)))
        .await
        .expect("list");
    listed.extend(names(&second.records));
    let mut next = second.next;
    assert!(
        next.as_ref()
            .is_some_and(|cursor| !cursor.as_str().ends_with(".0")),
        "the batch was taken again, and overflows again: {next:?}"
    );
    let mut pages = 2;
    while let Some(cursor) = next {
        pages += 1;
        assert!(pages < 1_000, "the listing did not end");
        let page = store
            .list(&query.clone().with_cursor(Some(cursor)))
            .await
            .expect("list");
        listed.extend(names(&page.records));
        next = page.next;
    }
    let missed: Vec<&String> = keys.difference(&listed).collect();
    assert!(missed.is_empty(), "records never listed: {missed:?}");
}

/// Keys of no store, written before the records and deleted after the
/// first page: enough that the first `SCAN` batch covers a small part of
/// the key space until they go.
const JUNK: usize = 4_000;

/// Runs `command <key> <args…>` on each of `keys`, in one pipeline.
async fn on_each_key(
    raw: &mut redis::aio::MultiplexedConnection,
    command: &str,
    keys: impl Iterator<Item = String>,
    args: &[&str],
) {
    let mut pipeline = redis::pipe();
    for key in keys {
        pipeline.cmd(command).arg(key).arg(args).ignore();
    }
    let () = pipeline
        .query_async(raw)
        .await
        .unwrap_or_else(|e| panic!("{command} on each key: {e}"));
}

fn names(records: &[onceflight_core::Record]) -> BTreeSet<String> {
    records.iter().map(|r| r.key.as_str().to_owned()).collect()
}

//! The operator's view: listing records by filter, page by page, and
//! counting them.
//!
//! These cases hold for every store: ordered ones (memory, Postgres) also
//! return each record once and in order across pages, which their own tests
//! check; stores that scan (Redis) order each page only.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::testkit::every_page;
use crate::{ListCursor, ListOrder, ListQuery, StateFilter};

/// The keys a listing returned, each once.
fn keys_of(pages: &[Vec<Record>]) -> BTreeSet<String> {
    pages
        .iter()
        .flatten()
        .map(|r| r.key.as_str().to_owned())
        .collect()
}

fn names(keys: &[&RequestKey]) -> BTreeSet<String> {
    keys.iter().map(|k| k.as_str().to_owned()).collect()
}

fn query() -> ListQuery {
    ListQuery::new()
}

/// Records in every state, under the prefix `image|ls-`, plus one of another
/// kind: (processing live, processing stuck, completed, failed retryable,
/// failed final, other kind).
struct Zoo {
    live: RequestKey,
    stuck: RequestKey,
    done: RequestKey,
    retry: RequestKey,
    final_: RequestKey,
    other: RequestKey,
}

async fn zoo<S: RequestStore>(store: &S, t: Timing) -> Zoo {
    let z = Zoo {
        live: key("ls-live"),
        stuck: key("ls-stuck"),
        done: key("ls-done"),
        retry: key("ls-retry"),
        final_: key("ls-final"),
        other: key("ls-video"),
    };
    let _ = acquired(claim(store, &z.live, &options(t, 40)).await);
    let stuck = acquired(claim(store, &z.stuck, &options(t, 40)).await);
    store.release(&z.stuck, stuck.token).await.expect("release");
    let done = acquired(claim(store, &z.done, &options(t, 40)).await);
    store
        .complete(&z.done, done.token, json("a result"))
        .await
        .expect("complete");
    let retry = acquired(claim(store, &z.retry, &options(t, 40)).await);
    let error = JobError::parse("flaky", true).expect("valid error");
    store
        .fail(&z.retry, retry.token, &error)
        .await
        .expect("fail");
    let final_ = acquired(claim(store, &z.final_, &options(t, 40)).await);
    let error = JobError::parse("bad prompt", false).expect("valid error");
    store
        .fail(&z.final_, final_.token, &error)
        .await
        .expect("fail");
    let video = ClaimOptions::new(Kind::parse("video").expect("valid kind"))
        .with_lease_ttl(t.units(40))
        .expect("valid ttl");
    let _ = acquired(claim(store, &z.other, &video).await);
    z
}

/// `list` keeps exactly the records its state, kind and prefix filters
/// select, and carries no results.
pub async fn list_filters_by_state_kind_and_prefix<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let z = zoo(&store, t).await;
    let outside = key("elsewhere");
    let _ = acquired(claim(&store, &outside, &options(t, 40)).await);
    let image = Some(Kind::parse("image").expect("valid kind"));
    let under = |q: ListQuery| q.with_prefix("image|ls-").expect("valid prefix");
    let cases: Vec<(&str, ListQuery, Vec<&RequestKey>)> = vec![
        (
            "every record under the prefix",
            under(query()),
            vec![&z.live, &z.stuck, &z.done, &z.retry, &z.final_, &z.other],
        ),
        (
            "every record",
            query(),
            vec![
                &z.live, &z.stuck, &z.done, &z.retry, &z.final_, &z.other, &outside,
            ],
        ),
        (
            "processing",
            under(query()).with_filter(StateFilter::Processing { stuck_only: false }),
            vec![&z.live, &z.stuck, &z.other],
        ),
        (
            "stuck",
            under(query()).with_filter(StateFilter::Processing { stuck_only: true }),
            vec![&z.stuck],
        ),
        (
            "completed",
            under(query()).with_filter(StateFilter::Completed),
            vec![&z.done],
        ),
        (
            "failed",
            under(query()).with_filter(StateFilter::Failed {
                retry_allowed: None,
            }),
            vec![&z.retry, &z.final_],
        ),
        (
            "failed, retry allowed",
            under(query()).with_filter(StateFilter::Failed {
                retry_allowed: Some(true),
            }),
            vec![&z.retry],
        ),
        (
            "failed for good",
            under(query()).with_filter(StateFilter::Failed {
                retry_allowed: Some(false),
            }),
            vec![&z.final_],
        ),
        (
            "processing images",
            under(query())
                .with_filter(StateFilter::Processing { stuck_only: false })
                .with_kind(image),
            vec![&z.live, &z.stuck],
        ),
        (
            "a prefix nothing has",
            query().with_prefix("nothing|").expect("valid prefix"),
            vec![],
        ),
    ];
    // `every_page` checks that each record listed passes the filters and
    // carries no result; here, that the listing holds every record it must.
    for (what, q, expected) in cases {
        let pages = every_page(&store, &q).await;
        assert_eq!(keys_of(&pages), names(&expected), "{what}: the keys listed");
    }
    let pages = every_page(&store, &under(query()).with_filter(StateFilter::Completed)).await;
    let done = &pages.iter().flatten().next().expect("the completed record");
    assert!(done.completed_at.is_some(), "a completed record says when");
    let pages = every_page(
        &store,
        &under(query()).with_filter(StateFilter::Failed {
            retry_allowed: Some(true),
        }),
    )
    .await;
    let failed = pages.iter().flatten().next().expect("the failed record");
    assert_eq!(
        failed
            .error
            .as_ref()
            .map(|e| (e.message(), e.is_retryable())),
        Some(("flaky", true)),
        "a failed record carries its error"
    );
}

/// Small pages followed by their cursors list every record, each page in
/// the asked order, newest or oldest first.
pub async fn list_pages_follow_the_cursor_in_order<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let keys: Vec<RequestKey> = (0..7).map(|i| key(&format!("page-{i}"))).collect();
    for k in &keys {
        let _ = acquired(claim(&store, k, &options(t, 40)).await);
    }
    let all = names(&keys.iter().collect::<Vec<_>>());
    for order in [ListOrder::OldestFirst, ListOrder::NewestFirst] {
        let q = query()
            .with_prefix("image|page-")
            .expect("valid prefix")
            .with_order(order)
            .with_limit(3)
            .expect("valid limit");
        // `every_page` checks each page's order.
        let pages = every_page(&store, &q).await;
        assert_eq!(keys_of(&pages), all, "{order:?}: every record listed");
    }
}

/// While records are created, completed and deleted between pages, every
/// record that matches from the first page to the last is listed, and
/// nothing listed fails the filter or was deleted before the listing began.
pub async fn list_pages_stay_complete_while_records_change<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let keys: Vec<RequestKey> = (0..12).map(|i| key(&format!("churn-{i:02}"))).collect();
    let mut leases = BTreeMap::new();
    for k in &keys {
        let lease = acquired(claim(&store, k, &options(t, 40)).await);
        leases.insert(k.as_str().to_owned(), lease.token);
    }
    let gone = key("churn-gone");
    let _ = acquired(claim(&store, &gone, &options(t, 40)).await);
    store.delete(&gone).await.expect("delete");
    let q = query()
        .with_filter(StateFilter::Processing { stuck_only: false })
        .with_prefix("image|churn-")
        .expect("valid prefix")
        .with_limit(2)
        .expect("valid limit");
    let mut listed = BTreeSet::new();
    let mut changed = BTreeSet::new();
    let mut cursor = None;
    for step in 0..1000usize {
        let page = store
            .list(&q.clone().with_cursor(cursor))
            .await
            .expect("list");
        for record in &page.records {
            assert!(q.accepts(record), "{record:?} does not match");
            listed.insert(record.key.as_str().to_owned());
        }
        // Between pages: complete one record, delete another, add a third.
        if let Some(k) = keys.get(step * 2 % keys.len()).filter(|_| step < 4) {
            let token = leases[k.as_str()];
            store.complete(k, token, json("v")).await.expect("complete");
            changed.insert(k.as_str().to_owned());
        }
        if let Some(k) = keys.get(11 - step).filter(|_| step < 3) {
            store.delete(k).await.expect("delete");
            changed.insert(k.as_str().to_owned());
        }
        if step < 3 {
            let fresh = key(&format!("churn-new-{step}"));
            let _ = acquired(claim(&store, &fresh, &options(t, 40)).await);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert!(
        !listed.contains(gone.as_str()),
        "a record deleted before the listing"
    );
    for k in &keys {
        if !changed.contains(k.as_str()) {
            assert!(
                listed.contains(k.as_str()),
                "{k} matched throughout and was not listed: {listed:?}"
            );
        }
    }
}

/// A cursor the store did not write is refused as invalid input.
pub async fn list_refuses_a_foreign_cursor<T: Setup>(setup: &T, _t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let cursor = ListCursor::parse("not-a-cursor").expect("printable");
    let answer = store.list(&query().with_cursor(Some(cursor))).await;
    assert!(
        matches!(
            answer,
            Err(Error::InvalidInput {
                field: "cursor",
                ..
            })
        ),
        "expected InvalidInput on the cursor, got {answer:?}"
    );
}

/// `stats` counts records by state and kind, live and run-out leases, and
/// only under the prefix it is given.
pub async fn stats_count_by_state_kind_and_prefix<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let empty = store.counts("").await.expect("stats");
    assert_eq!(empty.states.total(), 0, "a new store holds nothing");
    assert_eq!(empty.oldest_live_lease_age, None, "no lease, no age");
    zoo(&store, t).await;
    let outside = key("elsewhere");
    let lease = acquired(claim(&store, &outside, &options(t, 40)).await);
    store
        .complete(&outside, lease.token, json("v"))
        .await
        .expect("complete");

    let all = store.counts("").await.expect("stats");
    assert_eq!(
        (
            all.states.processing,
            all.states.completed,
            all.states.failed
        ),
        (3, 2, 2),
        "by state: {all:?}"
    );
    assert_eq!(
        (all.leases_live, all.leases_expired),
        (2, 1),
        "leases: {all:?}"
    );
    assert!(
        all.oldest_live_lease_age.is_some(),
        "live leases have an age"
    );
    let image = all
        .kinds
        .get(&Kind::parse("image").expect("valid kind"))
        .expect("images counted");
    assert_eq!(
        (image.processing, image.completed, image.failed),
        (2, 2, 2),
        "images: {all:?}"
    );
    let video = all
        .kinds
        .get(&Kind::parse("video").expect("valid kind"))
        .expect("videos counted");
    assert_eq!(video.total(), 1, "videos: {all:?}");

    let under = store.counts("image|ls-").await.expect("stats");
    assert_eq!(under.states.total(), 6, "under the prefix: {under:?}");
    assert_eq!(under.states.completed, 1, "under the prefix: {under:?}");
}

//! The memory store lists in order: each record exactly once across pages,
//! ties of the creation instant broken by key, records past retention left
//! out.

use std::time::Duration;

use onceflight_core::{
    Claim, ClaimOptions, Kind, ListOrder, ListQuery, RequestKey, RequestStore, StateFilter,
};
use onceflight_store_memory::{MemoryConfig, MemoryStore};

fn options() -> ClaimOptions {
    ClaimOptions::new(Kind::parse("image").expect("valid kind"))
}

async fn create(store: &MemoryStore, name: &str) -> RequestKey {
    let key = RequestKey::parse(name).expect("valid key");
    let claim = store.claim_or_get(&key, &options()).await.expect("claim");
    assert!(
        matches!(claim, Claim::Acquired(_)),
        "a fresh key: {claim:?}"
    );
    key
}

/// Every key, page by page, in the order the store listed them.
async fn listed(store: &MemoryStore, query: ListQuery) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(&query.clone().with_cursor(cursor))
            .await
            .expect("list");
        assert!(
            page.records.len() <= query.limit() as usize,
            "within the limit"
        );
        keys.extend(page.records.iter().map(|r| r.key.as_str().to_owned()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return keys,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn pages_list_each_record_once_in_order_with_ties_broken_by_key() {
    let store = MemoryStore::new(MemoryConfig::default().with_shards(4));
    let mut expected = Vec::new();
    // Three batches, each created at one instant of the paused clock.
    for batch in 0..3 {
        let mut names: Vec<String> = (0..9).map(|i| format!("b{batch}-{}", 8 - i)).collect();
        for name in &names {
            create(&store, name).await;
        }
        names.sort();
        expected.extend(names);
        tokio::time::advance(Duration::from_millis(5)).await;
    }
    for limit in [1, 4, 7, 27, 500] {
        let oldest = ListQuery::new()
            .with_order(ListOrder::OldestFirst)
            .with_limit(limit)
            .expect("valid limit");
        assert_eq!(
            listed(&store, oldest).await,
            expected,
            "oldest first, {limit} a page"
        );
        let newest = ListQuery::new().with_limit(limit).expect("valid limit");
        let mut reversed = expected.clone();
        reversed.reverse();
        assert_eq!(
            listed(&store, newest).await,
            reversed,
            "newest first, {limit} a page"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn listing_and_counts_leave_out_records_past_retention() {
    let store = MemoryStore::new(MemoryConfig::default().with_retention(Duration::from_secs(10)));
    let old = create(&store, "old").await;
    let lease = match store.claim_or_get(&old, &options()).await.expect("claim") {
        Claim::InFlight(f) => f.token,
        other => panic!("expected in flight, got {other:?}"),
    };
    store
        .complete(&old, lease, "1".into())
        .await
        .expect("complete");
    tokio::time::advance(Duration::from_secs(11)).await;
    create(&store, "new").await;
    assert!(store.holds_record(&old), "not swept yet");
    assert_eq!(
        listed(&store, ListQuery::new()).await,
        ["new"],
        "past retention: absent"
    );
    let completed = ListQuery::new().with_filter(StateFilter::Completed);
    assert!(
        listed(&store, completed).await.is_empty(),
        "no completed record within retention"
    );
    let counts = store.counts("").await.expect("counts");
    assert_eq!(counts.states.total(), 1, "only the live record: {counts:?}");
    assert_eq!(counts.leases_live, 1, "its lease is live: {counts:?}");
}

//! A record's lifetime (docs/protocol.md §4): delete, retention and sweep.

use super::*;

/// After `delete`, the key is gone and a new claim gets a strictly greater
/// token, attempt 1.
pub async fn delete_then_claim_gets_a_higher_token<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("delete");
    let first = acquired(claim(&store, &k, &options(t, 4)).await);
    store
        .complete(&k, first.token, json("old"))
        .await
        .expect("complete");
    assert!(
        store.delete(&k).await.expect("delete"),
        "a record was there"
    );
    assert!(store.get(&k).await.expect("get").is_none(), "gone");
    let second = acquired(claim(&store, &k, &options(t, 4)).await);
    assert!(second.token > first.token, "tokens are never reused");
    assert_eq!(second.attempt, 1, "a new record");
    assert_lease_lost(
        store.complete(&k, first.token, json("old")).await,
        "the deleted record's token",
    );
}

/// `delete`, `get` and `wait` on a key with no record: false, none, none.
pub async fn delete_and_get_of_a_missing_key<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("nothing");
    assert!(!store.delete(&k).await.expect("delete"), "nothing deleted");
    assert!(store.get(&k).await.expect("get").is_none(), "no record");
    assert!(
        store.wait(&k, t.units(1)).await.expect("wait").is_none(),
        "no record"
    );
}

/// A record past its retention is forgotten: `get` sees nothing and a claim
/// starts a new record with a greater token.
pub async fn retention_expiry_forgets_the_record<T: Setup>(setup: &T, t: Timing) {
    let store = setup
        .store(SuiteConfig {
            retention: t.units(2),
        })
        .await;
    let k = key("retention");
    let first = acquired(claim(&store, &k, &options(t, 4)).await);
    let done = store
        .complete(&k, first.token, json("v"))
        .await
        .expect("complete");
    let expires = done.expires_at.expect("a retention instant");
    let completed = done.completed_at.expect("completed_at");
    assert!(
        t.about(
            (expires - completed).to_std().unwrap_or_default(),
            t.units(2)
        ),
        "expires_at = completed_at + retention"
    );
    assert!(store.get(&k).await.expect("get").is_some(), "kept for now");
    t.sleep(3).await;
    assert!(
        store.get(&k).await.expect("get").is_none(),
        "forgotten after retention"
    );
    let second = acquired(claim(&store, &k, &options(t, 4)).await);
    assert_eq!(second.attempt, 1, "a new record");
    assert!(second.token > first.token, "a greater token");
}

/// `sweep` deletes records past retention from storage, counting them, and
/// keeps the others; storage that forgets them by itself
/// ([`Expiry::ByStorage`]) leaves it nothing to count, and a store whose
/// sweeping happens elsewhere ([`Expiry::SweptElsewhere`]) removes nothing.
pub async fn sweep_removes_only_expired_records<T: Setup + RawStorage>(setup: &T, t: Timing) {
    let store = setup
        .store(SuiteConfig {
            retention: t.units(4),
        })
        .await;
    let old = key("sweep-old");
    let young = key("sweep-young");
    let live = key("sweep-live");
    let lease = acquired(claim(&store, &old, &options(t, 4)).await);
    store
        .complete(&old, lease.token, json("old"))
        .await
        .expect("complete old");
    t.sleep(2).await;
    let lease = acquired(claim(&store, &young, &options(t, 4)).await);
    store
        .complete(&young, lease.token, json("young"))
        .await
        .expect("complete young");
    let _ = acquired(claim(&store, &live, &options(t, 10)).await);
    t.sleep(3).await;
    assert!(
        store.get(&old).await.expect("get").is_none(),
        "old is past retention"
    );
    // Whether storage holds `old` before the sweep, what the sweep counts,
    // and whether storage holds `old` after it.
    let (held_before, swept_count, held_after) = match setup.expiry() {
        Expiry::Swept => (true, 1, false),
        Expiry::ByStorage => (false, 0, false),
        Expiry::SweptElsewhere => (true, 0, true),
    };
    assert_eq!(
        setup.raw_record_exists(&store, &old).await,
        held_before,
        "whether storage holds the record past retention before the sweep ({:?})",
        setup.expiry()
    );
    let swept = store.sweep().await.expect("sweep");
    assert_eq!(
        swept,
        swept_count,
        "sweep counts the records it removed ({:?})",
        setup.expiry()
    );
    assert_eq!(
        setup.raw_record_exists(&store, &old).await,
        held_after,
        "whether storage holds the record past retention after the sweep ({:?})",
        setup.expiry()
    );
    for kept in [&young, &live] {
        assert!(
            setup.raw_record_exists(&store, kept).await,
            "{kept} is still in storage"
        );
    }
    assert_eq!(
        record(&store, &young).await.result,
        Some(json("young")),
        "young is kept"
    );
    assert!(!record(&store, &live).await.lease_expired(), "live is kept");
    assert_eq!(
        store.sweep().await.expect("second sweep"),
        0,
        "nothing is left to sweep"
    );
}

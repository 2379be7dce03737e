//! The claim decision (docs/protocol.md §3): fresh keys, live and expired
//! leases, and kinds or fingerprints that differ.

use super::*;

/// A claim on a key with no record is `Acquired`: attempt 1, no takeover, a
/// full lease, and a `processing` record that shows the claim's values.
pub async fn fresh_claim_is_acquired<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("fresh");
    let o = options(t, 4)
        .with_fingerprint(Fingerprint::parse("sha256:abc").unwrap())
        .with_owner(Owner::parse("worker-1").unwrap());
    let lease = acquired(claim(&store, &k, &o).await);
    assert_eq!(lease.key, k, "lease key");
    assert_eq!(lease.attempt, 1, "first lease is attempt 1");
    assert!(!lease.takeover, "a fresh claim is not a takeover");
    assert!(
        lease.token.get() >= 1 && lease.token.get() <= MAX_TOKEN,
        "token in range"
    );
    assert_eq!(lease.ttl, t.units(4), "lease ttl");
    assert!(
        t.about(lease.remaining, t.units(4)),
        "remaining {:?} ≈ ttl",
        lease.remaining
    );

    let r = record(&store, &k).await;
    assert_eq!(r.state, RecordState::Processing, "state");
    assert_eq!(r.token, lease.token, "record token");
    assert_eq!(r.attempt, 1, "record attempt");
    assert_eq!(r.kind.as_str(), "image", "kind");
    assert_eq!(
        r.fingerprint.as_ref().map(|f| f.as_str()),
        Some("sha256:abc")
    );
    assert_eq!(r.owner.as_ref().map(|o| o.as_str()), Some("worker-1"));
    assert_eq!(r.lease_expires_at, Some(lease.expires_at), "lease end");
    assert!(!r.lease_expired(), "lease is live");
    assert!(
        r.result.is_none() && r.error.is_none(),
        "no result, no error"
    );
    assert!(r.created_at <= r.updated_at, "created_at <= updated_at");
    assert!(
        r.expires_at.is_some_and(|e| e >= lease.expires_at),
        "retention ends after the lease"
    );
}

/// A claim while another lease is live is `InFlight` with the holder's token,
/// owner and attempt, and the time left on its lease.
pub async fn live_lease_is_in_flight<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("inflight");
    let first = options(t, 4).with_owner(Owner::parse("worker-a").unwrap());
    let lease = acquired(claim(&store, &k, &first).await);
    t.sleep(1).await;
    let second = options(t, 4).with_owner(Owner::parse("worker-b").unwrap());
    match claim(&store, &k, &second).await {
        Claim::InFlight(f) => {
            assert_eq!(f.token, lease.token, "holder's token");
            assert_eq!(f.attempt, 1, "holder's attempt");
            assert_eq!(f.owner.as_ref().map(|o| o.as_str()), Some("worker-a"));
            assert_eq!(f.lease_expires_at, lease.expires_at, "holder's lease end");
            assert!(
                t.about(f.remaining, t.units(3)),
                "remaining {:?} ≈ 3 units",
                f.remaining
            );
        }
        other => panic!("expected InFlight, got {other:?}"),
    }
    assert_eq!(
        record(&store, &k).await.token,
        lease.token,
        "nothing changed"
    );
}

/// A claim after the lease expired takes over: a greater token, attempt + 1,
/// `takeover = true`.
pub async fn expired_lease_is_taken_over<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("takeover");
    let first = acquired(claim(&store, &k, &options(t, 2)).await);
    t.sleep(3).await;
    let second = acquired(claim(&store, &k, &options(t, 4)).await);
    assert!(second.takeover, "takeover flag");
    assert!(second.token > first.token, "token strictly increases");
    assert_eq!(second.attempt, 2, "attempt + 1");
    let r = record(&store, &k).await;
    assert_eq!(r.token, second.token, "record holds the new token");
    assert!(!r.lease_expired(), "the new lease is live");
}

/// A claim whose kind differs from the record's is `FingerprintMismatch`, on a
/// live or a completed record, and changes nothing.
pub async fn kind_mismatch_is_refused_and_changes_nothing<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("kind");
    let lease = acquired(claim(&store, &k, &options(t, 4)).await);
    let video = ClaimOptions::new(Kind::parse("video").unwrap());
    let before = record(&store, &k).await;
    let refused = store.claim_or_get(&k, &video).await;
    assert!(
        matches!(refused, Err(Error::FingerprintMismatch { .. })),
        "expected FingerprintMismatch, got {refused:?}"
    );
    assert_eq!(
        snapshot(&record(&store, &k).await),
        snapshot(&before),
        "unchanged"
    );
    store
        .complete(&k, lease.token, json("x"))
        .await
        .expect("complete");
    let refused = store.claim_or_get(&k, &video).await;
    assert!(
        matches!(refused, Err(Error::FingerprintMismatch { .. })),
        "also on a completed record, got {refused:?}"
    );
}

/// A claim whose fingerprint differs from the record's is
/// `FingerprintMismatch` and changes nothing; a fingerprint absent on either
/// side is not a mismatch.
pub async fn fingerprint_mismatch_is_refused_and_changes_nothing<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("fingerprint");
    let a = options(t, 4).with_fingerprint(Fingerprint::parse("fp-a").unwrap());
    let b = options(t, 4).with_fingerprint(Fingerprint::parse("fp-b").unwrap());
    let lease = acquired(claim(&store, &k, &a).await);
    let before = record(&store, &k).await;
    let refused = store.claim_or_get(&k, &b).await;
    assert!(
        matches!(refused, Err(Error::FingerprintMismatch { .. })),
        "expected FingerprintMismatch, got {refused:?}"
    );
    assert_eq!(
        snapshot(&record(&store, &k).await),
        snapshot(&before),
        "unchanged"
    );
    match claim(&store, &k, &options(t, 4)).await {
        Claim::InFlight(f) => assert_eq!(f.token, lease.token),
        other => panic!("a claim without fingerprint is no mismatch, got {other:?}"),
    }

    let bare = key("fingerprint-bare");
    let _ = acquired(claim(&store, &bare, &options(t, 4)).await);
    assert!(
        matches!(claim(&store, &bare, &a).await, Claim::InFlight(_)),
        "a record without fingerprint accepts any"
    );
}

//! Renewals (docs/protocol.md §4): extending a lease, past expiry, after a
//! takeover, and out-of-range times to live.

use super::*;

/// `renew` moves the lease's end to now + ttl, by default the lease's own.
pub async fn renew_extends_a_live_lease<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("renew");
    let lease = acquired(claim(&store, &k, &options(t, 4)).await);
    t.sleep(3).await;
    let renewed = store.renew(&k, lease.token, None).await.expect("renew");
    assert!(
        t.about(renewed.remaining, t.units(4)),
        "renewed for the lease's own ttl, {:?} left",
        renewed.remaining
    );
    assert!(renewed.expires_at > lease.expires_at, "the end moved later");
    t.sleep(2).await;
    match claim(&store, &k, &options(t, 4)).await {
        Claim::InFlight(f) => assert_eq!(f.token, lease.token, "still the holder"),
        other => panic!("a renewed lease must still be in flight, got {other:?}"),
    }
    let longer = store
        .renew(&k, lease.token, Some(t.units(8)))
        .await
        .expect("renew with a ttl");
    assert!(
        t.about(longer.remaining, t.units(8)),
        "explicit ttl, {:?} left",
        longer.remaining
    );
}

/// `renew` past expiry succeeds while nobody took over.
pub async fn renew_after_expiry_without_takeover_succeeds<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("late-renew");
    let lease = acquired(claim(&store, &k, &options(t, 2)).await);
    t.sleep(3).await;
    let renewed = store
        .renew(&k, lease.token, None)
        .await
        .expect("a late renew with the current token succeeds");
    assert!(
        t.about(renewed.remaining, t.units(2)),
        "{:?} left",
        renewed.remaining
    );
    match claim(&store, &k, &options(t, 2)).await {
        Claim::InFlight(f) => assert_eq!(f.token, lease.token, "holder kept the key"),
        other => panic!("expected InFlight after the late renew, got {other:?}"),
    }
}

/// `renew` with a token that was taken over is `LeaseLost` and changes
/// nothing.
pub async fn renew_after_takeover_is_lease_lost<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("renew-lost");
    let old = acquired(claim(&store, &k, &options(t, 2)).await);
    t.sleep(3).await;
    let new = acquired(claim(&store, &k, &options(t, 4)).await);
    let before = record(&store, &k).await;
    assert_lease_lost(store.renew(&k, old.token, None).await, "renew(stale)");
    let after = record(&store, &k).await;
    assert_eq!(snapshot(&after), snapshot(&before), "record unchanged");
    assert_eq!(after.token, new.token, "the new holder keeps the key");
}

/// `renew` with a ttl outside 1 ms ..= 24 h is `InvalidInput` and changes
/// nothing.
pub async fn renew_refuses_an_out_of_range_ttl<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("renew-ttl");
    let lease = acquired(claim(&store, &k, &options(t, 4)).await);
    let before = record(&store, &k).await;
    for ttl in [Duration::ZERO, MAX_LEASE_TTL + Duration::from_millis(1)] {
        let result = store.renew(&k, lease.token, Some(ttl)).await;
        assert!(
            matches!(
                result,
                Err(Error::InvalidInput {
                    field: "lease_ttl",
                    ..
                })
            ),
            "renew ttl {ttl:?}: expected InvalidInput(lease_ttl), got {result:?}"
        );
    }
    assert_eq!(
        snapshot(&record(&store, &k).await),
        snapshot(&before),
        "unchanged"
    );
}

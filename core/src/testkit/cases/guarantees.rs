//! The guarantees under concurrency and across the lifecycle
//! (docs/protocol.md §5).

use super::*;

/// §5.5: of N concurrent claims on a fresh key exactly one is `Acquired`; the
/// others see its token in flight.
pub async fn concurrent_fresh_claims_acquire_once<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let k = key("herd");
    let claims: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(&store);
            let k = k.clone();
            let o = options(t, 20).with_owner(Owner::parse(format!("w{i}")).unwrap());
            tokio::spawn(async move { store.claim_or_get(&k, &o).await })
        })
        .collect();
    let mut acquired = Vec::new();
    let mut in_flight = Vec::new();
    for handle in claims {
        match handle.await.expect("claim task").expect("claim") {
            Claim::Acquired(lease) => acquired.push(lease.token),
            Claim::InFlight(f) => in_flight.push(f.token),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(acquired.len(), 1, "exactly one Acquired, got {acquired:?}");
    assert!(
        in_flight.iter().all(|&t| t == acquired[0]),
        "every other claim sees the winner's token"
    );
}

/// §5.2: every token granted for a key is greater than all before it, through
/// takeover, release, retry, completion and delete.
pub async fn tokens_strictly_increase_across_the_lifecycle<T: Setup>(setup: &T, t: Timing) {
    let store = setup.store(SuiteConfig::default()).await;
    let k = key("tokens");
    let o = options(t, 2).with_max_attempts(10).unwrap();
    let mut tokens = Vec::new();
    let lease = acquired(claim(&store, &k, &o).await);
    tokens.push(lease.token);
    t.sleep(3).await;
    let lease = acquired(claim(&store, &k, &o).await);
    tokens.push(lease.token);
    store.release(&k, lease.token).await.expect("release");
    let lease = acquired(claim(&store, &k, &o).await);
    tokens.push(lease.token);
    store
        .fail(&k, lease.token, &JobError::retryable("again"))
        .await
        .expect("fail");
    tokio::time::sleep(DEFAULT_RETRY_BACKOFF + t.slack).await;
    let lease = acquired(claim(&store, &k, &o).await);
    tokens.push(lease.token);
    store
        .complete(&k, lease.token, json("v"))
        .await
        .expect("complete");
    store.delete(&k).await.expect("delete");
    let lease = acquired(claim(&store, &k, &o).await);
    tokens.push(lease.token);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens strictly increase: {tokens:?}"
    );
}

/// §5.4: once completed, every reader — claims, gets and waits, concurrent —
/// sees the same result.
pub async fn completed_result_is_the_same_for_every_reader<T: Setup>(setup: &T, t: Timing) {
    let store = Arc::new(setup.store(SuiteConfig::default()).await);
    let k = key("readers");
    let lease = acquired(claim(&*store, &k, &options(t, 4)).await);
    let result = json("the one result");
    store
        .complete(&k, lease.token, result.clone())
        .await
        .expect("complete");
    let readers: Vec<_> = (0..48)
        .map(|i| {
            let store = Arc::clone(&store);
            let k = k.clone();
            tokio::spawn(async move {
                match i % 3 {
                    0 => match store.claim_or_get(&k, &options(t, 4)).await.expect("claim") {
                        Claim::Completed(c) => Some(c.result),
                        _ => None,
                    },
                    1 => store.get(&k).await.expect("get").and_then(|r| r.result),
                    _ => store
                        .wait(&k, t.units(1))
                        .await
                        .expect("wait")
                        .and_then(|r| r.result),
                }
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(
            reader.await.expect("reader"),
            Some(result.clone()),
            "every reader sees the result"
        );
    }
}

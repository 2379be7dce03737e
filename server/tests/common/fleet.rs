//! Scenarios of a fleet: two `onceflight` servers on one store (a Postgres
//! schema, a Redis prefix), whatever the store.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::task::JoinSet;

use super::{Server, call, claim_and_complete, client};

/// Claims in the herd.
const HERD: usize = 40;

/// A herd of concurrent claims for one fresh key, spread over servers `a`
/// and `b`, grants exactly one lease; everyone else is told it is in flight
/// under that lease's token.
pub(crate) async fn a_herd_over_two_servers_gets_one_lease(a: &Server, b: &Server) {
    let urls = [
        a.url("/v1/requests/image%7Cherd/claim"),
        b.url("/v1/requests/image%7Cherd/claim"),
    ];

    let http = client();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(HERD));
    let mut herd = JoinSet::new();
    for i in 0..HERD {
        let (http, url, start) = (http.clone(), urls[i % 2].clone(), start.clone());
        herd.spawn(async move {
            start.wait().await;
            let body = json!({"kind": "image", "owner": format!("w{i}"), "lease_ms": 60000});
            (i, call(&http, Method::POST, &url, Some(body), None).await)
        });
    }
    let replies = herd.join_all().await;

    let acquired: Vec<_> = replies
        .iter()
        .filter(|(_, r)| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(
        acquired.len(),
        1,
        "exactly one claim of {HERD} acquires: {acquired:?}"
    );
    let (winner, lease) = acquired[0];
    assert_eq!(lease.json["state"], "acquired", "{:?}", lease);
    let token = lease.token();
    for (i, reply) in &replies {
        if i == winner {
            continue;
        }
        let body = reply.expect(StatusCode::ACCEPTED);
        assert_eq!(body["state"], "in_flight", "claim {i}: {body}");
        assert_eq!(body["token"], token, "claim {i}: {body}");
        assert_eq!(body["owner"], format!("w{winner}"), "claim {i}: {body}");
    }
}

/// A long-poll held on `a` is answered as soon as the job completes through
/// `b`: the wake-up crosses instances through the store, it is not the
/// store's fallback re-read (every 5 s) nor the 20 s timeout.
pub(crate) async fn a_long_poll_on_one_server_wakes_on_completion_through_the_other(
    a: &Server,
    b: &Server,
) {
    let http = client();
    let key = "image%7Cwake";

    let claim = call(
        &http,
        Method::POST,
        &b.url(&format!("/v1/requests/{key}/claim")),
        Some(json!({"kind": "image", "owner": "worker-b", "lease_ms": 60000})),
        None,
    )
    .await;
    claim.expect(StatusCode::CREATED);
    let token = claim.token();

    let url = a.url(&format!("/v1/requests/{key}?wait_ms=20000"));
    let asked = Instant::now();
    let held = tokio::spawn(async move {
        let reply = call(&client(), Method::GET, &url, None, None).await;
        (reply, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !held.is_finished(),
        "the long-poll on A is held while B's lease is live"
    );

    let completed_at = Instant::now();
    call(
        &http,
        Method::POST,
        &b.url(&format!("/v1/requests/{key}/complete")),
        Some(json!({"token": token, "result": {"url": "https://cdn/wake.png"}})),
        None,
    )
    .await
    .expect(StatusCode::OK);

    let (reply, answered) = tokio::time::timeout(Duration::from_secs(25), held)
        .await
        .expect("the held long-poll is answered")
        .expect("the long-poll task");
    let body = reply.expect(StatusCode::OK);
    assert_eq!(body["state"], "completed", "{body}");
    assert_eq!(
        body["result"],
        json!({"url": "https://cdn/wake.png"}),
        "{body}"
    );
    let total = answered.saturating_duration_since(asked);
    let after_complete = answered.saturating_duration_since(completed_at);
    assert!(
        total < Duration::from_secs(5),
        "answered {total:?} after it was asked: not woken across instances"
    );
    assert!(
        after_complete < Duration::from_secs(2),
        "answered {after_complete:?} after B's complete: not woken by a notification"
    );
}

/// The staleness bound the fleet's hit caches are started with
/// (`--hit-cache-max-stale-ms`).
pub(crate) const HIT_CACHE_MAX_STALE: Duration = Duration::from_millis(300);

/// The flag that starts a server with a hit cache of [`HIT_CACHE_MAX_STALE`].
pub(crate) const HIT_CACHE_FLAGS: [&str; 2] = ["--hit-cache-max-stale-ms", "300"];

/// One of `server`'s Prometheus counters (0 when absent).
async fn counter(server: &Server, name: &str) -> f64 {
    let response = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    let text = response.text().await.expect("the metrics' text");
    text.lines()
        .find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            (metric == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .unwrap_or(0.0)
}

/// Servers `a` and `b` run with hit caches ([`HIT_CACHE_FLAGS`]): a result
/// completed through `a` is served by `b` from memory (its metrics count
/// the hit); deleted through `a`, it is never served by `b` once the bound
/// has passed since the delete was answered, and `b` counts the
/// invalidation.
pub(crate) async fn a_delete_on_one_server_reaches_the_hit_cache_of_the_other(
    a: &Server,
    b: &Server,
) {
    let http = client();
    let key = "image%7Ccached";
    let claim_at = |server: &Server| server.url(&format!("/v1/requests/{key}/claim"));
    claim_and_complete(
        &http,
        a,
        key,
        json!({"kind": "image"}),
        &json!({"url": "https://cdn/cached.png"}),
    )
    .await;

    // B serves the result from memory once its store's channel confirmed.
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        call(
            &http,
            Method::POST,
            &claim_at(b),
            Some(json!({"kind": "image"})),
            None,
        )
        .await
        .expect(StatusCode::OK);
        if counter(b, "onceflight_hit_cache_hits_total").await > 0.0 {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "B never served the result from memory"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let deletion = call(
        &http,
        Method::DELETE,
        &a.url(&format!("/v1/requests/{key}")),
        None,
        None,
    )
    .await;
    assert_eq!(deletion.status, StatusCode::NO_CONTENT, "{deletion:?}");
    let deleted = Instant::now();
    loop {
        let reply = call(
            &http,
            Method::POST,
            &claim_at(b),
            Some(json!({"kind": "image"})),
            None,
        )
        .await;
        let elapsed = deleted.elapsed();
        if reply.status == StatusCode::CREATED {
            break;
        }
        reply.expect(StatusCode::OK);
        assert!(
            elapsed <= HIT_CACHE_MAX_STALE,
            "B served a result deleted through A {elapsed:?} ago, past its bound of \
             {HIT_CACHE_MAX_STALE:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        counter(b, "onceflight_hit_cache_invalidations_total").await >= 1.0,
        "B counts the deletion it heard of"
    );
}

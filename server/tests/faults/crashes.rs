//! The store's own process crashed or restarted: PostgreSQL stopped with
//! `pg_ctl stop -m immediate`, Redis killed with and without an append-only
//! file, and a Redis out of memory.

use onceflight_test_support::unique_name;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{call, client};
use crate::{
    Store, claim_body, expect_outage, expect_result_kept, expect_resumed, prepare, recovered, serve,
};

/// PostgreSQL crashes (`pg_ctl stop -m immediate`) and starts again: 503s
/// meanwhile, every acknowledged result kept, service resumed by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_and_restart_keeps_results_and_the_service_resumes() {
    let Some(cluster) = crate::common::own_postgres("postgres_crash_and_restart") else {
        return;
    };
    let url = cluster.url();
    let server = serve(Store::Postgres(&url)).await;
    let before = prepare(&server).await;
    cluster.crash().expect("crash PostgreSQL");
    expect_outage(&server, &before).await;
    cluster.start_again().expect("start PostgreSQL again");
    expect_result_kept(&server, &before).await;
    // The held lease survived too: its holder can still heartbeat.
    let client = client();
    call(
        &client,
        Method::POST,
        &server.url(&format!("/v1/requests/{}/heartbeat", before.held)),
        Some(json!({"token": before.held_token})),
        None,
    )
    .await
    .expect(StatusCode::OK);
    expect_resumed(&server).await;
}

/// Redis with an append-only file (fsync on every write) is killed and
/// restarted: 503s meanwhile, every acknowledged result kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_append_only_file_keeps_results() {
    let Some(mut redis) = crate::common::own_redis("redis_restart_with_aof", true) else {
        return;
    };
    let url = redis.url();
    let server = serve(Store::Redis(&url)).await;
    let before = prepare(&server).await;
    redis.crash();
    expect_outage(&server, &before).await;
    redis.start_again().expect("start Redis again");
    expect_result_kept(&server, &before).await;
    expect_resumed(&server).await;
}

/// A full Redis (`maxmemory` reached, `noeviction`): a new claim is answered
/// 503 `store_unavailable` with `Retry-After` and writes nothing, while work
/// already granted can still be completed, failed, released and deleted —
/// never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_redis_refuses_new_claims_and_finishes_granted_work() {
    let Some(redis) = crate::common::own_redis("redis_out_of_memory", false) else {
        return;
    };
    let url = redis.url();
    let server = serve(Store::Redis(&url)).await;
    let client = client();
    let mut granted = Vec::new();
    for _ in 0..4 {
        let key = unique_name("granted");
        let token = call(
            &client,
            Method::POST,
            &server.url(&format!("/v1/requests/{key}/claim")),
            Some(claim_body(60_000)),
            None,
        )
        .await
        .expect(StatusCode::CREATED)["token"]
            .as_u64()
            .expect("token");
        granted.push((key, token));
    }
    assert_eq!(
        redis
            .command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
            .expect("a Redis command")
            .trim_end(),
        "+OK"
    );
    // Far below what Redis already uses: every write Redis checks is refused.
    assert_eq!(
        redis
            .command(&["CONFIG", "SET", "maxmemory", "1"])
            .expect("a Redis command")
            .trim_end(),
        "+OK"
    );

    let fresh = unique_name("fresh");
    let refused = client
        .post(server.url(&format!("/v1/requests/{fresh}/claim")))
        .json(&claim_body(60_000))
        .send()
        .await
        .expect("claim");
    assert_eq!(
        refused.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a full store refuses new work"
    );
    assert!(
        refused.headers().contains_key("retry-after"),
        "with Retry-After"
    );
    let body: Value = refused.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");

    let finish = [
        ("complete", json!({"result": {"kept": true}})),
        ("fail", json!({"message": "gave up"})),
        ("release", json!({})),
    ];
    for ((key, token), (route, extra)) in granted.iter().zip(finish) {
        let mut body = extra;
        body["token"] = json!(token);
        call(
            &client,
            Method::POST,
            &server.url(&format!("/v1/requests/{key}/{route}")),
            Some(body),
            None,
        )
        .await
        .expect(StatusCode::OK);
    }
    let (deleted, _) = &granted[3];
    let answer = client
        .delete(server.url(&format!("/v1/requests/{deleted}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(
        answer.status(),
        StatusCode::NO_CONTENT,
        "a delete frees memory, so it is allowed"
    );

    assert_eq!(
        redis
            .command(&["CONFIG", "SET", "maxmemory", "0"])
            .expect("a Redis command")
            .trim_end(),
        "+OK"
    );
    let after = call(
        &client,
        Method::GET,
        &server.url(&format!("/v1/requests/{fresh}")),
        None,
        None,
    )
    .await;
    after.expect_error(StatusCode::NOT_FOUND, "not_found");
}

/// Redis without persistence is killed and restarted: 503s meanwhile; then
/// every record is gone (as the README states), and a new claim's token is
/// still greater than every token granted before the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_without_persistence_forgets_records_but_tokens_still_increase() {
    let Some(mut redis) = crate::common::own_redis("redis_restart_without_aof", false) else {
        return;
    };
    let url = redis.url();
    let server = serve(Store::Redis(&url)).await;
    let before = prepare(&server).await;
    redis.crash();
    expect_outage(&server, &before).await;
    redis.start_again().expect("start Redis again");
    let answer = recovered(&server, &format!("/v1/requests/{}", before.done)).await;
    assert_eq!(
        answer.status,
        StatusCode::NOT_FOUND,
        "without persistence a restarted Redis has forgotten the result: {}",
        answer.json
    );
    let client = client();
    let token = call(
        &client,
        Method::POST,
        &server.url(&format!("/v1/requests/{}/claim", before.held)),
        Some(claim_body(30_000)),
        None,
    )
    .await;
    assert_eq!(
        token.status,
        StatusCode::CREATED,
        "the forgotten key is claimable: {}",
        token.json
    );
    assert!(
        token.token() > before.held_token,
        "a token granted after the restart ({}) is greater than the one granted before ({}): \
         §5.2 holds across the loss",
        token.token(),
        before.held_token
    );
    // The old holder's late write is refused: fencing holds across the loss.
    call(
        &client,
        Method::POST,
        &server.url(&format!("/v1/requests/{}/complete", before.held)),
        Some(json!({"token": before.held_token, "result": "late"})),
        None,
    )
    .await
    .expect_error(StatusCode::CONFLICT, "lease_lost");
    expect_resumed(&server).await;
}

//! The path between server and store frozen or cut by a TCP proxy.

use onceflight_test_support::backend_url;

use crate::common::Proxy;
use crate::{Store, expect_outage, expect_result_kept, expect_resumed, prepare, serve};

/// How the proxy breaks the path.
#[derive(Clone, Copy)]
enum Break {
    /// Every byte held; connections stay open.
    Freeze,
    /// Every connection reset, new ones refused.
    Cut,
}

/// A proxy between a served store and its server breaks the path, then
/// heals it.
async fn broken_path(store_url: &str, default_port: u16, redis: bool, how: Break) {
    let (proxy, url) = Proxy::in_front_of(store_url, default_port).await;
    let server = serve(if redis {
        Store::Redis(&url)
    } else {
        Store::Postgres(&url)
    })
    .await;
    let before = prepare(&server).await;
    match how {
        Break::Freeze => proxy.freeze(),
        Break::Cut => proxy.cut(),
    }
    expect_outage(&server, &before).await;
    proxy.heal();
    expect_result_kept(&server, &before).await;
    expect_resumed(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_frozen_path_answers_503_within_the_timeout_and_recovers() {
    let Some(url) = backend_url("DATABASE_URL") else {
        return;
    };
    broken_path(&url, 5432, false, Break::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_connections_answer_503_and_recover() {
    let Some(url) = backend_url("DATABASE_URL") else {
        return;
    };
    broken_path(&url, 5432, false, Break::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_path_answers_503_within_the_timeout_and_recovers() {
    let Some(url) = backend_url("REDIS_URL") else {
        return;
    };
    broken_path(&url, 6379, true, Break::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_connections_answer_503_and_recover() {
    let Some(url) = backend_url("REDIS_URL") else {
        return;
    };
    broken_path(&url, 6379, true, Break::Cut).await;
}

//! Smoke tests for the servers `cargo xtask test` provides: each proves that
//! the URL it is handed reaches a server that really answers (and, for the
//! Redis Cluster, that the cluster is whole).

use onceflight_test_support::backend_url;
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

#[tokio::test]
async fn postgres_answers_a_query() {
    let Some(url) = backend_url("DATABASE_URL") else {
        return;
    };
    let mut conn = PgConnection::connect(&url)
        .await
        .expect("connect to DATABASE_URL");
    let answer: i32 = sqlx::query_scalar("SELECT 40 + 2")
        .fetch_one(&mut conn)
        .await
        .expect("run SELECT 40 + 2");
    assert_eq!(answer, 42, "PostgreSQL should compute 40 + 2");
    conn.close().await.expect("close the connection");
}

#[tokio::test]
async fn redis_answers_ping() {
    let Some(url) = backend_url("REDIS_URL") else {
        return;
    };
    let client = redis::Client::open(url.as_str()).expect("REDIS_URL is a valid Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to REDIS_URL");
    let reply: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("send PING");
    assert_eq!(reply, "PONG", "Redis should answer PING with PONG");
}

#[tokio::test]
async fn redis_cluster_is_healthy_with_three_masters() {
    let Some(urls) = backend_url("REDIS_CLUSTER_URLS") else {
        return;
    };
    // Every seed is asked on its own, with a plain (non-cluster) connection:
    // each node must agree that the cluster is whole.
    for (index, url) in urls.split(',').map(str::trim).enumerate() {
        let client = redis::Client::open(url)
            .unwrap_or_else(|error| panic!("seed {index} of REDIS_CLUSTER_URLS: {error}"));
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|error| {
                panic!("connect to seed {index} of REDIS_CLUSTER_URLS: {error}")
            });

        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .expect("send CLUSTER INFO");
        assert!(
            info.lines().any(|line| line.trim() == "cluster_state:ok"),
            "seed {index} should report cluster_state:ok, its CLUSTER INFO was:\n{info}"
        );

        // Each line is `<id> <address> <flags> ...`, flags comma-separated.
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .expect("send CLUSTER NODES");
        let masters = nodes
            .lines()
            .filter(|line| {
                line.split_whitespace()
                    .nth(2)
                    .is_some_and(|flags| flags.split(',').any(|flag| flag == "master"))
            })
            .count();
        assert_eq!(
            masters, 3,
            "seed {index} should list 3 masters, its CLUSTER NODES was:\n{nodes}"
        );
    }
}

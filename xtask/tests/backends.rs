//! Smoke tests for the servers `cargo xtask test` provides: each proves that
//! the URL it is handed reaches a server that really answers.

use onceflight_core::testkit::backend_url;
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

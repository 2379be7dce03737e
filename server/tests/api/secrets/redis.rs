//! A Redis password, checked for real by a `redis-server --requirepass` of
//! the test's own, never shows.

use std::io::Write as _;
use std::time::Duration;

use onceflight_server::auth::Tokens;
use onceflight_server::stores::{self, StoreOptions};
use onceflight_server::{AppState, Limits};
use onceflight_test_support::unique_name;

use super::starts::failed_start;
use super::{assert_no_secret, run_and_grep, secret};
use crate::common::free_port;

/// A throw-away `redis-server` requiring a password, killed when dropped.
struct PasswordRedis {
    child: std::process::Child,
    port: u16,
}

impl PasswordRedis {
    /// Starts one on a free loopback port, or `None` (said loudly) when
    /// `redis-server` is not installed and backends are not required.
    fn start(password: &str) -> Option<Self> {
        let port = free_port();
        let spawned = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--requirepass", password])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let required = std::env::var("ONCEFLIGHT_REQUIRE_BACKENDS").is_ok_and(|v| v == "1");
                assert!(
                    !required,
                    "redis-server cannot run ({e}) but ONCEFLIGHT_REQUIRE_BACKENDS=1: apt-get install redis-server"
                );
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: redis-server cannot run ({e}); install redis-server to run this test"
                );
                return None;
            }
        };
        let redis = Self { child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        // Errors mean the process is gone already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Redis store's password never shows, in either URL form (`:pw@` and
/// `user:pw@`).
#[tokio::test]
async fn redis_password_never_shows() {
    let password = secret("redispw");
    let Some(redis) = PasswordRedis::start(&password) else {
        return;
    };
    let token = secret("redistok");
    for (format, url) in [
        (
            "human",
            format!("redis://:{password}@127.0.0.1:{}/", redis.port),
        ),
        (
            "json",
            format!("redis://default:{password}@127.0.0.1:{}/0", redis.port),
        ),
    ] {
        let launch = crate::common::launch()
            .env("ONCEFLIGHT_TOKENS", &format!("a:{token}"))
            .env("ONCEFLIGHT_STORE", &url)
            .args(&[
                "--redis-prefix",
                &format!("{}:", unique_name("t_secrets")),
                "--log-format",
                format,
            ]);
        let logs = run_and_grep(launch, &[&token], &[&password, &token]).await;
        assert!(
            logs.contains("redis"),
            "the store is described in the logs, credentials removed:\n{logs}"
        );
    }

    // A wrong password is a failed start that shows neither password.
    let wrong = secret("wrongpw");
    let url = format!("redis://:{wrong}@127.0.0.1:{}/", redis.port);
    let output = failed_start(&["serve", "--store", &url]).await;
    assert_no_secret(
        "a start with a wrong Redis password",
        &output,
        &[&wrong, &password],
    );
}

/// `Debug` of the Redis configuration, of a connected store and of the
/// state serving it leave the password out.
#[tokio::test]
async fn redis_debug_output_never_shows_a_password() {
    let pw = secret("redisdebug");
    let Some(redis) = PasswordRedis::start(&pw) else {
        return;
    };
    let url = format!("redis://:{pw}@127.0.0.1:{}/", redis.port);
    let config = onceflight_store_redis::RedisConfig::new(url.as_str());
    assert_no_secret("RedisConfig", &format!("{config:?}"), &[&pw]);
    let options = StoreOptions {
        redis_prefix: Some(format!("{}:", unique_name("t_secrets"))),
        ..StoreOptions::default()
    };
    let store = stores::open(&url, &options).await.expect("open the store");
    assert_no_secret("RedisStore", &format!("{store:?}"), &[&pw]);
    let state = AppState::new(store, Tokens::default(), Limits::default());
    assert_no_secret("AppState on Redis", &format!("{state:?}"), &[&pw]);
}

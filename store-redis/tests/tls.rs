//! `rediss://`: the store over TLS (rustls) to a Redis of the test's own
//! with a certificate from a throw-away certificate authority, trusted
//! through `RedisConfig::tls_root_cert`; without that root it refuses the
//! server.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use onceflight_core::testkit::{backend_available, unique_name};
use onceflight_core::{Bytes, Claim, ClaimOptions, Kind, RecordState, RequestKey, RequestStore};
use onceflight_store_redis::{RedisConfig, RedisStore};

use common::ChildRedis;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=onceflight test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("write san.cnf");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ],
    );
}

/// Claims, waits across the pub/sub connection and completes over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_over_tls_with_a_private_ca() {
    // Runs with the Redis tests: it needs the same `redis-server`.
    if !backend_available(Some("REDIS_URL")) {
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(unique_name("onceflight-tls")));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    certificates(&dir.0);
    let port = common::free_port();
    let path = |name: &str| dir.0.join(name).display().to_string();
    let _redis = ChildRedis::start(
        0,
        &[
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path("server.crt"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.crt"),
            "--tls-auth-clients",
            "no",
        ],
    )
    .wait_for(port);
    let url = format!("rediss://127.0.0.1:{port}/");

    let untrusted = RedisStore::connect(RedisConfig::new(&url)).await;
    assert!(
        untrusted.is_err(),
        "a server signed by an unknown CA is refused"
    );

    let store = std::sync::Arc::new(
        RedisStore::connect(
            RedisConfig::new(&url)
                .with_prefix(common::fresh_prefix())
                .with_tls_root_cert(dir.0.join("ca.crt"))
                .with_wait_fallback(Duration::from_secs(60)),
        )
        .await
        .expect("connect over TLS with the private CA"),
    );
    let key = RequestKey::parse("image|tls").expect("key");
    let Ok(Claim::Acquired(lease)) = store
        .claim_or_get(
            &key,
            &ClaimOptions::new(Kind::parse("image").expect("kind")),
        )
        .await
    else {
        panic!("a fresh claim over TLS acquires");
    };
    let waiter = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move { store.wait(&key, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    store
        .complete(&key, lease.token, Bytes::from_static(b"\"over tls\""))
        .await
        .expect("complete over TLS");
    let record = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("woken through the TLS subscription, not the fallback")
        .expect("waiter")
        .expect("wait")
        .expect("record");
    assert_eq!(record.state, RecordState::Completed, "completed");
    assert_eq!(
        record.result.as_deref(),
        Some(&b"\"over tls\""[..]),
        "the result"
    );
}

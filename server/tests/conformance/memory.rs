//! The conformance suite over HTTP: each case gets its own onceflight service
//! (a memory store served on `127.0.0.1:0`) and talks to it through
//! `HttpStore`, so the API of docs/protocol.md §7 and the client together must behave
//! exactly as a store does. A second run goes through bearer-token
//! namespaces, which must not change any semantics.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use onceflight_core::RequestKey;
use onceflight_core::testkit::{Expiry, RawStorage, Setup, SuiteConfig};
use onceflight_server::auth::Tokens;
use onceflight_server::client::HttpStore;
use onceflight_store_memory::{MemoryConfig, MemoryStore};

use crate::common::{serve_in_process, serve_in_process_with};

/// Serves a fresh memory store configured as `config` demands, with `tokens`,
/// on an ephemeral loopback port, for as long as the test's runtime lives.
/// Returns the service's base URL.
async fn serve(config: SuiteConfig, tokens: Tokens) -> String {
    let store = MemoryStore::new(MemoryConfig::default().with_retention(config.retention));
    serve_in_process(store, tokens).await
}

/// A fresh service without authentication, and a client for it.
async fn setup(config: SuiteConfig) -> HttpStore {
    let base = serve(config, Tokens::default()).await;
    HttpStore::new(&base).expect("a valid base URL")
}

/// Memory stores served over HTTP, each reached through an `HttpStore`
/// (with `bearer`, whose namespace is `namespace`). The setup keeps the
/// memory stores it served, so that [`RawStorage`] can look at them behind
/// the API. The macro builds one setup per test.
struct MemoryOverHttp {
    tokens: fn() -> Tokens,
    bearer: Option<&'static str>,
    namespace: Option<&'static str>,
    /// The service's hit cache, if any.
    hit_cache: Option<onceflight_core::HitCacheConfig>,
    served: Mutex<Vec<Arc<MemoryStore>>>,
}

impl MemoryOverHttp {
    fn new() -> Self {
        Self {
            tokens: Tokens::default,
            bearer: None,
            namespace: None,
            hit_cache: None,
            served: Mutex::new(Vec::new()),
        }
    }
}

impl Setup for MemoryOverHttp {
    type Store = HttpStore;

    fn store(&self, config: SuiteConfig) -> Pin<Box<dyn Future<Output = HttpStore> + Send>> {
        let store = Arc::new(MemoryStore::new(
            MemoryConfig::default().with_retention(config.retention),
        ));
        self.served
            .lock()
            .expect("the served stores")
            .push(Arc::clone(&store));
        let (tokens, bearer, hit_cache) = ((self.tokens)(), self.bearer, self.hit_cache);
        Box::pin(async move {
            let base = serve_in_process_with(store, tokens, hit_cache).await;
            let client = HttpStore::new(&base).expect("a valid base URL");
            match bearer {
                Some(bearer) => client.with_bearer_token(bearer),
                None => client,
            }
        })
    }
}

impl RawStorage for MemoryOverHttp {
    /// `HttpStore::sweep` does nothing: the service sweeps its own store.
    fn expiry(&self) -> Expiry {
        Expiry::SweptElsewhere
    }

    async fn raw_record_exists(&self, _client: &HttpStore, key: &RequestKey) -> bool {
        let served = self.served.lock().expect("the served stores");
        // A client does not say which service it talks to; the cases that
        // look at storage build one store each.
        let [store] = served.as_slice() else {
            panic!(
                "raw_record_exists needs exactly one store per case, this one built {}",
                served.len()
            );
        };
        let stored = match self.namespace {
            Some(namespace) => RequestKey::namespaced(namespace, key).expect("a namespaced key"),
            None => key.clone(),
        };
        store.holds_record(&stored)
    }
}

onceflight_core::conformance_tests!(MemoryOverHttp::new());

/// Every case again, through a namespace: the service has tokens configured
/// and stores the client's keys as `team-a/<key>`.
mod namespaced {
    use super::*;

    const TOKEN_A: &str = "team-a-token-0123456789";
    const TOKEN_B: &str = "team-b-token-9876543210";

    fn tokens() -> Tokens {
        Tokens::from_env_list(&format!("team-a:{TOKEN_A},team-b:{TOKEN_B}"))
            .expect("a valid token list")
    }

    fn setup() -> MemoryOverHttp {
        MemoryOverHttp {
            tokens,
            bearer: Some(TOKEN_A),
            namespace: Some("team-a"),
            ..MemoryOverHttp::new()
        }
    }

    onceflight_core::conformance_tests!(setup());

    /// Every case through a namespace and the service's hit cache: hits
    /// answered from the server's memory are the store's answers, in the
    /// namespace's keys.
    mod through_hit_cache {
        use super::*;

        fn cached() -> MemoryOverHttp {
            MemoryOverHttp {
                hit_cache: Some(onceflight_core::HitCacheConfig::default()),
                ..setup()
            }
        }

        onceflight_core::conformance_tests!(cached());
    }

    /// One key in two namespaces is two independent records; a wrong token
    /// is refused as a `Backend` error (retrying will not fix it).
    #[tokio::test]
    async fn namespaces_do_not_share_keys_and_wrong_tokens_are_refused() {
        use onceflight_core::{Claim, ClaimOptions, Error, Kind, RequestKey, RequestStore};

        let base = serve(SuiteConfig::default(), tokens()).await;
        let a = HttpStore::new(&base).unwrap().with_bearer_token(TOKEN_A);
        let b = HttpStore::new(&base).unwrap().with_bearer_token(TOKEN_B);
        let k = RequestKey::parse("image|shared").unwrap();
        let o = ClaimOptions::new(Kind::parse("image").unwrap());
        let lease_a = match a.claim_or_get(&k, &o).await.expect("claim in a") {
            Claim::Acquired(lease) => lease,
            other => panic!("expected Acquired in a, got {other:?}"),
        };
        assert!(
            matches!(b.claim_or_get(&k, &o).await, Ok(Claim::Acquired(_))),
            "b's key is its own"
        );
        a.complete(&k, lease_a.token, "1".into())
            .await
            .expect("complete in a");
        let in_b = b.get(&k).await.expect("get in b").expect("b's record");
        assert!(in_b.result.is_none(), "b does not see a's result");

        for wrong in [
            HttpStore::new(&base).unwrap(),
            HttpStore::new(&base)
                .unwrap()
                .with_bearer_token("not-a-configured-token"),
        ] {
            let refused = wrong.get(&k).await;
            assert!(
                matches!(
                    refused,
                    Err(Error::Backend {
                        backend: "http",
                        ..
                    })
                ),
                "{wrong:?}: expected Backend, got {refused:?}"
            );
        }
    }
}

/// Keys with characters that mean something in a URL reach the service
/// intact and come back as the caller's key.
#[tokio::test]
async fn awkward_keys_round_trip() {
    use onceflight_core::{Claim, ClaimOptions, Error, Kind, RequestKey, RequestStore};

    let store = setup(SuiteConfig::default()).await;
    let o = ClaimOptions::new(Kind::parse("image").unwrap());
    let keys = [
        "image|ab",
        "a/b c%7C é 画像",
        "100%",
        "%2e%2E",
        "?q=1&r=2#frag",
        "+;,=:@!$'()*[]",
        "...",
        "~",
    ];
    for (i, name) in keys.iter().enumerate() {
        let k = RequestKey::parse(*name).unwrap();
        let lease = match store.claim_or_get(&k, &o).await {
            Ok(Claim::Acquired(lease)) => lease,
            other => panic!("{name:?}: expected Acquired, got {other:?}"),
        };
        assert_eq!(lease.key, k, "{name:?}: the lease's key");
        let result = format!("{{\"n\":{i}}}");
        store
            .complete(&k, lease.token, result.clone().into())
            .await
            .unwrap_or_else(|e| panic!("{name:?}: complete: {e}"));
        let record = store.get(&k).await.expect("get").expect("a record");
        assert_eq!(
            record.result.as_deref(),
            Some(result.as_bytes()),
            "{name:?}"
        );
    }
    // Each key is its own record: nothing above collided.
    for (i, name) in keys.iter().enumerate() {
        let k = RequestKey::parse(*name).unwrap();
        match store.claim_or_get(&k, &o).await {
            Ok(Claim::Completed(c)) => {
                assert_eq!(c.result, format!("{{\"n\":{i}}}").as_bytes(), "{name:?}")
            }
            other => panic!("{name:?}: expected Completed, got {other:?}"),
        }
    }
    for dots in [".", ".."] {
        let refused = store
            .claim_or_get(&RequestKey::parse(dots).unwrap(), &o)
            .await;
        assert!(
            matches!(refused, Err(Error::InvalidInput { field: "key", .. })),
            "{dots:?} cannot be a URL path segment: {refused:?}"
        );
    }
}

/// A result that is not JSON text is refused before anything is sent, and
/// the lease is untouched.
#[tokio::test]
async fn non_json_results_are_refused_locally() {
    use onceflight_core::{Claim, ClaimOptions, Error, Kind, RequestKey, RequestStore};

    let store = setup(SuiteConfig::default()).await;
    let k = RequestKey::parse("image|binary").unwrap();
    let o = ClaimOptions::new(Kind::parse("image").unwrap());
    let Ok(Claim::Acquired(lease)) = store.claim_or_get(&k, &o).await else {
        panic!("expected Acquired");
    };
    for bad in [&b"\x89PNG"[..], b"plain text", b""] {
        let refused = store.complete(&k, lease.token, bad.into()).await;
        assert!(
            matches!(
                refused,
                Err(Error::InvalidInput {
                    field: "result",
                    ..
                })
            ),
            "{bad:?}: {refused:?}"
        );
    }
    let record = store.get(&k).await.expect("get").expect("a record");
    assert!(!record.state.is_terminal(), "still processing");
    store
        .complete(&k, lease.token, "null".into())
        .await
        .expect("JSON null is a result");
    let record = store.get(&k).await.expect("get").expect("a record");
    assert_eq!(
        record.result.as_deref(),
        Some(&b"null"[..]),
        "null comes back"
    );
}

/// A service that cannot be reached is `Unavailable`, which is retryable.
#[tokio::test]
async fn unreachable_service_is_unavailable() {
    use onceflight_core::{Error, RequestKey, RequestStore};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    let store = HttpStore::new(&format!("http://{address}")).unwrap();
    let result = store.get(&RequestKey::parse("image|x").unwrap()).await;
    assert!(
        matches!(
            result,
            Err(Error::Unavailable {
                backend: "http",
                ..
            })
        ),
        "expected Unavailable, got {result:?}"
    );
    assert!(result.unwrap_err().is_retryable(), "retryable");
}

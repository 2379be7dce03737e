//! Hostile keys and values on every store, through the served HTTP API
//! (docs/protocol.md §2, §5.7, §7).
//!
//! Each scenario runs on the memory store, on Postgres (`DATABASE_URL`, a
//! fresh schema) and on Redis (`REDIS_URL`, a fresh key prefix), each opened
//! by `onceflight_server::stores::open` as the binary opens it and served on
//! `127.0.0.1:0`: once with two bearer-token tenants (`a` and `b`) and once,
//! over a store of its own, without tokens. Without the backend's URL the
//! Postgres and Redis cases skip loudly, unless
//! `ONCEFLIGHT_REQUIRE_BACKENDS=1`.
//!
//! Requests go out over a hand-written HTTP/1.1 exchange ([`exchange`])
//! rather than an HTTP client, because clients normalise URLs (`..` and `%2e%2e` segments are
//! resolved away by the WHATWG URL rules), and the point here is to send
//! exactly the bytes an attacker would.
//!
//! What the router and §7 make of path-like keys, decided here and proved
//! below:
//!
//! - a key is opaque bytes to every store: `.`/`..` segments, `/`, `\` and
//!   percent signs mean nothing to them, and the server never resolves a
//!   path. `%2F` inside the `{key}` segment decodes to a `/` in the key (the
//!   key `a/b` is valid, §2 forbids only control characters); `%252F`
//!   decodes once, to the three characters `%2F`; a bare `..` or `%2E%2E`
//!   segment is the two-character key `..`.
//! - an unencoded `/` splits the path, so `/v1/requests/a/b` matches no route
//!   (404 `not_found`) and reaches no store.
//! - an empty `{key}` segment before an operation (`/v1/requests//claim`) is
//!   the empty key: 400 `invalid_key`. `GET`/`DELETE /v1/requests/` has no
//!   key segment at all and is no route: 404 `not_found`. Neither reaches
//!   the store.
//! - a tenant's key is stored as `<namespace>/<key>` and namespaces are
//!   `[a-z0-9_.-]`, so whatever tenant `b` sends lands under `b/` — `a/k`
//!   from `b` is the stored key `b/a/k`, never `a/k`.
//! - Unicode *control* characters (general category Cc: C0, DEL, C1) are
//!   refused in keys, owners and fingerprints, as §2/§7 say; other
//!   invisible characters (format characters such as U+200D or U+202E) are
//!   not control characters in Unicode's sense and are ordinary key bytes.
//! - failure messages may carry line breaks and tabs (stack traces do) but
//!   not NUL, which PostgreSQL's `text` cannot hold: a message with NUL is
//!   400 `invalid_request` on every store, so that all stores answer alike.
//!
//! The scenarios, by what they attack: [`keys`] (hostile, refused and
//! path-like keys), [`tenants`] (namespaces and tokens) and [`values`]
//! (owners, fingerprints, results and messages).

mod exchange;
mod keys;
mod tenants;
mod values;

use std::sync::Arc;

use onceflight_core::RequestStore;
use onceflight_server::auth::Tokens;
use onceflight_server::stores::{self, StoreOptions};
use onceflight_test_support::unique_name;
use reqwest::StatusCode;
use serde_json::{Value, json};

use self::exchange::{send, send_with};
use self::keys::{
    hostile_keys_round_trip_as_distinct_records, path_like_keys_are_plain_bytes_and_cannot_escape,
    refused_keys_are_invalid_key_and_reach_no_store,
};
use self::tenants::{
    requests_without_a_valid_token_are_unauthorized, tenants_cannot_reach_each_other,
};
use self::values::hostile_values_round_trip_or_are_refused;
use crate::common::{self, Reply};

/// Tenant `a`'s bearer token.
const TOKEN_A: &str = "tenant-a-token-0123456789";

/// Tenant `b`'s bearer token.
const TOKEN_B: &str = "tenant-b-token-9876543210";

/// Runs each named scenario on every store, as `<store>::<scenario>`.
macro_rules! on_every_store {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let fixture = super::Fixture::open("memory", "memory://".to_owned()).await;
                    super::$scenario(&fixture).await;
                }
            )*
        }

        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let Some(url) = onceflight_test_support::backend_url("DATABASE_URL") else { return };
                    let fixture = super::Fixture::open("postgres", url).await;
                    super::$scenario(&fixture).await;
                }
            )*
        }

        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let Some(url) = onceflight_test_support::backend_url("REDIS_URL") else { return };
                    let fixture = super::Fixture::open("redis", url).await;
                    super::$scenario(&fixture).await;
                }
            )*
        }
    };
}

on_every_store!(
    hostile_keys_round_trip_as_distinct_records,
    refused_keys_are_invalid_key_and_reach_no_store,
    path_like_keys_are_plain_bytes_and_cannot_escape,
    tenants_cannot_reach_each_other,
    requests_without_a_valid_token_are_unauthorized,
    hostile_values_round_trip_or_are_refused,
);

// ---------------------------------------------------------------------------
// The services.
// ---------------------------------------------------------------------------

/// One store under test: a service with tenants `a` and `b`, and a service
/// without tokens over a store of its own (sharing one would let the
/// tokenless service's key `a/x` meet tenant `a`'s key `x`, which is the
/// operator's business, not an escape).
struct Fixture {
    name: &'static str,
    tenants: Service,
    open: Service,
}

impl Fixture {
    async fn open(name: &'static str, url: String) -> Self {
        let tokens =
            Tokens::from_env_list(&format!("a:{TOKEN_A},b:{TOKEN_B}")).expect("valid tokens");
        Self {
            name,
            tenants: Service::open(&url, tokens).await,
            open: Service::open(&url, Tokens::default()).await,
        }
    }

    /// Every caller a scenario runs as: the two tenants, and the tokenless
    /// service's caller.
    fn callers(&self) -> [Caller<'_>; 3] {
        [
            self.tenant(TOKEN_A, "a"),
            self.tenant(TOKEN_B, "b"),
            Caller {
                addr: &self.open.addr,
                bearer: None,
                authorization: None,
                tenant: "none",
            },
        ]
    }

    fn tenant(&self, token: &'static str, tenant: &'static str) -> Caller<'_> {
        Caller {
            addr: &self.tenants.addr,
            bearer: Some(token),
            authorization: None,
            tenant,
        }
    }
}

/// A served store: its address and the store itself, read directly to see
/// where records landed.
struct Service {
    addr: String,
    store: Arc<dyn RequestStore>,
}

impl Service {
    /// Opens a fresh store at `url` (its own Postgres schema or Redis key
    /// prefix) and serves it with `tokens`.
    async fn open(url: &str, tokens: Tokens) -> Self {
        let options = StoreOptions {
            pg_schema: Some(unique_name("t_hostile")),
            pg_pool_size: Some(4),
            redis_prefix: Some(format!("{}:", unique_name("t_hostile"))),
            ..StoreOptions::default()
        };
        let store = stores::open(url, &options)
            .await
            .unwrap_or_else(|e| panic!("open the store: {e:#}"));
        let base = common::serve_in_process(Arc::clone(&store), tokens).await;
        let addr = base
            .strip_prefix("http://")
            .expect("an http:// base URL")
            .to_owned();
        Self { addr, store }
    }
}

/// Who sends a request, and with what `Authorization` header.
#[derive(Clone, Copy)]
struct Caller<'a> {
    addr: &'a str,
    bearer: Option<&'a str>,
    /// A raw `Authorization` header, sent instead of `bearer`'s.
    authorization: Option<&'a str>,
    /// The tenant's namespace (`a`, `b`), or a name for messages.
    tenant: &'static str,
}

impl Caller<'_> {
    /// The namespace this caller's keys are stored under, if any.
    fn namespace(&self) -> Option<&'static str> {
        self.bearer.map(|_| self.tenant)
    }

    fn header(&self) -> Option<String> {
        self.authorization
            .map(str::to_owned)
            .or_else(|| self.bearer.map(|t| format!("Bearer {t}")))
    }

    async fn post(&self, segment: &str, op: &str, body: &Value) -> Reply {
        self.post_raw(segment, op, body.to_string()).await
    }

    async fn post_raw(&self, segment: &str, op: &str, body: String) -> Reply {
        send_with(
            self.addr,
            "POST",
            &format!("/v1/requests/{segment}/{op}"),
            self.header().as_deref(),
            Some(body),
        )
        .await
    }

    async fn get(&self, segment: &str, query: &str) -> Reply {
        send_with(
            self.addr,
            "GET",
            &format!("/v1/requests/{segment}{query}"),
            self.header().as_deref(),
            None,
        )
        .await
    }

    /// `GET target`, e.g. `/v1/requests?prefix=a` or `/v1/stats`.
    async fn read(&self, target: &str) -> Reply {
        send_with(self.addr, "GET", target, self.header().as_deref(), None).await
    }

    async fn delete(&self, segment: &str) -> Reply {
        send_with(
            self.addr,
            "DELETE",
            &format!("/v1/requests/{segment}"),
            self.header().as_deref(),
            None,
        )
        .await
    }

    /// One request to every `/v1` route for `segment`, with valid bodies.
    async fn every_route(&self, segment: &str) -> Vec<Reply> {
        vec![
            self.post(segment, "claim", &json!({"kind": "k"})).await,
            self.post(segment, "heartbeat", &json!({"token": 1})).await,
            self.post(segment, "complete", &json!({"token": 1, "result": 1}))
                .await,
            self.post(segment, "fail", &json!({"token": 1, "message": "m"}))
                .await,
            self.post(segment, "release", &json!({"token": 1})).await,
            self.get(segment, "").await,
            self.get(segment, "?wait_ms=5000").await,
            self.delete(segment).await,
        ]
    }
}

/// The result stored on `record`, as JSON.
fn stored_result(record: &onceflight_core::Record) -> Value {
    let bytes = record
        .result
        .as_deref()
        .unwrap_or_else(|| panic!("the record at {:?} has a result", record.key));
    serde_json::from_slice(bytes).expect("a result stored through the API is JSON")
}

/// How many store operations the service at `addr` has made, from its
/// `/metrics`: every operation is timed there, so an unchanged count means
/// that no request reached the store. The counts a scrape itself takes for
/// the store gauges (`operation="counts"`) are the scrape's, and left out.
async fn store_operations(addr: &str) -> u64 {
    let reply = send(addr, "GET", "/metrics", None, None).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}: {}",
        reply.what,
        reply.text
    );
    reply
        .text
        .lines()
        .filter(|line| line.starts_with("onceflight_store_operation_duration_seconds_count"))
        .filter(|line| !line.contains("operation=\"counts\""))
        .map(|line| {
            let count = line.rsplit(' ').next().unwrap_or_default();
            count
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("a count in {line:?}")) as u64
        })
        .sum()
}

/// Percent-encodes every byte of `key` but ASCII letters and digits, so the
/// path carries exactly these bytes.
fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

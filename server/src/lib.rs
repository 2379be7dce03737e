//! The onceflight service: the HTTP API of docs/protocol.md §7 over any
//! [`RequestStore`], with bearer-token namespaces, Prometheus metrics and an
//! OpenAPI document; and (feature `client`) [`client::HttpStore`], a
//! `RequestStore` that talks to a remote onceflight.
//!
//! The router is built apart from serving — [`app`] makes a `Router` from an
//! [`AppState`], [`serve`] runs it on a listener until a shutdown future
//! resolves — so most tests need no socket.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use futures::FutureExt;
use onceflight_core::{CachedStore, HitCacheConfig, HitCacheStats, RequestStore};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub mod api;
pub mod auth;
/// `HttpStore`, a `RequestStore` over this API (the `onceflight-client`
/// crate, re-exported).
#[cfg(feature = "client")]
pub use onceflight_client as client;
mod edge;
pub mod metrics;
mod stats;
pub mod stores;
pub mod ui;

use api::error::ApiError;
use api::routes;
use auth::Tokens;
use metrics::{InstrumentedStore, Metrics};
use stats::{Counted, StatsCache};

/// Size, time and concurrency limits of the service.
///
/// The edge limits (`header_timeout` … `max_connections`) hold clients that
/// are slow, stalled or hostile before they reach a handler: a client that
/// trickles its headers or body holds a connection only until its timeout,
/// and headers are bounded in size and count. None of them bounds how long
/// a response may take, so long-polls are never cut (see [`serve`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest result a `complete` may store, in bytes of JSON (default
    /// 1 MiB).
    pub max_result_bytes: usize,
    /// Largest `complete` body, in bytes (default: the result limit plus
    /// 64 KiB for the rest of the body); past it, 413 `too_large`.
    pub max_body_bytes: usize,
    /// Largest body of the routes that carry no result — claim, heartbeat,
    /// fail and release —, in bytes (default 64 KiB, far above the largest
    /// valid one); past it, 413 `too_large`. A small limit of their own
    /// keeps a client from making the server buffer and parse a
    /// result-sized body where no result can be.
    pub max_small_body_bytes: usize,
    /// Most `GET ?wait_ms` long-polls held at once; past it, 503
    /// `too_many_waiters` (default 10000).
    pub max_waiters: usize,
    /// Longest a store operation may take before the request answers 503
    /// `store_unavailable` (a long-poll gets its `wait_ms` on top; default
    /// 5 s).
    pub store_timeout: Duration,
    /// Longest a client may take to send a request's headers, counted from
    /// the moment its connection is ready for them (accepted, or the
    /// previous response written); past it the connection is closed without
    /// an answer. The same timer closes keep-alive connections idle that
    /// long (default 10 s).
    pub header_timeout: Duration,
    /// Longest a request body may take to arrive whole, counted from its
    /// headers; past it the request answers 408 `request_timeout` and the
    /// connection is closed (default 30 s).
    pub body_timeout: Duration,
    /// Largest header block (request line and headers), in bytes; past it,
    /// 431 and the connection is closed (default 64 KiB).
    pub max_header_bytes: usize,
    /// Most header fields in a request; past it, 431 and the connection is
    /// closed (default 100).
    pub max_headers: usize,
    /// Most connections served at once; further clients wait in the
    /// listener's backlog until one closes (default: no cap, as each held
    /// long-poll needs its own connection and `max_waiters` bounds those).
    pub max_connections: Option<usize>,
    /// How long `GET /v1/stats` and the store gauges of `/metrics` keep the
    /// counts of a namespace at least before counting the store again
    /// (default 5 s; zero counts on every request). Counting walks the
    /// records, so a dashboard polling every second costs the store one
    /// count per this interval instead of one per poll; a count that takes
    /// long is kept ten times as long as it took.
    pub stats_max_age: Duration,
}

/// The default [`Limits::stats_max_age`]: 5 s.
pub const DEFAULT_STATS_MAX_AGE: Duration = Duration::from_secs(5);

/// The default [`Limits::max_small_body_bytes`]: 64 KiB.
pub const DEFAULT_MAX_SMALL_BODY_BYTES: usize = 64 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self::with_result_limit(1024 * 1024)
    }
}

impl Limits {
    /// Limits for results of at most `max_result_bytes`.
    pub fn with_result_limit(max_result_bytes: usize) -> Self {
        Self {
            max_result_bytes,
            max_body_bytes: max_result_bytes.saturating_add(64 * 1024),
            max_small_body_bytes: DEFAULT_MAX_SMALL_BODY_BYTES,
            max_waiters: 10_000,
            store_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: None,
            stats_max_age: DEFAULT_STATS_MAX_AGE,
        }
    }
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The instrumented store, behind the hit cache when there is one.
    store: Arc<dyn RequestStore>,
    hit_cache: Option<Arc<CachedStore>>,
    tokens: Tokens,
    limits: Limits,
    metrics: Arc<Metrics>,
    waiters: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
    stats: StatsCache,
}

impl AppState {
    /// State serving `store`, with `tokens` (none: no authentication) and
    /// `limits`.
    pub fn new(store: Arc<dyn RequestStore>, tokens: Tokens, limits: Limits) -> Self {
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(InstrumentedStore::new(
            store,
            Arc::clone(&metrics),
            limits.store_timeout,
        ));
        Self::build(store, None, tokens, limits, metrics)
    }

    /// State serving `store` as [`AppState::new`] does, with repeated claims
    /// of completed records answered from a [`CachedStore`] in process
    /// (timed apart from the store's operations). Fails when the store has
    /// no push channel to keep the cache true (a Redis Cluster), or with a
    /// zero staleness bound.
    pub fn with_hit_cache(
        store: Arc<dyn RequestStore>,
        tokens: Tokens,
        limits: Limits,
        config: HitCacheConfig,
    ) -> onceflight_core::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let store: Arc<dyn RequestStore> = Arc::new(InstrumentedStore::new(
            store,
            Arc::clone(&metrics),
            limits.store_timeout,
        ));
        let cache = Arc::new(CachedStore::new(store, config)?);
        Ok(Self::build(
            Arc::clone(&cache) as Arc<dyn RequestStore>,
            Some(cache),
            tokens,
            limits,
            metrics,
        ))
    }

    fn build(
        store: Arc<dyn RequestStore>,
        hit_cache: Option<Arc<CachedStore>>,
        tokens: Tokens,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                hit_cache,
                tokens,
                limits,
                metrics,
                waiters: Arc::new(Semaphore::new(limits.max_waiters)),
                shutdown: watch::channel(false).0,
                stats: StatsCache::new(limits.stats_max_age),
            }),
        }
    }

    /// The store, timed for metrics (behind the hit cache, if any).
    pub fn store(&self) -> &dyn RequestStore {
        &*self.inner.store
    }

    /// The hit cache's counters, when there is a hit cache.
    pub fn hit_cache_stats(&self) -> Option<HitCacheStats> {
        self.inner.hit_cache.as_ref().map(|cache| cache.stats())
    }

    /// The Prometheus text exposition of the service's metrics, the hit
    /// cache's counters read now. The store gauges show the last counts
    /// read (see [`AppState::refresh_store_gauges`]).
    pub fn render_metrics(&self) -> String {
        if let Some(stats) = self.hit_cache_stats() {
            self.inner.metrics.observe_hit_cache(stats);
        }
        self.inner.metrics.render()
    }

    /// Brings the store gauges (`onceflight_records`, …) up to counts of the
    /// whole store no older than [`Limits::stats_max_age`], counting the
    /// store if needed. The count is bounded by the store timeout (the
    /// instrumented store's); when it fails or is cut, the gauges keep
    /// their last values, since a scrape must answer whatever the store
    /// does.
    pub async fn refresh_store_gauges(&self) {
        match self.counts("").await {
            Ok(counted) => self.inner.metrics.observe_store_stats(&counted.stats),
            Err(error) => {
                tracing::warn!(error = %error, "counting the store for the gauges failed");
                if let Some(last) = self.inner.stats.last("") {
                    self.inner.metrics.observe_store_stats(&last.stats);
                }
            }
        }
    }

    /// The counts of the records whose stored key starts with `prefix`,
    /// kept for [`Limits::stats_max_age`] or ten times as long as counting
    /// took; concurrent callers share one count of the store, which goes on
    /// when they stop waiting for it after the store timeout (see
    /// `stats.rs`).
    pub(crate) async fn counts(&self, prefix: &str) -> onceflight_core::Result<Counted> {
        let store = Arc::clone(&self.inner.store);
        let owned = prefix.to_owned();
        self.inner
            .stats
            .counts(
                prefix,
                self.inner.limits.store_timeout,
                store.backend(),
                move || async move { store.counts(&owned).await }.boxed(),
            )
            .await
    }

    /// The configured bearer tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }

    /// The service's limits.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// The service's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Answers every held long-poll at once with the record as it is; called
    /// when the server begins a graceful shutdown.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Resolves once a graceful shutdown has begun.
    async fn shutting_down(&self) {
        let mut signal = self.inner.shutdown.subscribe();
        // An error means the sender is gone, which only happens at exit.
        let _ = signal.wait_for(|down| *down).await;
    }

    fn waiter_permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.inner.waiters)
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::unavailable(
                    "too_many_waiters",
                    "too many long-polls are held; retry shortly or without wait_ms",
                    1,
                )
            })
    }
}

/// The router of docs/protocol.md §7 over `state`.
///
/// `complete` reads bodies up to [`Limits::max_body_bytes`]; the other
/// routes with a body up to [`Limits::max_small_body_bytes`] (a route's own
/// limit overrides the router-wide one, which only `complete` and bodiless
/// requests meet).
pub fn app(state: AppState) -> Router {
    let limits = state.limits();
    let small = DefaultBodyLimit::max(limits.max_small_body_bytes);
    let router = Router::new()
        .route("/v1/requests/{key}/claim", post(routes::claim).layer(small))
        .route(
            "/v1/requests/{key}/heartbeat",
            post(routes::heartbeat).layer(small),
        )
        .route("/v1/requests/{key}/complete", post(routes::complete))
        .route("/v1/requests/{key}/fail", post(routes::fail).layer(small))
        .route(
            "/v1/requests/{key}/release",
            post(routes::release).layer(small),
        )
        .route(
            "/v1/requests/{key}",
            get(routes::get_record).delete(routes::delete_record),
        )
        .route("/v1/requests", get(routes::list_records))
        .route("/v1/stats", get(routes::stats))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(api::serve_openapi));
    // The operator's web page (`GET /ui`) joins the API here, as a
    // `Router<AppState>` merged before the fallbacks and layers below so that
    // they apply to it too.
    router
        .merge(ui::routes())
        .fallback(routes::unknown_route)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` resolves; then answers held
/// long-polls at once, finishes the requests in progress, and returns once
/// every connection has closed.
///
/// Connections are held to the edge limits of [`Limits`]: headers within
/// `header_timeout` (idle keep-alive connections close after it too), at
/// most `max_header_bytes` and `max_headers` of them (431 past either), a
/// body within `body_timeout` (408 `request_timeout`), and at most
/// `max_connections` connections at once. A response may take as long as
/// its handler needs, so a 60 s long-poll is never cut.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = app(state.clone());
    edge::serve(listener, router, state, shutdown).await
}

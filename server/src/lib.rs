//! The onceflight service: the HTTP API of design §7 over any
//! [`RequestStore`], with bearer-token namespaces, Prometheus metrics and an
//! OpenAPI document; and (feature `client`) [`client::HttpStore`], a
//! `RequestStore` that talks to a remote onceflight.
//!
//! The router is built apart from serving — [`app`] makes a `Router` from an
//! [`AppState`], [`serve`] runs it on a listener until a shutdown future
//! resolves — so most tests need no socket.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use onceflight_core::RequestStore;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub mod api;
pub mod auth;
#[cfg(feature = "client")]
pub mod client;
pub mod metrics;
pub mod stores;

use api::error::ApiError;
use api::routes;
use auth::Tokens;
use metrics::{InstrumentedStore, Metrics};

/// Size and concurrency limits of the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest result a `complete` may store, in bytes of JSON (default
    /// 1 MiB).
    pub max_result_bytes: usize,
    /// Largest request body, in bytes (default: the result limit plus 64 KiB
    /// for the rest of the body).
    pub max_body_bytes: usize,
    /// Most `GET ?wait_ms` long-polls held at once; past it, 503
    /// `too_many_waiters` (default 10000).
    pub max_waiters: usize,
}

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
            max_waiters: 10_000,
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
    store: InstrumentedStore,
    tokens: Tokens,
    limits: Limits,
    metrics: Arc<Metrics>,
    waiters: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
}

impl AppState {
    /// State serving `store`, with `tokens` (none: no authentication) and
    /// `limits`.
    pub fn new(store: Arc<dyn RequestStore>, tokens: Tokens, limits: Limits) -> Self {
        let metrics = Arc::new(Metrics::default());
        Self {
            inner: Arc::new(Inner {
                store: InstrumentedStore::new(store, Arc::clone(&metrics)),
                tokens,
                limits,
                metrics,
                waiters: Arc::new(Semaphore::new(limits.max_waiters)),
                shutdown: watch::channel(false).0,
            }),
        }
    }

    /// The store, timed for metrics.
    pub fn store(&self) -> &dyn RequestStore {
        &self.inner.store
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

/// The router of design §7 over `state`.
pub fn app(state: AppState) -> Router {
    let body_limit = state.limits().max_body_bytes;
    Router::new()
        .route("/v1/requests/{key}/claim", post(routes::claim))
        .route("/v1/requests/{key}/heartbeat", post(routes::heartbeat))
        .route("/v1/requests/{key}/complete", post(routes::complete))
        .route("/v1/requests/{key}/fail", post(routes::fail))
        .route("/v1/requests/{key}/release", post(routes::release))
        .route(
            "/v1/requests/{key}",
            get(routes::get_record).delete(routes::delete_record),
        )
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(routes::openapi))
        .fallback(routes::unknown_route)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` resolves; then answers held
/// long-polls at once, finishes the requests in progress, and returns.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = app(state.clone());
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            state.begin_shutdown();
        })
        .await
}

//! The handlers of docs/protocol.md §7, each a thin translation between JSON and one
//! `RequestStore` call.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use onceflight_core::{
    ClaimOptions, Fingerprint, JobError, Kind, ListCursor, ListOrder, ListQuery, MAX_TOKEN, Owner,
    RecordState, RequestKey, StateFilter, Token,
};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::model::{
    ClaimBody, ClaimResponse, CompleteBody, ErrorBody, FailBody, GetQuery, HeartbeatBody,
    HeartbeatResponse, ListParams, ListResponse, RecordBody, ReleaseBody, StatsResponse,
};
use super::responses::{BodyErrors, LeaseLost, SmallBodyTooLarge};
use crate::AppState;
use crate::auth::Caller;

pub use onceflight_client::model::MAX_WAIT_MS;

/// Longest `lease_ms` (24 h).
const MAX_LEASE_MS: u64 = 86_400_000;

/// Longest `retry_backoff_ms` (1 h).
const MAX_BACKOFF_MS: u64 = 3_600_000;

/// The `{key}` of a route, percent-decoded and validated (400 `invalid_key`).
#[derive(Debug)]
pub struct KeyPath(pub RequestKey);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        RequestKey::parse(raw)
            .map(KeyPath)
            .map_err(|e| ApiError::invalid_key(e.to_string()))
    }
}

/// A JSON body whose every rejection is an `ApiError` (400
/// `invalid_request`, 413 `too_large`).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::invalid_request(
                "expected a JSON body with `Content-Type: application/json`",
            ));
        }
        // Reading the bytes honours the body limit (413 past it).
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large("the request body is over the size limit")
            } else if crate::edge::is_body_timeout(&rejection) {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request body did not arrive in time",
                )
            } else {
                ApiError::invalid_request(rejection.body_text())
            }
        })?;
        // Every body is a JSON object: serde would otherwise read an array
        // as the struct's fields in order.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::invalid_request("the body must be a JSON object"));
        }
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::invalid_request(format!("invalid body: {e}")))
    }
}

fn token(value: u64) -> Result<Token, ApiError> {
    Token::new(value).map_err(|_| {
        ApiError::invalid_request(format!(
            "token must be a non-negative integer at most {MAX_TOKEN}"
        ))
    })
}

fn millis_in(field: &str, value: u64, max: u64) -> Result<Duration, ApiError> {
    if !(1..=max).contains(&value) {
        return Err(ApiError::invalid_request(format!(
            "{field} must be between 1 and {max}"
        )));
    }
    Ok(Duration::from_millis(value))
}

fn claim_options(body: ClaimBody) -> Result<ClaimOptions, ApiError> {
    let mut options = ClaimOptions::new(Kind::parse(body.kind)?);
    if let Some(fingerprint) = body.fingerprint {
        options = options.with_fingerprint(Fingerprint::parse(fingerprint)?);
    }
    if let Some(owner) = body.owner {
        options = options.with_owner(Owner::parse(owner)?);
    }
    if let Some(ms) = body.lease_ms {
        options = options.with_lease_ttl(millis_in("lease_ms", ms, MAX_LEASE_MS)?)?;
    }
    if let Some(n) = body.max_attempts {
        options = options.with_max_attempts(n)?;
    }
    if let Some(ms) = body.retry_backoff_ms {
        options = options.with_retry_backoff(millis_in("retry_backoff_ms", ms, MAX_BACKOFF_MS)?)?;
    }
    Ok(options)
}

/// Whole seconds for a `Retry-After` header: rounded up, at least 1.
fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// Claim the key: acquire a lease, or learn that the job is in flight,
/// completed or failed.
#[utoipa::path(
    post,
    path = "/v1/requests/{key}/claim",
    tag = "requests",
    params(("key" = String, Path, description = "The request key, percent-encoded")),
    request_body = ClaimBody,
    responses(
        (status = 201, description = "Acquired: the caller must do the job", body = ClaimResponse),
        (status = 202, description = "In flight elsewhere", body = ClaimResponse,
            headers(("Retry-After" = u64, description = "Whole seconds left on the holder's lease"))),
        (status = 200, description = "Completed or failed", body = ClaimResponse),
        BodyErrors,
        SmallBodyTooLarge,
        (status = 422, description = "fingerprint_mismatch: the kind or fingerprint differs from the record's", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn claim(
    State(state): State<AppState>,
    caller: Caller,
    KeyPath(key): KeyPath,
    ApiJson(body): ApiJson<ClaimBody>,
) -> Result<Response, ApiError> {
    let options = claim_options(body)?;
    let claim = state
        .store()
        .claim_or_get(&caller.store_key(&key)?, &options)
        .await?;
    let (status, retry_after) = match &claim {
        onceflight_core::Claim::Acquired(_) => (StatusCode::CREATED, None),
        onceflight_core::Claim::InFlight(f) => (StatusCode::ACCEPTED, Some(f.remaining)),
        _ => (StatusCode::OK, None),
    };
    let mut response = (status, Json(ClaimResponse::new(key.as_str(), claim))).into_response();
    if let Some(left) = retry_after {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(left)),
        );
    }
    Ok(response)
}

/// Extend a lease (heartbeat).
#[utoipa::path(
    post,
    path = "/v1/requests/{key}/heartbeat",
    tag = "requests",
    params(("key" = String, Path, description = "The request key, percent-encoded")),
    request_body = HeartbeatBody,
    responses(
        (status = 200, description = "The lease's new end", body = HeartbeatResponse),
        BodyErrors,
        LeaseLost,
        SmallBodyTooLarge,
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    caller: Caller,
    KeyPath(key): KeyPath,
    ApiJson(body): ApiJson<HeartbeatBody>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let token = token(body.token)?;
    let ttl = body
        .lease_ms
        .map(|ms| millis_in("lease_ms", ms, MAX_LEASE_MS))
        .transpose()?;
    let renewal = state
        .store()
        .renew(&caller.store_key(&key)?, token, ttl)
        .await?;
    Ok(Json(renewal.into()))
}

/// Store the job's result.
#[utoipa::path(
    post,
    path = "/v1/requests/{key}/complete",
    tag = "requests",
    params(("key" = String, Path, description = "The request key, percent-encoded")),
    request_body = CompleteBody,
    responses(
        (status = 200, description = "The completed record", body = RecordBody),
        BodyErrors,
        LeaseLost,
        (status = 413, description = "too_large: the body or the result is over the size limit", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    KeyPath(key): KeyPath,
    ApiJson(body): ApiJson<CompleteBody>,
) -> Result<Json<RecordBody>, ApiError> {
    let token = token(body.token)?;
    let result = body.result.get();
    let limit = state.limits().max_result_bytes;
    if result.len() > limit {
        return Err(ApiError::too_large(format!(
            "the result is {} bytes, over the {limit}-byte limit",
            result.len()
        )));
    }
    let record = state
        .store()
        .complete(
            &caller.store_key(&key)?,
            token,
            Bytes::copy_from_slice(result.as_bytes()),
        )
        .await?;
    Ok(Json(RecordBody::new(key.as_str(), record)))
}

/// Record the job's failure.
#[utoipa::path(
    post,
    path = "/v1/requests/{key}/fail",
    tag = "requests",
    params(("key" = String, Path, description = "The request key, percent-encoded")),
    request_body = FailBody,
    responses(
        (status = 200, description = "The failed record", body = RecordBody),
        BodyErrors,
        LeaseLost,
        SmallBodyTooLarge,
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn fail(
    State(state): State<AppState>,
    caller: Caller,
    KeyPath(key): KeyPath,
    ApiJson(body): ApiJson<FailBody>,
) -> Result<Json<RecordBody>, ApiError> {
    let token = token(body.token)?;
    let error = JobError::parse(body.message, body.retryable.unwrap_or(true))?;
    let record = state
        .store()
        .fail(&caller.store_key(&key)?, token, &error)
        .await?;
    Ok(Json(RecordBody::new(key.as_str(), record)))
}

/// Give the lease up: the key is claimable at once, without using an
/// attempt.
#[utoipa::path(
    post,
    path = "/v1/requests/{key}/release",
    tag = "requests",
    params(("key" = String, Path, description = "The request key, percent-encoded")),
    request_body = ReleaseBody,
    responses(
        (status = 200, description = "The released record", body = RecordBody),
        BodyErrors,
        LeaseLost,
        SmallBodyTooLarge,
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn release(
    State(state): State<AppState>,
    caller: Caller,
    KeyPath(key): KeyPath,
    ApiJson(body): ApiJson<ReleaseBody>,
) -> Result<Json<RecordBody>, ApiError> {
    let token = token(body.token)?;
    let record = state
        .store()
        .release(&caller.store_key(&key)?, token)
        .await?;
    Ok(Json(RecordBody::new(key.as_str(), record)))
}

/// Read the record; with `wait_ms`, hold the response while the job is in
/// flight, until it settles or the time passes.
#[utoipa::path(
    get,
    path = "/v1/requests/{key}",
    tag = "requests",
    params(("key" = String, Path, description = "The request key, percent-encoded"), GetQuery),
    responses(
        (status = 200, description = "The record", body = RecordBody),
        (status = 400, description = "invalid_key or invalid_request (unknown query parameter, wait_ms out of range)", body = ErrorBody),
        (status = 401, description = "unauthorized: tokens are configured and the bearer token is missing or unknown", body = ErrorBody),
        (status = 404, description = "not_found: no record for the key", body = ErrorBody),
        (status = 503, description = "store_unavailable, or too_many_waiters (too many long-polls held)", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait before retrying"))),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn get_record(
    State(state): State<AppState>,
    caller: Caller,
    KeyPath(key): KeyPath,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RecordBody>, ApiError> {
    let Query(query) = query?;
    let wait_ms = query.wait_ms.unwrap_or(0);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::invalid_request(format!(
            "wait_ms must be between 0 and {MAX_WAIT_MS}"
        )));
    }
    let store_key = caller.store_key(&key)?;
    let record = if wait_ms == 0 {
        state.store().get(&store_key).await?
    } else {
        let _permit = state.waiter_permit()?;
        // Counted until this future ends, however it ends (a client that
        // goes away drops it).
        let _held = state.metrics().wait_in_progress();
        let started = Instant::now();
        let record = tokio::select! {
            record = state.store().wait(&store_key, Duration::from_millis(wait_ms)) => record?,
            // On shutdown every held request is answered at once, with the
            // record as it is.
            () = state.shutting_down() => state.store().get(&store_key).await?,
        };
        state.metrics().waited(started.elapsed());
        record
    };
    record
        .map(|r| Json(RecordBody::new(key.as_str(), r)))
        .ok_or_else(|| ApiError::not_found(format!("no record for key {:?}", key.as_str())))
}

/// Forget the record (invalidate a cached result). Its tokens are never
/// reused.
#[utoipa::path(
    delete,
    path = "/v1/requests/{key}",
    tag = "requests",
    params(("key" = String, Path, description = "The request key, percent-encoded")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "invalid_key", body = ErrorBody),
        (status = 401, description = "unauthorized: tokens are configured and the bearer token is missing or unknown", body = ErrorBody),
        (status = 404, description = "not_found: no record for the key", body = ErrorBody),
        (status = 503, description = "store_unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait before retrying"))),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn delete_record(
    State(state): State<AppState>,
    caller: Caller,
    KeyPath(key): KeyPath,
) -> Result<StatusCode, ApiError> {
    if state.store().delete(&caller.store_key(&key)?).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no record for key {:?}",
            key.as_str()
        )))
    }
}

/// The store query of a listing's parameters, within the caller's
/// namespace; `None` when the namespaced prefix is too long for any key to
/// start with it (the page is then empty).
fn list_query(caller: &Caller, params: ListParams) -> Result<Option<ListQuery>, ApiError> {
    let state = params
        .state
        .as_deref()
        .map(|state| match state {
            "processing" => Ok(RecordState::Processing),
            "completed" => Ok(RecordState::Completed),
            "failed" => Ok(RecordState::Failed),
            _ => Err(ApiError::invalid_request(
                "state must be processing, completed or failed",
            )),
        })
        .transpose()?;
    let retry_allowed = params
        .retry
        .as_deref()
        .map(|retry| match retry {
            "allowed" => Ok(true),
            "none" => Ok(false),
            _ => Err(ApiError::invalid_request("retry must be allowed or none")),
        })
        .transpose()?;
    let stuck = params.stuck.unwrap_or(false);
    let filter = match (state, stuck, retry_allowed) {
        (_, true, Some(_)) => {
            return Err(ApiError::invalid_request(
                "stuck=true keeps processing records and retry keeps failed ones: use one",
            ));
        }
        (None | Some(RecordState::Processing), true, None) => {
            StateFilter::Processing { stuck_only: true }
        }
        (Some(_), true, None) => {
            return Err(ApiError::invalid_request(
                "stuck=true keeps processing records only: drop state or use state=processing",
            ));
        }
        (None | Some(RecordState::Failed), false, Some(allowed)) => StateFilter::Failed {
            retry_allowed: Some(allowed),
        },
        (Some(_), false, Some(_)) => {
            return Err(ApiError::invalid_request(
                "retry keeps failed records only: drop state or use state=failed",
            ));
        }
        (None, false, None) => StateFilter::Any,
        (Some(RecordState::Processing), false, None) => {
            StateFilter::Processing { stuck_only: false }
        }
        (Some(RecordState::Completed), false, None) => StateFilter::Completed,
        (Some(RecordState::Failed), false, None) => StateFilter::Failed {
            retry_allowed: None,
        },
    };
    let order = match params.order.as_deref() {
        None | Some("newest") => ListOrder::NewestFirst,
        Some("oldest") => ListOrder::OldestFirst,
        Some(_) => return Err(ApiError::invalid_request("order must be newest or oldest")),
    };
    let kind = params.kind.map(Kind::parse).transpose()?;
    let prefix = params.prefix.unwrap_or_default();
    // The caller's own prefix is checked as sent, so that a refusal speaks
    // of what the caller wrote, not of the namespace in front of it.
    ListQuery::new().with_prefix(prefix.as_str())?;
    // The caller's prefix is valid, but with the namespace in front it may
    // pass the store's limit; no key is that long, so nothing matches.
    let prefix = caller.key_prefix() + &prefix;
    if prefix.len() > ListQuery::MAX_PREFIX_BYTES {
        return Ok(None);
    }
    let cursor = params.cursor.map(ListCursor::parse).transpose()?;
    let query = ListQuery::new()
        .with_filter(filter)
        .with_kind(kind)
        .with_prefix(prefix)?
        .with_order(order)
        .with_limit(params.limit.unwrap_or(onceflight_core::DEFAULT_LIST_LIMIT))?
        .with_cursor(cursor);
    Ok(Some(query))
}

/// List the caller's records, page by page: by state (and stuck leases,
/// failures that allow a retry or not), kind and key prefix, newest or
/// oldest first. Listings carry no results: read a key for its result.
#[utoipa::path(
    get,
    path = "/v1/requests",
    tag = "requests",
    params(ListParams),
    responses(
        (status = 200, description = "One page of records, each with `\"result\": null`, and the cursor of the next page", body = ListResponse),
        (status = 400, description = "invalid_request: an unknown parameter, a bad value, stuck or retry with another state, or a cursor this server did not write", body = ErrorBody),
        (status = 401, description = "unauthorized: tokens are configured and the bearer token is missing or unknown", body = ErrorBody),
        (status = 503, description = "store_unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait before retrying"))),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn list_records(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ListResponse>, ApiError> {
    let Query(params) = query?;
    let Some(query) = list_query(&caller, params)? else {
        return Ok(Json(ListResponse {
            records: Vec::new(),
            next_cursor: None,
        }));
    };
    let page = state.store().list(&query).await?;
    let records = page
        .records
        .into_iter()
        .filter_map(|mut record| {
            // The prefix keeps the store to the caller's namespace; a key
            // outside it would be a store's bug, and is left out rather than
            // shown to the wrong caller.
            let Some(shown) = caller.shown_key(&record.key).map(str::to_owned) else {
                tracing::error!("a listing returned a key outside its prefix");
                return None;
            };
            record.result = None;
            Some(RecordBody::new(&shown, record))
        })
        .collect();
    Ok(Json(ListResponse {
        records,
        next_cursor: page.next.map(|cursor| cursor.as_str().to_owned()),
    }))
}

/// Count the caller's records by state and kind, with the leases live and
/// run out. The server keeps the counts for `max_age_ms` (concurrent
/// requests share one count of the store), so polling it is cheap; while a
/// count takes longer than the store timeout, the previous counts are
/// answered (`as_of` tells their age), or 503 when there are none yet.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "requests",
    responses(
        (status = 200, description = "The counts, read at `as_of`", body = StatsResponse),
        (status = 401, description = "unauthorized: tokens are configured and the bearer token is missing or unknown", body = ErrorBody),
        (status = 503, description = "store_unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait before retrying"))),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn stats(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<StatsResponse>, ApiError> {
    let counted = state.counts(&caller.key_prefix()).await?;
    Ok(Json(StatsResponse::new(
        &counted.stats,
        counted.as_of,
        counted.kept_for,
    )))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up: `{\"status\": \"ok\"}`", body = serde_json::Value)))]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: the store answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "The store answers: `{\"status\": \"ready\", \"store\": <backend>}`", body = serde_json::Value),
        (status = 503, description = "store_unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Whole seconds to wait before retrying"))),
    ))]
pub(crate) async fn readyz(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let probe = RequestKey::parse("onceflight|readyz").expect("a valid key");
    state.store().get(&probe).await?;
    Ok(Json(
        serde_json::json!({ "status": "ready", "store": state.store().backend() }),
    ))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // The store gauges are refreshed within the store timeout at most; past
    // it they keep their last values, so a scrape never hangs on the store.
    let _ = tokio::time::timeout(state.limits().store_timeout, state.refresh_store_gauges()).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.render_metrics(),
    )
}

/// 404 `not_found` for unknown routes.
pub(crate) async fn unknown_route() -> ApiError {
    ApiError::not_found("no such route")
}

/// 405 `method_not_allowed` for a known route with another method.
pub(crate) async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

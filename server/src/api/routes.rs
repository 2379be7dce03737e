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
    ClaimOptions, Fingerprint, JobError, Kind, MAX_TOKEN, Owner, RequestKey, Token,
};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::model::{
    ClaimBody, ClaimResponse, CompleteBody, ErrorBody, FailBody, GetQuery, HeartbeatBody,
    HeartbeatResponse, RecordBody, ReleaseBody,
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

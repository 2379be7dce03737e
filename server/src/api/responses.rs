//! The error answers several routes share, as OpenAPI responses, so each
//! route's annotation lists them once by name (`responses(BodyErrors, …)`)
//! and the document says the same thing wherever they occur.

#![expect(
    dead_code,
    reason = "the types only document responses; the handlers never build them"
)]

use utoipa::IntoResponses;

use super::model::ErrorBody;

/// What any route with a JSON body can answer besides its own outcomes.
#[derive(IntoResponses)]
pub(crate) enum BodyErrors {
    #[response(
        status = 400,
        description = "invalid_key or invalid_request (bad JSON, unknown or out-of-range field)"
    )]
    Invalid(ErrorBody),
    #[response(
        status = 401,
        description = "unauthorized: tokens are configured and the bearer token is missing or unknown"
    )]
    Unauthorized(ErrorBody),
    #[response(
        status = 408,
        description = "request_timeout: the body did not arrive in time"
    )]
    BodyTimeout(ErrorBody),
    #[response(
        status = 503,
        description = "store_unavailable",
        headers(("Retry-After" = u64, description = "Whole seconds to wait before retrying"))
    )]
    Unavailable(ErrorBody),
}

/// A fenced operation's token is not the lease's.
#[derive(IntoResponses)]
#[response(
    status = 409,
    description = "lease_lost: the token is not the record's current one, the record is not processing, or there is no record"
)]
pub(crate) struct LeaseLost(ErrorBody);

/// A body without a result over its limit.
#[derive(IntoResponses)]
#[response(
    status = 413,
    description = "too_large: the body is over the limit of bodies without a result (64 KiB by default)"
)]
pub(crate) struct SmallBodyTooLarge(ErrorBody);

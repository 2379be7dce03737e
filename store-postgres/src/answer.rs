//! A claim's answer: the columns of `onceflight_claim_v2` (see its comment
//! in the migrations: only what the outcome needs), read from either shape
//! of the claim statements' rows.
//!
//! Through a transaction-mode pooler the claim is the bare function call,
//! one column per field. On a connection that keeps prepared statements the
//! row holds the columns of a hit on a completed record and, when there was
//! no such hit, the function's whole answer as one anonymous record
//! (`decided`), decoded here field by field: the function is then an
//! expression evaluated only when needed, not a plan node every hit would
//! set up and tear down (see `Statements::claim`).

use chrono::{DateTime, Utc};
use onceflight_core::Result;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::PgRecordDecoder;
use sqlx::postgres::{PgRow, PgTypeInfo, PgValueRef, Postgres};
use sqlx::{Decode, Type};

use crate::store::get;

/// The fields of a claim's answer, in the function's order.
#[derive(Debug)]
pub(crate) struct ClaimAnswer {
    pub(crate) outcome: String,
    pub(crate) takeover: Option<bool>,
    pub(crate) db_now: DateTime<Utc>,
    pub(crate) token: Option<i64>,
    pub(crate) attempt: Option<i32>,
    pub(crate) kind: Option<String>,
    pub(crate) owner: Option<String>,
    pub(crate) lease_ttl_ms: Option<i64>,
    pub(crate) lease_expires_at: Option<DateTime<Utc>>,
    pub(crate) result: Option<Vec<u8>>,
    pub(crate) completed_at: Option<DateTime<Utc>>,
    pub(crate) error_message: Option<String>,
    pub(crate) error_retryable: Option<bool>,
    pub(crate) retry_at: Option<DateTime<Utc>>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
}

impl ClaimAnswer {
    /// The answer of a row with one column per field, named as the
    /// function's.
    pub(crate) fn from_columns(row: &PgRow) -> Result<Self> {
        Ok(Self {
            outcome: get(row, "outcome")?,
            takeover: get(row, "takeover")?,
            db_now: get(row, "db_now")?,
            token: get(row, "token")?,
            attempt: get(row, "attempt")?,
            kind: get(row, "kind")?,
            owner: get(row, "owner")?,
            lease_ttl_ms: get(row, "lease_ttl_ms")?,
            lease_expires_at: get(row, "lease_expires_at")?,
            result: get(row, "result")?,
            completed_at: get(row, "completed_at")?,
            error_message: get(row, "error_message")?,
            error_retryable: get(row, "error_retryable")?,
            retry_at: get(row, "retry_at")?,
            expires_at: get(row, "expires_at")?,
        })
    }

    /// The answer of a row of the prepared claim: the function's, when it
    /// ran (`decided`), else the completed record the hit read.
    pub(crate) fn from_hit_or_decided(row: &PgRow) -> Result<Self> {
        if let Some(Decided(answer)) = get::<Option<Decided>>(row, "decided")? {
            return Ok(answer);
        }
        Ok(Self {
            outcome: "completed".to_owned(),
            takeover: None,
            db_now: get(row, "db_now")?,
            token: get(row, "token")?,
            attempt: get(row, "attempt")?,
            kind: None,
            owner: None,
            lease_ttl_ms: None,
            lease_expires_at: None,
            result: get(row, "result")?,
            completed_at: get(row, "completed_at")?,
            error_message: None,
            error_retryable: None,
            retry_at: None,
            expires_at: get(row, "expires_at")?,
        })
    }
}

/// The function's answer as one anonymous record (type `record`).
struct Decided(ClaimAnswer);

impl Type<Postgres> for Decided {
    fn type_info() -> PgTypeInfo {
        // The anonymous record type, as sqlx names it for tuples.
        <(bool,) as Type<Postgres>>::type_info()
    }
}

impl<'r> Decode<'r, Postgres> for Decided {
    fn decode(value: PgValueRef<'r>) -> std::result::Result<Self, BoxDynError> {
        let mut fields = PgRecordDecoder::new(value)?;
        Ok(Self(ClaimAnswer {
            outcome: fields.try_decode()?,
            takeover: fields.try_decode()?,
            db_now: fields.try_decode()?,
            token: fields.try_decode()?,
            attempt: fields.try_decode()?,
            kind: fields.try_decode()?,
            owner: fields.try_decode()?,
            lease_ttl_ms: fields.try_decode()?,
            lease_expires_at: fields.try_decode()?,
            result: fields.try_decode()?,
            completed_at: fields.try_decode()?,
            error_message: fields.try_decode()?,
            error_retryable: fields.try_decode()?,
            retry_at: fields.try_decode()?,
            expires_at: fields.try_decode()?,
        }))
    }
}

//! The JSON bodies of docs/protocol.md §7, shared by the server and the HTTP client
//! store. Field names are binding: other programs are written against them.
//!
//! Beyond §7, record bodies also carry `max_attempts`, `lease_ms` (time left
//! on the lease, store clock) and `retry_after_ms`, and claim bodies accept
//! `retry_backoff_ms`: extensions that make the API carry everything the
//! `RequestStore` trait does, so clients never need a synchronized clock.

use std::time::Duration;

use chrono::SecondsFormat;
use onceflight_core::{Claim, JobError, Record, RecordState, Renewal, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Longest `wait_ms` a GET may hold (docs/protocol.md §7).
pub const MAX_WAIT_MS: u64 = 60_000;

/// Body of `POST /v1/requests/{key}/claim`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    /// The job type: 1–64 characters of `[a-z0-9_.-]`.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9_.-]+$")
    )]
    pub kind: String,
    /// Hash of the full request parameters (≤ 128 bytes); a claim whose
    /// fingerprint differs from the record's is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 128,
            pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
        )
    )]
    pub fingerprint: Option<String>,
    /// Free-form id of the worker (≤ 128 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 128,
            pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
        )
    )]
    pub owner: Option<String>,
    /// Lease time to live, 1–86400000 ms (default 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86_400_000))]
    pub lease_ms: Option<u64>,
    /// Leases the record may be granted, 1–1000 (default 3); taken from the
    /// claim that creates the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub max_attempts: Option<u32>,
    /// Backoff after the record's first retryable failure, doubling after
    /// each further one, 1–3600000 ms (default 1000). Extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3_600_000))]
    pub retry_backoff_ms: Option<u64>,
}

/// Body of `POST /v1/requests/{key}/heartbeat`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// The lease's fencing token.
    #[cfg_attr(feature = "openapi", schema(maximum = 9_007_199_254_740_991_i64))]
    pub token: u64,
    /// New time to live from now, 1–86400000 ms (default: the lease's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86_400_000))]
    pub lease_ms: Option<u64>,
}

/// Body of `POST /v1/requests/{key}/complete`.
#[derive(Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    /// The lease's fencing token.
    #[cfg_attr(feature = "openapi", schema(maximum = 9_007_199_254_740_991_i64))]
    pub token: u64,
    /// The job's result: any JSON value.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub result: Box<RawValue>,
}

/// Body of `POST /v1/requests/{key}/fail`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    /// The lease's fencing token.
    #[cfg_attr(feature = "openapi", schema(maximum = 9_007_199_254_740_991_i64))]
    pub token: u64,
    /// Why the job failed (≤ 4096 bytes, no NUL; line breaks and tabs are
    /// kept).
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 4096, pattern = "^[^\\u0000]*$")
    )]
    pub message: String,
    /// Whether a later attempt may succeed (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
}

/// Body of `POST /v1/requests/{key}/release`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    /// The lease's fencing token.
    #[cfg_attr(feature = "openapi", schema(maximum = 9_007_199_254_740_991_i64))]
    pub token: u64,
}

/// Query of `GET /v1/requests/{key}`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct GetQuery {
    /// Hold the response up to this long (0–60000 ms) while the record is
    /// `processing` with a live lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        param(minimum = 0, maximum = 60_000, nullable = false)
    )]
    pub wait_ms: Option<u64>,
}

/// A stored failure.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorInfo {
    /// Why the job failed.
    pub message: String,
    /// Whether a later attempt may succeed.
    pub retryable: bool,
}

impl From<&JobError> for ErrorInfo {
    fn from(e: &JobError) -> Self {
        Self {
            message: e.message().to_owned(),
            retryable: e.is_retryable(),
        }
    }
}

/// Answer of a claim: `state` is `acquired` (201), `in_flight` (202),
/// `completed` (200) or `failed` (200).
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ClaimResponse {
    /// The caller holds a new lease and must do the job.
    Acquired {
        /// The request's key.
        key: String,
        /// The lease's fencing token.
        token: u64,
        /// Leases granted to the record, this one included.
        attempt: u32,
        /// When the lease ends (store clock, RFC 3339).
        #[cfg_attr(feature = "openapi", schema(format = DateTime))]
        lease_expires_at: String,
        /// Time left on the lease.
        lease_ms: u64,
        /// Whether this lease took over another worker's expired lease.
        takeover: bool,
    },
    /// Another worker holds a live lease.
    InFlight {
        /// The request's key.
        key: String,
        /// The holder's token.
        token: u64,
        /// The record's attempt number.
        attempt: u32,
        /// The holder's owner id.
        #[cfg_attr(feature = "openapi", schema(required = true))]
        owner: Option<String>,
        /// When the holder's lease ends unless renewed.
        #[cfg_attr(feature = "openapi", schema(format = DateTime))]
        lease_expires_at: String,
        /// Time left on the holder's lease.
        retry_after_ms: u64,
    },
    /// The job is done.
    Completed {
        /// The request's key.
        key: String,
        /// The completing lease's token.
        token: u64,
        /// The completing attempt.
        attempt: u32,
        /// The job's result: any JSON value.
        #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
        result: Box<RawValue>,
        /// When the job completed.
        #[cfg_attr(feature = "openapi", schema(format = DateTime))]
        completed_at: String,
    },
    /// The job failed and no lease can be granted now.
    Failed {
        /// The request's key.
        key: String,
        /// The last lease's token.
        token: u64,
        /// The record's attempt number.
        attempt: u32,
        /// The stored failure.
        error: ErrorInfo,
        /// When a retry will be allowed; null when none will be.
        #[cfg_attr(feature = "openapi", schema(required = true))]
        retry_after_ms: Option<u64>,
    },
}

/// A record as stored (docs/protocol.md §2), seen at one instant of the store's clock.
#[derive(Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordBody {
    /// `processing`, `completed` or `failed`.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(processing|completed|failed)$")
    )]
    pub state: String,
    /// The request's key.
    pub key: String,
    /// The job type.
    pub kind: String,
    /// The fingerprint, if the creating claim gave one.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub fingerprint: Option<String>,
    /// The current (or last) lease's token.
    pub token: u64,
    /// Leases granted to the record (releases excepted).
    pub attempt: u32,
    /// The current (or last) lease's owner.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub owner: Option<String>,
    /// When the lease ends; null for a terminal record.
    #[cfg_attr(feature = "openapi", schema(required = true, format = DateTime))]
    pub lease_expires_at: Option<String>,
    /// Whether a `processing` record's lease has expired or was released.
    pub lease_expired: bool,
    /// The result of a completed record: any JSON value.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<serde_json::Value>, required = true))]
    pub result: Option<Box<RawValue>>,
    /// The failure of a failed record.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub error: Option<ErrorInfo>,
    /// When the record was created.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    /// When the record last changed.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub updated_at: String,
    /// When the record completed.
    #[cfg_attr(feature = "openapi", schema(required = true, format = DateTime))]
    pub completed_at: Option<String>,
    /// When the record will be forgotten (retention).
    #[cfg_attr(feature = "openapi", schema(required = true, format = DateTime))]
    pub expires_at: Option<String>,
    /// Leases the record may be granted. Extension.
    pub max_attempts: u32,
    /// Time left on the lease (0 once over); null for a terminal record.
    /// Extension.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub lease_ms: Option<u64>,
    /// For a failed record, time until a retry is allowed; null when none
    /// will be. Extension.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub retry_after_ms: Option<u64>,
}

/// Answer of a heartbeat.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    /// When the lease now ends.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub lease_expires_at: String,
    /// Time left on the lease.
    pub lease_ms: u64,
}

/// Every error body: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error's machine-readable code and human-readable message.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// One of `invalid_key`, `invalid_request`, `unauthorized`, `not_found`,
    /// `method_not_allowed`, `lease_lost`, `too_large`,
    /// `fingerprint_mismatch`, `too_many_waiters`, `store_unavailable`,
    /// `internal`.
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// A timestamp as the API writes it: RFC 3339, UTC, milliseconds.
pub fn timestamp(t: Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A duration as the API writes it: whole milliseconds, rounded up so that a
/// client waiting that long never comes back early.
pub fn millis(d: Duration) -> u64 {
    let ms = d.as_millis();
    let ceil = if d.as_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms + 1
    };
    u64::try_from(ceil).unwrap_or(u64::MAX)
}

/// Stored result bytes as a JSON value. Results stored through this API are
/// JSON already; bytes stored by a Rust caller that are not JSON are carried
/// as a JSON string (lossy UTF-8), so reading them never fails.
pub fn result_json(bytes: &[u8]) -> Box<RawValue> {
    match std::str::from_utf8(bytes) {
        Ok(text) => RawValue::from_string(text.to_owned()).unwrap_or_else(|_| string_json(text)),
        Err(_) => string_json(&String::from_utf8_lossy(bytes)),
    }
}

fn string_json(text: &str) -> Box<RawValue> {
    let quoted = serde_json::to_string(text).unwrap_or_else(|_| "null".to_owned());
    RawValue::from_string(quoted).unwrap_or_else(|_| null())
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

impl ClaimResponse {
    /// The body of `claim`, shown under the caller's own `key`.
    pub fn new(key: &str, claim: Claim) -> Self {
        let key = key.to_owned();
        match claim {
            Claim::Acquired(lease) => ClaimResponse::Acquired {
                key,
                token: lease.token.get(),
                attempt: lease.attempt,
                lease_expires_at: timestamp(lease.expires_at),
                lease_ms: millis(lease.remaining),
                takeover: lease.takeover,
            },
            Claim::InFlight(f) => ClaimResponse::InFlight {
                key,
                token: f.token.get(),
                attempt: f.attempt,
                owner: f.owner.map(|o| o.into_string()),
                lease_expires_at: timestamp(f.lease_expires_at),
                retry_after_ms: millis(f.remaining),
            },
            Claim::Completed(c) => ClaimResponse::Completed {
                key,
                token: c.token.get(),
                attempt: c.attempt,
                result: result_json(&c.result),
                completed_at: timestamp(c.completed_at),
            },
            Claim::Failed(f) => ClaimResponse::Failed {
                key,
                token: f.token.get(),
                attempt: f.attempt,
                error: ErrorInfo::from(&f.error),
                retry_after_ms: f.retry_after.map(millis),
            },
        }
    }
}

impl RecordBody {
    /// The body of a record, shown under the caller's own `key`.
    pub fn new(key: &str, r: Record) -> Self {
        let lease_expired = r.lease_expired();
        Self {
            state: match r.state {
                RecordState::Processing => "processing",
                RecordState::Completed => "completed",
                RecordState::Failed => "failed",
            }
            .to_owned(),
            key: key.to_owned(),
            kind: r.kind.into_string(),
            fingerprint: r.fingerprint.map(|f| f.into_string()),
            token: r.token.get(),
            attempt: r.attempt,
            owner: r.owner.map(|o| o.into_string()),
            lease_expires_at: r.lease_expires_at.map(timestamp),
            lease_expired,
            result: r.result.as_deref().map(result_json),
            error: r.error.as_ref().map(ErrorInfo::from),
            created_at: timestamp(r.created_at),
            updated_at: timestamp(r.updated_at),
            completed_at: r.completed_at.map(timestamp),
            expires_at: r.expires_at.map(timestamp),
            max_attempts: r.max_attempts,
            lease_ms: r.lease_remaining.map(millis),
            retry_after_ms: r.retry_after.map(millis),
        }
    }
}

impl From<Renewal> for HeartbeatResponse {
    fn from(r: Renewal) -> Self {
        Self {
            lease_expires_at: timestamp(r.expires_at),
            lease_ms: millis(r.remaining),
        }
    }
}

/// Query of `GET /v1/requests`, the listing (docs/protocol.md §7
/// "Listing"). Values are taken as text and checked by the server, so that
/// every bad value is the same 400 `invalid_request` with a message naming
/// the parameter.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct ListParams {
    /// Only records in this state (absent: every state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        param(pattern = "^(processing|completed|failed)$", nullable = false)
    )]
    pub state: Option<String>,
    /// `true`: only `processing` records whose lease ran out and that nobody
    /// took over yet (implies `state=processing`; with another state, 400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(nullable = false))]
    pub stuck: Option<bool>,
    /// `allowed`: only failed records a claim may retry (now or after the
    /// backoff); `none`: only final failures. Implies `state=failed`; with
    /// another state, 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        param(pattern = "^(allowed|none)$", nullable = false)
    )]
    pub retry: Option<String>,
    /// Only records of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        param(
            min_length = 1,
            max_length = 64,
            pattern = "^[a-z0-9_.-]+$",
            nullable = false
        )
    )]
    pub kind: Option<String>,
    /// Only records whose key starts with this text (within the caller's
    /// namespace; at most 1024 bytes, no control character).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        param(
            max_length = 1024,
            pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$",
            nullable = false
        )
    )]
    pub prefix: Option<String>,
    /// `newest` (the default) or `oldest` first, by creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        param(pattern = "^(newest|oldest)$", nullable = false)
    )]
    pub order: Option<String>,
    /// Most records on the page, 1–500 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        param(minimum = 1, maximum = 500, nullable = false)
    )]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page, as it was given: opaque, and
    /// meaningful only with the query that produced it. Any other text is
    /// 400 `invalid_request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        param(min_length = 1, max_length = 2048, nullable = false)
    )]
    pub cursor: Option<String>,
}

/// Answer of `GET /v1/requests`: one page of records.
#[derive(Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListResponse {
    /// The records, each the body `GET /v1/requests/{key}` answers, with
    /// `"result": null` (read the key for its result).
    pub records: Vec<RecordBody>,
    /// Where the next page starts (pass it as `cursor`); null on the last
    /// page. A page may hold fewer records than the limit, even none, while
    /// a cursor is returned.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub next_cursor: Option<String>,
}

/// Records of one state, and in total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StateCountsBody {
    /// `processing` records (live, expired or released leases).
    pub processing: u64,
    /// `completed` records.
    pub completed: u64,
    /// `failed` records.
    pub failed: u64,
    /// Every record counted.
    pub total: u64,
}

/// Leases of `processing` records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseCountsBody {
    /// Live leases: jobs running now.
    pub live: u64,
    /// Leases that ran out (expired or released) with nobody taking over
    /// yet: stuck until the next claim.
    pub expired: u64,
}

/// Answer of `GET /v1/stats`: the caller's records counted.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsResponse {
    /// Records by state.
    pub records: StateCountsBody,
    /// Records by kind, then state.
    pub kinds: std::collections::BTreeMap<String, StateCountsBody>,
    /// Leases live and run out.
    pub leases: LeaseCountsBody,
    /// How long ago the oldest record holding a live lease was created;
    /// null when no lease is live.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub oldest_live_lease_ms: Option<u64>,
    /// When the counts were read (RFC 3339, UTC).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub as_of: String,
    /// How long the server keeps counts before reading them again.
    pub max_age_ms: u64,
}

impl From<onceflight_core::StateCounts> for StateCountsBody {
    fn from(c: onceflight_core::StateCounts) -> Self {
        Self {
            processing: c.processing,
            completed: c.completed,
            failed: c.failed,
            total: c.total(),
        }
    }
}

impl StatsResponse {
    /// The body of `stats`, read at `as_of` and kept up to `max_age`.
    pub fn new(stats: &onceflight_core::StoreStats, as_of: Timestamp, max_age: Duration) -> Self {
        Self {
            records: stats.states.into(),
            kinds: stats
                .kinds
                .iter()
                .map(|(kind, counts)| (kind.as_str().to_owned(), (*counts).into()))
                .collect(),
            leases: LeaseCountsBody {
                live: stats.leases_live,
                expired: stats.leases_expired,
            },
            oldest_live_lease_ms: stats.oldest_live_lease_age.map(millis),
            as_of: timestamp(as_of),
            max_age_ms: millis(max_age),
        }
    }
}

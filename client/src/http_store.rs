//! [`HttpStore`]: a [`RequestStore`] over the HTTP API of docs/protocol.md §7, so that a
//! [`onceflight_core::Coordinator`] can work against a remote onceflight
//! service as it does against a local store.
//!
//! Every trait method is one HTTP request (`wait` may be several long-polls
//! of at most 60 s each). The service judges time by its store's clock and
//! answers with remaining durations, so this client needs no synchronized
//! clock: `Lease::remaining`, `InFlight::remaining`, `Record::lease_remaining`
//! and `retry_after` are the service's numbers, and absolute instants are
//! parsed from its RFC 3339 timestamps (millisecond precision).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use onceflight_core::backend::check_lease_ttl;
use onceflight_core::{
    Claim, ClaimOptions, Completed, Error, Failed, Fingerprint, InFlight, JobError, Kind, Lease,
    ListCursor, ListOrder, ListPage, ListQuery, MAX_LIST_LIMIT, Owner, Record, RecordState,
    Renewal, RequestKey, RequestStore, Result, StateCounts, StateFilter, StoreStats, Timestamp,
    Token,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use onceflight_core::backend::redact_url;

use crate::model::{
    ClaimBody, CompleteBody, ErrorBody, ErrorInfo, FailBody, GetQuery, HeartbeatBody,
    HeartbeatResponse, ListParams, ListResponse, MAX_WAIT_MS, RecordBody, ReleaseBody,
    StatsResponse, millis,
};

/// The backend name this store reports in errors and metrics.
const BACKEND: &str = "http";

/// Default time limit of one request (long-polls get their wait on top).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an idle pooled connection is kept: well under the service's
/// default header timeout (10 s), after which it closes idle connections.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(4);

/// How much longer than the wait it asked for a long-poll may take before the
/// client gives up on it: room for the round trip and a busy server.
const WAIT_GRACE: Duration = Duration::from_secs(5);

/// Pause before asking again when the service answered a long-poll well
/// before the time it was asked to hold it (it does so while shutting down),
/// so that `wait` never spins.
const EARLY_ANSWER_PAUSE: Duration = Duration::from_millis(50);

/// A [`RequestStore`] that talks to a onceflight service over HTTP.
///
/// Cheap to clone: clones share one connection pool. `Debug` shows the base
/// URL without its password and never shows the bearer token.
///
/// Results travel as JSON (docs/protocol.md §7): [`RequestStore::complete`] refuses
/// bytes that are not JSON text with `InvalidInput { field: "result" }`
/// before sending anything, and results are read back as the exact JSON text
/// the service sent.
///
/// Errors map from the service's answers: 409 is `LeaseLost`, 422
/// `FingerprintMismatch`, 400 and 413 `InvalidInput` (`key` for
/// `invalid_key`, else `request`, with the service's message), 401 `Backend`
/// (a wrong or missing token, which retrying will not fix), and 5xx, timeouts
/// and connection failures `Unavailable`.
#[derive(Clone)]
pub struct HttpStore {
    client: reqwest::Client,
    /// The service's base URL as given, without a trailing `/`.
    base: String,
    bearer_token: Option<Arc<str>>,
    timeout: Duration,
}

impl fmt::Debug for HttpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpStore")
            .field("base_url", &redact_url(&self.base))
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpStore {
    /// A store talking to the service at `base_url` (e.g.
    /// `http://127.0.0.1:7700`, or a prefix such as
    /// `http://gateway/onceflight` behind a reverse proxy), with no bearer
    /// token and a 30 s time limit per request.
    ///
    /// Errors: `InvalidInput { field: "base_url" }` for a URL that is not
    /// `http://` or `https://`, or has a query or fragment. The reqwest
    /// build this crate uses has no TLS, so `https://` fails at the first
    /// request unless TLS is enabled for it.
    pub fn new(base_url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidInput {
            field: "base_url",
            reason,
        };
        let url = Url::parse(base_url).map_err(|e| {
            invalid(format!(
                "{:?} is not a URL: {e}",
                redact_url(base_url).as_str()
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "expected an http:// or https:// URL, got {}://",
                url.scheme()
            )));
        }
        if url.cannot_be_a_base() || url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                "expected a base URL without query or fragment, such as http://127.0.0.1:7700"
                    .to_owned(),
            ));
        }
        // The service closes a keep-alive connection left idle for its header
        // timeout (10 s by default). A request sent on such a connection just
        // as the service closes it fails without being retried, so idle
        // connections are dropped here first.
        let client = reqwest::Client::builder()
            .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
            .build()
            .map_err(|e| Error::Backend {
                backend: BACKEND,
                message: format!("could not build the HTTP client: {e}"),
            })?;
        Ok(Self {
            client,
            base: url.as_str().trim_end_matches('/').to_owned(),
            bearer_token: None,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sends `token` as `Authorization: Bearer <token>` with every request:
    /// the service maps it to a namespace (docs/protocol.md §7 "Security"). A token
    /// that is not a valid header value makes every request fail with
    /// `InvalidInput { field: "request" }`.
    pub fn with_bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(Arc::from(token.into()));
        self
    }

    /// Sets how long one request may take before it fails as `Unavailable`
    /// (default 30 s). A long-poll of [`RequestStore::wait`] may take its
    /// wait plus 5 s on top.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The request for `method` on `/v1/requests/{key}` followed by
    /// `suffix` (`""` or `/claim`, …), with the bearer token and the time
    /// limit.
    fn request(
        &self,
        method: Method,
        key: &RequestKey,
        suffix: &str,
        operation: &'static str,
    ) -> Result<Call> {
        let path = key_segment(key)?;
        let url = format!("{}/v1/requests/{path}{suffix}", self.base);
        let url = Url::parse(&url).map_err(|e| Error::InvalidInput {
            field: "key",
            reason: format!("cannot be put in a URL: {e}"),
        })?;
        let mut builder = self.client.request(method, url).timeout(self.timeout);
        if let Some(token) = &self.bearer_token {
            builder = builder.bearer_auth(token);
        }
        Ok(Call { builder, operation })
    }

    /// The request for `method` on `path` (`/v1/requests`, `/v1/stats`),
    /// with the bearer token and the time limit.
    fn request_path(&self, method: Method, path: &str, operation: &'static str) -> Result<Call> {
        let url = Url::parse(&format!("{}{path}", self.base)).map_err(|e| Error::InvalidInput {
            field: "base_url",
            reason: format!("cannot be joined with {path}: {e}"),
        })?;
        let mut builder = self.client.request(method, url).timeout(self.timeout);
        if let Some(token) = &self.bearer_token {
            builder = builder.bearer_auth(token);
        }
        Ok(Call { builder, operation })
    }

    /// `GET /v1/stats`: the counts of every record the token may see.
    async fn stats(&self) -> Result<StoreStats> {
        let call = self.request_path(Method::GET, "/v1/stats", "stats")?;
        let (status, bytes) = call.send().await?;
        if status != StatusCode::OK {
            return Err(collection_error(status, &bytes, false));
        }
        let answer: StatsResponse = decode(&bytes, "stats")?;
        let mut stats = StoreStats::default();
        stats.states = state_counts(answer.records);
        for (kind, counts) in answer.kinds {
            stats
                .kinds
                .insert(parsed(kind, Kind::parse)?, state_counts(counts));
        }
        stats.leases_live = answer.leases.live;
        stats.leases_expired = answer.leases.expired;
        stats.oldest_live_lease_age = answer.oldest_live_lease_ms.map(Duration::from_millis);
        Ok(stats)
    }

    /// Counts the records under `prefix` from full pages of the listing: the
    /// API counts only whole namespaces (`/v1/stats`), and a listing carries
    /// every field a count needs. A store that scans may list a record
    /// twice, so each key is counted once.
    async fn counts_by_listing(&self, prefix: &str) -> Result<StoreStats> {
        let query = ListQuery::new()
            .with_prefix(prefix)?
            .with_limit(MAX_LIST_LIMIT)?;
        let mut stats = StoreStats::default();
        let mut seen = std::collections::HashSet::new();
        let mut cursor = None;
        loop {
            let page = self.list(&query.clone().with_cursor(cursor)).await?;
            for record in &page.records {
                if seen.insert(record.key.as_str().to_owned()) {
                    stats.add(record, service_now(record));
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(stats),
            }
        }
    }

    /// Sends a fenced operation's body and reads the record it answers with.
    async fn fenced_record(
        &self,
        key: &RequestKey,
        token: Token,
        suffix: &str,
        operation: &'static str,
        body: &(impl serde::Serialize + Sync),
    ) -> Result<Record> {
        let call = self.request(Method::POST, key, suffix, operation)?;
        let (status, bytes) = call.send_json(body).await?;
        if status != StatusCode::OK {
            return Err(status_error(status, &bytes, key, Some(token)));
        }
        record_from_body(key, decode(&bytes, operation)?)
    }

    /// One `GET`, holding the response up to `wait_ms` while the job is in
    /// flight.
    async fn get_once(&self, key: &RequestKey, wait_ms: u64) -> Result<Option<Record>> {
        let mut call = self.request(Method::GET, key, "", "get")?;
        if wait_ms > 0 {
            call.builder = call
                .builder
                .query(&GetQuery {
                    wait_ms: Some(wait_ms),
                })
                .timeout(Duration::from_millis(wait_ms) + WAIT_GRACE);
        }
        let (status, bytes) = call.send().await?;
        match status {
            StatusCode::OK => record_from_body(key, decode(&bytes, "get")?).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(status_error(status, &bytes, key, None)),
        }
    }
}

#[async_trait]
impl RequestStore for HttpStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn claim_or_get(&self, key: &RequestKey, options: &ClaimOptions) -> Result<Claim> {
        // Every option is sent, defaults included, so the service applies
        // exactly what the caller asked for whatever its own defaults are.
        let body = ClaimBody {
            kind: options.kind().as_str().to_owned(),
            fingerprint: options.fingerprint().map(|f| f.as_str().to_owned()),
            owner: options.owner().map(|o| o.as_str().to_owned()),
            lease_ms: Some(millis(options.lease_ttl())),
            max_attempts: Some(options.max_attempts()),
            retry_backoff_ms: Some(millis(options.retry_backoff())),
        };
        let call = self.request(Method::POST, key, "/claim", "claim")?;
        let (status, bytes) = call.send_json(&body).await?;
        if !matches!(
            status,
            StatusCode::OK | StatusCode::CREATED | StatusCode::ACCEPTED
        ) {
            return Err(status_error(status, &bytes, key, None));
        }
        claim_from_answer(key, options, status, decode(&bytes, "claim")?)
    }

    async fn renew(
        &self,
        key: &RequestKey,
        token: Token,
        ttl: Option<Duration>,
    ) -> Result<Renewal> {
        // Checked here too, so that a bad ttl is the same `InvalidInput` as
        // with any other store rather than the service's `invalid_request`.
        let ttl = ttl.map(check_lease_ttl).transpose()?;
        let body = HeartbeatBody {
            token: token.get(),
            lease_ms: ttl.map(millis),
        };
        let call = self.request(Method::POST, key, "/heartbeat", "heartbeat")?;
        let (status, bytes) = call.send_json(&body).await?;
        if status != StatusCode::OK {
            return Err(status_error(status, &bytes, key, Some(token)));
        }
        let answer: HeartbeatResponse = decode(&bytes, "heartbeat")?;
        Ok(Renewal::new(
            timestamp(&answer.lease_expires_at, "lease_expires_at")?,
            Duration::from_millis(answer.lease_ms),
        ))
    }

    async fn complete(&self, key: &RequestKey, token: Token, result: Bytes) -> Result<Record> {
        let body = CompleteBody {
            token: token.get(),
            result: json_result(&result)?,
        };
        self.fenced_record(key, token, "/complete", "complete", &body)
            .await
    }

    async fn fail(&self, key: &RequestKey, token: Token, error: &JobError) -> Result<Record> {
        let body = FailBody {
            token: token.get(),
            message: error.message().to_owned(),
            retryable: Some(error.is_retryable()),
        };
        self.fenced_record(key, token, "/fail", "fail", &body).await
    }

    async fn release(&self, key: &RequestKey, token: Token) -> Result<Record> {
        let body = ReleaseBody { token: token.get() };
        self.fenced_record(key, token, "/release", "release", &body)
            .await
    }

    async fn get(&self, key: &RequestKey) -> Result<Option<Record>> {
        self.get_once(key, 0).await
    }

    /// Long-polls `GET …?wait_ms=` (at most 60 s per request) until the
    /// record settles, is gone, or `timeout` passes. The service pushes the
    /// wake-up, so each request returns as soon as something happens.
    async fn wait(&self, key: &RequestKey, timeout: Duration) -> Result<Option<Record>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let asked_at = tokio::time::Instant::now();
            // Rounded up, so the last request never ends before the deadline.
            let wait_ms = millis(deadline.saturating_duration_since(asked_at)).min(MAX_WAIT_MS);
            let Some(record) = self.get_once(key, wait_ms).await? else {
                return Ok(None);
            };
            let now = tokio::time::Instant::now();
            if record.is_settled() || now >= deadline {
                return Ok(Some(record));
            }
            if now.duration_since(asked_at) + EARLY_ANSWER_PAUSE < Duration::from_millis(wait_ms) {
                tokio::time::sleep(EARLY_ANSWER_PAUSE.min(deadline - now)).await;
            }
        }
    }

    async fn delete(&self, key: &RequestKey) -> Result<bool> {
        let call = self.request(Method::DELETE, key, "", "delete")?;
        let (status, bytes) = call.send().await?;
        match status {
            StatusCode::NO_CONTENT => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(status, &bytes, key, None)),
        }
    }

    /// Does nothing and returns 0: the service sweeps its store on its own
    /// schedule, and correctness never depends on sweeping (records past
    /// retention are treated as absent by every other operation).
    async fn sweep(&self) -> Result<u64> {
        Ok(0)
    }

    /// One `GET /v1/requests`. The keys are the caller's own (the service
    /// takes its namespace off); a cursor the service refuses is
    /// `InvalidInput { field: "cursor" }`, as with any store.
    async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        let call = self.request_path(Method::GET, "/v1/requests", "list")?;
        let call = Call {
            builder: call.builder.query(&list_params(query)),
            operation: call.operation,
        };
        let (status, bytes) = call.send().await?;
        if status != StatusCode::OK {
            return Err(collection_error(status, &bytes, query.cursor().is_some()));
        }
        let answer: ListResponse = decode(&bytes, "list")?;
        let records = answer
            .records
            .into_iter()
            .map(|body| {
                let key = parsed(body.key.clone(), RequestKey::parse)?;
                // Listings carry no results: the `null` of a completed
                // record here is "not sent", not the result `null`.
                let mut record = record_from_body(&key, body)?;
                record.result = None;
                Ok(record)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ListPage::new(
            records,
            answer.next_cursor.map(ListCursor::from_store),
        ))
    }

    /// With an empty prefix, one `GET /v1/stats` (which the service may
    /// answer from counts up to its `--stats-max-age-ms` old). With a
    /// prefix, which `/v1/stats` does not take, the records under it are
    /// listed page by page (500 a page) and counted here with
    /// [`StoreStats::add`]: exact, and as costly as reading them all. The
    /// age of the oldest live lease is taken against the service's clock,
    /// read off each live record as its lease's end minus its time left.
    async fn counts(&self, prefix: &str) -> Result<StoreStats> {
        if prefix.is_empty() {
            self.stats().await
        } else {
            self.counts_by_listing(prefix).await
        }
    }
}

/// Characters kept as they are in a key's path segment: RFC 3986's
/// unreserved set. Everything else (`|`, `/`, space, `%`, non-ASCII, …) is
/// percent-encoded, so the service decodes exactly the caller's key.
const KEY_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `key` as one percent-encoded path segment.
///
/// The keys `.` and `..` cannot be sent: URL parsers (reqwest's included)
/// resolve them, even percent-encoded, as "this" and "parent" path segments
/// before the request leaves, so the service would never see them.
fn key_segment(key: &RequestKey) -> Result<String> {
    if matches!(key.as_str(), "." | "..") {
        return Err(Error::InvalidInput {
            field: "key",
            reason: format!(
                "{:?} cannot be sent over HTTP: URLs resolve it as a dot path segment",
                key.as_str()
            ),
        });
    }
    Ok(utf8_percent_encode(key.as_str(), KEY_SEGMENT).to_string())
}

/// A request ready to send, and what it is for error messages.
struct Call {
    builder: RequestBuilder,
    operation: &'static str,
}

impl Call {
    async fn send_json(self, body: &(impl serde::Serialize + Sync)) -> Result<(StatusCode, Bytes)> {
        Call {
            builder: self.builder.json(body),
            operation: self.operation,
        }
        .send()
        .await
    }

    /// Sends the request and reads the whole answer.
    async fn send(self) -> Result<(StatusCode, Bytes)> {
        let operation = self.operation;
        let fail = |source: reqwest::Error| transport_error(operation, source);
        let response = self.builder.send().await.map_err(fail)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(fail)?;
        Ok((status, bytes))
    }
}

/// A request that could not be made or whose answer did not arrive.
fn transport_error(operation: &'static str, source: reqwest::Error) -> Error {
    if source.is_builder() {
        return Error::InvalidInput {
            field: "request",
            reason: format!(
                "cannot build the {operation} request: {}",
                source.without_url()
            ),
        };
    }
    // The URL is left out: it may carry a password.
    Error::unavailable(
        BACKEND,
        TransportError {
            operation,
            source: source.without_url(),
        },
    )
}

#[derive(Debug)]
struct TransportError {
    operation: &'static str,
    source: reqwest::Error,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} request failed", self.operation)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// An answer of the service that says it cannot serve now (5xx, 408, 429).
#[derive(Debug)]
struct ServerError {
    status: StatusCode,
    code: String,
    message: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ServerError {}

/// The error of a non-success answer. `token` is the lease of a fenced
/// operation, the only kind that can answer 409.
fn status_error(status: StatusCode, body: &[u8], key: &RequestKey, token: Option<Token>) -> Error {
    let (code, message) = error_parts(body);
    match (status, token) {
        (StatusCode::CONFLICT, Some(token)) => Error::LeaseLost {
            key: key.clone(),
            token,
        },
        (StatusCode::UNPROCESSABLE_ENTITY, _) => Error::FingerprintMismatch {
            key: key.clone(),
            reason: message,
        },
        (StatusCode::BAD_REQUEST, _) if code == "invalid_key" => Error::InvalidInput {
            field: "key",
            reason: message,
        },
        _ => common_error(status, code, message),
    }
}

/// The error of an answer every route may give: bad input, a refused token,
/// the service unable to serve now, or something unexpected.
fn common_error(status: StatusCode, code: String, message: String) -> Error {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => Error::InvalidInput {
            field: "request",
            reason: message,
        },
        StatusCode::UNAUTHORIZED => Error::Backend {
            backend: BACKEND,
            message: format!("the service refused the bearer token: {message}"),
        },
        _ if status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error() =>
        {
            Error::unavailable(
                BACKEND,
                ServerError {
                    status,
                    code,
                    message,
                },
            )
        }
        _ => Error::Backend {
            backend: BACKEND,
            message: format!("unexpected answer {status} {code}: {message}"),
        },
    }
}

/// The code and message of an error answer (the start of the body when it
/// is not the API's error body).
fn error_parts(body: &[u8]) -> (String, String) {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => (error.code, error.message),
        Err(_) => (
            String::new(),
            String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        ),
    }
}

/// The error of a non-success answer of a route without a key (`list`,
/// `stats`). A 400 to a request that sent a cursor and names the cursor is
/// the cursor refused.
fn collection_error(status: StatusCode, body: &[u8], sent_cursor: bool) -> Error {
    let (code, message) = error_parts(body);
    if status == StatusCode::BAD_REQUEST && sent_cursor && message.contains("cursor") {
        return Error::InvalidInput {
            field: "cursor",
            reason: message,
        };
    }
    common_error(status, code, message)
}

/// The query parameters of `query`, as `GET /v1/requests` takes them.
fn list_params(query: &ListQuery) -> ListParams {
    let (state, stuck, retry) = match query.filter() {
        StateFilter::Any => (None, None, None),
        StateFilter::Processing { stuck_only } => {
            (Some("processing"), stuck_only.then_some(true), None)
        }
        StateFilter::Completed => (Some("completed"), None, None),
        StateFilter::Failed { retry_allowed } => (
            Some("failed"),
            None,
            retry_allowed.map(|allowed| if allowed { "allowed" } else { "none" }),
        ),
    };
    ListParams {
        state: state.map(str::to_owned),
        stuck,
        retry: retry.map(str::to_owned),
        kind: query.kind().map(|kind| kind.as_str().to_owned()),
        prefix: Some(query.prefix().to_owned()).filter(|prefix| !prefix.is_empty()),
        order: Some(
            match query.order() {
                ListOrder::NewestFirst => "newest",
                ListOrder::OldestFirst => "oldest",
            }
            .to_owned(),
        ),
        limit: Some(query.limit()),
        cursor: query.cursor().map(|cursor| cursor.as_str().to_owned()),
    }
}

fn state_counts(body: crate::model::StateCountsBody) -> StateCounts {
    let mut counts = StateCounts::default();
    counts.processing = body.processing;
    counts.completed = body.completed;
    counts.failed = body.failed;
    counts
}

/// The service's clock when it read `record`: for a live lease, its end
/// minus the time it had left (both the service's figures); otherwise this
/// machine's clock, which a count uses only for live leases.
fn service_now(record: &Record) -> Timestamp {
    match (record.lease_expires_at, record.lease_remaining) {
        (Some(end), Some(left)) if !left.is_zero() => chrono::Duration::from_std(left)
            .ok()
            .and_then(|left| end.checked_sub_signed(left))
            .unwrap_or_else(Utc::now),
        _ => Utc::now(),
    }
}

/// An answer that does not say what the API promises.
fn bad_answer(what: impl fmt::Display) -> Error {
    Error::Backend {
        backend: BACKEND,
        message: format!("unexpected answer from the service: {what}"),
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], operation: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| bad_answer(format!("{operation} body: {e}")))
}

fn timestamp(text: &str, field: &str) -> Result<Timestamp> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| bad_answer(format!("{field} {text:?} is not RFC 3339: {e}")))
}

fn required<T>(value: Option<T>, state: &str, field: &str) -> Result<T> {
    value.ok_or_else(|| bad_answer(format!("a {state} answer without {field}")))
}

fn token_of(value: u64) -> Result<Token> {
    Token::new(value).map_err(|e| bad_answer(format!("token {value}: {e}")))
}

/// Parses a validated value the service sent back.
fn parsed<T>(value: String, parse: impl FnOnce(String) -> Result<T>) -> Result<T> {
    parse(value).map_err(bad_answer)
}

/// `result` as the JSON value a `complete` body carries.
fn json_result(result: &[u8]) -> Result<Box<RawValue>> {
    let invalid = |reason: String| Error::InvalidInput {
        field: "result",
        reason,
    };
    let text = std::str::from_utf8(result).map_err(|e| {
        invalid(format!(
            "the HTTP API carries JSON results, and these bytes are not UTF-8: {e}"
        ))
    })?;
    RawValue::from_string(text.to_owned()).map_err(|e| {
        invalid(format!(
            "the HTTP API carries JSON results, and these bytes are not JSON: {e}"
        ))
    })
}

/// A claim answer. Flat, every field optional, since which fields are there
/// depends on `state` (the server's `ClaimResponse` is an internally tagged
/// enum holding a `RawValue`, which serde cannot deserialize).
#[derive(Debug, Deserialize)]
struct ClaimAnswer {
    state: Option<String>,
    token: Option<u64>,
    attempt: Option<u32>,
    lease_expires_at: Option<String>,
    lease_ms: Option<u64>,
    takeover: Option<bool>,
    owner: Option<String>,
    retry_after_ms: Option<u64>,
    result: Option<Box<RawValue>>,
    completed_at: Option<String>,
    error: Option<ErrorInfo>,
}

fn claim_from_answer(
    key: &RequestKey,
    options: &ClaimOptions,
    status: StatusCode,
    a: ClaimAnswer,
) -> Result<Claim> {
    let state = a.state.ok_or_else(|| bad_answer("a claim without state"))?;
    let expected = match state.as_str() {
        "acquired" => StatusCode::CREATED,
        "in_flight" => StatusCode::ACCEPTED,
        "completed" | "failed" => StatusCode::OK,
        other => return Err(bad_answer(format!("claim state {other:?}"))),
    };
    if status != expected {
        return Err(bad_answer(format!(
            "a {state} claim answered with {status}"
        )));
    }
    let key = key.clone();
    let token = token_of(required(a.token, &state, "token")?)?;
    let attempt = required(a.attempt, &state, "attempt")?;
    Ok(match state.as_str() {
        "acquired" => Claim::Acquired(
            Lease::new(
                key,
                token,
                attempt,
                options.lease_ttl(),
                timestamp(
                    &required(a.lease_expires_at, &state, "lease_expires_at")?,
                    "lease_expires_at",
                )?,
                Duration::from_millis(required(a.lease_ms, &state, "lease_ms")?),
            )
            .with_takeover(required(a.takeover, &state, "takeover")?),
        ),
        "in_flight" => {
            let mut in_flight = InFlight::new(
                key,
                token,
                attempt,
                timestamp(
                    &required(a.lease_expires_at, &state, "lease_expires_at")?,
                    "lease_expires_at",
                )?,
                Duration::from_millis(required(a.retry_after_ms, &state, "retry_after_ms")?),
            );
            in_flight.owner = a.owner.map(|o| parsed(o, Owner::parse)).transpose()?;
            Claim::InFlight(in_flight)
        }
        "completed" => Claim::Completed(Completed::new(
            key,
            token,
            attempt,
            // A JSON `null` result reads as an absent field; it is still the
            // result `null`.
            Bytes::from(
                a.result
                    .map_or_else(|| "null".to_owned(), |r| r.get().to_owned()),
            ),
            timestamp(
                &required(a.completed_at, &state, "completed_at")?,
                "completed_at",
            )?,
        )),
        _ => {
            let error = required(a.error, &state, "error")?;
            Claim::Failed(Failed::new(
                key,
                token,
                attempt,
                JobError::new(error.message, error.retryable),
                a.retry_after_ms.map(Duration::from_millis),
            ))
        }
    })
}

fn record_from_body(key: &RequestKey, body: RecordBody) -> Result<Record> {
    let state = match body.state.as_str() {
        "processing" => RecordState::Processing,
        "completed" => RecordState::Completed,
        "failed" => RecordState::Failed,
        other => return Err(bad_answer(format!("record state {other:?}"))),
    };
    let optional_time =
        |value: Option<String>, field: &str| value.map(|text| timestamp(&text, field)).transpose();
    let mut record = Record::new(
        key.clone(),
        parsed(body.kind, Kind::parse)?,
        state,
        token_of(body.token)?,
        timestamp(&body.created_at, "created_at")?,
    );
    record.fingerprint = body
        .fingerprint
        .map(|f| parsed(f, Fingerprint::parse))
        .transpose()?;
    record.attempt = body.attempt;
    record.max_attempts = body.max_attempts;
    record.owner = body.owner.map(|o| parsed(o, Owner::parse)).transpose()?;
    record.lease_expires_at = optional_time(body.lease_expires_at, "lease_expires_at")?;
    record.lease_remaining = body.lease_ms.map(Duration::from_millis);
    // A completed record always has a result; a JSON `null` there reads
    // as `None` but is the result `null`.
    record.result = match state {
        RecordState::Completed => Some(Bytes::from(
            body.result
                .map_or_else(|| "null".to_owned(), |r| r.get().to_owned()),
        )),
        _ => body.result.map(|r| Bytes::from(r.get().to_owned())),
    };
    record.error = body.error.map(|e| JobError::new(e.message, e.retryable));
    record.retry_after = body.retry_after_ms.map(Duration::from_millis);
    record.updated_at = timestamp(&body.updated_at, "updated_at")?;
    record.completed_at = optional_time(body.completed_at, "completed_at")?;
    record.expires_at = optional_time(body.expires_at, "expires_at")?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_path_segment() {
        let segment = |k: &str| key_segment(&RequestKey::parse(k).unwrap()).unwrap();
        assert_eq!(
            segment("image|ab"),
            "image%7Cab",
            "docs/protocol.md §7's example"
        );
        assert_eq!(
            segment("a/b c%7C"),
            "a%2Fb%20c%257C",
            "slash, space, percent"
        );
        assert_eq!(segment("é画"), "%C3%A9%E7%94%BB", "non-ASCII as UTF-8");
        assert_eq!(segment("A-z_0.9~"), "A-z_0.9~", "unreserved kept");
        assert_eq!(segment("..."), "...", "only exact dot segments are special");
        for dots in [".", ".."] {
            let refused = key_segment(&RequestKey::parse(dots).unwrap());
            assert!(
                matches!(refused, Err(Error::InvalidInput { field: "key", .. })),
                "{dots:?}: {refused:?}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_token_or_a_password() {
        let store = HttpStore::new("http://user:hunter2@127.0.0.1:7700/")
            .unwrap()
            .with_bearer_token("very-secret-bearer-token");
        let shown = format!("{store:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("127.0.0.1:7700"), "{shown}");
    }

    #[test]
    fn base_urls_are_checked() {
        for bad in ["127.0.0.1:7700", "ftp://host", "http://host/?a=1", "nope"] {
            assert!(
                matches!(
                    HttpStore::new(bad),
                    Err(Error::InvalidInput {
                        field: "base_url",
                        ..
                    })
                ),
                "{bad:?} must be refused"
            );
        }
        let store = HttpStore::new("http://gateway/onceflight/").unwrap();
        assert_eq!(store.base, "http://gateway/onceflight", "no trailing slash");
    }

    #[test]
    fn results_must_be_json_text() {
        assert_eq!(
            json_result(br#"{"a":[1,2]}"#).unwrap().get(),
            r#"{"a":[1,2]}"#
        );
        for bad in [&b"not json"[..], b"\xff\xfe", b""] {
            assert!(
                matches!(
                    json_result(bad),
                    Err(Error::InvalidInput {
                        field: "result",
                        ..
                    })
                ),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn statuses_map_to_meaningful_errors() {
        let key = RequestKey::parse("image|x").unwrap();
        let token = Token::new(7).unwrap();
        let body = |code: &str| {
            serde_json::to_vec(&serde_json::json!({"error": {"code": code, "message": "m"}}))
                .unwrap()
        };
        let e = |status: u16, code: &str, token: Option<Token>| {
            status_error(
                StatusCode::from_u16(status).unwrap(),
                &body(code),
                &key,
                token,
            )
        };
        assert!(
            matches!(e(409, "lease_lost", Some(token)), Error::LeaseLost { token: t, .. } if t == token)
        );
        assert!(matches!(
            e(422, "fingerprint_mismatch", None),
            Error::FingerprintMismatch { .. }
        ));
        assert!(matches!(
            e(400, "invalid_key", None),
            Error::InvalidInput { field: "key", .. }
        ));
        assert!(matches!(
            e(400, "invalid_request", None),
            Error::InvalidInput {
                field: "request",
                ..
            }
        ));
        assert!(matches!(
            e(413, "too_large", Some(token)),
            Error::InvalidInput {
                field: "request",
                ..
            }
        ));
        assert!(matches!(
            e(401, "unauthorized", None),
            Error::Backend { .. }
        ));
        assert!(e(503, "store_unavailable", None).is_retryable(), "503");
        assert!(e(500, "internal", None).is_retryable(), "5xx");
        assert!(matches!(
            e(404, "not_found", Some(token)),
            Error::Backend { .. }
        ));
    }
}

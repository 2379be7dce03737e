//! `PgStore`: every operation one statement (a SQL function call), judged by
//! Postgres's clock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Datelike, Utc};
use onceflight_core::backend::check_lease_ttl;
use onceflight_core::backend::waiters::{Waiters, wait_pushed};
use onceflight_core::{
    ChangeFeed, Claim, ClaimOptions, Completed, Error, Failed, Fingerprint, InFlight, JobError,
    Kind, Lease, ListCursor, ListPage, ListQuery, Owner, Record, RecordState, Renewal, RequestKey,
    RequestStore, Result, StateCounts, StoreStats, Token,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, Row};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::answer::ClaimAnswer;
use crate::config::{PgConfig, PgPooler};
use crate::connect;
use crate::error::{BACKEND, TimedOut, map};
use crate::sql::{self, Arg, Statement, Statements};
use crate::waiters::{Fanout, Watch, spawn_listener};

/// The embedded migrations (`migrations/`), applied by [`PgStore::migrate`].
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Longest retention honoured (100 years): "keep forever" in practice.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Records examined per statement by [`RequestStore::sweep`] (and
/// waiters' registrations deleted per statement).
const SWEEP_BATCH: i64 = 1000;

/// A [`RequestStore`] on PostgreSQL.
///
/// Every operation is one round trip: a call of one of the SQL functions in
/// `migrations/`, which decide atomically inside Postgres with its clock.
/// Claims that find a live lease, a result or a final failure read without
/// locking or writing. Waiters register their key and are woken through
/// LISTEN/NOTIFY on one connection per store, fanned out in process; a
/// write on a key nobody waits for notifies no one.
///
/// `Debug` shows neither password.
pub struct PgStore {
    pool: PgPool,
    pooler: PgPooler,
    statements: Statements,
    schema: String,
    /// A session of its own (the listen URL, else the store URL), for
    /// migrations.
    session_url: String,
    session_options: PgConnectOptions,
    retention_ms: i64,
    wait_fallback: Duration,
    operation_timeout: Duration,
    /// The server-side bounds of one statement sent through a
    /// transaction-mode pooler, to go in front of it in the same query
    /// string (see [`server_timeout`]).
    local_timeouts: String,
    waiters: Arc<Waiters>,
    /// Fed by the LISTEN connection: deletions, for result caches.
    feed: ChangeFeed,
    listener: JoinHandle<()>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not derived: the connect options hold the password in clear.
        f.debug_struct("PgStore")
            .field("pool", &self.pool)
            .field("pooler", &self.pooler)
            .field("schema", &self.schema)
            .field(
                "session_url",
                &onceflight_core::backend::redact_url(&self.session_url),
            )
            .field("retention_ms", &self.retention_ms)
            .field("wait_fallback", &self.wait_fallback)
            .field("operation_timeout", &self.operation_timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn invalid_config(reason: String) -> Error {
    Error::InvalidInput {
        field: "store",
        reason,
    }
}

/// Checks a schema name: it is spliced into every statement and into
/// `CREATE SCHEMA`, so only plain lowercase identifiers are accepted.
fn check_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid_config(format!(
            "schema {schema:?} must be 1–63 characters of [a-z0-9_], not starting with a digit"
        )))
    }
}

impl PgStore {
    /// Connects with `config`: the pool, and the LISTEN connection. Does not
    /// migrate; call [`PgStore::migrate`] (or `onceflight migrate`) first.
    ///
    /// Refused with a message saying what to set: a transaction-mode pooler
    /// without [`PgConfig::listen_url`], a store or listen URL seen to go
    /// through a transaction-mode pooler the configuration does not declare,
    /// a listen URL on another database, a certificate that TLS refuses, and
    /// a zero retention.
    pub async fn connect(config: PgConfig) -> Result<Self> {
        check_schema(&config.schema)?;
        if config.retention.is_zero() {
            // Every record would be past retention as it is written: each
            // claim would start over, and no result would ever be shared.
            return Err(invalid_config(
                "retention must be more than zero: it is how long results and failures are kept"
                    .to_owned(),
            ));
        }
        let operation_timeout = config.operation_timeout.max(Duration::from_millis(1));
        let session_url = match (&config.listen_url, config.pooler) {
            (Some(url), _) => url.clone(),
            (None, PgPooler::None) => config.url.clone(),
            (None, PgPooler::Transaction) => {
                return Err(invalid_config(
                    "a transaction-mode pooler cannot hold the LISTEN connection that wakes \
                     waiters, nor run migrations: set --pg-listen-url (ONCEFLIGHT_PG_LISTEN_URL; \
                     PgConfig::listen_url) to a direct or session-mode URL of the same database"
                        .to_owned(),
                ));
            }
        };
        let options = connect::options(&config.url, config.pooler)?;
        // Connect directly first: a pool only says it timed out, while this
        // says why (refused, unknown host, bad password, TLS, a pooler).
        let database = match config.pooler {
            PgPooler::None => {
                connect::check_sessions(&options, &config.url, "the store URL").await?
            }
            PgPooler::Transaction => connect::check_reachable(&options, &config.url).await?,
        };
        let session_options = connect::options(&session_url, PgPooler::None)?;
        if config.listen_url.is_some() {
            let listen_database =
                connect::check_sessions(&session_options, &session_url, "the listen URL").await?;
            if listen_database != database {
                return Err(invalid_config(format!(
                    "the listen URL reaches database {listen_database:?} but the store is in {database:?}: \
                     NOTIFY only reaches listeners of the same database"
                )));
            }
        }
        let server_timeout = server_timeout(operation_timeout);
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size.max(1))
            .acquire_timeout(operation_timeout)
            // No ping before each operation: it would be a second round trip.
            // A connection that died while idle fails its next statement,
            // which answers `Unavailable` (safe to retry) and is discarded.
            .test_before_acquire(false);
        let pool = match config.pooler {
            // The session keeps its settings: set once per connection, and
            // every statement on it is bounded.
            PgPooler::None => {
                let set = format!(
                    "SET statement_timeout = {ms}; SET lock_timeout = {ms}",
                    ms = server_timeout.as_millis()
                );
                pool.after_connect(move |conn, _| {
                    let sql = sqlx::AssertSqlSafe(set.clone());
                    Box::pin(async move { conn.execute(sqlx::raw_sql(sql)).await.map(drop) })
                })
            }
            // Session settings do not stick behind a transaction-mode pooler:
            // each statement carries its own (see `local_timeouts`).
            PgPooler::Transaction => pool,
        };
        let pool = pool
            .connect_with(options)
            .await
            .map_err(|e| connect::connect_error(&config.url, e))?;
        let waiters = Arc::new(Waiters::default());
        // The LISTEN connection lives outside the operations' pool, so that
        // `pool_size` connections stay free for operations.
        let watch = Watch {
            ping_after: config.listen_ping.max(Duration::from_millis(10)),
            timeout: operation_timeout,
        };
        let feed = ChangeFeed::new();
        let listener = spawn_listener(
            session_options.clone(),
            Fanout {
                prefix: format!("{}:", config.schema),
                waiters: Arc::clone(&waiters),
                feed: feed.clone(),
            },
            watch,
        )
        .await
        .map_err(map)?;
        Ok(Self {
            pool,
            pooler: config.pooler,
            statements: Statements::new(&config.schema),
            schema: config.schema,
            session_url,
            session_options,
            // Clamped to 100 years ("forever"), which Postgres intervals hold.
            retention_ms: ms(config.retention.min(MAX_RETENTION)),
            wait_fallback: config.wait_fallback.max(Duration::from_millis(10)),
            operation_timeout,
            local_timeouts: format!(
                "SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}; ",
                ms = server_timeout.as_millis()
            ),
            waiters,
            feed,
            listener,
        })
    }

    /// Creates the schema if needed and applies the embedded migrations, on
    /// a session of its own: the listen URL when one is set, else the store
    /// URL — never through a transaction-mode pooler, which could hand the
    /// migrator's lock and its statements to different server connections.
    /// Each migration is applied in one transaction, so none is ever half
    /// applied. Safe to run from several instances at once.
    pub async fn migrate(&self) -> Result<()> {
        // One connection, its search_path set to the schema: the migrations
        // create their objects unqualified (the functions they create pin
        // their own search_path). The schema name was checked by
        // `check_schema`: a plain identifier.
        let set_search_path = format!("SET search_path TO \"{}\"", self.schema);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.operation_timeout.max(Duration::from_secs(30)))
            .after_connect(move |conn, _| {
                let sql = sqlx::AssertSqlSafe(set_search_path.clone());
                Box::pin(async move { conn.execute(sqlx::raw_sql(sql)).await.map(drop) })
            })
            .connect_with(self.session_options.clone())
            .await
            .map_err(|e| connect::connect_error(&self.session_url, e))?;
        let result = self.migrate_on(&pool).await;
        pool.close().await;
        result
    }

    async fn migrate_on(&self, pool: &PgPool) -> Result<()> {
        let create =
            || sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema));
        // Two instances creating the schema at once can race on the catalog's
        // unique index; the second try finds it.
        if pool.execute(sqlx::raw_sql(create())).await.is_err() {
            pool.execute(sqlx::raw_sql(create())).await.map_err(map)?;
        }
        MIGRATOR.run(pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => map(e),
            other => Error::Backend {
                backend: BACKEND,
                message: other.to_string(),
            },
        })
    }

    /// Checks that the schema has every migration this build embeds, for
    /// deployments that migrate separately (`onceflight migrate`): a schema
    /// that is missing or behind is an error, not failing requests later.
    pub async fn check_migrated(&self) -> Result<()> {
        let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let statement = Statement::new(
            "SELECT coalesce(max(version), 0) AS version FROM {schema}._sqlx_migrations \
             WHERE success",
            &self.schema,
        );
        let row = self.fetch_one(&statement, &[]).await?;
        let applied: i64 = get(&row, "version")?;
        if applied < latest {
            return Err(Error::Backend {
                backend: BACKEND,
                message: format!(
                    "schema {:?} is migrated up to {applied}, this build needs {latest}",
                    self.schema
                ),
            });
        }
        Ok(())
    }

    /// The connection pool, for benchmarks and tests that measure the store
    /// beside bare statements on the same pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema this store works in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// What the store URL reaches.
    pub fn pooler(&self) -> PgPooler {
        self.pooler
    }

    /// Runs one statement, bounded by the operation timeout. A statement cut
    /// off by the timeout is dropped mid-flight; sqlx then discards or
    /// resynchronises that connection before it serves anyone else.
    async fn bounded<T>(
        &self,
        statement: impl Future<Output = std::result::Result<T, sqlx::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.operation_timeout, statement).await {
            Ok(result) => result.map_err(map),
            Err(_) => Err(Error::unavailable(
                BACKEND,
                TimedOut(self.operation_timeout),
            )),
        }
    }

    /// Runs `statement` with `args` in one round trip and returns its first
    /// row, if any: prepared and bound directly, as one simple-protocol
    /// query through a transaction-mode pooler.
    async fn fetch_optional(
        &self,
        statement: &Statement,
        args: &[Arg<'_>],
    ) -> Result<Option<PgRow>> {
        match self.pooler {
            PgPooler::None => {
                self.bounded((&self.pool).fetch_optional(statement.bind(args)))
                    .await
            }
            PgPooler::Transaction => {
                let sql = sqlx::AssertSqlSafe(self.pooled_sql(statement, args)?);
                self.bounded((&self.pool).fetch_optional(sqlx::raw_sql(sql)))
                    .await
            }
        }
    }

    /// Runs `statement` with `args` in one round trip and returns its rows,
    /// sent like [`Self::fetch_optional`].
    async fn fetch_all(&self, statement: &Statement, args: &[Arg<'_>]) -> Result<Vec<PgRow>> {
        match self.pooler {
            PgPooler::None => {
                self.bounded((&self.pool).fetch_all(statement.bind(args)))
                    .await
            }
            PgPooler::Transaction => {
                let sql = sqlx::AssertSqlSafe(self.pooled_sql(statement, args)?);
                self.bounded((&self.pool).fetch_all(sqlx::raw_sql(sql)))
                    .await
            }
        }
    }

    /// The statement listing the page `query` asks for, and its values; the
    /// cursor's position is kept in `after`, which the values borrow.
    fn listing<'q>(
        &self,
        query: &'q ListQuery,
        after: &'q mut Option<(DateTime<Utc>, String)>,
    ) -> Result<(Statement, Vec<Arg<'q>>)> {
        *after = query.cursor().map(ListCursor::to_keyset).transpose()?;
        if let Some((at, _)) = after
            && !(1..=9999).contains(&at.year())
        {
            // No record of this store was created then: the cursor was not
            // written by it (and a literal of such a year would need a sign).
            return Err(Error::InvalidInput {
                field: "cursor",
                reason: "is not a cursor this store wrote; start again without one".to_owned(),
            });
        }
        Ok(sql::listing(&self.schema, query, after.as_ref()))
    }

    /// The plan Postgres makes for the statement [`RequestStore::list`]
    /// sends for `query` (the same text and values, sent the same way),
    /// as `EXPLAIN (FORMAT JSON)` writes it.
    ///
    /// For tests, which check that listings follow the index rather than
    /// read the whole table; not part of the store's API.
    #[doc(hidden)]
    pub async fn explain_listing(&self, query: &ListQuery) -> Result<String> {
        let mut after = None;
        let (statement, args) = self.listing(query, &mut after)?;
        let explain = Statement::new(
            &format!("EXPLAIN (FORMAT JSON) {}", statement.text()),
            &self.schema,
        );
        let row = self.fetch_one(&explain, &args).await?;
        // The plan is `json`, whose text sqlx only decodes unchecked.
        row.try_get_unchecked::<String, _>(0).map_err(map)
    }

    /// `statement` as one simple-protocol query for a transaction-mode
    /// pooler, preceded by its server-side time bounds. The query string is
    /// one implicit transaction, so `SET LOCAL` holds for the statement that
    /// follows (Postgres arms `statement_timeout` afresh for each statement
    /// of a query string) and ends with it: nothing is left on the server
    /// connection for the pooler's next client.
    fn pooled_sql(&self, statement: &Statement, args: &[Arg<'_>]) -> Result<String> {
        let mut sql = self.local_timeouts.clone();
        sql.push_str(&statement.render(args)?);
        Ok(sql)
    }

    /// [`Self::fetch_optional`] of a statement that always answers a row.
    async fn fetch_one(&self, statement: &Statement, args: &[Arg<'_>]) -> Result<PgRow> {
        self.fetch_optional(statement, args)
            .await?
            .ok_or_else(|| corrupt("a statement that always answers a row answered none".into()))
    }

    /// Calls a fenced function (`renew`, `complete`, `fail`, `release`) and
    /// returns the record it answered, or `LeaseLost`.
    async fn fenced(
        &self,
        statement: &Statement,
        args: &[Arg<'_>],
        key: &RequestKey,
        token: Token,
    ) -> Result<Record> {
        let row = self.fetch_one(statement, args).await?;
        let outcome: String = row.try_get("outcome").map_err(map)?;
        if outcome != "ok" {
            return Err(Error::lease_lost(key, token));
        }
        record(&row, key)
    }

    /// A waiter's read of `key`: [`RequestStore::get`], registering interest
    /// in the key's next change for `asleep` (at least), so that the write
    /// notifies. Nothing is registered for a record that is absent or has
    /// nothing left to wait for.
    async fn watch(&self, key: &RequestKey, asleep: Duration) -> Result<Option<Record>> {
        // Clamped like retention: Postgres intervals hold 100 years.
        let args = [
            Arg::Text(key.as_str()),
            Arg::BigInt(ms(asleep.min(MAX_RETENTION))),
        ];
        let row = self.fetch_optional(&self.statements.watch, &args).await?;
        row.map(|row| record(&row, key)).transpose()
    }
}

/// How long Postgres itself lets one of the store's statements run or wait
/// for a lock (`statement_timeout`, `lock_timeout`): a little under the
/// operation timeout.
///
/// The client gives up on an operation after the operation timeout, but a
/// statement it stops waiting for would go on on the server: holding its
/// connection (which sqlx resynchronises before reuse), the row locks it
/// took, and possibly committing a lease no caller was told about. Bounded
/// on the server a little sooner, the statement is cancelled there and
/// rolled back, and the caller gets Postgres's answer (`Unavailable`) in
/// time. Only when waiting for a pooled connection took most of the budget
/// can the client give up first; the statement then still ends on the
/// server within this bound.
fn server_timeout(operation_timeout: Duration) -> Duration {
    let margin = (operation_timeout / 10).min(Duration::from_millis(500));
    // Whole milliseconds, never zero (which would mean "no limit").
    let ms = (operation_timeout - margin).as_millis().max(1);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn token(value: i64) -> Result<Token> {
    u64::try_from(value)
        .ok()
        .and_then(|v| Token::new(v).ok())
        .ok_or_else(|| corrupt(format!("token {value} out of range")))
}

fn corrupt(message: String) -> Error {
    Error::Backend {
        backend: BACKEND,
        message,
    }
}

pub(crate) fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
    row: &'r PgRow,
    column: &str,
) -> Result<T> {
    row.try_get(column).map_err(map)
}

fn millis(value: i64) -> Duration {
    Duration::from_millis(u64::try_from(value).unwrap_or(0))
}

/// `until − now` on the database's clock, zero once past.
fn remaining(until: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (until - now).to_std().unwrap_or(Duration::ZERO)
}

fn job_error(row: &PgRow) -> Result<Option<JobError>> {
    let message: Option<String> = get(row, "error_message")?;
    let retryable: Option<bool> = get(row, "error_retryable")?;
    Ok(message.map(|m| JobError::new(m, retryable.unwrap_or(true))))
}

/// The claim of `answer`, the answer of `onceflight_claim_v2`, which holds
/// only the fields its outcome needs.
fn claim(answer: ClaimAnswer, key: &RequestKey, options: &ClaimOptions) -> Result<Claim> {
    let missing = |what: &str| corrupt(format!("{what} for key {:?}", key.as_str()));
    if answer.outcome == "mismatch" {
        let kind = answer
            .kind
            .ok_or_else(|| missing("a mismatch without the record's kind"))?;
        let kind = Kind::parse(kind).map_err(|e| corrupt(e.to_string()))?;
        return Err(Error::fingerprint_mismatch(key, &kind, options));
    }
    let now = answer.db_now;
    let token = token(
        answer
            .token
            .ok_or_else(|| missing("an answer without a token"))?,
    )?;
    let attempt = answer
        .attempt
        .ok_or_else(|| missing("an answer without an attempt"))?;
    let attempt = u32::try_from(attempt).unwrap_or(0);
    let lease_end = |what: &str| answer.lease_expires_at.ok_or_else(|| missing(what));
    Ok(match answer.outcome.as_str() {
        "acquired" => {
            let end = lease_end("a granted lease without an end")?;
            let ttl = millis(
                answer
                    .lease_ttl_ms
                    .ok_or_else(|| missing("a granted lease without a length"))?,
            );
            Claim::Acquired(
                Lease::new(key.clone(), token, attempt, ttl, end, remaining(end, now))
                    .with_takeover(
                        answer
                            .takeover
                            .ok_or_else(|| missing("a granted lease without its takeover flag"))?,
                    ),
            )
        }
        "in_flight" => {
            let end = lease_end("a live lease without an end")?;
            let mut in_flight =
                InFlight::new(key.clone(), token, attempt, end, remaining(end, now));
            in_flight.owner = answer
                .owner
                .map(Owner::parse)
                .transpose()
                .map_err(|e| corrupt(e.to_string()))?;
            Claim::InFlight(in_flight)
        }
        "completed" => {
            let result = answer
                .result
                .ok_or_else(|| missing("a completed record without a result"))?;
            let completed_at = answer
                .completed_at
                .ok_or_else(|| missing("a completed record without its completion time"))?;
            let expires_at = answer
                .expires_at
                .ok_or_else(|| missing("a completed record without its retention"))?;
            Claim::Completed(
                Completed::new(
                    key.clone(),
                    token,
                    attempt,
                    Bytes::from(result),
                    completed_at,
                )
                .with_retention_remaining(remaining(expires_at, now)),
            )
        }
        "failed" => {
            let message = answer
                .error_message
                .ok_or_else(|| missing("a failed record without an error"))?;
            let error = JobError::new(message, answer.error_retryable.unwrap_or(true));
            Claim::Failed(Failed::new(
                key.clone(),
                token,
                attempt,
                error,
                answer.retry_at.map(|at| remaining(at, now)),
            ))
        }
        other => return Err(corrupt(format!("unknown claim outcome {other:?}"))),
    })
}

/// The state in a row's `state` column.
fn state(row: &PgRow) -> Result<RecordState> {
    match get::<String>(row, "state")?.as_str() {
        "processing" => Ok(RecordState::Processing),
        "completed" => Ok(RecordState::Completed),
        "failed" => Ok(RecordState::Failed),
        other => Err(corrupt(format!("unknown state {other:?}"))),
    }
}

/// The record of a row holding `onceflight_records`' columns and `db_now`.
fn record(row: &PgRow, key: &RequestKey) -> Result<Record> {
    let now: DateTime<Utc> = get(row, "db_now")?;
    let state = state(row)?;
    let processing = state == RecordState::Processing;
    let lease_expires_at: Option<DateTime<Utc>> = get(row, "lease_expires_at")?;
    let retry_at: Option<DateTime<Utc>> = get(row, "retry_at")?;
    let result: Option<Vec<u8>> = get(row, "result")?;
    let mut record = Record::new(
        key.clone(),
        Kind::parse(get::<String>(row, "kind")?).map_err(|e| corrupt(e.to_string()))?,
        state,
        token(get(row, "token")?)?,
        get(row, "created_at")?,
    );
    record.fingerprint = get::<Option<String>>(row, "fingerprint")?
        .map(Fingerprint::parse)
        .transpose()
        .map_err(|e| corrupt(e.to_string()))?;
    record.attempt = u32::try_from(get::<i32>(row, "attempt")?).unwrap_or(0);
    record.max_attempts = u32::try_from(get::<i32>(row, "max_attempts")?).unwrap_or(0);
    record.owner = get::<Option<String>>(row, "owner")?
        .map(Owner::parse)
        .transpose()
        .map_err(|e| corrupt(e.to_string()))?;
    record.lease_expires_at = lease_expires_at.filter(|_| processing);
    record.lease_remaining = lease_expires_at
        .filter(|_| processing)
        .map(|at| remaining(at, now));
    record.result = result.map(Bytes::from);
    record.error = job_error(row)?;
    record.retry_after = retry_at
        .filter(|_| state == RecordState::Failed)
        .map(|at| remaining(at, now));
    record.updated_at = get(row, "updated_at")?;
    record.completed_at = get(row, "completed_at")?;
    let expires_at = get(row, "expires_at")?;
    record.expires_at = Some(expires_at);
    record.retention_remaining = Some(remaining(expires_at, now));
    Ok(record)
}

/// A token as Postgres's `bigint` (tokens are at most 2^53 − 1).
fn token_arg(token: Token) -> i64 {
    i64::try_from(token.get()).unwrap_or(i64::MAX)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl RequestStore for PgStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn claim_or_get(&self, key: &RequestKey, options: &ClaimOptions) -> Result<Claim> {
        let args = [
            Arg::Text(key.as_str()),
            Arg::Text(options.kind().as_str()),
            Arg::OptText(options.fingerprint().map(Fingerprint::as_str)),
            Arg::OptText(options.owner().map(Owner::as_str)),
            Arg::BigInt(ms(options.lease_ttl())),
            Arg::Int(i32::try_from(options.max_attempts()).unwrap_or(i32::MAX)),
            Arg::BigInt(ms(options.retry_backoff())),
            Arg::BigInt(self.retention_ms),
        ];
        let answer = match self.pooler {
            PgPooler::None => {
                let row = self.fetch_one(&self.statements.claim, &args).await?;
                ClaimAnswer::from_hit_or_decided(&row)?
            }
            PgPooler::Transaction => {
                let row = self
                    .fetch_one(&self.statements.claim_unprepared, &args)
                    .await?;
                ClaimAnswer::from_columns(&row)?
            }
        };
        claim(answer, key, options)
    }

    async fn renew(
        &self,
        key: &RequestKey,
        token: Token,
        ttl: Option<Duration>,
    ) -> Result<Renewal> {
        let ttl = ttl.map(check_lease_ttl).transpose()?;
        let args = [
            Arg::Text(key.as_str()),
            Arg::BigInt(token_arg(token)),
            Arg::OptBigInt(ttl.map(ms)),
            Arg::BigInt(self.retention_ms),
        ];
        let record = self
            .fenced(&self.statements.renew, &args, key, token)
            .await?;
        record.into_renewal(BACKEND)
    }

    async fn complete(&self, key: &RequestKey, token: Token, result: Bytes) -> Result<Record> {
        let args = [
            Arg::Text(key.as_str()),
            Arg::BigInt(token_arg(token)),
            Arg::Bytes(result.as_ref()),
            Arg::BigInt(self.retention_ms),
        ];
        self.fenced(&self.statements.complete, &args, key, token)
            .await
    }

    async fn fail(&self, key: &RequestKey, token: Token, error: &JobError) -> Result<Record> {
        let args = [
            Arg::Text(key.as_str()),
            Arg::BigInt(token_arg(token)),
            Arg::Text(error.message()),
            Arg::Bool(error.is_retryable()),
            Arg::BigInt(self.retention_ms),
        ];
        self.fenced(&self.statements.fail, &args, key, token).await
    }

    async fn release(&self, key: &RequestKey, token: Token) -> Result<Record> {
        let args = [
            Arg::Text(key.as_str()),
            Arg::BigInt(token_arg(token)),
            Arg::BigInt(self.retention_ms),
        ];
        self.fenced(&self.statements.release, &args, key, token)
            .await
    }

    async fn get(&self, key: &RequestKey) -> Result<Option<Record>> {
        let row = self
            .fetch_optional(&self.statements.get, &[Arg::Text(key.as_str())])
            .await?;
        row.map(|row| record(&row, key)).transpose()
    }

    async fn wait(&self, key: &RequestKey, timeout: Duration) -> Result<Option<Record>> {
        let deadline = Instant::now() + timeout;
        wait_pushed(&self.waiters, key, timeout, self.wait_fallback, || {
            // Interest for as long as the waiter may sleep before it reads
            // again: until its fallback re-read, or its deadline if sooner
            // (the read at the deadline registers nothing).
            let asleep = deadline
                .saturating_duration_since(Instant::now())
                .min(self.wait_fallback);
            self.watch(key, asleep)
        })
        .await
    }

    async fn delete(&self, key: &RequestKey) -> Result<bool> {
        let row = self
            .fetch_one(&self.statements.delete, &[Arg::Text(key.as_str())])
            .await?;
        get(&row, "deleted")
    }

    /// Walks the table once in key order, [`SWEEP_BATCH`] records a
    /// statement, deleting those past retention, and deletes waiters'
    /// registrations that ran out. Each statement's work is bounded by the
    /// batch, not by the table; a whole sweep reads the table once (there
    /// is no index on `expires_at`, so that renewals and completions are
    /// HOT updates). A small table is swept in one statement.
    async fn sweep(&self) -> Result<u64> {
        let mut swept = 0;
        // Keys are never empty: every key sorts after ''.
        let mut after = String::new();
        loop {
            let args = [Arg::Text(&after), Arg::BigInt(SWEEP_BATCH)];
            let row = self.fetch_one(&self.statements.sweep, &args).await?;
            swept += u64::try_from(get::<i64>(&row, "swept")?).unwrap_or(0);
            let walked_on = get::<i64>(&row, "scanned")? >= SWEEP_BATCH;
            if let Some(last) = get::<Option<String>>(&row, "last_key")? {
                after = last;
            }
            if !walked_on && get::<i64>(&row, "unwatched")? < SWEEP_BATCH {
                return Ok(swept);
            }
        }
    }

    /// One statement (see [`sql::listing`]): the index on `(created_at,
    /// key)` walked from the cursor, `limit + 1` matching records read (the
    /// last only to tell that a next page exists), results left unread, and
    /// every record judged at one instant of the database's clock.
    async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        let mut after = None;
        let (statement, args) = self.listing(query, &mut after)?;
        let rows = self.fetch_all(&statement, &args).await?;
        let mut records = rows
            .iter()
            .map(|row| {
                let key = RequestKey::parse_stored(&get::<String>(row, "key")?)
                    .map_err(|e| corrupt(e.to_string()))?;
                record(row, &key)
            })
            .collect::<Result<Vec<_>>>()?;
        let next = if records.len() > query.limit() as usize {
            records.truncate(query.limit() as usize);
            records
                .last()
                .map(|last| ListCursor::keyset(last.created_at, &last.key))
        } else {
            None
        };
        Ok(ListPage::new(records, next))
    }

    /// One statement reading the records counted once, grouped by kind and
    /// state in Postgres; only the groups cross the wire.
    async fn counts(&self, prefix: &str) -> Result<StoreStats> {
        let mut stats = StoreStats::default();
        if prefix.contains('\0') {
            // Postgres text cannot hold a NUL, so no key starts with one.
            return Ok(stats);
        }
        let rows = self
            .fetch_all(&self.statements.counts, &[Arg::Text(prefix)])
            .await?;
        for row in &rows {
            let kind =
                Kind::parse(get::<String>(row, "kind")?).map_err(|e| corrupt(e.to_string()))?;
            let state = state(row)?;
            let records = u64::try_from(get::<i64>(row, "records")?).unwrap_or(0);
            let counts = stats.kinds.entry(kind).or_insert_with(StateCounts::default);
            counts.add_many(state, records);
            stats.states.add_many(state, records);
            if state == RecordState::Processing {
                let over = u64::try_from(get::<i64>(row, "leases_over")?).unwrap_or(0);
                stats.leases_expired += over;
                stats.leases_live += records.saturating_sub(over);
                if let Some(oldest) = get::<Option<DateTime<Utc>>>(row, "oldest_live")? {
                    let age = remaining(get(row, "db_now")?, oldest);
                    stats.oldest_live_lease_age =
                        Some(stats.oldest_live_lease_age.map_or(age, |a| a.max(age)));
                }
            }
        }
        Ok(stats)
    }

    /// Deletions arrive over the store's LISTEN connection (a delete
    /// notifies its key whether or not anyone waits), confirmed by probes
    /// the connection sends itself while a cache listens.
    fn change_feed(&self) -> Option<ChangeFeed> {
        Some(self.feed.clone())
    }
}

//! `PgStore`: every operation one statement (a SQL function call), judged by
//! Postgres's clock.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use onceflight_core::waiters::{Waiters, wait_pushed};
use onceflight_core::{
    Claim, ClaimOptions, Decision, Error, Fingerprint, JobError, Kind, Owner, Record, RecordState,
    Renewal, RequestKey, RequestStore, Result, Token, check_lease_ttl,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Row};
use tokio::task::JoinHandle;

use crate::config::PgConfig;
use crate::error::{BACKEND, TimedOut, map};
use crate::waiters::spawn_listener;

/// The embedded migrations (`migrations/`), applied by [`PgStore::migrate`].
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Longest retention honoured (100 years): "keep forever" in practice.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Rows past retention deleted per statement by [`RequestStore::sweep`].
const SWEEP_BATCH: i64 = 1000;

/// A [`RequestStore`] on PostgreSQL.
///
/// Every operation is one round trip: a call of one of the SQL functions in
/// `migrations/`, which decide atomically inside Postgres with its clock.
/// Claims that find a live lease, a result or a final failure read without
/// locking or writing. Waiters are woken through LISTEN/NOTIFY on one
/// connection per store, fanned out in process.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    schema: String,
    retention_ms: i64,
    wait_fallback: Duration,
    operation_timeout: Duration,
    waiters: Arc<Waiters>,
    listener: JoinHandle<()>,
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

/// Checks a schema name: it is spliced into `CREATE SCHEMA` and
/// `search_path`, so only plain lowercase identifiers are accepted.
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

fn connect_options(url: &str, schema: &str) -> Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        invalid_config(format!(
            "invalid database URL {}: {e}",
            onceflight_core::redact_url(url)
        ))
    })?;
    Ok(options
        .options([("search_path", schema)])
        .application_name("onceflight"))
}

/// The database a connection with `options` reaches.
async fn current_database(options: &PgConnectOptions) -> Result<String> {
    let mut conn = PgConnection::connect_with(options).await.map_err(map)?;
    let database = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .map_err(map)?;
    // Closing politely is a courtesy; a failure here changes nothing.
    let _ = conn.close().await;
    Ok(database)
}

impl PgStore {
    /// Connects with `config`: the pool, and the LISTEN connection. Does not
    /// migrate; call [`PgStore::migrate`] (or `onceflight migrate`) first.
    pub async fn connect(config: PgConfig) -> Result<Self> {
        check_schema(&config.schema)?;
        let operation_timeout = config.operation_timeout.max(Duration::from_millis(1));
        let options = connect_options(&config.url, &config.schema)?;
        let listen_options = match &config.listen_url {
            Some(url) => connect_options(url, &config.schema)?,
            None => options.clone(),
        };
        // Connect once directly first: a pool only says it timed out, while
        // this says why (refused, unknown host, bad password, TLS).
        let database = current_database(&options).await?;
        if config.listen_url.is_some() {
            let listen_database = current_database(&listen_options).await?;
            if listen_database != database {
                return Err(invalid_config(format!(
                    "the listen URL reaches database {listen_database:?} but the store is in {database:?}: \
                     NOTIFY only reaches listeners of the same database"
                )));
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size.max(1))
            .acquire_timeout(operation_timeout)
            .connect_with(options)
            .await
            .map_err(map)?;
        let waiters = Arc::new(Waiters::default());
        // The LISTEN connection lives outside the operations' pool, so that
        // `pool_size` connections stay free for operations.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(listen_options);
        let listener = spawn_listener(&listen_pool, &config.schema, Arc::clone(&waiters))
            .await
            .map_err(map)?;
        Ok(Self {
            pool,
            schema: config.schema,
            // Clamped to 100 years ("forever"), which Postgres intervals hold.
            retention_ms: ms(config.retention.min(MAX_RETENTION)),
            wait_fallback: config.wait_fallback.max(Duration::from_millis(10)),
            operation_timeout,
            waiters,
            listener,
        })
    }

    /// Creates the schema if needed and applies the embedded migrations.
    /// Safe to run from several instances at once.
    pub async fn migrate(&self) -> Result<()> {
        // The schema name was checked by `check_schema`: a plain identifier.
        let create =
            || sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema));
        // Two instances creating the schema at once can race on the catalog's
        // unique index; the second try finds it.
        if sqlx::query(create()).execute(&self.pool).await.is_err() {
            sqlx::query(create())
                .execute(&self.pool)
                .await
                .map_err(map)?;
        }
        MIGRATOR.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => map(e),
            other => Error::Backend {
                backend: BACKEND,
                message: other.to_string(),
            },
        })
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

    /// Calls a fenced function (`renew`, `complete`, `fail`, `release`) and
    /// returns the record it answered, or `LeaseLost`.
    async fn fenced(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        key: &RequestKey,
        token: Token,
    ) -> Result<Record> {
        let row = self.bounded(query.fetch_one(&self.pool)).await?;
        let outcome: String = row.try_get("outcome").map_err(map)?;
        if outcome != "ok" {
            return Err(Error::lease_lost(key, token));
        }
        record(&row, key)
    }
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

fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
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

/// The record of a row holding `onceflight_records`' columns and `db_now`.
fn record(row: &PgRow, key: &RequestKey) -> Result<Record> {
    let now: DateTime<Utc> = get(row, "db_now")?;
    let state = match get::<String>(row, "state")?.as_str() {
        "processing" => RecordState::Processing,
        "completed" => RecordState::Completed,
        "failed" => RecordState::Failed,
        other => return Err(corrupt(format!("unknown state {other:?}"))),
    };
    let processing = state == RecordState::Processing;
    let lease_expires_at: Option<DateTime<Utc>> = get(row, "lease_expires_at")?;
    let retry_at: Option<DateTime<Utc>> = get(row, "retry_at")?;
    let result: Option<Vec<u8>> = get(row, "result")?;
    Ok(Record {
        key: key.clone(),
        kind: Kind::parse(get::<String>(row, "kind")?).map_err(|e| corrupt(e.to_string()))?,
        fingerprint: get::<Option<String>>(row, "fingerprint")?
            .map(Fingerprint::parse)
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?,
        state,
        token: token(get(row, "token")?)?,
        attempt: u32::try_from(get::<i32>(row, "attempt")?).unwrap_or(0),
        max_attempts: u32::try_from(get::<i32>(row, "max_attempts")?).unwrap_or(0),
        owner: get::<Option<String>>(row, "owner")?
            .map(Owner::parse)
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?,
        lease_expires_at: lease_expires_at.filter(|_| processing),
        lease_remaining: lease_expires_at
            .filter(|_| processing)
            .map(|at| remaining(at, now)),
        result: result.map(Bytes::from),
        error: job_error(row)?,
        retry_after: retry_at
            .filter(|_| state == RecordState::Failed)
            .map(|at| remaining(at, now)),
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
        completed_at: get(row, "completed_at")?,
        expires_at: Some(get(row, "expires_at")?),
    })
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
        let row = sqlx::query(
            "SELECT outcome, takeover, db_now, (rec).* \
             FROM onceflight_claim($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(key.as_str())
        .bind(options.kind().as_str())
        .bind(options.fingerprint().map(Fingerprint::as_str))
        .bind(options.owner().map(Owner::as_str))
        .bind(ms(options.lease_ttl()))
        .bind(i32::try_from(options.max_attempts()).unwrap_or(i32::MAX))
        .bind(ms(options.retry_backoff()))
        .bind(self.retention_ms)
        .fetch_one(&self.pool);
        let row = self.bounded(row).await?;
        let decision = match get::<String>(&row, "outcome")?.as_str() {
            "acquired" => Decision::Acquired {
                ttl: millis(get(&row, "lease_ttl_ms")?),
                takeover: get(&row, "takeover")?,
            },
            "in_flight" => Decision::InFlight,
            "completed" => Decision::Completed,
            "failed" => Decision::Failed,
            "mismatch" => Decision::Mismatch,
            other => return Err(corrupt(format!("unknown claim outcome {other:?}"))),
        };
        record(&row, key)?.into_claim(decision, options, BACKEND)
    }

    async fn renew(
        &self,
        key: &RequestKey,
        token: Token,
        ttl: Option<Duration>,
    ) -> Result<Renewal> {
        let ttl = ttl.map(check_lease_ttl).transpose()?;
        let record = self
            .fenced(
                sqlx::query(
                    "SELECT outcome, db_now, (rec).* FROM onceflight_renew($1, $2, $3, $4)",
                )
                .bind(key.as_str())
                .bind(token.get() as i64)
                .bind(ttl.map(ms))
                .bind(self.retention_ms),
                key,
                token,
            )
            .await?;
        record.into_renewal(BACKEND)
    }

    async fn complete(&self, key: &RequestKey, token: Token, result: Bytes) -> Result<Record> {
        self.fenced(
            sqlx::query("SELECT outcome, db_now, (rec).* FROM onceflight_complete($1, $2, $3, $4)")
                .bind(key.as_str())
                .bind(token.get() as i64)
                .bind(result.as_ref())
                .bind(self.retention_ms),
            key,
            token,
        )
        .await
    }

    async fn fail(&self, key: &RequestKey, token: Token, error: &JobError) -> Result<Record> {
        self.fenced(
            sqlx::query("SELECT outcome, db_now, (rec).* FROM onceflight_fail($1, $2, $3, $4, $5)")
                .bind(key.as_str())
                .bind(token.get() as i64)
                .bind(error.message())
                .bind(error.is_retryable())
                .bind(self.retention_ms),
            key,
            token,
        )
        .await
    }

    async fn release(&self, key: &RequestKey, token: Token) -> Result<Record> {
        self.fenced(
            sqlx::query("SELECT outcome, db_now, (rec).* FROM onceflight_release($1, $2, $3)")
                .bind(key.as_str())
                .bind(token.get() as i64)
                .bind(self.retention_ms),
            key,
            token,
        )
        .await
    }

    async fn get(&self, key: &RequestKey) -> Result<Option<Record>> {
        let row = sqlx::query(
            "SELECT clock_timestamp() AS db_now, r.* FROM onceflight_records r \
             WHERE r.key = $1 AND r.expires_at > clock_timestamp()",
        )
        .bind(key.as_str())
        .fetch_optional(&self.pool);
        let row = self.bounded(row).await?;
        row.map(|row| record(&row, key)).transpose()
    }

    async fn wait(&self, key: &RequestKey, timeout: Duration) -> Result<Option<Record>> {
        wait_pushed(&self.waiters, key, timeout, self.wait_fallback, || {
            self.get(key)
        })
        .await
    }

    async fn delete(&self, key: &RequestKey) -> Result<bool> {
        self.bounded(
            sqlx::query_scalar("SELECT onceflight_delete($1)")
                .bind(key.as_str())
                .fetch_one(&self.pool),
        )
        .await
    }

    async fn sweep(&self) -> Result<u64> {
        let mut swept = 0;
        loop {
            // Bounded batches, skipping rows a claim holds, so a large sweep
            // never stalls the hot path.
            let deleted = self
                .bounded(
                    sqlx::query(
                        "DELETE FROM onceflight_records WHERE key IN ( \
                     SELECT key FROM onceflight_records WHERE expires_at <= clock_timestamp() \
                     LIMIT $1 FOR UPDATE SKIP LOCKED)",
                    )
                    .bind(SWEEP_BATCH)
                    .execute(&self.pool),
                )
                .await?
                .rows_affected();
            swept += deleted;
            if deleted < SWEEP_BATCH as u64 {
                return Ok(swept);
            }
        }
    }
}

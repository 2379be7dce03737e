//! `RedisStore`: every operation one Lua script (EVALSHA), judged by Redis's
//! clock; leases are keys that Redis expires by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use onceflight_core::backend::waiters::{Waiters, wait_pushed};
use onceflight_core::backend::{Decision, check_lease_ttl, redact_url};
use onceflight_core::{
    Claim, ClaimOptions, Error, Fingerprint, JobError, Kind, Owner, Record, RecordState, Renewal,
    RequestKey, RequestStore, Result, Token,
};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, Pipeline, RedisFuture, Script, TlsCertificates, Value};
use tokio::task::JoinHandle;

use crate::config::RedisConfig;
use crate::error::{BACKEND, corrupt, map};

/// Longest retention honoured (100 years): "keep forever" in practice.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// How many times an operation loads its script and calls it again when
/// Redis keeps answering `NOSCRIPT` (scripts flushed under it).
const NOSCRIPT_ATTEMPTS: u32 = 3;

/// The helpers every script shares, prepended to each.
const LIB: &str = include_str!("../lua/lib.lua");

/// A [`RequestStore`] on Redis or Redis Cluster.
///
/// Every operation is one round trip: an EVALSHA of one of the scripts in
/// `lua/`, deciding atomically inside Redis with its clock (`TIME`). A
/// lease is a key written with `SET … PXAT`, so Redis retires an abandoned
/// lease by itself; records carry their retention as a TTL. Waiters are
/// woken through pub/sub on one connection per store, fanned out in
/// process.
#[derive(Debug)]
pub struct RedisStore {
    conn: RedisConnection,
    scripts: Scripts,
    prefix: String,
    channel: String,
    retention_ms: u64,
    wait_fallback: Duration,
    waiters: Arc<Waiters>,
    listener: JoinHandle<()>,
    /// The highest token this store has seen in any reply: the floor of
    /// every token it asks Redis to grant (see the crate docs).
    high_water: AtomicU64,
    /// When the store last warned that Redis's clock is behind its tokens,
    /// in ms since `started`, plus one (0: never).
    clock_warned: AtomicU64,
    started: Instant,
    maxmemory_policy: Option<String>,
}

/// How often at most the store warns that Redis's clock went backwards.
const CLOCK_WARNING_EVERY: Duration = Duration::from_secs(60);

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// The store's connection: one multiplexed connection to a server, kept up
/// by a [`ConnectionManager`], or a cluster connection routing each command
/// by its keys' slot. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub enum RedisConnection {
    /// A single server (or a proxy in front of several).
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConnection::Single(_) => "RedisConnection::Single",
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// One script per atomic operation, each `lua/lib.lua` followed by the
/// operation's file.
#[derive(Debug)]
struct Scripts {
    claim: Script,
    renew: Script,
    complete: Script,
    fail: Script,
    release: Script,
    get: Script,
    delete: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{body}"))
}

impl Scripts {
    fn new() -> Self {
        Self {
            claim: script(include_str!("../lua/claim.lua")),
            renew: script(include_str!("../lua/renew.lua")),
            complete: script(include_str!("../lua/complete.lua")),
            fail: script(include_str!("../lua/fail.lua")),
            release: script(include_str!("../lua/release.lua")),
            get: script(include_str!("../lua/get.lua")),
            delete: script(include_str!("../lua/delete.lua")),
        }
    }
}

fn is_noscript(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

fn invalid_config(reason: String) -> Error {
    Error::InvalidInput {
        field: "store",
        reason,
    }
}

/// The hash tag of a request: the 64-bit FNV-1a hash of its key, in hex.
/// Every Redis key of one request carries it, so they share a cluster slot
/// whatever characters (braces included) the request key holds. The hash
/// is part of the stored layout: it must never change.
fn hash_tag(key: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

impl RedisStore {
    /// Connects with `config`: the operations' connection, and the pub/sub
    /// connection, which has subscribed before this returns.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        if config.prefix.contains(['{', '}']) {
            return Err(invalid_config(format!(
                "key prefix {:?} must not contain braces: the store owns the hash tags",
                config.prefix
            )));
        }
        if config.urls.is_empty() {
            return Err(invalid_config("no Redis URL given".to_owned()));
        }
        if config.retention < Duration::from_millis(1) {
            return Err(Error::InvalidInput {
                field: "retention",
                reason: format!(
                    "a retention of {:?} would forget every record the instant it is \
                     settled; it must be at least 1 ms",
                    config.retention
                ),
            });
        }
        let certificates = match &config.tls_root_cert {
            Some(path) => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path).map_err(|e| {
                    invalid_config(format!(
                        "cannot read the TLS root certificate {}: {e}",
                        path.display()
                    ))
                })?),
            }),
            None => None,
        };
        let clients = config
            .urls
            .iter()
            .map(|url| {
                match &certificates {
                    Some(certificates) => {
                        Client::build_with_tls(url.as_str(), certificates.clone())
                    }
                    None => Client::open(url.as_str()),
                }
                .map_err(|e| invalid_config(format!("invalid Redis URL {}: {e}", redact_url(url))))
            })
            .collect::<Result<Vec<_>>>()?;
        let conn = if config.cluster {
            let mut builder = ClusterClientBuilder::new(config.urls.iter().map(String::as_str))
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.response_timeout);
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates);
            }
            let client = builder
                .build()
                .map_err(|e| invalid_config(format!("invalid Redis Cluster configuration: {e}")))?;
            RedisConnection::Cluster(client.get_async_connection().await.map_err(map)?)
        } else {
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(Some(config.response_timeout))
                .set_number_of_retries(2);
            RedisConnection::Single(
                ConnectionManager::new_with_config(clients[0].clone(), manager)
                    .await
                    .map_err(map)?,
            )
        };
        let maxmemory_policy = read_maxmemory_policy(&mut conn.clone()).await;
        match &maxmemory_policy {
            Some(policy) => {
                if let Some(warning) = eviction_warning(policy) {
                    tracing::warn!(maxmemory_policy = %policy, "{warning}");
                }
            }
            None => tracing::debug!(
                "Redis's maxmemory-policy is not readable (CONFIG GET and INFO refused); \
                 not checked"
            ),
        }
        let channel = format!("{}wake", config.prefix);
        let waiters = Arc::new(Waiters::default());
        let pubsub = subscribe(&clients, &channel).await.map_err(map)?;
        let listener = tokio::spawn(listen(
            pubsub,
            clients,
            channel.clone(),
            Arc::clone(&waiters),
            Probe {
                every: config.pubsub_ping.max(Duration::from_millis(10)),
                timeout: config.response_timeout,
            },
        ));
        Ok(Self {
            conn,
            scripts: Scripts::new(),
            prefix: config.prefix,
            channel,
            retention_ms: ms(config.retention.min(MAX_RETENTION)),
            wait_fallback: config.wait_fallback.max(Duration::from_millis(10)),
            waiters,
            listener,
            high_water: AtomicU64::new(0),
            clock_warned: AtomicU64::new(0),
            started: Instant::now(),
            maxmemory_policy,
        })
    }

    /// Redis's `maxmemory-policy` as read when the store connected (`CONFIG
    /// GET`, or `INFO memory` where a managed Redis disables `CONFIG`);
    /// `None` when neither answered.
    pub fn maxmemory_policy(&self) -> Option<&str> {
        self.maxmemory_policy.as_deref()
    }

    /// The warning the store logged when it connected because Redis's
    /// `maxmemory-policy` may evict its keys, if it did.
    pub fn eviction_warning(&self) -> Option<String> {
        self.maxmemory_policy.as_deref().and_then(eviction_warning)
    }

    /// Raises the token floor to `token`.
    fn saw_token(&self, token: Token) {
        self.high_water.fetch_max(token.get(), Ordering::Relaxed);
    }

    /// Warns, at most once a minute, that Redis's clock is behind a token
    /// already granted.
    fn warn_clock_behind(&self, floor: u64, now_ms: i64) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.clock_warned.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < ms(CLOCK_WARNING_EVERY) {
            return;
        }
        if self
            .clock_warned
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                highest_token = floor,
                redis_clock_us = now_ms.saturating_mul(1000),
                "Redis's clock went backwards: it is behind a fencing token already \
                 granted (a restart without AOF, a failover to a replica whose clock is \
                 behind, or a clock step). New tokens continue above the highest token \
                 this store has seen; fix the clock (NTP) of the Redis hosts"
            );
        }
    }

    /// A handle on the store's connection, for benchmarks and tests that
    /// measure the store beside bare commands on the same connection.
    pub fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis keys of a request: its record (a hash), its lease (a string
    /// holding the token, expiring with the lease) and its fence (the last
    /// token, kept for a while after `delete`).
    pub fn redis_keys(&self, key: &RequestKey) -> [String; 3] {
        let tag = hash_tag(key.as_str());
        let key = key.as_str();
        let prefix = &self.prefix;
        [
            format!("{prefix}{{{tag}}}:record:{key}"),
            format!("{prefix}{{{tag}}}:lease:{key}"),
            format!("{prefix}{{{tag}}}:fence:{key}"),
        ]
    }

    /// Runs `script` for `key`; `args` follow the channel and the key.
    async fn run(&self, script: &Script, key: &RequestKey, args: &[&[u8]]) -> Result<Reply> {
        let mut invocation = script.prepare_invoke();
        for redis_key in self.redis_keys(key) {
            invocation.key(redis_key);
        }
        invocation.arg(&self.channel).arg(key.as_str());
        for arg in args {
            invocation.arg(*arg);
        }
        let values: Vec<Option<Vec<u8>>> = self.invoke(&invocation).await?;
        let reply = Reply::parse(values, key)?;
        if let Some(record) = &reply.record {
            self.saw_token(record.token);
        }
        Ok(reply)
    }

    /// EVALSHA, loading the script on `NOSCRIPT` (after a restart, a
    /// failover or `SCRIPT FLUSH`) — again if it was flushed once more
    /// between the load and the call. The script runs once at most: a
    /// `NOSCRIPT` reply means it did not run.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match invocation.invoke_async(&mut self.conn.clone()).await {
                Err(error) if is_noscript(&error) && attempts < NOSCRIPT_ATTEMPTS => continue,
                other => return other.map_err(map),
            }
        }
    }

    /// Runs a fenced script and returns the record it answered, or
    /// `LeaseLost`.
    async fn fenced(
        &self,
        script: &Script,
        key: &RequestKey,
        token: Token,
        args: &[&[u8]],
    ) -> Result<Record> {
        let token_arg = token.get().to_string();
        let mut all: Vec<&[u8]> = vec![token_arg.as_bytes()];
        all.extend_from_slice(args);
        let reply = self.run(script, key, &all).await?;
        match (reply.outcome.as_str(), reply.record) {
            ("ok", Some(record)) => Ok(record),
            ("ok", None) => Err(corrupt(format!(
                "a fenced operation succeeded without a record for {:?}",
                key.as_str()
            ))),
            _ => Err(Error::lease_lost(key, token)),
        }
    }
}

/// Subscribes to `channel` through the first of `clients` that answers. In
/// a cluster any node will do: a PUBLISH reaches subscribers on every node.
async fn subscribe(clients: &[Client], channel: &str) -> redis::RedisResult<PubSub> {
    let mut last_error = None;
    for client in clients {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(channel).await {
                Ok(()) => return Ok(pubsub),
                Err(error) => last_error = Some(error),
            },
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no Redis URL"))
    }))
}

/// Redis's `maxmemory-policy`: `CONFIG GET`, or where a managed Redis
/// refuses `CONFIG`, the `maxmemory_policy` line of `INFO memory`.
async fn read_maxmemory_policy(conn: &mut RedisConnection) -> Option<String> {
    let config: redis::RedisResult<Value> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    if let Ok(value) = config {
        // `[name, value]` (RESP2) or `{name: value}` (RESP3); a cluster may
        // answer per node. The first value after the name will do.
        let mut texts = Vec::new();
        flatten_texts(&value, &mut texts);
        if let Some(policy) = texts
            .iter()
            .position(|t| t == "maxmemory-policy")
            .and_then(|at| texts.get(at + 1))
        {
            return Some(policy.clone());
        }
    }
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("maxmemory_policy:"))
        .map(|policy| policy.trim().to_owned())
}

fn flatten_texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::BulkString(bytes) => out.push(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => out.push(text.clone()),
        Value::Array(items) | Value::Set(items) => {
            items.iter().for_each(|item| flatten_texts(item, out));
        }
        Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            flatten_texts(k, out);
            flatten_texts(v, out);
        }),
        _ => {}
    }
}

/// Why `policy` endangers the store, if it does. Every record and lease
/// carries a TTL, so the `volatile-*` policies may evict live leases and
/// unexpired results just as `allkeys-*` may: a lost lease lets a second
/// worker start the same job, a lost result makes the job run again. The
/// store warns rather than refuses: some managed services fix the policy,
/// and an operator may accept the risk for a cache-like use.
fn eviction_warning(policy: &str) -> Option<String> {
    let evicts = policy.starts_with("allkeys-") || policy.starts_with("volatile-");
    evicts.then(|| {
        format!(
            "Redis's maxmemory-policy is {policy}, which evicts keys under memory pressure: \
             every onceflight lease and record has a TTL, so it may drop live leases (a job \
             then runs twice) and results before their retention; set maxmemory-policy \
             noeviction, with which a full Redis refuses new claims (503) and lets granted \
             work finish"
        )
    })
}

/// How the listening task probes its connection.
#[derive(Clone, Copy, Debug)]
struct Probe {
    every: Duration,
    timeout: Duration,
}

/// The listening task: wakes the waiters of each published key, and PINGs
/// the connection every `probe.every` so that a half-open connection (no
/// error, no messages ever again) is noticed. When the subscription drops
/// or a PING goes unanswered, it subscribes again on a new connection,
/// backing off while Redis is away, and only then wakes everyone: messages
/// may have been lost, so each waiter re-reads its record, and any change
/// after that re-read is published to a subscription already in place.
async fn listen(
    first: PubSub,
    clients: Vec<Client>,
    channel: String,
    waiters: Arc<Waiters>,
    probe: Probe,
) {
    let mut pubsub = Some(first);
    let mut pause = Duration::from_millis(100);
    loop {
        let subscription = match pubsub.take() {
            Some(subscription) => subscription,
            None => match subscribe(&clients, &channel).await {
                Ok(subscription) => {
                    tracing::info!("Redis pub/sub subscription restored");
                    pause = Duration::from_millis(100);
                    // Anything published while we were away is lost.
                    waiters.wake_all();
                    subscription
                }
                Err(error) => {
                    tracing::warn!(%error, "Redis pub/sub subscription failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let (mut sink, mut messages) = subscription.split();
        let mut ticks = tokio::time::interval(probe.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the subscription was just confirmed.
        ticks.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => {
                        if let Ok(key) = std::str::from_utf8(message.get_payload_bytes()) {
                            waiters.wake(key);
                        }
                    }
                    None => {
                        tracing::warn!("Redis pub/sub connection lost; reconnecting");
                        break;
                    }
                },
                _ = ticks.tick() => {
                    match tokio::time::timeout(probe.timeout, sink.ping::<Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "Redis pub/sub PING failed; reconnecting");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!(
                                timeout = ?probe.timeout,
                                "Redis pub/sub PING unanswered (half-open connection); \
                                 reconnecting"
                            );
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// A script's reply: `{ outcome, now, extra, lease_left, FIELDS… }`
/// (`lua/lib.lua`).
struct Reply {
    outcome: String,
    /// Redis's clock at the reply, in ms.
    now: i64,
    extra: String,
    record: Option<Record>,
}

/// The record fields in `lua/lib.lua`'s `FIELDS` order.
const FIELDS: [&str; 18] = [
    "kind", "fp", "state", "token", "attempt", "max", "owner", "lexp", "rel", "result", "emsg",
    "eretry", "retry_at", "created", "updated", "done", "exp", "ttl",
];

fn field(fields: &[Option<Vec<u8>>], name: &str) -> Option<Vec<u8>> {
    let index = FIELDS.iter().position(|f| *f == name)?;
    fields.get(index).cloned().flatten()
}

fn text(fields: &[Option<Vec<u8>>], name: &str) -> Result<Option<String>> {
    field(fields, name)
        .map(|bytes| {
            String::from_utf8(bytes).map_err(|_| corrupt(format!("field {name} is not UTF-8")))
        })
        .transpose()
}

fn number(fields: &[Option<Vec<u8>>], name: &str) -> Result<Option<i64>> {
    text(fields, name)?
        .map(|t| {
            t.parse::<i64>()
                .map_err(|_| corrupt(format!("field {name} is not an integer: {t:?}")))
        })
        .transpose()
}

fn required<T>(value: Option<T>, name: &str) -> Result<T> {
    value.ok_or_else(|| corrupt(format!("record field {name} is missing")))
}

fn instant(ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(format!("instant {ms} out of range")))
}

fn millis(value: i64) -> Duration {
    Duration::from_millis(u64::try_from(value).unwrap_or(0))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Reply {
    fn parse(mut values: Vec<Option<Vec<u8>>>, key: &RequestKey) -> Result<Self> {
        if values.len() < 2 {
            return Err(corrupt(format!("a script replied {} values", values.len())));
        }
        let rest = values.split_off(2.min(values.len()));
        let outcome = String::from_utf8(values.remove(0).unwrap_or_default())
            .map_err(|_| corrupt("an outcome that is not UTF-8".into()))?;
        let now = String::from_utf8(values.remove(0).unwrap_or_default())
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(|| corrupt("a reply without Redis's time".into()))?;
        if outcome == "none" {
            return Ok(Self {
                outcome,
                now,
                extra: String::new(),
                record: None,
            });
        }
        let [extra, left, fields @ ..] = rest.as_slice() else {
            return Err(corrupt(format!(
                "a script replied {} values",
                rest.len() + 2
            )));
        };
        let extra = String::from_utf8(extra.clone().unwrap_or_default()).unwrap_or_default();
        let left = left
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| t.parse::<i64>().ok());
        let record = if field(fields, "state").is_some() {
            Some(record(fields, now, left, key)?)
        } else {
            None
        };
        Ok(Self {
            outcome,
            now,
            extra,
            record,
        })
    }
}

fn record(
    fields: &[Option<Vec<u8>>],
    now: i64,
    lease_left: Option<i64>,
    key: &RequestKey,
) -> Result<Record> {
    let state = match required(text(fields, "state")?, "state")?.as_str() {
        "processing" => RecordState::Processing,
        "completed" => RecordState::Completed,
        "failed" => RecordState::Failed,
        other => return Err(corrupt(format!("unknown state {other:?}"))),
    };
    let processing = state == RecordState::Processing;
    let token = required(number(fields, "token")?, "token")?;
    let token = u64::try_from(token)
        .ok()
        .and_then(|t| Token::new(t).ok())
        .ok_or_else(|| corrupt(format!("token {token} out of range")))?;
    let count = |name: &str| -> Result<u32> {
        Ok(u32::try_from(required(number(fields, name)?, name)?).unwrap_or(0))
    };
    let error = text(fields, "emsg")?.map(|message| {
        JobError::new(
            message,
            text(fields, "eretry").ok().flatten().as_deref() != Some("0"),
        )
    });
    let lease_expires_at = if processing {
        Some(instant(required(number(fields, "lexp")?, "lexp")?)?)
    } else {
        None
    };
    let mut record = Record::new(
        key.clone(),
        Kind::parse(required(text(fields, "kind")?, "kind")?)
            .map_err(|e| corrupt(e.to_string()))?,
        state,
        token,
        instant(required(number(fields, "created")?, "created")?)?,
    );
    record.fingerprint = text(fields, "fp")?
        .map(Fingerprint::parse)
        .transpose()
        .map_err(|e| corrupt(e.to_string()))?;
    record.attempt = count("attempt")?;
    record.max_attempts = count("max")?;
    record.owner = text(fields, "owner")?
        .map(Owner::parse)
        .transpose()
        .map_err(|e| corrupt(e.to_string()))?;
    record.lease_expires_at = lease_expires_at;
    record.lease_remaining = if processing {
        Some(millis(lease_left.unwrap_or(0)))
    } else {
        None
    };
    record.result = field(fields, "result").map(Bytes::from);
    record.error = error;
    record.retry_after = if state == RecordState::Failed {
        number(fields, "retry_at")?.map(|at| millis(at - now))
    } else {
        None
    };
    record.updated_at = instant(required(number(fields, "updated")?, "updated")?)?;
    record.completed_at = number(fields, "done")?.map(instant).transpose()?;
    record.expires_at = Some(instant(required(number(fields, "exp")?, "exp")?)?);
    Ok(record)
}

#[async_trait]
impl RequestStore for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn claim_or_get(&self, key: &RequestKey, options: &ClaimOptions) -> Result<Claim> {
        let lease_ms = ms(options.lease_ttl()).to_string();
        let max_attempts = options.max_attempts().to_string();
        let backoff_ms = ms(options.retry_backoff()).to_string();
        let retention_ms = self.retention_ms.to_string();
        let floor = self.high_water.load(Ordering::Relaxed);
        let floor_arg = floor.to_string();
        let reply = self
            .run(
                &self.scripts.claim,
                key,
                &[
                    options.kind().as_str().as_bytes(),
                    options
                        .fingerprint()
                        .map_or("", Fingerprint::as_str)
                        .as_bytes(),
                    options.owner().map_or("", Owner::as_str).as_bytes(),
                    lease_ms.as_bytes(),
                    max_attempts.as_bytes(),
                    backoff_ms.as_bytes(),
                    retention_ms.as_bytes(),
                    floor_arg.as_bytes(),
                ],
            )
            .await?;
        if reply.outcome == "acquired" && floor / 1000 > u64::try_from(reply.now).unwrap_or(0) {
            self.warn_clock_behind(floor, reply.now);
        }
        let record = reply
            .record
            .ok_or_else(|| corrupt(format!("a claim answered no record for {:?}", key.as_str())))?;
        let decision = match reply.outcome.as_str() {
            "acquired" => Decision::Acquired {
                ttl: options.lease_ttl(),
                takeover: reply.extra == "1",
            },
            "in_flight" => Decision::InFlight,
            "completed" => Decision::Completed,
            "failed" => Decision::Failed,
            "mismatch" => Decision::Mismatch,
            other => return Err(corrupt(format!("unknown claim outcome {other:?}"))),
        };
        record.into_claim(decision, options, BACKEND)
    }

    async fn renew(
        &self,
        key: &RequestKey,
        token: Token,
        ttl: Option<Duration>,
    ) -> Result<Renewal> {
        let ttl = ttl.map(check_lease_ttl).transpose()?;
        let ttl_ms = ttl.map(|t| ms(t).to_string()).unwrap_or_default();
        let retention_ms = self.retention_ms.to_string();
        let record = self
            .fenced(
                &self.scripts.renew,
                key,
                token,
                &[ttl_ms.as_bytes(), retention_ms.as_bytes()],
            )
            .await?;
        record.into_renewal(BACKEND)
    }

    async fn complete(&self, key: &RequestKey, token: Token, result: Bytes) -> Result<Record> {
        let retention_ms = self.retention_ms.to_string();
        self.fenced(
            &self.scripts.complete,
            key,
            token,
            &[result.as_ref(), retention_ms.as_bytes()],
        )
        .await
    }

    async fn fail(&self, key: &RequestKey, token: Token, error: &JobError) -> Result<Record> {
        let retention_ms = self.retention_ms.to_string();
        let retryable: &[u8] = if error.is_retryable() { b"1" } else { b"0" };
        self.fenced(
            &self.scripts.fail,
            key,
            token,
            &[
                error.message().as_bytes(),
                retryable,
                retention_ms.as_bytes(),
            ],
        )
        .await
    }

    async fn release(&self, key: &RequestKey, token: Token) -> Result<Record> {
        let retention_ms = self.retention_ms.to_string();
        self.fenced(
            &self.scripts.release,
            key,
            token,
            &[retention_ms.as_bytes()],
        )
        .await
    }

    async fn get(&self, key: &RequestKey) -> Result<Option<Record>> {
        Ok(self.run(&self.scripts.get, key, &[]).await?.record)
    }

    async fn wait(&self, key: &RequestKey, timeout: Duration) -> Result<Option<Record>> {
        wait_pushed(&self.waiters, key, timeout, self.wait_fallback, || {
            self.get(key)
        })
        .await
    }

    async fn delete(&self, key: &RequestKey) -> Result<bool> {
        let mut invocation = self.scripts.delete.prepare_invoke();
        for redis_key in self.redis_keys(key) {
            invocation.key(redis_key);
        }
        invocation.arg(&self.channel).arg(key.as_str());
        let deleted: i64 = self.invoke(&invocation).await?;
        Ok(deleted == 1)
    }

    /// Nothing to do: Redis forgets records past retention by their own
    /// TTL, and abandoned leases by theirs.
    async fn sweep(&self) -> Result<u64> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::hash_tag;

    #[test]
    fn hash_tags_are_stable_fnv1a() {
        // The stored layout depends on these values: they must never change.
        assert_eq!(hash_tag(""), "cbf29ce484222325");
        assert_eq!(hash_tag("a"), "af63dc4c8601ec8c");
        assert_eq!(hash_tag("foobar"), "85944171f73967e8");
    }
}

//! `RedisStore`: every operation one call (FCALL) of a function of the
//! store's Redis function library, judged by Redis's clock; records, and the
//! leases in them, expire by themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use onceflight_core::backend::waiters::{Waiters, wait_pushed};
use onceflight_core::backend::{check_lease_ttl, redact_url};
use onceflight_core::{
    ChangeFeed, Claim, ClaimOptions, Completed, Error, Failed, Fingerprint, InFlight, JobError,
    Kind, Lease, ListPage, ListQuery, Owner, Record, RecordState, Renewal, RequestKey,
    RequestStore, Result, StoreStats, Token,
};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, Pipeline, RedisError, RedisFuture, TlsCertificates, Value};
use tokio::task::JoinHandle;

use crate::config::RedisConfig;
use crate::error::{BACKEND, corrupt, is_function_missing, map};

mod scan;

/// Longest retention honoured (100 years): "keep forever" in practice.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// How many times an operation loads the function library and calls again
/// when Redis keeps answering that the function is not found (functions
/// lost under it: a restart or failover without persistence, `FUNCTION
/// FLUSH`).
const LOAD_ATTEMPTS: u32 = 3;

/// The shared part of the function library, loaded before the operations.
const LIB: &str = include_str!("../lua/lib.lua");

/// One file per atomic operation, each registering its function(s).
const OPERATIONS: [(&str, &str); 8] = [
    ("claim.lua", include_str!("../lua/claim.lua")),
    ("renew.lua", include_str!("../lua/renew.lua")),
    ("complete.lua", include_str!("../lua/complete.lua")),
    ("fail.lua", include_str!("../lua/fail.lua")),
    ("release.lua", include_str!("../lua/release.lua")),
    ("get.lua", include_str!("../lua/get.lua")),
    ("delete.lua", include_str!("../lua/delete.lua")),
    ("peek.lua", include_str!("../lua/peek.lua")),
];

/// A [`RequestStore`] on Redis or Redis Cluster.
///
/// Every operation is one round trip: an FCALL of one function of the
/// library assembled from `lua/`, deciding atomically inside Redis with its
/// clock (`TIME`). A record is one packed string holding its lease; its
/// expiry (the lease's end plus retention, or the settling instant plus
/// retention) makes Redis forget an abandoned record by itself. Waiters are
/// woken through pub/sub on one connection per store, fanned out in
/// process.
#[derive(Debug)]
pub struct RedisStore {
    conn: RedisConnection,
    library: Library,
    prefix: String,
    retention_ms: u64,
    wait_fallback: Duration,
    waiters: Arc<Waiters>,
    /// Fed by the pub/sub connection: deletions, for result caches. `None`
    /// in a cluster.
    feed: Option<ChangeFeed>,
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

/// The store's Redis function library: `lua/lib.lua` followed by each
/// operation's file in a block of its own, named after a hash of that code
/// (so each version of the store loads a library of its own), and the names
/// of its functions.
#[derive(Debug)]
struct Library {
    name: String,
    /// The code `FUNCTION LOAD` takes, its `#!lua name=…` line first.
    code: String,
    claim: String,
    claim_ro: String,
    renew: String,
    complete: String,
    fail: String,
    release: String,
    get: String,
    delete: String,
    peek: String,
}

impl Library {
    fn new() -> Self {
        let mut body = String::from(LIB);
        for (file, source) in OPERATIONS {
            body.push_str(&format!("\ndo -- {file}\n{source}\nend\n"));
        }
        let name = format!("onceflight_{}", hash_tag(&body));
        let code = format!("#!lua name={name}\n{}", body.replace("@LIBRARY@", &name));
        let function = |operation: &str| format!("{name}_{operation}");
        Self {
            claim: function("claim"),
            claim_ro: function("claim_ro"),
            renew: function("renew"),
            complete: function("complete"),
            fail: function("fail"),
            release: function("release"),
            get: function("get"),
            delete: function("delete"),
            peek: function("peek"),
            code,
            name,
        }
    }
}

/// Whether a function only reads: it is called with `FCALL_RO`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Access {
    Write,
    Read,
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
/// is part of the stored layout: it must never change. (It also names the
/// function library after its code.)
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
        let library = Library::new();
        load_library(&mut conn.clone(), &library)
            .await
            .map_err(|error| match map(error) {
                retryable if retryable.is_retryable() => retryable,
                error => Error::Backend {
                    backend: BACKEND,
                    message: format!(
                        "cannot load the onceflight function library (FUNCTION LOAD; the store \
                         needs Redis 7.0 or later, or Valkey 7.2 or later, and a user allowed \
                         FUNCTION and FCALL): {error}"
                    ),
                },
            })?;
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
        // The functions publish on the same name, which they read from the
        // record's key (`wake` in lua/lib.lua).
        let channel = format!("{}wake", config.prefix);
        let waiters = Arc::new(Waiters::default());
        let pubsub = subscribe(&clients, &channel).await.map_err(map)?;
        // A cluster forwards a PUBLISH to the other nodes over its bus, so
        // an answered PING on one node confirms nothing of the others: no
        // feed, and no result cache, there.
        let feed = (!config.cluster).then(ChangeFeed::new);
        let listener = tokio::spawn(listen(
            pubsub,
            clients,
            channel,
            Fanout {
                waiters: Arc::clone(&waiters),
                feed: feed.clone(),
            },
            Probe {
                every: config.pubsub_ping.max(Duration::from_millis(10)),
                timeout: config.response_timeout,
            },
        ));
        Ok(Self {
            conn,
            library,
            prefix: config.prefix,
            retention_ms: ms(config.retention.min(MAX_RETENTION)),
            wait_fallback: config.wait_fallback.max(Duration::from_millis(10)),
            waiters,
            feed,
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

    /// The name of the Redis function library the store loads (`FUNCTION
    /// LIST`); its functions are `<library>_<operation>`. The name carries
    /// a hash of the library's code, so each version of the store has its
    /// own, and a library no running version uses may be deleted with
    /// `FUNCTION DELETE`.
    pub fn library(&self) -> &str {
        &self.library.name
    }

    /// The Redis keys of a request: its record (one string holding the
    /// packed record, its lease included) and its fence (the last token,
    /// kept for a while after `delete`).
    pub fn redis_keys(&self, key: &RequestKey) -> [String; 2] {
        let tag = hash_tag(key.as_str());
        let key = key.as_str();
        let prefix = &self.prefix;
        [
            format!("{prefix}{{{tag}}}:record:{key}"),
            format!("{prefix}{{{tag}}}:fence:{key}"),
        ]
    }

    /// Calls `function` with `key`'s Redis keys and `args`.
    /// Loads the library and calls again when Redis does not know the
    /// function (after a restart or failover without persistence, or
    /// `FUNCTION FLUSH`) — again if it was lost once more between the load
    /// and the call. The function runs once at most: "not found" means it
    /// did not run.
    async fn call(
        &self,
        function: &str,
        access: Access,
        key: &RequestKey,
        args: &[&[u8]],
    ) -> std::result::Result<Value, RedisError> {
        let mut cmd = redis::cmd(match access {
            Access::Write => "FCALL",
            Access::Read => "FCALL_RO",
        });
        cmd.arg(function).arg(2);
        for redis_key in self.redis_keys(key) {
            cmd.arg(redis_key);
        }
        for arg in args {
            cmd.arg(*arg);
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            match cmd.query_async(&mut self.conn.clone()).await {
                Err(error) if is_function_missing(&error) && attempts < LOAD_ATTEMPTS => {
                    load_library(&mut self.conn.clone(), &self.library).await?;
                }
                other => return other,
            }
        }
    }

    /// Calls `function` and parses its reply, raising the token floor to
    /// any token in it.
    async fn run(
        &self,
        function: &str,
        access: Access,
        key: &RequestKey,
        args: &[&[u8]],
    ) -> Result<Reply> {
        let reply = Reply::parse(self.call(function, access, key, args).await.map_err(map)?)?;
        self.saw_reply(&reply);
        Ok(reply)
    }

    /// Raises the token floor to the token a reply carries, if any.
    fn saw_reply(&self, reply: &Reply) {
        if let Some(token) = reply.token() {
            self.saw_token(token);
        }
    }

    /// Runs a fenced function and returns its reply when it succeeded, or
    /// `LeaseLost`.
    async fn fenced(
        &self,
        function: &str,
        key: &RequestKey,
        token: Token,
        args: &[&[u8]],
    ) -> Result<Reply> {
        let token_arg = token.get().to_string();
        let mut all: Vec<&[u8]> = vec![token_arg.as_bytes()];
        all.extend_from_slice(args);
        let reply = self.run(function, Access::Write, key, &all).await?;
        match reply.outcome.as_str() {
            "ok" => Ok(reply),
            "lost" => Err(Error::lease_lost(key, token)),
            other => Err(corrupt(format!(
                "a fenced operation answered {other:?} for {:?}",
                key.as_str()
            ))),
        }
    }

    /// The claim's answer when Redis refused `claim` for want of memory
    /// (`refused`): `claim_ro` answers the claims that only read, and the
    /// rest stay refused.
    async fn claim_out_of_memory(
        &self,
        key: &RequestKey,
        args: &[&[u8]],
        refused: RedisError,
    ) -> Result<Reply> {
        let reply = self
            .run(&self.library.claim_ro, Access::Read, key, args)
            .await?;
        if reply.outcome == "refused" {
            return Err(map(refused));
        }
        Ok(reply)
    }
}

/// Loads the function library (`FUNCTION LOAD REPLACE`), on every primary
/// of a cluster (the redis crate routes `FUNCTION LOAD` to all of them).
/// Replacing is harmless: a library of the same name has the same code.
async fn load_library(conn: &mut RedisConnection, library: &Library) -> redis::RedisResult<()> {
    let _: Value = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&library.code)
        .query_async(conn)
        .await?;
    Ok(())
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

/// Where published keys go: the waiters, and the caches, of one store.
struct Fanout {
    waiters: Arc<Waiters>,
    /// `None` in a cluster (see [`RedisStore`]'s `change_feed`).
    feed: Option<ChangeFeed>,
}

impl Fanout {
    fn published(&self, message: &redis::Msg) {
        if let Ok(key) = std::str::from_utf8(message.get_payload_bytes()) {
            self.waiters.wake(key);
            if let Some(feed) = &self.feed {
                feed.changed(key);
            }
        }
    }

    /// How often the connection is probed: every `probe.every`, and more
    /// often while a cache asks for confirmations.
    fn every(&self, probe: Probe) -> Duration {
        self.feed
            .as_ref()
            .and_then(ChangeFeed::confirm_every)
            .map_or(probe.every, |every| every.min(probe.every))
    }

    /// Resolves when a cache asks for a confirmation now.
    async fn asked(&self) {
        match &self.feed {
            Some(feed) => feed.confirm_asked().await,
            None => std::future::pending().await,
        }
    }
}

/// The listening task: wakes the waiters of each published key and tells
/// the caches, and PINGs the connection every `probe.every` (or more often
/// while a cache listens) so that a half-open connection (no error, no
/// messages ever again) is noticed. Redis answers a PING after every message
/// it published to this connection before, so an answered PING confirms the
/// feed up to when it was sent. When the subscription drops or a PING goes
/// unanswered, caches are emptied at once; the task subscribes again on a
/// new connection, backing off while Redis is away, and only then wakes
/// everyone: messages may have been lost, so each waiter re-reads its
/// record, and any change after that re-read is published to a subscription
/// already in place.
async fn listen(
    first: PubSub,
    clients: Vec<Client>,
    channel: String,
    fanout: Fanout,
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
                    fanout.waiters.wake_all();
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
        receive(subscription, &fanout, probe).await;
        if let Some(feed) = &fanout.feed {
            feed.lost();
        }
    }
}

/// Receives on one subscription until it drops or a PING goes unanswered.
async fn receive(subscription: PubSub, fanout: &Fanout, probe: Probe) {
    let (mut sink, mut messages) = subscription.split();
    // The subscription was just confirmed; the feed is not, until a PING
    // comes back.
    let mut last_probe: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    if fanout
        .feed
        .as_ref()
        .is_some_and(|feed| feed.confirm_every().is_some())
    {
        last_probe = None;
    }
    loop {
        let due = last_probe.map_or_else(tokio::time::Instant::now, |at| at + fanout.every(probe));
        tokio::select! {
            biased;
            message = messages.next() => match message {
                Some(message) => fanout.published(&message),
                None => {
                    tracing::warn!("Redis pub/sub connection lost; reconnecting");
                    return;
                }
            },
            () = fanout.asked() => last_probe = None,
            () = tokio::time::sleep_until(due) => {
                let sent_at = tokio::time::Instant::now();
                last_probe = Some(sent_at);
                match tokio::time::timeout(probe.timeout, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {
                        // Messages published before the PING are already
                        // queued here: hand them out before confirming.
                        while let Some(message) = messages.next().now_or_never() {
                            match message {
                                Some(message) => fanout.published(&message),
                                None => {
                                    tracing::warn!("Redis pub/sub connection lost; reconnecting");
                                    return;
                                }
                            }
                        }
                        if let Some(feed) = &fanout.feed {
                            feed.confirmed(sent_at);
                        }
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "Redis pub/sub PING failed; reconnecting");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(
                            timeout = ?probe.timeout,
                            "Redis pub/sub PING unanswered (half-open connection); reconnecting"
                        );
                        return;
                    }
                }
            }
        }
    }
}

/// A function's reply: an array whose first element names the outcome,
/// then what that outcome carries (see the files in `lua/`).
struct Reply {
    outcome: String,
    items: Vec<Value>,
}

/// Where `view` (`lua/lib.lua`) puts each field of a whole record.
mod view {
    // Element 1 is Redis's clock (ms) when the function answered.
    pub(super) const STATE: usize = 2;
    pub(super) const KIND: usize = 3;
    pub(super) const FP: usize = 4;
    pub(super) const TOKEN: usize = 5;
    pub(super) const ATTEMPT: usize = 6;
    pub(super) const MAX: usize = 7;
    pub(super) const OWNER: usize = 8;
    pub(super) const LEXP: usize = 9;
    pub(super) const LEASE_LEFT: usize = 10;
    pub(super) const RESULT: usize = 11;
    pub(super) const EMSG: usize = 12;
    pub(super) const ERETRY: usize = 13;
    pub(super) const RETRY_AFTER: usize = 14;
    pub(super) const CREATED: usize = 15;
    pub(super) const UPDATED: usize = 16;
    pub(super) const DONE: usize = 17;
    pub(super) const EXP: usize = 18;
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

fn token_of(value: i64) -> Result<Token> {
    u64::try_from(value)
        .ok()
        .and_then(|t| Token::new(t).ok())
        .ok_or_else(|| corrupt(format!("token {value} out of range")))
}

impl Reply {
    fn parse(value: Value) -> Result<Self> {
        let items = match value {
            Value::Array(items) => items,
            other => return Err(corrupt(format!("a function replied {other:?}"))),
        };
        let outcome = match items.first() {
            Some(Value::BulkString(bytes)) => String::from_utf8(bytes.clone())
                .map_err(|_| corrupt("an outcome that is not UTF-8".into()))?,
            other => return Err(corrupt(format!("a reply without an outcome: {other:?}"))),
        };
        Ok(Self { outcome, items })
    }

    /// The value at `at`, `None` when absent (nil, or past the end).
    fn value(&self, at: usize) -> Option<&Value> {
        match self.items.get(at) {
            None | Some(Value::Nil | Value::Boolean(false)) => None,
            Some(value) => Some(value),
        }
    }

    fn int(&self, at: usize, name: &str) -> Result<Option<i64>> {
        match self.value(at) {
            None => Ok(None),
            Some(Value::Int(n)) => Ok(Some(*n)),
            Some(other) => Err(corrupt(format!(
                "{name} in the {:?} reply is not an integer: {other:?}",
                self.outcome
            ))),
        }
    }

    fn required_int(&self, at: usize, name: &str) -> Result<i64> {
        self.int(at, name)?
            .ok_or_else(|| corrupt(format!("the {:?} reply lacks {name}", self.outcome)))
    }

    fn count(&self, at: usize, name: &str) -> Result<u32> {
        Ok(u32::try_from(self.required_int(at, name)?).unwrap_or(0))
    }

    fn bytes(&self, at: usize, name: &str) -> Result<Option<Bytes>> {
        match self.value(at) {
            None => Ok(None),
            Some(Value::BulkString(bytes)) => Ok(Some(Bytes::copy_from_slice(bytes))),
            Some(other) => Err(corrupt(format!(
                "{name} in the {:?} reply is not a string: {other:?}",
                self.outcome
            ))),
        }
    }

    fn text(&self, at: usize, name: &str) -> Result<Option<String>> {
        self.bytes(at, name)?
            .map(|bytes| {
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| corrupt(format!("{name} is not UTF-8")))
            })
            .transpose()
    }

    fn required_text(&self, at: usize, name: &str) -> Result<String> {
        self.text(at, name)?
            .ok_or_else(|| corrupt(format!("the {:?} reply lacks {name}", self.outcome)))
    }

    /// The token a reply carries: a claim's (second element) or a record's.
    fn token(&self) -> Option<Token> {
        let at = match self.outcome.as_str() {
            "acquired" | "in_flight" | "completed" | "failed" => 1,
            "ok" if self.items.len() > view::TOKEN + 1 => view::TOKEN,
            _ => return None,
        };
        self.int(at, "token")
            .ok()
            .flatten()
            .and_then(|t| token_of(t).ok())
    }

    /// The whole record of a `view` reply (`lua/lib.lua`).
    fn record(&self, key: &RequestKey) -> Result<Record> {
        use view::*;
        let state = match self.required_text(STATE, "state")?.as_str() {
            "processing" => RecordState::Processing,
            "completed" => RecordState::Completed,
            "failed" => RecordState::Failed,
            other => return Err(corrupt(format!("unknown state {other:?}"))),
        };
        let processing = state == RecordState::Processing;
        let mut record = Record::new(
            key.clone(),
            Kind::parse(self.required_text(KIND, "kind")?).map_err(|e| corrupt(e.to_string()))?,
            state,
            token_of(self.required_int(TOKEN, "token")?)?,
            instant(self.required_int(CREATED, "created")?)?,
        );
        record.fingerprint = self
            .text(FP, "fp")?
            .map(Fingerprint::parse)
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?;
        record.attempt = self.count(ATTEMPT, "attempt")?;
        record.max_attempts = self.count(MAX, "max")?;
        record.owner = self
            .text(OWNER, "owner")?
            .map(Owner::parse)
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?;
        if processing {
            record.lease_expires_at = Some(instant(self.required_int(LEXP, "lexp")?)?);
            record.lease_remaining = Some(millis(self.int(LEASE_LEFT, "lease_left")?.unwrap_or(0)));
        }
        record.result = self.bytes(RESULT, "result")?;
        record.error = self.text(EMSG, "emsg")?.map(|message| {
            JobError::new(
                message,
                self.int(ERETRY, "eretry").ok().flatten() != Some(0),
            )
        });
        if state == RecordState::Failed {
            record.retry_after = self.int(RETRY_AFTER, "retry_after")?.map(millis);
        }
        record.updated_at = instant(self.required_int(UPDATED, "updated")?)?;
        record.completed_at = self.int(DONE, "done")?.map(instant).transpose()?;
        record.expires_at = Some(instant(self.required_int(EXP, "exp")?)?);
        Ok(record)
    }

    /// The claim a `claim` or `claim_ro` reply answers (`lua/claim.lua`).
    fn claim(&self, key: &RequestKey, options: &ClaimOptions) -> Result<Claim> {
        let token = || -> Result<Token> { token_of(self.required_int(1, "token")?) };
        Ok(match self.outcome.as_str() {
            "acquired" => {
                let expires_at = self.required_int(3, "lease end")?;
                Claim::Acquired(
                    Lease::new(
                        key.clone(),
                        token()?,
                        self.count(2, "attempt")?,
                        options.lease_ttl(),
                        instant(expires_at)?,
                        millis(self.required_int(4, "lease ms")?),
                    )
                    .with_takeover(self.int(5, "takeover")? == Some(1)),
                )
            }
            "in_flight" => {
                let mut in_flight = InFlight::new(
                    key.clone(),
                    token()?,
                    self.count(2, "attempt")?,
                    instant(self.required_int(3, "lease end")?)?,
                    millis(self.required_int(4, "lease left")?),
                );
                in_flight.owner = self
                    .text(5, "owner")?
                    .map(Owner::parse)
                    .transpose()
                    .map_err(|e| corrupt(e.to_string()))?;
                Claim::InFlight(in_flight)
            }
            "completed" => {
                let completed = Completed::new(
                    key.clone(),
                    token()?,
                    self.count(2, "attempt")?,
                    self.bytes(5, "result")?.ok_or_else(|| {
                        corrupt(format!(
                            "a completed record without a result for {:?}",
                            key.as_str()
                        ))
                    })?,
                    instant(self.required_int(3, "completed at")?)?,
                );
                // Element 4: the retention left, when the store asked.
                Claim::Completed(match self.int(4, "retention left")? {
                    Some(left) if left > 0 => completed.with_retention_remaining(millis(left)),
                    _ => completed,
                })
            }
            "failed" => Claim::Failed(Failed::new(
                key.clone(),
                token()?,
                self.count(2, "attempt")?,
                JobError::new(
                    self.required_text(3, "error")?,
                    self.int(4, "retryable")? != Some(0),
                ),
                self.int(5, "retry after")?.map(millis),
            )),
            "mismatch" => {
                let kind = Kind::parse(self.required_text(1, "kind")?)
                    .map_err(|e| corrupt(e.to_string()))?;
                return Err(Error::fingerprint_mismatch(key, &kind, options));
            }
            other => return Err(corrupt(format!("unknown claim outcome {other:?}"))),
        })
    }
}

#[async_trait]
impl RequestStore for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn claim_or_get(&self, key: &RequestKey, options: &ClaimOptions) -> Result<Claim> {
        let floor = self.high_water.load(Ordering::Relaxed);
        // What only a claim that writes reads (lua/claim.lua), in one
        // argument: each argument costs Redis as much as a small command.
        let rest = format!(
            "{} {} {} {} {floor} {}",
            ms(options.lease_ttl()),
            options.max_attempts(),
            ms(options.retry_backoff()),
            self.retention_ms,
            options.owner().map_or("", Owner::as_str),
        );
        // A cache in front of the store keeps completed results only as
        // long as their retention: ask for it then (it costs a PTTL).
        let cached = self.feed.as_ref().is_some_and(ChangeFeed::listened);
        let args: [&[u8]; 4] = [
            options.kind().as_str().as_bytes(),
            options
                .fingerprint()
                .map_or("", Fingerprint::as_str)
                .as_bytes(),
            rest.as_bytes(),
            b"1",
        ];
        let args = &args[..if cached { 4 } else { 3 }];
        let reply = match self
            .call(&self.library.claim, Access::Write, key, args)
            .await
        {
            Ok(value) => Reply::parse(value)?,
            // Refused whole for want of memory, before it ran.
            Err(error) if error.code() == Some("OOM") => {
                self.claim_out_of_memory(key, args, error).await?
            }
            Err(error) => return Err(map(error)),
        };
        self.saw_reply(&reply);
        let claim = reply.claim(key, options)?;
        if let Claim::Acquired(lease) = &claim {
            // Redis's clock at the grant, in ms: the lease's end less its ttl.
            let now = lease.expires_at.timestamp_millis() - ms(lease.remaining) as i64;
            if floor / 1000 > u64::try_from(now).unwrap_or(0) {
                self.warn_clock_behind(floor, now);
            }
        }
        Ok(claim)
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
        let reply = self
            .fenced(
                &self.library.renew,
                key,
                token,
                &[ttl_ms.as_bytes(), retention_ms.as_bytes()],
            )
            .await?;
        Ok(Renewal::new(
            instant(reply.required_int(1, "lease end")?)?,
            millis(reply.required_int(2, "lease left")?),
        ))
    }

    async fn complete(&self, key: &RequestKey, token: Token, result: Bytes) -> Result<Record> {
        let retention_ms = self.retention_ms.to_string();
        self.fenced(
            &self.library.complete,
            key,
            token,
            &[result.as_ref(), retention_ms.as_bytes()],
        )
        .await?
        .record(key)
    }

    async fn fail(&self, key: &RequestKey, token: Token, error: &JobError) -> Result<Record> {
        let retention_ms = self.retention_ms.to_string();
        let retryable: &[u8] = if error.is_retryable() { b"1" } else { b"0" };
        self.fenced(
            &self.library.fail,
            key,
            token,
            &[
                error.message().as_bytes(),
                retryable,
                retention_ms.as_bytes(),
            ],
        )
        .await?
        .record(key)
    }

    async fn release(&self, key: &RequestKey, token: Token) -> Result<Record> {
        let retention_ms = self.retention_ms.to_string();
        self.fenced(
            &self.library.release,
            key,
            token,
            &[retention_ms.as_bytes()],
        )
        .await?
        .record(key)
    }

    async fn get(&self, key: &RequestKey) -> Result<Option<Record>> {
        let reply = self.run(&self.library.get, Access::Read, key, &[]).await?;
        match reply.outcome.as_str() {
            "none" => Ok(None),
            "ok" => reply.record(key).map(Some),
            other => Err(corrupt(format!("get answered {other:?}"))),
        }
    }

    async fn wait(&self, key: &RequestKey, timeout: Duration) -> Result<Option<Record>> {
        wait_pushed(&self.waiters, key, timeout, self.wait_fallback, || {
            self.get(key)
        })
        .await
    }

    async fn delete(&self, key: &RequestKey) -> Result<bool> {
        let deleted = self
            .call(&self.library.delete, Access::Write, key, &[])
            .await
            .map_err(map)?;
        Ok(deleted == Value::Int(1))
    }

    /// Nothing to do: Redis forgets records past retention, abandoned
    /// leases included, by their own expiry.
    async fn sweep(&self) -> Result<u64> {
        Ok(0)
    }

    /// Scans the store's record keys on every primary, a bounded batch
    /// per page: pages are each in order, not among themselves, and may be
    /// short or empty while a cursor follows (see `store/scan.rs`).
    async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        self.list_page(query).await
    }

    /// One whole scan of the store's record keys on every primary: its cost
    /// grows with the number of records held.
    async fn counts(&self, prefix: &str) -> Result<StoreStats> {
        self.count_all(prefix).await
    }

    /// Deletions arrive on the store's pub/sub connection (every delete
    /// publishes its key), confirmed by PINGs on it. `None` in a cluster:
    /// a PUBLISH reaches the other nodes over the cluster bus, in no order
    /// a PING on one node can confirm.
    fn change_feed(&self) -> Option<ChangeFeed> {
        self.feed.clone()
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

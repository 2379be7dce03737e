//! LISTEN/NOTIFY fan-out: one listening connection per store instance wakes
//! any number of in-process waiters, and tells result caches which keys
//! changed ([`ChangeFeed`]).
//!
//! The connection is watched: a connection that fails, or that stops
//! answering (a half-open TCP connection after a network failover, a host
//! that froze), is replaced. A notification sent while no connection
//! listens is lost, so once the new connection listens, every waiter is
//! woken to re-read its record — in that order: woken before the LISTEN, a
//! waiter could re-read, go back to sleep, and miss a change notified just
//! before the LISTEN took effect. Caches are emptied as soon as the
//! connection is given up.
//!
//! While a cache listens, the connection confirms its feed by notifying
//! itself on a channel of its own: Postgres keeps one queue of
//! notifications for all channels, in commit order, so when that probe comes
//! back every change committed before it was sent has been delivered.

use std::sync::Arc;
use std::time::Duration;

use onceflight_core::ChangeFeed;
use onceflight_core::backend::waiters::Waiters;
use sqlx::Executor;
use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPoolOptions};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The channel every onceflight schema notifies on; payloads are
/// `<schema>:<key>`.
pub(crate) const CHANNEL: &str = "onceflight";

/// How the listening connection is watched.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Watch {
    /// After this long without a notification, the connection is pinged.
    pub(crate) ping_after: Duration,
    /// A ping (or a reconnection and its LISTEN) unanswered for this long
    /// means the connection is gone.
    pub(crate) timeout: Duration,
}

/// First pause between two failed reconnections; it doubles up to
/// [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Longest the first LISTEN may take at start-up, at least.
const FIRST_LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where notifications go: the waiters, and the caches, of one schema.
pub(crate) struct Fanout {
    /// `<schema>:`, the prefix of this schema's payloads.
    pub(crate) prefix: String,
    pub(crate) waiters: Arc<Waiters>,
    pub(crate) feed: ChangeFeed,
}

/// Starts the listening task: LISTEN on [`CHANNEL`] with `options`, wake
/// the waiters of each notified key of the schema and tell the feed. The
/// first LISTEN happens before this returns, so no wait can start before
/// notifications flow.
pub(crate) async fn spawn_listener(
    options: PgConnectOptions,
    fanout: Fanout,
    watch: Watch,
) -> Result<JoinHandle<()>, sqlx::Error> {
    let listener = tokio::time::timeout(watch.timeout.max(FIRST_LISTEN_TIMEOUT), listen(&options))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    Ok(tokio::spawn(async move {
        let mut listener = listener;
        loop {
            receive(&mut listener, &fanout, watch).await;
            // Changes may go unseen from now on: caches forget everything
            // and serve nothing until the next connection confirms.
            fanout.feed.lost();
            // Dropping the listener lets go of its connection.
            drop(listener);
            listener = reconnect(&options, watch).await;
            tracing::info!("LISTEN connection restored");
            // Only now that the new connection listens: anything notified
            // while none did is lost, so every waiter re-reads its record.
            fanout.waiters.wake_all();
        }
    }))
}

/// A listening connection, and the channel of its own probes.
struct Listening {
    listener: PgListener,
    /// `onceflight_probe_<backend pid>`: nobody else listens there.
    probes: String,
}

/// A new connection that listens on [`CHANNEL`] and on a channel of its own
/// for its probes.
///
/// Each connection gets a pool of its own: a connection given up as
/// unresponsive goes back to the pool it came from, which may hold it a
/// while (sqlx checks a returned connection with a ping), and must not stand
/// in the way of its replacement.
async fn listen(options: &PgConnectOptions) -> Result<Listening, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    // Reconnecting is done here, where it is followed by waking every
    // waiter; sqlx's own would listen again without saying when.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut listener)
        .await?;
    let probes = format!("onceflight_probe_{pid}");
    listener.listen(&probes).await?;
    Ok(Listening { listener, probes })
}

/// Reconnects and listens again, retrying with a growing pause until it
/// succeeds.
async fn reconnect(options: &PgConnectOptions, watch: Watch) -> Listening {
    let mut pause = FIRST_PAUSE;
    loop {
        match tokio::time::timeout(watch.timeout, listen(options)).await {
            Ok(Ok(listener)) => return listener,
            Ok(Err(error)) => tracing::warn!(%error, "LISTEN reconnection failed; retrying"),
            Err(_) => tracing::warn!(
                timeout = ?watch.timeout,
                "LISTEN reconnection did not answer; retrying"
            ),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// What woke the listening task.
enum Event {
    Received(Result<Option<PgNotification>, sqlx::Error>),
    /// Time to probe (a cache listens) or ping (quiet for a while).
    Due,
    /// A cache started listening, or asked for more frequent probes.
    Asked,
    /// A probe went unanswered for longer than the watch allows.
    ProbeLost,
}

/// A probe sent and not yet back.
struct Sent {
    payload: String,
    at: Instant,
}

/// Wakes the waiters of each notification and tells the feed, probing the
/// connection — a ping while quiet, and while a cache listens, a probe
/// that confirms the feed every [`ChangeFeed::confirm_every`] — until the
/// connection fails or stops answering.
async fn receive(listening: &mut Listening, fanout: &Fanout, watch: Watch) {
    let Listening {
        listener,
        probes: channel,
    } = listening;
    let mut quiet_since = Instant::now();
    let mut last_probe: Option<Instant> = None;
    let mut sent: Option<Sent> = None;
    let mut probes = 0u64;
    loop {
        let due = match fanout.feed.confirm_every() {
            Some(every) => match &sent {
                // One probe at a time.
                Some(sent) => sent.at + watch.timeout,
                None => last_probe.map_or_else(Instant::now, |at| at + every),
            },
            None => quiet_since + watch.ping_after,
        };
        let lost_at = sent.as_ref().map(|sent| sent.at + watch.timeout);
        // `try_recv` is cancel-safe: a timeout never loses a notification.
        let event = tokio::select! {
            biased;
            received = listener.try_recv() => Event::Received(received),
            () = fanout.feed.confirm_asked() => Event::Asked,
            () = tokio::time::sleep_until(lost_at.unwrap_or(due)), if lost_at.is_some() => Event::ProbeLost,
            () = tokio::time::sleep_until(due) => Event::Due,
        };
        match event {
            Event::Received(Ok(Some(notification))) => {
                quiet_since = Instant::now();
                let payload = notification.payload();
                if notification.channel() == channel.as_str() {
                    if let Some(probe) = sent.take_if(|probe| probe.payload == payload) {
                        fanout.feed.confirmed(probe.at);
                    }
                } else if let Some(key) = payload.strip_prefix(fanout.prefix.as_str()) {
                    fanout.waiters.wake(key);
                    fanout.feed.changed(key);
                }
            }
            Event::Received(Ok(None)) => {
                tracing::warn!("LISTEN connection lost; reconnecting");
                return;
            }
            Event::Received(Err(error)) => {
                tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                return;
            }
            Event::Asked => last_probe = None,
            Event::ProbeLost => {
                tracing::warn!(
                    timeout = ?watch.timeout,
                    "LISTEN connection did not deliver its own probe; reconnecting"
                );
                return;
            }
            Event::Due if sent.is_some() => {}
            Event::Due => {
                // A notification that arrives meanwhile is kept for the next
                // `try_recv`.
                let at = Instant::now();
                let (query, probe) = if fanout.feed.confirm_every().is_some() {
                    probes += 1;
                    let payload = probes.to_string();
                    let query = format!("SELECT pg_notify('{channel}', '{payload}')");
                    (query, Some(Sent { payload, at }))
                } else {
                    ("SELECT 1".to_owned(), None)
                };
                let sql = sqlx::AssertSqlSafe(query);
                match tokio::time::timeout(
                    watch.timeout,
                    (&mut *listener).execute(sqlx::raw_sql(sql)),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        quiet_since = Instant::now();
                        if probe.is_some() {
                            last_probe = Some(at);
                            sent = probe;
                        }
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "LISTEN connection failed a ping; reconnecting");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(
                            timeout = ?watch.timeout,
                            "LISTEN connection did not answer a ping; reconnecting"
                        );
                        return;
                    }
                }
            }
        }
    }
}

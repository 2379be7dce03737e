//! LISTEN/NOTIFY fan-out: one listening connection per store instance wakes
//! any number of in-process waiters.
//!
//! The connection is watched: a connection that fails, or that stops
//! answering (a half-open TCP connection after a network failover, a host
//! that froze), is replaced. A notification sent while no connection
//! listens is lost, so once the new connection listens, every waiter is
//! woken to re-read its record — in that order: woken before the LISTEN, a
//! waiter could re-read, go back to sleep, and miss a change notified just
//! before the LISTEN took effect.

use std::sync::Arc;
use std::time::Duration;

use onceflight_core::backend::waiters::Waiters;
use sqlx::Executor;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::task::JoinHandle;

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

/// Starts the listening task: LISTEN on [`CHANNEL`] with `options` and wake
/// the waiters of each notified key of `schema`. The first LISTEN happens
/// before this returns, so no wait can start before notifications flow.
pub(crate) async fn spawn_listener(
    options: PgConnectOptions,
    schema: &str,
    waiters: Arc<Waiters>,
    watch: Watch,
) -> Result<JoinHandle<()>, sqlx::Error> {
    let listener = tokio::time::timeout(watch.timeout.max(FIRST_LISTEN_TIMEOUT), listen(&options))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    let prefix = format!("{schema}:");
    Ok(tokio::spawn(async move {
        let mut listener = listener;
        loop {
            receive(&mut listener, &prefix, &waiters, watch).await;
            // Dropping the listener lets go of its connection.
            drop(listener);
            listener = reconnect(&options, watch).await;
            tracing::info!("LISTEN connection restored");
            // Only now that the new connection listens: anything notified
            // while none did is lost, so every waiter re-reads its record.
            waiters.wake_all();
        }
    }))
}

/// A new connection that listens on [`CHANNEL`].
///
/// Each connection gets a pool of its own: a connection given up as
/// unresponsive goes back to the pool it came from, which may hold it a
/// while (sqlx checks a returned connection with a ping), and must not stand
/// in the way of its replacement.
async fn listen(options: &PgConnectOptions) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    // Reconnecting is done here, where it is followed by waking every
    // waiter; sqlx's own would listen again without saying when.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Reconnects and listens again, retrying with a growing pause until it
/// succeeds.
async fn reconnect(options: &PgConnectOptions, watch: Watch) -> PgListener {
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

/// Wakes the waiters of each notification until the connection fails or
/// stops answering a ping.
async fn receive(listener: &mut PgListener, prefix: &str, waiters: &Waiters, watch: Watch) {
    loop {
        // `try_recv` is cancel-safe: a timeout never loses a notification.
        match tokio::time::timeout(watch.ping_after, listener.try_recv()).await {
            Ok(Ok(Some(notification))) => {
                if let Some(key) = notification.payload().strip_prefix(prefix) {
                    waiters.wake(key);
                }
            }
            Ok(Ok(None)) => {
                tracing::warn!("LISTEN connection lost; reconnecting");
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                return;
            }
            // Quiet for a while: check that the connection still answers. A
            // notification that arrives meanwhile is kept for the next
            // `try_recv`.
            Err(_) => {
                match tokio::time::timeout(watch.timeout, (&mut *listener).execute("SELECT 1"))
                    .await
                {
                    Ok(Ok(_)) => {}
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

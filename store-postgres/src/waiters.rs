//! LISTEN/NOTIFY fan-out: one listening connection per store instance wakes
//! any number of in-process waiters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The channel every onceflight schema notifies on; payloads are
/// `<schema>:<key>`.
pub(crate) const CHANNEL: &str = "onceflight";

/// Waiters by key. A notification drops the key's sender, which wakes every
/// receiver; the next waiter creates a new one.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    by_key: Mutex<HashMap<String, watch::Sender<()>>>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<()>>> {
        self.by_key.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers interest in `key`; the receiver's `changed()` resolves (with
    /// an error) at the next notification for it. Register before reading
    /// the record, so that no notification can slip in between.
    pub(crate) fn subscribe(&self, key: &str) -> watch::Receiver<()> {
        let mut by_key = self.lock();
        if by_key.len() > 1024 {
            // Forget keys whose waiters all left without a notification.
            by_key.retain(|_, sender| sender.receiver_count() > 0);
        }
        by_key
            .entry(key.to_owned())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    fn wake(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Wakes everyone, so that each re-reads its record: after the listening
    /// connection was lost, notifications may have been missed.
    fn wake_all(&self) {
        self.lock().clear();
    }
}

/// Starts the listening task: LISTEN on [`CHANNEL`] and wake the waiters of
/// each notified key of `schema`. The first LISTEN happens before this
/// returns, so no wait can start before notifications flow.
pub(crate) async fn spawn_listener(
    pool: &PgPool,
    schema: &str,
    waiters: Arc<Waiters>,
) -> Result<JoinHandle<()>, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    let prefix = format!("{schema}:");
    Ok(tokio::spawn(async move {
        let mut pause = Duration::from_millis(100);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    pause = Duration::from_millis(100);
                    if let Some(key) = notification.payload().strip_prefix(&prefix) {
                        waiters.wake(key);
                    }
                }
                // The connection was lost; the next `try_recv` reconnects
                // and listens again. Anything notified meanwhile is lost, so
                // every waiter re-reads its record.
                Ok(None) => {
                    tracing::warn!("LISTEN connection lost; reconnecting");
                    waiters.wake_all();
                }
                Err(error) => {
                    tracing::warn!(%error, "LISTEN connection failed; retrying");
                    waiters.wake_all();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }))
}

//! Building blocks for stores whose wake-ups arrive from outside the process
//! (Postgres LISTEN/NOTIFY, Redis pub/sub): one listening connection per
//! store instance wakes any number of in-process waiters.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::claim::Record;
use crate::error::Result;
use crate::types::RequestKey;

/// Waiters by key. A wake-up drops the key's sender, which wakes every
/// receiver at once; the next waiter creates a new one.
#[derive(Debug, Default)]
pub struct Waiters {
    by_key: Mutex<HashMap<String, watch::Sender<()>>>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<()>>> {
        self.by_key.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers interest in `key`; the receiver's `changed()` resolves (with
    /// an error) at the next wake-up for it. Register before reading the
    /// record, so that no wake-up can slip in between.
    pub fn subscribe(&self, key: &str) -> watch::Receiver<()> {
        let mut by_key = self.lock();
        if by_key.len() > 1024 {
            // Forget keys whose waiters all left without a wake-up.
            by_key.retain(|_, sender| sender.receiver_count() > 0);
        }
        by_key
            .entry(key.to_owned())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// Wakes every waiter on `key`.
    pub fn wake(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Wakes everyone, so that each re-reads its record: after the listening
    /// connection was lost, wake-ups may have been missed.
    pub fn wake_all(&self) {
        self.lock().clear();
    }

    /// How many keys have waiters registered (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key has waiters registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// [`crate::RequestStore::wait`] for a store with pushed wake-ups: reads the
/// record with `read`, and until it is settled, the timeout passes or it is
/// gone, sleeps until a wake-up for `key`, the end of its lease (judged from
/// the remaining time the store reported, so no clock is compared), or
/// `fallback` — the bound on how long a lost wake-up can delay a waiter.
pub async fn wait_pushed<F, Fut>(
    waiters: &Waiters,
    key: &RequestKey,
    timeout: Duration,
    fallback: Duration,
    mut read: F,
) -> Result<Option<Record>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<Record>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        // Subscribe before reading, so a change between the read and the
        // wait still wakes us.
        let mut changed = waiters.subscribe(key.as_str());
        let record = read().await?;
        let now = Instant::now();
        let Some(record) = record else {
            return Ok(None);
        };
        if record.is_settled() || now >= deadline {
            return Ok(Some(record));
        }
        let lease_end = now + record.lease_remaining.unwrap_or_default();
        let wake_at = deadline.min(lease_end).min(now + fallback);
        tokio::select! {
            _ = changed.changed() => {}
            () = tokio::time::sleep_until(wake_at) => {}
        }
    }
}

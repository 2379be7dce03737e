//! Building blocks for stores whose wake-ups arrive from outside the process
//! (Postgres LISTEN/NOTIFY, Redis pub/sub): one listening connection per
//! store instance wakes any number of in-process waiters.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OnceCell, watch};
use tokio::time::Instant;

use crate::claim::Record;
use crate::error::{Error, Result};
use crate::types::RequestKey;

/// Waiters by key. A wake-up drops the key's sender, which wakes every
/// receiver at once; the next waiter creates a new one.
///
/// The waiters one wake-up woke share one read of the record: a herd of a
/// thousand waiters on one key costs the store a read per process, not a
/// thousand, when the record completes.
#[derive(Debug, Default)]
pub struct Waiters {
    by_key: Mutex<HashMap<String, Generation>>,
    /// Numbers generations, so that a waiter can tell whether a shared read
    /// began while its own subscription was already in place.
    generations: AtomicU64,
}

/// The waiters of one key between two wake-ups.
#[derive(Debug)]
struct Generation {
    sender: watch::Sender<()>,
    id: u64,
    /// The read its waiters share once a wake-up ends it.
    after_wake: Arc<SharedRead>,
}

/// A read of the record shared by the waiters of one wake-up, stamped with
/// the generation its reader had subscribed to before it began.
#[derive(Debug, Default)]
struct SharedRead {
    cell: OnceCell<(u64, Option<Record>)>,
}

/// A waiter's registration for the next wake-up of its key.
#[derive(Debug)]
pub struct Subscription {
    changed: watch::Receiver<()>,
    id: u64,
    after_wake: Arc<SharedRead>,
}

impl Subscription {
    /// Resolves at the next wake-up for the key (at once if it came already).
    pub async fn changed(&mut self) {
        // The sender is only ever dropped, never sent on: this is the wake-up.
        let _ = self.changed.changed().await;
    }
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Generation>> {
        self.by_key.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers interest in `key`; [`Subscription::changed`] resolves at
    /// the next wake-up for it. Register before reading the record, so that
    /// no wake-up can slip in between.
    pub fn subscribe(&self, key: &str) -> Subscription {
        let mut by_key = self.lock();
        if by_key.len() > 1024 {
            // Forget keys whose waiters all left without a wake-up.
            by_key.retain(|_, generation| generation.sender.receiver_count() > 0);
        }
        let generation = by_key.entry(key.to_owned()).or_insert_with(|| Generation {
            sender: watch::channel(()).0,
            id: self.generations.fetch_add(1, Ordering::Relaxed),
            after_wake: Arc::default(),
        });
        Subscription {
            changed: generation.sender.subscribe(),
            id: generation.id,
            after_wake: Arc::clone(&generation.after_wake),
        }
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
    // The read the waiters woken with this one share, once a wake-up (not a
    // timer) woke it.
    let mut woken_with: Option<Arc<SharedRead>> = None;
    loop {
        // Subscribe before reading, so a change between the read and the
        // wait still wakes us.
        let mut changed = waiters.subscribe(key.as_str());
        let record = match woken_with.take() {
            None => read().await?,
            Some(shared) => {
                // The first of the woken to get here reads for all, after
                // the wake-up, so it sees the change. Its answer is good
                // for this waiter only if the read began once this
                // waiter's subscription was in place (the same generation):
                // a change after it would wake this waiter again. Otherwise
                // (a later wake-up came between), this waiter reads itself.
                let (id, shared_record) = shared
                    .cell
                    .get_or_try_init(|| async { Ok::<_, Error>((changed.id, read().await?)) })
                    .await?
                    .clone();
                if id == changed.id {
                    shared_record
                } else {
                    read().await?
                }
            }
        };
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
            () = changed.changed() => woken_with = Some(Arc::clone(&changed.after_wake)),
            () = tokio::time::sleep_until(wake_at) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::claim::RecordState;
    use crate::types::{Kind, Token};

    fn record(key: &RequestKey, state: RecordState) -> Record {
        let mut record = Record::new(
            key.clone(),
            Kind::parse("image").expect("kind"),
            state,
            Token::new(1).expect("token"),
            chrono::Utc::now(),
        );
        if state == RecordState::Processing {
            record.lease_remaining = Some(Duration::from_secs(3600));
        }
        record
    }

    /// Waiters woken by one wake-up share one read; each still got the
    /// changed record.
    #[tokio::test(start_paused = true)]
    async fn a_woken_herd_reads_once() {
        const HERD: usize = 100;
        let waiters = Arc::new(Waiters::default());
        let key = RequestKey::parse("herd").expect("key");
        let state = Arc::new(Mutex::new(RecordState::Processing));
        let reads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..HERD {
            let (waiters, key, state, reads) = (
                Arc::clone(&waiters),
                key.clone(),
                Arc::clone(&state),
                Arc::clone(&reads),
            );
            tasks.push(tokio::spawn(async move {
                wait_pushed(
                    &waiters,
                    &key,
                    Duration::from_secs(60),
                    Duration::from_secs(30),
                    || {
                        reads.fetch_add(1, Ordering::SeqCst);
                        let now = *state.lock().expect("state");
                        let record = record(&key, now);
                        async move { Ok(Some(record)) }
                    },
                )
                .await
            }));
        }
        // Every waiter read once and sleeps.
        while reads.load(Ordering::SeqCst) < HERD || waiters.is_empty() {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        *state.lock().expect("state") = RecordState::Completed;
        waiters.wake("herd");
        for task in tasks {
            let record = task.await.expect("waiter").expect("wait").expect("record");
            assert_eq!(record.state, RecordState::Completed);
        }
        assert_eq!(
            reads.load(Ordering::SeqCst),
            HERD + 1,
            "one read each before the wake-up, then one for the whole herd"
        );
    }

    /// A waiter whose key was woken again after the shared read began does
    /// not take that read: it reads for itself.
    #[tokio::test(start_paused = true)]
    async fn a_later_wake_up_is_not_answered_by_an_earlier_read() {
        let waiters = Waiters::default();
        let first = waiters.subscribe("k");
        let shared = Arc::clone(&first.after_wake);
        waiters.wake("k");
        // The first woken waiter subscribes and reads for the woken.
        let reader = waiters.subscribe("k");
        shared
            .cell
            .get_or_init(|| async { (reader.id, None) })
            .await;
        // A change comes before another woken waiter subscribes.
        waiters.wake("k");
        let late = waiters.subscribe("k");
        let (id, _) = shared.cell.get().expect("the shared read");
        assert_ne!(
            *id, late.id,
            "the late waiter must not take the shared read"
        );
        assert_eq!(*id, reader.id);
    }
}

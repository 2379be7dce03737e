//! The push channel a store offers to result caches in front of it: which
//! keys changed, and up to when every change is known to have arrived.
//!
//! A cache may keep a completed result only as long as it would hear of the
//! result's deletion. A store feeds [`ChangeFeed`] from its own push channel
//! (Postgres LISTEN/NOTIFY, Redis pub/sub, or its own memory) and confirms
//! the channel regularly: a confirmation at instant `t` says that every
//! change the store committed before `t` has been delivered. The cache then
//! serves a result at instant `now` only if the last confirmation is at most
//! its staleness bound old, so a deletion anywhere reaches every cache within
//! that bound, even when the channel breaks silently.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Receives what a [`ChangeFeed`] delivers.
pub(crate) trait FeedListener: Send + Sync {
    /// The record of `key` changed (deleted, above all): forget it.
    fn changed(&self, key: &str);
    /// Changes may have been missed: forget everything.
    fn reset(&self);
}

/// A store's feed of record changes, for caches (see the module docs).
///
/// Cheap to clone; every clone is the same feed.
#[derive(Clone)]
pub struct ChangeFeed {
    shared: Arc<Shared>,
}

struct Shared {
    /// Changes are made in this process and delivered as they happen: the
    /// feed is always confirmed.
    in_process: bool,
    /// The instant `confirmed` counts from.
    epoch: Instant,
    /// Every change committed before `epoch` plus this many nanoseconds,
    /// less one, has been delivered; 0 while the channel is down (or before
    /// it first confirmed). An atomic, so that a cache hit takes no lock
    /// here; written with release and read with acquire ordering, so that a
    /// hit that sees a confirmation also sees every deletion delivered
    /// before it.
    confirmed: AtomicU64,
    /// Whether a cache ever listened: read on claim paths, so kept apart
    /// from the lock.
    listened: AtomicBool,
    state: Mutex<State>,
    /// Signalled when a listener asks for confirmations (or for more
    /// frequent ones), so that the store probes at once.
    asked: Notify,
}

#[derive(Default)]
struct State {
    /// How often the store is asked to confirm: the tightest interval any
    /// listener asked for.
    confirm_every: Option<Duration>,
    listeners: Vec<Weak<dyn FeedListener>>,
}

impl ChangeFeed {
    /// A feed whose channel is remote: unconfirmed until the store calls
    /// [`ChangeFeed::confirmed`].
    pub fn new() -> Self {
        Self::with(false)
    }

    /// A feed of changes made in this process (the memory store): every
    /// change is delivered as it is made, so it is always confirmed.
    pub fn in_process() -> Self {
        Self::with(true)
    }

    fn with(in_process: bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                in_process,
                epoch: Instant::now(),
                confirmed: AtomicU64::new(0),
                listened: AtomicBool::new(false),
                state: Mutex::new(State::default()),
                asked: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn listeners(&self) -> Vec<Arc<dyn FeedListener>> {
        let mut state = self.lock();
        state.listeners.retain(|l| l.strong_count() > 0);
        state.listeners.iter().filter_map(Weak::upgrade).collect()
    }

    /// The record of `key` changed in a way a cache must hear of (for a
    /// completed record: it was deleted). Called by the store.
    pub fn changed(&self, key: &str) {
        for listener in self.listeners() {
            listener.changed(key);
        }
    }

    /// Every change committed before `sent_at` has been delivered: the store
    /// sent a probe on its push channel at `sent_at` and the answer came
    /// back after everything queued before it. Called by the store.
    pub fn confirmed(&self, sent_at: Instant) {
        // A probe sent before the feed existed cannot be told apart from
        // one sent at its creation: ignoring it only serves less.
        let Some(since) = sent_at.checked_duration_since(self.shared.epoch) else {
            return;
        };
        let stamp = u64::try_from(since.as_nanos())
            .unwrap_or(u64::MAX - 1)
            .min(u64::MAX - 1)
            + 1;
        self.shared.confirmed.fetch_max(stamp, Ordering::AcqRel);
    }

    /// The instant of the last confirmation, if the channel is confirmed.
    fn last_confirmed(&self) -> Option<Instant> {
        match self.shared.confirmed.load(Ordering::Acquire) {
            0 => None,
            stamp => Some(self.shared.epoch + Duration::from_nanos(stamp - 1)),
        }
    }

    /// The channel broke (or reconnected): changes may have been missed, so
    /// caches forget everything and serve nothing until the next
    /// [`ChangeFeed::confirmed`]. Called by the store.
    pub fn lost(&self) {
        self.shared.confirmed.store(0, Ordering::Release);
        for listener in self.listeners() {
            listener.reset();
        }
    }

    /// How often a cache asked the store to confirm its channel, if any
    /// cache listens: a store with a remote channel probes it at least this
    /// often.
    pub fn confirm_every(&self) -> Option<Duration> {
        self.lock().confirm_every
    }

    /// Whether a cache listens (has ever listened) to this feed: a store
    /// may then fetch what only a cache needs, such as a result's retention
    /// left. Takes no lock.
    pub fn listened(&self) -> bool {
        self.shared.listened.load(Ordering::Relaxed)
    }

    /// Resolves when a cache starts listening or asks for more frequent
    /// confirmations than before: the store should probe its channel now
    /// rather than at its next usual time. A request made while nobody
    /// awaited this is kept for the next call.
    pub async fn confirm_asked(&self) {
        self.shared.asked.notified().await;
    }

    /// Whether a cache with staleness bound `max_stale` may serve at `now`:
    /// the last confirmation is at most `max_stale` old.
    pub(crate) fn fresh(&self, now: Instant, max_stale: Duration) -> bool {
        if self.shared.in_process {
            return true;
        }
        self.last_confirmed()
            .is_some_and(|at| now.saturating_duration_since(at) <= max_stale)
    }

    /// Adds a listener that asks for a confirmation at least every
    /// `confirm_every`.
    pub(crate) fn listen(&self, listener: Weak<dyn FeedListener>, confirm_every: Duration) {
        let mut state = self.lock();
        state.listeners.push(listener);
        state.confirm_every = Some(
            state
                .confirm_every
                .map_or(confirm_every, |d| d.min(confirm_every)),
        );
        drop(state);
        self.shared.listened.store(true, Ordering::Relaxed);
        self.shared.asked.notify_one();
    }
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("ChangeFeed")
            .field("in_process", &self.shared.in_process)
            .field("confirmed", &self.last_confirmed())
            .field("listeners", &state.listeners.len())
            .finish()
    }
}

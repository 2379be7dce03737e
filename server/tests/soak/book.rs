//! The book of what the load has seen, against which every answer is
//! checked: no token granted twice, no completed result lost or changed
//! without a delete.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde_json::{Value, json};

/// What the load has seen, to check the invariants against.
#[derive(Debug, Default)]
pub(crate) struct Book {
    pub(crate) inner: Mutex<BookInner>,
}

impl Book {
    pub(crate) fn lock(&self) -> MutexGuard<'_, BookInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Call before sending a request whose answer is checked against the
    /// book.
    pub(crate) fn start(&self, key: &str) -> Seen {
        let inner = self.lock();
        let epoch = (inner.deleting.get(key).copied().unwrap_or(0) == 0)
            .then(|| inner.epochs.get(key).copied().unwrap_or(0));
        Seen {
            epoch,
            at: Instant::now(),
        }
    }

    /// Whether no delete of `key` started, ran or ended since `seen`.
    pub(crate) fn undisturbed(inner: &BookInner, key: &str, seen: Seen) -> Option<u64> {
        let epoch = seen.epoch?;
        let now = inner.epochs.get(key).copied().unwrap_or(0);
        (now == epoch && inner.deleting.get(key).copied().unwrap_or(0) == 0).then_some(epoch)
    }

    /// A claim acquired `token` for `key`: the token is new, and no result
    /// seen for the key before the claim was sent was lost without a delete.
    pub(crate) fn acquired(&self, key: &str, token: u64, seen: Seen, what: &str) {
        let mut inner = self.lock();
        assert!(
            inner.granted.insert((key.to_owned(), token)),
            "{what}: token {token} for {key} was granted twice"
        );
        if let Some(epoch) = Self::undisturbed(&inner, key, seen)
            && let Some((seen_epoch, seen_token, seen_at)) = inner.completed.get(key)
        {
            assert!(
                *seen_epoch != epoch || *seen_at > seen.at,
                "{what}: {key} was completed with token {seen_token} and never deleted, \
                 yet a claim acquired it again (token {token})"
            );
        }
    }

    /// `record` (a record or claim body) shows `key` completed: its result
    /// is the one its token's holder stored, and the same one every earlier
    /// reader saw since the key was last deleted.
    pub(crate) fn completed(&self, key: &str, record: &Value, seen: Seen, what: &str) {
        let token = record["token"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: a completed body without a token: {record}"));
        assert_eq!(
            record["result"],
            result_for(key, token),
            "{what}: the result of {key} is the one the holder of token {token} stored first"
        );
        let mut inner = self.lock();
        if let Some(epoch) = Self::undisturbed(&inner, key, seen) {
            match inner.completed.get(key) {
                Some((seen_epoch, seen_token, _)) if *seen_epoch == epoch => assert_eq!(
                    *seen_token, token,
                    "{what}: the completed result of {key} changed without a delete"
                ),
                _ => {
                    inner
                        .completed
                        .insert(key.to_owned(), (epoch, token, Instant::now()));
                }
            }
        }
    }

    pub(crate) fn delete_started(&self, key: &str) {
        let mut inner = self.lock();
        *inner.epochs.entry(key.to_owned()).or_default() += 1;
        *inner.deleting.entry(key.to_owned()).or_default() += 1;
    }

    pub(crate) fn delete_ended(&self, key: &str) {
        let mut inner = self.lock();
        *inner.epochs.entry(key.to_owned()).or_default() += 1;
        if let Some(n) = inner.deleting.get_mut(key) {
            *n = n.saturating_sub(1);
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct BookInner {
    /// Per key: bumped when a delete starts and when it ends.
    pub(crate) epochs: HashMap<String, u64>,
    /// Per key: deletes in progress.
    pub(crate) deleting: HashMap<String, u32>,
    /// Per key: the token whose result was seen, in which epoch, and when
    /// that observation ended.
    pub(crate) completed: HashMap<String, (u64, u64, Instant)>,
    /// Every (key, token) a claim acquired.
    pub(crate) granted: HashSet<(String, u64)>,
}

/// The moment a request started: the key's epoch, if no delete of it was
/// in progress, and the instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub(crate) epoch: Option<u64>,
    pub(crate) at: Instant,
}

impl Seen {
    /// An observation not checked against other ones.
    pub(crate) fn unchecked() -> Self {
        Self {
            epoch: None,
            at: Instant::now(),
        }
    }
}

/// The result the holder of `token` stores for `key`: derived from both, so
/// any reader can tell whose it is; its size varies so that the store's
/// memory sees records of different sizes.
pub(crate) fn result_for(key: &str, token: u64) -> Value {
    let pad = "x".repeat(usize::try_from(token % 1024).unwrap_or(0));
    json!({"key": key, "token": token, "pad": pad})
}

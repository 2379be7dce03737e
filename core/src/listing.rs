//! The operator's view of a store: pages of records matching a filter, and
//! counts by state and kind.
//!
//! Listing is never on the claim path: stores answer it from what the
//! protocol already keeps (an index on the creation instant in Postgres, a
//! `SCAN` of the store's keys in Redis, the shards in memory), and a claim
//! writes nothing for it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::claim::{Record, RecordState, Timestamp};
use crate::error::{Error, Result};
use crate::types::{Kind, RequestKey};

/// The most records one page may hold.
pub const MAX_LIST_LIMIT: u32 = 500;

/// The page size when the caller gives none.
pub const DEFAULT_LIST_LIMIT: u32 = 50;

/// Which records a listing returns, in which order, and from where.
///
/// Built with [`ListQuery::new`] and its `with_*` methods, which check every
/// value; a store takes a query as given.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ListQuery {
    filter: StateFilter,
    kind: Option<Kind>,
    prefix: String,
    order: ListOrder,
    limit: u32,
    cursor: Option<ListCursor>,
}

/// Which states a listing returns.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum StateFilter {
    /// Every record.
    #[default]
    Any,
    /// `processing` records; with `stuck_only`, only those whose lease ran
    /// out (expired or released) and that nobody took over yet.
    Processing {
        /// Only records whose lease is over.
        stuck_only: bool,
    },
    /// `completed` records.
    Completed,
    /// `failed` records; `retry_allowed` keeps only those a claim may retry
    /// (now or after the backoff: retryable, attempts left) when `Some(true)`,
    /// only final failures when `Some(false)`.
    Failed {
        /// Keep only failures that allow (or do not allow) a retry.
        retry_allowed: Option<bool>,
    },
}

impl StateFilter {
    /// Whether `record` (as read at one instant of the store's clock) passes.
    pub fn accepts(&self, record: &Record) -> bool {
        match *self {
            StateFilter::Any => true,
            StateFilter::Processing { stuck_only } => {
                record.state == RecordState::Processing && (!stuck_only || record.lease_expired())
            }
            StateFilter::Completed => record.state == RecordState::Completed,
            StateFilter::Failed { retry_allowed } => {
                record.state == RecordState::Failed
                    && retry_allowed.is_none_or(|allowed| allowed == record.retry_after.is_some())
            }
        }
    }

    /// The one state this filter keeps, if it keeps one.
    pub fn state(&self) -> Option<RecordState> {
        match self {
            StateFilter::Any => None,
            StateFilter::Processing { .. } => Some(RecordState::Processing),
            StateFilter::Completed => Some(RecordState::Completed),
            StateFilter::Failed { .. } => Some(RecordState::Failed),
        }
    }
}

/// The order of a listing: by the records' creation instant, then by key.
///
/// Creation is the one instant no later operation moves (renewals,
/// completions and retries keep it), so a record keeps its place while an
/// operator pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum ListOrder {
    /// The most recently created first.
    #[default]
    NewestFirst,
    /// The oldest first.
    OldestFirst,
}

/// Where the next page starts: opaque to callers, meaningful only to the
/// store that wrote it and only with the query that produced it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ListCursor(String);

impl ListCursor {
    /// The longest cursor accepted (a key of 512 bytes plus a namespace, hex
    /// encoded, plus a store's own position).
    pub const MAX_LEN: usize = 2048;

    /// A cursor as a caller sent it back; `InvalidInput` when it cannot be
    /// one (empty, too long, or not printable ASCII). Whether it means
    /// anything is for the store to judge.
    pub fn parse(value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        if value.is_empty()
            || value.len() > Self::MAX_LEN
            || !value.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid_cursor());
        }
        Ok(Self(value))
    }

    /// A cursor a store wrote.
    pub fn from_store(value: String) -> Self {
        Self(value)
    }

    /// The cursor as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The keyset position of stores that list in order (memory, Postgres):
    /// the last record's creation instant (microseconds since the epoch) and
    /// key.
    pub fn keyset(created_at: Timestamp, key: &RequestKey) -> Self {
        let mut text = format!("k1.{}.", created_at.timestamp_micros());
        for byte in key.as_str().bytes() {
            text.push_str(&format!("{byte:02x}"));
        }
        Self(text)
    }

    /// The position [`ListCursor::keyset`] wrote, or `InvalidInput`.
    pub fn to_keyset(&self) -> Result<(Timestamp, String)> {
        let rest = self.0.strip_prefix("k1.").ok_or_else(invalid_cursor)?;
        let (micros, hex) = rest.split_once('.').ok_or_else(invalid_cursor)?;
        let micros: i64 = micros.parse().map_err(|_| invalid_cursor())?;
        let at = Timestamp::from_timestamp_micros(micros).ok_or_else(invalid_cursor)?;
        if hex.len() % 2 != 0 {
            return Err(invalid_cursor());
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| invalid_cursor())?;
        let key = String::from_utf8(bytes).map_err(|_| invalid_cursor())?;
        Ok((at, key))
    }
}

fn invalid_cursor() -> Error {
    Error::InvalidInput {
        field: "cursor",
        reason: "is not a cursor this store wrote; start again without one".to_owned(),
    }
}

impl Default for ListQuery {
    fn default() -> Self {
        Self::new()
    }
}

impl ListQuery {
    /// The longest key prefix a query takes, in bytes: longer than any
    /// stored key (a namespace of 64 bytes, `/`, a key of 512), so a longer
    /// one could match nothing.
    pub const MAX_PREFIX_BYTES: usize = 1024;

    /// Every record, newest first, [`DEFAULT_LIST_LIMIT`] to a page.
    pub fn new() -> Self {
        Self {
            filter: StateFilter::Any,
            kind: None,
            prefix: String::new(),
            order: ListOrder::NewestFirst,
            limit: DEFAULT_LIST_LIMIT,
            cursor: None,
        }
    }

    /// Keeps only records `filter` accepts.
    pub fn with_filter(mut self, filter: StateFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Keeps only records of `kind`.
    pub fn with_kind(mut self, kind: Option<Kind>) -> Self {
        self.kind = kind;
        self
    }

    /// Keeps only records whose key starts with `prefix` (at most
    /// [`ListQuery::MAX_PREFIX_BYTES`], no control character; empty keeps
    /// every key).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        if prefix.len() > Self::MAX_PREFIX_BYTES || prefix.chars().any(char::is_control) {
            return Err(Error::InvalidInput {
                field: "prefix",
                reason: format!(
                    "must be at most {} bytes with no control character",
                    Self::MAX_PREFIX_BYTES
                ),
            });
        }
        self.prefix = prefix;
        Ok(self)
    }

    /// Lists in `order`.
    pub fn with_order(mut self, order: ListOrder) -> Self {
        self.order = order;
        self
    }

    /// At most `limit` records a page, 1 ..= [`MAX_LIST_LIMIT`].
    pub fn with_limit(mut self, limit: u32) -> Result<Self> {
        if !(1..=MAX_LIST_LIMIT).contains(&limit) {
            return Err(Error::InvalidInput {
                field: "limit",
                reason: format!("must be 1–{MAX_LIST_LIMIT}"),
            });
        }
        self.limit = limit;
        Ok(self)
    }

    /// Continues after the page that returned `cursor`.
    pub fn with_cursor(mut self, cursor: Option<ListCursor>) -> Self {
        self.cursor = cursor;
        self
    }

    /// The state filter.
    pub fn filter(&self) -> StateFilter {
        self.filter
    }

    /// The kind filter.
    pub fn kind(&self) -> Option<&Kind> {
        self.kind.as_ref()
    }

    /// The key prefix (empty: every key).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The order.
    pub fn order(&self) -> ListOrder {
        self.order
    }

    /// The most records a page holds.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Where the page starts, if not at the beginning.
    pub fn cursor(&self) -> Option<&ListCursor> {
        self.cursor.as_ref()
    }

    /// Whether `record` passes every filter of the query (not the cursor).
    pub fn accepts(&self, record: &Record) -> bool {
        self.filter.accepts(record)
            && self.kind.as_ref().is_none_or(|kind| *kind == record.kind)
            && record.key.as_str().starts_with(&self.prefix)
    }
}

/// One page of a listing.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub struct ListPage {
    /// The records, without their results (`result` is `None`: read the key
    /// for it), as the store saw them when it read the page.
    pub records: Vec<Record>,
    /// Where the next page starts; `None` once the listing is exhausted.
    ///
    /// A page may hold fewer records than the limit, even none, while a
    /// cursor is returned: stores that scan (Redis) bound the work of one
    /// page and continue from the cursor.
    pub next: Option<ListCursor>,
}

impl ListPage {
    /// A page of `records` continuing at `next`.
    pub fn new(records: Vec<Record>, next: Option<ListCursor>) -> Self {
        Self { records, next }
    }
}

/// Records of one state, or in total.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub struct StateCounts {
    /// `processing` records (live, expired or released leases).
    pub processing: u64,
    /// `completed` records.
    pub completed: u64,
    /// `failed` records.
    pub failed: u64,
}

impl StateCounts {
    /// Counts one record of `state`.
    pub fn add(&mut self, state: RecordState) {
        self.add_many(state, 1);
    }

    /// Counts `records` records of `state` (a store that counts in groups).
    pub fn add_many(&mut self, state: RecordState, records: u64) {
        match state {
            RecordState::Processing => self.processing += records,
            RecordState::Completed => self.completed += records,
            RecordState::Failed => self.failed += records,
        }
    }

    /// Every record counted.
    pub fn total(&self) -> u64 {
        self.processing + self.completed + self.failed
    }
}

/// Counts of a store's records (or of those under a key prefix), as one read
/// of the store saw them.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub struct StoreStats {
    /// Records by state.
    pub states: StateCounts,
    /// Records by kind, then state.
    pub kinds: BTreeMap<Kind, StateCounts>,
    /// `processing` records whose lease is live: jobs running now.
    pub leases_live: u64,
    /// `processing` records whose lease ran out (expired or released) and
    /// that nobody took over yet: stuck until the next claim.
    pub leases_expired: u64,
    /// How long ago the oldest record holding a live lease was created: the
    /// longest-running job, takeovers and retries included.
    pub oldest_live_lease_age: Option<Duration>,
}

impl StoreStats {
    /// Counts `record`, read at the store's `now`.
    pub fn add(&mut self, record: &Record, now: Timestamp) {
        self.states.add(record.state);
        self.kinds
            .entry(record.kind.clone())
            .or_default()
            .add(record.state);
        if record.state == RecordState::Processing {
            if record.lease_expired() {
                self.leases_expired += 1;
            } else {
                self.leases_live += 1;
                let age = (now - record.created_at).to_std().unwrap_or_default();
                self.oldest_live_lease_age =
                    Some(self.oldest_live_lease_age.map_or(age, |a| a.max(age)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_cursors_round_trip_any_key() {
        let at = Timestamp::from_timestamp_micros(1_733_000_000_123_456).unwrap();
        let key = RequestKey::parse("ns/image|<img src=x> ✓").unwrap();
        let cursor = ListCursor::keyset(at, &key);
        let parsed = ListCursor::parse(cursor.as_str().to_owned()).expect("printable");
        assert_eq!(parsed.to_keyset().unwrap(), (at, key.as_str().to_owned()));
    }

    #[test]
    fn foreign_cursors_are_invalid_input() {
        for bad in ["x", "k1.", "k1.12", "k1.12.zz", "k1.12.f", "k1.abc.00"] {
            let cursor = ListCursor::parse(bad).expect("printable");
            assert!(
                matches!(
                    cursor.to_keyset(),
                    Err(Error::InvalidInput {
                        field: "cursor",
                        ..
                    })
                ),
                "{bad:?} was taken for a cursor"
            );
        }
        assert!(ListCursor::parse("").is_err());
        assert!(ListCursor::parse("a b").is_err());
    }

    #[test]
    fn limits_and_prefixes_are_checked() {
        assert!(ListQuery::new().with_limit(0).is_err());
        assert!(ListQuery::new().with_limit(MAX_LIST_LIMIT + 1).is_err());
        assert_eq!(
            ListQuery::new().with_limit(MAX_LIST_LIMIT).unwrap().limit(),
            MAX_LIST_LIMIT
        );
        assert!(ListQuery::new().with_prefix("a\nb").is_err());
        let longest = "x".repeat(ListQuery::MAX_PREFIX_BYTES);
        assert!(ListQuery::new().with_prefix(longest.clone()).is_ok());
        assert!(ListQuery::new().with_prefix(longest + "x").is_err());
    }
}

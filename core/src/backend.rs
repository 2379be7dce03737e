//! For store authors: what every backend shares beyond the user API — how a
//! store's atomic step turns into a [`crate::Claim`], the single definitions
//! of the retry backoff, the expired-lease failure text and the lease limits,
//! in-process fan-out of wake-ups, and password redaction for store URLs.
//!
//! Users of the [`crate::Coordinator`] or of a store never need this module.

pub use crate::claim::Decision;
pub use crate::redact::redact_url;
pub use crate::types::{backoff_after, check_lease_ttl, lease_expired_message};

/// Waking waiters: in-process fan-out by key, and the `wait` loop of stores
/// whose wake-ups arrive from another process.
pub mod waiters {
    pub use crate::waiters::{Waiters, wait_pushed};
}

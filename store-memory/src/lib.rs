//! The in-process onceflight store: the embedded default.
//!
//! [`MemoryStore`] keeps records in a fixed number of shards, each behind its
//! own short-held lock, so claims of different keys rarely contend and no
//! lock is global. Time is tokio's monotonic clock (the store's clock of
//! docs/protocol.md §4), so tests can pause and advance it. Waiters are woken by the
//! operation that changes a record, and by their own timer at the lease's
//! end; nothing polls.
//!
//! Records live only as long as the process: use the Postgres or Redis store
//! when results must survive a restart or be shared between processes.

mod config;
mod error;
mod store;

pub use config::MemoryConfig;
pub use store::MemoryStore;

/// The README's examples compile and run as doctests here, where both the
/// core and this store are at hand.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

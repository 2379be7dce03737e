//! Typed configuration of the memory store.

use std::time::Duration;

use onceflight_core::DEFAULT_RETENTION;

/// How a [`crate::MemoryStore`] is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// How long a completed or failed record is kept, and an abandoned lease
    /// after it ended (default 24 h).
    pub retention: Duration,
    /// How many independently locked shards hold the records (default 64,
    /// rounded up to a power of two). More shards mean less contention
    /// between keys, at a little memory each.
    pub shards: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            retention: DEFAULT_RETENTION,
            shards: 64,
        }
    }
}

impl MemoryConfig {
    /// Sets the retention.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the number of shards.
    pub fn with_shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }
}

//! Typed configuration of the memory store.

use std::time::Duration;

use onceflight_core::{DEFAULT_RETENTION, Error, Result};

/// How a [`crate::MemoryStore`] is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// How long a completed or failed record is kept, and an abandoned lease
    /// after it ended (default 24 h). Zero is refused: every record would be
    /// forgotten the instant it was written, so a claim would never see
    /// another's lease or result.
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

    /// Checks the configuration: `InvalidInput` (field `retention`) for a
    /// zero retention.
    pub fn validate(&self) -> Result<()> {
        if self.retention.is_zero() {
            return Err(Error::InvalidInput {
                field: "retention",
                reason: "must be longer than zero: every record would be forgotten at once"
                    .to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn a_zero_retention_is_refused() {
        let zero = MemoryConfig::default().with_retention(Duration::ZERO);
        let checked = zero.validate();
        assert!(
            matches!(
                checked,
                Err(Error::InvalidInput {
                    field: "retention",
                    ..
                })
            ),
            "validate: expected InvalidInput(retention), got {checked:?}"
        );
        let built = MemoryStore::try_new(zero);
        assert!(
            matches!(
                built,
                Err(Error::InvalidInput {
                    field: "retention",
                    ..
                })
            ),
            "try_new: expected InvalidInput(retention), got {built:?}"
        );
        let shortest = MemoryConfig::default().with_retention(Duration::from_nanos(1));
        assert!(
            MemoryStore::try_new(shortest).is_ok(),
            "any retention above zero is accepted"
        );
    }
}

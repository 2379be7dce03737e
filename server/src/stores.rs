//! Opening the store a URL names: `memory://` (feature `memory`), and the
//! schemes of stores this build lacks, which are refused with the cargo
//! feature that would bring them.

use std::sync::Arc;
use std::time::Duration;

use onceflight_core::{DEFAULT_RETENTION, RequestStore};

/// How a store is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// How long results and failures are kept, and abandoned leases after
    /// they end.
    pub retention: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            retention: DEFAULT_RETENTION,
        }
    }
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenStoreError {
    /// The URL names a store this build was compiled without.
    #[error(
        "`{scheme}://` needs the {store} store, which this build does not include: rebuild with `--features {feature}`"
    )]
    NotCompiled {
        /// The URL's scheme.
        scheme: String,
        /// The store's name.
        store: &'static str,
        /// The cargo feature that compiles it in.
        feature: &'static str,
    },
    /// The URL names no known store.
    #[error(
        "unknown store URL {url:?}: expected memory://, postgres://…, or redis://… (rediss://, several for a cluster)"
    )]
    Unknown {
        /// The URL, password removed.
        url: String,
    },
}

/// The store `url` names, opened with `options`.
pub async fn open(
    url: &str,
    options: &StoreOptions,
) -> Result<Arc<dyn RequestStore>, OpenStoreError> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme {
        "memory" => open_memory(options),
        "postgres" | "postgresql" => Err(OpenStoreError::NotCompiled {
            scheme: scheme.to_owned(),
            store: "Postgres",
            feature: "postgres",
        }),
        "redis" | "rediss" => Err(OpenStoreError::NotCompiled {
            scheme: scheme.to_owned(),
            store: "Redis",
            feature: "redis",
        }),
        _ => Err(OpenStoreError::Unknown {
            url: redact_url(url),
        }),
    }
}

#[cfg(feature = "memory")]
fn open_memory(options: &StoreOptions) -> Result<Arc<dyn RequestStore>, OpenStoreError> {
    use onceflight_store_memory::{MemoryConfig, MemoryStore};
    Ok(Arc::new(MemoryStore::new(
        MemoryConfig::default().with_retention(options.retention),
    )))
}

#[cfg(not(feature = "memory"))]
fn open_memory(_options: &StoreOptions) -> Result<Arc<dyn RequestStore>, OpenStoreError> {
    Err(OpenStoreError::NotCompiled {
        scheme: "memory".to_owned(),
        store: "in-memory",
        feature: "memory",
    })
}

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x?sslmode=require"),
            "postgres://app:***@db:5432/x?sslmode=require"
        );
        assert_eq!(redact_url("redis://:pw@cache/0"), "redis://:***@cache/0");
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redact_url("memory://"), "memory://");
    }

    #[tokio::test]
    async fn stores_this_build_lacks_are_named_with_their_feature() {
        let error = open("postgres://localhost/x", &StoreOptions::default())
            .await
            .expect_err("no Postgres store in this build");
        assert!(error.to_string().contains("--features postgres"), "{error}");
        let error = open("ftp://x", &StoreOptions::default())
            .await
            .expect_err("unknown scheme");
        assert!(matches!(error, OpenStoreError::Unknown { .. }), "{error}");
    }
}

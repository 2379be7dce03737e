//! The servers that `test` and `bench` run against (design §10): for each
//! one a command needs, either the caller's (its URL set in the environment)
//! or a throw-away one started here and stopped when [`Backends`] is dropped.
//!
//! Both commands share this so that "which server did this run use, and is it
//! gone afterwards" has one answer.

use std::ffi::OsString;

use anyhow::{Context, Result};

use crate::postgres::Postgres;
use crate::process;
use crate::redis::Redis;
use crate::redis_cluster::RedisCluster;

/// Tells the tests and benchmarks that a missing backend is a failure, not
/// a skip (conventions: "Tests"): under xtask, every backend is provided.
pub(crate) const REQUIRE_BACKENDS: &str = "ONCEFLIGHT_REQUIRE_BACKENDS";

/// Which servers a command needs. Starting one costs seconds (a PostgreSQL
/// `initdb`, six Redis processes for a cluster), so commands ask only for
/// what they use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Needs {
    /// A PostgreSQL server, passed on as `DATABASE_URL`.
    pub(crate) postgres: bool,
    /// A single Redis server, passed on as `REDIS_URL`.
    pub(crate) redis: bool,
    /// A three-master Redis Cluster, passed on as `REDIS_CLUSTER_URLS`
    /// (comma-separated seed URLs).
    pub(crate) cluster: bool,
}

/// The servers of one run. Dropping it stops the ones it started, whether
/// the command that used them passed, failed or never got going.
#[derive(Default)]
pub(crate) struct Backends {
    database_url: Option<String>,
    redis_url: Option<String>,
    redis_cluster_urls: Option<String>,
    // The servers started by this run, stopped in the reverse order of their
    // start because fields drop in declaration order: the Redis Cluster
    // first, then Redis, then PostgreSQL.
    redis_cluster: Option<RedisCluster>,
    redis: Option<Redis>,
    postgres: Option<Postgres>,
}

impl Backends {
    /// Provides every server in `needs`: the caller's when its variable is
    /// set (an empty value counts as unset), otherwise a throw-away one.
    /// When a start fails, the servers started before it are stopped before
    /// the error is returned.
    pub(crate) fn start(needs: Needs) -> Result<Self> {
        // Built up in place, so that a `?` below drops (stops) whatever was
        // already started.
        let mut backends = Self::default();

        if needs.postgres {
            backends.database_url = Some(match env_url("DATABASE_URL")? {
                Some(url) => {
                    eprintln!(
                        "xtask: using DATABASE_URL from the environment: {}",
                        process::redact_url(&url)
                    );
                    url
                }
                None => {
                    let postgres = Postgres::start()?;
                    let url = postgres.url();
                    eprintln!(
                        "xtask: started a throw-away PostgreSQL {} at {url} (files in {})",
                        postgres.version(),
                        postgres.dir().display()
                    );
                    backends.postgres = Some(postgres);
                    url
                }
            });
        }
        if needs.redis {
            backends.redis_url = Some(match env_url("REDIS_URL")? {
                Some(url) => {
                    eprintln!(
                        "xtask: using REDIS_URL from the environment: {}",
                        process::redact_url(&url)
                    );
                    url
                }
                None => {
                    let redis = Redis::start()?;
                    let url = redis.url();
                    eprintln!(
                        "xtask: started a throw-away Redis at {url} (files in {})",
                        redis.dir().display()
                    );
                    backends.redis = Some(redis);
                    url
                }
            });
        }
        if needs.cluster {
            backends.redis_cluster_urls = Some(match env_url("REDIS_CLUSTER_URLS")? {
                Some(urls) => {
                    let redacted: Vec<String> = urls.split(',').map(process::redact_url).collect();
                    eprintln!(
                        "xtask: using REDIS_CLUSTER_URLS from the environment: {}",
                        redacted.join(",")
                    );
                    urls
                }
                None => {
                    let cluster = RedisCluster::start()?;
                    let urls = cluster.urls();
                    eprintln!(
                        "xtask: started a throw-away Redis Cluster at {urls} (files in {})",
                        cluster.dir().display()
                    );
                    backends.redis_cluster = Some(cluster);
                    urls
                }
            });
        }
        Ok(backends)
    }

    /// The environment variables that hand the servers to a child process,
    /// one per server this run provides, for [`std::process::Command::envs`].
    pub(crate) fn env(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("DATABASE_URL", &self.database_url),
            ("REDIS_URL", &self.redis_url),
            ("REDIS_CLUSTER_URLS", &self.redis_cluster_urls),
        ]
        .into_iter()
        .filter_map(|(name, url)| Some((name, url.as_deref()?)))
    }
}

/// The value of `name`, treating empty as unset.
fn env_url(name: &str) -> Result<Option<String>> {
    match std::env::var_os(name) {
        None => Ok(None),
        Some(value) if value.is_empty() => Ok(None),
        Some(value) => value
            .into_string()
            .map(Some)
            .map_err(|value: OsString| anyhow::anyhow!("{value:?} is not UTF-8"))
            .with_context(|| format!("{name} is set but unusable")),
    }
}

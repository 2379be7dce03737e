//! The servers that `test` and `bench` run against (docs/protocol.md §10): for each
//! one a command needs, either the caller's (its URL set in the environment)
//! or a throw-away one started here and stopped when [`Backends`] is dropped.
//!
//! Both commands share this so that "which server did this run use, and is it
//! gone afterwards" has one answer.

use std::ffi::OsString;

use anyhow::{Context, Result};

use onceflight_test_support::pgbouncer::{self, PgBouncer};
use onceflight_test_support::postgres::{self, Postgres};
use onceflight_test_support::redis::Redis;
use onceflight_test_support::redis_cluster::RedisCluster;

use crate::process;

/// Tells the tests and benchmarks that a missing backend is a failure, not
/// a skip (conventions: "Tests"): under xtask, every backend is provided.
pub(crate) use onceflight_test_support::env::REQUIRE_BACKENDS;

/// The variable that names the PostgreSQL with production durability.
pub(crate) const DURABLE_VAR: &str = "DATABASE_URL_DURABLE";

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
    /// A transaction-mode PgBouncer in front of the PostgreSQL server,
    /// passed on as `PGBOUNCER_URL` (implies `postgres`).
    pub(crate) pgbouncer: bool,
    /// A PostgreSQL server with TLS, passed on as `PG_TLS_URL` (by the host
    /// name its certificate names), `PG_TLS_CA_FILE` (the CA that signed it)
    /// and `PG_TLS_OTHER_CA_FILE` (a CA that did not).
    pub(crate) pg_tls: bool,
}

impl Needs {
    /// Every server: what `cargo xtask test` provides.
    pub(crate) const ALL: Self = Self {
        postgres: true,
        redis: true,
        cluster: true,
        pgbouncer: true,
        pg_tls: true,
    };
}

/// The TLS-enabled PostgreSQL of a run, as the tests get it.
#[derive(Default)]
struct PgTls {
    url: String,
    ca_file: String,
    other_ca_file: String,
}

/// The servers of one run. Dropping it stops the ones it started, whether
/// the command that used them passed, failed or never got going.
#[derive(Default)]
pub(crate) struct Backends {
    database_url: Option<String>,
    database_url_durable: Option<String>,
    redis_url: Option<String>,
    redis_cluster_urls: Option<String>,
    pgbouncer_url: Option<String>,
    pg_tls: Option<PgTls>,
    // The servers started by this run, stopped in the reverse order of their
    // start because fields drop in declaration order: the Redis Cluster
    // first, then Redis, then PgBouncer, then PostgreSQL.
    redis_cluster: Option<RedisCluster>,
    redis: Option<Redis>,
    pgbouncer: Option<PgBouncer>,
    postgres: Option<Postgres>,
    /// The PostgreSQL with production durability.
    durable_postgres: Option<Postgres>,
    /// The PostgreSQL with TLS on.
    tls_postgres: Option<Postgres>,
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

        if needs.postgres || needs.pgbouncer {
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
        if needs.pgbouncer {
            backends.pgbouncer_url = Some(match env_url("PGBOUNCER_URL")? {
                Some(url) => {
                    eprintln!(
                        "xtask: using PGBOUNCER_URL from the environment: {}",
                        process::redact_url(&url)
                    );
                    url
                }
                None => {
                    let upstream = backends.database_url.as_deref().unwrap_or_default();
                    let pgbouncer = PgBouncer::start(upstream)?;
                    let url = pgbouncer.url();
                    eprintln!(
                        "xtask: started a throw-away PgBouncer (transaction mode, {} server \
                         connections) at {url} in front of {} (files in {})",
                        pgbouncer::SERVER_POOL_SIZE,
                        process::redact_url(upstream),
                        pgbouncer.dir().display()
                    );
                    backends.pgbouncer = Some(pgbouncer);
                    url
                }
            });
        }
        if needs.pg_tls {
            backends.pg_tls = Some(backends.start_pg_tls()?);
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

    /// Adds a second PostgreSQL with a production server's durability
    /// (`fsync`, `synchronous_commit` and `full_page_writes` on), passed on
    /// as `DATABASE_URL_DURABLE`: the caller's when that is set, else a
    /// throw-away one. The first server has them off, as tests want; the
    /// benchmarks measure both, since a commit's flush is what a production
    /// write pays most.
    pub(crate) fn add_durable_postgres(&mut self) -> Result<()> {
        self.database_url_durable = Some(match env_url(DURABLE_VAR)? {
            Some(url) => {
                eprintln!(
                    "xtask: using {DURABLE_VAR} from the environment: {}",
                    process::redact_url(&url)
                );
                url
            }
            None => {
                let postgres = Postgres::start_with(postgres::Options {
                    durable: true,
                    ..postgres::Options::default()
                })?;
                let url = postgres.url();
                eprintln!(
                    "xtask: started a throw-away PostgreSQL {} with fsync, \
                     synchronous_commit and full_page_writes on at {url} (files in {})",
                    postgres.version(),
                    postgres.dir().display()
                );
                self.durable_postgres = Some(postgres);
                url
            }
        });
        Ok(())
    }

    /// The TLS PostgreSQL: the caller's (`PG_TLS_URL` with both CA files),
    /// else a throw-away one of its own (the plain server has TLS off).
    fn start_pg_tls(&mut self) -> Result<PgTls> {
        if let Some(url) = env_url("PG_TLS_URL")? {
            let ca_file = env_url("PG_TLS_CA_FILE")?;
            let other_ca_file = env_url("PG_TLS_OTHER_CA_FILE")?;
            let (Some(ca_file), Some(other_ca_file)) = (ca_file, other_ca_file) else {
                anyhow::bail!(
                    "PG_TLS_URL is set, so PG_TLS_CA_FILE (the CA that signed its certificate) \
                     and PG_TLS_OTHER_CA_FILE (a CA that did not) must be too"
                );
            };
            eprintln!(
                "xtask: using PG_TLS_URL from the environment: {}",
                process::redact_url(&url)
            );
            return Ok(PgTls {
                url,
                ca_file,
                other_ca_file,
            });
        }
        let postgres = Postgres::start_tls()?;
        eprintln!(
            "xtask: started a throw-away PostgreSQL {} with TLS at {} (files in {})",
            postgres.version(),
            postgres.tls_url(),
            postgres.dir().display()
        );
        let server = self.tls_postgres.insert(postgres);
        Ok(PgTls {
            url: server.tls_url(),
            ca_file: server.ca_file().display().to_string(),
            other_ca_file: server.other_ca_file().display().to_string(),
        })
    }

    /// The environment variables that hand the servers to a child process,
    /// one per server this run provides, for [`std::process::Command::envs`].
    pub(crate) fn env(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let tls = self.pg_tls.as_ref();
        [
            ("DATABASE_URL", self.database_url.as_deref()),
            (DURABLE_VAR, self.database_url_durable.as_deref()),
            ("REDIS_URL", self.redis_url.as_deref()),
            ("REDIS_CLUSTER_URLS", self.redis_cluster_urls.as_deref()),
            ("PGBOUNCER_URL", self.pgbouncer_url.as_deref()),
            ("PG_TLS_URL", tls.map(|t| t.url.as_str())),
            ("PG_TLS_CA_FILE", tls.map(|t| t.ca_file.as_str())),
            (
                "PG_TLS_OTHER_CA_FILE",
                tls.map(|t| t.other_ca_file.as_str()),
            ),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
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

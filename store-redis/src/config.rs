//! Typed configuration of the Redis store.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use onceflight_core::DEFAULT_RETENTION;
use onceflight_core::backend::redact_url;

/// How a [`crate::RedisStore`] connects and behaves.
///
/// `Debug` never shows a password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Where Redis is: one URL (`redis://[user:password@]host:port[/db]`,
    /// `rediss://…` for TLS) for a single server, or several seed URLs of a
    /// Redis Cluster.
    pub urls: Vec<String>,
    /// Whether `urls` name a Redis Cluster. Several URLs always do; set this
    /// for a cluster reached through one seed.
    pub cluster: bool,
    /// Prepended to every key and to the wake-up channel (default
    /// `onceflight:`), so several stores share one Redis without meeting.
    /// No `{` or `}`: the store owns the hash tags.
    pub prefix: String,
    /// How long results and failures are kept, and abandoned leases after
    /// they end (default 24 h): the records' Redis TTL. At least 1 ms:
    /// [`crate::RedisStore::connect`] refuses less, since a record would
    /// vanish the instant it settled.
    pub retention: Duration,
    /// How often a waiter re-reads its record even without a wake-up: the
    /// bounded fallback for a lost message (default 5 s).
    pub wait_fallback: Duration,
    /// How often the pub/sub connection is probed with a PING (default
    /// 5 s). A connection that does not answer within `response_timeout`
    /// is half-open (a peer or middlebox dropped it silently): the store
    /// subscribes again on a new one and wakes every waiter.
    pub pubsub_ping: Duration,
    /// Longest wait for a connection (default 5 s).
    pub connect_timeout: Duration,
    /// Longest wait for a reply, after which the operation is `Unavailable`
    /// (default 5 s).
    pub response_timeout: Duration,
    /// A PEM file of the certificate authority that signed the server's
    /// certificate, for `rediss://` with a private CA. Default: the webpki
    /// roots (public CAs, as managed Redis services use).
    pub tls_root_cert: Option<PathBuf>,
}

impl RedisConfig {
    /// The defaults for one URL. A comma-separated list names cluster seeds,
    /// as does a `redis+cluster://` or `rediss+cluster://` URL (a cluster
    /// reached through one seed).
    pub fn new(url: impl AsRef<str>) -> Self {
        let mut cluster = false;
        // Split only at commas that begin another URL (`…,redis://…`), as
        // `redact_url` does: any other comma is part of the URL it is in,
        // perhaps of its password, which must then neither break the URL
        // nor be printed half-redacted.
        let mut pieces: Vec<String> = Vec::new();
        for piece in url.as_ref().split(',') {
            match pieces.last_mut() {
                Some(last) if !piece.contains("://") => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ => pieces.push(piece.to_owned()),
            }
        }
        let urls = pieces
            .iter()
            // A trailing comma ends a list; it is no part of the last URL.
            .map(|u| u.trim().trim_end_matches(',').trim_end())
            .filter(|u| !u.is_empty())
            .map(|u| {
                let plain = u
                    .strip_prefix("redis+cluster://")
                    .map(|rest| format!("redis://{rest}"))
                    .or_else(|| {
                        u.strip_prefix("rediss+cluster://")
                            .map(|rest| format!("rediss://{rest}"))
                    });
                cluster |= plain.is_some();
                plain.unwrap_or_else(|| u.to_owned())
            })
            .collect::<Vec<_>>();
        Self {
            cluster: cluster || urls.len() > 1,
            urls,
            prefix: "onceflight:".to_owned(),
            retention: DEFAULT_RETENTION,
            wait_fallback: Duration::from_secs(5),
            pubsub_ping: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            tls_root_cert: None,
        }
    }

    /// The defaults for a Redis Cluster reached through `seeds`.
    pub fn cluster<I, S>(seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut config = Self::new("");
        config.urls = seeds.into_iter().map(Into::into).collect();
        config.cluster = true;
        config
    }

    /// Sets the key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the retention.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the fallback re-read interval of waiters.
    pub fn with_wait_fallback(mut self, wait_fallback: Duration) -> Self {
        self.wait_fallback = wait_fallback;
        self
    }

    /// Sets how often the pub/sub connection is probed.
    pub fn with_pubsub_ping(mut self, every: Duration) -> Self {
        self.pubsub_ping = every;
        self
    }

    /// Trusts the certificate authority in the PEM file at `path` for
    /// `rediss://`.
    pub fn with_tls_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_root_cert = Some(path.into());
        self
    }

    /// Sets the reply timeout.
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("retention", &self.retention)
            .field("wait_fallback", &self.wait_fallback)
            .field("pubsub_ping", &self.pubsub_ping)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("tls_root_cert", &self.tls_root_cert)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_a_single_server() {
        let config = RedisConfig::new("redis://127.0.0.1:6379/");
        assert_eq!(config.urls, ["redis://127.0.0.1:6379/"]);
        assert!(!config.cluster, "one plain URL is not a cluster");
    }

    #[test]
    fn several_urls_or_a_cluster_scheme_name_a_cluster() {
        let config = RedisConfig::new("redis://a:7000, redis://b:7001");
        assert_eq!(config.urls, ["redis://a:7000", "redis://b:7001"]);
        assert!(config.cluster, "several URLs are cluster seeds");
        let config = RedisConfig::new("rediss+cluster://:pw@a:7000");
        assert_eq!(config.urls, ["rediss://:pw@a:7000"]);
        assert!(config.cluster, "the +cluster scheme names a cluster");
    }

    #[test]
    fn a_comma_in_a_password_is_part_of_the_url() {
        let config = RedisConfig::new("redis://:pa,ss@a:7000/,");
        assert_eq!(config.urls, ["redis://:pa,ss@a:7000/"]);
        assert!(!config.cluster, "one URL, whatever its password holds");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("pa,ss") && !shown.contains("ss@"),
            "{shown}"
        );
    }

    #[test]
    fn debug_hides_passwords() {
        let shown = format!(
            "{:?}",
            RedisConfig::new("rediss://app:s3cret@a:6380,redis://:pw2@b:7000")
        );
        assert!(
            !shown.contains("s3cret") && !shown.contains("pw2"),
            "{shown}"
        );
        assert!(shown.contains("app:***@a"), "{shown}");
    }
}

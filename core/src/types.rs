//! Validated values: a value of one of these types has passed the limits of
//! docs/protocol.md §2, so stores and the server never re-check them.

use std::borrow::Borrow;
use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// Largest fencing token: tokens must stay exact in a JavaScript number.
pub const MAX_TOKEN: u64 = (1 << 53) - 1;

/// Longest lease a claim or a renewal may ask for (24 hours).
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Default lease time to live (30 seconds).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// Default number of leases a record may be granted (takeovers and retries
/// included).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Largest `max_attempts` a claim may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 1000;

/// Default backoff after the first retryable failure of a record; it doubles
/// with each further retryable failure.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(1);

/// Upper bound of any single backoff, so that doubling stays meaningful for
/// records with many attempts.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60 * 60);

/// Longest failure message kept by a store, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidInput {
        field,
        reason: reason.into(),
    }
}

/// Checks a free-form text value: a byte length within `min..=max` and no
/// Unicode control character (which would corrupt logs and protocols).
fn check_text(field: &'static str, value: &str, min: usize, max: usize) -> Result<()> {
    if value.len() < min {
        return Err(invalid(field, format!("must be at least {min} byte(s)")));
    }
    if value.len() > max {
        return Err(invalid(
            field,
            format!("must be at most {max} bytes, got {}", value.len()),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(invalid(
            field,
            format!(
                "must not contain control characters (found U+{:04X})",
                c as u32
            ),
        ));
    }
    Ok(())
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal, $min:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` against the limits of docs/protocol.md §2.
            pub fn parse(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                Self::check(&value)?;
                Ok(Self(value))
            }

            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The value as an owned `String`.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::parse(s)
            }
        }

        impl $name {
            const FIELD: &'static str = $field;
            const MIN: usize = $min;
            const MAX: usize = $max;
        }
    };
}

text_newtype!(
    /// A request's identity, e.g. `image|9f86d0…`: UTF-8, 1–512 bytes, no
    /// control characters.
    RequestKey,
    "key",
    1,
    512
);

text_newtype!(
    /// Optional hash of a request's full parameters (1–128 bytes, no control
    /// characters). A claim whose fingerprint differs from the record's is
    /// refused.
    Fingerprint,
    "fingerprint",
    1,
    128
);

text_newtype!(
    /// Free-form identity of the worker holding a lease (1–128 bytes, no
    /// control characters), shown to operators and to waiting callers.
    Owner,
    "owner",
    1,
    128
);

text_newtype!(
    /// The job type, e.g. `image`: 1–64 characters of `[a-z0-9_.-]`.
    Kind,
    "kind",
    1,
    64
);

impl RequestKey {
    fn check(value: &str) -> Result<()> {
        check_text(Self::FIELD, value, Self::MIN, Self::MAX)
    }

    /// The key under which a multi-tenant front end (the server) stores
    /// `key` for `namespace`: `namespace/key`. The namespace must be 1–64
    /// characters of `[a-z0-9_.-]`, so no two namespaces can share a stored
    /// key; the result may exceed 512 bytes by the namespace's length, which
    /// every store accepts.
    pub fn namespaced(namespace: &str, key: &RequestKey) -> Result<RequestKey> {
        if namespace.is_empty()
            || namespace.len() > 64
            || !namespace
                .chars()
                .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '-'))
        {
            return Err(invalid(
                "namespace",
                "must be 1–64 characters of [a-z0-9_.-]",
            ));
        }
        Ok(RequestKey(format!("{namespace}/{}", key.0)))
    }

    /// The user's key of a key built by [`RequestKey::namespaced`].
    pub fn strip_namespace(&self, namespace: &str) -> Option<&str> {
        self.0.strip_prefix(namespace)?.strip_prefix('/')
    }

    /// A key a store read back from its own storage (a listing): any key
    /// [`RequestKey::parse`] takes, or one [`RequestKey::namespaced`] built,
    /// which may be longer than a key parses.
    pub fn parse_stored(text: &str) -> Result<Self> {
        Self::parse(text).or_else(|refused| {
            let Some((namespace, key)) = text.split_once('/') else {
                return Err(refused);
            };
            Self::namespaced(namespace, &Self::parse(key)?).map_err(|_| refused)
        })
    }
}

impl Fingerprint {
    fn check(value: &str) -> Result<()> {
        check_text(Self::FIELD, value, Self::MIN, Self::MAX)
    }
}

impl Owner {
    fn check(value: &str) -> Result<()> {
        check_text(Self::FIELD, value, Self::MIN, Self::MAX)
    }
}

impl Kind {
    fn check(value: &str) -> Result<()> {
        if value.len() < Self::MIN || value.len() > Self::MAX {
            return Err(invalid(
                Self::FIELD,
                format!("must be {}–{} characters", Self::MIN, Self::MAX),
            ));
        }
        match value
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '-'))
        {
            Some(c) => Err(invalid(
                Self::FIELD,
                format!("may only contain [a-z0-9_.-], found {c:?}"),
            )),
            None => Ok(()),
        }
    }
}

/// A fencing token: strictly greater than every token granted before for the
/// same key, and at most [`MAX_TOKEN`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Token(u64);

impl Token {
    /// Validates a token received from outside (0 ..= 2^53−1).
    pub fn new(value: u64) -> Result<Self> {
        if value > MAX_TOKEN {
            return Err(invalid("token", format!("must be at most {MAX_TOKEN}")));
        }
        Ok(Self(value))
    }

    /// The token as an integer.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Checks a lease duration asked of a claim or a renewal (1 ms ..= 24 h).
pub fn check_lease_ttl(ttl: Duration) -> Result<Duration> {
    if ttl < Duration::from_millis(1) || ttl > MAX_LEASE_TTL {
        return Err(invalid(
            "lease_ttl",
            format!("must be between 1 ms and {} ms", MAX_LEASE_TTL.as_millis()),
        ));
    }
    Ok(ttl)
}

/// Why a job failed, as stored on a `failed` record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct JobError {
    message: String,
    retryable: bool,
}

impl JobError {
    /// A failure that a later attempt may fix (a timeout, a rate limit). The
    /// message is cut to [`MAX_MESSAGE_BYTES`] on a character boundary.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(message, true)
    }

    /// A failure that no retry will fix (bad input, a refused prompt).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(message, false)
    }

    /// A failure with an explicit retryability. Long messages are cut to
    /// [`MAX_MESSAGE_BYTES`], and NUL characters (which PostgreSQL's `text`
    /// cannot hold) become U+FFFD, so that a job's error can always be
    /// recorded, on every store alike.
    pub fn new(message: impl Into<String>, retryable: bool) -> Self {
        let mut message = message.into();
        if message.contains('\0') {
            message = message.replace('\0', "\u{fffd}");
        }
        if message.len() > MAX_MESSAGE_BYTES {
            let mut end = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self { message, retryable }
    }

    /// Like [`JobError::new`] but refuses instead of cutting an over-long
    /// message or replacing a NUL: for input from outside, which must get a
    /// clear error. Other control characters are kept: line breaks and tabs
    /// belong in stack traces.
    pub fn parse(message: impl Into<String>, retryable: bool) -> Result<Self> {
        let message = message.into();
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(invalid(
                "message",
                format!("must be at most {MAX_MESSAGE_BYTES} bytes"),
            ));
        }
        if message.contains('\0') {
            return Err(invalid(
                "message",
                "must not contain NUL (U+0000), which not every store can hold",
            ));
        }
        Ok(Self { message, retryable })
    }

    /// The failure's message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JobError {}

/// How a claim asks for a lease, and the retry policy of a record it creates.
///
/// `max_attempts` and the retry backoff are fixed by the claim that creates
/// the record; later claims' values are ignored for that record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ClaimOptions {
    kind: Kind,
    fingerprint: Option<Fingerprint>,
    owner: Option<Owner>,
    lease_ttl: Duration,
    max_attempts: u32,
    retry_backoff: Duration,
}

impl ClaimOptions {
    /// Options for a job of `kind` with the defaults: 30 s lease, 3 attempts,
    /// 1 s backoff doubling.
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            fingerprint: None,
            owner: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
        }
    }

    /// Sets the fingerprint that every claim of the key must match.
    pub fn with_fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }

    /// Sets the owner shown to other callers while the lease is held.
    pub fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Sets the lease time to live (1 ms ..= 24 h).
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Result<Self> {
        self.lease_ttl = check_lease_ttl(ttl)?;
        Ok(self)
    }

    /// Sets how many leases a new record may be granted (1 ..= 1000).
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Result<Self> {
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return Err(invalid(
                "max_attempts",
                format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
            ));
        }
        self.max_attempts = max_attempts;
        Ok(self)
    }

    /// Sets the backoff after a new record's first retryable failure
    /// (1 ms ..= 1 h); it doubles with each further one, up to
    /// [`MAX_RETRY_BACKOFF`].
    pub fn with_retry_backoff(mut self, backoff: Duration) -> Result<Self> {
        if backoff < Duration::from_millis(1) || backoff > MAX_RETRY_BACKOFF {
            return Err(invalid(
                "retry_backoff",
                format!(
                    "must be between 1 ms and {} ms",
                    MAX_RETRY_BACKOFF.as_millis()
                ),
            ));
        }
        self.retry_backoff = backoff;
        Ok(self)
    }

    /// The job type.
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// The fingerprint, if any.
    pub fn fingerprint(&self) -> Option<&Fingerprint> {
        self.fingerprint.as_ref()
    }

    /// The owner, if any.
    pub fn owner(&self) -> Option<&Owner> {
        self.owner.as_ref()
    }

    /// The lease time to live.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// The attempt limit for a record this claim creates.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The first backoff for a record this claim creates.
    pub fn retry_backoff(&self) -> Duration {
        self.retry_backoff
    }
}

/// The backoff before a retry after the `failures`-th retryable failure of a
/// record (1-based): `base × 2^(failures−1)`, capped at [`MAX_RETRY_BACKOFF`].
/// Every store uses this one definition.
pub fn backoff_after(base: Duration, failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.checked_mul(factor)
        .map_or(MAX_RETRY_BACKOFF, |d| d.min(MAX_RETRY_BACKOFF))
}

/// The message a claim stores when it finds an expired lease and no attempt
/// left (docs/protocol.md §3). Every store writes exactly this text.
pub fn lease_expired_message(attempt: u32, max_attempts: u32) -> String {
    format!("lease expired on attempt {attempt} of {max_attempts}")
}

/// Default retention of a record: how long a result or a failure is kept
/// after it was stored, and an abandoned lease after it ended (24 hours).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_keys_parse_with_or_without_a_namespace() {
        let long = "k".repeat(512);
        let namespaced = RequestKey::namespaced("ops", &RequestKey::parse(long.clone()).unwrap())
            .expect("a namespaced key");
        assert!(
            RequestKey::parse(namespaced.as_str()).is_err(),
            "too long to parse"
        );
        assert_eq!(
            RequestKey::parse_stored(namespaced.as_str()).expect("stored"),
            namespaced
        );
        assert_eq!(
            RequestKey::parse_stored("image|a").unwrap().as_str(),
            "image|a"
        );
        for bad in ["", "a\nb", &format!("NS/{long}"), &format!("ops/{long}k")] {
            assert!(RequestKey::parse_stored(bad).is_err(), "{bad:?} taken");
        }
    }

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let base = Duration::from_secs(1);
        let got: Vec<_> = (1..=4).map(|n| backoff_after(base, n)).collect();
        assert_eq!(
            got,
            [1, 2, 4, 8].map(Duration::from_secs),
            "1 s, then doubling"
        );
        assert_eq!(backoff_after(base, 0), base, "no failure yet: the base");
        assert_eq!(
            backoff_after(base, 1000),
            MAX_RETRY_BACKOFF,
            "capped, never overflowing"
        );
    }

    #[test]
    fn job_error_cuts_long_messages_on_a_char_boundary() {
        let message = "é".repeat(MAX_MESSAGE_BYTES); // 2 bytes each
        let cut = JobError::retryable(message);
        assert!(cut.message().len() <= MAX_MESSAGE_BYTES, "within the limit");
        assert!(
            cut.message().chars().all(|c| c == 'é'),
            "no broken character"
        );
    }

    #[test]
    fn job_error_never_holds_a_nul() {
        let replaced = JobError::permanent("a\0b");
        assert_eq!(replaced.message(), "a\u{fffd}b", "NUL becomes U+FFFD");
        assert!(
            matches!(
                JobError::parse("a\0b", true),
                Err(Error::InvalidInput {
                    field: "message",
                    ..
                })
            ),
            "input from outside with NUL is refused"
        );
        let kept = JobError::parse("line 1\n\tline 2\r", true).expect("line breaks are kept");
        assert_eq!(kept.message(), "line 1\n\tline 2\r", "other controls kept");
    }

    #[test]
    fn claim_options_defaults_match_the_protocol() {
        let o = ClaimOptions::new(Kind::parse("image").unwrap());
        assert_eq!(o.lease_ttl(), Duration::from_secs(30), "lease ttl");
        assert_eq!(o.max_attempts(), 3, "max attempts");
        assert_eq!(o.retry_backoff(), Duration::from_secs(1), "backoff");
        assert!(o.fingerprint().is_none() && o.owner().is_none());
    }

    /// Every value outside the limits of keys, kinds, fingerprints, owners,
    /// tokens, leases, attempts, backoffs and messages is refused with
    /// `InvalidInput` naming the field; values at the limits are accepted.
    #[test]
    fn values_are_validated() {
        fn refused<V: std::fmt::Debug>(result: Result<V>, field: &str, what: &str) {
            match result {
                Err(Error::InvalidInput { field: f, .. }) if f == field => {}
                other => panic!("{what}: expected InvalidInput({field}), got {other:?}"),
            }
        }
        for bad in [
            String::new(),
            "k".repeat(513),
            "a\nb".into(),
            "tab\there".into(),
            "nul\0".into(),
            "del\u{7f}".into(),
            "c1\u{85}".into(),
        ] {
            refused(
                RequestKey::parse(bad.clone()),
                "key",
                &format!("key {bad:?}"),
            );
        }
        for good in [
            "k".repeat(512),
            "image|ab".into(),
            "a/b c%7C é 画像".into(),
            "é".repeat(256),
        ] {
            assert!(RequestKey::parse(good.clone()).is_ok(), "key {good:?}");
        }
        for bad in ["", "Image", "im age", "im|g", "ü", &"k".repeat(65)] {
            refused(Kind::parse(bad), "kind", &format!("kind {bad:?}"));
        }
        for good in ["image", "image.v2_x-1", &"k".repeat(64)] {
            assert!(Kind::parse(good).is_ok(), "kind {good:?}");
        }
        for bad in [String::new(), "f".repeat(129), "x\ny".into()] {
            refused(
                Fingerprint::parse(bad.clone()),
                "fingerprint",
                &format!("fingerprint {bad:?}"),
            );
        }
        assert!(
            Fingerprint::parse("f".repeat(128)).is_ok(),
            "fingerprint of 128 bytes"
        );
        for bad in [String::new(), "o".repeat(129), "x\ry".into()] {
            refused(
                Owner::parse(bad.clone()),
                "owner",
                &format!("owner {bad:?}"),
            );
        }
        assert!(Owner::parse("o".repeat(128)).is_ok(), "owner of 128 bytes");
        refused(Token::new(MAX_TOKEN + 1), "token", "token 2^53");
        assert_eq!(Token::new(MAX_TOKEN).map(Token::get).ok(), Some(MAX_TOKEN));
        let o = ClaimOptions::new(Kind::parse("image").unwrap());
        for ttl in [Duration::ZERO, MAX_LEASE_TTL + Duration::from_millis(1)] {
            refused(
                o.clone().with_lease_ttl(ttl),
                "lease_ttl",
                &format!("ttl {ttl:?}"),
            );
        }
        assert!(
            o.clone().with_lease_ttl(MAX_LEASE_TTL).is_ok(),
            "24 h lease"
        );
        assert!(
            o.clone().with_lease_ttl(Duration::from_millis(1)).is_ok(),
            "1 ms lease"
        );
        for n in [0, 1001] {
            refused(
                o.clone().with_max_attempts(n),
                "max_attempts",
                &format!("max_attempts {n}"),
            );
        }
        assert!(o.clone().with_max_attempts(1000).is_ok(), "1000 attempts");
        refused(
            o.clone().with_retry_backoff(Duration::ZERO),
            "retry_backoff",
            "zero backoff",
        );
        refused(
            JobError::parse("m".repeat(4097), true),
            "message",
            "a 4097-byte message",
        );
        assert_eq!(
            JobError::new("m".repeat(5000), true).message().len(),
            4096,
            "a job's long message is cut to 4096 bytes"
        );
    }
}

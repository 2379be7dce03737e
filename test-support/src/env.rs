//! What a test needs from its environment: the URL of a backend, or the
//! binaries of one it starts itself, and names no other test uses.
//!
//! A test whose backend is missing skips, saying so loudly — unless
//! `ONCEFLIGHT_REQUIRE_BACKENDS=1` (set by `cargo xtask test`), where a
//! missing backend is a failure.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The variable that turns a skip for a missing backend into a failure.
pub const REQUIRE_BACKENDS: &str = "ONCEFLIGHT_REQUIRE_BACKENDS";

/// Whether missing backends fail tests instead of skipping them.
pub fn backends_required() -> bool {
    std::env::var(REQUIRE_BACKENDS).is_ok_and(|value| value == "1")
}

/// Skips the test `what` names because `missing` is missing: says so on
/// stderr and returns `None`, or panics when backends are required.
///
/// # Panics
///
/// Under `ONCEFLIGHT_REQUIRE_BACKENDS=1`.
pub fn skip<T>(what: &str, missing: &str) -> Option<T> {
    assert!(
        !backends_required(),
        "{what}: {missing}, but {REQUIRE_BACKENDS}=1: this test needs a real backend (run `cargo \
         xtask test`)"
    );
    // Written to the stderr handle itself: the test harness captures
    // `eprintln!` and hides it for passing tests, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {what}: {missing}, so it ran nothing against a real backend. Run `cargo xtask \
         test` to run it."
    );
    None
}

/// The URL of a backend from the environment variable `var`
/// (`DATABASE_URL`, `REDIS_URL`, …), or `None` after [`skip`]ping.
///
/// # Panics
///
/// When it is unset and backends are required.
pub fn backend_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => skip("this test", &format!("{var} is not set")),
    }
}

/// Whether the backend of `var` is there, by [`backend_url`] (which skips
/// loudly, or panics when backends are required). Also the check the
/// conformance macro's `requires` takes:
/// `conformance_tests!(setup, requires || backend_available("DATABASE_URL"))`.
pub fn backend_available(var: &str) -> bool {
    backend_url(var).is_some()
}

/// A name no other call in any process on this machine returns, e.g. for a
/// fresh Postgres schema or a Redis key prefix: `prefix`, the process id, the
/// time and a counter, in `[a-z0-9_]` when `prefix` is.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::unique_name;

    #[test]
    fn unique_names_differ_and_keep_their_prefix() {
        let (a, b) = (unique_name("of_x"), unique_name("of_x"));
        assert_ne!(a, b, "two calls give two names");
        assert!(a.starts_with("of_x_"), "{a} keeps its prefix");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{a} is a plain identifier"
        );
    }
}

//! `cargo xtask test`: every test of every backend, with the servers they
//! need (docs/protocol.md §10): PostgreSQL, a single Redis server and a three-master
//! Redis Cluster, each either the caller's (from the environment) or a
//! throw-away one started for this run (see [`crate::backends`]). A run of
//! the whole workspace ends with [`crate::schemathesis`], which holds the
//! live server to its OpenAPI document.

use anyhow::Result;

use crate::backends::{Backends, Needs, REQUIRE_BACKENDS};
use crate::{browser, process, schemathesis, typescript};

/// Test threads per test binary unless `RUST_TEST_THREADS` is set.
const TEST_THREADS: &str = "8";

/// Runs `cargo test` with `DATABASE_URL`, `REDIS_URL` and
/// `REDIS_CLUSTER_URLS` (comma-separated seed URLs of a Redis Cluster)
/// pointing at working servers: the caller's when set, otherwise throw-away
/// ones that are stopped when this returns, whether the tests pass, fail or
/// never start. When the caller picked no package, the tests are followed by
/// the TypeScript client's tests (on the same servers), the dashboard's
/// browser tests and `cargo xtask schemathesis`.
pub(crate) fn run(extra_args: &[String]) -> Result<()> {
    let whole = whole_workspace(extra_args);
    run_tests(extra_args, whole)?;
    if whole {
        schemathesis::run()?;
    }
    Ok(())
}

fn run_tests(extra_args: &[String], with_typescript: bool) -> Result<()> {
    // Dropped at the end of this function (also on `?`), which stops
    // whatever was started.
    let backends = Backends::start(Needs::ALL)?;

    let mut cargo = process::cargo();
    cargo
        .arg("test")
        .args(test_args(extra_args))
        .env(REQUIRE_BACKENDS, "1")
        .envs(backends.env());
    // Most backend tests spend their time waiting on leases and timers, not
    // on the CPU: more test threads than cores finish sooner on this 2-core
    // machine. The caller's own setting wins.
    if std::env::var_os("RUST_TEST_THREADS").is_none() {
        cargo.env("RUST_TEST_THREADS", TEST_THREADS);
    }
    process::run(&mut cargo)?;
    if with_typescript {
        typescript::run(&backends)?;
        browser::run()?;
    }
    Ok(())
}

/// `cargo xtask typescript`: the TypeScript client's tests alone, with a
/// PostgreSQL of their own (or `DATABASE_URL`).
pub(crate) fn run_typescript() -> Result<()> {
    let backends = Backends::start(Needs {
        postgres: true,
        redis: false,
        cluster: false,
        pgbouncer: false,
        pg_tls: false,
    })?;
    typescript::run(&backends)
}

/// Arguments for cargo itself: those after `--` belong to the test binaries.
fn cargo_args(extra_args: &[String]) -> impl Iterator<Item = &str> {
    extra_args
        .iter()
        .take_while(|arg| *arg != "--")
        .map(String::as_str)
}

/// Whether the caller picked no package (or asked for the whole workspace
/// outright), so the run covers every package.
fn whole_workspace(extra_args: &[String]) -> bool {
    !cargo_args(extra_args)
        .any(|arg| arg == "--package" || arg.starts_with("--package=") || arg.starts_with("-p"))
}

/// The `cargo test` arguments: the whole workspace with all features, unless
/// the caller picks packages or features, in which case theirs win.
fn test_args(extra_args: &[String]) -> Vec<String> {
    let cargo_args = cargo_args(extra_args);
    let mut picks_packages = false;
    let mut picks_features = false;
    for arg in cargo_args {
        picks_packages |= arg == "--package"
            || arg.starts_with("--package=")
            || arg.starts_with("-p")
            || arg == "--workspace"
            || arg == "--all";
        picks_features |= arg == "--features"
            || arg.starts_with("--features=")
            || arg.starts_with("-F")
            || arg == "--no-default-features"
            || arg == "--all-features";
    }

    let mut args = Vec::new();
    if !picks_packages {
        args.push("--workspace".to_owned());
    }
    if !picks_features {
        args.push("--all-features".to_owned());
    }
    args.extend(extra_args.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::{test_args, whole_workspace};

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn bare_run_tests_the_whole_workspace_with_all_features() {
        assert_eq!(
            test_args(&[]),
            args(&["--workspace", "--all-features"]),
            "default cargo test arguments"
        );
    }

    #[test]
    fn package_selection_drops_workspace() {
        for picked in [
            &["-p", "xtask"][..],
            &["-pxtask"],
            &["--package", "xtask"],
            &["--package=xtask"],
        ] {
            let mut expected = args(&["--all-features"]);
            expected.extend(args(picked));
            assert_eq!(test_args(&args(picked)), expected, "for {picked:?}");
        }
    }

    #[test]
    fn feature_selection_drops_all_features() {
        assert_eq!(
            test_args(&args(&["-p", "x", "--no-default-features", "-F", "redis"])),
            args(&["-p", "x", "--no-default-features", "-F", "redis"]),
            "caller's features win"
        );
    }

    #[test]
    fn only_a_whole_workspace_run_ends_with_schemathesis() {
        for whole in [
            &[][..],
            &["--workspace"],
            &["--all-features"],
            &["--", "-p", "--package"],
        ] {
            assert!(whole_workspace(&args(whole)), "{whole:?} tests everything");
        }
        for picked in [
            &["-p", "xtask"][..],
            &["-pxtask"],
            &["--package", "xtask"],
            &["--package=xtask"],
        ] {
            assert!(
                !whole_workspace(&args(picked)),
                "{picked:?} picks a package"
            );
        }
    }

    #[test]
    fn arguments_for_test_binaries_are_not_cargo_flags() {
        assert_eq!(
            test_args(&args(&["--", "-p", "--features"])),
            args(&["--workspace", "--all-features", "--", "-p", "--features"]),
            "everything after -- goes to the test binaries"
        );
    }
}

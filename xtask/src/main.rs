//! Project automation for onceflight, run as `cargo xtask <command>` (the
//! cargo-xtask pattern: plain Rust instead of shell scripts, so it works the
//! same on every machine that can build the project).
//!
//! The commands are described in [`USAGE`]. `test` is the one that matters
//! most: it provides the PostgreSQL server, Redis server and Redis Cluster
//! that the backend tests need (docs/protocol.md §10), so that `cargo xtask test` is
//! the single command that runs every test of every backend. `bench` runs the
//! criterion benchmarks of docs/protocol.md §9 against the same kind of servers and
//! turns what they record into a report; it is not part of `ci`, because
//! numbers from a shared machine are no gate (`.ci/run` runs it in quick
//! mode, which only proves the benchmarks still run and are correct).

mod backends;
mod bench;
mod browser;
mod lint;
mod process;
mod report;
mod schemathesis;
mod test;
mod typescript;

use std::process::ExitCode;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  test [cargo test args]  run every test of every backend. Uses DATABASE_URL,
                          PGBOUNCER_URL (a transaction-mode pooler in front
                          of DATABASE_URL's server), PG_TLS_URL (with
                          PG_TLS_CA_FILE and PG_TLS_OTHER_CA_FILE), REDIS_URL
                          and REDIS_CLUSTER_URLS (comma-separated seed URLs)
                          when set; otherwise starts a throw-away PostgreSQL
                          cluster, PgBouncer in transaction mode in front of
                          it, a PostgreSQL with TLS from a throw-away CA, a
                          Redis server and a 3-master Redis Cluster on free
                          loopback ports and stops them afterwards (Debian
                          packages: postgresql, pgbouncer, openssl,
                          redis-server). Extra arguments go to
                          `cargo test` (with `-p`/`--package`, only those
                          packages are tested instead of the whole workspace).
                          A whole-workspace run then tests the TypeScript
                          client (`typescript`) and the dashboard (`browser`),
                          and ends with `schemathesis`.
  typescript              the TypeScript client's tests (clients/typescript):
                          `npm ci` from the lockfile, then `npm test` against
                          the onceflight binary on the memory store and on
                          PostgreSQL (DATABASE_URL, or a throw-away one).
                          Needs Node.js >= 18 and npm.
  browser                 the dashboard's tests (server/tests/browser): `npm ci`
                          from the lockfile, then /ui driven in headless
                          Chromium (/usr/bin/chromium, or CHROMIUM; Debian:
                          chromium) against the onceflight binary on the
                          memory store. Screenshots go to ONCEFLIGHT_ARTIFACTS
                          or <repo>/target/ui-artifacts. Needs Node.js >= 20.
  schemathesis            start the server on the memory store, without and
                          with bearer tokens, and run schemathesis (pinned,
                          from PyPI, installed into
                          <target dir>/schemathesis-venv) against its
                          /openapi.json: no 5xx, and every answer as the
                          document says. Needs python3 with venv (Debian:
                          python3-venv).
  lint                    `cargo fmt --check`, then clippy with -D warnings for
                          every feature set CI checks.
  ci                      lint, then test: what to run before landing a commit.
  bench [--quick] [--no-durable] [-- args]
                          build the server binary, then run the criterion
                          benchmarks (docs/protocol.md §9) against PostgreSQL (directly
                          and through PgBouncer in transaction mode) and Redis
                          (DATABASE_URL / PGBOUNCER_URL / REDIS_URL when set,
                          otherwise throw-away servers), PostgreSQL also on a
                          second server with fsync on (DATABASE_URL_DURABLE, or
                          a throw-away one; --no-durable skips it), and write report.md
                          and results.json to
                          <target dir>/onceflight-bench/ (criterion's own
                          plots are under <target dir>/criterion/). --quick takes short,
                          rough measurements; arguments after `--` go to the
                          bench binaries (e.g. a criterion filter). Fails when
                          a correctness check fails, never on a missed speed
                          target.
";

/// Exit code for a command line that xtask does not understand.
const USAGE_EXIT: u8 = 2;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next();
    let rest: Vec<String> = args.collect();

    let result = match command.as_deref() {
        Some("test") => test::run(&rest),
        Some("lint") => no_extra_args("lint", &rest).and_then(|()| lint::run()),
        Some("ci") => no_extra_args("ci", &rest).and_then(|()| ci()),
        Some("bench") => bench::run(&rest),
        Some("schemathesis") => {
            no_extra_args("schemathesis", &rest).and_then(|()| schemathesis::run())
        }
        Some("browser") => no_extra_args("browser", &rest).and_then(|()| browser::run()),
        Some("typescript") => {
            no_extra_args("typescript", &rest).and_then(|()| test::run_typescript())
        }
        Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("xtask: unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(USAGE_EXIT);
        }
        None => {
            eprint!("{USAGE}");
            return ExitCode::from(USAGE_EXIT);
        }
    };

    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            // A failing child (tests, clippy) passes its own exit code on, so
            // callers can tell "tests failed" from "xtask could not run".
            match error.downcast_ref::<process::Failed>() {
                Some(failed) => ExitCode::from(failed.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// `cargo xtask ci`: everything that must pass before a commit lands.
fn ci() -> Result<()> {
    lint::run()?;
    test::run(&[])
}

fn no_extra_args(command: &str, rest: &[String]) -> Result<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        bail!("`cargo xtask {command}` takes no arguments, got {rest:?}")
    }
}

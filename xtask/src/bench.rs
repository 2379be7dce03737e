//! `cargo xtask bench`: the criterion benchmarks of docs/protocol.md §9 against real
//! PostgreSQL and Redis servers, then a report of every figure beside its
//! baseline (see [`crate::report`]).
//!
//! The benches only measure and append records to `figures.jsonl`; this
//! command provides what they need (servers, the server binary, an output
//! directory) through environment variables and judges the records after.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::backends::{Backends, DURABLE_VAR, Needs, REQUIRE_BACKENDS};
use crate::process;
use crate::report::{self, FIGURES_FILE, Meta};

/// The benchmark package.
const BENCH_PACKAGE: &str = "onceflight-benches";
/// The server binary the HTTP benches start, built with every store compiled
/// in (and no client, which the server binary does not use).
const SERVER_BUILD: &[&str] = &[
    "build",
    "--release",
    "-p",
    "onceflight-server",
    "--no-default-features",
    "--features",
    "memory,postgres,redis",
    "--bin",
    "onceflight",
];
/// Absolute path of that binary, for the benches.
const BIN_VAR: &str = "ONCEFLIGHT_BIN";
/// Absolute directory the benches append `figures.jsonl` to.
const OUT_VAR: &str = "ONCEFLIGHT_BENCH_OUT";
/// Set to `1` for short measurements that only prove the benches still run.
const QUICK_VAR: &str = "ONCEFLIGHT_BENCH_QUICK";

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    quick: bool,
    /// Whether Postgres is also measured on a server with production
    /// durability (`fsync` and `synchronous_commit` on); `--no-durable`
    /// leaves it out.
    durable: bool,
    /// Arguments after `--`, for the bench binaries (criterion's filter and
    /// flags).
    bench_args: Vec<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut options = Self {
            quick: false,
            durable: true,
            bench_args: Vec::new(),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--no-durable" => options.durable = false,
                "--" => {
                    options.bench_args = args.cloned().collect();
                    break;
                }
                other => bail!(
                    "`cargo xtask bench` takes `--quick`, `--no-durable` and, after `--`, \
                     arguments for the bench binaries (e.g. `cargo xtask bench -- herd`), not \
                     `{other}`"
                ),
            }
        }
        Ok(options)
    }
}

/// Builds the server, runs the benches against PostgreSQL and Redis (the
/// caller's or throw-away ones) and writes the report. Fails when the benches
/// fail, report nothing, or a correctness check fails; never on a missed
/// speed target.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    let target = target_dir(&process::repo_root());
    let out_dir = target.join("onceflight-bench");

    // Compile everything before starting servers, so that a build error does
    // not wait on an `initdb` and servers do not idle through a compile.
    let server = build_server(&target)?;
    process::run(process::cargo().args(["bench", "-p", BENCH_PACKAGE, "--no-run"]))?;

    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("could not create {}", out_dir.display()))?;
    // The benches append, so records of an earlier run must go first.
    let figures = out_dir.join(FIGURES_FILE);
    match std::fs::remove_file(&figures) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("could not remove {}", figures.display()));
        }
    }

    let bench_result = {
        // Stopped at the end of this block, before the report is written.
        let mut backends = Backends::start(Needs {
            postgres: true,
            redis: true,
            cluster: false,
            pgbouncer: true,
            pg_tls: false,
        })?;
        if options.durable {
            backends.add_durable_postgres()?;
        }
        let mut cargo = process::cargo();
        cargo.args(["bench", "-p", BENCH_PACKAGE]);
        if !options.bench_args.is_empty() {
            cargo.arg("--").args(&options.bench_args);
        }
        cargo
            .envs(backends.env())
            .env(REQUIRE_BACKENDS, "1")
            .env(BIN_VAR, &server)
            .env(OUT_VAR, &out_dir);
        // Removed rather than left alone when not asked for, so that the
        // report's "full" is true even if the caller's shell exports it.
        if options.quick {
            cargo.env(QUICK_VAR, "1");
        } else {
            cargo.env_remove(QUICK_VAR);
        }
        process::run(&mut cargo)
    };

    let meta = meta(&options);
    if let Err(error) = bench_result {
        // What the benches recorded before failing can still explain the
        // failure; a report of it is a bonus, not a second error.
        if let Ok(written) = report::write(&out_dir, &meta) {
            eprintln!(
                "xtask: wrote a partial report of the figures recorded before the failure: {}",
                written.report.display()
            );
            // A bench stops at a failed check, which is then the likely cause.
            if let Err(failed) = written.records.ensure_checks_passed() {
                eprintln!("xtask: {failed:#}");
            }
        }
        return Err(error);
    }

    let written = report::write(&out_dir, &meta)?;
    let summary = written.records.summary();
    eprintln!("xtask: report: {}", written.report.display());
    eprintln!("xtask: {}", summary.line());
    for figure in &written.records.figures {
        if figure.verdict() == Some(report::Verdict::Misses) {
            // A figure judged by a limit shows its own value, one judged by
            // a ratio target its ratio.
            let measured = match (figure.target, figure.limit) {
                (None, Some(_)) => format!("{} {}", report::number(figure.ours), figure.unit),
                _ => format!("{:.2}", figure.ratio().unwrap_or(f64::NAN)),
            };
            eprintln!(
                "xtask:   misses: {} ({measured}, target {})",
                figure.label(),
                figure
                    .target_text
                    .clone()
                    .or_else(|| figure.target.map(|t| format!("≥ {t}")))
                    .unwrap_or_default()
            );
        }
    }
    if options.quick && summary.misses > 0 {
        eprintln!("xtask: (quick mode: rough numbers, misses here say little)");
    }
    written.records.ensure_checks_passed()
}

/// Cargo's target directory as the child cargo sees it: `CARGO_TARGET_DIR`
/// (relative to the workspace root, where the child runs) or `target/`.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// Builds the release server binary and returns its absolute path.
fn build_server(target: &Path) -> Result<PathBuf> {
    build_binary(SERVER_BUILD, &target.join("release"))
}

/// Runs `cargo <build>` (a build of the `onceflight` binary) and returns the
/// binary's absolute path in `profile_dir`, failing clearly when it is not
/// there.
/// The debug `onceflight` binary with every store, built with the same
/// profile, packages and features as `cargo test --workspace
/// --all-features` (cargo unifies features over the packages it builds), so
/// that after the tests this is a no-op: what schemathesis and the
/// TypeScript client's tests run against.
pub(crate) fn build_debug_server() -> Result<PathBuf> {
    let target = target_dir(&process::repo_root());
    build_binary(
        &[
            "build",
            "--workspace",
            "--all-features",
            "--bin",
            "onceflight",
        ],
        &target.join("debug"),
    )
}

pub(crate) fn build_binary(build: &[&str], profile_dir: &Path) -> Result<PathBuf> {
    process::run(process::cargo().args(build))?;
    let binary = profile_dir.join(format!("onceflight{}", std::env::consts::EXE_SUFFIX));
    if !binary.is_file() {
        bail!(
            "built the server, but found no binary at {}: is the target directory set \
             somewhere other than CARGO_TARGET_DIR (e.g. `build.target-dir` in a cargo \
             config)?",
            binary.display()
        );
    }
    Ok(binary)
}

/// Facts about this run for the report; each one best effort, because a
/// report without the kernel version is still a report.
fn meta(options: &Options) -> Meta {
    let ask = |cmd: &mut Command| {
        process::output(cmd)
            .ok()
            .map(|out| out.trim().to_owned())
            .filter(|out| !out.is_empty())
            .unwrap_or_else(|| "unknown".to_owned())
    };
    Meta {
        generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        quick: options.quick,
        postgres_servers: postgres_servers(options.durable),
        cpus: std::thread::available_parallelism().ok().map(usize::from),
        kernel: ask(Command::new("uname").arg("-r")),
        git_rev: ask(Command::new("git").current_dir(process::repo_root()).args([
            "describe",
            "--always",
            "--dirty",
            "--abbrev=12",
        ])),
    }
}

/// What the report says of the Postgres servers, one line each: the store
/// name its figures carry and how durable the server is.
fn postgres_servers(durable: bool) -> Vec<String> {
    let described = |var: &str, started: &str| {
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            format!("the server of `{var}` (its own settings)")
        } else {
            started.to_owned()
        }
    };
    let mut servers = vec![format!(
        "`postgres`: {}",
        described(
            "DATABASE_URL",
            "a throw-away server with fsync, synchronous_commit and full_page_writes off \
             (a test server's settings: commits wait for no disk)"
        )
    )];
    if durable {
        servers.push(format!(
            "`postgres-durable`: {}",
            described(
                DURABLE_VAR,
                "a throw-away server with fsync, synchronous_commit and full_page_writes on \
                 (production settings: every commit waits for its WAL to reach the disk)"
            )
        ));
    }
    servers
}

#[cfg(test)]
mod tests {
    use super::Options;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn options_take_quick_and_arguments_after_the_separator() {
        assert_eq!(
            Options::parse(&[]).expect("no arguments"),
            Options {
                quick: false,
                durable: true,
                bench_args: Vec::new()
            },
            "defaults: both Postgres servers"
        );
        assert_eq!(
            Options::parse(&args(&["--quick", "--", "herd", "--quick"])).expect("valid"),
            Options {
                quick: true,
                durable: true,
                bench_args: args(&["herd", "--quick"])
            },
            "everything after -- goes to the bench binaries"
        );
        assert_eq!(
            Options::parse(&args(&["--no-durable", "--quick", "--", "--no-durable"]))
                .expect("valid"),
            Options {
                quick: true,
                durable: false,
                bench_args: args(&["--no-durable"])
            },
            "--no-durable before -- leaves the durable server out, after it goes to the benches"
        );
    }

    #[test]
    fn the_report_names_each_postgres_server_it_measured() {
        let both = super::postgres_servers(true);
        assert_eq!(both.len(), 2, "fast and durable: {both:?}");
        assert!(
            both[0].starts_with("`postgres`") && both[1].starts_with("`postgres-durable`"),
            "store names first: {both:?}"
        );
        assert_eq!(
            super::postgres_servers(false).len(),
            1,
            "without the durable server, one line"
        );
    }

    #[test]
    fn options_refuse_anything_else() {
        let error = Options::parse(&args(&["herd"])).expect_err("a bare filter");
        assert!(
            format!("{error:#}").contains("`herd`"),
            "names the argument: {error:#}"
        );
    }
}

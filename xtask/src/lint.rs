//! `cargo xtask lint`: formatting, then clippy with warnings as errors for
//! every feature set CI checks.

use anyhow::Result;

use crate::process;

/// One clippy run: which packages it checks, with which features.
struct ClippyRun {
    /// `None` checks the whole workspace.
    package: Option<&'static str>,
    /// Feature flags as cargo takes them, e.g. `&["--all-features"]`, or
    /// `&["--no-default-features", "--features", "postgres"]`.
    features: &'static [&'static str],
}

/// Every combination clippy must pass. Features can hide code from the
/// compiler, so each feature set that ships gets its own run (conventions:
/// "CI runs clippy with `-D warnings` for each feature set of `server`");
/// add `server`'s sets here as they appear.
const CLIPPY_RUNS: &[ClippyRun] = &[
    ClippyRun {
        package: None,
        features: &["--all-features"],
    },
    ClippyRun {
        package: None,
        features: &[],
    },
    // The server with no store compiled in but the client: the smallest
    // build, where every store-specific `cfg` is off.
    ClippyRun {
        package: Some("onceflight-server"),
        features: &["--no-default-features", "--features", "client"],
    },
    ClippyRun {
        package: Some("onceflight-server"),
        features: &["--no-default-features", "--features", "memory"],
    },
    // The server on Postgres alone (no memory store), with the client.
    ClippyRun {
        package: Some("onceflight-server"),
        features: &["--no-default-features", "--features", "postgres,client"],
    },
    // The server on Redis alone, with the client.
    ClippyRun {
        package: Some("onceflight-server"),
        features: &["--no-default-features", "--features", "redis,client"],
    },
    // The client crate as the wire model alone (no HTTP client, no schemas).
    ClippyRun {
        package: Some("onceflight-client"),
        features: &["--no-default-features"],
    },
    // The test support as xtask builds it: blocking, no tokio, no HTTP
    // client.
    ClippyRun {
        package: Some("onceflight-test-support"),
        features: &["--no-default-features"],
    },
];

pub(crate) fn run() -> Result<()> {
    process::run(process::cargo().args(["fmt", "--all", "--", "--check"]))?;
    for clippy in CLIPPY_RUNS {
        let mut cargo = process::cargo();
        cargo.arg("clippy");
        match clippy.package {
            Some(package) => cargo.args(["--package", package]),
            None => cargo.arg("--workspace"),
        };
        cargo
            .arg("--all-targets")
            .args(clippy.features)
            .args(["--", "-D", "warnings"]);
        process::run(&mut cargo)?;
    }
    client_stays_apart()
}

/// Crates the client must never pull in: a program that only wants
/// `HttpStore` or the wire model should not compile a server.
const SERVER_ONLY: &[&str] = &[
    "axum ",
    "clap ",
    "prometheus-client ",
    "tracing-subscriber ",
];

/// Checks that `onceflight-client`, with every feature, depends on no server
/// crate and on no server half of hyper.
fn client_stays_apart() -> Result<()> {
    let tree = process::output(process::cargo().args([
        "tree",
        "--package",
        "onceflight-client",
        "--all-features",
        "--edges",
        "normal,features",
        "--prefix",
        "none",
    ]))?;
    let found: Vec<&str> = tree
        .lines()
        .filter(|line| {
            SERVER_ONLY.iter().any(|name| line.starts_with(name))
                || line.starts_with("hyper feature \"server\"")
        })
        .collect();
    anyhow::ensure!(
        found.is_empty(),
        "onceflight-client must not depend on server crates, but its tree has: {}",
        found.join(", ")
    );
    println!("xtask: onceflight-client depends on no server crate");
    Ok(())
}

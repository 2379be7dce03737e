//! The TypeScript client's tests (`clients/typescript`): its dependencies
//! installed from the committed lockfile with `npm ci`, then `npm test`
//! against the real `onceflight` binary, on the memory store and on the
//! run's PostgreSQL.

use std::process::Command;

use anyhow::{Result, bail};

use crate::backends::{Backends, REQUIRE_BACKENDS};
use crate::bench::build_debug_server;
use crate::process;

/// Where the client lives, from the repository's root.
const PACKAGE: &str = "clients/typescript";

/// Builds the server ([`build_debug_server`]), then installs and tests the
/// client with the servers of `backends`. Without `node` or
/// `npm` it fails, naming what to install: under xtask every test runs.
pub(crate) fn run(backends: &Backends) -> Result<()> {
    let root = process::repo_root();
    let package = root.join(PACKAGE);
    for tool in ["node", "npm"] {
        if process::find_on_path(tool).is_none() {
            bail!(
                "`{tool}` is not on PATH: the TypeScript client ({PACKAGE}) is tested with \
                 Node.js 18 or later and npm. Install them (Debian: `apt-get install nodejs npm`, \
                 or Node.js 20 from nodejs.org)."
            );
        }
    }
    let server = build_debug_server()?;
    eprintln!("xtask: the TypeScript client: npm ci, then npm test");
    process::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&package),
    )?;
    process::run(
        Command::new("npm")
            .arg("test")
            .current_dir(&package)
            .env("ONCEFLIGHT_BIN", &server)
            .env(REQUIRE_BACKENDS, "1")
            .envs(backends.env()),
    )
}

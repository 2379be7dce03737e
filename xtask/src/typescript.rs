//! The TypeScript client's tests (`clients/typescript`): its dependencies
//! installed from the committed lockfile with `npm ci`, then `npm test`
//! against the real `onceflight` binary, on the memory store and on the
//! run's PostgreSQL.

use anyhow::Result;

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
    process::require_node(&format!("the TypeScript client's tests ({PACKAGE})"))?;
    let server = build_debug_server()?;
    eprintln!("xtask: the TypeScript client: npm ci, then npm test");
    let mut env = vec![
        ("ONCEFLIGHT_BIN".to_owned(), server.into_os_string()),
        (REQUIRE_BACKENDS.to_owned(), "1".into()),
    ];
    env.extend(backends.env().map(|(k, v)| (k.to_owned(), v.into())));
    process::npm_ci_then_test(&package, env)
}

//! The dashboard's browser tests (`server/tests/browser`): the page at `/ui`
//! driven in a real headless Chromium by `playwright-core` (installed with
//! `npm ci` from the committed lockfile; it never downloads a browser),
//! against the real `onceflight` binary on the memory store.
//!
//! The store does not matter to the page, which only reads the HTTP API, so
//! these tests need no backend; the backends' own tests cover the listing
//! and counting routes it reads.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::bench::{build_debug_server, target_dir};
use crate::process;

/// Where the tests live, from the repository's root.
const PACKAGE: &str = "server/tests/browser";

/// Debian's Chromium, used unless `CHROMIUM` names another.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// Builds the server ([`build_debug_server`]), then installs and runs the
/// browser tests. Without `node`, `npm` or Chromium it fails, naming what to
/// install: under xtask every test runs.
pub(crate) fn run() -> Result<()> {
    let root = process::repo_root();
    let package = root.join(PACKAGE);
    process::require_node(&format!("the dashboard's browser tests ({PACKAGE})"))?;
    let chromium = chromium()?;
    let server = build_debug_server()?;
    // Screenshots land in the target directory (never committed) unless the
    // caller chose a folder.
    let artifacts = std::env::var_os("ONCEFLIGHT_ARTIFACTS")
        .map_or_else(|| target_dir(&root).join("ui-artifacts"), PathBuf::from);
    eprintln!(
        "xtask: the dashboard in {}: npm ci, then npm test",
        chromium.display()
    );
    process::npm_ci_then_test(
        &package,
        [
            ("ONCEFLIGHT_BIN", server.as_os_str()),
            ("CHROMIUM", chromium.as_os_str()),
            ("ONCEFLIGHT_ARTIFACTS", artifacts.as_os_str()),
        ],
    )?;
    eprintln!(
        "xtask: the dashboard's screenshots are in {}",
        artifacts.display()
    );
    Ok(())
}

/// The Chromium to drive: `CHROMIUM` when set, else Debian's.
///
/// A browser is never downloaded: the tests drive the one the system's
/// package manager keeps up to date.
fn chromium() -> Result<PathBuf> {
    let (path, from_env) = match std::env::var_os("CHROMIUM") {
        Some(path) => (PathBuf::from(path), true),
        None => (PathBuf::from(DEFAULT_CHROMIUM), false),
    };
    if is_executable(&path) {
        return Ok(path);
    }
    if from_env {
        bail!(
            "CHROMIUM={} is not an executable file: point it at a Chromium or Chrome binary, \
             or unset it to use {DEFAULT_CHROMIUM}",
            path.display()
        );
    }
    bail!(
        "no Chromium at {DEFAULT_CHROMIUM}: the dashboard's browser tests ({PACKAGE}) drive a \
         real headless Chromium. Install it (Debian: `apt-get install chromium`), or set \
         CHROMIUM to another Chromium or Chrome binary."
    )
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

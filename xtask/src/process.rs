//! Small helpers around child processes, so the commands read as a list of
//! steps. The ones the throw-away servers need too live in
//! `onceflight_test_support::process` and are re-exported here.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
pub(crate) use onceflight_core::backend::redact_url;
pub(crate) use onceflight_test_support::process::{describe, find_on_path, output};

/// A child process that ran but did not succeed. Kept as a type so `main`
/// can pass the child's exit code on.
#[derive(Debug)]
pub(crate) struct Failed {
    what: String,
    code: Option<i32>,
}

impl Failed {
    /// The exit code xtask should end with: the child's own when it is a
    /// small positive number, otherwise 1.
    pub(crate) fn exit_code(&self) -> u8 {
        self.code
            .and_then(|code| u8::try_from(code).ok())
            .filter(|&code| code != 0)
            .unwrap_or(1)
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "`{}` failed with exit code {code}", self.what),
            None => write!(f, "`{}` was killed by a signal", self.what),
        }
    }
}

impl std::error::Error for Failed {}

/// Runs `cmd` with inherited stdio; a non-zero exit becomes [`Failed`].
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let what = describe(cmd);
    eprintln!("xtask: running `{what}`");
    let status = cmd.status().with_context(|| match cmd.get_current_dir() {
        Some(dir) => format!("could not start `{what}` in {}", dir.display()),
        None => format!("could not start `{what}`"),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(Failed {
            what,
            code: status.code(),
        }
        .into())
    }
}

/// A `cargo` command run from the repository root, using the same cargo that
/// runs xtask (cargo sets `CARGO` for the programs it runs).
pub(crate) fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root());
    cmd
}

/// The workspace root: xtask lives one level below it.
pub(crate) fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Fails, naming what to install, unless `node` and `npm` are on PATH; `what`
/// says which tests need them.
pub(crate) fn require_node(what: &str) -> Result<()> {
    for tool in ["node", "npm"] {
        if find_on_path(tool).is_none() {
            anyhow::bail!(
                "`{tool}` is not on PATH: {what} need Node.js 18 or later and npm. Install them \
                 (Debian: `apt-get install nodejs npm`, or Node.js 20 from nodejs.org)."
            );
        }
    }
    Ok(())
}

/// `npm ci` (from the committed lockfile) in `package`, then `npm test`
/// there with `env` added to the environment.
pub(crate) fn npm_ci_then_test<K, V>(
    package: &Path,
    env: impl IntoIterator<Item = (K, V)>,
) -> Result<()>
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(package))?;
    run(Command::new("npm")
        .arg("test")
        .current_dir(package)
        .envs(env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_exit_code_passes_small_codes_on() {
        let failed = |code| Failed {
            what: "cargo test".into(),
            code,
        };
        assert_eq!(failed(Some(101)).exit_code(), 101, "cargo test's own code");
        assert_eq!(failed(None).exit_code(), 1, "killed by a signal");
        assert_eq!(failed(Some(-1)).exit_code(), 1, "out of u8 range");
        assert_eq!(failed(Some(0)).exit_code(), 1, "never report success");
    }
}

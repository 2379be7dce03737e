//! Small helpers around child processes, paths, ports and temporary
//! directories, so the commands read as a list of steps.

use std::ffi::OsStr;
use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

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

/// Runs `cmd` quietly and returns its stdout; on failure the error carries
/// everything it printed, because that is what explains the failure.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{what}`"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        bail!(
            "`{what}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
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

/// Looks `name` up on `PATH`, like `command -v`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A loopback port that was free a moment ago. Another process can take it
/// before the server binds it, so callers retry with a new one when a start
/// fails.
pub(crate) fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("could not bind a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// Whether xtask runs as root, which PostgreSQL refuses to run as.
pub(crate) fn running_as_root() -> Result<bool> {
    // `id` instead of libc: the workspace forbids unsafe code, and this is
    // asked once per run.
    let uid = output(Command::new("id").arg("-u")).context("could not ask `id -u` who we are")?;
    Ok(uid.trim() == "0")
}

/// A directory under the system temp directory, removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(label: &str) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "onceflight-xtask-{label}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // `create_dir`, not `create_dir_all`: failing on an existing path
        // means we never adopt (and later delete) someone else's directory.
        std::fs::create_dir(&path)
            .with_context(|| format!("could not create temp directory {}", path.display()))?;
        Ok(Self { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            eprintln!(
                "xtask: warning: could not remove {}: {error}",
                self.path.display()
            );
        }
    }
}

/// The last `max_lines` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, max_lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(max_lines);
            format!("--- {} ---\n{}", path.display(), lines[start..].join("\n"))
        }
        Err(error) => format!("(could not read {}: {error})", path.display()),
    }
}

/// `url` with any password replaced by `***`, so it can be printed
/// (conventions: secrets are never printed).
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    // A password can also ride in the query string (`?password=…`).
    let tail = match tail.split_once('?') {
        Some((path, query)) if query.to_ascii_lowercase().contains("password") => {
            format!("{path}?***")
        }
        _ => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_passwords_only() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/test",
                "postgres://postgres@127.0.0.1:5432/test",
            ),
            (
                "postgres://app:s3cr%40t@db:5432/app",
                "postgres://app:***@db:5432/app",
            ),
            (
                "redis://:hunter2@127.0.0.1:6379/",
                "redis://:***@127.0.0.1:6379/",
            ),
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            (
                "postgres://db/app?user=a&password=b",
                "postgres://db/app?***",
            ),
            ("not a url", "not a url"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_url(input), expected, "redacting {input}");
        }
    }

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

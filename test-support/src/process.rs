//! Small helpers around child processes, paths, ports and temporary
//! directories, shared by the server launchers of this crate.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// Runs `cmd` quietly and returns its stdout; on failure the error carries
/// everything it printed, because that is what explains the failure.
pub fn output(cmd: &mut Command) -> Result<String> {
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
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Looks `name` up on `PATH`, like `command -v`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A loopback port that was free a moment ago. Another process can take it
/// before a server binds it, so the launchers retry with a new one when a
/// start fails.
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("could not bind a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// Whether this process runs as root, which PostgreSQL refuses to run as.
pub fn running_as_root() -> Result<bool> {
    // `id` instead of libc: the workspace forbids unsafe code, and this is
    // asked once per server.
    let uid = output(Command::new("id").arg("-u")).context("could not ask `id -u` who we are")?;
    Ok(uid.trim() == "0")
}

/// `runuser` lives in `sbin`, which a non-login root shell may not have on
/// `PATH`.
pub fn find_runuser() -> Option<PathBuf> {
    find_on_path("runuser").or_else(|| {
        ["/usr/sbin/runuser", "/sbin/runuser"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
    })
}

/// The user to run a server as when we are root: `postgres` if the system
/// has it, else `nobody`.
pub fn unprivileged_user() -> Result<String> {
    if find_runuser().is_none() {
        bail!(
            "running as root, so PostgreSQL must run as another user, but `runuser` is not on \
             PATH (install util-linux), or run as an unprivileged user"
        );
    }
    for user in ["postgres", "nobody"] {
        let exists = Command::new("id")
            .arg(user)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if exists {
            return Ok(user.to_owned());
        }
    }
    bail!("running as root, but neither a `postgres` nor a `nobody` user exists to run a server as")
}

/// A directory under the system temp directory, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a directory of its own, named after `label`.
    pub fn new(label: &str) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "onceflight-{label}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // `create_dir`, not `create_dir_all`: failing on an existing path
        // means we never adopt (and later delete) someone else's directory.
        std::fs::create_dir(&path)
            .with_context(|| format!("could not create temp directory {}", path.display()))?;
        Ok(Self { path })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove {}: {error}", self.path.display());
        }
    }
}

/// The last `max_lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, max_lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(max_lines);
            format!("--- {} ---\n{}", path.display(), lines[start..].join("\n"))
        }
        Err(error) => format!("(could not read {}: {error})", path.display()),
    }
}

//! A PostgreSQL cluster of the test's own, for faults that must not touch
//! the shared server of `DATABASE_URL`: stopped with `pg_ctl stop -m
//! immediate` (a crash, as far as clients can tell) and started again on the
//! same port. Made in a temp directory from the installed binaries (Debian's
//! `/usr/lib/postgresql/*/bin`); as root, run as the `postgres` or `nobody`
//! user, because initdb refuses root. Stopped and deleted when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// A throw-away cluster, running unless [`PgCluster::crash`] stopped it.
pub(crate) struct PgCluster {
    bin: PathBuf,
    user: Option<String>,
    dir: PathBuf,
    port: u16,
}

impl PgCluster {
    /// Initialises and starts a cluster on a free port, or `None` (after
    /// saying so loudly) when no PostgreSQL binaries are installed and
    /// `ONCEFLIGHT_REQUIRE_BACKENDS` is not set; with it set, a missing
    /// binary fails the test.
    pub(crate) fn start(test: &str) -> Option<Self> {
        let Some(bin) = find_bin_dir() else {
            assert!(
                std::env::var("ONCEFLIGHT_REQUIRE_BACKENDS").as_deref() != Ok("1"),
                "{test}: PostgreSQL server binaries (initdb, pg_ctl) are not installed in \
                 /usr/lib/postgresql/*/bin; install them with `apt-get install postgresql`"
            );
            eprintln!(
                "SKIPPED {test}: PostgreSQL server binaries are not installed (`apt-get install \
                 postgresql`)"
            );
            return None;
        };
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "onceflight-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let user = running_as_root().then(unprivileged_user);
        if let Some(user) = &user {
            run(Command::new("chown").arg(user).arg(&dir), "chown");
        }
        let cluster = Self {
            bin,
            user,
            dir,
            port: super::free_port(),
        };
        run(
            cluster
                .command("initdb")
                .arg("-D")
                .arg(cluster.data())
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
                .arg("--locale=C"),
            "initdb",
        );
        cluster.begin();
        Some(cluster)
    }

    /// A URL of the cluster's `postgres` database (trust authentication).
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl stop -m immediate`: every backend is killed at once without
    /// a checkpoint, as in a crash; committed work is in the WAL.
    pub(crate) fn crash(&self) {
        run(
            self.command("pg_ctl").arg("-D").arg(self.data()).args([
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "stop",
            ]),
            "pg_ctl stop -m immediate",
        );
    }

    /// Starts the (stopped) cluster again on the same port; it recovers from
    /// its WAL first.
    pub(crate) fn begin(&self) {
        // fsync=off only risks data on an operating-system crash, which no
        // test makes; commits still reach the kernel before they are
        // acknowledged (synchronous_commit stays on), so a crash of the
        // server itself loses nothing acknowledged.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-t", "60", "-l"])
                .arg(self.dir.join("postgres.log"))
                .args(["-o", &options, "start"]),
            "pg_ctl start",
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut command = match &self.user {
            Some(user) => {
                let mut command = Command::new(runuser());
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        command.current_dir(&self.dir).stdin(Stdio::null());
        command
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command`, panicking with its output when it fails.
fn run(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("could not run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed with {}:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The highest installed version's `bin` directory with initdb and pg_ctl.
fn find_bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version: Option<Vec<u32>> = name
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect();
            Some((version?, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// `postgres` if the system has it, else `nobody`.
fn unprivileged_user() -> String {
    ["postgres", "nobody"]
        .into_iter()
        .find(|user| {
            Command::new("id")
                .arg(user)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
        .expect("running as root, but there is neither a `postgres` nor a `nobody` user")
        .to_owned()
}

/// `runuser` lives in `sbin`, which a non-login root shell may not have on
/// `PATH`.
fn runuser() -> &'static Path {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .into_iter()
        .map(Path::new)
        .find(|path| path.is_file())
        .unwrap_or(Path::new("runuser"))
}

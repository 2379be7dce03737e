//! A throw-away PostgreSQL cluster: initialised in a temp directory from the
//! installed server binaries (Debian's `/usr/lib/postgresql/*/bin`; as root,
//! run as the `postgres` or `nobody` user, because initdb refuses root),
//! listening on a free loopback port, and stopped and deleted when the
//! [`Postgres`] value is dropped. A test can crash it ([`Postgres::crash`])
//! and start it again on the same port ([`Postgres::start_again`]).
//!
//! Started with TLS ([`Postgres::start_tls`]), it accepts TLS as managed
//! Postgres does: its certificate, for the host name `localhost` only, is
//! signed by a throw-away certificate authority made here with `openssl`,
//! whose file the tests get (with a second, unrelated CA to show that a
//! wrong root is refused). The plain server has TLS off, so that clients
//! asking for TLS only if offered (sqlx's default) do not pay a handshake
//! per connection.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{self, TempDir, find_runuser, unprivileged_user};
use crate::tls::Certificates;

/// Where Debian's `postgresql` package puts each major version's binaries.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";
const START_ATTEMPTS: u32 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running throw-away cluster. Dropping it stops the server (immediate
/// mode: nothing in it is worth a clean shutdown) and deletes its files.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    /// The unprivileged user the server runs as when we run as root.
    user: Option<String>,
    options: Options,
    data: PathBuf,
    port: u16,
    // Declared last so it is removed after `drop` has stopped the server.
    dir: TempDir,
}

/// How a [`Postgres`] runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Whether the server accepts TLS (see the module's docs).
    pub tls: bool,
    /// Whether a commit waits for its WAL to reach the kernel before it is
    /// acknowledged. Off by default (faster); a test that crashes the
    /// server and counts on what was acknowledged turns it on. Without
    /// [`Options::durable`], `fsync` is off either way: it only matters when
    /// the machine itself crashes.
    pub synchronous_commit: bool,
    /// A production server's durability: `fsync`, `synchronous_commit` and
    /// `full_page_writes` all on, so that every commit waits for its WAL to
    /// reach the disk. Off by default (tests need no disk flushes); the
    /// benchmarks measure both ways, since a commit's flush is what a
    /// production write pays most.
    pub durable: bool,
}

impl Postgres {
    /// Whether the server binaries are installed.
    pub fn installed() -> bool {
        find_bin_dir().is_ok()
    }

    /// Initialises and starts a cluster without TLS, retrying on a new port
    /// when the start fails (another process may take the port we picked).
    pub fn start() -> Result<Self> {
        Self::start_with(Options::default())
    }

    /// The same, with TLS on (see the module's docs).
    pub fn start_tls() -> Result<Self> {
        Self::start_with(Options {
            tls: true,
            ..Options::default()
        })
    }

    /// The same, with `options`.
    pub fn start_with(options: Options) -> Result<Self> {
        let bin = find_bin_dir()?;
        let user = if process::running_as_root()? {
            Some(unprivileged_user()?)
        } else {
            None
        };
        let dir = TempDir::new("postgres")?;
        if let Some(user) = &user {
            // The server's user must own the directory it writes into.
            process::output(Command::new("chown").arg(user).arg(dir.path()))?;
        }
        let mut pg = Self {
            data: dir.path().join("data"),
            bin,
            user,
            options,
            port: 0,
            dir,
        };

        pg.initdb()?;
        if options.tls {
            pg.make_certificates()?;
        }
        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            pg.port = process::free_port()?;
            match pg.try_start() {
                Ok(()) => return Ok(pg),
                Err(error) => {
                    eprintln!(
                        "PostgreSQL did not start on port {} (attempt {attempt} of \
                         {START_ATTEMPTS}): {error:#}",
                        pg.port
                    );
                    pg.stop_quietly();
                    last_error = Some(error);
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no start attempted"))
            .context(format!(
                "could not start a throw-away PostgreSQL after {START_ATTEMPTS} attempts"
            )))
    }

    /// The URL tests connect with (trust authentication, so no password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The URL of the same server by the host name its TLS certificate
    /// names; the tests add `sslmode` and `sslrootcert`.
    pub fn tls_url(&self) -> String {
        format!("postgres://postgres@localhost:{}/postgres", self.port)
    }

    /// The PEM file of the certificate authority that signed the server's
    /// certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.tls_dir().join("ca.crt")
    }

    /// The PEM file of another certificate authority, which signed nothing
    /// the server has.
    pub fn other_ca_file(&self) -> PathBuf {
        self.tls_dir().join("other-ca.crt")
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir().join("tls")
    }

    /// Makes the two certificate authorities and the server's certificate
    /// (`localhost` only), owned by the server's user.
    fn make_certificates(&self) -> Result<()> {
        let dir = self.tls_dir();
        std::fs::create_dir(&dir).context("could not create the TLS directory")?;
        Certificates::make(&dir, "DNS:localhost")?;
        if let Some(user) = &self.user {
            process::output(Command::new("chown").arg("-R").arg(user).arg(&dir))?;
        }
        Ok(())
    }

    /// Where the server's files (data, log, socket) live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The installed version, e.g. `15`, read from the binaries' directory.
    pub fn version(&self) -> String {
        self.bin
            .parent()
            .and_then(Path::file_name)
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn initdb(&self) -> Result<()> {
        process::output(
            self.command("initdb")
                .arg("-D")
                .arg(&self.data)
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
                // The C locale goes with any encoding and always exists,
                // whatever LANG the caller has (initdb fails on a locale that
                // is not generated on this machine).
                .arg("--locale=C"),
        )
        .context("initdb failed")?;
        Ok(())
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`): every backend
    /// is killed without a checkpoint, as in a crash; committed work is in
    /// the WAL.
    pub fn crash(&self) -> Result<()> {
        process::output(self.command("pg_ctl").arg("-D").arg(&self.data).args([
            "-m",
            "immediate",
            "-w",
            "-t",
            "30",
            "stop",
        ]))
        .map(drop)
    }

    /// Starts the (crashed) server again on the same port; it recovers from
    /// its WAL first.
    pub fn start_again(&self) -> Result<()> {
        self.try_start()
    }

    fn try_start(&self) -> Result<()> {
        let options = format!(
            "-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync={durable} \
             -c synchronous_commit={sync} -c full_page_writes={durable} \
             -c max_connections=300{tls}",
            port = self.port,
            durable = on_off(self.options.durable),
            sync = on_off(self.options.synchronous_commit || self.options.durable),
            tls = if self.options.tls {
                format!(
                    " -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key",
                    dir = self.tls_dir().display()
                )
            } else {
                String::new()
            },
            // Our own directory, so the socket neither needs /var/run/postgresql
            // nor collides with the machine's own server.
            socket_dir = self.dir().display(),
        );
        process::output(
            self.command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-t", "60", "-l"])
                .arg(self.log_path())
                .args(["-o", &options, "start"]),
        )
        .map_err(|error| {
            anyhow::anyhow!("{error:#}\n{}", process::log_tail(&self.log_path(), 20))
        })?;
        self.wait_until_ready()
    }

    /// `pg_ctl -w` already waits for the server; this also checks what the
    /// tests will use: TCP on 127.0.0.1 and a server that accepts sessions.
    fn wait_until_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "PostgreSQL accepts no TCP connections on {addr} after {READY_TIMEOUT:?}\n{}",
                    process::log_tail(&self.log_path(), 20)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }

        let pg_isready = self.bin.join("pg_isready");
        if !pg_isready.is_file() {
            return Ok(());
        }
        loop {
            let status = Command::new(&pg_isready)
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-q"])
                .arg("-p")
                .arg(self.port.to_string())
                .stdin(Stdio::null())
                .status()
                .with_context(|| format!("could not run {}", pg_isready.display()))?;
            if status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "pg_isready still fails on port {} after {READY_TIMEOUT:?} ({status})\n{}",
                    self.port,
                    process::log_tail(&self.log_path(), 20)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the server if it runs; reports problems but never fails,
    /// because it runs from `drop`.
    fn stop_quietly(&self) {
        let pid_file = self.data.join("postmaster.pid");
        if !pid_file.exists() {
            return;
        }
        let stopped = process::output(self.command("pg_ctl").arg("-D").arg(&self.data).args([
            "-m",
            "immediate",
            "-w",
            "-t",
            "30",
            "stop",
        ]));
        if let Err(error) = stopped {
            eprintln!("warning: pg_ctl stop failed, killing the postmaster: {error:#}");
            // The first line of postmaster.pid is the postmaster's pid.
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|text| text.lines().next().map(str::trim).map(str::to_owned));
            if let Some(pid) = pid.filter(|pid| pid.parse::<u32>().is_ok()) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid])
                    .stdin(Stdio::null())
                    .status();
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("postgres.log")
    }

    /// A command for one of the server binaries, run as the server's user.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut cmd = match &self.user {
            Some(user) => {
                // runuser rather than su/sudo: it asks for no password and
                // needs no PAM setup, and it exists wherever util-linux does.
                let runuser = find_runuser().unwrap_or_else(|| "runuser".into());
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", user, "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        // The server's user may not be allowed into the caller's directory.
        cmd.current_dir(self.dir());
        cmd
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_quietly();
    }
}

/// The highest installed version's `bin` directory that has `initdb` and
/// `pg_ctl`: Debian's layout first, then `PATH` for other systems.
fn find_bin_dir() -> Result<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();

    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(DEBIAN_PG_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str().and_then(parse_version)?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_tools(bin))
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }

    if let Some(bin) =
        process::find_on_path("initdb").and_then(|p| p.parent().map(Path::to_path_buf))
        && has_tools(&bin)
    {
        return Ok(bin);
    }

    bail!(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in {DEBIAN_PG_ROOT}/*/bin or on \
         PATH. Install them with `apt-get install postgresql`, or set DATABASE_URL to a \
         database the tests may use."
    )
}

/// A boolean setting as PostgreSQL spells it.
fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// `15` → `[15]`, `9.6` → `[9, 6]`; anything else is not a version directory.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions_sort_numerically() {
        let mut versions: Vec<Vec<u32>> = ["9.6", "15", "10", "16"]
            .into_iter()
            .filter_map(parse_version)
            .collect();
        versions.sort();
        assert_eq!(versions.last(), Some(&vec![16]), "16 is the highest");
        assert_eq!(versions.first(), Some(&vec![9, 6]), "9.6 is below 10");
        assert_eq!(parse_version("main"), None, "not a version directory");
    }
}

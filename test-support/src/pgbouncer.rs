//! A throw-away PgBouncer in transaction mode in front of the tests'
//! PostgreSQL: the stand-in for the transaction-mode poolers of managed
//! Postgres (Supavisor on port 6543), run from Debian's `pgbouncer`, killed
//! when the [`PgBouncer`] value is dropped.
//!
//! Its configuration is PgBouncer's stock one where it matters: no
//! `ignore_startup_parameters` (so a client that sends `options` or
//! `extra_float_digits` is refused, as by a stock install), no support for
//! prepared statements (1.18 has none), and a server pool smaller than the
//! number of clients the tests open, so that server connections really are
//! shared between clients from one transaction to the next.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use onceflight_core::backend::redact_url;

use crate::process::{self, TempDir};

const START_ATTEMPTS: u32 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Server connections per database and user: fewer than the clients of any
/// pooled test (each store opens a pool of several), so they are shared.
pub const SERVER_POOL_SIZE: u32 = 3;

/// A running throw-away PgBouncer.
#[derive(Debug)]
pub struct PgBouncer {
    child: Child,
    port: u16,
    /// The user and database of the pooled URL: the upstream's.
    user: String,
    database: String,
    // Declared last so it is removed after `drop` has killed the process.
    dir: TempDir,
}

/// What PgBouncer needs of the upstream URL.
struct Upstream {
    user: String,
    password: Option<String>,
    host: String,
    port: u16,
    database: String,
}

impl PgBouncer {
    /// Starts PgBouncer in front of the server of `upstream_url` (a
    /// `postgres://user[:password]@host[:port]/database` URL), retrying on a
    /// new port when it does not come up.
    pub fn start(upstream_url: &str) -> Result<Self> {
        let binary = find_binary()?;
        let upstream = parse_upstream(upstream_url)?;
        let user = if process::running_as_root()? {
            Some(process::unprivileged_user()?)
        } else {
            None
        };
        let dir = TempDir::new("pgbouncer")?;
        if let Some(user) = &user {
            // PgBouncer drops root for `user`, which must own what it writes.
            process::output(Command::new("chown").arg(user).arg(dir.path()))?;
        }
        // Trust authentication of clients; the user must still be listed.
        std::fs::write(
            dir.path().join("users.txt"),
            format!("\"{}\" \"\"\n", upstream.user),
        )?;
        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            let port = process::free_port()?;
            let config = dir.path().join("pgbouncer.ini");
            std::fs::write(&config, config_text(&upstream, port, dir.path()))?;
            let mut child = spawn(&binary, &config, user.as_deref(), dir.path())?;
            match wait_until_ready(port, &mut child, dir.path()) {
                Ok(()) => {
                    return Ok(Self {
                        child,
                        port,
                        user: upstream.user,
                        database: upstream.database,
                        dir,
                    });
                }
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    eprintln!(
                        "PgBouncer did not start on port {port} (attempt {attempt} of \
                         {START_ATTEMPTS}): {error:#}"
                    );
                    last_error = Some(error);
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no start attempted"))
            .context(format!(
                "could not start a throw-away PgBouncer after {START_ATTEMPTS} attempts"
            )))
    }

    /// The pooled URL: the upstream's user and database, through PgBouncer.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            self.user, self.port, self.database
        )
    }

    /// Where its configuration and log live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Err(error) = self.child.kill() {
            eprintln!("warning: could not kill pgbouncer: {error}");
        }
        let _ = self.child.wait();
        eprintln!("stopped the throw-away PgBouncer on port {}", self.port);
    }
}

fn config_text(upstream: &Upstream, port: u16, dir: &Path) -> String {
    let password = upstream
        .password
        .as_deref()
        .map(|p| format!(" password={p}"))
        .unwrap_or_default();
    format!(
        "[databases]\n\
         * = host={host} port={upstream_port} user={user}{password}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {dir}/users.txt\n\
         pool_mode = transaction\n\
         default_pool_size = {SERVER_POOL_SIZE}\n\
         min_pool_size = 0\n\
         reserve_pool_size = 0\n\
         max_client_conn = 2000\n\
         logfile = {dir}/pgbouncer.log\n\
         pidfile = {dir}/pgbouncer.pid\n\
         log_connections = 0\n\
         log_disconnections = 0\n",
        host = upstream.host,
        upstream_port = upstream.port,
        user = upstream.user,
        dir = dir.display(),
    )
}

/// Runs PgBouncer in the foreground; as root, it switches to `user` itself
/// (`-u`), so the child is PgBouncer and killing it stops it.
fn spawn(binary: &Path, config: &Path, user: Option<&str>, dir: &Path) -> Result<Child> {
    let log = File::create(dir.join("stderr.log")).context("could not create PgBouncer's log")?;
    let mut cmd = Command::new(binary);
    if let Some(user) = user {
        cmd.args(["-u", user]);
    }
    cmd.arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("could not run {}", binary.display()))
}

fn wait_until_ready(port: u16, child: &mut Child, dir: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "pgbouncer exited early ({status})\n{}\n{}",
                process::log_tail(&dir.join("stderr.log"), 10),
                process::log_tail(&dir.join("pgbouncer.log"), 10)
            );
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "PgBouncer accepts no connections on {addr} after {READY_TIMEOUT:?}\n{}",
                process::log_tail(&dir.join("pgbouncer.log"), 20)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `pgbouncer` on `PATH` or in `/usr/sbin`, where Debian puts it.
fn find_binary() -> Result<PathBuf> {
    process::find_on_path("pgbouncer")
        .or_else(|| {
            let path = PathBuf::from("/usr/sbin/pgbouncer");
            path.is_file().then_some(path)
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "`pgbouncer` is not installed (the transaction-mode pooler the Postgres store is \
                 tested behind). Install it with `apt-get install pgbouncer`, or set \
                 PGBOUNCER_URL to a transaction-mode pooler in front of DATABASE_URL's server."
            )
        })
}

/// The parts of a `postgres://` URL PgBouncer needs. Query parameters are
/// not carried over: PgBouncer connects to the server without TLS.
fn parse_upstream(url: &str) -> Result<Upstream> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .with_context(|| format!("DATABASE_URL {} is not a postgres:// URL", redact_url(url)))?;
    let rest = rest.split('?').next().unwrap_or(rest);
    let (authority, database) = rest.split_once('/').unwrap_or((rest, "postgres"));
    let (userinfo, hostport) = authority
        .rsplit_once('@')
        .unwrap_or(("postgres", authority));
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password.to_owned())),
        None => (userinfo, None),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse()
                .with_context(|| format!("bad port in {}", redact_url(url)))?,
        ),
        None => (hostport, 5432),
    };
    Ok(Upstream {
        user: if user.is_empty() { "postgres" } else { user }.to_owned(),
        password,
        host: if host.is_empty() { "127.0.0.1" } else { host }.to_owned(),
        port,
        database: if database.is_empty() {
            "postgres"
        } else {
            database
        }
        .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_upstream;

    #[test]
    fn upstream_parts_come_from_the_url() {
        let up = parse_upstream("postgres://app:pw@db.local:6000/main?sslmode=disable").unwrap();
        assert_eq!(
            (
                up.user.as_str(),
                up.password.as_deref(),
                up.host.as_str(),
                up.port,
                up.database.as_str()
            ),
            ("app", Some("pw"), "db.local", 6000, "main")
        );
        let up = parse_upstream("postgres://postgres@127.0.0.1:5432/test").unwrap();
        assert_eq!((up.password, up.port), (None, 5432));
        assert!(parse_upstream("mysql://x").is_err(), "not a postgres URL");
    }
}

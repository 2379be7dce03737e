//! A throw-away Redis server: a child process on a free loopback port, killed
//! when the [`Redis`] value is dropped. By default it keeps nothing on disk;
//! [`Options`] add an append-only file, TLS or further server options. A
//! test can crash it ([`Redis::crash`]) and start it again on the same port
//! and directory ([`Redis::start_again`]).
//!
//! The helpers that start a `redis-server` and talk to it are shared with
//! [`crate::redis_cluster`], whose nodes are the same server with cluster
//! options added.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{self, TempDir};
use crate::tls::Certificates;

const START_ATTEMPTS: u32 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How a [`Redis`] runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Persist with an append-only file synced on every write (instead of
    /// keeping nothing on disk), so a restart after a crash keeps every
    /// acknowledged write.
    pub append_only: bool,
    /// Listen with TLS only (`rediss://`), with a certificate for
    /// `localhost` and `127.0.0.1` signed by a throw-away authority
    /// ([`Redis::certificates`]); clients need no certificate.
    pub tls: bool,
    /// Further server options, e.g. `["--maxmemory", "3mb"]`.
    pub args: Vec<String>,
}

impl Options {
    /// These options plus the server options `args`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|arg| (*arg).to_owned()));
        self
    }
}

/// A running throw-away server (unless [`Redis::crash`] killed it).
#[derive(Debug)]
pub struct Redis {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    options: Options,
    certificates: Option<Certificates>,
    // Declared last so it is removed after `drop` has killed the server.
    dir: TempDir,
}

impl Redis {
    /// Whether `redis-server` is installed.
    pub fn installed() -> bool {
        process::find_on_path("redis-server").is_some()
    }

    /// Starts `redis-server`, keeping nothing on disk, and waits until it
    /// answers `PING`, retrying on a new port when it does not come up.
    pub fn start() -> Result<Self> {
        Self::start_with(Options::default())
    }

    /// The same, with `options`.
    pub fn start_with(options: Options) -> Result<Self> {
        let binary = find_server("REDIS_URL")?;
        let dir = TempDir::new("redis")?;
        let certificates = if options.tls {
            Some(Certificates::make(
                dir.path(),
                "DNS:localhost,IP:127.0.0.1",
            )?)
        } else {
            None
        };
        let mut redis = Self {
            binary,
            child: None,
            port: 0,
            options,
            certificates,
            dir,
        };
        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            redis.port = process::free_port()?;
            match redis.start_again() {
                Ok(()) => return Ok(redis),
                Err(error) => {
                    redis.crash();
                    eprintln!(
                        "Redis did not start on port {} (attempt {attempt} of \
                         {START_ATTEMPTS}): {error:#}",
                        redis.port
                    );
                    last_error = Some(error);
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no start attempted"))
            .context(format!(
                "could not start a throw-away Redis after {START_ATTEMPTS} attempts"
            )))
    }

    /// Starts the server (again, after [`Redis::crash`]) on its port and
    /// directory, and waits until it is ready: for a plain server, until it
    /// answers `PING` (after loading its append-only file, if any).
    pub fn start_again(&mut self) -> Result<()> {
        let mut args: Vec<OsString> = Vec::new();
        if self.options.append_only {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(OsString::from));
        }
        if let Some(tls) = &self.certificates {
            args.extend(["--port", "0", "--tls-port"].map(OsString::from));
            args.push(self.port.to_string().into());
            for (option, file) in [
                ("--tls-cert-file", tls.server_cert()),
                ("--tls-key-file", tls.server_key()),
                ("--tls-ca-cert-file", tls.ca_file()),
            ] {
                args.push(option.into());
                args.push(file.into());
            }
            args.extend(["--tls-auth-clients", "no"].map(OsString::from));
        }
        args.extend(self.options.args.iter().map(OsString::from));
        let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let mut child = spawn_server(&self.binary, self.port, self.dir.path(), &args)?;
        let ready = if self.options.tls {
            wait_for_connections(self.port, &mut child, self.dir.path())
        } else {
            wait_for_pong(self.port, &mut child, self.dir.path())
        };
        self.child = Some(child);
        ready
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its URL: `redis://`, or `rediss://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The certificates of a server with TLS.
    pub fn certificates(&self) -> Option<&Certificates> {
        self.certificates.as_ref()
    }

    /// Where the server's log (and append-only file) live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends one inline command (arguments without spaces or line breaks)
    /// to a plain server and returns its raw reply (see [`request`]).
    pub fn command(&self, args: &[&str]) -> Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        request(addr, &args.join(" "))
            .with_context(|| format!("could not send `{}` to {addr}", args.join(" ")))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.crash();
    }
}

/// The `redis-server` binary on `PATH`. `url_var` is the variable that
/// would let the tests use an existing server instead, named in the error.
pub(crate) fn find_server(url_var: &str) -> Result<PathBuf> {
    match process::find_on_path("redis-server") {
        Some(binary) => Ok(binary),
        None => bail!(
            "`redis-server` is not on PATH. Install it with `apt-get install redis-server`, \
             or set {url_var} to a server the tests may use."
        ),
    }
}

/// Starts `redis-server` on `port` in the foreground, saving no snapshots
/// and logging to [`log_path`] in `dir`. `extra_args` are further server
/// options, such as the cluster ones or an append-only file.
pub(crate) fn spawn_server(
    binary: &Path,
    port: u16,
    dir: &Path,
    extra_args: &[&OsStr],
) -> Result<Child> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(log_path(dir))
        .context("could not open the Redis log file")?;
    Command::new(binary)
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", ""])
        .args(["--daemonize", "no"])
        // Nothing is saved, but should Redis ever write, it writes here.
        .arg("--dir")
        .arg(dir)
        .args(extra_args)
        // Appended to, so a restarted server's log follows its first one.
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("could not run {}", binary.display()))
}

/// Where a server started by [`spawn_server`] in `dir` logs.
pub(crate) fn log_path(dir: &Path) -> PathBuf {
    dir.join("redis.log")
}

/// Waits until something accepts connections on `port` (a server with TLS,
/// which an inline `PING` cannot reach), failing early if the child exits.
fn wait_for_connections(port: u16, child: &mut Child, dir: &Path) -> Result<()> {
    wait_until(port, child, dir, "accept connections", |addr| {
        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
    })
}

/// Waits until the server on `port` answers `PING` with `+PONG`, failing
/// early if the child exits (for example because the port was taken).
pub(crate) fn wait_for_pong(port: u16, child: &mut Child, dir: &Path) -> Result<()> {
    wait_until(port, child, dir, "answer PING", |addr| {
        request(addr, "PING").is_ok_and(|reply| reply.starts_with("+PONG"))
    })
}

/// Polls `ready` on the server's address until it says yes, for at most
/// [`READY_TIMEOUT`]; fails at once, with the log, when the child exits.
fn wait_until(
    port: u16,
    child: &mut Child,
    dir: &Path,
    what: &str,
    ready: impl Fn(SocketAddr) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "redis-server exited early ({status})\n{}",
                process::log_tail(&log_path(dir), 20)
            );
        }
        if ready(addr) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "redis-server on {addr} did not {what} within {READY_TIMEOUT:?}\n{}",
                process::log_tail(&log_path(dir), 20)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends one inline command (such as `PING` or `CLUSTER INFO`) over a fresh
/// connection and returns the raw reply: the status line, followed by the
/// payload when the reply is a bulk string. Raw RESP instead of a client
/// library keeps this crate free of dependencies, and these replies are all
/// its callers read.
pub fn request(addr: SocketAddr, command: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut reply = String::new();
    reader.read_line(&mut reply)?;
    // `$<length>` announces a bulk string of that many bytes plus `\r\n`;
    // `$-1` (nil) and every other reply type end with the first line.
    let bulk_len = reply
        .strip_prefix('$')
        .and_then(|len| len.trim_end().parse::<usize>().ok());
    if let Some(len) = bulk_len {
        let mut payload = vec![0; len + 2];
        reader.read_exact(&mut payload)?;
        reply.push_str(&String::from_utf8_lossy(&payload));
    }
    Ok(reply)
}

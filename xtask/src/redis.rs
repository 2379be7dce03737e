//! A throw-away Redis server for the tests: a child process on a free
//! loopback port that keeps nothing on disk, killed when the [`Redis`] value
//! is dropped.
//!
//! The helpers that start a `redis-server` and talk to it are shared with
//! [`crate::redis_cluster`], whose nodes are the same server with cluster
//! options added.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{self, TempDir};

const START_ATTEMPTS: u32 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A running throw-away server.
#[derive(Debug)]
pub(crate) struct Redis {
    child: Child,
    port: u16,
    // Declared last so it is removed after `drop` has killed the server.
    dir: TempDir,
}

impl Redis {
    /// Starts `redis-server` and waits until it answers `PING`, retrying on a
    /// new port when it does not come up.
    pub(crate) fn start() -> Result<Self> {
        let binary = find_server("REDIS_URL")?;
        let dir = TempDir::new("redis")?;
        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            let port = process::free_port()?;
            let mut child = spawn_server(&binary, port, dir.path(), &[])?;
            match wait_for_pong(port, &mut child, dir.path()) {
                Ok(()) => return Ok(Self { child, port, dir }),
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    eprintln!(
                        "xtask: Redis did not start on port {port} (attempt {attempt} of \
                         {START_ATTEMPTS}): {error:#}"
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

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Where the server's log lives.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Err(error) = self.child.kill() {
            eprintln!("xtask: warning: could not kill redis-server: {error}");
        }
        let _ = self.child.wait();
        eprintln!("xtask: stopped the throw-away Redis on port {}", self.port);
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

/// Starts `redis-server` on `port` in the foreground, keeping nothing on disk
/// and logging to [`log_path`] in `dir`. `extra_args` are further server
/// options, such as the cluster ones.
pub(crate) fn spawn_server(
    binary: &Path,
    port: u16,
    dir: &Path,
    extra_args: &[&OsStr],
) -> Result<Child> {
    let log = File::create(log_path(dir)).context("could not create the Redis log file")?;
    Command::new(binary)
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no"])
        // Nothing is saved, but should Redis ever write, it writes here.
        .arg("--dir")
        .arg(dir)
        .args(extra_args)
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

/// Waits until the server on `port` answers `PING` with `+PONG`, failing
/// early if the child exits (for example because the port was taken).
pub(crate) fn wait_for_pong(port: u16, child: &mut Child, dir: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "redis-server exited early ({status})\n{}",
                process::log_tail(&log_path(dir), 20)
            );
        }
        if request(addr, "PING").is_ok_and(|reply| reply.starts_with("+PONG")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "redis-server did not answer PING on {addr} within {READY_TIMEOUT:?}\n{}",
                process::log_tail(&log_path(dir), 20)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends one inline command (such as `PING` or `CLUSTER INFO`) over a fresh
/// connection and returns the raw reply: the status line, followed by the
/// payload when the reply is a bulk string. Raw RESP instead of a client
/// library keeps xtask free of dependencies, and these replies are all it
/// reads.
pub(crate) fn request(addr: SocketAddr, command: &str) -> std::io::Result<String> {
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

//! A throw-away Redis server for the tests: a child process on a free
//! loopback port that keeps nothing on disk, killed when the [`Redis`] value
//! is dropped.

use std::fs::File;
use std::io::{Read, Write};
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
        let Some(binary) = process::find_on_path("redis-server") else {
            bail!(
                "`redis-server` is not on PATH. Install it with `apt-get install redis-server`, \
                 or set REDIS_URL to a server the tests may use."
            );
        };
        let dir = TempDir::new("redis")?;
        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            let port = process::free_port()?;
            match Self::spawn(&binary, port, &dir) {
                Ok(mut child) => match wait_for_pong(port, &mut child, &dir) {
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
                },
                Err(error) => return Err(error),
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

    fn spawn(binary: &Path, port: u16, dir: &TempDir) -> Result<Child> {
        let log = File::create(log_path(dir)).context("could not create the Redis log file")?;
        Command::new(binary)
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            // Nothing is saved, but should Redis ever write, it writes here.
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("could not run {}", binary.display()))
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

fn log_path(dir: &TempDir) -> PathBuf {
    dir.path().join("redis.log")
}

/// Waits until the server on `port` answers `PING` with `+PONG`, failing
/// early if the child exits (for example because the port was taken).
fn wait_for_pong(port: u16, child: &mut Child, dir: &TempDir) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "redis-server exited early ({status})\n{}",
                process::log_tail(&log_path(dir), 20)
            );
        }
        if ping(addr).is_ok_and(|reply| reply.starts_with("+PONG")) {
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

fn ping(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0; 64];
    let n = stream.read(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply[..n]).into_owned())
}

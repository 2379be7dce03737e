//! The `onceflight` binary as a child process: [`Launch`] says how to start
//! `onceflight serve`, [`Server`] is the running process, killed on drop,
//! its log kept in a file so a failing test can show it.
//!
//! Readiness is a plain `GET` over a fresh connection (HTTP/1.0, no client
//! library), so the same launcher serves blocking callers (xtask) and, with
//! the `tokio` feature, async tests, which wait between probes without
//! blocking their runtime.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process;

/// How long a server may take to be ready after it is spawned, unless its
/// [`Launch`] says otherwise.
pub const STARTUP: Duration = Duration::from_secs(20);

/// How often a start on a port of our choosing is tried before giving up:
/// another process can take the port between our pick and the server's bind.
const START_ATTEMPTS: u32 = 3;

/// `binary <args>`, with stdin closed and none of the caller's
/// `ONCEFLIGHT_*` variables, so the caller's own settings (a tokens file,
/// another store) cannot change what is tested.
pub fn command(binary: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary);
    command.args(args).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ONCEFLIGHT_") {
            command.env_remove(name);
        }
    }
    command
}

/// A log file no other server of this run writes.
fn log_path() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "onceflight-serve-{}-{}.log",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// How to start a `onceflight serve`: the binary, where it binds, its extra
/// arguments and environment, and what "ready" means.
#[derive(Debug, Clone)]
pub struct Launch {
    binary: PathBuf,
    bind: Option<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    ready_path: &'static str,
    startup: Duration,
}

impl Launch {
    /// `binary serve` on a free loopback port, with no extra arguments or
    /// environment, ready once `/healthz` answers 200 within [`STARTUP`].
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            bind: None,
            args: Vec::new(),
            envs: Vec::new(),
            ready_path: "/healthz",
            startup: STARTUP,
        }
    }

    /// Binds `bind` (`host:port`) instead of a free loopback port.
    pub fn bind(mut self, bind: &str) -> Self {
        self.bind = Some(bind.to_owned());
        self
    }

    /// Appends `args` after `serve --bind <bind>`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|arg| (*arg).to_owned()));
        self
    }

    /// Sets the variable `name` to `value` in the server's environment.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The server is ready once `path` answers 200, which it must do within
    /// `startup` of being spawned.
    pub fn ready_when(mut self, path: &'static str, startup: Duration) -> Self {
        self.ready_path = path;
        self.startup = startup;
        self
    }

    /// Spawns `binary serve --bind <bind> <args>` with the environment asked
    /// for; does not wait.
    ///
    /// # Panics
    ///
    /// When the process cannot be spawned (a test helper: the binary is
    /// the test's own).
    pub fn spawn(&self) -> Server {
        self.try_spawn().unwrap_or_else(|error| panic!("{error:#}"))
    }

    fn try_spawn(&self) -> Result<Server> {
        let bind = match &self.bind {
            Some(bind) => bind.clone(),
            None => format!("127.0.0.1:{}", process::free_port()?),
        };
        let port = bind
            .rsplit(':')
            .next()
            .and_then(|port| port.parse::<u16>().ok());
        let Some(port) = port else {
            bail!("`{bind}` does not end with a port");
        };
        let log = log_path();
        let log_file =
            File::create(&log).with_context(|| format!("could not create {}", log.display()))?;
        let child = command(&self.binary, &["serve", "--bind", &bind])
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("could not run {}", self.binary.display()))?;
        Ok(Server {
            child,
            // Every bind the tests use (`127.0.0.1`, `0.0.0.0`) answers on
            // loopback.
            probe: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            ready_path: self.ready_path,
            startup: self.startup,
        })
    }

    /// Spawns the server and blocks until it is ready; on a port of its own
    /// choosing it tries again on another port when the start fails.
    pub fn start_blocking(&self) -> Result<Server> {
        let attempts = if self.bind.is_some() {
            1
        } else {
            START_ATTEMPTS
        };
        let mut last_error = None;
        for attempt in 1..=attempts {
            let mut server = self.try_spawn()?;
            match server.wait_ready_blocking() {
                Ok(()) => return Ok(server),
                Err(error) => {
                    eprintln!(
                        "the server did not start (attempt {attempt} of {attempts}): {error:#}"
                    );
                    last_error = Some(error);
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no start attempted"))
            .context(format!(
                "could not start the server after {attempts} attempts"
            )))
    }

    /// Spawns the server and waits until it is ready.
    ///
    /// # Panics
    ///
    /// When it does not become ready in time, with its log.
    #[cfg(feature = "tokio")]
    pub async fn start(self) -> Server {
        let mut server = self.spawn();
        server.wait_ready().await;
        server
    }
}

/// A running `onceflight serve`, killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// Where readiness is asked.
    probe: SocketAddr,
    log: PathBuf,
    ready_path: &'static str,
    startup: Duration,
}

impl Server {
    /// One readiness probe: `Ok(true)` once the ready path answers 200, an
    /// error when the process has exited.
    fn probe(&mut self) -> Result<bool> {
        self.still_running()?;
        Ok(http_status(self.probe, self.ready_path).is_ok_and(|status| status == 200))
    }

    /// An error, with the log, when the process has exited.
    fn still_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the server exited with {status} before it was ready:\n{}",
                self.logs()
            );
        }
        Ok(())
    }

    fn not_ready_in_time(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "the server did not answer {} with 200 within {:?}:\n{}",
            self.ready_path,
            self.startup,
            self.logs()
        )
    }

    /// Blocks (bounded) until the ready path answers 200.
    pub fn wait_ready_blocking(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.startup;
        while !self.probe()? {
            if Instant::now() > deadline {
                return Err(self.not_ready_in_time());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Waits (bounded) until the ready path answers 200.
    ///
    /// # Panics
    ///
    /// When the server exits or is not ready in time, with its log.
    #[cfg(feature = "tokio")]
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + self.startup;
        loop {
            if let Err(error) = self.still_running() {
                panic!("{error:#}");
            }
            // The probe blocks up to its read timeout: off the runtime's
            // workers, which may be forwarding the server's own traffic.
            let (probe, path) = (self.probe, self.ready_path);
            let ready = tokio::task::spawn_blocking(move || http_status(probe, path))
                .await
                .is_ok_and(|status| status.is_ok_and(|status| status == 200));
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "{}", self.not_ready_in_time());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) for the process to exit.
    ///
    /// # Panics
    ///
    /// When it still runs after `within`, with its log.
    #[cfg(feature = "tokio")]
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server was still running after {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends the process SIGTERM; does not wait.
    ///
    /// # Panics
    ///
    /// When `kill` cannot be run or fails.
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let signalled = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(signalled.success(), "kill -TERM {pid}: {signalled}");
    }

    /// Waits (bounded) for the exit SIGTERM asks for, and asserts that it is
    /// a success.
    ///
    /// # Panics
    ///
    /// When it does not exit in time, or not successfully.
    #[cfg(feature = "tokio")]
    pub async fn expect_clean_exit(&mut self) {
        let status = self.wait_exit(Duration::from_secs(10)).await;
        assert!(
            status.success(),
            "the server exits successfully on SIGTERM, got {status}:\n{}",
            self.logs()
        );
    }

    /// SIGTERM, then waits (bounded) for a successful exit.
    ///
    /// # Panics
    ///
    /// As [`Server::expect_clean_exit`].
    #[cfg(feature = "tokio")]
    pub async fn terminate(&mut self) {
        self.sigterm();
        self.expect_clean_exit().await;
    }

    /// The server's process id (for reading `/proc/<pid>`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The loopback address it answers on.
    pub fn addr(&self) -> SocketAddr {
        self.probe
    }

    /// The base URL, `http://host:port`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.probe)
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.probe)
    }

    /// Everything the server has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.log, lines)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Errors mean the process is gone already.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The status code of `GET path` on `addr`, over a fresh connection with
/// short timeouts.
fn http_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut head = [0_u8; 12];
    stream.read_exact(&mut head)?;
    // `HTTP/1.x NNN`
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP status line"))
}

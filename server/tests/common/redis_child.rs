//! A `redis-server` of the test's own, for faults that must not touch the
//! shared server of `REDIS_URL`: killed with SIGKILL (a crash) and started
//! again on the same port and directory, with or without an append-only
//! file. Stopped and deleted when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A throw-away Redis, running unless [`RedisChild::crash`] killed it.
pub(crate) struct RedisChild {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    append_only: bool,
}

impl RedisChild {
    /// Starts a Redis on a free port, persisting with an append-only file
    /// synced on every write when `append_only`, else keeping nothing on
    /// disk; or `None` (after saying so loudly) when `redis-server` is not
    /// installed and `ONCEFLIGHT_REQUIRE_BACKENDS` is not set.
    pub(crate) fn start(test: &str, append_only: bool) -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !installed {
            assert!(
                std::env::var("ONCEFLIGHT_REQUIRE_BACKENDS").as_deref() != Ok("1"),
                "{test}: redis-server is not installed; install it with `apt-get install \
                 redis-server`"
            );
            eprintln!(
                "SKIPPED {test}: redis-server is not installed (`apt-get install redis-server`)"
            );
            return None;
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "onceflight-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the Redis directory");
        let mut redis = Self {
            child: None,
            dir,
            port: super::free_port(),
            append_only,
        };
        redis.begin();
        Some(redis)
    }

    /// The URL of this Redis.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub(crate) fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Redis (again) on the same port and directory, and waits until
    /// it answers PING (after loading its append-only file, if any).
    pub(crate) fn begin(&mut self) {
        let append_only = if self.append_only { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", append_only])
            .args(["--appendfsync", "always", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends one command (arguments without spaces or line breaks, as an
    /// inline command) and returns the first line of the reply.
    #[allow(dead_code)] // Not every test binary uses it.
    pub(crate) fn command(&self, args: &[&str]) -> String {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the test's Redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        stream
            .write_all(format!("{}\r\n", args.join(" ")).as_bytes())
            .expect("send the command");
        let mut reply = Vec::new();
        let mut byte = [0_u8; 1];
        while !reply.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).expect("read the reply");
            reply.push(byte[0]);
        }
        String::from_utf8_lossy(&reply).trim_end().to_owned()
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0_u8; 7];
        // "-LOADING …" while the append-only file loads; "+PONG" once ready.
        stream.read_exact(&mut reply).is_ok() && reply == *b"+PONG\r\n"
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        self.crash();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! A worker process seen from the test: spawned from this very binary,
//! signalled, reaped, and read through its log.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::history::{self, History, Line};
use crate::{WORKER_ENV, WorkerConfig, now_ns};

/// A worker process seen from the test: killed when dropped.
pub(crate) struct WorkerProcess {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) log: PathBuf,
}

impl WorkerProcess {
    /// Starts a worker with `config` (its log path is filled in here).
    pub(crate) fn spawn(mut config: WorkerConfig) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        config.log = std::env::temp_dir().join(format!(
            "onceflight-fault-worker-{}-{}.jsonl",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let child = Command::new(std::env::current_exe().expect("this test binary"))
            .env(
                WORKER_ENV,
                serde_json::to_string(&config).expect("a config"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn a worker");
        Self {
            pid: child.id(),
            child,
            log: config.log,
        }
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`) with `kill(1)`; returns the
    /// wall clock just before.
    pub(crate) fn signal(&self, signal: &str) -> u64 {
        let at = now_ns();
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}: {status}", self.pid);
        at
    }

    /// SIGKILL, then reaps the process; returns the wall clock of the kill.
    pub(crate) fn kill(&mut self) -> u64 {
        let at = self.signal("KILL");
        self.child.wait().expect("reap the killed worker");
        at
    }

    /// What the worker has logged so far.
    pub(crate) fn lines(&self) -> Vec<Line> {
        history::read_lines(&self.log)
    }

    /// Waits (bounded) for the worker to exit and asserts it succeeded.
    pub(crate) async fn expect_success(&mut self, within: Duration) {
        let status = self.wait_exit(within).await;
        assert!(
            status.success(),
            "worker {} exits 0 once its keys are done, got {status}",
            self.pid
        );
    }

    pub(crate) async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll a worker") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} still running after {within:?}; its log: {}",
                self.pid,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The leases this worker holds by its log: jobs started and neither
    /// ended nor abandoned, as (key, token, start).
    pub(crate) fn open_jobs(&self) -> Vec<(String, u64, u64)> {
        let history = History::from_lines(self.lines());
        history
            .jobs
            .iter()
            .filter(|job| job.end.is_none())
            .map(|job| (job.key.clone(), job.token, job.start))
            .collect()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too; errors mean it is gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("worker {} kept its log at {}", self.pid, self.log.display());
        }
    }
}

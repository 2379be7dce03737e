//! What the soak measures of its server: gauges from `/metrics`, memory and
//! open files from `/proc/<pid>`, and (through [`crate::connections`]) the
//! store's own count of this server's connections.

use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::common::Server;
use crate::{FD_LIMIT, FD_SLACK, LONG_POLLS, PG_POOL, SETTLE, TASK_SLACK};

/// How to ask the store how many connections this server holds.
pub(crate) enum Probe {
    Memory,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres {
        url: String,
    },
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Redis {
        url: String,
    },
}

impl Probe {
    /// Most connections the server may hold to its store when idle: the
    /// pool and the listener.
    pub(crate) fn connection_bound(&self) -> usize {
        match self {
            Probe::Memory => 0,
            Probe::Postgres { .. } => PG_POOL as usize + 1,
            // The multiplexed connection and the pub/sub one, plus one being
            // replaced by a reconnect.
            Probe::Redis { .. } => 3,
        }
    }

    /// Connections the server may hold beyond the baseline's.
    pub(crate) fn fd_slack(&self) -> u64 {
        FD_SLACK + self.connection_bound() as u64
    }

    /// The store's view: how many of its clients are sockets of process
    /// `pid` (matched by the client's port).
    pub(crate) async fn store_side_connections(&self, pid: u32) -> Option<usize> {
        match self {
            Probe::Memory => None,
            #[cfg(feature = "postgres")]
            Probe::Postgres { url } => {
                Some(crate::connections::postgres_connections(url, pid).await)
            }
            #[cfg(feature = "redis")]
            Probe::Redis { url } => Some(crate::connections::redis_connections(url, pid).await),
            // A store whose feature is off never runs.
            #[allow(unreachable_patterns)]
            _ => {
                let _ = pid;
                None
            }
        }
    }
}

/// What a soak measures of its server at one instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    pub(crate) rss_kib: u64,
    pub(crate) peak_rss_kib: u64,
    pub(crate) open_fds: u64,
    /// `process_open_fds` of `/metrics`.
    pub(crate) exported_fds: i64,
    pub(crate) alive_tasks: i64,
    pub(crate) waits_in_progress: i64,
}

/// The value of the gauge `name` in `text` (Prometheus exposition).
pub(crate) fn gauge(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as i64)
}

/// `/metrics` of the server at `base`, on a connection of its own that
/// closes after the answer.
pub(crate) async fn scrape(base: &str) -> String {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTP client");
    let reply = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {base}/metrics: {e}"));
    assert_eq!(reply.status(), StatusCode::OK, "GET {base}/metrics");
    reply.text().await.expect("the metrics text")
}

/// Scrapes until the gauge `name` satisfies `done` (its value) or
/// [`SETTLE`] passes (the last value seen).
pub(crate) async fn wait_for_gauge(
    base: &str,
    name: &str,
    done: impl Fn(i64) -> bool,
) -> Result<i64, i64> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let text = scrape(base).await;
        let value = gauge(&text, name).unwrap_or_else(|| panic!("/metrics has {name}:\n{text}"));
        if done(value) {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(value);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server's figures now: memory and files from `/proc/<pid>`, tasks and
/// held long-polls from `/metrics` (whose process gauges must agree with
/// `/proc`).
pub(crate) async fn figures(server: &Server) -> Figures {
    let pid = server.pid();
    let text = scrape(&server.url("")).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("/proc/{pid}/status has {field}:\n{status}"))
    };
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count() as u64;
    let metric =
        |name: &str| gauge(&text, name).unwrap_or_else(|| panic!("/metrics has {name}:\n{text}"));
    assert!(
        metric("process_resident_memory_bytes") > 0,
        "process_resident_memory_bytes is exported:\n{text}"
    );
    Figures {
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
        open_fds,
        exported_fds: metric("process_open_fds"),
        alive_tasks: metric("onceflight_runtime_alive_tasks"),
        waits_in_progress: metric("onceflight_waits_in_progress"),
    }
}

/// Waits (bounded by [`SETTLE`]) until the server is back near `before`:
/// no held long-poll, alive tasks and open files within their slack; then
/// returns its figures.
pub(crate) async fn settle(
    name: &str,
    server: &Server,
    before: &Figures,
    fd_slack: u64,
) -> Figures {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = figures(server).await;
        let settled = now.waits_in_progress == 0
            && now.alive_tasks <= before.alive_tasks + TASK_SLACK
            && now.open_fds <= before.open_fds + fd_slack;
        if settled || Instant::now() >= deadline {
            if !settled {
                let _ = writeln!(
                    std::io::stderr(),
                    "soak on {name}: not settled after {SETTLE:?}: {now:?} (before: {before:?})"
                );
            }
            return now;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Raises this process's soft limit of open files to [`FD_LIMIT`] (or the
/// hard limit, if lower) when it is below, once, and says so.
pub(crate) fn raise_fd_limit() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
        let line = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .expect("/proc/self/limits has Max open files");
        let mut numbers = line["Max open files".len()..].split_whitespace();
        let soft: u64 = numbers.next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
        let hard = numbers
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX);
        if soft >= FD_LIMIT {
            return;
        }
        let target = FD_LIMIT.min(hard);
        let pid = std::process::id().to_string();
        let hard_text = if hard == u64::MAX {
            "unlimited".to_owned()
        } else {
            hard.to_string()
        };
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={target}:{hard_text}")])
            .status()
            .unwrap_or_else(|e| {
                panic!("the soak needs {FD_LIMIT} open files (ulimit -n is {soft}); running prlimit failed: {e}")
            });
        assert!(status.success(), "prlimit --nofile={target}: {status}");
        let _ = writeln!(
            std::io::stderr(),
            "soak: raised this process's soft limit of open files from {soft} to {target}"
        );
        assert!(
            target >= 2 * LONG_POLLS as u64 + 512,
            "the soak needs about {FD_LIMIT} open files; the hard limit is {hard}"
        );
    });
}

//! The worker side: a plain tokio program talking raw HTTP.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{WorkerConfig, now_ns};

/// Runs the worker `config` describes; exit 0 once every key is done.
pub(crate) fn main(config: &str) -> ExitCode {
    let config: WorkerConfig = serde_json::from_str(config).expect("a worker config");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(config));
    ExitCode::SUCCESS
}

struct Worker {
    config: WorkerConfig,
    http: reqwest::Client,
    log: Mutex<File>,
    pid: u32,
    deadline: Instant,
    next_id: AtomicU64,
    next_key: AtomicUsize,
}

async fn run(config: WorkerConfig) {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.log)
        .expect("open the worker's log");
    let worker = std::sync::Arc::new(Worker {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("an HTTP client"),
        log: Mutex::new(log),
        pid: std::process::id(),
        deadline: Instant::now() + Duration::from_millis(config.deadline_ms),
        next_id: AtomicU64::new(0),
        next_key: AtomicUsize::new(0),
        config,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..worker.config.tasks {
        let worker = std::sync::Arc::clone(&worker);
        tasks.spawn(async move {
            loop {
                let next = worker.next_key.fetch_add(1, Ordering::Relaxed);
                let Some(key) = worker.config.keys.get(next).cloned() else {
                    break;
                };
                worker.see_done(&key).await;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a worker task");
    }
    worker.record(json!({"ev": "exit"}));
}

impl Worker {
    /// Appends one line to the log in a single write, so that a kill
    /// leaves whole lines behind (the reader drops a torn last line).
    fn record(&self, mut line: Value) {
        line["pid"] = json!(self.pid);
        line["t"] = json!(now_ns());
        let mut text = line.to_string();
        text.push('\n');
        let mut log = self.log.lock().expect("the log lock");
        log.write_all(text.as_bytes()).expect("write the log");
    }

    /// Sends `op` for `key` until an answer arrives (transport errors
    /// are logged and retried with a short backoff); returns the status
    /// and JSON body.
    async fn send(&self, op: &str, key: &str, token: Option<u64>, body: Value) -> (u16, Value) {
        let mut backoff = Duration::from_millis(25);
        loop {
            if Instant::now() > self.deadline {
                self.record(json!({"ev": "deadline"}));
                std::process::exit(2);
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let base = &self.config.base;
            let request = match op {
                "wait" => self
                    .http
                    .get(format!("{base}/v1/requests/{key}?wait_ms=5000")),
                _ => self
                    .http
                    .post(format!("{base}/v1/requests/{key}/{op}"))
                    .json(&body),
            };
            self.record(json!({
                "ev": "req", "id": id, "op": op, "key": key, "token": token, "sent": body,
            }));
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.text().await {
                        Ok(text) => {
                            let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
                            self.record(json!({
                                "ev": "resp", "id": id, "status": status, "body": json,
                            }));
                            return (status, json);
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            self.record(json!({"ev": "err", "id": id, "error": failure.to_string()}));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(400));
        }
    }

    /// Claims `key` until it is completed, doing the job whenever a
    /// lease is granted.
    async fn see_done(&self, key: &str) {
        let config = &self.config;
        let mut backoff = Duration::from_millis(25);
        loop {
            let claim = json!({
                "kind": "image", "owner": config.owner, "lease_ms": config.lease_ms,
                "max_attempts": 1000,
            });
            let (status, body) = self.send("claim", key, None, claim).await;
            match (status, body["state"].as_str()) {
                (201, Some("acquired")) => {
                    let token = body["token"].as_u64().expect("a lease has a token");
                    if self.run_job(key, token).await {
                        return;
                    }
                }
                (202, Some("in_flight")) => {
                    self.send("wait", key, None, Value::Null).await;
                }
                (200, Some("completed")) => return,
                _ => {
                    // A 503 while the store or server is away, or an
                    // answer the checker will report: try again later.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(400));
                }
            }
        }
    }

    /// Runs the job under `token`, heartbeating, then completes it;
    /// returns whether the key is done for this worker.
    async fn run_job(&self, key: &str, token: u64) -> bool {
        let config = &self.config;
        self.record(json!({"ev": "job_start", "key": key, "token": token}));
        let end = tokio::time::Instant::now() + Duration::from_millis(config.job_ms);
        let mut lost = false;
        loop {
            let now = tokio::time::Instant::now();
            if now >= end {
                break;
            }
            let left = end - now;
            if config.heartbeat_ms == 0 {
                tokio::time::sleep(left).await;
                break;
            }
            tokio::time::sleep(left.min(Duration::from_millis(config.heartbeat_ms))).await;
            let heartbeat = json!({"token": token, "lease_ms": config.lease_ms});
            let (status, _) = self.send("heartbeat", key, Some(token), heartbeat).await;
            if status == 409 {
                lost = true;
                if !config.stubborn {
                    break;
                }
            }
        }
        let result = json!({"pid": self.pid, "owner": config.owner, "token": token, "key": key});
        if config.stubborn {
            // A worker that never noticed: it tries every write.
            self.record(json!({"ev": "job_end", "key": key, "token": token}));
            let writes = [
                (
                    "heartbeat",
                    json!({"token": token, "lease_ms": config.lease_ms}),
                ),
                ("complete", json!({"token": token, "result": result})),
                (
                    "fail",
                    json!({"token": token, "message": "late failure", "retryable": true}),
                ),
                ("release", json!({"token": token})),
            ];
            for (op, body) in writes {
                self.send(op, key, Some(token), body).await;
            }
            return true;
        }
        if lost {
            self.record(json!({"ev": "job_abandoned", "key": key, "token": token}));
            return false;
        }
        self.record(json!({"ev": "job_end", "key": key, "token": token}));
        let complete = json!({"token": token, "result": result});
        loop {
            match self
                .send("complete", key, Some(token), complete.clone())
                .await
            {
                (200, _) => return true,
                (409, _) => return false,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

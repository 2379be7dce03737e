//! (Postgres) The server SIGKILLed under load and restarted.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::common::history::{self, History, Line};
use crate::common::{call, client};
use crate::process::WorkerProcess;
use crate::{Backend, WorkerConfig, checked_history, config, final_records, keys, poll};

/// (Postgres) The server is SIGKILLed while workers are busy and restarted
/// on the same port and schema: every result acknowledged before the kill is
/// still there, unchanged; the workers recover by themselves (connection
/// errors are retried) and every key ends completed; the history satisfies
/// §5.
pub(crate) async fn sigkilled_server_loses_no_result(backend: Backend) {
    let name = "server-kill";
    let schema = onceflight_test_support::unique_name("t_flt");
    let server = backend.launch(&schema).start().await;
    let bind = server.url("").trim_start_matches("http://").to_owned();
    let all = keys("crash", 36);
    let mut workers: Vec<WorkerProcess> = (0..3)
        .map(|i| {
            let mut order = all.clone();
            order.rotate_left(i * 12);
            WorkerProcess::spawn(WorkerConfig {
                lease_ms: 1_000,
                job_ms: 300,
                heartbeat_ms: 0,
                ..config(&server, &format!("w{i}"), &order, 3)
            })
        })
        .collect();

    // Kill once results are being acknowledged and jobs are running.
    let before = poll(
        "results acknowledged while jobs run",
        Duration::from_secs(20),
        || {
            let lines: Vec<Line> = workers.iter().flat_map(|worker| worker.lines()).collect();
            let history = History::from_lines(lines);
            let acked = history.acked_completions();
            let running = workers.iter().any(|worker| !worker.open_jobs().is_empty());
            (acked.len() >= 6 && running).then_some(acked)
        },
    )
    .await;
    drop(server);
    let restarted = backend.launch(&schema).bind(&bind).start().await;

    // Every acknowledged result is still there, unchanged.
    let http = client();
    for (key, completions) in &before {
        let reply = call(
            &http,
            Method::GET,
            &restarted.url(&format!("/v1/requests/{key}")),
            None,
            None,
        )
        .await;
        let record = reply.expect(StatusCode::OK);
        let (token, result) = &completions[0];
        assert_eq!(
            (
                record["state"].as_str(),
                record["token"].as_u64(),
                &record["result"]
            ),
            (Some("completed"), Some(*token), result),
            "{name}: {key}: the result acknowledged before the kill survives it"
        );
    }
    assert!(
        before.len() < all.len(),
        "{name}: work was still in progress when the server was killed"
    );
    for worker in &mut workers {
        worker.expect_success(Duration::from_secs(45)).await;
    }
    let finals = final_records(&restarted, &all).await;
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let history = checked_history(name, &refs, &finals);
    let cut = history
        .calls
        .iter()
        .filter(|c| !matches!(c.outcome, history::Outcome::Answered { .. }))
        .count();
    eprintln!(
        "{name}: {cut} requests were cut by the kill and retried; all {} keys completed",
        all.len()
    );
}

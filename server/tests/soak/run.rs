//! One soak: warm-up, a baseline, the load and the rounds of long-polls
//! until the deadline, then everything the server must be back to.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::book::Book;
use crate::common::{Server, call, client};
use crate::load::{Rng, Soak, Stats, episode, read};
use crate::probes::{Probe, figures, settle};
use crate::rounds::long_poll_round;
use crate::{
    DEFAULT_SOAK_SECS, HELD_AT_ONCE, HERD, LONG_POLLS, POOL_KEYS, RSS_SLACK_KIB, TASK_SLACK,
    WORKERS, soak_client,
};

/// Runs the soak against `server` and checks what it left behind.
pub(crate) async fn soak(name: &'static str, server: Server, probe: Probe) {
    let secs = std::env::var("ONCEFLIGHT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SOAK_SECS);
    let pid = server.pid();

    warm_up(&server).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = figures(&server).await;
    assert_eq!(
        before.waits_in_progress, 0,
        "{name}: no long-poll is held before the soak"
    );

    let started = Instant::now();
    let soak = Arc::new(Soak {
        name,
        base: server.url(""),
        http: soak_client(),
        book: Book::default(),
        stats: Stats::default(),
        stale: Mutex::new(Vec::new()),
        deadline: started + Duration::from_secs(secs),
    });
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let soak = Arc::clone(&soak);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(w + 1);
            let mut n = 0;
            while Instant::now() < soak.deadline {
                episode(&soak, w, n, &mut rng).await;
                n += 1;
            }
        }));
    }
    let rounds = {
        let soak = Arc::clone(&soak);
        let server_url = server.url("");
        tokio::spawn(async move {
            let mut round = 0;
            // A round takes a few seconds; at least one runs however short
            // the soak.
            loop {
                long_poll_round(&soak, &server_url, round).await;
                round += 1;
                if Instant::now() >= soak.deadline {
                    break;
                }
            }
        })
    };
    for task in tasks {
        task.await.expect("a load worker panicked");
    }
    rounds.await.expect("the long-poll rounds panicked");
    let load_secs = started.elapsed().as_secs_f64();

    // Forget every key of the soak, so the memory they held can go.
    let soak = Arc::into_inner(soak).expect("every task is done");
    let stats = soak.stats;
    for i in 0..POOL_KEYS {
        let key = format!("soak|k{i}");
        let reply = call(
            &soak.http,
            Method::DELETE,
            &format!("{}/v1/requests/{}", soak.base, key.replace('|', "%7C")),
            None,
            None,
        )
        .await;
        assert!(
            matches!(reply.status, StatusCode::NO_CONTENT | StatusCode::NOT_FOUND),
            "{}: {} {}",
            reply.what,
            reply.status,
            reply.json
        );
    }
    // Every client connection closes with its client.
    drop(soak.http);

    let after = settle(name, &server, &before, probe.fd_slack()).await;
    let connections = probe.store_side_connections(pid).await;

    let summary = format!(
        "soak on {name}: {load_secs:.0} s, {} claims ({} acquired, {} takeovers, {} in flight, \
         {} cache hits, {} failed), {} completes (+{} repeated), {} retryable and {} final \
         failures, {} releases, {} crashes ({} stale completes fenced, {} let through), \
         {} deletes, {} herds of {HERD}, {} short long-polls; {} rounds of {LONG_POLLS} \
         long-polls: at most {} held at once, {} answered, {} abandoned by their clients. \
         Server before → after: RSS {} → {} KiB (peak {} KiB), open fds {} → {}, alive tasks \
         {} → {}, held long-polls {} → {}; store-side connections: {}",
        read(&stats.claims),
        read(&stats.acquired),
        read(&stats.takeovers),
        read(&stats.in_flight),
        read(&stats.cache_hits),
        read(&stats.failed_hits),
        read(&stats.completes),
        read(&stats.repeated_completes),
        read(&stats.fails_retryable),
        read(&stats.fails_final),
        read(&stats.releases),
        read(&stats.crashes),
        read(&stats.stale_fenced),
        read(&stats.stale_completed),
        read(&stats.deletes),
        read(&stats.herds),
        read(&stats.short_polls),
        read(&stats.rounds),
        read(&stats.most_held),
        read(&stats.polls_answered),
        read(&stats.polls_abandoned),
        before.rss_kib,
        after.rss_kib,
        after.peak_rss_kib,
        before.open_fds,
        after.open_fds,
        before.alive_tasks,
        after.alive_tasks,
        before.waits_in_progress,
        after.waits_in_progress,
        connections.map_or_else(|| "n/a".to_owned(), |n| n.to_string()),
    );
    // Straight to the stderr handle: the harness hides captured output of
    // passing tests, and CI's log should show these figures.
    let _ = writeln!(std::io::stderr(), "{summary}");

    // Every path of the protocol ran.
    for (what, count) in [
        ("acquired claims", &stats.acquired),
        ("takeovers", &stats.takeovers),
        ("in-flight answers", &stats.in_flight),
        ("cache hits", &stats.cache_hits),
        ("completes", &stats.completes),
        ("retryable failures", &stats.fails_retryable),
        ("final failures", &stats.fails_final),
        ("releases", &stats.releases),
        ("crashes", &stats.crashes),
        ("deletes", &stats.deletes),
        ("herds", &stats.herds),
        ("long-poll rounds", &stats.rounds),
        ("abandoned long-polls", &stats.polls_abandoned),
    ] {
        assert!(
            read(count) > 0,
            "{name}: the soak ran some {what}: {summary}"
        );
    }
    assert!(
        read(&stats.most_held) >= HELD_AT_ONCE as u64,
        "{name}: at least {HELD_AT_ONCE} long-polls were held at once: {summary}"
    );

    // The exported process gauge agrees with /proc once nothing moves (the
    // scrape's own connection and the directory being read may differ).
    // Connections the load left behind may still be closing between the
    // scrape and the read of /proc, so the two are compared again for a
    // while before they must agree.
    let mut now = after;
    for _ in 0..20 {
        if now.exported_fds.abs_diff(now.open_fds as i64) <= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = figures(&server).await;
    }
    assert!(
        now.exported_fds.abs_diff(now.open_fds as i64) <= 4,
        "{name}: process_open_fds ({}) agrees with /proc/<pid>/fd ({})",
        now.exported_fds,
        now.open_fds
    );

    // Nothing leaked.
    assert_eq!(
        after.waits_in_progress, 0,
        "{name}: no long-poll is still counted as held once every client is gone: {summary}"
    );
    assert!(
        after.alive_tasks <= before.alive_tasks + TASK_SLACK,
        "{name}: the runtime's alive tasks are back near the baseline (+{TASK_SLACK}): {summary}"
    );
    assert!(
        after.open_fds <= before.open_fds + probe.fd_slack(),
        "{name}: open file descriptors are back near the baseline (+{}: the store's pool may \
         keep idle connections): {summary}",
        probe.fd_slack()
    );
    assert!(
        after.rss_kib <= before.rss_kib + RSS_SLACK_KIB,
        "{name}: resident memory is back near its start (+{RSS_SLACK_KIB} KiB): {summary}"
    );
    if let Some(connections) = connections {
        assert!(
            (1..=probe.connection_bound()).contains(&connections),
            "{name}: the store sees between 1 and {} connections of this server (pool and \
             listener): {summary}",
            probe.connection_bound()
        );
    }

    // The server is still healthy, and stops cleanly.
    let mut server = server;
    call(&client(), Method::GET, &server.url("/readyz"), None, None)
        .await
        .expect(StatusCode::OK);
    server.terminate().await;
}

/// A little of everything, so that lazily built state (pools, buffers,
/// worker threads) exists before the baseline.
pub(crate) async fn warm_up(server: &Server) {
    let http = soak_client();
    for i in 0..50 {
        let key = format!("warm%7C{i}");
        let claim = call(
            &http,
            Method::POST,
            &server.url(&format!("/v1/requests/{key}/claim")),
            Some(json!({"kind": "soak", "lease_ms": 30000})),
            None,
        )
        .await;
        let token = claim.token();
        let polls: Vec<_> = (0..4)
            .map(|_| {
                let (http, url) = (
                    http.clone(),
                    server.url(&format!("/v1/requests/{key}?wait_ms=10000")),
                );
                tokio::spawn(async move { call(&http, Method::GET, &url, None, None).await })
            })
            .collect();
        call(
            &http,
            Method::POST,
            &server.url(&format!("/v1/requests/{key}/complete")),
            Some(json!({"token": token, "result": {"warm": i}})),
            None,
        )
        .await
        .expect(StatusCode::OK);
        for poll in polls {
            poll.await.expect("a warm-up long-poll");
        }
        call(
            &http,
            Method::DELETE,
            &server.url(&format!("/v1/requests/{key}")),
            None,
            None,
        )
        .await
        .expect(StatusCode::NO_CONTENT);
    }
}

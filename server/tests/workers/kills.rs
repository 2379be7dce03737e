//! Workers SIGKILLed and SIGSTOPped while they hold leases.

use std::time::Duration;

use serde_json::json;

use crate::process::WorkerProcess;
use crate::{
    Backend, TAKEOVER_SLACK, WorkerConfig, checked_history, config, final_records, keys, now_ns,
    poll,
};

/// Several workers over tens of keys; two of them are SIGKILLed while each
/// holds leases, and replacements finish the work. Every lease of a killed
/// worker that did not complete is taken over, after its end on the store's
/// clock and within one lease TTL (plus slack) of the kill (§5.6), with
/// `takeover: true`; the whole history satisfies §5.
pub(crate) async fn sigkilled_workers_are_taken_over_after_one_lease(backend: Backend) {
    let name = "sigkill";
    let server = backend
        .launch(&onceflight_test_support::unique_name("t_flt"))
        .start()
        .await;
    let all = keys("kill", 36);
    let mut workers: Vec<WorkerProcess> = (0..4)
        .map(|i| {
            let mut order = all.clone();
            order.rotate_left(i * 9);
            WorkerProcess::spawn(config(&server, &format!("w{i}"), &order, 3))
        })
        .collect();
    let lease = Duration::from_millis(900);

    // Victims: two workers each holding a lease whose job began less than
    // 250 ms ago, so that it is certainly still held when the kill lands.
    let victims: Vec<usize> = poll(
        "two workers hold fresh leases",
        Duration::from_secs(20),
        || {
            let now = now_ns();
            let holding: Vec<usize> = workers
                .iter()
                .enumerate()
                .filter(|(_, worker)| {
                    worker
                        .open_jobs()
                        .iter()
                        .any(|(_, _, start)| now.saturating_sub(*start) < 250_000_000)
                })
                .map(|(i, _)| i)
                .take(2)
                .collect();
            (holding.len() == 2).then_some(holding)
        },
    )
    .await;
    let mut kills = Vec::new();
    for &victim in &victims {
        let at = workers[victim].kill();
        kills.push((workers[victim].pid, at));
    }

    // Replacements start on the keys the victims held, one task each.
    let mut held_by_victims = Vec::new();
    for &victim in &victims {
        let held: Vec<String> = workers[victim]
            .open_jobs()
            .into_iter()
            .map(|(key, _, _)| key)
            .collect();
        let mut order = held.clone();
        order.extend(all.iter().filter(|key| !held.contains(key)).cloned());
        let tasks = held.len() + 1;
        held_by_victims.extend(held);
        workers.push(WorkerProcess::spawn(config(
            &server,
            &format!("replacement-of-{}", workers[victim].pid),
            &order,
            tasks,
        )));
    }
    assert!(
        !held_by_victims.is_empty(),
        "{name}: the killed workers held leases when they died"
    );
    for (i, worker) in workers.iter_mut().enumerate() {
        if !victims.contains(&i) {
            worker.expect_success(Duration::from_secs(45)).await;
        }
    }

    let finals = final_records(&server, &all).await;
    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    let history = checked_history(name, &refs, &finals);

    // The victims' leases that did not complete were taken over in time.
    let mut taken_over = 0;
    for (pid, killed_at) in kills {
        for key in &all {
            let grants = history.grants(key);
            let final_token = finals[key]["token"].as_u64();
            for dead in grants.iter().filter(|grant| grant.pid == pid) {
                if final_token == Some(dead.token) {
                    continue; // Its completion landed before the kill.
                }
                let next = grants
                    .iter()
                    .find(|grant| grant.token > dead.token)
                    .unwrap_or_else(|| panic!("{name}: {key}: token {} of killed worker {pid} was never taken over: {grants:?}", dead.token));
                assert!(
                    next.takeover,
                    "{name}: {key}: the lease after killed token {} is a takeover: {next:?}",
                    dead.token
                );
                let delay = Duration::from_nanos(next.recv.saturating_sub(killed_at));
                assert!(
                    delay <= lease + TAKEOVER_SLACK,
                    "{name}: {key}: killed worker {pid}'s key was taken over {delay:?} after the kill; one lease is {lease:?}"
                );
                taken_over += 1;
            }
        }
    }
    assert!(
        taken_over >= 1,
        "{name}: at least one lease of a killed worker was taken over"
    );
}

/// A worker holding leases is SIGSTOPped past its lease; another takes over
/// and completes; once resumed (SIGCONT) the frozen worker tries every
/// fenced write and each is refused with 409 `lease_lost`; the newer result
/// stands.
pub(crate) async fn sigstopped_worker_is_fenced_after_takeover(backend: Backend) {
    let name = "sigstop";
    let server = backend
        .launch(&onceflight_test_support::unique_name("t_flt"))
        .start()
        .await;
    let all = keys("stop", 2);
    let frozen_config = WorkerConfig {
        lease_ms: 700,
        job_ms: 4_000,
        heartbeat_ms: 200,
        stubborn: true,
        ..config(&server, "frozen", &all, 2)
    };
    let mut frozen = WorkerProcess::spawn(frozen_config);
    let held = poll(
        "the frozen worker holds both keys",
        Duration::from_secs(20),
        || {
            let jobs = frozen.open_jobs();
            (jobs.len() == 2).then_some(jobs)
        },
    )
    .await;
    frozen.signal("STOP");

    let mut taker = WorkerProcess::spawn(WorkerConfig {
        lease_ms: 700,
        job_ms: 200,
        heartbeat_ms: 0,
        ..config(&server, "taker", &all, 2)
    });
    taker.expect_success(Duration::from_secs(30)).await;
    let resumed_at = frozen.signal("CONT");
    frozen.expect_success(Duration::from_secs(30)).await;

    let finals = final_records(&server, &all).await;
    let history = checked_history(name, &[&frozen, &taker], &finals);

    for (key, token, _) in &held {
        let record = &finals[key];
        let taker_grant = history
            .grants(key)
            .into_iter()
            .find(|grant| grant.pid == taker.pid)
            .unwrap_or_else(|| panic!("{name}: {key}: the taker was granted a lease: {record}"));
        assert!(
            taker_grant.takeover && taker_grant.token > *token,
            "{name}: {key}: the taker took over frozen token {token}: {taker_grant:?}"
        );
        assert_eq!(
            (record["token"].as_u64(), &record["result"]["pid"]),
            (Some(taker_grant.token), &json!(taker.pid)),
            "{name}: {key}: the taker's newer result stands: {record}"
        );
        // After it resumed, every write of the frozen worker was refused,
        // and it tried each kind.
        let late: Vec<_> = history
            .calls_of(key)
            .filter(|c| c.pid == frozen.pid && c.is_fenced() && c.sent >= resumed_at)
            .filter(|c| c.answer().is_some())
            .collect();
        for c in &late {
            assert!(
                c.is_lease_lost(),
                "{name}: {key}: {} with frozen token {token} after SIGCONT is 409 lease_lost, got {:?}",
                c.op,
                c.answer()
            );
        }
        for op in ["heartbeat", "complete", "fail", "release"] {
            assert!(
                late.iter().any(|c| c.op == op),
                "{name}: {key}: the resumed worker attempted a {op}"
            );
        }
    }
}

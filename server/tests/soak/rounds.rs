//! The rounds of long-polls: more than 1,000 held at once on parked keys,
//! some abandoned by their clients, every other one answered promptly once
//! its key settles.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::book::Seen;
use crate::common::{Reply, call};
use crate::load::{Claimed, Rng, Soak, bump, fail};
use crate::probes::wait_for_gauge;
use crate::{
    ABANDONED, HELD_AT_ONCE, LONG_POLLS, PARKED_KEYS, POLL_WAIT_MS, PROMPT, SETTLE, soak_client,
};

/// What becomes of a parked key once its long-polls are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Complete,
    FailRetryable,
    FailFinal,
    Release,
    /// The holder shortens its lease to 200 ms with a heartbeat, then
    /// vanishes.
    Crash,
}

impl Fate {
    pub(crate) fn of(i: usize) -> Self {
        match i % 6 {
            0 | 1 => Fate::Complete,
            2 => Fate::FailRetryable,
            3 => Fate::FailFinal,
            4 => Fate::Release,
            _ => Fate::Crash,
        }
    }
}

/// One round of long-polls: [`PARKED_KEYS`] keys are claimed, then
/// [`LONG_POLLS`] `GET ?wait_ms` are sent on them and at least
/// [`HELD_AT_ONCE`] must be held at once (the server's own gauge says so);
/// [`ABANDONED`] clients walk away (the gauge must drop by as much), then
/// every key settles one way or another and every remaining long-poll is
/// answered with the record as the settling left it. The keys are then
/// claimed once more (takeover, retry, re-acquire after release, final
/// failure, cache hit) and deleted.
pub(crate) async fn long_poll_round(soak: &Arc<Soak>, base: &str, round: u64) {
    let name = soak.name;
    let keys: Vec<String> = (0..PARKED_KEYS)
        .map(|i| format!("soak|p{round}-{i}"))
        .collect();
    let mut tokens = Vec::new();
    for key in &keys {
        let seen = soak.book.start(key);
        let reply = soak.claim(key, "parker", 60_000).await;
        reply.expect(StatusCode::CREATED);
        soak.book.acquired(key, reply.token(), seen, &reply.what);
        bump(&soak.stats.acquired);
        tokens.push(reply.token());
    }

    // The long-polls, on a client of their own: each holds a connection.
    let polls_http = soak_client();
    let polls: Vec<JoinHandle<(usize, Reply, Instant, Duration)>> = (0..LONG_POLLS)
        .map(|p| {
            let i = p % PARKED_KEYS;
            let url = soak.url(&keys[i], &format!("?wait_ms={POLL_WAIT_MS}"));
            let http = polls_http.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let reply = call(&http, Method::GET, &url, None, None).await;
                (i, reply, Instant::now(), sent.elapsed())
            })
        })
        .collect();
    let held = wait_for_gauge(base, "onceflight_waits_in_progress", |n| n >= HELD_AT_ONCE)
        .await
        .unwrap_or_else(|last| {
            panic!("{name}: round {round}: {HELD_AT_ONCE} long-polls are held at once within {SETTLE:?} (last seen {last})")
        });
    soak.stats
        .most_held
        .fetch_max(u64::try_from(held).unwrap_or(0), Ordering::Relaxed);

    // Clients that go away: their requests must stop being counted.
    let mut abandoned = polls;
    let polls = abandoned.split_off(ABANDONED);
    for poll in &abandoned {
        poll.abort();
    }
    for poll in abandoned {
        // Aborted: its request future, and so its connection, is dropped.
        let _ = poll.await;
    }
    let ceiling = i64::try_from(LONG_POLLS - ABANDONED).unwrap_or(i64::MAX);
    wait_for_gauge(base, "onceflight_waits_in_progress", |n| n <= ceiling)
        .await
        .unwrap_or_else(|last| {
            panic!("{name}: round {round}: the {ABANDONED} long-polls whose clients left are uncounted (held: {last}, at most {ceiling} expected)")
        });
    soak.stats
        .polls_abandoned
        .fetch_add(ABANDONED as u64, Ordering::Relaxed);

    // Settle every key.
    let mut settled_at = Vec::new();
    for (i, (key, &token)) in keys.iter().zip(&tokens).enumerate() {
        let claimed = Claimed {
            at: Instant::now(),
            lease_ms: 60_000,
            seen: soak.book.start(key),
        };
        match Fate::of(i) {
            Fate::Complete => {
                let mut rng = Rng::new(round * 1000 + i as u64);
                soak.complete(key, token, &mut rng, claimed).await;
            }
            Fate::FailRetryable => fail(soak, key, token, true, claimed).await,
            Fate::FailFinal => fail(soak, key, token, false, claimed).await,
            Fate::Release => {
                soak.post(key, "release", json!({"token": token}))
                    .await
                    .expect(StatusCode::OK);
                bump(&soak.stats.releases);
            }
            Fate::Crash => {
                soak.post(key, "heartbeat", json!({"token": token, "lease_ms": 200}))
                    .await
                    .expect(StatusCode::OK);
                bump(&soak.stats.crashes);
            }
        }
        settled_at.push(Instant::now());
    }
    let crashed_at = Instant::now();

    // Every remaining long-poll is answered with its key as it settled.
    for poll in polls {
        let answered = tokio::time::timeout(SETTLE, poll)
            .await
            .unwrap_or_else(|_| panic!("{name}: round {round}: a held long-poll is answered within {SETTLE:?} of its key settling"))
            .expect("a long-poll task");
        let (i, reply, at, waited) = answered;
        let body = reply.expect(StatusCode::OK);
        let state = body["state"].as_str().unwrap_or_default();
        let ran_out = waited >= Duration::from_millis(POLL_WAIT_MS);
        if state == "processing" && (at < settled_at[i] || ran_out) {
            // On a machine too loaded to settle this key within the poll's
            // wait, the poll ran out first (its answer may even arrive just
            // after the settling call returned, having read the record just
            // before): it must then answer with the key as it was, still
            // held under the same token.
            assert_eq!(body["token"], tokens[i], "{}: {body}", reply.what);
            bump(&soak.stats.polls_answered);
            continue;
        }
        let late = at.saturating_duration_since(settled_at[i]);
        assert!(
            late < PROMPT,
            "{}: a held long-poll is answered within {PROMPT:?} of its key settling ({:?}), \
             not at its {POLL_WAIT_MS} ms timeout: {body}",
            reply.what,
            Fate::of(i)
        );
        match Fate::of(i) {
            Fate::Complete => {
                assert_eq!(state, "completed", "{}: {body}", reply.what);
                soak.book
                    .completed(&keys[i], body, Seen::unchecked(), &reply.what);
            }
            Fate::FailRetryable | Fate::FailFinal => {
                assert_eq!(state, "failed", "{}: {body}", reply.what);
            }
            Fate::Release | Fate::Crash => {
                assert_eq!(state, "processing", "{}: {body}", reply.what);
                assert_eq!(body["token"], tokens[i], "{}: {body}", reply.what);
            }
        }
        bump(&soak.stats.polls_answered);
    }
    drop(polls_http);

    // Claim each key once more: the protocol's next step for each fate.
    let since = crashed_at.elapsed();
    if since < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(300) - since).await;
    }
    for (i, key) in keys.iter().enumerate() {
        let seen = soak.book.start(key);
        let reply = soak.claim(key, "next", 60_000).await;
        let fate = Fate::of(i);
        match fate {
            Fate::Complete => {
                assert_eq!(
                    reply.expect(StatusCode::OK)["state"],
                    "completed",
                    "{:?}",
                    reply
                );
                soak.book.completed(key, &reply.json, seen, &reply.what);
                bump(&soak.stats.cache_hits);
            }
            Fate::FailFinal => {
                let body = reply.expect(StatusCode::OK);
                assert_eq!(body["state"], "failed", "{}: {body}", reply.what);
                assert!(
                    body["retry_after_ms"].is_null(),
                    "{}: a final failure allows no retry: {body}",
                    reply.what
                );
                bump(&soak.stats.failed_hits);
            }
            Fate::FailRetryable | Fate::Release | Fate::Crash => {
                let body = reply.expect(StatusCode::CREATED);
                assert!(
                    reply.token() > tokens[i],
                    "{}: a new lease has a greater token than {}: {body}",
                    reply.what,
                    tokens[i]
                );
                assert_eq!(
                    body["takeover"],
                    fate == Fate::Crash,
                    "{}: only the crashed holder's lease is taken over: {body}",
                    reply.what
                );
                let attempt = if fate == Fate::Release { 1 } else { 2 };
                assert_eq!(body["attempt"], attempt, "{}: {body}", reply.what);
                soak.book.acquired(key, reply.token(), seen, &reply.what);
                bump(&soak.stats.acquired);
                if fate == Fate::Crash {
                    bump(&soak.stats.takeovers);
                }
            }
        }
    }
    for key in &keys {
        soak.delete(key).await.expect(StatusCode::NO_CONTENT);
    }
    bump(&soak.stats.rounds);
}

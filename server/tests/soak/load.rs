//! The mixed load: workers that claim, complete, fail, crash, release and
//! delete, herds on fresh keys, and stale workers finishing late.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::book::{Book, Seen, result_for};
use crate::common::{Reply, call};
use crate::{CRASH_LEASE_MS, HERD, POOL_KEYS, WORK_LEASE_MS};

/// Counts of what the load did, for the summary and to prove each path ran.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) claims: AtomicU64,
    pub(crate) acquired: AtomicU64,
    pub(crate) takeovers: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) failed_hits: AtomicU64,
    pub(crate) completes: AtomicU64,
    pub(crate) repeated_completes: AtomicU64,
    pub(crate) fails_retryable: AtomicU64,
    pub(crate) fails_final: AtomicU64,
    pub(crate) releases: AtomicU64,
    pub(crate) crashes: AtomicU64,
    pub(crate) stale_fenced: AtomicU64,
    pub(crate) stale_completed: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) herds: AtomicU64,
    pub(crate) short_polls: AtomicU64,
    pub(crate) rounds: AtomicU64,
    pub(crate) polls_answered: AtomicU64,
    pub(crate) polls_abandoned: AtomicU64,
    pub(crate) most_held: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A small deterministic generator (xorshift64*), one per task.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// A worker that walked away from a lease, and when.
#[derive(Debug)]
pub(crate) struct Stale {
    pub(crate) key: String,
    pub(crate) token: u64,
    pub(crate) since: Instant,
}

/// Everything the load's tasks share.
pub(crate) struct Soak {
    pub(crate) name: &'static str,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    pub(crate) book: Book,
    pub(crate) stats: Stats,
    pub(crate) stale: Mutex<Vec<Stale>>,
    pub(crate) deadline: Instant,
}

impl Soak {
    pub(crate) fn url(&self, key: &str, rest: &str) -> String {
        format!(
            "{}/v1/requests/{}{rest}",
            self.base,
            key.replace('|', "%7C")
        )
    }

    pub(crate) async fn post(&self, key: &str, op: &str, body: Value) -> Reply {
        call(
            &self.http,
            Method::POST,
            &self.url(key, &format!("/{op}")),
            Some(body),
            None,
        )
        .await
    }

    pub(crate) async fn claim(&self, key: &str, owner: &str, lease_ms: u64) -> Reply {
        bump(&self.stats.claims);
        let body = json!({
            "kind": "soak",
            "owner": owner,
            "lease_ms": lease_ms,
            "max_attempts": 3,
            "retry_backoff_ms": 50,
        });
        self.post(key, "claim", body).await
    }

    /// Deletes `key`, which may be gone already (another worker).
    pub(crate) async fn delete(&self, key: &str) -> Reply {
        self.book.delete_started(key);
        let reply = call(&self.http, Method::DELETE, &self.url(key, ""), None, None).await;
        self.book.delete_ended(key);
        assert!(
            matches!(reply.status, StatusCode::NO_CONTENT | StatusCode::NOT_FOUND),
            "{}: 204 or 404, got {} {}",
            reply.what,
            reply.status,
            reply.json
        );
        bump(&self.stats.deletes);
        reply
    }

    /// Completes `key` with `token`'s result, sometimes twice (a client
    /// retrying after a lost response), and checks the record.
    pub(crate) async fn complete(&self, key: &str, token: u64, rng: &mut Rng, claimed: Claimed) {
        let seen = self.book.start(key);
        let reply = self
            .post(
                key,
                "complete",
                json!({"token": token, "result": result_for(key, token)}),
            )
            .await;
        if self.fenced(&reply, key, claimed) {
            return;
        }
        let body = reply.expect(StatusCode::OK);
        assert_eq!(body["state"], "completed", "{}: {body}", reply.what);
        assert_eq!(body["token"], token, "{}: {body}", reply.what);
        bump(&self.stats.completes);
        self.book.completed(key, body, seen, &reply.what);
        if rng.below(10) == 0 {
            // The same token again, with another result: success, and the
            // first result stands.
            let seen = self.book.start(key);
            let again = self
                .post(
                    key,
                    "complete",
                    json!({"token": token, "result": {"another": true}}),
                )
                .await;
            bump(&self.stats.repeated_completes);
            if again.status == StatusCode::OK {
                self.book.completed(key, &again.json, seen, &again.what);
            } else {
                // Only a delete in between can explain a refusal.
                again.expect_error(StatusCode::CONFLICT, "lease_lost");
                assert!(
                    claimed.seen.epoch.is_none()
                        || self.book.start(key).epoch != claimed.seen.epoch,
                    "{}: a repeated complete with the completing token is refused only after a delete",
                    again.what
                );
            }
        }
    }

    /// Whether `reply` is a `lease_lost` the holder had to expect: its lease
    /// ran out (so another may have taken over) or the key was deleted.
    /// Any other refusal of a live lease's holder is a bug.
    pub(crate) fn fenced(&self, reply: &Reply, key: &str, claimed: Claimed) -> bool {
        if reply.status != StatusCode::CONFLICT {
            return false;
        }
        reply.expect_error(StatusCode::CONFLICT, "lease_lost");
        let expired = claimed.at.elapsed() >= Duration::from_millis(claimed.lease_ms);
        let deleted = {
            let inner = self.book.lock();
            Book::undisturbed(&inner, key, claimed.seen).is_none()
        };
        assert!(
            expired || deleted,
            "{}: the holder of a live lease ({} ms, claimed {:?} ago) was fenced out of {key} with no delete",
            reply.what,
            claimed.lease_ms,
            claimed.at.elapsed()
        );
        true
    }
}

/// When and how a lease was claimed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claimed {
    pub(crate) at: Instant,
    pub(crate) lease_ms: u64,
    pub(crate) seen: Seen,
}

/// One step of the mixed load by worker `w`.
pub(crate) async fn episode(soak: &Soak, w: u64, n: u64, rng: &mut Rng) {
    let roll = rng.below(100);
    if roll < 4 {
        return herd(soak, w, n).await;
    }
    if roll < 10 && finish_stale(soak).await {
        return;
    }
    let key = format!("soak|k{}", rng.below(POOL_KEYS));
    let owner = format!("w{w}");
    // Decided before the claim: a crashing worker takes a short lease.
    let crash = rng.below(100) < 15;
    let lease_ms = if crash { CRASH_LEASE_MS } else { WORK_LEASE_MS };
    let seen = soak.book.start(&key);
    let at = Instant::now();
    let reply = soak.claim(&key, &owner, lease_ms).await;
    let claimed = Claimed { at, lease_ms, seen };
    match reply.status {
        StatusCode::CREATED => {
            let body = reply.expect(StatusCode::CREATED);
            assert_eq!(body["state"], "acquired", "{}: {body}", reply.what);
            let token = reply.token();
            soak.book.acquired(&key, token, seen, &reply.what);
            bump(&soak.stats.acquired);
            if body["takeover"] == true {
                bump(&soak.stats.takeovers);
            }
            if crash {
                bump(&soak.stats.crashes);
                soak.stale
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Stale {
                        key,
                        token,
                        since: Instant::now(),
                    });
                return;
            }
            match rng.below(100) {
                0..65 => soak.complete(&key, token, rng, claimed).await,
                65..78 => fail(soak, &key, token, true, claimed).await,
                78..85 => fail(soak, &key, token, false, claimed).await,
                _ => {
                    let reply = soak.post(&key, "release", json!({"token": token})).await;
                    if !soak.fenced(&reply, &key, claimed) {
                        let body = reply.expect(StatusCode::OK);
                        assert_eq!(body["state"], "processing", "{}: {body}", reply.what);
                        assert_eq!(body["lease_expired"], true, "{}: {body}", reply.what);
                        bump(&soak.stats.releases);
                    }
                }
            }
        }
        StatusCode::ACCEPTED => {
            let body = reply.expect(StatusCode::ACCEPTED);
            assert_eq!(body["state"], "in_flight", "{}: {body}", reply.what);
            bump(&soak.stats.in_flight);
            if rng.below(3) == 0 {
                let wait = 200 + rng.below(1300);
                let seen = soak.book.start(&key);
                let url = soak.url(&key, &format!("?wait_ms={wait}"));
                let poll = call(&soak.http, Method::GET, &url, None, None).await;
                bump(&soak.stats.short_polls);
                match poll.status {
                    StatusCode::OK if poll.json["state"] == "completed" => {
                        soak.book.completed(&key, &poll.json, seen, &poll.what);
                    }
                    StatusCode::OK => {}
                    _ => poll.expect_error(StatusCode::NOT_FOUND, "not_found"),
                }
            }
        }
        StatusCode::OK if reply.json["state"] == "completed" => {
            bump(&soak.stats.cache_hits);
            soak.book.completed(&key, &reply.json, seen, &reply.what);
            if rng.below(100) < 15 {
                soak.delete(&key).await;
            }
        }
        StatusCode::OK => {
            let body = reply.expect(StatusCode::OK);
            assert_eq!(body["state"], "failed", "{}: {body}", reply.what);
            bump(&soak.stats.failed_hits);
            if body["retry_after_ms"].is_null() && rng.below(2) == 0 {
                soak.delete(&key).await;
            }
        }
        other => panic!("{}: unexpected {other} {}", reply.what, reply.json),
    }
}

/// Fails `key`'s lease and checks the record.
pub(crate) async fn fail(soak: &Soak, key: &str, token: u64, retryable: bool, claimed: Claimed) {
    let reply = soak
        .post(
            key,
            "fail",
            json!({"token": token, "message": "soak failure", "retryable": retryable}),
        )
        .await;
    if soak.fenced(&reply, key, claimed) {
        return;
    }
    let body = reply.expect(StatusCode::OK);
    assert_eq!(body["state"], "failed", "{}: {body}", reply.what);
    assert_eq!(
        body["error"]["retryable"], retryable,
        "{}: {body}",
        reply.what
    );
    bump(if retryable {
        &soak.stats.fails_retryable
    } else {
        &soak.stats.fails_final
    });
}

/// A worker that crashed a while ago comes back and completes with its old
/// token: refused if anyone took over or deleted the key since; accepted
/// (its token is still current) otherwise. Returns whether there was one.
pub(crate) async fn finish_stale(soak: &Soak) -> bool {
    let stale = {
        let mut stale = soak.stale.lock().unwrap_or_else(PoisonError::into_inner);
        let ready = stale
            .iter()
            .position(|s| s.since.elapsed() > Duration::from_millis(2 * CRASH_LEASE_MS));
        ready.map(|i| stale.swap_remove(i))
    };
    let Some(Stale { key, token, .. }) = stale else {
        return false;
    };
    let seen = soak.book.start(&key);
    let reply = soak
        .post(
            &key,
            "complete",
            json!({"token": token, "result": result_for(&key, token)}),
        )
        .await;
    if reply.status == StatusCode::CONFLICT {
        reply.expect_error(StatusCode::CONFLICT, "lease_lost");
        bump(&soak.stats.stale_fenced);
    } else {
        let body = reply.expect(StatusCode::OK);
        assert_eq!(
            body["token"], token,
            "{}: a stale worker's complete succeeds only while its token is current: {body}",
            reply.what
        );
        soak.book.completed(&key, body, seen, &reply.what);
        bump(&soak.stats.stale_completed);
    }
    true
}

/// [`HERD`] concurrent claims on a fresh key: exactly one acquires, the
/// others see its lease in flight. The winner completes; the key goes.
pub(crate) async fn herd(soak: &Soak, w: u64, n: u64) {
    let key = format!("soak|h{w}-{n}");
    let seen = soak.book.start(&key);
    let claims = (0..HERD).map(|i| soak.claim(&key, if i == 0 { "h0" } else { "hn" }, 60_000));
    let replies = join_all(claims).await;
    let winners: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{}: exactly one of {HERD} concurrent claims on a fresh key acquires: {:?}",
        soak.name,
        replies
            .iter()
            .map(|r| (r.status, &r.json))
            .collect::<Vec<_>>()
    );
    let winner = winners[0];
    assert_eq!(winner.json["takeover"], false, "{:?}", winner);
    assert_eq!(winner.json["attempt"], 1, "{:?}", winner);
    let token = winner.token();
    soak.book.acquired(&key, token, seen, &winner.what);
    bump(&soak.stats.acquired);
    for reply in &replies {
        if reply.status != StatusCode::CREATED {
            let body = reply.expect(StatusCode::ACCEPTED);
            assert_eq!(body["state"], "in_flight", "{}: {body}", reply.what);
            assert_eq!(body["token"], token, "{}: {body}", reply.what);
            bump(&soak.stats.in_flight);
        }
    }
    let claimed = Claimed {
        at: Instant::now(),
        lease_ms: 60_000,
        seen,
    };
    let mut rng = Rng::new(w ^ n);
    soak.complete(&key, token, &mut rng, claimed).await;
    soak.delete(&key).await;
    bump(&soak.stats.herds);
}

/// Awaits every future of `futures` concurrently on this task (they borrow
/// the soak, so they are not spawned).
pub(crate) async fn join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("every future is ready"))
        .collect()
}

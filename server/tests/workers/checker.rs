//! The §5 checker itself: a correct history passes, and each kind of
//! violation planted in a copy of it is reported.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::common::history::{self, History, Line};

/// The checker is not vacuous: a correct history passes, and each kind of
/// §5 violation, planted in a copy of it, is reported.
pub(crate) async fn history_checker_catches_each_violation() {
    const S: u64 = 1_000_000_000;
    // 1.7e12 ms: an instant in 2023, as the store would write it.
    fn at(ms: i64) -> Value {
        json!(
            chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + ms)
                .expect("a valid instant")
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
    }
    fn line(pid: u32, t: u64, fields: Value) -> Line {
        let mut value = fields;
        value["pid"] = json!(pid);
        value["t"] = json!(t);
        serde_json::from_value(value).expect("a line")
    }
    fn claim(pid: u32, id: u64, t: u64, token: u64, attempt: u64, granted_ms: i64) -> [Line; 2] {
        [
            line(
                pid,
                t,
                json!({"ev": "req", "id": id, "op": "claim", "key": "k", "sent": {"lease_ms": 1000}}),
            ),
            line(
                pid,
                t + 1_000,
                json!({"ev": "resp", "id": id, "status": 201, "body": {
                    "state": "acquired", "token": token, "attempt": attempt,
                    "lease_expires_at": at(granted_ms + 1000), "takeover": attempt > 1,
                }}),
            ),
        ]
    }
    fn complete(pid: u32, id: u64, t: u64, token: u64, status: u16) -> [Line; 2] {
        let result = json!({"pid": pid, "token": token, "key": "k"});
        let body = if status == 200 {
            json!({"state": "completed", "token": token, "result": result})
        } else {
            json!({"error": {"code": "lease_lost", "message": "lost"}})
        };
        [
            line(
                pid,
                t,
                json!({"ev": "req", "id": id, "op": "complete", "key": "k", "token": token,
                "sent": {"token": token, "result": result}}),
            ),
            line(
                pid,
                t + 1_000,
                json!({"ev": "resp", "id": id, "status": status, "body": body}),
            ),
        ]
    }
    fn job(pid: u32, t: u64, token: u64) -> Line {
        line(
            pid,
            t,
            json!({"ev": "job_start", "key": "k", "token": token}),
        )
    }
    fn final_of(token: u64, pid: u32) -> BTreeMap<String, Value> {
        let result = json!({"pid": pid, "token": token, "key": "k"});
        BTreeMap::from([(
            "k".to_owned(),
            json!({"state": "completed", "token": token, "result": result}),
        )])
    }
    // Worker 1 is granted token 5 at 0 ms and dies; worker 2 takes over
    // with token 6 at 1500 ms (after the lease ended at 1000 ms), runs the
    // job, completes; worker 1's late complete is refused.
    let good = || -> Vec<Line> {
        let mut lines = Vec::new();
        lines.extend(claim(1, 0, S, 5, 1, 0));
        lines.push(job(1, S + 2_000, 5));
        lines.extend(claim(2, 0, 3 * S, 6, 2, 1_500));
        lines.push(job(2, 3 * S + 2_000, 6));
        lines.extend(complete(2, 1, 4 * S, 6, 200));
        lines.extend(complete(1, 1, 5 * S, 5, 409));
        lines
    };
    let verdict = |lines: Vec<Line>, finals: BTreeMap<String, Value>| {
        history::check(&History::from_lines(lines), &finals)
    };
    let clean = verdict(good(), final_of(6, 2));
    assert!(clean.is_empty(), "a correct history passes: {clean:?}");

    // What is planted, the history and final records, and the words the
    // report must contain.
    type Planted = (
        &'static str,
        Vec<Line>,
        BTreeMap<String, Value>,
        &'static str,
    );
    let planted: Vec<Planted> = vec![
        (
            "a token granted twice",
            {
                let mut lines = good();
                lines.extend(claim(3, 0, 6 * S, 6, 3, 3_000));
                lines
            },
            final_of(6, 2),
            "granted twice",
        ),
        (
            "a takeover while the lease is live",
            {
                let mut lines = good();
                lines.splice(3..5, claim(2, 0, 3 * S, 6, 2, 500));
                lines
            },
            final_of(6, 2),
            "while token 5 was live",
        ),
        (
            "a stale complete accepted",
            {
                let mut lines = good();
                lines.truncate(lines.len() - 2);
                lines.extend(complete(1, 1, 5 * S, 5, 200));
                lines
            },
            final_of(6, 2),
            "yet got 200",
        ),
        (
            "an acknowledged result lost",
            good(),
            final_of(5, 1),
            "was lost",
        ),
        (
            "a key left unfinished",
            good(),
            BTreeMap::from([("k".to_owned(), json!({"state": "processing"}))]),
            "did not end completed",
        ),
        (
            "a job without a lease",
            {
                let mut lines = good();
                lines.push(job(3, 6 * S, 6));
                lines
            },
            final_of(6, 2),
            "had not been granted",
        ),
        (
            "a grant nobody can explain",
            {
                let mut lines = good();
                lines.splice(3..5, claim(2, 0, 3 * S, 6, 3, 1_500));
                lines
            },
            final_of(6, 2),
            "no client heard of",
        ),
        (
            "a 500",
            {
                let mut lines = good();
                lines.push(line(
                    3,
                    6 * S,
                    json!({"ev": "req", "id": 0, "op": "claim", "key": "k", "sent": {}}),
                ));
                lines.push(line(
                    3,
                    6 * S + 1,
                    json!({"ev": "resp", "id": 0, "status": 500, "body": {}}),
                ));
                lines
            },
            final_of(6, 2),
            "is a bug",
        ),
    ];
    for (what, lines, finals, expected) in planted {
        let found = verdict(lines, finals);
        assert!(
            found.iter().any(|violation| violation.contains(expected)),
            "the checker reports {what} (`{expected}`), got {found:?}"
        );
    }
}

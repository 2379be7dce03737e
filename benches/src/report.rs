//! The figures and checks a benchmark records, one JSON object a line in
//! `$ONCEFLIGHT_BENCH_OUT/figures.jsonl`, which `cargo xtask bench` turns
//! into its report.

use std::io::Write as _;
use std::path::PathBuf;

use serde::Serialize;

/// Where the figures go.
pub fn out_dir() -> PathBuf {
    std::env::var_os("ONCEFLIGHT_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/onceflight-bench"))
}

/// A measured figure beside its baseline.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figure {
    /// The criterion target that measured it.
    pub bench: &'static str,
    /// The report section, e.g. `claim_or_get: fresh keys`.
    pub group: String,
    /// What was measured, e.g. `claim_or_get`.
    pub name: String,
    /// `memory`, `postgres`, `redis`, `http`.
    pub store: String,
    /// Concurrent callers, if that is a dimension of the figure.
    pub concurrency: Option<usize>,
    /// The unit of `ours` and `baseline`.
    pub unit: &'static str,
    /// Whether more is better (throughput) or less (latency).
    pub higher_is_better: bool,
    /// Our number.
    pub ours: f64,
    /// The baseline's number, measured in the same run.
    pub baseline: Option<f64>,
    /// What the baseline is.
    pub baseline_name: Option<String>,
    /// The §9 target as a minimum ratio, if §9 sets one.
    pub target: Option<f64>,
    /// An absolute bound on `ours` (the most when lower is better, the
    /// least otherwise), for figures judged by size, not against a baseline.
    pub limit: Option<f64>,
    /// The target in words.
    pub target_text: Option<String>,
    /// Our median latency, µs.
    pub p50_us: Option<f64>,
    /// Our 99th percentile latency, µs.
    pub p99_us: Option<f64>,
    /// The baseline's median latency, µs.
    pub baseline_p50_us: Option<f64>,
    /// The baseline's 99th percentile latency, µs.
    pub baseline_p99_us: Option<f64>,
    /// Anything a reader needs to interpret the figure.
    pub note: Option<String>,
}

/// A correctness check: it must hold whatever the speed.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// The criterion target that made it.
    pub bench: &'static str,
    /// What is checked.
    pub name: String,
    /// On which store.
    pub store: String,
    /// What was found.
    pub value: f64,
    /// What must be found.
    pub expected: f64,
    /// Whether they agree.
    pub ok: bool,
    /// How it was counted.
    pub note: Option<String>,
}

#[derive(Serialize)]
struct Line<'a, T> {
    kind: &'static str,
    #[serde(flatten)]
    item: &'a T,
}

fn append<T: Serialize>(kind: &'static str, item: &T) {
    let dir = out_dir();
    std::fs::create_dir_all(&dir).expect("create the bench output directory");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("figures.jsonl"))
        .expect("open figures.jsonl");
    let line = serde_json::to_string(&Line { kind, item }).expect("serialize");
    writeln!(file, "{line}").expect("write figures.jsonl");
}

/// Records `figure` and prints it.
pub fn figure(figure: &Figure) {
    let ratio = figure.baseline.map(|b| {
        if figure.higher_is_better {
            figure.ours / b
        } else {
            b / figure.ours
        }
    });
    println!(
        "figure: {} · {} · {} callers: ours {:.1} {} baseline {:?} ratio {}",
        figure.group,
        figure.store,
        figure.concurrency.map_or("-".to_owned(), |c| c.to_string()),
        figure.ours,
        figure.unit,
        figure.baseline,
        ratio.map_or("-".to_owned(), |r| format!("{r:.2}")),
    );
    append("figure", figure);
}

/// Records `check`, and panics (failing the run) when it does not hold.
pub fn check(check: Check) {
    println!(
        "check: {} on {}: {} (expected {}) {}",
        check.name,
        check.store,
        check.value,
        check.expected,
        if check.ok { "ok" } else { "FAILED" }
    );
    append("check", &check);
    assert!(
        check.ok,
        "correctness check failed: {} on {}: {} where {} was expected",
        check.name, check.store, check.value, check.expected
    );
}

/// Records that `value` must equal `expected`.
pub fn check_eq(
    bench: &'static str,
    name: &str,
    store: &str,
    value: f64,
    expected: f64,
    note: &str,
) {
    check(Check {
        bench,
        name: name.to_owned(),
        store: store.to_owned(),
        value,
        expected,
        ok: value == expected,
        note: Some(note.to_owned()),
    });
}

//! The benchmark report: reads the JSON lines the criterion benches write
//! (`figures.jsonl`, one record a line), judges each figure against its §9
//! target and writes `report.md` and `results.json` beside it (criterion
//! draws its own plots under `target/criterion/`).
//!
//! The benches only measure; every judgement (ratio, verdict, what fails the
//! run) is made here, in one place, so that all benches are judged alike.
//! Everything but [`write`] is pure, so the report is tested without running
//! a benchmark.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The file the benches append their records to.
pub(crate) const FIGURES_FILE: &str = "figures.jsonl";
const REPORT_FILE: &str = "report.md";
const RESULTS_FILE: &str = "results.json";

/// Slack when comparing a ratio with its target, so that a figure exactly on
/// target is not failed by floating-point rounding in the division.
const RATIO_EPSILON: f64 = 1e-9;

/// One measured figure beside the baseline measured in the same run on the
/// same store. Unknown fields are ignored and missing optional ones read as
/// `None`, so the benches can grow the schema without breaking xtask.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct Figure {
    pub(crate) bench: String,
    pub(crate) group: String,
    pub(crate) name: String,
    pub(crate) store: String,
    /// Concurrent callers, when the figure has such a dimension.
    pub(crate) concurrency: Option<u64>,
    pub(crate) unit: String,
    pub(crate) higher_is_better: bool,
    pub(crate) ours: f64,
    pub(crate) baseline: Option<f64>,
    pub(crate) baseline_name: Option<String>,
    /// The least acceptable ratio (see [`Figure::ratio`]), e.g. `0.8`.
    pub(crate) target: Option<f64>,
    /// An absolute bound on `ours` in its own unit, for figures judged by
    /// size rather than against a baseline (e.g. bytes per record): the
    /// most `ours` may be when lower is better, the least otherwise. A
    /// figure with both a ratio target and a limit must meet both.
    pub(crate) limit: Option<f64>,
    /// How §9 states the target, for readers.
    pub(crate) target_text: Option<String>,
    pub(crate) p50_us: Option<f64>,
    pub(crate) p99_us: Option<f64>,
    pub(crate) baseline_p50_us: Option<f64>,
    pub(crate) baseline_p99_us: Option<f64>,
    pub(crate) note: Option<String>,
}

/// A correctness check made during a benchmark (a job that must run once, a
/// round-trip count that must be one). Unlike a figure, a failed check fails
/// the run: a fast wrong answer is not a result.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct Check {
    pub(crate) bench: String,
    pub(crate) name: String,
    pub(crate) store: String,
    /// What was observed; any JSON value, usually a number.
    pub(crate) value: Value,
    pub(crate) expected: Value,
    pub(crate) ok: bool,
    pub(crate) note: Option<String>,
}

/// How a figure compares with its §9 target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Meets,
    Misses,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Meets => "meets",
            Verdict::Misses => "misses",
        }
    }
}

impl Figure {
    /// How this figure compares with its baseline, oriented so that higher
    /// is always better: `ours / baseline` for throughput-like figures,
    /// `baseline / ours` for latency-like ones. `None` without a baseline or
    /// when the division means nothing (a zero denominator).
    pub(crate) fn ratio(&self) -> Option<f64> {
        let baseline = self.baseline?;
        let (numerator, denominator) = if self.higher_is_better {
            (self.ours, baseline)
        } else {
            (baseline, self.ours)
        };
        let ratio = numerator / denominator;
        (denominator > 0.0 && ratio.is_finite()).then_some(ratio)
    }

    /// Whether the ratio reaches the target and `ours` is within the limit;
    /// `None` when there is neither a ratio and a target nor a limit.
    pub(crate) fn verdict(&self) -> Option<Verdict> {
        let by_ratio = match (self.ratio(), self.target) {
            (Some(ratio), Some(target)) => Some(ratio + RATIO_EPSILON >= target),
            _ => None,
        };
        let by_limit = self.limit.map(|limit| {
            if self.higher_is_better {
                self.ours + RATIO_EPSILON >= limit
            } else {
                self.ours <= limit + RATIO_EPSILON
            }
        });
        let meets = match (by_ratio, by_limit) {
            (None, None) => return None,
            (Some(ok), None) | (None, Some(ok)) => ok,
            (Some(a), Some(b)) => a && b,
        };
        Some(if meets {
            Verdict::Meets
        } else {
            Verdict::Misses
        })
    }

    /// "group · store · callers", which names a figure among all others.
    pub(crate) fn label(&self) -> String {
        match self.concurrency {
            Some(1) => format!("{} · {} · 1 caller", self.group, self.store),
            Some(callers) => format!("{} · {} · {callers} callers", self.group, self.store),
            None => format!("{} · {}", self.group, self.store),
        }
    }
}

/// Everything one run of the benches recorded, in file order.
#[derive(Debug, Default)]
pub(crate) struct Records {
    pub(crate) figures: Vec<Figure>,
    pub(crate) checks: Vec<Check>,
}

impl Records {
    /// Parses `figures.jsonl`. Blank lines are skipped; a record of an
    /// unknown kind is skipped with a warning (a newer bench may write kinds
    /// this xtask does not know); anything else that is not a valid record
    /// is an error naming its line.
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let mut records = Self::default();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line)
                .with_context(|| format!("line {number} is not a JSON value"))?;
            let kind = value.get("kind").and_then(Value::as_str).map(str::to_owned);
            match kind.as_deref() {
                Some("figure") => records.figures.push(
                    serde_json::from_value(value)
                        .with_context(|| format!("line {number} is not a valid figure record"))?,
                ),
                Some("check") => records.checks.push(
                    serde_json::from_value(value)
                        .with_context(|| format!("line {number} is not a valid check record"))?,
                ),
                Some(other) => {
                    eprintln!(
                        "xtask: warning: line {number}: unknown record kind `{other}`, skipped"
                    );
                }
                None => bail!("line {number} has no string \"kind\" (\"figure\" or \"check\")"),
            }
        }
        Ok(records)
    }

    /// The figures grouped by `group`, groups in order of first appearance
    /// and figures in file order within each: the order of the report's
    /// tables.
    pub(crate) fn groups(&self) -> Vec<(&str, Vec<&Figure>)> {
        let mut groups: Vec<(&str, Vec<&Figure>)> = Vec::new();
        for figure in &self.figures {
            match groups.iter_mut().find(|(name, _)| *name == figure.group) {
                Some((_, members)) => members.push(figure),
                None => groups.push((&figure.group, vec![figure])),
            }
        }
        groups
    }

    /// The counts the summary and the report's header give.
    pub(crate) fn summary(&self) -> Summary {
        let mut summary = Summary {
            figures: self.figures.len(),
            checks: self.checks.len(),
            ..Summary::default()
        };
        for figure in &self.figures {
            match figure.verdict() {
                Some(Verdict::Meets) => summary.meets += 1,
                Some(Verdict::Misses) => summary.misses += 1,
                None => summary.unjudged += 1,
            }
        }
        summary.failed_checks = self.checks.iter().filter(|check| !check.ok).count();
        summary
    }

    /// Fails when a correctness check failed, naming each one. Missed speed
    /// targets never fail: they depend on the machine, wrong answers do not.
    pub(crate) fn ensure_checks_passed(&self) -> Result<()> {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|check| !check.ok)
            .map(|check| {
                format!(
                    "{} ({} bench, {}): got {}, expected {}",
                    check.name,
                    check.bench,
                    check.store,
                    plain(&check.value),
                    plain(&check.expected)
                )
            })
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            bail!(
                "{} correctness check(s) failed:\n  {}",
                failed.len(),
                failed.join("\n  ")
            )
        }
    }
}

/// Counts over one run's records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) figures: usize,
    pub(crate) meets: usize,
    pub(crate) misses: usize,
    /// Figures without a target or a baseline.
    pub(crate) unjudged: usize,
    pub(crate) checks: usize,
    pub(crate) failed_checks: usize,
}

impl Summary {
    /// One line, e.g. "12 figures: 9 meet their §9 target, 2 miss, 1 without
    /// target; 3 correctness checks, all passed".
    pub(crate) fn line(&self) -> String {
        let checks = match (self.checks, self.failed_checks) {
            (0, _) => "no correctness checks recorded".to_owned(),
            (all, 0) => format!("{all} correctness check(s), all passed"),
            (all, failed) => format!("{all} correctness check(s), {failed} FAILED"),
        };
        format!(
            "{} figure(s): {} meet their §9 target, {} miss, {} without target; {checks}",
            self.figures, self.meets, self.misses, self.unjudged
        )
    }
}

/// Facts about the run that are not in the records.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    /// RFC 3339, UTC.
    pub(crate) generated_at: String,
    pub(crate) quick: bool,
    /// One line per Postgres server measured: its store name in the
    /// figures and its durability settings.
    pub(crate) postgres_servers: Vec<String>,
    pub(crate) cpus: Option<usize>,
    /// `uname -r`, or "unknown".
    pub(crate) kernel: String,
    /// `git describe --always --dirty`, or "unknown".
    pub(crate) git_rev: String,
}

/// The files a report was written to.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) records: Records,
    pub(crate) report: PathBuf,
}

/// Reads `out_dir/figures.jsonl` and writes `report.md` and `results.json`
/// into `out_dir`. Fails when the file is missing or holds no
/// figure (the benches did not run, or did not report), but not on failed
/// checks: the report is most needed exactly then, so the caller writes it
/// first and asks [`Records::ensure_checks_passed`] afterwards.
pub(crate) fn write(out_dir: &Path, meta: &Meta) -> Result<Written> {
    let figures_path = out_dir.join(FIGURES_FILE);
    let text = match fs::read_to_string(&figures_path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
            "the benchmarks wrote no {} (expected at {}): each bench appends its \
             figures there when ONCEFLIGHT_BENCH_OUT is set",
            FIGURES_FILE,
            figures_path.display()
        ),
        Err(error) => {
            return Err(error)
                .with_context(|| format!("could not read {}", figures_path.display()));
        }
    };
    let records =
        Records::parse(&text).with_context(|| format!("in {}", figures_path.display()))?;
    if records.figures.is_empty() {
        bail!(
            "{} holds no figure: the benchmarks ran but reported nothing",
            figures_path.display()
        );
    }

    let report = out_dir.join(REPORT_FILE);
    write_file(&report, &markdown(&records, meta))?;
    write_file(&out_dir.join(RESULTS_FILE), &results_json(&records, meta)?)?;
    Ok(Written { records, report })
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("could not write {}", path.display()))
}

/// `report.md`: a header about the run, one table per group, the checks and
/// a note on reading it.
pub(crate) fn markdown(records: &Records, meta: &Meta) -> String {
    let mut out = String::new();
    let summary = records.summary();
    let date = meta.generated_at.replacen('T', " ", 1).replace('Z', " UTC");
    let mode = if meta.quick {
        "quick (`--quick`: short measurements, rough numbers)"
    } else {
        "full"
    };
    let cpus = meta
        .cpus
        .map_or_else(|| "unknown number of".to_owned(), |cpus| cpus.to_string());
    // `writeln!` into a `String` cannot fail; the results are ignored below
    // for that reason.
    let _ = writeln!(out, "# onceflight benchmarks (docs/protocol.md §9)\n");
    let _ = writeln!(out, "- Date: {date}");
    let _ = writeln!(out, "- Mode: {mode}");
    let _ = writeln!(out, "- Machine: {cpus} CPUs, Linux {}", meta.kernel);
    let _ = writeln!(out, "- Revision: `{}`", meta.git_rev);
    if !meta.postgres_servers.is_empty() {
        let _ = writeln!(out, "- Postgres servers:");
        for server in &meta.postgres_servers {
            let _ = writeln!(out, "  - {}", one_line(server));
        }
    }
    let _ = writeln!(out, "- Summary: {}\n", summary.line());

    for (group, figures) in records.groups() {
        let _ = writeln!(out, "## {}\n", one_line(group));
        let benches = distinct(figures.iter().map(|f| f.bench.as_str()));
        let names = distinct(figures.iter().map(|f| f.name.as_str()));
        let _ = writeln!(out, "Bench `{benches}`, measuring `{names}`.\n");
        out.push_str(&figure_table(&figures));
        out.push('\n');
    }

    let _ = writeln!(out, "## Correctness checks\n");
    if records.checks.is_empty() {
        let _ = writeln!(out, "No correctness checks were recorded.\n");
    } else {
        out.push_str(&check_table(&records.checks));
        out.push('\n');
    }

    let _ = writeln!(out, "## How to read this\n");
    let _ = writeln!(
        out,
        "Each ratio compares a figure with a baseline measured in the same run, on the \
         same store, through the same pool or connection, oriented so that higher is \
         better (ours ÷ baseline for throughput, baseline ÷ ours for latency). The §9 \
         targets are stated as such ratios, and a figure meets its target when its ratio \
         is at least the target. Absolute numbers depend on this shared machine and \
         what else ran on it; compare ratios, not absolute values, between runs. \
         Numbers from quick mode are rough: it exists to prove the benchmarks still \
         run and their correctness checks still pass, and it asserts nothing about \
         speed. A missed target never fails the run; a failed correctness check does."
    );
    out
}

/// The table of one group's figures. The p50/p99 column is left out when no
/// figure of the group has latencies; a "measuring" column is added when
/// the group's figures measure more than one thing (e.g. the server-side
/// cost of several operations), since the header names them all.
pub(crate) fn figure_table(figures: &[&Figure]) -> String {
    let several_names = figures.iter().any(|f| f.name != figures[0].name);
    let with_latency = figures.iter().any(|f| {
        [f.p50_us, f.p99_us, f.baseline_p50_us, f.baseline_p99_us]
            .iter()
            .any(Option::is_some)
    });
    let mut columns = vec![("store", Align::Left)];
    if several_names {
        columns.push(("measuring", Align::Left));
    }
    columns.extend([
        ("callers", Align::Right),
        ("ours", Align::Right),
        ("baseline", Align::Left),
        ("ratio", Align::Right),
        ("§9 target", Align::Left),
        ("verdict", Align::Left),
    ]);
    if with_latency {
        columns.push(("p50 / p99", Align::Left));
    }
    columns.push(("note", Align::Left));

    let rows = figures
        .iter()
        .map(|f| {
            let mut row = vec![f.store.clone()];
            if several_names {
                row.push(f.name.clone());
            }
            row.extend([
                f.concurrency.map_or_else(dash, |c| c.to_string()),
                format!("{} {}", number(f.ours), f.unit),
                match (f.baseline, &f.baseline_name) {
                    (Some(value), Some(name)) => format!("{} {} ({name})", number(value), f.unit),
                    (Some(value), None) => format!("{} {}", number(value), f.unit),
                    (None, _) => dash(),
                },
                f.ratio().map_or_else(dash, |ratio| format!("{ratio:.2}")),
                match (&f.target_text, f.target, f.limit) {
                    (Some(text), _, _) => text.clone(),
                    (None, Some(target), _) => format!("≥ {target}"),
                    (None, None, Some(limit)) => format!(
                        "{} {} {}",
                        if f.higher_is_better { "≥" } else { "≤" },
                        number(limit),
                        f.unit
                    ),
                    (None, None, None) => dash(),
                },
                f.verdict().map_or_else(dash, |v| v.as_str().to_owned()),
            ]);
            if with_latency {
                let mut cell = latency_pair(f.p50_us, f.p99_us);
                if f.baseline_p50_us.is_some() || f.baseline_p99_us.is_some() {
                    let _ = write!(
                        cell,
                        " (baseline {})",
                        latency_pair(f.baseline_p50_us, f.baseline_p99_us)
                    );
                }
                row.push(cell);
            }
            row.push(f.note.clone().unwrap_or_default());
            row
        })
        .collect();
    table(&columns, rows)
}

fn check_table(checks: &[Check]) -> String {
    let columns = [
        ("bench", Align::Left),
        ("check", Align::Left),
        ("store", Align::Left),
        ("value", Align::Right),
        ("expected", Align::Right),
        ("result", Align::Left),
        ("note", Align::Left),
    ];
    let rows = checks
        .iter()
        .map(|check| {
            vec![
                check.bench.clone(),
                check.name.clone(),
                check.store.clone(),
                plain(&check.value),
                plain(&check.expected),
                if check.ok { "passed" } else { "**FAILED**" }.to_owned(),
                check.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&columns, rows)
}

#[derive(Debug, Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// A GitHub-flavoured Markdown table; cells are escaped so that their text
/// cannot end a cell or a row early.
fn table(columns: &[(&str, Align)], rows: Vec<Vec<String>>) -> String {
    let mut out = String::new();
    let header: Vec<String> = columns.iter().map(|(name, _)| cell(name)).collect();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let rule: Vec<&str> = columns
        .iter()
        .map(|(_, align)| match align {
            Align::Left => "---",
            Align::Right => "---:",
        })
        .collect();
    let _ = writeln!(out, "|{}|", rule.join("|"));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|text| cell(text)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// `text` made safe for a table cell: a `|` would start a new cell and a line
/// break would end the row.
fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn dash() -> String {
    "—".to_owned()
}

/// The distinct values of `items`, in order of first appearance, joined.
fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen.join("`, `")
}

/// A JSON value as a reader wants to see it: strings without quotes.
fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        // Whole numbers without a fraction (benches may count in `f64`, and
        // "1.00 runs" reads oddly), fractions rounded like every figure.
        Value::Number(n) => match n.as_f64() {
            Some(value) if value.fract() == 0.0 && value.abs() < 1e15 => format!("{value:.0}"),
            Some(value) => number(value),
            None => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// A measured value rounded for reading: whole numbers with thousands
/// separators from 100 up, three significant digits below (benchmark noise
/// makes more digits meaningless).
pub(crate) fn number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        // Rounded first, so the cast only drops a zero fraction; figures are
        // far below i64's range.
        let whole = value.round() as i64;
        thousands(whole)
    } else if magnitude == 0.0 {
        "0".to_owned()
    } else {
        let decimals = (2.0 - magnitude.log10().floor()).clamp(0.0, 9.0) as usize;
        format!("{value:.decimals$}")
    }
}

fn thousands(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if value < 0 {
        out.insert(0, '-');
    }
    out
}

/// A latency given in microseconds, in the unit that reads best.
pub(crate) fn latency(micros: f64) -> String {
    if micros >= 1_000_000.0 {
        format!("{} s", number(micros / 1_000_000.0))
    } else if micros >= 1_000.0 {
        format!("{} ms", number(micros / 1_000.0))
    } else {
        format!("{} µs", number(micros))
    }
}

fn latency_pair(p50: Option<f64>, p99: Option<f64>) -> String {
    let show = |value: Option<f64>| value.map_or_else(dash, latency);
    match (p50, p99) {
        (None, None) => dash(),
        _ => format!("{} / {}", show(p50), show(p99)),
    }
}

/// `results.json`: the records with the judgements made here, for tools.
fn results_json(records: &Records, meta: &Meta) -> Result<String> {
    #[derive(Serialize)]
    struct Results<'a> {
        generated_at: &'a str,
        quick: bool,
        git_rev: &'a str,
        machine: Machine<'a>,
        figures: Vec<JudgedFigure<'a>>,
        checks: &'a [Check],
    }
    #[derive(Serialize)]
    struct Machine<'a> {
        cpus: Option<usize>,
        kernel: &'a str,
    }
    #[derive(Serialize)]
    struct JudgedFigure<'a> {
        #[serde(flatten)]
        figure: &'a Figure,
        ratio: Option<f64>,
        /// "meets", "misses", or null without a target or baseline.
        verdict: Option<&'static str>,
    }

    let results = Results {
        generated_at: &meta.generated_at,
        quick: meta.quick,
        git_rev: &meta.git_rev,
        machine: Machine {
            cpus: meta.cpus,
            kernel: &meta.kernel,
        },
        figures: records
            .figures
            .iter()
            .map(|figure| JudgedFigure {
                figure,
                ratio: figure.ratio(),
                verdict: figure.verdict().map(Verdict::as_str),
            })
            .collect(),
        checks: &records.checks,
    };
    let mut json = serde_json::to_string_pretty(&results).context("could not encode results")?;
    json.push('\n');
    Ok(json)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A figure with every optional field empty, for tests to fill in.
    pub(crate) fn figure(group: &str, store: &str, ours: f64, baseline: Option<f64>) -> Figure {
        Figure {
            bench: "claims".into(),
            group: group.into(),
            name: "claim_or_get".into(),
            store: store.into(),
            concurrency: None,
            unit: "ops/s".into(),
            higher_is_better: true,
            ours,
            baseline,
            baseline_name: None,
            target: None,
            limit: None,
            target_text: None,
            p50_us: None,
            p99_us: None,
            baseline_p50_us: None,
            baseline_p99_us: None,
            note: None,
        }
    }

    fn meta() -> Meta {
        Meta {
            generated_at: "2025-01-02T03:04:05Z".into(),
            quick: true,
            postgres_servers: vec![
                "`postgres`: fsync off".into(),
                "`postgres-durable`: fsync on".into(),
            ],
            cpus: Some(2),
            kernel: "6.1.0".into(),
            git_rev: "abc123".into(),
        }
    }

    const FULL_FIGURE: &str = r#"{"kind":"figure","bench":"claims","group":"claim_or_get: fresh keys","name":"claim_or_get","store":"postgres","concurrency":8,"unit":"ops/s","higher_is_better":true,"ours":12345.6,"baseline":15000.1,"baseline_name":"bare INSERT … ON CONFLICT DO NOTHING","target":0.8,"target_text":"≥ 0.8 × baseline (§9)","p50_us":120.5,"p99_us":900.1,"baseline_p50_us":100.0,"baseline_p99_us":800.0,"note":"free text"}"#;
    const BARE_FIGURE: &str = r#"{"kind":"figure","bench":"herd","group":"herd","name":"get_or_run","store":"redis","unit":"ms","higher_is_better":false,"ours":3.5,"baseline_name":null,"some_future_field":[1,2]}"#;
    const PASSED_CHECK: &str = r#"{"kind":"check","bench":"herd","name":"job runs in a herd of 1000","store":"postgres","value":1,"expected":1,"ok":true,"note":"…"}"#;
    const FAILED_CHECK: &str = r#"{"kind":"check","bench":"claims","name":"round trips per claim","store":"redis","value":2.0,"expected":1.0,"ok":false}"#;

    #[test]
    fn parses_full_and_sparse_records() {
        let text = format!("{FULL_FIGURE}\n\n{BARE_FIGURE}\n{PASSED_CHECK}\n{FAILED_CHECK}\n");
        let records = Records::parse(&text).expect("valid records");
        assert_eq!(records.figures.len(), 2, "two figures");
        assert_eq!(records.checks.len(), 2, "two checks");

        let full = &records.figures[0];
        assert_eq!(full.concurrency, Some(8), "concurrency");
        assert_eq!(full.target, Some(0.8), "target");
        assert_eq!(full.p99_us, Some(900.1), "p99");
        assert_eq!(full.note.as_deref(), Some("free text"), "note");

        let bare = &records.figures[1];
        assert_eq!(bare.concurrency, None, "missing concurrency reads as None");
        assert_eq!(bare.baseline, None, "missing baseline reads as None");
        assert_eq!(bare.baseline_name, None, "null baseline_name reads as None");
        assert_eq!(bare.target_text, None, "missing target_text reads as None");
        assert_eq!(bare.p50_us, None, "missing p50 reads as None");

        assert!(records.checks[0].ok, "first check passed");
        assert_eq!(records.checks[1].note, None, "missing note reads as None");
    }

    #[test]
    fn parse_errors_name_the_line_and_unknown_kinds_are_skipped() {
        let skipped = Records::parse(r#"{"kind":"comment","text":"hi"}"#).expect("skipped");
        assert!(
            skipped.figures.is_empty() && skipped.checks.is_empty(),
            "nothing kept"
        );

        let error = Records::parse(&format!("{FULL_FIGURE}\nnot json")).expect_err("bad line");
        assert!(
            format!("{error:#}").contains("line 2"),
            "names line 2: {error:#}"
        );

        let error = Records::parse(r#"{"kind":"figure","bench":"x"}"#).expect_err("no fields");
        let message = format!("{error:#}");
        assert!(
            message.contains("line 1") && message.contains("missing field"),
            "names the line and the field: {message}"
        );

        let error = Records::parse(r#"{"bench":"x"}"#).expect_err("no kind");
        assert!(
            format!("{error:#}").contains("kind"),
            "says kind is missing: {error:#}"
        );
    }

    #[test]
    fn ratio_and_verdict_for_higher_is_better() {
        let mut f = figure("g", "postgres", 90.0, Some(100.0));
        assert_eq!(f.ratio(), Some(0.9), "ours / baseline");
        assert_eq!(f.verdict(), None, "no target, no verdict");
        f.target = Some(0.8);
        assert_eq!(f.verdict(), Some(Verdict::Meets), "0.9 ≥ 0.8");
        f.target = Some(0.95);
        assert_eq!(f.verdict(), Some(Verdict::Misses), "0.9 < 0.95");
        f.ours = 95.0;
        assert_eq!(f.verdict(), Some(Verdict::Meets), "exactly on target meets");
    }

    #[test]
    fn ratio_and_verdict_for_lower_is_better() {
        // A latency: ours 2 ms against a baseline of 500 ms is 250 × better.
        let mut f = figure("herd", "redis", 2.0, Some(500.0));
        f.higher_is_better = false;
        f.target = Some(1.0);
        assert_eq!(f.ratio(), Some(250.0), "baseline / ours");
        assert_eq!(
            f.verdict(),
            Some(Verdict::Meets),
            "faster than the baseline"
        );
        f.ours = 1000.0;
        assert_eq!(f.ratio(), Some(0.5), "twice as slow");
        assert_eq!(
            f.verdict(),
            Some(Verdict::Misses),
            "slower than the baseline"
        );
        f.ours = 0.0;
        assert_eq!(f.ratio(), None, "no ratio over a zero denominator");
        assert_eq!(f.verdict(), None, "no verdict without a ratio");
    }

    #[test]
    fn a_limit_judges_the_figure_itself() {
        // Bytes per record: at most 400, no baseline needed.
        let mut f = figure("footprint", "redis", 350.0, None);
        f.higher_is_better = false;
        f.unit = "bytes/record".into();
        f.limit = Some(400.0);
        assert_eq!(f.verdict(), Some(Verdict::Meets), "350 ≤ 400");
        f.ours = 400.0;
        assert_eq!(f.verdict(), Some(Verdict::Meets), "exactly on the limit");
        f.ours = 401.0;
        assert_eq!(f.verdict(), Some(Verdict::Misses), "401 > 400");

        // With a baseline and a ratio target as well, both must hold.
        f.ours = 300.0;
        f.baseline = Some(100.0);
        f.target = Some(0.5);
        assert_eq!(
            f.verdict(),
            Some(Verdict::Misses),
            "within the limit, ratio 0.33"
        );
        f.target = Some(0.3);
        assert_eq!(f.verdict(), Some(Verdict::Meets), "both hold");

        // Higher is better: the limit is a floor.
        let mut g = figure("g", "memory", 5.0, None);
        g.limit = Some(10.0);
        assert_eq!(g.verdict(), Some(Verdict::Misses), "5 < 10");

        f.target = None;
        f.target_text = None;
        let table = figure_table(&[&f]);
        assert!(
            table.contains("| ≤ 400 bytes/record |"),
            "an untitled limit is written out: {table}"
        );
    }

    #[test]
    fn no_baseline_means_no_ratio_or_verdict() {
        let mut f = figure("g", "memory", 10.0, None);
        f.target = Some(0.5);
        assert_eq!(f.ratio(), None, "no baseline");
        assert_eq!(f.verdict(), None, "no verdict");
    }

    #[test]
    fn numbers_and_latencies_are_rounded_for_reading() {
        let cases = [
            (12_345.6, "12,346"),
            (1_234_567.0, "1,234,567"),
            (100.0, "100"),
            (45.67, "45.7"),
            (1.234, "1.23"),
            (0.012_34, "0.0123"),
            (0.0, "0"),
            (-2_500.0, "-2,500"),
        ];
        for (value, expected) in cases {
            assert_eq!(number(value), expected, "number({value})");
        }
        assert_eq!(latency(120.5), "121 µs", "µs below a millisecond");
        assert_eq!(latency(1_500.0), "1.50 ms", "ms from a millisecond");
        assert_eq!(latency(2_500_000.0), "2.50 s", "s from a second");
    }

    #[test]
    fn figure_table_renders_a_small_example() {
        let mut with_all = figure("claims", "postgres", 12_345.6, Some(15_000.1));
        with_all.concurrency = Some(8);
        with_all.baseline_name = Some("bare INSERT".into());
        with_all.target = Some(0.8);
        with_all.target_text = Some("≥ 0.8 × baseline".into());
        with_all.p50_us = Some(120.5);
        with_all.p99_us = Some(1_500.0);
        with_all.note = Some("a | b\nc".into());
        let mut missing = figure("claims", "redis", 5.0, Some(10.0));
        missing.target = Some(0.9);
        let bare = figure("claims", "memory", 7.0, None);

        let table = figure_table(&[&with_all, &missing, &bare]);
        let expected = "\
| store | callers | ours | baseline | ratio | §9 target | verdict | p50 / p99 | note |
|---|---:|---:|---|---:|---|---|---|---|
| postgres | 8 | 12,346 ops/s | 15,000 ops/s (bare INSERT) | 0.82 | ≥ 0.8 × baseline | meets | 121 µs / 1.50 ms | a \\| b c |
| redis | — | 5.00 ops/s | 10.0 ops/s | 0.50 | ≥ 0.9 | misses | — |  |
| memory | — | 7.00 ops/s | — | — | — | — | — |  |
";
        assert_eq!(table, expected, "rendered table");

        let mut wal = figure("cost", "postgres", 120.0, Some(100.0));
        wal.name = "complete".into();
        wal.unit = "WAL bytes/op".into();
        wal.higher_is_better = false;
        let mut fresh = wal.clone();
        fresh.name = "claim_or_get (fresh key)".into();
        fresh.store = "postgres-durable".into();
        let table = figure_table(&[&wal, &fresh]);
        assert!(
            table.starts_with("| store | measuring | callers |")
                && table.contains("| postgres | complete | — | 120 WAL bytes/op |")
                && table.contains("| postgres-durable | claim_or_get (fresh key) |"),
            "a group measuring several things names each row's: {table}"
        );
        assert!(
            !figure_table(&[&with_all, &missing]).contains("measuring"),
            "no such column when every figure measures the same thing"
        );

        let without_latency = figure_table(&[&bare]);
        assert!(
            !without_latency.contains("p50"),
            "no latency column when no figure has one: {without_latency}"
        );
    }

    #[test]
    fn markdown_has_a_table_per_group_in_order_and_the_checks() {
        let text = format!("{FULL_FIGURE}\n{BARE_FIGURE}\n{PASSED_CHECK}\n");
        let records = Records::parse(&text).expect("valid records");
        let report = markdown(&records, &meta());
        let fresh = report
            .find("## claim_or_get: fresh keys")
            .expect("first group");
        let herd = report.find("## herd").expect("second group");
        let checks = report.find("## Correctness checks").expect("checks");
        assert!(
            fresh < herd && herd < checks,
            "groups in file order:\n{report}"
        );
        assert!(
            report.contains("2025-01-02 03:04:05 UTC"),
            "UTC date:\n{report}"
        );
        assert!(report.contains("Mode: quick"), "quick mode:\n{report}");
        assert!(report.contains("2 CPUs, Linux 6.1.0"), "machine:\n{report}");
        assert!(report.contains("`abc123`"), "revision:\n{report}");
        assert!(
            report.contains(
                "- Postgres servers:\n  - `postgres`: fsync off\n  - `postgres-durable`: fsync on\n"
            ),
            "both Postgres servers, one line each:\n{report}"
        );
        assert!(report.contains("| passed |"), "check passed:\n{report}");
        assert!(
            report.contains("## How to read this"),
            "reading note:\n{report}"
        );
    }

    #[test]
    fn a_failed_check_fails_the_run_and_a_missed_target_does_not() {
        let mut missed = figure("g", "redis", 1.0, Some(10.0));
        missed.target = Some(0.9);
        let passing = Records::parse(PASSED_CHECK).expect("valid");
        let records = Records {
            figures: vec![missed],
            checks: passing.checks,
        };
        assert_eq!(records.summary().misses, 1, "the target is missed");
        records
            .ensure_checks_passed()
            .expect("a missed target does not fail the run");

        let failing = Records::parse(&format!("{PASSED_CHECK}\n{FAILED_CHECK}")).expect("valid");
        let error = failing.ensure_checks_passed().expect_err("a failed check");
        let message = format!("{error:#}");
        assert!(
            message.contains("round trips per claim") && message.contains("got 2, expected 1"),
            "names the failed check: {message}"
        );
        assert_eq!(failing.summary().failed_checks, 1, "one failed check");
    }

    #[test]
    fn write_reports_from_a_file_and_refuses_missing_or_empty_ones() {
        let dir = onceflight_test_support::process::TempDir::new("report-test").expect("temp dir");
        let error = write(dir.path(), &meta()).expect_err("no figures.jsonl");
        assert!(
            format!("{error:#}").contains("wrote no"),
            "missing: {error:#}"
        );

        let figures = dir.path().join(FIGURES_FILE);
        fs::write(&figures, format!("{PASSED_CHECK}\n")).expect("write checks only");
        let error = write(dir.path(), &meta()).expect_err("no figure in it");
        assert!(
            format!("{error:#}").contains("no figure"),
            "empty: {error:#}"
        );

        let text = format!("{FULL_FIGURE}\n{BARE_FIGURE}\n{PASSED_CHECK}\n{FAILED_CHECK}\n");
        fs::write(&figures, text).expect("write records");
        let written = write(dir.path(), &meta()).expect("report written despite a failed check");
        assert_eq!(written.report, dir.path().join(REPORT_FILE), "report path");
        assert!(
            written.records.ensure_checks_passed().is_err(),
            "the failed check is still reported to the caller"
        );

        let results: Value = serde_json::from_str(
            &fs::read_to_string(dir.path().join(RESULTS_FILE)).expect("results.json"),
        )
        .expect("results.json is JSON");
        let first = &results["figures"][0];
        assert_eq!(first["verdict"], "meets", "verdict in results: {first}");
        assert!(
            first["ratio"].as_f64().is_some(),
            "ratio in results: {first}"
        );
        assert_eq!(
            first["store"], "postgres",
            "figure fields flattened: {first}"
        );
        assert_eq!(results["figures"][1]["ratio"], Value::Null, "no baseline");
        assert_eq!(results["quick"], true, "quick flag");
        assert_eq!(results["checks"][1]["ok"], false, "failed check kept");
    }
}

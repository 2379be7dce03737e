//! The operator's commands of the `onceflight` binary — `ls`, `show`, `rm` —
//! as a client of a running service's HTTP API.
//!
//! The bearer token comes from `ONCEFLIGHT_TOKEN` only, never from a flag,
//! so that it stays out of shell history and `ps`. Everything printed that
//! came from the service (keys, owners, error messages, results) is passed
//! through [`sanitize`] or [`json_safe`] first: a key is any text a client
//! chose, and one holding escape sequences must not be able to move the
//! terminal's cursor, rewrite earlier lines or change its title.

use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::ValueEnum;
use onceflight_client::model::{ErrorBody, ListParams, ListResponse, RecordBody};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};

/// The variable the bearer token is read from.
const TOKEN_VAR: &str = "ONCEFLIGHT_TOKEN";

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Longest error message shown in a table cell, in characters.
const MAX_ERROR_CELL: usize = 60;

/// Where the service is.
#[derive(Debug, clap::Args)]
pub(crate) struct Remote {
    /// The service's base URL. The bearer token, when the service wants one,
    /// is read from ONCEFLIGHT_TOKEN (never a flag, so it stays out of shell
    /// history and process listings).
    #[arg(long, env = "ONCEFLIGHT_URL", default_value = "http://127.0.0.1:7700")]
    url: String,
}

/// A record state to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum StateArg {
    /// Jobs running, or whose lease ran out.
    Processing,
    /// Jobs done.
    Completed,
    /// Jobs that failed.
    Failed,
}

/// Failed records that allow a retry, or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum RetryArg {
    /// A claim may retry them (now or after the backoff).
    Allowed,
    /// Final failures.
    None,
}

/// The order of a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OrderArg {
    /// The most recently created first.
    Newest,
    /// The oldest first.
    Oldest,
}

/// `onceflight ls`.
#[derive(Debug, clap::Args)]
pub(crate) struct LsArgs {
    #[command(flatten)]
    remote: Remote,
    /// Only records in this state.
    #[arg(long, value_enum)]
    state: Option<StateArg>,
    /// Only processing records whose lease ran out and that nobody took
    /// over yet.
    #[arg(long)]
    stuck: bool,
    /// Only failed records that allow a retry, or only final failures.
    #[arg(long, value_enum)]
    retry: Option<RetryArg>,
    /// Only records of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only records whose key starts with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Newest or oldest first.
    #[arg(long, value_enum, default_value = "newest")]
    order: OrderArg,
    /// Records per page (1–500).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    limit: u32,
    /// Follow the cursors to the last page.
    #[arg(long)]
    all: bool,
    /// Print each record as one line of JSON.
    #[arg(long)]
    json: bool,
}

/// `onceflight show`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    remote: Remote,
    /// The record's key.
    key: String,
    /// Print the record as the service sent it (pretty JSON).
    #[arg(long)]
    json: bool,
}

/// `onceflight rm`.
#[derive(Debug, clap::Args)]
pub(crate) struct RmArgs {
    #[command(flatten)]
    remote: Remote,
    /// The record's key.
    key: String,
    /// Delete without asking (required when stdin is not a terminal).
    #[arg(long)]
    yes: bool,
}

/// Why a command stopped, and its exit code.
#[derive(Debug)]
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

type Outcome = Result<(), Failure>;

/// Runs `ls`.
pub(crate) async fn ls(args: LsArgs) -> ExitCode {
    finish(run_ls(args).await)
}

/// Runs `show`.
pub(crate) async fn show(args: ShowArgs) -> ExitCode {
    finish(run_show(args).await)
}

/// Runs `rm`.
pub(crate) async fn rm(args: RmArgs) -> ExitCode {
    finish(run_rm(args).await)
}

fn finish(outcome: Outcome) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", sanitize(&failure.message));
            ExitCode::from(failure.code)
        }
    }
}

/// The service, reached with the token of `ONCEFLIGHT_TOKEN`.
struct Service {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Service {
    fn new(remote: &Remote) -> Result<Self, Failure> {
        let url = reqwest::Url::parse(&remote.url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| {
                Failure::new(format!(
                    "error: --url must be an http:// URL such as http://127.0.0.1:7700, got {:?}",
                    onceflight_core::backend::redact_url(&remote.url)
                ))
            })?;
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| Failure::new(format!("error: cannot build the HTTP client: {e}")))?;
        let token = std::env::var(TOKEN_VAR)
            .ok()
            .filter(|token| !token.is_empty());
        Ok(Self {
            http,
            base: url.as_str().trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// Sends `method path` (with `query`) and reads the whole answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: Option<&ListParams>,
    ) -> Result<(StatusCode, Vec<u8>), Failure> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(query) = query {
            request = request.query(query);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let unreachable = |e: reqwest::Error| {
            Failure::new(format!(
                "error: cannot reach the service at {}: {}",
                onceflight_core::backend::redact_url(&self.base),
                e.without_url()
            ))
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        Ok((status, body.to_vec()))
    }
}

/// The failure of an answer other than the one expected: the service's
/// error code and message.
fn refused(status: StatusCode, body: &[u8]) -> Failure {
    let mut failure = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => Failure::new(format!(
            "error: {} ({}): {}",
            error.code,
            status.as_u16(),
            error.message
        )),
        Err(_) => Failure::new(format!(
            "error: the service answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    };
    if status == StatusCode::UNAUTHORIZED {
        failure
            .message
            .push_str(&format!("\n(the bearer token is read from {TOKEN_VAR})"));
    }
    failure
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| {
        Failure::new(format!(
            "error: the service's {what} answer is not one: {e}"
        ))
    })
}

/// Characters kept as they are in a key's path segment (RFC 3986's
/// unreserved set), as `HttpStore` sends keys.
const KEY_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The path of `key`'s record.
fn record_path(key: &str) -> Result<String, Failure> {
    if key.is_empty() || matches!(key, "." | "..") {
        // URL parsers resolve `.` and `..` as path segments before sending.
        return Err(Failure {
            message: format!("error: the key {key:?} cannot be sent in a URL"),
            code: 2,
        });
    }
    Ok(format!(
        "/v1/requests/{}",
        utf8_percent_encode(key, KEY_SEGMENT)
    ))
}

async fn run_ls(args: LsArgs) -> Outcome {
    let service = Service::new(&args.remote)?;
    let mut params = ListParams {
        state: args.state.map(|state| {
            match state {
                StateArg::Processing => "processing",
                StateArg::Completed => "completed",
                StateArg::Failed => "failed",
            }
            .to_owned()
        }),
        stuck: args.stuck.then_some(true),
        retry: args.retry.map(|retry| {
            match retry {
                RetryArg::Allowed => "allowed",
                RetryArg::None => "none",
            }
            .to_owned()
        }),
        kind: args.kind,
        prefix: args.prefix,
        order: Some(
            match args.order {
                OrderArg::Newest => "newest",
                OrderArg::Oldest => "oldest",
            }
            .to_owned(),
        ),
        limit: Some(args.limit),
        cursor: None,
    };
    let mut records = Vec::new();
    let mut stdout = std::io::stdout().lock();
    loop {
        let (status, body) = service
            .send(Method::GET, "/v1/requests", Some(&params))
            .await?;
        if status != StatusCode::OK {
            return Err(refused(status, &body));
        }
        let page: ListResponse = decode(&body, "listing")?;
        if args.json {
            // Lines are written as pages arrive, so `--all` over a large
            // store streams instead of holding everything.
            for record in &page.records {
                let line = serde_json::to_string(record).unwrap_or_default();
                let _ = writeln!(stdout, "{}", json_safe(&line));
            }
        } else {
            records.extend(page.records);
        }
        match page.next_cursor {
            Some(cursor) if args.all => params.cursor = Some(cursor),
            Some(_) => {
                if !args.json {
                    let _ = stdout.write_all(table(&records, Utc::now()).as_bytes());
                }
                eprintln!("(more records: pass --all to follow the cursor)");
                return Ok(());
            }
            None => break,
        }
    }
    if !args.json {
        let _ = stdout.write_all(table(&records, Utc::now()).as_bytes());
    }
    Ok(())
}

async fn run_show(args: ShowArgs) -> Outcome {
    let service = Service::new(&args.remote)?;
    let path = record_path(&args.key)?;
    let (status, body) = service.send(Method::GET, &path, None).await?;
    match status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            return Err(Failure::new(format!("not found: {}", args.key)));
        }
        _ => return Err(refused(status, &body)),
    }
    let record: serde_json::Value = decode(&body, "record")?;
    let text = if args.json {
        json_safe(&serde_json::to_string_pretty(&record).unwrap_or_default())
    } else {
        let record: RecordBody = decode(&body, "record")?;
        describe(&record, Utc::now())
    };
    println!("{text}");
    Ok(())
}

async fn run_rm(args: RmArgs) -> Outcome {
    let service = Service::new(&args.remote)?;
    let path = record_path(&args.key)?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(Failure {
                message: format!(
                    "refusing to delete {} without --yes: stdin is not a terminal to ask on",
                    args.key
                ),
                code: 2,
            });
        }
        eprint!("Delete {}? [y/N] ", sanitize(&args.key));
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            eprintln!("not deleted");
            return Ok(());
        }
    }
    let (status, body) = service.send(Method::DELETE, &path, None).await?;
    match status {
        StatusCode::NO_CONTENT => {
            println!("deleted {}", sanitize(&args.key));
            Ok(())
        }
        StatusCode::NOT_FOUND => Err(Failure::new(format!("not found: {}", args.key))),
        _ => Err(refused(status, &body)),
    }
}

/// `text` safe to print on a terminal: control characters (escape, carriage
/// return, backspace, line breaks, the C1 set) and the bidirectional
/// overrides that reorder what is shown are written as escapes instead.
pub(crate) fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\n' {
            // Line breaks of our own messages are kept; those inside values
            // never reach here unescaped (see `cell`).
            out.push(c);
        } else if unsafe_to_show(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One table cell or value line: like [`sanitize`], line breaks included.
fn cell(text: &str) -> String {
    sanitize(&text.replace('\n', "\\n"))
}

fn unsafe_to_show(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// JSON text safe to print: JSON already escapes C0 controls inside
/// strings, so every other unsafe character (C1 controls, bidirectional
/// overrides) can only be inside a string too, where `\uXXXX` means the
/// same character. The output is the same JSON value.
pub(crate) fn json_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c != '\n' && unsafe_to_show(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// A duration for people: `850ms`, `42s`, `5m12s`, `3h04m`, `2d03h`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        format!("{}ms", d.as_millis())
    } else if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if secs < 86_400 {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else {
        format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600)
    }
}

/// How long before `now` the timestamp `at` was, or `?` when it is not one.
fn ago(at: &str, now: DateTime<Utc>) -> String {
    DateTime::parse_from_rfc3339(at)
        .ok()
        .and_then(|at| (now - at.with_timezone(&Utc)).to_std().ok())
        .map_or_else(|| "?".to_owned(), human)
}

/// The lease column: time left, `expired`, or `-` for a terminal record.
fn lease(record: &RecordBody) -> String {
    if record.state != "processing" {
        return "-".to_owned();
    }
    if record.lease_expired {
        return "expired".to_owned();
    }
    record
        .lease_ms
        .map_or_else(|| "?".to_owned(), |ms| human(Duration::from_millis(ms)))
}

fn truncated(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// The records as an aligned table, one line each, every cell sanitized.
fn table(records: &[RecordBody], now: DateTime<Utc>) -> String {
    let header = [
        "KEY", "KIND", "STATE", "ATTEMPT", "OWNER", "LEASE", "AGE", "UPDATED", "ERROR",
    ];
    let rows: Vec<[String; 9]> = records
        .iter()
        .map(|r| {
            [
                cell(&r.key),
                cell(&r.kind),
                cell(&r.state),
                format!("{}/{}", r.attempt, r.max_attempts),
                r.owner.as_deref().map_or_else(|| "-".to_owned(), cell),
                lease(r),
                ago(&r.created_at, now),
                ago(&r.updated_at, now),
                r.error.as_ref().map_or_else(String::new, |e| {
                    cell(&truncated(&e.message, MAX_ERROR_CELL))
                }),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |values: &[&str]| {
        let mut text = String::new();
        for (i, (value, width)) in values.iter().zip(widths).enumerate() {
            if i + 1 == values.len() {
                text.push_str(value);
            } else {
                let pad = width - value.chars().count();
                let _ = write!(text, "{value}{}  ", " ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// A record as a readable block, its result pretty-printed.
fn describe(r: &RecordBody, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<12} {value}");
    };
    field("key", cell(&r.key));
    field("kind", cell(&r.kind));
    field("state", cell(&r.state));
    field("attempt", format!("{} of {}", r.attempt, r.max_attempts));
    field("token", r.token.to_string());
    field(
        "owner",
        r.owner.as_deref().map_or_else(|| "-".to_owned(), cell),
    );
    field(
        "fingerprint",
        r.fingerprint
            .as_deref()
            .map_or_else(|| "-".to_owned(), cell),
    );
    field("lease", lease(r));
    field(
        "created",
        format!("{} ({} ago)", cell(&r.created_at), ago(&r.created_at, now)),
    );
    field(
        "updated",
        format!("{} ({} ago)", cell(&r.updated_at), ago(&r.updated_at, now)),
    );
    if let Some(at) = &r.completed_at {
        field("completed", cell(at));
    }
    if let Some(at) = &r.expires_at {
        field("forgotten", format!("{} (retention)", cell(at)));
    }
    if let Some(error) = &r.error {
        field(
            "error",
            format!(
                "{} ({})",
                cell(&error.message),
                if error.retryable {
                    "retryable"
                } else {
                    "final"
                }
            ),
        );
        if r.state == "failed" {
            field(
                "retry",
                r.retry_after_ms.map_or_else(
                    || "none".to_owned(),
                    |ms| format!("allowed in {}", human(Duration::from_millis(ms))),
                ),
            );
        }
    }
    if let Some(result) = &r.result {
        let pretty = serde_json::from_str::<serde_json::Value>(result.get())
            .ok()
            .and_then(|value| serde_json::to_string_pretty(&value).ok())
            .unwrap_or_else(|| result.get().to_owned());
        out.push_str("result:\n");
        for line in json_safe(&pretty).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_cannot_drive_the_terminal() {
        let hostile = "a\u{1b}[2J\rb\u{8}\u{9b}31m\u{202e}c\nd";
        let shown = cell(hostile);
        assert!(
            !shown.chars().any(unsafe_to_show),
            "{shown:?} still holds a control character"
        );
        assert!(
            shown.contains("\\n"),
            "line breaks are shown escaped: {shown}"
        );
        let json = serde_json::to_string(&serde_json::json!({ "k": hostile })).unwrap();
        let safe = json_safe(&json);
        assert!(!safe.chars().any(unsafe_to_show), "{safe:?}");
        let back: serde_json::Value = serde_json::from_str(&safe).expect("still JSON");
        assert_eq!(back["k"], hostile, "the same value");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(312)), "5m12s");
        assert_eq!(human(Duration::from_secs(3 * 3600 + 240)), "3h04m");
        assert_eq!(human(Duration::from_secs(2 * 86_400 + 3 * 3600)), "2d03h");
    }
}

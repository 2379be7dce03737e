//! The operator's commands (`onceflight ls`, `show`, `rm`) as an operator
//! runs them: the real binary against a real server, with stdin not a
//! terminal.

use std::process::Output;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Server, call, claim_and_complete, client, launch, onceflight};

const TOKEN: &str = "team-cli-token-0123456789";

/// `onceflight <args> --url <server>`, with `ONCEFLIGHT_TOKEN` set to
/// `token` when given.
fn run(server: &Server, args: &[&str], token: Option<&str>) -> Output {
    let url = server.base_url();
    let mut command = onceflight(args);
    command.args(["--url", &url]);
    if let Some(token) = token {
        command.env("ONCEFLIGHT_TOKEN", token);
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("run onceflight {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the command exited with `code`; returns its stdout.
#[track_caller]
fn expect_exit(output: &Output, code: i32, what: &str) -> String {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: exit code; stdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// A completed, a failed and a processing record (and a key with a
/// right-to-left override) on `server`.
async fn records(server: &Server, bearer: Option<&str>) {
    let http = client();
    let post = |path: String, body: Value| {
        let http = http.clone();
        let url = server.url(&path);
        async move { call(&http, Method::POST, &url, Some(body), bearer).await }
    };
    if bearer.is_none() {
        claim_and_complete(
            &http,
            server,
            "image%7Cdone",
            json!({"kind": "image"}),
            &json!({"url": "https://example.com/a.png", "n": [1, 2]}),
        )
        .await;
    }
    let failed = post(
        "/v1/requests/image%7Cbroken/claim".to_owned(),
        json!({"kind": "image", "owner": "worker-7"}),
    )
    .await;
    failed.expect(StatusCode::CREATED);
    post(
        "/v1/requests/image%7Cbroken/fail".to_owned(),
        json!({"token": failed.token(), "message": "bad\u{1b}[2J prompt", "retryable": false}),
    )
    .await
    .expect(StatusCode::OK);
    post(
        "/v1/requests/video%7Crunning/claim".to_owned(),
        json!({"kind": "video", "lease_ms": 60_000}),
    )
    .await
    .expect(StatusCode::CREATED);
    post(
        "/v1/requests/x%E2%80%AEevil/claim".to_owned(),
        json!({"kind": "image"}),
    )
    .await
    .expect(StatusCode::CREATED);
}

/// `ls` prints an aligned table with every column, filters, follows
/// cursors, and prints JSON lines with `--json`; nothing it prints holds a
/// raw control character or direction override.
#[tokio::test]
async fn ls_prints_a_table_or_json_lines() {
    let server = launch().start().await;
    records(&server, None).await;

    let table = expect_exit(&run(&server, &["ls"], None), 0, "ls");
    let mut lines = table.lines();
    let header = lines.next().expect("a header line");
    for column in [
        "KEY", "KIND", "STATE", "ATTEMPT", "OWNER", "LEASE", "AGE", "UPDATED", "ERROR",
    ] {
        assert!(header.contains(column), "{column} in {header:?}");
    }
    let state_at = header.find("STATE").expect("STATE");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 4, "{table}");
    for row in &rows {
        let state = row.get(state_at..).unwrap_or_default();
        assert!(
            ["processing", "completed", "failed"]
                .iter()
                .any(|s| state.starts_with(s)),
            "the STATE column is aligned: {row:?}"
        );
    }
    assert!(table.contains("image|done"), "{table}");
    assert!(table.contains("worker-7"), "the owner: {table}");
    assert!(
        table.contains("bad\\u{1b}[2J prompt"),
        "the error, escaped: {table}"
    );
    assert!(
        !table.contains('\u{1b}') && !table.contains('\u{202e}'),
        "nothing raw reaches the terminal: {table:?}"
    );

    let failed = expect_exit(
        &run(&server, &["ls", "--state", "failed"], None),
        0,
        "ls --state failed",
    );
    assert_eq!(failed.lines().count(), 2, "{failed}");
    assert!(failed.contains("image|broken"), "{failed}");
    let kind = expect_exit(
        &run(&server, &["ls", "--kind", "video"], None),
        0,
        "ls --kind",
    );
    assert!(
        kind.contains("video|running") && kind.lines().count() == 2,
        "{kind}"
    );
    let retry = expect_exit(
        &run(&server, &["ls", "--retry", "none", "--json"], None),
        0,
        "ls --retry none",
    );
    assert_eq!(retry.lines().count(), 1, "{retry}");

    let json_lines = expect_exit(
        &run(
            &server,
            &["ls", "--json", "--limit", "1", "--all", "--order", "oldest"],
            None,
        ),
        0,
        "ls --json --all",
    );
    let keys: Vec<String> = json_lines
        .lines()
        .map(|line| {
            let record: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
            assert_eq!(record["result"], Value::Null, "listings carry no result");
            record["key"].as_str().expect("a key").to_owned()
        })
        .collect();
    assert_eq!(
        keys,
        [
            "image|done",
            "image|broken",
            "video|running",
            "x\u{202e}evil"
        ],
        "every page, oldest first"
    );
    assert!(!json_lines.contains('\u{202e}'), "escaped in JSON too");

    let one_page = run(&server, &["ls", "--limit", "1"], None);
    expect_exit(&one_page, 0, "ls --limit 1");
    assert!(
        text(&one_page.stderr).contains("--all"),
        "says there is more: {}",
        text(&one_page.stderr)
    );

    let refused = run(&server, &["ls", "--state", "completed", "--stuck"], None);
    expect_exit(&refused, 1, "a filter the service refuses");
    assert!(
        text(&refused.stderr).contains("invalid_request"),
        "{}",
        text(&refused.stderr)
    );
}

/// `show` prints a readable block with the result pretty-printed, or the
/// record's JSON; `rm` deletes with `--yes`, refuses without it when stdin
/// is not a terminal, and a missing key is "not found" with exit code 1.
#[tokio::test]
async fn show_and_rm() {
    let server = launch().start().await;
    records(&server, None).await;

    let shown = expect_exit(&run(&server, &["show", "image|done"], None), 0, "show");
    for expected in [
        "image|done",
        "completed",
        "result:",
        "\"url\": \"https://example.com/a.png\"",
    ] {
        assert!(shown.contains(expected), "{expected:?} in:\n{shown}");
    }
    let json = expect_exit(
        &run(&server, &["show", "image|done", "--json"], None),
        0,
        "show --json",
    );
    let record: Value = serde_json::from_str(&json).expect("show --json prints JSON");
    assert_eq!(record["result"]["n"], json!([1, 2]), "{record}");
    let broken = expect_exit(
        &run(&server, &["show", "image|broken"], None),
        0,
        "show failed",
    );
    assert!(
        broken.contains("final") && !broken.contains('\u{1b}'),
        "{broken:?}"
    );

    let missing = run(&server, &["show", "image|nothing"], None);
    expect_exit(&missing, 1, "show of a missing key");
    assert!(
        text(&missing.stderr).contains("not found"),
        "{}",
        text(&missing.stderr)
    );

    let unasked = run(&server, &["rm", "image|done"], None);
    expect_exit(&unasked, 2, "rm without --yes and no terminal");
    assert!(
        text(&unasked.stderr).contains("--yes"),
        "{}",
        text(&unasked.stderr)
    );
    expect_exit(
        &run(&server, &["show", "image|done"], None),
        0,
        "still there",
    );

    let removed = expect_exit(
        &run(&server, &["rm", "image|done", "--yes"], None),
        0,
        "rm --yes",
    );
    assert!(removed.contains("deleted"), "{removed}");
    expect_exit(&run(&server, &["show", "image|done"], None), 1, "gone");
    let again = run(&server, &["rm", "image|done", "--yes"], None);
    expect_exit(&again, 1, "rm of a missing key");
    assert!(
        text(&again.stderr).contains("not found"),
        "{}",
        text(&again.stderr)
    );
}

/// With tokens configured, the token comes from `ONCEFLIGHT_TOKEN`: a wrong
/// or missing one is the service's `unauthorized`, the right one lists its
/// own namespace's keys as the caller wrote them.
#[tokio::test]
async fn the_token_comes_from_the_environment() {
    let server = launch()
        .env("ONCEFLIGHT_TOKENS", &format!("team:{TOKEN}"))
        .start()
        .await;
    records(&server, Some(TOKEN)).await;
    for token in [None, Some("not-the-token-0123456789")] {
        let refused = run(&server, &["ls"], token);
        expect_exit(&refused, 1, "a wrong token");
        let stderr = text(&refused.stderr);
        assert!(
            stderr.contains("unauthorized") && stderr.contains("ONCEFLIGHT_TOKEN"),
            "{stderr}"
        );
    }
    let listed = expect_exit(&run(&server, &["ls"], Some(TOKEN)), 0, "the right token");
    assert!(listed.contains("image|broken"), "{listed}");
    assert!(
        !listed.contains("team/"),
        "keys come without the namespace: {listed}"
    );
}

//! Starts that fail, `--help` and `Debug` output say what they must
//! without a secret.

use std::time::Duration;

use onceflight_server::auth::Tokens;
use onceflight_server::stores::{self, StoreOptions};
use onceflight_server::{AppState, Limits};

use super::{assert_no_secret, secret, temp_file};
use crate::common::{free_port, onceflight};

/// Runs `onceflight <args>` (with `envs`) that must fail: waits (bounded)
/// for its exit and returns its output.
async fn failed_start_with(args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut launch = crate::common::launch().env("RUST_LOG", "trace");
    for (name, value) in envs {
        launch = launch.env(name, value);
    }
    // `Launch` runs `serve --bind <free port>` with these extra arguments;
    // a `migrate` is run by hand below.
    if args.first() == Some(&"migrate") {
        let mut command = onceflight(args);
        command.env("RUST_LOG", "trace");
        for (name, value) in envs {
            command.env(name, value);
        }
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || command.output()),
        )
        .await
        .expect("onceflight migrate exits within 60 s")
        .expect("join")
        .expect("run onceflight migrate");
        assert!(!output.status.success(), "onceflight {args:?} must fail");
        return format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut server = launch.args(&args[1..]).spawn();
    let status = server.wait_exit(Duration::from_secs(60)).await;
    let logs = server.logs();
    assert!(
        !status.success(),
        "onceflight {args:?} must fail to start, exited {status}:\n{logs}"
    );
    assert!(
        logs.contains("Error"),
        "onceflight {args:?} says why it failed:\n{logs}"
    );
    logs
}

pub(super) async fn failed_start(args: &[&str]) -> String {
    failed_start_with(args, &[]).await
}

/// Starts that fail — unreachable, malformed, unknown or misconfigured
/// stores whose URLs carry passwords, and bad token lists — say why without
/// the secret.
#[tokio::test]
async fn failing_starts_never_show_a_secret() {
    let pw = secret("startpw");
    let pw2 = secret("listenpw");
    // Nothing listens on a port that was free a moment ago: refused at
    // once, and nothing leaves the machine.
    let closed = free_port();
    let cases: Vec<Vec<String>> = vec![
        vec![format!("postgres://app:{pw}@127.0.0.1:{closed}/db")],
        vec![format!(
            "postgresql://app@127.0.0.1:{closed}/db?password={pw}&sslmode=disable"
        )],
        vec![format!("postgres://app:{pw}@127.0.0.1:notaport/db")],
        vec![format!("postgres://app:{pw}@[::1/db")],
        vec![
            format!("postgres://app:{pw}@127.0.0.1:{closed}/db"),
            "--pg-schema".to_owned(),
            "Bad-Schema;DROP".to_owned(),
        ],
        vec![
            format!("postgres://app:{pw}@127.0.0.1:{closed}/db"),
            "--pg-listen-url".to_owned(),
            format!("postgres://app:{pw2}@127.0.0.1:{closed}/db"),
        ],
        vec![format!("redis://:{pw}@127.0.0.1:{closed}/")],
        vec![format!("redis://app:{pw}@127.0.0.1:{closed}/0")],
        vec![format!("rediss://:{pw}@127.0.0.1:{closed}/")],
        vec![format!("redis://:{pw}@127.0.0.1:notaport/")],
        vec![format!(
            "redis://:{pw}@127.0.0.1:{closed},redis://:{pw2}@127.0.0.1:{}",
            free_port()
        )],
        vec![
            format!("redis://:{pw}@127.0.0.1:{closed}/"),
            "--redis-prefix".to_owned(),
            "{bad}".to_owned(),
        ],
        vec![format!("ftp://app:{pw}@127.0.0.1:{closed}/")],
        // Mistyped URLs: no scheme, and passwords with unencoded `,`, `/`,
        // `@` or `?`, which a URL parser reads as something else.
        vec![format!("app:{pw}@127.0.0.1")],
        vec![format!("postgres://app:{pw},x@127.0.0.1:{closed}/db")],
        vec![format!("postgres://app:{pw}/x@127.0.0.1:{closed}/db")],
        vec![format!("postgres://app:{pw}@x@127.0.0.1:{closed}/db")],
        vec![format!("postgres://app:{pw}?x@127.0.0.1:{closed}/db")],
        vec![format!("redis://:{pw},x@127.0.0.1:{closed}/")],
        vec![format!("redis://:{pw}/x@127.0.0.1:{closed}/")],
    ];
    for case in &cases {
        let mut args = vec!["serve", "--store"];
        args.extend(case.iter().map(String::as_str));
        let output = failed_start(&args).await;
        assert_no_secret(&format!("onceflight {args:?}"), &output, &[&pw, &pw2]);
        // The same store given through the environment.
        let mut env_args = vec!["serve"];
        env_args.extend(case[1..].iter().map(String::as_str));
        let output = failed_start_with(&env_args, &[("ONCEFLIGHT_STORE", &case[0])]).await;
        assert_no_secret(
            &format!("onceflight {env_args:?} with ONCEFLIGHT_STORE"),
            &output,
            &[&pw, &pw2],
        );
        if case.len() == 1 {
            let output = failed_start(&["migrate", "--store", &case[0]]).await;
            assert_no_secret(
                &format!("onceflight migrate {case:?}"),
                &output,
                &[&pw, &pw2],
            );
        }
    }

    // Bad token lists: the error names the entry, never a token.
    let good = secret("goodtok");
    let bad = secret("badtok");
    for list in [
        format!("a:{good},Bad-Namespace:{bad}"),
        format!("a:{good},b:{good}"),
        format!("a:{good},{bad}"),
        format!("a:{good},b:{bad} {bad}"),
        format!("a {good}"),
    ] {
        let output = failed_start_with(&["serve"], &[("ONCEFLIGHT_TOKENS", &list)]).await;
        assert_no_secret(
            &format!("ONCEFLIGHT_TOKENS={list:?}"),
            &output,
            &[&good, &bad],
        );
    }
    for text in [
        format!("a {good}\nBad-Namespace {bad}\n"),
        format!("a {good}\nb {good}\n"),
        format!("a:{good}\n"),
        format!("a {good}\n{bad}\n"),
    ] {
        let file = temp_file("badtokens", &text);
        let path = file.to_str().expect("a UTF-8 path").to_owned();
        let output = failed_start(&["serve", "--tokens-file", &path]).await;
        assert_no_secret(
            &format!("the tokens file {text:?}"),
            &output,
            &[&good, &bad],
        );
        let _ = std::fs::remove_file(file);
    }
}

/// `--help` never shows the secret values of the environment variables that
/// configure it.
#[tokio::test]
async fn help_never_shows_secret_environment_values() {
    let pw = secret("helppw");
    let token = secret("helptok");
    for args in [
        &["serve", "--help"][..],
        &["migrate", "--help"],
        &["--help"],
    ] {
        let mut command = onceflight(args);
        command
            .env("ONCEFLIGHT_STORE", format!("postgres://app:{pw}@db/x"))
            .env(
                "ONCEFLIGHT_PG_LISTEN_URL",
                format!("postgres://app:{pw}@db/x"),
            )
            .env("ONCEFLIGHT_TOKENS", format!("a:{token}"));
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("run onceflight --help");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{args:?}: {text}");
        assert!(text.contains("Usage"), "{args:?} prints help: {text}");
        assert_no_secret(&format!("onceflight {args:?}"), &text, &[&pw, &token]);
    }
}

/// `Debug` and `Display` of the configuration and of start-up errors, and
/// of the service's whole state, leave secrets out.
#[tokio::test]
async fn debug_output_never_shows_a_secret() {
    let pw = secret("debugpw");
    let token = secret("debugtok");
    let secrets = [pw.as_str(), token.as_str()];

    let tokens = Tokens::from_env_list(&format!("a:{token}")).expect("valid tokens");
    assert_no_secret("Tokens", &format!("{tokens:?}"), &secrets);
    let tokens = Tokens::from_file_text(&format!("a {token}\n")).expect("valid tokens");
    assert_no_secret("Tokens from a file", &format!("{tokens:?}"), &secrets);
    for list in [
        format!("Bad:{token}"),
        format!("a:{token},b:{token}"),
        format!("a:{token},{token}"),
    ] {
        let error = Tokens::from_env_list(&list).expect_err("an invalid list");
        assert_no_secret("TokensError", &format!("{error} {error:?}"), &secrets);
    }

    let options = StoreOptions {
        pg_listen_url: Some(format!("postgres://app:{pw}@db/x")),
        pg_schema: Some("s".to_owned()),
        redis_prefix: Some("p:".to_owned()),
        ..StoreOptions::default()
    };
    assert_no_secret("StoreOptions", &format!("{options:?}"), &secrets);

    let closed = free_port();
    for url in [
        format!("postgres://app:{pw}@127.0.0.1:{closed}/db"),
        format!("postgres://app:{pw}@127.0.0.1:notaport/db"),
        format!("postgresql://app@127.0.0.1:{closed}/db?password={pw}"),
        format!("redis://:{pw}@127.0.0.1:{closed}/"),
        format!("redis://:{pw}@127.0.0.1:notaport/"),
        format!("redis://:{pw}@127.0.0.1:{closed},redis://:{pw}@127.0.0.1:{closed}"),
        format!("ftp://app:{pw}@host/"),
        format!("app:{pw}@host"),
        format!("postgres://app:{pw},x@127.0.0.1:{closed}/db"),
        format!("postgres://app:{pw}/x@127.0.0.1:{closed}/db"),
        format!("redis://:{pw}?x@127.0.0.1:{closed}/"),
    ] {
        let error = tokio::time::timeout(Duration::from_secs(60), stores::open(&url, &options))
            .await
            .expect("opening an unreachable store gives up within 60 s")
            .expect_err("nothing to connect to");
        let shown = format!("{error} | {error:?}");
        let error = anyhow::Error::new(error);
        let chain = format!("{error:#} | {error:?}");
        assert_no_secret("OpenStoreError", &format!("{shown} | {chain}"), &secrets);
    }

    let memory = stores::open("memory://", &StoreOptions::default())
        .await
        .expect("the memory store");
    let state = AppState::new(memory, tokens, Limits::default());
    assert_no_secret(
        "AppState",
        &format!("{state:?} {:?}", state.tokens()),
        &secrets,
    );
}

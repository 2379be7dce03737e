//! Postgres passwords, in the store URL and the LISTEN URL, never show.

use onceflight_server::auth::Tokens;
use onceflight_server::stores::{self, StoreOptions};
use onceflight_server::{AppState, Limits};
use onceflight_test_support::unique_name;

use super::{assert_no_secret, run_and_grep, secret};

/// A `DATABASE_URL` with a password of this test's own (or the one it has),
/// plus the secret given to the LISTEN URL, and the secret as a URL query
/// parameter.
fn postgres_url_with_password(url: &str, password: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        // It has a password already: that password is the secret.
        Some((userinfo, _)) if userinfo.contains(':') => {
            let existing = userinfo.split_once(':').map(|(_, p)| p).unwrap_or_default();
            (url.to_owned(), existing.to_owned())
        }
        Some((user, host)) => (
            format!("{scheme}://{user}:{password}@{host}{tail}"),
            password.to_owned(),
        ),
        None => {
            let joiner = if tail.contains('?') { '&' } else { '?' };
            (
                format!("{url}{joiner}password={password}"),
                password.to_owned(),
            )
        }
    }
}

/// The Postgres store's password (and the LISTEN URL's) never show.
#[tokio::test]
async fn postgres_password_never_shows() {
    let Some(database_url) = onceflight_test_support::backend_url("DATABASE_URL") else {
        return;
    };
    let (store_url, store_secret) = postgres_url_with_password(&database_url, &secret("pgpw"));
    let (listen_url, listen_secret) =
        postgres_url_with_password(&database_url, &secret("pglisten"));
    assert!(
        store_secret.len() >= 8,
        "DATABASE_URL's own password is too short to grep for reliably"
    );
    let token = secret("pgtok");
    for format in ["human", "json"] {
        let launch = crate::common::launch()
            .env("ONCEFLIGHT_TOKENS", &format!("a:{token}"))
            .env("ONCEFLIGHT_PG_LISTEN_URL", &listen_url)
            .args(&[
                "--store",
                &store_url,
                "--pg-schema",
                &unique_name("t_secrets"),
                "--log-format",
                format,
            ]);
        let logs = run_and_grep(launch, &[&token], &[&store_secret, &listen_secret, &token]).await;
        assert!(
            logs.contains("postgres"),
            "the store is described in the logs, credentials removed:\n{logs}"
        );
        assert!(
            logs.contains("sqlx::query"),
            "RUST_LOG=trace is in effect: sqlx logs every statement:\n{logs}"
        );
    }
}

/// `Debug` of the Postgres configuration, of a connected store and of the
/// state serving it leave the passwords out.
#[tokio::test]
async fn postgres_debug_output_never_shows_a_password() {
    let Some(database_url) = onceflight_test_support::backend_url("DATABASE_URL") else {
        return;
    };
    let (url, pw) = postgres_url_with_password(&database_url, &secret("pgdebug"));
    let config = onceflight_store_postgres::PgConfig::new(url.as_str())
        .with_listen_url(url.as_str())
        .with_schema(unique_name("t_secrets"));
    assert_no_secret("PgConfig", &format!("{config:?}"), &[&pw]);
    let options = StoreOptions {
        pg_schema: Some(unique_name("t_secrets")),
        pg_listen_url: Some(url.clone()),
        pg_pool_size: Some(2),
        ..StoreOptions::default()
    };
    let store = stores::open(&url, &options).await.expect("open the store");
    assert_no_secret("PgStore", &format!("{store:?}"), &[&pw]);
    let state = AppState::new(store, Tokens::default(), Limits::default());
    assert_no_secret("AppState on Postgres", &format!("{state:?}"), &[&pw]);
}

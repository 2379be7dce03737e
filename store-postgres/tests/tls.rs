//! TLS as managed Postgres asks for it: `sslmode=require` encrypts,
//! `verify-full` with `sslrootcert=<private CA>` checks the certificate (the
//! conformance suite runs that way in `tls_conformance.rs`), and a wrong CA
//! or a host name the certificate does not name is refused at connect with
//! a clear error that does not show the password.

mod common;

use onceflight_core::{ClaimOptions, Error, Kind, RequestKey, RequestStore};
use onceflight_store_postgres::{PgConfig, PgStore};
use onceflight_test_support::backend_available;

const PASSWORD: &str = "tls-test-s3cret";

/// `url` with a password added to its user (the test server trusts every
/// connection, so it is only there to be hidden from errors).
fn with_password(url: &str) -> String {
    url.replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1)
}

async fn refused(url: String) -> String {
    let error = PgStore::connect(PgConfig::new(url).with_schema("tls_refused"))
        .await
        .expect_err("the connection must be refused");
    let message = error.to_string();
    assert!(
        matches!(error, Error::InvalidInput { .. }),
        "a certificate problem is a configuration error, got {error:?}"
    );
    assert!(
        !message.contains(PASSWORD) && !format!("{error:?}").contains(PASSWORD),
        "the password must not be shown: {message}"
    );
    assert!(
        message.contains("TLS") && message.contains("sslrootcert"),
        "the error must say it is TLS and what to check: {message}"
    );
    message
}

/// `sslmode=require` encrypts without checking the certificate: it works
/// with a private CA and no root given.
#[tokio::test]
async fn sslmode_require_works_without_a_root() {
    if !backend_available("PG_TLS_URL") {
        return;
    }
    let store = PgStore::connect(
        PgConfig::new(common::tls_url("require", None)).with_schema(common::fresh_schema()),
    )
    .await
    .expect("connect with sslmode=require");
    store.migrate().await.expect("migrate");
    let key = RequestKey::parse("image|tls").unwrap();
    let claim = store
        .claim_or_get(&key, &ClaimOptions::new(Kind::parse("image").unwrap()))
        .await
        .expect("claim over TLS");
    assert!(
        matches!(claim, onceflight_core::Claim::Acquired(_)),
        "a fresh key is acquired: {claim:?}"
    );
}

/// A root that did not sign the server's certificate is refused.
#[tokio::test]
async fn a_wrong_certificate_authority_is_refused() {
    if !backend_available("PG_TLS_URL") {
        return;
    }
    let message = refused(with_password(&common::tls_url(
        "verify-full",
        Some("PG_TLS_OTHER_CA_FILE"),
    )))
    .await;
    // rustls's own words, not the hint's, which every refusal carries.
    assert!(
        message.contains("UnknownIssuer"),
        "the error names the certificate problem: {message}"
    );
}

/// The right root, but a host name the certificate does not name.
#[tokio::test]
async fn a_wrong_host_name_is_refused() {
    if !backend_available("PG_TLS_URL") {
        return;
    }
    // The certificate names `localhost` only; 127.0.0.1 is the same server.
    let url = with_password(&common::tls_url("verify-full", Some("PG_TLS_CA_FILE"))).replacen(
        "@localhost:",
        "@127.0.0.1:",
        1,
    );
    let message = refused(url).await;
    assert!(
        message.contains("not valid for name") || message.contains("NotValidForName"),
        "the error names the host-name problem: {message}"
    );
}

//! The dashboard's files (`/ui`): served without a token, each with its
//! content type and the headers that keep data shown on the page from ever
//! running as script there. What the page does is tested in a real browser
//! (`server/tests/browser`); this only holds the server's side.

use axum::http::{StatusCode, header};
use onceflight_server::Limits;
use onceflight_server::auth::Tokens;
use onceflight_server::ui::CONTENT_SECURITY_POLICY;

use super::{ALPHA, Api};

/// Each path of the dashboard and the content type it must carry.
const FILES: [(&str, &str); 5] = [
    ("/ui", "text/html; charset=utf-8"),
    ("/ui/", "text/html; charset=utf-8"),
    ("/ui/app.js", "text/javascript; charset=utf-8"),
    ("/ui/app.css", "text/css; charset=utf-8"),
    ("/ui/favicon.svg", "image/svg+xml"),
];

#[tokio::test]
async fn every_file_is_served_with_its_type_and_the_security_headers() {
    // Tokens are configured and none is sent: the page itself needs none.
    let api = Api::with(
        Tokens::from_env_list(&format!("alpha:{ALPHA}")).expect("a valid token list"),
        Limits::default(),
    );
    for (path, content_type) in FILES {
        let reply = api.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "GET {path}: {}", reply.text);
        for (name, expected) in [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ] {
            assert_eq!(
                reply.headers.get(&name).and_then(|v| v.to_str().ok()),
                Some(expected),
                "GET {path}: header {name}"
            );
        }
        assert!(!reply.text.is_empty(), "GET {path}: an empty body");
    }
}

#[test]
fn the_policy_allows_nothing_inline_and_nothing_foreign() {
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'none'",
        "base-uri 'none'",
    ] {
        assert!(
            CONTENT_SECURITY_POLICY
                .split(';')
                .any(|d| d.trim() == directive),
            "the policy lacks {directive:?}: {CONTENT_SECURITY_POLICY}"
        );
    }
    assert!(
        !CONTENT_SECURITY_POLICY.contains("unsafe-"),
        "the policy must not allow anything unsafe: {CONTENT_SECURITY_POLICY}"
    );
}

#[tokio::test]
async fn the_page_has_no_inline_script_or_style() {
    let page = Api::new().get("/ui").await.text;
    let lower = page.to_ascii_lowercase();
    let scripts: Vec<&str> = lower.split("<script").skip(1).collect();
    assert!(!scripts.is_empty(), "the page loads no script: {page}");
    for script in scripts {
        let tag = script.split('>').next().unwrap_or_default();
        assert!(
            tag.contains("src=\"/ui/"),
            "every script is loaded from /ui/, none is inline: <script{tag}>"
        );
        let body = script.split_once('>').map_or("", |(_, rest)| rest);
        assert!(
            body.starts_with("</script"),
            "a script element with a src has no body: <script{script}"
        );
    }
    assert!(
        !lower.contains("<style"),
        "no inline stylesheet (the policy forbids it)"
    );
    assert!(
        !lower.contains(" style="),
        "no style attribute (the policy forbids it)"
    );
    for handler in [
        " onclick=",
        " onload=",
        " onerror=",
        " onsubmit=",
        "javascript:",
    ] {
        assert!(
            !lower.contains(handler),
            "no inline event handler {handler:?} (the policy forbids it)"
        );
    }
    assert!(
        !lower.contains("http://") && !lower.contains("https://") && !lower.contains("//cdn"),
        "the page loads nothing from another origin"
    );
}

#[tokio::test]
async fn the_script_never_writes_html_from_strings() {
    let script = Api::new().get("/ui/app.js").await.text;
    for sink in [
        ".innerHTML",
        ".outerHTML",
        ".insertAdjacentHTML(",
        "document.write(",
        "eval(",
        "new Function(",
    ] {
        assert!(
            !script.contains(sink),
            "app.js uses {sink}: data must reach the DOM through textContent only"
        );
    }
}

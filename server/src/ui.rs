//! The dashboard at `/ui`: one page, its script, its stylesheet and an icon,
//! compiled into the binary so that a deployed server needs no files beside
//! it and no build step stands between editing `server/ui/` and running it.
//!
//! The page holds no data of its own. The browser fetches everything from
//! the API (`/v1/stats`, `/v1/requests`, `/metrics`) with the bearer token
//! the user enters, so these routes need no token: they serve the same bytes
//! to everyone.
//!
//! Every answer carries a strict Content-Security-Policy. The page renders
//! keys, owners, error messages and results that any client with a token can
//! choose, so the policy is the second line of defence behind the script's
//! rule of building the DOM with `textContent` only: no inline script or
//! style, nothing loaded from another origin, no framing, no form posts.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The Content-Security-Policy of every `/ui` answer.
///
/// `connect-src 'self'` keeps a script that got in anyway from sending the
/// token anywhere but this server; `img-src data:` is only for icons the
/// stylesheet might inline.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, to be merged into the API's router.
///
/// They are generic over the router's state because they read none of it.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(stylesheet))
        .route("/ui/favicon.svg", get(icon))
}

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");
const FAVICON_SVG: &str = include_str!("../ui/favicon.svg");

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn icon() -> Response {
    asset("image/svg+xml", FAVICON_SVG)
}

/// `body` with its content type and the headers every `/ui` answer carries.
///
/// `no-cache` (revalidate, not "never store") so that a browser left open
/// across an upgrade picks up the new page on its next load rather than
/// mixing an old page with a new script.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

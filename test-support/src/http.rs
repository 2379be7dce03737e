//! JSON requests against a served API: one [`Reply`] type for every test,
//! and [`call`], which holds every answer to the invariants of the API's
//! errors (never a 5xx; every 4xx carries `{"error": {"code", "message"}}`).

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// An HTTP client with a 60 s timeout, which drops idle connections before
/// the server's header timeout closes them (a request sent just as the
/// server closes its connection would fail).
///
/// # Panics
///
/// When the client cannot be built.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(4))
        .build()
        .expect("an HTTP client")
}

/// A reply: status, headers, the body parsed as JSON (`Null` if it is none
/// or not JSON) and the body as text.
#[derive(Debug)]
pub struct Reply {
    /// The request, as `METHOD url`, for messages.
    pub what: String,
    /// The status code.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as JSON, `Null` when it is empty or not JSON.
    pub json: Value,
    /// The body as it came, for messages and for bodies that are not JSON.
    pub text: String,
}

impl Reply {
    /// The JSON body, after asserting that the status is `status`.
    ///
    /// # Panics
    ///
    /// When the status is another.
    #[track_caller]
    pub fn expect(&self, status: StatusCode) -> &Value {
        assert_eq!(
            self.status, status,
            "{}: expected {status}, got {} {}",
            self.what, self.status, self.text
        );
        &self.json
    }

    /// Asserts that the reply is the error `code` with `status`.
    ///
    /// # Panics
    ///
    /// When it is not.
    #[track_caller]
    pub fn expect_error(&self, status: StatusCode, code: &str) {
        assert_eq!(
            (self.status, self.json["error"]["code"].as_str()),
            (status, Some(code)),
            "{}: expected {status} `{code}`, got {} {}",
            self.what,
            self.status,
            self.text
        );
    }

    /// The body's `token`, which must be there.
    ///
    /// # Panics
    ///
    /// When there is none.
    #[track_caller]
    pub fn token(&self) -> u64 {
        self.json["token"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no token in {}", self.what, self.text))
    }
}

/// Sends one request, with `body` as JSON and `bearer` as the token if given,
/// and checks the answer with [`checked_json`].
///
/// # Panics
///
/// When the request fails or the answer breaks [`checked_json`]'s rules.
pub async fn call(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
    bearer: Option<&str>,
) -> Reply {
    call_until_available(client, method, url, body, bearer, Duration::ZERO).await
}

/// As [`call`], except that a 503 (`store_unavailable`, the store not yet
/// answering) is asked again every 200 ms until `bound` has passed, as the
/// API asks of clients, for example while a store just back from an outage
/// replaces the connections the outage broke. A 503 past the bound fails as
/// any 5xx does.
///
/// # Panics
///
/// As [`call`].
pub async fn call_until_available(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
    bearer: Option<&str>,
    bound: Duration,
) -> Reply {
    let give_up = Instant::now() + bound;
    loop {
        let (what, status, headers, text) =
            send(client, method.clone(), url, body.as_ref(), bearer).await;
        if status == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let json = checked_json(&what, status.as_u16(), &text);
        return Reply {
            what,
            status,
            headers,
            json,
            text,
        };
    }
}

/// Sends one request, with `body` as JSON and `bearer` as the token if
/// given; returns it as `METHOD url`, and the answer's status, headers and
/// body, unchecked (for tests that expect a 5xx).
///
/// # Panics
///
/// When the request fails or its body cannot be read.
pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<&Value>,
    bearer: Option<&str>,
) -> (String, StatusCode, HeaderMap, String) {
    let what = format!("{method} {url}");
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.json(body);
    }
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = response.status();
    let headers = response.headers().clone();
    let text = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
    (what, status, headers, text)
}

/// The body of an answer as JSON (`Null` if it is none), after asserting
/// that the answer is no 5xx and that a 4xx carries the API's error body.
///
/// # Panics
///
/// When the answer is a 5xx, or a 4xx without the error body.
pub fn checked_json(what: &str, status: u16, text: &str) -> Value {
    let json = serde_json::from_str(text).unwrap_or(Value::Null);
    assert!(
        status < 500,
        "{what}: no response may be a 5xx here, got {status} {text}"
    );
    if (400..500).contains(&status) {
        assert!(
            json["error"]["code"].is_string() && json["error"]["message"].is_string(),
            "{what}: a {status} carries the error body, got {text}"
        );
    }
    json
}

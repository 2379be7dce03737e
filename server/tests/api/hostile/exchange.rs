//! A literal HTTP/1.1 exchange: exactly the bytes given go out, over a
//! fresh connection, and the answer comes back as a [`Reply`].

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{self, Reply};

/// Sends `method target` with `Authorization: Bearer <bearer>` if given.
pub(super) async fn send(
    addr: &str,
    method: &str,
    target: &str,
    bearer: Option<&str>,
    body: Option<String>,
) -> Reply {
    let header = bearer.map(|t| format!("Bearer {t}"));
    send_with(addr, method, target, header.as_deref(), body).await
}

/// Sends exactly `method target` over a fresh connection, with
/// `authorization` as the `Authorization` header and `body` as JSON if
/// given; asserts that the answer comes within 30 s, is never a 5xx, and
/// that every error carries `{"error": {"code", "message"}}`.
pub(super) async fn send_with(
    addr: &str,
    method: &str,
    target: &str,
    authorization: Option<&str>,
    body: Option<String>,
) -> Reply {
    let what = format!("{method} {target}");
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    if let Some(authorization) = authorization {
        request.push_str(&format!("authorization: {authorization}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() {
        request.push_str("content-type: application/json\r\n");
    }
    request.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    request.push_str(&body);
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        std::io::Result::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no end of headers in the answer"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| StatusCode::from_bytes(s.as_bytes()).ok())
        .unwrap_or_else(|| panic!("{what}: no status in {head:?}"));
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload);
    }
    let text =
        String::from_utf8(payload).unwrap_or_else(|e| panic!("{what}: a non-UTF-8 body: {e}"));
    let json = common::checked_json(&what, status.as_u16(), &text);
    Reply {
        what,
        status,
        headers: header_fields(&head),
        json,
        text,
    }
}

/// The header fields of a response head (the lines after its status line);
/// a line that is no header field is left out.
fn header_fields(head: &str) -> HeaderMap {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
            let value = HeaderValue::from_bytes(value.trim().as_bytes()).ok()?;
            Some((name, value))
        })
        .collect()
}

/// The body of a chunked transfer encoding.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return body;
        };
        let size = std::str::from_utf8(&raw[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            return body;
        }
        let start = end + 2;
        body.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
}

//! The HTTP/1 edge: accepting connections and holding hostile or broken
//! clients to time and size limits before they reach the router.
//!
//! `axum::serve` sets no header read timeout, so a client that trickles its
//! headers a byte at a time (slowloris) holds a socket and a task for ever,
//! and a fresh connection that never sends a request keeps a graceful
//! shutdown waiting. This module serves the router with hyper's HTTP/1
//! connection builder instead, configured from [`Limits`]:
//!
//! - a request's headers must arrive within `header_timeout`, counted from
//!   the moment the connection is ready for them (accepted, or the previous
//!   response written), else the connection is closed without an answer; the
//!   same timer closes keep-alive connections left idle that long;
//! - a header block over `max_header_bytes` or with more than `max_headers`
//!   fields is answered 431 by hyper and the connection closed;
//! - a request body must arrive whole within `body_timeout` of its headers
//!   ([`DeadlineBody`]); past it, reading the body fails with
//!   [`BodyTimedOut`], which the JSON extractor answers 408
//!   `request_timeout`, and the connection is closed;
//! - with `max_connections`, no more than that many connections are served
//!   at once; further clients wait in the kernel's accept queue.
//!
//! Nothing here limits how long a *response* may take, so a long-poll
//! (`GET …?wait_ms=60000`) is never cut: the header timer only runs while a
//! connection waits for a request, and a GET's empty body has ended long
//! before. Graceful shutdown is as `axum::serve` does it: stop accepting,
//! let each connection finish its request in progress and close, and return
//! once all are closed.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::{AppState, Limits};

/// The error a request body gives when it has not arrived whole within
/// [`Limits::body_timeout`] of the request's headers.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub(crate) struct BodyTimedOut(Duration);

/// Whether `error`, or any error in its chain of sources, is a
/// [`BodyTimedOut`]: extractors wrap body errors in several layers.
pub(crate) fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<BodyTimedOut>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// A request body that fails with [`BodyTimedOut`] once its deadline has
/// passed before its end. The deadline is total, not per frame, so a client
/// trickling one byte at a time is cut off as surely as one that stops.
struct DeadlineBody {
    inner: Body,
    /// `None` when the timeout is too long to be a point in time: no limit.
    deadline: Option<Instant>,
    timeout: Duration,
    /// The timer, made only once the body has had to wait: most bodies are
    /// empty or arrive with their headers and never need one.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner: Body::new(inner),
            deadline: Instant::now().checked_add(timeout),
            timeout,
            sleep: None,
        }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let Some(deadline) = this.deadline else {
            return Poll::Pending;
        };
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(BodyTimedOut(this.timeout).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long to pause accepting after an accept error that is not about one
/// connection (out of file descriptors, out of memory): retrying at once
/// would spin while nothing can improve.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` under `state`'s limits until `shutdown`
/// resolves (or [`AppState::begin_shutdown`] is called); then begins the
/// graceful shutdown and returns once every connection has closed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits();
    let builder = Arc::new(http1_builder(&limits));
    let slots = limits
        .max_connections
        .map(|n| Arc::new(Semaphore::new(n.max(1))));
    // Every connection task holds a receiver; the sender sees them all gone
    // once every connection has closed.
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = match &slots {
            None => None,
            Some(slots) => tokio::select! {
                slot = Arc::clone(slots).acquire_owned() => {
                    Some(slot.expect("the connection semaphore is never closed"))
                }
                () = &mut shutdown => break,
                () = state.shutting_down() => break,
            },
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if !is_connection_error(&e) {
                        tracing::warn!(error = %e, "accepting a connection failed; pausing");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
            () = state.shutting_down() => break,
        };
        tokio::spawn(serve_connection(
            stream,
            Arc::clone(&builder),
            router.clone(),
            state.clone(),
            limits.body_timeout,
            (slot, open_rx.clone()),
        ));
    }
    state.begin_shutdown();
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

/// Longest header timeout handed to hyper, which adds it to the current
/// instant and would panic on overflow: a year is "no limit" in practice.
const MAX_HEADER_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The HTTP/1 settings of every connection.
fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout.min(MAX_HEADER_TIMEOUT))
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
}

/// Serves one connection until it closes; on shutdown, lets its request in
/// progress finish and then closes it. `held` (the connection's slot, if
/// connections are capped, and its share of the open-connections count) is
/// released when the connection ends.
async fn serve_connection(
    stream: TcpStream,
    builder: Arc<http1::Builder>,
    router: Router,
    state: AppState,
    body_timeout: Duration,
    held: (Option<OwnedSemaphorePermit>, watch::Receiver<()>),
) {
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let request = request.map(|body| Body::new(DeadlineBody::new(body, body_timeout)));
        router.clone().oneshot(request)
    });
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = state.shutting_down() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // Timeouts, oversized headers and clients that vanish end up here;
        // they are the client's doing, not the server's.
        tracing::debug!(error = %e, "connection ended with an error");
    }
    drop(held);
}

/// Whether an accept error concerns only the connection being accepted
/// (the client gave up), so accepting the next one can go on at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

//! Tokens re-checked on open streams: a token taken out of the tokens file (or stripped of the
//! scope a method needs) stops the streams it opened within [`RECHECK_INTERVAL`].
//!
//! A unary call is checked once, when it arrives ([`crate::auth::Authorized`]), and ends soon
//! after. A stream lives as long as its client wants: an OrderStream opened with a write token
//! could go on committing orders, and a Watch go on reading the feed, long after the operator
//! revoked the token. So the streaming methods' answers are wrapped ([`Guarded`]): every
//! second, when the tokens file has moved to a new version, the call's token is checked again
//! against it, as it was at the start. A call that no longer passes ends with the status a new
//! call would get (UNAUTHENTICATED or PERMISSION_DENIED, in the trailers), and the stream's
//! request side fails at its next message, so an OrderStream reads no order after it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prost::bytes::Bytes;
use tonic::codegen::http;
use tonic::Status;

use crate::auth::Tokens;

/// How often an open stream's token is checked again (when the tokens changed).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The client port's streaming methods: their answers are [`Guarded`].
const STREAMING_METHODS: [&str; 4] = [
    "/ordo.v1.Ordo/Watch",
    "/ordo.v1.Ordo/WatchNotifications",
    "/ordo.v1.Ordo/OrderStream",
    "/ordo.v1.Admin/Backup",
];

/// Whether calls to `path` stream, so their token is checked again while they run.
pub fn streams(path: &str) -> bool {
    STREAMING_METHODS.contains(&path)
}

/// What a streaming call was let in with, to check it again.
pub struct Admission {
    tokens: Arc<Tokens>,
    path: String,
    /// The call's `authorization` header alone.
    headers: http::HeaderMap,
    /// The tokens' version it was last checked against.
    generation: u64,
    /// Set when the check fails: the request side then fails too.
    revoked: Arc<AtomicBool>,
}

impl Admission {
    /// A call to `path` with `headers`, just let in under `tokens`.
    pub fn new(tokens: Arc<Tokens>, path: &str, headers: &http::HeaderMap) -> Self {
        let mut kept = http::HeaderMap::new();
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            kept.insert(http::header::AUTHORIZATION, value.clone());
        }
        Self {
            generation: tokens.generation(),
            tokens,
            path: path.to_string(),
            headers: kept,
            revoked: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The call's request body, failing at its next frame once the token is revoked.
    pub fn request(&self, body: tonic::body::Body) -> tonic::body::Body {
        tonic::body::Body::new(GuardedRequest {
            inner: body,
            revoked: self.revoked.clone(),
        })
    }

    /// Checks the token again if the tokens changed since the last check.
    fn recheck(&mut self) -> Result<(), Status> {
        let generation = self.tokens.generation();
        if generation == self.generation {
            return Ok(());
        }
        self.generation = generation;
        let checked = self.tokens.current().check(&self.path, &self.headers);
        if let Err(status) = &checked {
            tracing::info!(path = %self.path, code = ?status.code(), "a stream's token no longer passes; ending the stream");
            self.revoked.store(true, Ordering::Relaxed);
        }
        checked
    }
}

/// The inner service's future for a streaming call; its answer's body is [`GuardedBody`].
pub struct Guarded<F> {
    pub inner: F,
    pub admission: Option<Admission>,
}

impl<F> Future for Guarded<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Poll::Ready(Ok(response)) = Pin::new(&mut self.inner).poll(cx) else {
            return Poll::Pending;
        };
        let Some(admission) = self.admission.take() else {
            return Poll::Ready(Ok(response));
        };
        Poll::Ready(Ok(response.map(|body| {
            tonic::body::Body::new(GuardedBody {
                inner: body,
                admission,
                next_check: Box::pin(tokio::time::sleep(RECHECK_INTERVAL)),
                ended: false,
            })
        })))
    }
}

/// A streaming answer that ends with the refusal once its token no longer passes.
struct GuardedBody {
    inner: tonic::body::Body,
    admission: Admission,
    /// Wakes the body every [`RECHECK_INTERVAL`], also while the stream is quiet.
    next_check: Pin<Box<tokio::time::Sleep>>,
    ended: bool,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        while self.next_check.as_mut().poll(cx).is_ready() {
            let next = tokio::time::Instant::now() + RECHECK_INTERVAL;
            self.next_check.as_mut().reset(next);
            if let Err(status) = self.admission.recheck() {
                self.ended = true;
                let mut trailers = http::HeaderMap::new();
                return match status.add_header(&mut trailers) {
                    Ok(()) => Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers)))),
                    Err(status) => Poll::Ready(Some(Err(status))),
                };
            }
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}

/// A streaming call's request body: fails once the call's token was found revoked.
struct GuardedRequest {
    inner: tonic::body::Body,
    revoked: Arc<AtomicBool>,
}

impl http_body::Body for GuardedRequest {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if self.revoked.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(Status::unauthenticated(
                "the token this stream was opened with was revoked",
            ))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

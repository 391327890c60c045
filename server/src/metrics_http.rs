//! The node's metrics for Prometheus (`--metrics-listen ADDR`): `GET /metrics` answers the
//! catalogue of `ordo-metrics` in the text exposition format 0.0.4, with the gauges read
//! from the node at that moment. A tiny HTTP/1.1 server of its own: one request per
//! connection, at most [`SCRAPES_MAX`] at once, each read within [`REQUEST_TIMEOUT`] and at
//! most [`REQUEST_BYTES_MAX`] bytes.
//!
//! [`Metered`] wraps each service of the client port: every call is counted and timed by
//! method and gRPC status code, the code read from the answer's trailers (or from its headers,
//! when the answer is trailers-only, as every refusal before the service is).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ordo_sequencer::Node;
use prost::bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;

use crate::auth::Tokens;
use crate::edge::ClientPort;

/// Scrapes served at once; more connections wait to be accepted.
pub const SCRAPES_MAX: usize = 16;

/// The most bytes of a scrape's request read.
pub const REQUEST_BYTES_MAX: usize = 8 * 1024;

/// How long a scrape may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets the gauges read from the node, then renders every metric.
fn scrape(node: &Node, port: &ClientPort) -> String {
    let metrics = node.raft.metrics().borrow().clone();
    let applied = metrics.last_applied.map_or(0, |id| id.index);
    let last = metrics.last_log_index.unwrap_or(0);
    ordo_metrics::APPLY_LAG.set(last.saturating_sub(applied) as i64);
    ordo_metrics::IS_LEADER.set(i64::from(metrics.current_leader == Some(node.node_id)));
    ordo_metrics::APPLIED_EPOCH.set(node.store.applied_epoch() as i64);
    ordo_metrics::QUEUE_TXNS.set(node.sequencer.queued() as i64);
    ordo_metrics::WATCHERS.set(port.watchers_open() as i64);
    ordo_metrics::STREAM_BUFFER_BYTES.set(port.stream_buffer_bytes() as i64);
    ordo_metrics::render()
}

/// The answer to one request's head.
fn answer(head: &str, node: &Node, port: &ClientPort) -> (&'static str, &'static str, String) {
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics" | "/") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            scrape(node, port),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "metrics are at /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is served\n".into(),
        ),
    }
}

/// The value of the `authorization` header in a request's head, if it has one.
fn authorization(head: &str) -> Option<&str> {
    head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| value.trim())
    })
}

async fn serve_one(
    mut conn: tokio::net::TcpStream,
    node: Arc<Node>,
    port: ClientPort,
    tokens: Option<Arc<Tokens>>,
) {
    let mut request = Vec::with_capacity(1024);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            if request.len() >= REQUEST_BYTES_MAX {
                return false;
            }
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    let (status, content_type, body) = match read {
        Ok(true) => 'answer: {
            let head = String::from_utf8_lossy(&request);
            // With tokens, a scrape needs one with the metrics (or admin) scope.
            if let Some(tokens) = &tokens {
                let offered = authorization(&head).map(str::as_bytes);
                if let Err(why) = tokens.current().check_scrape(offered) {
                    ordo_metrics::AUTH_REFUSED.add(&["unauthenticated"], 1);
                    break 'answer ("401 Unauthorized", "text/plain", format!("{why}\n"));
                }
            }
            let first = head.lines().next().unwrap_or("").to_string();
            // A scrape reads Raft's metrics and renders text: off the async threads.
            tokio::task::spawn_blocking(move || answer(&first, &node, &port))
                .await
                .unwrap_or_else(|_| {
                    (
                        "500 Internal Server Error",
                        "text/plain",
                        "the scrape failed\n".into(),
                    )
                })
        }
        _ => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let _ = conn.write_all(response.as_bytes()).await;
        let _ = conn.shutdown().await;
    })
    .await;
}

/// Serves scrapes on `listener` until `stopped` resolves.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    port: ClientPort,
    tokens: Option<Arc<Tokens>>,
    stopped: impl Future<Output = ()>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(SCRAPES_MAX));
    tokio::pin!(stopped);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((conn, _)) => {
                let (node, port, tokens) = (node.clone(), port.clone(), tokens.clone());
                tokio::spawn(async move {
                    serve_one(conn, node, port, tokens).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A service on the client port whose calls are counted and timed (when `on`).
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    on: bool,
}

impl<S> Metered<S> {
    pub fn new(inner: S, on: bool) -> Self {
        Metered { inner, on }
    }
}

impl<S: NamedService> NamedService for Metered<S> {
    const NAME: &'static str = S::NAME;
}

/// A call's method label and when it began.
#[derive(Clone, Copy)]
struct Call {
    method: &'static str,
    started: Instant,
}

/// gRPC's status codes by number, as metric labels.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn code_in(headers: &http::HeaderMap) -> Option<&'static str> {
    let code: usize = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(CODES.get(code).copied().unwrap_or("UNKNOWN"))
}

impl Call {
    fn record(self, code: &'static str) {
        ordo_metrics::RPC_REQUESTS.add(&[self.method, code], 1);
        ordo_metrics::RPC_DURATION.observe_duration(&[self.method, code], self.started.elapsed());
    }
}

impl<S, B> Service<http::Request<B>> for Metered<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = self.on.then(|| Call {
            method: crate::auth::method(req.uri().path()).map_or("unknown", |m| m.label),
            started: Instant::now(),
        });
        MeteredFuture {
            inner: self.inner.call(req),
            call,
        }
    }
}

/// The inner service's future; its answer's body is metered.
pub struct MeteredFuture<F> {
    inner: F,
    call: Option<Call>,
}

impl<F> Future for MeteredFuture<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Unpin,
{
    type Output = Result<http::Response<tonic::body::Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Poll::Ready(Ok(response)) = Pin::new(&mut self.inner).poll(cx) else {
            return Poll::Pending;
        };
        let Some(call) = self.call.take() else {
            return Poll::Ready(Ok(response));
        };
        let header_code = code_in(response.headers());
        Poll::Ready(Ok(response.map(|body| {
            tonic::body::Body::new(MeteredBody {
                inner: body,
                call: Some(call),
                header_code,
            })
        })))
    }
}

/// An answer's body that records its call when it ends: with the code of its trailers, or
/// of its headers; `CANCELLED` when it is dropped before its end (the caller went away).
struct MeteredBody {
    inner: tonic::body::Body,
    call: Option<Call>,
    header_code: Option<&'static str>,
}

impl MeteredBody {
    fn finish(&mut self, code: Option<&'static str>) {
        if let Some(call) = self.call.take() {
            call.record(code.or(self.header_code).unwrap_or("UNKNOWN"));
        }
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = code_in(trailers);
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Some("UNKNOWN")),
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if self.call.is_some() && self.header_code.is_none() {
            self.header_code = Some("CANCELLED");
        }
        self.finish(None);
    }
}

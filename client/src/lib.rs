//! The Rust client library for Ordo.
//!
//! In: one or more node endpoints (`http://host:port`). Out: an async API for every RPC of the
//! `Ordo` and `Admin` services. It needs only `ordo-proto`: nothing of the server's internals.
//!
//! What it adds over the raw generated stubs:
//! - **request ids**: every write gets a unique request id unless the caller brings one;
//! - **retries**: UNAVAILABLE and DEADLINE_EXCEEDED are retried with the *same* request id and
//!   bounded exponential backoff, so a retried order is applied at most once (server dedupe);
//! - **failover**: with several endpoints, a retry goes to the next one; a leader hint in the
//!   response (`ordo-leader-addr`) sends it to the leader instead;
//! - **epoch tracking**: the client remembers the highest epoch it has seen in any response and
//!   sends it with every read (`AT_LEAST`), so it reads its own writes on any node.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ordo_client::Error> {
//! use ordo_client::{Client, Line};
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let result = client.place_order(&[Line { dc_id: 1, sku: 1, qty: 2 }], false, None).await?;
//! println!("{:?} in epoch {}", result.status(), result.epoch);
//! # Ok(())
//! # }
//! ```

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use ordo_proto::v1;

mod feed;
mod holds;
mod nearby;
mod order_stream;
pub use feed::Subscription;
pub use holds::Reserve;
pub use order_stream::OrderStream;
use ordo_proto::v1::admin_client::AdminClient;
use ordo_proto::v1::ordo_client::OrdoClient;
use tonic::codegen::http;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

/// One order line: `qty` units of `sku` at DC `dc_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line {
    pub dc_id: u32,
    pub sku: u32,
    pub qty: i64,
}

impl From<Line> for v1::OrderLine {
    fn from(l: Line) -> Self {
        v1::OrderLine {
            dc_id: l.dc_id,
            sku: l.sku,
            qty: l.qty,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    /// The server answered with an error status (after any retries).
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    #[error("unexpected response: {0}")]
    Protocol(String),
}

impl Error {
    /// The gRPC code, if the server answered with one.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }

    /// Whether a failed write is known not to have been applied, now or later: the request
    /// was refused before it was sequenced. `false` means the outcome is unknown (retry with
    /// the same request id to learn it). Refusals of the request itself (INVALID_ARGUMENT,
    /// NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, OUT_OF_RANGE) are definite; UNAVAILABLE
    /// and RESOURCE_EXHAUSTED are definite when the server said so in the `ordo-outcome:
    /// not-applied` trailer, and only if no earlier attempt of the call had an unknown outcome.
    pub fn not_applied(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Status(s) => status_not_applied(s),
            Error::Protocol(_) => false,
        }
    }
}

/// `message` as a request, carrying [`ordo_proto::RETRY_METADATA_KEY`] when it may repeat a
/// call the node has seen: the node then answers a write it has already applied from its
/// dedupe table, without sequencing it again. A call with a new request id does without that
/// read. For callers of [`Client::raw`]; the client's own calls mark themselves.
pub fn retry_marked<T>(message: T, retry: bool) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if retry {
        request.metadata_mut().insert(
            ordo_proto::RETRY_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    request
}

/// One order's request, from its lines.
pub(crate) fn order_request(
    lines: &[Line],
    partial: bool,
    request_id: String,
) -> v1::PlaceOrderRequest {
    v1::PlaceOrderRequest {
        request_id,
        lines: lines.iter().copied().map(Into::into).collect(),
        mode: if partial {
            v1::OrderMode::Partial
        } else {
            v1::OrderMode::AllOrNothing
        } as i32,
        user: String::new(),
    }
}

fn status_not_applied(status: &Status) -> bool {
    let outcome = status.metadata().get(ordo_proto::OUTCOME_METADATA_KEY);
    // Set by this client when an earlier attempt of the same call may have been applied.
    if outcome.is_some_and(|v| v == OUTCOME_UNKNOWN) {
        return false;
    }
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated
    ) || status
        .metadata()
        .get(ordo_proto::OUTCOME_METADATA_KEY)
        .is_some_and(|v| v == ordo_proto::OUTCOME_NOT_APPLIED)
}

/// How retries of transient errors behave.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts_max: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts_max: 6,
            backoff_initial: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
        }
    }
}

fn retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
}

/// How fresh the client's reads are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Whatever the node has applied.
    Local,
    /// At least the highest epoch this client has seen: read-your-writes on any node.
    #[default]
    AtLeastSeen,
    /// Confirmed with the leader (read index).
    Linearizable,
}

/// A connection to an Ordo cluster through one or more of its nodes. Cheap to clone; clones
/// share the endpoints, the current endpoint and the epoch tracker.
#[derive(Clone)]
pub struct Client {
    endpoints: Arc<Endpoints>,
    retry: RetryPolicy,
    /// How long one attempt may go unanswered before it counts as DEADLINE_EXCEEDED and the
    /// next attempt goes elsewhere (a paused node accepts connections and answers nothing).
    attempt_timeout: Duration,
    consistency: Consistency,
    shared: Arc<Shared>,
    /// The cluster secret, for membership changes (`with_cluster_secret`).
    cluster_secret: Option<Arc<str>>,
    /// `Bearer TOKEN`, sent on every call (`with_token`).
    authorization: Option<http::HeaderValue>,
}

/// A node's channel with the client's token on every call: what the generated stubs of
/// [`Client::raw`] run over.
#[derive(Clone)]
pub struct Connection {
    channel: Channel,
    authorization: Option<http::HeaderValue>,
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Connection {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = <Channel as tonic::codegen::Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tonic::codegen::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, value.clone());
        }
        self.channel.call(req)
    }
}

struct Endpoints {
    /// (address as given, channel). Grows when a leader hint names a node not listed.
    list: std::sync::Mutex<Vec<(String, Channel)>>,
    current: std::sync::atomic::AtomicUsize,
    /// TLS for `https://` endpoints ([`Client::connect_tls`]); hinted leaders are reached
    /// with it too.
    tls: Option<ClientTlsConfig>,
}

/// What the client writes into a failed call's `ordo-outcome` when an earlier attempt of the
/// call may have been applied, whatever the last attempt's answer said.
const OUTCOME_UNKNOWN: &str = "unknown";

/// One attempt's default time limit ([`Client::with_attempt_timeout`]).
pub const ATTEMPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// One attempt's time limit for adding a member, at least: the node answers once the new
/// member has caught up, which for a large state means installing a snapshot of it (the
/// node gives up after 10 minutes).
pub const MEMBER_ADD_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(11 * 60);

/// Endpoints a leader hint may add to the list, at most.
const ENDPOINTS_MAX: usize = 64;

struct Shared {
    highest_epoch: AtomicU64,
    id_prefix: String,
    id_counter: AtomicU64,
    jitter: AtomicU64,
}

/// The largest message the client sends or accepts.
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

fn endpoint(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, Error> {
    let failed = |detail: String| Error::Connect {
        endpoint: url.to_string(),
        detail,
    };
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| failed(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let tls = tls.ok_or_else(|| {
        failed(
            "an https:// endpoint needs the CA that issued the nodes' certificates (--ca, or \
             Client::connect_tls)"
                .into(),
        )
    })?;
    endpoint
        .tls_config(tls.clone())
        .map_err(|e| failed(e.to_string()))
}

impl Client {
    /// Connects to one node, e.g. `http://127.0.0.1:50051`.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self, Error> {
        Self::connect_many(vec![endpoint.into()]).await
    }

    /// Connects to a cluster through several nodes: the first one that answers becomes current;
    /// the others are connected lazily when failover needs them.
    pub async fn connect_many(urls: Vec<String>) -> Result<Self, Error> {
        Self::connect_with(urls, None).await
    }

    /// Connects as [`Client::connect_many`], to `https://` endpoints whose certificates were
    /// issued by the CA in `ca_pem` (PEM). Plain `http://` endpoints in the list stay plain.
    pub async fn connect_tls(urls: Vec<String>, ca_pem: &[u8]) -> Result<Self, Error> {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        Self::connect_with(urls, Some(tls)).await
    }

    async fn connect_with(urls: Vec<String>, tls: Option<ClientTlsConfig>) -> Result<Self, Error> {
        if urls.is_empty() {
            return Err(Error::Connect {
                endpoint: String::new(),
                detail: "no endpoint given".into(),
            });
        }
        let mut list = Vec::with_capacity(urls.len());
        let mut current = None;
        let mut last_error = String::new();
        for (i, url) in urls.iter().enumerate() {
            let ep = endpoint(url, tls.as_ref())?;
            let channel = if current.is_none() {
                match ep.connect().await {
                    Ok(channel) => {
                        current = Some(i);
                        channel
                    }
                    Err(e) => {
                        last_error = format!("{e} ({e:?})");
                        ep.connect_lazy()
                    }
                }
            } else {
                ep.connect_lazy()
            };
            list.push((url.clone(), channel));
        }
        let Some(current) = current else {
            return Err(Error::Connect {
                endpoint: urls.join(","),
                detail: last_error,
            });
        };
        let seed = RandomState::new().build_hasher().finish();
        Ok(Self {
            endpoints: Arc::new(Endpoints {
                list: std::sync::Mutex::new(list),
                current: std::sync::atomic::AtomicUsize::new(current),
                tls,
            }),
            retry: RetryPolicy::default(),
            attempt_timeout: ATTEMPT_TIMEOUT_DEFAULT,
            consistency: Consistency::default(),
            shared: Arc::new(Shared {
                highest_epoch: AtomicU64::new(0),
                id_prefix: format!("c{seed:016x}"),
                id_counter: AtomicU64::new(0),
                jitter: AtomicU64::new(seed | 1),
            }),
            cluster_secret: None,
            authorization: None,
        })
    }

    /// A client of another node, e.g. a member a status names, with this one's TLS, token
    /// and cluster secret.
    pub async fn connect_alike(&self, endpoint: impl Into<String>) -> Result<Client, Error> {
        let mut client =
            Client::connect_with(vec![endpoint.into()], self.endpoints.tls.clone()).await?;
        client.authorization = self.authorization.clone();
        client.cluster_secret = self.cluster_secret.clone();
        Ok(client)
    }

    /// Sends `token` on every call (`authorization: Bearer TOKEN`), as a node started with
    /// `--tokens-file` requires. Fails for a token that cannot be a header value.
    pub fn with_token(mut self, token: &str) -> Result<Self, Error> {
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| Error::Protocol("the token holds characters a header cannot".into()))?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long one attempt may wait for an answer (default 30 s; above the server's own
    /// 10 s request timeout, so it only fires when a node does not answer at all).
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Sets how fresh reads are (default: at least the highest epoch seen).
    pub fn with_consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    /// The cluster secret (the contents of the nodes' `--cluster-secret-file`), which
    /// membership changes must carry; without it they are refused with UNAUTHENTICATED.
    pub fn with_cluster_secret(mut self, secret: &str) -> Self {
        self.cluster_secret = Some(secret.trim().into());
        self
    }

    /// A request carrying the cluster secret, if this client has one.
    fn with_secret<T>(&self, message: T) -> Result<tonic::Request<T>, Status> {
        let mut request = tonic::Request::new(message);
        if let Some(secret) = &self.cluster_secret {
            let value = secret.parse().map_err(|_| {
                Status::invalid_argument("the cluster secret is not valid metadata")
            })?;
            request
                .metadata_mut()
                .insert(ordo_proto::SECRET_METADATA_KEY, value);
        }
        Ok(request)
    }

    /// `https` when this client was made with TLS, else `http`: the scheme of the addresses
    /// nodes name (leader hints, members).
    pub fn scheme(&self) -> &'static str {
        if self.endpoints.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The endpoint calls currently go to.
    pub fn current_endpoint(&self) -> String {
        let list = self.endpoints.list.lock().expect("endpoints lock");
        list[self.endpoints.current.load(Ordering::Relaxed) % list.len()]
            .0
            .clone()
    }

    fn channel(&self) -> Connection {
        let list = self.endpoints.list.lock().expect("endpoints lock");
        let channel = list[self.endpoints.current.load(Ordering::Relaxed) % list.len()]
            .1
            .clone();
        Connection {
            channel,
            authorization: self.authorization.clone(),
        }
    }

    fn ordo(&self) -> OrdoClient<Connection> {
        OrdoClient::new(self.channel())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    fn admin(&self) -> AdminClient<Connection> {
        AdminClient::new(self.channel())
    }

    /// Moves calls to the next endpoint in the list (a Watch consumer leaving a node).
    pub fn next_endpoint(&self) {
        let list = self.endpoints.list.lock().expect("endpoints lock");
        if list.len() > 1 {
            let next = (self.endpoints.current.load(Ordering::Relaxed) + 1) % list.len();
            self.endpoints.current.store(next, Ordering::Relaxed);
        }
    }

    /// After a retryable failure: go to the hinted leader if the node named one, else to the
    /// next endpoint in the list.
    fn fail_over(&self, status: &Status) {
        let hint = status
            .metadata()
            .get("ordo-leader-addr")
            .and_then(|v| v.to_str().ok())
            .map(|addr| format!("{}://{addr}", self.scheme()));
        let mut list = self.endpoints.list.lock().expect("endpoints lock");
        if let Some(url) = hint {
            if let Some(i) = list.iter().position(|(u, _)| *u == url) {
                self.endpoints.current.store(i, Ordering::Relaxed);
                return;
            }
            if list.len() < ENDPOINTS_MAX {
                if let Ok(ep) = endpoint(&url, self.endpoints.tls.as_ref()) {
                    list.push((url, ep.connect_lazy()));
                    self.endpoints
                        .current
                        .store(list.len() - 1, Ordering::Relaxed);
                    return;
                }
            }
        }
        if list.len() > 1 {
            let next = (self.endpoints.current.load(Ordering::Relaxed) + 1) % list.len();
            self.endpoints.current.store(next, Ordering::Relaxed);
        }
    }

    /// The highest epoch seen in any response to this client (or its clones).
    pub fn highest_epoch(&self) -> u64 {
        self.shared.highest_epoch.load(Ordering::Relaxed)
    }

    fn saw_epoch(&self, epoch: u64) {
        self.shared
            .highest_epoch
            .fetch_max(epoch, Ordering::Relaxed);
    }

    /// Tells the client about an epoch seen elsewhere (another session's write, a token passed
    /// between services): its later reads reflect at least that epoch.
    pub fn observe_epoch(&self, epoch: u64) {
        self.saw_epoch(epoch);
    }

    /// The consistency fields every read carries.
    fn read_fields(&self) -> (i32, u64) {
        match self.consistency {
            Consistency::Local => (v1::ReadConsistency::Local as i32, 0),
            Consistency::AtLeastSeen => (v1::ReadConsistency::AtLeast as i32, self.highest_epoch()),
            Consistency::Linearizable => (v1::ReadConsistency::Linearizable as i32, 0),
        }
    }

    /// A fresh request id, unique to this client.
    pub fn new_request_id(&self) -> String {
        let n = self.shared.id_counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.shared.id_prefix)
    }

    /// Gives every empty request id a fresh one; returns whether any id was the caller's
    /// (such a call may repeat an earlier one, so even its first attempt is marked a retry).
    pub(crate) fn fill_request_ids<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a mut String>,
    ) -> bool {
        let mut known_id = false;
        for id in ids {
            if id.is_empty() {
                *id = self.new_request_id();
            } else {
                known_id = true;
            }
        }
        known_id
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .retry
            .backoff_initial
            .saturating_mul(1 << attempt.min(16))
            .min(self.retry.backoff_max);
        // xorshift jitter: up to half the base again, so retrying clients spread out.
        let mut x = self.shared.jitter.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.shared.jitter.store(x, Ordering::Relaxed);
        let half = base.as_micros() as u64 / 2 + 1;
        base + Duration::from_micros(x % half)
    }

    /// Runs `call` until it succeeds, fails with a non-retryable status, or runs out of
    /// attempts; each retry may go to another endpoint.
    async fn with_retries<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.with_write_retries(false, |_| call()).await
    }

    /// [`Client::with_retries`] for a write with a request id: `call` is told whether this
    /// attempt may repeat a request the node has seen, so it can say so ([`retry_marked`]):
    /// every attempt after the first, and the first too when the caller chose the request id
    /// (`known_id`: it may be retrying a call of its own). An id this client generated for the
    /// call is new on its first attempt.
    async fn with_write_retries<T, F, Fut>(&self, known_id: bool, mut call: F) -> Result<T, Error>
    where
        F: FnMut(bool) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut attempt = 0;
        // Whether an earlier attempt may have been applied: then no later refusal can make
        // the call's failure definite.
        let mut maybe_applied = false;
        loop {
            let answer = tokio::time::timeout(self.attempt_timeout, call(known_id || attempt > 0))
                .await
                .unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "{} did not answer within {:?}",
                        self.current_endpoint(),
                        self.attempt_timeout
                    )))
                });
            match answer {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if retryable(&status) && attempt + 1 < self.retry.attempts_max => {
                    tracing::debug!(code = ?status.code(), attempt, "retrying");
                    maybe_applied |= !status_not_applied(&status);
                    self.fail_over(&status);
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(mut status) => {
                    if maybe_applied {
                        status.metadata_mut().insert(
                            ordo_proto::OUTCOME_METADATA_KEY,
                            tonic::metadata::MetadataValue::from_static(OUTCOME_UNKNOWN),
                        );
                    }
                    return Err(status.into());
                }
            }
        }
    }

    /// Places one order. `request_id: None` generates one; retries reuse it.
    pub async fn place_order(
        &self,
        lines: &[Line],
        partial: bool,
        request_id: Option<String>,
    ) -> Result<v1::OrderResult, Error> {
        // Empty: `place_order_request` fills it in, and knows it is new.
        let request = order_request(lines, partial, request_id.unwrap_or_default());
        self.place_order_request(request).await
    }

    /// Places one order from a full request (an empty request id is filled in).
    pub async fn place_order_request(
        &self,
        mut request: v1::PlaceOrderRequest,
    ) -> Result<v1::OrderResult, Error> {
        let known_id = self.fill_request_ids([&mut request.request_id]);
        let response = self
            .with_write_retries(known_id, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.place_order(request).await }
            })
            .await?;
        let result = response
            .result
            .ok_or_else(|| Error::Protocol("PlaceOrder response without a result".into()))?;
        self.saw_epoch(result.epoch);
        Ok(result)
    }

    /// Places many independent orders in one call; empty request ids are filled in.
    pub async fn place_orders(
        &self,
        mut orders: Vec<v1::PlaceOrderRequest>,
    ) -> Result<Vec<v1::OrderResult>, Error> {
        let known_id = self.fill_request_ids(orders.iter_mut().map(|o| &mut o.request_id));
        let request = v1::PlaceOrdersRequest { orders };
        let response = self
            .with_write_retries(known_id, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.place_orders(request).await }
            })
            .await?;
        for result in &response.results {
            self.saw_epoch(result.epoch);
        }
        Ok(response.results)
    }

    /// Adds `delta` (signed) to the on-hand stock of `sku` at `dc_id`.
    pub async fn restock(
        &self,
        dc_id: u32,
        sku: u32,
        delta: i64,
        request_id: Option<String>,
    ) -> Result<v1::RestockResponse, Error> {
        let known_id = request_id.is_some();
        let request = v1::RestockRequest {
            request_id: request_id.unwrap_or_else(|| self.new_request_id()),
            dc_id,
            sku,
            delta,
        };
        let response = self
            .with_write_retries(known_id, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.restock(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    /// Many restocks in one call, results in request order (a stock sync, a bulk load). A
    /// restock without a request id is given a fresh one; the call is retried like
    /// [`Client::restock`]. At most the server's batch limit (1,000 by default) per call.
    pub async fn restocks(
        &self,
        mut restocks: Vec<v1::RestockRequest>,
    ) -> Result<Vec<v1::RestockResponse>, Error> {
        let known_id = self.fill_request_ids(restocks.iter_mut().map(|r| &mut r.request_id));
        let request = v1::RestocksRequest { restocks };
        let response = self
            .with_write_retries(known_id, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.restocks(request).await }
            })
            .await?;
        for result in &response.results {
            self.saw_epoch(result.epoch);
        }
        Ok(response.results)
    }

    /// A DC's stock sync as one transaction: `(sku, delta)` lines in ascending SKU order, each
    /// SKU once, applied together or not at all (at most 10,000). Retried like
    /// [`Client::restock`], under one request id for all its lines.
    pub async fn restock_dc(
        &self,
        dc_id: u32,
        lines: &[(u32, i64)],
        request_id: Option<String>,
    ) -> Result<v1::RestockDcResponse, Error> {
        let known_id = request_id.is_some();
        let request = v1::RestockDcRequest {
            request_id: request_id.unwrap_or_else(|| self.new_request_id()),
            dc_id,
            lines: lines
                .iter()
                .map(|&(sku, delta)| v1::SkuDelta { sku, delta })
                .collect(),
        };
        let response = self
            .with_write_retries(known_id, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.restock_dc(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    /// Moves `qty` of `sku` from one DC to another, all or nothing.
    pub async fn transfer_stock(
        &self,
        sku: u32,
        from_dc_id: u32,
        to_dc_id: u32,
        qty: i64,
        request_id: Option<String>,
    ) -> Result<v1::TransferStockResponse, Error> {
        let known_id = request_id.is_some();
        let request = v1::TransferStockRequest {
            request_id: request_id.unwrap_or_else(|| self.new_request_id()),
            sku,
            from_dc_id,
            to_dc_id,
            qty,
        };
        let response = self
            .with_write_retries(known_id, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.transfer_stock(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    pub async fn upsert_dc(&self, dc: v1::Dc) -> Result<v1::UpsertDcResponse, Error> {
        let request = v1::UpsertDcRequest {
            request_id: self.new_request_id(),
            dc: Some(dc),
        };
        let response = self
            .with_write_retries(false, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.upsert_dc(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    pub async fn upsert_item(&self, item: v1::Item) -> Result<v1::UpsertItemResponse, Error> {
        let request = v1::UpsertItemRequest {
            request_id: self.new_request_id(),
            item: Some(item),
        };
        let response = self
            .with_write_retries(false, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.upsert_item(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    pub async fn get_stock(&self, dc_id: u32, sku: u32) -> Result<v1::GetStockResponse, Error> {
        let (consistency, at_least_epoch) = self.read_fields();
        let request = v1::GetStockRequest {
            dc_id,
            sku,
            consistency,
            at_least_epoch,
        };
        let response = self
            .with_retries(|| {
                let mut ordo = self.ordo();
                async move { ordo.get_stock(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    pub async fn get_order(&self, order_id: u64) -> Result<v1::Order, Error> {
        let (consistency, at_least_epoch) = self.read_fields();
        let request = v1::GetOrderRequest {
            order_id,
            consistency,
            at_least_epoch,
        };
        let response = self
            .with_retries(|| {
                let mut ordo = self.ordo();
                async move { ordo.get_order(request).await }
            })
            .await?;
        response
            .order
            .ok_or_else(|| Error::Protocol("GetOrder response without an order".into()))
    }

    /// One page of committed orders after `after_order_id`, in commit order.
    pub async fn list_orders(
        &self,
        after_order_id: u64,
        limit: u32,
    ) -> Result<v1::ListOrdersResponse, Error> {
        let (consistency, at_least_epoch) = self.read_fields();
        let request = v1::ListOrdersRequest {
            after_order_id,
            limit,
            consistency,
            at_least_epoch,
        };
        let response = self
            .with_retries(|| {
                let mut ordo = self.ordo();
                async move { ordo.list_orders(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    pub async fn get_availability(
        &self,
        dc_ids: Vec<u32>,
        skus: Vec<u32>,
    ) -> Result<v1::GetAvailabilityResponse, Error> {
        let (consistency, at_least_epoch) = self.read_fields();
        let request = v1::GetAvailabilityRequest {
            dc_ids,
            skus,
            consistency,
            at_least_epoch,
        };
        let response = self
            .with_retries(|| {
                let mut ordo = self.ordo();
                let request = request.clone();
                async move { ordo.get_availability(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    pub async fn status(&self) -> Result<v1::StatusResponse, Error> {
        self.with_retries(|| {
            let mut admin = self.admin();
            async move { admin.status(v1::StatusRequest {}).await }
        })
        .await
    }

    pub async fn state_hash(&self, epoch: u64) -> Result<v1::GetStateHashResponse, Error> {
        self.with_retries(|| {
            let mut admin = self.admin();
            async move {
                admin
                    .get_state_hash(v1::GetStateHashRequest { epoch })
                    .await
            }
        })
        .await
    }

    /// A key-value transaction: `ops` applied in order, all or nothing.
    pub async fn transact(
        &self,
        ops: Vec<v1::KvOp>,
        request_id: Option<String>,
    ) -> Result<v1::TransactResponse, Error> {
        let known_id = request_id.is_some();
        let request = v1::TransactRequest {
            request_id: request_id.unwrap_or_else(|| self.new_request_id()),
            ops,
        };
        let response = self
            .with_write_retries(known_id, |retry| {
                let mut ordo = self.ordo();
                let request = retry_marked(request.clone(), retry);
                async move { ordo.transact(request).await }
            })
            .await?;
        self.saw_epoch(response.epoch);
        Ok(response)
    }

    pub async fn init_cluster(&self, demo_data: bool) -> Result<v1::InitClusterResponse, Error> {
        self.with_retries(|| {
            let mut admin = self.admin();
            async move {
                admin
                    .init_cluster(v1::InitClusterRequest { demo_data })
                    .await
            }
        })
        .await
    }

    /// Adds a node by its client address; its peer listener is the client port + 1000.
    pub async fn add_member(
        &self,
        node_id: u64,
        addr: String,
    ) -> Result<v1::MembershipResponse, Error> {
        self.add_member_at(node_id, addr, String::new()).await
    }

    /// Adds a node by its client address and its peer listener (empty: the client port +
    /// 1000 on the same host).
    pub async fn add_member_at(
        &self,
        node_id: u64,
        addr: String,
        peer_addr: String,
    ) -> Result<v1::MembershipResponse, Error> {
        let patient = self
            .clone()
            .with_attempt_timeout(self.attempt_timeout.max(MEMBER_ADD_ATTEMPT_TIMEOUT));
        patient
            .with_retries(|| {
                let mut admin = self.admin();
                let request = self.with_secret(v1::AddMemberRequest {
                    node_id,
                    addr: addr.clone(),
                    peer_addr: peer_addr.clone(),
                });
                async move { admin.add_member(request?).await }
            })
            .await
    }

    /// Skews the connected node's sequencer clock (fault tests; the node must run with
    /// --fault-injection). All zeros clear it.
    pub async fn set_clock_fault(
        &self,
        offset_ms: i64,
        strobe_ms: i64,
        strobe_period_ms: u64,
    ) -> Result<v1::SetClockFaultResponse, Error> {
        let request = v1::SetClockFaultRequest {
            offset_ms,
            strobe_ms,
            strobe_period_ms,
        };
        self.with_retries(|| {
            let mut admin = self.admin();
            async move { admin.set_clock_fault(request).await }
        })
        .await
    }

    /// Changes the cluster's execution settings through the log (`Admin.SetExecutionSettings`;
    /// fields left 0 keep their values).
    pub async fn set_execution_settings(
        &self,
        request: v1::SetExecutionSettingsRequest,
    ) -> Result<v1::SetExecutionSettingsResponse, Error> {
        self.with_retries(|| {
            let mut admin = self.admin();
            async move { admin.set_execution_settings(request).await }
        })
        .await
    }

    pub async fn remove_member(&self, node_id: u64) -> Result<v1::MembershipResponse, Error> {
        self.with_retries(|| {
            let mut admin = self.admin();
            let request = self.with_secret(v1::RemoveMemberRequest { node_id });
            async move { admin.remove_member(request?).await }
        })
        .await
    }

    /// A backup of the current endpoint's state (`Admin.Backup`): a header, then the state
    /// in chunks. Not retried or failed over: a broken backup is started again.
    pub async fn backup(&self) -> Result<tonic::Streaming<v1::BackupChunk>, Error> {
        let mut admin = self.admin();
        let answer = tokio::time::timeout(self.attempt_timeout, admin.backup(v1::BackupRequest {}))
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "{} did not answer within {:?}",
                    self.current_endpoint(),
                    self.attempt_timeout
                ))
            })??;
        Ok(answer.into_inner())
    }

    /// Direct access to the generated stub of the current endpoint.
    pub fn raw(&self) -> OrdoClient<Connection> {
        self.ordo()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_failures_say_not_applied() {
        let mut refused = Status::resource_exhausted("queue full");
        assert!(!status_not_applied(&refused), "no trailer: unknown");
        refused.metadata_mut().insert(
            ordo_proto::OUTCOME_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static(ordo_proto::OUTCOME_NOT_APPLIED),
        );
        assert!(status_not_applied(&refused));
        assert!(status_not_applied(&Status::invalid_argument("qty 0")));
        assert!(!status_not_applied(&Status::deadline_exceeded("slow")));
        // An earlier attempt of the call may have been applied: nothing later makes it definite.
        let mut after_unknown = Status::not_found("unknown dc");
        after_unknown.metadata_mut().insert(
            ordo_proto::OUTCOME_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static(OUTCOME_UNKNOWN),
        );
        assert!(!Error::Status(after_unknown).not_applied());
    }
}

//! OrderStream: orders over one long-lived bidirectional stream.
//!
//! A unary PlaceOrder costs the node a whole HTTP/2 stream per order: HEADERS in and out with
//! HPACK, the stream's state, a tonic service call, the trailers. On a stream each order is
//! one DATA frame each way. Every order still goes through exactly what PlaceOrder does
//! (validation, dedupe, the sequencer, the wait for its epoch); one task per stream reads the
//! orders, keeps at most [`ORDER_STREAM_IN_FLIGHT_MAX`] of them in flight, and sends each
//! reply as its order finishes.

use std::pin::Pin;
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use ordo_proto::v1;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tonic::{Request, Response, Status, Streaming};

use super::{is_retry, mark_definite, OrdoService};

/// Orders one stream has in flight at most; past it the node reads no more of the stream
/// until one is answered, so HTTP/2 flow control holds the client back.
pub use ordo_proto::ORDER_STREAM_IN_FLIGHT_MAX;

/// OrderStream streams one node serves at once; more get RESOURCE_EXHAUSTED.
pub const ORDER_STREAMS_MAX: usize = 4_096;

/// The replies of one OrderStream.
pub type OrderReplies = Pin<Box<dyn Stream<Item = Result<v1::OrderStreamReply, Status>> + Send>>;

impl OrdoService {
    pub(super) fn order_stream_inner(
        &self,
        request: Request<Streaming<v1::PlaceOrderRequest>>,
    ) -> Result<Response<OrderReplies>, Status> {
        let service = self
            .me
            .get()
            .and_then(std::sync::Weak::upgrade)
            .ok_or_else(|| {
                Status::unavailable(format!("node {} is stopping", self.node.node_id))
            })?;
        let slot = self
            .order_streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                "node {} serves {ORDER_STREAMS_MAX} order streams, its limit; use PlaceOrder or \
                 another node",
                self.node.node_id
            ))
            })?;
        let retry = is_retry(&request);
        let orders = request.into_inner();
        let (replies, out) = mpsc::channel(ORDER_STREAM_IN_FLIGHT_MAX);
        tokio::spawn(serve(service, orders, retry, replies, slot));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    /// One order of a stream, answered as PlaceOrder would answer it.
    async fn stream_order(
        &self,
        order: v1::PlaceOrderRequest,
        retry: bool,
    ) -> v1::OrderStreamReply {
        use v1::order_stream_reply::Answer;
        let request_id = order.request_id.clone();
        match self.place_one_order(order, retry).await {
            Ok(Some(result)) => v1::OrderStreamReply {
                request_id: result.request_id.clone(),
                answer: Some(Answer::Result(result)),
            },
            Ok(None) => v1::OrderStreamReply {
                request_id,
                answer: Some(Answer::Error(v1::OrderStreamError {
                    code: tonic::Code::Internal as i32,
                    message: "the order produced no result".into(),
                    not_applied: false,
                })),
            },
            Err(status) => {
                let status = mark_definite(status);
                let not_applied = status
                    .metadata()
                    .get(ordo_proto::OUTCOME_METADATA_KEY)
                    .is_some_and(|v| v == ordo_proto::OUTCOME_NOT_APPLIED);
                v1::OrderStreamReply {
                    request_id,
                    answer: Some(Answer::Error(v1::OrderStreamError {
                        code: status.code() as i32,
                        message: status.message().to_string(),
                        not_applied,
                    })),
                }
            }
        }
    }
}

/// Reads `orders` while fewer than [`ORDER_STREAM_IN_FLIGHT_MAX`] are in flight and sends each
/// reply as its order finishes. Ends when the client has sent its last order and every one is
/// answered, when the client goes away, or when the node stops (it then reads no more orders
/// and answers those in flight).
async fn serve(
    service: Arc<OrdoService>,
    mut orders: Streaming<v1::PlaceOrderRequest>,
    retry: bool,
    replies: mpsc::Sender<Result<v1::OrderStreamReply, Status>>,
    _slot: OwnedSemaphorePermit,
) {
    let mut closing = service.closing.clone();
    let stall = service.limits.watch_stall;
    let mut in_flight = FuturesUnordered::new();
    let mut reading = true;
    loop {
        tokio::select! {
            order = orders.message(), if reading && in_flight.len() < ORDER_STREAM_IN_FLIGHT_MAX => {
                match order {
                    Ok(Some(order)) => in_flight.push(service.stream_order(order, retry)),
                    Ok(None) => reading = false,
                    Err(status) => {
                        // A broken or oversized message: the stream can carry no more orders.
                        reading = false;
                        let _ = replies.send(Err(status)).await;
                    }
                }
            }
            Some(reply) = in_flight.next(), if !in_flight.is_empty() => {
                // A client that takes no reply for a whole stall window (the buffer holds as
                // many replies as orders may be in flight) is cut off, as a feed stream's is:
                // it would otherwise hold its slot and its replies for good.
                match tokio::time::timeout(stall, replies.send(Ok(reply))).await {
                    Ok(Ok(())) => {}
                    // The client went away or stopped reading; its orders in flight still
                    // run to their epochs.
                    Ok(Err(_)) | Err(_) => return,
                }
            }
            _ = closing.changed(), if reading => reading = false,
            else => return,
        }
    }
}

//! Many orders over one OrderStream (see `ordo.proto`): one DATA frame each way per order
//! instead of a whole HTTP/2 stream. Orders placed concurrently through one [`OrderStream`]
//! share it; each waits for the reply that names its request id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ordo_proto::v1;
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

use crate::{order_request, Client, Error, Line};

type Reply = Result<v1::OrderResult, Error>;

/// The orders of a stream waiting for their replies, by request id.
#[derive(Default)]
struct Waiting {
    /// Each with the number of its registration, so a call removes only its own.
    replies: HashMap<String, (u64, oneshot::Sender<Reply>)>,
    registrations: u64,
    /// Why the stream ended, once it has: no order may wait on it any more.
    closed: Option<String>,
}

/// An open OrderStream to one node. Dropping it ends the stream.
pub struct OrderStream {
    client: Client,
    orders: mpsc::Sender<v1::PlaceOrderRequest>,
    waiting: Arc<Mutex<Waiting>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for OrderStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What an order gets when its stream ended before its reply: its outcome is unknown.
fn ended(why: &str) -> Error {
    Error::Status(Status::unavailable(format!(
        "the order stream ended before this order's reply ({why}); its outcome is unknown: \
         retry it with the same request id"
    )))
}

impl Client {
    /// Opens an OrderStream to the current endpoint. It does not move to another node or
    /// retry: an order whose stream fails has an unknown outcome, and
    /// [`Client::place_order_request`] with the same request id learns it.
    pub async fn order_stream(&self) -> Result<OrderStream, Error> {
        let (orders, outbox) = mpsc::channel(ordo_proto::ORDER_STREAM_IN_FLIGHT_MAX);
        let mut ordo = self.ordo();
        let opened = tokio::time::timeout(
            self.attempt_timeout,
            ordo.order_stream(tokio_stream::wrappers::ReceiverStream::new(outbox)),
        )
        .await
        .map_err(|_| {
            Error::Status(Status::deadline_exceeded(format!(
                "{} did not open an order stream within {:?}",
                self.current_endpoint(),
                self.attempt_timeout
            )))
        })??;
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let reader = tokio::spawn(read_replies(
            opened.into_inner(),
            waiting.clone(),
            self.clone(),
        ));
        Ok(OrderStream {
            client: self.clone(),
            orders,
            waiting,
            reader,
        })
    }
}

/// Hands each reply to the order waiting for it; when the stream ends, fails every order
/// still waiting and every later one.
async fn read_replies(
    mut replies: tonic::Streaming<v1::OrderStreamReply>,
    waiting: Arc<Mutex<Waiting>>,
    client: Client,
) {
    let why = loop {
        match replies.message().await {
            Ok(Some(reply)) => {
                let answer = answer(reply.answer);
                if let Ok(result) = &answer {
                    client.saw_epoch(result.epoch);
                }
                let to = waiting
                    .lock()
                    .expect("waiting lock")
                    .replies
                    .remove(&reply.request_id);
                if let Some((_, to)) = to {
                    let _ = to.send(answer);
                }
            }
            Ok(None) => break "the node ended it".to_string(),
            Err(status) => break format!("{}: {}", status.code(), status.message()),
        }
    };
    let mut waiting = waiting.lock().expect("waiting lock");
    waiting.closed = Some(why.clone());
    for (_, (_, to)) in waiting.replies.drain() {
        let _ = to.send(Err(ended(&why)));
    }
}

fn answer(answer: Option<v1::order_stream_reply::Answer>) -> Reply {
    use v1::order_stream_reply::Answer;
    match answer {
        Some(Answer::Result(result)) => Ok(result),
        Some(Answer::Error(e)) => {
            let mut status = Status::new(Code::from_i32(e.code), e.message);
            if e.not_applied {
                status.metadata_mut().insert(
                    ordo_proto::OUTCOME_METADATA_KEY,
                    tonic::metadata::MetadataValue::from_static(ordo_proto::OUTCOME_NOT_APPLIED),
                );
            }
            Err(Error::Status(status))
        }
        None => Err(Error::Protocol(
            "an order stream reply without an answer".into(),
        )),
    }
}

impl OrderStream {
    /// Places one order on the stream (a request id is generated), like
    /// [`Client::place_order`] without its retries.
    pub async fn place_order(&self, lines: &[Line], partial: bool) -> Reply {
        self.place_order_request(order_request(lines, partial, String::new()))
            .await
    }

    /// Places one order from a full request (an empty request id is filled in). An id already
    /// waiting on this stream is refused here: its reply could not be told apart.
    pub async fn place_order_request(&self, mut request: v1::PlaceOrderRequest) -> Reply {
        if request.request_id.is_empty() {
            request.request_id = self.client.new_request_id();
        }
        let id = request.request_id.clone();
        let (to, reply) = oneshot::channel();
        let registration = {
            let mut waiting = self.waiting.lock().expect("waiting lock");
            if let Some(why) = &waiting.closed {
                return Err(ended(why));
            }
            if waiting.replies.contains_key(&id) {
                return Err(Error::Protocol(format!(
                    "request id {id:?} is already waiting for its reply on this order stream"
                )));
            }
            waiting.registrations += 1;
            let registration = waiting.registrations;
            waiting.replies.insert(id.clone(), (registration, to));
            registration
        };
        let sent_and_answered = async {
            if self.orders.send(request).await.is_err() {
                return Err(ended("it no longer takes orders"));
            }
            reply
                .await
                .unwrap_or_else(|_| Err(ended("its reader stopped")))
        };
        let answer = tokio::time::timeout(self.client.attempt_timeout, sent_and_answered)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Status(Status::deadline_exceeded(format!(
                    "no reply within {:?} on the order stream; the outcome is unknown: retry \
                     with the same request id",
                    self.client.attempt_timeout
                ))))
            });
        if answer.is_err() {
            // Unless its reply took it already (and the id may wait again, for another call):
            // a late reply then finds no one waiting.
            let mut waiting = self.waiting.lock().expect("waiting lock");
            if waiting
                .replies
                .get(&id)
                .is_some_and(|(r, _)| *r == registration)
            {
                waiting.replies.remove(&id);
            }
        }
        answer
    }
}

//! Where a feed stream's messages wait for its consumer (Watch and WatchNotifications): a
//! buffer bounded in messages and bytes, inside a byte budget the node's streams share, and
//! the stall rule that cuts off a consumer that takes too little.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::bytes::Bytes;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::Status;

use super::encoded::EncodedStream;
use super::watch::closing;
use crate::limits::Limits;

/// A message in a stream's buffer, with the bytes of the budgets it holds until the
/// transport takes it.
pub(super) struct Held {
    message: Bytes,
    _stream: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
}

/// A stream's buffer, shared by its consumer side ([`outbox_stream`]) and its producer,
/// which empties it when it cuts the consumer off.
pub(super) type Buffer = Arc<Mutex<mpsc::Receiver<Held>>>;

/// A stream's messages as the client sees them: what its producer buffered, then how the
/// stream ended (the producer's status, if it sent one; otherwise a plain end). A message
/// leaves the budgets, and counts as taken by the consumer, when the transport takes it:
/// hyper asks for the next message only when HTTP/2 flow control has room for it, so a
/// consumer that does not read takes nothing.
pub(super) fn outbox_stream(
    rx: Buffer,
    end: oneshot::Receiver<Status>,
    taken: Arc<AtomicU64>,
) -> EncodedStream {
    let stream = futures::stream::unfold((rx, Some(end)), move |(rx, end)| {
        let taken = taken.clone();
        async move {
            // The lock is held only while polling, never across an await; a message is counted
            // as taken under it, so the producer's cut (which empties the buffer under it)
            // sees every message that left the buffer.
            let next = futures::future::poll_fn(|cx| {
                let polled = rx.lock().expect("stream buffer").poll_recv(cx);
                if let std::task::Poll::Ready(Some(held)) = &polled {
                    taken.fetch_add(held.message.len() as u64, Ordering::Relaxed);
                }
                polled
            })
            .await;
            match next {
                Some(held) => Some((Ok(held.message), (rx, end))),
                None => match end?.await {
                    Ok(status) => Some((Err(status), (rx, None))),
                    Err(_) => None,
                },
            }
        }
    });
    Box::pin(stream)
}

/// What a feed stream may hold: its own buffer in messages and bytes, and the node's budget
/// for every stream's buffer together; and the largest message it may send.
#[derive(Clone)]
pub(super) struct StreamLimits {
    pub(super) buffer_messages: usize,
    pub(super) buffer_bytes: usize,
    /// The node's budget, in bytes, shared by every stream (`--streams-buffer-bytes-max`).
    pub(super) node: Arc<Semaphore>,
    /// The largest message, encoded: half the node's message limit, at most 1 MiB, so it
    /// passes the node's limit and the 4 MiB that gRPC clients accept by default.
    pub(super) message_bytes_max: usize,
    /// How long a consumer may take too little while its buffer is backed up.
    pub(super) stall: Duration,
}

impl StreamLimits {
    pub(super) fn new(limits: &Limits, node: Arc<Semaphore>) -> Self {
        Self {
            buffer_messages: limits.watch_buffer_messages,
            buffer_bytes: limits.watch_buffer_bytes,
            node,
            message_bytes_max: stream_message_bytes_max(limits.message_bytes_max),
            stall: limits.watch_stall,
        }
    }
}

/// The largest message a feed stream sends under a node message limit of `node_max`.
pub(super) fn stream_message_bytes_max(node_max: usize) -> usize {
    (node_max / 2).min(STREAM_MESSAGE_BYTES_MAX)
}

/// The room a producer waits for before it reads a feed page ([`Outbox::ready`]): about what
/// the messages of one page take (a page is at most 256 KiB of the feed, and the messages
/// carry a little more than the feed's encoding).
const READY_BYTES: usize = 512 * 1024;

/// A reserved place in a stream's buffer.
type Slot = mpsc::OwnedPermit<Held>;

/// The most a feed stream's message holds, encoded: under the 4 MiB that gRPC clients accept
/// by default, and under half the smallest node message limit for the largest single event.
pub(super) const STREAM_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
const _: () = assert!(STREAM_MESSAGE_BYTES_MAX <= 4 * 1024 * 1024 / 2);

/// Where a stream's messages go, encoded (`encoded.rs` says why here), and what ends it early.
///
/// The stall rule: while the stream is backed up (a message had to wait for room in the
/// buffer or the node's budget), its consumer must take, in every `stall`, at least a quarter
/// of what was buffered for it when that window began (at least one byte). One that takes
/// less is cut off with RESOURCE_EXHAUSTED and a resume token: a reader taking one message
/// every few seconds cannot hold its buffer, or the node's budget, for good. What waited for
/// it is dropped at once (a consumer that does not read would never take it), so the bytes go
/// back to the budgets whether or not the status ever reaches it. A consumer that took
/// everything is never cut, however long its producer waits for the node's budget.
pub(super) struct Outbox<T> {
    pub(super) tx: mpsc::Sender<Held>,
    /// The buffer's other end, emptied when the consumer is cut off.
    buffer: Buffer,
    /// This stream's buffer, in bytes.
    stream: Arc<Semaphore>,
    limits: StreamLimits,
    /// Bytes the consumer has taken (the transport pulled them), counted by [`outbox_stream`].
    taken: Arc<AtomicU64>,
    /// Bytes put in the buffer.
    put: u64,
    /// The resume tokens the producer gave, each with the bytes put before it: a consumer
    /// that took that many has everything the token covers. The first is the last one the
    /// consumer is known to have reached; the others wait in the buffer (at most one per
    /// message).
    checkpoints: VecDeque<(u64, String)>,
    /// Since when the stream has been backed up, and what the consumer had taken then.
    backed_up: Option<(Instant, u64)>,
    /// The node is stopping.
    pub(super) closing: watch::Receiver<bool>,
    pub(super) node_id: u64,
    message: PhantomData<fn(T)>,
}

impl<T: Message> Outbox<T> {
    /// A stream's outbox and the stream the client reads.
    pub(super) fn new(
        limits: StreamLimits,
        closing: watch::Receiver<bool>,
        node_id: u64,
    ) -> (Self, Buffer, Arc<AtomicU64>) {
        let (tx, rx) = mpsc::channel(limits.buffer_messages);
        let rx = Arc::new(Mutex::new(rx));
        let taken = Arc::new(AtomicU64::new(0));
        let outbox = Self {
            tx,
            buffer: rx.clone(),
            stream: Arc::new(Semaphore::new(limits.buffer_bytes)),
            limits,
            taken: taken.clone(),
            put: 0,
            checkpoints: VecDeque::new(),
            backed_up: None,
            closing,
            node_id,
            message: PhantomData,
        };
        (outbox, rx, taken)
    }

    /// Drops what waits in the buffer, giving its bytes back to the budgets: the consumer was
    /// cut off, and one that does not read would never take them (nor the status after them,
    /// which then goes out at once if the transport asks). Returns the token of what the
    /// consumer did take, which is where it must resume (not `token`, which covers what was
    /// dropped too).
    fn discard(&mut self, token: &str) -> String {
        {
            let mut rx = self.buffer.lock().expect("stream buffer");
            while rx.try_recv().is_ok() {}
        }
        // Nothing leaves the buffer any more: what was taken is final.
        let taken = self.taken.load(Ordering::Relaxed);
        self.checkpoints
            .iter()
            .rev()
            .find(|(put, _)| *put <= taken)
            .map_or_else(|| token.to_string(), |(_, token)| token.clone())
    }

    /// Notes that a consumer who took what was put so far can resume from `token`, and
    /// forgets the tokens it has passed.
    fn checkpoint(&mut self, token: &str) {
        if self.checkpoints.back().is_none_or(|(_, t)| t != token) {
            self.checkpoints.push_back((self.put, token.to_string()));
        }
        let taken = self.taken.load(Ordering::Relaxed);
        while self
            .checkpoints
            .get(1)
            .is_some_and(|(put, _)| *put <= taken)
        {
            self.checkpoints.pop_front();
        }
    }

    /// The largest message this stream sends, encoded.
    pub(super) fn message_bytes_max(&self) -> usize {
        self.limits.message_bytes_max
    }

    /// Waits, holding nothing, until the buffer and the node's budget have room for what one
    /// feed page makes ([`READY_BYTES`]; the stall rule applies meanwhile). A producer calls it
    /// before it reads a page, so a thousand producers held up by their consumers or by the
    /// budget hold no page each, only their place. Errors as [`Outbox::send`]'s.
    pub(super) async fn ready(&mut self, token: &str) -> Result<(), Option<Status>> {
        let bytes = READY_BYTES.min(self.limits.buffer_bytes) as u32;
        self.room(bytes, token).await.map(drop)
    }

    /// Puts a message in the buffer when it has room (the stall rule above). `Err(None)`: the
    /// client went away; `Err(Some(status))`: the consumer took too little, or the node is
    /// stopping (`token` resumes the stream).
    pub(super) async fn send(&mut self, message: T, token: &str) -> Result<(), Option<Status>> {
        let message = Bytes::from(message.encode_to_vec());
        // A message over the stream's share could never get room. The producers cut their
        // messages under `message_bytes_max`, which start-up keeps under the buffer's bytes.
        let bytes = message.len().min(self.limits.buffer_bytes) as u32;
        let (own, shared, slot) = self.room(bytes, token).await?;
        self.put += message.len() as u64;
        slot.send(Held {
            message,
            _stream: own,
            _node: shared,
        });
        Ok(())
    }

    /// `bytes` of the stream's buffer and of the node's budget, and a place in the buffer,
    /// once they are free (the stall rule applies while they are not).
    async fn room(
        &mut self,
        bytes: u32,
        token: &str,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit, Slot), Option<Status>> {
        self.checkpoint(token);
        let (stream, node, tx) = (
            self.stream.clone(),
            self.limits.node.clone(),
            self.tx.clone(),
        );
        let room = async move {
            let own = stream.acquire_many_owned(bytes).await;
            let shared = node.acquire_many_owned(bytes).await;
            let slot = tx.reserve_owned().await;
            match (own, shared, slot) {
                (Ok(own), Ok(shared), Ok(slot)) => Some((own, shared, slot)),
                _ => None,
            }
        };
        tokio::pin!(room);
        let reserved = match futures::poll!(&mut room) {
            std::task::Poll::Ready(reserved) => {
                self.backed_up = None;
                reserved
            }
            std::task::Poll::Pending => {
                let mut stopping = self.closing.clone();
                loop {
                    let (since, taken_then) = *self
                        .backed_up
                        .get_or_insert((Instant::now(), self.taken.load(Ordering::Relaxed)));
                    tokio::select! {
                        reserved = &mut room => break reserved,
                        _ = tokio::time::sleep_until(since + self.limits.stall) => {
                            self.check_progress(since, taken_then, token)?;
                        }
                        _ = stopping.wait_for(|&c| c) => {
                            return Err(Some(closing(self.node_id, token)));
                        }
                    }
                }
            }
        };
        reserved.ok_or(None)
    }

    /// At the end of a backed-up window: cuts the stream if its consumer took less than a
    /// quarter of what was buffered for it when the window began (emptying its buffer, with
    /// the token of what it took), else opens the next window.
    fn check_progress(
        &mut self,
        since: Instant,
        taken_then: u64,
        token: &str,
    ) -> Result<(), Option<Status>> {
        if self.tx.is_closed() {
            return Err(None);
        }
        let taken = self.taken.load(Ordering::Relaxed);
        let buffered_then = self.put.saturating_sub(taken_then);
        let buffered = self.put.saturating_sub(taken);
        let needed = (buffered_then / 4).max(1);
        if buffered > 0 && taken - taken_then < needed {
            // Cut off: what waits for it goes, and it resumes after what it took.
            let reached = self.discard(token);
            let taken = self.taken.load(Ordering::Relaxed);
            return Err(Some(stalled(
                taken - taken_then,
                self.put.saturating_sub(taken),
                since.elapsed(),
                &reached,
            )));
        }
        self.backed_up = Some((Instant::now(), taken));
        Ok(())
    }
}

fn stalled(taken: u64, buffered: u64, window: Duration, token: &str) -> Status {
    let mut status = Status::resource_exhausted(format!(
        "watch: the consumer took {taken} bytes in {} ms while {buffered} bytes waited for it \
         (it reads too slowly or stopped reading); resume with token {token}",
        window.as_millis()
    ));
    if let Ok(value) = token.parse() {
        status.metadata_mut().insert("ordo-resume-token", value);
    }
    status.metadata_mut().insert(
        "ordo-stream-end",
        tonic::metadata::MetadataValue::from_static("slow-consumer"),
    );
    status
}

//! Watch: the change feed, streamed.
//!
//! Each stream has a producer task that reads the node's feed (`Store::feed_read`) from the
//! epoch it has reached, filters, and puts messages into the stream's bounded buffer. It pulls
//! from the store, so epoch execution never waits for a watcher and a watcher that falls
//! behind costs no memory beyond its buffer: it reads older epochs until it catches up, or
//! until retention passes it by (OUT_OF_RANGE, never a silent jump). A consumer that stops
//! reading leaves its buffer full; after `watch_stall` the stream ends with RESOURCE_EXHAUSTED
//! and a resume token, and the producer and its watcher slot are freed. When it has caught up,
//! the producer waits for the next applied epoch, and sends a Progress message whenever the
//! stream has been quiet for the progress interval: on the same stream, after every event
//! of the epochs it covers.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use ordo_proto::v1;
use ordo_scheduler::feed::{Cause, EpochEvents, Event, EventKind, Filter, ReservationStep};
use ordo_storage::Store;
use prost::Message;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::encoded::EncodedStream;
use super::outbox::{outbox_stream, Outbox};
use super::OrdoService;
use crate::convert;

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::WatchResponse, Status>> + Send>>;

/// Feed entries (epochs with events) read from the store at once.
const WATCH_EPOCHS_PER_READ_MAX: usize = 256;
/// Bytes of encoded events read from the store at once (at least one epoch): what a producer
/// holds beside its buffer, so a thousand slow watchers hold a thousand of these.
pub(super) const FEED_READ_BYTES_MAX: usize = 256 * 1024;
/// Events in one Events message; an epoch with more comes in several.
pub const WATCH_EVENTS_PER_MESSAGE_MAX: usize = 1000;
/// What an Events message holds beside its events (epoch, time, token, flag), and what each
/// event adds beside its own bytes (tag and length), at most.
const EVENTS_MESSAGE_OVERHEAD_BYTES: usize = 256;
const EVENT_FRAMING_BYTES: usize = 8;
/// SKUs or DCs one filter may name.
const WATCH_FILTER_IDS_MAX: usize = 1000;
const PROGRESS_INTERVAL_MS_DEFAULT: u32 = 1000;
const PROGRESS_INTERVAL_MS_MIN: u32 = 10;

/// A request's progress interval: the default for 0, at least the minimum.
pub(super) fn progress_interval(ms: u32) -> Duration {
    let ms = match ms {
        0 => PROGRESS_INTERVAL_MS_DEFAULT,
        ms => ms.max(PROGRESS_INTERVAL_MS_MIN),
    };
    Duration::from_millis(u64::from(ms))
}

/// The token that resumes after `epoch`: opaque to clients, the same on every node.
pub fn resume_token(epoch: u64) -> String {
    format!("ordo1.{epoch}")
}

/// The epoch a resume token names.
pub fn parse_resume_token(token: &str) -> Result<u64, Status> {
    token
        .strip_prefix("ordo1.")
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "watch: {token:?} is not a resume token (pass one a Watch stream sent)"
            ))
        })
}

/// How a stream ends when its node stops.
pub(super) fn closing(node_id: u64, token: &str) -> Status {
    let mut status = Status::unavailable(format!(
        "node {node_id} is stopping; resume on another node with token {token}"
    ));
    if let Ok(value) = token.parse() {
        status.metadata_mut().insert("ordo-resume-token", value);
    }
    status
}

pub(super) fn out_of_range(node_id: u64, from: u64, start: u64) -> Status {
    let mut status = Status::out_of_range(format!(
        "watch: node {node_id} keeps events from epoch {start} on, not from epoch {from}: read \
         the state at AT_LEAST epoch {} (GetAvailability, ListOrders), then watch from the \
         epoch after the one the read reports",
        start.saturating_sub(1)
    ));
    if let Ok(value) = start.to_string().parse() {
        status.metadata_mut().insert("ordo-feed-start", value);
    }
    status
}

fn kind(k: i32) -> Result<EventKind, Status> {
    use v1::EventKind as K;
    match K::try_from(k) {
        Ok(K::Stock) => Ok(EventKind::Stock),
        Ok(K::Price) => Ok(EventKind::Price),
        Ok(K::Order) => Ok(EventKind::Order),
        Ok(K::Reservation) => Ok(EventKind::Reservation),
        Ok(K::Dc) => Ok(EventKind::Dc),
        Ok(K::Item) => Ok(EventKind::Item),
        _ => Err(Status::invalid_argument(format!(
            "watch: kinds: unknown event kind {k}"
        ))),
    }
}

fn ids(ids: Vec<u32>, field: &str) -> Result<BTreeSet<u32>, Status> {
    if ids.len() > WATCH_FILTER_IDS_MAX {
        return Err(Status::invalid_argument(format!(
            "watch: at most {WATCH_FILTER_IDS_MAX} {field}, not {}",
            ids.len()
        )));
    }
    if ids.contains(&0) {
        return Err(Status::invalid_argument(format!(
            "watch: {field} start at 1"
        )));
    }
    Ok(ids.into_iter().collect())
}

impl OrdoService {
    /// One of the node's watcher slots (Watch and WatchNotifications streams share them).
    pub(super) fn watcher_slot(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.watchers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "node {} serves {} watch streams, its limit (--watchers-max); watch on another \
                 node or later",
                self.node.node_id, self.limits.watchers_max
            ))
        })
    }

    pub(super) async fn watch_inner(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<EncodedStream>, Status> {
        use v1::watch_request::Start;
        let r = request.into_inner();
        let store = self.node.store.clone();
        let from = match r.start {
            Some(Start::FromEpoch(e)) => e.max(1),
            Some(Start::ResumeToken(t)) => parse_resume_token(&t)?.saturating_add(1),
            Some(Start::FromNow(_)) | None => store.applied_epoch() + 1,
        };
        let filter = Filter {
            skus: ids(r.skus, "skus")?,
            dcs: ids(r.dc_ids, "dc_ids")?,
            kinds: r.kinds.into_iter().map(kind).collect::<Result<_, _>>()?,
        };
        let start = store.feed_start();
        if from < start {
            return Err(out_of_range(self.node.node_id, from, start));
        }
        let permit = self.watcher_slot()?;
        let (out, rx, taken) = Outbox::new(
            self.stream_limits(),
            self.closing.clone(),
            self.node.node_id,
        );
        let (end_tx, end_rx) = oneshot::channel();
        let producer = Producer {
            node_id: self.node.node_id,
            store,
            applied: self.node.applied_epoch.clone(),
            filter,
            progress: progress_interval(r.progress_interval_ms),
            out,
            delivered: from - 1,
            _permit: permit,
        };
        super::background::feed().spawn(async move {
            if let Err(status) = producer.run(from).await {
                let _ = end_tx.send(status);
            }
        });
        Ok(Response::new(outbox_stream(rx, end_rx, taken)))
    }
}

/// One stream's producer.
struct Producer {
    node_id: u64,
    store: Arc<Store>,
    applied: watch::Receiver<u64>,
    filter: Filter,
    progress: Duration,
    out: Outbox<v1::WatchResponse>,
    /// Every event through this epoch is in the buffer (or was taken from it).
    delivered: u64,
    /// The stream's watcher slot, released when the producer ends.
    _permit: OwnedSemaphorePermit,
}

impl Producer {
    /// Streams from epoch `next` until the client goes away (`Ok`) or the stream must end with
    /// a status (`Err`).
    async fn run(mut self, mut next: u64) -> Result<(), Status> {
        let mut quiet_since = Instant::now();
        loop {
            if *self.out.closing.borrow() {
                return Err(closing(self.node_id, &resume_token(self.delivered)));
            }
            // Room for the page's messages first: a producer held up holds no page.
            match self.out.ready(&resume_token(self.delivered)).await {
                Ok(()) => {}
                Err(Some(status)) => return Err(status),
                Err(None) => return Ok(()),
            }
            let store = self.store.clone();
            let page = super::background::read(move || {
                store.feed_read(next, WATCH_EPOCHS_PER_READ_MAX, FEED_READ_BYTES_MAX)
            })
            .await
            .map_err(|e| Status::internal(format!("watch: reading the feed: {e}")))?;
            if next < page.start {
                return Err(out_of_range(self.node_id, next, page.start));
            }
            for (epoch, bytes) in &page.entries {
                let events = EpochEvents::decode(bytes).map_err(|e| {
                    Status::internal(format!("watch: the feed entry of epoch {epoch}: {e}"))
                })?;
                match self.send_epoch(*epoch, &events).await {
                    Ok(true) => quiet_since = Instant::now(),
                    Ok(false) => {}
                    Err(Some(status)) => return Err(status),
                    Err(None) => return Ok(()),
                }
                // Catching up is CPU work that rarely waits (the buffer has room): let
                // requests and epochs run between epochs.
                tokio::task::yield_now().await;
            }
            if page.through >= next {
                next = page.through + 1;
                self.delivered = page.through;
            }
            if quiet_since.elapsed() >= self.progress {
                // No progress past what this node applied (a start in the future waits
                // quietly, without spinning on the elapsed interval).
                if self.delivered <= page.applied {
                    match self.send_progress().await {
                        Ok(()) => {}
                        Err(Some(status)) => return Err(status),
                        Err(None) => return Ok(()),
                    }
                }
                quiet_since = Instant::now();
            }
            if page.through < page.applied {
                continue; // More to read now.
            }
            tokio::select! {
                reached = self.applied.wait_for(|&e| e >= next) => {
                    if reached.is_err() {
                        return Ok(()); // The node is shutting down.
                    }
                }
                _ = tokio::time::sleep_until(quiet_since + self.progress) => {}
                _ = self.out.tx.closed() => return Ok(()),
                _ = self.out.closing.wait_for(|&c| c) => {
                    return Err(closing(self.node_id, &resume_token(self.delivered)));
                }
            }
        }
    }

    /// Sends the events of `epoch` that pass the filter; whether any did. `Err(None)`: the
    /// client went away. Messages are cut at [`WATCH_EVENTS_PER_MESSAGE_MAX`] events and at
    /// the stream's message bytes, and built one ahead of the one sent (to know whether more
    /// follow), so a large epoch costs two messages of memory, not the epoch's.
    async fn send_epoch(
        &mut self,
        epoch: u64,
        events: &EpochEvents,
    ) -> Result<bool, Option<Status>> {
        let budget = self
            .out
            .message_bytes_max()
            .saturating_sub(EVENTS_MESSAGE_OVERHEAD_BYTES);
        let matching: Vec<u32> = (0..events.events.len() as u32)
            .filter(|&i| self.filter.matches(&events.events[i as usize]))
            .collect();
        let mut cursor = 0;
        let mut next_chunk = || {
            let mut chunk = Vec::new();
            let mut chunk_bytes = 0;
            while let Some(&index) = matching.get(cursor) {
                let wire = change_event(index, &events.events[index as usize], epoch);
                let bytes = wire.encoded_len() + EVENT_FRAMING_BYTES;
                if !chunk.is_empty()
                    && (chunk.len() >= WATCH_EVENTS_PER_MESSAGE_MAX || chunk_bytes + bytes > budget)
                {
                    break;
                }
                chunk_bytes += bytes;
                chunk.push(wire);
                cursor += 1;
            }
            chunk
        };
        let mut chunk = next_chunk();
        if chunk.is_empty() {
            return Ok(false);
        }
        loop {
            let following = next_chunk();
            let more = !following.is_empty();
            let message = v1::WatchEvents {
                epoch,
                epoch_time_ms: events.time_ms,
                events: chunk,
                resume_token: if more {
                    String::new()
                } else {
                    resume_token(epoch)
                },
                more,
            };
            self.send(v1::watch_response::Message::Events(message))
                .await?;
            if !more {
                break;
            }
            chunk = following;
        }
        self.delivered = epoch;
        Ok(true)
    }

    async fn send_progress(&mut self) -> Result<(), Option<Status>> {
        let progress = v1::WatchProgress {
            epoch: self.delivered,
            resume_token: resume_token(self.delivered),
        };
        self.send(v1::watch_response::Message::Progress(progress))
            .await
    }

    /// Puts a message in the buffer, waiting at most `stall` for room.
    async fn send(&mut self, message: v1::watch_response::Message) -> Result<(), Option<Status>> {
        let response = v1::WatchResponse {
            message: Some(message),
        };
        let token = resume_token(self.delivered);
        self.out.send(response, &token).await
    }
}

fn level(r: &ordo_scheduler::model::StockRecord) -> v1::StockLevel {
    v1::StockLevel {
        on_hand: r.on_hand,
        reserved: r.reserved,
        available: r.available(),
    }
}

/// The wire form of the event at `index` of `epoch`'s events.
pub fn change_event(index: u32, event: &Event, epoch: u64) -> v1::ChangeEvent {
    use v1::change_event::Event as E;
    let wire = match event {
        Event::Stock(s) => {
            use v1::StockCause as C;
            let (cause, order_id, reservation_id) = match s.cause {
                Cause::Order { order_id } => (C::Order, order_id, 0),
                Cause::Restock => (C::Restock, 0, 0),
                Cause::Transfer => (C::Transfer, 0, 0),
                Cause::Hold { reservation_id } => (C::Reservation, 0, reservation_id),
                Cause::Confirm {
                    reservation_id,
                    order_id,
                } => (C::Confirm, order_id, reservation_id),
                Cause::Cancel { reservation_id } => (C::Cancel, 0, reservation_id),
                Cause::Expiry { reservation_id } => (C::Expiry, 0, reservation_id),
            };
            E::Stock(v1::StockEvent {
                dc_id: s.dc,
                sku: s.sku,
                before: Some(level(&s.before)),
                after: Some(level(&s.after)),
                cause: cause as i32,
                order_id,
                reservation_id,
                request_id: s.request_id.clone(),
            })
        }
        Event::Price(p) => E::Price(v1::PriceEvent {
            sku: p.sku,
            before_cents: p.before_cents,
            after_cents: p.after_cents,
            currency: p.currency.clone(),
            request_id: p.request_id.clone(),
        }),
        Event::Order(o) => E::Order(convert::order(o)),
        Event::Reservation(r) => {
            use v1::ReservationStep as S;
            let step = match r.step {
                ReservationStep::Held => S::Held,
                ReservationStep::Confirmed => S::Confirmed,
                ReservationStep::Cancelled => S::Cancelled,
                ReservationStep::Extended => S::Extended,
            };
            E::Reservation(v1::ReservationEvent {
                step: step as i32,
                reservation: Some(convert::reservation(
                    Some(&r.reservation),
                    None,
                    epoch,
                    None,
                )),
            })
        }
        Event::Dc(d) => E::Dc(convert::dc(d)),
        Event::Item(i) => E::Item(v1::Item {
            sku: i.sku,
            name: i.name.clone(),
            price_cents: i.price_cents,
        }),
    };
    v1::ChangeEvent {
        index,
        event: Some(wire),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_tokens_round_trip_and_refuse_what_is_not_one() {
        assert_eq!(parse_resume_token(&resume_token(42)).unwrap(), 42);
        for bad in ["", "42", "ordo1.", "ordo1.x", "ordo2.42"] {
            assert!(parse_resume_token(bad).is_err(), "{bad:?}");
        }
    }
}

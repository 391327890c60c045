//! WatchNotifications: one notification per (subscriber, triggering change), fanned out while
//! streaming.
//!
//! The producer reads the node's feed like a Watch stream. An epoch's triggers are computed
//! from its events alone ([`triggers`]): per SKU, a price lower at the end of the epoch than at
//! its start (PRICE_DROP), and DCs whose row had none available at the start and some at the
//! end (BACK_IN_STOCK); in (kind, SKU) order. For each trigger it pages through this worker's
//! shard of the SKU's subscriptions in (bucket, user) order ([`reads::subscribers`], a thousand
//! at a time: the index is laid out by shard, so a worker reads its own users only), keeps
//! those that stood when the epoch began and match their parameters, and streams them in
//! batches. Nothing is held but one page and the stream's bounded buffer, and
//! the epoch applier never waits for it. The resume token names the position in that walk
//! (epoch, trigger, last user), the same on every node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ordo_proto::v1;
use ordo_scheduler::feed::{EpochEvents, Event};
use ordo_scheduler::reads;
use ordo_scheduler::subs::{SubKind, SubTag, SubscriptionRecord};
use ordo_storage::Store;
use prost::Message;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::encoded::EncodedStream;
use super::outbox::{outbox_stream, Outbox};
use super::subscriptions::wire_kind;
use super::watch::{closing, out_of_range, progress_interval, FEED_READ_BYTES_MAX};
use super::{internal, OrdoService};

pub type NotificationStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<v1::WatchNotificationsResponse, Status>> + Send>,
>;

/// Subscriptions read from the store at once.
const SUBSCRIBERS_PAGE_MAX: usize = 1000;
/// Notifications in one message (and at most the stream's message bytes).
pub const NOTIFICATIONS_PER_MESSAGE_MAX: usize = 500;
/// DCs one BACK_IN_STOCK notification lists (nearest first); it counts the rest.
pub const NOTIFICATION_DCS_MAX: usize = 100;
/// What a notifications message holds beside its notifications (token, epoch), and what
/// each notification adds beside its own bytes, at most.
const NOTIFICATIONS_MESSAGE_OVERHEAD_BYTES: usize = 256;
const NOTIFICATION_FRAMING_BYTES: usize = 8;
/// Shards a request may split users into.
const SHARDS_MAX: u32 = 65_536;
/// DC points a producer keeps read (a DC table of the seeds' 10,000 fits).
const DC_POINTS_CACHED_MAX: usize = 100_000;

/// Where a notification stream stands: epoch, trigger of that epoch, last user notified for
/// that trigger (`None`: none yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub epoch: u64,
    pub trigger: u32,
    pub after: Option<String>,
}

impl Position {
    fn epoch_start(epoch: u64) -> Self {
        Self {
            epoch,
            trigger: 0,
            after: None,
        }
    }

    /// `n1.EPOCH.TRIGGER.USERHEX` (USERHEX empty: from the trigger's first subscriber).
    pub fn token(&self) -> String {
        let hex: String = self
            .after
            .as_deref()
            .unwrap_or_default()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("n1.{}.{}.{hex}", self.epoch, self.trigger)
    }

    pub fn parse(token: &str) -> Result<Self, Status> {
        let bad = || {
            Status::invalid_argument(format!(
                "watch_notifications: {token:?} is not a notification resume token"
            ))
        };
        let mut parts = token.strip_prefix("n1.").ok_or_else(bad)?.split('.');
        let epoch = parts.next().and_then(|e| e.parse().ok()).ok_or_else(bad)?;
        let trigger = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        let hex = parts.next().ok_or_else(bad)?;
        // Hex digits only, checked before slicing: a multi-byte character would put a slice
        // boundary inside it (a panic in the handler).
        if parts.next().is_some()
            || hex.len() % 2 != 0
            || !hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad());
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad()))
            .collect::<Result<Vec<u8>, _>>()?;
        let after = match bytes.is_empty() {
            true => None,
            false => Some(String::from_utf8(bytes).map_err(|_| bad())?),
        };
        Ok(Self {
            epoch,
            trigger,
            after,
        })
    }
}

/// What can notify subscribers of one SKU in one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    PriceDrop {
        sku: u32,
        before_cents: i64,
        after_cents: i64,
        currency: String,
    },
    BackInStock {
        sku: u32,
        /// (dc, units available at the epoch's end), by DC.
        dcs: Vec<(u32, i64)>,
    },
}

impl Trigger {
    fn sku(&self) -> u32 {
        match self {
            Trigger::PriceDrop { sku, .. } | Trigger::BackInStock { sku, .. } => *sku,
        }
    }

    fn tag(&self) -> SubTag {
        match self {
            Trigger::PriceDrop { .. } => SubTag::PriceDrop,
            Trigger::BackInStock { .. } => SubTag::BackInStock,
        }
    }
}

/// An epoch's triggers, from its events alone: price drops by SKU, then restocks by SKU.
pub fn triggers(events: &[Event]) -> Vec<Trigger> {
    // sku → (price at the epoch's start, at its end, currency)
    let mut prices: BTreeMap<u32, (i64, i64, String)> = BTreeMap::new();
    // (sku, dc) → (available at the start, at the end)
    let mut rows: BTreeMap<(u32, u32), (i64, i64)> = BTreeMap::new();
    for event in events {
        match event {
            Event::Price(p) => {
                let entry =
                    prices
                        .entry(p.sku)
                        .or_insert((p.before_cents, p.after_cents, String::new()));
                entry.1 = p.after_cents;
                entry.2 = p.currency.clone();
            }
            Event::Stock(s) => {
                let entry = rows
                    .entry((s.sku, s.dc))
                    .or_insert((s.before.available(), 0));
                entry.1 = s.after.available();
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (sku, (before, after, currency)) in prices {
        if after < before {
            out.push(Trigger::PriceDrop {
                sku,
                before_cents: before,
                after_cents: after,
                currency,
            });
        }
    }
    let mut restocked: BTreeMap<u32, Vec<(u32, i64)>> = BTreeMap::new();
    for ((sku, dc), (before, after)) in rows {
        if before == 0 && after > 0 {
            restocked.entry(sku).or_default().push((dc, after));
        }
    }
    out.extend(
        restocked
            .into_iter()
            .map(|(sku, dcs)| Trigger::BackInStock { sku, dcs }),
    );
    out
}

impl OrdoService {
    pub(super) async fn watch_notifications_inner(
        &self,
        request: Request<v1::WatchNotificationsRequest>,
    ) -> Result<Response<EncodedStream>, Status> {
        use v1::watch_notifications_request::Start;
        let r = request.into_inner();
        let store = self.node.store.clone();
        let position = match r.start {
            Some(Start::FromEpoch(e)) => Position::epoch_start(e.max(1)),
            Some(Start::ResumeToken(t)) => Position::parse(&t)?,
            Some(Start::FromNow(_)) | None => Position::epoch_start(store.applied_epoch() + 1),
        };
        let shards = r.shards.max(1);
        if shards > SHARDS_MAX || r.shard >= shards {
            return Err(Status::invalid_argument(format!(
                "watch_notifications: shard {} of {} (shards is 1 to {SHARDS_MAX}, shard below it)",
                r.shard, r.shards
            )));
        }
        let start = store.feed_start();
        if position.epoch < start {
            return Err(out_of_range(self.node.node_id, position.epoch, start));
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
            shard: r.shard,
            shards,
            progress: progress_interval(r.progress_interval_ms),
            out,
            dcs: BTreeMap::new(),
            last_token: position.token(),
            pace: self.fan_out.clone(),
            _permit: permit,
        };
        super::background::feed().spawn(async move {
            if let Err(status) = producer.run(position).await {
                let _ = end_tx.send(status);
            }
        });
        Ok(Response::new(outbox_stream(rx, end_rx, taken)))
    }
}

struct Producer {
    node_id: u64,
    store: Arc<Store>,
    applied: watch::Receiver<u64>,
    shard: u32,
    shards: u32,
    progress: Duration,
    out: Outbox<v1::WatchNotificationsResponse>,
    /// DC coordinates looked up for near-a-point subscriptions: (lat_e6, lon_e6).
    dcs: BTreeMap<u32, Option<(i32, i32)>>,
    /// The token of the last message put in the buffer: where a stalled stream resumes.
    last_token: String,
    /// The node's fan-out rate: every page of subscriptions books its share.
    pace: Arc<super::pacer::Pacer>,
    _permit: OwnedSemaphorePermit,
}

/// How the producer stops: the client went away (`None`) or the stream ends with a status.
type Stop = Option<Status>;

impl Producer {
    async fn run(mut self, mut at: Position) -> Result<(), Status> {
        let mut quiet_since = Instant::now();
        loop {
            if *self.out.closing.borrow() {
                return Err(closing(self.node_id, &self.last_token));
            }
            // Room for the page's messages first: a producer held up holds no page.
            if let Err(stop) = self.out.ready(&self.last_token.clone()).await {
                return stop.map_or(Ok(()), Err);
            }
            let (store, from) = (self.store.clone(), at.epoch);
            let page =
                super::background::read(move || store.feed_read(from, 64, FEED_READ_BYTES_MAX))
                    .await
                    .map_err(internal)?;
            if at.epoch < page.start {
                return Err(out_of_range(self.node_id, at.epoch, page.start));
            }
            for (epoch, bytes) in &page.entries {
                let events = EpochEvents::decode(bytes).map_err(internal)?;
                let from = match at.epoch == *epoch {
                    true => at.clone(),
                    false => Position::epoch_start(*epoch),
                };
                match self.fan_out(&events, from).await {
                    Ok(true) => quiet_since = Instant::now(),
                    Ok(false) => {}
                    Err(stop) => return stop.map_or(Ok(()), Err),
                }
                tokio::task::yield_now().await;
            }
            if page.through >= at.epoch {
                at = Position::epoch_start(page.through + 1);
            }
            if quiet_since.elapsed() >= self.progress {
                // No progress past what this node applied.
                if at.epoch <= page.applied + 1 {
                    let progress = v1::WatchNotificationsResponse {
                        notifications: Vec::new(),
                        resume_token: at.token(),
                        epoch: at.epoch - 1,
                    };
                    if let Err(stop) = self.send(progress).await {
                        return stop.map_or(Ok(()), Err);
                    }
                }
                quiet_since = Instant::now();
            }
            if page.through < page.applied {
                continue;
            }
            let next = at.epoch;
            tokio::select! {
                reached = self.applied.wait_for(|&e| e >= next) => {
                    if reached.is_err() {
                        return Ok(());
                    }
                }
                _ = tokio::time::sleep_until(quiet_since + self.progress) => {}
                _ = self.out.tx.closed() => return Ok(()),
                _ = self.out.closing.wait_for(|&c| c) => {
                    return Err(closing(self.node_id, &at.token()));
                }
            }
        }
    }

    /// Streams the notifications of one epoch from `from`; whether it sent any.
    async fn fan_out(&mut self, events: &EpochEvents, from: Position) -> Result<bool, Stop> {
        let epoch = from.epoch;
        let mut sent = false;
        let mut batch: Vec<v1::Notification> = Vec::new();
        let mut batch_bytes = 0;
        let budget = self
            .out
            .message_bytes_max()
            .saturating_sub(NOTIFICATIONS_MESSAGE_OVERHEAD_BYTES);
        let mut position = from.clone();
        for (index, trigger) in triggers(&events.events).iter().enumerate() {
            let index = index as u32;
            if index < from.trigger {
                continue;
            }
            if let Trigger::BackInStock { dcs, .. } = trigger {
                self.load_dc_points(dcs).await?;
            }
            let mut after = match index == from.trigger {
                true => from.after.clone(),
                false => None,
            };
            loop {
                let (store, sku, tag) = (self.store.clone(), trigger.sku(), trigger.tag());
                let (shard, from) = ((self.shard, self.shards), after.clone());
                let page = super::background::read(move || {
                    reads::subscribers(
                        &store,
                        sku,
                        tag,
                        shard,
                        from.as_deref(),
                        SUBSCRIBERS_PAGE_MAX,
                    )
                })
                .await
                .map_err(|e| Some(internal(e)))?;
                self.pace.take(page.len()).await;
                let Some(last) = page.last() else { break };
                after = Some(last.user.clone());
                for record in &page {
                    if let Some(n) = self.notification(record, trigger, epoch, events.time_ms) {
                        let bytes = n.encoded_len() + NOTIFICATION_FRAMING_BYTES;
                        if !batch.is_empty()
                            && (batch.len() >= NOTIFICATIONS_PER_MESSAGE_MAX
                                || batch_bytes + bytes > budget)
                        {
                            self.flush(&mut batch, &position).await?;
                            batch_bytes = 0;
                            sent = true;
                        }
                        batch.push(n);
                        batch_bytes += bytes;
                        position = Position {
                            epoch,
                            trigger: index,
                            after: Some(record.user.clone()),
                        };
                    }
                }
                if page.len() < SUBSCRIBERS_PAGE_MAX {
                    break;
                }
                // A fan-out is CPU work without a natural await (the buffer usually has
                // room): give the runtime's threads back between pages, or a million
                // subscribers would hold one for a second while requests and epochs wait.
                tokio::task::yield_now().await;
            }
        }
        if !batch.is_empty() {
            self.flush(&mut batch, &position).await?;
            sent = true;
        }
        Ok(sent)
    }

    async fn flush(
        &mut self,
        batch: &mut Vec<v1::Notification>,
        position: &Position,
    ) -> Result<(), Stop> {
        let message = v1::WatchNotificationsResponse {
            notifications: std::mem::take(batch),
            resume_token: position.token(),
            epoch: position.epoch,
        };
        self.send(message).await
    }

    /// Sends a message; a stall ends the stream with the token of the message before it.
    async fn send(&mut self, message: v1::WatchNotificationsResponse) -> Result<(), Stop> {
        let token = self.last_token.clone();
        let sent = message.resume_token.clone();
        self.out.send(message, &token).await?;
        self.last_token = sent;
        Ok(())
    }

    /// The notification `record` (of this worker's shard: the index range it reads) gets for
    /// `trigger`, if it stood at the epoch's start and its parameters match.
    fn notification(
        &mut self,
        record: &SubscriptionRecord,
        trigger: &Trigger,
        epoch: u64,
        time_ms: u64,
    ) -> Option<v1::Notification> {
        if !record.live_at(epoch) {
            return None;
        }
        let mut n = v1::Notification {
            id: format!(
                "{epoch}-{}-{}-{}",
                trigger.sku(),
                wire_kind(trigger.tag()) as i32,
                record.user
            ),
            epoch,
            epoch_time_ms: time_ms,
            user: record.user.clone(),
            sku: trigger.sku(),
            kind: wire_kind(trigger.tag()) as i32,
            ..Default::default()
        };
        match (trigger, &record.kind) {
            (
                Trigger::PriceDrop {
                    before_cents,
                    after_cents,
                    currency,
                    ..
                },
                SubKind::PriceDrop { below_cents },
            ) => {
                if below_cents.is_some_and(|below| *after_cents >= below) {
                    return None;
                }
                n.before_cents = *before_cents;
                n.after_cents = *after_cents;
                n.currency = currency.clone();
            }
            (Trigger::BackInStock { dcs, .. }, SubKind::BackInStock { near, dcs: scope }) => {
                // (distance from the subscription's point, or 0, dc, units), in scope.
                let mut listed: Vec<(u64, u32, i64)> = Vec::new();
                for &(dc, available) in dcs {
                    if !scope.is_empty() && !scope.contains(&dc) {
                        continue;
                    }
                    let mut distance_m = 0;
                    if let Some(near) = near {
                        let Some((lat, lon)) = self.dc_point(dc) else {
                            continue;
                        };
                        distance_m = crate::geo::distance_m(near.lat_e6, near.lon_e6, lat, lon);
                        if distance_m > u64::from(near.radius_m) {
                            continue;
                        }
                    }
                    listed.push((distance_m, dc, available));
                }
                if listed.is_empty() {
                    return None;
                }
                // Nearest first (by DC id without a point), the first hundred listed and the
                // rest counted: a notification stays small whatever a restock touched.
                listed.sort_unstable();
                n.back_in_stock_more = listed.len().saturating_sub(NOTIFICATION_DCS_MAX) as u32;
                listed.truncate(NOTIFICATION_DCS_MAX);
                n.back_in_stock = listed
                    .into_iter()
                    .map(|(_, dc_id, available)| v1::DcUnits { dc_id, available })
                    .collect();
            }
            _ => return None,
        }
        Some(n)
    }

    /// A DC's point, from the ones [`Producer::load_dc_points`] read.
    fn dc_point(&self, dc: u32) -> Option<(i32, i32)> {
        self.dcs.get(&dc).copied().flatten()
    }

    /// Reads the points of a trigger's DCs not read yet, before its subscribers are paged
    /// (through [`super::background::read`], like every store read of a producer).
    async fn load_dc_points(&mut self, dcs: &[(u32, i64)]) -> Result<(), Stop> {
        let missing: Vec<u32> = dcs
            .iter()
            .map(|&(dc, _)| dc)
            .filter(|dc| !self.dcs.contains_key(dc))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if self.dcs.len() + missing.len() > DC_POINTS_CACHED_MAX {
            self.dcs.clear();
        }
        let store = self.store.clone();
        let points = super::background::read(move || {
            missing
                .into_iter()
                .map(|dc| {
                    let point = reads::dc(&store, dc)?.map(|r| (r.lat_e6, r.lon_e6));
                    Ok((dc, point))
                })
                .collect::<Result<Vec<_>, reads::ReadError>>()
        })
        .await
        .map_err(|e| Some(internal(e)))?;
        self.dcs.extend(points);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for p in [
            Position::epoch_start(7),
            Position {
                epoch: 9,
                trigger: 2,
                after: Some("user-42".into()),
            },
        ] {
            assert_eq!(Position::parse(&p.token()).unwrap(), p);
        }
        for bad in [
            "",
            "n1.",
            "n1.1.2",
            "n1.1.2.zz",
            "n1.1.2.4",
            "ordo1.5",
            // Multi-byte characters where hex digits belong: refused, not a panic.
            "n1.1.2.a\u{e9}a",
            "n1.1.2.\u{20ac}0",
        ] {
            assert!(Position::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn price(sku: u32, before_cents: i64, after_cents: i64) -> Event {
        Event::Price(ordo_scheduler::feed::PriceChange {
            sku,
            before_cents,
            after_cents,
            currency: "INR".into(),
            request_id: "p".into(),
        })
    }

    fn stock(dc: u32, sku: u32, before: i64, after: i64) -> Event {
        use ordo_scheduler::model::StockRecord;
        Event::Stock(ordo_scheduler::feed::StockChange {
            dc,
            sku,
            before: StockRecord {
                on_hand: before,
                reserved: 0,
            },
            after: StockRecord {
                on_hand: after,
                reserved: 0,
            },
            cause: ordo_scheduler::feed::Cause::Restock,
            request_id: "r".into(),
        })
    }

    #[test]
    fn an_epoch_triggers_on_where_it_ends_against_where_it_began() {
        let events = [
            // sku 1: 100 → 80 → 90, a drop over the epoch; sku 2 rises.
            price(1, 100, 80),
            price(1, 80, 90),
            price(2, 100, 120),
            // dc 1 sku 3: 0 → 5 → 0, no; dc 2 sku 3: 0 → 4; dc 3 sku 3 had stock already.
            stock(1, 3, 0, 5),
            stock(1, 3, 5, 0),
            stock(2, 3, 0, 4),
            stock(3, 3, 2, 9),
        ];
        assert_eq!(
            triggers(&events),
            vec![
                Trigger::PriceDrop {
                    sku: 1,
                    before_cents: 100,
                    after_cents: 90,
                    currency: "INR".into()
                },
                Trigger::BackInStock {
                    sku: 3,
                    dcs: vec![(2, 4)]
                },
            ]
        );
    }

    #[test]
    fn shards_split_users_between_workers() {
        let users: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
        let mut counts = [0; 4];
        for u in &users {
            let shards: Vec<u32> = (0..4)
                .filter(|&s| ordo_scheduler::subs::user_shard(u, 4) == s)
                .collect();
            assert_eq!(shards.len(), 1, "{u} in exactly one shard");
            counts[shards[0] as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 150), "{counts:?}");
    }
}

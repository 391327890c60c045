//! The price and change-feed subcommands: `price` (set a price, or show the price history),
//! `watch` (the change feed, one JSON object per event per line, for `jq`), `subscribe`,
//! `unsubscribe`, `subscriptions` and `notifications` (one JSON object per notification).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use ordo_client::{v1, Client};
use serde_json::{json, Value};

use crate::cli::{self, lines_json, Output, EXIT_OK};
use crate::{run_client, Conn};

#[derive(Subcommand)]
pub enum FeedCommand {
    /// Set an item's price (with CENTS), or show its price and price history (without).
    Price {
        sku: u32,
        /// The new price, in cents.
        cents: Option<i64>,
        /// ISO 4217 currency of the new price [default: the item's current one].
        #[arg(long, default_value = "")]
        currency: String,
        /// Without CENTS: at most this many history entries, newest first.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The write's request id (a repeat with the same id is applied once) [default: new].
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Follow the change feed: one JSON object per event, one per line (for jq), in epoch
    /// order, until interrupted (or --limit). The last event of each epoch carries the
    /// resume_token to pass to --resume. With several --endpoint values, a stream that fails
    /// resumes on the next node from the last token: no gap, no duplicate.
    Watch {
        /// Events of this epoch and later [default: from now].
        #[arg(long, conflicts_with = "resume")]
        from_epoch: Option<u64>,
        /// Resume after a resume_token an earlier watch printed.
        #[arg(long)]
        resume: Option<String>,
        /// Only events about this SKU; repeat for more.
        #[arg(long = "sku")]
        skus: Vec<u32>,
        /// Only events about this DC; repeat for more.
        #[arg(long = "dc")]
        dcs: Vec<u32>,
        /// Only events of this kind; repeat for more.
        #[arg(long = "kind", value_enum)]
        kinds: Vec<Kind>,
        /// Also print progress lines ({"progress": true, "epoch": E, "resume_token": T}).
        #[arg(long)]
        progress: bool,
        /// A progress message after this many quiet milliseconds.
        #[arg(long, default_value_t = 1000)]
        progress_ms: u32,
        /// Stop after this many events (0: never).
        #[arg(long, default_value_t = 0)]
        limit: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Subscribe USER to SKU's price drops (--price-below: only below that price) or, with
    /// --back-in-stock, to its return to stock (anywhere, at --dc, or --near a point).
    Subscribe {
        user: String,
        sku: u32,
        /// Only notify when the new price is below this many cents.
        #[arg(long, conflicts_with = "back_in_stock")]
        price_below: Option<i64>,
        /// Back-in-stock notifications instead of price drops.
        #[arg(long)]
        back_in_stock: bool,
        /// With --back-in-stock: only at this DC; repeat for more.
        #[arg(long = "dc", requires = "back_in_stock")]
        dcs: Vec<u32>,
        /// With --back-in-stock: only at DCs near LAT,LON.
        #[arg(long, value_parser = crate::cli_geo::parse_point, allow_hyphen_values = true, requires = "back_in_stock")]
        near: Option<(f64, f64)>,
        /// With --near: the radius in metres.
        #[arg(long, default_value_t = 10_000)]
        radius_m: u32,
        /// The write's request id (a repeat with the same id is applied once) [default: new].
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// End USER's subscription to SKU (price drops, or --back-in-stock).
    Unsubscribe {
        user: String,
        sku: u32,
        #[arg(long)]
        back_in_stock: bool,
        /// The write's request id (a repeat with the same id is applied once) [default: new].
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// USER's subscriptions (--all: the ended ones too).
    Subscriptions {
        user: String,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Follow the notifications: one JSON object per notification, one per line, in epoch
    /// order (each with a stable id and the resume_token after it), until interrupted (or
    /// --limit). --shard/--shards split the users between workers.
    Notifications {
        /// Notifications of this epoch and later [default: from now].
        #[arg(long, conflicts_with = "resume")]
        from_epoch: Option<u64>,
        /// Resume after a resume_token an earlier run printed.
        #[arg(long)]
        resume: Option<String>,
        #[arg(long, default_value_t = 0)]
        shard: u32,
        #[arg(long, default_value_t = 1)]
        shards: u32,
        /// Stop after this many notifications (0: never).
        #[arg(long, default_value_t = 0)]
        limit: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SubKind {
    PriceDrop,
    BackInStock,
}

impl SubKind {
    fn wire(self) -> v1::SubscriptionKind {
        match self {
            SubKind::PriceDrop => v1::SubscriptionKind::PriceDrop,
            SubKind::BackInStock => v1::SubscriptionKind::BackInStock,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Stock,
    Price,
    Order,
    Reservation,
    Dc,
    Item,
}

impl Kind {
    fn wire(self) -> v1::EventKind {
        match self {
            Kind::Stock => v1::EventKind::Stock,
            Kind::Price => v1::EventKind::Price,
            Kind::Order => v1::EventKind::Order,
            Kind::Reservation => v1::EventKind::Reservation,
            Kind::Dc => v1::EventKind::Dc,
            Kind::Item => v1::EventKind::Item,
        }
    }
}

pub async fn run(command: FeedCommand) -> ExitCode {
    match command {
        FeedCommand::Price {
            sku,
            cents,
            currency,
            limit,
            request_id,
            conn,
        } => {
            run_client(conn, |c: Client| async move {
                match cents {
                    Some(cents) => {
                        let r = c
                            .set_price_request(v1::SetPriceRequest {
                                request_id: request_id.unwrap_or_default(),
                                sku,
                                price_cents: cents,
                                currency: currency.clone(),
                            })
                            .await?;
                        Ok(Output {
                            json: json!({
                                "request_id": r.request_id,
                                "epoch": r.epoch,
                                "sku": sku,
                                "price_cents": cents,
                            }),
                            human: format!(
                                "sku {sku} now costs {} (epoch {})",
                                money(cents, &currency),
                                r.epoch
                            ),
                            exit: EXIT_OK,
                            is_error: false,
                        })
                    }
                    None => price_history(&c, sku, limit).await,
                }
            })
            .await
        }
        FeedCommand::Watch {
            from_epoch,
            resume,
            skus,
            dcs,
            kinds,
            progress,
            progress_ms,
            limit,
            conn,
        } => {
            let request = v1::WatchRequest {
                start: Some(match (from_epoch, resume) {
                    (Some(e), _) => v1::watch_request::Start::FromEpoch(e),
                    (None, Some(t)) => v1::watch_request::Start::ResumeToken(t),
                    (None, None) => v1::watch_request::Start::FromNow(true),
                }),
                skus,
                dc_ids: dcs,
                kinds: kinds.iter().map(|k| k.wire() as i32).collect(),
                progress_interval_ms: progress_ms,
            };
            let endpoints = conn.endpoint.len();
            let client = match conn.connect().await {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            match watch(&client, request, endpoints, progress, limit).await {
                Ok(()) => ExitCode::from(EXIT_OK),
                Err(e) => fail(&e),
            }
        }
        FeedCommand::Subscribe {
            user,
            sku,
            price_below,
            back_in_stock,
            dcs,
            near,
            radius_m,
            request_id,
            conn,
        } => {
            run_client(conn, |c: Client| async move {
                let mut s = match back_in_stock {
                    true => ordo_client::Subscription::back_in_stock(&user, sku),
                    false => ordo_client::Subscription::price_drop(&user, sku),
                };
                s.price_below_cents = price_below.unwrap_or(0);
                s.dc_ids = dcs;
                s.near = near.map(|(lat, lon)| (lat, lon, radius_m));
                let r = c
                    .subscribe_request(s.request(&request_id.unwrap_or_default()))
                    .await?;
                let sub = r.subscription.unwrap_or_default();
                Ok(Output {
                    json: json!({
                        "request_id": r.request_id,
                        "epoch": r.epoch,
                        "subscription": subscription_json(&sub),
                    }),
                    human: format!(
                        "{user} is subscribed to {} of sku {sku} from epoch {} on",
                        kind_name(sub.kind()),
                        r.epoch + 1
                    ),
                    exit: EXIT_OK,
                    is_error: false,
                })
            })
            .await
        }
        FeedCommand::Unsubscribe {
            user,
            sku,
            back_in_stock,
            request_id,
            conn,
        } => {
            run_client(conn, |c: Client| async move {
                let kind = match back_in_stock {
                    true => SubKind::BackInStock,
                    false => SubKind::PriceDrop,
                };
                let r = c
                    .unsubscribe_request(v1::UnsubscribeRequest {
                        request_id: request_id.unwrap_or_default(),
                        user: user.clone(),
                        sku,
                        kind: kind.wire() as i32,
                    })
                    .await?;
                Ok(Output {
                    json: json!({
                        "request_id": r.request_id,
                        "epoch": r.epoch,
                        "removed": r.removed,
                    }),
                    human: match r.removed {
                        true => format!("{user} is no longer subscribed (epoch {})", r.epoch),
                        false => format!("{user} had no such subscription"),
                    },
                    exit: EXIT_OK,
                    is_error: false,
                })
            })
            .await
        }
        FeedCommand::Subscriptions { user, all, conn } => {
            run_client(conn, |c: Client| async move {
                let r = c.list_subscriptions(&user, all).await?;
                let human = match r.subscriptions.is_empty() {
                    true => format!("{user} has no subscriptions"),
                    false => r
                        .subscriptions
                        .iter()
                        .map(|s| {
                            format!(
                                "sku {:>6}  {}{}",
                                s.sku,
                                kind_name(s.kind()),
                                if s.active { "" } else { " (ended)" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                };
                Ok(Output {
                    json: json!({
                        "subscriptions": r.subscriptions.iter().map(subscription_json).collect::<Vec<_>>(),
                        "epoch": r.epoch,
                    }),
                    human,
                    exit: EXIT_OK,
                    is_error: false,
                })
            })
            .await
        }
        FeedCommand::Notifications {
            from_epoch,
            resume,
            shard,
            shards,
            limit,
            conn,
        } => {
            use v1::watch_notifications_request::Start;
            let request = v1::WatchNotificationsRequest {
                start: Some(match (from_epoch, resume) {
                    (Some(e), _) => Start::FromEpoch(e),
                    (None, Some(t)) => Start::ResumeToken(t),
                    (None, None) => Start::FromNow(true),
                }),
                shard,
                shards,
                progress_interval_ms: 1000,
            };
            let endpoints = conn.endpoint.len();
            let client = match conn.connect().await {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            match notifications(&client, request, endpoints, limit).await {
                Ok(()) => ExitCode::from(EXIT_OK),
                Err(e) => fail(&e),
            }
        }
    }
}

fn kind_name(kind: v1::SubscriptionKind) -> &'static str {
    match kind {
        v1::SubscriptionKind::PriceDrop => "price_drop",
        v1::SubscriptionKind::BackInStock => "back_in_stock",
        v1::SubscriptionKind::Unspecified => "unspecified",
    }
}

fn subscription_json(s: &v1::Subscription) -> Value {
    json!({
        "user": s.user,
        "sku": s.sku,
        "kind": kind_name(s.kind()),
        "price_below_cents": s.price_below_cents,
        "dc_ids": s.dc_ids,
        "near": s.near.then(|| json!({"lat": s.lat, "lon": s.lon, "radius_m": s.radius_m})),
        "active": s.active,
        "since_epoch": s.since_epoch,
        "until_epoch": s.until_epoch,
    })
}

/// Streams notifications as JSON lines, resuming on the next endpoint after a failure.
async fn notifications(
    client: &Client,
    mut request: v1::WatchNotificationsRequest,
    endpoints: usize,
    limit: u64,
) -> Result<(), ordo_client::Error> {
    use std::io::Write;
    use v1::watch_notifications_request::Start;
    let mut printed = 0u64;
    let mut failures = 0usize;
    loop {
        let outcome = async {
            let mut stream = client.watch_notifications(request.clone()).await?;
            while let Some(message) = stream.message().await? {
                failures = 0;
                let mut out = std::io::stdout().lock();
                let last = message.notifications.len().saturating_sub(1);
                for (i, n) in message.notifications.iter().enumerate() {
                    let mut line = json!({
                        "id": n.id,
                        "epoch": n.epoch,
                        "time_ms": n.epoch_time_ms,
                        "user": n.user,
                        "sku": n.sku,
                        "kind": kind_name(n.kind()),
                    });
                    match n.kind() {
                        v1::SubscriptionKind::PriceDrop => {
                            line["before_cents"] = json!(n.before_cents);
                            line["after_cents"] = json!(n.after_cents);
                            line["currency"] = json!(n.currency);
                        }
                        _ => {
                            line["dcs"] = n
                                .back_in_stock
                                .iter()
                                .map(|d| json!({"dc_id": d.dc_id, "available": d.available}))
                                .collect();
                        }
                    }
                    if i == last {
                        line["resume_token"] = json!(message.resume_token);
                    }
                    let _ = writeln!(out, "{line}");
                    printed += 1;
                }
                let _ = out.flush();
                request.start = Some(Start::ResumeToken(message.resume_token));
                if limit > 0 && printed >= limit {
                    return Ok(true);
                }
            }
            Ok::<bool, ordo_client::Error>(false)
        }
        .await;
        if resume_or_stop(client, outcome, "notifications", &mut failures, endpoints).await? {
            return Ok(());
        }
    }
}

/// After a stream ended: `true` when the limit was reached (stop); `false` to resume from the
/// last token on the next endpoint (after a pause once every endpoint failed in a row). A
/// refusal of the request itself is returned. The server ending a stream without a status
/// counts as a failure to resume from; a stream cut inside an epoch (`more`) resumes at that
/// epoch, since the token only moves after an epoch's last message: nothing prints twice.
async fn resume_or_stop(
    client: &Client,
    outcome: Result<bool, ordo_client::Error>,
    what: &str,
    failures: &mut usize,
    endpoints: usize,
) -> Result<bool, ordo_client::Error> {
    match outcome {
        Ok(true) => return Ok(true),
        Ok(false) => {}
        Err(e) if resumable(&e) => {
            eprintln!("{what}: {e}; resuming from the last token");
            *failures += 1;
        }
        Err(e) => return Err(e),
    }
    client.next_endpoint();
    if *failures >= endpoints.max(1) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(false)
}

fn fail(e: &ordo_client::Error) -> ExitCode {
    let out = cli::error_output(e);
    eprintln!("{}", out.human);
    ExitCode::from(out.exit)
}

fn money(cents: i64, currency: &str) -> String {
    let amount = format!("{}.{:02}", cents / 100, cents % 100);
    match currency {
        "" => amount,
        c => format!("{amount} {c}"),
    }
}

async fn price_history(c: &Client, sku: u32, limit: u32) -> Result<Output, ordo_client::Error> {
    let r = c.get_price_history(sku, 0, limit).await?;
    let item = r.item.unwrap_or_default();
    let history: Vec<Value> = r
        .history
        .iter()
        .map(|p| {
            json!({
                "price_cents": p.price_cents,
                "currency": p.currency,
                "epoch": p.epoch,
                "time_ms": p.time_ms,
                "request_id": p.request_id,
            })
        })
        .collect();
    let mut human = format!(
        "sku {} {}: {}",
        item.sku,
        item.name,
        money(item.price_cents, &r.currency)
    );
    for p in &r.history {
        human.push_str(&format!(
            "\n  epoch {:>10}  {}",
            p.epoch,
            money(p.price_cents, &p.currency)
        ));
    }
    Ok(Output {
        json: json!({
            "sku": item.sku,
            "name": item.name,
            "price_cents": item.price_cents,
            "currency": r.currency,
            "history": history,
            "epoch": r.epoch,
        }),
        human,
        exit: EXIT_OK,
        is_error: false,
    })
}

/// Whether a failed stream may resume elsewhere: the node went away or cut the stream, not a
/// refusal of the request.
fn resumable(e: &ordo_client::Error) -> bool {
    use tonic::Code;
    matches!(
        e.code(),
        None | Some(Code::Unavailable | Code::Unknown | Code::Internal | Code::ResourceExhausted)
    )
}

/// Streams events as JSON lines; on a resumable failure, moves to the next endpoint and
/// resumes from the last token (after a pause when every endpoint has just failed).
async fn watch(
    client: &Client,
    mut request: v1::WatchRequest,
    endpoints: usize,
    progress: bool,
    limit: u64,
) -> Result<(), ordo_client::Error> {
    use std::io::Write;
    let mut printed = 0u64;
    let mut failures = 0usize;
    // The last event printed, as (epoch, index). A stream cut between the messages of one
    // epoch resumes from the token before that epoch, so the epoch comes again from its
    // first event: what was printed of it is skipped, and nothing prints twice.
    let mut printed_through: Option<(u64, u32)> = None;
    loop {
        let outcome = async {
            let mut stream = client.watch(request.clone()).await?;
            while let Some(message) = stream.message().await? {
                failures = 0;
                let mut out = std::io::stdout().lock();
                match message.message {
                    Some(v1::watch_response::Message::Events(e)) => {
                        let last = e.events.len().saturating_sub(1);
                        for (i, event) in e.events.iter().enumerate() {
                            if printed_already(printed_through, e.epoch, event.index) {
                                continue;
                            }
                            printed_through = Some((e.epoch, event.index));
                            let mut line = event_json(e.epoch, e.epoch_time_ms, event);
                            if i == last && !e.more {
                                line["resume_token"] = json!(e.resume_token);
                            }
                            let _ = writeln!(out, "{line}");
                            printed += 1;
                            if limit > 0 && printed >= limit && !e.more && i == last {
                                let _ = out.flush();
                                return Ok(true);
                            }
                        }
                        if !e.more {
                            request.start =
                                Some(v1::watch_request::Start::ResumeToken(e.resume_token));
                        }
                    }
                    Some(v1::watch_response::Message::Progress(p)) => {
                        if progress {
                            let line = json!({
                                "progress": true,
                                "epoch": p.epoch,
                                "resume_token": p.resume_token,
                            });
                            let _ = writeln!(out, "{line}");
                        }
                        request.start = Some(v1::watch_request::Start::ResumeToken(p.resume_token));
                    }
                    None => {}
                }
                let _ = out.flush();
            }
            Ok::<bool, ordo_client::Error>(false)
        }
        .await;
        if resume_or_stop(client, outcome, "watch", &mut failures, endpoints).await? {
            return Ok(());
        }
    }
}

/// Whether the event at `index` of `epoch` was printed before a resume: events come in
/// (epoch, index) order, and a resume repeats at most the epoch it was cut in.
fn printed_already(printed_through: Option<(u64, u32)>, epoch: u64, index: u32) -> bool {
    printed_through.is_some_and(|through| (epoch, index) <= through)
}

fn level(l: Option<&v1::StockLevel>) -> Value {
    let l = l.cloned().unwrap_or_default();
    json!({ "on_hand": l.on_hand, "reserved": l.reserved, "available": l.available })
}

/// One event as a JSON object: its epoch, index and kind, then its fields.
pub fn event_json(epoch: u64, time_ms: u64, event: &v1::ChangeEvent) -> Value {
    use v1::change_event::Event as E;
    let mut line = json!({ "epoch": epoch, "time_ms": time_ms, "index": event.index });
    let fields = match &event.event {
        Some(E::Stock(s)) => {
            let cause = match s.cause() {
                v1::StockCause::Order => "order",
                v1::StockCause::Restock => "restock",
                v1::StockCause::Transfer => "transfer",
                v1::StockCause::Reservation => "reservation",
                v1::StockCause::Confirm => "confirm",
                v1::StockCause::Cancel => "cancel",
                v1::StockCause::Expiry => "expiry",
                v1::StockCause::Unspecified => "unspecified",
            };
            json!({
                "kind": "stock",
                "dc_id": s.dc_id,
                "sku": s.sku,
                "before": level(s.before.as_ref()),
                "after": level(s.after.as_ref()),
                "cause": cause,
                "order_id": s.order_id,
                "reservation_id": s.reservation_id,
                "request_id": s.request_id,
            })
        }
        Some(E::Price(p)) => json!({
            "kind": "price",
            "sku": p.sku,
            "before_cents": p.before_cents,
            "after_cents": p.after_cents,
            "currency": p.currency,
            "request_id": p.request_id,
        }),
        Some(E::Order(o)) => json!({
            "kind": "order",
            "order_id": o.order_id,
            "request_id": o.request_id,
            "user": o.user,
            "lines": lines_json(&o.lines),
        }),
        Some(E::Reservation(r)) => {
            let step = match r.step() {
                v1::ReservationStep::Held => "held",
                v1::ReservationStep::Confirmed => "confirmed",
                v1::ReservationStep::Cancelled => "cancelled",
                v1::ReservationStep::Extended => "extended",
                v1::ReservationStep::Unspecified => "unspecified",
            };
            let res = r.reservation.clone().unwrap_or_default();
            let lines: Vec<Value> = res
                .lines
                .iter()
                .map(|l| json!({"dc_id": l.dc_id, "sku": l.sku, "requested": l.requested, "held": l.held}))
                .collect();
            json!({
                "kind": "reservation",
                "step": step,
                "reservation_id": res.reservation_id,
                "cart_id": res.cart_id,
                "user": res.user,
                "expires_at_ms": res.expires_at_ms,
                "order_id": res.order_id,
                "lines": lines,
            })
        }
        Some(E::Dc(d)) => json!({
            "kind": "dc",
            "dc_id": d.dc_id,
            "name": d.name,
            "lat": d.lat,
            "lon": d.lon,
            "region": d.region,
            "active": d.active,
        }),
        Some(E::Item(i)) => json!({
            "kind": "item",
            "sku": i.sku,
            "name": i.name,
            "price_cents": i.price_cents,
        }),
        None => json!({ "kind": "unknown" }),
    };
    if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), fields) {
        line.extend(fields);
    }
    line
}

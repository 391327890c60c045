//! The reservation subcommands: `reserve`, `confirm`, `cancel`, `extend`, `get-reservation`,
//! `reservations`. Output and exit codes as `order`'s: 0 done, 3 refused (a rejected hold, a
//! confirm, cancel or extend of a reservation that is not live), 1 any error.

use clap::Subcommand;
use ordo_client::{v1, Client, Line, Reserve};
use serde_json::{json, Value};
use std::process::ExitCode;

use crate::cli::{self, Output, EXIT_OK, EXIT_REJECTED};
use crate::{run_client, Conn};

#[derive(Subcommand)]
pub enum HoldCommand {
    /// Hold units for a cart (exit 3 when rejected). They are available to nobody else until
    /// the reservation is confirmed, cancelled or expires.
    Reserve {
        /// A line DC:SKU:QTY; repeat for more lines.
        #[arg(long = "line", required_unless_present = "near", conflicts_with = "near", value_parser = cli::parse_line)]
        lines: Vec<Line>,
        /// LAT,LON: hold from the stores near this point (with --item), as `order --near`.
        #[arg(long, value_parser = crate::cli_geo::parse_point, allow_hyphen_values = true, requires = "items")]
        near: Option<(f64, f64)>,
        /// With --near: SKU:QTY from any nearby store; repeat for more.
        #[arg(long = "item", value_parser = crate::cli_geo::parse_item, requires = "near")]
        items: Vec<v1::ItemQty>,
        /// With --near: the radius in metres [default: 10000].
        #[arg(long, default_value_t = 10_000, requires = "near")]
        radius_m: u32,
        /// Seconds the hold lasts [default: the server's --reservation-ttl-s, 600].
        #[arg(long, default_value_t = 0)]
        ttl_s: u32,
        /// Add to this cart's live reservation (or start the cart's next one).
        #[arg(long)]
        cart: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// Hold what is available of each line instead of all-or-nothing.
        #[arg(long)]
        partial: bool,
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Confirm a live reservation as an order (exit 3 when refused, e.g. expired).
    Confirm {
        reservation_id: u64,
        /// Confirm only DC:SKU:QTY of the held units (repeat); the rest is released.
        #[arg(long = "line", value_parser = cli::parse_line)]
        lines: Vec<Line>,
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Release a live reservation's units (exit 3 when it is not live).
    Cancel {
        reservation_id: u64,
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Move a live reservation's expiry to now + N seconds (exit 3 when it is not live).
    Extend {
        reservation_id: u64,
        #[arg(long)]
        ttl_s: u32,
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a reservation and its status now.
    GetReservation {
        reservation_id: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// List a cart's or a user's reservations.
    Reservations {
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        cart: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        conn: Conn,
    },
}

fn status_name(r: &v1::Reservation) -> &'static str {
    match r.status() {
        v1::ReservationStatus::Live => "live",
        v1::ReservationStatus::Expired => "expired",
        v1::ReservationStatus::Confirmed => "confirmed",
        v1::ReservationStatus::Cancelled => "cancelled",
        v1::ReservationStatus::Rejected => "rejected",
        v1::ReservationStatus::Unspecified => "unspecified",
    }
}

fn reservation_json(r: &v1::Reservation) -> Value {
    let mut json = json!({
        "status": status_name(r),
        "reservation_id": r.reservation_id,
        "request_id": r.request_id,
        "cart_id": r.cart_id,
        "user": r.user,
        "epoch": r.epoch,
        "created_epoch": r.created_epoch,
        "created_ms": r.created_ms,
        "expires_at_ms": r.expires_at_ms,
        "life_cap_ms": r.life_cap_ms,
        "lines": r.lines.iter().map(|l| json!({
            "dc_id": l.dc_id,
            "sku": l.sku,
            "requested": l.requested,
            "held": l.held,
        })).collect::<Vec<_>>(),
    });
    if r.order_id != 0 {
        json["order_id"] = json!(r.order_id);
    }
    if !r.reason.is_empty() {
        json["reason"] = json!(r.reason);
    }
    json
}

fn reservation_human(r: &v1::Reservation) -> String {
    let mut human = match r.status() {
        v1::ReservationStatus::Rejected => format!("reservation rejected: {}", r.reason),
        _ if !r.reason.is_empty() => format!(
            "reservation {} is {}: {}",
            r.reservation_id,
            status_name(r),
            r.reason
        ),
        _ => format!(
            "reservation {} {} (expires at {} ms, epoch {})",
            r.reservation_id,
            status_name(r),
            r.expires_at_ms,
            r.epoch
        ),
    };
    for l in &r.lines {
        human.push_str(&format!(
            "\n  dc {} sku {}: {} of {} held",
            l.dc_id, l.sku, l.held, l.requested
        ));
    }
    if r.order_id != 0 {
        human.push_str(&format!("\n  order {}", r.order_id));
    }
    human
}

/// A write's answer: exit 3 when it was refused.
fn written(r: v1::Reservation) -> Output {
    let refused = r.status() == v1::ReservationStatus::Rejected || !r.reason.is_empty();
    Output {
        json: reservation_json(&r),
        human: reservation_human(&r),
        exit: if refused { EXIT_REJECTED } else { EXIT_OK },
        is_error: false,
    }
}

fn shown(r: v1::Reservation) -> Output {
    Output {
        json: reservation_json(&r),
        human: reservation_human(&r),
        exit: EXIT_OK,
        is_error: false,
    }
}

pub async fn run(command: HoldCommand) -> ExitCode {
    match command {
        HoldCommand::Reserve {
            near: Some((lat, lon)),
            items,
            radius_m,
            ttl_s,
            cart,
            user,
            partial,
            request_id,
            conn,
            ..
        } => {
            let request = v1::ReserveNearbyRequest {
                request_id: request_id.unwrap_or_default(),
                cart_id: cart.unwrap_or_default(),
                user: user.unwrap_or_default(),
                lat,
                lon,
                radius_m,
                lines: items,
                mode: cli::mode(partial),
                ttl_s,
                ..Default::default()
            };
            run_client(conn, |c: Client| async move {
                let r = c.reserve_nearby(request).await?;
                let mut out = written(r.reservation.unwrap_or_default());
                out.json["shipments"] = crate::cli_geo::shipments_json(&r.shipments);
                Ok(out)
            })
            .await
        }
        HoldCommand::Reserve {
            lines,
            ttl_s,
            cart,
            user,
            partial,
            request_id,
            conn,
            ..
        } => {
            let reserve = Reserve {
                lines,
                ttl_s,
                cart_id: cart.unwrap_or_default(),
                user: user.unwrap_or_default(),
                partial,
                request_id,
            };
            run_client(conn, |c: Client| async move {
                c.reserve(reserve).await.map(written)
            })
            .await
        }
        HoldCommand::Confirm {
            reservation_id,
            lines,
            request_id,
            conn,
        } => {
            run_client(conn, |c: Client| async move {
                let response = c
                    .confirm_reservation(reservation_id, &lines, request_id)
                    .await?;
                let result = response.result.unwrap_or_default();
                let mut out = cli::order_output(&result);
                out.json["reservation_id"] = json!(reservation_id);
                if response.epoch_time_ms != 0 {
                    out.json["epoch_time_ms"] = json!(response.epoch_time_ms);
                }
                Ok(out)
            })
            .await
        }
        HoldCommand::Cancel {
            reservation_id,
            request_id,
            conn,
        } => {
            run_client(conn, |c: Client| async move {
                c.cancel_reservation(reservation_id, request_id)
                    .await
                    .map(written)
            })
            .await
        }
        HoldCommand::Extend {
            reservation_id,
            ttl_s,
            request_id,
            conn,
        } => {
            run_client(conn, |c: Client| async move {
                c.extend_reservation(reservation_id, ttl_s, request_id)
                    .await
                    .map(written)
            })
            .await
        }
        HoldCommand::GetReservation {
            reservation_id,
            conn,
        } => {
            run_client(conn, |c: Client| async move {
                c.get_reservation(reservation_id).await.map(shown)
            })
            .await
        }
        HoldCommand::Reservations {
            cart,
            user,
            after,
            limit,
            conn,
        } => {
            run_client(conn, |c: Client| async move {
                let page = c
                    .list_reservations(
                        cart.as_deref().unwrap_or(""),
                        user.as_deref().unwrap_or(""),
                        after,
                        limit,
                    )
                    .await?;
                let human = page
                    .reservations
                    .iter()
                    .map(reservation_human)
                    .collect::<Vec<_>>()
                    .join("\n");
                Ok(Output {
                    json: json!({
                        "reservations": page.reservations.iter().map(reservation_json).collect::<Vec<_>>(),
                        "next_after_reservation_id": page.next_after_reservation_id,
                        "epoch": page.epoch,
                    }),
                    human: if human.is_empty() { "no reservations".into() } else { human },
                    exit: EXIT_OK,
                    is_error: false,
                })
            })
            .await
        }
    }
}

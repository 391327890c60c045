//! The location subcommands: `nearby` (DCs near a point, or availability over them) and
//! `search` (catalogue keywords, with availability near a point), and the output of `order
//! --near`. Output as every client command's: human text, or one JSON object with `--json`;
//! exit 0, 3 for a rejected order, or 1 on any error.

use clap::Subcommand;
use ordo_client::{v1, Client};
use serde_json::json;
use std::process::ExitCode;

use crate::cli::{order_output, Output, EXIT_OK};
use crate::{run_client, Conn};

#[derive(Subcommand)]
pub enum GeoCommand {
    /// The active DCs near a point, nearest first; with --sku, the availability of those SKUs
    /// over them (the effective availability of a merged menu).
    #[command(allow_negative_numbers = true)]
    Nearby {
        /// Latitude, degrees (-90 to 90).
        lat: f64,
        /// Longitude, degrees (-180 to 180).
        lon: f64,
        /// Search radius in metres [default: 10000].
        #[arg(long, default_value_t = 10_000)]
        radius_m: u32,
        /// At most this many DCs, without --sku [default: 20; with --sku the nearest 100].
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// A SKU to sum over the nearby DCs; repeat for more.
        #[arg(long = "sku")]
        skus: Vec<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Catalogue items whose name matches the words of QUERY (the last one may be a prefix),
    /// best first; with --near, each with its availability over the stores near that point.
    Search {
        query: String,
        /// LAT,LON: count availability over the stores near this point.
        #[arg(long, value_parser = parse_point, allow_hyphen_values = true)]
        near: Option<(f64, f64)>,
        /// With --near: the radius in metres [default: 10000].
        #[arg(long, default_value_t = 10_000)]
        radius_m: u32,
        /// At most this many items (1 to 100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// With --near: only items with a unit available nearby.
        #[arg(long, requires = "near")]
        in_stock: bool,
        /// Continue from a previous answer's next_page_token.
        #[arg(long)]
        page_token: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `LAT,LON` in degrees.
pub fn parse_point(s: &str) -> Result<(f64, f64), String> {
    let (lat, lon) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?}: expected LAT,LON, e.g. 12.97,77.59"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("{s:?}: {v:?} is not a number of degrees"))
    };
    Ok((num(lat)?, num(lon)?))
}

/// `SKU:QTY`: units of a SKU from any nearby store.
pub fn parse_item(s: &str) -> Result<v1::ItemQty, String> {
    let (sku, qty) = s
        .split_once(':')
        .ok_or_else(|| format!("--item {s:?}: expected SKU:QTY, e.g. 42:2"))?;
    let sku = sku
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("--item {s:?}: SKU {sku:?} is not a number"))?;
    let qty = qty
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("--item {s:?}: QTY {qty:?} is not a number"))?;
    Ok(v1::ItemQty { sku, qty })
}

/// A nearby order's answer: the order as `ordo order` prints it, with its shipments.
pub fn nearby_order_output(r: &v1::PlaceOrderNearbyResponse) -> Output {
    let Some(result) = &r.result else {
        return order_output(&v1::OrderResult::default());
    };
    let mut out = order_output(result);
    out.json["shipments"] = shipments_json(&r.shipments);
    if !r.shipments.is_empty() {
        out.human.push_str(&format!(
            "\n  {} shipment{}:",
            r.shipments.len(),
            if r.shipments.len() == 1 { "" } else { "s" }
        ));
        for s in &r.shipments {
            out.human.push_str(&format!(
                "\n    dc {} ({}, {} m): {}",
                s.dc_id,
                s.name,
                s.distance_m,
                s.lines
                    .iter()
                    .map(|l| format!("sku {} x{}", l.sku, l.qty))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    out
}

pub fn shipments_json(shipments: &[v1::Shipment]) -> serde_json::Value {
    shipments
        .iter()
        .map(|s| {
            json!({
                "dc_id": s.dc_id,
                "name": s.name,
                "distance_m": s.distance_m,
                "lines": s.lines.iter().map(|l| json!({"sku": l.sku, "qty": l.qty})).collect::<Vec<_>>(),
            })
        })
        .collect()
}

fn dc_json(d: &v1::NearbyDc) -> serde_json::Value {
    json!({
        "dc_id": d.dc_id,
        "name": d.name,
        "lat": d.lat,
        "lon": d.lon,
        "region": d.region,
        "distance_m": d.distance_m,
    })
}

fn dcs_human(dcs: &[v1::NearbyDc]) -> String {
    if dcs.is_empty() {
        return "no active DC within the radius".into();
    }
    dcs.iter()
        .map(|d| format!("dc {:>5}  {:>8} m  {}", d.dc_id, d.distance_m, d.name))
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn run(command: GeoCommand) -> ExitCode {
    match command {
        GeoCommand::Search {
            query,
            near,
            radius_m,
            limit,
            in_stock,
            page_token,
            conn,
        } => {
            run_client(conn, |c: Client| async move {
                let (lat, lon) = near.unwrap_or_default();
                let r = c
                    .search_items(v1::SearchItemsRequest {
                        query,
                        near: near.is_some(),
                        lat,
                        lon,
                        radius_m,
                        limit,
                        page_token: page_token.unwrap_or_default(),
                        in_stock_only: in_stock,
                        ..Default::default()
                    })
                    .await?;
                let mut human = if r.items.is_empty() {
                    "no item matches".to_string()
                } else {
                    r.items
                        .iter()
                        .map(|i| {
                            let mut line = format!(
                                "sku {:>6}  {:>9.2}  {}",
                                i.sku,
                                i.price_cents as f64 / 100.0,
                                i.name
                            );
                            if near.is_some() {
                                line.push_str(&format!(
                                    "  ({} available in {} of {} stores nearby)",
                                    i.available_nearby, i.stores_with_stock, r.stores_nearby
                                ));
                            }
                            line
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                if !r.next_page_token.is_empty() {
                    human.push_str(&format!("\nmore: --page-token {}", r.next_page_token));
                }
                human.push_str(&format!("\nas of epoch {}", r.epoch));
                Ok(Output {
                    json: json!({
                        "epoch": r.epoch,
                        "stores_nearby": r.stores_nearby,
                        "next_page_token": r.next_page_token,
                        "items": r.items.iter().map(|i| json!({
                            "sku": i.sku,
                            "name": i.name,
                            "price_cents": i.price_cents,
                            "score": i.score,
                            "available_nearby": i.available_nearby,
                            "stores_with_stock": i.stores_with_stock,
                        })).collect::<Vec<_>>(),
                    }),
                    human,
                    exit: EXIT_OK,
                    is_error: false,
                })
            })
            .await
        }
        GeoCommand::Nearby {
            lat,
            lon,
            radius_m,
            limit,
            skus,
            conn,
        } => {
            run_client(conn, |c: Client| async move {
                if skus.is_empty() {
                    let r = c.find_nearby_dcs(lat, lon, radius_m, limit).await?;
                    return Ok(Output {
                        json: json!({
                            "dcs": r.dcs.iter().map(dc_json).collect::<Vec<_>>(),
                            "epoch": r.epoch,
                        }),
                        human: dcs_human(&r.dcs),
                        exit: EXIT_OK,
                        is_error: false,
                    });
                }
                let r = c.get_nearby_availability(lat, lon, radius_m, skus).await?;
                let mut human = dcs_human(&r.dcs);
                for item in &r.items {
                    human.push_str(&format!(
                        "\nsku {}: {} available nearby ({})",
                        item.sku,
                        item.available_total,
                        item.dcs
                            .iter()
                            .filter(|d| d.available > 0)
                            .map(|d| format!("dc {}: {}", d.dc_id, d.available))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                human.push_str(&format!("\nas of epoch {}", r.epoch));
                Ok(Output {
                    json: json!({
                        "epoch": r.epoch,
                        "dcs": r.dcs.iter().map(dc_json).collect::<Vec<_>>(),
                        "items": r.items.iter().map(|i| json!({
                            "sku": i.sku,
                            "available_total": i.available_total,
                            "dcs": i.dcs.iter().map(|d| json!({
                                "dc_id": d.dc_id,
                                "distance_m": d.distance_m,
                                "on_hand": d.on_hand,
                                "reserved": d.reserved,
                                "available": d.available,
                            })).collect::<Vec<_>>(),
                        })).collect::<Vec<_>>(),
                    }),
                    human,
                    exit: EXIT_OK,
                    is_error: false,
                })
            })
            .await
        }
    }
}

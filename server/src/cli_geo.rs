//! The location subcommands: `nearby` (DCs near a point, or availability over them). Output
//! as every client command's: human text, or one JSON object with `--json`; exit 0, or 1 on
//! any error.

use clap::Subcommand;
use ordo_client::{v1, Client};
use serde_json::json;
use std::process::ExitCode;

use crate::cli::{Output, EXIT_OK};
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

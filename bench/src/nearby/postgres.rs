//! The PostgreSQL design for "near me", as a team would build it on one database:
//! `dcs(dc_id, lat, lon[, geog])` and `stock(dc_id, sku, on_hand, reserved)`.
//!
//! Finding the stores is PostGIS where it is installed (`geography` points with a GiST index,
//! `ST_DWithin` on the sphere, ordered by `ST_Distance`), else plain SQL: a btree on (lat, lon)
//! for a bounding-box prefilter and the haversine in SQL ([`PgGeo`]). A browse is one query:
//! the nearest stores within the radius, left-joined with their rows of the asked SKUs, with
//! each SKU's total as a window sum. An order is one transaction: the candidate stores' rows
//! of the ordered SKUs locked `FOR UPDATE` in (dc_id, sku) order (so orders cannot deadlock),
//! the FEWEST_DCS fill computed from them ([`super::fill`]), one UPDATE, COMMIT; retried on a
//! serialization failure or deadlock.

use std::collections::BTreeMap;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use super::dataset::{NearbyDataset, EARTH_RADIUS_M, RADIUS_M};
use super::fill::{fewest_dcs, MAX_DCS};
use super::session::{Availability, OrderOutcome, SkuNearby, BROWSE_DCS_MAX, ORDER_CANDIDATES_MAX};
use super::PgGeo;
use crate::targets::postgres_connect;

/// Attempts of an order transaction that lost to a serialization failure or a deadlock.
const ORDER_ATTEMPTS_MAX: u32 = 20;
/// Rows per INSERT while loading.
const LOAD_ROWS_PER_INSERT: usize = 1_000;

const SCHEMA_STOCK: &str = "
CREATE TABLE stock (dc_id int NOT NULL, sku int NOT NULL, on_hand bigint NOT NULL,
    reserved bigint NOT NULL DEFAULT 0, PRIMARY KEY (dc_id, sku),
    CHECK (reserved >= 0 AND on_hand >= reserved));
";
const SCHEMA_POSTGIS: &str = "
CREATE EXTENSION IF NOT EXISTS postgis;
CREATE TABLE dcs (dc_id int PRIMARY KEY, lat float8 NOT NULL, lon float8 NOT NULL,
    geog geography(Point, 4326) NOT NULL);
CREATE INDEX dcs_geog ON dcs USING gist (geog);
";
const SCHEMA_PLAIN: &str = "
CREATE TABLE dcs (dc_id int PRIMARY KEY, lat float8 NOT NULL, lon float8 NOT NULL);
CREATE INDEX dcs_lat_lon ON dcs (lat, lon);
";

/// The stores within $3 metres of ($1 lat, $2 lon), nearest first, at most $4, as
/// `(dc_id, d)`; the plain form also takes the bounding box's half-sizes in degrees ($5 lat,
/// $6 lon).
fn candidates_sql(geo: PgGeo) -> String {
    match geo {
        PgGeo::Postgis => "SELECT dc_id, ST_Distance(geog, p.g, false) AS d
             FROM dcs, (SELECT ST_SetSRID(ST_MakePoint($2, $1), 4326)::geography AS g) p
             WHERE ST_DWithin(geog, p.g, $3, false)
             ORDER BY d, dc_id LIMIT $4"
            .into(),
        PgGeo::Plain | PgGeo::Auto => format!(
            "SELECT dc_id, d FROM (
                 SELECT dc_id, (2 * {EARTH_RADIUS_M} * asin(sqrt(
                       power(sin(radians(lat - $1::float8) / 2), 2)
                     + cos(radians($1::float8)) * cos(radians(lat))
                       * power(sin(radians(lon - $2::float8) / 2), 2))))::float8 AS d
                 FROM dcs
                 WHERE lat BETWEEN $1::float8 - $5::float8 AND $1::float8 + $5::float8
                   AND lon BETWEEN $2::float8 - $6::float8 AND $2::float8 + $6::float8) c
             WHERE d <= $3::float8 ORDER BY d, dc_id LIMIT $4::int8"
        ),
    }
}

/// Which PostgreSQL finds the stores with: PostGIS where it is installed, unless told.
pub async fn resolve_geo(url: &str, asked: PgGeo) -> anyhow::Result<PgGeo> {
    let client = postgres_connect(url).await?;
    let installed: bool = client
        .query_one(
            "SELECT count(*) > 0 FROM pg_available_extensions WHERE name = 'postgis'",
            &[],
        )
        .await?
        .get(0);
    Ok(match asked {
        PgGeo::Postgis => {
            anyhow::ensure!(
                installed,
                "--pg-geo postgis: the postgis extension is not installed \
                 (apt-get install postgresql-<major>-postgis-3)"
            );
            PgGeo::Postgis
        }
        PgGeo::Plain => PgGeo::Plain,
        PgGeo::Auto if installed => PgGeo::Postgis,
        PgGeo::Auto => PgGeo::Plain,
    })
}

pub struct PgNearby {
    client: Client,
    geo: PgGeo,
    browse: Statement,
    lock: Statement,
    take: Statement,
}

impl PgNearby {
    /// `geo` is resolved (not `Auto`); the loader makes the schema before any session opens.
    pub async fn open(url: &str, geo: PgGeo) -> anyhow::Result<Self> {
        let client = postgres_connect(url).await?;
        let exists: bool = client
            .query_one("SELECT to_regclass('stock') IS NOT NULL", &[])
            .await?
            .get(0);
        if !exists {
            client.batch_execute(SCHEMA_STOCK).await?;
            client
                .batch_execute(match geo {
                    PgGeo::Postgis => SCHEMA_POSTGIS,
                    _ => SCHEMA_PLAIN,
                })
                .await?;
        }
        let candidates = candidates_sql(geo);
        let skus_at = match geo {
            PgGeo::Postgis => 5,
            _ => 7,
        };
        let browse = client
            .prepare(&format!(
                "WITH c AS ({candidates})
                 SELECT c.dc_id, c.d, s.sku, s.on_hand - s.reserved,
                        (sum(s.on_hand - s.reserved) OVER (PARTITION BY s.sku))::int8
                 FROM c LEFT JOIN stock s ON s.dc_id = c.dc_id AND s.sku = ANY(${skus_at}::int4[])
                 ORDER BY c.d, c.dc_id, s.sku"
            ))
            .await?;
        let lock = client
            .prepare(&format!(
                "WITH c AS ({candidates})
                 SELECT s.dc_id, s.sku, s.on_hand - s.reserved, c.d
                 FROM stock s JOIN c ON s.dc_id = c.dc_id
                 WHERE s.sku = ANY(${skus_at}::int4[])
                 ORDER BY s.dc_id, s.sku
                 FOR UPDATE OF s"
            ))
            .await?;
        let take = client
            .prepare(
                "UPDATE stock s SET on_hand = s.on_hand - u.qty
                 FROM (SELECT unnest($1::int4[]) AS dc_id, unnest($2::int4[]) AS sku,
                              unnest($3::int8[]) AS qty) u
                 WHERE s.dc_id = u.dc_id AND s.sku = u.sku",
            )
            .await?;
        Ok(Self {
            client,
            geo,
            browse,
            lock,
            take,
        })
    }

    pub async fn load(&mut self, data: &NearbyDataset) -> anyhow::Result<()> {
        self.client.batch_execute("TRUNCATE dcs, stock").await?;
        for chunk in data.sites.chunks(LOAD_ROWS_PER_INSERT) {
            let values: Vec<String> = chunk
                .iter()
                .map(|s| match self.geo {
                    PgGeo::Postgis => format!(
                        "({},{},{},ST_SetSRID(ST_MakePoint({},{}),4326)::geography)",
                        s.dc, s.lat, s.lon, s.lon, s.lat
                    ),
                    _ => format!("({},{},{})", s.dc, s.lat, s.lon),
                })
                .collect();
            self.client
                .batch_execute(&format!("INSERT INTO dcs VALUES {}", values.join(",")))
                .await?;
        }
        let rows: Vec<(u32, u32, i64)> = data.rows().collect();
        for chunk in rows.chunks(LOAD_ROWS_PER_INSERT) {
            let values: Vec<String> = chunk
                .iter()
                .map(|(dc, sku, units)| format!("({dc},{sku},{units},0)"))
                .collect();
            self.client
                .batch_execute(&format!("INSERT INTO stock VALUES {}", values.join(",")))
                .await?;
        }
        self.client
            .batch_execute("ANALYZE dcs; ANALYZE stock")
            .await?;
        Ok(())
    }

    /// The parameters of the candidate query, with the bounding box for the plain form.
    fn around(
        &self,
        lat: f64,
        lon: f64,
        limit: usize,
    ) -> Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> {
        let radius_m = f64::from(RADIUS_M);
        let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = vec![
            Box::new(lat),
            Box::new(lon),
            Box::new(radius_m),
            Box::new(limit as i64),
        ];
        if self.geo != PgGeo::Postgis {
            // The box's half-sizes, a little larger than the circle (the haversine filters).
            let dlat = (radius_m / EARTH_RADIUS_M).to_degrees() * 1.01;
            let dlon = dlat / lat.to_radians().cos().max(1e-6);
            params.push(Box::new(dlat));
            params.push(Box::new(dlon));
        }
        params
    }

    pub async fn browse(
        &mut self,
        lat: f64,
        lon: f64,
        skus: &[u32],
    ) -> anyhow::Result<Availability> {
        let mut params = self.around(lat, lon, BROWSE_DCS_MAX);
        params.push(Box::new(
            skus.iter().map(|&s| s as i32).collect::<Vec<i32>>(),
        ));
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p.as_ref() as _).collect();
        let rows = self.client.query(&self.browse, &refs).await?;
        let mut answer = Availability {
            dcs: Vec::new(),
            items: skus
                .iter()
                .map(|&sku| SkuNearby {
                    sku,
                    ..Default::default()
                })
                .collect(),
        };
        for row in rows {
            let dc = row.get::<_, i32>(0) as u32;
            if answer.dcs.last().is_none_or(|&(last, _)| last != dc) {
                answer.dcs.push((dc, row.get(1)));
            }
            let Some(sku) = row.get::<_, Option<i32>>(2) else {
                continue;
            };
            if let Some(item) = answer.items.iter_mut().find(|i| i.sku == sku as u32) {
                item.rows.push((dc, row.get(3)));
                item.available_total = row.get::<_, Option<i64>>(4).unwrap_or(0);
            }
        }
        Ok(answer)
    }

    pub async fn order(&mut self, lat: f64, lon: f64, lines: &[(u32, i64)]) -> OrderOutcome {
        for _ in 0..ORDER_ATTEMPTS_MAX {
            match self.try_order(lat, lon, lines).await {
                Ok(outcome) => return outcome,
                Err(e) => {
                    let code = e.code();
                    if code == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                        || code == Some(&SqlState::T_R_DEADLOCK_DETECTED)
                    {
                        continue;
                    }
                    return OrderOutcome::Error(e.to_string());
                }
            }
        }
        OrderOutcome::Error(format!(
            "postgres: lost to a serialization failure or deadlock {ORDER_ATTEMPTS_MAX} times"
        ))
    }

    async fn try_order(
        &mut self,
        lat: f64,
        lon: f64,
        lines: &[(u32, i64)],
    ) -> Result<OrderOutcome, tokio_postgres::Error> {
        let mut params = self.around(lat, lon, ORDER_CANDIDATES_MAX);
        params.push(Box::new(
            lines.iter().map(|l| l.0 as i32).collect::<Vec<i32>>(),
        ));
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p.as_ref() as _).collect();
        let tx = self.client.transaction().await?;
        let rows = tx.query(&self.lock, &refs).await?;
        // The candidates that have a row of an ordered SKU, nearest first, with what they have.
        let mut stores: Vec<(f64, u32, Vec<i64>)> = Vec::new();
        for row in &rows {
            let dc = row.get::<_, i32>(0) as u32;
            let sku = row.get::<_, i32>(1) as u32;
            let Some(i) = lines.iter().position(|l| l.0 == sku) else {
                continue;
            };
            let at = match stores.iter().position(|s| s.1 == dc) {
                Some(at) => at,
                None => {
                    stores.push((row.get(3), dc, vec![0; lines.len()]));
                    stores.len() - 1
                }
            };
            stores[at].2[i] = row.get(2);
        }
        stores.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let have: Vec<Vec<i64>> = stores.iter().map(|s| s.2.clone()).collect();
        let want: Vec<i64> = lines.iter().map(|l| l.1).collect();
        let Some(fill) = fewest_dcs(&want, MAX_DCS, &have) else {
            tx.rollback().await?;
            return Ok(OrderOutcome::Rejected("insufficient-stock"));
        };
        let taken: Vec<(u32, u32, i64)> = fill
            .iter()
            .map(|&(c, i, units)| (stores[c].1, lines[i].0, units))
            .collect();
        let dcs: Vec<i32> = taken.iter().map(|t| t.0 as i32).collect();
        let skus: Vec<i32> = taken.iter().map(|t| t.1 as i32).collect();
        let units: Vec<i64> = taken.iter().map(|t| t.2).collect();
        let updated = tx.execute(&self.take, &[&dcs, &skus, &units]).await?;
        // Every taken row was locked above, so every one is updated.
        assert_eq!(
            updated as usize,
            taken.len(),
            "an order's rows vanished under its locks"
        );
        tx.commit().await?;
        Ok(OrderOutcome::Committed(taken))
    }

    pub async fn final_stock(&mut self) -> anyhow::Result<BTreeMap<(u32, u32), i64>> {
        Ok(self
            .client
            .query("SELECT dc_id, sku, on_hand - reserved FROM stock", &[])
            .await?
            .iter()
            .map(|r| {
                (
                    (r.get::<_, i32>(0) as u32, r.get::<_, i32>(1) as u32),
                    r.get(2),
                )
            })
            .collect())
    }
}

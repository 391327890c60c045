//! The Redis design for "near me": the stores in one geo set (`GEOADD nearby:dcs lon lat
//! dc`), each store's stock in a hash `nearby:stock:{dc}` (sku -> available units; only the
//! SKUs it stocks). A browse is `GEOSEARCH ... FROMLONLAT lon lat BYRADIUS r m ASC COUNT n
//! WITHDIST`, then one pipeline of `HMGET`s of the asked SKUs, one per store; the client sums
//! the totals. An order is the same `GEOSEARCH` for the candidate stores, then one Lua script
//! over their hashes that picks the FEWEST_DCS fill ([`super::fill`], in Lua) and `HINCRBY`s
//! it, atomically.

use std::collections::BTreeMap;

use redis::aio::MultiplexedConnection;

use super::dataset::{NearbyDataset, RADIUS_M};
use super::fill::MAX_DCS;
use super::session::{Availability, OrderOutcome, SkuNearby, BROWSE_DCS_MAX, ORDER_CANDIDATES_MAX};

const GEO_KEY: &str = "nearby:dcs";
/// Stores or rows per command or pipeline while loading and reading back.
const LOAD_CHUNK: usize = 1_000;

fn stock_key(dc: u32) -> String {
    format!("nearby:stock:{dc}")
}

/// KEYS: the candidate stores' hashes, nearest first. ARGV: max_dcs, then (sku, qty) per line.
/// Returns (candidate index, line index, units) triples, flat, of what was taken; empty when
/// the lines cannot all be filled.
const ORDER_LUA: &str = r#"
local max_dcs = tonumber(ARGV[1])
local n = (#ARGV - 1) / 2
local skus, want, remaining = {}, {}, {}
for i = 1, n do
  skus[i] = ARGV[2 * i]
  want[i] = tonumber(ARGV[2 * i + 1])
  remaining[i] = want[i]
end
local have = {}
for c = 1, #KEYS do
  local got = redis.call('HMGET', KEYS[c], unpack(skus))
  local row = {}
  for i = 1, n do row[i] = tonumber(got[i]) or 0 end
  have[c] = row
end
local taken, used = {}, {}
for c = 1, #KEYS do
  local all = true
  for i = 1, n do
    if have[c][i] < want[i] then all = false break end
  end
  if all then
    local give = {}
    for i = 1, n do give[i] = want[i]; remaining[i] = 0 end
    taken[1] = {c, give}
    used[c] = true
    break
  end
end
local function missing()
  for i = 1, n do if remaining[i] > 0 then return true end end
  return false
end
while #taken < max_dcs and missing() do
  local best, best_units = nil, 0
  for c = 1, #KEYS do
    if not used[c] then
      local units = 0
      for i = 1, n do units = units + math.min(remaining[i], math.max(have[c][i], 0)) end
      if units > best_units then best, best_units = c, units end
    end
  end
  if best == nil then break end
  local give = {}
  for i = 1, n do
    give[i] = math.min(remaining[i], math.max(have[best][i], 0))
    remaining[i] = remaining[i] - give[i]
  end
  used[best] = true
  taken[#taken + 1] = {best, give}
end
if missing() then return {} end
local out = {}
for _, t in ipairs(taken) do
  for i = 1, n do
    if t[2][i] > 0 then
      redis.call('HINCRBY', KEYS[t[1]], skus[i], -t[2][i])
      out[#out + 1] = t[1] - 1
      out[#out + 1] = i - 1
      out[#out + 1] = t[2][i]
    end
  end
end
return out
"#;

pub struct RedisNearby {
    conn: MultiplexedConnection,
    order: redis::Script,
}

impl RedisNearby {
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            conn: client.get_multiplexed_async_connection().await?,
            order: redis::Script::new(ORDER_LUA),
        })
    }

    pub async fn load(&mut self, data: &NearbyDataset) -> anyhow::Result<()> {
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut self.conn)
            .await?;
        for chunk in data.sites.chunks(LOAD_CHUNK) {
            let mut cmd = redis::cmd("GEOADD");
            cmd.arg(GEO_KEY);
            for s in chunk {
                cmd.arg(s.lon).arg(s.lat).arg(s.dc);
            }
            cmd.query_async::<()>(&mut self.conn).await?;
        }
        for chunk in data.sites.chunks(LOAD_CHUNK) {
            let mut pipe = redis::pipe();
            for s in chunk {
                let rows: Vec<(u32, i64)> = data.rows_of(s.dc).map(|r| (r.1, r.2)).collect();
                if !rows.is_empty() {
                    pipe.hset_multiple(stock_key(s.dc), &rows).ignore();
                }
            }
            pipe.query_async::<()>(&mut self.conn).await?;
        }
        Ok(())
    }

    /// The stores within the radius, nearest first, at most `count`, with their distance.
    async fn search(
        &mut self,
        lat: f64,
        lon: f64,
        count: usize,
    ) -> redis::RedisResult<Vec<(u32, f64)>> {
        redis::cmd("GEOSEARCH")
            .arg(GEO_KEY)
            .arg("FROMLONLAT")
            .arg(lon)
            .arg(lat)
            .arg("BYRADIUS")
            .arg(RADIUS_M)
            .arg("m")
            .arg("ASC")
            .arg("COUNT")
            .arg(count)
            .arg("WITHDIST")
            .query_async(&mut self.conn)
            .await
    }

    pub async fn browse(
        &mut self,
        lat: f64,
        lon: f64,
        skus: &[u32],
    ) -> anyhow::Result<Availability> {
        let dcs = self.search(lat, lon, BROWSE_DCS_MAX).await?;
        let mut pipe = redis::pipe();
        for &(dc, _) in &dcs {
            pipe.cmd("HMGET").arg(stock_key(dc)).arg(skus);
        }
        let rows: Vec<Vec<Option<i64>>> = if dcs.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.conn).await?
        };
        let mut items: Vec<SkuNearby> = skus
            .iter()
            .map(|&sku| SkuNearby {
                sku,
                ..Default::default()
            })
            .collect();
        for (&(dc, _), units) in dcs.iter().zip(&rows) {
            for (item, units) in items.iter_mut().zip(units) {
                if let Some(units) = *units {
                    item.rows.push((dc, units));
                    item.available_total += units;
                }
            }
        }
        Ok(Availability { dcs, items })
    }

    pub async fn order(&mut self, lat: f64, lon: f64, lines: &[(u32, i64)]) -> OrderOutcome {
        let candidates = match self.search(lat, lon, ORDER_CANDIDATES_MAX).await {
            Ok(c) => c,
            Err(e) => return OrderOutcome::Error(e.to_string()),
        };
        if candidates.is_empty() {
            return OrderOutcome::Rejected("insufficient-stock");
        }
        let mut invocation = self.order.prepare_invoke();
        for &(dc, _) in &candidates {
            invocation.key(stock_key(dc));
        }
        invocation.arg(MAX_DCS);
        for &(sku, qty) in lines {
            invocation.arg(sku).arg(qty);
        }
        let taken: Vec<i64> = match invocation.invoke_async(&mut self.conn).await {
            Ok(t) => t,
            Err(e) => return OrderOutcome::Error(e.to_string()),
        };
        if taken.is_empty() {
            return OrderOutcome::Rejected("insufficient-stock");
        }
        let picked: Option<Vec<(u32, u32, i64)>> = taken
            .chunks(3)
            .map(|t| match t {
                &[c, i, units] => Some((
                    candidates.get(c as usize)?.0,
                    lines.get(i as usize)?.0,
                    units,
                )),
                _ => None,
            })
            .collect();
        match picked {
            Some(taken) => OrderOutcome::Committed(taken),
            None => OrderOutcome::Error(format!("the order script answered {taken:?}")),
        }
    }

    pub async fn final_stock(
        &mut self,
        data: &NearbyDataset,
    ) -> anyhow::Result<BTreeMap<(u32, u32), i64>> {
        let mut out = BTreeMap::new();
        for chunk in data.sites.chunks(LOAD_CHUNK) {
            let mut pipe = redis::pipe();
            for s in chunk {
                pipe.hgetall(stock_key(s.dc));
            }
            let hashes: Vec<BTreeMap<u32, i64>> = pipe.query_async(&mut self.conn).await?;
            for (s, hash) in chunk.iter().zip(hashes) {
                for (sku, units) in hash {
                    out.insert((s.dc, sku), units);
                }
            }
        }
        Ok(out)
    }
}

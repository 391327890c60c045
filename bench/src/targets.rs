//! One adapter per target: how an order, a read, the initial load and the final stock look on
//! Ordo, PostgreSQL, Redis and etcd. Each uses the system's maintained Rust client crate.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context};
use ordo_client::{v1, Client, Consistency, Line as OrdoLine, OrderStream};

use crate::check::{self, Tally};
use crate::workload::{Dataset, Line};

/// Restocks per Restocks call when the bench loads Ordo.
const RESTOCKS_PER_CALL: usize = 1_000;
/// Lines per RestockDc call when the bench loads Ordo (the server's limit).
const RESTOCK_DC_LINES: usize = 10_000;

/// One DC's stock as one `RestockDc`; on a node from before it (measured beside a new one
/// with `--ordo-bin`), `Restocks` of 1,000, and on one from before those, one `Restock` a row.
async fn restock_dc_or_older(
    client: &ordo_client::Client,
    dc: u32,
    lines: Vec<(u32, i64)>,
) -> anyhow::Result<()> {
    match client.restock_dc(dc, &lines, None).await {
        Ok(r) if r.applied => return Ok(()),
        Ok(r) => bail!("restock refused: {}", r.reason),
        Err(e) if e.code() == Some(tonic::Code::Unimplemented) => {}
        Err(e) => return Err(e.into()),
    }
    for chunk in lines.chunks(RESTOCKS_PER_CALL) {
        let restocks: Vec<v1::RestockRequest> = chunk
            .iter()
            .map(|&(sku, delta)| v1::RestockRequest {
                request_id: String::new(),
                dc_id: dc,
                sku,
                delta,
            })
            .collect();
        let results = match client.restocks(restocks.clone()).await {
            Err(e) if e.code() == Some(tonic::Code::Unimplemented) => {
                let mut results = Vec::with_capacity(restocks.len());
                for r in restocks {
                    results.push(client.restock(r.dc_id, r.sku, r.delta, None).await?);
                }
                results
            }
            other => other?,
        };
        if let Some(r) = results.iter().find(|r| !r.applied) {
            bail!("restock refused: {}", r.reason);
        }
    }
    Ok(())
}

/// Runs `calls` with at most `max` in flight; the first error stops it.
pub(crate) async fn in_parallel<F>(max: usize, calls: impl Iterator<Item = F>) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for call in calls {
        if set.len() >= max {
            set.join_next().await.context("a load call")???;
        }
        set.spawn(call);
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    Ok(())
}

/// Upserts the catalogue the bench's datasets use: SKUs `1..=skus`, at most `max` calls in
/// flight.
pub(crate) async fn upsert_bench_items(
    client: &Client,
    skus: u32,
    max: usize,
) -> anyhow::Result<()> {
    in_parallel(
        max,
        (1..=skus).map(|sku| {
            let client = client.clone();
            async move {
                client
                    .upsert_item(v1::Item {
                        sku,
                        name: format!("bench sku {sku}"),
                        price_cents: 100,
                    })
                    .await?;
                Ok(())
            }
        }),
    )
    .await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Target {
    /// One Ordo node, one order per RPC.
    Ordo1,
    /// Three Ordo nodes, clients spread over them, one order per RPC.
    Ordo3,
    /// One Ordo node, orders batched into `PlaceOrders` calls.
    Ordo1Batch,
    /// Three Ordo nodes, batched.
    Ordo3Batch,
    /// One Ordo node, each client's orders over one OrderStream.
    Ordo1Stream,
    /// Three Ordo nodes, clients spread over them, each over one OrderStream.
    Ordo3Stream,
    /// PostgreSQL row locks: BEGIN; SELECT ... FOR UPDATE; UPDATE; COMMIT.
    Postgres,
    /// PostgreSQL conditional update: UPDATE ... SET qty = qty - n WHERE ... AND qty >= n.
    PostgresCond,
    /// A 3-member etcd cluster: read value and mod_revision, then a compare-and-put txn.
    Etcd,
    /// Redis Lua check-and-decrement, appendfsync always.
    Redis,
    /// Redis Lua check-and-decrement, appendfsync everysec.
    RedisEverysec,
}

pub const ALL: &[Target] = &[
    Target::Ordo1,
    Target::Ordo3,
    Target::Ordo1Batch,
    Target::Ordo3Batch,
    Target::Ordo1Stream,
    Target::Ordo3Stream,
    Target::Postgres,
    Target::PostgresCond,
    Target::Etcd,
    Target::Redis,
    Target::RedisEverysec,
];

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Ordo1 => "ordo-1",
            Target::Ordo3 => "ordo-3",
            Target::Ordo1Batch => "ordo-1-batch",
            Target::Ordo3Batch => "ordo-3-batch",
            Target::Ordo1Stream => "ordo-1-stream",
            Target::Ordo3Stream => "ordo-3-stream",
            Target::Postgres => "postgres",
            Target::PostgresCond => "postgres-cond",
            Target::Etcd => "etcd",
            Target::Redis => "redis",
            Target::RedisEverysec => "redis-everysec",
        }
    }

    pub fn is_ordo(self) -> bool {
        matches!(
            self,
            Target::Ordo1
                | Target::Ordo3
                | Target::Ordo1Batch
                | Target::Ordo3Batch
                | Target::Ordo1Stream
                | Target::Ordo3Stream
        )
    }

    pub fn batched(self) -> bool {
        matches!(self, Target::Ordo1Batch | Target::Ordo3Batch)
    }

    pub fn streamed(self) -> bool {
        matches!(self, Target::Ordo1Stream | Target::Ordo3Stream)
    }

    /// For an Ordo target that measures one way of placing orders (batched, streamed): why
    /// a workload of other calls does not run on it, and the target that does.
    pub fn orders_only(self, workloads: &str) -> String {
        let (what, plain) = match self {
            Target::Ordo1Batch => ("batched PlaceOrders calls", "ordo-1"),
            Target::Ordo3Batch => ("batched PlaceOrders calls", "ordo-3"),
            Target::Ordo1Stream => ("orders over OrderStream", "ordo-1"),
            _ => ("orders over OrderStream", "ordo-3"),
        };
        format!("{self} measures {what}: use {plain} for {workloads}")
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL.iter().copied().find(|t| t.name() == s).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|t| t.name()).collect();
            format!("unknown target {s:?}: one of {}", names.join(", "))
        })
    }
}

/// The targets of a compare that can run a workload (`supported` says why not), and the
/// others with the reason.
pub fn split_targets(
    targets: &[Target],
    supported: fn(Target) -> Result<(), String>,
) -> (Vec<Target>, Vec<(Target, String)>) {
    let mut runnable = Vec::new();
    let mut skipped = Vec::new();
    for &t in targets {
        match supported(t) {
            Ok(()) => runnable.push(t),
            Err(why) => skipped.push((t, why)),
        }
    }
    (runnable, skipped)
}

/// What one operation came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Ok,
    /// A business rejection (out of stock) with its reason.
    Rejected(&'static str),
    /// The system failed to answer (timeout, conflict retries exhausted, error).
    Error(String),
}

/// Where a started target listens.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub target: Target,
    pub urls: Vec<String>,
    /// With `--tls`: the CA that issued the Ordo nodes' certificates (`urls` are https://).
    pub ca_pem: Option<Vec<u8>>,
    /// With `--auth`: the token every Ordo client sends.
    pub token: Option<String>,
}

impl Endpoints {
    /// A target reached without TLS or tokens.
    pub fn plain(target: Target, urls: Vec<String>) -> Endpoints {
        Endpoints {
            target,
            urls,
            ca_pem: None,
            token: None,
        }
    }

    /// An Ordo client of `urls`, over TLS and with the token when the target has them.
    pub async fn ordo_client(&self, urls: Vec<String>) -> anyhow::Result<Client> {
        let client = match &self.ca_pem {
            Some(ca) => Client::connect_tls(urls, ca).await?,
            None => Client::connect_many(urls).await?,
        };
        Ok(match &self.token {
            Some(token) => client.with_token(token)?,
            None => client,
        })
    }
}

/// One client's connection to a target.
pub enum Session {
    /// A client, and its OrderStream on a `-stream` target.
    Ordo(Client, Option<Box<OrderStream>>),
    Postgres {
        client: tokio_postgres::Client,
        conditional: bool,
        lock: tokio_postgres::Statement,
        update: tokio_postgres::Statement,
        cond_update: tokio_postgres::Statement,
        read: tokio_postgres::Statement,
    },
    Redis {
        conn: redis::aio::MultiplexedConnection,
        script: redis::Script,
    },
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::Client>),
}

/// Retries of an etcd compare-and-put that lost to a concurrent writer.
#[cfg(feature = "etcd")]
const ETCD_CONFLICT_RETRIES_MAX: u32 = 200;

const REDIS_ORDER_LUA: &str = r#"
for i, key in ipairs(KEYS) do
  local have = tonumber(redis.call('GET', key) or '0')
  if have < tonumber(ARGV[i]) then return 0 end
end
for i, key in ipairs(KEYS) do
  redis.call('DECRBY', key, ARGV[i])
end
return 1
"#;

pub(crate) fn redis_key(dc: u32, sku: u32) -> String {
    format!("s:{dc}:{sku}")
}

/// Why the etcd target is unavailable in a build without the `etcd` feature.
#[cfg(not(feature = "etcd"))]
pub const ETCD_MISSING: &str = "this ordo-bench was built without etcd support (the etcd-client \
     crate needs a system protoc to build): apt-get install protobuf-compiler, then \
     cargo build --release -p ordo-bench --features etcd";

#[cfg(feature = "etcd")]
fn etcd_key(dc: u32, sku: u32) -> String {
    format!("/stock/{dc}/{sku}")
}

pub(crate) async fn postgres_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

impl Session {
    /// The highest epoch an answer to this session named (0 for the baselines).
    pub fn highest_epoch(&self) -> u64 {
        match self {
            Session::Ordo(client, _) => client.highest_epoch(),
            _ => 0,
        }
    }

    /// Opens client number `index`'s session (clients are spread over a cluster's nodes).
    pub async fn open(ep: &Endpoints, index: usize) -> anyhow::Result<Session> {
        let url = &ep.urls[index % ep.urls.len()];
        Ok(match ep.target {
            t if t.is_ordo() => {
                let mut urls = ep.urls.clone();
                urls.rotate_left(index % ep.urls.len());
                let client = ep
                    .ordo_client(urls)
                    .await?
                    .with_consistency(Consistency::Local);
                let stream = match ep.target.streamed() {
                    true => Some(Box::new(client.order_stream().await?)),
                    false => None,
                };
                Session::Ordo(client, stream)
            }
            Target::Postgres | Target::PostgresCond => {
                let client = postgres_connect(url).await?;
                client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS stock (dc int NOT NULL, sku int NOT NULL,
                             qty bigint NOT NULL, PRIMARY KEY (dc, sku))",
                    )
                    .await?;
                let lock = client
                    .prepare("SELECT qty FROM stock WHERE dc = $1 AND sku = $2 FOR UPDATE")
                    .await?;
                let update = client
                    .prepare("UPDATE stock SET qty = qty - $3 WHERE dc = $1 AND sku = $2")
                    .await?;
                let cond_update = client
                    .prepare(
                        "UPDATE stock SET qty = qty - $3 WHERE dc = $1 AND sku = $2 AND qty >= $3",
                    )
                    .await?;
                let read = client
                    .prepare("SELECT qty FROM stock WHERE dc = $1 AND sku = $2")
                    .await?;
                Session::Postgres {
                    client,
                    conditional: ep.target == Target::PostgresCond,
                    lock,
                    update,
                    cond_update,
                    read,
                }
            }
            Target::Redis | Target::RedisEverysec => {
                let client = redis::Client::open(url.as_str())?;
                let conn = client.get_multiplexed_async_connection().await?;
                Session::Redis {
                    conn,
                    script: redis::Script::new(REDIS_ORDER_LUA),
                }
            }
            #[cfg(feature = "etcd")]
            Target::Etcd => {
                let mut urls = ep.urls.clone();
                urls.rotate_left(index % ep.urls.len());
                Session::Etcd(Box::new(etcd_client::Client::connect(urls, None).await?))
            }
            #[cfg(not(feature = "etcd"))]
            Target::Etcd => bail!("{ETCD_MISSING}"),
            _ => unreachable!("every target is matched"),
        })
    }

    pub async fn order(&mut self, lines: &[Line]) -> Outcome {
        match self {
            Session::Ordo(client, stream) => {
                let lines: Vec<OrdoLine> = lines
                    .iter()
                    .map(|&(dc_id, sku, qty)| OrdoLine { dc_id, sku, qty })
                    .collect();
                let placed = match stream {
                    Some(stream) => stream.place_order(&lines, false).await,
                    None => client.place_order(&lines, false, None).await,
                };
                match placed {
                    Ok(r) => ordo_outcome(&r),
                    Err(e) => Outcome::Error(e.to_string()),
                }
            }
            Session::Postgres {
                client,
                conditional,
                lock,
                update,
                cond_update,
                ..
            } => postgres_order(client, *conditional, lock, update, cond_update, lines)
                .await
                .unwrap_or_else(|e| Outcome::Error(e.to_string())),
            Session::Redis { conn, script } => {
                let mut invocation = script.prepare_invoke();
                for &(dc, sku, qty) in lines {
                    invocation.key(redis_key(dc, sku)).arg(qty);
                }
                match invocation.invoke_async::<i64>(conn).await {
                    Ok(1) => Outcome::Ok,
                    Ok(_) => Outcome::Rejected("insufficient-stock"),
                    Err(e) => Outcome::Error(e.to_string()),
                }
            }
            #[cfg(feature = "etcd")]
            Session::Etcd(client) => etcd_order(client, lines)
                .await
                .unwrap_or_else(|e| Outcome::Error(e.to_string())),
        }
    }

    /// Many independent orders: one `PlaceOrders` call on Ordo, one after another elsewhere.
    pub async fn order_batch(&mut self, orders: &[Vec<Line>]) -> Vec<Outcome> {
        if let Session::Ordo(client, _) = self {
            let requests = orders
                .iter()
                .map(|lines| v1::PlaceOrderRequest {
                    lines: lines
                        .iter()
                        .map(|&(dc_id, sku, qty)| v1::OrderLine { dc_id, sku, qty })
                        .collect(),
                    ..Default::default()
                })
                .collect();
            return match client.place_orders(requests).await {
                Ok(results) => results.iter().map(ordo_outcome).collect(),
                Err(e) => vec![Outcome::Error(e.to_string()); orders.len()],
            };
        }
        let mut out = Vec::with_capacity(orders.len());
        for lines in orders {
            out.push(self.order(lines).await);
        }
        out
    }

    /// An availability check.
    pub async fn read(&mut self, dc: u32, sku: u32) -> Outcome {
        match self.quantity(dc, sku).await {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::Error(e.to_string()),
        }
    }

    /// The on-hand quantity of one key.
    async fn quantity(&mut self, dc: u32, sku: u32) -> anyhow::Result<i64> {
        Ok(match self {
            Session::Ordo(client, _) => client.get_stock(dc, sku).await?.on_hand,
            Session::Postgres { client, read, .. } => client
                .query_one(&*read, &[&(dc as i32), &(sku as i32)])
                .await?
                .get(0),
            Session::Redis { conn, .. } => redis::cmd("GET")
                .arg(redis_key(dc, sku))
                .query_async::<Option<i64>>(conn)
                .await?
                .context("a stock key is missing in Redis")?,
            #[cfg(feature = "etcd")]
            Session::Etcd(client) => etcd_read(client, dc, sku).await?.0,
        })
    }

    /// Loads the dataset: every (dc, sku) at `dataset.stock` units.
    pub async fn load(&mut self, dataset: &Dataset) -> anyhow::Result<()> {
        match self {
            Session::Ordo(client, _) => {
                // A few dozen calls in flight at a time.
                let dataset = *dataset;
                let dcs = (1..=dataset.dcs).map(|dc| {
                    let client = client.clone();
                    async move {
                        client
                            .upsert_dc(v1::Dc {
                                dc_id: dc,
                                name: format!("bench dc {dc}"),
                                lat: 0.0,
                                lon: 0.0,
                                region: Some(dataset.region(dc)),
                                active: true,
                            })
                            .await?;
                        Ok(())
                    }
                });
                in_parallel(64, dcs).await?;
                upsert_bench_items(client, dataset.skus, 64).await?;
                // Each DC's stock as one RestockDc (of at most RESTOCK_DC_LINES lines).
                let calls = (1..=dataset.dcs).flat_map(move |dc| {
                    let client = client.clone();
                    let skus: Vec<u32> = (1..=dataset.skus).collect();
                    let chunks: Vec<Vec<(u32, i64)>> = skus
                        .chunks(RESTOCK_DC_LINES)
                        .map(|c| c.iter().map(|&sku| (sku, dataset.stock)).collect())
                        .collect();
                    chunks.into_iter().map(move |lines| {
                        let client = client.clone();
                        async move { restock_dc_or_older(&client, dc, lines).await }
                    })
                });
                in_parallel(4, calls).await?;
            }
            Session::Postgres { client, .. } => {
                client.batch_execute("TRUNCATE stock").await?;
                let keys: Vec<(u32, u32)> = dataset.keys().collect();
                for chunk in keys.chunks(1_000) {
                    let values: Vec<String> = chunk
                        .iter()
                        .map(|(dc, sku)| format!("({dc},{sku},{})", dataset.stock))
                        .collect();
                    client
                        .batch_execute(&format!("INSERT INTO stock VALUES {}", values.join(",")))
                        .await?;
                }
                client.batch_execute("ANALYZE stock").await?;
            }
            Session::Redis { conn, .. } => {
                redis::cmd("FLUSHALL").query_async::<()>(conn).await?;
                let keys: Vec<(u32, u32)> = dataset.keys().collect();
                for chunk in keys.chunks(1_000) {
                    let mut cmd = redis::cmd("MSET");
                    for &(dc, sku) in chunk {
                        cmd.arg(redis_key(dc, sku)).arg(dataset.stock);
                    }
                    cmd.query_async::<()>(conn).await?;
                }
            }
            #[cfg(feature = "etcd")]
            Session::Etcd(client) => {
                let keys: Vec<(u32, u32)> = dataset.keys().collect();
                // etcd allows 128 operations per transaction by default.
                for chunk in keys.chunks(100) {
                    let ops: Vec<etcd_client::TxnOp> = chunk
                        .iter()
                        .map(|&(dc, sku)| {
                            etcd_client::TxnOp::put(
                                etcd_key(dc, sku),
                                dataset.stock.to_string(),
                                None,
                            )
                        })
                        .collect();
                    client.txn(etcd_client::Txn::new().and_then(ops)).await?;
                }
            }
        }
        Ok(())
    }

    /// The stock of the keys the final check reads ([`check::keys_to_check`]), read back
    /// after a run.
    pub async fn final_stock(
        &mut self,
        dataset: &Dataset,
        tally: &Tally,
    ) -> anyhow::Result<BTreeMap<(u32, u32), i64>> {
        let keys = check::keys_to_check(dataset, tally);
        if let Session::Ordo(client, _) = self {
            // At least the epoch of the last answer any client had: a node that has not
            // applied it yet (a follower, or a leader that lost its place) waits until it has,
            // so no acknowledged order is missed by reading too early.
            let client = client.clone().with_consistency(Consistency::AtLeastSeen);
            client.observe_epoch(tally.highest_epoch);
            // Many reads in flight: a large dataset's check reads back 10⁵ rows or more.
            let mut out = BTreeMap::new();
            for chunk in keys.chunks(256) {
                let reads = chunk.iter().map(|&(dc, sku)| {
                    let client = client.clone();
                    tokio::spawn(async move { (dc, sku, client.get_stock(dc, sku).await) })
                });
                for read in reads.collect::<Vec<_>>() {
                    let (dc, sku, stock) = read.await?;
                    out.insert((dc, sku), stock?.on_hand);
                }
            }
            return Ok(out);
        }
        let mut out = BTreeMap::new();
        for (dc, sku) in keys {
            let qty = self.quantity(dc, sku).await?;
            out.insert((dc, sku), qty);
        }
        Ok(out)
    }
}

fn ordo_outcome(r: &v1::OrderResult) -> Outcome {
    if r.status() == v1::OrderStatus::Committed {
        Outcome::Ok
    } else {
        match r.rejection.as_ref().map(|x| x.code()) {
            Some(v1::RejectCode::InsufficientStock) => Outcome::Rejected("insufficient-stock"),
            _ => Outcome::Rejected("other-rejection"),
        }
    }
}

async fn postgres_order(
    client: &mut tokio_postgres::Client,
    conditional: bool,
    lock: &tokio_postgres::Statement,
    update: &tokio_postgres::Statement,
    cond_update: &tokio_postgres::Statement,
    lines: &[Line],
) -> anyhow::Result<Outcome> {
    // Lock in key order, so concurrent multi-line orders cannot deadlock.
    let mut sorted = lines.to_vec();
    sorted.sort_unstable();
    if conditional && sorted.len() == 1 {
        let (dc, sku, qty) = sorted[0];
        let n = client
            .execute(cond_update, &[&(dc as i32), &(sku as i32), &qty])
            .await?;
        return Ok(if n == 1 {
            Outcome::Ok
        } else {
            Outcome::Rejected("insufficient-stock")
        });
    }
    let tx = client.transaction().await?;
    for &(dc, sku, qty) in &sorted {
        if conditional {
            let n = tx
                .execute(cond_update, &[&(dc as i32), &(sku as i32), &qty])
                .await?;
            if n != 1 {
                tx.rollback().await?;
                return Ok(Outcome::Rejected("insufficient-stock"));
            }
        } else {
            let row = tx.query_one(lock, &[&(dc as i32), &(sku as i32)]).await?;
            let have: i64 = row.get(0);
            if have < qty {
                tx.rollback().await?;
                return Ok(Outcome::Rejected("insufficient-stock"));
            }
        }
    }
    if !conditional {
        for &(dc, sku, qty) in &sorted {
            tx.execute(update, &[&(dc as i32), &(sku as i32), &qty])
                .await?;
        }
    }
    tx.commit().await?;
    Ok(Outcome::Ok)
}

#[cfg(feature = "etcd")]
async fn etcd_read(
    client: &mut etcd_client::Client,
    dc: u32,
    sku: u32,
) -> anyhow::Result<(i64, i64)> {
    let response = client.get(etcd_key(dc, sku), None).await?;
    let Some(kv) = response.kvs().first() else {
        bail!("etcd key {} is missing", etcd_key(dc, sku));
    };
    let qty: i64 = kv
        .value_str()?
        .parse()
        .context("etcd value is not a number")?;
    Ok((qty, kv.mod_revision()))
}

#[cfg(feature = "etcd")]
async fn etcd_order(client: &mut etcd_client::Client, lines: &[Line]) -> anyhow::Result<Outcome> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    for _ in 0..ETCD_CONFLICT_RETRIES_MAX {
        let mut compares = Vec::with_capacity(lines.len());
        let mut puts = Vec::with_capacity(lines.len());
        for &(dc, sku, qty) in lines {
            let (have, revision) = etcd_read(client, dc, sku).await?;
            if have < qty {
                return Ok(Outcome::Rejected("insufficient-stock"));
            }
            compares.push(Compare::mod_revision(
                etcd_key(dc, sku),
                CompareOp::Equal,
                revision,
            ));
            puts.push(TxnOp::put(
                etcd_key(dc, sku),
                (have - qty).to_string(),
                None,
            ));
        }
        let response = client.txn(Txn::new().when(compares).and_then(puts)).await?;
        if response.succeeded() {
            return Ok(Outcome::Ok);
        }
    }
    Ok(Outcome::Error(format!(
        "etcd: lost the compare-and-put race {ETCD_CONFLICT_RETRIES_MAX} times"
    )))
}

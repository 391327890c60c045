//! The partition stores: one sled database per node, a keyspace per partition.
//!
//! Keyspaces: `global` (DC table, catalogue, their dedupe entries), `p<N>` for each region
//! partition, `meta` (applied epoch, sequencer time, hashes, opaque Raft metadata) and
//! `hashes` (the state hash at each epoch of a recent window), and the feed. They are prefixes
//! of one sled tree (`space.rs`; snapshots still name them as trees). This layer deals in
//! bytes: what the keys and values mean belongs to the scheduler.
//!
//! Every epoch is applied with [`Store::commit`]: its writes, over all keyspaces, with the
//! applied-epoch watermark, go into an in-memory overlay that every read consults first, and a
//! writer thread puts them in sled behind it, in atomic batches of whole epochs (`behind.rs`),
//! so after a crash sled is at the end of some epoch, never inside one. sled is not the
//! durability anchor (its flush is `sync_file_range`): the Raft log is, and a restarted node
//! re-applies from the watermark.
//!
//! Snapshots: [`Store::export_snapshot`] dumps every tree as of one epoch without stopping
//! commits. It notes the applied state under the epoch gate, dumps the trees while commits go
//! on, and has each of those commits record the value every key it writes had before it (its
//! before-image, once per key); at the end it puts those before-images back into the dump,
//! which then holds exactly the state at the noted epoch. The price is one extra point read
//! per key written while an export runs, and memory for at most
//! [`EXPORT_CAPTURE_KEYS_MAX`] before-images; past that bound the export redoes its dump
//! with the gate held, stopping commits for that one dump instead of growing further.
//! [`Store::import_snapshot`] applies a snapshot as a diff in one sled batch over all
//! keyspaces: keys the snapshot lacks are removed, the rest written, no tree is ever cleared, so a
//! point read outside the gate never misses a key present before and after the import. A
//! marker written before that transaction and removed by it tells [`Store::open`] that an
//! import was interrupted ([`Store::import_interrupted`]); the caller finishes it by importing
//! the same snapshot again.
//!
//! The change feed: each epoch's change events (bytes the scheduler encodes) go in the feed
//! keyspace, keyed by epoch, in the same batch as the epoch's writes, and are read back by
//! epoch range ([`Store::feed_read`]). The feed is not part of the state hash or of snapshots:
//! how long it is kept ([`FeedRetention`]) is each node's choice. It is complete from
//! [`Store::feed_start`] to the applied epoch; pruning moves the start in the same
//! batch that removes the entries, and a snapshot import empties the feed and starts it
//! after the imported epoch, so the feed never holds a silent gap.
//!
//! Known keys: [`Store::keep_known`] counts the region keys under one prefix (the scheduler's
//! dedupe entries) by a hash of each, so a point read of such a key that was never written is
//! answered without the overlay or sled; commits keep the counts exact (see `Known`).
//!
//! Resident keys: [`Store::keep_resident`] keeps every region key under one prefix (the
//! scheduler's stock rows) in memory beside sled, loaded once and then changed by every commit
//! and import in the same critical section as sled, so a point read of such a key is a hash
//! lookup that answers exactly what sled would.
//!
//! The global partition's point reads (a DC, an item, a price: every order line checks its
//! DC and SKU at the edge and again in execution) are answered from a cache of the keys read
//! before ([`GLOBAL_CACHE_KEYS_MAX`] at most; keys found only). A commit that writes the global
//! partition drops the keys it wrote from the cache, and moves [`Store::global_version`], under
//! the cache's lock once sled holds the new values; a read that missed puts what it read from
//! sled only if the version did not move meanwhile. So the cache holds nothing sled no longer
//! does.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};

use serde::{Deserialize, Serialize};
use sled::{Batch, IVec};

use crate::behind::{Behind, Staged};
use crate::hash::{HashChain, StateHash};
use crate::space::{self, Space};
use crate::view::{self, View, VIEWS_MAX};
use crate::StoreError;

/// A partition: the global tables, or one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Part {
    Global,
    Region(u32),
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Global => write!(f, "global"),
            Part::Region(n) => write!(f, "p{n}"),
        }
    }
}

/// One key's new value in an epoch; `None` deletes the key.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// Everything one Raft entry changes, applied atomically.
#[derive(Debug, Default)]
pub struct EpochCommit {
    /// Set when the entry is an epoch batch; blank and membership entries only move `raft_meta`.
    pub stamp: Option<EpochStamp>,
    /// Writes per partition, in execution order.
    pub writes: BTreeMap<Part, Vec<Write>>,
    /// Opaque Raft metadata (last applied log id, membership) stored with the same commit.
    pub raft_meta: Vec<u8>,
    /// The epoch's change events, encoded (`None`: it changed nothing a watcher sees).
    pub feed: Option<Vec<u8>>,
}

/// How much of the change feed a node keeps: an epoch's events are dropped once they are more
/// than `epochs` epochs old, or, oldest first, while the feed holds more than `bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedRetention {
    pub epochs: u64,
    pub bytes: u64,
}

impl Default for FeedRetention {
    fn default() -> Self {
        Self {
            epochs: 1_000_000,
            bytes: 256 * 1024 * 1024,
        }
    }
}

/// At most this many feed entries are dropped by one commit (each commit adds at most one, so
/// pruning keeps up; after the retention shrinks it catches up over a few commits).
pub const FEED_PRUNE_PER_COMMIT_MAX: usize = 64;

/// A read of the change feed ([`Store::feed_read`]).
#[derive(Debug, Default)]
pub struct FeedPage {
    /// The oldest epoch whose events are kept. A read from before it returned nothing.
    pub start: u64,
    /// The epoch applied when the page was read.
    pub applied: u64,
    /// Every epoch from the read's `from` through this one is in `entries` or had no events.
    /// Below `from - 1` when nothing newer was applied (or `from` is before `start`).
    pub through: u64,
    /// `(epoch, encoded events)` in epoch order.
    pub entries: Vec<(u64, IVec)>,
}

/// Where the feed stands; changed under the epoch gate.
#[derive(Clone, Copy, Debug, Default)]
struct FeedState {
    /// Every epoch from here to the applied one has its events in the feed (or had none).
    start: u64,
    /// Bytes of the values in the feed tree.
    bytes: u64,
    retention: FeedRetention,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochStamp {
    pub epoch: u64,
    pub time_ms: u64,
}

/// What the store has applied, as of its last commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub epoch: u64,
    pub time_ms: u64,
    pub state_hash: StateHash,
    pub chain: HashChain,
    pub raft_meta: Vec<u8>,
}

/// State hashes of this many most recent epochs are kept for the admin API.
pub const HASH_WINDOW_EPOCHS: u64 = 10_000;

/// At most this many before-images are kept for one running export (see the module docs). An
/// export usually sees far fewer: commits mostly rewrite the same stock and order rows. At the
/// bound the capture stops and the export redoes its dump under the epoch gate.
pub const EXPORT_CAPTURE_KEYS_MAX: usize = 1_000_000;

const META_APPLIED: &[u8] = b"applied";
const META_PARTITIONS: &[u8] = b"partitions";
const META_IMPORTING: &[u8] = b"importing";
/// The feed's start ([`FeedState::start`]): this node's, never exported in a snapshot.
const META_FEED_START: &[u8] = b"feed_start";
/// Keys in one sled batch of [`Store::restore_snapshot`].
pub const RESTORE_BATCH_KEYS: usize = 16_384;

/// Numbers the stores a process opens ([`Store`]'s `id`).
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

/// The most region partitions a store has (each is a keyspace, a lock table and an executor).
pub const PARTITIONS_MAX: u32 = 256;

/// The layout of [`Store::export_snapshot`]'s blob; [`Store::import_snapshot`] takes no other.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// Positions of the fixed trees in a snapshot's tree list; region `n` follows at
/// `FIRST_REGION_TREE + n`. An export's capture names trees by these positions.
const META_TREE: usize = 0;
const HASHES_TREE: usize = 1;
const GLOBAL_TREE: usize = 2;
const FIRST_REGION_TREE: usize = 3;

/// A node's partition stores.
pub struct Store {
    /// The overlay of epochs not yet in sled, and the thread that writes them (`behind.rs`).
    behind: Arc<Behind>,
    db: sled::Db,
    /// The one tree every keyspace lives in (`space.rs`).
    state: sled::Tree,
    meta: Space,
    hashes: Space,
    global: Space,
    regions: Vec<Space>,
    /// A copy of the meta `applied` record, so readers need not decode it each time.
    applied: Mutex<Applied>,
    /// Held for writing while an epoch commits or a snapshot is imported, and for reading by
    /// [`Store::consistent`] and briefly at the start and end of an export or a view, so a
    /// multi-row read sees whole epochs. Lock order: `snapshot`, then `gate`, then `applied`,
    /// then `capture`, then `views`, then `feed`, then `feed_entries`, then `known`, then
    /// `resident`. The overlay's own locks (`behind.rs`) and each view's come after all of them.
    gate: RwLock<()>,
    /// This store among the process's stores: a thread's view ([`Store::view`]) names it.
    id: u64,
    /// The open read views ([`Store::view`]); commits record before-images in each.
    views: Mutex<Vec<Arc<View>>>,
    /// The before-images of a running export; `None` when no export runs. Commits fill it, so
    /// the export can undo what they changed after the epoch it reflects.
    capture: Mutex<Option<Capture>>,
    /// Held by an export or an import for its whole run. One export at a time owns the
    /// capture, and an import never runs under an export: its writes bypass the capture and
    /// would leave the export's dump neither before nor after it.
    snapshot: Mutex<()>,
    /// Set when the store was opened with the import marker: a crash interrupted
    /// [`Store::import_snapshot`], and the state is the one before it. Cleared by the next
    /// successful import.
    import_interrupted: AtomicBool,
    /// [`EXPORT_CAPTURE_KEYS_MAX`], a field so unit tests can reach the bound with few keys.
    capture_keys_max: usize,
    /// [`crate::VIEW_KEYS_MAX`], a field for the same reason.
    view_keys_max: usize,
    /// Bumped by every commit that writes the global partition (DCs, catalogue) and by every
    /// snapshot import: caches built from the global tables (the edge's nearby index) rebuild
    /// when it moves. Not persisted; it starts at 1 when the store opens.
    global_version: AtomicU64,
    /// Per first byte of a global key: moved with `global_version` by the commits and
    /// imports that write a key starting with it, so an index of one table (the DCs) is not
    /// rebuilt for writes to another (prices).
    global_versions: Box<[AtomicU64]>,
    /// The region keys kept in memory ([`Store::keep_resident`]); `None` until asked. A commit
    /// holds it for writing from its sled batch until the copy matches, so a read sees
    /// a key before or after a commit, as a sled read does.
    resident: RwLock<Option<Resident>>,
    /// The resident prefix, once set: reads of other keys never touch `resident`'s lock.
    resident_prefix: OnceLock<Vec<u8>>,
    /// The region keys under one prefix that exist, as hashes ([`Store::keep_known`]);
    /// `None` until asked. Changed by commits and imports under the resident lock's hold.
    known: RwLock<Option<Known>>,
    /// The known prefix, once set.
    known_prefix: OnceLock<Vec<u8>>,
    /// The global partition's keys read before, with their values (see the module docs).
    global_cache: Mutex<HashMap<Vec<u8>, IVec>>,
    /// Tests run this between a global read's sled read and its cache fill (a commit there).
    #[cfg(test)]
    before_global_fill: Mutex<Option<Box<dyn FnMut() + Send>>>,
    /// The change feed: epoch (big-endian) → that epoch's encoded events.
    feed_tree: Space,
    /// The feed's start, size and retention.
    feed: Mutex<FeedState>,
    /// The epoch and size of each entry in the feed, oldest first, so pruning reads no sled.
    /// Taken under `feed` (only commits and imports change it).
    feed_entries: Mutex<VecDeque<(u64, u64)>>,
}

/// A feed key's epoch.
fn feed_epoch(key: &[u8]) -> Result<u64, StoreError> {
    let bytes =
        <[u8; 8]>::try_from(key).map_err(|_| StoreError::Corrupt(format!("feed key {key:?}")))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Point reads that take the resident lock once for many keys ([`Store::reader`]). Hold it
/// briefly: commits wait for it. Read resident keys through it, never through [`Store::get`]
/// while it lives (a second read lock on the same thread may wait for a waiting commit).
pub struct Reader<'a> {
    store: &'a Store,
    resident: Option<RwLockReadGuard<'a, Option<Resident>>>,
    /// Made in a view: every read goes through [`Store::get`].
    viewed: bool,
}

impl Reader<'_> {
    pub fn get(&self, part: Part, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        if self.viewed {
            return self.store.get(part, key);
        }
        if let (Part::Region(n), Some(resident)) = (part, &self.resident) {
            if let Some(hit) = resident.as_ref().and_then(|r| r.get(n, key)) {
                return Ok(hit);
            }
        }
        self.store.get_unresident(part, key)
    }
}

/// The most keys the global partition's read cache holds; it starts over when full.
pub const GLOBAL_CACHE_KEYS_MAX: usize = 1 << 20;

/// Resident keys are at most this long past their group (packed inline); longer ones stay in
/// sled only.
const RESIDENT_KEY_BYTES_MAX: usize = 16;

/// A key part packed inline: its bytes as one big-endian integer, and its length (keys of
/// other lengths with the same leading bytes stay apart). One integer compare per step.
type PackedKey = (u128, u8);

fn pack(key: &[u8]) -> Option<PackedKey> {
    let mut bytes = [0u8; RESIDENT_KEY_BYTES_MAX];
    bytes.get_mut(..key.len())?.copy_from_slice(key);
    Some((u128::from_be_bytes(bytes), key.len() as u8))
}

/// Every region key under `prefix`, by partition, grouped by their first `group` bytes (the
/// stock rows of one DC): keys read together sit together in memory.
struct Resident {
    prefix: Vec<u8>,
    group: usize,
    maps: Vec<HashMap<PackedKey, BTreeMap<PackedKey, IVec>>>,
}

impl Resident {
    fn load(prefix: &[u8], group: usize, regions: &[Space]) -> Result<Resident, StoreError> {
        let mut resident = Resident {
            prefix: prefix.to_vec(),
            group,
            maps: vec![HashMap::new(); regions.len()],
        };
        for (n, tree) in regions.iter().enumerate() {
            for pair in tree.scan_prefix(prefix) {
                let (key, value) = pair?;
                resident.set(n as u32, &key, Some(&value));
            }
        }
        Ok(resident)
    }

    /// A resident key's group and the rest of it; `None` for any other key.
    fn split(&self, key: &[u8]) -> Option<(PackedKey, PackedKey)> {
        if !key.starts_with(&self.prefix) || key.len() < self.group {
            return None;
        }
        let (group, rest) = key.split_at(self.group);
        Some((pack(group)?, pack(rest)?))
    }

    /// `None` when the key is not resident (another prefix, too long): read sled.
    fn get(&self, region: u32, key: &[u8]) -> Option<Option<IVec>> {
        let (group, rest) = self.split(key)?;
        let map = self.maps.get(region as usize)?;
        Some(map.get(&group).and_then(|rows| rows.get(&rest)).cloned())
    }

    fn set(&mut self, region: u32, key: &[u8], value: Option<&[u8]>) {
        let Some((group, rest)) = self.split(key) else {
            return;
        };
        let Some(map) = self.maps.get_mut(region as usize) else {
            return;
        };
        match value {
            Some(value) => {
                map.entry(group)
                    .or_default()
                    .insert(rest, IVec::from(value));
            }
            None => {
                if let Some(rows) = map.get_mut(&group) {
                    rows.remove(&rest);
                    if rows.is_empty() {
                        map.remove(&group);
                    }
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.maps
            .iter()
            .flat_map(HashMap::values)
            .map(BTreeMap::len)
            .sum()
    }
}

/// Which region keys under one prefix exist: a count per 64-bit hash of (region, key), so a
/// read of a key whose hash has no count is answered "absent" without reaching sled (a request
/// id never used before: nearly every order's dedupe lookup). A count is exact: a commit
/// adds one only for a key that did not exist and removes one only for a key that did,
/// reading the key first when the counts alone cannot say. Keys that share a hash share a
/// count, so a hash with a count may still name an absent key: then sled answers.
struct Known {
    prefix: Vec<u8>,
    counts: HashMap<u64, u32>,
}

/// A key's hash in [`Known`]: SipHash with fixed keys, the same every time in this process.
fn known_hash(region: u32, key: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    region.hash(&mut hasher);
    key.hash(&mut hasher);
    hasher.finish()
}

impl Known {
    fn load(prefix: &[u8], regions: &[Space]) -> Result<Known, StoreError> {
        let mut known = Known {
            prefix: prefix.to_vec(),
            counts: HashMap::new(),
        };
        for (n, tree) in regions.iter().enumerate() {
            for pair in tree.scan_prefix(prefix) {
                let (key, _) = pair?;
                *known.counts.entry(known_hash(n as u32, &key)).or_default() += 1;
            }
        }
        Ok(known)
    }

    fn covers(&self, part: Part, key: &[u8]) -> Option<u32> {
        match part {
            Part::Region(n) if key.starts_with(&self.prefix) => Some(n),
            _ => None,
        }
    }

    /// Whether the key may exist (`false`: it does not).
    fn may_hold(&self, region: u32, key: &[u8]) -> bool {
        self.counts.contains_key(&known_hash(region, key))
    }

    /// Counts one commit's write of a covered key; `existed` says whether the key existed
    /// before it, and is asked only when the counts cannot tell.
    fn apply(
        &mut self,
        region: u32,
        key: &[u8],
        written: bool,
        existed: impl FnOnce() -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let hash = known_hash(region, key);
        match (self.counts.get(&hash).copied(), written) {
            (None, true) => {
                self.counts.insert(hash, 1);
            }
            (None, false) => {}
            (Some(count), true) => {
                if !existed()? {
                    self.counts.insert(hash, count + 1);
                }
            }
            (Some(count), false) => {
                if existed()? {
                    if count <= 1 {
                        self.counts.remove(&hash);
                    } else {
                        self.counts.insert(hash, count - 1);
                    }
                }
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.counts.values().map(|&c| c as usize).sum()
    }
}

/// What commits record while an export runs.
#[derive(Debug, Default)]
struct Capture {
    /// (tree position, key) → the key's value when the export began (`None`: absent). Only
    /// the first write of a key records it: later writes would record values after that.
    before: BTreeMap<(usize, Vec<u8>), Option<IVec>>,
    /// Set when `before` reached the bound; recording stopped and `before` was dropped.
    overflowed: bool,
}

impl Capture {
    /// Records `key`'s current value in `tree` unless this capture has one for it already.
    /// Called by a commit before it writes, with the gate held, so the value read is the one
    /// before this commit.
    fn record(
        &mut self,
        bound: usize,
        tree_id: usize,
        tree: &Space,
        key: &[u8],
    ) -> Result<(), StoreError> {
        if self.overflowed {
            return Ok(());
        }
        let slot = (tree_id, key.to_vec());
        if self.before.contains_key(&slot) {
            return Ok(());
        }
        if self.before.len() >= bound {
            tracing::warn!(
                keys = self.before.len(),
                "a snapshot export's capture reached its bound; the export will redo its dump \
                 with commits held"
            );
            self.overflowed = true;
            self.before = BTreeMap::new();
            return Ok(());
        }
        self.before.insert(slot, tree.get(key)?);
        Ok(())
    }
}

/// One tree's name and every key/value pair in it.
type TreeDump = (String, Vec<(Vec<u8>, Vec<u8>)>);

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    partitions: u32,
    trees: Vec<TreeDump>,
}

/// How long opening a store waits for sled's lock on its files, which a store closed a
/// moment ago in this process can still hold while its background thread ends.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn open_sled(dir: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(500))
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return Ok(other?),
        }
    }
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    bincode::deserialize(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("in-memory values always encode")
}

/// sled's page cache unless a node is told otherwise (`--store-cache-mb`): 1 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 1024 * 1024 * 1024;

impl Store {
    /// Opens the store in `dir` with `partitions` region partitions. The partition count is fixed
    /// when the store is created; opening it with another count is refused.
    pub fn open(dir: impl AsRef<Path>, partitions: u32) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, partitions, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with sled's page cache at `cache_bytes` (sled's own estimate of the
    /// pages it holds; the process's memory is a multiple of it). Pages beyond it are read
    /// back from the files and decoded again when touched.
    pub fn open_with_cache(
        dir: impl AsRef<Path>,
        partitions: u32,
        cache_bytes: u64,
    ) -> Result<Self, StoreError> {
        if !(1..=PARTITIONS_MAX).contains(&partitions) {
            return Err(StoreError::Config(format!(
                "partitions must be 1 to {PARTITIONS_MAX}, not {partitions}"
            )));
        }
        Self::open_inner(dir.as_ref(), Some(partitions), cache_bytes)
    }

    fn open_inner(
        dir: &Path,
        partitions: Option<u32>,
        cache_bytes: u64,
    ) -> Result<Self, StoreError> {
        let db = open_sled(dir, cache_bytes)?;
        let state = db.open_tree(space::STATE_TREE)?;
        let behind = Arc::new(Behind::start(&state)?);
        let moved = space::migrate(&db, &state, &behind)?;
        if moved > 0 {
            tracing::info!(
                pairs = moved,
                "moved a store with a tree per partition into one tree"
            );
        }
        let meta = Space::new(&state, &behind, space::META_PREFIX);
        // An interrupted import left the state before it whole (the import is one
        // transaction); the caller finishes it from the snapshot it was importing.
        let import_interrupted = meta.get(META_IMPORTING)?.is_some();
        let partitions = match (meta.get(META_PARTITIONS)?, partitions) {
            (Some(stored), wanted) => {
                let stored: u32 = decode("partition count", &stored)?;
                if wanted.is_some_and(|wanted| wanted != stored) {
                    return Err(StoreError::Config(format!(
                        "this data directory was created with {stored} partitions, not {}",
                        wanted.unwrap_or_default()
                    )));
                }
                stored
            }
            (None, Some(wanted)) => {
                if wanted > space::REGIONS_MAX {
                    return Err(StoreError::Config(format!(
                        "at most {} partitions, not {wanted}",
                        space::REGIONS_MAX
                    )));
                }
                meta.insert_now(META_PARTITIONS, encode(&wanted))?;
                wanted
            }
            (None, None) => {
                return Err(StoreError::Config(format!(
                    "{} holds no Ordo store",
                    dir.display()
                )))
            }
        };
        let regions = (0..partitions)
            .map(|n| Space::new(&state, &behind, space::REGION_PREFIX_BASE + n))
            .collect::<Vec<_>>();
        let applied: Applied = match meta.get(META_APPLIED)? {
            Some(bytes) => decode("applied state", &bytes)?,
            None => Applied {
                chain: HashChain::new(partitions),
                ..Applied::default()
            },
        };
        let feed_tree = Space::new(&state, &behind, space::FEED_PREFIX);
        let feed_start = match meta.get(META_FEED_START)? {
            Some(bytes) => decode("feed start", &bytes)?,
            None => {
                // A store from before the feed: it starts with the next epoch.
                let start = applied.epoch + 1;
                meta.insert_now(META_FEED_START, encode(&start))?;
                start
            }
        };
        let mut feed_bytes = 0u64;
        let mut feed_entries = VecDeque::new();
        for kv in feed_tree.iter() {
            let (key, value) = kv?;
            feed_bytes += value.len() as u64;
            feed_entries.push_back((feed_epoch(&key)?, value.len() as u64));
        }
        Ok(Self {
            hashes: Space::new(&state, &behind, space::HASHES_PREFIX),
            global: Space::new(&state, &behind, space::GLOBAL_PREFIX),
            behind,
            state,
            db,
            meta,
            regions,
            applied: Mutex::new(applied),
            gate: RwLock::new(()),
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            views: Mutex::new(Vec::new()),
            capture: Mutex::new(None),
            snapshot: Mutex::new(()),
            import_interrupted: AtomicBool::new(import_interrupted),
            capture_keys_max: EXPORT_CAPTURE_KEYS_MAX,
            view_keys_max: view::VIEW_KEYS_MAX,
            global_version: AtomicU64::new(1),
            global_versions: (0..256).map(|_| AtomicU64::new(1)).collect(),
            global_cache: Mutex::new(HashMap::new()),
            #[cfg(test)]
            before_global_fill: Mutex::new(None),
            resident: RwLock::new(None),
            resident_prefix: OnceLock::new(),
            known: RwLock::new(None),
            known_prefix: OnceLock::new(),
            feed_tree,
            feed: Mutex::new(FeedState {
                start: feed_start,
                bytes: feed_bytes,
                retention: FeedRetention::default(),
            }),
            feed_entries: Mutex::new(feed_entries),
        })
    }

    /// Sets how much of the change feed this node keeps (from the next commit on).
    pub fn set_feed_retention(&self, retention: FeedRetention) {
        self.feed.lock().expect("feed lock").retention = retention;
    }

    /// The oldest epoch whose events the feed keeps.
    pub fn feed_start(&self) -> u64 {
        self.feed.lock().expect("feed lock").start
    }

    /// Bytes of events the feed holds.
    pub fn feed_bytes(&self) -> u64 {
        self.feed.lock().expect("feed lock").bytes
    }

    /// The feed's entries from epoch `from` on, up to the applied epoch, at most `epochs_max`
    /// entries and about `bytes_max` bytes (at least one entry when there is one).
    ///
    /// It takes no lock a commit waits for, so readers never delay epochs. It is still exact:
    /// an epoch's entry is written with the epoch, so every entry up to the applied epoch read
    /// first is there; and a commit that prunes moves the start before it removes entries, so
    /// if the start read last is not past `from`, nothing this read needed was removed while it
    /// ran (otherwise the page is empty and its `start` says why).
    pub fn feed_read(
        &self,
        from: u64,
        epochs_max: usize,
        bytes_max: usize,
    ) -> Result<FeedPage, StoreError> {
        let applied = self.applied_epoch();
        let start = self.feed_start();
        let from = from.max(1);
        let mut page = FeedPage {
            start,
            applied,
            through: from - 1,
            entries: Vec::new(),
        };
        if from < start || from > applied {
            return Ok(page);
        }
        page.through = applied;
        let mut bytes = 0usize;
        for kv in self.feed_tree.range(&from.to_be_bytes(), None) {
            let (key, value) = kv?;
            let epoch = feed_epoch(&key)?;
            if epoch > applied {
                break;
            }
            bytes += value.len();
            page.entries.push((epoch, value));
            if page.entries.len() >= epochs_max || bytes >= bytes_max {
                page.through = epoch;
                break;
            }
        }
        let start = self.feed_start();
        if from < start {
            return Ok(FeedPage {
                start,
                applied,
                through: from - 1,
                entries: Vec::new(),
            });
        }
        Ok(page)
    }

    /// Whether a snapshot import was interrupted (by a crash) and not finished since. The store
    /// then holds the state before that import; import the same snapshot again to finish it.
    pub fn import_interrupted(&self) -> bool {
        self.import_interrupted.load(Ordering::SeqCst)
    }

    /// The first step of [`Store::import_snapshot`] alone: the durable marker that an import
    /// has begun. Tests use it to leave a store as a crash during an import would; nothing
    /// else should call it.
    #[doc(hidden)]
    pub fn mark_import_started(&self) -> Result<(), StoreError> {
        self.meta.insert_now(META_IMPORTING, &[1u8])?;
        self.db.flush()?;
        Ok(())
    }

    /// Opens an existing store with the partition count it was created with.
    pub fn open_existing(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_inner(dir.as_ref(), None, DEFAULT_CACHE_BYTES)
    }

    pub fn partitions(&self) -> u32 {
        self.regions.len() as u32
    }

    fn tree(&self, part: Part) -> Result<&Space, StoreError> {
        match part {
            Part::Global => Ok(&self.global),
            Part::Region(n) => self
                .regions
                .get(n as usize)
                .ok_or_else(|| StoreError::Config(format!("no partition {n}"))),
        }
    }

    /// A partition's position in [`Store::snapshot_trees`].
    fn tree_id(part: Part) -> usize {
        match part {
            Part::Global => GLOBAL_TREE,
            Part::Region(n) => FIRST_REGION_TREE + n as usize,
        }
    }

    /// Every tree with its name, in the order a snapshot lists them.
    fn snapshot_trees(&self) -> Vec<(String, &Space)> {
        let mut trees = vec![
            ("meta".to_string(), &self.meta),
            ("hashes".to_string(), &self.hashes),
            (Part::Global.to_string(), &self.global),
        ];
        for (n, tree) in self.regions.iter().enumerate() {
            trees.push((Part::Region(n as u32).to_string(), tree));
        }
        debug_assert_eq!(trees[GLOBAL_TREE].0, "global");
        trees
    }

    pub fn get(&self, part: Part, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        let now = self.get_now(part, key)?;
        Ok(match view::current(self.id) {
            Some(view) => view.point(Self::tree_id(part), key, now),
            None => now,
        })
    }

    /// [`Store::get`] of the state as it is now, whatever view this thread reads in.
    fn get_now(&self, part: Part, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        if let (Part::Region(n), Some(prefix)) = (part, self.known_prefix.get()) {
            if key.starts_with(prefix) {
                let known = self.known.read().expect("known lock");
                if known.as_ref().is_some_and(|k| !k.may_hold(n, key)) {
                    return Ok(None);
                }
            }
        }
        let resident = matches!(part, Part::Region(_))
            && self
                .resident_prefix
                .get()
                .is_some_and(|prefix| key.starts_with(prefix));
        if resident {
            return self.reader_now().get(part, key);
        }
        self.get_unresident(part, key)
    }

    /// A point read of a key that is not resident: the global partition through its cache.
    fn get_unresident(&self, part: Part, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        if part != Part::Global {
            return Ok(self.tree(part)?.get(key)?);
        }
        if let Some(hit) = self.global_cache.lock().expect("cache lock").get(key) {
            return Ok(Some(hit.clone()));
        }
        let version = self.global_version.load(Ordering::SeqCst);
        let value = self.global.get(key)?;
        #[cfg(test)]
        if let Some(hook) = self.before_global_fill.lock().expect("hook lock").as_mut() {
            hook();
        }
        if let Some(value) = &value {
            let mut cache = self.global_cache.lock().expect("cache lock");
            // A commit that wrote the global partition since `version` may have written this
            // key after it was read: then leave the cache to the next read.
            if self.global_version.load(Ordering::SeqCst) == version {
                if cache.len() >= GLOBAL_CACHE_KEYS_MAX {
                    cache.clear();
                }
                cache.insert(key.to_vec(), value.clone());
            }
        }
        Ok(value)
    }

    /// After sled holds a commit's or an import's global writes: drops the written keys
    /// (`None`: every key) from the cache and moves the global version, both under the cache's
    /// lock, so no read that began before can put an older value back.
    fn global_changed<'k>(&self, written: Option<impl Iterator<Item = &'k [u8]>>) {
        let mut cache = self.global_cache.lock().expect("cache lock");
        self.global_version.fetch_add(1, Ordering::SeqCst);
        match written {
            Some(keys) => {
                let mut moved = [false; 256];
                for key in keys {
                    cache.remove(key);
                    if let Some(&first) = key.first() {
                        if !std::mem::replace(&mut moved[usize::from(first)], true) {
                            self.global_versions[usize::from(first)].fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
            None => {
                cache.clear();
                for version in self.global_versions.iter() {
                    version.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    /// Many point reads under one take of the resident lock (none when nothing is resident).
    /// In a view ([`Store::view`]) the lock is taken for each read instead: a view's read is
    /// long, and commits wait for the lock.
    pub fn reader(&self) -> Reader<'_> {
        match view::current(self.id) {
            Some(_) => Reader {
                store: self,
                resident: None,
                viewed: true,
            },
            None => self.reader_now(),
        }
    }

    /// A reader of the state as it is now.
    fn reader_now(&self) -> Reader<'_> {
        Reader {
            store: self,
            resident: self
                .resident_prefix
                .get()
                .map(|_| self.resident.read().expect("resident lock")),
            viewed: false,
        }
    }

    /// Keeps every region key under `prefix` in memory from now on, grouped by its first
    /// `group` bytes (at most 16, and at most 16 more), so [`Store::get`] answers them without
    /// reaching sled; returns how many there are. Costs a scan of those keys now, and memory for
    /// each (well under 200 bytes a stock row).
    pub fn keep_resident(&self, prefix: &[u8], group: usize) -> Result<usize, StoreError> {
        let _gate = self.gate.write().expect("epoch gate");
        if self.resident_prefix.get_or_init(|| prefix.to_vec()) != prefix {
            return Err(StoreError::Config(format!(
                "keys under {:?} are resident already; one prefix per store",
                self.resident_prefix.get()
            )));
        }
        let loaded = Resident::load(prefix, group, &self.regions)?;
        let count = loaded.len();
        *self.resident.write().expect("resident lock") = Some(loaded);
        Ok(count)
    }

    /// Keeps which region keys under `prefix` exist in memory from now on (a 64-bit hash of
    /// each, about 20 bytes a key), so [`Store::get`] answers most reads of absent keys without
    /// reaching sled; returns how many there are. Costs a scan of those keys now. One prefix
    /// per store, and not the resident one.
    pub fn keep_known(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        let _gate = self.gate.write().expect("epoch gate");
        if self.known_prefix.get_or_init(|| prefix.to_vec()) != prefix {
            return Err(StoreError::Config(format!(
                "keys under {:?} are known already; one prefix per store",
                self.known_prefix.get()
            )));
        }
        let loaded = Known::load(prefix, &self.regions)?;
        let count = loaded.len();
        *self.known.write().expect("known lock") = Some(loaded);
        Ok(count)
    }

    /// Key/value pairs under `prefix`, in key order, at most `limit` of them.
    pub fn scan_prefix(
        &self,
        part: Part,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(IVec, IVec)>, StoreError> {
        if view::current(self.id).is_some() {
            let end = space::successor(prefix);
            return self.range_in_view(part, prefix, end.as_deref(), limit, false);
        }
        let mut out = Vec::new();
        for kv in self.tree(part)?.scan_prefix(prefix).take(limit) {
            out.push(kv?);
        }
        Ok(out)
    }

    /// How many keys start with `prefix` in `part`, counting at most `limit`, without keeping
    /// what it reads.
    pub fn count_prefix(
        &self,
        part: Part,
        prefix: &[u8],
        limit: usize,
    ) -> Result<usize, StoreError> {
        if view::current(self.id).is_some() {
            return Ok(self.scan_prefix(part, prefix, limit)?.len());
        }
        let mut n = 0;
        for kv in self.tree(part)?.scan_prefix(prefix).take(limit) {
            kv?;
            n += 1;
        }
        Ok(n)
    }

    /// Key/value pairs with `start <= key < end`, in key order, at most `limit` of them.
    pub fn range(
        &self,
        part: Part,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(IVec, IVec)>, StoreError> {
        if view::current(self.id).is_some() {
            return self.range_in_view(part, start, Some(end), limit, false);
        }
        let mut out = Vec::new();
        for kv in self.tree(part)?.range(start, Some(end)).take(limit) {
            out.push(kv?);
        }
        Ok(out)
    }

    /// Like [`Store::range`], in descending key order.
    pub fn range_rev(
        &self,
        part: Part,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(IVec, IVec)>, StoreError> {
        if view::current(self.id).is_some() {
            return self.range_in_view(part, start, Some(end), limit, true);
        }
        let mut out = Vec::new();
        for kv in self.tree(part)?.range_rev(start, end).take(limit) {
            out.push(kv?);
        }
        Ok(out)
    }

    /// A range read in this thread's view (`end` None: to the keyspace's end; `rev`:
    /// descending): see [`View::range`].
    fn range_in_view(
        &self,
        part: Part,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        rev: bool,
    ) -> Result<Vec<(IVec, IVec)>, StoreError> {
        let view = view::current(self.id).expect("a view");
        let tree = self.tree(part)?;
        view.range(Self::tree_id(part), (start, end), limit, rev, |after, n| {
            let pairs: Box<dyn Iterator<Item = _>> = match (rev, after) {
                (false, None) => Box::new(tree.range(start, end)),
                (false, Some(after)) => {
                    let mut next = after.to_vec();
                    next.push(0);
                    Box::new(tree.range(&next, end))
                }
                (true, after) => {
                    let end = match (after, end) {
                        (Some(after), _) => after.to_vec(),
                        (None, Some(end)) => end.to_vec(),
                        // A descending read always has an end.
                        (None, None) => space::successor(start).unwrap_or_default(),
                    };
                    Box::new(tree.range_rev(start, &end))
                }
            };
            pairs
                .take(n)
                .map(|kv| kv.map_err(StoreError::from))
                .collect()
        })
    }

    /// Runs `read` with the applied epoch while no epoch commits: every row it reads is from
    /// that epoch (sled makes a commit atomic to crash recovery, not to concurrent readers).
    /// Commits wait for the read, so keep it short.
    /// Inside a view, runs `read` in it.
    pub fn consistent<T>(&self, read: impl FnOnce(u64) -> T) -> T {
        if let Some(view) = view::current(self.id) {
            return read(view.applied.epoch);
        }
        let _gate = self.gate.read().expect("epoch gate");
        let epoch = self.applied_epoch();
        read(epoch)
    }

    /// Runs `read` with the applied epoch, reading every row as of that epoch, while commits
    /// go on: a read view (`view.rs`). Reads of this store on this thread inside `read` answer
    /// as of the view's epoch. For long reads: each commit meanwhile pays a point read per key
    /// it writes. `read` runs a second time, under the gate like [`Store::consistent`], when
    /// the view could not hold what commits changed ([`crate::VIEW_KEYS_MAX`]) or a snapshot
    /// import replaced the state under it; it runs under the gate at once when
    /// [`VIEWS_MAX`] views are open.
    pub fn view<T>(&self, mut read: impl FnMut(u64) -> T) -> T {
        if let Some(view) = view::current(self.id) {
            return read(view.applied.epoch);
        }
        let opened = {
            let _gate = self.gate.read().expect("epoch gate");
            // `applied` before `views`, the lock order.
            let applied = self.applied();
            let mut views = self.views.lock().expect("views lock");
            (views.len() < VIEWS_MAX).then(|| {
                let opened = Arc::new(View::new(
                    self.id,
                    applied,
                    self.global_versions
                        .iter()
                        .map(|v| v.load(Ordering::SeqCst))
                        .collect(),
                    self.global_version.load(Ordering::SeqCst),
                    self.view_keys_max,
                ));
                views.push(opened.clone());
                opened
            })
        };
        let Some(opened) = opened else {
            return self.consistent(read);
        };
        let out = {
            let _in = view::Entered::enter(opened.clone(), &self.views);
            read(opened.applied.epoch)
        };
        match opened.spoiled() {
            true => self.consistent(read),
            false => out,
        }
    }

    /// The applied state as of the last commit (in a view, as of its epoch).
    pub fn applied(&self) -> Applied {
        if let Some(view) = view::current(self.id) {
            return view.applied.clone();
        }
        self.applied.lock().expect("applied lock").clone()
    }

    /// The time of the applied epoch (0 before the first).
    pub fn applied_time_ms(&self) -> u64 {
        if let Some(view) = view::current(self.id) {
            return view.applied.time_ms;
        }
        self.applied.lock().expect("applied lock").time_ms
    }

    pub fn applied_epoch(&self) -> u64 {
        if let Some(view) = view::current(self.id) {
            return view.applied.epoch;
        }
        self.applied.lock().expect("applied lock").epoch
    }

    /// The state hash recorded at `epoch`, if it is within the recent window.
    pub fn state_hash_at(&self, epoch: u64) -> Result<Option<StateHash>, StoreError> {
        match self.hashes.get(&epoch.to_be_bytes())? {
            Some(bytes) => Ok(Some(decode("state hash", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Applies one Raft entry's effects atomically. For an epoch batch the epoch must be exactly
    /// the next one: anything else means the log was applied out of order or twice, and the node
    /// must stop. Returns the state hash after the commit.
    pub fn commit(&self, commit: EpochCommit) -> Result<StateHash, StoreError> {
        let _gate = self.gate.write().expect("epoch gate");
        // Waits while sled is far behind, and drops what it caught up on from the overlay.
        self.behind.make_room()?;
        let mut applied = self.applied.lock().expect("applied lock");
        let mut next = applied.clone();
        next.raft_meta = commit.raft_meta;
        if let Some(stamp) = commit.stamp {
            if stamp.epoch != applied.epoch + 1 {
                return Err(StoreError::Invariant(format!(
                    "epoch {} applied after epoch {}: epochs must be applied exactly once, in order",
                    stamp.epoch, applied.epoch
                )));
            }
            if stamp.time_ms <= applied.time_ms && applied.epoch > 0 {
                return Err(StoreError::Invariant(format!(
                    "epoch {} has time {} ms, not after the previous epoch's {} ms",
                    stamp.epoch, stamp.time_ms, applied.time_ms
                )));
            }
            next.epoch = stamp.epoch;
            next.time_ms = stamp.time_ms;
            for (part, writes) in &commit.writes {
                next.chain.absorb(*part, stamp.epoch, writes);
            }
            next.state_hash = next.chain.state_hash(stamp.epoch, stamp.time_ms);
        } else if !commit.writes.is_empty() {
            return Err(StoreError::Invariant(
                "state writes outside an epoch".to_string(),
            ));
        }

        // A running export needs the value of every key this commit writes as it was before
        // the commit; the gate keeps other commits and imports out while they are read.
        if let Some(capture) = self.capture.lock().expect("capture lock").as_mut() {
            let bound = self.capture_keys_max;
            capture.record(bound, META_TREE, &self.meta, META_APPLIED)?;
            if let Some(stamp) = commit.stamp {
                capture.record(bound, HASHES_TREE, &self.hashes, &stamp.epoch.to_be_bytes())?;
                if stamp.epoch > HASH_WINDOW_EPOCHS {
                    let expired = (stamp.epoch - HASH_WINDOW_EPOCHS).to_be_bytes();
                    capture.record(bound, HASHES_TREE, &self.hashes, &expired)?;
                }
            }
            for (part, writes) in &commit.writes {
                let tree = self.tree(*part)?;
                for (key, _) in writes {
                    capture.record(bound, Self::tree_id(*part), tree, key)?;
                }
            }
        }

        // Each open view needs the same, for the partitions' keys, before any is visible.
        let views = self.views.lock().expect("views lock").clone();
        if !views.is_empty() {
            for (part, writes) in &commit.writes {
                let (tree, id) = (self.tree(*part)?, Self::tree_id(*part));
                for (key, _) in writes {
                    let mut before = None;
                    for view in views.iter().filter(|v| v.needs(id, key)) {
                        if before.is_none() {
                            before = Some(tree.get(key)?);
                        }
                        view.record(id, key, before.clone().flatten());
                    }
                }
            }
        }

        let mut batch = Staged::new();
        self.meta.put(&mut batch, META_APPLIED, encode(&next));
        let mut feed = self.feed.lock().expect("feed lock");
        let mut feed_entries = self.feed_entries.lock().expect("feed entries lock");
        let (feed_next, feed_pruned) = match commit.stamp {
            Some(stamp) => self.feed_commit(
                &feed,
                &feed_entries,
                stamp.epoch,
                commit.feed.as_deref(),
                &mut batch,
            ),
            None => (*feed, 0),
        };
        // Readers of the feed take no lock: they must see the start move before the entries
        // it drops go (see `feed_read`).
        feed.start = feed_next.start;
        drop(feed);
        if let Some(stamp) = commit.stamp {
            self.hashes.put(
                &mut batch,
                &stamp.epoch.to_be_bytes(),
                encode(&next.state_hash),
            );
            if stamp.epoch > HASH_WINDOW_EPOCHS {
                let expired = stamp.epoch - HASH_WINDOW_EPOCHS;
                self.hashes.delete(&mut batch, &expired.to_be_bytes());
            }
        }
        let touches_global = commit.writes.contains_key(&Part::Global);
        for (part, writes) in &commit.writes {
            let space = self.tree(*part)?;
            for (key, value) in writes {
                match value {
                    Some(value) => space.put(&mut batch, key, value.as_slice()),
                    None => space.delete(&mut batch, key),
                }
            }
        }
        let mut known = self.known.write().expect("known lock");
        if let Some(known) = known.as_mut() {
            // Whether each covered key exists after this commit's writes so far: a key the
            // commit writes twice is counted from its own earlier write, not from the store.
            let mut now: HashMap<(u32, &[u8]), bool> = HashMap::new();
            for (part, writes) in &commit.writes {
                let space = self.tree(*part)?;
                for (key, value) in writes {
                    if let Some(n) = known.covers(*part, key) {
                        let before = now.get(&(n, key.as_slice())).copied();
                        // Read before this commit's writes are staged: the key's state before it.
                        known.apply(n, key, value.is_some(), || match before {
                            Some(exists) => Ok(exists),
                            None => Ok(space.get(key)?.is_some()),
                        })?;
                        now.insert((n, key.as_slice()), value.is_some());
                    }
                }
            }
        }
        let mut resident = self.resident.write().expect("resident lock");
        self.behind.stage(batch);
        if let Some(resident) = resident.as_mut() {
            for (part, writes) in &commit.writes {
                if let Part::Region(n) = part {
                    for (key, value) in writes {
                        resident.set(*n, key, value.as_deref());
                    }
                }
            }
        }
        drop(resident);
        drop(known);
        if touches_global {
            let written = commit.writes.get(&Part::Global).into_iter().flatten();
            self.global_changed(Some(written.map(|(key, _)| key.as_slice())));
        }
        feed_entries.drain(..feed_pruned);
        if let (Some(stamp), Some(entry)) = (commit.stamp, &commit.feed) {
            feed_entries.push_back((stamp.epoch, entry.len() as u64));
        }
        drop(feed_entries);
        *self.feed.lock().expect("feed lock") = feed_next;
        let hash = next.state_hash;
        *applied = next;
        Ok(hash)
    }

    /// The feed's writes for epoch `epoch`: its entry, and the entries retention drops, with
    /// the new start in `meta`; returns the feed after it, and how many of the oldest
    /// `entries` it dropped. Runs under the epoch gate (nothing else changes the feed).
    fn feed_commit(
        &self,
        feed: &FeedState,
        entries: &VecDeque<(u64, u64)>,
        epoch: u64,
        entry: Option<&[u8]>,
        batch: &mut Staged,
    ) -> (FeedState, usize) {
        let mut next = *feed;
        if let Some(entry) = entry {
            self.feed_tree.put(batch, &epoch.to_be_bytes(), entry);
            next.bytes += entry.len() as u64;
        }
        let retention = feed.retention;
        // Keep the newest `epochs` epochs, this one included.
        let mut start = feed
            .start
            .max((epoch + 1).saturating_sub(retention.epochs.max(1)));
        let mut pruned = 0;
        for &(old, bytes) in entries.iter().take(FEED_PRUNE_PER_COMMIT_MAX) {
            if old >= epoch || (old >= start && next.bytes <= retention.bytes) {
                break;
            }
            self.feed_tree.delete(batch, &old.to_be_bytes());
            next.bytes = next.bytes.saturating_sub(bytes);
            start = start.max(old + 1);
            pruned += 1;
        }
        if start != feed.start {
            self.meta.put(batch, META_FEED_START, encode(&start));
            next.start = start;
        }
        (next, pruned)
    }

    /// Writes every committed epoch to sled, then asks sled to write its dirty pages out
    /// (`sync_file_range`; not an fsync). Commits wait meanwhile.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _gate = self.gate.write().expect("epoch gate");
        self.behind.sync()?;
        self.db.flush()?;
        Ok(())
    }

    /// Exports every tree, including the applied state and the hash window, as one blob.
    /// Returns the applied state the export reflects, with the blob. Commits and reads go on
    /// while it runs (see the module docs for how the blob still reflects one epoch).
    pub fn export_snapshot(&self) -> Result<(Applied, Vec<u8>), StoreError> {
        let _one = self.snapshot.lock().expect("snapshot lock");
        let applied = self.begin_capture();
        let dump = match self.dump_trees() {
            Ok(dump) => dump,
            Err(e) => {
                // Stop the capture, or every later commit would go on recording into it.
                self.capture.lock().expect("capture lock").take();
                return Err(e);
            }
        };
        let (applied, trees) = self.finish_capture(applied, dump)?;
        let blob = encode(&SnapshotFile {
            format: SNAPSHOT_FORMAT,
            partitions: self.partitions(),
            trees,
        });
        Ok((applied, blob))
    }

    /// Starts an export's capture at an epoch boundary and returns the applied state there.
    fn begin_capture(&self) -> Applied {
        let _gate = self.gate.read().expect("epoch gate");
        let applied = self.applied();
        let mut capture = self.capture.lock().expect("capture lock");
        debug_assert!(capture.is_none(), "two exports at once");
        *capture = Some(Capture::default());
        applied
    }

    /// Every tree's pairs as they are while it reads them: a mix of epochs, repaired by
    /// [`Store::finish_capture`]. The import marker is left out: it describes this store's
    /// disk, not the state.
    fn dump_trees(&self) -> Result<Vec<TreeDump>, StoreError> {
        let mut dump = Vec::new();
        for (id, (name, tree)) in self.snapshot_trees().into_iter().enumerate() {
            // No `with_capacity(tree.len())`: sled counts a tree by scanning it.
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for kv in tree.iter() {
                let (k, v) = kv?;
                if id == META_TREE && (k == META_IMPORTING || k == META_FEED_START) {
                    continue;
                }
                // sled's iterator resumes after the last key it returned, so concurrent
                // writes never make it repeat a key or go back; the patch relies on that.
                debug_assert!(pairs.last().is_none_or(|(last, _)| last.as_slice() < &*k));
                pairs.push((k.to_vec(), v.to_vec()));
            }
            dump.push((name, pairs));
        }
        Ok(dump)
    }

    /// Ends the export's capture at an epoch boundary and returns the dump as of `applied`:
    /// each key a commit wrote since gets its before-image back. If the capture overflowed,
    /// dumps again with the gate held instead, as of the epoch applied now.
    fn finish_capture(
        &self,
        applied: Applied,
        dump: Vec<TreeDump>,
    ) -> Result<(Applied, Vec<TreeDump>), StoreError> {
        let gate = self.gate.read().expect("epoch gate");
        let capture = self
            .capture
            .lock()
            .expect("capture lock")
            .take()
            .expect("the export's capture");
        if capture.overflowed {
            let dump = self.dump_trees()?;
            return Ok((self.applied(), dump));
        }
        drop(gate);
        let mut before = capture.before.into_iter().peekable();
        let mut patched = Vec::with_capacity(dump.len());
        for (id, (name, pairs)) in dump.into_iter().enumerate() {
            let mut out = Vec::with_capacity(pairs.len());
            let mut undo = std::iter::from_fn(|| before.next_if(|((tree, _), _)| *tree == id))
                .map(|((_, key), value)| (key, value))
                .peekable();
            // Both are in key order: merge them, the before-image winning on a tie (an absent
            // before-image removes the key).
            for (key, value) in pairs {
                let mut replaced = false;
                while let Some((undo_key, undo_value)) = undo.next_if(|(k, _)| *k <= key) {
                    replaced = undo_key == key;
                    if let Some(undo_value) = undo_value {
                        out.push((undo_key, undo_value.to_vec()));
                    }
                }
                if !replaced {
                    out.push((key, value));
                }
            }
            out.extend(undo.filter_map(|(key, value)| value.map(|v| (key, v.to_vec()))));
            patched.push((name, out));
        }
        Ok((applied, patched))
    }

    /// Fills a new, empty store with the state of a snapshot made by
    /// [`Store::export_snapshot`], for `ordo restore`: [`Store::import_snapshot`] alone
    /// writes a whole snapshot in one sled batch, which for millions of keys takes many times
    /// the snapshot's size in memory. This writes the partitions' keys first, in batches of at
    /// most [`RESTORE_BATCH_KEYS`], then imports the snapshot, whose diff is then the meta
    /// records alone. Not atomic: a store it fails on (or a crash interrupts) is to be
    /// thrown away, and nothing may read the store meanwhile.
    pub fn restore_snapshot(&self, bytes: &[u8]) -> Result<(), StoreError> {
        {
            let snapshot: SnapshotFile = decode("snapshot", bytes)?;
            let _one = self.snapshot.lock().expect("snapshot lock");
            let _gate = self.gate.write().expect("epoch gate");
            let ours = self.snapshot_trees();
            let holds_keys = ours
                .iter()
                .skip(META_TREE + 1)
                .any(|(_, space)| space.iter().next().is_some());
            if self.applied().epoch != 0 || holds_keys {
                return Err(StoreError::Config(
                    "a store is restored into only when it is new and empty".into(),
                ));
            }
            if snapshot.trees.len() != ours.len() || snapshot.partitions != self.partitions() {
                return Err(StoreError::Config(format!(
                    "snapshot has {} partitions, this store {}",
                    snapshot.partitions,
                    self.partitions()
                )));
            }
            for (id, ((_, space), (_, pairs))) in ours.iter().zip(&snapshot.trees).enumerate() {
                if id == META_TREE {
                    continue;
                }
                for chunk in pairs.chunks(RESTORE_BATCH_KEYS) {
                    let mut batch = Batch::default();
                    for (k, v) in chunk {
                        space.insert(&mut batch, k, v.as_slice());
                    }
                    self.state.apply_batch(batch)?;
                }
            }
        }
        self.import_snapshot(bytes)
    }

    /// Replaces the whole store with a snapshot made by [`Store::export_snapshot`], as a diff
    /// applied in one sled batch (see the module docs).
    pub fn import_snapshot(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let snapshot: SnapshotFile = decode("snapshot", bytes)?;
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(StoreError::Corrupt(format!(
                "snapshot format {} is not {SNAPSHOT_FORMAT}",
                snapshot.format
            )));
        }
        if snapshot.partitions != self.partitions() {
            return Err(StoreError::Config(format!(
                "snapshot has {} partitions, this node {}",
                snapshot.partitions,
                self.partitions()
            )));
        }
        let ours = self.snapshot_trees();
        let names: Vec<&str> = snapshot.trees.iter().map(|(n, _)| n.as_str()).collect();
        if names != ours.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>() {
            return Err(StoreError::Corrupt(format!(
                "snapshot trees {names:?} are not this store's"
            )));
        }
        let _one = self.snapshot.lock().expect("snapshot lock");
        // The gate keeps commits and consistent reads out; point reads and `applied()` go on.
        let _gate = self.gate.write().expect("epoch gate");
        // Its writes record no before-images: the open views' reads run again.
        for view in self.views.lock().expect("views lock").iter() {
            view.spoil();
        }
        // sled alone holds the state from here: the diff below is read from it and written
        // to it directly.
        self.behind.sync()?;
        self.mark_import_started()?;
        let mut batch = Batch::default();
        for ((_, space), (_, pairs)) in ours.iter().zip(&snapshot.trees) {
            diff(space, pairs, &mut batch)?;
        }
        // The diff removes the marker (no snapshot holds it); say so outright, so the import
        // is done exactly when this batch is.
        self.meta.remove(&mut batch, META_IMPORTING);
        // The feed restarts after the imported epoch: what this node kept before it may end
        // before the snapshot's epoch, and a gap must never look like epochs without events.
        let imported: Applied = match snapshot.trees[META_TREE]
            .1
            .iter()
            .find(|(k, _)| k.as_slice() == META_APPLIED)
        {
            Some((_, bytes)) => decode("snapshot applied state", bytes)?,
            None => Applied::default(),
        };
        let feed_start = imported.epoch + 1;
        self.meta
            .insert(&mut batch, META_FEED_START, encode(&feed_start));
        for kv in self.feed_tree.iter() {
            self.feed_tree.remove(&mut batch, &kv?.0);
        }
        let mut feed = self.feed.lock().expect("feed lock");
        // Before the entries go, for the lock-free readers (see `feed_read`).
        feed.start = feed_start;
        let mut known = self.known.write().expect("known lock");
        let mut resident = self.resident.write().expect("resident lock");
        self.state.apply_batch(batch)?;
        feed.bytes = 0;
        self.feed_entries.lock().expect("feed entries lock").clear();
        drop(feed);
        if let Some((prefix, group)) = resident.as_ref().map(|r| (r.prefix.clone(), r.group)) {
            // Loading again failing leaves reads to sled rather than to a stale copy.
            *resident = Resident::load(&prefix, group, &self.regions)
                .inspect_err(
                    |e| tracing::warn!(error = %e, "resident keys dropped after an import"),
                )
                .ok();
        }
        drop(resident);
        if let Some(prefix) = known.as_ref().map(|k| k.prefix.clone()) {
            // Without the counts every read reaches sled, which is exact.
            *known = Known::load(&prefix, &self.regions)
                .inspect_err(|e| tracing::warn!(error = %e, "known keys dropped after an import"))
                .ok();
        }
        drop(known);
        self.db.flush()?;
        *self.applied.lock().expect("applied lock") = match self.meta.get(META_APPLIED)? {
            Some(bytes) => decode("applied state", &bytes)?,
            None => Applied {
                chain: HashChain::new(self.partitions()),
                ..Applied::default()
            },
        };
        self.import_interrupted.store(false, Ordering::SeqCst);
        self.global_changed(None::<std::iter::Empty<&[u8]>>);
        Ok(())
    }

    /// Moves whenever the global tables (DCs, catalogue) may have changed: a commit that wrote
    /// them, or a snapshot import. Read it inside [`Store::consistent`] to pair it with the
    /// rows read there.
    pub fn global_version(&self) -> u64 {
        if let Some(view) = view::current(self.id) {
            return view.global_version;
        }
        self.global_version.load(Ordering::SeqCst)
    }

    /// The version of the global keys starting with `first`: it moves whenever a commit or an
    /// import writes one (under the epoch gate, like the writes).
    pub fn global_version_of(&self, first: u8) -> u64 {
        if let Some(view) = view::current(self.id) {
            return view.global_versions[usize::from(first)];
        }
        self.global_versions[usize::from(first)].load(Ordering::SeqCst)
    }
}

impl Drop for Store {
    /// Writes the epochs not yet in sled before sled closes (a crash instead leaves them to
    /// the Raft log, from which the node re-applies them).
    fn drop(&mut self) {
        self.behind.stop();
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "flushing the partition stores as they close");
        }
        // sled frees some of its structures through epoch-based reclamation, and those the
        // writer thread left hold the directory's lock file until another thread collects
        // them: collect them now, so this process can open the directory again at once.
        for _ in 0..8 {
            crossbeam_epoch::pin().flush();
        }
    }
}

/// Adds to `batch` what turns `space` into exactly `pairs` (sorted by key, as exported):
/// removes the keys `pairs` lacks and writes the pairs whose value differs. It never clears
/// the keyspace.
fn diff(space: &Space, pairs: &[(Vec<u8>, Vec<u8>)], batch: &mut Batch) -> Result<(), StoreError> {
    let mut wanted = pairs.iter().peekable();
    for kv in space.iter() {
        let (key, value) = kv?;
        while let Some((k, v)) = wanted.next_if(|(k, _)| k.as_slice() < &*key) {
            space.insert(batch, k, v.as_slice());
        }
        match wanted.next_if(|(k, _)| k.as_slice() == &*key) {
            Some((_, v)) if v.as_slice() == &*value => {}
            Some((k, v)) => space.insert(batch, k, v.as_slice()),
            None => space.remove(batch, &key),
        }
    }
    for (k, v) in wanted {
        space.insert(batch, k, v.as_slice());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(store: &Store, epoch: u64, writes: Vec<(Part, Vec<Write>)>) {
        store
            .commit(EpochCommit {
                stamp: Some(EpochStamp {
                    epoch,
                    time_ms: epoch,
                }),
                writes: writes.into_iter().collect(),
                raft_meta: epoch.to_be_bytes().to_vec(),
                feed: None,
            })
            .expect("commit");
    }

    fn commit_feed(store: &Store, epoch: u64, entry: Option<&str>) {
        store
            .commit(EpochCommit {
                stamp: Some(EpochStamp {
                    epoch,
                    time_ms: epoch,
                }),
                feed: entry.map(|e| e.as_bytes().to_vec()),
                ..EpochCommit::default()
            })
            .expect("commit");
    }

    fn feed_epochs(page: &FeedPage) -> Vec<u64> {
        page.entries.iter().map(|(e, _)| *e).collect()
    }

    #[test]
    fn the_feed_is_read_by_epoch_and_pruned_by_its_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1).unwrap();
        assert_eq!(store.feed_start(), 1);
        store.set_feed_retention(FeedRetention {
            epochs: 5,
            bytes: 1 << 20,
        });
        for epoch in 1..=4 {
            // Odd epochs have events, even ones none.
            commit_feed(&store, epoch, (epoch % 2 == 1).then_some("ev"));
        }
        let page = store.feed_read(1, 100, 1 << 20).unwrap();
        assert_eq!((page.start, page.applied, page.through), (1, 4, 4));
        assert_eq!(feed_epochs(&page), vec![1, 3]);
        // A page bounded by entries ends at its last entry.
        let page = store.feed_read(1, 1, 1 << 20).unwrap();
        assert_eq!((feed_epochs(&page), page.through), (vec![1], 1));
        // Nothing applied past 4 yet: nothing new, and `through` says so.
        let page = store.feed_read(5, 100, 1 << 20).unwrap();
        assert!(page.entries.is_empty() && page.through == 4);

        for epoch in 5..=9 {
            commit_feed(&store, epoch, Some("ev"));
        }
        // The newest five epochs (5..=9) are kept.
        assert_eq!(store.feed_start(), 5);
        let page = store.feed_read(3, 100, 1 << 20).unwrap();
        assert!(page.entries.is_empty() && page.start == 5 && page.through < 3);
        assert_eq!(
            feed_epochs(&store.feed_read(5, 100, 1 << 20).unwrap()),
            vec![5, 6, 7, 8, 9]
        );

        // A byte bound drops the oldest entries first, and the start follows them.
        store.set_feed_retention(FeedRetention {
            epochs: 100,
            bytes: 6,
        });
        commit_feed(&store, 10, Some("ev"));
        assert_eq!(store.feed_bytes(), 6);
        assert_eq!(store.feed_start(), 8);
        assert_eq!(
            feed_epochs(&store.feed_read(8, 100, 1 << 20).unwrap()),
            vec![8, 9, 10]
        );

        // The start survives a restart.
        drop(store);
        let store = Store::open(dir.path(), 1).unwrap();
        assert_eq!((store.feed_start(), store.feed_bytes()), (8, 6));
    }

    #[test]
    fn a_snapshot_import_restarts_the_feed_after_the_imported_epoch() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = Store::open(source_dir.path(), 1).unwrap();
        for epoch in 1..=6 {
            commit_feed(&source, epoch, Some("ev"));
        }
        let (_, blob) = source.export_snapshot().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1).unwrap();
        for epoch in 1..=2 {
            commit_feed(&store, epoch, Some("old"));
        }
        store.import_snapshot(&blob).unwrap();
        // Epochs 3..=6 were never executed here: the feed must not claim to have them.
        assert_eq!((store.feed_start(), store.feed_bytes()), (7, 0));
        let page = store.feed_read(1, 100, 1 << 20).unwrap();
        assert!(page.entries.is_empty() && page.start == 7);
        commit_feed(&store, 7, Some("new"));
        assert_eq!(
            feed_epochs(&store.feed_read(7, 100, 1 << 20).unwrap()),
            vec![7]
        );
    }

    /// A restore writes in batches, then imports: the same state, the same export again, and
    /// only into a new store.
    #[test]
    fn a_restore_reaches_the_state_an_import_does_and_only_into_a_new_store() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = Store::open(source_dir.path(), 2).unwrap();
        for epoch in 1..=3u64 {
            // One epoch fills more than a batch; the others overwrite a few of its keys.
            let keys = if epoch == 1 {
                RESTORE_BATCH_KEYS as u64 + 7
            } else {
                10
            };
            let writes = (0..keys)
                .map(|i| {
                    (
                        format!("k{i:06}").into_bytes(),
                        Some(epoch.to_be_bytes().to_vec()),
                    )
                })
                .collect();
            commit(
                &source,
                epoch,
                vec![
                    (Part::Region(1), writes),
                    (Part::Global, vec![put("g", "x")]),
                ],
            );
        }
        let (applied, blob) = source.export_snapshot().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let restored = Store::open(dir.path(), 2).unwrap();
        restored.restore_snapshot(&blob).unwrap();
        assert_eq!(restored.applied(), applied);
        assert_eq!(
            restored.state_hash_at(3).unwrap(),
            source.state_hash_at(3).unwrap()
        );
        assert_eq!(restored.export_snapshot().unwrap().1, blob);
        assert!(!restored.import_interrupted());

        let (used_dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let used = Store::open(used_dir.path(), 2).unwrap();
        commit(&used, 1, vec![(Part::Region(0), vec![put("k", "v")])]);
        assert!(
            used.restore_snapshot(&blob).is_err(),
            "restored over a used store"
        );
        let other = Store::open(other_dir.path(), 3).unwrap();
        assert!(
            other.restore_snapshot(&blob).is_err(),
            "3 partitions took a 2-partition snapshot"
        );
    }

    fn put(key: &str, value: &str) -> Write {
        (key.as_bytes().to_vec(), Some(value.as_bytes().to_vec()))
    }

    fn del(key: &str) -> Write {
        (key.as_bytes().to_vec(), None)
    }

    fn seeded_store(dir: &Path) -> Store {
        let store = Store::open(dir, 2).expect("open");
        commit(
            &store,
            1,
            vec![
                (Part::Global, vec![put("dc-1", "a"), put("dc-2", "a")]),
                (
                    Part::Region(0),
                    vec![put("k1", "a"), put("k2", "a"), put("k3", "a")],
                ),
            ],
        );
        store
    }

    /// Imports into `store` the snapshot of a freshly seeded store.
    fn import_seeded(store: &Store) {
        let dir = tempfile::tempdir().unwrap();
        let (_, snapshot) = seeded_store(dir.path()).export_snapshot().unwrap();
        store.import_snapshot(&snapshot).unwrap();
    }

    /// Commits after the capture began change keys every way they can; the patched dump is
    /// the state the capture began at, whether a commit landed before or after the dump.
    #[test]
    fn the_capture_undoes_every_kind_of_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = seeded_store(dir.path());
        let applied = store.begin_capture();
        let at_begin = store.dump_trees().expect("dump");
        commit(
            &store,
            2,
            vec![
                // Overwritten, deleted, created.
                (
                    Part::Global,
                    vec![put("dc-1", "b"), del("dc-2"), put("dc-3", "b")],
                ),
                // With epoch 3: k1 deleted and written back, k0 created and deleted, k3
                // overwritten twice.
                (
                    Part::Region(0),
                    vec![del("k1"), put("k0", "b"), put("k3", "b")],
                ),
            ],
        );
        let dump = store.dump_trees().expect("dump");
        commit(
            &store,
            3,
            vec![
                (
                    Part::Region(0),
                    vec![put("k1", "c"), del("k0"), put("k3", "c")],
                ),
                (Part::Region(1), vec![put("r1", "c")]),
            ],
        );
        let (exported_at, patched) = store.finish_capture(applied.clone(), dump).expect("finish");
        assert_eq!(exported_at, applied);
        assert_eq!(patched, at_begin);
        assert!(store.capture.lock().expect("capture").is_none());
    }

    #[test]
    fn an_overflowing_capture_dumps_again_under_the_gate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = seeded_store(dir.path());
        store.capture_keys_max = 2;
        let applied = store.begin_capture();
        let dump = store.dump_trees().expect("dump");
        commit(&store, 2, vec![(Part::Region(0), vec![put("k1", "b")])]);
        commit(&store, 3, vec![(Part::Region(0), vec![put("k2", "b")])]);
        let (exported_at, trees) = store.finish_capture(applied, dump).expect("finish");
        assert_eq!(exported_at, store.applied());
        assert_eq!(exported_at.epoch, 3);
        assert_eq!(trees, store.dump_trees().expect("dump"));
    }

    /// Every read of a region, point and range both ways, against a model of what was
    /// committed.
    fn assert_reads(store: &Store, model: &BTreeMap<Vec<u8>, Vec<u8>>, when: &str) {
        let part = Part::Region(0);
        for n in 0..64u8 {
            let key = [b'k', n];
            assert_eq!(
                store.get(part, &key).unwrap().map(|v| v.to_vec()),
                model.get(key.as_slice()).cloned(),
                "{when}: get {key:?}"
            );
        }
        let all: Vec<(Vec<u8>, Vec<u8>)> = model.clone().into_iter().collect();
        let pairs = |found: Vec<(IVec, IVec)>| -> Vec<(Vec<u8>, Vec<u8>)> {
            found
                .into_iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect()
        };
        assert_eq!(
            pairs(store.scan_prefix(part, b"k", 1000).unwrap()),
            all,
            "{when}: scan"
        );
        let (lo, hi) = ([b'k', 10], [b'k', 40]);
        let inside: Vec<_> = all
            .iter()
            .filter(|(k, _)| k.as_slice() >= lo.as_slice() && k.as_slice() < hi.as_slice())
            .cloned()
            .collect();
        assert_eq!(
            pairs(store.range(part, &lo, &hi, 1000).unwrap()),
            inside,
            "{when}: range"
        );
        let mut reversed = inside.clone();
        reversed.reverse();
        reversed.truncate(5);
        assert_eq!(
            pairs(store.range_rev(part, &lo, &hi, 5).unwrap()),
            reversed,
            "{when}: range_rev"
        );
    }

    #[test]
    fn epochs_read_back_exactly_while_sled_trails_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = BTreeMap::new();
        {
            let store = Store::open(dir.path(), 1).unwrap();
            for epoch in 1..=200u64 {
                // Each epoch writes three keys and removes one, some of them written by the
                // epochs just before (still in the overlay), some long ago (in sled).
                let mut writes = Vec::new();
                for step in 0..3u64 {
                    let key = vec![b'k', ((epoch * 7 + step * 13) % 64) as u8];
                    let value = format!("{epoch}.{step}").into_bytes();
                    model.insert(key.clone(), value.clone());
                    writes.push((key, Some(value)));
                }
                let gone = vec![b'k', ((epoch * 11) % 64) as u8];
                model.remove(&gone);
                writes.push((gone, None));
                commit(&store, epoch, vec![(Part::Region(0), writes)]);
                assert_reads(&store, &model, &format!("after epoch {epoch}"));
            }
            assert!(
                store.behind.overlay_len() > 0,
                "sled trails the epochs just committed"
            );
            store.flush().unwrap();
            assert_eq!(store.behind.overlay_len(), 0, "a flush writes every epoch");
            commit(
                &store,
                201,
                vec![(Part::Region(0), vec![(b"k\x00".to_vec(), None)])],
            );
            model.remove(b"k\x00".as_slice());
            // Dropped without a flush: what is queued is still written.
        }
        let store = Store::open(dir.path(), 1).unwrap();
        assert_eq!(store.applied_epoch(), 201);
        assert_reads(&store, &model, "after a reopen");
    }

    #[test]
    fn known_keys_answer_what_sled_holds_through_commits_and_imports() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 2).unwrap();
        let put = |k: &str| (k.as_bytes().to_vec(), Some(b"v".to_vec()));
        let del = |k: &str| (k.as_bytes().to_vec(), None);
        commit(
            &store,
            1,
            vec![(Part::Region(0), vec![put("d1"), put("d2")])],
        );
        // Counted from what is there when asked.
        assert_eq!(store.keep_known(b"d").unwrap(), 2);
        let exists = |store: &Store, part: u32, key: &str| {
            store
                .get(Part::Region(part), key.as_bytes())
                .unwrap()
                .is_some()
        };
        // The same key in the other partition is another key.
        assert!(exists(&store, 0, "d1") && !exists(&store, 1, "d1"));
        commit(
            &store,
            2,
            vec![
                // A rewrite, a new key, a removal, and a removal of a key never written.
                (
                    Part::Region(0),
                    vec![put("d1"), put("d3"), del("d2"), del("d9")],
                ),
                (Part::Region(1), vec![put("d1")]),
            ],
        );
        let count = || store.known.read().unwrap().as_ref().unwrap().len();
        assert_eq!(count(), 3, "d1 and d3 in p0, d1 in p1");
        for (part, key, there) in [
            (0, "d1", true),
            (0, "d2", false),
            (0, "d3", true),
            (0, "d9", false),
            (1, "d1", true),
            (1, "d3", false),
        ] {
            assert_eq!(exists(&store, part, key), there, "p{part} {key}");
        }
        // A key written and removed in one commit (the counts follow the commit's own order).
        commit(
            &store,
            3,
            vec![(
                Part::Region(0),
                vec![put("d4"), del("d4"), del("d1"), put("d1")],
            )],
        );
        assert_eq!(count(), 3);
        assert!(exists(&store, 0, "d1") && !exists(&store, 0, "d4"));
        // An import counts again from the imported state.
        let (_, snapshot) = store.export_snapshot().unwrap();
        commit(
            &store,
            4,
            vec![(Part::Region(0), vec![del("d1"), del("d3")])],
        );
        assert!(!exists(&store, 0, "d1"));
        store.import_snapshot(&snapshot).unwrap();
        assert_eq!(count(), 3);
        assert!(exists(&store, 0, "d1") && exists(&store, 0, "d3"));
    }

    #[test]
    fn resident_keys_answer_what_sled_holds_through_commits_and_imports() {
        let dir = tempfile::tempdir().unwrap();
        let store = seeded_store(dir.path());
        // `k` keys are resident; `kkkkkkkkkkkkkkkkkk` is too long to be and stays in sled.
        assert_eq!(store.keep_resident(b"k", 1).unwrap(), 3);
        let long = "k".repeat(20);
        let mut epoch = 1;
        let check = |store: &Store| {
            for part in [Part::Region(0), Part::Region(1), Part::Global] {
                for key in ["k1", "k2", "k3", "k4", "x1", "dc-1", long.as_str()] {
                    let sled = store.tree(part).unwrap().get(key.as_bytes()).unwrap();
                    assert_eq!(
                        store.get(part, key.as_bytes()).unwrap(),
                        sled,
                        "{part} {key}"
                    );
                }
            }
        };
        check(&store);
        for writes in [
            vec![put("k1", "b"), del("k2"), put("k4", "c"), put("x1", "d")],
            vec![put("k2", "e"), put(&long, "f"), del("k4")],
            vec![del("k1"), del("k3"), del(&long)],
        ] {
            epoch += 1;
            commit(&store, epoch, vec![(Part::Region(1), writes.clone())]);
            epoch += 1;
            commit(&store, epoch, vec![(Part::Region(0), writes)]);
            check(&store);
        }
        // An import makes the resident keys the snapshot's.
        import_seeded(&store);
        check(&store);
        assert_eq!(
            store.get(Part::Region(0), b"k1").unwrap().as_deref(),
            Some(&b"a"[..])
        );
        assert_eq!(store.get(Part::Region(0), b"k4").unwrap(), None);
    }

    /// The global partition's read cache answers what sled holds through commits that write,
    /// overwrite and delete cached keys, and through an import.
    #[test]
    fn the_global_cache_answers_what_sled_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = seeded_store(dir.path());
        let check = |store: &Store| {
            for key in ["dc-1", "dc-2", "dc-3"] {
                let sled = store.global.get(key.as_bytes()).unwrap();
                // Twice: the first read may fill the cache, the second is answered from it.
                for _ in 0..2 {
                    assert_eq!(
                        store.get(Part::Global, key.as_bytes()).unwrap(),
                        sled,
                        "{key}"
                    );
                }
            }
        };
        check(&store);
        assert_eq!(store.global_cache.lock().unwrap().len(), 2);
        let version = store.global_version();
        commit(
            &store,
            2,
            vec![(
                Part::Global,
                vec![put("dc-1", "b"), del("dc-2"), put("dc-3", "c")],
            )],
        );
        assert!(store.global_version() > version);
        check(&store);
        assert_eq!(
            store.get(Part::Global, b"dc-1").unwrap().as_deref(),
            Some(&b"b"[..])
        );
        // A commit that writes only a region leaves the cache as it was.
        commit(&store, 3, vec![(Part::Region(0), vec![put("dc-1", "z")])]);
        check(&store);
        import_seeded(&store);
        check(&store);
        assert_eq!(store.get(Part::Global, b"dc-3").unwrap(), None);
    }

    /// A read that got a value from sled before a commit replaced it does not put it in the
    /// cache after the commit: the next read answers the commit's value.
    #[test]
    fn the_global_cache_never_keeps_a_value_a_commit_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(seeded_store(dir.path()));
        let weak = std::sync::Arc::downgrade(&store);
        *store.before_global_fill.lock().unwrap() = Some(Box::new(move || {
            let store = weak.upgrade().unwrap();
            let epoch = store.applied_epoch() + 1;
            commit(
                &store,
                epoch,
                vec![(Part::Global, vec![put("dc-1", "new")])],
            );
        }));
        // This read saw "a" in sled; the hook then committed "new".
        assert_eq!(
            store.get(Part::Global, b"dc-1").unwrap().as_deref(),
            Some(&b"a"[..])
        );
        store.before_global_fill.lock().unwrap().take();
        assert_eq!(
            store.get(Part::Global, b"dc-1").unwrap().as_deref(),
            Some(&b"new"[..])
        );
    }

    /// A store written with a tree per keyspace (the layout before `space.rs`) opens with the
    /// same state, feed and applied epoch, moved into the one tree, and the old trees gone.
    #[test]
    fn a_store_with_a_tree_per_partition_is_moved_into_one() {
        let new_dir = tempfile::tempdir().unwrap();
        let (dump, feed, applied) = {
            let store = seeded_store(new_dir.path());
            commit_feed(&store, 2, Some("ev-2"));
            let feed: Vec<(IVec, IVec)> = store.feed_tree.iter().map(Result::unwrap).collect();
            let meta_feed_start = store.meta.get(META_FEED_START).unwrap().unwrap();
            let mut dump = store.dump_trees().unwrap();
            dump[META_TREE]
                .1
                .push((META_FEED_START.to_vec(), meta_feed_start.to_vec()));
            (dump, feed, store.applied())
        };
        let old_dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(old_dir.path()).unwrap();
            for (name, pairs) in &dump {
                let tree = db.open_tree(name).unwrap();
                for (k, v) in pairs {
                    tree.insert(k.as_slice(), v.as_slice()).unwrap();
                }
            }
            let tree = db.open_tree("feed").unwrap();
            for (k, v) in &feed {
                tree.insert(k, v).unwrap();
            }
            db.flush().unwrap();
        }
        let store = Store::open(old_dir.path(), 2).unwrap();
        assert_eq!(store.applied(), applied);
        assert_eq!(store.dump_trees().unwrap()[1..], dump[1..]);
        assert_eq!(
            store.get(Part::Region(0), b"k2").unwrap().as_deref(),
            Some(&b"a"[..])
        );
        assert_eq!(
            store.get(Part::Global, b"dc-2").unwrap().as_deref(),
            Some(&b"a"[..])
        );
        let page = store.feed_read(1, 100, 1 << 20).unwrap();
        assert_eq!(feed_epochs(&page), vec![2]);
        let names: Vec<IVec> = store.db.tree_names();
        for old in ["meta", "hashes", "feed", "global", "p0", "p1"] {
            assert!(
                !names.iter().any(|n| &**n == old.as_bytes()),
                "{old} is still there"
            );
        }
        // It goes on as any store, and opens again without moving anything.
        commit(&store, 3, vec![(Part::Region(1), vec![put("k9", "z")])]);
        drop(store);
        let store = Store::open(old_dir.path(), 2).unwrap();
        assert_eq!(store.applied_epoch(), 3);
        assert_eq!(
            store.get(Part::Region(1), b"k9").unwrap().as_deref(),
            Some(&b"z"[..])
        );
    }

    /// Random writes to `k0`..`k63` of region 0 (and a global key), applied to `model`.
    fn random_writes(seed: &mut u64, model: &mut BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<Write> {
        let mut writes = Vec::new();
        for _ in 0..8 {
            // xorshift: deterministic, no dependency.
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let key = vec![b'k', (*seed % 64) as u8];
            match (*seed >> 8) % 3 {
                0 => {
                    model.remove(&key);
                    writes.push((key, None));
                }
                _ => {
                    let value = (*seed >> 16).to_be_bytes().to_vec();
                    model.insert(key.clone(), value.clone());
                    writes.push((key, Some(value)));
                }
            }
        }
        writes
    }

    /// [`assert_reads`] and more: short pages both ways, counts, the resident reader, the
    /// applied epoch.
    fn assert_view_reads(
        store: &Store,
        model: &BTreeMap<Vec<u8>, Vec<u8>>,
        epoch: u64,
        when: &str,
    ) {
        assert_reads(store, model, when);
        assert_eq!(store.applied_epoch(), epoch, "{when}: applied epoch");
        assert_eq!(store.applied_time_ms(), epoch, "{when}: applied time");
        let part = Part::Region(0);
        let reader = store.reader();
        for n in 0..64u8 {
            let key = [b'k', n];
            assert_eq!(
                reader.get(part, &key).unwrap().map(|v| v.to_vec()),
                model.get(key.as_slice()).cloned(),
                "{when}: reader get {key:?}"
            );
        }
        drop(reader);
        let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
        for limit in [1, 2, 3, 7] {
            let found: Vec<Vec<u8>> = store
                .range(part, b"k", b"l", limit)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k.to_vec())
                .collect();
            assert_eq!(
                found,
                keys[..limit.min(keys.len())],
                "{when}: range {limit}"
            );
            let found: Vec<Vec<u8>> = store
                .range_rev(part, b"k", b"l", limit)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k.to_vec())
                .collect();
            let mut last: Vec<Vec<u8>> = keys.iter().rev().take(limit).cloned().collect();
            last.truncate(limit);
            assert_eq!(found, last, "{when}: range_rev {limit}");
        }
        assert_eq!(
            store.count_prefix(part, b"k", 1000).unwrap(),
            model.len(),
            "{when}: count"
        );
    }

    /// Runs `read` in a view of `store` on a thread of its own, with the view's epoch, the
    /// number of the run, and `pause`: in the first run, `pause` says the view is open (on the
    /// first receiver returned) and waits until the test lets it go on (on the sender); in a
    /// run after it, it does nothing.
    fn paused_view<T: Send + 'static>(
        store: &Arc<Store>,
        mut read: impl FnMut(&Store, u64, usize, &dyn Fn()) -> T + Send + 'static,
    ) -> (
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<T>,
    ) {
        let (opened_tx, opened) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let store = store.clone();
        let reader = std::thread::spawn(move || {
            let mut runs = 0;
            store.view(|epoch| {
                runs += 1;
                let pause = || {
                    if runs == 1 {
                        opened_tx.send(()).expect("send");
                        go_rx.recv().expect("the test lets the read go on");
                    }
                };
                read(&store, epoch, runs, &pause)
            })
        });
        (opened, go, reader)
    }

    #[test]
    fn a_view_reads_its_epoch_while_commits_go_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path(), 2).expect("open"));
        store.keep_resident(b"k", 1).expect("resident");
        let (mut seed, mut model) = (0x9e37_79b9_7f4a_7c15u64, BTreeMap::new());
        for epoch in 1..=5 {
            let writes = random_writes(&mut seed, &mut model);
            commit(&store, epoch, vec![(Part::Region(0), writes)]);
        }
        let at_view = model.clone();
        let (opened, committed, reader) = paused_view(&store, move |store, epoch, runs, pause| {
            assert_view_reads(store, &at_view, 5, "view, before the commits");
            pause();
            assert_view_reads(store, &at_view, 5, "view, after the commits");
            (epoch, runs)
        });
        opened.recv().expect("the view opened");
        // Commits while the view's read is open: they must not wait for it.
        let (done_tx, done) = std::sync::mpsc::channel();
        let writer = {
            let store = store.clone();
            let mut model = model.clone();
            std::thread::spawn(move || {
                for epoch in 6..=40 {
                    let writes = random_writes(&mut seed, &mut model);
                    commit(&store, epoch, vec![(Part::Region(0), writes)]);
                }
                done_tx.send(model).expect("send");
            })
        };
        let model = done
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("35 commits done while a view's read was open (they waited for it)");
        writer.join().expect("writer");
        committed.send(()).expect("send");
        let (epoch, runs) = reader.join().expect("the view's reads");
        assert_eq!((epoch, runs), (5, 1), "read once, at epoch 5");
        assert!(store.views.lock().expect("views").is_empty());
        assert_view_reads(&store, &model, 40, "after the view");
        // Commits with no view open record nothing.
        commit(&store, 41, vec![(Part::Region(0), vec![put("k1", "z")])]);
        assert_eq!(
            store.get(Part::Region(0), b"k1").unwrap().as_deref(),
            Some(&b"z"[..])
        );
    }

    #[test]
    fn a_view_past_its_bound_reads_again_under_the_gate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = seeded_store(dir.path());
        store.view_keys_max = 2;
        let store = Arc::new(store);
        let (opened, committed, reader) = paused_view(&store, |store, epoch, runs, pause| {
            pause();
            let k3 = store.get(Part::Region(0), b"k3").unwrap();
            (epoch, runs, k3.map(|v| v.to_vec()))
        });
        opened.recv().expect("the view opened");
        let writes = vec![put("k1", "b"), put("k2", "b"), put("k3", "b")];
        commit(&store, 2, vec![(Part::Region(0), writes)]);
        committed.send(()).expect("send");
        // Three keys changed past a bound of two: the first read's answers are dropped and
        // the read runs again, under the gate, at the epoch applied then.
        let (epoch, runs, k3) = reader.join().expect("the view's reads");
        assert_eq!((epoch, runs, k3), (2, 2, Some(b"b".to_vec())));
    }

    #[test]
    fn an_import_under_a_view_sends_its_read_round_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(seeded_store(dir.path()));
        let (opened, imported, reader) = paused_view(&store, |_, epoch, runs, pause| {
            pause();
            (epoch, runs)
        });
        opened.recv().expect("the view opened");
        let other = tempfile::tempdir().expect("temp dir");
        let source = Store::open(other.path(), 2).expect("open");
        for epoch in 1..=3 {
            commit(
                &source,
                epoch,
                vec![(Part::Region(0), vec![put("k9", "z")])],
            );
        }
        let (_, blob) = source.export_snapshot().expect("export");
        store.import_snapshot(&blob).expect("import");
        imported.send(()).expect("send");
        assert_eq!(reader.join().expect("the view's reads"), (3, 2));
    }
}

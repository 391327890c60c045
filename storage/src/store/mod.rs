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
//! Snapshots: [`Store::export_snapshot_to`] writes every tree as of one epoch into a file
//! (or any [`ExportSink`]) pair by pair, without stopping commits (`stream.rs` has the format).
//! It notes the applied state under the epoch gate, reads the trees while commits go on, and
//! has each of those commits record the value every key it writes had before it (its
//! before-image, once per key); each batch of pairs it reads is patched from those
//! before-images before it is written, so the file holds exactly the state at the noted
//! epoch (`snapshot.rs` says why patching as it goes is exact). The price is one extra point
//! read per key written while an export runs, and memory for at most
//! [`EXPORT_CAPTURE_KEYS_MAX`] before-images; past that bound the export starts over with the
//! gate held, stopping commits for that one export instead of growing further.
//! [`Store::import_snapshot_from`] reads a snapshot twice: once to check all of it (format,
//! partitions, trees, key order, packed rows) and build the packed table, changing nothing;
//! then to apply it as a diff in sled batches of at most [`RESTORE_BATCH_KEYS`] keys: keys the
//! snapshot lacks are removed, the rest written, no tree is ever cleared. A marker written
//! before the first batch and removed by the last (after a flush of all the others) tells
//! [`Store::open`] that an import was interrupted ([`Store::import_interrupted`]); the caller
//! finishes it by importing the same snapshot again. The gate is held throughout, so commits
//! and consistent reads see the state before or after; a point read outside the gate sees
//! each key before or after, not one epoch across keys (the packed rows switch at once).
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
//! Packed keys: [`Store::keep_packed`] makes every region key under one prefix (the
//! scheduler's stock rows) live in a compact table in memory, which is their state, and in
//! sled as chunks of 32 rows written behind the epochs like every other write (`packed.rs`).
//! Every read of a region keyspace, point or range, sees them as if they were sled's.
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
use crate::packed::{PackSpec, Packed, Table};
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
/// The packed keys' shape ([`Store::keep_packed`]), once the store packs them.
const META_PACKED: &[u8] = b"packed";
/// The feed's start ([`FeedState::start`]): this node's, never exported in a snapshot.
const META_FEED_START: &[u8] = b"feed_start";
/// Keys in one sled batch of a snapshot import or restore, and of packing.
pub const RESTORE_BATCH_KEYS: usize = 16_384;

/// Numbers the stores a process opens ([`Store`]'s `id`).
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

/// The most region partitions a store has (each is a keyspace, a lock table and an executor).
pub const PARTITIONS_MAX: u32 = 256;

/// The layout of [`Store::export_snapshot_to`]'s export (`stream.rs`);
/// [`Store::import_snapshot_from`] takes no other.
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
    /// `members`, then `packed`'s table. The overlay's own locks (`behind.rs`) and each view's come after all of them.
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
    /// [`Store::import_snapshot_from`], and the state is a mix of the one before it and the
    /// imported one. Cleared by the next
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
    /// The packed keys of every region ([`Store::keep_packed`]): their shape once set, and the
    /// table. A commit holds the table for writing from its writes until their chunks are
    /// staged, so a read sees a key before or after a commit, as a sled read does.
    packed: Arc<Packed>,
    /// The packed keys' chunks in sled.
    chunks: Space,
    /// The region keys under one prefix that exist, as hashes ([`Store::keep_known`]);
    /// `None` until asked. Changed by commits and imports under the resident lock's hold.
    known: RwLock<Option<Known>>,
    /// The known prefix, once set.
    known_prefix: OnceLock<Vec<u8>>,
    /// Which record list holds each record key, for the values under one prefix
    /// ([`Store::keep_members`]); `None` until asked. Changed by commits and imports, after
    /// `known` in the lock order.
    members: RwLock<Option<Members>>,
    /// The global partition's keys read before, with their values (see the module docs).
    global_cache: Mutex<HashMap<Vec<u8>, IVec>>,
    /// Tests run this between a global read's sled read and its cache fill (a commit there).
    #[cfg(test)]
    before_global_fill: Mutex<Option<Box<dyn FnMut() + Send>>>,
    /// [`snapshot::EXPORT_BATCH_PAIRS`], a field so unit tests can patch after every pair.
    export_batch_pairs: usize,
    /// [`RESTORE_BATCH_KEYS`], a field so unit tests can import in many small batches.
    import_batch_keys: usize,
    /// Tests set this to fail an import (as a crash would stop it) after that many batches.
    #[cfg(test)]
    import_crash_after: Mutex<Option<usize>>,
    /// Tests run this as an export begins each tree and after each batch it writes (with the
    /// tree's position and the batches written of it): commits there.
    #[cfg(test)]
    export_hook: Mutex<Option<ExportHook>>,
    /// The change feed: epoch (big-endian) → that epoch's encoded events.
    feed_tree: Space,
    /// The feed's start, size and retention.
    feed: Mutex<FeedState>,
    /// The epoch and size of each entry in the feed, oldest first, so pruning reads no sled.
    /// Taken under `feed` (only commits and imports change it).
    feed_entries: Mutex<VecDeque<(u64, u64)>>,
}

/// Point reads that take the packed table's lock once for many keys ([`Store::reader`]). Hold it
/// briefly: commits wait for it. Read packed keys through it, never through [`Store::get`]
/// while it lives (a second read lock on the same thread may wait for a waiting commit).
pub struct Reader<'a> {
    store: &'a Store,
    packed: Option<RwLockReadGuard<'a, Option<Table>>>,
    /// Made in a view: every read goes through [`Store::get`].
    viewed: bool,
}

impl Reader<'_> {
    pub fn get(&self, part: Part, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        if self.viewed {
            return self.store.get(part, key);
        }
        if let (Part::Region(n), Some(packed)) = (part, &self.packed) {
            if let Some(table) = packed.as_ref().filter(|t| t.spec().covers(key)) {
                return Ok(table.get(n, key));
            }
        }
        self.store.get_unpacked(part, key)
    }
}

/// The most keys the global partition's read cache holds; it starts over when full.
pub const GLOBAL_CACHE_KEYS_MAX: usize = 1 << 20;

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
        let packed = Arc::new(Packed::default());
        let regions = (0..partitions)
            .map(|n| Space::region(&state, &behind, n, &packed))
            .collect::<Vec<_>>();
        let chunks = Space::new(&state, &behind, space::PACKED_PREFIX);
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
        let store = Self {
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
            export_batch_pairs: snapshot::EXPORT_BATCH_PAIRS,
            import_batch_keys: RESTORE_BATCH_KEYS,
            #[cfg(test)]
            import_crash_after: Mutex::new(None),
            #[cfg(test)]
            export_hook: Mutex::new(None),
            packed,
            chunks,
            known: RwLock::new(None),
            known_prefix: OnceLock::new(),
            members: RwLock::new(None),
            feed_tree,
            feed: Mutex::new(FeedState {
                start: feed_start,
                bytes: feed_bytes,
                retention: FeedRetention::default(),
            }),
            feed_entries: Mutex::new(feed_entries),
        };
        store.open_packed()?;
        Ok(store)
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
        if matches!(part, Part::Region(_)) && self.packed.covers(key) {
            return self.reader_now().get(part, key);
        }
        self.get_unpacked(part, key)
    }

    /// A point read of a key that is not packed: the global partition through its cache.
    fn get_unpacked(&self, part: Part, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        if part != Part::Global {
            return Ok(self.tree(part)?.get_unpacked(key)?);
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

    /// Many point reads under one take of the packed table's lock (none when nothing is packed).
    /// In a view ([`Store::view`]) the lock is taken for each read instead: a view's read is
    /// long, and commits wait for the lock.
    pub fn reader(&self) -> Reader<'_> {
        match view::current(self.id) {
            Some(_) => Reader {
                store: self,
                packed: None,
                viewed: true,
            },
            None => self.reader_now(),
        }
    }

    /// A reader of the state as it is now.
    fn reader_now(&self) -> Reader<'_> {
        Reader {
            store: self,
            packed: self
                .packed
                .spec
                .get()
                .map(|_| self.packed.table.read().expect("packed lock")),
            viewed: false,
        }
    }

    /// Packs every region key under `spec.prefix` from now on (see `packed.rs`): their state
    /// is a compact table in memory and chunks of rows in sled, not sled keys; returns how
    /// many there are. A store packs one shape, for good: it is recorded in the store, which
    /// opens packed from then on, and asking again for the same shape does nothing.
    ///
    /// Packing a store that holds such keys as sled keys moves them: the chunks are written
    /// first, then the shape is recorded, then the keys are removed, each in batches of
    /// [`RESTORE_BATCH_KEYS`]; a crash before the record leaves the keys (the chunks are
    /// dropped at the next open), a crash after it leaves the chunks (the keys are). A key
    /// under the prefix of another length, or with a value of another length, is refused
    /// (nothing changes). Commits wait meanwhile.
    pub fn keep_packed(&self, spec: PackSpec) -> Result<usize, StoreError> {
        spec.check()?;
        // No export runs meanwhile (its dump reads outside the gate, and would see keys move
        // from sled to the table under it), then no commit.
        let _one = self.snapshot.lock().expect("snapshot lock");
        let _gate = self.gate.write().expect("epoch gate");
        if let Some(packed) = self.packed.spec.get() {
            if *packed != spec {
                return Err(StoreError::Config(format!(
                    "this store packs {packed:?} already, not {spec:?}"
                )));
            }
            return Ok(self.packed_rows());
        }
        // sled alone is the state from here. An open view's reads run again: they would
        // see keys move from sled to the table under them.
        self.behind.sync()?;
        for view in self.views.lock().expect("views lock").iter() {
            view.spoil();
        }
        let mut table = Table::new(spec.clone(), self.partitions());
        for (n, space) in self.regions.iter().enumerate() {
            for pair in space.scan_prefix_unpacked(&spec.prefix) {
                let (key, value) = pair?;
                table
                    .check_write(&key, Some(&value))
                    .map_err(|e| StoreError::Config(format!("cannot pack this store: {e}")))?;
                table.set(n as u32, &key, Some(&value));
            }
        }
        self.write_chunks(&table)?;
        self.db.flush()?;
        self.meta.insert_now(META_PACKED, encode(&spec))?;
        self.db.flush()?;
        let count = table.len();
        // The table before the spec: a reader that sees the spec finds the table.
        *self.packed.table.write().expect("packed lock") = Some(table);
        let _ = self.packed.spec.set(spec);
        self.drop_unpacked_keys()?;
        Ok(count)
    }

    /// Writes every block of `table` as its chunk, straight to sled, in batches of
    /// [`RESTORE_BATCH_KEYS`] (packing, and a restore into a new store: nothing reads the
    /// chunks meanwhile).
    fn write_chunks(&self, table: &Table) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        let mut in_batch = 0;
        for n in 0..self.partitions() {
            for (key, rows) in table.chunks(n) {
                self.chunks.insert(&mut batch, &key, rows);
                in_batch += 1;
                if in_batch == RESTORE_BATCH_KEYS {
                    self.state.apply_batch(std::mem::take(&mut batch))?;
                    in_batch = 0;
                }
            }
        }
        self.state.apply_batch(batch)?;
        Ok(())
    }

    /// How many keys are packed.
    pub fn packed_rows(&self) -> usize {
        let table = self.packed.table.read().expect("packed lock");
        table.as_ref().map_or(0, Table::len)
    }

    /// Removes, in batches, the sled keys under the packed prefix that packing left (or an
    /// interrupted packing, found at open). Nothing reads them: packed keys come from the
    /// table.
    fn drop_unpacked_keys(&self) -> Result<usize, StoreError> {
        let Some(spec) = self.packed.spec.get() else {
            return Ok(0);
        };
        let mut dropped = 0;
        for space in &self.regions {
            loop {
                let mut batch = Batch::default();
                let mut n = 0;
                for pair in space
                    .scan_prefix_unpacked(&spec.prefix)
                    .take(RESTORE_BATCH_KEYS)
                {
                    space.remove(&mut batch, &pair?.0);
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                self.state.apply_batch(batch)?;
                dropped += n;
            }
        }
        Ok(dropped)
    }

    /// Opens packed when the store records a shape (`keep_packed` finished), loading the
    /// table from the chunks and dropping keys a packing left; otherwise drops chunks an
    /// interrupted packing left.
    fn open_packed(&self) -> Result<(), StoreError> {
        match self.meta.get(META_PACKED)? {
            Some(bytes) => {
                let spec: PackSpec = decode("packed shape", &bytes)?;
                spec.check()?;
                let started = std::time::Instant::now();
                let mut table = Table::new(spec.clone(), self.partitions());
                for pair in self.chunks.iter() {
                    let (key, rows) = pair?;
                    table.load_chunk(&key, &rows)?;
                }
                tracing::info!(
                    rows = table.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "packed keys loaded from their chunks"
                );
                *self.packed.table.write().expect("packed lock") = Some(table);
                let _ = self.packed.spec.set(spec);
                let dropped = self.drop_unpacked_keys()?;
                if dropped > 0 {
                    tracing::info!(keys = dropped, "dropped keys an interrupted packing left");
                }
            }
            None => loop {
                let mut batch = Batch::default();
                let mut n = 0;
                for pair in self.chunks.iter().take(RESTORE_BATCH_KEYS) {
                    self.chunks.remove(&mut batch, &pair?.0);
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                self.state.apply_batch(batch)?;
            },
        }
        Ok(())
    }

    /// Keeps which region keys under `prefix` exist in memory from now on (a 64-bit hash of
    /// each, about 20 bytes a key), so [`Store::get`] answers most reads of absent keys without
    /// reaching sled; returns how many there are. Costs a scan of those keys now. One prefix
    /// per store, and not the packed one.
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

    /// Indexes the values under `prefix` (in every partition) as [record lists](crate::records)
    /// from now on: [`Store::lists_holding`] names the values that may hold a record key
    /// without reading any (about 28 bytes a record key in memory). Returns how many record
    /// keys there are. Costs a scan of those values now; asking again for the same prefix
    /// costs nothing. One prefix per store. A value under it that is not a record list is an
    /// error, here and in the commit that writes it.
    pub fn keep_members(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        if let Some(members) = self.members.read().expect("members lock").as_ref() {
            return match members.prefix == prefix {
                true => Ok(members.len()),
                false => Err(StoreError::Config(format!(
                    "the record lists under {:?} are indexed already; one prefix per store",
                    members.prefix
                ))),
            };
        }
        let _gate = self.gate.write().expect("epoch gate");
        let mut members = self.members.write().expect("members lock");
        if let Some(members) = members.as_ref() {
            return Ok(members.len());
        }
        let loaded = Members::load(prefix, self.all_trees())?;
        loaded.publish();
        let count = loaded.len();
        tracing::debug!(
            lists = loaded.lists(),
            records = count,
            "record lists indexed"
        );
        *members = Some(loaded);
        Ok(count)
    }

    /// The keys of the values in `part` under the prefix [`Store::keep_members`] indexes that
    /// may hold the record key `member`, in key order: each may not (hashes collide), so read
    /// it and look.
    /// An error if no prefix is indexed: an answer of "none" would then be a guess.
    pub fn lists_holding(&self, part: Part, member: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let members = self.members.read().expect("members lock");
        let members = members.as_ref().ok_or_else(|| {
            StoreError::Config("no record lists are indexed (Store::keep_members)".into())
        })?;
        Ok(members.candidates(Self::tree_id(part), member))
    }

    /// Every partition's tree with its [`Store::tree_id`].
    fn all_trees(&self) -> impl Iterator<Item = (usize, &Space)> {
        std::iter::once((Self::tree_id(Part::Global), &self.global)).chain(
            self.regions
                .iter()
                .enumerate()
                .map(|(n, space)| (Self::tree_id(Part::Region(n as u32)), space)),
        )
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

mod commit;
mod feed;
mod known;
mod members;
mod snapshot;
mod stream;
#[cfg(test)]
type ExportHook = Box<dyn FnMut(&Store, usize, usize) + Send>;
#[cfg(test)]
mod tests;

use feed::{feed_epoch, FeedState};
pub use feed::{FeedPage, FeedRetention, FEED_PRUNE_PER_COMMIT_MAX};
use known::Known;
use members::Members;
use snapshot::Capture;
pub use stream::{
    write_out_paced, ExportSink, PacedFile, SnapshotSource, SNAPSHOT_ITEM_BYTES_MAX,
    WRITEBACK_BYTES,
};

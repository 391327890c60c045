//! The partition stores: one sled database per node, one tree per partition.
//!
//! Trees: `global` (DC table, catalogue, their dedupe entries), `p<N>` for each region
//! partition, `meta` (applied epoch, sequencer time, hashes, opaque Raft metadata) and
//! `hashes` (the state hash at each epoch of a recent window). This layer deals in bytes: what
//! the keys and values mean belongs to the scheduler.
//!
//! Every epoch is applied with [`Store::commit`] as one atomic sled transaction over all trees
//! that also moves the applied-epoch watermark, so after a crash the store is either before or
//! after an epoch, never inside one. sled is not the durability anchor (its flush is
//! `sync_file_range`): the Raft log is, and a restarted node re-applies from the watermark.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{IVec, Transactional, Tree};

use crate::hash::{HashChain, StateHash};
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

const META_APPLIED: &[u8] = b"applied";
const META_PARTITIONS: &[u8] = b"partitions";
const META_IMPORTING: &[u8] = b"importing";
const SNAPSHOT_FORMAT: u32 = 1;

/// A node's partition stores.
pub struct Store {
    db: sled::Db,
    meta: Tree,
    hashes: Tree,
    global: Tree,
    regions: Vec<Tree>,
    /// A copy of the meta `applied` record, so readers need not decode it each time.
    applied: Mutex<Applied>,
    /// Held for writing while an epoch commits and for reading by [`Store::consistent`], so a
    /// multi-row read sees whole epochs. Lock order: `gate`, then `applied`.
    gate: RwLock<()>,
}

/// One tree's name and every key/value pair in it.
type TreeDump = (String, Vec<(Vec<u8>, Vec<u8>)>);

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    partitions: u32,
    trees: Vec<TreeDump>,
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    bincode::deserialize(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("in-memory values always encode")
}

impl Store {
    /// Opens the store in `dir` with `partitions` region partitions. The partition count is fixed
    /// when the store is created; opening it with another count is refused.
    pub fn open(dir: impl AsRef<Path>, partitions: u32) -> Result<Self, StoreError> {
        if partitions == 0 {
            return Err(StoreError::Config("partitions must be at least 1".into()));
        }
        Self::open_inner(dir.as_ref(), Some(partitions))
    }

    fn open_inner(dir: &Path, partitions: Option<u32>) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(256 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()?;
        let meta = db.open_tree("meta")?;
        if meta.get(META_IMPORTING)?.is_some() {
            return Err(StoreError::Corrupt(
                "a snapshot install was interrupted; wipe the data directory and let the node \
                 catch up from the cluster"
                    .into(),
            ));
        }
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
                meta.insert(META_PARTITIONS, encode(&wanted))?;
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
            .map(|n| db.open_tree(Part::Region(n).to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let applied = match meta.get(META_APPLIED)? {
            Some(bytes) => decode("applied state", &bytes)?,
            None => Applied {
                chain: HashChain::new(partitions),
                ..Applied::default()
            },
        };
        Ok(Self {
            hashes: db.open_tree("hashes")?,
            global: db.open_tree(Part::Global.to_string())?,
            db,
            meta,
            regions,
            applied: Mutex::new(applied),
            gate: RwLock::new(()),
        })
    }

    /// Opens an existing store with the partition count it was created with.
    pub fn open_existing(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_inner(dir.as_ref(), None)
    }

    pub fn partitions(&self) -> u32 {
        self.regions.len() as u32
    }

    fn tree(&self, part: Part) -> Result<&Tree, StoreError> {
        match part {
            Part::Global => Ok(&self.global),
            Part::Region(n) => self
                .regions
                .get(n as usize)
                .ok_or_else(|| StoreError::Config(format!("no partition {n}"))),
        }
    }

    pub fn get(&self, part: Part, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        Ok(self.tree(part)?.get(key)?)
    }

    /// Key/value pairs under `prefix`, in key order, at most `limit` of them.
    pub fn scan_prefix(
        &self,
        part: Part,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(IVec, IVec)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(part)?.scan_prefix(prefix).take(limit) {
            out.push(kv?);
        }
        Ok(out)
    }

    /// Key/value pairs with `start <= key < end`, in key order, at most `limit` of them.
    pub fn range(
        &self,
        part: Part,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(IVec, IVec)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree(part)?.range(start..end).take(limit) {
            out.push(kv?);
        }
        Ok(out)
    }

    /// Runs `read` with the applied epoch while no epoch commits: every row it reads is from
    /// that epoch (sled makes a commit atomic to crash recovery, not to concurrent readers).
    /// Commits wait for the read, so keep it short.
    pub fn consistent<T>(&self, read: impl FnOnce(u64) -> T) -> T {
        let _gate = self.gate.read().expect("epoch gate");
        let epoch = self.applied_epoch();
        read(epoch)
    }

    /// The applied state as of the last commit.
    pub fn applied(&self) -> Applied {
        self.applied.lock().expect("applied lock").clone()
    }

    pub fn applied_epoch(&self) -> u64 {
        self.applied.lock().expect("applied lock").epoch
    }

    /// The state hash recorded at `epoch`, if it is within the recent window.
    pub fn state_hash_at(&self, epoch: u64) -> Result<Option<StateHash>, StoreError> {
        match self.hashes.get(epoch.to_be_bytes())? {
            Some(bytes) => Ok(Some(decode("state hash", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Applies one Raft entry's effects atomically. For an epoch batch the epoch must be exactly
    /// the next one: anything else means the log was applied out of order or twice, and the node
    /// must stop. Returns the state hash after the commit.
    pub fn commit(&self, commit: EpochCommit) -> Result<StateHash, StoreError> {
        let _gate = self.gate.write().expect("epoch gate");
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

        let mut trees: Vec<&Tree> = vec![&self.meta, &self.hashes];
        let mut batches: Vec<sled::Batch> = vec![sled::Batch::default(), sled::Batch::default()];
        batches[0].insert(META_APPLIED, encode(&next));
        if let Some(stamp) = commit.stamp {
            batches[1].insert(&stamp.epoch.to_be_bytes(), encode(&next.state_hash));
            if stamp.epoch > HASH_WINDOW_EPOCHS {
                batches[1].remove(&(stamp.epoch - HASH_WINDOW_EPOCHS).to_be_bytes());
            }
        }
        for (part, writes) in commit.writes {
            let mut batch = sled::Batch::default();
            for (key, value) in writes {
                match value {
                    Some(value) => batch.insert(key, value),
                    None => batch.remove(key),
                }
            }
            trees.push(self.tree(part)?);
            batches.push(batch);
        }
        trees
            .as_slice()
            .transaction(|views| {
                for (view, batch) in views.iter().zip(&batches) {
                    view.apply_batch(batch)?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::Sled(e),
                TransactionError::Abort(()) => StoreError::Corrupt("epoch commit aborted".into()),
            })?;
        let hash = next.state_hash;
        *applied = next;
        Ok(hash)
    }

    /// Asks sled to write its dirty pages out (`sync_file_range`; not an fsync).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Exports every tree, including the applied state and the hash window, as one blob.
    /// Returns the applied state the export reflects, with the blob.
    pub fn export_snapshot(&self) -> Result<(Applied, Vec<u8>), StoreError> {
        // Hold the applied lock so no commit runs while the trees are read.
        let applied = self.applied.lock().expect("applied lock");
        let mut trees = Vec::new();
        let mut names = vec![
            "meta".to_string(),
            "hashes".to_string(),
            "global".to_string(),
        ];
        names.extend((0..self.partitions()).map(|n| Part::Region(n).to_string()));
        for name in names {
            let tree = self.db.open_tree(&name)?;
            let mut pairs = Vec::with_capacity(tree.len());
            for kv in tree.iter() {
                let (k, v) = kv?;
                pairs.push((k.to_vec(), v.to_vec()));
            }
            trees.push((name, pairs));
        }
        let blob = encode(&SnapshotFile {
            format: SNAPSHOT_FORMAT,
            partitions: self.partitions(),
            trees,
        });
        Ok((applied.clone(), blob))
    }

    /// Replaces the whole store with a snapshot made by [`Store::export_snapshot`].
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
        let _gate = self.gate.write().expect("epoch gate");
        let mut applied = self.applied.lock().expect("applied lock");
        self.meta.insert(META_IMPORTING, &[1u8])?;
        self.db.flush()?;
        // The meta tree goes last: replacing it also drops the importing marker, so a crash
        // anywhere before that point leaves the marker set and the next open refuses the store.
        let (meta, data): (Vec<_>, Vec<_>) =
            snapshot.trees.iter().partition(|(name, _)| name == "meta");
        for (name, pairs) in data.into_iter().chain(meta) {
            let tree = self.db.open_tree(name)?;
            tree.clear()?;
            let mut batch = sled::Batch::default();
            for (k, v) in pairs {
                batch.insert(k.as_slice(), v.as_slice());
            }
            tree.apply_batch(batch)?;
        }
        self.db.flush()?;
        *applied = match self.meta.get(META_APPLIED)? {
            Some(bytes) => decode("applied state", &bytes)?,
            None => Applied {
                chain: HashChain::new(self.partitions()),
                ..Applied::default()
            },
        };
        Ok(())
    }
}

//! The edge's indexes of the global tables, the nearby index of the DCs and the search index
//! of the catalogue's names, and reads that need one at an epoch.
//!
//! An index follows its own table, not every global write: the nearby index the version of the
//! DC keys, the search index that of the names key (`keys::ITEM_NAMES`, moved by a new item or
//! a new name only), so price changes, however frequent, rebuild neither. A rebuild runs on a
//! blocking thread, one at a time per index, before a read opens its epoch: a read
//! ([`OrdoService::consistent_indexed`]) goes on only with indexes current at its epoch, and if
//! the table moved between the build and the epoch it goes again. Commits never wait for a
//! rebuild, and the request runtime's async threads never run one.
//!
//! Reads of many rows (searches, availability over many stores) run in a read view of the
//! store (`Store::view`): every row as of one epoch while commits go on, so a long read holds
//! up no order. Short reads take the epoch gate, which commits wait for, for a moment.

use std::sync::Arc;

use ordo_scheduler::{keys, reads};
use ordo_storage::Store;
use tonic::Status;

use super::{internal, OrdoService};
use crate::geo::NearbyIndex;
use crate::search::SearchIndex;

/// Rounds a read goes before it builds inside its epoch after all (a table changing faster
/// than an index builds).
const INDEX_ROUNDS_MAX: usize = 8;

/// Rows past which a consistent read leaves its worker thread's other tasks to another.
pub const LARGE_READ_ROWS: usize = 4_096;

/// Rows past which a consistent read runs in a read view instead of under the epoch gate:
/// below it, holding commits for the read costs less than the view's bookkeeping.
pub const VIEW_READ_ROWS: usize = 256;

/// Which indexes a read needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Indexes {
    pub nearby: bool,
    pub search: bool,
}

impl Indexes {
    pub const NEARBY: Indexes = Indexes {
        nearby: true,
        search: false,
    };
}

/// The version of the DC table the nearby index follows.
fn dc_version(store: &Store) -> u64 {
    store.global_version_of(keys::DC)
}

/// The version of the catalogue's names the search index follows.
fn names_version(store: &Store) -> u64 {
    store.global_version_of(keys::ITEM_NAMES[0])
}

impl OrdoService {
    /// The nearby index, if it is current.
    fn nearby_current(&self, store: &Store) -> Option<Arc<NearbyIndex>> {
        let index = self.nearby.read().expect("nearby lock").clone()?;
        (index.version == dc_version(store)).then_some(index)
    }

    /// The search index, if it is current.
    fn search_current(&self, store: &Store) -> Option<Arc<SearchIndex>> {
        let index = self.search.read().expect("search lock").clone()?;
        (index.version == names_version(store)).then_some(index)
    }

    /// The nearby index of the DC table as the store holds it now, built here if it is not
    /// current. At an epoch only through [`OrdoService::consistent_indexed`] (which
    /// builds it before), or where a read needs no epoch (the edge resolving candidates).
    pub(super) fn nearby_index(&self, store: &Store) -> Result<Arc<NearbyIndex>, Status> {
        if let Some(index) = self.nearby_current(store) {
            return Ok(index);
        }
        let version = dc_version(store);
        let dcs = reads::dcs(store).map_err(internal)?;
        let index = Arc::new(NearbyIndex::build(&dcs, version));
        *self.nearby.write().expect("nearby lock") = Some(index.clone());
        ordo_metrics::INDEX_REBUILDS.add(&["nearby"], 1);
        Ok(index)
    }

    /// The search index of the catalogue's names, built here if it is not current (see
    /// [`OrdoService::nearby_index`]).
    pub(super) fn search_index(&self, store: &Store) -> Result<Arc<SearchIndex>, Status> {
        if let Some(index) = self.search_current(store) {
            return Ok(index);
        }
        let version = names_version(store);
        let items = reads::items(store).map_err(internal)?;
        let index = Arc::new(SearchIndex::build(&items, version));
        *self.search.write().expect("search lock") = Some(index.clone());
        ordo_metrics::INDEX_REBUILDS.add(&["search"], 1);
        Ok(index)
    }

    /// Brings the indexes `needs` names up to date, on a blocking thread, one build at a time.
    async fn warm(&self, needs: Indexes) -> Result<(), Status> {
        let store = &self.node.store;
        let stale = (needs.nearby && self.nearby_current(store).is_none())
            || (needs.search && self.search_current(store).is_none());
        if !stale {
            return Ok(());
        }
        let _one = self.index_builds.lock().await;
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            return Err(Status::unavailable(format!(
                "node {} is stopping",
                self.node.node_id
            )));
        };
        tokio::task::spawn_blocking(move || {
            let store = &me.node.store;
            if needs.nearby {
                me.nearby_index(store)?;
            }
            if needs.search {
                me.search_index(store)?;
            }
            Ok::<_, Status>(())
        })
        .await
        .map_err(internal)?
    }

    /// The search index, brought up to date off the async threads first.
    pub(super) async fn search_index_warm(&self) -> Result<Arc<SearchIndex>, Status> {
        self.warm(Indexes {
            nearby: false,
            search: true,
        })
        .await?;
        self.search_index(&self.node.store)
    }

    /// Runs `read` at one epoch ([`OrdoService::consistent_sized`]) with the indexes `needs`
    /// names current for that epoch, built before the epoch is taken. A table that moves
    /// between the build and the epoch sends the read round again; after
    /// [`INDEX_ROUNDS_MAX`] rounds the indexes are built at the read's epoch.
    /// `rows`: about how many rows `read` reads ([`OrdoService::consistent_sized`]).
    pub(super) async fn consistent_indexed<T>(
        &self,
        needs: Indexes,
        rows: usize,
        mut read: impl FnMut(u64) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let store = &self.node.store;
        for _ in 0..INDEX_ROUNDS_MAX {
            self.warm(needs).await?;
            let done = self.consistent_sized(rows, |epoch| {
                let current = (!needs.nearby || self.nearby_current(store).is_some())
                    && (!needs.search || self.search_current(store).is_some());
                current.then(|| read(epoch))
            });
            if let Some(done) = done {
                return done;
            }
        }
        self.consistent_sized(rows, read)
    }

    /// Runs `read` at one epoch, for a read of about `rows` rows. A short one runs under the
    /// epoch gate ([`Store::consistent`]); one past [`VIEW_READ_ROWS`] in a read view
    /// ([`Store::view`]), so commits go on while it reads. A large one (past
    /// [`LARGE_READ_ROWS`]) also runs as a blocking section of its worker thread
    /// (`block_in_place`): the thread's other tasks (Raft's core among them) move to another
    /// worker instead of waiting behind it.
    pub(super) fn consistent_sized<T>(&self, rows: usize, mut read: impl FnMut(u64) -> T) -> T {
        let store = &self.node.store;
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let mut run = || match rows > VIEW_READ_ROWS {
            true => store.view(&mut read),
            false => store.consistent(&mut read),
        };
        match rows > LARGE_READ_ROWS && multi_thread {
            true => tokio::task::block_in_place(run),
            false => run(),
        }
    }
}

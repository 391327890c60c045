//! Committing an epoch: the watermark, the hash chain, before-images for exports and views,
//! the overlay and the in-memory copies, all under the epoch gate.

use std::collections::BTreeSet;

use super::*;
use crate::packed::chunk_key;

impl Store {
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

        // A packed write that does not fit the packed shape is refused before anything moves.
        if let Some(table) = self.packed.table.read().expect("packed lock").as_ref() {
            for (part, writes) in &commit.writes {
                if let Part::Region(_) = part {
                    for (key, value) in writes {
                        if table.spec().covers(key) {
                            table.check_write(key, value.as_deref())?;
                        }
                    }
                }
            }
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
                if matches!(part, Part::Region(_)) && self.packed.covers(key) {
                    continue;
                }
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
        let mut members = self.members.write().expect("members lock");
        if let Some(members) = members.as_mut() {
            for (part, writes) in &commit.writes {
                for (key, value) in writes {
                    if members.covers(key) {
                        members.apply(Self::tree_id(*part), key, value.as_deref())?;
                    }
                }
            }
            members.publish();
        }
        let mut packed = self.packed.table.write().expect("packed lock");
        if let Some(table) = packed.as_mut() {
            // The packed writes change the table, and each block they change is staged as its
            // chunk, as it is after this commit.
            let mut changed = BTreeSet::new();
            for (part, writes) in &commit.writes {
                if let Part::Region(n) = part {
                    for (key, value) in writes {
                        if table.spec().covers(key) {
                            changed.insert((*n, table.set(*n, key, value.as_deref())));
                        }
                    }
                }
            }
            for (n, id) in changed {
                let key = chunk_key(n, id);
                match table.block(n, id) {
                    Some(rows) => self.chunks.put(&mut batch, &key, rows),
                    None => self.chunks.delete(&mut batch, &key),
                }
            }
        }
        self.behind.stage(batch);
        drop(packed);
        drop(members);
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

    /// Writes every committed epoch to sled, then asks sled to write its dirty pages out
    /// (`sync_file_range`; not an fsync). Commits wait meanwhile.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _gate = self.gate.write().expect("epoch gate");
        self.behind.sync()?;
        self.db.flush()?;
        Ok(())
    }
}

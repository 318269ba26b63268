//! [`SimLog`]: the simulator's log storage, a [`MemoryLog`] (which keeps the
//! honest durable/current split and the crash model) plus a shadow the
//! checker reads cheaply.
//!
//! The shadow holds, for every entry, its term and a *prefix hash*: a hash
//! chained over every entry from index 1 through it. Two logs with equal
//! prefix hashes at an index hold the same entries through that index (up to
//! a 64-bit hash collision), so log matching, "a committed entry never
//! changes" and "a quorum holds it durably" are all O(1) comparisons.
//!
//! A compacted log keeps the shadow of the entries it discarded: they are
//! committed (compaction only discards what the state machine holds), so
//! the shadow of the committed entries stands for them. A log that starts
//! over after a snapshot (or opens compacted) takes that shadow from the
//! checker's record of committed entries, handed in by the simulator
//! ([`SimLog::provide_prefix`], [`SimLog::open`]).
//!
//! Invariants kept here:
//!
//! - `terms` and `hashes` mirror the current content of the [`MemoryLog`]
//!   exactly, index `i` at position `i - 1`, with the committed entries it
//!   discarded in front.
//! - `durable` holds the prefix hashes of the log's durable image: a sync
//!   job captures `hashes` when it starts and installs them when it runs
//!   (together with the memory log's durable image), and it equals `hashes`
//!   on opening.
//! - `dirty_from` is the lowest index changed since the checker last called
//!   [`SimLog::take_dirty`] (`u64::MAX` when nothing changed).

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};

use crate::storage::memory::MemoryLog;
use crate::storage::{Entry, LogStorage, SyncJob};
use crate::{Error, LogIndex, Result, Term};

/// No change pending.
const CLEAN: LogIndex = LogIndex::MAX;

/// The hash of the entries through `entry`, given the hash through the one
/// before it (0 before index 1).
pub fn chain_hash(prev: u64, entry: &Entry) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &entry.data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(prev ^ mix(entry.term.wrapping_add(0x51ed_2701)) ^ mix(h ^ entry.index))
}

/// A 64-bit finaliser (the SplitMix64 output function).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A [`MemoryLog`] with a checker's shadow of term and prefix hash per entry.
pub struct SimLog {
    mem: MemoryLog,
    terms: Vec<Term>,
    hashes: Vec<u64>,
    /// Shared with the sync job in flight, which replaces it when it runs,
    /// unless a discard (which makes everything durable, counted here)
    /// came after the job started.
    durable: Arc<Mutex<(Arc<Vec<u64>>, u64)>>,
    /// Lowest index changed since the checker last looked.
    dirty_from: Cell<LogIndex>,
    /// Shadow of the committed entries a coming discard past the end
    /// needs: `(term, prefix hash)` of indexes `1..`.
    prefix: RefCell<Vec<(Term, u64)>>,
}

impl SimLog {
    /// Opens `mem` as it is now (just created, or just crashed: its current
    /// content is durable). The whole log counts as changed, so the checker
    /// looks at every entry of a restarted node once.
    /// `prefix` is the shadow `(term, prefix hash)` of at least the entries
    /// the log discarded (the committed ones, in index order from 1).
    pub fn open(mem: MemoryLog, prefix: &[(Term, u64)]) -> Result<Self> {
        let discarded = (mem.first_index() - 1) as usize;
        if prefix.len() < discarded {
            return Err(Error::InvalidInput(format!(
                "the log discarded {discarded} entries, but only {} are known committed",
                prefix.len()
            )));
        }
        let mut log = SimLog {
            mem,
            terms: prefix[..discarded].iter().map(|p| p.0).collect(),
            hashes: prefix[..discarded].iter().map(|p| p.1).collect(),
            durable: Arc::default(),
            dirty_from: Cell::new(1),
            prefix: RefCell::default(),
        };
        if discarded > 0 && log.mem.term(discarded as LogIndex)? != Some(log.terms[discarded - 1]) {
            return Err(Error::InvalidInput(format!(
                "the log's discarded prefix ends with a term other than the committed entry {discarded}'s"
            )));
        }
        for e in log.mem.all_entries() {
            log.push_shadow(&e);
        }
        log.durable = Arc::new(Mutex::new((Arc::new(log.hashes.clone()), 0)));
        Ok(log)
    }

    fn push_shadow(&mut self, e: &Entry) {
        let prev = self.hashes.last().copied().unwrap_or(0);
        self.terms.push(e.term);
        self.hashes.push(chain_hash(prev, e));
    }

    fn mark(&mut self, from: LogIndex) {
        self.dirty_from.set(self.dirty_from.get().min(from));
    }

    /// The handle on the underlying memory log (shared with the simulator,
    /// which crashes it).
    pub fn memory(&self) -> &MemoryLog {
        &self.mem
    }

    /// Index of the last entry.
    pub fn last(&self) -> LogIndex {
        self.terms.len() as LogIndex
    }

    /// Term of entry `index` (0 for index 0), if held.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        self.terms.get(index as usize - 1).copied()
    }

    /// Prefix hash through `index` (0 for index 0), if held.
    pub fn hash_at(&self, index: LogIndex) -> Option<u64> {
        if index == 0 {
            return Some(0);
        }
        self.hashes.get(index as usize - 1).copied()
    }

    /// Prefix hashes of the durable image.
    pub fn durable_hashes(&self) -> Arc<Vec<u64>> {
        self.durable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Whether the log holds changes a crash would lose.
    pub fn has_unsynced(&self) -> bool {
        *self.durable_hashes() != self.hashes
    }

    /// Hands over the shadow of the committed entries (from index 1), for a
    /// discard past the end of the log that follows.
    pub fn provide_prefix(&self, prefix: Vec<(Term, u64)>) {
        *self.prefix.borrow_mut() = prefix;
    }

    /// The lowest index changed since the previous call, if any changed.
    pub fn take_dirty(&self) -> Option<LogIndex> {
        let from = self.dirty_from.replace(CLEAN);
        (from != CLEAN).then_some(from)
    }
}

impl LogStorage for SimLog {
    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        self.mem.append(entries)?;
        if let Some(first) = entries.first() {
            self.mark(first.index);
        }
        for e in entries {
            self.push_shadow(e);
        }
        Ok(())
    }

    fn entries(&self, lo: LogIndex, hi: LogIndex) -> Result<Vec<Entry>> {
        self.mem.entries(lo, hi)
    }

    fn term(&self, index: LogIndex) -> Result<Option<Term>> {
        self.mem.term(index)
    }

    fn first_index(&self) -> LogIndex {
        self.mem.first_index()
    }

    fn last_index(&self) -> LogIndex {
        self.mem.last_index()
    }

    fn truncate_after(&mut self, index: LogIndex) -> Result<()> {
        self.mem.truncate_after(index)?;
        if index < self.last() {
            self.terms.truncate(index as usize);
            self.hashes.truncate(index as usize);
            self.mark(index + 1);
        }
        Ok(())
    }

    fn discard_through(&mut self, index: LogIndex, term: Term) -> Result<()> {
        if index > self.last() {
            // The log starts over after a snapshot: its shadow becomes the
            // committed entries through `index`.
            let prefix = std::mem::take(&mut *self.prefix.borrow_mut());
            if prefix.len() < index as usize || prefix[index as usize - 1].0 != term {
                return Err(Error::InvalidInput(format!(
                    "a snapshot through {index} (term {term}) is not of committed entries \
                     (known committed through {})",
                    prefix.len()
                )));
            }
            let same = self
                .hashes
                .iter()
                .zip(&prefix)
                .take_while(|(h, p)| **h == p.1)
                .count();
            self.terms.truncate(same);
            self.hashes.truncate(same);
            for p in &prefix[same..index as usize] {
                self.terms.push(p.0);
                self.hashes.push(p.1);
            }
            self.mark(same as LogIndex + 1);
        }
        let within = index < self.last();
        self.mem.discard_through(index, term)?;
        if within && self.mem.lazy_discards() {
            // Durable with the next sync, as the memory log's.
            return Ok(());
        }
        // The memory log made everything durable.
        let mut durable = self.durable.lock().unwrap_or_else(|e| e.into_inner());
        durable.0 = Arc::new(self.hashes.clone());
        durable.1 += 1;
        Ok(())
    }

    fn start_sync(&mut self) -> Result<SyncJob> {
        let mem = self.mem.start_sync()?;
        let captured = Arc::new(self.hashes.clone());
        let durable = self.durable.clone();
        let discards = durable.lock().unwrap_or_else(|e| e.into_inner()).1;
        Ok(SyncJob::new(move || {
            mem.run()?;
            let mut durable = durable.lock().unwrap_or_else(|e| e.into_inner());
            if durable.1 == discards {
                durable.0 = captured;
            }
            Ok(())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: LogIndex, term: Term, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec(),
        }
    }

    #[test]
    fn shadow_follows_appends_truncations_syncs_and_crashes() {
        let mem = MemoryLog::new();
        let mut log = SimLog::open(mem.clone(), &[]).unwrap();
        assert_eq!(log.take_dirty(), Some(1), "a fresh open is checked once");
        assert_eq!(log.take_dirty(), None);
        log.append(&[e(1, 1, b"a"), e(2, 1, b"b")]).unwrap();
        log.sync().unwrap();
        log.append(&[e(3, 1, b"c")]).unwrap();
        assert_eq!(log.take_dirty(), Some(1));
        let h2 = log.hash_at(2).unwrap();
        let h3 = log.hash_at(3).unwrap();
        log.truncate_after(2).unwrap();
        log.append(&[e(3, 2, b"c")]).unwrap();
        assert_eq!(log.take_dirty(), Some(3));
        assert_ne!(
            log.hash_at(3).unwrap(),
            h3,
            "a different term changes the hash"
        );
        assert_eq!(log.durable_hashes().len(), 2);
        let job = log.start_sync().unwrap();
        log.append(&[e(4, 2, b"d")]).unwrap();
        assert!(log.has_unsynced());
        job.run().unwrap();
        assert_eq!(
            log.durable_hashes().len(),
            3,
            "the job covers what it captured"
        );
        assert!(log.has_unsynced(), "entry 4 came after the job started");
        let h3_new = log.hash_at(3);
        // A crash keeps only the synced image.
        mem.crash();
        let reopened = SimLog::open(mem, &[]).unwrap();
        assert_eq!(reopened.last(), 3);
        assert_eq!(reopened.hash_at(2), Some(h2));
        assert_eq!(reopened.hash_at(3), h3_new);
        assert_eq!(*reopened.durable_hashes(), reopened.hashes);
    }

    #[test]
    fn equal_prefix_hashes_mean_equal_prefixes() {
        let mut a = SimLog::open(MemoryLog::new(), &[]).unwrap();
        let mut b = SimLog::open(MemoryLog::new(), &[]).unwrap();
        a.append(&[e(1, 1, b"x"), e(2, 1, b"y")]).unwrap();
        b.append(&[e(1, 1, b"x"), e(2, 1, b"z")]).unwrap();
        assert_eq!(a.hash_at(1), b.hash_at(1));
        assert_ne!(a.hash_at(2), b.hash_at(2));
        b.truncate_after(1).unwrap();
        b.append(&[e(2, 1, b"y")]).unwrap();
        assert_eq!(a.hash_at(2), b.hash_at(2));
    }
}

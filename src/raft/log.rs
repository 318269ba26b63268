//! The node's view of its log: [`LogStorage`] plus the commit, sync and
//! hand-out positions Raft tracks over it.
//!
//! Positions, and the invariants this type keeps between calls:
//!
//! - `applied <= commit`: `applied` is the last entry handed to the caller
//!   for application ([`RaftLog::take_committed`]); entries are handed out in
//!   order and at most once, and only once they are both committed and
//!   locally durable (`<= synced`).
//! - `commit` never decreases and never covers an entry this node's log
//!   disagrees with: [`RaftLog::append_from_leader`] refuses to truncate at or
//!   below it.
//! - `synced <= last_index`: every entry up to `synced` is durable and equal
//!   to what the log holds now. A truncation lowers `synced` to the cut
//!   point; a finished sync raises it to what its start captured.
//! - `unsynced` is true exactly when the storage holds changes that no
//!   started sync covers.
//! - A sync runs in two halves: [`RaftLog::begin_sync`] captures
//!   `last_index` and hands back the storage's [`SyncJob`];
//!   [`RaftLog::finish_sync`] (after the job ran) raises `synced` to the
//!   captured index, but no higher than the lowest truncation made while the
//!   job ran: entries above that cut are no longer the ones it made durable.
//!   At most one sync is in flight.
//! - `last_index` / `last_term` mirror the storage (cached to avoid lookups).
//! - `recent` holds the newest entries exactly as the storage does: a
//!   contiguous run ending at `last_index` (or nothing), at most about
//!   [`RECENT_BYTES`] of them. Replication and application read from it, so
//!   an entry just appended is not read back from the storage (for a file
//!   log: a read, a checksum and a copy per entry, three times on a leader).

use std::collections::VecDeque;

use crate::storage::{Entry, LogStorage, SyncJob};
use crate::{Error, LogIndex, Result, Term};

/// Rough per-entry overhead, in bytes, counted against size limits.
const ENTRY_OVERHEAD: usize = 24;

/// Entries fetched from storage per read when building a size-limited batch.
const FETCH_CHUNK: u64 = 256;

/// About how many bytes of the newest entries are kept in memory (counted
/// as data plus [`ENTRY_OVERHEAD`] each).
pub const RECENT_BYTES: usize = 4 << 20;

/// The outcome of [`RaftLog::append_from_leader`].
#[derive(Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The log now holds the leader's entries through this index.
    Matched(LogIndex),
    /// The leader's entries conflict with committed entries: a protocol
    /// violation somewhere. Nothing was changed.
    ConflictsWithCommitted(LogIndex),
}

/// The log, with commit, sync and hand-out positions.
pub struct RaftLog<L: LogStorage> {
    storage: L,
    last_index: LogIndex,
    last_term: Term,
    commit: LogIndex,
    applied: LogIndex,
    synced: LogIndex,
    unsynced: bool,
    /// The sync in flight: the index it captured, lowered by truncations.
    in_flight: Option<LogIndex>,
    /// The lowest truncation point since [`RaftLog::take_cut`] last ran.
    cut: Option<LogIndex>,
    /// The newest entries, as the storage holds them.
    recent: VecDeque<Entry>,
    /// Bytes of `recent`, counted as in [`RECENT_BYTES`].
    recent_bytes: usize,
}

impl<L: LogStorage> RaftLog<L> {
    /// Wraps `storage`, whose content is taken to be durable (it was just
    /// opened or recovered). `applied` is the last index the state machine
    /// already holds: hand-out resumes after it, and it counts as committed.
    pub fn new(storage: L, applied: LogIndex) -> Result<Self> {
        if applied + 1 < storage.first_index() {
            return Err(Error::InvalidInput(format!(
                "the state machine has applied only through {applied}, but the log starts \
                 at {}: the entries between are gone",
                storage.first_index()
            )));
        }
        let last_index = storage.last_index();
        if applied > last_index {
            return Err(Error::InvalidInput(format!(
                "the state machine has applied through {applied}, but the log ends at \
                 {last_index}"
            )));
        }
        let last_term = storage.term(last_index)?.ok_or_else(|| {
            Error::InvalidInput(format!(
                "log storage has no term for its last index {last_index}"
            ))
        })?;
        Ok(RaftLog {
            storage,
            last_index,
            last_term,
            commit: applied,
            applied,
            synced: last_index,
            unsynced: false,
            in_flight: None,
            cut: None,
            recent: VecDeque::new(),
            recent_bytes: 0,
        })
    }

    /// The underlying storage.
    pub fn storage(&self) -> &L {
        &self.storage
    }

    /// Index of the last entry.
    pub fn last_index(&self) -> LogIndex {
        self.last_index
    }

    /// Term of the last entry (0 for an empty log).
    pub fn last_term(&self) -> Term {
        self.last_term
    }

    /// Index of the first entry the storage still holds.
    pub fn first_index(&self) -> LogIndex {
        self.storage.first_index()
    }

    /// The highest index known to be committed.
    pub fn commit(&self) -> LogIndex {
        self.commit
    }

    /// The last index handed out for application.
    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// The highest index known to be durable.
    pub fn synced(&self) -> LogIndex {
        self.synced
    }

    /// Whether the storage holds changes no started sync covers.
    pub fn needs_sync(&self) -> bool {
        self.unsynced
    }

    /// Whether a sync was begun and not yet finished.
    pub fn sync_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The lowest index the log was truncated to since the last call, if
    /// it was truncated.
    pub fn take_cut(&mut self) -> Option<LogIndex> {
        self.cut.take()
    }

    /// The term at `index`, or `None` if the log does not hold it (beyond the
    /// end, or discarded further back than the retained prefix term).
    pub fn term(&self, index: LogIndex) -> Result<Option<Term>> {
        if index == self.last_index {
            return Ok(Some(self.last_term));
        }
        if index > self.last_index {
            return Ok(None);
        }
        self.storage.term(index)
    }

    /// Whether the log holds an entry at `index` with `term` (index 0 and the
    /// retained prefix count as held).
    pub fn matches(&self, index: LogIndex, term: Term) -> Result<bool> {
        Ok(self.term(index)? == Some(term))
    }

    /// Whether a log ending at `(last_index, last_term)` is at least as
    /// up-to-date as this one: a later last term wins, and with equal last
    /// terms the longer log wins.
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term || (last_term == self.last_term && last_index >= self.last_index)
    }

    /// Appends one new entry at the end (a leader's proposal or no-op);
    /// returns its index.
    pub fn append_new(&mut self, term: Term, data: Vec<u8>) -> Result<LogIndex> {
        let index = self.last_index + 1;
        let entry = Entry { index, term, data };
        self.storage.append(std::slice::from_ref(&entry))?;
        self.last_index = index;
        self.last_term = term;
        self.unsynced = true;
        self.remember(entry);
        Ok(index)
    }

    /// Merges a leader's entries, which must directly follow an index whose
    /// term already matched the leader's (the caller checked it). Entries
    /// already present with the same term are skipped, so a duplicate or
    /// reordered append changes nothing; at the first entry whose term
    /// differs, the log is truncated there and the rest appended. The caller
    /// validated that `entries` are contiguous.
    pub fn append_from_leader(&mut self, entries: &[Entry]) -> Result<AppendOutcome> {
        let Some(first) = entries.first() else {
            return Ok(AppendOutcome::Matched(0));
        };
        let end = first.index + entries.len() as LogIndex - 1;
        // Find the first entry that is not already present with its term.
        let mut skip = 0;
        for entry in entries {
            if entry.index > self.last_index || !self.matches(entry.index, entry.term)? {
                break;
            }
            skip += 1;
        }
        let rest = &entries[skip..];
        let Some(new_first) = rest.first() else {
            return Ok(AppendOutcome::Matched(end));
        };
        if new_first.index <= self.last_index {
            // A conflicting suffix: drop it, unless it reaches committed entries.
            if new_first.index <= self.commit {
                return Ok(AppendOutcome::ConflictsWithCommitted(new_first.index));
            }
            self.truncate_after(new_first.index - 1)?;
        }
        self.storage.append(rest)?;
        if let Some(last) = rest.last() {
            self.last_index = last.index;
            self.last_term = last.term;
        }
        self.unsynced = true;
        for entry in rest {
            self.remember(entry.clone());
        }
        Ok(AppendOutcome::Matched(end))
    }

    /// Keeps `entry`, just appended at the end of the storage, in `recent`,
    /// dropping the oldest entries beyond [`RECENT_BYTES`].
    fn remember(&mut self, entry: Entry) {
        if self
            .recent
            .back()
            .is_some_and(|last| last.index + 1 != entry.index)
        {
            // Not contiguous (cannot happen: every change of the end goes
            // through this type); start over rather than keep a gap.
            debug_assert!(false, "entry {} does not follow the log's end", entry.index);
            self.forget_after(0);
        }
        self.recent_bytes += entry.data.len() + ENTRY_OVERHEAD;
        self.recent.push_back(entry);
        while self.recent_bytes > RECENT_BYTES {
            let Some(old) = self.recent.pop_front() else {
                break;
            };
            self.recent_bytes -= old.data.len() + ENTRY_OVERHEAD;
        }
    }

    /// Drops the remembered entries above `index`.
    fn forget_after(&mut self, index: LogIndex) {
        while self.recent.back().is_some_and(|e| e.index > index) {
            if let Some(e) = self.recent.pop_back() {
                self.recent_bytes -= e.data.len() + ENTRY_OVERHEAD;
            }
        }
    }

    /// Drops the remembered entries at or below `index`.
    fn forget_through(&mut self, index: LogIndex) {
        while self.recent.front().is_some_and(|e| e.index <= index) {
            if let Some(e) = self.recent.pop_front() {
                self.recent_bytes -= e.data.len() + ENTRY_OVERHEAD;
            }
        }
    }

    fn truncate_after(&mut self, index: LogIndex) -> Result<()> {
        // Whatever the storage did, the entries above `index` are no longer
        // known to be the ones it holds.
        self.forget_after(index);
        let result = self.truncate_storage_after(index);
        if result.is_err() {
            // Where the storage ends is unknown now; read it from there.
            self.forget_after(0);
        }
        result
    }

    fn truncate_storage_after(&mut self, index: LogIndex) -> Result<()> {
        self.storage.truncate_after(index)?;
        self.last_index = index;
        self.last_term = self.storage.term(index)?.ok_or_else(|| {
            Error::InvalidInput(format!(
                "log storage has no term at truncation point {index}"
            ))
        })?;
        self.synced = self.synced.min(index);
        if let Some(captured) = &mut self.in_flight {
            *captured = (*captured).min(index);
        }
        self.cut = Some(self.cut.map_or(index, |c| c.min(index)));
        self.unsynced = true;
        Ok(())
    }

    /// Discards the entries through `index`, which the state machine holds
    /// durably: `index` must be applied. Does nothing for an index already
    /// discarded.
    pub fn compact(&mut self, index: LogIndex) -> Result<()> {
        if index < self.first_index() {
            return Ok(());
        }
        if index > self.applied {
            return Err(Error::InvalidInput(format!(
                "cannot compact the log through {index}: only {} is applied",
                self.applied
            )));
        }
        let term = self.term(index)?.ok_or_else(|| {
            Error::InvalidInput(format!("log storage has no term for entry {index}"))
        })?;
        self.storage.discard_through(index, term)?;
        self.forget_through(index);
        Ok(())
    }

    /// Makes the log start after a snapshot through `(index, term)` that
    /// the state machine now holds durably. If the log holds that entry,
    /// only what precedes it goes (the entries after it agree with the
    /// snapshot); otherwise every entry goes. The snapshot's entries count
    /// as committed, durable (in the state machine) and applied.
    pub fn install_snapshot(&mut self, index: LogIndex, term: Term) -> Result<()> {
        if index >= self.first_index() && self.matches(index, term)? {
            self.storage.discard_through(index, term)?;
            self.forget_through(index);
        } else {
            // Committed entries agree with the snapshot and go with the
            // discard below; the entries after them may not agree.
            let keep = self.commit.max(self.first_index() - 1);
            if self.last_index > keep {
                // Also lowers a sync in flight and records the cut, so
                // acknowledgements of the dropped entries are withdrawn.
                self.truncate_after(keep)?;
            }
            self.forget_after(0);
            self.storage.discard_through(index, term)?;
            self.last_index = index;
            self.last_term = term;
            self.unsynced = true;
        }
        self.commit = self.commit.max(index);
        self.applied = self.applied.max(index);
        self.synced = self.synced.max(index);
        Ok(())
    }

    /// Raises the commit index to `index` (never lowers it).
    pub fn commit_to(&mut self, index: LogIndex) {
        if index > self.commit {
            self.commit = index;
        }
    }

    /// Starts a sync of every change so far, if any change needs one;
    /// the caller runs the job and then calls [`RaftLog::finish_sync`].
    pub fn begin_sync(&mut self) -> Result<Option<SyncJob>> {
        if self.in_flight.is_some() {
            return Err(Error::InvalidInput(
                "a log sync is already in flight".into(),
            ));
        }
        if !self.unsynced {
            return Ok(None);
        }
        let job = self.storage.start_sync()?;
        self.unsynced = false;
        self.in_flight = Some(self.last_index);
        Ok(Some(job))
    }

    /// Records how the job of the sync in flight ended: on success its
    /// captured entries count as durable; on failure they are unsynced
    /// again.
    pub fn finish_sync(&mut self, durable: bool) {
        if let Some(captured) = self.in_flight.take() {
            if durable {
                self.synced = self.synced.max(captured);
            } else {
                self.unsynced = true;
            }
        }
    }

    /// Makes every change durable and records it, waiting for the disk.
    #[cfg(test)]
    pub fn sync(&mut self) -> Result<()> {
        if let Some(job) = self.begin_sync()? {
            let result = job.run();
            self.finish_sync(result.is_ok());
            result?;
        }
        Ok(())
    }

    /// The last index that may be handed out: committed and durable.
    fn applicable(&self) -> LogIndex {
        self.commit.min(self.synced)
    }

    /// Whether [`RaftLog::take_committed`] would return entries.
    pub fn has_committed(&self) -> bool {
        self.applicable() > self.applied.max(self.first_index().saturating_sub(1))
    }

    /// Hands out the next committed, durable entries in order (about
    /// `max_bytes` of them, at least one if any) and advances `applied`.
    pub fn take_committed(&mut self, max_bytes: usize) -> Result<Vec<Entry>> {
        let lo = (self.applied + 1).max(self.first_index());
        let hi = self.applicable();
        if lo > hi {
            return Ok(Vec::new());
        }
        let entries = self.entries_limited(lo, hi, max_bytes)?;
        if let Some(last) = entries.last() {
            self.applied = last.index;
        }
        Ok(entries)
    }

    /// Entries from `lo` through at most `hi`, stopping once about
    /// `max_bytes` are gathered (always at least one entry if `lo <= hi`).
    pub fn entries_limited(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: usize,
    ) -> Result<Vec<Entry>> {
        let hi = hi.min(self.last_index);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut next = lo;
        let mut take = |entry: Entry, out: &mut Vec<Entry>| {
            let size = entry.data.len() + ENTRY_OVERHEAD;
            if !out.is_empty() && bytes + size > max_bytes {
                return false;
            }
            bytes += size;
            out.push(entry);
            true
        };
        let remembered = self.recent.front().map_or(LogIndex::MAX, |e| e.index);
        while next <= hi && next < remembered {
            let chunk_end = hi.min(next + FETCH_CHUNK - 1).min(remembered - 1);
            for entry in self.storage.entries(next, chunk_end + 1)? {
                if !take(entry, &mut out) {
                    return Ok(out);
                }
            }
            next = chunk_end + 1;
        }
        if next <= hi {
            // `next` is in `recent`, which runs through `last_index`.
            let from = (next - remembered) as usize;
            let to = (hi - remembered) as usize;
            if to >= self.recent.len() {
                return Err(Error::Failed(format!(
                    "the log's entries in memory end at {} but the log at {}",
                    remembered + self.recent.len() as u64 - 1,
                    self.last_index
                )));
            }
            for entry in self.recent.range(from..=to) {
                if !take(entry.clone(), &mut out) {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The follower's hint for a rejected append at `prev_index`: if the log
    /// is shorter, `(last_index + 1, None)`; otherwise the term found at
    /// `prev_index` and the first index of that term (searched no further
    /// back than just past the commit index, which matches every leader).
    pub fn conflict_hint(&self, prev_index: LogIndex) -> Result<(LogIndex, Option<Term>)> {
        if prev_index > self.last_index {
            return Ok((self.last_index + 1, None));
        }
        let Some(term) = self.term(prev_index)? else {
            return Ok((self.last_index + 1, None));
        };
        // Terms never decrease along the log: binary search the first index
        // in lo..=prev_index whose term is `term`.
        let mut lo = (self.commit + 1).max(self.first_index()).min(prev_index);
        let mut hi = prev_index;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.term(mid)? {
                Some(t) if t >= term => hi = mid,
                _ => lo = mid + 1,
            }
        }
        Ok((lo, Some(term)))
    }

    /// The leader's side of the hint: the last index at or below `upto`
    /// holding `term`, if the log has any entry of that term there.
    pub fn last_index_of_term(&self, term: Term, upto: LogIndex) -> Result<Option<LogIndex>> {
        let upto = upto.min(self.last_index);
        // Binary search the last index in lo..=upto whose term is <= `term`.
        let mut lo = self.first_index().saturating_sub(1);
        match self.term(lo)? {
            Some(t) if t <= term => {}
            _ => return Ok(None),
        }
        let mut hi = upto;
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            match self.term(mid)? {
                Some(t) if t <= term => lo = mid,
                _ => hi = mid - 1,
            }
        }
        Ok(match self.term(lo)? {
            Some(t) if t == term => Some(lo),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryLog;

    fn entry(index: LogIndex, term: Term) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8],
        }
    }

    /// A log holding entries with the given terms at indexes 1, 2, ...
    fn log_with_terms(terms: &[Term]) -> RaftLog<MemoryLog> {
        let mut storage = MemoryLog::new();
        let entries: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(i, t)| entry(i as LogIndex + 1, *t))
            .collect();
        storage.append(&entries).unwrap();
        storage.sync().unwrap();
        RaftLog::new(storage, 0).unwrap()
    }

    #[test]
    fn opens_at_storage_end_as_synced() {
        let log = log_with_terms(&[1, 1, 2]);
        assert_eq!((log.last_index(), log.last_term()), (3, 2));
        assert_eq!((log.commit(), log.applied(), log.synced()), (0, 0, 3));
        assert!(!log.needs_sync());
        assert_eq!(log.term(0).unwrap(), Some(0));
        assert_eq!(log.term(4).unwrap(), None);
    }

    #[test]
    fn up_to_date_compares_last_term_then_length() {
        let log = log_with_terms(&[1, 2, 2]);
        assert!(log.is_up_to_date(3, 2));
        assert!(log.is_up_to_date(4, 2));
        assert!(!log.is_up_to_date(2, 2));
        assert!(
            log.is_up_to_date(1, 3),
            "a later last term wins over length"
        );
        assert!(
            !log.is_up_to_date(10, 1),
            "a longer log with an older last term loses"
        );
    }

    #[test]
    fn duplicate_append_does_not_truncate() {
        let mut log = log_with_terms(&[1, 1, 1, 1]);
        // A delayed append carrying entries 2..=3, all already present.
        let out = log.append_from_leader(&[entry(2, 1), entry(3, 1)]).unwrap();
        assert_eq!(out, AppendOutcome::Matched(3));
        assert_eq!(log.last_index(), 4, "entry 4 must survive a stale append");
        assert!(!log.needs_sync());
    }

    #[test]
    fn conflicting_suffix_is_replaced() {
        let mut log = log_with_terms(&[1, 1, 2, 2]);
        let out = log
            .append_from_leader(&[entry(3, 3), entry(4, 3), entry(5, 3)])
            .unwrap();
        assert_eq!(out, AppendOutcome::Matched(5));
        assert_eq!((log.last_index(), log.last_term()), (5, 3));
        assert_eq!(log.synced(), 2, "the cut lowers the durable mark");
        assert!(log.needs_sync());
        log.sync().unwrap();
        assert_eq!(log.synced(), 5);
        let terms: Vec<Term> = log.storage().all_entries().iter().map(|e| e.term).collect();
        assert_eq!(terms, vec![1, 1, 3, 3, 3]);
    }

    #[test]
    fn a_sync_in_flight_counts_only_what_it_captured_below_any_cut() {
        let mut log = log_with_terms(&[1, 1]);
        log.append_new(1, b"a".to_vec()).unwrap();
        log.append_new(1, b"b".to_vec()).unwrap();
        let job = log.begin_sync().unwrap().expect("changes to sync");
        assert!(log.sync_in_flight() && !log.needs_sync());
        assert!(log.begin_sync().is_err(), "one sync at a time");
        log.append_new(1, b"c".to_vec()).unwrap();
        job.run().unwrap();
        log.finish_sync(true);
        assert_eq!(log.synced(), 4, "entry 5 came after the sync started");
        assert!(log.needs_sync());

        // A new leader cuts back to 3 while the next sync runs: the job
        // still makes 1..=3 durable, but not the replaced entries.
        let job = log.begin_sync().unwrap().expect("entry 5");
        let out = log.append_from_leader(&[entry(4, 2), entry(5, 2)]).unwrap();
        assert_eq!(out, AppendOutcome::Matched(5));
        assert_eq!(log.take_cut(), Some(3));
        assert_eq!(log.take_cut(), None);
        job.run().unwrap();
        log.finish_sync(true);
        assert_eq!(log.synced(), 3);
        log.sync().unwrap();
        assert_eq!(log.synced(), 5);
        assert!(!log.sync_in_flight() && !log.needs_sync());
    }

    #[test]
    fn never_truncates_committed_entries() {
        let mut log = log_with_terms(&[1, 1, 2]);
        log.commit_to(3);
        let out = log.append_from_leader(&[entry(3, 3)]).unwrap();
        assert_eq!(out, AppendOutcome::ConflictsWithCommitted(3));
        assert_eq!((log.last_index(), log.last_term()), (3, 2));
    }

    #[test]
    fn commit_never_decreases() {
        let mut log = log_with_terms(&[1, 1, 1]);
        log.commit_to(2);
        log.commit_to(1);
        assert_eq!(log.commit(), 2);
    }

    #[test]
    fn hands_out_only_committed_and_synced_entries_once() {
        let mut log = log_with_terms(&[1, 1]);
        log.append_new(1, b"x".to_vec()).unwrap();
        log.commit_to(3);
        assert!(log.has_committed());
        let got: Vec<LogIndex> = log
            .take_committed(1 << 20)
            .unwrap()
            .iter()
            .map(|e| e.index)
            .collect();
        assert_eq!(
            got,
            vec![1, 2],
            "entry 3 is committed but not yet durable here"
        );
        assert!(!log.has_committed());
        log.sync().unwrap();
        let got: Vec<LogIndex> = log
            .take_committed(1 << 20)
            .unwrap()
            .iter()
            .map(|e| e.index)
            .collect();
        assert_eq!(got, vec![3]);
        assert!(log.take_committed(1 << 20).unwrap().is_empty());
    }

    #[test]
    fn hand_out_resumes_after_applied() {
        let mut storage = MemoryLog::new();
        storage
            .append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .unwrap();
        let mut log = RaftLog::new(storage, 2).unwrap();
        assert_eq!(log.commit(), 2);
        assert!(!log.has_committed());
        log.commit_to(3);
        let got: Vec<LogIndex> = log
            .take_committed(1 << 20)
            .unwrap()
            .iter()
            .map(|e| e.index)
            .collect();
        assert_eq!(got, vec![3]);
    }

    #[test]
    fn size_limited_reads_return_at_least_one_entry() {
        let log = log_with_terms(&[1; 600]);
        let one = log.entries_limited(1, 600, 0).unwrap();
        assert_eq!(one.len(), 1);
        let some = log
            .entries_limited(1, 600, 10 * (1 + ENTRY_OVERHEAD))
            .unwrap();
        assert_eq!(some.len(), 10);
        let all = log.entries_limited(5, 600, usize::MAX).unwrap();
        assert_eq!(all.len(), 596);
        assert_eq!(all.last().unwrap().index, 600);
    }

    #[test]
    fn conflict_hints_name_the_first_index_of_the_conflicting_term() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 4, 4]);
        assert_eq!(log.conflict_hint(9).unwrap(), (8, None), "short log");
        assert_eq!(log.conflict_hint(5).unwrap(), (3, Some(2)));
        assert_eq!(log.conflict_hint(7).unwrap(), (6, Some(4)));
        assert_eq!(log.conflict_hint(1).unwrap(), (1, Some(1)));
    }

    #[test]
    fn leader_finds_last_index_of_a_term() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 4, 4]);
        assert_eq!(log.last_index_of_term(2, 7).unwrap(), Some(5));
        assert_eq!(log.last_index_of_term(2, 4).unwrap(), Some(4));
        assert_eq!(log.last_index_of_term(3, 7).unwrap(), None);
        assert_eq!(log.last_index_of_term(4, 100).unwrap(), Some(7));
        assert_eq!(log.last_index_of_term(1, 7).unwrap(), Some(2));
        assert_eq!(log.last_index_of_term(0, 7).unwrap(), Some(0));
    }

    /// A memory log whose truncations fail while `fail` is set.
    struct FailingTruncate {
        inner: MemoryLog,
        fail: bool,
    }

    impl LogStorage for FailingTruncate {
        fn append(&mut self, entries: &[Entry]) -> Result<()> {
            self.inner.append(entries)
        }
        fn entries(&self, lo: LogIndex, hi: LogIndex) -> Result<Vec<Entry>> {
            self.inner.entries(lo, hi)
        }
        fn term(&self, index: LogIndex) -> Result<Option<Term>> {
            self.inner.term(index)
        }
        fn first_index(&self) -> LogIndex {
            self.inner.first_index()
        }
        fn last_index(&self) -> LogIndex {
            self.inner.last_index()
        }
        fn truncate_after(&mut self, index: LogIndex) -> Result<()> {
            if self.fail {
                return Err(Error::Failed("injected truncation failure".into()));
            }
            self.inner.truncate_after(index)
        }
        fn discard_through(&mut self, index: LogIndex, term: Term) -> Result<()> {
            self.inner.discard_through(index, term)
        }
        fn start_sync(&mut self) -> Result<SyncJob> {
            self.inner.start_sync()
        }
    }

    #[test]
    fn a_failed_truncation_leaves_reads_served_from_the_storage() {
        let storage = FailingTruncate {
            inner: MemoryLog::new(),
            fail: true,
        };
        let mut log = RaftLog::new(storage, 0).unwrap();
        for _ in 0..5 {
            log.append_new(1, vec![7; 10]).unwrap();
        }
        // A leader of term 2 replaces entries 3.. ; the storage refuses.
        let err = log
            .append_from_leader(&[entry(3, 2), entry(4, 2)])
            .unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        let read = log.entries_limited(1, 5, usize::MAX).unwrap();
        assert_eq!(read, log.storage().entries(1, 6).unwrap());
        // Once the storage works again, so does the log.
        log.storage.fail = false;
        log.append_from_leader(&[entry(3, 2), entry(4, 2)]).unwrap();
        let read = log.entries_limited(1, 4, usize::MAX).unwrap();
        assert_eq!(read, log.storage().entries(1, 5).unwrap());
        assert_eq!(read[2].term, 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        New(usize),
        Duplicate(u64, u64),
        Conflict(u64, u64, usize),
        Compact(u64),
        InstallAhead,
        InstallWithin(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let size = prop_oneof![
            Just(0usize),
            Just(7),
            Just(300),
            Just(400_000),
            Just(900_000)
        ];
        prop_oneof![
            6 => size.clone().prop_map(Op::New),
            2 => (0..6u64, 1..5u64).prop_map(|(b, n)| Op::Duplicate(b, n)),
            2 => (0..6u64, 1..5u64, size).prop_map(|(b, n, z)| Op::Conflict(b, n, z)),
            1 => (0..20u64).prop_map(Op::Compact),
            1 => Just(Op::InstallAhead),
            1 => (0..8u64).prop_map(Op::InstallWithin),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever appends, truncations, compactions and installs ran, the
        /// log hands out exactly what its storage holds, from memory or not.
        #[test]
        fn reads_match_the_storage_whatever_is_remembered(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            let mut log = RaftLog::new(MemoryLog::new(), 0).unwrap();
            let mut term = 1;
            let mut stamp = 0u8;
            let mut data = |size: usize| {
                stamp = stamp.wrapping_add(1);
                vec![stamp; size]
            };
            for op in ops {
                let (first, last) = (log.first_index(), log.last_index());
                match op {
                    Op::New(size) => {
                        log.append_new(term, data(size)).unwrap();
                    }
                    Op::Duplicate(back, n) => {
                        let lo = last.saturating_sub(back).max(first);
                        let hi = (lo + n).min(last + 1);
                        if lo < hi {
                            let same = log.storage().entries(lo, hi).unwrap();
                            log.append_from_leader(&same).unwrap();
                        }
                    }
                    Op::Conflict(back, n, size) => {
                        term = term.max(log.last_term()) + 1;
                        let lo = (last + 1).saturating_sub(back).max(first).max(log.commit() + 1);
                        let theirs: Vec<Entry> = (lo..lo + n)
                            .map(|index| Entry { index, term, data: data(size) })
                            .collect();
                        log.append_from_leader(&theirs).unwrap();
                    }
                    Op::Compact(back) => {
                        log.commit_to(last);
                        log.sync().unwrap();
                        log.take_committed(usize::MAX).unwrap();
                        log.compact(last.saturating_sub(back)).unwrap();
                    }
                    Op::InstallAhead => {
                        term = term.max(log.last_term()) + 1;
                        log.install_snapshot(last + 3, term).unwrap();
                    }
                    Op::InstallWithin(back) => {
                        let index = last.saturating_sub(back).max(first);
                        if index <= last
                            && let Some(t) = log.term(index).unwrap()
                        {
                            log.install_snapshot(index, t).unwrap();
                        }
                    }
                }
                let (first, last) = (log.first_index(), log.last_index());
                let counted: usize = log.recent.iter().map(|e| e.data.len() + ENTRY_OVERHEAD).sum();
                proptest::prop_assert_eq!(log.recent_bytes, counted);
                proptest::prop_assert!(log.recent_bytes <= RECENT_BYTES);
                if let (Some(front), Some(back)) = (log.recent.front(), log.recent.back()) {
                    proptest::prop_assert!(front.index >= first);
                    proptest::prop_assert_eq!(back.index, last);
                }
                if first > 1 {
                    // Discarded entries are gone, remembered or not.
                    proptest::prop_assert!(log.entries_limited(first - 1, last, usize::MAX).is_err());
                }
                if first <= last {
                    let want = log.storage().entries(first, last + 1).unwrap();
                    proptest::prop_assert_eq!(
                        &log.entries_limited(first, last, usize::MAX).unwrap(),
                        &want
                    );
                    let mid = first + (last - first) / 2;
                    proptest::prop_assert_eq!(
                        &log.entries_limited(mid, last, usize::MAX).unwrap()[..],
                        &want[(mid - first) as usize..]
                    );
                    // A size limit stops at the same entry wherever it is read.
                    let limited = log.entries_limited(first, last, 1_000_000).unwrap();
                    proptest::prop_assert_eq!(&limited[..], &want[..limited.len()]);
                }
            }
        }
    }
}

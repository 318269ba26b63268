//! Storage traits and their backends.
//!
//! - [`LogStorage`]: the Raft log. Appends are buffered; [`LogStorage::sync`]
//!   makes everything appended so far durable, so the caller can batch many
//!   appends behind one sync (group commit). [`LogStorage::start_sync`]
//!   splits a sync in two: the storage captures what is to be made durable
//!   and hands back a [`SyncJob`] that waits for the disk, which may run on
//!   another thread while the log takes further appends.
//! - [`StateStorage`]: the current term and vote, saved atomically and durably.
//! - [`KvStorage`]: the store the key-value state machine applies to, with the
//!   index of the last applied entry kept consistent with the data.
//!
//! Each trait has an in-memory backend ([`memory`]) for tests and simulation,
//! which models durability honestly (unsynced writes can be lost by a
//! simulated crash), and a crash-safe file backend ([`mod@file`]).

use serde::{Deserialize, Serialize};

use crate::{Error, LogIndex, NodeId, Result, Term};

pub mod file;
pub mod memory;

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub index: LogIndex,
    pub term: Term,
    /// The command for the state machine. Empty for the no-op entry a new
    /// leader appends on election.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// The Raft log.
///
/// Indexes are contiguous: the log holds entries `first_index()..=last_index()`.
/// Entries before `first_index()` have been discarded (compacted into a
/// snapshot); the term of the last discarded entry is still known.
pub trait LogStorage: Send {
    /// Appends entries. `entries[0].index` must be `last_index() + 1` and the
    /// indexes contiguous. Appending does not imply syncing.
    fn append(&mut self, entries: &[Entry]) -> Result<()>;
    /// Returns the entries with indexes in `lo..hi`, which must lie within
    /// `first_index()..=last_index() + 1`.
    fn entries(&self, lo: LogIndex, hi: LogIndex) -> Result<Vec<Entry>>;
    /// The term of the entry at `index`. Returns the term of the last
    /// discarded entry for `first_index() - 1`, `Some(0)` for index 0, and
    /// `None` for indexes that are discarded further back or beyond the end.
    fn term(&self, index: LogIndex) -> Result<Option<Term>>;
    /// Index of the first entry held (1 for a log that discarded nothing).
    fn first_index(&self) -> LogIndex;
    /// Index of the last entry (or of the last discarded entry if the log is
    /// empty; 0 for a fresh log).
    fn last_index(&self) -> LogIndex;
    /// Removes every entry with an index greater than `index` (used when a
    /// follower's log conflicts with the leader's).
    fn truncate_after(&mut self, index: LogIndex) -> Result<()>;
    /// Discards every entry up to and including `index`, remembering `term`
    /// as the term at `index`. Used once a snapshot covers that prefix.
    /// If `index` is within the log, `term` must be its entry's term; past
    /// the end, the log becomes empty and continues after `index`.
    ///
    /// Past the end, the discard and every change before it are durable
    /// when it returns. Within the log, a store may make them durable a
    /// little later (the file log does so on a thread): a crash before then
    /// brings back discarded entries, which a snapshot covers anyway, and
    /// leaves the entries kept as durable as the last sync made them.
    fn discard_through(&mut self, index: LogIndex, term: Term) -> Result<()>;
    /// Starts making every change made so far durable and returns the job
    /// that finishes it. Those changes are durable once the job's
    /// [`SyncJob::run`] returns `Ok`; changes made after this call are not
    /// covered. The log may be read and changed while the job runs (on any
    /// thread). At most one job may be outstanding: run (or drop) it before
    /// calling this again. A job dropped without running leaves its changes
    /// counted as unsynced, so the next sync covers them.
    fn start_sync(&mut self) -> Result<SyncJob>;
    /// Makes every change made so far durable: [`start_sync`] and run the
    /// job at once.
    ///
    /// [`start_sync`]: LogStorage::start_sync
    fn sync(&mut self) -> Result<()> {
        self.start_sync()?.run()
    }
}

/// The waiting half of a log sync started by [`LogStorage::start_sync`].
#[must_use = "a sync job makes nothing durable until it runs"]
pub struct SyncJob(Option<Box<dyn FnOnce() -> Result<()> + Send>>);

impl SyncJob {
    /// A job with nothing left to do.
    pub fn done() -> Self {
        SyncJob(None)
    }

    /// A job that finishes by calling `finish`.
    pub fn new(finish: impl FnOnce() -> Result<()> + Send + 'static) -> Self {
        SyncJob(Some(Box::new(finish)))
    }

    /// Waits for the disk; on `Ok` every change captured when the job was
    /// made is durable.
    pub fn run(self) -> Result<()> {
        match self.0 {
            Some(finish) => finish(),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for SyncJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "SyncJob(pending)"
        } else {
            "SyncJob(done)"
        })
    }
}

/// Encodes a snapshot of a key-value store (see [`KvStorage::snapshot_job`]).
pub type SnapshotJob = Box<dyn FnOnce() -> Result<Vec<u8>> + Send>;

/// The persistent part of Raft's state besides the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
}

/// Stores [`HardState`] atomically and durably.
pub trait StateStorage: Send {
    /// The last state saved (the default state if none was ever saved).
    fn load(&self) -> Result<HardState>;
    /// Saves `state`; when this returns, it survives a crash.
    fn save(&mut self, state: &HardState) -> Result<()>;
}

/// One write applied to a [`KvStorage`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvWrite {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// The store the key-value state machine applies to.
///
/// `write` applies a batch and records the log index it came from as one
/// atomic step; `flush` makes everything written so far durable. After a
/// crash the store reopens at the state of some flush, data and applied index
/// agreeing, and the state machine replays the log from there.
pub trait KvStorage: Send {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// All pairs whose key starts with `prefix`, sorted by key.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Applies `batch` and sets the applied index to `applied`, atomically.
    fn write(&mut self, applied: LogIndex, batch: Vec<KvWrite>) -> Result<()>;
    /// The index of the last log entry whose writes are in the store.
    fn applied_index(&self) -> LogIndex;
    /// Makes all writes durable.
    fn flush(&mut self) -> Result<()>;
    /// Starts making the writes so far durable without waiting for the disk.
    /// They are durable once a later [`flush`](KvStorage::flush) returns; a
    /// failure of the background work is reported by the next call of either
    /// method. At most one background flush runs at a time: calling this
    /// while one runs may do nothing and return `false`; `true` says the
    /// writes so far are durable or on their way. The default flushes in
    /// the foreground.
    fn flush_background(&mut self) -> Result<bool> {
        self.flush().map(|()| true)
    }
    /// About how many bytes a flush writes (0 if unknown). The server spaces
    /// its flushes by it, so that their cost stays proportional to the
    /// writes applied.
    fn snapshot_bytes(&self) -> u64 {
        0
    }
    /// The applied index of the state a crash would reopen the store at, as
    /// far as the store knows without waiting (its last finished flush; a
    /// background flush found finished is collected, and its error, if any,
    /// logged and left to the next flush to retry). The log may discard
    /// entries through it. The default, 0, never lets it discard any.
    fn durable_index(&mut self) -> LogIndex {
        0
    }
    /// The store's whole content and applied index, encoded for
    /// [`KvStorage::install`] on another replica.
    fn snapshot(&self) -> Result<Vec<u8>> {
        Err(Error::Failed("this store cannot make snapshots".into()))
    }
    /// [`KvStorage::snapshot`] of the content as it is now, as a job that
    /// can run on another thread while the store changes. The default
    /// encodes right away; a store whose encoding is long should only
    /// capture its state here.
    fn snapshot_job(&self) -> Result<SnapshotJob> {
        let data = self.snapshot()?;
        Ok(Box::new(move || Ok(data)))
    }
    /// Replaces the store's whole content with a snapshot made by
    /// [`KvStorage::snapshot`] at applied index `index`, whose term is
    /// `term`, and makes it durable before returning. A malformed snapshot,
    /// or one of another index, is an error and changes nothing.
    fn install(&mut self, data: &[u8], index: LogIndex, term: Term) -> Result<()> {
        let _ = (data, index, term);
        Err(Error::Failed("this store cannot install snapshots".into()))
    }
    /// The applied index and its term, if the store's content is a snapshot
    /// installed with [`KvStorage::install`] and nothing was written since.
    /// This survives a crash, so a node that crashed between installing a
    /// snapshot and cutting its log can finish the cut when it restarts.
    fn installed(&self) -> Option<(LogIndex, Term)> {
        None
    }
}

impl<T: LogStorage + ?Sized> LogStorage for Box<T> {
    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        (**self).append(entries)
    }
    fn entries(&self, lo: LogIndex, hi: LogIndex) -> Result<Vec<Entry>> {
        (**self).entries(lo, hi)
    }
    fn term(&self, index: LogIndex) -> Result<Option<Term>> {
        (**self).term(index)
    }
    fn first_index(&self) -> LogIndex {
        (**self).first_index()
    }
    fn last_index(&self) -> LogIndex {
        (**self).last_index()
    }
    fn truncate_after(&mut self, index: LogIndex) -> Result<()> {
        (**self).truncate_after(index)
    }
    fn discard_through(&mut self, index: LogIndex, term: Term) -> Result<()> {
        (**self).discard_through(index, term)
    }
    fn start_sync(&mut self) -> Result<SyncJob> {
        (**self).start_sync()
    }
    fn sync(&mut self) -> Result<()> {
        (**self).sync()
    }
}

impl<T: StateStorage + ?Sized> StateStorage for Box<T> {
    fn load(&self) -> Result<HardState> {
        (**self).load()
    }
    fn save(&mut self, state: &HardState) -> Result<()> {
        (**self).save(state)
    }
}

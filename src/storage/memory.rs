//! In-memory storage backends for tests and the simulator.
//!
//! They model durability honestly: every backend keeps a *durable* image next
//! to its *current* one. `sync` / `save` / `flush` copy current to durable;
//! [`MemoryLog::crash`] (and the same on the other backends) throws away
//! everything that was not made durable, as a power loss would.
//!
//! The backends are cheap handles over shared state (`Clone` shares it), so a
//! test can keep a handle to a node's storage, crash it, and hand a clone to
//! the restarted node.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Entry, HardState, KvStorage, KvWrite, LogStorage, StateStorage, SyncJob};
use crate::{Error, LogIndex, Result, Term};

/// The log's content: entries after a discarded prefix ending at
/// `(prefix_index, prefix_term)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LogImage {
    prefix_index: LogIndex,
    prefix_term: Term,
    entries: Vec<Entry>,
}

impl LogImage {
    fn last_index(&self) -> LogIndex {
        self.prefix_index + self.entries.len() as LogIndex
    }
}

#[derive(Debug, Default)]
struct LogInner {
    current: LogImage,
    durable: LogImage,
    /// Discards so far. A discard makes everything durable, so a sync job
    /// captured before one has nothing left to do (and must not put back
    /// the image it captured).
    discards: u64,
    /// See [`MemoryLog::set_lazy_discards`].
    lazy_discards: bool,
}

/// In-memory [`LogStorage`].
#[derive(Clone, Debug, Default)]
pub struct MemoryLog {
    inner: Arc<Mutex<LogInner>>,
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loses every change made since the last `sync`.
    pub fn crash(&self) {
        let mut inner = self.lock();
        inner.current = inner.durable.clone();
    }

    /// Makes a discard within the log durable only with the next sync, as
    /// [`LogStorage::discard_through`] allows (a crash before it brings the
    /// discarded entries back). Discarding past the end stays durable at
    /// once. Off by default; the simulator turns it on for some seeds.
    pub fn set_lazy_discards(&self, lazy: bool) {
        self.lock().lazy_discards = lazy;
    }

    /// Whether discards within the log wait for the next sync.
    pub fn lazy_discards(&self) -> bool {
        self.lock().lazy_discards
    }

    /// Every entry currently held (durable or not), for checks.
    pub fn all_entries(&self) -> Vec<Entry> {
        self.lock().current.entries.clone()
    }
}

impl LogStorage for MemoryLog {
    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        let mut inner = self.lock();
        let first = inner.current.last_index() + 1;
        for (expected, e) in (first..).zip(entries) {
            if e.index != expected {
                return Err(Error::InvalidInput(format!(
                    "append of index {} where {expected} was expected",
                    e.index
                )));
            }
        }
        inner.current.entries.extend_from_slice(entries);
        Ok(())
    }

    fn entries(&self, lo: LogIndex, hi: LogIndex) -> Result<Vec<Entry>> {
        let inner = self.lock();
        let img = &inner.current;
        if lo > hi || lo <= img.prefix_index || hi > img.last_index() + 1 {
            return Err(Error::InvalidInput(format!(
                "entries {lo}..{hi} outside the log {}..={}",
                img.prefix_index + 1,
                img.last_index()
            )));
        }
        let start = (lo - img.prefix_index - 1) as usize;
        let end = (hi - img.prefix_index - 1) as usize;
        Ok(img.entries[start..end].to_vec())
    }

    fn term(&self, index: LogIndex) -> Result<Option<Term>> {
        let inner = self.lock();
        let img = &inner.current;
        if index == 0 {
            return Ok(Some(0));
        }
        if index == img.prefix_index {
            return Ok(Some(img.prefix_term));
        }
        if index < img.prefix_index || index > img.last_index() {
            return Ok(None);
        }
        Ok(Some(
            img.entries[(index - img.prefix_index - 1) as usize].term,
        ))
    }

    fn first_index(&self) -> LogIndex {
        self.lock().current.prefix_index + 1
    }

    fn last_index(&self) -> LogIndex {
        self.lock().current.last_index()
    }

    fn truncate_after(&mut self, index: LogIndex) -> Result<()> {
        let mut inner = self.lock();
        let img = &mut inner.current;
        if index < img.prefix_index {
            return Err(Error::InvalidInput(format!(
                "truncate after {index} reaches into the discarded prefix (through {})",
                img.prefix_index
            )));
        }
        let keep = (index - img.prefix_index) as usize;
        img.entries.truncate(keep);
        Ok(())
    }

    fn discard_through(&mut self, index: LogIndex, term: Term) -> Result<()> {
        let mut inner = self.lock();
        let img = &mut inner.current;
        if index <= img.prefix_index {
            return Ok(());
        }
        let within = index < img.last_index();
        if within {
            let drop = (index - img.prefix_index) as usize;
            img.entries.drain(..drop);
        } else {
            img.entries.clear();
        }
        img.prefix_index = index;
        img.prefix_term = term;
        if within && inner.lazy_discards {
            return Ok(());
        }
        // A discard leaves the whole log durable at once (the file log gets
        // there a little later, on a thread).
        inner.durable = inner.current.clone();
        inner.discards += 1;
        Ok(())
    }

    fn start_sync(&mut self) -> Result<SyncJob> {
        let (captured, discards) = {
            let inner = self.lock();
            (inner.current.clone(), inner.discards)
        };
        let inner = self.inner.clone();
        Ok(SyncJob::new(move || {
            let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
            if inner.discards == discards {
                inner.durable = captured;
            }
            Ok(())
        }))
    }
}

#[derive(Debug, Default)]
struct StateInner {
    current: HardState,
    durable: HardState,
}

/// In-memory [`StateStorage`]. `save` is durable at once, as the trait
/// requires; `crash` exists for symmetry and restores the saved state.
#[derive(Clone, Debug, Default)]
pub struct MemoryState {
    inner: Arc<Mutex<StateInner>>,
}

impl MemoryState {
    /// A fresh state (term 0, no vote).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, StateInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loses anything not durably saved (nothing, since `save` is durable).
    pub fn crash(&self) {
        let mut inner = self.lock();
        inner.current = inner.durable;
    }
}

impl StateStorage for MemoryState {
    fn load(&self) -> Result<HardState> {
        Ok(self.lock().current)
    }

    fn save(&mut self, state: &HardState) -> Result<()> {
        let mut inner = self.lock();
        inner.current = *state;
        inner.durable = *state;
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct KvImage {
    applied: LogIndex,
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The term of `applied` while the content is an installed snapshot.
    installed: Option<Term>,
}

#[derive(Debug, Default)]
struct KvInner {
    current: KvImage,
    durable: KvImage,
}

/// In-memory [`KvStorage`].
#[derive(Clone, Debug, Default)]
pub struct MemoryKv {
    inner: Arc<Mutex<KvInner>>,
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, KvInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loses every write made since the last `flush`.
    pub fn crash(&self) {
        let mut inner = self.lock();
        inner.current = inner.durable.clone();
    }
}

impl KvStorage for MemoryKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().current.data.get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let inner = self.lock();
        Ok(inner
            .current
            .data
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&mut self, applied: LogIndex, batch: Vec<KvWrite>) -> Result<()> {
        let mut inner = self.lock();
        for w in batch {
            match w {
                KvWrite::Put(k, v) => {
                    inner.current.data.insert(k, v);
                }
                KvWrite::Delete(k) => {
                    inner.current.data.remove(&k);
                }
            }
        }
        inner.current.applied = applied;
        inner.current.installed = None;
        Ok(())
    }

    fn applied_index(&self) -> LogIndex {
        self.lock().current.applied
    }

    fn flush(&mut self) -> Result<()> {
        let mut inner = self.lock();
        inner.durable = inner.current.clone();
        Ok(())
    }

    fn durable_index(&mut self) -> LogIndex {
        self.lock().durable.applied
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        let mut image = self.lock().current.clone();
        image.installed = None;
        Ok(crate::network::frame::encode(&image))
    }

    fn install(&mut self, data: &[u8], index: LogIndex, term: Term) -> Result<()> {
        let mut image: KvImage = crate::network::frame::decode(data)
            .map_err(|e| Error::InvalidInput(format!("malformed snapshot: {e}")))?;
        if image.applied != index {
            return Err(Error::InvalidInput(format!(
                "a snapshot said to hold the state through {index} holds it through {}",
                image.applied
            )));
        }
        image.installed = Some(term);
        let mut inner = self.lock();
        inner.current = image.clone();
        inner.durable = image;
        Ok(())
    }

    fn installed(&self) -> Option<(LogIndex, Term)> {
        let inner = self.lock();
        inner.current.installed.map(|t| (inner.current.applied, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: LogIndex, term: Term) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8],
        }
    }

    #[test]
    fn a_sync_job_started_before_a_discard_does_not_undo_it() {
        let mut log = MemoryLog::new();
        log.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        let job = log.start_sync().unwrap();
        log.append(&[entry(3, 1)]).unwrap();
        log.discard_through(2, 1).unwrap();
        // The job captured entries 1..=2 before the discard made 1..=3
        // durable; running it late must not put the old image back.
        job.run().unwrap();
        log.crash();
        assert_eq!((log.first_index(), log.last_index()), (3, 3));
        assert_eq!(log.all_entries(), vec![entry(3, 1)]);
    }

    #[test]
    fn log_append_truncate_discard_and_crash() {
        let mut log = MemoryLog::new();
        assert_eq!((log.first_index(), log.last_index()), (1, 0));
        assert_eq!(log.term(0).unwrap(), Some(0));
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 2)])
            .unwrap();
        assert!(log.append(&[entry(5, 2)]).is_err());
        log.sync().unwrap();
        log.append(&[entry(4, 2)]).unwrap();
        assert_eq!(log.term(4).unwrap(), Some(2));
        log.crash();
        assert_eq!(log.last_index(), 3);

        log.truncate_after(1).unwrap();
        assert_eq!(log.last_index(), 1);
        assert_eq!(log.term(2).unwrap(), None);
        log.append(&[entry(2, 3), entry(3, 3)]).unwrap();
        log.discard_through(2, 3).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (3, 3));
        assert_eq!(log.term(2).unwrap(), Some(3));
        assert_eq!(log.term(1).unwrap(), None);
        assert_eq!(log.entries(3, 4).unwrap(), vec![entry(3, 3)]);
        assert!(log.entries(2, 4).is_err());
        assert!(log.truncate_after(1).is_err());
        log.discard_through(10, 4).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (11, 10));
        assert_eq!(log.term(10).unwrap(), Some(4));
    }

    #[test]
    fn a_started_sync_covers_only_what_was_there_when_it_started() {
        let mut log = MemoryLog::new();
        log.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        let job = log.start_sync().unwrap();
        log.append(&[entry(3, 1)]).unwrap();
        job.run().unwrap();
        log.crash();
        assert_eq!(log.last_index(), 2, "entry 3 came after the sync started");

        log.append(&[entry(3, 1)]).unwrap();
        let job = log.start_sync().unwrap();
        drop(job);
        log.crash();
        assert_eq!(
            log.last_index(),
            2,
            "a job that never ran made nothing durable"
        );
    }

    #[test]
    fn kv_flush_and_crash() {
        let mut kv = MemoryKv::new();
        kv.write(1, vec![KvWrite::Put(b"a".to_vec(), b"1".to_vec())])
            .unwrap();
        kv.flush().unwrap();
        kv.write(
            2,
            vec![
                KvWrite::Put(b"ab".to_vec(), b"2".to_vec()),
                KvWrite::Delete(b"a".to_vec()),
            ],
        )
        .unwrap();
        assert_eq!(kv.get(b"a").unwrap(), None);
        assert_eq!(kv.scan_prefix(b"a").unwrap().len(), 1);
        kv.crash();
        assert_eq!(kv.applied_index(), 1);
        assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get(b"ab").unwrap(), None);
    }

    #[test]
    fn state_save_is_durable() {
        let mut st = MemoryState::new();
        assert_eq!(st.load().unwrap(), HardState::default());
        let hs = HardState {
            term: 3,
            vote: Some(2),
        };
        st.save(&hs).unwrap();
        st.crash();
        assert_eq!(st.load().unwrap(), hs);
    }
}

//! [`FileKv`]: the key-value store, held in memory and flushed as a snapshot.
//!
//! # File format
//!
//! All integers are little-endian.
//!
//! ```text
//!   0  magic      8 bytes  "KVAPPKVS"
//!   8  version    u32      2
//!   12 applied    u64      index of the last applied log entry
//!   20 installed  u64      term of that entry if the content is a snapshot
//!                          installed from the leader (nothing applied
//!                          since), else 0
//!   28 count      u64      number of pairs
//!   36 pairs      count x (key length u32, key, value length u32, value),
//!                 keys strictly ascending
//!   ...crc        u32      CRC-32 of everything before it
//! ```
//!
//! Version 1 files (no `installed` field, pairs at 28) are still read.
//! [`KvStorage::snapshot`] hands out the same encoding.
//!
//! # Invariants and costs
//!
//! - Memory holds the current state: the data and the applied index, which
//!   `write` changes together (it cannot fail half-way). The pairs live in
//!   a hash map, so a `get` or the overwrite of a key costs one hash lookup;
//!   the keys are also kept in an ordered set, which serves prefix scans
//!   and snapshots and changes only when a key comes or goes. (A `BTreeMap`
//!   of the pairs made every lookup about 30 key comparisons deep at 100 000
//!   keys, 13% of the leader's loop in a read benchmark.) The set holds each
//!   key's first 16 bytes inline, so placing a new key rarely leaves the
//!   tree's nodes (`cargo bench --bench kv_store`: inserts of new keys
//!   among a million +45%, deletes +68%).
//! - The file holds exactly the state of the last `flush`: a flush writes a
//!   full snapshot to `kv.snapshot.tmp`, syncs it, renames it over the file
//!   and syncs the directory, so data and applied index can never disagree on
//!   disk, and a crash leaves the previous or the new snapshot. Writes since
//!   the last flush are lost on a crash or a reopen; the state machine
//!   replays them from the log.
//! - A flush costs time proportional to the whole store (it rewrites all
//!   pairs), plus two fsyncs; a flush with nothing written since the last one
//!   is free. The owner should therefore flush periodically (every few
//!   thousand applied entries, and before compacting the log), not per write.
//!   Opening reads the file whole, briefly needing about twice its size in
//!   memory.
//! - `flush_background` moves the work off the caller's thread: the thread
//!   takes the hash map itself (it sits behind an `Arc`) and sorts the
//!   keys, encodes, writes, syncs and renames. Writes made meanwhile go to
//!   a second, small map that shadows the first; once the thread lets go,
//!   each write moves up to 16 of them into the big map. So starting a
//!   flush costs the caller nothing that grows with the store (copying the
//!   map's table instead cost 8 ms at 100 000 pairs and 95-110 ms at a
//!   million), and a write costs the same hash lookup as before. A
//!   snapshot job (`snapshot_job`) takes the map the same way. One flush
//!   runs at a time; `flush` and dropping the store wait for it.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use super::{
    Claim, PacedWriter, WRITE_BACK_CHUNK, check_checksummed, commit_tmp, corrupt_at, create_tmp,
    read_file, remove_stale_tmp, u32_at, u64_at,
};
use crate::storage::{KvStorage, KvWrite, SnapshotJob};
use crate::{Error, LogIndex, Result, Term};

const MAGIC: [u8; 8] = *b"KVAPPKVS";
const VERSION: u32 = 2;
const HEADER_LEN: usize = 36;
/// The header length of version 1, which had no `installed` field.
const HEADER_LEN_V1: usize = 28;

/// A crash-safe [`KvStorage`]: an in-memory map made durable by `flush`.
/// Open it with [`DataDir::kv`](super::DataDir::kv).
pub struct FileKv {
    path: PathBuf,
    data: Pairs,
    applied: LogIndex,
    /// Whether anything was written since the last flush.
    dirty: bool,
    /// The applied index of the last finished flush.
    durable: LogIndex,
    /// The term of `applied` while the content is an installed snapshot.
    installed: Option<Term>,
    /// A snapshot being written by a background thread, and its applied
    /// index.
    background: Option<(JoinHandle<Result<()>>, LogIndex)>,
    _claim: Claim,
}

impl fmt::Debug for FileKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileKv")
            .field("path", &self.path)
            .field("pairs", &self.data.len())
            .field("applied", &self.applied)
            .field("dirty", &self.dirty)
            .finish()
    }
}

impl FileKv {
    /// Opens the store at `path`; a missing file is an empty store at
    /// applied index 0.
    pub(super) fn open(path: &Path, claim: Claim) -> Result<FileKv> {
        remove_stale_tmp(path)?;
        let (applied, installed, data) = match read_file(path, u64::MAX)? {
            None => (0, None, Pairs::default()),
            Some(bytes) => decode(path, &bytes)?,
        };
        Ok(FileKv {
            path: path.to_path_buf(),
            data,
            applied,
            dirty: false,
            durable: applied,
            installed,
            background: None,
            _claim: claim,
        })
    }
}

/// Bytes a snapshot's checksum is taken over at a time.
const CRC_CHUNK: usize = 64 * 1024;

/// Writes a snapshot of `pairs` (in ascending key order) at `applied` to `w`.
fn write_snapshot<'a>(
    w: &mut impl Write,
    applied: LogIndex,
    installed: Option<Term>,
    pairs: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
) -> io::Result<()> {
    let mut summed = CrcWriter {
        inner: w,
        crc: crc32fast::Hasher::new(),
    };
    {
        // The checksum is taken over the buffer's large chunks: over each
        // small field on its own it cost more than the copy.
        let mut w = BufWriter::with_capacity(CRC_CHUNK, &mut summed);
        w.write_all(&MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&applied.to_le_bytes())?;
        w.write_all(&installed.unwrap_or(0).to_le_bytes())?;
        w.write_all(&(pairs.len() as u64).to_le_bytes())?;
        for (k, v) in pairs {
            w.write_all(&len_field(k)?)?;
            w.write_all(k)?;
            w.write_all(&len_field(v)?)?;
            w.write_all(v)?;
        }
        w.flush()?;
    }
    let crc = summed.crc.clone().finalize();
    summed.inner.write_all(&crc.to_le_bytes())?;
    summed.inner.flush()
}

/// Writes a snapshot to a tmp file next to `path`, syncs it and renames it
/// over `path`.
fn publish_snapshot<'a>(
    path: &Path,
    applied: LogIndex,
    installed: Option<Term>,
    pairs: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<()> {
    let (tmp, file) = create_tmp(path)?;
    // Written back as it goes, so the sync in `commit_tmp` does not put the
    // whole store in front of the log's syncs at once.
    let mut w = BufWriter::with_capacity(WRITE_BACK_CHUNK, PacedWriter::new(&file));
    if let Err(e) = write_snapshot(&mut w, applied, installed, pairs) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(format!("writing {}", tmp.display()), e));
    }
    drop(w);
    commit_tmp(&file, &tmp, path)
}

impl KvStorage for FileKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.data.get(key).map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .data
            .keys
            .range(OrderedKey::new(prefix.into())..)
            .map(|k| &k.key)
            .take_while(|k| k.starts_with(prefix))
            .map(|k| {
                let v = self
                    .data
                    .get(k)
                    .expect("the key set and the map hold the same keys");
                (k.to_vec(), v.to_vec())
            })
            .collect())
    }

    fn write(&mut self, applied: LogIndex, batch: Vec<KvWrite>) -> Result<()> {
        self.data.fold(FOLD_PER_WRITE);
        for w in batch {
            match w {
                KvWrite::Put(k, v) => {
                    self.data.insert(k, v);
                }
                KvWrite::Delete(k) => {
                    self.data.remove(&k);
                }
            }
        }
        self.applied = applied;
        self.installed = None;
        self.dirty = true;
        Ok(())
    }

    fn applied_index(&self) -> LogIndex {
        self.applied
    }

    fn snapshot_bytes(&self) -> u64 {
        HEADER_LEN as u64 + 4 + self.data.bytes + 8 * self.data.len() as u64
    }

    fn flush(&mut self) -> Result<()> {
        if let Err(e) = self.finish_background(true) {
            // The store is dirty again; the write below retries it.
            log::warn!("background snapshot of {} failed: {e}", self.path.display());
        }
        if !self.dirty {
            return Ok(());
        }
        publish_snapshot(&self.path, self.applied, self.installed, self.data.iter())?;
        self.dirty = false;
        self.durable = self.applied;
        Ok(())
    }

    /// Takes the store's hash map as it is (see [`Pairs::capture`]), then
    /// sorts, encodes, writes, syncs and renames the snapshot on a
    /// background thread. Skipped (returning `false`) while the previous
    /// background flush still runs.
    fn flush_background(&mut self) -> Result<bool> {
        if !self.finish_background(false)? {
            return Ok(false);
        }
        if !self.dirty {
            return Ok(true);
        }
        let pairs = self.data.capture();
        let applied = self.applied;
        let installed = self.installed;
        let path = self.path.clone();
        let handle = thread::Builder::new()
            .name("kv-flush".into())
            .spawn(move || publish_snapshot(&path, applied, installed, pairs.sorted()))
            .map_err(|e| Error::io("spawning the snapshot writer", e))?;
        self.background = Some((handle, applied));
        self.dirty = false;
        Ok(true)
    }

    fn durable_index(&mut self) -> LogIndex {
        if let Err(e) = self.finish_background(false) {
            log::warn!("background snapshot of {} failed: {e}", self.path.display());
        }
        self.durable
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.snapshot_bytes() as usize);
        write_snapshot(&mut out, self.applied, None, self.data.iter())
            .map_err(|e| Error::io("encoding a snapshot", e))?;
        Ok(out)
    }

    /// Takes the hash map as it is (see [`Pairs::capture`]); the job sorts
    /// and encodes, as a background flush does.
    fn snapshot_job(&self) -> Result<SnapshotJob> {
        let pairs = self.data.capture();
        let applied = self.applied;
        let capacity = self.snapshot_bytes() as usize;
        Ok(Box::new(move || {
            let mut out = Vec::with_capacity(capacity);
            write_snapshot(&mut out, applied, None, pairs.sorted())
                .map_err(|e| Error::io("encoding a snapshot", e))?;
            Ok(out)
        }))
    }

    fn install(&mut self, data: &[u8], index: LogIndex, term: Term) -> Result<()> {
        let (applied, _, pairs) = decode(Path::new("a received snapshot"), data)?;
        if applied != index {
            return Err(Error::InvalidInput(format!(
                "a snapshot said to hold the state through {index} holds it through {applied}"
            )));
        }
        // A background flush must not rename an older state over this one.
        if let Err(e) = self.finish_background(true) {
            log::warn!("background snapshot of {} failed: {e}", self.path.display());
        }
        publish_snapshot(&self.path, applied, Some(term), pairs.iter())?;
        self.data = pairs;
        self.applied = applied;
        self.installed = Some(term);
        self.durable = applied;
        self.dirty = false;
        Ok(())
    }

    fn installed(&self) -> Option<(LogIndex, Term)> {
        self.installed.map(|term| (self.applied, term))
    }
}

impl FileKv {
    /// Collects a finished background flush (waiting for it if `wait`) and
    /// returns its error. Returns whether no background flush is running
    /// any more. A failed one leaves the store dirty, so it is written again.
    fn finish_background(&mut self, wait: bool) -> Result<bool> {
        match &self.background {
            None => return Ok(true),
            Some((h, _)) if !wait && !h.is_finished() => return Ok(false),
            Some(_) => {}
        }
        let (handle, applied) = self.background.take().expect("checked above");
        let result = handle
            .join()
            .unwrap_or_else(|_| Err(Error::Failed("the snapshot writer panicked".into())));
        match &result {
            Ok(()) => self.durable = self.durable.max(applied),
            Err(_) => self.dirty = true,
        }
        result.map(|()| true)
    }
}

impl Drop for FileKv {
    /// Waits for a background flush, so the directory lock outlives it.
    fn drop(&mut self) {
        if let Err(e) = self.finish_background(true) {
            log::warn!("background snapshot of {} failed: {e}", self.path.display());
        }
    }
}

/// A writer that checksums what goes through it.
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn len_field(bytes: &[u8]) -> io::Result<[u8; 4]> {
    u32::try_from(bytes.len())
        .map(u32::to_le_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "key or value over 4 GiB"))
}

/// A key or value, shared between the store and a background flush.
type Bytes = Arc<[u8]>;

/// A key in the ordered set, with its first 16 bytes (zero-padded) kept
/// inline as a big-endian number. Comparing the numbers orders two keys
/// the same way comparing their bytes does whenever the numbers differ (a
/// zero byte of padding only ties with a real zero byte, and the full
/// comparison settles ties), so most comparisons of a search touch only
/// the tree's own node. Comparing the shared allocations instead cost a
/// cache miss per comparison: about 17 of them to place a new key among
/// 100 000.
#[derive(Clone)]
struct OrderedKey {
    head: u128,
    key: Bytes,
}

impl OrderedKey {
    fn new(key: Bytes) -> Self {
        OrderedKey {
            head: key_head(&key),
            key,
        }
    }
}

/// The first 16 bytes of `key` as a big-endian number, zero-padded: keys
/// whose heads differ compare as their heads do, and keys with equal heads
/// need a full comparison.
fn key_head(key: &[u8]) -> u128 {
    let mut head = [0u8; 16];
    let n = key.len().min(16);
    head[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(head)
}

impl PartialEq for OrderedKey {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head && self.key == other.key
    }
}

impl Eq for OrderedKey {}

impl PartialOrd for OrderedKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.head
            .cmp(&other.head)
            .then_with(|| self.key.cmp(&other.key))
    }
}

/// How many of the writes made while the hash map was held [`Pairs::fold`]
/// moves into it per call of `write` (the state machine writes each entry
/// in one call). Writes made meanwhile go straight to the map, so the
/// backlog only shrinks.
const FOLD_PER_WRITE: usize = 16;

/// The key-value pairs: a hash map for point access, and the set of keys
/// in order for scans and snapshots. Both always hold the same keys (the
/// same allocations).
///
/// A background flush or snapshot job takes the hash map itself (a
/// reference count, see [`Pairs::capture`]) instead of a copy. While one
/// holds it, writes go to `newer`, which shadows it; once the map is free
/// again, [`Pairs::fold`] moves them in a bounded number at a time.
#[derive(Default)]
struct Pairs {
    base: Arc<HashMap<Bytes, Bytes>>,
    /// Writes made while `base` was held: a key's value, or `None` for a
    /// key removed that `base` still holds.
    newer: HashMap<Bytes, Option<Bytes>>,
    /// The keys `newer` took in; [`Pairs::fold`] works through them (a key
    /// may be listed twice, or be gone from `newer`).
    to_fold: Vec<Bytes>,
    keys: BTreeSet<OrderedKey>,
    /// Total length of all keys and values.
    bytes: u64,
}

/// The pairs as they were when a flush or snapshot job took them.
struct Captured {
    base: Arc<HashMap<Bytes, Bytes>>,
    newer: HashMap<Bytes, Option<Bytes>>,
}

impl Captured {
    /// The pairs in ascending key order. Each is sorted by its key's head
    /// (see [`key_head`]) held next to it, so most comparisons do not
    /// follow a pointer to the key: at a million keys the sort takes
    /// 67-104 ms instead of 451-505 ms, and the whole snapshot job
    /// (`cargo bench --bench kv_store`) 0.66-0.77 s instead of 0.97-1.01 s.
    fn sorted(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> {
        let mut pairs: Vec<(u128, &[u8], &[u8])> = self
            .base
            .iter()
            .filter(|(k, _)| !self.newer.contains_key(*k))
            .chain(
                self.newer
                    .iter()
                    .filter_map(|(k, v)| Some((k, v.as_ref()?))),
            )
            .map(|(k, v)| (key_head(k), &k[..], &v[..]))
            .collect();
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        pairs.into_iter().map(|(_, k, v)| (k, v))
    }
}

impl Pairs {
    fn get(&self, key: &[u8]) -> Option<&Bytes> {
        if !self.newer.is_empty()
            && let Some(v) = self.newer.get(key)
        {
            return v.as_ref();
        }
        self.base.get(key)
    }

    /// The key's own allocation, if the key is held.
    fn shared_key(&self, key: &[u8]) -> Option<Bytes> {
        match self.newer.get_key_value(key) {
            Some((k, _)) => Some(k.clone()),
            None => self.base.get_key_value(key).map(|(k, _)| k.clone()),
        }
    }

    /// The hash map, if no flush or job holds it, with `key`'s entry of
    /// `newer` (if any) moved into it.
    fn own_base<'a>(
        base: &'a mut Arc<HashMap<Bytes, Bytes>>,
        newer: &mut HashMap<Bytes, Option<Bytes>>,
        key: &[u8],
    ) -> Option<&'a mut HashMap<Bytes, Bytes>> {
        let base = Arc::get_mut(base)?;
        if !newer.is_empty()
            && let Some((k, v)) = newer.remove_entry(key)
        {
            match v {
                Some(v) => base.insert(k, v),
                None => base.remove(&k),
            };
        }
        Some(base)
    }

    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        let value: Bytes = value.into();
        if let Some(base) = Self::own_base(&mut self.base, &mut self.newer, &key) {
            match base.get_mut(&key[..]) {
                Some(slot) => {
                    self.bytes = self.bytes - slot.len() as u64 + value.len() as u64;
                    *slot = value;
                }
                None => {
                    let key: Bytes = key.into();
                    self.bytes += (key.len() + value.len()) as u64;
                    self.keys.insert(OrderedKey::new(key.clone()));
                    base.insert(key, value);
                }
            }
            return;
        }
        let key = match self.get(&key).map(|v| v.len()) {
            Some(old) => {
                self.bytes = self.bytes - old as u64 + value.len() as u64;
                self.shared_key(&key).expect("held above")
            }
            None => {
                self.bytes += (key.len() + value.len()) as u64;
                // A key removed while the map was held keeps its allocation
                // in `newer`.
                let key = self.shared_key(&key).unwrap_or_else(|| key.into());
                self.keys.insert(OrderedKey::new(key.clone()));
                key
            }
        };
        self.shadow(key, Some(value));
    }

    /// Records a write made while the hash map is held.
    fn shadow(&mut self, key: Bytes, value: Option<Bytes>) {
        if self.newer.capacity() == 0 {
            // Room for writes to an eighth of the keys from the start: each
            // doubling of a large map rehashes all of it in one write.
            self.newer.reserve(self.keys.len() / 8);
        }
        if let Some(slot) = self.newer.get_mut(&key) {
            *slot = value;
        } else {
            self.to_fold.push(key.clone());
            self.newer.insert(key, value);
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(base) = Self::own_base(&mut self.base, &mut self.newer, key) {
            if let Some((key, value)) = base.remove_entry(key) {
                self.bytes -= (key.len() + value.len()) as u64;
                self.keys.remove(&OrderedKey::new(key));
            }
            return;
        }
        let Some(old) = self.get(key).map(|v| v.len()) else {
            return;
        };
        self.bytes -= (key.len() + old) as u64;
        let shared = self.shared_key(key).expect("held above");
        self.keys.remove(&OrderedKey::new(shared.clone()));
        if self.base.contains_key(key) {
            self.shadow(shared, None);
        } else {
            self.newer.remove(key);
        }
    }

    /// Moves up to `max` writes of `newer` into the hash map, if no flush or
    /// job holds it any more.
    fn fold(&mut self, max: usize) {
        if self.newer.is_empty() {
            // Writes that went straight to the map, or removed keys only
            // `newer` held, can leave listings behind.
            self.to_fold.clear();
            return;
        }
        let Some(base) = Arc::get_mut(&mut self.base) else {
            return;
        };
        for _ in 0..max {
            let Some(key) = self.to_fold.pop() else {
                break;
            };
            // Gone if a later write moved it in, or removed a key only
            // `newer` held.
            if let Some((key, v)) = self.newer.remove_entry(&key) {
                match v {
                    Some(v) => base.insert(key, v),
                    None => base.remove(&key),
                };
            }
        }
        if self.newer.is_empty() {
            // Both keep their capacity for the next flush: growing a map of
            // a hundred thousand writes again (rehashing it at each
            // doubling) stopped the loop for milliseconds at a time.
            self.to_fold.clear();
        }
    }

    /// The pairs as they are now, for a thread to write out: the hash map
    /// itself, and a copy of the writes that shadow it (none, unless the
    /// map is held or the writes made while it was are not all folded in).
    fn capture(&self) -> Captured {
        Captured {
            base: Arc::clone(&self.base),
            // (An empty map may hold a large table for the next backlog.)
            newer: if self.newer.is_empty() {
                HashMap::new()
            } else {
                self.newer.clone()
            },
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// The pairs in ascending key order.
    fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> {
        self.keys.iter().map(|OrderedKey { key: k, .. }| {
            let v = self
                .get(k)
                .expect("the key set and the map hold the same keys");
            (&k[..], &v[..])
        })
    }

    /// The greatest key held.
    fn last_key(&self) -> Option<&[u8]> {
        self.keys.last().map(|k| &k.key[..])
    }
}

/// Decodes a snapshot: its applied index, the term recorded for it if it
/// was installed, and its pairs.
fn decode(path: &Path, b: &[u8]) -> Result<(LogIndex, Option<Term>, Pairs)> {
    // Version 1 is still read; any other version is refused by the check.
    let version = if b.len() >= 12 && u32_at(b, 8) == 1 {
        1
    } else {
        VERSION
    };
    let header_len = if version == 1 {
        HEADER_LEN_V1
    } else {
        HEADER_LEN
    };
    let body_end = check_checksummed(
        path,
        b,
        &MAGIC,
        "kvapp-c key-value snapshot",
        version,
        header_len,
    )?;
    let corrupt = |offset: usize, reason: String| corrupt_at(path, offset, reason);
    let applied = u64_at(b, 12);
    let (installed, count) = if version == 1 {
        (0, u64_at(b, 20))
    } else {
        (u64_at(b, 20), u64_at(b, 28))
    };
    let installed = (installed != 0).then_some(installed);
    let mut data = Pairs::default();
    let mut at = header_len;
    // Reads a length-prefixed byte string at `at`.
    let field = |at: &mut usize, what: &str| -> Result<Vec<u8>> {
        if body_end - *at < 4 {
            return Err(corrupt(*at, format!("{what} length runs past the end")));
        }
        let len = u32_at(b, *at) as usize;
        if body_end - *at - 4 < len {
            return Err(corrupt(
                *at,
                format!("{what} of {len} bytes runs past the end"),
            ));
        }
        let bytes = b[*at + 4..*at + 4 + len].to_vec();
        *at += 4 + len;
        Ok(bytes)
    };
    for _ in 0..count {
        let key_at = at;
        let key = field(&mut at, "key")?;
        let value = field(&mut at, "value")?;
        if data.last_key().is_some_and(|last| *last >= key[..]) {
            return Err(corrupt(key_at, "keys out of order".into()));
        }
        data.insert(key, value);
    }
    if at != body_end {
        return Err(corrupt(
            at,
            format!("{} unexpected bytes after the pairs", body_end - at),
        ));
    }
    Ok((applied, installed, data))
}

#[cfg(test)]
mod tests {
    use super::OrderedKey;
    use proptest::prelude::*;

    /// Bytes that make the inline head tie or differ at its edges: zeros
    /// (the padding's value), ones and 0xff, at lengths on both sides of 16.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xffu8)], 0..20)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn ordered_keys_compare_as_their_bytes(a in key(), b in key()) {
            let (x, y) = (OrderedKey::new(a.clone().into()), OrderedKey::new(b.clone().into()));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(x == y, a == b);
        }
    }

    #[test]
    fn padding_ties_are_settled_by_the_bytes() {
        let keys: [&[u8]; 6] = [
            b"a",
            b"a\0",
            b"a\0\0",
            b"aaaaaaaaaaaaaaaa",
            b"aaaaaaaaaaaaaaaa\0",
            b"aaaaaaaaaaaaaaaa\x01",
        ];
        for a in keys {
            for b in keys {
                let (x, y) = (OrderedKey::new(a.into()), OrderedKey::new(b.into()));
                assert_eq!(x.cmp(&y), a.cmp(b), "{a:?} against {b:?}");
            }
        }
    }
}

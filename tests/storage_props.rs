//! Model-based property tests run against both storage backends.
//!
//! Random sequences of operations are applied to a backend and to a plain
//! model (a `Vec` of entries, a `BTreeMap`), and every observable result is
//! compared after every step. Restarts and crashes are part of the
//! sequences:
//!
//! - a *restart* is a clean stop and reopen: nothing is lost (the file log
//!   hands buffered appends to the OS when dropped);
//! - a *crash* is a power loss: everything not made durable by the last
//!   `sync` (log) or `flush` (KV) is lost. The memory backends model it with
//!   `crash()`; the file backends are dropped and reopened on the durable
//!   image, i.e. the log file as it was when the last `sync` returned.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kvapp_c::storage::file::{DataDir, FileKv, FileLog, FileState};
use kvapp_c::storage::memory::{MemoryKv, MemoryLog, MemoryState};
use kvapp_c::storage::{Entry, HardState, KvStorage, KvWrite, LogStorage, StateStorage};
use kvapp_c::{LogIndex, Term};
use proptest::prelude::*;
use tempfile::TempDir;

/// Number of cases per property: `PROPTEST_CASES` if set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------- the log

/// The reference log.
#[derive(Clone, Debug, Default, PartialEq)]
struct LogModel {
    prefix_index: LogIndex,
    prefix_term: Term,
    entries: Vec<Entry>,
}

impl LogModel {
    fn first_index(&self) -> LogIndex {
        self.prefix_index + 1
    }

    fn last_index(&self) -> LogIndex {
        self.prefix_index + self.entries.len() as LogIndex
    }

    fn last_term(&self) -> Term {
        self.entries.last().map_or(self.prefix_term, |e| e.term)
    }

    fn term(&self, index: LogIndex) -> Option<Term> {
        if index == 0 {
            Some(0)
        } else if index == self.prefix_index {
            Some(self.prefix_term)
        } else if index < self.prefix_index || index > self.last_index() {
            None
        } else {
            Some(self.entries[(index - self.prefix_index - 1) as usize].term)
        }
    }
}

/// Deterministic entry data, different for each index, term and length.
fn data(index: LogIndex, term: Term, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (index as usize * 7 + term as usize * 13 + j) as u8)
        .collect()
}

#[derive(Clone, Debug)]
enum LogOp {
    /// Append `n` entries at the end, the term raised by `bump`.
    Append {
        n: usize,
        bump: u64,
        len: usize,
    },
    /// Append one entry leaving a gap: must fail and change nothing.
    AppendGap,
    /// Truncate after `last_index - back` (may reach into the discarded
    /// prefix, which must fail).
    TruncateAfter {
        back: u64,
    },
    /// Discard through `first_index - 1 + pick` (a no-op, inside the log or
    /// beyond its end).
    DiscardThrough {
        pick: u64,
    },
    Sync,
    Restart,
    Crash,
}

fn log_op() -> impl Strategy<Value = LogOp> {
    let len = prop_oneof![9 => 0usize..200, 1 => 40_000usize..120_000];
    prop_oneof![
        8 => (0usize..5, 0u64..2, len).prop_map(|(n, bump, len)| LogOp::Append { n, bump, len }),
        1 => Just(LogOp::AppendGap),
        2 => (0u64..8).prop_map(|back| LogOp::TruncateAfter { back }),
        2 => (0u64..12).prop_map(|pick| LogOp::DiscardThrough { pick }),
        3 => Just(LogOp::Sync),
        1 => Just(LogOp::Restart),
        2 => Just(LogOp::Crash),
    ]
}

/// A log backend plus what it takes to restart it or crash it.
trait LogHarness {
    type Log: LogStorage;
    fn log(&mut self) -> &mut Self::Log;
    /// Called after each successful `sync`.
    fn synced(&mut self);
    /// Waits until a discard is on disk (the file log moves its start on a
    /// thread).
    fn settle(&mut self) {}
    /// Whether a discard within the log waits for the next sync.
    fn lazy_discards(&self) -> bool {
        false
    }
    fn restart(&mut self);
    fn crash(&mut self);
}

struct MemoryLogHarness(MemoryLog);

impl LogHarness for MemoryLogHarness {
    type Log = MemoryLog;
    fn log(&mut self) -> &mut MemoryLog {
        &mut self.0
    }
    fn synced(&mut self) {}
    fn lazy_discards(&self) -> bool {
        self.0.lazy_discards()
    }
    fn restart(&mut self) {
        // A restarted node gets a handle on the same storage.
        self.0 = self.0.clone();
    }
    fn crash(&mut self) {
        self.0.crash();
    }
}

struct FileLogHarness {
    dir: TempDir,
    log: Option<FileLog>,
    /// The log file's bytes when the last sync returned.
    durable: Vec<u8>,
}

impl FileLogHarness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DataDir::open(dir.path())
            .and_then(|d| d.log())
            .expect("open log");
        let mut h = FileLogHarness {
            dir,
            log: Some(log),
            durable: Vec::new(),
        };
        h.synced();
        h
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join(DataDir::LOG_FILE)
    }

    fn reopen(&mut self) {
        self.log = Some(
            DataDir::open(self.dir.path())
                .and_then(|d| d.log())
                .expect("reopen log"),
        );
    }
}

impl LogHarness for FileLogHarness {
    type Log = FileLog;
    fn log(&mut self) -> &mut FileLog {
        self.log.as_mut().expect("log is open")
    }
    fn synced(&mut self) {
        self.durable = std::fs::read(self.path()).expect("read log file");
    }
    fn settle(&mut self) {
        self.log().wait_for_discard();
    }
    fn restart(&mut self) {
        self.log = None;
        self.reopen();
    }
    fn crash(&mut self) {
        self.log = None;
        std::fs::write(self.path(), &self.durable).expect("restore durable image");
        self.reopen();
    }
}

/// Compares every observable of `log` with `m`.
fn check_log(log: &impl LogStorage, m: &LogModel) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.first_index(), m.first_index());
    prop_assert_eq!(log.last_index(), m.last_index());
    for i in 0..=m.last_index() + 2 {
        prop_assert_eq!(log.term(i).unwrap(), m.term(i), "term({})", i);
    }
    let all = log.entries(m.first_index(), m.last_index() + 1).unwrap();
    prop_assert_eq!(&all, &m.entries);
    for (k, e) in m.entries.iter().enumerate() {
        let i = e.index;
        prop_assert_eq!(&log.entries(i, i + 1).unwrap()[..], std::slice::from_ref(e));
        // A suffix starting here, to cover ranges that start mid-log.
        if k % 3 == 0 {
            prop_assert_eq!(
                &log.entries(i, m.last_index() + 1).unwrap()[..],
                &m.entries[k..]
            );
        }
    }
    prop_assert!(
        log.entries(m.first_index(), m.first_index())
            .unwrap()
            .is_empty()
    );
    prop_assert!(log.entries(m.prefix_index, m.last_index() + 1).is_err());
    prop_assert!(log.entries(m.first_index(), m.last_index() + 2).is_err());
    Ok(())
}

fn run_log<H: LogHarness>(h: &mut H, ops: &[LogOp]) -> Result<(), TestCaseError> {
    let mut m = LogModel::default();
    let mut durable = m.clone();
    check_log(h.log(), &m)?;
    for op in ops {
        match *op {
            LogOp::Append { n, bump, len } => {
                let term = m.last_term() + bump;
                let first = m.last_index() + 1;
                let batch: Vec<Entry> = (first..first + n as u64)
                    .map(|index| Entry {
                        index,
                        term,
                        data: data(index, term, len),
                    })
                    .collect();
                h.log().append(&batch).unwrap();
                m.entries.extend(batch);
            }
            LogOp::AppendGap => {
                let index = m.last_index() + 2;
                let gap = Entry {
                    index,
                    term: m.last_term(),
                    data: vec![1],
                };
                prop_assert!(h.log().append(&[gap]).is_err());
            }
            LogOp::TruncateAfter { back } => {
                let index = m.last_index().saturating_sub(back);
                let result = h.log().truncate_after(index);
                if index < m.prefix_index {
                    prop_assert!(result.is_err());
                } else {
                    result.unwrap();
                    m.entries.truncate((index - m.prefix_index) as usize);
                }
            }
            LogOp::DiscardThrough { pick } => {
                let index = m.prefix_index + pick;
                let term = m.term(index).unwrap_or(m.last_term() + 1);
                h.log().discard_through(index, term).unwrap();
                h.settle();
                if index > m.prefix_index {
                    let within = index < m.last_index();
                    let drop = (index.min(m.last_index()) - m.prefix_index) as usize;
                    m.entries.drain(..drop);
                    m.prefix_index = index;
                    m.prefix_term = term;
                    // A discard makes the whole log durable first (a synced
                    // file behind a synced start pointer, or a synced fresh
                    // file), once its disk part is done; a lazy one within
                    // the log only with the next sync.
                    if !(within && h.lazy_discards()) {
                        h.synced();
                        durable = m.clone();
                    }
                }
            }
            LogOp::Sync => {
                h.log().sync().unwrap();
                h.synced();
                durable = m.clone();
            }
            LogOp::Restart => h.restart(),
            LogOp::Crash => {
                h.crash();
                m = durable.clone();
            }
        }
        check_log(h.log(), &m)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(128)))]

    #[test]
    fn memory_log_matches_model(ops in prop::collection::vec(log_op(), 1..60)) {
        run_log(&mut MemoryLogHarness(MemoryLog::new()), &ops)?;
    }

    /// As the simulator runs it for some seeds: a crash can undo a discard
    /// within the log that no sync followed.
    #[test]
    fn memory_log_with_lazy_discards_matches_model(ops in prop::collection::vec(log_op(), 1..60)) {
        let log = MemoryLog::new();
        log.set_lazy_discards(true);
        run_log(&mut MemoryLogHarness(log), &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(48)))]

    #[test]
    fn file_log_matches_model(ops in prop::collection::vec(log_op(), 1..60)) {
        run_log(&mut FileLogHarness::new(), &ops)?;
    }
}

// ---------------------------------------------------------------- the KV store

/// Keys sharing prefixes, so scans have something to tell apart.
// Keys with zero bytes and keys around 16 bytes long: the file store keeps
// the first 16 bytes of each key inline, zero-padded, to order them.
const KEYS: [&[u8]; 11] = [
    b"",
    b"a",
    b"a\0",
    b"ab",
    b"abc",
    b"b",
    b"ba",
    b"\xff",
    b"aaaaaaaaaaaaaaaa",
    b"aaaaaaaaaaaaaaaa\0",
    b"aaaaaaaaaaaaaaaab",
];
const PREFIXES: [&[u8]; 8] = [
    b"",
    b"a",
    b"a\0",
    b"ab",
    b"b",
    b"\xff",
    b"z",
    b"aaaaaaaaaaaaaaaa",
];

#[derive(Clone, Debug)]
enum KvOp {
    /// Apply a batch of (key, value or delete) at `applied + advance`.
    Write {
        advance: u64,
        batch: Vec<(usize, Option<Vec<u8>>)>,
    },
    Flush,
    /// Start a background flush (the file store writes it on a thread,
    /// holding its map meanwhile).
    FlushBackground,
    /// Take a snapshot job and hold it (unrun) while writes go on.
    Capture,
    /// Run the oldest held job: it must encode the state of its capture.
    RunJob,
    Crash,
}

fn kv_op() -> impl Strategy<Value = KvOp> {
    let write = (
        0u64..3,
        prop::collection::vec(
            (
                0..KEYS.len(),
                prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
            ),
            0..5,
        ),
    )
        .prop_map(|(advance, batch)| KvOp::Write { advance, batch });
    prop_oneof![
        6 => write,
        2 => Just(KvOp::Flush),
        1 => Just(KvOp::FlushBackground),
        1 => Just(KvOp::Capture),
        1 => Just(KvOp::RunJob),
        1 => Just(KvOp::Crash),
    ]
}

#[derive(Clone, Debug, Default)]
struct KvModel {
    applied: LogIndex,
    data: BTreeMap<Vec<u8>, Vec<u8>>,
}

trait KvHarness {
    type Kv: KvStorage;
    fn kv(&mut self) -> &mut Self::Kv;
    fn crash(&mut self);
    /// Installs `snapshot` into a new, empty store and checks it against `m`.
    fn check_install(snapshot: &[u8], m: &KvModel) -> Result<(), TestCaseError>;
}

struct MemoryKvHarness(MemoryKv);

impl KvHarness for MemoryKvHarness {
    type Kv = MemoryKv;
    fn kv(&mut self) -> &mut MemoryKv {
        &mut self.0
    }
    fn crash(&mut self) {
        self.0.crash();
    }
    fn check_install(snapshot: &[u8], m: &KvModel) -> Result<(), TestCaseError> {
        let mut kv = MemoryKv::new();
        kv.install(snapshot, m.applied, 1).unwrap();
        check_kv(&kv, m)
    }
}

struct FileKvHarness {
    dir: TempDir,
    kv: Option<FileKv>,
}

impl FileKvHarness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = DataDir::open(dir.path())
            .and_then(|d| d.kv())
            .expect("open kv");
        FileKvHarness { dir, kv: Some(kv) }
    }
}

impl KvHarness for FileKvHarness {
    type Kv = FileKv;
    fn kv(&mut self) -> &mut FileKv {
        self.kv.as_mut().expect("kv is open")
    }
    /// Reopening loses what was not flushed, exactly like a power loss.
    fn crash(&mut self) {
        self.kv = None;
        self.kv = Some(
            DataDir::open(self.dir.path())
                .and_then(|d| d.kv())
                .expect("reopen kv"),
        );
    }
    fn check_install(snapshot: &[u8], m: &KvModel) -> Result<(), TestCaseError> {
        let mut h = FileKvHarness::new();
        h.kv().install(snapshot, m.applied, 1).unwrap();
        check_kv(h.kv(), m)
    }
}

fn check_kv(kv: &impl KvStorage, m: &KvModel) -> Result<(), TestCaseError> {
    prop_assert_eq!(kv.applied_index(), m.applied);
    for key in KEYS {
        prop_assert_eq!(kv.get(key).unwrap(), m.data.get(key).cloned());
    }
    for prefix in PREFIXES {
        let expected: Vec<(Vec<u8>, Vec<u8>)> = m
            .data
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        prop_assert_eq!(kv.scan_prefix(prefix).unwrap(), expected);
    }
    Ok(())
}

fn run_kv<H: KvHarness>(h: &mut H, ops: &[KvOp]) -> Result<(), TestCaseError> {
    let mut m = KvModel::default();
    let mut durable = m.clone();
    // Snapshot jobs taken and not run yet, with the state they captured and
    // the length the store predicted for it.
    let mut jobs = std::collections::VecDeque::new();
    for op in ops {
        match op {
            KvOp::Write { advance, batch } => {
                let applied = m.applied + advance;
                let writes = batch
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => KvWrite::Put(KEYS[*k].to_vec(), v.clone()),
                        None => KvWrite::Delete(KEYS[*k].to_vec()),
                    })
                    .collect();
                h.kv().write(applied, writes).unwrap();
                for (k, v) in batch {
                    match v {
                        Some(v) => m.data.insert(KEYS[*k].to_vec(), v.clone()),
                        None => m.data.remove(KEYS[*k]),
                    };
                }
                m.applied = applied;
            }
            KvOp::Flush => {
                h.kv().flush().unwrap();
                durable = m.clone();
            }
            KvOp::FlushBackground => {
                // Skipped while the last one runs; dropping the store waits
                // for a running one, so a crash cannot lose it.
                if h.kv().flush_background().unwrap() {
                    durable = m.clone();
                }
            }
            KvOp::Capture => {
                let job = h.kv().snapshot_job().unwrap();
                jobs.push_back((job, m.clone(), h.kv().snapshot_bytes()));
            }
            KvOp::RunJob => {
                if let Some((job, captured, predicted)) = jobs.pop_front() {
                    let data = job().unwrap();
                    if predicted != 0 {
                        prop_assert_eq!(data.len() as u64, predicted);
                    }
                    H::check_install(&data, &captured)?;
                }
            }
            KvOp::Crash => {
                h.crash();
                m = durable.clone();
            }
        }
        check_kv(h.kv(), &m)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(128)))]

    #[test]
    fn memory_kv_matches_model(ops in prop::collection::vec(kv_op(), 1..40)) {
        run_kv(&mut MemoryKvHarness(MemoryKv::new()), &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(48)))]

    #[test]
    fn file_kv_matches_model(ops in prop::collection::vec(kv_op(), 1..40)) {
        run_kv(&mut FileKvHarness::new(), &ops)?;
    }
}

// ---------------------------------------------------------------- term and vote

#[derive(Clone, Debug)]
enum StateOp {
    Save(Term, Option<u64>),
    Crash,
}

fn state_op() -> impl Strategy<Value = StateOp> {
    prop_oneof![
        3 => (0u64..4, prop::option::of(0u64..4)).prop_map(|(t, v)| StateOp::Save(t, v)),
        1 => Just(StateOp::Crash),
    ]
}

trait StateHarness {
    type State: StateStorage;
    fn state(&mut self) -> &mut Self::State;
    fn crash(&mut self);
}

struct MemoryStateHarness(MemoryState);

impl StateHarness for MemoryStateHarness {
    type State = MemoryState;
    fn state(&mut self) -> &mut MemoryState {
        &mut self.0
    }
    fn crash(&mut self) {
        self.0.crash();
    }
}

struct FileStateHarness {
    dir: TempDir,
    state: Option<FileState>,
}

impl StateHarness for FileStateHarness {
    type State = FileState;
    fn state(&mut self) -> &mut FileState {
        self.state.as_mut().expect("state is open")
    }
    fn crash(&mut self) {
        self.state = None;
        self.state = Some(
            DataDir::open(self.dir.path())
                .and_then(|d| d.state())
                .expect("reopen state"),
        );
    }
}

fn run_state<H: StateHarness>(h: &mut H, ops: &[StateOp]) -> Result<(), TestCaseError> {
    let mut saved = HardState::default();
    prop_assert_eq!(h.state().load().unwrap(), saved);
    for op in ops {
        match *op {
            StateOp::Save(term, vote) => {
                saved = HardState { term, vote };
                h.state().save(&saved).unwrap();
            }
            // `save` is durable when it returns: a crash loses nothing.
            StateOp::Crash => h.crash(),
        }
        prop_assert_eq!(h.state().load().unwrap(), saved);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(32)))]

    #[test]
    fn state_backends_keep_the_last_save(ops in prop::collection::vec(state_op(), 1..20)) {
        run_state(&mut MemoryStateHarness(MemoryState::new()), &ops)?;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = DataDir::open(dir.path()).and_then(|d| d.state()).expect("open state");
        run_state(&mut FileStateHarness { dir, state: Some(state) }, &ops)?;
    }
}

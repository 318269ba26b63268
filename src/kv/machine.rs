//! The key-value state machine: applies committed log entries to a
//! [`KvStorage`] and serves reads from it.
//!
//! # Invariants
//!
//! - **One atomic write per entry.** Every entry above the applied index ends
//!   in exactly one [`KvStorage::write`] call carrying the entry's index, the
//!   data change and the session change together. Data, sessions and the
//!   applied index therefore always agree, also after a crash (the store
//!   reopens at some flushed state and the log is replayed from there).
//! - **Entries apply in order.** An entry at or below the applied index is
//!   ignored; an entry that skips an index is an error, because applying it
//!   would silently lose the entries in between.
//! - **Exactly-once writes.** Each [`Command`] carries `(client_id, seq)`. For
//!   every client the machine remembers the highest `seq` applied and the
//!   [`Outcome`] it produced. A command repeating that `seq` gets the
//!   remembered outcome and changes nothing; a lower `seq` is rejected as
//!   stale; a higher one is applied and remembered.
//! - **Sessions live in the store.** They are kept under keys that start with
//!   byte `0x00`, a namespace user keys can never enter (such keys are
//!   rejected), and are loaded again by [`KvStateMachine::new`]. Reads never
//!   show them.
//! - **Sessions are bounded, and expire through the log.** At most
//!   `max_sessions` are kept. When a client without a session arrives and the
//!   table is full, the session whose last command sits at the lowest log
//!   index is dropped. The choice depends only on the sequence of applied
//!   entries, so every replica drops the same session at the same index.
//! - **Bad commands never panic.** Undecodable entry data, an invalid key or
//!   value, or a zero sequence number produce [`Outcome::Rejected`] and still
//!   advance the applied index, identically on every replica. Storage errors
//!   are returned as `Err`; the caller must treat them as fatal.
//!
//! # Known limit
//!
//! A client whose session was dropped is indistinguishable from a new client,
//! so a retry of its last write arriving after the drop would be applied
//! again. Dropping needs `max_sessions` other clients to write after that
//! client's last request, which in practice is far longer than any client's
//! retry window.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::protocol::{Command, Op, Outcome, Query};
use super::{validate_key, validate_value};
use crate::network::frame;
use crate::storage::{Entry, KvStorage, KvWrite, SnapshotJob};
use crate::{Error, LogIndex, Result, Term};

/// The first byte of every internal key. User keys may not start with it.
pub const INTERNAL_KEY_PREFIX: u8 = 0x00;
/// The number of client sessions kept by [`KvStateMachine::new`].
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;

/// Prefix of the session keys: `[0x00, b's', client_id as 8 big-endian bytes]`.
const SESSION_PREFIX: [u8; 2] = [INTERNAL_KEY_PREFIX, b's'];

/// What is stored for a client session.
#[derive(Debug, Serialize, Deserialize)]
struct SessionRecord {
    /// The highest sequence number applied for this client.
    seq: u64,
    /// The log index of the client's most recent command (any command,
    /// applied, repeated or stale); the eviction order.
    last_index: LogIndex,
    /// The outcome of applying `seq`.
    outcome: Outcome,
}

/// The in-memory part of a session; the outcome stays in the store.
#[derive(Clone, Copy, Debug)]
struct SessionMeta {
    seq: u64,
    last_index: LogIndex,
}

/// Applies committed log entries to a [`KvStorage`], with client sessions.
///
/// See the [module documentation](self) for the guarantees it keeps.
pub struct KvStateMachine {
    storage: Box<dyn KvStorage>,
    max_sessions: usize,
    /// Every session in the store, by client id.
    sessions: HashMap<u64, SessionMeta>,
    /// The same sessions ordered by `(last_index, client_id)`; the first one
    /// is the next to evict.
    by_last_index: BTreeSet<(LogIndex, u64)>,
}

impl KvStateMachine {
    /// Opens the state machine over `storage`, restoring its sessions, with
    /// room for [`DEFAULT_MAX_SESSIONS`] sessions.
    pub fn new(storage: Box<dyn KvStorage>) -> Result<Self> {
        Self::with_max_sessions(storage, DEFAULT_MAX_SESSIONS)
    }

    /// Opens the state machine over `storage` keeping at most `max_sessions`
    /// client sessions. Every replica of a cluster must use the same value.
    ///
    /// If the store holds more sessions than that (it was written with a
    /// larger limit), the oldest are dropped down to the limit when the next
    /// new client arrives.
    pub fn with_max_sessions(storage: Box<dyn KvStorage>, max_sessions: usize) -> Result<Self> {
        if max_sessions == 0 {
            return Err(Error::Config(
                "the state machine needs room for at least one client session".into(),
            ));
        }
        let mut machine = KvStateMachine {
            storage,
            max_sessions,
            sessions: HashMap::new(),
            by_last_index: BTreeSet::new(),
        };
        machine.load_sessions()?;
        Ok(machine)
    }

    /// Rebuilds the session index from the store.
    fn load_sessions(&mut self) -> Result<()> {
        self.sessions.clear();
        self.by_last_index.clear();
        for (key, value) in self.storage.scan_prefix(&SESSION_PREFIX)? {
            let client_id = session_client_id(&key).ok_or_else(|| {
                corrupt(format!("session key {key:02x?} does not hold a client id"))
            })?;
            let record: SessionRecord = frame::decode(&value).map_err(|e| {
                corrupt(format!(
                    "session record of client {client_id:#018x} is unreadable: {e}"
                ))
            })?;
            self.insert_session(client_id, record.seq, record.last_index);
        }
        Ok(())
    }

    /// The applied index of the state a crash would reopen the store at
    /// (see [`KvStorage::durable_index`]).
    pub fn durable_index(&mut self) -> LogIndex {
        self.storage.durable_index()
    }

    /// The applied index and a job, for another thread, that encodes the
    /// whole state (data and sessions) at that index for a follower that
    /// needs a snapshot (see [`KvStorage::snapshot_job`]).
    pub fn snapshot_job(&self) -> Result<(LogIndex, SnapshotJob)> {
        Ok((self.storage.applied_index(), self.storage.snapshot_job()?))
    }

    /// Replaces the whole state with a snapshot from another replica's
    /// [`KvStateMachine::snapshot_job`] at applied index `index`, whose term is
    /// `term`, durably.
    ///
    /// Errors: `Corrupt` or `InvalidInput` if the store refused `data`
    /// before changing anything; any other error once the state may have
    /// changed (its sessions unreadable, say), which the caller must treat
    /// as fatal.
    pub fn install(&mut self, data: &[u8], index: LogIndex, term: Term) -> Result<()> {
        self.storage.install(data, index, term)?;
        self.load_sessions().map_err(|e| {
            Error::Failed(format!(
                "installed the snapshot through {index}, but cannot load its sessions: {e}"
            ))
        })
    }

    /// The applied index and its term while the state is an installed
    /// snapshot (see [`KvStorage::installed`]).
    pub fn installed(&self) -> Option<(LogIndex, Term)> {
        self.storage.installed()
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> LogIndex {
        self.storage.applied_index()
    }

    /// The most client sessions kept.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// The number of client sessions currently kept.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The highest sequence number applied for `client_id`, if the client
    /// has a session.
    pub fn session_seq(&self, client_id: u64) -> Option<u64> {
        self.sessions.get(&client_id).map(|s| s.seq)
    }

    /// Applies one committed entry; returns the outcome for the client that
    /// proposed it (`None` for a no-op entry). Entries at or below the
    /// applied index are ignored (returns `None`).
    ///
    /// Errors: the entry skips an index, or the store failed. Either leaves
    /// the state as it was before the call.
    pub fn apply(&mut self, entry: &Entry) -> Result<Option<Outcome>> {
        let applied = self.storage.applied_index();
        if entry.index <= applied {
            return Ok(None);
        }
        if entry.index != applied + 1 {
            return Err(Error::Failed(format!(
                "log entry {} cannot be applied: the state machine has applied \
                 only up to entry {applied}",
                entry.index
            )));
        }
        if entry.data.is_empty() {
            self.storage.write(entry.index, Vec::new())?;
            return Ok(None);
        }
        let command: Command = match frame::decode(&entry.data) {
            Ok(command) => command,
            Err(e) => {
                self.storage.write(entry.index, Vec::new())?;
                return Ok(Some(Outcome::Rejected(format!(
                    "log entry {} holds no valid command: {e}",
                    entry.index
                ))));
            }
        };
        self.apply_command(entry.index, command).map(Some)
    }

    /// Serves a read against the applied state.
    ///
    /// A `get` of an invalid key is [`Outcome::Rejected`]; a `list` never
    /// shows internal keys (a prefix starting with `0x00` matches nothing).
    pub fn query(&self, query: &Query) -> Result<Outcome> {
        match query {
            Query::Get { key } => {
                if let Err(e) = validate_key(key) {
                    return Ok(Outcome::Rejected(rejection(e)));
                }
                Ok(Outcome::Value(self.storage.get(key)?))
            }
            Query::List { prefix } => {
                if prefix.first() == Some(&INTERNAL_KEY_PREFIX) {
                    return Ok(Outcome::Keys(Vec::new()));
                }
                // An empty prefix also matches the internal keys, which sort
                // first; skip them.
                let keys = self
                    .storage
                    .scan_prefix(prefix)?
                    .into_iter()
                    .map(|(key, _)| key)
                    .filter(|key| !is_internal_key(key))
                    .collect();
                Ok(Outcome::Keys(keys))
            }
        }
    }

    /// Makes everything applied so far durable.
    pub fn flush(&mut self) -> Result<()> {
        self.storage.flush()
    }

    /// Starts making everything applied so far durable, without waiting
    /// (see [`KvStorage::flush_background`]). Returns `false` if it did not
    /// start because the previous one still runs.
    pub fn flush_background(&mut self) -> Result<bool> {
        self.storage.flush_background()
    }

    /// About how many bytes a flush of the store writes (0 if unknown).
    pub fn snapshot_bytes(&self) -> u64 {
        self.storage.snapshot_bytes()
    }

    /// Applies a decoded command at `index` through its client's session.
    fn apply_command(&mut self, index: LogIndex, command: Command) -> Result<Outcome> {
        let Command { client_id, seq, op } = command;
        if seq == 0 {
            self.storage.write(index, Vec::new())?;
            return Ok(Outcome::Rejected(
                "sequence number 0 is invalid; a client's first request has sequence number 1"
                    .into(),
            ));
        }
        let session = self.sessions.get(&client_id).copied();
        if let Some(session) = session
            && seq <= session.seq
        {
            // Repeated or stale: apply nothing, but record that the client
            // was active at `index`.
            let record = self.load_session(client_id)?;
            let outcome = if seq == session.seq {
                record.outcome.clone()
            } else {
                Outcome::Rejected(format!(
                    "stale request: sequence number {seq} of client {client_id:#018x} is \
                     older than its last applied request {}",
                    session.seq
                ))
            };
            let touched = SessionRecord {
                last_index: index,
                ..record
            };
            self.storage
                .write(index, vec![session_put(client_id, &touched)])?;
            self.remove_session(client_id);
            self.insert_session(client_id, touched.seq, index);
            return Ok(outcome);
        }

        let (outcome, mut batch) = self.execute(op)?;
        let mut evict = Vec::new();
        if session.is_none() {
            // Make room for the new session, oldest first.
            let excess = (self.sessions.len() + 1).saturating_sub(self.max_sessions);
            evict.extend(self.by_last_index.iter().take(excess).map(|&(_, id)| id));
        }
        for &id in &evict {
            batch.push(KvWrite::Delete(session_key(id)));
        }
        let record = SessionRecord {
            seq,
            last_index: index,
            outcome,
        };
        batch.push(session_put(client_id, &record));
        self.storage.write(index, batch)?;

        for id in evict {
            self.remove_session(id);
        }
        self.remove_session(client_id);
        self.insert_session(client_id, seq, index);
        Ok(record.outcome)
    }

    /// Computes an operation's outcome and the writes that carry it out.
    fn execute(&self, op: Op) -> Result<(Outcome, Vec<KvWrite>)> {
        let rejected = |e: Error| Ok((Outcome::Rejected(rejection(e)), Vec::new()));
        match op {
            Op::Put { key, value } => {
                if let Err(e) = validate_key(&key).and_then(|()| validate_value(&value)) {
                    return rejected(e);
                }
                Ok((Outcome::Done, vec![KvWrite::Put(key, value)]))
            }
            Op::Delete { key } => {
                if let Err(e) = validate_key(&key) {
                    return rejected(e);
                }
                Ok((Outcome::Done, vec![KvWrite::Delete(key)]))
            }
            Op::Cas { key, expected, new } => {
                if let Err(e) = validate_key(&key).and_then(|()| validate_value(&new)) {
                    return rejected(e);
                }
                let current = self.storage.get(&key)?;
                let swapped = current == expected;
                let writes = if swapped {
                    vec![KvWrite::Put(key, new)]
                } else {
                    Vec::new()
                };
                Ok((Outcome::Cas { swapped, current }, writes))
            }
        }
    }

    /// Reads a session's full record from the store.
    fn load_session(&self, client_id: u64) -> Result<SessionRecord> {
        let bytes = self.storage.get(&session_key(client_id))?.ok_or_else(|| {
            corrupt(format!(
                "the session of client {client_id:#018x} is missing from the store"
            ))
        })?;
        frame::decode(&bytes).map_err(|e| {
            corrupt(format!(
                "session record of client {client_id:#018x} is unreadable: {e}"
            ))
        })
    }

    fn insert_session(&mut self, client_id: u64, seq: u64, last_index: LogIndex) {
        self.sessions
            .insert(client_id, SessionMeta { seq, last_index });
        self.by_last_index.insert((last_index, client_id));
    }

    fn remove_session(&mut self, client_id: u64) {
        if let Some(old) = self.sessions.remove(&client_id) {
            self.by_last_index.remove(&(old.last_index, client_id));
        }
    }
}

/// Whether `key` lies in the state machine's internal namespace.
pub fn is_internal_key(key: &[u8]) -> bool {
    key.first() == Some(&INTERNAL_KEY_PREFIX)
}

fn session_key(client_id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(SESSION_PREFIX.len() + 8);
    key.extend_from_slice(&SESSION_PREFIX);
    key.extend_from_slice(&client_id.to_be_bytes());
    key
}

fn session_client_id(key: &[u8]) -> Option<u64> {
    let id = key.strip_prefix(&SESSION_PREFIX[..])?;
    Some(u64::from_be_bytes(id.try_into().ok()?))
}

fn session_put(client_id: u64, record: &SessionRecord) -> KvWrite {
    KvWrite::Put(session_key(client_id), frame::encode(record))
}

/// The message of a validation error, for [`Outcome::Rejected`].
fn rejection(e: Error) -> String {
    match e {
        Error::InvalidInput(msg) => msg,
        other => other.to_string(),
    }
}

fn corrupt(reason: String) -> Error {
    Error::Corrupt {
        path: PathBuf::from("<key-value store>"),
        offset: 0,
        reason,
    }
}

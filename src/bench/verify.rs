//! `--verify`: after the run, every key that an acknowledged put wrote is
//! read back, and the value found must be one the cluster may legally hold.
//!
//! The rule, for one key: the value read must come from a put `P` on that key
//! that was not reported as failed, and no acknowledged put `Q` on the key may
//! have started after `P` completed (such a `Q` follows `P` in every
//! linearization, so `P`'s value cannot be the last). An absent key, a value
//! no put wrote, or a value that an acknowledged later put should have
//! replaced is a lost or corrupted write. Puts whose outcome is unknown (the
//! client gave up on them) may or may not have taken effect; either is fine.

use std::collections::HashMap;

use super::workload::parse_tag;

/// What the client learned about one put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The cluster acknowledged it; `end_us` is when the answer arrived.
    Acked { end_us: u64 },
    /// The client could not tell whether it was applied.
    Unknown,
    /// The cluster said it was definitely not applied.
    Failed,
}

/// One put a benchmark client sent. Times are microseconds since the start
/// of the run, on one clock shared by all clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutRecord {
    /// The key's index (see [`super::workload::key_name`]).
    pub key: u64,
    /// The writing client.
    pub client: u32,
    /// That client's sequence number for the write.
    pub seq: u64,
    /// When the client sent it.
    pub start_us: u64,
    /// How it ended.
    pub outcome: PutOutcome,
}

/// What a read-back found wrong with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The key is absent although a put to it was acknowledged.
    Missing { key: u64 },
    /// The value carries no tag, or the tag of no put to this key.
    Foreign { key: u64 },
    /// The value is from a put the cluster reported as not applied.
    FromFailedPut { key: u64, client: u32, seq: u64 },
    /// The value is from a put that an acknowledged put started after.
    Stale {
        key: u64,
        client: u32,
        seq: u64,
        newer_client: u32,
        newer_seq: u64,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = |k: &u64| super::workload::key_name(*k);
        match self {
            Problem::Missing { key } => {
                write!(f, "{}: absent, but a put to it was acknowledged", name(key))
            }
            Problem::Foreign { key } => {
                write!(
                    f,
                    "{}: holds a value that no put of this run wrote",
                    name(key)
                )
            }
            Problem::FromFailedPut { key, client, seq } => write!(
                f,
                "{}: holds the value of client {client}'s put #{seq}, which was reported as not applied",
                name(key)
            ),
            Problem::Stale {
                key,
                client,
                seq,
                newer_client,
                newer_seq,
            } => write!(
                f,
                "{}: holds client {client}'s put #{seq}, but client {newer_client}'s put \
                 #{newer_seq} started after it completed and was acknowledged",
                name(key)
            ),
        }
    }
}

/// Every put of a run, indexed for checking read-backs.
#[derive(Debug, Default)]
pub struct History {
    /// (client, seq) -> the put.
    puts: HashMap<(u32, u64), PutRecord>,
    /// key -> the acknowledged put on it that started last.
    last_acked_start: HashMap<u64, PutRecord>,
}

impl History {
    /// Indexes `records`.
    pub fn new(records: impl IntoIterator<Item = PutRecord>) -> History {
        let mut h = History::default();
        for r in records {
            if matches!(r.outcome, PutOutcome::Acked { .. }) {
                let slot = h.last_acked_start.entry(r.key).or_insert(r);
                if r.start_us > slot.start_us {
                    *slot = r;
                }
            }
            h.puts.insert((r.client, r.seq), r);
        }
        h
    }

    /// The keys that have at least one acknowledged put, sorted.
    pub fn keys_to_check(&self) -> Vec<u64> {
        let mut keys: Vec<u64> = self.last_acked_start.keys().copied().collect();
        keys.sort_unstable();
        keys
    }

    /// Checks the value `read` back from `key` (`None`: absent).
    pub fn check(&self, key: u64, read: Option<&[u8]>) -> Result<(), Problem> {
        let Some(latest) = self.last_acked_start.get(&key) else {
            // No acknowledged put: nothing was promised.
            return Ok(());
        };
        let Some(value) = read else {
            return Err(Problem::Missing { key });
        };
        let Some(put) = parse_tag(value)
            .and_then(|id| self.puts.get(&id))
            .filter(|p| p.key == key)
        else {
            return Err(Problem::Foreign { key });
        };
        match put.outcome {
            PutOutcome::Failed => Err(Problem::FromFailedPut {
                key,
                client: put.client,
                seq: put.seq,
            }),
            PutOutcome::Acked { end_us } if latest.start_us > end_us => Err(Problem::Stale {
                key,
                client: put.client,
                seq: put.seq,
                newer_client: latest.client,
                newer_seq: latest.seq,
            }),
            _ => Ok(()),
        }
    }
}

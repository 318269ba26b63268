//! The run's recent history: a ring of compact event records, formatted
//! only when a seed fails.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};

use crate::raft::{Message, Role};
use crate::{LogIndex, NodeId, Term};

use super::TICK;

/// A message, reduced to what a reader of a trace needs.
#[derive(Clone, Copy, Debug)]
pub enum MsgSummary {
    Vote {
        term: Term,
        pre: bool,
        last_index: LogIndex,
        last_term: Term,
    },
    VoteResp {
        term: Term,
        pre: bool,
        granted: bool,
    },
    Append {
        term: Term,
        prev_index: LogIndex,
        prev_term: Term,
        entries: usize,
        commit: LogIndex,
    },
    AppendResp {
        term: Term,
        success: bool,
        index: LogIndex,
        hint: LogIndex,
    },
    Snapshot {
        term: Term,
        index: LogIndex,
        offset: u64,
        len: usize,
        done: bool,
    },
    SnapshotResp {
        term: Term,
        index: LogIndex,
        received: u64,
    },
}

impl MsgSummary {
    pub fn of(msg: &Message) -> Self {
        match msg {
            Message::RequestVote {
                term,
                last_log_index,
                last_log_term,
                pre_vote,
                ..
            } => MsgSummary::Vote {
                term: *term,
                pre: *pre_vote,
                last_index: *last_log_index,
                last_term: *last_log_term,
            },
            Message::VoteResponse {
                term,
                granted,
                pre_vote,
            } => MsgSummary::VoteResp {
                term: *term,
                pre: *pre_vote,
                granted: *granted,
            },
            Message::AppendEntries {
                term,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                ..
            } => MsgSummary::Append {
                term: *term,
                prev_index: *prev_log_index,
                prev_term: *prev_log_term,
                entries: entries.len(),
                commit: *leader_commit,
            },
            Message::AppendResponse {
                term,
                success,
                match_index,
                conflict_index,
                ..
            } => MsgSummary::AppendResp {
                term: *term,
                success: *success,
                index: *match_index,
                hint: *conflict_index,
            },
            Message::InstallSnapshot {
                term,
                index,
                offset,
                data,
                done,
                ..
            } => MsgSummary::Snapshot {
                term: *term,
                index: *index,
                offset: *offset,
                len: data.len(),
                done: *done,
            },
            Message::SnapshotResponse {
                term,
                index,
                received,
            } => MsgSummary::SnapshotResp {
                term: *term,
                index: *index,
                received: *received,
            },
        }
    }
}

impl fmt::Display for MsgSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MsgSummary::Vote {
                term,
                pre,
                last_index,
                last_term,
            } => write!(
                f,
                "{}Vote(t{term}, last {last_index}/t{last_term})",
                if pre { "Pre" } else { "" }
            ),
            MsgSummary::VoteResp { term, pre, granted } => write!(
                f,
                "{}VoteResp(t{term}, {})",
                if pre { "Pre" } else { "" },
                if granted { "granted" } else { "rejected" }
            ),
            MsgSummary::Append {
                term,
                prev_index,
                prev_term,
                entries,
                commit,
            } => write!(
                f,
                "Append(t{term}, prev {prev_index}/t{prev_term}, {entries} entries, commit {commit})"
            ),
            MsgSummary::AppendResp {
                term,
                success,
                index,
                hint,
            } => {
                if success {
                    write!(f, "AppendOk(t{term}, match {index})")
                } else {
                    write!(f, "AppendReject(t{term}, at {index}, hint {hint})")
                }
            }
            MsgSummary::Snapshot {
                term,
                index,
                offset,
                len,
                done,
            } => write!(
                f,
                "Snapshot(t{term}, through {index}, bytes {offset}+{len}{})",
                if done { ", done" } else { "" }
            ),
            MsgSummary::SnapshotResp {
                term,
                index,
                received,
            } => write!(
                f,
                "SnapshotResp(t{term}, through {index}, holds {received})"
            ),
        }
    }
}

/// Why the network did not deliver a message.
#[derive(Clone, Copy, Debug)]
pub enum DropCause {
    Random,
    Partition,
    NodeDown,
}

/// One thing that happened.
#[derive(Clone, Copy, Debug)]
pub enum What {
    Tick {
        node: NodeId,
    },
    Deliver {
        from: NodeId,
        to: NodeId,
        msg: MsgSummary,
    },
    Drop {
        from: NodeId,
        to: NodeId,
        msg: MsgSummary,
        cause: DropCause,
    },
    Duplicate {
        from: NodeId,
        to: NodeId,
    },
    /// A node's role or term changed.
    Role {
        node: NodeId,
        role: Role,
        term: Term,
    },
    Commit {
        node: NodeId,
        index: LogIndex,
    },
    Sync {
        node: NodeId,
        last: LogIndex,
    },
    /// A node discarded its log through `through`.
    Compacted {
        node: NodeId,
        through: LogIndex,
    },
    /// A node installed a snapshot from the leader.
    Installed {
        node: NodeId,
        index: LogIndex,
    },
    Crash {
        node: NodeId,
        lost_unsynced: bool,
    },
    Restart {
        node: NodeId,
        last: LogIndex,
        applied: LogIndex,
    },
    /// Links cut: a bit per directed link `from * 8 + to` (ids below 8).
    Partition {
        one_way: bool,
        cut: u64,
    },
    Heal,
    Faults {
        drop: bool,
        dup: bool,
        delay: bool,
        /// A node whose every message takes this much longer.
        slow: Option<(NodeId, u64)>,
    },
    FaultsEnd,
    Propose {
        client: usize,
        node: NodeId,
        cmd: u64,
        index: Option<LogIndex>,
    },
    WriteAcked {
        client: usize,
        cmd: u64,
        index: LogIndex,
        position: u64,
    },
    ReadIssued {
        client: usize,
        node: NodeId,
        id: u64,
        floor: u64,
    },
    ReadServed {
        node: NodeId,
        id: u64,
        value: u64,
        floor: u64,
    },
    ReadFailed {
        node: NodeId,
        id: u64,
    },
}

/// A timestamped event.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    pub time: u64,
    pub what: What,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:>5}.{}] ", self.time / TICK, self.time % TICK)?;
        match self.what {
            What::Tick { node } => write!(f, "tick n{node}"),
            What::Deliver { from, to, msg } => write!(f, "n{from} -> n{to}: {msg}"),
            What::Drop {
                from,
                to,
                msg,
                cause,
            } => write!(f, "n{from} -> n{to}: {msg} DROPPED ({cause:?})"),
            What::Duplicate { from, to } => write!(f, "n{from} -> n{to}: duplicated"),
            What::Role { node, role, term } => write!(f, "n{node} is {role:?} at term {term}"),
            What::Commit { node, index } => write!(f, "n{node} commit index {index}"),
            What::Sync { node, last } => write!(f, "n{node} synced through {last}"),
            What::Compacted { node, through } => {
                write!(f, "n{node} discarded its log through {through}")
            }
            What::Installed { node, index } => {
                write!(f, "n{node} installed a snapshot through {index}")
            }
            What::Crash {
                node,
                lost_unsynced,
            } => write!(
                f,
                "CRASH n{node}{}",
                if lost_unsynced {
                    " (unsynced writes lost)"
                } else {
                    ""
                }
            ),
            What::Restart {
                node,
                last,
                applied,
            } => write!(
                f,
                "RESTART n{node} (durable log through {last}, state machine at {applied})"
            ),
            What::Partition { one_way, cut } => {
                write!(
                    f,
                    "PARTITION ({}) cut:",
                    if one_way { "one-way" } else { "symmetric" }
                )?;
                for bit in 0..64 {
                    if cut & (1 << bit) != 0 {
                        write!(f, " n{}->n{}", bit / 8, bit % 8)?;
                    }
                }
                Ok(())
            }
            What::Heal => write!(f, "HEAL all links"),
            What::Faults {
                drop,
                dup,
                delay,
                slow,
            } => {
                write!(f, "network faults: drop={drop} dup={dup} delay={delay}")?;
                if let Some((node, extra)) = slow {
                    write!(
                        f,
                        ", n{node} slow by {}.{} ticks",
                        extra / TICK,
                        extra % TICK
                    )?;
                }
                Ok(())
            }
            What::FaultsEnd => write!(f, "FAULTS STOP: links healed, nodes restarted"),
            What::Propose {
                client,
                node,
                cmd,
                index,
            } => match index {
                Some(i) => write!(f, "client {client}: write #{cmd} on n{node} -> index {i}"),
                None => write!(f, "client {client}: write #{cmd} on n{node} refused"),
            },
            What::WriteAcked {
                client,
                cmd,
                index,
                position,
            } => write!(
                f,
                "client {client}: write #{cmd} acknowledged (index {index}, list length {position})"
            ),
            What::ReadIssued {
                client,
                node,
                id,
                floor,
            } => write!(
                f,
                "client {client}: read r{id} on n{node} (must see length >= {floor})"
            ),
            What::ReadServed {
                node,
                id,
                value,
                floor,
            } => write!(
                f,
                "n{node} serves read r{id}: length {value} (floor {floor})"
            ),
            What::ReadFailed { node, id } => write!(f, "n{node} fails read r{id}"),
        }
    }
}

/// The last `cap` records.
pub struct Trace {
    cap: usize,
    records: VecDeque<Record>,
    total: u64,
}

impl Trace {
    pub fn new(cap: usize) -> Self {
        Trace {
            cap,
            records: VecDeque::with_capacity(cap.min(4096)),
            total: 0,
        }
    }

    pub fn push(&mut self, time: u64, what: What) {
        self.total += 1;
        if self.cap == 0 {
            return;
        }
        if self.records.len() == self.cap {
            self.records.pop_front();
        }
        self.records.push_back(Record { time, what });
    }

    /// Number of records ever pushed.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The kept records, one per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let skipped = self.total - self.records.len() as u64;
        if skipped > 0 {
            let _ = writeln!(out, "  ... {skipped} earlier events not shown");
        }
        for r in &self.records {
            let _ = writeln!(out, "  {r}");
        }
        out
    }
}

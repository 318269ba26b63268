//! Messages exchanged between Raft nodes.

use serde::{Deserialize, Serialize};

use crate::storage::Entry;
use crate::{LogIndex, NodeId, Term};

/// A Raft protocol message. Every message carries the sender's term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A (pre-)candidate asks for a vote.
    RequestVote {
        term: Term,
        candidate: NodeId,
        last_log_index: LogIndex,
        last_log_term: Term,
        pre_vote: bool,
    },
    /// The answer to a [`Message::RequestVote`].
    VoteResponse {
        term: Term,
        granted: bool,
        pre_vote: bool,
    },
    /// Log replication and heartbeats.
    AppendEntries {
        term: Term,
        leader: NodeId,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
        /// Leader's read round counter, echoed back for ReadIndex.
        read_seq: u64,
    },
    /// The answer to [`Message::AppendEntries`].
    AppendResponse {
        term: Term,
        success: bool,
        /// On success, the index of the last entry known to match.
        match_index: LogIndex,
        /// On rejection, where the leader should retry (conflict hint).
        conflict_index: LogIndex,
        conflict_term: Option<Term>,
        read_seq: u64,
    },
    /// A piece of the leader's state-machine snapshot, for a follower that
    /// needs entries the leader's log no longer holds. The snapshot covers
    /// every entry through `index`, whose term is `index_term`; `offset` is
    /// where `data` starts in it and `done` marks the last piece. Once the
    /// follower installed it, it answers with a successful
    /// [`Message::AppendResponse`] at `index`.
    InstallSnapshot {
        term: Term,
        leader: NodeId,
        index: LogIndex,
        index_term: Term,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        done: bool,
    },
    /// The answer to a piece of [`Message::InstallSnapshot`] that did not
    /// finish it: how many bytes of the snapshot at `index` the follower
    /// holds, so where the leader goes on.
    SnapshotResponse {
        term: Term,
        index: LogIndex,
        received: u64,
    },
}

impl Message {
    /// The sender's term.
    pub fn term(&self) -> Term {
        match self {
            Message::RequestVote { term, .. }
            | Message::VoteResponse { term, .. }
            | Message::AppendEntries { term, .. }
            | Message::AppendResponse { term, .. }
            | Message::InstallSnapshot { term, .. }
            | Message::SnapshotResponse { term, .. } => *term,
        }
    }
}

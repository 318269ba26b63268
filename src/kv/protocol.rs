//! What travels on the client port, and the commands in the Raft log.
//!
//! A client sends one [`Request`] frame and reads one [`Response`] frame
//! (see [`crate::network::frame`]); a connection carries any number of them,
//! one at a time.

use serde::{Deserialize, Serialize};

use crate::{LogIndex, NodeId, Term};

/// A state-changing operation; it goes through the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Sets `key` to `new` if it currently holds `expected` (`None`: absent).
    Cas {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        expected: Option<Vec<u8>>,
        #[serde(with = "serde_bytes")]
        new: Vec<u8>,
    },
}

/// A read-only operation, served linearizably through ReadIndex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    List {
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
    },
}

/// The command stored in a log entry: an operation tagged with its client
/// session, so a retried request is applied at most once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub client_id: u64,
    pub seq: u64,
    pub op: Op,
}

/// A request on the client port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A write. `seq` starts at 1 and grows by one per new request of the
    /// client; a retry reuses its `seq`.
    Write { client_id: u64, seq: u64, op: Op },
    /// A linearizable read.
    Read { query: Query },
    /// This node's status.
    Status,
}

/// The result of applying an [`Op`] or serving a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Put or delete done.
    Done,
    /// A get's value (`None`: absent).
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// A list's keys, sorted.
    Keys(Vec<Vec<u8>>),
    /// A cas: whether it swapped, and the value the key held before.
    Cas {
        swapped: bool,
        #[serde(with = "serde_bytes")]
        current: Option<Vec<u8>>,
    },
    /// The request was rejected by the state machine (invalid key or value,
    /// or a stale sequence number); it was not applied.
    Rejected(String),
}

/// A node's view of itself, for `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    /// "leader", "follower" or "candidate".
    pub role: String,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Outcome(Outcome),
    Status(NodeStatus),
    /// This node is not the leader; `leader` is its best guess.
    NotLeader {
        leader: Option<NodeId>,
    },
    /// The request was definitely not applied (e.g. the node is shutting down,
    /// or the request is malformed); retrying elsewhere may succeed.
    Failed(String),
    /// The outcome is unknown (e.g. leadership was lost after proposing).
    Unknown(String),
}

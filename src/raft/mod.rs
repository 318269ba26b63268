//! The Raft consensus core.
//!
//! A [`Node`] is a deterministic state machine: the caller drives it with
//! [`Node::tick`], [`Node::step`], [`Node::propose`] and [`Node::read_index`],
//! then takes its outputs with [`Node::ready`]. It never touches a socket,
//! clock, thread or file; its randomness comes from the seed in [`Config`].
//!
//! The driving loop, as the server and the simulator run it:
//!
//! 1. feed inputs (ticks, peer messages, proposals, read requests, and the
//!    outcome of a finished sync through [`Node::finish_sync`]);
//! 2. `let rd = node.ready()`;
//! 3. send `rd.messages` (the node holds back what must wait for a sync);
//! 4. if `rd.needs_sync`, call [`Node::begin_sync`] and run the job it
//!    returns, on another thread or right away; when it is done, report it
//!    with [`Node::finish_sync`] (step 1). Until then the node goes on
//!    taking inputs and handing out outputs, and no second sync starts;
//! 5. apply `rd.committed` in order, and serve each of `rd.reads` once the
//!    state machine has applied up to its index;
//! 6. if `rd.snapshot_wanted` (a leader whose follower needs discarded
//!    entries), hand the node a snapshot of the state machine with
//!    [`Node::offer_snapshot`]; if `rd.snapshot` holds one received from the
//!    leader, replace the state machine with it, durably, and report that
//!    with [`Node::snapshot_installed`] (or, if the state machine refuses
//!    its content as malformed before changing anything, with
//!    [`Node::snapshot_rejected`]);
//! 7. repeat from 2 while [`Node::has_ready`] is true.
//!
//! [`Node::sync`] does step 4 in one blocking call, for simple drivers.
//!
//! Log compaction: once the state machine holds entries durably (a crash
//! reopens it at that index or later), the driver may discard them from the
//! log with [`Node::compact`]. A node that restarts with a state machine
//! that was installed from a snapshot calls [`align_log`] first, to finish
//! the log's side of an install that a crash interrupted.

mod log;
pub mod message;
pub mod node;
mod progress;
pub(crate) mod rng;

pub use message::Message;

use crate::Result;
use crate::storage::LogStorage;

/// Makes `log` agree with a state machine installed from a snapshot
/// through `(index, term)`: the log then starts after `index`, keeping the
/// entries after it only if it holds `index` with `term`. Installing
/// changes the state machine first and the log second, so a crash between
/// the two leaves a log that this finishes. Does nothing if the log already
/// starts after `index`.
pub fn align_log<L: LogStorage>(log: &mut L, index: LogIndex, term: Term) -> Result<()> {
    let first = log.first_index();
    if index < first {
        return Ok(());
    }
    let conflicts = index > log.last_index() || log.term(index)? != Some(term);
    if conflicts && log.last_index() >= first {
        log.truncate_after(first - 1)?;
    }
    log.discard_through(index, term)
}
pub use node::Node;

use crate::storage::Entry;
use crate::timing::TimingConfig;
use crate::{LogIndex, NodeId, Term};

/// Static configuration of a Raft node.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// Every voting member, this node included.
    pub peers: Vec<NodeId>,
    /// A leader sends a heartbeat every this many ticks.
    pub heartbeat_ticks: u32,
    /// Election timeouts are drawn uniformly from `election_ticks_min..election_ticks_max`.
    pub election_ticks_min: u32,
    pub election_ticks_max: u32,
    /// Run a pre-vote round before starting an election.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum for an election timeout steps down.
    pub check_quorum: bool,
    /// Maximum number of append messages in flight to one follower.
    pub max_inflight: usize,
    /// Soft limit on the payload bytes carried by one append message.
    pub max_append_bytes: usize,
    /// Seed of the node's random generator (election timeouts). The node
    /// mixes its id in, so equal seeds on different nodes still differ.
    pub seed: u64,
    /// The state machine's applied index when the node starts: it counts as
    /// committed, and [`Ready::committed`] resumes after it. 0 for a fresh
    /// state machine.
    pub applied: LogIndex,
    /// A deliberately broken rule, for proving the simulator catches it.
    #[cfg(feature = "mutations")]
    pub mutation: Option<Mutation>,
}

impl Config {
    /// A configuration with sensible defaults: 1 tick heartbeats, 10-20 tick
    /// election timeouts, PreVote and CheckQuorum on.
    pub fn new(id: NodeId, peers: Vec<NodeId>) -> Self {
        Config {
            id,
            peers,
            heartbeat_ticks: 1,
            election_ticks_min: 10,
            election_ticks_max: 20,
            pre_vote: true,
            check_quorum: true,
            max_inflight: 64,
            max_append_bytes: 1 << 20,
            seed: id,
            applied: 0,
            #[cfg(feature = "mutations")]
            mutation: None,
        }
    }

    /// Takes tick counts from a validated [`TimingConfig`].
    pub fn with_timing(mut self, timing: &TimingConfig) -> Self {
        self.heartbeat_ticks = timing.heartbeat_ticks();
        self.election_ticks_min = timing.election_ticks_min();
        self.election_ticks_max = timing.election_ticks_max();
        self
    }
}

/// Deliberately broken Raft rules. Compiled only with the `mutations`
/// feature; each one must be caught by the simulator.
#[cfg(feature = "mutations")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Count votes that arrive from an older term.
    CountStaleVotes,
    /// Commit an entry from an older term by counting its replicas.
    CommitOldTermEntry,
    /// Grant votes without checking that the candidate's log is up to date.
    SkipVoteLogCheck,
    /// Followers accept appends carrying a stale term.
    AcceptStaleAppend,
    /// Serve reads without the quorum round.
    ReadWithoutQuorum,
    /// Acknowledge appended entries before the local sync made them durable.
    AckBeforeSync,
    /// A follower that installed a snapshot leaves its log and positions as
    /// they were (and still acknowledges the snapshot).
    InstallKeepsLog,
}

/// The role a node plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl Role {
    /// Lower-case name, as printed by `status`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// A snapshot of a node's state, for status reports and checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    /// The leader this node believes in, if any.
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    pub last_index: LogIndex,
}

/// A read request that is now safe to serve once the state machine has
/// applied up to `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's id for the request, as given to [`Node::read_index`].
    pub id: u64,
    pub index: LogIndex,
}

/// Outputs of the node, taken by the caller with [`Node::ready`].
#[derive(Debug, Default)]
pub struct Ready {
    /// Messages to send now. Acknowledgements of appended entries appear
    /// here only once a finished sync made those entries durable.
    pub messages: Vec<(NodeId, Message)>,
    /// Newly committed entries, in order, to apply to the state machine.
    pub committed: Vec<Entry>,
    /// Reads that are now safe to serve.
    pub reads: Vec<ReadState>,
    /// Read requests that can no longer be served by this node (it lost
    /// leadership); the caller answers them with a redirect.
    pub failed_reads: Vec<u64>,
    /// Whether the log has changes no sync covers yet and no sync is in
    /// flight: the caller should call [`Node::begin_sync`].
    pub needs_sync: bool,
    /// A leader has a follower that needs entries its log no longer holds:
    /// the caller should hand it a snapshot of the state machine with
    /// [`Node::offer_snapshot`].
    pub snapshot_wanted: bool,
    /// A snapshot received whole from the leader. The caller replaces the
    /// state machine with it, durably, and then calls
    /// [`Node::snapshot_installed`]; until then the node hands out no
    /// committed entries.
    pub snapshot: Option<Snapshot>,
}

/// A snapshot of the state machine: the state after applying every entry
/// through `index`, whose term is `term`. `data` is the state machine's own
/// encoding; Raft only carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub index: LogIndex,
    pub term: Term,
    pub data: Vec<u8>,
}

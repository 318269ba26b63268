//! The Raft node: roles, elections, replication, commitment and reads.
//!
//! A [`Node`] holds the persistent state (term, vote, log) and exactly one
//! role. Each role is a type carrying only what that role needs: a
//! [`Follower`] knows its leader, a [`Candidate`] (also used for the
//! pre-vote phase) counts votes, a [`Leader`] tracks per-follower
//! `Progress` and pending reads. Changing role builds the next role from
//! scratch, so nothing a leader tracked survives its leadership.
//!
//! Invariants the node keeps:
//!
//! - **Persistence first.** Term and vote are saved with
//!   [`StateStorage::save`] (durable on return) before any message that
//!   depends on them is queued. The only message that promises durable log
//!   content, a successful append acknowledgement, is held inside the node
//!   until its index is locally synced (a sync begun with
//!   [`Node::begin_sync`] finished), and dropped if a truncation replaces
//!   the entries it acknowledges first.
//! - **One vote per term**, only for a candidate whose log is at least as
//!   up-to-date (last term, then last index) as this node's.
//! - **Terms only grow.** Any message with a higher term turns the node into
//!   a follower of that term, except pre-vote requests (which carry the
//!   candidate's next term and change nothing) and granted pre-vote answers
//!   (which echo that next term). A vote request arriving while this node
//!   still hears from a live leader (its lease) is ignored entirely.
//! - **The election timer restarts only for a leader or a granted vote**: an
//!   append from the leader of the current term, a vote this node grants, or
//!   a (pre-)election it starts itself. Merely learning of a newer term does
//!   not restart it, so a node too stale to win cannot keep the others from
//!   ever timing out.
//! - **Commitment** advances only to an index replicated on a quorum whose
//!   entry is from the current term; the leader counts itself only up to its
//!   durably synced index. Committed entries are never truncated.
//! - **Application**: entries are handed out in order, each once per node
//!   lifetime, only when committed and locally durable, starting after
//!   [`Config::applied`].
//! - **Reads** are released only after a quorum acknowledged a round of
//!   messages that started after the read arrived, and only once the leader
//!   has committed an entry of its own term. A leader that loses its role
//!   fails its pending reads.
//! - **Bad input** (unknown senders, malformed messages) is logged and
//!   dropped; it never panics. Storage errors are returned to the caller.

use std::collections::{BTreeMap, VecDeque};

use log::{debug, error, trace, warn};

use super::log::{AppendOutcome, RaftLog};
use super::progress::{Progress, ProgressState};
use super::rng::SplitMix64;
use super::{Config, Message, ReadState, Ready, Role, Snapshot, Status};
use crate::storage::{HardState, LogStorage, StateStorage, SyncJob};
use crate::{Error, LogIndex, NodeId, Result, Term};

/// Whether a deliberately broken rule is switched on (always false without
/// the `mutations` feature).
#[cfg(feature = "mutations")]
macro_rules! mutated {
    ($node:expr, $m:ident) => {
        $node.config.mutation == Some(super::Mutation::$m)
    };
}
#[cfg(not(feature = "mutations"))]
macro_rules! mutated {
    ($node:expr, $m:ident) => {
        false
    };
}

/// A replication stream that has not advanced for this many heartbeats while
/// entries are outstanding is assumed to have lost appends, and restarts
/// from the follower's match point.
const STALL_HEARTBEATS: u32 = 2;

/// The highest term a node accepts from a message or its term file. At an
/// election a millisecond it lasts nine thousand years, and it leaves room
/// for every term a node can start itself; a message claiming more is
/// forged or garbled and is dropped.
pub const MAX_TERM: Term = 1 << 48;

/// Upper bound on the bytes of committed entries handed out per [`Ready`].
const MAX_COMMITTED_BYTES: usize = 4 << 20;

/// A follower: it knows (or not) the leader of its term.
#[derive(Debug)]
pub struct Follower {
    /// The leader of the current term, once heard from.
    leader: Option<NodeId>,
}

/// A candidate or pre-candidate: the answers gathered in this round.
#[derive(Debug, Default)]
pub struct Candidate {
    /// Voter -> whether it granted. This node's own vote is included.
    votes: BTreeMap<NodeId, bool>,
}

impl Candidate {
    fn granted(&self) -> usize {
        self.votes.values().filter(|g| **g).count()
    }

    fn rejected(&self) -> usize {
        self.votes.values().filter(|g| !**g).count()
    }
}

/// A read waiting for its quorum round.
#[derive(Debug)]
struct PendingRead {
    id: u64,
    /// The round that must be acknowledged by a quorum.
    seq: u64,
    /// The index the state machine must reach before serving it.
    index: LogIndex,
}

/// A leader: per-follower progress, timers and pending reads.
#[derive(Debug)]
pub struct Leader {
    progress: BTreeMap<NodeId, Progress>,
    /// Index of the no-op this leader appended; reads wait for its commit.
    noop_index: LogIndex,
    /// The latest read round started; every append carries it.
    read_seq: u64,
    /// Reads in arrival order (so also in `seq` order).
    pending_reads: VecDeque<PendingRead>,
    heartbeat_elapsed: u32,
    quorum_elapsed: u32,
    /// The snapshot sent to followers whose entries the log discarded.
    snapshot: Option<Snapshot>,
}

/// The role a node plays, with the state that role owns.
#[derive(Debug)]
enum RoleState {
    Follower(Follower),
    PreCandidate(Candidate),
    Candidate(Candidate),
    Leader(Leader),
}

/// Outputs collected between two [`Node::ready`] calls.
#[derive(Debug, Default)]
struct Outbox {
    messages: Vec<(NodeId, Message)>,
    reads: Vec<ReadState>,
    failed_reads: Vec<u64>,
    snapshot: Option<Snapshot>,
}

/// A snapshot being received from the leader, piece by piece.
#[derive(Debug)]
struct Incoming {
    from: NodeId,
    /// The leader's term when it sent the first piece.
    term: Term,
    index: LogIndex,
    index_term: Term,
    data: Vec<u8>,
}

/// A Raft node over a log and a state store.
pub struct Node<L: LogStorage, S: StateStorage> {
    id: NodeId,
    config: Config,
    /// Every other voter, sorted.
    others: Vec<NodeId>,
    term: Term,
    vote: Option<NodeId>,
    log: RaftLog<L>,
    state: S,
    role: RoleState,
    /// Ticks since the last leader contact / vote grant / election start.
    election_elapsed: u32,
    /// The current randomized election timeout.
    election_timeout: u32,
    rng: SplitMix64,
    out: Outbox,
    /// Successful append acknowledgements waiting for the local sync of the
    /// index they acknowledge, in the order they were made.
    held_acks: Vec<(NodeId, LogIndex, Message)>,
    /// A storage error met while building a [`Ready`] (which cannot fail);
    /// returned by the next fallible call.
    deferred: Option<Error>,
    /// A snapshot arriving from the leader.
    incoming: Option<Incoming>,
    /// A snapshot handed to the caller to install: who sent it, and the
    /// index and term it covers.
    installing: Option<(NodeId, LogIndex, Term)>,
}

impl<L: LogStorage, S: StateStorage> Node<L, S> {
    /// Builds a node from its configuration and durable storage; a restarted
    /// node rebuilds its state from `log` and `state` alone. It starts as a
    /// follower with commit index [`Config::applied`] and learns the rest
    /// from the leader.
    pub fn new(config: Config, log: L, state: S) -> Result<Self> {
        validate(&config)?;
        let hard = state.load()?;
        if hard.term > MAX_TERM {
            return Err(Error::InvalidInput(format!(
                "the saved term {} is beyond any term an election reaches ({MAX_TERM}); \
                 the term file was damaged or a forged message set it",
                hard.term
            )));
        }
        let log = RaftLog::new(log, config.applied)?;
        let mut others: Vec<NodeId> = config
            .peers
            .iter()
            .copied()
            .filter(|p| *p != config.id)
            .collect();
        others.sort_unstable();
        let seed = config.seed ^ config.id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut node = Node {
            id: config.id,
            config,
            others,
            term: hard.term,
            vote: hard.vote,
            log,
            state,
            role: RoleState::Follower(Follower { leader: None }),
            election_elapsed: 0,
            election_timeout: 0,
            rng: SplitMix64::new(seed),
            out: Outbox::default(),
            held_acks: Vec::new(),
            deferred: None,
            incoming: None,
            installing: None,
        };
        node.reset_election_timer();
        debug!(
            "node {} starts as follower at term {} (vote {:?}, last index {})",
            node.id,
            node.term,
            node.vote,
            node.log.last_index()
        );
        Ok(node)
    }

    /// Advances logical time by one tick: followers and candidates count
    /// towards their election timeout, a leader towards its next heartbeat
    /// and quorum check.
    pub fn tick(&mut self) -> Result<()> {
        self.check_deferred()?;
        if let RoleState::Leader(_) = self.role {
            return self.tick_leader();
        }
        self.election_elapsed += 1;
        // A single-node cluster has nobody to wait for.
        if self.election_elapsed >= self.election_timeout || self.others.is_empty() {
            self.start_election()?;
        }
        Ok(())
    }

    /// Handles one message from a peer.
    pub fn step(&mut self, from: NodeId, msg: Message) -> Result<()> {
        self.check_deferred()?;
        if from == self.id || !self.others.contains(&from) {
            warn!(
                "node {}: dropping message from unknown node {from}: {msg:?}",
                self.id
            );
            return Ok(());
        }
        trace!("node {} <- {from}: {msg:?}", self.id);
        let msg_term = msg.term();
        if msg_term > MAX_TERM {
            // No election ever gets there; adopting it would leave no room
            // for the next election's term (a forged `u64::MAX` wrapped the
            // candidates' terms to 0 and left a cluster leaderless for good).
            warn!(
                "node {}: dropping a message from {from} with impossible term {msg_term}",
                self.id
            );
            return Ok(());
        }
        if msg_term > self.term {
            match &msg {
                // A pre-vote carries the candidate's next term; it changes nothing here.
                Message::RequestVote { pre_vote: true, .. } => {}
                // A granted pre-vote echoes our own next term.
                Message::VoteResponse {
                    pre_vote: true,
                    granted: true,
                    ..
                } => {}
                Message::RequestVote { .. } if self.in_lease() => {
                    debug!(
                        "node {}: ignoring vote request from {from} at term {msg_term}: the leader is alive",
                        self.id
                    );
                    return Ok(());
                }
                Message::AppendEntries { .. } => self.become_follower(msg_term, Some(from))?,
                // Any other message only reveals a newer term: adopt it, but
                // keep the election timer running. Only a leader's append or
                // a granted vote may push the next election back; otherwise
                // a node whose log is too stale to win could keep every
                // other node from ever timing out.
                _ => self.step_down(msg_term)?,
            }
        } else if msg_term < self.term {
            return self.step_stale(from, msg);
        }
        match msg {
            Message::RequestVote {
                term,
                candidate,
                last_log_index,
                last_log_term,
                pre_vote,
            } => {
                if candidate != from {
                    warn!(
                        "node {}: vote request from {from} names candidate {candidate}",
                        self.id
                    );
                    return Ok(());
                }
                self.handle_vote_request(from, term, last_log_index, last_log_term, pre_vote)
            }
            Message::VoteResponse {
                term,
                granted,
                pre_vote,
            } => self.handle_vote_response(from, term, granted, pre_vote),
            Message::AppendEntries {
                term,
                leader,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                read_seq,
            } => {
                if leader != from {
                    warn!("node {}: append from {from} names leader {leader}", self.id);
                    return Ok(());
                }
                self.handle_append(
                    from,
                    term,
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                    read_seq,
                    false,
                )
            }
            Message::AppendResponse {
                success,
                match_index,
                conflict_index,
                conflict_term,
                read_seq,
                ..
            } => self.handle_append_response(
                from,
                success,
                match_index,
                conflict_index,
                conflict_term,
                read_seq,
            ),
            Message::InstallSnapshot {
                term,
                leader,
                index,
                index_term,
                offset,
                data,
                done,
            } => {
                if leader != from {
                    warn!(
                        "node {}: snapshot from {from} names leader {leader}",
                        self.id
                    );
                    return Ok(());
                }
                self.handle_snapshot(from, term, index, index_term, offset, data, done)
            }
            Message::SnapshotResponse {
                index, received, ..
            } => {
                self.handle_snapshot_response(from, index, received);
                Ok(())
            }
        }
    }

    /// Hands the leader a snapshot of the state machine through `index`
    /// (which the state machine has applied), for the followers that need
    /// entries the log discarded; asked for by [`Ready::snapshot_wanted`].
    /// Ignored by a node that is not the leader.
    pub fn offer_snapshot(&mut self, index: LogIndex, data: Vec<u8>) -> Result<()> {
        self.check_deferred()?;
        let applied = self.log.applied();
        if index > applied {
            return Err(Error::InvalidInput(format!(
                "a snapshot through {index} is ahead of the applied index {applied}"
            )));
        }
        let Some(term) = self.log.term(index)? else {
            return Err(Error::InvalidInput(format!(
                "a snapshot through {index} is older than the log (first entry {})",
                self.log.first_index()
            )));
        };
        if let RoleState::Leader(leader) = &mut self.role {
            debug!(
                "node {}: snapshot through {index} ({} bytes) ready for followers",
                self.id,
                data.len()
            );
            leader.snapshot = Some(Snapshot { index, term, data });
        }
        Ok(())
    }

    /// Discards the log's entries through `index`, which the state machine
    /// holds durably (a crash reopens it at `index` or later). `index` must
    /// be applied. A follower that later needs them gets a snapshot.
    pub fn compact(&mut self, index: LogIndex) -> Result<()> {
        self.check_deferred()?;
        // Not past a snapshot being sent: it would no longer bring its
        // follower to where the log resumes, and the transfer would start
        // over with a newer one (again and again under a steady load).
        let index = match &self.role {
            RoleState::Leader(leader) => match &leader.snapshot {
                Some(s)
                    if leader
                        .progress
                        .values()
                        .any(|pr| pr.snapshot_index() == Some(s.index)) =>
                {
                    index.min(s.index)
                }
                _ => index,
            },
            _ => index,
        };
        self.log.compact(index)
    }

    /// Reports that the snapshot from [`Ready::snapshot`] is now the state
    /// machine's durable state: the log then starts after it, and the leader
    /// learns that this node holds everything through its index.
    pub fn snapshot_installed(&mut self, index: LogIndex, term: Term) -> Result<()> {
        self.check_deferred()?;
        let Some((from, want_index, want_term)) = self.installing.take() else {
            return Err(Error::InvalidInput(
                "no snapshot was handed out to install".into(),
            ));
        };
        if (index, term) != (want_index, want_term) {
            return Err(Error::InvalidInput(format!(
                "installed snapshot {index}/{term}, but {want_index}/{want_term} was handed out"
            )));
        }
        if !mutated!(self, InstallKeepsLog) {
            self.log.install_snapshot(index, term)?;
        }
        if let Some(cut) = self.log.take_cut() {
            self.held_acks.retain(|(_, i, _)| *i <= cut);
        }
        debug!(
            "node {} installed a snapshot through {index} (term {term})",
            self.id
        );
        let ack = Message::AppendResponse {
            term: self.term,
            success: true,
            match_index: index,
            conflict_index: 0,
            conflict_term: None,
            read_seq: 0,
        };
        self.send_ack(from, index, ack);
        Ok(())
    }

    /// Reports that the snapshot from [`Ready::snapshot`] could not be
    /// installed because its content is malformed (the state machine
    /// refused it before changing anything). The node forgets it and takes
    /// a snapshot from the leader again; nothing was acknowledged.
    pub fn snapshot_rejected(&mut self) {
        if let Some((from, index, _)) = self.installing.take() {
            warn!(
                "node {}: the snapshot through {index} from {from} was malformed; waiting for another",
                self.id
            );
        }
        self.incoming = None;
    }

    /// Appends a command to the log on the leader; returns its index, or
    /// `Error::NotLeader` with a hint. The entry goes out to followers with
    /// the next [`Node::ready`], batched with every other proposal made
    /// since the previous one.
    ///
    /// The index is not a promise: if leadership is lost the entry may be
    /// overwritten. The caller learns the outcome from the entry that is
    /// eventually committed at that index (same term: this proposal).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<LogIndex> {
        self.check_deferred()?;
        if !matches!(self.role, RoleState::Leader(_)) {
            return Err(Error::NotLeader {
                leader: self.leader_hint(),
            });
        }
        let index = self.log.append_new(self.term, data)?;
        trace!(
            "node {}: proposed entry {index} at term {}",
            self.id, self.term
        );
        Ok(index)
    }

    /// Requests a linearizable read under the caller's `id`; it appears in
    /// [`Ready::reads`] once safe, or in [`Ready::failed_reads`] if this
    /// node loses leadership first. Returns `Error::NotLeader` on a
    /// non-leader.
    pub fn read_index(&mut self, id: u64) -> Result<()> {
        self.check_deferred()?;
        let commit = self.log.commit();
        let without_quorum = mutated!(self, ReadWithoutQuorum);
        let RoleState::Leader(leader) = &mut self.role else {
            return Err(Error::NotLeader {
                leader: self.leader_hint(),
            });
        };
        if without_quorum {
            self.out.reads.push(ReadState { id, index: commit });
            return Ok(());
        }
        // Everything committed before this read arrived is at or below the
        // commit index, or, for a leader whose no-op is not yet committed,
        // at or below the no-op.
        leader.pending_reads.push_back(PendingRead {
            id,
            seq: leader.read_seq + 1,
            index: commit.max(leader.noop_index),
        });
        Ok(())
    }

    /// Whether [`Node::ready`] has anything to hand out.
    pub fn has_ready(&self) -> bool {
        let out = &self.out;
        if !out.messages.is_empty()
            || !out.reads.is_empty()
            || !out.failed_reads.is_empty()
            || self.sync_wanted()
            || out.snapshot.is_some()
            || (self.installing.is_none() && self.log.has_committed())
            || self.deferred.is_some()
        {
            return true;
        }
        match &self.role {
            RoleState::Leader(leader) => {
                leader
                    .pending_reads
                    .back()
                    .is_some_and(|r| r.seq > leader.read_seq)
                    || leader
                        .progress
                        .values()
                        .any(|pr| pr.can_send(self.log.last_index(), self.config.max_inflight))
                    || (leader.snapshot.is_some()
                        && leader.progress.values().any(|pr| {
                            matches!(pr.state, ProgressState::Snapshot { paused: false, .. })
                        }))
            }
            _ => false,
        }
    }

    /// Takes the outputs produced since the last call: a leader's appends
    /// (built here, so all proposals since the last call share one message
    /// per follower), newly released reads and committed entries.
    ///
    /// A storage error met while building it cannot be returned here; the
    /// Ready then has `needs_sync` set and [`Node::begin_sync`] returns the
    /// error.
    pub fn ready(&mut self) -> Ready {
        if let Err(e) = self.prepare_ready() {
            error!(
                "node {}: storage error while preparing outputs: {e}",
                self.id
            );
            self.deferred.get_or_insert(e);
        }
        // While the caller installs a snapshot, entries wait: they may
        // follow it.
        let committed = match self.installing {
            Some(_) => Ok(Vec::new()),
            None => self.log.take_committed(MAX_COMMITTED_BYTES),
        };
        let committed = match committed {
            Ok(entries) => entries,
            Err(e) => {
                error!(
                    "node {}: storage error reading committed entries: {e}",
                    self.id
                );
                self.deferred.get_or_insert(e);
                Vec::new()
            }
        };
        let out = std::mem::take(&mut self.out);
        Ready {
            messages: out.messages,
            committed,
            reads: out.reads,
            failed_reads: out.failed_reads,
            needs_sync: self.sync_wanted() || self.deferred.is_some(),
            snapshot_wanted: self.snapshot_wanted(),
            snapshot: out.snapshot,
        }
    }

    /// Starts a sync of the log's changes, if there are any and no sync is
    /// in flight. The caller runs the returned job (on any thread, while it
    /// goes on feeding inputs) and reports its result with
    /// [`Node::finish_sync`]. Returns a storage error met earlier, if any.
    pub fn begin_sync(&mut self) -> Result<Option<SyncJob>> {
        self.check_deferred()?;
        if self.log.sync_in_flight() {
            return Ok(None);
        }
        self.log.begin_sync()
    }

    /// Records the outcome of the job from [`Node::begin_sync`]. On success
    /// the captured entries count as durable: acknowledgements waiting for
    /// them are released and a leader counts itself towards a quorum (and
    /// may commit). An error ends the sync and is returned as is; the log's
    /// state is then unknown and the node must stop.
    pub fn finish_sync(&mut self, result: Result<()>) -> Result<()> {
        self.log.finish_sync(result.is_ok());
        result?;
        let synced = self.log.synced();
        let released: Vec<_> = self
            .held_acks
            .extract_if(.., |(_, index, _)| *index <= synced)
            .collect();
        let first = self.out.messages.len();
        for (to, _, msg) in released {
            // Acknowledgements are cumulative: one per leader and term
            // carries what a sync released for every append it covered.
            let merged = self.out.messages[first..]
                .iter_mut()
                .any(|(t, held)| *t == to && merge_acks(held, &msg));
            if !merged {
                self.out.messages.push((to, msg));
            }
        }
        if let RoleState::Leader(_) = self.role {
            self.maybe_commit()?;
            self.release_reads();
        }
        Ok(())
    }

    /// Whether a sync was begun and not yet finished.
    pub fn sync_in_flight(&self) -> bool {
        self.log.sync_in_flight()
    }

    /// Syncs the log and waits for the disk: [`Node::begin_sync`], the job
    /// and [`Node::finish_sync`] in one call. Messages it releases come out
    /// of the next [`Node::ready`]. Fails if a sync is already in flight.
    pub fn sync(&mut self) -> Result<()> {
        if self.log.sync_in_flight() {
            return Err(Error::InvalidInput(
                "a log sync is already in flight".into(),
            ));
        }
        if let Some(job) = self.begin_sync()? {
            let result = job.run();
            self.finish_sync(result)?;
        }
        Ok(())
    }

    /// The node's current status.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role(),
            term: self.term,
            leader: self.leader_hint(),
            commit_index: self.log.commit(),
            last_index: self.log.last_index(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The log storage (read-only), for inspection.
    pub fn log_storage(&self) -> &L {
        self.log.storage()
    }

    /// The state storage (read-only), for inspection.
    pub fn state_storage(&self) -> &S {
        &self.state
    }

    /// The role this node plays now.
    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower(_) => Role::Follower,
            RoleState::PreCandidate(_) => Role::PreCandidate,
            RoleState::Candidate(_) => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    /// The current term and vote, as last saved.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
        }
    }

    /// The last index handed out in [`Ready::committed`] (or
    /// [`Config::applied`] if none yet).
    pub fn applied_index(&self) -> LogIndex {
        self.log.applied()
    }

    /// The highest index known to be durable in the local log.
    pub fn synced_index(&self) -> LogIndex {
        self.log.synced()
    }

    // ---- Internals -------------------------------------------------------

    /// Whether a leader has a follower to send a snapshot to but no
    /// snapshot that covers the discarded entries.
    fn snapshot_wanted(&self) -> bool {
        let RoleState::Leader(leader) = &self.role else {
            return false;
        };
        let usable = leader
            .snapshot
            .as_ref()
            .is_some_and(|s| s.index + 1 >= self.log.first_index());
        // Only for a follower that answered lately: one that is down would
        // have a new snapshot made for it after every compaction.
        !usable
            && leader
                .progress
                .values()
                .any(|pr| pr.is_snapshot() && pr.recent_active)
    }

    /// Whether the log has changes a new sync should cover now.
    fn sync_wanted(&self) -> bool {
        self.log.needs_sync() && !self.log.sync_in_flight()
    }

    fn check_deferred(&mut self) -> Result<()> {
        match self.deferred.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Votes needed for a majority of the whole cluster.
    fn quorum(&self) -> usize {
        self.config.peers.len() / 2 + 1
    }

    fn leader_hint(&self) -> Option<NodeId> {
        match &self.role {
            RoleState::Follower(f) => f.leader,
            RoleState::Leader(_) => Some(self.id),
            _ => None,
        }
    }

    /// Whether this node has recently heard from a live leader (or is one
    /// that checks its quorum), in which case it refuses to help elect
    /// another.
    fn in_lease(&self) -> bool {
        match &self.role {
            RoleState::Leader(_) => self.config.check_quorum,
            RoleState::Follower(f) => {
                f.leader.is_some() && self.election_elapsed < self.config.election_ticks_min
            }
            _ => false,
        }
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.election_timeout = self.rng.range(
            self.config.election_ticks_min,
            self.config.election_ticks_max,
        );
    }

    /// Saves term and vote durably, then adopts them.
    fn save_hard_state(&mut self, term: Term, vote: Option<NodeId>) -> Result<()> {
        self.state.save(&HardState { term, vote })?;
        self.term = term;
        self.vote = vote;
        Ok(())
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        trace!("node {} -> {to}: {msg:?}", self.id);
        self.out.messages.push((to, msg));
    }

    /// Queues a successful append acknowledgement for `index`: it leaves
    /// once the log is synced through `index`.
    fn send_ack(&mut self, to: NodeId, index: LogIndex, msg: Message) {
        if index <= self.log.synced() || mutated!(self, AckBeforeSync) {
            self.send(to, msg);
            return;
        }
        trace!("node {} -> {to} (once {index} is synced): {msg:?}", self.id);
        self.held_acks.push((to, index, msg));
    }

    // ---- Role transitions ------------------------------------------------

    /// Becomes a follower at `term` (saving it if it is new, with no vote)
    /// and restarts the election timer.
    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) -> Result<()> {
        self.enter_follower(term, leader)?;
        self.reset_election_timer();
        Ok(())
    }

    /// Becomes a leaderless follower at the newer `term` without touching
    /// the election timer: a node that only learned of a newer term keeps
    /// counting towards its own election.
    fn step_down(&mut self, term: Term) -> Result<()> {
        self.enter_follower(term, None)?;
        // A former leader's elapsed count stopped when it took office; the
        // timeout it drew then still stands.
        Ok(())
    }

    fn enter_follower(&mut self, term: Term, leader: Option<NodeId>) -> Result<()> {
        if term > self.term {
            self.save_hard_state(term, None)?;
            // A snapshot half received from an older term's leader is
            // dropped (a newer leader starts over).
            self.incoming = None;
        }
        let old = std::mem::replace(&mut self.role, RoleState::Follower(Follower { leader }));
        if let RoleState::Leader(l) = old {
            self.out
                .failed_reads
                .extend(l.pending_reads.into_iter().map(|r| r.id));
        }
        debug!(
            "node {} becomes follower at term {term} (leader {leader:?})",
            self.id
        );
        Ok(())
    }

    /// Starts an election: a pre-vote round if configured, else a real one.
    fn start_election(&mut self) -> Result<()> {
        if self.config.pre_vote {
            self.become_pre_candidate()
        } else {
            self.become_candidate()
        }
    }

    /// Asks whether an election at the next term could succeed, without
    /// changing the term.
    fn become_pre_candidate(&mut self) -> Result<()> {
        let mut c = Candidate::default();
        c.votes.insert(self.id, true);
        self.role = RoleState::PreCandidate(c);
        self.incoming = None;
        self.reset_election_timer();
        debug!(
            "node {} starts a pre-vote for term {}",
            self.id,
            self.term + 1
        );
        let msg = Message::RequestVote {
            term: self.term + 1,
            candidate: self.id,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            pre_vote: true,
        };
        for to in self.others.clone() {
            self.send(to, msg.clone());
        }
        self.poll()
    }

    /// Starts a real election at the next term, voting for itself.
    fn become_candidate(&mut self) -> Result<()> {
        self.save_hard_state(self.term + 1, Some(self.id))?;
        let mut c = Candidate::default();
        c.votes.insert(self.id, true);
        self.role = RoleState::Candidate(c);
        self.incoming = None;
        self.reset_election_timer();
        debug!("node {} starts an election at term {}", self.id, self.term);
        let msg = Message::RequestVote {
            term: self.term,
            candidate: self.id,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            pre_vote: false,
        };
        for to in self.others.clone() {
            self.send(to, msg.clone());
        }
        self.poll()
    }

    /// Takes office: fresh progress for every follower, and a no-op entry so
    /// that something of this term can commit (which commits everything
    /// before it and unblocks reads).
    fn become_leader(&mut self) -> Result<()> {
        let noop_index = self.log.last_index() + 1;
        let progress = self
            .others
            .iter()
            .map(|id| (*id, Progress::new(noop_index)))
            .collect();
        self.role = RoleState::Leader(Leader {
            progress,
            noop_index,
            read_seq: 0,
            pending_reads: VecDeque::new(),
            heartbeat_elapsed: 0,
            quorum_elapsed: 0,
            snapshot: None,
        });
        self.log.append_new(self.term, Vec::new())?;
        debug!(
            "node {} becomes leader at term {} (no-op at {noop_index})",
            self.id, self.term
        );
        Ok(())
    }

    /// Checks whether the current (pre-)election is decided.
    fn poll(&mut self) -> Result<()> {
        let quorum = self.quorum();
        match &self.role {
            RoleState::PreCandidate(c) if c.granted() >= quorum => self.become_candidate(),
            RoleState::Candidate(c) if c.granted() >= quorum => self.become_leader(),
            RoleState::PreCandidate(c) | RoleState::Candidate(c) if c.rejected() >= quorum => {
                debug!("node {} lost the election at term {}", self.id, self.term);
                self.become_follower(self.term, None)
            }
            _ => Ok(()),
        }
    }

    // ---- Message handlers ------------------------------------------------

    /// Handles a message carrying an older term than ours.
    fn step_stale(&mut self, from: NodeId, msg: Message) -> Result<()> {
        match msg {
            // Tell a stale (pre-)candidate about the newer term.
            Message::RequestVote { pre_vote, .. } => {
                let reply = Message::VoteResponse {
                    term: self.term,
                    granted: false,
                    pre_vote,
                };
                self.send(from, reply);
                Ok(())
            }
            Message::AppendEntries {
                term,
                leader,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                read_seq,
            } => {
                if mutated!(self, AcceptStaleAppend) && leader == from {
                    return self.handle_append(
                        from,
                        term,
                        prev_log_index,
                        prev_log_term,
                        entries,
                        leader_commit,
                        read_seq,
                        true,
                    );
                }
                // Tell a deposed leader about the newer term so it steps down.
                let reply = Message::AppendResponse {
                    term: self.term,
                    success: false,
                    match_index: prev_log_index,
                    conflict_index: 0,
                    conflict_term: None,
                    read_seq,
                };
                self.send(from, reply);
                Ok(())
            }
            // Tell a deposed leader about the newer term.
            Message::InstallSnapshot { index, .. } => {
                let reply = Message::SnapshotResponse {
                    term: self.term,
                    index,
                    received: 0,
                };
                self.send(from, reply);
                Ok(())
            }
            Message::VoteResponse {
                term,
                granted,
                pre_vote: false,
            } if mutated!(self, CountStaleVotes) => {
                self.handle_vote_response(from, term, granted, false)
            }
            other => {
                trace!(
                    "node {}: ignoring stale message from {from}: {other:?}",
                    self.id
                );
                Ok(())
            }
        }
    }

    /// Answers a (pre-)vote request at a term no older than ours (for a real
    /// vote, our term already equals the request's).
    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        last_log_index: LogIndex,
        last_log_term: Term,
        pre_vote: bool,
    ) -> Result<()> {
        let up_to_date = self.log.is_up_to_date(last_log_index, last_log_term)
            || mutated!(self, SkipVoteLogCheck);
        let free_to_vote = self.vote.is_none() || self.vote == Some(from);
        if pre_vote {
            let granted = up_to_date && !self.in_lease() && (term > self.term || free_to_vote);
            debug!(
                "node {} {} pre-vote for {from} at term {term}",
                self.id,
                if granted { "grants" } else { "rejects" }
            );
            let reply = Message::VoteResponse {
                term: if granted { term } else { self.term },
                granted,
                pre_vote: true,
            };
            self.send(from, reply);
            return Ok(());
        }
        let granted = up_to_date && free_to_vote;
        if granted {
            if self.vote.is_none() {
                self.save_hard_state(self.term, Some(from))?;
            }
            self.reset_election_timer();
        }
        debug!(
            "node {} {} vote for {from} at term {}",
            self.id,
            if granted { "grants" } else { "rejects" },
            self.term
        );
        let reply = Message::VoteResponse {
            term: self.term,
            granted,
            pre_vote: false,
        };
        self.send(from, reply);
        Ok(())
    }

    /// Counts a (pre-)vote answer towards the current round.
    fn handle_vote_response(
        &mut self,
        from: NodeId,
        term: Term,
        granted: bool,
        pre_vote: bool,
    ) -> Result<()> {
        let current = match (&self.role, pre_vote) {
            // A granted pre-vote echoes the term we asked for.
            (RoleState::PreCandidate(_), true) => !granted || term == self.term + 1,
            (RoleState::Candidate(_), false) => {
                term == self.term || mutated!(self, CountStaleVotes)
            }
            _ => false,
        };
        if !current {
            trace!(
                "node {}: ignoring vote response from {from} at term {term}",
                self.id
            );
            return Ok(());
        }
        if let RoleState::PreCandidate(c) | RoleState::Candidate(c) = &mut self.role {
            c.votes.insert(from, granted);
        }
        self.poll()
    }

    /// Handles an append (or heartbeat) from the leader of our term; with
    /// `stale`, one from an older term (only under a mutation).
    #[allow(clippy::too_many_arguments)]
    fn handle_append(
        &mut self,
        from: NodeId,
        term: Term,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<crate::storage::Entry>,
        leader_commit: LogIndex,
        read_seq: u64,
        stale: bool,
    ) -> Result<()> {
        if !valid_entries(term, prev_log_index, prev_log_term, &entries) {
            warn!(
                "node {}: dropping malformed append from {from} (prev {prev_log_index}/{prev_log_term}, {} entries)",
                self.id,
                entries.len()
            );
            return Ok(());
        }
        if !stale && !self.follow(from, term)? {
            return Ok(());
        }
        let reply_term = if stale { term } else { self.term };
        let reply = |success, match_index, conflict_index, conflict_term| Message::AppendResponse {
            term: reply_term,
            success,
            match_index,
            conflict_index,
            conflict_term,
            read_seq,
        };

        // Entries the log already discarded are committed, hence matching:
        // skip them.
        let compacted = self.log.first_index().saturating_sub(1);
        let (mut prev, mut prev_term, mut entries) = (prev_log_index, prev_log_term, entries);
        if prev < compacted {
            let skip = (compacted - prev) as usize;
            if skip >= entries.len() {
                let last = prev + entries.len() as LogIndex;
                self.send_ack(from, last, reply(true, last, 0, None));
                return Ok(());
            }
            prev = compacted;
            prev_term = entries[skip - 1].term;
            entries.drain(..skip);
        }

        // Consistency check: our log must hold the leader's previous entry.
        if !self.log.matches(prev, prev_term)? {
            let (conflict_index, conflict_term) = self.log.conflict_hint(prev)?;
            debug!(
                "node {} rejects append from {from} at {prev}/{prev_term}: hint {conflict_index}/{conflict_term:?}",
                self.id
            );
            self.send(from, reply(false, prev, conflict_index, conflict_term));
            return Ok(());
        }
        let last_new = prev + entries.len() as LogIndex;
        let outcome = self.log.append_from_leader(&entries)?;
        if let Some(cut) = self.log.take_cut() {
            // Acknowledgements of the replaced entries would be false once
            // the log is synced again.
            self.held_acks.retain(|(_, index, _)| *index <= cut);
        }
        match outcome {
            AppendOutcome::Matched(_) => {}
            AppendOutcome::ConflictsWithCommitted(index) => {
                error!(
                    "node {}: append from {from} conflicts with committed entry {index} (commit {}); ignoring",
                    self.id,
                    self.log.commit()
                );
                return Ok(());
            }
        }
        self.log.commit_to(leader_commit.min(last_new));
        self.send_ack(from, last_new, reply(true, last_new, 0, None));
        Ok(())
    }

    /// Accepts `from` as the leader of the current `term` (a message from
    /// it arrived): a (pre-)candidate gives up, a follower learns its
    /// leader, and the election timer restarts. Returns false (and changes
    /// nothing) if another node already leads this term.
    fn follow(&mut self, from: NodeId, term: Term) -> Result<bool> {
        match &mut self.role {
            RoleState::Leader(_) => {
                error!(
                    "node {}: another leader {from} claims term {term}; ignoring",
                    self.id
                );
                return Ok(false);
            }
            RoleState::Follower(f) => match f.leader {
                None => {
                    f.leader = Some(from);
                    debug!("node {} follows leader {from} at term {term}", self.id);
                }
                Some(l) if l != from => {
                    error!(
                        "node {}: {from} claims leadership of term {term} held by {l}",
                        self.id
                    );
                    return Ok(false);
                }
                Some(_) => {}
            },
            RoleState::PreCandidate(_) | RoleState::Candidate(_) => {
                self.become_follower(term, Some(from))?;
            }
        }
        self.election_elapsed = 0;
        Ok(true)
    }

    /// Handles a piece of the leader's snapshot.
    #[allow(clippy::too_many_arguments)]
    fn handle_snapshot(
        &mut self,
        from: NodeId,
        term: Term,
        index: LogIndex,
        index_term: Term,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    ) -> Result<()> {
        if index_term > term || index == 0 {
            warn!(
                "node {}: dropping malformed snapshot from {from} (through {index}, term {index_term})",
                self.id
            );
            return Ok(());
        }
        if !self.follow(from, term)? {
            return Ok(());
        }
        if self.installing.is_some() {
            // The caller is installing a snapshot; its acknowledgement
            // follows.
            return Ok(());
        }
        let commit = self.log.commit();
        if index <= commit {
            // Everything it covers is committed here already, so it matches
            // the leader's log.
            self.incoming = None;
            let ack = Message::AppendResponse {
                term: self.term,
                success: true,
                match_index: commit,
                conflict_index: 0,
                conflict_term: None,
                read_seq: 0,
            };
            self.send_ack(from, commit, ack);
            return Ok(());
        }
        let same = |i: &Incoming| {
            (i.from, i.term, i.index, i.index_term) == (from, term, index, index_term)
        };
        // The first piece starts over (a newer snapshot, or the leader sent
        // it again), unless this node holds more of the same snapshot
        // already: then it is a late duplicate, answered below.
        let ahead = self
            .incoming
            .as_ref()
            .is_some_and(|i| same(i) && i.data.len() > data.len());
        if offset == 0 && !ahead {
            self.incoming = Some(Incoming {
                from,
                term,
                index,
                index_term,
                data: Vec::new(),
            });
        }
        let received = match self.incoming.as_mut() {
            Some(i) if same(i) && i.data.len() as u64 == offset => {
                i.data.extend_from_slice(&data);
                if done {
                    let whole = self.incoming.take().expect("matched above");
                    debug!(
                        "node {}: received a snapshot through {index} ({} bytes) from {from}",
                        self.id,
                        whole.data.len()
                    );
                    self.installing = Some((from, index, index_term));
                    self.out.snapshot = Some(Snapshot {
                        index,
                        term: index_term,
                        data: whole.data,
                    });
                    return Ok(());
                }
                i.data.len() as u64
            }
            Some(i) if same(i) => i.data.len() as u64,
            // A piece of a snapshot whose start this node does not hold.
            _ => 0,
        };
        let reply = Message::SnapshotResponse {
            term: self.term,
            index,
            received,
        };
        self.send(from, reply);
        Ok(())
    }

    /// Handles a follower's answer to a piece of a snapshot.
    fn handle_snapshot_response(&mut self, from: NodeId, index: LogIndex, received: u64) {
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let Some(pr) = leader.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        let len = leader.snapshot.as_ref().map_or(0, |s| s.data.len() as u64);
        pr.snapshot_received(index, received.min(len));
    }

    /// Handles a follower's answer to an append or heartbeat.
    fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        match_index: LogIndex,
        conflict_index: LogIndex,
        conflict_term: Option<Term>,
        read_seq: u64,
    ) -> Result<()> {
        let last_index = self.log.last_index();
        let RoleState::Leader(leader) = &mut self.role else {
            trace!(
                "node {}: ignoring append response from {from}: not leader",
                self.id
            );
            return Ok(());
        };
        let Some(pr) = leader.progress.get_mut(&from) else {
            return Ok(());
        };
        pr.recent_active = true;
        if read_seq <= leader.read_seq {
            pr.read_ack = pr.read_ack.max(read_seq);
        }
        let mut advanced = false;
        if success {
            if match_index > last_index {
                warn!(
                    "node {}: {from} acknowledges index {match_index} beyond our last {last_index}",
                    self.id
                );
                return Ok(());
            }
            advanced = pr.acknowledge(match_index);
        } else {
            // Back up a whole term at a time: if we have entries of the
            // follower's conflicting term, resume after our last one;
            // otherwise skip the follower's whole run of that term.
            let retry = match conflict_term {
                Some(t) => match self.log.last_index_of_term(t, match_index)? {
                    Some(i) => i + 1,
                    None => conflict_index,
                },
                None => conflict_index,
            };
            if pr.reject(match_index, retry) {
                debug!(
                    "node {}: {from} rejected append at {match_index}; probing from {}",
                    self.id, pr.next
                );
            }
        }
        if advanced {
            self.maybe_commit()?;
        }
        self.release_reads();
        Ok(())
    }

    // ---- Leader duties ---------------------------------------------------

    fn tick_leader(&mut self) -> Result<()> {
        let quorum = self.quorum();
        let last_index = self.log.last_index();
        let RoleState::Leader(leader) = &mut self.role else {
            return Ok(());
        };
        leader.heartbeat_elapsed += 1;
        if leader.heartbeat_elapsed >= self.config.heartbeat_ticks {
            leader.heartbeat_elapsed = 0;
            let prefix = self.log.first_index() - 1;
            for (&to, pr) in leader.progress.iter_mut() {
                pr.on_heartbeat(last_index, STALL_HEARTBEATS);
                // A probe goes out with the next ready() and serves as the
                // heartbeat; a replicating follower gets an empty append.
                if pr.is_probe() {
                    continue;
                }
                // A follower waiting for a snapshot gets one at the log's
                // start: its answer, whatever it is, shows it is alive and
                // worth making a snapshot for.
                let at = if pr.is_snapshot() { prefix } else { pr.matched };
                if let Some(msg) = heartbeat(&self.log, at, self.id, self.term, leader.read_seq)? {
                    trace!("node {} -> {to}: {msg:?}", self.id);
                    self.out.messages.push((to, msg));
                }
            }
        }
        leader.quorum_elapsed += 1;
        if leader.quorum_elapsed >= self.config.election_ticks_min {
            leader.quorum_elapsed = 0;
            let active = 1 + leader
                .progress
                .values()
                .filter(|pr| pr.recent_active)
                .count();
            for pr in leader.progress.values_mut() {
                // A follower that did not answer for a whole window stops
                // being sent its snapshot (so the leader may drop it, and
                // compact past it); it gets heartbeats at the log's start,
                // and a fresh snapshot once it answers.
                if pr.is_snapshot() && !pr.recent_active {
                    pr.become_snapshot();
                }
                pr.recent_active = false;
            }
            if self.config.check_quorum && active < quorum {
                debug!(
                    "node {} steps down at term {}: heard from only {active} of {} nodes",
                    self.id,
                    self.term,
                    self.config.peers.len()
                );
                return self.become_follower(self.term, None);
            }
        }
        Ok(())
    }

    /// Advances the commit index to the highest index replicated on a
    /// quorum, if that entry is from the current term.
    fn maybe_commit(&mut self) -> Result<()> {
        let RoleState::Leader(leader) = &self.role else {
            return Ok(());
        };
        let mut matched: Vec<LogIndex> = leader.progress.values().map(|pr| pr.matched).collect();
        matched.push(self.log.synced());
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let index = matched[self.quorum() - 1];
        if index <= self.log.commit() {
            return Ok(());
        }
        if self.log.term(index)? == Some(self.term) || mutated!(self, CommitOldTermEntry) {
            trace!("node {} commits through {index}", self.id);
            self.log.commit_to(index);
        }
        Ok(())
    }

    /// Releases the pending reads whose round a quorum has acknowledged,
    /// once the leader has committed an entry of its term.
    fn release_reads(&mut self) {
        let quorum = self.quorum();
        let commit = self.log.commit();
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        if leader.pending_reads.is_empty() || commit < leader.noop_index {
            return;
        }
        let mut acks: Vec<u64> = leader.progress.values().map(|pr| pr.read_ack).collect();
        acks.push(leader.read_seq);
        acks.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = acks[quorum - 1];
        while leader
            .pending_reads
            .front()
            .is_some_and(|r| r.seq <= confirmed)
        {
            if let Some(r) = leader.pending_reads.pop_front() {
                self.out.reads.push(ReadState {
                    id: r.id,
                    index: r.index,
                });
            }
        }
    }

    /// Builds the leader's outgoing appends and starts a read round if
    /// reads are waiting for one.
    fn prepare_ready(&mut self) -> Result<()> {
        let last_index = self.log.last_index();
        let RoleState::Leader(leader) = &mut self.role else {
            return Ok(());
        };
        // One round serves every read that arrived since the last one.
        if leader
            .pending_reads
            .back()
            .is_some_and(|r| r.seq > leader.read_seq)
        {
            leader.read_seq += 1;
            for (&to, pr) in leader.progress.iter() {
                if let Some(msg) =
                    heartbeat(&self.log, pr.matched, self.id, self.term, leader.read_seq)?
                {
                    trace!("node {} -> {to}: {msg:?}", self.id);
                    self.out.messages.push((to, msg));
                }
            }
        }
        let first_index = self.log.first_index();
        // A snapshot older than the log's start cannot bring a follower to
        // where appends resume.
        if leader
            .snapshot
            .as_ref()
            .is_some_and(|s| s.index + 1 < first_index)
        {
            leader.snapshot = None;
        }
        // A snapshot no live follower needs only takes memory.
        let wanted =
            |pr: &Progress| pr.snapshot_index().is_some() || (pr.is_snapshot() && pr.recent_active);
        if !leader.progress.values().any(wanted) {
            leader.snapshot = None;
        }
        for (&to, pr) in leader.progress.iter_mut() {
            if pr.is_snapshot() {
                if let Some(snap) = &leader.snapshot
                    && wanted(pr)
                {
                    pr.snapshot_from(snap.index);
                    if let Some(msg) =
                        snapshot_piece(snap, pr, self.id, self.term, self.config.max_append_bytes)
                    {
                        trace!("node {} -> {to}: snapshot piece", self.id);
                        self.out.messages.push((to, msg));
                    }
                }
                continue;
            }
            while pr.can_send(last_index, self.config.max_inflight) {
                let prev = pr.next - 1;
                let prev_term = if pr.next < first_index {
                    None
                } else {
                    self.log.term(prev)?
                };
                let Some(prev_term) = prev_term else {
                    debug!(
                        "node {}: {to} needs entry {prev}, which the log discarded: sending a snapshot",
                        self.id
                    );
                    pr.become_snapshot();
                    break;
                };
                let entries = if pr.next <= last_index {
                    self.log
                        .entries_limited(pr.next, last_index, self.config.max_append_bytes)?
                } else {
                    Vec::new()
                };
                let last = prev + entries.len() as LogIndex;
                let msg = Message::AppendEntries {
                    term: self.term,
                    leader: self.id,
                    prev_log_index: prev,
                    prev_log_term: prev_term,
                    entries,
                    leader_commit: self.log.commit(),
                    read_seq: leader.read_seq,
                };
                trace!("node {} -> {to}: {msg:?}", self.id);
                self.out.messages.push((to, msg));
                pr.sent(last);
            }
        }
        self.release_reads();
        Ok(())
    }
}

/// The next piece of `snap` for a follower in the Snapshot state, unless
/// one is unanswered; marks it sent.
fn snapshot_piece(
    snap: &Snapshot,
    pr: &mut Progress,
    id: NodeId,
    term: Term,
    max_bytes: usize,
) -> Option<Message> {
    let ProgressState::Snapshot { offset, paused, .. } = &mut pr.state else {
        return None;
    };
    if *paused {
        return None;
    }
    let start = (*offset as usize).min(snap.data.len());
    let end = start + max_bytes.max(1).min(snap.data.len() - start);
    *paused = true;
    Some(Message::InstallSnapshot {
        term,
        leader: id,
        index: snap.index,
        index_term: snap.term,
        offset: start as u64,
        data: snap.data[start..end].to_vec(),
        done: end == snap.data.len(),
    })
}

/// Folds the successful acknowledgement `next` into `into`, if both are
/// successful acknowledgements of one term: the result acknowledges the
/// higher match index and the later read round, each of which one of them
/// acknowledged already. Returns whether it did.
fn merge_acks(into: &mut Message, next: &Message) -> bool {
    let (
        Message::AppendResponse {
            term,
            success: true,
            match_index,
            read_seq,
            ..
        },
        Message::AppendResponse {
            term: next_term,
            success: true,
            match_index: next_match,
            read_seq: next_seq,
            ..
        },
    ) = (into, next)
    else {
        return false;
    };
    if term != next_term {
        return false;
    }
    *match_index = (*match_index).max(*next_match);
    *read_seq = (*read_seq).max(*next_seq);
    true
}

/// An empty append at `at`, normally the follower's match point: there it
/// always passes the consistency check, and carries the commit index (which
/// the follower caps at the match point) and the read round.
fn heartbeat<L: LogStorage>(
    log: &RaftLog<L>,
    at: LogIndex,
    id: NodeId,
    term: Term,
    read_seq: u64,
) -> Result<Option<Message>> {
    let Some(prev_term) = log.term(at)? else {
        return Ok(None);
    };
    Ok(Some(Message::AppendEntries {
        term,
        leader: id,
        prev_log_index: at,
        prev_log_term: prev_term,
        entries: Vec::new(),
        leader_commit: log.commit(),
        read_seq,
    }))
}

/// Whether an append's entries are well formed: contiguous indexes right
/// after `prev_index`, terms never decreasing from `prev_term` and never
/// above the leader's term.
fn valid_entries(
    term: Term,
    prev_index: LogIndex,
    prev_term: Term,
    entries: &[crate::storage::Entry],
) -> bool {
    if prev_term > term {
        return false;
    }
    if prev_index.checked_add(entries.len() as LogIndex).is_none() {
        return false;
    }
    let mut last_term = prev_term;
    for (offset, e) in entries.iter().enumerate() {
        if e.index != prev_index + 1 + offset as LogIndex || e.term < last_term || e.term > term {
            return false;
        }
        last_term = e.term;
    }
    true
}

/// Rejects configurations the node cannot run with.
fn validate(config: &Config) -> Result<()> {
    let fail = |msg: String| Err(Error::Config(msg));
    if !config.peers.contains(&config.id) {
        return fail(format!(
            "node {} is not in the peer list {:?}",
            config.id, config.peers
        ));
    }
    let mut sorted = config.peers.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != config.peers.len() {
        return fail(format!(
            "duplicate node ids in the peer list {:?}",
            config.peers
        ));
    }
    if config.heartbeat_ticks == 0 || config.election_ticks_min == 0 {
        return fail("heartbeat and election timeouts must be at least one tick".into());
    }
    if config.election_ticks_max < config.election_ticks_min {
        return fail(format!(
            "election timeout range {}..{} is empty",
            config.election_ticks_min, config.election_ticks_max
        ));
    }
    if config.max_inflight == 0 {
        return fail("max_inflight must be at least 1".into());
    }
    Ok(())
}

//! The simulated cluster: nodes, network, clients and the fault injector,
//! driven by one event queue and one seeded generator.
//!
//! Each node is driven the way the server drives it: inputs (ticks, peer
//! messages, client calls) are stepped into the node as they arrive; a ready
//! cycle runs a little later, so several inputs can share one cycle (the
//! server batches them the same way). A cycle sends the node's messages,
//! applies its committed entries, serves its reads and, if the log has
//! changes and no sync is running, starts a sync. The sync's job runs at a
//! later event (as the server's sync thread would finish it) and is then
//! reported to the node; meanwhile the node keeps taking inputs and running
//! cycles. A crash can come at any moment between two events and loses
//! whatever the log had not synced; a sync job running at that moment either
//! reached the disk first or did not, at random.
//!
//! Time is counted in units of a tenth of a nominal tick ([`TICK`]); nodes
//! tick at their own period, which differs between nodes in seeds with
//! skewed clocks.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use crate::raft::rng::SplitMix64;
use crate::raft::{self, Config, Message, Node, ReadState, Role, Snapshot};
use crate::storage::memory::{MemoryLog, MemoryState};
use crate::storage::{Entry, LogStorage, SyncJob};
use crate::{Error, LogIndex, NodeId, Term};

use super::checker::{Checker, Violation, ViolationKind};
use super::log::SimLog;
use super::trace::{DropCause, MsgSummary, Trace, What};
use super::{FaultKind, Outcome, Params, SimOptions, TICK};

type RaftNode = Node<SimLog, MemoryState>;
type Check<T = ()> = Result<T, Violation>;

/// A client gives up on an operation after this many ticks.
const CLIENT_TIMEOUT_TICKS: u64 = 30;

fn node_error(id: NodeId, what: &str, e: Error) -> Violation {
    Violation::new(ViolationKind::NodeError, format!("n{id} {what}: {e}"))
}

/// The simulator's random source: the core's SplitMix64 with helpers.
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.0.next_u64() >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < p
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.0.next_u64() % (hi - lo + 1)
    }

    /// Uniform in `lo..=hi` for probabilities.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.0.next_u64() >> 11) as f64) * (1.0 / (1u64 << 53) as f64)
    }
}

#[derive(Debug)]
enum Event {
    Tick {
        node: usize,
        epoch: u64,
    },
    Deliver {
        from: usize,
        to: usize,
        seq: u64,
        msg: Message,
    },
    Ready {
        node: usize,
        epoch: u64,
    },
    SyncDone {
        node: usize,
        epoch: u64,
    },
    Client(usize),
    Nemesis,
    Heal {
        generation: u64,
    },
    Restart {
        node: usize,
        epoch: u64,
    },
    /// Crash a node if it still lives the life it had when scheduled.
    Crash {
        node: usize,
        epoch: u64,
    },
    FaultsEnd,
}

struct Scheduled {
    time: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

/// An input to a node.
#[derive(Debug)]
enum Input {
    Tick,
    Msg(NodeId, Message),
    Propose {
        client: usize,
        cmd: u64,
        started: u64,
    },
    Read {
        client: usize,
        id: u64,
    },
}

/// The replicated state machine: an append-only list of command numbers.
#[derive(Clone, Default)]
struct Machine {
    list: Vec<u64>,
    applied: LogIndex,
    /// The term of `applied` while the machine is a snapshot installed
    /// from the leader (nothing applied since).
    installed: Option<Term>,
}

impl Machine {
    /// The snapshot encoding: applied index, then the commands.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * (self.list.len() + 1));
        out.extend_from_slice(&self.applied.to_le_bytes());
        for cmd in &self.list {
            out.extend_from_slice(&cmd.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Machine> {
        if bytes.len() < 8 || !bytes.len().is_multiple_of(8) {
            return None;
        }
        let mut words = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")));
        let applied = words.next()?;
        Some(Machine {
            applied,
            list: words.collect(),
            installed: None,
        })
    }
}

struct PendingWrite {
    client: usize,
    cmd: u64,
    started: u64,
}

struct Slot {
    id: NodeId,
    mem: MemoryLog,
    state: MemoryState,
    node: Option<RaftNode>,
    /// Bumped at every crash and restart; events of an older life are stale.
    epoch: u64,
    period: u64,
    ready_scheduled: bool,
    /// The job of the sync in flight, run at its `SyncDone` event.
    sync_job: Option<SyncJob>,
    machine: Machine,
    machine_durable: Machine,
    pending_writes: BTreeMap<LogIndex, PendingWrite>,
    /// Reads released by Raft, waiting for the machine to catch up.
    releasable: Vec<ReadState>,
    /// The durable log image's prefix hashes while the node is down.
    down_durable: Arc<Vec<u64>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Write(u64),
    Read(u64),
}

struct Client {
    op: Option<(OpKind, u64)>,
    guess: Option<usize>,
}

struct ReadInfo {
    client: usize,
    node: usize,
    floor: u64,
    started: u64,
}

pub struct World {
    params: Params,
    opts: SimOptions,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    slots: Vec<Slot>,
    clients: Vec<Client>,
    checker: Checker,
    trace: Trace,
    /// Directed links that drop everything, `from * n + to`.
    cut: Vec<bool>,
    partition_gen: u64,
    drop_p: f64,
    dup_p: f64,
    delay_p: f64,
    /// Extra delay on everything a node sends (a slow node or link).
    slow: Vec<u64>,
    /// Highest send sequence delivered per directed link.
    last_delivered: Vec<u64>,
    faults: [bool; FaultKind::COUNT],
    faults_over: bool,
    end_at: u64,
    next_cmd: u64,
    next_read: u64,
    reads: HashMap<u64, ReadInfo>,
    election_at: Option<u64>,
    write_after_end: Option<u64>,
    read_after_end: Option<u64>,
    writes_acked: u64,
    reads_served: u64,
}

impl World {
    pub fn new(params: Params, rng: Rng, opts: SimOptions) -> Self {
        let n = params.nodes;
        let ids: Vec<NodeId> = (1..=n as NodeId).collect();
        let slots = ids
            .iter()
            .map(|&id| Slot {
                id,
                mem: {
                    let mem = MemoryLog::new();
                    mem.set_lazy_discards(params.lazy_discards);
                    mem
                },
                state: MemoryState::new(),
                node: None,
                epoch: 0,
                period: params.tick_periods[id as usize - 1],
                ready_scheduled: false,
                sync_job: None,
                machine: Machine::default(),
                machine_durable: Machine::default(),
                pending_writes: BTreeMap::new(),
                releasable: Vec::new(),
                down_durable: Arc::default(),
            })
            .collect();
        let clients = (0..params.clients)
            .map(|_| Client {
                op: None,
                guess: None,
            })
            .collect();
        let trace = Trace::new(opts.trace_len);
        World {
            checker: Checker::new(ids),
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slots,
            clients,
            trace,
            cut: vec![false; n * n],
            partition_gen: 0,
            drop_p: 0.0,
            dup_p: 0.0,
            delay_p: 0.0,
            slow: vec![0; n],
            last_delivered: vec![0; n * n],
            faults: [false; FaultKind::COUNT],
            faults_over: false,
            end_at: 0,
            next_cmd: 1,
            next_read: 1,
            reads: HashMap::new(),
            election_at: None,
            write_after_end: None,
            read_after_end: None,
            writes_acked: 0,
            reads_served: 0,
            params,
            opts,
        }
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            time: self.now + delay,
            seq: self.seq,
            event,
        }));
    }

    fn n(&self) -> usize {
        self.slots.len()
    }

    /// Runs the seed to its end and reports what happened.
    pub fn run(mut self, seed: u64) -> Outcome {
        let result = self.run_inner();
        let mut outcome = Outcome {
            seed,
            setup: (
                self.params.nodes,
                self.params.pre_vote,
                self.params.check_quorum,
            ),
            faults: self.faults,
            election_ticks: self.election_at.map(|t| (t - self.end_at).div_ceil(TICK)),
            progress_ticks: match (self.write_after_end, self.read_after_end) {
                (Some(w), Some(r)) => Some((w.max(r) - self.end_at).div_ceil(TICK)),
                _ => None,
            },
            writes_acked: self.writes_acked,
            reads_served: self.reads_served,
            leaders: self.checker.leaders_elected(),
            events: self.trace.total(),
            failure: None,
        };
        if let Err(v) = result {
            outcome.failure = Some(super::Failure {
                violation: v,
                time: self.now,
                params: self.params.describe(),
                trace: self.trace.render(),
                state: self.describe_nodes(),
            });
        }
        outcome
    }

    fn run_inner(&mut self) -> Check {
        for i in 0..self.n() {
            self.restart(i)?;
        }
        for c in 0..self.clients.len() {
            let d = self.rng.between(1, 3 * TICK);
            self.schedule(d, Event::Client(c));
        }
        let d = self.rng.between(TICK, 10 * TICK);
        self.schedule(d, Event::Nemesis);
        self.schedule(self.params.fault_ticks * TICK, Event::FaultsEnd);
        let end = self.params.fault_ticks * TICK;
        let election_deadline = end + self.opts.election_bound_ticks * TICK;
        let deadline = end + self.opts.progress_bound_ticks * TICK;
        while let Some(Reverse(next)) = self.queue.pop() {
            self.now = next.time;
            if self.now > deadline || (self.now > election_deadline && self.election_at.is_none()) {
                return Err(self.liveness_failure());
            }
            self.handle(next.event)?;
            if self.faults_over && self.liveness_reached() {
                return Ok(());
            }
        }
        Err(Violation::new(
            ViolationKind::NodeError,
            "the event queue ran dry",
        ))
    }

    fn handle(&mut self, event: Event) -> Check {
        match event {
            Event::Tick { node, epoch } => {
                if self.slots[node].epoch != epoch || self.slots[node].node.is_none() {
                    return Ok(());
                }
                let period = self.slots[node].period;
                self.schedule(period, Event::Tick { node, epoch });
                self.input(node, Input::Tick)
            }
            Event::Deliver { from, to, seq, msg } => self.deliver(from, to, seq, msg),
            Event::Ready { node, epoch } => {
                if self.slots[node].epoch != epoch {
                    return Ok(());
                }
                self.slots[node].ready_scheduled = false;
                self.ready(node)
            }
            Event::SyncDone { node, epoch } => {
                if self.slots[node].epoch != epoch {
                    return Ok(());
                }
                self.sync_done(node)
            }
            Event::Client(c) => self.client_wake(c),
            Event::Nemesis => self.nemesis(),
            Event::Heal { generation } => {
                if generation == self.partition_gen {
                    self.heal();
                }
                Ok(())
            }
            Event::Restart { node, epoch } => {
                if self.slots[node].epoch == epoch && self.slots[node].node.is_none() {
                    self.restart(node)?;
                }
                Ok(())
            }
            Event::Crash { node, epoch } => {
                if !self.faults_over && self.slots[node].epoch == epoch {
                    self.crash(node)?;
                }
                Ok(())
            }
            Event::FaultsEnd => self.faults_end(),
        }
    }

    // ---- Nodes -------------------------------------------------------------

    fn config(&mut self, i: usize, applied: LogIndex) -> Config {
        let p = &self.params;
        let ids: Vec<NodeId> = (1..=p.nodes as NodeId).collect();
        let mut c = Config::new(ids[i], ids);
        c.heartbeat_ticks = p.heartbeat_ticks;
        c.election_ticks_min = p.election_ticks_min;
        c.election_ticks_max = p.election_ticks_max;
        c.pre_vote = p.pre_vote;
        c.check_quorum = p.check_quorum;
        c.max_inflight = p.max_inflight;
        c.max_append_bytes = p.max_append_bytes;
        c.applied = applied;
        #[cfg(feature = "mutations")]
        {
            c.mutation = self.opts.mutation;
        }
        c.seed = self.rng.next_u64();
        c
    }

    fn restart(&mut self, i: usize) -> Check {
        let applied = self.slots[i].machine.applied;
        let config = self.config(i, applied);
        let slot = &mut self.slots[i];
        let id = slot.id;
        let shadow = self.checker.committed_shadow();
        let mut log = SimLog::open(slot.mem.clone(), &shadow)
            .map_err(|e| node_error(id, "reopens its log", e))?;
        if let Some(term) = slot.machine.installed {
            // Finish the log's side of an install a crash interrupted.
            log.provide_prefix(shadow);
            raft::align_log(&mut log, applied, term)
                .map_err(|e| node_error(id, "aligns its log with its snapshot", e))?;
        }
        if slot.epoch > 0 && log.durable_hashes() != slot.down_durable {
            return Err(Violation::new(
                ViolationKind::NodeError,
                format!(
                    "n{id}: the memory log's durable image differs from the simulator's shadow"
                ),
            ));
        }
        let last = log.last();
        let node = Node::new(config, log, slot.state.clone())
            .map_err(|e| node_error(id, "fails to restart", e))?;
        slot.node = Some(node);
        slot.epoch += 1;
        let epoch = slot.epoch;
        let period = slot.period;
        if epoch > 1 {
            self.trace.push(
                self.now,
                What::Restart {
                    node: id,
                    last,
                    applied,
                },
            );
        }
        self.checker.restarted(i, applied);
        self.check_node(i)?;
        let first = self.rng.between(1, period);
        self.schedule(first, Event::Tick { node: i, epoch });
        Ok(())
    }

    fn crash(&mut self, i: usize) -> Check {
        let slot = &mut self.slots[i];
        let Some(node) = slot.node.take() else {
            return Ok(());
        };
        // A sync in flight reached the disk before the crash, or not.
        if let Some(job) = slot.sync_job.take()
            && self.rng.chance(0.5)
        {
            job.run().map_err(|e| node_error(slot.id, "sync job", e))?;
        }
        let lost = node.log_storage().has_unsynced();
        slot.down_durable = node.log_storage().durable_hashes();
        let first = node.log_storage().first_index();
        drop(node);
        slot.mem.crash();
        let undone = slot.mem.first_index() < first;
        slot.state.crash();
        slot.epoch += 1;
        slot.ready_scheduled = false;
        slot.machine = slot.machine_durable.clone();
        slot.releasable.clear();
        let writes = std::mem::take(&mut slot.pending_writes);
        let id = slot.id;
        let epoch = slot.epoch;
        for w in writes.values() {
            self.client_done(w.client, OpKind::Write(w.cmd));
        }
        let dead: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.node == i)
            .map(|(id, _)| *id)
            .collect();
        for rid in dead {
            if let Some(r) = self.reads.remove(&rid) {
                self.client_done(r.client, OpKind::Read(rid));
            }
        }
        self.faults[FaultKind::Crash as usize] = true;
        if lost {
            self.faults[FaultKind::LostUnsynced as usize] = true;
        }
        if undone {
            self.faults[FaultKind::DiscardUndone as usize] = true;
        }
        self.trace.push(
            self.now,
            What::Crash {
                node: id,
                lost_unsynced: lost,
            },
        );
        self.check_durable()?;
        let down = if self.rng.chance(0.7) {
            self.rng.between(TICK, 15 * TICK)
        } else {
            self.rng.between(15 * TICK, 40 * TICK)
        };
        self.schedule(down, Event::Restart { node: i, epoch });
        Ok(())
    }

    /// Hands an input to node `i`.
    fn input(&mut self, i: usize, input: Input) -> Check {
        if self.slots[i].node.is_none() {
            return Ok(());
        }
        self.step_input(i, input)?;
        self.schedule_ready(i);
        Ok(())
    }

    fn schedule_ready(&mut self, i: usize) {
        let slot = &self.slots[i];
        let Some(node) = &slot.node else { return };
        if slot.ready_scheduled || !node.has_ready() {
            return;
        }
        let epoch = slot.epoch;
        self.slots[i].ready_scheduled = true;
        let delay = if self.rng.chance(0.5) {
            0
        } else {
            self.rng.between(1, self.params.max_batch_delay)
        };
        self.schedule(delay, Event::Ready { node: i, epoch });
    }

    fn step_input(&mut self, i: usize, input: Input) -> Check {
        let id = self.slots[i].id;
        let now = self.now;
        let Some(node) = self.slots[i].node.as_mut() else {
            return Ok(());
        };
        match input {
            Input::Tick => node.tick().map_err(|e| node_error(id, "tick", e))?,
            Input::Msg(from, msg) => {
                self.trace.push(
                    now,
                    What::Deliver {
                        from,
                        to: id,
                        msg: MsgSummary::of(&msg),
                    },
                );
                node.step(from, msg)
                    .map_err(|e| node_error(id, "step", e))?
            }
            Input::Propose {
                client,
                cmd,
                started,
            } => {
                let result = node.propose(cmd.to_le_bytes().to_vec());
                let index = match result {
                    Ok(index) => {
                        self.slots[i].pending_writes.insert(
                            index,
                            PendingWrite {
                                client,
                                cmd,
                                started,
                            },
                        );
                        self.clients[client].guess = Some(i);
                        Some(index)
                    }
                    Err(Error::NotLeader { leader }) => {
                        self.clients[client].guess = leader.map(|l| l as usize - 1);
                        self.client_done(client, OpKind::Write(cmd));
                        None
                    }
                    Err(e) => return Err(node_error(id, "propose", e)),
                };
                self.trace.push(
                    now,
                    What::Propose {
                        client,
                        node: id,
                        cmd,
                        index,
                    },
                );
            }
            Input::Read { client, id: rid } => match node.read_index(rid) {
                Ok(()) => self.clients[client].guess = Some(i),
                Err(Error::NotLeader { leader }) => {
                    self.clients[client].guess = leader.map(|l| l as usize - 1);
                    self.reads.remove(&rid);
                    self.client_done(client, OpKind::Read(rid));
                    self.trace.push(now, What::ReadFailed { node: id, id: rid });
                }
                Err(e) => return Err(node_error(id, "read_index", e)),
            },
        }
        self.check_node(i)
    }

    /// Every per-step check on node `i`.
    fn check_node(&mut self, i: usize) -> Check {
        let now = self.now;
        let Some(node) = self.slots[i].node.as_ref() else {
            return Ok(());
        };
        let id = self.slots[i].id;
        let st = node.status();
        let hs = node.hard_state();
        let change = self.checker.observe_role(i, st.role, st.term, hs.vote)?;
        if change.changed {
            self.trace.push(
                now,
                What::Role {
                    node: id,
                    role: st.role,
                    term: st.term,
                },
            );
        }
        let log = node.log_storage();
        self.checker.check_log_change(i, log)?;
        if change.became_leader {
            self.checker.check_new_leader(i, st.term, log)?;
            // Leaders that fall soon after taking office leave the partly
            // replicated logs that the subtle cases of Raft are made of.
            if !self.faults_over && self.rng.chance(self.params.new_leader_crash) {
                let epoch = self.slots[i].epoch;
                let after = self.rng.between(0, 5 * TICK);
                self.seq += 1;
                self.queue.push(Reverse(Scheduled {
                    time: now + after,
                    seq: self.seq,
                    event: Event::Crash { node: i, epoch },
                }));
            }
        }
        let before = self.checker.committed_len();
        if self
            .checker
            .observe_commit(i, st.term, st.commit_index, log)?
            .is_some()
        {
            self.trace.push(
                now,
                What::Commit {
                    node: id,
                    index: st.commit_index,
                },
            );
        }
        if self.checker.committed_len() > before {
            self.check_durable()?;
            for (j, other) in self.slots.iter().enumerate() {
                if let Some(n) = &other.node {
                    let s = n.status();
                    if s.role == Role::Leader {
                        self.checker
                            .check_sitting_leader(j, s.term, n.log_storage())?;
                    }
                }
            }
        }
        Ok(())
    }

    fn check_durable(&self) -> Check {
        let durable: Vec<Arc<Vec<u64>>> = self
            .slots
            .iter()
            .map(|s| match &s.node {
                Some(n) => n.log_storage().durable_hashes(),
                None => s.down_durable.clone(),
            })
            .collect();
        self.checker
            .check_durable(durable.iter().map(|d| d.as_slice()))
    }

    fn ready(&mut self, i: usize) -> Check {
        let slot = &mut self.slots[i];
        let id = slot.id;
        let Some(node) = slot.node.as_mut() else {
            return Ok(());
        };
        let rd = node.ready();
        let job = if rd.needs_sync {
            node.begin_sync()
                .map_err(|e| node_error(id, "begin_sync", e))?
        } else {
            None
        };
        for (to, msg) in rd.messages {
            self.send(i, to, msg)?;
        }
        self.snapshots(i, rd.snapshot_wanted, rd.snapshot)?;
        self.check_node(i)?;
        if let Some(job) = job {
            let slot = &mut self.slots[i];
            slot.sync_job = Some(job);
            let epoch = slot.epoch;
            let delay = if self.rng.chance(0.9) {
                self.rng.between(1, 4)
            } else {
                self.rng.between(5, 20)
            };
            self.schedule(delay, Event::SyncDone { node: i, epoch });
        }
        self.apply(i, rd.committed)?;
        for rid in rd.failed_reads {
            if let Some(r) = self.reads.remove(&rid) {
                self.trace
                    .push(self.now, What::ReadFailed { node: id, id: rid });
                self.client_done(r.client, OpKind::Read(rid));
            }
        }
        self.slots[i].releasable.extend(rd.reads);
        self.serve_reads(i)?;
        self.schedule_ready(i);
        Ok(())
    }

    /// Offers the leader's machine as a snapshot, or installs one received.
    fn snapshots(&mut self, i: usize, wanted: bool, received: Option<Snapshot>) -> Check {
        let shadow = received.as_ref().map(|_| self.checker.committed_shadow());
        let slot = &mut self.slots[i];
        let id = slot.id;
        let Some(node) = slot.node.as_mut() else {
            return Ok(());
        };
        if wanted {
            node.offer_snapshot(slot.machine.applied, slot.machine.encode())
                .map_err(|e| node_error(id, "offers a snapshot", e))?;
        }
        let Some(snap) = received else {
            return Ok(());
        };
        let Some(mut machine) = Machine::decode(&snap.data) else {
            return Err(Violation::new(
                ViolationKind::NodeError,
                format!("n{id} received a malformed snapshot through {}", snap.index),
            ));
        };
        if machine.applied != snap.index {
            return Err(Violation::new(
                ViolationKind::NodeError,
                format!(
                    "n{id} received a snapshot through {} holding the machine at {}",
                    snap.index, machine.applied
                ),
            ));
        }
        self.checker.check_snapshot(i, snap.index, &machine.list)?;
        machine.installed = Some(snap.term);
        slot.machine = machine.clone();
        slot.machine_durable = machine;
        // Writes proposed here at or below the snapshot are settled there.
        let settled: Vec<LogIndex> = slot
            .pending_writes
            .range(..=snap.index)
            .map(|(index, _)| *index)
            .collect();
        node.log_storage()
            .provide_prefix(shadow.unwrap_or_default());
        node.snapshot_installed(snap.index, snap.term)
            .map_err(|e| node_error(id, "installs a snapshot", e))?;
        self.faults[FaultKind::SnapshotInstalled as usize] = true;
        self.trace.push(
            self.now,
            What::Installed {
                node: id,
                index: snap.index,
            },
        );
        for index in settled {
            if let Some(w) = self.slots[i].pending_writes.remove(&index) {
                self.client_done(w.client, OpKind::Write(w.cmd));
            }
        }
        Ok(())
    }

    fn sync_done(&mut self, i: usize) -> Check {
        let slot = &mut self.slots[i];
        let id = slot.id;
        let (Some(node), Some(job)) = (slot.node.as_mut(), slot.sync_job.take()) else {
            return Ok(());
        };
        let result = job.run();
        node.finish_sync(result)
            .map_err(|e| node_error(id, "sync", e))?;
        let last = node.synced_index();
        self.trace.push(self.now, What::Sync { node: id, last });
        self.check_node(i)?;
        self.schedule_ready(i);
        Ok(())
    }

    fn apply(&mut self, i: usize, entries: Vec<Entry>) -> Check {
        if entries.is_empty() {
            return Ok(());
        }
        let id = self.slots[i].id;
        for e in &entries {
            let slot = &self.slots[i];
            let Some(node) = slot.node.as_ref() else {
                return Ok(());
            };
            self.checker
                .check_apply(i, slot.machine.applied, e, node.log_storage())?;
            let slot = &mut self.slots[i];
            slot.machine.applied = e.index;
            slot.machine.installed = None;
            let cmd = if e.data.is_empty() {
                None
            } else {
                let bytes: [u8; 8] = e.data.as_slice().try_into().map_err(|_| {
                    Violation::new(
                        ViolationKind::NodeError,
                        format!("n{id} applies entry {} with malformed data", e.index),
                    )
                })?;
                let cmd = u64::from_le_bytes(bytes);
                self.checker.check_command(id, e.index, cmd)?;
                slot.machine.list.push(cmd);
                Some(cmd)
            };
            let position = slot.machine.list.len() as u64;
            if let Some(w) = slot.pending_writes.remove(&e.index) {
                if cmd == Some(w.cmd) {
                    self.checker.write_acked(position);
                    self.writes_acked += 1;
                    self.trace.push(
                        self.now,
                        What::WriteAcked {
                            client: w.client,
                            cmd: w.cmd,
                            index: e.index,
                            position,
                        },
                    );
                    if self.faults_over && w.started >= self.end_at {
                        self.write_after_end.get_or_insert(self.now);
                    }
                }
                self.client_done(w.client, OpKind::Write(w.cmd));
            }
        }
        if self.rng.chance(self.params.flush_chance) {
            let slot = &mut self.slots[i];
            slot.machine_durable = slot.machine.clone();
            if self.rng.chance(self.params.compact_chance) {
                let target = slot
                    .machine_durable
                    .applied
                    .saturating_sub(self.params.compact_keep);
                if let Some(node) = slot.node.as_mut()
                    && target >= node.log_storage().first_index()
                {
                    node.compact(target)
                        .map_err(|e| node_error(id, "compacts its log", e))?;
                    self.faults[FaultKind::Compacted as usize] = true;
                    self.trace.push(
                        self.now,
                        What::Compacted {
                            node: id,
                            through: target,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    fn serve_reads(&mut self, i: usize) -> Check {
        let slot = &mut self.slots[i];
        if slot.releasable.is_empty() {
            return Ok(());
        }
        let applied = slot.machine.applied;
        let value = slot.machine.list.len() as u64;
        let id = slot.id;
        let ready: Vec<ReadState> = slot
            .releasable
            .iter()
            .filter(|r| r.index <= applied)
            .copied()
            .collect();
        slot.releasable.retain(|r| r.index > applied);
        for r in ready {
            let Some(info) = self.reads.remove(&r.id) else {
                continue;
            };
            self.trace.push(
                self.now,
                What::ReadServed {
                    node: id,
                    id: r.id,
                    value,
                    floor: info.floor,
                },
            );
            self.checker.check_read(id, r.id, value, info.floor)?;
            self.reads_served += 1;
            if self.faults_over && info.started >= self.end_at {
                self.read_after_end.get_or_insert(self.now);
            }
            self.client_done(info.client, OpKind::Read(r.id));
        }
        Ok(())
    }

    // ---- Network -----------------------------------------------------------

    fn send(&mut self, from: usize, to: NodeId, msg: Message) -> Check {
        let n = self.n();
        if to == 0 || to as usize > n {
            return Err(Violation::new(
                ViolationKind::NodeError,
                format!("n{} sends to unknown node {to}", from + 1),
            ));
        }
        let to = to as usize - 1;
        self.seq += 1;
        let seq = self.seq;
        if self.rng.chance(self.drop_p) {
            self.faults[FaultKind::Drop as usize] = true;
            self.trace.push(
                self.now,
                What::Drop {
                    from: from as NodeId + 1,
                    to: to as NodeId + 1,
                    msg: MsgSummary::of(&msg),
                    cause: DropCause::Random,
                },
            );
            return Ok(());
        }
        let mut delay = self.rng.between(1, 8);
        if self.rng.chance(self.delay_p) {
            self.faults[FaultKind::Delay as usize] = true;
            delay = if self.rng.chance(0.4) {
                self.rng.between(10, 80)
            } else {
                self.rng.between(80, 300)
            };
        }
        if self.slow[from] > 0 {
            self.faults[FaultKind::Delay as usize] = true;
            delay += self.slow[from];
        }
        if self.rng.chance(self.dup_p) {
            self.faults[FaultKind::Duplicate as usize] = true;
            self.trace.push(
                self.now,
                What::Duplicate {
                    from: from as NodeId + 1,
                    to: to as NodeId + 1,
                },
            );
            let d = if self.rng.chance(0.5) {
                self.rng.between(1, 30)
            } else {
                self.rng.between(30, 300)
            };
            let copy = msg.clone();
            self.schedule(
                d,
                Event::Deliver {
                    from,
                    to,
                    seq,
                    msg: copy,
                },
            );
        }
        self.schedule(delay, Event::Deliver { from, to, seq, msg });
        Ok(())
    }

    fn deliver(&mut self, from: usize, to: usize, seq: u64, msg: Message) -> Check {
        let link = from * self.n() + to;
        if seq < self.last_delivered[link] {
            self.faults[FaultKind::Reorder as usize] = true;
        }
        self.last_delivered[link] = self.last_delivered[link].max(seq);
        let cause = if self.cut[link] {
            Some(DropCause::Partition)
        } else if self.slots[to].node.is_none() {
            Some(DropCause::NodeDown)
        } else {
            None
        };
        if let Some(cause) = cause {
            self.trace.push(
                self.now,
                What::Drop {
                    from: from as NodeId + 1,
                    to: to as NodeId + 1,
                    msg: MsgSummary::of(&msg),
                    cause,
                },
            );
            return Ok(());
        }
        self.input(to, Input::Msg(from as NodeId + 1, msg))
    }

    // ---- Faults ------------------------------------------------------------

    fn nemesis(&mut self) -> Check {
        if self.faults_over {
            return Ok(());
        }
        let next = self.rng.between(2 * TICK, 8 * TICK);
        self.schedule(next, Event::Nemesis);
        let p = &self.params;
        let mut actions: Vec<u8> = Vec::with_capacity(4);
        if p.drop || p.dup || p.delay {
            actions.push(0);
        }
        if p.partition {
            actions.push(1);
        }
        if p.one_way {
            actions.push(2);
        }
        if p.crash {
            actions.push(3);
        }
        if actions.is_empty() {
            return Ok(());
        }
        let pick = actions[self.rng.between(0, actions.len() as u64 - 1) as usize];
        match pick {
            0 => {
                let (drop, dup, delay) = (p.drop, p.dup, p.delay);
                self.drop_p = if drop && self.rng.chance(0.6) {
                    self.rng.uniform(0.02, 0.3)
                } else {
                    0.0
                };
                self.dup_p = if dup && self.rng.chance(0.6) {
                    self.rng.uniform(0.02, 0.2)
                } else {
                    0.0
                };
                self.delay_p = if delay && self.rng.chance(0.6) {
                    self.rng.uniform(0.05, 0.4)
                } else {
                    0.0
                };
                self.slow.iter_mut().for_each(|s| *s = 0);
                let mut slow = None;
                if delay && self.rng.chance(0.5) {
                    let x = self.rng.between(0, self.n() as u64 - 1) as usize;
                    self.slow[x] = self.rng.between(5 * TICK, 25 * TICK);
                    slow = Some((x as NodeId + 1, self.slow[x]));
                }
                self.trace.push(
                    self.now,
                    What::Faults {
                        drop: self.drop_p > 0.0,
                        dup: self.dup_p > 0.0,
                        delay: self.delay_p > 0.0,
                        slow,
                    },
                );
            }
            1 => self.partition(false),
            2 => self.partition(true),
            _ => {
                let up: Vec<usize> = (0..self.n())
                    .filter(|&i| self.slots[i].node.is_some())
                    .collect();
                if up.is_empty() {
                    return Ok(());
                }
                let leader = up.iter().copied().find(|&i| {
                    self.slots[i]
                        .node
                        .as_ref()
                        .is_some_and(|n| n.status().role == Role::Leader)
                });
                let victim = match leader {
                    Some(l) if self.rng.chance(0.6) => l,
                    _ => up[self.rng.between(0, up.len() as u64 - 1) as usize],
                };
                self.crash(victim)?;
            }
        }
        Ok(())
    }

    fn partition(&mut self, one_way: bool) {
        let n = self.n();
        self.cut.iter_mut().for_each(|c| *c = false);
        let leader = (0..n).find(|&i| {
            self.slots[i]
                .node
                .as_ref()
                .is_some_and(|x| x.status().role == Role::Leader)
        });
        if one_way {
            let x = match leader {
                Some(l) if self.rng.chance(0.5) => l,
                _ => self.rng.between(0, n as u64 - 1) as usize,
            };
            match self.rng.between(0, 2) {
                // x cannot send.
                0 => (0..n).for_each(|j| self.cut[x * n + j] = j != x),
                // x cannot receive.
                1 => (0..n).for_each(|j| self.cut[j * n + x] = j != x),
                // Random directed links.
                _ => {
                    for a in 0..n {
                        for b in 0..n {
                            if a != b && self.rng.chance(0.3) {
                                self.cut[a * n + b] = true;
                            }
                        }
                    }
                }
            }
            self.faults[FaultKind::PartitionOneWay as usize] = true;
        } else {
            // A random minority, holding the leader half of the time.
            let size = self.rng.between(1, (n / 2) as u64) as usize;
            let mut order: Vec<usize> = (0..n).collect();
            for k in (1..n).rev() {
                let j = self.rng.between(0, k as u64) as usize;
                order.swap(k, j);
            }
            if let Some(l) = leader
                && self.rng.chance(0.5)
            {
                let pos = order.iter().position(|&x| x == l).unwrap_or(0);
                order.swap(0, pos);
            }
            let mut side = vec![false; n];
            order[..size].iter().for_each(|&x| side[x] = true);
            for a in 0..n {
                for b in 0..n {
                    self.cut[a * n + b] = side[a] != side[b];
                }
            }
            self.faults[FaultKind::PartitionSymmetric as usize] = true;
        }
        let mut mask = 0u64;
        for a in 0..n {
            for b in 0..n {
                if self.cut[a * n + b] {
                    mask |= 1 << ((a + 1) * 8 + b + 1);
                }
            }
        }
        self.trace
            .push(self.now, What::Partition { one_way, cut: mask });
        self.partition_gen += 1;
        let generation = self.partition_gen;
        let heal = self.rng.between(5 * TICK, 60 * TICK);
        self.schedule(heal, Event::Heal { generation });
    }

    fn heal(&mut self) {
        self.cut.iter_mut().for_each(|c| *c = false);
        self.partition_gen += 1;
        self.trace.push(self.now, What::Heal);
    }

    fn faults_end(&mut self) -> Check {
        self.faults_over = true;
        self.end_at = self.now;
        self.heal();
        self.drop_p = 0.0;
        self.dup_p = 0.0;
        self.delay_p = 0.0;
        self.slow.iter_mut().for_each(|s| *s = 0);
        self.trace.push(self.now, What::FaultsEnd);
        for i in 0..self.n() {
            if self.slots[i].node.is_none() {
                self.restart(i)?;
            }
        }
        Ok(())
    }

    // ---- Clients -----------------------------------------------------------

    fn client_done(&mut self, client: usize, op: OpKind) {
        let c = &mut self.clients[client];
        if c.op.is_some_and(|(k, _)| k == op) {
            c.op = None;
        }
    }

    fn client_wake(&mut self, c: usize) -> Check {
        let next = self.rng.between(TICK / 2, 3 * TICK);
        self.schedule(next, Event::Client(c));
        if let Some((_, deadline)) = self.clients[c].op {
            if self.now < deadline {
                return Ok(());
            }
            self.clients[c].op = None;
        }
        let n = self.n() as u64;
        let target = match self.clients[c].guess {
            Some(g) if self.rng.chance(0.85) => g,
            _ => self.rng.between(0, n - 1) as usize,
        };
        if self.slots[target].node.is_none() {
            self.clients[c].guess = None;
            return Ok(());
        }
        let deadline = self.now + CLIENT_TIMEOUT_TICKS * TICK;
        if self.rng.chance(0.35) {
            let id = self.next_read;
            self.next_read += 1;
            let floor = self.checker.read_floor();
            self.reads.insert(
                id,
                ReadInfo {
                    client: c,
                    node: target,
                    floor,
                    started: self.now,
                },
            );
            self.clients[c].op = Some((OpKind::Read(id), deadline));
            self.trace.push(
                self.now,
                What::ReadIssued {
                    client: c,
                    node: target as NodeId + 1,
                    id,
                    floor,
                },
            );
            self.input(target, Input::Read { client: c, id })
        } else {
            let cmd = self.next_cmd;
            self.next_cmd += 1;
            self.clients[c].op = Some((OpKind::Write(cmd), deadline));
            let started = self.now;
            self.input(
                target,
                Input::Propose {
                    client: c,
                    cmd,
                    started,
                },
            )
        }
    }

    // ---- Liveness ----------------------------------------------------------

    fn liveness_reached(&mut self) -> bool {
        if self.election_at.is_none() {
            let mut max_term = 0;
            let mut leader_term = None;
            for s in &self.slots {
                if let Some(n) = &s.node {
                    let st = n.status();
                    max_term = max_term.max(st.term);
                    if st.role == Role::Leader {
                        leader_term = leader_term.max(Some(st.term));
                    }
                }
            }
            if leader_term == Some(max_term) {
                self.election_at = Some(self.now);
            }
        }
        self.election_at.is_some()
            && self.write_after_end.is_some()
            && self.read_after_end.is_some()
    }

    fn liveness_failure(&self) -> Violation {
        let mut missing = Vec::new();
        if self.election_at.is_none() {
            missing.push("no leader at the highest term");
        }
        if self.write_after_end.is_none() {
            missing.push("no write issued after the stop was acknowledged");
        }
        if self.read_after_end.is_none() {
            missing.push("no read issued after the stop was served");
        }
        Violation::new(
            ViolationKind::Liveness,
            format!(
                "{} ticks after faults stopped: {} (bounds: {} ticks to elect, {} to complete a new write and read)",
                (self.now - self.end_at) / TICK,
                missing.join("; "),
                self.opts.election_bound_ticks,
                self.opts.progress_bound_ticks
            ),
        )
    }

    fn describe_nodes(&self) -> String {
        let mut out = String::new();
        for s in &self.slots {
            let Some(n) = &s.node else {
                let _ = writeln!(out, "  n{}: down", s.id);
                continue;
            };
            let st = n.status();
            let hs = n.hard_state();
            let log = n.log_storage();
            // Terms along the log, run-length encoded.
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for idx in 1..=log.last() {
                let t = log.term_at(idx).unwrap_or(0);
                match runs.last_mut() {
                    Some((rt, count)) if *rt == t => *count += 1,
                    _ => runs.push((t, 1)),
                }
            }
            let terms: Vec<String> = runs.iter().map(|(t, c)| format!("t{t}x{c}")).collect();
            let _ = writeln!(
                out,
                "  n{}: {:?} term {} vote {:?} leader {:?} commit {} applied {} synced {} last {} period {} | log terms: {}",
                s.id,
                st.role,
                st.term,
                hs.vote,
                st.leader,
                st.commit_index,
                s.machine.applied,
                n.synced_index(),
                st.last_index,
                s.period,
                terms.join(" ")
            );
        }
        let _ = writeln!(
            out,
            "  committed through {} (checker's record)",
            self.checker.committed_len()
        );
        out
    }
}

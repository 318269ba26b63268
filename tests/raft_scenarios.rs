//! Readable Raft scenarios over a small deterministic cluster harness.
#![allow(dead_code)] // harness helpers are used by a subset of the scenarios at any time
//!
//! Each test drives nodes step by step: it ticks chosen nodes, delivers,
//! drops or holds messages, partitions, crashes and restarts nodes, and
//! asserts on what the cluster did. Nothing runs in the background: a
//! message moves only when the test delivers it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kvapp_c::raft::{Config, Message, Node, ReadState, Role};
use kvapp_c::storage::memory::{MemoryLog, MemoryState};
use kvapp_c::storage::{Entry, LogStorage, StateStorage};
use kvapp_c::{Error, LogIndex, NodeId, Term};

type RaftNode = Node<MemoryLog, MemoryState>;

/// A message on the simulated network.
#[derive(Clone, Debug)]
struct Envelope {
    from: NodeId,
    to: NodeId,
    msg: Message,
}

/// A cluster of in-memory nodes and a network the test controls.
struct Cluster {
    ids: Vec<NodeId>,
    nodes: BTreeMap<NodeId, Option<RaftNode>>,
    logs: BTreeMap<NodeId, MemoryLog>,
    states: BTreeMap<NodeId, MemoryState>,
    /// Messages sent and not yet delivered, in send order.
    network: VecDeque<Envelope>,
    /// Directed links that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Entries each node handed out for application, in order.
    applied: BTreeMap<NodeId, Vec<Entry>>,
    reads: BTreeMap<NodeId, Vec<ReadState>>,
    failed_reads: BTreeMap<NodeId, Vec<u64>>,
    /// Messages delivered so far (for counting round trips).
    delivered: Vec<Envelope>,
    /// Adjusts every node's configuration (PreVote, CheckQuorum, limits).
    tweak: fn(&mut Config),
    /// Snapshots installed: by which node, through which index.
    installed: Vec<(NodeId, LogIndex)>,
}

/// The harness's state machine (the applied entries) as snapshot bytes.
fn encode_machine(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&e.index.to_le_bytes());
        out.extend_from_slice(&e.term.to_le_bytes());
        out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.data);
    }
    out
}

fn decode_machine(mut b: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let index = u64::from_le_bytes(b[..8].try_into().unwrap());
        let term = u64::from_le_bytes(b[8..16].try_into().unwrap());
        let len = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
        out.push(Entry {
            index,
            term,
            data: b[20..20 + len].to_vec(),
        });
        b = &b[20 + len..];
    }
    out
}

fn config(id: NodeId, ids: &[NodeId]) -> Config {
    let mut c = Config::new(id, ids.to_vec());
    c.heartbeat_ticks = 1;
    c.election_ticks_min = 10;
    c.election_ticks_max = 20;
    c.seed = 42;
    c
}

impl Cluster {
    fn new(n: u64) -> Self {
        Self::with(n, |_| {})
    }

    /// A cluster whose node configurations pass through `tweak`.
    fn with(n: u64, tweak: fn(&mut Config)) -> Self {
        let ids: Vec<NodeId> = (1..=n).collect();
        let mut c = Cluster {
            ids: ids.clone(),
            nodes: BTreeMap::new(),
            logs: BTreeMap::new(),
            states: BTreeMap::new(),
            network: VecDeque::new(),
            cut: BTreeSet::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            failed_reads: BTreeMap::new(),
            delivered: Vec::new(),
            tweak,
            installed: Vec::new(),
        };
        for &id in &ids {
            c.logs.insert(id, MemoryLog::new());
            c.states.insert(id, MemoryState::new());
            c.applied.insert(id, Vec::new());
            c.reads.insert(id, Vec::new());
            c.failed_reads.insert(id, Vec::new());
            c.start(id);
        }
        c
    }

    /// (Re)starts node `id` from its storage.
    fn start(&mut self, id: NodeId) {
        let mut cfg = config(id, &self.ids);
        (self.tweak)(&mut cfg);
        let node =
            Node::new(cfg, self.logs[&id].clone(), self.states[&id].clone()).expect("node starts");
        self.nodes.insert(id, Some(node));
        self.applied.insert(id, Vec::new());
    }

    /// Crashes node `id`: it stops, loses unsynced log writes, and messages
    /// to it are lost.
    fn crash(&mut self, id: NodeId) {
        self.nodes.insert(id, None);
        self.logs[&id].crash();
        self.states[&id].crash();
        self.network.retain(|e| e.to != id);
    }

    fn node(&self, id: NodeId) -> &RaftNode {
        self.nodes[&id].as_ref().expect("node is running")
    }

    fn node_mut(&mut self, id: NodeId) -> &mut RaftNode {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.as_mut())
            .expect("node is running")
    }

    fn role(&self, id: NodeId) -> Role {
        self.node(id).status().role
    }

    fn term(&self, id: NodeId) -> Term {
        self.node(id).status().term
    }

    fn commit(&self, id: NodeId) -> LogIndex {
        self.node(id).status().commit_index
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.ids
            .iter()
            .copied()
            .filter(|id| {
                self.nodes[id]
                    .as_ref()
                    .is_some_and(|n| n.status().role == Role::Leader)
            })
            .collect()
    }

    /// Runs the driving loop of node `id` until it has nothing to hand out:
    /// messages join the network, sync happens when asked, outputs are kept.
    fn process(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id).and_then(|n| n.as_mut()) else {
            return;
        };
        while node.has_ready() {
            let rd = node.ready();
            for (to, msg) in rd.messages {
                self.network.push_back(Envelope { from: id, to, msg });
            }
            if rd.needs_sync {
                // The blocking form: what the sync releases comes out of the
                // next ready.
                node.sync().expect("sync");
            }
            if rd.snapshot_wanted {
                // The state machine here is the list of applied entries.
                let entries = &self.applied[&id];
                let index = entries.last().map_or(0, |e| e.index);
                node.offer_snapshot(index, encode_machine(entries))
                    .expect("offer a snapshot");
            }
            if let Some(snap) = rd.snapshot {
                let entries = decode_machine(&snap.data);
                assert_eq!(
                    entries.last().map(|e| (e.index, e.term)),
                    Some((snap.index, snap.term))
                );
                self.applied.insert(id, entries);
                self.installed.push((id, snap.index));
                node.snapshot_installed(snap.index, snap.term)
                    .expect("install a snapshot");
            }
            let applied = self.applied.get_mut(&id).unwrap();
            for e in rd.committed {
                if let Some(last) = applied.last() {
                    assert_eq!(e.index, last.index + 1, "node {id} applies out of order");
                }
                applied.push(e);
            }
            self.reads.get_mut(&id).unwrap().extend(rd.reads);
            self.failed_reads
                .get_mut(&id)
                .unwrap()
                .extend(rd.failed_reads);
        }
    }

    fn process_all(&mut self) {
        for id in self.ids.clone() {
            self.process(id);
        }
    }

    /// Delivers one message (dropping it if its link is cut or its target is
    /// down), then processes the receiver. Returns false if none was queued.
    fn deliver_one(&mut self) -> bool {
        let Some(env) = self.network.pop_front() else {
            return false;
        };
        if self.cut.contains(&(env.from, env.to)) || self.nodes[&env.to].is_none() {
            return true;
        }
        self.delivered.push(env.clone());
        self.node_mut(env.to).step(env.from, env.msg).expect("step");
        self.process(env.to);
        true
    }

    /// Delivers messages until the network is quiet.
    fn deliver_all(&mut self) {
        self.process_all();
        let mut budget = 100_000;
        while self.deliver_one() {
            budget -= 1;
            assert!(budget > 0, "the network never went quiet");
        }
    }

    /// Throws away every message currently in flight.
    fn drop_in_flight(&mut self) {
        self.network.clear();
    }

    fn tick(&mut self, id: NodeId, times: u32) {
        for _ in 0..times {
            self.node_mut(id).tick().expect("tick");
            self.process(id);
        }
    }

    /// Ticks every running node once.
    fn tick_all(&mut self) {
        for id in self.ids.clone() {
            if self.nodes[&id].is_some() {
                self.tick(id, 1);
            }
        }
    }

    /// Ticks `id` until it starts a (pre-)election, then delivers everything.
    fn campaign(&mut self, id: NodeId) {
        for _ in 0..100 {
            if self.role(id) != Role::Follower {
                break;
            }
            self.tick(id, 1);
        }
        assert_ne!(self.role(id), Role::Follower, "node {id} never campaigned");
        self.deliver_all();
    }

    /// Elects `id` and lets its no-op commit everywhere reachable.
    fn elect(&mut self, id: NodeId) {
        self.campaign(id);
        assert_eq!(self.role(id), Role::Leader, "node {id} should have won");
        self.heartbeat(id);
    }

    /// One heartbeat round from leader `id`, fully delivered.
    fn heartbeat(&mut self, id: NodeId) {
        self.tick(id, 1);
        self.deliver_all();
    }

    fn propose(&mut self, id: NodeId, data: &[u8]) -> LogIndex {
        let index = self
            .node_mut(id)
            .propose(data.to_vec())
            .expect("propose on the leader");
        self.process(id);
        index
    }

    /// Cuts every link between the two groups, both ways.
    fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// The data of the entries node `id` applied (no-ops skipped).
    fn applied_data(&self, id: NodeId) -> Vec<Vec<u8>> {
        self.applied[&id]
            .iter()
            .filter(|e| !e.data.is_empty())
            .map(|e| e.data.clone())
            .collect()
    }

    fn log_terms(&self, id: NodeId) -> Vec<Term> {
        self.logs[&id]
            .all_entries()
            .iter()
            .map(|e| e.term)
            .collect()
    }
}

impl Cluster {
    /// Delivers messages one at a time until the next one matches `stop`,
    /// which is taken off the network undelivered and returned.
    fn deliver_until_next(&mut self, stop: impl Fn(&Envelope) -> bool) -> Option<Envelope> {
        self.process_all();
        let mut budget = 100_000;
        while let Some(env) = self.network.front() {
            if stop(env) {
                return self.network.pop_front();
            }
            self.deliver_one();
            budget -= 1;
            assert!(budget > 0, "the network never went quiet");
        }
        None
    }

    /// Delivers messages one at a time until `done` holds; false if the
    /// network went quiet first.
    fn deliver_until(&mut self, done: impl Fn(&Cluster) -> bool) -> bool {
        self.process_all();
        while !done(self) {
            if !self.deliver_one() {
                return done(self);
            }
        }
        true
    }

    /// Lets the lease of followers `ids` on their old leader run out: each
    /// sees an election timeout's worth of ticks without hearing from a
    /// leader. Whatever they send meanwhile (a pre-vote, at most) is
    /// dropped, so no term changes.
    fn age(&mut self, ids: &[NodeId]) {
        for &id in ids {
            let ticks = self.node(id).config().election_ticks_min;
            self.tick(id, ticks);
        }
        self.network.retain(|e| !ids.contains(&e.from));
    }

    /// Ticks `id` alone, delivering messages after each tick, until it
    /// leads (what it sends as the new leader stays on the network); panics
    /// after `max_ticks`.
    fn elect_eventually(&mut self, id: NodeId, max_ticks: u32) {
        for _ in 0..max_ticks {
            self.tick(id, 1);
            if self.deliver_until(|c| c.role(id) == Role::Leader) {
                return;
            }
        }
        let states: Vec<String> = self
            .ids
            .iter()
            .map(|&n| match &self.nodes[&n] {
                Some(node) => format!("n{n}: {:?} {:?}", node.status(), node.hard_state()),
                None => format!("n{n}: down"),
            })
            .collect();
        panic!("node {id} did not become leader in {max_ticks} ticks: {states:#?}");
    }

    /// Cuts the links from `from` to each of `to`, one way.
    fn cut_one_way(&mut self, from: NodeId, to: &[NodeId]) {
        for &t in to {
            self.cut.insert((from, t));
        }
    }

    /// Whether any node ever applied an entry carrying `data`.
    fn anyone_applied(&self, data: &[u8]) -> bool {
        self.applied
            .values()
            .any(|entries| entries.iter().any(|e| e.data == data))
    }

    fn last_index(&self, id: NodeId) -> LogIndex {
        self.logs[&id].all_entries().len() as LogIndex
    }
}

/// An append from `from` to `to` carrying the entry at `index`.
fn is_append_of(env: &Envelope, from: NodeId, to: NodeId, index: LogIndex) -> bool {
    env.from == from
        && env.to == to
        && matches!(&env.msg, Message::AppendEntries { entries, .. }
            if entries.iter().any(|e| e.index == index))
}

// ---- Elections -------------------------------------------------------------

#[test]
fn three_nodes_elect_one_leader() {
    let mut c = Cluster::new(3);
    c.campaign(1);
    assert_eq!(c.leaders(), vec![1]);
    assert_eq!(c.term(1), 1);
    assert_eq!(c.role(2), Role::Follower);
    assert_eq!(c.role(3), Role::Follower);
    // The no-op commits once a heartbeat carries the commit index.
    c.heartbeat(1);
    for id in 1..=3 {
        assert_eq!(c.commit(id), 1, "node {id} commit");
        assert_eq!(c.node(id).status().leader, Some(1));
    }
}

/// A message claiming a term no election reaches (forged or garbled) is
/// dropped: adopting `u64::MAX` once wrapped every later candidate's term
/// to 0 and left the cluster without a leader for good.
#[test]
fn a_message_with_an_impossible_term_is_dropped() {
    use kvapp_c::raft::node::MAX_TERM;
    let mut c = Cluster::new(3);
    c.campaign(1);
    c.heartbeat(1);
    for term in [u64::MAX, MAX_TERM + 1] {
        for id in 1..=3 {
            let from = id % 3 + 1;
            c.node_mut(id)
                .step(
                    from,
                    Message::VoteResponse {
                        term,
                        granted: false,
                        pre_vote: false,
                    },
                )
                .unwrap();
            assert_eq!(c.term(id), 1, "node {id} took term {term}");
        }
    }
    assert_eq!(c.leaders(), vec![1]);
    // Still a working cluster: a write commits everywhere.
    let index = c.propose(1, b"after");
    c.deliver_all();
    c.heartbeat(1);
    for id in 1..=3 {
        assert!(c.commit(id) >= index, "node {id} did not commit {index}");
    }
}

/// A term file holding a term no election reaches is refused at start.
#[test]
fn a_saved_impossible_term_is_refused() {
    use kvapp_c::raft::node::MAX_TERM;
    use kvapp_c::storage::HardState;
    let mut state = MemoryState::new();
    state
        .save(&HardState {
            term: MAX_TERM + 1,
            vote: None,
        })
        .unwrap();
    let err = match Node::new(config(1, &[1, 2, 3]), MemoryLog::new(), state) {
        Ok(_) => panic!("a node started at term {}", MAX_TERM + 1),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("beyond any term"), "{err}");
}

/// A follower whose state machine refuses a received snapshot as
/// malformed reports it, and goes on: it takes appends and a later
/// snapshot as if that one had never come.
#[test]
fn a_rejected_snapshot_leaves_the_follower_working() {
    let mut node = Node::new(config(1, &[1, 2, 3]), MemoryLog::new(), MemoryState::new()).unwrap();
    let snapshot = |data: &[u8]| Message::InstallSnapshot {
        term: 1,
        leader: 2,
        index: 5,
        index_term: 1,
        offset: 0,
        data: data.to_vec(),
        done: true,
    };
    node.step(2, snapshot(b"not a snapshot")).unwrap();
    let rd = node.ready();
    assert_eq!(
        rd.snapshot.map(|s| s.data),
        Some(b"not a snapshot".to_vec())
    );
    node.snapshot_rejected();
    // Nothing was acknowledged for it.
    assert!(node.ready().messages.is_empty());

    // Appends are taken again (a node installing a snapshot ignores them).
    let entry = Entry {
        index: 1,
        term: 1,
        data: b"a".to_vec(),
    };
    node.step(
        2,
        Message::AppendEntries {
            term: 1,
            leader: 2,
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![entry],
            leader_commit: 0,
            read_seq: 0,
        },
    )
    .unwrap();
    node.sync().unwrap();
    let acks = node.ready().messages;
    assert!(
        acks.iter().any(|(to, m)| *to == 2
            && matches!(
                m,
                Message::AppendResponse {
                    success: true,
                    match_index: 1,
                    ..
                }
            )),
        "{acks:?}"
    );

    // And a snapshot sent again is handed out again.
    node.step(2, snapshot(b"the real one")).unwrap();
    assert_eq!(
        node.ready().snapshot.map(|s| s.data),
        Some(b"the real one".to_vec())
    );
}

#[test]
fn five_nodes_elect_one_leader() {
    let mut c = Cluster::new(5);
    c.campaign(4);
    assert_eq!(c.leaders(), vec![4]);
    for id in [1, 2, 3, 5] {
        assert_eq!(c.term(id), 1);
        assert_eq!(c.state_storage_vote(id), Some(4), "node {id} voted for 4");
    }
}

impl Cluster {
    fn state_storage_vote(&self, id: NodeId) -> Option<NodeId> {
        self.states[&id].load().unwrap().vote
    }
}

// ---- Replication -------------------------------------------------------------

#[test]
fn entries_replicate_and_commit_everywhere() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let a = c.propose(1, b"a");
    let b = c.propose(1, b"b");
    assert_eq!((a, b), (2, 3));
    c.deliver_all();
    assert_eq!(
        c.commit(1),
        3,
        "leader commits once a follower acknowledged"
    );
    c.heartbeat(1);
    for id in 1..=3 {
        assert_eq!(
            c.applied_data(id),
            vec![b"a".to_vec(), b"b".to_vec()],
            "node {id}"
        );
    }
}

#[test]
fn proposals_between_two_ready_calls_share_one_append() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..10u8 {
        c.node_mut(1).propose(vec![i]).unwrap();
    }
    let rd = c.node_mut(1).ready();
    let appends: Vec<usize> = rd
        .messages
        .iter()
        .filter_map(|(_, m)| match m {
            Message::AppendEntries { entries, .. } if !entries.is_empty() => Some(entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(
        appends,
        vec![10, 10],
        "one append of 10 entries per follower"
    );
}

#[test]
fn proposing_to_a_follower_names_the_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    match c.node_mut(2).propose(b"x".to_vec()) {
        Err(Error::NotLeader { leader }) => assert_eq!(leader, Some(1)),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    match c.node_mut(3).read_index(7) {
        Err(Error::NotLeader { leader }) => assert_eq!(leader, Some(1)),
        other => panic!("expected NotLeader, got {other:?}"),
    }
}

#[test]
fn single_node_cluster_elects_itself_and_commits_on_its_own_sync() {
    let mut c = Cluster::new(1);
    c.tick(1, 1);
    assert_eq!(c.role(1), Role::Leader);
    assert_eq!(c.commit(1), 1, "the no-op commits on the leader's own sync");
    let i = c.propose(1, b"solo");
    assert_eq!(c.commit(1), i);
    assert_eq!(c.applied_data(1), vec![b"solo".to_vec()]);
    c.node_mut(1).read_index(9).unwrap();
    c.process(1);
    assert_eq!(c.reads[&1], vec![ReadState { id: 9, index: i }]);
}

// ---- Figure 8 of the Raft paper --------------------------------------------
//
// A leader may not decide that an entry from an older term is committed just
// because a majority holds it: a node holding a conflicting entry of a later
// term could still win an election and overwrite it. Only once an entry of
// the leader's own term is on a majority is everything before it committed.
//
// The setup reproduces the paper's steps (a)-(c) in a five-node cluster
// whose appends carry a single entry each:
//
// (a) n1 leads term 1 and replicates entry 2 ("a") to n2 only.
// (b) n1 crashes; n5 is elected at term 2 by n3 and n4 and appends its no-op
//     at index 2, then crashes before sending it anywhere.
// (c) n1 restarts and is elected at term 3 or later. Entry 2 reaches n3, so
//     n1, n2 and n3 (a majority) hold it; n1's own no-op at index 3 reaches
//     only n2, and n1 knows all of this.

fn figure8_config(c: &mut Config) {
    c.max_append_bytes = 1;
}

/// Runs steps (a)-(c); returns the cluster and n1's no-op append to n3,
/// held back undelivered.
fn figure8_setup() -> (Cluster, Envelope) {
    let mut c = Cluster::with(5, figure8_config);
    c.elect(1);

    // (a) Only n2 hears of entry 2.
    c.partition(&[1, 2], &[3, 4, 5]);
    assert_eq!(c.propose(1, b"a"), 2);
    c.deliver_all();
    assert_eq!(c.log_terms(2), vec![1, 1], "n2 holds entry 2");
    assert_eq!(c.commit(1), 1, "two of five nodes are no majority");

    // (b) n5 wins term 2 with n3 and n4 (n2's log is ahead of n5's), appends
    // its no-op, and crashes before anyone sees it.
    c.crash(1);
    c.heal();
    c.age(&[2, 3, 4]);
    c.elect_eventually(5, 100);
    assert_eq!(c.term(5), 2);
    c.drop_in_flight();
    c.crash(5);
    assert_eq!(
        c.log_terms(5),
        vec![1, 2],
        "n5's no-op at index 2 is durable"
    );

    // (c) n1 returns and wins a later term (n5's voters have not heard from
    // n5, so they are free to vote again).
    c.start(1);
    c.elect_eventually(1, 100);
    c.drop_in_flight();
    let term = c.term(1);
    assert!(term >= 3, "n1 leads term {term}");
    assert_eq!(c.log_terms(1), vec![1, 1, term], "n1's no-op is at index 3");
    // n1 reaches only n2 and n3. Its probes carry the no-op: n2 takes it,
    // n3 lacks entry 2 and refuses; n1 sends entry 2 to n3 alone, then the
    // no-op, which is held back.
    c.cut_one_way(1, &[4, 5]);
    c.heartbeat_no_deliver(1);
    let noops_to_n3 = std::cell::Cell::new(0);
    let noop = c
        .deliver_until_next(|e| {
            if is_append_of(e, 1, 3, 3) {
                noops_to_n3.set(noops_to_n3.get() + 1);
            }
            noops_to_n3.get() == 2
        })
        .expect("n1 sends its no-op to n3 again once entry 2 matched");
    assert_eq!(c.log_terms(2), vec![1, 1, term], "n2 holds the no-op");
    assert_eq!(c.log_terms(3), vec![1, 1], "n3 holds entry 2 from term 1");
    assert!(
        c.commit(1) < 2,
        "entry 2 is on a majority (n1, n2, n3) but from an older term, and the no-op is on only two nodes: n1 must not count entry 2 as committed (commit {})",
        c.commit(1)
    );
    (c, noop)
}

impl Cluster {
    /// One heartbeat tick of leader `id`, without delivering anything.
    fn heartbeat_no_deliver(&mut self, id: NodeId) {
        self.tick(id, 1);
    }
}

#[test]
fn figure8_old_term_entry_on_a_majority_is_not_committed() {
    let (mut c, _noop) = figure8_setup();

    // (d) n1 crashes before its no-op spreads further. n5 returns: its last
    // entry (index 2, term 2) is more up to date than n3's and n4's, so it
    // wins with them (n2, holding n1's no-op, refuses) and overwrites entry
    // 2 everywhere.
    c.crash(1);
    c.heal();
    c.start(5);
    c.age(&[2, 3, 4]);
    c.elect_eventually(5, 200);
    c.deliver_all();
    c.heartbeat(5);
    c.heartbeat(5);
    for id in [2, 3, 4, 5] {
        assert_eq!(
            c.log_terms(id)[..2],
            [1, 2],
            "n{id} holds n5's entry 2 from term 2"
        );
    }
    // That is safe only because "a" was never committed: nobody applied it.
    assert!(!c.anyone_applied(b"a"));
    c.start(1);
    c.heartbeat(5);
    c.heartbeat(5);
    assert_eq!(
        c.log_terms(1)[..2],
        [1, 2],
        "n1's copy of \"a\" is replaced"
    );
    assert!(!c.anyone_applied(b"a"));
}

#[test]
fn figure8_own_term_entry_on_a_majority_commits_the_older_one() {
    let (mut c, noop) = figure8_setup();

    // (e) Instead, n1's no-op reaches n3: an entry of n1's own term is on a
    // majority (n1, n2, n3), which commits it and entry 2 before it.
    c.network.push_front(noop);
    c.deliver_all();
    assert_eq!(c.commit(1), 3, "the no-op commits, and entry 2 with it");
    c.heal();
    c.heartbeat(1);
    assert!(c.anyone_applied(b"a"));

    // Now n5 can never win: every other node holds a more up-to-date log.
    c.crash(1);
    c.start(5);
    c.age(&[2, 3, 4]);
    for _ in 0..200 {
        c.tick(5, 1);
        c.deliver_all();
        assert_ne!(c.role(5), Role::Leader, "n5 lacks committed entries");
    }
    // Another node takes over and keeps "a"; n5's entry 2 is overwritten.
    c.elect_eventually(2, 200);
    c.deliver_all();
    c.heartbeat(2);
    c.heartbeat(2);
    for id in [2, 3, 4, 5] {
        assert_eq!(
            c.log_terms(id)[..2],
            [1, 1],
            "n{id} keeps entry 2 from term 1"
        );
        assert_eq!(c.applied_data(id)[0], b"a".to_vec(), "n{id} applied \"a\"");
    }
}

// ---- A partitioned leader ------------------------------------------------------
//
// n1 leads a five-node cluster, then finds itself on the minority side of a
// partition with n2. What it accepts there never commits, its reads are
// never served, and with CheckQuorum it steps down; the majority elects n3
// and carries on. When the partition heals, n1 and n2 drop their
// uncommitted entry and take the majority's.

#[test]
fn a_partitioned_leader_commits_nothing_and_the_majority_carries_on() {
    let mut c = Cluster::new(5);
    c.elect(1);
    c.propose(1, b"before");
    c.deliver_all();
    c.heartbeat(1);

    c.partition(&[1, 2], &[3, 4, 5]);
    let lost = c.propose(1, b"lost");
    c.node_mut(1).read_index(7).unwrap();
    c.deliver_all();
    c.heartbeat(1);
    assert!(c.commit(1) < lost, "two of five nodes cannot commit");
    assert!(c.reads[&1].is_empty(), "no quorum confirms n1's leadership");

    // The majority side elects n3, which commits a new entry.
    c.age(&[4, 5]);
    c.elect_eventually(3, 100);
    let term = c.term(3);
    assert!(term > c.term(1), "the new leader's term is newer");
    c.deliver_all();
    let won = c.propose(3, b"won");
    assert_eq!(won, lost + 1, "after n3's own no-op at the index n1 used");
    c.deliver_all();
    c.heartbeat(3);
    assert_eq!(c.commit(3), won);

    // Meanwhile n1 keeps ticking; hearing from only n2 it steps down, and
    // the read it held fails instead of being served stale.
    let limit = 3 * c.node(1).config().election_ticks_min;
    for _ in 0..limit {
        c.tick(1, 1);
        c.deliver_all();
    }
    assert_ne!(c.role(1), Role::Leader, "CheckQuorum deposes n1");
    assert_eq!(c.failed_reads[&1], vec![7]);
    assert!(c.reads[&1].is_empty());

    // Heal: n1 and n2 learn the new term and replace "lost" with "won".
    c.heal();
    c.heartbeat(3);
    c.heartbeat(3);
    for id in 1..=5 {
        assert_eq!(
            c.applied_data(id),
            vec![b"before".to_vec(), b"won".to_vec()],
            "n{id}"
        );
        assert_eq!(c.term(id), term, "n{id} follows term {term}");
    }
    assert!(!c.anyone_applied(b"lost"));
}

// ---- A rejoining node with a longer but stale log ------------------------------
//
// n1 leads, is cut off alone, and keeps accepting proposals: its log grows
// past everyone else's, all of it from the old term. Without PreVote it
// also keeps starting elections, so it rejoins with a higher term than the
// new leader's. Its higher term forces a new election, but its log is
// stale (its last term is older), so it cannot win; a node with the
// committed entries wins and n1's extra entries are thrown away.

fn no_pre_vote(c: &mut Config) {
    c.pre_vote = false;
}

#[test]
fn a_rejoining_node_with_a_longer_stale_log_cannot_win() {
    let mut c = Cluster::with(3, no_pre_vote);
    c.elect(1);
    c.propose(1, b"a");
    c.deliver_all();
    c.heartbeat(1);

    c.partition(&[1], &[2, 3]);
    for x in [b"x1", b"x2", b"x3", b"x4"] {
        c.propose(1, x);
    }
    c.deliver_all();
    c.age(&[3]);
    c.elect_eventually(2, 100);
    c.deliver_all();
    c.propose(2, b"b");
    c.deliver_all();
    c.heartbeat(2);
    assert_eq!(c.applied_data(2), vec![b"a".to_vec(), b"b".to_vec()]);

    // n1, alone, steps down (CheckQuorum) and campaigns again and again.
    for _ in 0..100 {
        c.tick(1, 1);
        c.deliver_all();
    }
    assert!(
        c.last_index(1) > c.last_index(2),
        "n1's log is longer ({} > {})",
        c.last_index(1),
        c.last_index(2)
    );
    assert!(c.term(1) > c.term(2), "n1's term is higher");

    // Heal and let the whole cluster run: n1 never leads, and everyone ends
    // up with the committed entries only.
    c.heal();
    let mut settled = false;
    for _ in 0..300 {
        c.tick_all();
        c.deliver_all();
        assert!(!c.leaders().contains(&1), "n1's stale log must not win");
        let leaders = c.leaders();
        if leaders.len() == 1
            && (1..=3).all(|id| c.applied_data(id).len() >= 2 && c.term(id) == c.term(leaders[0]))
        {
            settled = true;
            break;
        }
    }
    assert!(settled, "the cluster settles on a leader after healing");
    for id in 1..=3 {
        assert_eq!(
            c.applied_data(id)[..2],
            [b"a".to_vec(), b"b".to_vec()],
            "n{id}"
        );
    }
    for x in [b"x1", b"x2", b"x3", b"x4"] {
        assert!(!c.anyone_applied(x), "n1's uncommitted entries are dropped");
    }
}

// ---- A stale node's vote requests must not hold elections back -----------------
//
// Regression test. Without PreVote, a node whose log is too stale to win
// keeps timing out first (its clock runs fast) and asks for votes at ever
// higher terms. Each request makes the up-to-date node adopt the higher
// term; it used to restart its election timer as well, so it never timed
// out and the cluster stayed leaderless. Rejected vote requests must leave
// the timer alone: the up-to-date node times out, and wins.

fn no_pre_vote_no_check_quorum(c: &mut Config) {
    c.pre_vote = false;
    c.check_quorum = false;
}

#[test]
fn a_stale_node_campaigning_fast_does_not_keep_the_cluster_leaderless() {
    let mut c = Cluster::with(3, no_pre_vote_no_check_quorum);
    c.elect(1);
    c.partition(&[3], &[1, 2]);
    for x in [b"p", b"q", b"r"] {
        c.propose(1, x);
    }
    c.deliver_all();
    c.heartbeat(1);
    assert!(c.commit(2) > c.last_index(3), "n3 misses committed entries");

    // The leader dies; n3 rejoins; n3's clock runs three times as fast as n2's.
    c.crash(1);
    c.heal();
    let mut rounds = 0;
    while c.role(2) != Role::Leader {
        rounds += 1;
        assert!(
            rounds <= 100,
            "no leader after 100 of n2's ticks (n2 term {}, n3 term {})",
            c.term(2),
            c.term(3)
        );
        c.tick(3, 3);
        c.deliver_all();
        c.tick(2, 1);
        c.deliver_all();
        assert_ne!(c.role(3), Role::Leader, "n3's log is stale");
    }
    assert!(
        c.term(3) > 2,
        "n3 did campaign meanwhile (term {})",
        c.term(3)
    );
    c.heartbeat(2);
    assert_eq!(
        c.applied_data(3),
        vec![b"p".to_vec(), b"q".to_vec(), b"r".to_vec()]
    );
}

// ---- Compaction and snapshots ------------------------------------------

fn small_appends(c: &mut Config) {
    c.max_append_bytes = 64;
}

fn is_snapshot_piece(env: &Envelope) -> bool {
    matches!(env.msg, Message::InstallSnapshot { .. })
}

/// Node 1 leads and commits 20 entries while node 3 is down; nodes 1 and 2
/// then discard everything they applied but the last `keep` entries.
fn node_3_behind_a_compacted_log(keep: LogIndex) -> Cluster {
    let mut c = Cluster::with(3, small_appends);
    c.elect(1);
    c.crash(3);
    for i in 0..20u8 {
        c.propose(1, &[b'v', i, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
    c.deliver_all();
    c.heartbeat(1);
    for id in [1, 2] {
        let applied = c.applied[&id].last().unwrap().index;
        c.node_mut(id).compact(applied - keep).unwrap();
        assert_eq!(c.logs[&id].first_index(), applied - keep + 1);
    }
    c
}

/// Restarts node 3 and ticks the leader until it sends node 3 a piece of
/// a snapshot, which is taken off the network (lost) and returned.
fn restart_node_3_until_a_snapshot_piece(c: &mut Cluster) -> Envelope {
    c.start(3);
    for _ in 0..10 {
        c.tick(1, 1);
        if let Some(piece) = c.deliver_until_next(is_snapshot_piece) {
            return piece;
        }
    }
    panic!("the leader sent no snapshot piece");
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_from_a_snapshot() {
    // Both live nodes discard all but the last two entries they applied.
    let mut c = node_3_behind_a_compacted_log(2);
    let commit = c.commit(1);
    assert!(commit >= 21, "commit {commit}");
    // Compacting past what is applied is refused.
    assert!(c.node_mut(1).compact(commit + 5).is_err());

    // The leader finds node 3 behind its log (a stalled stream falls back to
    // probing); the first piece of the snapshot is lost, and the leader
    // sends it again on a heartbeat.
    let lost = restart_node_3_until_a_snapshot_piece(&mut c);
    assert!(matches!(
        lost.msg,
        Message::InstallSnapshot { offset: 0, .. }
    ));
    c.deliver_all();
    for _ in 0..5 {
        c.heartbeat(1);
    }
    let pieces = c.delivered.iter().filter(|e| is_snapshot_piece(e)).count();
    assert!(
        pieces >= 3,
        "a snapshot of 20 entries in 64-byte pieces, got {pieces} pieces"
    );
    assert_eq!(c.installed.len(), 1, "{:?}", c.installed);
    let (who, through) = c.installed[0];
    assert_eq!(who, 3);
    assert_eq!(
        c.logs[&3].first_index(),
        through + 1,
        "the log starts after the snapshot"
    );
    // Node 3 holds what the leader applied, and follows new entries.
    let index = c.propose(1, b"after");
    c.deliver_all();
    c.heartbeat(1);
    assert_eq!(c.commit(3), index);
    assert_eq!(c.applied_data(3), c.applied_data(1));
    assert!(c.applied_data(3).last().is_some_and(|d| d == b"after"));
}

#[test]
fn a_snapshot_replaces_a_follower_log_that_disagrees_with_it() {
    let mut c = Cluster::with(3, small_appends);
    c.elect(1);
    c.heartbeat(1);
    // Node 1 appends entries that only it holds, then loses leadership.
    c.partition(&[1], &[2, 3]);
    for i in 0..5u8 {
        c.propose(1, &[b'x', i]);
    }
    c.drop_in_flight();
    c.age(&[2, 3]);
    c.elect_eventually(2, 200);
    c.deliver_all();
    for i in 0..10u8 {
        c.propose(2, &[b'y', i]);
    }
    c.deliver_all();
    c.heartbeat(2);
    let applied = c.applied[&2].last().unwrap().index;
    c.node_mut(2).compact(applied).unwrap();
    c.node_mut(3).compact(applied).unwrap();
    let stale_terms = c.log_terms(1);
    assert!(
        stale_terms.len() >= 6,
        "node 1 holds its unreplicated entries"
    );

    c.heal();
    for _ in 0..6 {
        c.heartbeat(2);
    }
    assert!(
        c.installed.iter().any(|&(id, _)| id == 1),
        "{:?}",
        c.installed
    );
    assert_eq!(c.applied_data(1), c.applied_data(2));
    // Node 1's own entries are gone: the log it appends to now is the
    // leader's, and a new entry reaches and applies on it.
    let index = c.propose(2, b"after the heal");
    c.deliver_all();
    c.heartbeat(2);
    assert_eq!(c.commit(1), index);
    assert_eq!(c.applied_data(1), c.applied_data(2));
    assert_eq!(
        c.applied_data(1).last().map(Vec::as_slice),
        Some(&b"after the heal"[..])
    );
    assert!(!c.anyone_applied(&[b'x', 0]));
    let term2 = c.term(2);
    let terms = c.log_terms(1);
    assert!(
        !terms.is_empty() && terms.iter().all(|&t| t == term2),
        "{terms:?}"
    );
}

#[test]
fn a_follower_that_dies_during_its_snapshot_does_not_hold_compaction_back() {
    let mut c = node_3_behind_a_compacted_log(0);
    let Message::InstallSnapshot { index: sent, .. } =
        restart_node_3_until_a_snapshot_piece(&mut c).msg
    else {
        unreachable!("a snapshot piece");
    };
    // Node 3 dies in the middle of the transfer.
    c.crash(3);
    for i in 0..10u8 {
        c.propose(1, &[b'w', i]);
    }
    c.deliver_all();
    // While the transfer counts as live, compaction stops at its snapshot.
    let applied = c.applied[&1].last().unwrap().index;
    c.node_mut(1).compact(applied).unwrap();
    assert_eq!(c.logs[&1].first_index(), sent + 1);
    // After a quorum window without an answer from node 3 it no longer
    // does, and the leader compacts past it.
    let window = c.node(1).config().election_ticks_min;
    for _ in 0..2 * window {
        c.heartbeat(1);
    }
    assert_eq!(c.role(1), Role::Leader);
    c.node_mut(1).compact(applied).unwrap();
    assert_eq!(c.logs[&1].first_index(), applied + 1);
    // Node 3 comes back and catches up from a newer snapshot.
    c.start(3);
    for _ in 0..10 {
        c.heartbeat(1);
    }
    assert_eq!(c.commit(3), c.commit(1));
    assert_eq!(c.applied_data(3), c.applied_data(1));
}

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
use kvapp_c::storage::{Entry, StateStorage};
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
        let cfg = config(id, &self.ids);
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
                node.sync().expect("sync");
            }
            for (to, msg) in rd.messages_after_sync {
                self.network.push_back(Envelope { from: id, to, msg });
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

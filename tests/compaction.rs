//! Log compaction and snapshot installs through real servers: file storage
//! (real files, fsync) and the TCP transport on loopback, in one process.
//! The nodes compact early (small flush and keep settings), so a follower
//! that was down while the others wrote must catch up from a snapshot.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvapp_c::NodeId;
use kvapp_c::kv::Client;
use kvapp_c::network::tcp::{TcpConfig, TcpTransport, cluster_identity};
use kvapp_c::server::{Server, ServerHandle};
use kvapp_c::storage::file::DataDir;
use kvapp_c::storage::{KvStorage, LogStorage};
use kvapp_c::timing::{TimingConfig, TimingMode};

use common::wait_for;

/// Flush the store after this many applied entries ...
const FLUSH_EVERY: u64 = 100;
/// ... and keep this many entries in the log behind a flush.
const KEEP: u64 = 20;

struct Cluster {
    members: Vec<SocketAddr>,
    dir: tempfile::TempDir,
    nodes: Vec<Option<ServerHandle>>,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let base = common::free_ports(n as u16);
        let members = (0..n as u16)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], base + i)))
            .collect();
        let mut c = Cluster {
            members,
            dir: tempfile::tempdir().unwrap(),
            nodes: (0..n).map(|_| None).collect(),
        };
        for id in 1..=n as NodeId {
            c.start_node(id);
        }
        c
    }

    fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    fn start_node(&mut self, id: NodeId) {
        let dir = DataDir::open(&self.data_dir(id)).unwrap();
        let peers: BTreeMap<NodeId, SocketAddr> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, a)| (i as NodeId + 1, *a))
            .filter(|(n, _)| *n != id)
            .collect();
        let raft_addr = self.members[id as usize - 1];
        let transport = TcpTransport::new(TcpConfig::new(
            id,
            cluster_identity(&self.members),
            raft_addr,
            peers,
        ))
        .unwrap();
        let handle = Server::builder(id, self.members.clone())
            .timing(TimingConfig::preset(TimingMode::Fast))
            .client_addr(SocketAddr::from(([127, 0, 0, 1], raft_addr.port() + 1000)))
            .storage(dir.log().unwrap(), dir.state().unwrap(), dir.kv().unwrap())
            .transport(transport)
            .compaction(FLUSH_EVERY, KEEP)
            .keep_alive(dir)
            .seed(id * 104_729)
            .start()
            .unwrap();
        self.nodes[id as usize - 1] = Some(handle);
    }

    fn stop_node(&mut self, id: NodeId) {
        if let Some(h) = self.nodes[id as usize - 1].take() {
            h.shutdown();
            h.join().unwrap();
        }
    }

    fn node(&self, id: NodeId) -> &ServerHandle {
        self.nodes[id as usize - 1].as_ref().expect("node running")
    }

    fn client(&self) -> Client {
        let addrs = self
            .members
            .iter()
            .map(|a| SocketAddr::from(([127, 0, 0, 1], a.port() + 1000)))
            .collect();
        Client::new(addrs, Duration::from_secs(20))
    }

    fn leader(&self) -> NodeId {
        wait_for("a leader", Duration::from_secs(30), || {
            self.nodes
                .iter()
                .flatten()
                .map(|h| h.status())
                .find(|s| s.role == "leader")
                .map(|s| s.id)
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in self.nodes.iter_mut().filter_map(Option::take) {
            h.shutdown();
            let _ = h.join();
        }
    }
}

/// The prefix index in a log's start file, if the log discarded a prefix
/// in place (the file is read raw: the running node holds the directory).
fn discarded_through(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(dir.join("raft.log.start")).ok()?;
    Some(u64::from_le_bytes(bytes[16..24].try_into().unwrap()))
}

#[test]
fn a_follower_down_while_the_log_was_compacted_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    let behind = (1..=3).find(|&i| i != leader).unwrap();
    let mut client = cluster.client();
    client.put(b"first", b"before the gap").unwrap();
    let term = cluster.node(leader).status().term;
    cluster.stop_node(behind);
    let behind_last = {
        let dir = DataDir::open(&cluster.data_dir(behind)).unwrap();
        dir.log().unwrap().last_index()
    };

    // Overwrite a few keys many times: the store stays small, so it is
    // flushed every FLUSH_EVERY entries and the log compacted behind it.
    let mut expected = BTreeMap::new();
    for round in 0..40u32 {
        for k in 0..25u32 {
            let key = format!("key-{k:02}");
            let value = format!("value {round} of {key}").repeat(4);
            client.put(key.as_bytes(), value.as_bytes()).unwrap();
            expected.insert(key, value);
        }
    }
    let leader_dir = cluster.data_dir(leader);
    let discarded = wait_for(
        "the leader to discard the log the stopped follower needs",
        Duration::from_secs(30),
        || discarded_through(&leader_dir).filter(|&d| d > behind_last + 10),
    );
    assert!(discarded > behind_last);

    cluster.start_node(behind);
    let commit = cluster.node(leader).status().commit_index;
    wait_for("the follower to catch up", Duration::from_secs(60), || {
        (cluster.node(behind).status().applied_index >= commit).then_some(())
    });
    // New writes reach it through the log as usual. (The leader publishes
    // its status after the ready cycle that answered the write; a read
    // afterwards is served in a later cycle, so its status then counts the
    // write.)
    client.put(b"last", b"after the snapshot").unwrap();
    assert_eq!(
        client.get(b"last").unwrap().as_deref(),
        Some(&b"after the snapshot"[..])
    );
    let commit = cluster.node(leader).status().commit_index;
    wait_for(
        "the follower to apply the last write",
        Duration::from_secs(30),
        || (cluster.node(behind).status().applied_index >= commit).then_some(()),
    );
    cluster.stop_node(behind);

    // Its own store holds every pair, read straight from its files.
    let dir = DataDir::open(&cluster.data_dir(behind)).unwrap();
    let kv = dir.kv().unwrap();
    for (key, value) in &expected {
        assert_eq!(
            kv.get(key.as_bytes()).unwrap().as_deref(),
            Some(value.as_bytes()),
            "{key}"
        );
    }
    assert_eq!(
        kv.get(b"first").unwrap().as_deref(),
        Some(&b"before the gap"[..])
    );
    assert_eq!(
        kv.get(b"last").unwrap().as_deref(),
        Some(&b"after the snapshot"[..])
    );
    // The leader never changed, and it had discarded entries the follower
    // lacked before the follower came back: only a snapshot could bring
    // the follower to where it is.
    let status = cluster.node(leader).status();
    assert_eq!((status.role.as_str(), status.term), ("leader", term));
}

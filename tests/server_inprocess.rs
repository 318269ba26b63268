//! Whole servers in one process: memory storage, an in-memory network with
//! partitions, and real client connections over loopback TCP. The same
//! `Server::builder` entry point the binary uses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvapp_c::kv::Client;
use kvapp_c::kv::protocol::{Op, Outcome, Query, Request, Response};
use kvapp_c::network::frame;
use kvapp_c::network::memory::MemoryNetwork;
use kvapp_c::server::{Server, ServerHandle};
use kvapp_c::storage::memory::{MemoryKv, MemoryLog, MemoryState};
use kvapp_c::storage::{Entry, LogStorage, SyncJob};
use kvapp_c::timing::{TimingConfig, TimingMode};
use kvapp_c::{Error, LogIndex, NodeId, Term};

struct Storage {
    log: MemoryLog,
    state: MemoryState,
    kv: MemoryKv,
}

struct Cluster {
    network: MemoryNetwork,
    members: Vec<SocketAddr>,
    storage: Vec<Storage>,
    nodes: Vec<Option<ServerHandle>>,
    frame_timeout: Duration,
    max_client_connections: usize,
    timing: TimingConfig,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        Cluster::start_with_frame_timeout(n, kvapp_c::server::DEFAULT_CLIENT_FRAME_TIMEOUT)
    }

    fn start_with_frame_timeout(n: usize, frame_timeout: Duration) -> Cluster {
        Cluster::start_with(
            n,
            frame_timeout,
            kvapp_c::server::DEFAULT_MAX_CLIENT_CONNECTIONS,
        )
    }

    fn start_with(n: usize, frame_timeout: Duration, max_client_connections: usize) -> Cluster {
        Cluster::start_full(
            n,
            frame_timeout,
            max_client_connections,
            TimingConfig::preset(TimingMode::Fast),
        )
    }

    fn start_full(
        n: usize,
        frame_timeout: Duration,
        max_client_connections: usize,
        timing: TimingConfig,
    ) -> Cluster {
        let network = MemoryNetwork::new();
        // Raft addresses are names only here: the memory network carries
        // peer traffic.
        let members = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 1 + i as u16)))
            .collect();
        let storage = (0..n)
            .map(|_| Storage {
                log: MemoryLog::new(),
                state: MemoryState::new(),
                kv: MemoryKv::new(),
            })
            .collect();
        let mut c = Cluster {
            network,
            members,
            storage,
            nodes: (0..n).map(|_| None).collect(),
            frame_timeout,
            max_client_connections,
            timing,
        };
        for id in 1..=n as NodeId {
            c.start_node(id);
        }
        c
    }

    fn start_node(&mut self, id: NodeId) {
        let s = &self.storage[id as usize - 1];
        let handle = Server::builder(id, self.members.clone())
            .timing(self.timing)
            .client_addr("127.0.0.1:0".parse().unwrap())
            .storage(s.log.clone(), s.state.clone(), s.kv.clone())
            .transport(self.network.transport(id))
            .seed(id * 7919)
            .client_frame_timeout(self.frame_timeout)
            .max_client_connections(self.max_client_connections)
            .start()
            .expect("server starts");
        self.nodes[id as usize - 1] = Some(handle);
    }

    /// Stops a node, then drops whatever its storage holds unsynced (a clean
    /// stop syncs first, so this checks that a restart needs nothing but the
    /// durable state).
    fn stop_node(&mut self, id: NodeId) {
        if let Some(h) = self.nodes[id as usize - 1].take() {
            h.shutdown();
            let _ = h.join();
        }
        let s = &self.storage[id as usize - 1];
        s.log.crash();
        s.state.crash();
        s.kv.crash();
    }

    fn node(&self, id: NodeId) -> &ServerHandle {
        self.nodes[id as usize - 1].as_ref().expect("node running")
    }

    fn client(&self, timeout: Duration) -> Client {
        let addrs = self
            .nodes
            .iter()
            .map(|h| {
                h.as_ref()
                    .map(|h| h.client_addr())
                    .unwrap_or_else(|| "127.0.0.1:1".parse().unwrap())
            })
            .collect();
        Client::new(addrs, timeout)
    }

    /// A client that only knows node `id`.
    fn client_of(&self, id: NodeId, timeout: Duration) -> Client {
        Client::new(vec![self.node(id).client_addr()], timeout)
    }

    fn wait_for_leader(&self, except: Option<NodeId>) -> NodeId {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for h in self.nodes.iter().flatten() {
                let s = h.status();
                if s.role == "leader" && Some(s.id) != except {
                    return s.id;
                }
            }
            assert!(Instant::now() < deadline, "no leader elected within 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_applied(&self, id: NodeId, index: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.node(id).status().applied_index < index {
            assert!(
                Instant::now() < deadline,
                "node {id} did not apply index {index}: {:?}",
                self.node(id).status()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
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

#[test]
fn every_operation_through_a_three_node_cluster() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(None);
    let mut c = cluster.client(Duration::from_secs(10));

    assert_eq!(c.get(b"k").unwrap(), None);
    c.put(b"k", b"v1").unwrap();
    assert_eq!(c.get(b"k").unwrap(), Some(b"v1".to_vec()));

    let cas = c.cas(b"k", Some(b"wrong"), b"v2").unwrap();
    assert!(!cas.swapped);
    assert_eq!(cas.current, Some(b"v1".to_vec()));
    let cas = c.cas(b"k", Some(b"v1"), b"v2").unwrap();
    assert!(cas.swapped);
    assert!(c.cas(b"new", None, b"x").unwrap().swapped);

    c.put(b"kb", b"other").unwrap();
    assert_eq!(c.list(b"k").unwrap(), vec![b"k".to_vec(), b"kb".to_vec()]);
    c.delete(b"k").unwrap();
    c.delete(b"never-there").unwrap();
    assert_eq!(c.get(b"k").unwrap(), None);

    assert!(matches!(c.put(b"", b"v"), Err(Error::InvalidInput(_))));

    // Every replica applies the same entries.
    let target = cluster
        .node(cluster.wait_for_leader(None))
        .status()
        .commit_index;
    for id in 1..=3 {
        cluster.wait_applied(id, target);
    }
    let statuses = c.status();
    assert_eq!(statuses.len(), 3);
    assert_eq!(
        statuses
            .iter()
            .filter(|(_, _, s)| s.as_ref().is_ok_and(|s| s.role == "leader"))
            .count(),
        1
    );
}

#[test]
fn an_isolated_leader_is_replaced_and_serves_no_stale_read() {
    let cluster = Cluster::start(3);
    let old = cluster.wait_for_leader(None);
    let mut c = cluster.client(Duration::from_secs(10));
    c.put(b"x", b"before").unwrap();

    cluster.network.isolate(old);
    let new = cluster.wait_for_leader(Some(old));
    assert_ne!(new, old);
    c.put(b"x", b"after").unwrap();
    assert_eq!(c.get(b"x").unwrap(), Some(b"after".to_vec()));

    // The old leader cannot confirm its leadership: it must not answer with
    // the old value.
    let mut stale = cluster.client_of(old, Duration::from_millis(1500));
    match stale.get(b"x") {
        Ok(v) => assert_eq!(v, Some(b"after".to_vec()), "stale read served"),
        Err(Error::Failed(_)) | Err(Error::Unknown(_)) => {}
        Err(e) => panic!("unexpected error {e}"),
    }

    cluster.network.heal();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.node(old).status().role != "follower"
        || cluster.node(old).status().term < cluster.node(new).status().term
    {
        assert!(Instant::now() < deadline, "old leader did not rejoin");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.get(b"x").unwrap(), Some(b"after".to_vec()));
}

#[test]
fn a_stopped_node_restarts_from_its_storage_and_catches_up() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(None);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let mut c = cluster.client(Duration::from_secs(10));
    for i in 0..50 {
        c.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    cluster.stop_node(follower);
    for i in 50..100 {
        c.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    cluster.start_node(follower);
    let target = cluster.node(leader).status().commit_index;
    cluster.wait_applied(follower, target);
    // The restarted node holds everything: ask it alone once it leads or
    // through the cluster otherwise.
    assert_eq!(c.list(b"k").unwrap().len(), 100);
}

#[test]
fn writes_survive_a_restart_of_every_node() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(None);
    let mut c = cluster.client(Duration::from_secs(10));
    for i in 0..30 {
        c.put(format!("key{i}").as_bytes(), format!("value{i}").as_bytes())
            .unwrap();
    }
    for id in 1..=3 {
        cluster.stop_node(id);
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_for_leader(None);
    let mut c = cluster.client(Duration::from_secs(10));
    for i in 0..30 {
        assert_eq!(
            c.get(format!("key{i}").as_bytes()).unwrap(),
            Some(format!("value{i}").into_bytes())
        );
    }
}

/// A plain TCP connection to the leader's client port (30 s read timeout).
fn raw_connection_to_leader(c: &Cluster) -> std::net::TcpStream {
    let leader = c.wait_for_leader(None);
    let stream = std::net::TcpStream::connect(c.node(leader).client_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Sends a request frame on a raw connection.
fn send_request(stream: &mut std::net::TcpStream, request: &Request) {
    use std::io::Write;
    let mut bytes = Vec::new();
    frame::write_frame(&mut bytes, &frame::encode(request)).unwrap();
    stream.write_all(&bytes).unwrap();
}

fn read_response(reader: &mut impl std::io::Read) -> Response {
    let body = frame::read_frame(reader, frame::MAX_FRAME)
        .unwrap()
        .expect("an answer");
    frame::decode(&body).unwrap()
}

/// A write whose entry a new leader cuts from the proposer's log is not
/// reported as failed before another entry commits at its index: in a
/// cluster of five or more, other nodes holding it could still commit it.
/// The old leader, cut off, proposes two writes (from two clients); the
/// new leader's first entry takes the first one's index, which then
/// commits with another entry (failed), and cuts the second one off the
/// log before anything commits at its index (unknown).
#[test]
fn a_write_cut_from_the_log_before_its_index_commits_is_unknown() {
    // Slow timing: the cut-off leader must still lead when the writes
    // reach it (it steps down after an election timeout without a quorum).
    let c = Cluster::start_full(
        3,
        kvapp_c::server::DEFAULT_CLIENT_FRAME_TIMEOUT,
        kvapp_c::server::DEFAULT_MAX_CLIENT_CONNECTIONS,
        TimingConfig::preset(TimingMode::Debug),
    );
    let old = c.wait_for_leader(None);
    c.client(Duration::from_secs(30)).put(b"x", b"1").unwrap();
    let connect = || {
        let s = std::net::TcpStream::connect(c.node(old).client_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s
    };
    let (mut a, mut b) = (connect(), connect());
    c.network.isolate(old);
    let put = |client_id: u64| Request::Write {
        client_id,
        seq: 1,
        op: Op::Put {
            key: b"x".to_vec(),
            value: b"2".to_vec(),
        },
    };
    send_request(&mut a, &put(7));
    send_request(&mut b, &put(8));
    let log = &c.storage[old as usize - 1].log;
    let before = c.node(old).status().commit_index;
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.last_index() < before + 2 {
        assert!(
            Instant::now() < deadline,
            "the old leader did not propose both writes: {:?}, last index {}",
            c.node(old).status(),
            log.last_index()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let new = c.wait_for_leader(Some(old));
    assert_ne!(new, old);
    c.network.heal();
    let mut answers = [read_response(&mut a), read_response(&mut b)]
        .map(|r| match r {
            Response::Failed(_) => "failed",
            Response::Unknown(_) => "unknown",
            other => panic!("unexpected answer {other:?}"),
        })
        .to_vec();
    answers.sort();
    assert_eq!(answers, ["failed", "unknown"]);
    assert_eq!(
        c.client(Duration::from_secs(30)).get(b"x").unwrap(),
        Some(b"1".to_vec())
    );
}

/// A client that sends several requests before reading any answer gets
/// every answer, in request order.
#[test]
fn requests_sent_ahead_on_one_connection_are_answered_in_order() {
    let c = Cluster::start(3);
    let mut stream = raw_connection_to_leader(&c);
    let put = |seq: u64, value: &str| Request::Write {
        client_id: 42,
        seq,
        op: Op::Put {
            key: b"k".to_vec(),
            value: value.as_bytes().to_vec(),
        },
    };
    let get = Request::Read {
        query: Query::Get { key: b"k".to_vec() },
    };
    for request in [put(1, "one"), get.clone(), put(2, "two"), get] {
        send_request(&mut stream, &request);
    }
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let answers: Vec<Response> = (0..4).map(|_| read_response(&mut reader)).collect();
    assert_eq!(
        answers,
        vec![
            Response::Outcome(Outcome::Done),
            Response::Outcome(Outcome::Value(Some(b"one".to_vec()))),
            Response::Outcome(Outcome::Done),
            Response::Outcome(Outcome::Value(Some(b"two".to_vec()))),
        ]
    );
}

/// A client that sends requests and never reads the answers (each a 1 MiB
/// value, far more than socket buffers hold) does not stall the node for
/// anybody else. (That the node then drops such a client is tested on the
/// answer writer itself, in `server::clients`.)
#[test]
fn a_client_that_never_reads_does_not_stall_the_node() {
    let c = Cluster::start(3);
    let leader = c.wait_for_leader(None);
    let mut client = c.client(Duration::from_secs(30));
    client
        .put(b"big", &vec![b'v'; kvapp_c::kv::MAX_VALUE_BYTES])
        .unwrap();
    let mut flood = std::net::TcpStream::connect(c.node(leader).client_addr()).unwrap();
    let get = Request::Read {
        query: Query::Get {
            key: b"big".to_vec(),
        },
    };
    for _ in 0..64 {
        send_request(&mut flood, &get);
    }
    for i in 0..50 {
        let key = format!("after-{i}");
        client.put(key.as_bytes(), b"x").unwrap();
        assert_eq!(client.get(key.as_bytes()).unwrap(), Some(b"x".to_vec()));
    }
    assert_eq!(
        client.get(b"big").unwrap().map(|v| v.len()),
        Some(kvapp_c::kv::MAX_VALUE_BYTES)
    );
}

/// At its connection limit a node admits a new client by closing the
/// connection idle the longest, never one in the middle of a request.
#[test]
fn at_the_connection_limit_the_longest_idle_connection_makes_room() {
    use std::io::{Read, Write};
    let c = Cluster::start_with(1, kvapp_c::server::DEFAULT_CLIENT_FRAME_TIMEOUT, 3);
    let get = |key: &str| Request::Read {
        query: Query::Get {
            key: key.as_bytes().to_vec(),
        },
    };
    let mut whole = Vec::new();
    frame::write_frame(&mut whole, &frame::encode(&get("k"))).unwrap();

    // Connection 1 sends all but the last byte of a request, then
    // connections 2 and 3 each ask something, in that order. Their answers
    // mean the node has read connection 1's bytes too, which came first:
    // connection 1 is the one heard from longest ago, but in the middle of
    // a request; connection 2 is idle.
    let mut partial = raw_connection_to_leader(&c);
    partial.write_all(&whole[..whole.len() - 1]).unwrap();
    let mut idle = raw_connection_to_leader(&c);
    let mut active = raw_connection_to_leader(&c);
    for conn in [&mut idle, &mut active] {
        send_request(conn, &get("k"));
        assert_eq!(read_response(conn), Response::Outcome(Outcome::Value(None)));
    }

    // A fourth client: the idle connection makes room for it.
    let mut client = c.client(Duration::from_secs(10));
    client.put(b"k", b"v").unwrap();
    let mut buf = [0u8; 16];
    let closed = match idle.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the idle connection is still open");

    // The connection in the middle of a request, and the one that asked,
    // still work.
    partial.write_all(&whole[whole.len() - 1..]).unwrap();
    assert_eq!(
        read_response(&mut partial),
        Response::Outcome(Outcome::Value(Some(b"v".to_vec())))
    );
    send_request(&mut active, &get("k"));
    assert_eq!(
        read_response(&mut active),
        Response::Outcome(Outcome::Value(Some(b"v".to_vec())))
    );
}

/// At the connection limit, a connection whose client was answered after
/// a long wait counts as active from that answer, not from its request: a
/// connection that asked and has been idle since is closed instead.
#[test]
fn at_the_connection_limit_a_recent_answer_counts_as_activity() {
    use std::io::Read;
    // Slow timing: the leader keeps leading while cut off for a moment.
    let c = Cluster::start_full(
        3,
        kvapp_c::server::DEFAULT_CLIENT_FRAME_TIMEOUT,
        2,
        TimingConfig::preset(TimingMode::Debug),
    );
    let leader = c.wait_for_leader(None);
    let connect = || {
        let s = std::net::TcpStream::connect(c.node(leader).client_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s
    };
    let put = |client_id: u64| Request::Write {
        client_id,
        seq: 1,
        op: Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        },
    };
    // The waiting connection asks first, while the leader is cut off, so
    // its write waits; the other connection asks after it and is answered
    // at once (a rejected write needs no quorum).
    let mut waiting = connect();
    c.network.isolate(leader);
    send_request(&mut waiting, &put(1));
    let mut other = connect();
    let empty_key = Request::Write {
        client_id: 9,
        seq: 1,
        op: Op::Put {
            key: Vec::new(),
            value: b"v".to_vec(),
        },
    };
    send_request(&mut other, &empty_key);
    assert!(matches!(
        read_response(&mut other),
        Response::Outcome(Outcome::Rejected(_))
    ));
    // Answered after the other connection's last request.
    std::thread::sleep(Duration::from_millis(20));
    c.network.heal();
    assert_eq!(
        read_response(&mut waiting),
        Response::Outcome(Outcome::Done)
    );

    // A third connection: the other one, idle the longest, makes room.
    let mut third = connect();
    send_request(&mut third, &put(3));
    assert_eq!(read_response(&mut third), Response::Outcome(Outcome::Done));
    // Closed before the third connection's request was read, if at all.
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let closed = match other.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the connection idle the longest is still open");
    send_request(&mut waiting, &put(2));
    assert_eq!(
        read_response(&mut waiting),
        Response::Outcome(Outcome::Done)
    );
}

/// A client that sends its requests and then closes its sending side still
/// gets every answer.
#[test]
fn a_client_that_half_closes_gets_its_answers() {
    let c = Cluster::start(3);
    let mut stream = raw_connection_to_leader(&c);
    send_request(
        &mut stream,
        &Request::Write {
            client_id: 7,
            seq: 1,
            op: Op::Put {
                key: b"half".to_vec(),
                value: b"closed".to_vec(),
            },
        },
    );
    send_request(
        &mut stream,
        &Request::Read {
            query: Query::Get {
                key: b"half".to_vec(),
            },
        },
    );
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reader = std::io::BufReader::new(stream);
    assert_eq!(read_response(&mut reader), Response::Outcome(Outcome::Done));
    assert_eq!(
        read_response(&mut reader),
        Response::Outcome(Outcome::Value(Some(b"closed".to_vec())))
    );
    // Then the node closes the connection.
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut rest).unwrap();
    assert!(rest.is_empty());
}

/// A connection that sends part of a request and then nothing is closed
/// after the frame timeout; one that finishes its request in time is served.
#[test]
fn a_connection_stuck_inside_a_request_is_closed() {
    use std::io::{Read, Write};
    let c = Cluster::start_with_frame_timeout(3, Duration::from_secs(2));
    let mut request = Vec::new();
    frame::write_frame(
        &mut request,
        &frame::encode(&Request::Read {
            query: Query::Get { key: b"k".to_vec() },
        }),
    )
    .unwrap();

    let mut stuck = raw_connection_to_leader(&c);
    stuck.write_all(&request[..5]).unwrap();
    let mut buf = [0u8; 64];
    match stuck.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the stuck connection was not closed: {other:?}"),
    }

    let mut slow = raw_connection_to_leader(&c);
    slow.write_all(&request[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    slow.write_all(&request[5..]).unwrap();
    let mut reader = std::io::BufReader::new(slow);
    assert_eq!(
        read_response(&mut reader),
        Response::Outcome(Outcome::Value(None))
    );
}

/// Requests still arriving may hold no more bytes than the total set on
/// the builder: past it a connection holding part of a request is closed,
/// and the others keep working.
#[test]
fn partial_requests_over_the_total_close_a_connection() {
    use std::io::{Read, Write};
    let network = MemoryNetwork::new();
    let members = vec![SocketAddr::from(([127, 0, 0, 1], 1))];
    let node = Server::builder(1, members)
        .timing(TimingConfig::preset(TimingMode::Fast))
        .client_addr("127.0.0.1:0".parse().unwrap())
        .storage(MemoryLog::new(), MemoryState::new(), MemoryKv::new())
        .transport(network.transport(1))
        .max_client_partial_bytes(1 << 20)
        .start()
        .expect("server starts");
    let addr = node.client_addr();
    let mut client = Client::new(vec![addr], Duration::from_secs(30));
    client.put(b"k", b"before").unwrap();

    let mut big = Vec::new();
    let put = Request::Write {
        client_id: 7,
        seq: 1,
        op: Op::Put {
            key: b"big".to_vec(),
            value: vec![b'v'; 600 << 10],
        },
    };
    frame::write_frame(&mut big, &frame::encode(&put)).unwrap();
    let part = big.len() - 1;
    // Two connections each send all of the request but its last byte:
    // together over the total.
    let mut conns: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(&big[..part]).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            s
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let closed = loop {
        let closed = conns.iter_mut().position(|s| match s.read(&mut [0u8; 16]) {
            Ok(n) => n == 0,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        });
        if let Some(i) = closed {
            break i;
        }
        assert!(Instant::now() < deadline, "no connection closed");
    };
    // The other one finishes its request and is served, and so is
    // everybody else.
    let mut kept = conns.swap_remove(1 - closed);
    kept.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    kept.write_all(&big[part..]).unwrap();
    assert_eq!(read_response(&mut kept), Response::Outcome(Outcome::Done));
    assert_eq!(
        client.get(b"big").unwrap().map(|v| v.len()),
        Some(600 << 10)
    );
    client.put(b"k", b"after").unwrap();
    assert_eq!(client.get(b"k").unwrap(), Some(b"after".to_vec()));
    node.shutdown();
    let _ = node.join();
}

/// A memory log whose reads can be made to fail and whose sync jobs can be
/// held until the test lets them finish.
#[derive(Clone)]
struct FaultyLog {
    inner: MemoryLog,
    fail_reads: Arc<AtomicBool>,
    read_failures: Arc<AtomicU64>,
    hold_syncs: Arc<AtomicBool>,
    syncs_held: Arc<AtomicU64>,
}

impl FaultyLog {
    fn new() -> Self {
        FaultyLog {
            inner: MemoryLog::new(),
            fail_reads: Arc::default(),
            read_failures: Arc::default(),
            hold_syncs: Arc::default(),
            syncs_held: Arc::default(),
        }
    }

    /// The injected failure of a read (of entries or of a term), if reads
    /// fail. The node keeps its newest entries in memory, so a leader's
    /// term lookups for its appends' consistency checks are the reads it
    /// is sure to make.
    fn read_fault(&self) -> kvapp_c::Result<()> {
        if self.fail_reads.load(Ordering::SeqCst) {
            self.read_failures.fetch_add(1, Ordering::SeqCst);
            return Err(Error::io(
                "reading the log",
                std::io::Error::other("injected read failure"),
            ));
        }
        Ok(())
    }
}

impl LogStorage for FaultyLog {
    fn append(&mut self, entries: &[Entry]) -> kvapp_c::Result<()> {
        self.inner.append(entries)
    }
    fn entries(&self, lo: LogIndex, hi: LogIndex) -> kvapp_c::Result<Vec<Entry>> {
        self.read_fault()?;
        self.inner.entries(lo, hi)
    }
    fn term(&self, index: LogIndex) -> kvapp_c::Result<Option<Term>> {
        self.read_fault()?;
        self.inner.term(index)
    }
    fn first_index(&self) -> LogIndex {
        self.inner.first_index()
    }
    fn last_index(&self) -> LogIndex {
        self.inner.last_index()
    }
    fn truncate_after(&mut self, index: LogIndex) -> kvapp_c::Result<()> {
        self.inner.truncate_after(index)
    }
    fn discard_through(&mut self, index: LogIndex, term: Term) -> kvapp_c::Result<()> {
        self.inner.discard_through(index, term)
    }
    fn start_sync(&mut self) -> kvapp_c::Result<SyncJob> {
        let job = self.inner.start_sync()?;
        let hold = self.hold_syncs.clone();
        let held = self.syncs_held.clone();
        Ok(SyncJob::new(move || {
            if hold.load(Ordering::SeqCst) {
                held.fetch_add(1, Ordering::SeqCst);
                while hold.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            job.run()
        }))
    }
}

/// Polls `cond` every few milliseconds until it holds or 30 s pass.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_storage_error_while_a_sync_runs_stops_the_leader() {
    let network = MemoryNetwork::new();
    let members: Vec<SocketAddr> = (0..3)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 1 + i as u16)))
        .collect();
    let logs: Vec<FaultyLog> = (0..3).map(|_| FaultyLog::new()).collect();
    let mut nodes: Vec<Option<ServerHandle>> = (1..=3u64)
        .map(|id| {
            Some(
                Server::builder(id, members.clone())
                    .timing(TimingConfig::preset(TimingMode::Fast))
                    .client_addr("127.0.0.1:0".parse().unwrap())
                    .storage(
                        logs[id as usize - 1].clone(),
                        MemoryState::new(),
                        MemoryKv::new(),
                    )
                    .transport(network.transport(id))
                    .seed(id * 31)
                    .start()
                    .expect("server starts"),
            )
        })
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().flatten().map(|h| h.client_addr()).collect();
    let mut client = Client::new(addrs.clone(), Duration::from_secs(10));
    client.put(b"before", b"1").unwrap();
    let leader = nodes
        .iter()
        .flatten()
        .find(|h| h.status().role == "leader")
        .map(|h| h.id())
        .expect("a leader after a successful put");
    let log = logs[leader as usize - 1].clone();

    // The leader's next sync stays in flight until the read failure is seen.
    log.hold_syncs.store(true, Ordering::SeqCst);
    let first = {
        let addrs = addrs.clone();
        std::thread::spawn(move || Client::new(addrs, Duration::from_secs(5)).put(b"a", b"1"))
    };
    wait_for("the leader's sync to be held", || {
        log.syncs_held.load(Ordering::SeqCst) > 0
    });
    log.fail_reads.store(true, Ordering::SeqCst);
    let second = {
        let addrs = addrs.clone();
        std::thread::spawn(move || Client::new(addrs, Duration::from_secs(5)).put(b"b", b"2"))
    };
    wait_for("the leader to meet the read failure", || {
        log.read_failures.load(Ordering::SeqCst) > 0
    });
    log.hold_syncs.store(false, Ordering::SeqCst);

    // The leader must stop with the error, not spin in its event loop.
    let handle = nodes[leader as usize - 1].take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(handle.join());
    });
    let result = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the leader's event loop did not stop within 30 s");
    let err = result.expect_err("the leader stops with the storage error");
    assert!(err.to_string().contains("injected read failure"), "{err}");
    let _ = first.join();
    let _ = second.join();
    for h in nodes.iter_mut().filter_map(Option::take) {
        h.shutdown();
        let _ = h.join();
    }
}

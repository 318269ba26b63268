//! The TCP transport over real sockets on 127.0.0.1: ordering, reconnection,
//! paused peers, hostile input on the Raft port, and shutdown.
//!
//! Every wait is on a condition with a generous deadline; nothing sleeps to
//! synchronize.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

mod common;

use common::hello_frame;
use kvapp_c::network::frame::{self, MAGIC, VERSION};
use kvapp_c::network::tcp::{PROTOCOL, TcpConfig, TcpTransport, cluster_identity};
use kvapp_c::network::{Adopt, Handover, Inbox, Transport};
use kvapp_c::raft::Message;
use kvapp_c::storage::Entry;
use kvapp_c::{Error, NodeId};

/// Generous bound for anything that should happen "soon".
const DEADLINE: Duration = Duration::from_secs(30);

type Received = Receiver<(NodeId, Message)>;

/// A small message whose term carries a sequence number.
fn msg(seq: u64) -> Message {
    Message::VoteResponse {
        term: seq,
        granted: true,
        pre_vote: false,
    }
}

/// A message carrying `size` bytes of payload, its term a sequence number.
fn big(seq: u64, size: usize) -> Message {
    Message::AppendEntries {
        term: seq,
        leader: 1,
        prev_log_index: 0,
        prev_log_term: 0,
        entries: vec![Entry {
            index: 1,
            term: 1,
            data: vec![0xab; size],
        }],
        leader_commit: 0,
        read_seq: 0,
    }
}

fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

fn channel_inbox() -> (Inbox, Received) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let inbox: Inbox = Arc::new(move |from, m| {
        let _ = tx.lock().unwrap().send((from, m));
    });
    (inbox, rx)
}

fn free_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// A config for node `id` (1-based) of the cluster `addrs`.
fn config(id: NodeId, addrs: &[SocketAddr]) -> TcpConfig {
    let peers: BTreeMap<NodeId, SocketAddr> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as NodeId + 1, *a))
        .filter(|(n, _)| *n != id)
        .collect();
    TcpConfig::new(id, cluster_identity(addrs), addrs[id as usize - 1], peers)
}

fn start(config: TcpConfig, listener: TcpListener) -> (TcpTransport, Received) {
    let mut transport = TcpTransport::with_listener(config, listener).unwrap();
    let (inbox, rx) = channel_inbox();
    transport.start(inbox).unwrap();
    (transport, rx)
}

/// Starts an `n`-node cluster with `tweak` applied to every config.
fn cluster(n: usize, tweak: impl Fn(&mut TcpConfig)) -> (Vec<TcpTransport>, Vec<Received>) {
    let listeners: Vec<TcpListener> = (0..n).map(|_| free_listener()).collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut transports = Vec::new();
    let mut inboxes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let mut cfg = config(i as NodeId + 1, &addrs);
        tweak(&mut cfg);
        let (t, rx) = start(cfg, listener);
        transports.push(t);
        inboxes.push(rx);
    }
    (transports, inboxes)
}

/// Receives until `pred` accepts a message or the deadline passes.
fn recv_until(rx: &Received, mut pred: impl FnMut(NodeId, &Message) -> bool) -> bool {
    let deadline = Instant::now() + DEADLINE;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((from, m)) if pred(from, &m) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// Keeps sending fresh messages from `sender` to `to` until `rx` gets one
/// from `from` (Raft-style retransmission while a link comes up). Each
/// attempt waits on the channel for a short while, which paces the sends.
fn send_until_received(
    sender: &mut TcpTransport,
    to: NodeId,
    rx: &Received,
    from: NodeId,
    first_seq: u64,
) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    let mut seq = first_seq;
    while Instant::now() < deadline {
        sender.send(to, msg(seq));
        seq += 1;
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok((f, m)) if f == from => return m.term(),
            _ => {}
        }
    }
    panic!("no message from node {from} reached its destination within {DEADLINE:?}");
}

/// Polls `cond` until it holds or the deadline passes.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::yield_now();
    }
}

/// Runs `f` on a thread and fails the test if it does not finish in time.
fn finishes_in_time<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{what} did not finish within {DEADLINE:?}"))
}

fn frame_bytes(body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    frame::write_frame(&mut buf, body).unwrap();
    buf
}

/// Whether the other side closed `stream` (end of stream or reset) before
/// the deadline. Anything it sent first is ignored.
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Whether `stream` is still open: nothing arrives and no close is seen
/// within a short probe. Only used to assert a connection is kept.
fn still_open_briefly(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 1];
    matches!(stream.read(&mut buf), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}

#[test]
fn three_nodes_deliver_in_per_sender_order() {
    init_log();
    const N: u64 = 2000;
    // Room for every message, so none can be dropped.
    let (mut nodes, inboxes) = cluster(3, |c| c.queue_capacity = N as usize);
    for seq in 0..N {
        for (i, node) in nodes.iter_mut().enumerate() {
            let me = i as NodeId + 1;
            for to in 1..=3 {
                if to != me {
                    node.send(to, msg(seq));
                }
            }
        }
    }
    for (i, rx) in inboxes.iter().enumerate() {
        let me = i as NodeId + 1;
        let mut next: BTreeMap<NodeId, u64> =
            (1..=3).filter(|&n| n != me).map(|n| (n, 0)).collect();
        let complete = recv_until(rx, |from, m| {
            let expected = next.get_mut(&from).expect("sender is a peer");
            assert_eq!(
                m.term(),
                *expected,
                "node {me}: message from {from} out of order"
            );
            *expected += 1;
            next.values().all(|&n| n == N)
        });
        assert!(complete, "node {me} received only {next:?} of {N} per peer");
    }
    for node in &mut nodes {
        let stats = node.stats();
        assert_eq!(stats.sent, 2 * N, "{stats:?}");
        assert_eq!(stats.received, 2 * N, "{stats:?}");
        assert_eq!(stats.dropped_queue_full + stats.dropped_unreachable, 0);
        node.shutdown();
    }
}

#[test]
fn large_messages_arrive_intact() {
    init_log();
    let (mut nodes, inboxes) = cluster(2, |_| {});
    let sizes = [0usize, 1, 100, 70_000, 3 << 20];
    for (seq, &size) in sizes.iter().enumerate() {
        nodes[0].send(2, big(seq as u64, size));
    }
    let mut seen = 0;
    assert!(recv_until(&inboxes[1], |from, m| {
        assert_eq!(from, 1);
        assert_eq!(*m, big(seen as u64, sizes[seen]));
        seen += 1;
        seen == sizes.len()
    }));
}

#[test]
fn direct_writes_and_their_tails_keep_order_when_the_peer_reads_slowly() {
    init_log();
    let listeners: Vec<TcpListener> = (0..2).map(|_| free_listener()).collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut listeners = listeners.into_iter();
    // A long idle probe keeps the link open to direct writes however slowly
    // this machine runs the test.
    let mut sender_config = config(1, &addrs);
    sender_config.idle_probe = Duration::from_secs(600);
    // The writer may block on the stalled receiver for as long as this
    // thread takes to queue the burst; a slow machine must not turn that
    // into a dropped connection.
    sender_config.write_timeout = Duration::from_secs(120);
    let (mut sender, _) = start(sender_config, listeners.next().unwrap());
    // The receiver's inbox stalls while `gate` is closed, so its socket
    // buffers fill and the sender's direct writes go out only in part.
    let gate = Arc::new(AtomicBool::new(true));
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let open = gate.clone();
    let inbox: Inbox = Arc::new(move |from, m| {
        while !open.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
        let _ = tx.lock().unwrap().send((from, m));
    });
    let mut receiver = TcpTransport::with_listener(config(2, &addrs), listeners.next().unwrap())
        .expect("receiver binds");
    receiver.start(inbox).unwrap();
    let first = send_until_received(&mut sender, 2, &rx, 1, 0);
    // Drain the rest of the warm-up.
    while rx.recv_timeout(Duration::from_millis(100)).is_ok() {}

    gate.store(false, Ordering::SeqCst);
    let base = 1_000_000u64;
    // About 25 MB: more than loopback socket buffers hold.
    let sizes: Vec<usize> = (0..100).map(|i| 100_000 + (i * 7919) % 300_000).collect();
    for (i, &size) in sizes.iter().enumerate() {
        sender.send(2, big(base + i as u64, size));
    }
    gate.store(true, Ordering::SeqCst);
    let mut next = 0;
    assert!(
        recv_until(&rx, |from, m| {
            assert_eq!(from, 1);
            if m.term() < base {
                return false; // a late warm-up message
            }
            assert_eq!(*m, big(base + next as u64, sizes[next]), "message {next}");
            next += 1;
            next == sizes.len()
        }),
        "only {next} of {} messages arrived",
        sizes.len()
    );
    let stats = sender.stats();
    assert!(stats.sent_direct > 0, "no direct write: {stats:?}");
    assert!(
        stats.direct_tails > 0,
        "no direct write was partial: {stats:?}"
    );
    assert_eq!(
        stats.dropped_queue_full + stats.dropped_unreachable,
        0,
        "{stats:?}"
    );
    assert!(first < base);
    sender.shutdown();
    receiver.shutdown();
}

#[test]
fn peer_that_comes_up_later_and_restarts_gets_messages() {
    init_log();
    let l1 = free_listener();
    // Reserve an address for node 2, then free it: node 2 is down.
    let addr2 = free_listener().local_addr().unwrap();
    let addrs = [l1.local_addr().unwrap(), addr2];
    let (mut n1, _rx1) = start(config(1, &addrs), l1);

    // While node 2 is down, sends return at once and are dropped.
    for seq in 0..100 {
        n1.send(2, msg(seq));
    }
    eventually("a failed connection attempt", || {
        n1.send(2, msg(0));
        n1.stats().connect_failures > 0 && n1.stats().dropped_unreachable > 0
    });

    // Node 2 comes up: node 1 reconnects and delivers, in order from then on.
    let mut n2 = TcpTransport::new(config(2, &addrs)).unwrap();
    let (inbox, rx2) = channel_inbox();
    n2.start(inbox).unwrap();
    let first = send_until_received(&mut n1, 2, &rx2, 1, 1000);
    assert!(first >= 1000);
    for seq in 10_000..10_100 {
        n1.send(2, msg(seq));
    }
    let mut last = first;
    assert!(recv_until(&rx2, |from, m| {
        assert_eq!(from, 1);
        assert!(m.term() > last, "reordered: {} after {last}", m.term());
        last = m.term();
        last == 10_099
    }));

    // Node 2 restarts on the same address: node 1 notices and reconnects.
    n2.shutdown();
    drop(n2);
    let mut n2 = TcpTransport::new(config(2, &addrs)).unwrap();
    let (inbox, rx2) = channel_inbox();
    n2.start(inbox).unwrap();
    send_until_received(&mut n1, 2, &rx2, 1, 20_000);
    assert!(n1.stats().connects >= 2, "{:?}", n1.stats());
}

/// A peer that accepts connections and never reads from them, like a node
/// stopped with SIGSTOP.
struct PausedPeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PausedPeer {
    fn new(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    held.push(conn);
                }
            }
        });
        PausedPeer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PausedPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn paused_peer_blocks_neither_send_nor_other_peers_nor_shutdown() {
    init_log();
    let listeners = [free_listener(), free_listener(), free_listener()];
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let [l1, l2, l3] = listeners;
    let tweak = |c: &mut TcpConfig| {
        // Room for all 200 messages to node 3 even if its writer were slow,
        // but not for the 2000 to node 2.
        c.queue_capacity = 256;
        c.write_timeout = Duration::from_millis(500);
    };
    let mut c1 = config(1, &addrs);
    tweak(&mut c1);
    let (n1, _rx1) = start(c1, l1);
    let paused = PausedPeer::new(l2);
    let (_n3, rx3) = start(config(3, &addrs), l3);

    // 2000 messages of 64 KiB (125 MiB) to the paused peer, interleaved with
    // small ones to node 3. On a thread, so a blocking send fails the test
    // instead of hanging it.
    let (n1, sent_to_3) = finishes_in_time("sending to a paused peer", move || {
        let mut n1 = n1;
        let mut sent_to_3 = 0;
        for seq in 0..2000 {
            n1.send(2, big(seq, 64 << 10));
            if seq % 10 == 0 {
                n1.send(3, msg(sent_to_3));
                sent_to_3 += 1;
            }
        }
        (n1, sent_to_3)
    });
    let stats = n1.stats();
    assert!(
        stats.dropped_queue_full + stats.dropped_unreachable > 0 && stats.sent < 2000 + sent_to_3,
        "125 MiB cannot all reach a peer that never reads: {stats:?}"
    );

    // Node 3 got everything, in order, while node 2 stalled.
    let mut next = 0;
    assert!(recv_until(&rx3, |from, m| {
        assert_eq!(from, 1);
        assert_eq!(m.term(), next);
        next += 1;
        next == sent_to_3
    }));

    // And keeps receiving.
    let mut n1 = n1;
    n1.send(3, msg(5000));
    assert!(recv_until(&rx3, |_, m| m.term() == 5000));

    // A write that makes no progress times out: the writer drops the
    // connection and dials again (one connection to node 3, two to node 2).
    eventually("the writer to the paused peer reconnects", || {
        n1.send(2, msg(0));
        n1.stats().connects >= 3
    });
    for seq in 0..1000 {
        n1.send(2, big(seq, 64 << 10));
    }

    // The writer to node 2 is blocked on a full socket again; shutdown
    // still returns.
    finishes_in_time("shutdown with a paused peer", move || n1.shutdown());
    drop(paused);
}

/// Connects to `addr`, writes `bytes` (the peer may close before all are
/// written) and reports whether the peer then closed the connection.
fn rejected(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.write_all(bytes);
    closed_by_peer(&mut s)
}

#[test]
fn hostile_connections_are_closed_and_harm_nothing_else() {
    init_log();
    let max_frame = 1 << 20;
    let (mut nodes, inboxes) = cluster(2, |c| {
        c.max_frame = max_frame;
        c.handshake_timeout = Duration::from_millis(300);
    });
    let addr1 = nodes[0].local_addr();
    let cluster_id = cluster_identity(&[addr1, nodes[1].local_addr()]);
    let good_hello = hello_frame(PROTOCOL, &cluster_id, 2);

    // The hand-built handshake is accepted: the tests below differ from a
    // valid connection only in what they break.
    {
        let mut s = TcpStream::connect(addr1).unwrap();
        s.write_all(&good_hello).unwrap();
        s.write_all(&frame_bytes(&frame::encode(&msg(777))))
            .unwrap();
        assert!(recv_until(&inboxes[0], |from, m| from == 2 && m.term() == 777));
    }

    let mut header_oversized = MAGIC.to_vec();
    header_oversized.push(VERSION);
    header_oversized.extend_from_slice(&(max_frame as u32 + 1).to_le_bytes());
    let mut bad_version = MAGIC.to_vec();
    bad_version.extend_from_slice(&[99, 0, 0, 0, 0]);
    let then = |frame: Vec<u8>| [good_hello.clone(), frame].concat();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage",
            b"\x00\x13\x37 definitely not a frame \xff\xfe".to_vec(),
        ),
        (
            "http",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("bad version", bad_version),
        ("oversized handshake", header_oversized.clone()),
        ("handshake garbage", frame_bytes(&[0xff; 40])),
        (
            "wrong cluster",
            hello_frame(PROTOCOL, "10.0.0.1:1,10.0.0.2:1", 2),
        ),
        (
            "wrong protocol",
            hello_frame("someone-else/1", &cluster_id, 2),
        ),
        ("unknown node", hello_frame(PROTOCOL, &cluster_id, 9)),
        (
            "node claims to be the receiver",
            hello_frame(PROTOCOL, &cluster_id, 1),
        ),
        ("malformed message", then(frame_bytes(&[0xff; 40]))),
        ("oversized message", then(header_oversized)),
        ("truncated handshake", b"KVA".to_vec()),
        ("silent", Vec::new()),
    ];
    let mut next_seq = 0;
    for (i, (name, bytes)) in cases.iter().enumerate() {
        assert!(rejected(addr1, bytes), "case {name}: connection not closed");
        eventually(&format!("case {name} counted"), || {
            nodes[0].stats().rejected_connections == i as u64 + 1
        });
        // The real peer still gets through.
        let seq = send_until_received(&mut nodes[1], 1, &inboxes[0], 2, next_seq);
        next_seq = seq + 1;
    }
    assert!(
        inboxes[0].try_iter().all(|(from, _)| from == 2),
        "only node 2's messages were delivered"
    );
    for node in &mut nodes {
        node.shutdown();
    }
}

#[test]
fn inbound_connections_are_limited() {
    init_log();
    let (mut nodes, inboxes) = cluster(2, |c| {
        c.max_inbound = 4;
        c.handshake_timeout = DEADLINE * 2;
    });
    let addr1 = nodes[0].local_addr();
    // Node 2's connection is the first of four.
    send_until_received(&mut nodes[1], 1, &inboxes[0], 2, 0);
    let mut idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr1).unwrap()).collect();
    // A fifth connection takes the place of the oldest silent one, not of
    // node 2's.
    let mut fifth = TcpStream::connect(addr1).unwrap();
    assert!(closed_by_peer(&mut idle[0]), "no room made for a fifth");
    assert!(still_open_briefly(&mut fifth));
    assert!(still_open_briefly(&mut idle[1]));
    nodes[1].send(1, msg(1 << 40));
    assert!(recv_until(&inboxes[0], |_, m| m.term() == 1 << 40));
    assert_eq!(nodes[0].stats().rejected_connections, 1);
    for node in &mut nodes {
        node.shutdown();
    }

    // When every slot holds a member, a new connection is the one closed.
    let (mut nodes, inboxes) = cluster(2, |c| {
        c.max_inbound = 1;
        c.handshake_timeout = DEADLINE * 2;
    });
    send_until_received(&mut nodes[1], 1, &inboxes[0], 2, 0);
    let mut extra = TcpStream::connect(nodes[0].local_addr()).unwrap();
    assert!(
        closed_by_peer(&mut extra),
        "a connection over the limit was served"
    );
    nodes[1].send(1, msg(1 << 41));
    assert!(recv_until(&inboxes[0], |_, m| m.term() == 1 << 41));
    assert_eq!(nodes[0].stats().rejected_connections, 1);
}

/// Connections that never send a handshake, more of them than the limit
/// and held open for longer than the test waits, do not lock a member out:
/// its connection takes the place of the oldest of them.
#[test]
fn a_member_gets_in_despite_a_flood_of_silent_connections() {
    init_log();
    let (mut nodes, inboxes) = cluster(2, |c| {
        c.max_inbound = 4;
        c.handshake_timeout = DEADLINE * 2;
    });
    let addr1 = nodes[0].local_addr();
    // Twelve silent connections, held: the listener has dealt with all
    // eight over the limit (closed old ones or, while those were still
    // closing, new ones) before node 2 dials.
    let mut flood: Vec<TcpStream> = (0..12)
        .map(|_| TcpStream::connect(addr1).unwrap())
        .collect();
    eventually("the flood to be over the limit", || {
        nodes[0].stats().rejected_connections >= 8
    });
    send_until_received(&mut nodes[1], 1, &inboxes[0], 2, 0);
    // More silent connections do not close the member's: it still delivers,
    // without dialing again.
    let connects = nodes[1].stats().connects;
    let rejected = nodes[0].stats().rejected_connections;
    flood.extend((0..8).map(|_| TcpStream::connect(addr1).unwrap()));
    eventually("the second flood to be over the limit", || {
        nodes[0].stats().rejected_connections >= rejected + 8
    });
    nodes[1].send(1, msg(1 << 40));
    assert!(recv_until(&inboxes[0], |_, m| m.term() == 1 << 40));
    assert_eq!(
        nodes[1].stats().connects,
        connects,
        "node 2 had to dial again"
    );
    for node in &mut nodes {
        node.shutdown();
    }
}

#[test]
fn older_connection_from_the_same_node_is_retired() {
    init_log();
    let (mut nodes, inboxes) = cluster(2, |_| {});
    let addr1 = nodes[0].local_addr();
    let cluster_id = cluster_identity(&[addr1, nodes[1].local_addr()]);
    // A half-open connection left behind by "node 2".
    let mut stale = TcpStream::connect(addr1).unwrap();
    stale
        .write_all(&hello_frame(PROTOCOL, &cluster_id, 2))
        .unwrap();
    stale
        .write_all(&frame_bytes(&frame::encode(&msg(1))))
        .unwrap();
    assert!(recv_until(&inboxes[0], |from, m| from == 2 && m.term() == 1));
    // The real node 2 dials: the stale connection is closed once idle.
    send_until_received(&mut nodes[1], 1, &inboxes[0], 2, 100);
    assert!(closed_by_peer(&mut stale), "stale connection kept open");
    nodes[1].send(1, msg(5));
    assert!(recv_until(&inboxes[0], |_, m| m.term() == 5));
}

#[test]
fn port_conflict_is_reported_with_the_address() {
    init_log();
    let taken = free_listener();
    let addr = taken.local_addr().unwrap();
    let err = TcpTransport::new(config(1, &[addr]))
        .err()
        .expect("bind must fail");
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("binding Raft port {addr}")),
        "{text}"
    );
}

#[test]
fn invalid_configurations_are_rejected() {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let base = TcpConfig::new(1, "c", addr, BTreeMap::from([(2, addr)]));
    let broken: Vec<(&str, TcpConfig)> = vec![
        (
            "self as peer",
            TcpConfig {
                peers: BTreeMap::from([(1, addr)]),
                ..base.clone()
            },
        ),
        (
            "no queue",
            TcpConfig {
                queue_capacity: 0,
                ..base.clone()
            },
        ),
        (
            "no frame",
            TcpConfig {
                max_frame: 0,
                ..base.clone()
            },
        ),
        (
            "zero timeout",
            TcpConfig {
                write_timeout: Duration::ZERO,
                ..base.clone()
            },
        ),
        (
            "no inbound",
            TcpConfig {
                max_inbound: 0,
                ..base.clone()
            },
        ),
        (
            "inverted backoff",
            TcpConfig {
                backoff_max: Duration::from_millis(1),
                ..base.clone()
            },
        ),
    ];
    for (name, cfg) in broken {
        let result = TcpTransport::new(cfg);
        assert!(
            matches!(result, Err(Error::Config(_))),
            "{name}: {:?}",
            result.err()
        );
    }
    let ok = TcpTransport::new(base);
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn lifecycle_start_twice_send_before_start_and_repeated_shutdown() {
    init_log();
    let l = free_listener();
    let addrs = [
        l.local_addr().unwrap(),
        free_listener().local_addr().unwrap(),
    ];
    let mut t = TcpTransport::with_listener(config(1, &addrs), l).unwrap();
    t.send(2, msg(1));
    assert_eq!(t.stats().dropped_unreachable, 1);
    let (inbox, _rx) = channel_inbox();
    t.start(inbox.clone()).unwrap();
    assert!(t.start(inbox.clone()).is_err());
    t.send(7, msg(1));
    assert_eq!(t.stats().dropped_unreachable, 2);
    t.shutdown();
    t.shutdown();
    assert!(matches!(t.start(inbox), Err(Error::Shutdown)));
    // The port is free again.
    TcpListener::bind(addrs[0]).expect("port released by shutdown");
}

/// With an [`Adopt`] the transport hands a connection over once its
/// handshake named a member: the stream and the bytes it had read past the
/// handshake carry the peer's messages in order, and none reaches the
/// inbox. A bad handshake is still refused by the transport.
#[test]
fn handshaken_connections_are_handed_to_the_adopter() {
    init_log();
    let listeners: Vec<TcpListener> = (0..2).map(|_| free_listener()).collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let cluster_id = cluster_identity(&addrs);
    let cfg = config(1, &addrs);
    let max = cfg.max_frame;
    let listener = listeners.into_iter().next().unwrap();
    let mut node = TcpTransport::with_listener(cfg, listener).unwrap();
    let (inbox, rx) = channel_inbox();
    let (adopt_tx, adopted) = mpsc::channel();
    let adopt_tx = Mutex::new(adopt_tx);
    let adopt: Adopt = Arc::new(move |h: Handover| {
        let _ = adopt_tx
            .lock()
            .unwrap()
            .send((h.node, h.stream, h.leftover, h.max_frame));
    });
    node.start_adopting(inbox, adopt).unwrap();

    // A stranger's handshake is refused, not handed over.
    let mut stranger = TcpStream::connect(addrs[0]).unwrap();
    stranger
        .write_all(&hello_frame(PROTOCOL, &cluster_id, 9))
        .unwrap();
    assert!(closed_by_peer(&mut stranger));
    assert!(adopted.try_recv().is_err(), "a stranger was handed over");

    // The handshake and two messages in one write, a third one later.
    let mut peer = TcpStream::connect(addrs[0]).unwrap();
    let mut bytes = hello_frame(PROTOCOL, &cluster_id, 2);
    bytes.extend(frame_bytes(&frame::encode(&msg(1))));
    bytes.extend(frame_bytes(&frame::encode(&msg(2))));
    peer.write_all(&bytes).unwrap();
    let (from, mut stream, mut buf, max_frame) = adopted.recv_timeout(DEADLINE).unwrap();
    assert_eq!((from, max_frame), (2, max));
    peer.write_all(&frame_bytes(&frame::encode(&msg(3))))
        .unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        if let Some(header) = buf.first_chunk::<{ frame::HEADER_LEN }>() {
            let end = frame::HEADER_LEN + frame::body_len(header, max).unwrap();
            if buf.len() >= end {
                let m: Message = frame::decode(&buf[frame::HEADER_LEN..end]).unwrap();
                got.push(m.term());
                buf.drain(..end);
                continue;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the adopted stream ended early");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(got, vec![1, 2, 3]);
    assert!(rx.try_recv().is_err(), "a message reached the inbox");
    assert_eq!(node.stats().received, 0);
    node.shutdown();
}

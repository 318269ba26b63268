//! The in-process network: ordered delivery, partitions, restarts.

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;

use kvapp_c::NodeId;
use kvapp_c::network::memory::{MemoryNetwork, MemoryStats, MemoryTransport};
use kvapp_c::network::{Inbox, Transport};
use kvapp_c::raft::Message;

type Received = Receiver<(NodeId, Message)>;

fn msg(seq: u64) -> Message {
    Message::VoteResponse {
        term: seq,
        granted: false,
        pre_vote: true,
    }
}

fn channel_inbox() -> (Inbox, Received) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let inbox: Inbox = Arc::new(move |from, m| {
        let _ = tx.lock().unwrap().send((from, m));
    });
    (inbox, rx)
}

fn started(net: &MemoryNetwork, id: NodeId) -> (MemoryTransport, Received) {
    let mut t = net.transport(id);
    let (inbox, rx) = channel_inbox();
    t.start(inbox).unwrap();
    (t, rx)
}

/// Terms of everything received so far (delivery is synchronous, so
/// "so far" is everything sent before).
fn drain(rx: &Received) -> Vec<(NodeId, u64)> {
    rx.try_iter().map(|(from, m)| (from, m.term())).collect()
}

#[test]
fn delivers_synchronously_in_order_per_sender() {
    let net = MemoryNetwork::new();
    let (mut a, _ra) = started(&net, 1);
    let (mut b, _rb) = started(&net, 2);
    let (_c, rc) = started(&net, 3);
    for seq in 0..100 {
        a.send(3, msg(seq));
        b.send(3, msg(1000 + seq));
    }
    let got = drain(&rc);
    assert_eq!(got.len(), 200);
    let from_a: Vec<u64> = got
        .iter()
        .filter(|(f, _)| *f == 1)
        .map(|(_, t)| *t)
        .collect();
    let from_b: Vec<u64> = got
        .iter()
        .filter(|(f, _)| *f == 2)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(from_a, (0..100).collect::<Vec<_>>());
    assert_eq!(from_b, (1000..1100).collect::<Vec<_>>());
    assert_eq!(
        net.stats(),
        MemoryStats {
            delivered: 200,
            dropped: 0
        }
    );
}

#[test]
fn order_holds_with_senders_on_many_threads() {
    let net = MemoryNetwork::new();
    let (_sink, rx) = started(&net, 9);
    let senders: Vec<_> = (1..=4)
        .map(|id| {
            let mut t = net.transport(id);
            t.start(Arc::new(|_, _| {})).unwrap();
            thread::spawn(move || {
                for seq in 0..500 {
                    t.send(9, msg(seq));
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let got = drain(&rx);
    assert_eq!(got.len(), 2000);
    for id in 1..=4 {
        let seqs: Vec<u64> = got
            .iter()
            .filter(|(f, _)| *f == id)
            .map(|(_, t)| *t)
            .collect();
        assert_eq!(seqs, (0..500).collect::<Vec<_>>(), "sender {id}");
    }
}

#[test]
fn partitions_drop_messages_until_healed() {
    let net = MemoryNetwork::new();
    let (mut a, ra) = started(&net, 1);
    let (mut b, rb) = started(&net, 2);
    let (mut c, rc) = started(&net, 3);

    net.disconnect(1, 2);
    assert!(!net.link_up(1, 2) && !net.link_up(2, 1) && net.link_up(1, 3));
    a.send(2, msg(1));
    b.send(1, msg(2));
    a.send(3, msg(3));
    assert!(drain(&rb).is_empty());
    assert!(drain(&ra).is_empty());
    assert_eq!(drain(&rc), vec![(1, 3)]);

    net.reconnect(1, 2);
    a.send(2, msg(4));
    assert_eq!(drain(&rb), vec![(1, 4)]);

    net.disconnect_one_way(3, 1);
    c.send(1, msg(5));
    a.send(3, msg(6));
    assert!(drain(&ra).is_empty());
    assert_eq!(drain(&rc), vec![(1, 6)]);

    net.isolate(2);
    a.send(2, msg(7));
    b.send(3, msg(8));
    c.send(2, msg(9));
    a.send(3, msg(10));
    assert!(drain(&rb).is_empty());
    assert_eq!(drain(&rc), vec![(1, 10)]);

    net.heal();
    a.send(2, msg(11));
    b.send(3, msg(12));
    c.send(1, msg(13));
    assert_eq!(drain(&rb), vec![(1, 11)]);
    assert_eq!(drain(&rc), vec![(2, 12)]);
    assert_eq!(drain(&ra), vec![(3, 13)]);
    assert_eq!(
        net.stats(),
        MemoryStats {
            delivered: 7,
            dropped: 6
        }
    );
}

#[test]
fn stopped_or_unknown_receivers_get_nothing_and_restart_works() {
    let net = MemoryNetwork::new();
    let (mut a, _ra) = started(&net, 1);
    a.send(2, msg(1)); // nobody is node 2 yet
    let (mut b, rb) = started(&net, 2);
    b.shutdown();
    a.send(2, msg(2)); // node 2 is down
    assert!(drain(&rb).is_empty());

    // A second transport for a running node is refused; after shutdown the
    // node can come back with a fresh inbox.
    let (_b2, rb2) = started(&net, 2);
    let mut dup = net.transport(2);
    assert!(dup.start(channel_inbox().0).is_err());
    a.send(2, msg(3));
    assert_eq!(drain(&rb2), vec![(1, 3)]);

    // A transport that is not running sends nothing.
    let mut idle = net.transport(4);
    idle.send(2, msg(4));
    assert!(drain(&rb2).is_empty());

    // Dropping a transport detaches it, like shutdown.
    drop(_b2);
    a.send(2, msg(5));
    assert!(drain(&rb2).is_empty());
    assert_eq!(net.stats().delivered, 1);
    assert_eq!(net.stats().dropped, 4);
}

#[test]
fn inbox_may_send_from_within_delivery() {
    // An echo node answers from inside its inbox; nothing deadlocks.
    let net = MemoryNetwork::new();
    let (mut a, ra) = started(&net, 1);
    let echo = Arc::new(Mutex::new(net.transport(2)));
    let responder = Arc::clone(&echo);
    echo.lock()
        .unwrap()
        .start(Arc::new(move |from, m| {
            // Delivery happens on the sender's thread while node 2's own
            // transport is not otherwise in use, so this lock is free.
            if let Ok(mut t) = responder.try_lock() {
                t.send(
                    from,
                    Message::VoteResponse {
                        term: m.term() + 1,
                        granted: true,
                        pre_vote: false,
                    },
                );
            }
        }))
        .unwrap();
    a.send(2, msg(41));
    assert_eq!(drain(&ra), vec![(2, 42)]);
}

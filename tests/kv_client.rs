//! The blocking client against fake nodes: real TCP listeners on loopback,
//! run by test threads that speak the frame protocol with scripted answers.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvapp_c::Error;
use kvapp_c::kv::protocol::{NodeStatus, Op, Outcome, Query, Request, Response};
use kvapp_c::kv::{CasOutcome, Client, MAX_KEY_BYTES, MAX_VALUE_BYTES, client_addrs};
use kvapp_c::network::frame;

/// Long enough never to run out on a loaded machine when an answer comes.
const GENEROUS: Duration = Duration::from_secs(20);
/// For tests that must run out of time; only the classification is checked.
const SHORT: Duration = Duration::from_millis(1500);

/// What a fake node does with one request.
enum Action {
    Reply(Response),
    /// Close the connection without answering.
    Close,
    /// Keep the connection open and never answer.
    Hang,
    /// Answer with bytes that are not a frame, then close.
    Garbage,
}

type Handler = dyn Fn(&Request, usize) -> Action + Send + Sync;

/// A fake node: records every request it receives and the connections it
/// accepts, and answers as its handler says. The handler gets the request and
/// how many requests this node received before it.
struct FakeNode {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    accepted: Arc<AtomicUsize>,
}

impl FakeNode {
    fn start(handler: impl Fn(&Request, usize) -> Action + Send + Sync + 'static) -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let requests = requests.clone();
            let accepted = accepted.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let requests = requests.clone();
                    let handler = handler.clone();
                    std::thread::spawn(move || serve(stream, &requests, &*handler));
                }
            });
        }
        FakeNode {
            addr,
            requests,
            accepted,
        }
    }

    /// A node that answers every request the same way.
    fn always(response: Response) -> FakeNode {
        FakeNode::start(move |_, _| Action::Reply(response.clone()))
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn serve(mut stream: TcpStream, requests: &Mutex<Vec<Request>>, handler: &Handler) {
    while let Ok(Some(body)) = frame::read_frame(&mut stream, frame::MAX_FRAME) {
        let request: Request = frame::decode(&body).expect("the client sent a valid request");
        let n = {
            let mut requests = requests.lock().unwrap();
            requests.push(request.clone());
            requests.len() - 1
        };
        match handler(&request, n) {
            Action::Reply(response) => {
                let mut buf = Vec::new();
                frame::write_frame(&mut buf, &frame::encode(&response)).unwrap();
                if stream.write_all(&buf).is_err() {
                    return;
                }
            }
            Action::Close => return,
            Action::Hang => {}
            Action::Garbage => {
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
                return;
            }
        }
    }
}

/// An address nothing listens on: a listener's port, closed again.
fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn client(nodes: &[&FakeNode], timeout: Duration) -> Client {
    Client::new(nodes.iter().map(|n| n.addr).collect(), timeout)
}

fn done() -> Response {
    Response::Outcome(Outcome::Done)
}

fn not_leader(leader: Option<u64>) -> Response {
    Response::NotLeader { leader }
}

/// The `(client_id, seq)` of every write in `requests`.
fn write_ids(requests: &[Request]) -> Vec<(u64, u64)> {
    requests
        .iter()
        .filter_map(|r| match r {
            Request::Write { client_id, seq, .. } => Some((*client_id, *seq)),
            _ => None,
        })
        .collect()
}

#[test]
fn follows_redirect_to_the_named_leader_and_remembers_it() {
    let n1 = FakeNode::always(not_leader(Some(2)));
    let n2 = FakeNode::start(|req, _| match req {
        Request::Write { .. } => Action::Reply(done()),
        _ => Action::Reply(Response::Outcome(Outcome::Value(Some(b"v".to_vec())))),
    });
    let n3 = FakeNode::always(not_leader(None));
    let mut c = client(&[&n1, &n2, &n3], GENEROUS);
    assert_eq!(c.leader_hint(), Some(1));

    c.put(b"k", b"v").unwrap();
    assert_eq!(n1.requests().len(), 1);
    assert_eq!(n2.requests().len(), 1);
    assert!(n3.requests().is_empty());
    assert_eq!(c.leader_hint(), Some(2));
    let expected = Request::Write {
        client_id: c.client_id(),
        seq: 1,
        op: Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        },
    };
    assert_eq!(n2.requests()[0], expected);

    // The next requests go straight to node 2, over the same connection.
    assert_eq!(c.get(b"k").unwrap(), Some(b"v".to_vec()));
    c.delete(b"k").unwrap();
    assert_eq!(n1.requests().len(), 1);
    assert_eq!(n2.requests().len(), 3);
    assert_eq!(n2.accepted(), 1);
    assert_eq!(
        n2.requests()[1],
        Request::Read {
            query: Query::Get { key: b"k".to_vec() }
        }
    );
}

#[test]
fn without_a_hint_tries_the_nodes_in_turn() {
    let n1 = FakeNode::always(not_leader(None));
    // A hint naming the node itself or no node of the cluster is ignored.
    let n2 = FakeNode::always(not_leader(Some(2)));
    let n3 = FakeNode::always(not_leader(Some(9)));
    let n4 = FakeNode::always(done());
    let mut c = client(&[&n1, &n2, &n3, &n4], GENEROUS);
    c.put(b"k", b"v").unwrap();
    for n in [&n1, &n2, &n3, &n4] {
        assert_eq!(n.requests().len(), 1);
    }
    assert_eq!(c.leader_hint(), Some(4));
}

#[test]
fn dropped_connection_retries_the_same_seq() {
    // Node 1 drops the connection on the first request and succeeds later;
    // node 2 sends the client back to node 1.
    let n1 = FakeNode::start(|_, n| {
        if n == 0 {
            Action::Close
        } else {
            Action::Reply(done())
        }
    });
    let n2 = FakeNode::always(not_leader(Some(1)));
    let mut c = client(&[&n1, &n2], GENEROUS);
    c.put(b"k", b"v").unwrap();
    let id = c.client_id();
    assert_eq!(write_ids(&n1.requests()), vec![(id, 1), (id, 1)]);
    assert_eq!(write_ids(&n2.requests()), vec![(id, 1)]);
    // Every copy carries the same operation.
    let reqs = n1.requests();
    assert_eq!(reqs[0], reqs[1]);
    assert_eq!(n1.accepted(), 2);

    // The next write is a new request with the next sequence number.
    c.put(b"k", b"w").unwrap();
    assert_eq!(write_ids(&n1.requests()), vec![(id, 1), (id, 1), (id, 2)]);
}

#[test]
fn unknown_answer_is_retried_with_the_same_seq() {
    let n1 = FakeNode::start(|_, n| {
        if n == 0 {
            Action::Reply(Response::Unknown("leadership lost".into()))
        } else {
            Action::Reply(Response::Outcome(Outcome::Cas {
                swapped: true,
                current: None,
            }))
        }
    });
    let mut c = client(&[&n1], GENEROUS);
    let outcome = c.cas(b"k", None, b"new").unwrap();
    assert_eq!(
        outcome,
        CasOutcome {
            swapped: true,
            current: None
        }
    );
    let id = c.client_id();
    assert_eq!(write_ids(&n1.requests()), vec![(id, 1), (id, 1)]);
    assert_eq!(
        n1.requests()[0],
        Request::Write {
            client_id: id,
            seq: 1,
            op: Op::Cas {
                key: b"k".to_vec(),
                expected: None,
                new: b"new".to_vec()
            }
        }
    );
}

#[test]
fn failed_answer_is_retried_elsewhere() {
    let n1 = FakeNode::always(Response::Failed("shutting down".into()));
    let n2 = FakeNode::always(Response::Outcome(Outcome::Keys(vec![
        b"a".to_vec(),
        b"b".to_vec(),
    ])));
    let mut c = client(&[&n1, &n2], GENEROUS);
    assert_eq!(c.list(b"").unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(n1.requests().len(), 1);
    assert_eq!(c.leader_hint(), Some(2));
}

#[test]
fn garbage_answer_drops_the_connection_and_retries() {
    let n1 = FakeNode::start(|_, n| {
        if n == 0 {
            Action::Garbage
        } else {
            Action::Reply(Response::Outcome(Outcome::Value(None)))
        }
    });
    let mut c = client(&[&n1], GENEROUS);
    assert_eq!(c.get(b"k").unwrap(), None);
    assert_eq!(n1.requests().len(), 2);
    assert_eq!(n1.accepted(), 2);
}

#[test]
fn unanswered_write_is_unknown_and_unanswered_read_is_failed() {
    let n1 = FakeNode::start(|_, _| Action::Hang);
    let n2 = FakeNode::always(not_leader(Some(1)));
    let mut c = client(&[&n1, &n2], SHORT);
    let err = c.put(b"k", b"v").unwrap_err();
    assert!(matches!(err, Error::Unknown(_)), "{err}");
    assert!(err.to_string().contains("may or may not"), "{err}");
    let id = c.client_id();
    let writes = write_ids(&n1.requests());
    assert!(!writes.is_empty());
    assert!(writes.iter().all(|&w| w == (id, 1)), "{writes:?}");

    let err = c.get(b"k").unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err}");
}

#[test]
fn broken_connections_or_unknown_answers_until_the_deadline_are_unknown_for_writes() {
    // A write whose connection breaks every time is unknown.
    let closer = FakeNode::start(|_, _| Action::Close);
    let mut c = client(&[&closer], SHORT);
    let err = c.delete(b"k").unwrap_err();
    assert!(matches!(err, Error::Unknown(_)), "{err}");

    // And one answered only with "unknown".
    let unsure = FakeNode::always(Response::Unknown("leadership lost".into()));
    let mut c = client(&[&unsure], SHORT);
    let err = c.put(b"k", b"v").unwrap_err();
    assert!(matches!(err, Error::Unknown(_)), "{err}");
    // But a read answered "unknown" changed nothing: failed.
    let err = c.get(b"k").unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err}");
}

#[test]
fn unreachable_cluster_is_failed() {
    let mut c = Client::new(vec![dead_addr(), dead_addr(), dead_addr()], SHORT);
    let err = c.put(b"k", b"v").unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err}");
    assert!(err.to_string().contains("not applied"), "{err}");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    let err = c.get(b"k").unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err}");

    let mut c = Client::new(Vec::new(), SHORT);
    assert!(matches!(c.get(b"k"), Err(Error::Failed(_))));
}

#[test]
fn cluster_without_leader_is_failed() {
    let n1 = FakeNode::always(not_leader(None));
    let n2 = FakeNode::always(not_leader(None));
    let n3 = FakeNode::always(Response::Failed("starting".into()));
    let mut c = client(&[&n1, &n2, &n3], SHORT);
    let err = c.put(b"k", b"v").unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err}");
    // It kept trying, with pauses between rounds, and always the same seq.
    let id = c.client_id();
    let writes = write_ids(&n1.requests());
    assert!(writes.len() >= 2, "{writes:?}");
    assert!(writes.iter().all(|&w| w == (id, 1)));
}

#[test]
fn rejected_is_failed_without_retrying() {
    let n1 = FakeNode::always(Response::Outcome(Outcome::Rejected("stale request".into())));
    let mut c = client(&[&n1], GENEROUS);
    let err = c.put(b"k", b"v").unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err}");
    assert!(err.to_string().contains("stale request"), "{err}");
    assert_eq!(n1.requests().len(), 1);
}

#[test]
fn unexpected_outcome_kind_is_a_protocol_error() {
    let n1 = FakeNode::always(done());
    let mut c = client(&[&n1], GENEROUS);
    assert!(matches!(c.get(b"k"), Err(Error::Protocol(_))));
    assert!(matches!(
        c.cas(b"k", Some(b"a"), b"b"),
        Err(Error::Protocol(_))
    ));
}

#[test]
fn invalid_input_sends_nothing() {
    let n1 = FakeNode::always(Response::Outcome(Outcome::Value(None)));
    let mut c = client(&[&n1], GENEROUS);
    let long_key = vec![b'k'; MAX_KEY_BYTES + 1];
    let long_value = vec![b'v'; MAX_VALUE_BYTES + 1];
    let results = [
        c.get(b"").map(drop),
        c.get(&long_key).map(drop),
        c.get(b"\0internal").map(drop),
        c.put(b"", b"v"),
        c.put(&long_key, b"v"),
        c.put(b"k", &long_value),
        c.delete(b""),
        c.cas(b"", None, b"v").map(drop),
        c.cas(b"k", None, &long_value).map(drop),
        c.cas(b"k", Some(&long_value), b"v").map(drop),
        c.list(&long_key).map(drop),
        c.request(&Request::Status).map(drop),
    ];
    for (i, result) in results.into_iter().enumerate() {
        assert!(
            matches!(result, Err(Error::InvalidInput(_))),
            "case {i}: {result:?}"
        );
    }
    assert_eq!(n1.accepted(), 0);
    // Keys at the limits are fine; the first request the node sees is this.
    let key = vec![b'k'; MAX_KEY_BYTES];
    assert_eq!(c.get(&key).unwrap(), None);
    assert_eq!(
        n1.requests(),
        vec![Request::Read {
            query: Query::Get { key }
        }]
    );
    // A write refused as invalid does not use up a sequence number.
    let n2 = FakeNode::always(done());
    let mut c = client(&[&n2], GENEROUS);
    assert!(c.put(b"", b"v").is_err());
    c.put(b"k", &vec![b'v'; MAX_VALUE_BYTES]).unwrap();
    assert_eq!(write_ids(&n2.requests()), vec![(c.client_id(), 1)]);
}

#[test]
fn status_asks_every_node() {
    let status = |id: u64| NodeStatus {
        id,
        role: if id == 1 { "leader" } else { "follower" }.into(),
        term: 3,
        leader: Some(1),
        commit_index: 10,
        applied_index: 9,
    };
    let n1 = FakeNode::always(Response::Status(status(1)));
    let n3 = FakeNode::always(Response::Status(status(3)));
    let hung = FakeNode::start(|_, _| Action::Hang);
    let dead = dead_addr();
    let nodes = vec![n1.addr, dead, n3.addr, hung.addr];
    let mut c = Client::new(nodes.clone(), SHORT);
    let rows = c.status();
    assert_eq!(rows.len(), 4);
    for (i, (id, addr, _)) in rows.iter().enumerate() {
        assert_eq!(*id, i as u64 + 1);
        assert_eq!(*addr, nodes[i]);
    }
    assert_eq!(rows[0].2.as_ref().unwrap(), &status(1));
    assert!(rows[1].2.is_err());
    assert_eq!(rows[2].2.as_ref().unwrap(), &status(3));
    assert!(rows[3].2.is_err());
    assert_eq!(n1.requests(), vec![Request::Status]);
    // The connections stay usable afterwards.
    let rows = c.status();
    assert!(rows[0].2.is_ok());
    assert_eq!(n1.accepted(), 1);
}

#[test]
fn client_ports_are_raft_ports_plus_1000() {
    let raft: Vec<SocketAddr> = vec![
        "127.0.0.1:7001".parse().unwrap(),
        "[::1]:7002".parse().unwrap(),
    ];
    assert_eq!(
        client_addrs(&raft).unwrap(),
        vec![
            "127.0.0.1:8001".parse::<SocketAddr>().unwrap(),
            "[::1]:8002".parse().unwrap()
        ]
    );
    let high: SocketAddr = "127.0.0.1:65000".parse().unwrap();
    assert!(matches!(client_addrs(&[high]), Err(Error::Config(_))));
    assert_eq!(kvapp_c::kv::client_addr(high), None);
}

#[test]
fn clients_get_distinct_ids() {
    let ids: std::collections::HashSet<u64> = (0..100)
        .map(|_| Client::new(Vec::new(), SHORT).client_id())
        .collect();
    assert_eq!(ids.len(), 100);
}

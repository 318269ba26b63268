//! The blocking client.
//!
//! [`Client`] talks to a cluster over the client ports of its nodes (see
//! [`client_addrs`]). It keeps a guess of the leader, follows `NotLeader`
//! redirects, and retries across failures and leader changes until the
//! request's deadline.
//!
//! # What an error says about a request
//!
//! - [`Error::InvalidInput`]: the key or value was invalid; nothing was sent.
//! - [`Error::Failed`]: the request was definitely not applied: the cluster
//!   rejected it, or no attempt could have reached a leader before the
//!   deadline. A read that times out is always `Failed`: it changes nothing.
//! - [`Error::Unknown`]: a write may or may not have been applied: at least
//!   one attempt was sent and not answered definitely (the connection broke,
//!   the node timed out, or it answered `Unknown`), and the deadline ran out.
//!
//! # Exactly once
//!
//! Each client has a random 64-bit id and numbers its writes from 1. Every
//! retry of a write reuses its `(client_id, seq)`, and the state machine
//! applies a given pair at most once, so retrying is always safe. One
//! `Client` sends one request at a time (`&mut self`), which is what keeps
//! its sequence numbers meaningful; use one `Client` per thread.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::protocol::{NodeStatus, Op, Outcome, Query, Request, Response};
use super::{validate_op, validate_query};
use crate::network::frame;
use crate::{Error, NodeId, Result};

/// How far a node's client port is above its Raft port.
pub const CLIENT_PORT_OFFSET: u16 = 1000;

/// The first pause after a full round of nodes without an answer.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// The longest pause between rounds.
const MAX_BACKOFF: Duration = Duration::from_millis(100);
/// The most time [`Client::status`] gives each node.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Bounds of the default per-attempt timeout (a quarter of the request
/// timeout, clamped to this range).
const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The client address of the node whose Raft address is `raft`: the same
/// host, port + [`CLIENT_PORT_OFFSET`]. `None` if the port would overflow.
pub fn client_addr(raft: SocketAddr) -> Option<SocketAddr> {
    let port = raft.port().checked_add(CLIENT_PORT_OFFSET)?;
    Some(SocketAddr::new(raft.ip(), port))
}

/// Maps a cluster's Raft addresses to their client addresses (see
/// [`client_addr`]), keeping the order, so index `i` is node `i + 1`.
///
/// Fails with [`Error::Config`] if a port would overflow.
pub fn client_addrs(raft_addrs: &[SocketAddr]) -> Result<Vec<SocketAddr>> {
    raft_addrs
        .iter()
        .map(|&addr| {
            client_addr(addr).ok_or_else(|| {
                Error::Config(format!(
                    "Raft address {addr} has no client port: port {} + {CLIENT_PORT_OFFSET} \
                     exceeds 65535",
                    addr.port()
                ))
            })
        })
        .collect()
}

/// Result of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    /// Whether the key held the expected value and now holds the new one.
    pub swapped: bool,
    /// The value the key held before (`None`: absent).
    pub current: Option<Vec<u8>>,
}

/// An open connection to one node.
struct Conn {
    stream: TcpStream,
    /// Reads answers from a clone of `stream`, so a small answer takes one
    /// `read` call rather than one per frame part.
    reader: std::io::BufReader<TcpStream>,
    /// The read and write timeout currently set on `stream`.
    timeout: Duration,
}

/// Why one exchange with a node produced no response.
struct ExchangeError {
    /// Whether the whole request reached the node, so it may have acted on it.
    sent: bool,
    message: String,
}

/// A blocking client for a kvapp-c cluster.
///
/// Created without any I/O; connects to nodes lazily and keeps one
/// connection per node, dropped on any error.
pub struct Client {
    /// Client address of node `i + 1` at index `i`.
    nodes: Vec<SocketAddr>,
    conns: Vec<Option<Conn>>,
    timeout: Duration,
    attempt_timeout: Duration,
    /// Index into `nodes` of the node believed to be the leader.
    leader: usize,
    client_id: u64,
    /// The sequence number of the next new write.
    next_seq: u64,
}

impl Client {
    /// A client for the cluster whose nodes serve clients at `nodes` (index
    /// `i` is node id `i + 1`; see [`client_addrs`]). Each request gives up
    /// after `timeout`.
    pub fn new(nodes: Vec<SocketAddr>, timeout: Duration) -> Client {
        let conns = nodes.iter().map(|_| None).collect();
        Client {
            nodes,
            conns,
            timeout,
            attempt_timeout: (timeout / 4).clamp(MIN_ATTEMPT_TIMEOUT, MAX_ATTEMPT_TIMEOUT),
            leader: 0,
            client_id: random_u64(),
            next_seq: 1,
        }
    }

    /// Sets how long one attempt on one node may take (connect, send,
    /// answer) before the client tries another node. Defaults to a quarter
    /// of the request timeout, between 100 ms and 2 s. A zero duration is
    /// raised to 1 ms.
    pub fn set_attempt_timeout(&mut self, timeout: Duration) {
        self.attempt_timeout = timeout.max(Duration::from_millis(1));
    }

    /// Sets the overall timeout of each request.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The overall timeout of each request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// This client's session id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The client addresses of the nodes, node `i + 1` at index `i`.
    pub fn nodes(&self) -> &[SocketAddr] {
        &self.nodes
    }

    /// The node this client currently believes to be the leader.
    pub fn leader_hint(&self) -> Option<NodeId> {
        (!self.nodes.is_empty()).then_some(self.leader as NodeId + 1)
    }

    /// Reads `key` (linearizable). `None`: the key is absent.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.read(Query::Get { key: key.to_vec() })? {
            Outcome::Value(value) => Ok(value),
            other => Err(unexpected("get", &other)),
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        match self.write(Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        })? {
            Outcome::Done => Ok(()),
            other => Err(unexpected("put", &other)),
        }
    }

    /// Removes `key`; succeeds also when it was absent.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        match self.write(Op::Delete { key: key.to_vec() })? {
            Outcome::Done => Ok(()),
            other => Err(unexpected("delete", &other)),
        }
    }

    /// Sets `key` to `new` if it holds `expected` (`None`: if it is absent).
    /// A comparison that does not match is a success with `swapped: false`.
    pub fn cas(&mut self, key: &[u8], expected: Option<&[u8]>, new: &[u8]) -> Result<CasOutcome> {
        match self.write(Op::Cas {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.to_vec(),
        })? {
            Outcome::Cas { swapped, current } => Ok(CasOutcome { swapped, current }),
            other => Err(unexpected("cas", &other)),
        }
    }

    /// The keys starting with `prefix`, sorted (linearizable).
    pub fn list(&mut self, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
        match self.read(Query::List {
            prefix: prefix.to_vec(),
        })? {
            Outcome::Keys(keys) => Ok(keys),
            other => Err(unexpected("list", &other)),
        }
    }

    /// Asks every node for its status, directly and in parallel, giving each
    /// at most the request timeout and no more than one second. Returns one
    /// row per node in node order: id, client address, and its status or why
    /// it could not be had.
    pub fn status(&mut self) -> Vec<(NodeId, SocketAddr, Result<NodeStatus>)> {
        let budget = self
            .timeout
            .min(STATUS_TIMEOUT)
            .max(Duration::from_millis(1));
        let frame = encode_frame(&Request::Status);
        let answers: Vec<Result<NodeStatus>> = std::thread::scope(|s| {
            let probes: Vec<_> = self
                .conns
                .iter_mut()
                .zip(&self.nodes)
                .enumerate()
                .map(|(i, (conn, &addr))| {
                    let frame = &frame;
                    s.spawn(move || {
                        let id = i as NodeId + 1;
                        match exchange(conn, id, addr, frame, budget) {
                            Ok(Response::Status(status)) => Ok(status),
                            Ok(other) => {
                                *conn = None;
                                Err(Error::Protocol(format!(
                                    "node {id} at {addr} answered a status request with {other:?}"
                                )))
                            }
                            Err(e) => Err(Error::Failed(e.message)),
                        }
                    })
                })
                .collect();
            probes
                .into_iter()
                .map(|probe| {
                    probe.join().unwrap_or_else(|_| {
                        Err(Error::Failed("the status probe thread panicked".into()))
                    })
                })
                .collect()
        });
        self.nodes
            .iter()
            .zip(answers)
            .enumerate()
            .map(|(i, (&addr, answer))| (i as NodeId + 1, addr, answer))
            .collect()
    }

    /// Applies `op` as a new write: validates it, gives it the next sequence
    /// number and sends it to the leader (see [`Client::request`]).
    pub fn write(&mut self, op: Op) -> Result<Outcome> {
        validate_op(&op)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.request(&Request::Write {
            client_id: self.client_id,
            seq,
            op,
        })
    }

    /// Validates `query` and serves it through the leader (see
    /// [`Client::request`]).
    pub fn read(&mut self, query: Query) -> Result<Outcome> {
        validate_query(&query)?;
        self.request(&Request::Read { query })
    }

    /// Sends `req` (a write or a read) to the leader, following redirects
    /// and retrying the same request across failures until the timeout.
    ///
    /// The caller chooses a write's `client_id` and `seq`; [`Client::write`]
    /// does that for it. An [`Outcome::Rejected`] answer becomes
    /// [`Error::Failed`]. [`Request::Status`] is answered by each node for
    /// itself; use [`Client::status`] for it.
    pub fn request(&mut self, req: &Request) -> Result<Outcome> {
        let is_write = match req {
            Request::Write { .. } => true,
            Request::Read { .. } => false,
            Request::Status => {
                return Err(Error::InvalidInput(
                    "a status request goes to every node; use Client::status".into(),
                ));
            }
        };
        if self.nodes.is_empty() {
            return Err(Error::Failed("the client knows no nodes".into()));
        }
        let frame = encode_frame(req);
        let start = Instant::now();
        let deadline = start + self.timeout;
        // Whether some attempt of this request may have been applied.
        let mut maybe_applied = false;
        let mut last_error = String::from("no node was tried");
        let mut target = self.leader;
        let mut attempts_in_round = 0;
        let mut backoff = MIN_BACKOFF;
        loop {
            let now = Instant::now();
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                break;
            }
            if attempts_in_round >= self.nodes.len() {
                // A full round without an answer: pause so a cluster in the
                // middle of an election is not hammered.
                std::thread::sleep(backoff.min(remaining));
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempts_in_round = 0;
                continue;
            }
            attempts_in_round += 1;
            let id = target as NodeId + 1;
            let budget = remaining.min(self.attempt_timeout);
            let addr = self.nodes[target];
            let response = match exchange(&mut self.conns[target], id, addr, &frame, budget) {
                Ok(response) => response,
                Err(e) => {
                    maybe_applied |= is_write && e.sent;
                    last_error = e.message;
                    target = self.next_node(target);
                    continue;
                }
            };
            match response {
                Response::Outcome(Outcome::Rejected(reason)) => {
                    self.leader = target;
                    return Err(Error::Failed(format!("rejected by the cluster: {reason}")));
                }
                Response::Outcome(outcome) => {
                    self.leader = target;
                    return Ok(outcome);
                }
                Response::NotLeader { leader } => {
                    let hint = leader
                        .filter(|&l| l >= 1 && l <= self.nodes.len() as NodeId && l != id)
                        .map(|l| (l - 1) as usize);
                    last_error = match leader {
                        Some(l) => format!("node {id} is not the leader (it points to node {l})"),
                        None => format!("node {id} is not the leader and knows no leader"),
                    };
                    target = hint.unwrap_or_else(|| self.next_node(target));
                    self.leader = target;
                }
                Response::Failed(reason) => {
                    last_error = format!("node {id} failed the request: {reason}");
                    target = self.next_node(target);
                }
                Response::Unknown(reason) => {
                    maybe_applied |= is_write;
                    last_error = format!("node {id}: {reason}");
                    target = self.next_node(target);
                }
                Response::Status(_) => {
                    self.conns[target] = None;
                    maybe_applied |= is_write;
                    last_error = format!("node {id} answered a request with a status");
                    target = self.next_node(target);
                }
            }
        }
        let ms = start.elapsed().as_millis();
        if maybe_applied {
            Err(Error::Unknown(format!(
                "no answer within {ms} ms; the write may or may not have been applied \
                 (last error: {last_error})"
            )))
        } else {
            Err(Error::Failed(format!(
                "no leader answered within {ms} ms; the request was not applied \
                 (last error: {last_error})"
            )))
        }
    }

    fn next_node(&self, index: usize) -> usize {
        (index + 1) % self.nodes.len()
    }
}

/// Sends one request frame to node `id` at `addr` over `conn` (connecting
/// first if needed) and reads one response, each step bounded by `budget`.
/// Drops the connection on any error.
fn exchange(
    conn: &mut Option<Conn>,
    id: NodeId,
    addr: SocketAddr,
    frame: &[u8],
    budget: Duration,
) -> std::result::Result<Response, ExchangeError> {
    let not_sent = |what: &str, e: &dyn std::fmt::Display| ExchangeError {
        sent: false,
        message: format!("{what} node {id} at {addr}: {e}"),
    };
    let c = match conn {
        Some(c) => c,
        None => {
            let stream = TcpStream::connect_timeout(&addr, budget)
                .map_err(|e| not_sent("cannot connect to", &e))?;
            stream
                .set_nodelay(true)
                .map_err(|e| not_sent("cannot configure the connection to", &e))?;
            let reader = stream
                .try_clone()
                .map_err(|e| not_sent("cannot configure the connection to", &e))?;
            conn.insert(Conn {
                stream,
                reader: std::io::BufReader::new(reader),
                timeout: Duration::ZERO,
            })
        }
    };
    if c.timeout != budget {
        let set = c
            .stream
            .set_read_timeout(Some(budget))
            .and_then(|()| c.stream.set_write_timeout(Some(budget)));
        if let Err(e) = set {
            *conn = None;
            return Err(not_sent("cannot configure the connection to", &e));
        }
        c.timeout = budget;
    }
    // A write that fails did not hand the whole frame to the kernel, so the
    // node cannot have received a complete request.
    if let Err(e) = c.stream.write_all(frame).and_then(|()| c.stream.flush()) {
        *conn = None;
        return Err(not_sent("cannot send to", &e));
    }
    let lost = |message: String| ExchangeError {
        sent: true,
        message,
    };
    let result = match frame::read_frame(&mut c.reader, frame::MAX_FRAME) {
        Ok(Some(body)) => frame::decode::<Response>(&body)
            .map_err(|e| lost(format!("node {id} at {addr} sent a bad response: {e}"))),
        Ok(None) => Err(lost(format!(
            "node {id} at {addr} closed the connection without answering"
        ))),
        Err(e) => Err(lost(format!("no answer from node {id} at {addr}: {e}"))),
    };
    if result.is_err() {
        *conn = None;
    }
    result
}

/// A whole request frame, ready to send with one write.
fn encode_frame(req: &Request) -> Vec<u8> {
    let mut buf = Vec::new();
    // Validated keys and values keep every request far below 4 GiB.
    frame::encode_frame_into(req, &mut buf).expect("a request fits in a frame");
    buf
}

fn unexpected(what: &str, outcome: &Outcome) -> Error {
    Error::Protocol(format!("the cluster answered a {what} with {outcome:?}"))
}

/// A fresh random id: the standard library's randomly keyed hasher over the
/// time, the process id and a per-process counter.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

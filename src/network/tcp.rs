//! The TCP transport: Raft messages between nodes over plain TCP.
//!
//! # Threads
//!
//! - One listener thread accepts inbound connections and starts one reader
//!   thread per connection.
//! - A reader thread reads frames, decodes each into a [`Message`] and hands
//!   it to the [`Inbox`], attributed to the node named in the handshake.
//!   Started with [`Transport::start_adopting`], the reader instead hands
//!   the connection, once its handshake checks out, to the [`Adopt`] (with
//!   the bytes it read past the handshake) and ends: the server's event loop
//!   reads its peers itself. Handshakes, their deadline and the limit on
//!   connections still happen here; a connection handed over no longer
//!   counts against [`TcpConfig::max_inbound`] (its owner keeps one per
//!   peer), its bad frames are not counted as rejected connections, and its
//!   owner replaces it when the peer dials again.
//! - One writer thread per peer owns that peer's outbound connection. It
//!   takes messages from a bounded queue, connects lazily, writes frames
//!   through a buffer and flushes whenever the queue is momentarily empty, so
//!   a burst of messages leaves in few system calls.
//! - The sending thread (the server's event loop) writes a message straight
//!   to the peer's socket when that is free: the connection is up and in
//!   recent use, nothing is queued for the writer and the writer is not
//!   writing. The write never blocks; what the socket does not take at once
//!   goes to the writer as the tail of that frame, and every later message
//!   follows it through the queue. This saves a thread hand-off on every
//!   replication round trip.
//!
//! No thread is created per message, and after warm-up a message costs one
//! encoding into a reused buffer on the way out and one frame buffer on the
//! way in.
//!
//! # Connections
//!
//! Every connection carries messages in one direction only: the dialing side
//! is the sender. It opens with a `Hello` frame naming the protocol
//! ([`PROTOCOL`]), the cluster identity (see [`cluster_identity`]) and the
//! sender's node id. The accepting side closes the connection unless the
//! protocol and cluster match and the id is one of its peers.
//!
//! # Invariants
//!
//! - [`TcpTransport::send`] never blocks: it tries one non-blocking write
//!   or enqueues. A full queue drops the message and counts it
//!   ([`TcpStats::dropped_queue_full`]); Raft retransmits what matters.
//! - Bytes of one connection leave in order: the writer holds the peer's
//!   `Link` lock while it writes and flushes, a direct write takes the
//!   lock only when nothing is queued, and the tail of a partly written
//!   frame is queued for the same connection (dropped with it if it closes).
//! - A dead, slow or paused peer stalls only its own writer thread, and only
//!   for a bounded time: connects give up after
//!   [`TcpConfig::connect_timeout`], a write that makes no progress for
//!   [`TcpConfig::write_timeout`] drops the connection. Reconnection attempts
//!   back off exponentially from [`TcpConfig::backoff_min`] to
//!   [`TcpConfig::backoff_max`]; while a peer is unreachable, messages for it
//!   are dropped rather than kept to be delivered stale.
//! - Anything that does not parse on an inbound connection (garbage, a wrong
//!   magic or version, an oversized frame, a malformed body, a foreign cluster,
//!   an unknown node) closes that connection only and is logged. A connection
//!   that sends no valid handshake within [`TcpConfig::handshake_timeout`] is
//!   closed, and at most [`TcpConfig::max_inbound`] inbound connections are
//!   served at once, so stray connections cannot pin threads forever. At
//!   the limit a new connection takes the place of the one that has waited
//!   longest for its handshake: a member sends its handshake as soon as it
//!   is connected, so connections that hold a slot in silence (a flood of
//!   them, say) cannot lock members out, as they would if the new
//!   connection were the one closed. Connections that completed their
//!   handshake are never closed to make room.
//! - TCP watches every peer connection for a member that vanished without
//!   closing it (see `DeadPeerCheck::PEERS`): keepalive probes after 5 s of
//!   silence, and sent data unacknowledged for 10 s drops the connection.
//!   Writes that stop making progress already drop a connection (the write
//!   timeout), and a member cut off by a silent partition (a veth pair into
//!   a network namespace, its far end set down for 8, 15 or 30 s) caught up
//!   within a second of the heal with or without these options; they guard
//!   the connections nothing writes to, such as an inbound one whose member
//!   lost power.
//! - When a node dials again, its older inbound connection is retired as soon
//!   as it falls idle, so a half-open connection left by a crashed peer does
//!   not keep a reader thread alive.
//! - Messages from one sender arrive in the order they were sent, except
//!   around a reconnection, when the tail of the old connection may be
//!   delivered alongside the start of the new one (Raft tolerates reordering
//!   and loss).
//! - [`TcpTransport::shutdown`] stops and joins every thread, even if a peer
//!   is paused: it shuts down every socket a thread may be blocked on. After
//!   it returns the inbox is never called again.
//!
//! # Binding
//!
//! [`TcpTransport::new`] binds the listening socket immediately, so a port
//! conflict is reported before the server does anything else; threads start
//! only in [`Transport::start`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use serde::{Deserialize, Serialize};

use super::frame::{self, read_frame, write_frame};
use super::{Adopt, DeadPeerCheck, Handover, Inbox, Transport, send_nonblocking};
use crate::raft::Message;
use crate::{Error, NodeId, Result};

/// The protocol name a dialing node sends in its handshake.
pub const PROTOCOL: &str = "kvapp-c/raft/1";

/// Largest handshake frame accepted (it holds the cluster identity).
const HELLO_MAX: usize = 64 << 10;
/// Capacity of the read and write buffers of one connection.
const IO_BUFFER: usize = 64 << 10;
/// Upper bound on the encoding buffer a writer keeps between messages.
const SCRATCH_KEEP: usize = 1 << 20;
/// How often an idle reader wakes to check whether it should stop.
const READ_POLL: Duration = Duration::from_millis(500);
/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// listener does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// Minimum time between two warnings about the same peer.
const WARN_INTERVAL: Duration = Duration::from_secs(30);
/// How long shutdown waits to connect to its own listener to wake it.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Configuration of a [`TcpTransport`]. Build it with [`TcpConfig::new`] and
/// adjust the public fields if the defaults do not fit.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// This node's id.
    pub id: NodeId,
    /// The cluster identity both sides of a connection must agree on,
    /// usually [`cluster_identity`] of the member list.
    pub cluster: String,
    /// The address to listen on for inbound peer connections (the Raft port).
    pub listen: SocketAddr,
    /// Every other member: its id and Raft address. Must not contain `id`.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Messages queued per peer before new ones are dropped. Default 1024.
    pub queue_capacity: usize,
    /// Largest frame body sent or accepted, in bytes. Default
    /// [`frame::MAX_FRAME`].
    pub max_frame: usize,
    /// How long a connection attempt may take. Default 1 s.
    pub connect_timeout: Duration,
    /// How long one write may make no progress before the connection is
    /// dropped and re-established. Default 2 s.
    pub write_timeout: Duration,
    /// How long an inbound connection may take to send its handshake.
    /// Default 5 s.
    pub handshake_timeout: Duration,
    /// First delay before reconnecting after a failure. Default 10 ms.
    pub backoff_min: Duration,
    /// The delay doubles after every consecutive failure up to this cap.
    /// Default 1 s.
    pub backoff_max: Duration,
    /// Inbound connections served at once. When one more arrives, the one
    /// that has waited longest for its handshake is closed to make room;
    /// if every connection completed its handshake, the new one is closed.
    /// Default 64.
    pub max_inbound: usize,
    /// An outbound connection unused for this long is checked before its
    /// next message (by the writer thread, never by a direct write), so a
    /// peer that closed it, having restarted say, does not swallow that
    /// message. Default 50 ms.
    pub idle_probe: Duration,
}

impl TcpConfig {
    /// A configuration with default limits and timeouts.
    pub fn new(
        id: NodeId,
        cluster: impl Into<String>,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> Self {
        TcpConfig {
            id,
            cluster: cluster.into(),
            listen,
            peers,
            queue_capacity: 1024,
            max_frame: frame::MAX_FRAME,
            connect_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            max_inbound: 64,
            idle_probe: Duration::from_millis(50),
        }
    }

    fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Config(msg));
        if self.peers.contains_key(&self.id) {
            return fail(format!("node {} is listed among its own peers", self.id));
        }
        if self.queue_capacity == 0 {
            return fail("the peer queue capacity must be at least 1".into());
        }
        if self.max_frame == 0 || u32::try_from(self.max_frame).is_err() {
            return fail(format!(
                "the frame limit must be between 1 and {} bytes",
                u32::MAX
            ));
        }
        if self.max_inbound == 0 {
            return fail("at least one inbound connection must be allowed".into());
        }
        for (name, value) in [
            ("connect timeout", self.connect_timeout),
            ("write timeout", self.write_timeout),
            ("handshake timeout", self.handshake_timeout),
            ("minimum reconnect backoff", self.backoff_min),
        ] {
            if value.is_zero() {
                return fail(format!("the {name} must be greater than zero"));
            }
        }
        if self.backoff_max < self.backoff_min {
            return fail("the maximum reconnect backoff is below the minimum".into());
        }
        Ok(())
    }
}

/// The cluster identity for a member list: the members' addresses joined by
/// commas, in cluster order. Order is kept on purpose: node ids are positions
/// in the list, so two nodes given the same addresses in a different order
/// disagree about who is who and must not talk to each other.
pub fn cluster_identity<T: fmt::Display>(members: &[T]) -> String {
    members
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Counters of a [`TcpTransport`] since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Messages written to an outbound connection's buffer. A message counted
    /// here can still be lost if the connection breaks before it is read.
    pub sent: u64,
    /// Of `sent`, messages the sending thread wrote to the socket itself.
    pub sent_direct: u64,
    /// Direct writes the socket took only in part, their rest left to the
    /// writer thread.
    pub direct_tails: u64,
    /// Inbound messages delivered to the inbox (not those of connections
    /// handed to an [`Adopt`]).
    pub received: u64,
    /// Messages dropped because their peer's queue was full.
    pub dropped_queue_full: u64,
    /// Messages dropped because their peer could not be reached (waiting to
    /// reconnect, connection failed, unknown peer, or not running).
    pub dropped_unreachable: u64,
    /// Messages dropped because their encoding exceeds the frame limit.
    pub dropped_oversized: u64,
    /// Outbound connections established.
    pub connects: u64,
    /// Outbound connection attempts that failed.
    pub connect_failures: u64,
    /// Inbound connections closed for breaking the protocol, failing the
    /// handshake, or waiting for it while newer ones arrived at the
    /// connection limit.
    pub rejected_connections: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    sent_direct: AtomicU64,
    direct_tails: AtomicU64,
    received: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_unreachable: AtomicU64,
    dropped_oversized: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    rejected_connections: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> TcpStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TcpStats {
            sent: get(&self.sent),
            sent_direct: get(&self.sent_direct),
            direct_tails: get(&self.direct_tails),
            received: get(&self.received),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_unreachable: get(&self.dropped_unreachable),
            dropped_oversized: get(&self.dropped_oversized),
            connects: get(&self.connects),
            connect_failures: get(&self.connect_failures),
            rejected_connections: get(&self.rejected_connections),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Locks a mutex, ignoring poisoning: the guarded registries stay consistent
/// even if a thread panicked while holding the lock.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first frame on every connection.
#[derive(Serialize, Deserialize)]
struct Hello {
    protocol: String,
    cluster: String,
    node: NodeId,
}

/// State shared by all threads of one transport.
struct Shared {
    config: TcpConfig,
    stopping: AtomicBool,
    counters: Counters,
    inbound: Mutex<Inbound>,
    /// The current outbound stream of each writer, so shutdown can unblock a
    /// writer stuck on a paused peer.
    outbound: Mutex<HashMap<NodeId, TcpStream>>,
    /// Set by [`Transport::start_adopting`]: who takes handshaken inbound
    /// connections over.
    adopt: OnceLock<Adopt>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Registry of inbound connections.
#[derive(Default)]
struct Inbound {
    next_conn: u64,
    conns: HashMap<u64, InboundConn>,
    /// The newest handshaken connection of each node and its retire flag.
    current: HashMap<NodeId, (u64, Arc<AtomicBool>)>,
    /// When a connection closed for the limit was last logged at warn
    /// level, and how many were closed since: a flood of connections would
    /// otherwise write a warning for each.
    limit_warned: Option<Instant>,
    limit_closed_unreported: u64,
}

impl Inbound {
    /// Logs a connection closed for the limit: at warn level at most once
    /// per [`WARN_INTERVAL`], with the count of those closed meanwhile.
    fn warn_closed_for_limit(&mut self, what: String) {
        if self
            .limit_warned
            .is_some_and(|t| t.elapsed() < WARN_INTERVAL)
        {
            self.limit_closed_unreported += 1;
            debug!("{what}");
            return;
        }
        let earlier = std::mem::take(&mut self.limit_closed_unreported);
        if earlier > 0 {
            warn!("{what} ({earlier} more closed for the limit since the last warning)");
        } else {
            warn!("{what}");
        }
        self.limit_warned = Some(Instant::now());
    }
}

struct InboundConn {
    stream: TcpStream,
    thread: Option<JoinHandle<()>>,
    stage: Stage,
}

/// Where an inbound connection stands, as far as the connection limit is
/// concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for its handshake: the listener may close it to make room.
    Handshake,
    /// Named a member in its handshake: kept.
    Member,
    /// Closed by the listener to make room; its reader is on its way out
    /// and the connection no longer counts against the limit.
    Evicted,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Bound,
    Running,
    Stopped,
}

/// What a writer thread takes from its queue.
enum Outgoing {
    Msg(Message),
    /// The unsent rest of a frame the sending thread began on connection
    /// `generation`; written only on that same connection.
    Tail {
        generation: u64,
        bytes: Vec<u8>,
    },
}

/// A peer's outbound connection as seen by the sending thread.
#[derive(Default)]
struct Link {
    /// The writer holds this lock while it writes; `None` while it has no
    /// connection that is flushed and ready for direct writes.
    direct: Mutex<Option<Direct>>,
    /// Items put in the writer's queue and not yet handled by it.
    queued: AtomicUsize,
}

struct Direct {
    generation: u64,
    stream: TcpStream,
    last_write: Instant,
}

struct PeerQueue {
    tx: SyncSender<Outgoing>,
    link: Arc<Link>,
    /// Whether the last send found the queue full (for logging transitions).
    full: bool,
    /// Messages dropped since the last warning about this queue.
    dropped: u64,
    /// When the queue last filled up with a warning logged; fill-ups within
    /// [`WARN_INTERVAL`] of it are logged at debug level.
    last_warning: Option<Instant>,
}

/// Sends and receives Raft messages over TCP. See the [module docs](self).
pub struct TcpTransport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    listener: Option<TcpListener>,
    listener_thread: Option<JoinHandle<()>>,
    queues: BTreeMap<NodeId, PeerQueue>,
    writer_threads: Vec<JoinHandle<()>>,
    phase: Phase,
    /// Reused encoding buffer for direct writes.
    scratch: Vec<u8>,
}

impl TcpTransport {
    /// Validates `config` and binds its listening address. No thread starts
    /// until [`Transport::start`].
    pub fn new(config: TcpConfig) -> Result<TcpTransport> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen)
            .map_err(|e| Error::io(format!("binding Raft port {}", config.listen), e))?;
        Self::build(config, listener)
    }

    /// Like [`TcpTransport::new`], but uses a listener the caller already
    /// bound (e.g. to port 0, to learn every member's address before creating
    /// any transport). `config.listen` is replaced by the listener's address.
    pub fn with_listener(config: TcpConfig, listener: TcpListener) -> Result<TcpTransport> {
        config.validate()?;
        Self::build(config, listener)
    }

    fn build(mut config: TcpConfig, listener: TcpListener) -> Result<TcpTransport> {
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the Raft listener's address", e))?;
        config.listen = local_addr;
        Ok(TcpTransport {
            shared: Arc::new(Shared {
                config,
                stopping: AtomicBool::new(false),
                counters: Counters::default(),
                inbound: Mutex::new(Inbound::default()),
                outbound: Mutex::new(HashMap::new()),
                adopt: OnceLock::new(),
            }),
            local_addr,
            listener: Some(listener),
            listener_thread: None,
            queues: BTreeMap::new(),
            writer_threads: Vec::new(),
            phase: Phase::Bound,
            scratch: Vec::new(),
        })
    }

    /// The address the transport listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The transport's counters so far.
    pub fn stats(&self) -> TcpStats {
        self.shared.counters.snapshot()
    }

    fn spawn_threads(&mut self, inbox: Inbox) -> Result<()> {
        let config = &self.shared.config;
        let id = config.id;
        let listener = self
            .listener
            .take()
            .ok_or_else(|| Error::Failed("the Raft listener is gone".into()))?;
        let shared = Arc::clone(&self.shared);
        self.listener_thread = Some(
            thread::Builder::new()
                .name(format!("raft-listen-{id}"))
                .spawn(move || run_listener(listener, shared, inbox))
                .map_err(|e| Error::io("starting the Raft listener thread", e))?,
        );
        for (&peer, &addr) in &config.peers {
            let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
            let link = Arc::new(Link::default());
            let writer = Writer {
                peer,
                addr,
                shared: Arc::clone(&self.shared),
                rx,
                link: Arc::clone(&link),
                generation: 0,
                conn: None,
                backoff: config.backoff_min,
                retry_at: None,
                last_warning: None,
                warned: false,
                scratch: Vec::new(),
            };
            let handle = thread::Builder::new()
                .name(format!("raft-send-{id}-{peer}"))
                .spawn(move || writer.run())
                .map_err(|e| Error::io(format!("starting the writer thread for node {peer}"), e))?;
            self.writer_threads.push(handle);
            self.queues.insert(
                peer,
                PeerQueue {
                    tx,
                    link,
                    full: false,
                    dropped: 0,
                    last_warning: None,
                },
            );
        }
        Ok(())
    }
}

impl Transport for TcpTransport {
    fn start(&mut self, inbox: Inbox) -> Result<()> {
        match self.phase {
            Phase::Bound => {}
            Phase::Running => {
                return Err(Error::Failed("the transport is already running".into()));
            }
            Phase::Stopped => return Err(Error::Shutdown),
        }
        self.phase = Phase::Running;
        if let Err(e) = self.spawn_threads(inbox) {
            self.shutdown();
            return Err(e);
        }
        info!(
            "node {}: Raft transport listening on {} with {} peer(s)",
            self.shared.config.id,
            self.local_addr,
            self.shared.config.peers.len()
        );
        Ok(())
    }

    fn start_adopting(&mut self, inbox: Inbox, adopt: Adopt) -> Result<()> {
        if self.phase == Phase::Bound {
            // Set before any reader thread exists; only `start` can fail
            // after this, and then no connection is ever accepted.
            let _ = self.shared.adopt.set(adopt);
        }
        self.start(inbox)
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        let counters = &self.shared.counters;
        let me = self.shared.config.id;
        let Some(queue) = self.queues.get_mut(&to) else {
            bump(&counters.dropped_unreachable);
            if self.phase == Phase::Running {
                debug!("node {me}: dropping a message for node {to}, which is not a peer");
            }
            return;
        };
        let Some(msg) = write_direct(&self.shared, queue, &mut self.scratch, msg) else {
            return;
        };
        match queue.push(Outgoing::Msg(msg)) {
            Ok(()) => {
                if queue.full {
                    queue.full = false;
                    debug!("node {me}: queue to node {to} accepts messages again");
                }
            }
            Err(TrySendError::Full(_)) => {
                bump(&counters.dropped_queue_full);
                queue.dropped += 1;
                if !queue.full {
                    queue.full = true;
                    if queue
                        .last_warning
                        .is_none_or(|t| t.elapsed() >= WARN_INTERVAL)
                    {
                        warn!(
                            "node {me}: queue to node {to} is full ({} messages); dropping \
                             messages until it drains ({} dropped since the last warning)",
                            self.shared.config.queue_capacity, queue.dropped
                        );
                        queue.last_warning = Some(Instant::now());
                        queue.dropped = 0;
                    } else {
                        debug!("node {me}: queue to node {to} is full");
                    }
                }
            }
            Err(TrySendError::Disconnected(_)) => bump(&counters.dropped_unreachable),
        }
    }

    fn shutdown(&mut self) {
        if self.phase == Phase::Stopped {
            return;
        }
        self.phase = Phase::Stopped;
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        self.listener = None;

        // Writers: closing the queues ends their loops; shutting their sockets
        // down unblocks any write stuck on a paused peer.
        self.queues.clear();
        for stream in lock(&shared.outbound).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }

        // Listener: it checks the stop flag after every accept, so one
        // connection to ourselves wakes it.
        if let Some(handle) = self.listener_thread.take() {
            match TcpStream::connect_timeout(&wake_addr(self.local_addr), WAKE_TIMEOUT) {
                Ok(_) => join(handle, "listener"),
                Err(e) => warn!(
                    "could not wake the Raft listener on {} to stop it: {e}; leaving it behind",
                    self.local_addr
                ),
            }
        }
        for handle in self.writer_threads.drain(..) {
            join(handle, "writer");
        }

        // Readers: no new ones can appear now that the listener is gone.
        let conns: Vec<InboundConn> = lock(&shared.inbound)
            .conns
            .drain()
            .map(|(_, c)| c)
            .collect();
        for conn in &conns {
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
        for conn in conns {
            if let Some(handle) = conn.thread {
                join(handle, "reader");
            }
        }
        debug!("node {}: Raft transport stopped", shared.config.id);
    }
}

impl PeerQueue {
    /// Puts `item` in the writer's queue, counting it in `link.queued`
    /// until the writer has handled it.
    fn push(&self, item: Outgoing) -> std::result::Result<(), TrySendError<Outgoing>> {
        self.link.queued.fetch_add(1, Ordering::AcqRel);
        let result = self.tx.try_send(item);
        if result.is_err() {
            self.link.queued.fetch_sub(1, Ordering::AcqRel);
        }
        result
    }
}

/// Writes `msg` straight to the peer's socket if the link is free (see the
/// module docs); hands `msg` back if it must go through the queue instead.
fn write_direct(
    shared: &Shared,
    queue: &PeerQueue,
    scratch: &mut Vec<u8>,
    msg: Message,
) -> Option<Message> {
    let link = &queue.link;
    if link.queued.load(Ordering::Acquire) != 0 {
        return Some(msg);
    }
    let Ok(mut guard) = link.direct.try_lock() else {
        return Some(msg);
    };
    let Some(direct) = guard.as_mut() else {
        return Some(msg);
    };
    // An idle connection may have been closed by the peer: the writer
    // probes it before use.
    if direct.last_write.elapsed() >= shared.config.idle_probe {
        return Some(msg);
    }
    scratch.clear();
    if frame::encode_frame_into(&msg, scratch).is_err()
        || scratch.len() - frame::HEADER_LEN > shared.config.max_frame
    {
        // The writer drops it and says why.
        return Some(msg);
    }
    let result = finish_direct(shared, queue, direct, scratch, msg);
    // Keep the buffer, unless one large message made it huge.
    if scratch.capacity() > SCRATCH_KEEP {
        *scratch = Vec::new();
    }
    result
}

/// The write of a direct send whose frame is encoded in `frame`.
fn finish_direct(
    shared: &Shared,
    queue: &PeerQueue,
    direct: &mut Direct,
    frame: &[u8],
    msg: Message,
) -> Option<Message> {
    let written = match send_nonblocking(&direct.stream, frame) {
        Ok(n) => n,
        // The writer meets the same error and reconnects.
        Err(_) => return Some(msg),
    };
    if written == 0 {
        return Some(msg);
    }
    direct.last_write = Instant::now();
    bump(&shared.counters.sent);
    bump(&shared.counters.sent_direct);
    if written < frame.len() {
        bump(&shared.counters.direct_tails);
        let tail = Outgoing::Tail {
            generation: direct.generation,
            bytes: frame[written..].to_vec(),
        };
        if queue.push(tail).is_err() {
            // Half a frame is on the wire and the rest cannot follow: the
            // connection is unusable. The writer reconnects.
            bump(&shared.counters.dropped_queue_full);
            let _ = direct.stream.shutdown(Shutdown::Both);
        }
    }
    None
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Joins a transport thread unless it is the calling thread (shutdown called
/// from inside the inbox), reporting a panic.
fn join(handle: JoinHandle<()>, what: &str) {
    if handle.thread().id() == thread::current().id() {
        return;
    }
    if handle.join().is_err() {
        warn!("a Raft transport {what} thread panicked");
    }
}

/// The address to connect to in order to reach a listener bound to `addr`.
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

// ---------------------------------------------------------------- outbound

/// An established outbound connection.
struct Connection {
    out: BufWriter<TcpStream>,
    opened: Instant,
    last_write: Instant,
}

/// The writer thread of one peer.
struct Writer {
    peer: NodeId,
    addr: SocketAddr,
    shared: Arc<Shared>,
    rx: Receiver<Outgoing>,
    /// Shared with the sending thread; locked while writing.
    link: Arc<Link>,
    /// Counts connections made, to tell a frame tail's connection.
    generation: u64,
    conn: Option<Connection>,
    /// Delay before the next attempt after another failure.
    backoff: Duration,
    /// No connection attempt before this instant.
    retry_at: Option<Instant>,
    /// When a problem with this peer was last logged as a warning; more
    /// problems within [`WARN_INTERVAL`] are logged at debug level.
    last_warning: Option<Instant>,
    /// Whether a warning was logged since the last successful connection.
    warned: bool,
    /// Reused encoding buffer.
    scratch: Vec<u8>,
}

impl Writer {
    fn run(mut self) {
        while let Ok(item) = self.rx.recv() {
            if self.shared.stopping() {
                break;
            }
            let link = Arc::clone(&self.link);
            let mut direct = lock(&link.direct);
            // Direct writes count as use of the connection.
            if let (Some(conn), Some(d)) = (self.conn.as_mut(), direct.as_ref())
                && d.generation == self.generation
            {
                conn.last_write = conn.last_write.max(d.last_write);
            }
            let usable = match &item {
                Outgoing::Msg(_) => self.ensure_connected(),
                Outgoing::Tail { generation, .. } => {
                    self.conn.is_some() && *generation == self.generation
                }
            };
            if usable {
                if let Err(e) = self.write_batch(item) {
                    self.disconnect(&e);
                }
            } else {
                if matches!(item, Outgoing::Msg(_)) {
                    bump(&self.shared.counters.dropped_unreachable);
                }
                self.handled();
            }
            // Direct writes may use the connection once it is flushed.
            match &self.conn {
                Some(conn) => {
                    let current = direct
                        .as_ref()
                        .is_some_and(|d| d.generation == self.generation);
                    if !current {
                        *direct = conn.out.get_ref().try_clone().ok().map(|stream| Direct {
                            generation: self.generation,
                            stream,
                            last_write: conn.last_write,
                        });
                    } else if let Some(d) = direct.as_mut() {
                        d.last_write = d.last_write.max(conn.last_write);
                    }
                }
                None => *direct = None,
            }
            drop(direct);
            if self.scratch.capacity() > SCRATCH_KEEP {
                self.scratch = Vec::new();
            }
        }
        self.close();
    }

    /// Counts one queue item as dealt with.
    fn handled(&self) {
        self.link.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Makes sure there is a usable connection, dialing if allowed by the
    /// backoff schedule. Returns false if there is none.
    fn ensure_connected(&mut self) -> bool {
        if let Some(conn) = &self.conn {
            if conn.last_write.elapsed() < self.shared.config.idle_probe
                || peer_still_open(conn.out.get_ref())
            {
                return true;
            }
            debug!(
                "node {}: connection to node {} was closed by the peer",
                self.shared.config.id, self.peer
            );
            self.drop_connection();
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        match self.connect() {
            Ok(conn) => {
                self.conn = Some(conn);
                self.generation += 1;
                bump(&self.shared.counters.connects);
                if self.warned {
                    self.warned = false;
                    info!(
                        "node {}: connected to node {} at {} again",
                        self.shared.config.id, self.peer, self.addr
                    );
                } else {
                    debug!(
                        "node {}: connected to node {} at {}",
                        self.shared.config.id, self.peer, self.addr
                    );
                }
                self.retry_at = None;
                true
            }
            Err(e) => {
                bump(&self.shared.counters.connect_failures);
                let (peer, addr) = (self.peer, self.addr);
                self.report(format_args!(
                    "cannot reach node {peer} at {addr}: {e}; retrying with backoff"
                ));
                self.schedule_retry();
                false
            }
        }
    }

    fn connect(&mut self) -> io::Result<Connection> {
        let config = &self.shared.config;
        let stream = TcpStream::connect_timeout(&self.addr, config.connect_timeout)?;
        // A connect to a loopback port nobody listens on can pick that very
        // port as its own source port and connect to itself (TCP
        // simultaneous open). Such a socket would hold the peer's port and
        // keep the peer from starting again; close it at once.
        if stream.local_addr()? == stream.peer_addr()? {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "connected to itself: the peer is not listening",
            ));
        }
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(config.write_timeout))?;
        if let Err(e) = DeadPeerCheck::PEERS.apply(&stream) {
            warn!(
                "node {}: connection to node {}: cannot set keepalive options: {e}",
                config.id, self.peer
            );
        }
        {
            let mut outbound = lock(&self.shared.outbound);
            if self.shared.stopping() {
                return Err(io::Error::other("the transport is shutting down"));
            }
            outbound.insert(self.peer, stream.try_clone()?);
        }
        let now = Instant::now();
        let mut conn = Connection {
            out: BufWriter::with_capacity(IO_BUFFER, stream),
            opened: now,
            last_write: now,
        };
        let hello = Hello {
            protocol: PROTOCOL.into(),
            cluster: config.cluster.clone(),
            node: config.id,
        };
        self.scratch.clear();
        frame::encode_into(&hello, &mut self.scratch);
        if let Err(e) = write_frame(&mut conn.out, &self.scratch) {
            self.conn = Some(conn);
            self.drop_connection();
            return Err(e);
        }
        Ok(conn)
    }

    /// Writes `first` and everything else already queued, then flushes.
    fn write_batch(&mut self, first: Outgoing) -> io::Result<()> {
        let result = self.write_item(&first);
        self.handled();
        result?;
        // Empty or disconnected: either way, flush what is written.
        while let Ok(item) = self.rx.try_recv() {
            if self.shared.stopping() {
                self.handled();
                return Ok(());
            }
            let result = self.write_item(&item);
            self.handled();
            result?;
        }
        let conn = self.conn.as_mut().expect("connected before writing");
        conn.out.flush()?;
        conn.last_write = Instant::now();
        Ok(())
    }

    fn write_item(&mut self, item: &Outgoing) -> io::Result<()> {
        match item {
            Outgoing::Msg(msg) => self.write_message(msg),
            Outgoing::Tail { generation, bytes } => {
                if *generation != self.generation {
                    // The frame's connection is gone, and its start with it.
                    return Ok(());
                }
                let conn = self.conn.as_mut().expect("connected before writing");
                conn.out.write_all(bytes)
            }
        }
    }

    fn write_message(&mut self, msg: &Message) -> io::Result<()> {
        self.scratch.clear();
        frame::encode_into(msg, &mut self.scratch);
        let counters = &self.shared.counters;
        if self.scratch.len() > self.shared.config.max_frame {
            bump(&counters.dropped_oversized);
            warn!(
                "node {}: dropping a {}-byte message for node {}: above the frame limit of {} bytes",
                self.shared.config.id,
                self.scratch.len(),
                self.peer,
                self.shared.config.max_frame
            );
            return Ok(());
        }
        let conn = self.conn.as_mut().expect("connected before writing");
        write_frame(&mut conn.out, &self.scratch)?;
        bump(&counters.sent);
        Ok(())
    }

    /// Drops the connection after an error and schedules a reconnection.
    fn disconnect(&mut self, error: &io::Error) {
        if self.shared.stopping() {
            self.drop_connection();
            return;
        }
        if let Some(conn) = &self.conn {
            // A connection that stayed up for a while was a success: start the
            // backoff over. One that broke at once (e.g. the peer rejects our
            // handshake) keeps backing off.
            if conn.opened.elapsed() >= self.shared.config.backoff_max {
                self.backoff = self.shared.config.backoff_min;
            }
        }
        let (peer, addr, timeout) = (self.peer, self.addr, self.shared.config.write_timeout);
        if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            self.report(format_args!(
                "node {peer} at {addr} accepted no data for {timeout:?} (stalled or overloaded); reconnecting"
            ));
        } else {
            self.report(format_args!(
                "connection to node {peer} at {addr} failed: {error}; reconnecting"
            ));
        }
        self.drop_connection();
        self.schedule_retry();
    }

    /// Logs a problem with this peer: as a warning at most once per
    /// [`WARN_INTERVAL`], at debug level otherwise, so a peer that stays down
    /// does not flood the log.
    fn report(&mut self, problem: fmt::Arguments<'_>) {
        let id = self.shared.config.id;
        let quiet = self.shared.stopping()
            || self
                .last_warning
                .is_some_and(|t| t.elapsed() < WARN_INTERVAL);
        if quiet {
            debug!("node {id}: {problem}");
        } else {
            warn!("node {id}: {problem}");
            self.last_warning = Some(Instant::now());
            self.warned = true;
        }
    }

    /// Closes the connection without flushing what is still buffered (a
    /// flush could block on a paused peer).
    fn drop_connection(&mut self) {
        if let Some(conn) = self.conn.take() {
            let (stream, _unsent) = conn.out.into_parts();
            let _ = stream.shutdown(Shutdown::Both);
            lock(&self.shared.outbound).remove(&self.peer);
        }
    }

    fn schedule_retry(&mut self) {
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.shared.config.backoff_max);
    }

    fn close(&mut self) {
        self.drop_connection();
    }
}

/// Whether the peer has not closed an outbound connection. The peer never
/// writes on it, so anything readable means end of stream or an error.
fn peer_still_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let open = match stream.peek(&mut byte) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).is_ok() && open
}

// ----------------------------------------------------------------- inbound

fn run_listener(listener: TcpListener, shared: Arc<Shared>, inbox: Inbox) {
    for incoming in listener.incoming() {
        if shared.stopping() {
            break;
        }
        match incoming {
            Ok(stream) => accept(stream, &shared, &inbox),
            Err(e) => {
                warn!(
                    "node {}: accepting a Raft connection failed: {e}",
                    shared.config.id
                );
                thread::sleep(ACCEPT_ERROR_PAUSE);
            }
        }
    }
}

fn accept(stream: TcpStream, shared: &Arc<Shared>, inbox: &Inbox) {
    let remote = stream
        .peer_addr()
        .map_or_else(|_| "an unknown address".to_string(), |a| a.to_string());
    let mut inbound = lock(&shared.inbound);
    let max = shared.config.max_inbound;
    let live = inbound
        .conns
        .values()
        .filter(|c| c.stage != Stage::Evicted)
        .count();
    // Evicted connections still hold a descriptor and a thread until their
    // reader notices the shutdown, which takes moments; the second bound
    // keeps a flood faster than that from piling them up.
    if live >= max && (inbound.conns.len() >= 2 * max || !make_room(&mut inbound, shared)) {
        bump(&shared.counters.rejected_connections);
        inbound.warn_closed_for_limit(format!(
            "node {}: closing Raft connection from {remote}: already serving {max} connections",
            shared.config.id
        ));
        return;
    }
    let registered = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            warn!(
                "node {}: closing Raft connection from {remote}: {e}",
                shared.config.id
            );
            return;
        }
    };
    let conn_id = inbound.next_conn;
    inbound.next_conn += 1;
    let reader = Reader {
        conn_id,
        remote,
        shared: Arc::clone(shared),
        node: None,
        handed_over: false,
    };
    let inbox = Arc::clone(inbox);
    let spawned = thread::Builder::new()
        .name(format!("raft-recv-{}", shared.config.id))
        .spawn(move || reader.run(stream, inbox));
    match spawned {
        // The reader removes its own entry when it ends; it cannot do so
        // before this insert because we hold the registry lock.
        Ok(handle) => {
            inbound.conns.insert(
                conn_id,
                InboundConn {
                    stream: registered,
                    thread: Some(handle),
                    stage: Stage::Handshake,
                },
            );
        }
        Err(e) => warn!(
            "node {}: cannot start a reader thread: {e}",
            shared.config.id
        ),
    }
}

/// Closes the connection that has waited longest for its handshake (the
/// lowest id: ids grow with every accept), so that a new one can take its
/// place. A member's connection waits a round trip at most, so the one
/// closed is almost surely a stray. Returns false if every connection
/// completed its handshake.
fn make_room(inbound: &mut Inbound, shared: &Shared) -> bool {
    let oldest = inbound
        .conns
        .iter_mut()
        .filter(|(_, c)| c.stage == Stage::Handshake)
        .min_by_key(|(id, _)| **id);
    let Some((_, conn)) = oldest else {
        return false;
    };
    let remote = conn
        .stream
        .peer_addr()
        .map_or_else(|_| "an unknown address".to_string(), |a| a.to_string());
    conn.stage = Stage::Evicted;
    // Wakes the reader, which then ends and removes the entry.
    let _ = conn.stream.shutdown(Shutdown::Both);
    bump(&shared.counters.rejected_connections);
    inbound.warn_closed_for_limit(format!(
        "node {}: closing Raft connection from {remote}: no handshake yet, and {} connections \
         are open; making room for a new one",
        shared.config.id, shared.config.max_inbound
    ));
    true
}

/// The reader thread of one inbound connection. Dropping it removes the
/// connection from the registry, also if the inbox panicked.
struct Reader {
    conn_id: u64,
    remote: String,
    shared: Arc<Shared>,
    /// The peer, once the handshake named it.
    node: Option<NodeId>,
    /// The connection went to the [`Adopt`].
    handed_over: bool,
}

impl Reader {
    fn run(mut self, stream: TcpStream, inbox: Inbox) {
        let id = self.shared.config.id;
        match self.serve(stream, &inbox) {
            Ok(()) if self.handed_over => {}
            Ok(()) => debug!(
                "node {id}: Raft connection from {} closed by the peer",
                self.describe()
            ),
            Err(e) if self.shared.stopping() || self.evicted() => {
                debug!(
                    "node {id}: Raft connection from {} ended: {e}",
                    self.describe()
                );
            }
            Err(e) => {
                let protocol_violation = match &e {
                    Error::Protocol(_) => true,
                    Error::Io { source, .. } => {
                        self.node.is_none() && source.kind() == io::ErrorKind::TimedOut
                    }
                    _ => false,
                };
                if protocol_violation {
                    bump(&self.shared.counters.rejected_connections);
                    warn!(
                        "node {id}: closing Raft connection from {}: {e}",
                        self.describe()
                    );
                } else {
                    debug!(
                        "node {id}: Raft connection from {} ended: {e}",
                        self.describe()
                    );
                }
            }
        }
    }

    /// Whether the listener closed this connection to make room (and
    /// already counted and logged that).
    fn evicted(&self) -> bool {
        lock(&self.shared.inbound)
            .conns
            .get(&self.conn_id)
            .is_some_and(|c| c.stage == Stage::Evicted)
    }

    fn describe(&self) -> String {
        match self.node {
            Some(node) => format!("node {node} ({})", self.remote),
            None => self.remote.clone(),
        }
    }

    fn serve(&mut self, stream: TcpStream, inbox: &Inbox) -> Result<()> {
        let config = &self.shared.config;
        // Also after a hand-over: a member that vanishes is noticed and its
        // connection closed, rather than kept until it dials again.
        if let Err(e) = DeadPeerCheck::PEERS.apply(&stream) {
            debug!(
                "node {}: Raft connection from {}: cannot set keepalive options: {e}",
                config.id, self.remote
            );
        }
        // Wake often enough to notice the handshake deadline in time.
        stream
            .set_read_timeout(Some(READ_POLL.min(config.handshake_timeout)))
            .map_err(|e| Error::io("configuring a Raft connection", e))?;
        let retired = Arc::new(AtomicBool::new(false));
        let mut input = BufReader::with_capacity(
            IO_BUFFER,
            PatientReader {
                stream,
                shared: Arc::clone(&self.shared),
                deadline: Some(Instant::now() + config.handshake_timeout),
                retired: Arc::clone(&retired),
            },
        );

        let Some(body) = read_frame(&mut input, HELLO_MAX.min(config.max_frame))? else {
            return Ok(());
        };
        let hello: Hello = frame::decode(&body).map_err(|e| match e {
            Error::Protocol(reason) => Error::Protocol(format!("bad handshake: {reason}")),
            other => other,
        })?;
        check_hello(&hello, config)?;
        let from = hello.node;
        input.get_mut().deadline = None;
        input
            .get_ref()
            .stream
            .set_read_timeout(Some(READ_POLL))
            .map_err(|e| Error::io("configuring a Raft connection", e))?;
        let previous = {
            let mut inbound = lock(&self.shared.inbound);
            // The listener may have closed the connection to make room
            // while the handshake was on its way; the member dials again.
            match inbound.conns.get_mut(&self.conn_id) {
                Some(conn) if conn.stage == Stage::Handshake => conn.stage = Stage::Member,
                _ => {
                    return Err(Error::io(
                        "completing a Raft handshake",
                        io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "closed to make room for a newer connection",
                        ),
                    ));
                }
            }
            inbound
                .current
                .insert(from, (self.conn_id, Arc::clone(&retired)))
        };
        self.node = Some(from);
        if let Some((_, previous)) = previous {
            previous.store(true, Ordering::SeqCst);
        }
        debug!(
            "node {}: accepted Raft connection from {}",
            config.id,
            self.describe()
        );
        if let Some(adopt) = self.shared.adopt.get() {
            let leftover = input.buffer().to_vec();
            let stream = input.into_inner().stream;
            debug!(
                "node {}: handing the connection from {} to the event loop",
                config.id,
                self.describe()
            );
            adopt(Handover {
                node: from,
                order: self.conn_id,
                stream,
                leftover,
                max_frame: config.max_frame,
            });
            self.handed_over = true;
            return Ok(());
        }

        while let Some(body) = read_frame(&mut input, config.max_frame)? {
            let msg: Message = frame::decode(&body)?;
            bump(&self.shared.counters.received);
            inbox(from, msg);
        }
        Ok(())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut inbound = lock(&self.shared.inbound);
        inbound.conns.remove(&self.conn_id);
        if let Some(node) = self.node
            && inbound
                .current
                .get(&node)
                .is_some_and(|(c, _)| *c == self.conn_id)
        {
            inbound.current.remove(&node);
        }
    }
}

fn check_hello(hello: &Hello, config: &TcpConfig) -> Result<()> {
    if hello.protocol != PROTOCOL {
        return Err(Error::Protocol(format!(
            "peer speaks {:?}, this node speaks {PROTOCOL:?}",
            hello.protocol
        )));
    }
    if hello.cluster != config.cluster {
        return Err(Error::Protocol(format!(
            "peer belongs to another cluster (its cluster is {:?}, ours is {:?})",
            hello.cluster, config.cluster
        )));
    }
    if hello.node == config.id {
        return Err(Error::Protocol(format!(
            "peer claims to be node {}, which is this node",
            hello.node
        )));
    }
    if !config.peers.contains_key(&hello.node) {
        return Err(Error::Protocol(format!(
            "peer claims to be node {}, which is not a member of this cluster",
            hello.node
        )));
    }
    Ok(())
}

/// Reads from a socket with a short read timeout, retrying timeouts until the
/// handshake deadline passes, the transport stops or the connection is
/// retired. Timeouts never surface mid-frame otherwise, so framing stays in
/// sync on slow links.
struct PatientReader {
    stream: TcpStream,
    shared: Arc<Shared>,
    deadline: Option<Instant>,
    retired: Arc<AtomicBool>,
}

impl Read for PatientReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.shared.stopping() {
                        return Err(io::Error::other("the transport is shutting down"));
                    }
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no handshake within the deadline",
                        ));
                    }
                    if self.retired.load(Ordering::SeqCst) {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "idle, and replaced by a newer connection from the same node",
                        ));
                    }
                }
                other => return other,
            }
        }
    }
}

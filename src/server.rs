//! The server: one Raft node with its storage, transport and key-value state
//! machine, driven by a single event-loop thread.
//!
//! Threads:
//! - the **event loop** owns the [`Node`], the [`KvStateMachine`] and the
//!   client port. It waits in one `epoll_wait` (see the `clients` module)
//!   for client requests, peer messages, its other inputs (finished syncs,
//!   shutdown) or the next tick, reads every client and peer socket that is
//!   ready and handles every input that is waiting, then runs the Raft
//!   driving loop once: send the node's messages, start a log sync if the
//!   log changed and none is running, apply committed entries and answer the
//!   clients whose requests completed. A leader never waits for the disk,
//!   and a follower waits only when it has no input waiting; every change
//!   made while one sync runs is covered by the next (group commit);
//! - the **log syncer** runs the sync jobs (`fdatasync`) the loop hands it
//!   and reports back to the event loop as an input;
//! - the **transport** (see [`crate::network`]) accepts peer connections,
//!   checks their handshake and hands each one to the loop (see the `peers`
//!   module; a transport without sockets delivers into the loop's channel),
//!   and sends on its own writer threads.
//!
//! Inputs from other threads go into the loop's channel and ring an
//! `eventfd` only when the loop sleeps. Client requests and peer messages
//! need no other thread: the loop reads them and writes each answer to the
//! client's socket itself, without blocking. (An earlier design read
//! clients on a thread of their own; handing requests across cost a wake-up
//! per batch and, measured on a 2-core machine, about 15% of the read
//! throughput. Peer messages went through a reader thread per connection
//! until session 5; reading them in the loop gave 64-client gets about 9%
//! and took about 10% off the single-client put's median.)
//!
//! Invariants: a client hears `Done` for a write only after its entry was
//! committed and applied; a read is served only when the Raft core released
//! it (a quorum confirmed leadership after the read arrived) and the state
//! machine has applied up to the read's index.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::kv::KvStateMachine;
use crate::kv::protocol::{Command, NodeStatus, Outcome, Query, Request, Response};
use crate::network::frame::encode;
use crate::network::{Adopt, Handover, Inbox, Transport};
use crate::raft::{self, Message, Node};
use crate::storage::{KvStorage, LogStorage, StateStorage, SyncJob};
use crate::timing::TimingConfig;
use crate::{Error, LogIndex, NodeId, Result, Term, kv};

/// The answer to a write whose entry a new leader cut from this node's
/// log before it committed.
const UNKNOWN_AFTER_CUT: &str =
    "leadership changed before the write committed here; another node may still commit it";

/// The state machine starts a background flush of its storage after at
/// least this many applied entries (and flushes in full at shutdown); after
/// a crash the log is replayed from the last completed flush.
const FLUSH_EVERY: u64 = 50_000;
/// ... and once the entries applied since the last flush hold at least this
/// many times the bytes the flush writes. A flush rewrites the whole store,
/// so this keeps its cost at most half a byte written per byte logged, and a
/// restart replays at most this many store sizes of log.
const FLUSH_LOG_RATIO: u64 = 2;
/// Bytes counted for an applied entry besides its data (its log record).
const ENTRY_OVERHEAD: u64 = 24;
/// Default of [`ServerBuilder::compaction`]: entries kept in the log behind
/// the state machine's last flush, so that a follower that fell a little
/// behind catches up from the log rather than with a whole snapshot.
pub const DEFAULT_COMPACT_KEEP: u64 = 10_000;
/// Most inputs handled before the loop runs Raft's ready cycle once.
const MAX_INPUTS_PER_BATCH: usize = 4096;

/// Default of [`ServerBuilder::client_frame_timeout`].
pub const DEFAULT_CLIENT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// The address of a node's client port given its Raft address: port + 1000.
pub fn default_client_addr(raft_addr: SocketAddr) -> Result<SocketAddr> {
    let port = raft_addr.port().checked_add(1000).ok_or_else(|| {
        Error::Config(format!(
            "Raft port {} leaves no room for the client port (Raft port + 1000)",
            raft_addr.port()
        ))
    })?;
    Ok(SocketAddr::new(raft_addr.ip(), port))
}

pub(crate) mod clients;
mod peers;

use clients::{ClientReader, Replies, Reply, Waker};
pub use clients::{DEFAULT_MAX_CLIENT_CONNECTIONS, DEFAULT_MAX_CLIENT_PARTIAL_BYTES};

enum Input {
    Peer(NodeId, Message),
    /// An inbound peer connection the transport hands over (see
    /// [`Adopt`]).
    Adopt(Handover),
    /// The log sync the loop started has finished.
    Synced(Result<()>),
    /// A snapshot of the store through this index, encoded for followers
    /// off the loop.
    SnapshotMade(LogIndex, Result<Vec<u8>>),
    Shutdown,
}

/// Hands inputs to the event loop: its channel, plus the waker that rouses
/// the loop when it sleeps in [`ClientReader::poll`].
#[derive(Clone)]
struct InputSender {
    tx: Sender<Input>,
    waker: Arc<Waker>,
}

impl InputSender {
    /// Returns false if the loop is gone.
    fn send(&self, input: Input) -> bool {
        let sent = self.tx.send(input).is_ok();
        self.waker.notify();
        sent
    }
}

/// Entry point for building a server; see [`Server::builder`].
pub struct Server;

impl Server {
    /// Starts building node `id` of the cluster whose members' Raft
    /// addresses are `cluster` (node `i` is `cluster[i - 1]`).
    pub fn builder(id: NodeId, cluster: Vec<SocketAddr>) -> ServerBuilder {
        ServerBuilder {
            id,
            cluster,
            timing: TimingConfig::default(),
            client_addr: None,
            log: None,
            state: None,
            kv: None,
            transport: None,
            keep: Vec::new(),
            seed: None,
            client_frame_timeout: DEFAULT_CLIENT_FRAME_TIMEOUT,
            max_client_connections: DEFAULT_MAX_CLIENT_CONNECTIONS,
            max_client_partial_bytes: DEFAULT_MAX_CLIENT_PARTIAL_BYTES,
            flush_every: FLUSH_EVERY,
            compact_keep: DEFAULT_COMPACT_KEEP,
        }
    }
}

/// Configures and starts a server. Storage and transport are chosen by the
/// caller: file backends and TCP for a real node, memory backends and an
/// in-memory network for tests.
pub struct ServerBuilder {
    id: NodeId,
    cluster: Vec<SocketAddr>,
    timing: TimingConfig,
    client_addr: Option<SocketAddr>,
    log: Option<Box<dyn LogStorage>>,
    state: Option<Box<dyn StateStorage>>,
    kv: Option<Box<dyn KvStorage>>,
    transport: Option<Box<dyn Transport>>,
    keep: Vec<Box<dyn Send>>,
    seed: Option<u64>,
    client_frame_timeout: Duration,
    max_client_connections: usize,
    max_client_partial_bytes: usize,
    flush_every: u64,
    compact_keep: u64,
}

impl ServerBuilder {
    /// When the state machine is flushed and the log compacted. The store
    /// is flushed (in the background) once at least `flush_every` entries
    /// (default 50 000), holding at least twice the bytes of the store,
    /// were applied since the last flush; once a flush is durable, the log
    /// discards its entries except the last `keep` (default
    /// [`DEFAULT_COMPACT_KEEP`]) before the flushed index. A follower that
    /// needs discarded entries is sent a snapshot of the store instead.
    pub fn compaction(mut self, flush_every: u64, keep: u64) -> Self {
        self.flush_every = flush_every.max(1);
        self.compact_keep = keep;
        self
    }

    /// Timing of the node (default: the fast preset).
    pub fn timing(mut self, timing: TimingConfig) -> Self {
        self.timing = timing;
        self
    }

    /// The address of the client port (default: Raft port + 1000).
    pub fn client_addr(mut self, addr: SocketAddr) -> Self {
        self.client_addr = Some(addr);
        self
    }

    /// The Raft log, term/vote store and key-value store.
    pub fn storage(
        mut self,
        log: impl LogStorage + 'static,
        state: impl StateStorage + 'static,
        kv: impl KvStorage + 'static,
    ) -> Self {
        self.log = Some(Box::new(log));
        self.state = Some(Box::new(state));
        self.kv = Some(Box::new(kv));
        self
    }

    /// The transport to the other members.
    pub fn transport(mut self, transport: impl Transport + 'static) -> Self {
        self.transport = Some(Box::new(transport));
        self
    }

    /// Keeps `value` alive for as long as the server runs (for example the
    /// lock on the data directory).
    pub fn keep_alive(mut self, value: impl Send + 'static) -> Self {
        self.keep.push(Box::new(value));
        self
    }

    /// How long a client connection may hold part of a request before the
    /// node closes it (default 30 s): a client that stalls mid-request does
    /// not keep a connection slot forever.
    pub fn client_frame_timeout(mut self, timeout: Duration) -> Self {
        self.client_frame_timeout = timeout;
        self
    }

    /// Most client connections served at once (default
    /// [`DEFAULT_MAX_CLIENT_CONNECTIONS`], at least 1). At the limit a new
    /// connection takes the place of the one idle the longest, whose client
    /// reconnects when it next sends; only if every connection has a
    /// request in progress is the new one closed.
    pub fn max_client_connections(mut self, max: usize) -> Self {
        self.max_client_connections = max.max(1);
        self
    }

    /// Most bytes held across all client connections in requests still
    /// arriving (default [`DEFAULT_MAX_CLIENT_PARTIAL_BYTES`]). When a read
    /// takes the total over it, the connections that have held part of a
    /// request longest are closed until it is back under; a connection
    /// with a request in progress is not.
    pub fn max_client_partial_bytes(mut self, max: usize) -> Self {
        self.max_client_partial_bytes = max;
        self
    }

    /// Seed of the node's random election timeouts (default: from the clock).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates the configuration, binds the client port, starts the
    /// transport and the event loop.
    pub fn start(self) -> Result<ServerHandle> {
        let ServerBuilder {
            id,
            cluster,
            timing,
            client_addr,
            log,
            state,
            kv,
            transport,
            keep,
            seed,
            client_frame_timeout,
            max_client_connections,
            max_client_partial_bytes,
            flush_every,
            compact_keep,
        } = self;
        timing.validate()?;
        if id == 0 || id as usize > cluster.len() {
            return Err(Error::Config(format!(
                "node id {id} is not in the cluster of {} members (ids are 1..={})",
                cluster.len(),
                cluster.len()
            )));
        }
        let raft_addr = cluster[id as usize - 1];
        let client_addr = match client_addr {
            Some(a) => a,
            None => default_client_addr(raft_addr)?,
        };
        let missing = |what: &str| Error::Config(format!("server built without {what}"));
        let mut log = log.ok_or_else(|| missing("a log storage"))?;
        let state = state.ok_or_else(|| missing("a state storage"))?;
        let kv = kv.ok_or_else(|| missing("a key-value storage"))?;
        let mut transport = transport.ok_or_else(|| missing("a transport"))?;

        let machine = KvStateMachine::new(kv)?;
        if let Some((index, term)) = machine.installed() {
            raft::align_log(&mut log, index, term)?;
        }
        let peers: Vec<NodeId> = (1..=cluster.len() as NodeId).collect();
        let mut config = raft::Config::new(id, peers).with_timing(&timing);
        config.seed = seed.unwrap_or_else(clock_seed);
        config.applied = machine.applied_index();
        let node = Node::new(config, log, state)?;

        let listener = TcpListener::bind(client_addr)
            .map_err(|e| Error::io(format!("binding the client port {client_addr}"), e))?;
        let client_addr = listener.local_addr()?;

        let (reader, inbox_waker) = ClientReader::new(
            listener,
            client_frame_timeout,
            max_client_connections,
            max_client_partial_bytes,
        )?;
        let (tx, rx) = mpsc::channel::<Input>();
        let tx = InputSender {
            tx,
            waker: inbox_waker,
        };
        let inbox_tx = tx.clone();
        let inbox: Inbox = Arc::new(move |from, msg| {
            inbox_tx.send(Input::Peer(from, msg));
        });
        let adopt_tx = tx.clone();
        let adopt: Adopt = Arc::new(move |handover| {
            adopt_tx.send(Input::Adopt(handover));
        });
        transport.start_adopting(inbox, adopt)?;

        let status = Arc::new(Mutex::new(NodeStatus {
            id,
            role: "follower".into(),
            term: 0,
            leader: None,
            commit_index: 0,
            applied_index: machine.applied_index(),
        }));
        let (sync_tx, sync_rx) = mpsc::channel::<SyncJob>();
        let synced_tx = tx.clone();
        let syncer = thread::Builder::new()
            .name(format!("log-sync-{id}"))
            .spawn(move || {
                for job in sync_rx {
                    if !synced_tx.send(Input::Synced(job.run())) {
                        break;
                    }
                }
            });
        if let Err(e) = syncer {
            return Err(Error::io("spawning the log syncer", e));
        }

        let event_loop = EventLoop {
            node,
            sync_jobs: sync_tx,
            stash: None,
            machine,
            transport,
            inputs: rx,
            reader,
            client_batch: Vec::new(),
            peer_batch: Vec::new(),
            tick: timing.tick(),
            pending_writes: BTreeMap::new(),
            pending_reads: HashMap::new(),
            released_reads: Vec::new(),
            replies: Replies::batched(),
            next_read_id: 1,
            status: status.clone(),
            unflushed: 0,
            unflushed_bytes: 0,
            flush_every,
            compact_keep,
            inputs_tx: tx.clone(),
            snapshot_running: false,
        };
        let spawned = thread::Builder::new()
            .name(format!("raft-loop-{id}"))
            .spawn(move || {
                let result = event_loop.run();
                drop(keep);
                result
            });
        let loop_thread = match spawned {
            Ok(t) => t,
            Err(e) => return Err(Error::io("spawning the event loop", e)),
        };

        log::info!("node {id} serving Raft on {raft_addr}, clients on {client_addr}");
        Ok(ServerHandle {
            id,
            raft_addr,
            client_addr,
            tx,
            status,
            loop_thread: Some(loop_thread),
        })
    }
}

fn clock_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A running server.
pub struct ServerHandle {
    id: NodeId,
    raft_addr: SocketAddr,
    client_addr: SocketAddr,
    tx: InputSender,
    status: Arc<Mutex<NodeStatus>>,
    loop_thread: Option<JoinHandle<Result<()>>>,
}

/// Asks a server to shut down; cheap to clone and usable from a signal
/// handler thread.
#[derive(Clone)]
pub struct ShutdownTrigger {
    tx: InputSender,
}

impl ShutdownTrigger {
    /// Asks the server to stop. It finishes the batch it is working on,
    /// syncs, and exits.
    pub fn trigger(&self) {
        self.tx.send(Input::Shutdown);
    }
}

impl ServerHandle {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The Raft address.
    pub fn raft_addr(&self) -> SocketAddr {
        self.raft_addr
    }

    /// The address the client port listens on.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The node's status as of its last loop iteration.
    pub fn status(&self) -> NodeStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A handle that can stop the server from another thread.
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger {
            tx: self.tx.clone(),
        }
    }

    /// Asks the server to stop (see [`ShutdownTrigger::trigger`]).
    pub fn shutdown(&self) {
        self.tx.send(Input::Shutdown);
    }

    /// Waits until the server has stopped; returns the error that stopped
    /// it, if any.
    pub fn join(mut self) -> Result<()> {
        self.join_threads()
    }

    fn join_threads(&mut self) -> Result<()> {
        match self.loop_thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(Error::Failed("the event loop panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.loop_thread.is_some() {
            self.shutdown();
            let _ = self.join_threads();
        }
    }
}

/// A write waiting for its entry to apply: the term it was proposed in and
/// where to answer.
struct PendingWrite {
    term: Term,
    reply: Reply,
}

struct EventLoop<L: LogStorage, S: StateStorage> {
    node: Node<L, S>,
    /// Sync jobs for the log syncer thread.
    sync_jobs: Sender<SyncJob>,
    /// An input taken from the channel but not yet handled.
    stash: Option<Input>,
    machine: KvStateMachine,
    transport: Box<dyn Transport>,
    inputs: Receiver<Input>,
    /// Reads the client port; the loop waits in its `poll`.
    reader: ClientReader,
    /// Requests read by the last poll, each with where to answer it.
    client_batch: Vec<(Request, Reply)>,
    /// Reused buffer for the messages read from adopted peer connections.
    peer_batch: Vec<(NodeId, Message)>,
    tick: Duration,
    /// Writes proposed by this node, by log index.
    pending_writes: BTreeMap<LogIndex, PendingWrite>,
    /// Reads handed to the core, not yet released.
    pending_reads: HashMap<u64, (Query, Reply)>,
    /// Reads released by the core, waiting for the state machine to reach
    /// their index.
    released_reads: Vec<(LogIndex, Query, Reply)>,
    /// Writes answers to clients.
    replies: Replies,
    next_read_id: u64,
    status: Arc<Mutex<NodeStatus>>,
    /// Entries applied since the last flush, and their bytes.
    unflushed: u64,
    unflushed_bytes: u64,
    /// See [`ServerBuilder::compaction`].
    flush_every: u64,
    compact_keep: u64,
    /// Hands inputs to this loop (for the snapshot encoder).
    inputs_tx: InputSender,
    /// A snapshot for followers is being encoded.
    snapshot_running: bool,
}

impl<L: LogStorage, S: StateStorage> EventLoop<L, S> {
    fn run(mut self) -> Result<()> {
        let result = self.serve();
        if let Err(e) = &result {
            log::error!("node {} stopping on error: {e}", self.node.config().id);
        }
        let closing = self.close();
        self.transport.shutdown();
        result.and(closing)
    }

    fn serve(&mut self) -> Result<()> {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let now = Instant::now();
            let mut first = match self.stash.take() {
                Some(input) => Some(input),
                None => match self.inputs.try_recv() {
                    Ok(input) => Some(input),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                },
            };
            // Wait for clients, inputs or the tick only when nothing is
            // queued; otherwise just pick up what the client sockets hold.
            let timeout = if first.is_some() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(now)
            };
            let mut batch = std::mem::take(&mut self.client_batch);
            let mut peer_msgs = std::mem::take(&mut self.peer_batch);
            let mut early = None;
            let inputs = &self.inputs;
            let polled = self.reader.poll(timeout, &mut batch, &mut peer_msgs, || {
                early = inputs.try_recv().ok();
                early.is_some()
            });
            let served = polled
                .and_then(|()| {
                    peer_msgs
                        .drain(..)
                        .try_for_each(|(from, msg)| self.node.step(from, msg))
                })
                .and_then(|()| {
                    batch
                        .drain(..)
                        .try_for_each(|(request, reply)| self.client_request(request, reply))
                });
            self.client_batch = batch;
            self.peer_batch = peer_msgs;
            if first.is_none() {
                first = early.or_else(|| self.inputs.try_recv().ok());
            }
            if let Err(e) = served {
                // Keep the input taken from the channel: it may be the
                // report of a sync in flight, which `close` waits for.
                self.stash = first;
                return Err(e);
            }
            let mut handled = 0;
            let mut input = first;
            loop {
                if let Some(i) = input.take() {
                    if !self.handle(i)? {
                        return Ok(());
                    }
                    handled += 1;
                }
                if handled >= MAX_INPUTS_PER_BATCH {
                    break;
                }
                match self.inputs.try_recv() {
                    Ok(i) => input = Some(i),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.node.tick()?;
                next_tick += self.tick;
                // After a long stall (a paused process), do not replay every
                // missed tick at once.
                if next_tick + self.tick * 4 < now {
                    next_tick = now + self.tick;
                }
            }
            self.drive()?;
        }
    }

    /// Handles one input; returns false on shutdown.
    fn handle(&mut self, input: Input) -> Result<bool> {
        match input {
            Input::Peer(from, msg) => self.node.step(from, msg)?,
            Input::Adopt(handover) => self.reader.adopt_peer(handover),
            Input::Synced(result) => self.node.finish_sync(result)?,
            Input::SnapshotMade(index, made) => self.snapshot_made(index, made)?,
            Input::Shutdown => return Ok(false),
        }
        Ok(true)
    }

    fn client_request(&mut self, request: Request, reply: Reply) -> Result<()> {
        match request {
            Request::Status => {
                self.replies
                    .send(&reply, Response::Status(self.node_status()));
            }
            Request::Write { client_id, seq, op } => {
                if let Err(e) = kv::validate_op(&op) {
                    self.replies
                        .send(&reply, Response::Outcome(Outcome::Rejected(e.to_string())));
                    return Ok(());
                }
                let data = encode(&Command { client_id, seq, op });
                match self.node.propose(data) {
                    Ok(index) => {
                        let term = self.node.status().term;
                        if let Some(old) = self
                            .pending_writes
                            .insert(index, PendingWrite { term, reply })
                        {
                            // Cut from this log, but possibly still held by
                            // enough others to commit: see
                            // `answer_cut_writes`.
                            self.replies
                                .send(&old.reply, Response::Unknown(UNKNOWN_AFTER_CUT.into()));
                        }
                    }
                    Err(Error::NotLeader { leader }) => {
                        self.replies.send(&reply, Response::NotLeader { leader });
                    }
                    Err(e) => return Err(e),
                }
            }
            Request::Read { query } => {
                if let Err(e) = kv::validate_query(&query) {
                    self.replies
                        .send(&reply, Response::Outcome(Outcome::Rejected(e.to_string())));
                    return Ok(());
                }
                let id = self.next_read_id;
                self.next_read_id += 1;
                match self.node.read_index(id) {
                    Ok(()) => {
                        self.pending_reads.insert(id, (query, reply));
                    }
                    Err(Error::NotLeader { leader }) => {
                        self.replies.send(&reply, Response::NotLeader { leader });
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Runs the Raft ready cycle until the node has nothing more to hand out.
    fn drive(&mut self) -> Result<()> {
        loop {
            let rd = self.node.ready();
            for (to, msg) in rd.messages {
                self.transport.send(to, msg);
            }
            self.snapshots(rd.snapshot_wanted, rd.snapshot)?;
            // Also with a sync in flight: `begin_sync` then returns any
            // storage error the node met (which `needs_sync` reports), or
            // nothing.
            if rd.needs_sync
                && let Some(job) = self.node.begin_sync()?
            {
                // A leader hands the sync to the syncer and goes on
                // proposing and replicating while the disk works. A follower
                // does the same if inputs are waiting; otherwise it has
                // nothing to do meanwhile and syncs right here, saving two
                // thread hand-offs on the path of every write's latency.
                // (Measured on the 2-core VM: every node always handing off
                // cost the single-client put about 13% of its rate; every
                // node syncing in place when idle cost the 64-client put
                // about 18%.)
                if self.node.role() == raft::Role::Leader || self.input_waiting() {
                    if self.sync_jobs.send(job).is_err() {
                        // Ends the sync in the node and returns the error.
                        self.node
                            .finish_sync(Err(Error::Failed("the log syncer stopped".into())))?;
                    }
                } else {
                    let result = job.run();
                    self.node.finish_sync(result)?;
                }
            }
            for entry in &rd.committed {
                let outcome = self.machine.apply(entry)?;
                self.unflushed += 1;
                self.unflushed_bytes += entry.data.len() as u64 + ENTRY_OVERHEAD;
                if let Some(pending) = self.pending_writes.remove(&entry.index) {
                    let response = if pending.term == entry.term {
                        Response::Outcome(outcome.unwrap_or(Outcome::Done))
                    } else {
                        Response::Failed("leadership changed before the write committed".into())
                    };
                    self.replies.send(&pending.reply, response);
                }
            }
            for read in rd.reads {
                if let Some((query, reply)) = self.pending_reads.remove(&read.id) {
                    self.released_reads.push((read.index, query, reply));
                }
            }
            let leader = self.node.status().leader;
            for id in rd.failed_reads {
                if let Some((_, reply)) = self.pending_reads.remove(&id) {
                    self.replies.send(&reply, Response::NotLeader { leader });
                }
            }
            if !self.node.has_ready() {
                break;
            }
        }
        self.serve_reads()?;
        self.answer_cut_writes();
        self.replies.flush();
        if self.unflushed >= self.flush_every
            && self.unflushed_bytes >= FLUSH_LOG_RATIO * self.machine.snapshot_bytes()
        {
            // A flush that did not start (the previous one still runs)
            // keeps the counts, so the next round tries again.
            if self.machine.flush_background()? {
                self.unflushed = 0;
                self.unflushed_bytes = 0;
            }
        }
        self.compact()?;
        self.publish_status();
        Ok(())
    }

    /// Hands a snapshot encoded off the loop to the node.
    fn snapshot_made(&mut self, index: LogIndex, made: Result<Vec<u8>>) -> Result<()> {
        self.snapshot_running = false;
        let id = self.node.config().id;
        let data = match made {
            Ok(data) => data,
            Err(e) => {
                // The next ready cycle asks again.
                log::warn!("node {id}: making a snapshot for a follower failed: {e}");
                return Ok(());
            }
        };
        let bytes = data.len();
        match self.node.offer_snapshot(index, data) {
            Ok(()) => {
                log::info!(
                    "node {id}: sending a snapshot through {index} ({bytes} bytes) to a follower \
                     behind the log"
                );
                Ok(())
            }
            // The log moved past it meanwhile: the next cycle asks again.
            Err(Error::InvalidInput(why)) => {
                log::debug!("node {id}: dropping the snapshot through {index}: {why}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Discards the log's entries that the store holds durably, but for
    /// the last `compact_keep` of them (not while a snapshot for
    /// followers is being made: it must still be of use when it is done).
    fn compact(&mut self) -> Result<()> {
        if self.snapshot_running {
            return Ok(());
        }
        let target = self
            .machine
            .durable_index()
            .saturating_sub(self.compact_keep);
        if target >= self.node.log_storage().first_index() {
            log::debug!(
                "node {}: discarding log entries through {target}",
                self.node.config().id
            );
            self.node.compact(target)?;
        }
        Ok(())
    }

    /// Starts a snapshot for the node's followers, or installs one from the
    /// leader, as the ready cycle asks. A snapshot for followers is encoded
    /// on a thread (it takes time proportional to the store), and handed
    /// to the node when it arrives as [`Input::SnapshotMade`].
    fn snapshots(&mut self, wanted: bool, received: Option<raft::Snapshot>) -> Result<()> {
        if wanted && !self.snapshot_running {
            let (index, job) = self.machine.snapshot_job()?;
            let tx = self.inputs_tx.clone();
            let spawned = thread::Builder::new()
                .name(format!("kv-snapshot-{}", self.node.config().id))
                .spawn(move || {
                    // A panic must still report back, or no snapshot (and
                    // no compaction) would ever follow.
                    let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                        .unwrap_or_else(|_| {
                            Err(Error::Failed("the snapshot encoder panicked".into()))
                        });
                    tx.send(Input::SnapshotMade(index, made));
                });
            if let Err(e) = spawned {
                return Err(Error::io("spawning the snapshot encoder", e));
            }
            self.snapshot_running = true;
        }
        if let Some(snap) = received {
            let index = snap.index;
            match self.machine.install(&snap.data, index, snap.term) {
                Ok(()) => {}
                // Refused before anything changed: a leader's snapshot is
                // never malformed, so this came from a broken or forged
                // peer. Stopping the node for it let one frame stop it.
                Err(e @ (Error::Corrupt { .. } | Error::InvalidInput(_))) => {
                    log::warn!(
                        "node {}: refusing a snapshot through {index}: {e}",
                        self.node.config().id
                    );
                    self.node.snapshot_rejected();
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            log::info!(
                "node {}: installed a snapshot through {index} ({} bytes) from the leader",
                self.node.config().id,
                snap.data.len()
            );
            self.node.snapshot_installed(snap.index, snap.term)?;
            // Writes this node proposed at or below the snapshot may or may
            // not be in it.
            let rest = self.pending_writes.split_off(&(index + 1));
            for (_, pending) in std::mem::replace(&mut self.pending_writes, rest) {
                self.replies.send(
                    &pending.reply,
                    Response::Unknown(
                        "the node lost leadership and caught up from a snapshot; the write \
                         may or may not have been applied"
                            .into(),
                    ),
                );
            }
            self.unflushed = 0;
            self.unflushed_bytes = 0;
        }
        Ok(())
    }

    fn serve_reads(&mut self) -> Result<()> {
        if self.released_reads.is_empty() {
            return Ok(());
        }
        let applied = self.machine.applied_index();
        let mut i = 0;
        while i < self.released_reads.len() {
            if self.released_reads[i].0 <= applied {
                let (_, query, reply) = self.released_reads.swap_remove(i);
                self.replies
                    .send(&reply, Response::Outcome(self.machine.query(&query)?));
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Answers the proposals a new leader's entries cut from this log.
    ///
    /// A cut does not make a proposal dead: it dies only when another entry
    /// commits at its index. Other nodes may hold it, and in a cluster of
    /// five or more enough of them can elect a leader that commits it
    /// (found by review: the proposer is cut off with one copy, a leader
    /// that never reached the rest overwrites only the proposer, and the
    /// copy's holder wins the next election). So the answer is "unknown":
    /// the client retries with the same sequence number, and its session
    /// either applies the write once or returns the first outcome.
    fn answer_cut_writes(&mut self) {
        let last = self.node.status().last_index;
        if self
            .pending_writes
            .last_key_value()
            .is_some_and(|(&i, _)| i > last)
        {
            for (_, pending) in self.pending_writes.split_off(&(last + 1)) {
                self.replies
                    .send(&pending.reply, Response::Unknown(UNKNOWN_AFTER_CUT.into()));
            }
        }
    }

    fn node_status(&self) -> NodeStatus {
        let s = self.node.status();
        NodeStatus {
            id: s.id,
            role: s.role.as_str().to_string(),
            term: s.term,
            leader: s.leader,
            commit_index: s.commit_index,
            applied_index: self.machine.applied_index(),
        }
    }

    fn publish_status(&self) {
        let status = self.node_status();
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    /// Whether an input is waiting; one taken from the channel to find out
    /// is kept in `stash` and handled first by the next batch.
    fn input_waiting(&mut self) -> bool {
        if self.stash.is_some() {
            return true;
        }
        match self.inputs.try_recv() {
            Ok(input) => {
                self.stash = Some(input);
                true
            }
            Err(_) => false,
        }
    }

    /// Waits for the sync in flight, if any, and reports it to the node.
    /// Other inputs that arrive meanwhile are dropped: the node is stopping.
    fn wait_for_sync(&mut self) -> Result<()> {
        while self.node.sync_in_flight() {
            let next = match self.stash.take() {
                Some(input) => Ok(input),
                None => self.inputs.recv(),
            };
            match next {
                Ok(Input::Synced(result)) => self.node.finish_sync(result)?,
                Ok(_) => {}
                Err(_) => return Err(Error::Failed("the log syncer stopped".into())),
            }
        }
        Ok(())
    }

    /// Makes everything durable and answers every waiting client.
    fn close(&mut self) -> Result<()> {
        let synced = self.wait_for_sync().and_then(|()| self.node.sync());
        let flushed = self.machine.flush();
        for (_, pending) in std::mem::take(&mut self.pending_writes) {
            self.replies.send(
                &pending.reply,
                Response::Unknown("the node shut down before the write committed".into()),
            );
        }
        for (_, (_, reply)) in self.pending_reads.drain() {
            self.replies
                .send(&reply, Response::Failed("the node is shutting down".into()));
        }
        for (_, _, reply) in self.released_reads.drain(..) {
            self.replies
                .send(&reply, Response::Failed("the node is shutting down".into()));
        }
        self.replies.flush();
        log::info!("node {} stopped", self.node.config().id);
        synced.and(flushed)
    }
}

//! The client port, served by the event loop itself.
//!
//! The **reader** ([`ClientReader`]) owns an `epoll` instance that watches
//! the listener, every client socket and an `eventfd` the loop's other
//! inputs ring ([`Waker::notify`]). The event loop waits in
//! [`ClientReader::poll`] rather than on its input channel: one wait covers
//! client requests, peer messages, finished syncs and the tick, and a
//! request costs no hand-over between threads. `poll` reads whatever
//! arrived and cuts it into request frames; when the loop has work queued
//! it polls without waiting, so under load the `epoll_wait` is the only
//! extra system call, shared by every request of the batch. The loop
//! answers through [`Replies`]: non-blocking sends straight to the
//! clients' sockets, those of one loop pass submitted together through
//! `io_uring` where the kernel offers it.
//!
//! Flow control: a connection has at most one unanswered request in the
//! loop. Frames a client sends ahead wait in the reader, which stops
//! reading that socket until the loop has handed the answer to [`Replies`]
//! and the socket took it in full (which rings the reader's `eventfd`, so
//! the next `poll` resumes the connection). Answers to one connection leave
//! in the order they were handed over, so they keep request order; a client
//! that pipelines without reading holds at most a couple of answers in the
//! node, and the TCP window pushes back on it.
//!
//! Memory: requests still arriving are held in their connection's buffer,
//! up to one frame each, and up to a total across connections (see
//! [`DEFAULT_MAX_CLIENT_PARTIAL_BYTES`]); past it the connections holding
//! part of a request longest are closed. A buffer gives its room back once
//! a large request has been handed on.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{self, AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::peers::{FIRST_PEER_TOKEN, PeerConns};
use crate::NodeId;
use crate::kv::protocol::{Outcome, Request, Response};
use crate::network::Handover;
use crate::network::frame::{self, decode};
use crate::network::{DeadPeerCheck, send_nonblocking};
use crate::raft::Message;
use crate::{Error, Result};

/// Largest request frame accepted on the client port: room for a cas whose
/// key and two values are all at their limits.
pub(super) const MAX_CLIENT_FRAME: usize =
    crate::kv::MAX_KEY_BYTES * 2 + crate::kv::MAX_VALUE_BYTES * 2 + 1024;
/// Default of the most client connections served at once. At the limit a
/// new connection takes the place of the one idle the longest; if every
/// connection has a request in progress, the new one is closed at once.
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 4096;
/// Default of the most bytes held across all client connections in requests
/// still arriving. Each connection may hold a request of up to
/// [`MAX_CLIENT_FRAME`] bytes (about 2 MiB), so without a total a few
/// thousand connections that each send all of a large request but its last
/// byte would hold gigabytes; this one covers a hundred such requests at
/// once.
pub const DEFAULT_MAX_CLIENT_PARTIAL_BYTES: usize = 256 << 20;
/// Most answer bytes kept for one client that does not read them; beyond it
/// the connection is closed.
const MAX_STALLED_BYTES: usize = 16 << 20;
/// Bytes read from a socket per `read` call.
pub(super) const READ_CHUNK: usize = 64 << 10;
/// Most bytes read from one connection per `poll`; the rest waits for the
/// next one (epoll is level-triggered), so one fast sender cannot hold the
/// loop while the others wait.
pub(super) const READ_BUDGET: usize = 4 * READ_CHUNK;
/// Most connections accepted per `poll`, for the same reason.
const ACCEPTS_PER_POLL: usize = 64;
/// Least time between two warnings that accepting failed.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// epoll tokens below this one are reserved.
const LISTENER_TOKEN: u64 = 0;
const WAKE_TOKEN: u64 = 1;
const INBOX_TOKEN: u64 = 2;
const FIRST_CONN_TOKEN: u64 = 3;

/// Where the event loop sends a client's answer.
pub(super) type Reply = Arc<ClientConn>;

/// A client connection as the event loop sees it.
pub(super) struct ClientConn {
    /// The connection's epoll token; distinguishes connections.
    id: u64,
    /// The connection's socket (non-blocking); the loop writes answers to it.
    stream: TcpStream,
    /// Whether a request of this connection is in the loop, unanswered.
    busy: AtomicBool,
    /// When the connection was accepted, and how long after that (in
    /// milliseconds) its last answer went out, so that a client answered
    /// after a long wait does not count as idle since its request.
    since: Instant,
    answered_ms: AtomicU64,
    /// Rung when an answer frees a connection whose next request is held
    /// back, so the loop's next `poll` resumes it.
    waker: Arc<Waker>,
}

/// An `eventfd` watched by the reader's `epoll`.
///
/// Two of them exist: one the loop rings when it frees a connection whose
/// next request the reader holds back, and the *inbox* one that the loop's
/// other inputs ring when they find the loop asleep.
pub(super) struct Waker {
    fd: OwnedFd,
    /// Set when a wake-up is wanted: the reader holds requests back for a
    /// busy connection, or (inbox) the loop is about to sleep in `poll`.
    wanted: AtomicBool,
}

impl Waker {
    fn new() -> io::Result<Waker> {
        // SAFETY: plain syscall; the returned descriptor is checked and owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Waker {
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            wanted: AtomicBool::new(false),
        })
    }

    /// Makes the next `poll` return at once (cheap to call repeatedly).
    pub(super) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. A full
        // counter (EAGAIN) means a wake-up is pending anyway.
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// Wakes the loop if it sleeps (or is about to); called after putting
    /// an input into its channel. Costs a system call only then.
    pub(super) fn notify(&self) {
        // Pairs with the fence in `ClientReader::poll`: either the loop's
        // check of the channel sees the input, or this sees `wanted`.
        atomic::fence(Ordering::SeqCst);
        if self.wanted.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }

    fn drain(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        unsafe {
            libc::read(self.fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8);
        }
    }
}

/// The epoll instance of the reader (also the floor's echo server in
/// [`crate::bench::floor`]).
pub(crate) struct Poller {
    fd: OwnedFd,
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        // SAFETY: plain syscall; the returned descriptor is checked and owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Poller {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, readable: bool) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: if readable { libc::EPOLLIN as u32 } else { 0 },
            u64: token,
        };
        // SAFETY: `event` is a live epoll_event; the kernel copies it.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, true)
    }

    fn set_readable(&self, fd: RawFd, token: u64, readable: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, readable)
    }

    pub(crate) fn remove(&self, fd: RawFd) {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
    }

    /// Waits up to `timeout_ms` for events; returns their tokens.
    pub(crate) fn wait(
        &self,
        events: &mut Vec<libc::epoll_event>,
        timeout_ms: i32,
    ) -> io::Result<()> {
        events.clear();
        let capacity = events.capacity();
        // SAFETY: the kernel writes at most `capacity` events into the
        // vector's spare capacity; we then set the length to what it wrote.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                capacity as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(err)
            };
        }
        // SAFETY: the kernel initialised the first `n` entries.
        unsafe { events.set_len(n as usize) };
        Ok(())
    }
}

/// The reader's state for one connection.
struct ReadSide {
    conn: Arc<ClientConn>,
    /// Bytes read and not yet cut into requests.
    buf: Vec<u8>,
    /// Whether the socket is registered for readability (false while the
    /// connection holds a complete request back, or after end of input).
    reading: bool,
    /// The client closed its sending side; what it sent is still served.
    eof: bool,
    /// Since when the buffer has held part of a request and no whole one.
    partial_since: Option<Instant>,
    /// When the client last sent something (or connected); see also
    /// [`ClientConn::answered_ms`].
    last_active: Instant,
}

/// Reads requests from every client connection; see the module docs.
pub(super) struct ClientReader {
    listener: TcpListener,
    poller: Poller,
    /// Rung when a held-back connection is freed.
    waker: Arc<Waker>,
    /// Rung by the loop's other inputs when the loop sleeps.
    inbox: Arc<Waker>,
    conns: HashMap<u64, ReadSide>,
    next_token: u64,
    /// Inbound peer connections the transport handed over.
    peers: PeerConns,
    /// Accepting failed (out of descriptors?); the listener is unwatched
    /// until then ([`ACCEPT_RETRY_MS`] after the failure).
    accept_paused_until: Option<Instant>,
    /// When accepting failed and said so last, and how many failures were
    /// not reported since.
    accept_warned: Option<Instant>,
    accept_failures_unreported: u64,
    /// A connection that holds part of a request for this long is closed.
    frame_timeout: Duration,
    /// Most connections served at once.
    max_conns: usize,
    /// How many connections hold part of a request.
    partial: usize,
    /// Bytes held in the connections' buffers, read and not yet handed to
    /// the loop as requests: nearly all of them parts of requests still
    /// arriving.
    buffered: usize,
    /// When `buffered` goes over this, connections holding part of a
    /// request are closed until it is back under.
    max_buffered: usize,
    last_sweep: Instant,
    events: Vec<libc::epoll_event>,
    chunk: Vec<u8>,
}

/// How often connections holding part of a request are checked against
/// the frame timeout.
const SWEEP_MS: i32 = 1000;

/// How long accepting pauses after it failed.
const ACCEPT_RETRY_MS: i32 = 100;

impl ClientReader {
    /// Sets up the reader for `listener`. Returns it and the inbox waker,
    /// which whoever hands the loop an input must [`notify`](Waker::notify).
    pub(super) fn new(
        listener: TcpListener,
        frame_timeout: Duration,
        max_conns: usize,
        max_buffered: usize,
    ) -> Result<(ClientReader, Arc<Waker>)> {
        let setup = |e| Error::io("setting up the client port", e);
        listener.set_nonblocking(true).map_err(setup)?;
        let poller = Poller::new().map_err(setup)?;
        let waker = Arc::new(Waker::new().map_err(setup)?);
        let inbox = Arc::new(Waker::new().map_err(setup)?);
        poller
            .add(listener.as_raw_fd(), LISTENER_TOKEN)
            .map_err(setup)?;
        poller
            .add(waker.fd.as_raw_fd(), WAKE_TOKEN)
            .map_err(setup)?;
        poller
            .add(inbox.fd.as_raw_fd(), INBOX_TOKEN)
            .map_err(setup)?;
        let reader = ClientReader {
            listener,
            poller,
            waker,
            inbox: inbox.clone(),
            conns: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            peers: PeerConns::new(),
            accept_paused_until: None,
            accept_warned: None,
            accept_failures_unreported: 0,
            frame_timeout,
            max_conns: max_conns.max(1),
            partial: 0,
            buffered: 0,
            max_buffered,
            last_sweep: Instant::now(),
            events: Vec::with_capacity(256),
            chunk: vec![0u8; READ_CHUNK],
        };
        Ok((reader, inbox))
    }

    /// Waits up to `timeout` for a client socket, an adopted peer
    /// connection or the inbox waker, then reads what arrived; the complete
    /// requests of free connections go to `batch`, the peers' messages to
    /// `peer_msgs`. A zero `timeout` only looks. Before sleeping, the inbox
    /// is armed and `input_waiting` asked: if it says an input is already
    /// there, the wait is skipped, so no input sent meanwhile is missed.
    pub(super) fn poll(
        &mut self,
        timeout: Duration,
        batch: &mut Vec<(Request, Reply)>,
        peer_msgs: &mut Vec<(NodeId, Message)>,
        input_waiting: impl FnOnce() -> bool,
    ) -> Result<()> {
        // Round up, so a wait shorter than a millisecond does not spin.
        let mut timeout_ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
        if self.peers.has_ready() {
            timeout_ms = 0;
        }
        if timeout_ms > 0 {
            self.inbox.wanted.store(true, Ordering::SeqCst);
            // Pairs with the fence in `Waker::notify`.
            atomic::fence(Ordering::SeqCst);
            if input_waiting() {
                timeout_ms = 0;
            }
        }
        if let Some(until) = self.accept_paused_until {
            let left = until.saturating_duration_since(Instant::now());
            timeout_ms = timeout_ms.min(left.as_nanos().div_ceil(1_000_000) as i32);
        }
        if self.partial > 0 || self.peers.has_partial() {
            timeout_ms = timeout_ms.min(SWEEP_MS);
        }
        let mut events = std::mem::take(&mut self.events);
        let waited = self.poller.wait(&mut events, timeout_ms);
        self.inbox.wanted.store(false, Ordering::SeqCst);
        if let Err(e) = waited {
            self.events = events;
            return Err(Error::io("waiting for client sockets", e));
        }
        if self
            .accept_paused_until
            .is_some_and(|until| Instant::now() >= until)
        {
            match self
                .poller
                .set_readable(self.listener.as_raw_fd(), LISTENER_TOKEN, true)
            {
                Ok(()) => self.accept_paused_until = None,
                Err(e) => {
                    // Try again later rather than at every poll.
                    log::warn!("resuming the client listener: {e}");
                    self.accept_paused_until =
                        Some(Instant::now() + Duration::from_millis(ACCEPT_RETRY_MS as u64));
                }
            }
        }
        for event in &events {
            // Copied out: the field of the packed struct may be unaligned.
            let token = event.u64;
            match token {
                LISTENER_TOKEN => self.accept(),
                WAKE_TOKEN => {
                    self.waker.drain();
                    self.waker.wanted.store(false, Ordering::SeqCst);
                    self.resume_held(batch);
                }
                INBOX_TOKEN => self.inbox.drain(),
                _ if token >= FIRST_PEER_TOKEN => self.peers.read(&self.poller, token),
                _ => self.read(token, batch),
            }
        }
        self.events = events;
        self.peers.take_ready(peer_msgs);
        if (self.partial > 0 || self.peers.has_partial())
            && self.last_sweep.elapsed().as_millis() >= SWEEP_MS as u128
        {
            self.close_stuck();
            self.peers.close_stuck(&self.poller, self.frame_timeout);
        }
        Ok(())
    }

    /// Takes over an inbound peer connection from the transport (see the
    /// `peers` module); its messages come out of the next `poll`.
    pub(super) fn adopt_peer(&mut self, handover: Handover) {
        self.peers.adopt(&self.poller, handover);
    }

    /// Accepts up to [`ACCEPTS_PER_POLL`] waiting connections.
    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_POLL {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // For example out of file descriptors: the listener
                    // stays readable, so stop watching it for a moment
                    // rather than spin (or sleep, which would delay every
                    // connected client).
                    self.warn_accept_failed(&e);
                    match self
                        .poller
                        .set_readable(self.listener.as_raw_fd(), LISTENER_TOKEN, false)
                    {
                        Ok(()) => {
                            self.accept_paused_until =
                                Some(Instant::now() + Duration::from_millis(ACCEPT_RETRY_MS as u64))
                        }
                        Err(e) => log::warn!("pausing the client listener: {e}"),
                    }
                    return;
                }
            };
            if let Err(e) = stream
                .set_nonblocking(true)
                .and_then(|()| stream.set_nodelay(true))
            {
                log::warn!("configuring a client connection: {e}");
                continue;
            }
            if self.conns.len() >= self.max_conns && !self.close_longest_idle() {
                log::warn!(
                    "{} client connections, each with a request in progress; closing a new one",
                    self.conns.len()
                );
                continue;
            }
            if let Err(e) = DeadPeerCheck::CLIENTS.apply(&stream) {
                log::debug!("setting keepalive on a client connection: {e}");
            }
            let token = self.next_token;
            self.next_token += 1;
            if let Err(e) = self.poller.add(stream.as_raw_fd(), token) {
                log::warn!("watching a client connection: {e}");
                continue;
            }
            let conn = Arc::new(ClientConn {
                id: token,
                stream,
                busy: AtomicBool::new(false),
                since: Instant::now(),
                answered_ms: AtomicU64::new(0),
                waker: self.waker.clone(),
            });
            self.conns.insert(
                token,
                ReadSide {
                    conn,
                    buf: Vec::new(),
                    reading: true,
                    eof: false,
                    partial_since: None,
                    last_active: Instant::now(),
                },
            );
        }
    }

    /// Makes room for a new connection: closes the one that has been idle
    /// the longest (no request in the loop or held back, no answer waiting
    /// to be written, nothing read or waiting to be read). Its client
    /// reconnects with its next request. Returns false if no connection is
    /// idle.
    fn close_longest_idle(&mut self) -> bool {
        let mut idle: Vec<(Instant, u64)> = self
            .conns
            .iter()
            .filter(|(_, side)| {
                side.reading
                    && !side.eof
                    && side.buf.is_empty()
                    && !side.conn.busy.load(Ordering::SeqCst)
            })
            .map(|(&token, side)| {
                let answered = side.conn.since
                    + Duration::from_millis(side.conn.answered_ms.load(Ordering::Relaxed));
                (side.last_active.max(answered), token)
            })
            .collect();
        idle.sort_unstable();
        for (last_active, token) in idle {
            // A request may have arrived that this poll has not read yet.
            let waiting = self.conns.get(&token).is_some_and(|side| {
                // Nothing (WouldBlock), end of input or a broken
                // connection: nothing to lose by closing it.
                matches!(side.conn.stream.peek(&mut [0u8; 1]), Ok(n) if n > 0)
            });
            if waiting {
                continue;
            }
            log::debug!(
                "{} client connections open; closing connection {token}, idle for {:?}, \
                 to admit a new one",
                self.conns.len(),
                last_active.elapsed()
            );
            self.close(token);
            return true;
        }
        false
    }

    /// Logs a failed accept, at most once per [`ACCEPT_WARN_EVERY`] (a
    /// node out of descriptors would otherwise log ten lines a second).
    fn warn_accept_failed(&mut self, e: &io::Error) {
        let now = Instant::now();
        if self
            .accept_warned
            .is_some_and(|at| now.duration_since(at) < ACCEPT_WARN_EVERY)
        {
            self.accept_failures_unreported += 1;
            return;
        }
        let earlier = std::mem::take(&mut self.accept_failures_unreported);
        if earlier > 0 {
            log::warn!(
                "accepting a client connection: {e} ({earlier} more failures since the last warning)"
            );
        } else {
            log::warn!("accepting a client connection: {e}");
        }
        self.accept_warned = Some(now);
    }

    /// Reads what the socket has (at most [`READ_BUDGET`] bytes) and
    /// forwards the next request if the connection is free.
    fn read(&mut self, token: u64, batch: &mut Vec<(Request, Reply)>) {
        let Some(side) = self.conns.get_mut(&token) else {
            return;
        };
        let chunk = &mut self.chunk;
        let mut failed = false;
        let mut budget = READ_BUDGET;
        loop {
            match (&side.conn.stream).read(chunk) {
                Ok(0) => {
                    side.eof = true;
                    break;
                }
                Ok(n) => {
                    side.last_active = Instant::now();
                    side.buf.extend_from_slice(&chunk[..n]);
                    self.buffered += n;
                    budget = budget.saturating_sub(n);
                    // Read on only while the socket may hold more, the
                    // budget lasts and the buffer stays small; epoll
                    // reports the rest later.
                    if n < chunk.len() || budget == 0 || side.buf.len() > MAX_CLIENT_FRAME {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("client connection {token}: {e}");
                    failed = true;
                    break;
                }
            }
        }
        if failed || !self.forward(token, batch) {
            self.close(token);
        } else {
            self.note_partial(token);
            // At most one read budget over the total before this: the
            // buffers stay bounded however many connections send.
            if self.buffered > self.max_buffered {
                self.close_partial_over_budget();
            }
            self.finish_if_done(token);
        }
    }

    /// Closes connections holding part of a request, the one holding it
    /// longest first, until the bytes held are within the total again.
    ///
    /// Longest rather than largest: a client sending a request at network
    /// speed holds it for moments, while one that stalls mid-request (as a
    /// client that wants to pin the node's memory must) holds it ever
    /// longer, whatever its size; closing the largest would close honest
    /// large requests under a flood of smaller stalled ones. The frame
    /// timeout closes the same connections in the same order, later. A
    /// connection with a request in the loop or an answer being written
    /// (it may have part of its next request buffered) is never closed; if
    /// only such connections hold bytes, the total is exceeded for a while
    /// (by at most a request each).
    fn close_partial_over_budget(&mut self) {
        while self.buffered > self.max_buffered {
            let oldest = self
                .conns
                .iter()
                .filter(|(_, side)| !side.conn.busy.load(Ordering::SeqCst))
                .filter_map(|(&token, side)| side.partial_since.map(|t| (t, token)))
                .min();
            let Some((since, token)) = oldest else {
                return;
            };
            log::warn!(
                "closing client connection {token}: it holds part of a request, for {:?}, \
                 and requests still arriving hold {} bytes, over the limit of {}",
                since.elapsed(),
                self.buffered,
                self.max_buffered
            );
            self.close(token);
        }
    }

    /// Starts or stops the frame timeout of a connection, after its buffer
    /// changed.
    fn note_partial(&mut self, token: u64) {
        let Some(side) = self.conns.get_mut(&token) else {
            return;
        };
        let partial = !side.buf.is_empty() && matches!(next_frame(&side.buf), Ok(None));
        match (partial, side.partial_since.is_some()) {
            (true, false) => {
                side.partial_since = Some(Instant::now());
                self.partial += 1;
            }
            (false, true) => {
                side.partial_since = None;
                self.partial -= 1;
            }
            _ => {}
        }
    }

    /// Closes connections that have held part of a request for longer than
    /// the frame timeout (a client that stalled or never finishes).
    fn close_stuck(&mut self) {
        self.last_sweep = Instant::now();
        let stuck: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, side)| {
                side.partial_since
                    .is_some_and(|t| t.elapsed() >= self.frame_timeout)
            })
            .map(|(&token, _)| token)
            .collect();
        for token in stuck {
            log::warn!(
                "closing client connection {token}: it sent part of a request and nothing more for {:?}",
                self.frame_timeout
            );
            self.close(token);
        }
    }

    /// Forgets a connection (the caller deals with its socket).
    fn remove(&mut self, token: u64) -> Option<ReadSide> {
        let side = self.conns.remove(&token)?;
        self.poller.remove(side.conn.stream.as_raw_fd());
        if side.partial_since.is_some() {
            self.partial -= 1;
        }
        self.buffered -= side.buf.len();
        Some(side)
    }

    /// Lets go of a connection whose client finished sending, once every
    /// complete request it sent has been handed to the loop. The socket is
    /// not shut: it closes when the loop has written the last answer and
    /// dropped its handle, so a client that half-closes still hears back.
    fn finish_if_done(&mut self, token: u64) {
        let Some(side) = self.conns.get(&token) else {
            return;
        };
        if !side.eof || matches!(next_frame(&side.buf), Ok(Some(_))) {
            return;
        }
        if !side.buf.is_empty() {
            log::debug!("client connection {token} ended inside a request");
        }
        self.remove(token);
    }

    /// Forwards the first complete request of a connection if it has none
    /// in the loop, and stops or resumes reading the socket accordingly.
    /// Returns false if the connection must close (bad input).
    fn forward(&mut self, token: u64, batch: &mut Vec<(Request, Reply)>) -> bool {
        let Some(side) = self.conns.get_mut(&token) else {
            return false;
        };
        match next_frame(&side.buf) {
            Err(e) => {
                log::debug!("client connection {token} closed: {e}");
                return false;
            }
            Ok(None) => {}
            Ok(Some(end)) => {
                if side.conn.busy.swap(true, Ordering::SeqCst) {
                    // Held back until the loop answers the request in
                    // flight; the answer wakes us through the waker.
                    self.waker.wanted.store(true, Ordering::SeqCst);
                    // The answer may have been written between the swap and
                    // the store above; check again so no wake-up is lost.
                    if side.conn.busy.load(Ordering::SeqCst) {
                        return self.set_reading(token, false);
                    }
                    return self.forward(token, batch);
                }
                let request: Request = match decode(&side.buf[frame::HEADER_LEN..end]) {
                    Ok(r) => r,
                    Err(e) => {
                        log::debug!("client connection {token} closed: {e}");
                        return false;
                    }
                };
                side.buf.drain(..end);
                self.buffered -= end;
                // Give back the room a large request took, also when part
                // of a small next one follows it: otherwise the connection
                // keeps megabytes while `buffered` counts a few bytes.
                if side.buf.is_empty() && side.buf.capacity() > READ_CHUNK {
                    side.buf = Vec::new();
                } else if side.buf.capacity() > 2 * side.buf.len().max(READ_CHUNK) {
                    side.buf.shrink_to(side.buf.len().max(READ_CHUNK));
                }
                batch.push((request, side.conn.clone()));
                // A further complete request now waits for this one's answer.
                return self.forward(token, batch);
            }
        }
        let more = !side.eof;
        self.set_reading(token, more)
    }

    /// Forwards requests that were held back for busy connections.
    fn resume_held(&mut self, batch: &mut Vec<(Request, Reply)>) {
        let held: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, side)| !side.reading)
            .map(|(&token, _)| token)
            .collect();
        for token in held {
            if self.forward(token, batch) {
                self.note_partial(token);
                self.finish_if_done(token);
            } else {
                self.close(token);
            }
        }
    }

    fn set_reading(&mut self, token: u64, reading: bool) -> bool {
        let Some(side) = self.conns.get_mut(&token) else {
            return false;
        };
        if side.reading != reading {
            if let Err(e) = self
                .poller
                .set_readable(side.conn.stream.as_raw_fd(), token, reading)
            {
                log::warn!("client connection {token}: {e}");
                return false;
            }
            side.reading = reading;
        }
        true
    }

    fn close(&mut self, token: u64) {
        if let Some(side) = self.remove(token) {
            // Later answers from the loop then fail at once.
            let _ = side.conn.stream.shutdown(Shutdown::Both);
        }
    }
}

/// The end offset of the first complete frame in `buf`, if there is one.
fn next_frame(buf: &[u8]) -> Result<Option<usize>> {
    let Some(header) = buf.first_chunk::<{ frame::HEADER_LEN }>() else {
        return Ok(None);
    };
    let end = frame::HEADER_LEN + frame::body_len(header, MAX_CLIENT_FRAME)?;
    Ok((buf.len() >= end).then_some(end))
}

/// Writes answers to client sockets from the event loop without ever
/// blocking it: a write that would block keeps the rest of its bytes, which
/// go out on later loop iterations, before any later answer to that client.
///
/// Made with [`Replies::batched`], it holds the answers of one loop pass
/// and sends them all with one `io_uring` submission in [`Replies::flush`]
/// (where the kernel offers it): one system call for the batch instead of
/// one per answer, and the loop is not switched out for a woken client
/// between two answers. On the 2-core VM that raised 64-client gets by
/// about 6% and left puts as they were (interleaved 12 s `bench` rounds,
/// session 11; a bare echo server gained 23% the same way).
/// Otherwise ([`Default`]) each answer is sent as it is handed over.
#[derive(Default)]
pub(super) struct Replies {
    /// Answer bytes that did not fit into the socket yet, by connection.
    stalled: HashMap<u64, (Reply, Vec<u8>)>,
    buf: Vec<u8>,
    batch: Option<Batch>,
}

/// Answers handed over since the last flush, and the ring that sends them.
struct Batch {
    ring: io_uring::IoUring,
    /// One entry per connection: its answers' bytes, in order.
    queued: Vec<(Reply, Vec<u8>)>,
    /// Where each connection's entry is in `queued`.
    slot: HashMap<u64, usize>,
    /// Connections closed since the last flush: later answers are dropped.
    closed: std::collections::HashSet<u64>,
    /// Buffers of sent answers, for the next ones.
    spare: Vec<Vec<u8>>,
}

/// Submission queue entries of the answer ring: answers sent per system call
/// at most.
const RING_ENTRIES: u32 = 256;

/// Most spare answer buffers kept, and the largest kept.
const MAX_SPARE_BUFFERS: usize = 1024;
const MAX_SPARE_BYTES: usize = 64 * 1024;

/// Longest a flush waits for its sends to complete. They never wait for a
/// socket (`MSG_DONTWAIT` makes a full one fail at once), so this only
/// bounds a kernel that behaves otherwise.
const RING_WAIT: Duration = Duration::from_secs(1);

/// A ring for [`send_all`], if the kernel offers `io_uring` (and its
/// waits with a timeout, Linux 5.11).
pub(crate) fn answer_ring() -> io::Result<io_uring::IoUring> {
    let ring = io_uring::IoUring::new(RING_ENTRIES)?;
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(
            ErrorKind::Unsupported,
            "the kernel's io_uring cannot wait with a timeout",
        ));
    }
    Ok(ring)
}

/// Sends each `(socket, bytes)` with a non-blocking `send`, all of them
/// through `ring` in as few system calls as its queue allows
/// (`RING_ENTRIES` each); returns each one's result in order: the bytes the
/// socket took (0 if it was full or `bytes` is empty), or the error. An
/// error of the ring itself, or a send still running after `RING_WAIT`, is
/// returned as a whole.
///
/// # Safety
///
/// Every socket and buffer must stay open and alive until this returns,
/// and, if it returns an error, for good: the kernel may still be working
/// on them then, and closing the ring does not wait for sends in flight,
/// so leak them (or use buffers that live as long as the program).
pub(crate) unsafe fn send_all(
    ring: &mut io_uring::IoUring,
    items: &[(RawFd, &[u8])],
) -> io::Result<Vec<io::Result<usize>>> {
    let n = items.len();
    let mut results: Vec<Option<i32>> = vec![None; n];
    let mut start = 0;
    while start < n {
        let end = n.min(start + RING_ENTRIES as usize);
        {
            let mut sq = ring.submission();
            for (i, &(fd, bytes)) in items[start..end].iter().enumerate() {
                if bytes.is_empty() {
                    results[start + i] = Some(0);
                    continue;
                }
                let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                let entry =
                    io_uring::opcode::Send::new(io_uring::types::Fd(fd), bytes.as_ptr(), len)
                        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                        .build()
                        .user_data((start + i) as u64);
                // SAFETY: the caller keeps the socket and the buffer alive
                // for as long as the kernel may use them.
                unsafe { sq.push(&entry) }
                    .map_err(|_| io::Error::other("the ring's submission queue is full"))?;
            }
        }
        let wait = io_uring::types::Timespec::from(RING_WAIT);
        let args = io_uring::types::SubmitArgs::new().timespec(&wait);
        let want = results[start..end].iter().filter(|r| r.is_none()).count();
        let mut reaped = 0;
        // The sends complete while they are submitted (none waits for its
        // socket), so the first call only submits, and a wait (with a
        // timeout) follows only if some did not.
        let mut first = true;
        while reaped < want {
            let entered = if first {
                ring.submit()
            } else {
                ring.submitter().submit_with_args(want - reaped, &args)
            };
            match entered {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let before = reaped;
            for cqe in ring.completion() {
                if let Some(slot) = results.get_mut(cqe.user_data() as usize) {
                    *slot = Some(cqe.result());
                    reaped += 1;
                }
            }
            if std::mem::take(&mut first) {
                continue;
            }
            if reaped == before {
                // Only a kernel that let a send wait gets here.
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    "sends through io_uring did not complete",
                ));
            }
        }
        start = end;
    }
    Ok(results
        .into_iter()
        .map(|r| match r.expect("every send was reaped") {
            n if n >= 0 => Ok(n as usize),
            e if e == -libc::EAGAIN => Ok(0),
            e => Err(io::Error::from_raw_os_error(-e)),
        })
        .collect())
}

impl Batch {
    fn new() -> io::Result<Batch> {
        Ok(Batch::with_ring(answer_ring()?))
    }

    fn with_ring(ring: io_uring::IoUring) -> Batch {
        Batch {
            ring,
            queued: Vec::new(),
            slot: HashMap::new(),
            closed: Default::default(),
            spare: Vec::new(),
        }
    }

    /// Queues `bytes` for `to`, behind its answers queued before; returns
    /// how many bytes now wait for it if it had answers queued before
    /// (`None` for its first one of this pass: one answer alone, however
    /// large, says nothing of a client that does not read).
    fn queue(&mut self, to: &Reply, bytes: &[u8]) -> Option<usize> {
        if self.closed.contains(&to.id) {
            return None;
        }
        if let Some(&i) = self.slot.get(&to.id) {
            let buf = &mut self.queued[i].1;
            buf.extend_from_slice(bytes);
            return Some(buf.len());
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.extend_from_slice(bytes);
        self.slot.insert(to.id, self.queued.len());
        self.queued.push((to.clone(), buf));
        None
    }

    /// Forgets the answers queued for connection `id` (it is being closed).
    fn drop_answers(&mut self, id: u64) {
        if let Some(&i) = self.slot.get(&id) {
            self.queued[i].1 = Vec::new();
        }
        self.closed.insert(id);
    }

    /// Sends every queued answer (see [`send_all`]).
    fn submit(&mut self) -> io::Result<Vec<io::Result<usize>>> {
        let items: Vec<(RawFd, &[u8])> = self
            .queued
            .iter()
            .map(|(conn, bytes)| (conn.stream.as_raw_fd(), &bytes[..]))
            .collect();
        // SAFETY: `queued` holds the sockets and the buffers until the
        // caller has the results, and leaks them if this fails.
        unsafe { send_all(&mut self.ring, &items) }
    }

    /// Takes the queued answers out, for their results to be applied.
    fn take(&mut self) -> Vec<(Reply, Vec<u8>)> {
        self.slot.clear();
        self.closed.clear();
        std::mem::take(&mut self.queued)
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= MAX_SPARE_BYTES && self.spare.len() < MAX_SPARE_BUFFERS {
            buf.clear();
            self.spare.push(buf);
        }
    }
}

impl Replies {
    /// Replies that send each loop pass's answers together through
    /// `io_uring` where the kernel offers it (see [`Replies`]), else one
    /// `send` each.
    pub(super) fn batched() -> Replies {
        match Batch::new() {
            Ok(batch) => Replies {
                batch: Some(batch),
                ..Replies::default()
            },
            Err(e) => {
                log::info!("answers go out one system call each: io_uring is not available ({e})");
                Replies::default()
            }
        }
    }

    /// Sends `response` to the client behind `to`.
    pub(super) fn send(&mut self, to: &Reply, response: Response) {
        self.buf.clear();
        if let Err(e) = frame::encode_frame_into(&response, &mut self.buf) {
            log::warn!("dropping an answer: {e}");
            let _ = to.stream.shutdown(Shutdown::Both);
            return;
        }
        let body = self.buf.len() - frame::HEADER_LEN;
        if body > frame::MAX_FRAME {
            // No client would read it (a `list` of a huge prefix): say so,
            // instead of a frame the client drops and asks again for.
            self.buf.clear();
            let too_big = Response::Outcome(Outcome::Rejected(format!(
                "the answer is {body} bytes, over the limit of {} bytes for one answer; \
                 list a longer prefix",
                frame::MAX_FRAME
            )));
            if let Err(e) = frame::encode_frame_into(&too_big, &mut self.buf) {
                log::warn!("dropping an answer: {e}");
                let _ = to.stream.shutdown(Shutdown::Both);
                return;
            }
        }
        if let Some((_, rest)) = self.stalled.get_mut(&to.id) {
            // Only this connection's earlier answers can be stalled; this one
            // queues behind them.
            rest.extend_from_slice(&self.buf);
            if rest.len() > MAX_STALLED_BYTES {
                log::warn!("a client does not read its answers; closing its connection");
                let _ = to.stream.shutdown(Shutdown::Both);
                self.stalled.remove(&to.id);
                release(to);
            }
            return;
        }
        // The answer is handed over: free the connection, so the next poll
        // forwards its next request. Any request forwarded from now on is
        // answered after this one: answers to one connection leave in order
        // (see `stalled`).
        release(to);
        if let Some(batch) = &mut self.batch {
            if batch
                .queue(to, &self.buf)
                .is_some_and(|waiting| waiting > MAX_STALLED_BYTES)
            {
                // A client that pipelines requests and reads no answers. As
                // with `stalled`, only answers piling up behind earlier
                // ones count: a single answer up to the frame limit goes
                // out whole.
                log::warn!("a client does not read its answers; closing its connection");
                batch.drop_answers(to.id);
                let _ = to.stream.shutdown(Shutdown::Both);
            }
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        let sent = send_nonblocking(&to.stream, &buf);
        self.sent(to, &buf, sent);
        self.buf = buf;
    }

    /// Deals with the result of sending `bytes` to `to`: what the socket did
    /// not take waits in `stalled`.
    fn sent(&mut self, to: &Reply, bytes: &[u8], result: io::Result<usize>) {
        match result {
            Ok(n) if n >= bytes.len() => {}
            Ok(n) => {
                // Busy again until the rest is out, so a client that does
                // not read makes the node hold at most a couple of answers
                // for it (one more may slip in before this store).
                to.busy.store(true, Ordering::SeqCst);
                self.stalled
                    .insert(to.id, (to.clone(), bytes[n..].to_vec()));
            }
            Err(e) => log::debug!("answering a client: {e}"),
        }
    }

    /// Sends the answers of this pass (when batched), then pushes out
    /// stalled answers as far as the sockets take them. The loop calls it
    /// before it waits again.
    pub(super) fn flush(&mut self) {
        if let Some(batch) = self.batch.as_mut().filter(|b| !b.queued.is_empty()) {
            match batch.submit() {
                Ok(results) => {
                    let queued = batch.take();
                    for ((to, bytes), mut result) in queued.into_iter().zip(results) {
                        if let Err(e) = &result
                            && matches!(
                                e.raw_os_error(),
                                Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS)
                            )
                        {
                            // The ring cannot send here after all: this
                            // answer and all later ones go the plain way.
                            if self.batch.take().is_some() {
                                log::warn!(
                                    "io_uring refused to send an answer ({e}); sending \
                                     answers one system call each from now on"
                                );
                            }
                            result = send_nonblocking(&to.stream, &bytes);
                        }
                        self.sent(&to, &bytes, result);
                        if let Some(batch) = &mut self.batch {
                            batch.recycle(bytes);
                        }
                    }
                }
                Err(e) => {
                    log::warn!(
                        "sending answers through io_uring failed ({e}); closing their \
                         connections, and sending answers one system call each from now on"
                    );
                    let mut batch = self.batch.take().expect("checked above");
                    let queued = batch.take();
                    // A send the kernel may still be working on must keep
                    // its buffer and socket, so the ring and this pass's
                    // answers are leaked (this should never happen). Which
                    // of them went out is unknown, so none is sent again;
                    // their connections close (which leaves the descriptor
                    // open), so their clients retry at once, which sessions
                    // make safe for writes, instead of waiting for an
                    // answer that may never come, and no later answer can
                    // follow one still in the ring.
                    for (to, _) in &queued {
                        let _ = to.stream.shutdown(Shutdown::Both);
                    }
                    std::mem::forget(batch);
                    std::mem::forget(queued);
                }
            }
        }
        self.flush_stalled();
    }

    /// Pushes out stalled answers as far as the sockets take them.
    fn flush_stalled(&mut self) {
        self.stalled.retain(
            |_, (conn, rest)| match send_nonblocking(&conn.stream, rest) {
                Ok(n) => {
                    rest.drain(..n);
                    if rest.is_empty() {
                        release(conn);
                    }
                    !rest.is_empty()
                }
                Err(e) => {
                    log::debug!("answering a client: {e}");
                    release(conn);
                    false
                }
            },
        );
    }
}

/// The connection's answer is out: it may hand over its next request.
fn release(conn: &ClientConn) {
    let ms = u64::try_from(conn.since.elapsed().as_millis()).unwrap_or(u64::MAX);
    conn.answered_ms.store(ms, Ordering::Relaxed);
    conn.busy.store(false, Ordering::SeqCst);
    if conn.waker.wanted.load(Ordering::SeqCst) {
        conn.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn connected_pair() -> (Reply, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // Each pair its own connection id, as the reader gives them.
        static NEXT_ID: AtomicU64 = AtomicU64::new(FIRST_CONN_TOKEN);
        let conn = Arc::new(ClientConn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            stream: server,
            busy: AtomicBool::new(true),
            since: Instant::now(),
            answered_ms: AtomicU64::new(0),
            waker: Arc::new(Waker::new().unwrap()),
        });
        (conn, client)
    }

    fn value_answer(len: usize) -> Response {
        Response::Outcome(Outcome::Value(Some(vec![7; len])))
    }

    /// Both ways of answering: one `send` per answer, and batched through
    /// `io_uring` (which falls back to the first where the kernel has none).
    fn both_ways() -> [Replies; 2] {
        [Replies::default(), Replies::batched()]
    }

    /// Batched answers go out at the flush, not before; two answers to one
    /// connection in one pass arrive in the order they were handed over.
    #[test]
    fn batched_answers_leave_at_the_flush_in_order() {
        let mut replies = Replies::batched();
        if replies.batch.is_none() {
            eprintln!("no io_uring here; only the plain way is tested");
            return;
        }
        let (conn, mut client) = connected_pair();
        let (other, mut other_client) = connected_pair();
        replies.send(&conn, value_answer(10));
        replies.send(&other, value_answer(20));
        replies.send(&conn, value_answer(30));
        client.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let early = client.read(&mut byte);
        assert!(
            matches!(&early, Err(e) if e.kind() == ErrorKind::WouldBlock),
            "{early:?}"
        );
        client.set_nonblocking(false).unwrap();
        for c in [&client, &other_client] {
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        replies.flush();
        let next = |c: &mut TcpStream| {
            let body = frame::read_frame(c, frame::MAX_FRAME).unwrap().unwrap();
            frame::decode::<Response>(&body).unwrap()
        };
        assert_eq!(next(&mut client), value_answer(10));
        assert_eq!(next(&mut client), value_answer(30));
        assert_eq!(next(&mut other_client), value_answer(20));
        assert!(replies.stalled.is_empty());
        // The next pass reuses the buffers and sends again.
        replies.send(&other, value_answer(40));
        replies.flush();
        assert_eq!(next(&mut other_client), value_answer(40));
    }

    /// One answer larger than `MAX_STALLED_BYTES` (a `list` of many keys,
    /// within the frame limit) is no sign of a client that does not read:
    /// it arrives whole, both ways.
    #[test]
    fn one_answer_over_the_stalled_limit_arrives_whole() {
        for mut replies in both_ways() {
            let (conn, mut client) = connected_pair();
            let len = MAX_STALLED_BYTES + (4 << 20);
            replies.send(&conn, value_answer(len));
            replies.flush();
            client
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            let reader = std::thread::spawn(move || {
                let body = frame::read_frame(&mut client, frame::MAX_FRAME)
                    .unwrap()
                    .unwrap();
                frame::decode::<Response>(&body).unwrap()
            });
            while !replies.stalled.is_empty() {
                replies.flush();
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(reader.join().unwrap(), value_answer(len));
            assert!(!conn.busy.load(Ordering::SeqCst));
        }
    }

    /// When the ring itself fails, which of the pass's answers went out is
    /// unknown: their connections are closed, so their clients ask again
    /// at once instead of waiting for an answer that may never come, and
    /// later answers go out one `send` each.
    #[test]
    fn a_failing_ring_closes_the_connections_of_its_answers() {
        // A ring made disabled refuses every submission (EBADFD).
        let ring = match io_uring::IoUring::builder().setup_r_disabled().build(8) {
            Ok(ring) => ring,
            Err(e) => {
                eprintln!("no io_uring here ({e}); nothing to test");
                return;
            }
        };
        let mut replies = Replies {
            batch: Some(Batch::with_ring(ring)),
            ..Replies::default()
        };
        let (conn, mut client) = connected_pair();
        replies.send(&conn, value_answer(10));
        replies.flush();
        assert!(replies.batch.is_none(), "the failed ring is still used");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 64];
        let read = client.read(&mut buf);
        assert!(
            matches!(read, Ok(0)),
            "the connection stayed open: {read:?}"
        );
        let (other, mut other_client) = connected_pair();
        replies.send(&other, value_answer(20));
        replies.flush();
        let body = frame::read_frame(&mut other_client, frame::MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(frame::decode::<Response>(&body).unwrap(), value_answer(20));
    }

    /// An answer over the frame limit no client reads (a `list` of a huge
    /// prefix) is replaced by a rejection that says why.
    #[test]
    fn an_answer_over_the_frame_limit_is_replaced_by_a_rejection() {
        for mut replies in both_ways() {
            let (conn, mut client) = connected_pair();
            let key = vec![b'k'; 1 << 20];
            let keys = vec![key; frame::MAX_FRAME / (1 << 20) + 1];
            replies.send(&conn, Response::Outcome(Outcome::Keys(keys)));
            replies.flush();
            let body = frame::read_frame(&mut client, frame::MAX_FRAME)
                .unwrap()
                .unwrap();
            match frame::decode::<Response>(&body).unwrap() {
                Response::Outcome(Outcome::Rejected(why)) => {
                    assert!(why.contains("over the limit"), "{why}")
                }
                other => panic!("unexpected answer {other:?}"),
            }
            assert!(!conn.busy.load(Ordering::SeqCst));
        }
    }

    /// Answers that do not fit into the socket wait, leave in order once the
    /// client reads, and arrive whole.
    #[test]
    fn stalled_answers_go_out_in_order() {
        for replies in both_ways() {
            stalled_answers_go_out_in_order_with(replies);
        }
    }

    fn stalled_answers_go_out_in_order_with(mut replies: Replies) {
        let (conn, mut client) = connected_pair();
        // Far more than the socket buffers take at once.
        let sizes: Vec<usize> = (0..12).map(|i| (1 << 20) + i).collect();
        for &len in &sizes {
            // As the reader does when it hands over each request.
            conn.busy.store(true, Ordering::SeqCst);
            replies.send(&conn, value_answer(len));
        }
        replies.flush();
        assert!(!replies.stalled.is_empty(), "nothing was held back");
        // Busy until the held-back bytes are out.
        assert!(conn.busy.load(Ordering::SeqCst));
        let reading = std::thread::spawn(move || {
            let mut reader = io::BufReader::new(&mut client);
            sizes
                .iter()
                .map(|_| {
                    let body = frame::read_frame(&mut reader, frame::MAX_FRAME)
                        .unwrap()
                        .unwrap();
                    frame::decode::<Response>(&body).unwrap()
                })
                .collect::<Vec<_>>()
        });
        while !replies.stalled.is_empty() {
            replies.flush();
            std::thread::yield_now();
        }
        assert!(!conn.busy.load(Ordering::SeqCst));
        let answers = reading.join().unwrap();
        let expected: Vec<Response> = (0..12).map(|i| value_answer((1 << 20) + i)).collect();
        assert_eq!(answers, expected);
    }

    /// A client that never reads is dropped once more than
    /// `MAX_STALLED_BYTES` wait for it; what it then reads ends early.
    #[test]
    fn a_client_that_never_reads_is_dropped() {
        for replies in both_ways() {
            a_client_that_never_reads_is_dropped_with(replies);
        }
    }

    fn a_client_that_never_reads_is_dropped_with(mut replies: Replies) {
        let (conn, mut client) = connected_pair();
        let count = 100;
        for _ in 0..count {
            replies.send(&conn, value_answer(1 << 20));
        }
        replies.flush();
        assert!(replies.stalled.is_empty(), "the stalled answers were kept");
        let mut received = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        loop {
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => received += n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("reading the dropped connection: {e}"),
            }
        }
        assert!(
            received < count * (1 << 20),
            "all {received} bytes arrived; the client was not dropped"
        );
    }

    fn idle_reader() -> (ClientReader, Arc<Waker>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        ClientReader::new(
            listener,
            Duration::from_secs(30),
            DEFAULT_MAX_CLIENT_CONNECTIONS,
            DEFAULT_MAX_CLIENT_PARTIAL_BYTES,
        )
        .unwrap()
    }

    /// Polls once for at most 50 ms, with no input waiting; requests go to
    /// `batch`.
    fn poll_briefly(reader: &mut ClientReader, batch: &mut Vec<(Request, Reply)>) {
        reader
            .poll(Duration::from_millis(50), batch, &mut Vec::new(), || false)
            .unwrap();
    }

    /// Far longer than any test waits; a poll that returns well before it
    /// was woken.
    const LONG: Duration = Duration::from_secs(120);

    /// An input notified while the loop sleeps in `poll` wakes it.
    #[test]
    fn a_notify_wakes_a_sleeping_poll() {
        let (mut reader, inbox) = idle_reader();
        let notifier = {
            let inbox = inbox.clone();
            std::thread::spawn(move || {
                // Once the loop has armed the waker, it is asleep or about
                // to be; a notify must then reach it.
                while !inbox.wanted.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
                inbox.notify();
            })
        };
        let start = Instant::now();
        let mut batch = Vec::new();
        reader
            .poll(LONG, &mut batch, &mut Vec::new(), || false)
            .unwrap();
        assert!(
            start.elapsed() < LONG / 2,
            "the notify did not wake the poll"
        );
        assert!(batch.is_empty());
        assert!(!inbox.wanted.load(Ordering::SeqCst), "left armed");
        notifier.join().unwrap();
    }

    /// An input that arrived before the loop armed the waker is found by the
    /// check, and the poll does not sleep.
    #[test]
    fn a_poll_with_input_waiting_does_not_sleep() {
        let (mut reader, _inbox) = idle_reader();
        let start = Instant::now();
        let mut asked = false;
        reader
            .poll(LONG, &mut Vec::new(), &mut Vec::new(), || {
                asked = true;
                true
            })
            .unwrap();
        assert!(asked);
        assert!(start.elapsed() < LONG / 2, "the poll slept");
    }

    /// A notify while the loop is busy (not armed) costs no wake-up.
    #[test]
    fn a_notify_while_busy_writes_nothing() {
        let (mut reader, inbox) = idle_reader();
        inbox.notify();
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        let n = unsafe { libc::read(inbox.fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        assert_eq!(n, -1, "the eventfd was written ({count})");
        // And a request sent meanwhile is still picked up by a zero poll.
        let mut client = TcpStream::connect(reader.listener.local_addr().unwrap()).unwrap();
        let mut bytes = Vec::new();
        frame::encode_frame_into(&Request::Status, &mut bytes).unwrap();
        io::Write::write_all(&mut client, &bytes).unwrap();
        let mut batch = Vec::new();
        let deadline = Instant::now() + LONG / 2;
        while batch.is_empty() && Instant::now() < deadline {
            poll_briefly(&mut reader, &mut batch);
        }
        assert_eq!(batch.len(), 1);
        assert!(matches!(batch[0].0, Request::Status));
    }

    /// A large request arrives over several polls: one poll reads at most
    /// `READ_BUDGET` bytes of one connection, and the request still comes
    /// out whole.
    #[test]
    fn one_poll_reads_at_most_the_budget_of_a_connection() {
        let (mut reader, _inbox) = idle_reader();
        let value = vec![7u8; 3 * READ_BUDGET];
        let request = Request::Write {
            client_id: 1,
            seq: 1,
            op: crate::kv::protocol::Op::Put {
                key: b"k".to_vec(),
                value: value.clone(),
            },
        };
        let mut bytes = Vec::new();
        frame::encode_frame_into(&request, &mut bytes).unwrap();
        let total = bytes.len();
        let mut client = TcpStream::connect(reader.listener.local_addr().unwrap()).unwrap();
        let writer = std::thread::spawn(move || io::Write::write_all(&mut client, &bytes));
        let mut batch = Vec::new();
        let mut reads = 0;
        let mut buffered = 0;
        let deadline = Instant::now() + LONG / 2;
        while batch.is_empty() && Instant::now() < deadline {
            poll_briefly(&mut reader, &mut batch);
            // What this poll read: the buffer's growth, or the rest of the
            // frame once the request came out whole.
            let now = if batch.is_empty() {
                reader.conns.values().map(|side| side.buf.len()).sum()
            } else {
                total
            };
            assert!(
                now - buffered <= READ_BUDGET,
                "one poll read {} bytes",
                now - buffered
            );
            if now > buffered {
                reads += 1;
            }
            buffered = now;
        }
        writer.join().unwrap().unwrap();
        assert!(reads >= 4, "{total} bytes came in {reads} polls");
        assert_eq!(batch.len(), 1);
        match &batch[0].0 {
            Request::Write {
                op: crate::kv::protocol::Op::Put { value: got, .. },
                ..
            } => assert!(got == &value, "the value changed on the way"),
            other => panic!("unexpected request {other:?}"),
        }
    }

    #[test]
    fn frames_are_cut_from_a_byte_stream() {
        let mut bytes = Vec::new();
        frame::write_frame(&mut bytes, b"hello").unwrap();
        assert_eq!(next_frame(&bytes[..3]).unwrap(), None);
        assert_eq!(next_frame(&bytes[..bytes.len() - 1]).unwrap(), None);
        assert_eq!(next_frame(&bytes).unwrap(), Some(bytes.len()));
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        assert_eq!(next_frame(&two).unwrap(), Some(bytes.len()));
        assert!(next_frame(b"GET / HTTP/1.1\r\n\r\n").is_err());
        let mut huge = bytes.clone();
        huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(next_frame(&huge).is_err());
    }

    /// A put of `value_len` bytes as a whole frame.
    fn put_frame(value_len: usize) -> Vec<u8> {
        let request = Request::Write {
            client_id: 1,
            seq: 1,
            op: crate::kv::protocol::Op::Put {
                key: b"k".to_vec(),
                value: vec![b'v'; value_len],
            },
        };
        let mut bytes = Vec::new();
        frame::write_frame(&mut bytes, &frame::encode(&request)).unwrap();
        bytes
    }

    /// Polls until `done` holds, failing after a generous deadline.
    fn poll_until(
        reader: &mut ClientReader,
        batch: &mut Vec<(Request, Reply)>,
        what: &str,
        done: impl Fn(&ClientReader, &[(Request, Reply)]) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(reader, batch) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            poll_briefly(reader, batch);
        }
    }

    /// Whether the node closed the client's connection.
    fn closed(client: &mut TcpStream) -> bool {
        client
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        match client.read(&mut [0u8; 16]) {
            Ok(n) => n == 0,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
        }
    }

    /// Requests still arriving may hold no more than the total set: past it
    /// the connection holding part of a request longest is closed, never
    /// one with a request in the loop; and a connection's buffer gives back
    /// the room a large request took once it is handed on.
    #[test]
    fn partial_requests_over_the_total_close_the_oldest() {
        use std::io::Write;
        let big = put_frame(300 << 10);
        let part = big.len() - 1;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut reader, _) = ClientReader::new(
            listener,
            Duration::from_secs(60),
            DEFAULT_MAX_CLIENT_CONNECTIONS,
            part + part / 2,
        )
        .unwrap();
        let mut batch = Vec::new();
        let token_of = |reader: &ClientReader, from: &TcpStream| {
            let local = from.local_addr().unwrap();
            reader
                .conns
                .iter()
                .find(|(_, side)| side.conn.stream.peer_addr().unwrap() == local)
                .map(|(&token, _)| token)
        };

        // The first connection holds all of a request but its last byte;
        // a second one does the same, which goes over the total.
        let mut first = TcpStream::connect(addr).unwrap();
        first.write_all(&big[..part]).unwrap();
        poll_until(&mut reader, &mut batch, "the first part", |r, _| {
            r.buffered == part
        });
        let first_token = token_of(&reader, &first).unwrap();
        let mut second = TcpStream::connect(addr).unwrap();
        second.write_all(&big[..part]).unwrap();
        poll_until(&mut reader, &mut batch, "the first closed", |r, _| {
            !r.conns.contains_key(&first_token)
        });
        assert!(closed(&mut first));
        poll_until(&mut reader, &mut batch, "the second part", |r, _| {
            r.buffered == part
        });
        let second_token = token_of(&reader, &second).expect("the second connection kept");

        // The second finishes its request, which goes to the loop, and
        // sends the start of its next one: its buffer shrinks back.
        second
            .write_all(&[&big[part..], &big[..5]].concat())
            .unwrap();
        poll_until(&mut reader, &mut batch, "the second request", |r, b| {
            b.len() == 1 && r.buffered == 5
        });
        let capacity = reader.conns[&second_token].buf.capacity();
        assert!(capacity <= READ_CHUNK, "a buffer kept {capacity} bytes");

        // The second's request is in the loop (nobody answers it): however
        // long its next request has been arriving, a newer one that goes
        // over the total is closed instead.
        second.write_all(&big[5..part]).unwrap();
        poll_until(&mut reader, &mut batch, "the next part", |r, _| {
            r.buffered == part
        });
        let mut third = TcpStream::connect(addr).unwrap();
        third.write_all(&big[..part]).unwrap();
        poll_until(&mut reader, &mut batch, "the third closed", |r, _| {
            r.next_token > second_token + 1 && r.conns.len() == 1
        });
        assert!(closed(&mut third));
        assert!(reader.conns.contains_key(&second_token));
        assert_eq!(reader.buffered, part);

        // Once answered, the second finishes its next request and is served.
        let (_, reply) = batch.pop().unwrap();
        Replies::default().send(&reply, Response::Outcome(Outcome::Done));
        second.write_all(&big[part..]).unwrap();
        poll_until(&mut reader, &mut batch, "the next request", |r, b| {
            b.len() == 1 && r.buffered == 0
        });
    }
}

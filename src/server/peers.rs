//! Inbound peer connections read by the event loop itself.
//!
//! The TCP transport accepts a peer's connection and checks its handshake
//! on a thread of its own; then it hands the stream over
//! ([`Adopt`](crate::network::Adopt)) and the loop reads the peer's frames in
//! the same `epoll_wait` as its client sockets ([`ClientReader::poll`]).
//! A message thus reaches the Raft node without waking a reader thread and
//! then the loop. Each connection keeps its frames in order; when a peer
//! dials again, its older connection is closed, as the transport's readers
//! retire theirs. Anything that does not parse closes the connection and is
//! logged; the peer reconnects. So does a connection that holds part of a
//! frame for longer than the client port's frame timeout (a peer that
//! stalled or vanished mid-frame).
//!
//! [`ClientReader::poll`]: super::clients::ClientReader::poll

use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::clients::{Poller, READ_BUDGET, READ_CHUNK};
use crate::NodeId;
use crate::network::Handover;
use crate::network::frame::{self, decode};
use crate::raft::Message;

/// epoll tokens at and above this one are peer connections.
pub(super) const FIRST_PEER_TOKEN: u64 = 1 << 62;

struct PeerConn {
    node: NodeId,
    /// The transport's order of the connection ([`Handover::order`]).
    order: u64,
    stream: TcpStream,
    /// Bytes read and not yet cut into frames.
    buf: Vec<u8>,
    /// The largest frame body accepted.
    max_frame: usize,
    /// Since when `buf` holds part of a frame.
    partial_since: Option<Instant>,
}

/// The adopted peer connections; see the module docs.
pub(super) struct PeerConns {
    conns: HashMap<u64, PeerConn>,
    /// The current connection of each peer.
    by_node: HashMap<NodeId, u64>,
    next_token: u64,
    /// Messages cut from the connections, not yet handed to the loop.
    ready: Vec<(NodeId, Message)>,
    chunk: Vec<u8>,
}

impl PeerConns {
    pub(super) fn new() -> PeerConns {
        PeerConns {
            conns: HashMap::new(),
            by_node: HashMap::new(),
            next_token: FIRST_PEER_TOKEN,
            ready: Vec::new(),
            chunk: vec![0u8; READ_CHUNK],
        }
    }

    /// Takes over a connection from the transport. A newer connection
    /// from the same peer replaces the older one, which is read one last
    /// time (what it holds is delivered) and closed; a hand-over older than
    /// the peer's current connection is dropped.
    pub(super) fn adopt(&mut self, poller: &Poller, handover: Handover) {
        let Handover {
            node,
            order,
            stream,
            leftover,
            max_frame,
        } = handover;
        let current = self.by_node.get(&node).copied();
        if let Some(old) = current
            && self.conns.get(&old).is_some_and(|c| c.order > order)
        {
            log::debug!("dropping an older Raft connection from node {node}");
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("closing the Raft connection from node {node}: {e}");
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = poller.add(stream.as_raw_fd(), token) {
            log::warn!("closing the Raft connection from node {node}: {e}");
            return;
        }
        if let Some(old) = current {
            log::debug!("replacing the older Raft connection from node {node}");
            self.read(poller, old);
            self.close(poller, old);
        }
        self.conns.insert(
            token,
            PeerConn {
                node,
                order,
                stream,
                buf: leftover,
                max_frame,
                partial_since: None,
            },
        );
        self.by_node.insert(node, token);
        self.cut(poller, token);
    }

    /// Reads what connection `token` has (at most [`READ_BUDGET`] bytes; the
    /// rest on the next poll) and cuts it into messages.
    pub(super) fn read(&mut self, poller: &Poller, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let mut budget = READ_BUDGET;
        let mut ended = None;
        while budget > 0 {
            match (&conn.stream).read(&mut self.chunk) {
                Ok(0) => {
                    ended = Some("closed by the peer".to_string());
                    break;
                }
                Ok(n) => {
                    conn.buf.extend_from_slice(&self.chunk[..n]);
                    budget = budget.saturating_sub(n);
                    if n < self.chunk.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    ended = Some(e.to_string());
                    break;
                }
            }
        }
        // What arrived before the end is still delivered.
        self.cut(poller, token);
        if let Some(why) = ended
            && let Some(conn) = self.conns.get(&token)
        {
            log::debug!("Raft connection from node {} ended: {why}", conn.node);
            self.close(poller, token);
        }
    }

    /// Whether a connection holds part of a frame.
    pub(super) fn has_partial(&self) -> bool {
        self.conns.values().any(|c| c.partial_since.is_some())
    }

    /// Closes the connections that have held part of a frame for `timeout`
    /// or longer; their peers dial again.
    pub(super) fn close_stuck(&mut self, poller: &Poller, timeout: Duration) {
        let stuck: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.partial_since.is_some_and(|t| t.elapsed() >= timeout))
            .map(|(&token, _)| token)
            .collect();
        for token in stuck {
            if let Some(conn) = self.conns.get(&token) {
                log::warn!(
                    "closing the Raft connection from node {}: it sent part of a message and \
                     nothing more for {timeout:?}",
                    conn.node
                );
            }
            self.close(poller, token);
        }
    }

    /// Whether messages wait to be handed to the loop.
    pub(super) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Hands the messages cut so far to `out`, in arrival order.
    pub(super) fn take_ready(&mut self, out: &mut Vec<(NodeId, Message)>) {
        out.append(&mut self.ready);
    }

    /// Cuts the complete frames of connection `token` into messages; closes
    /// it on a frame that does not parse.
    fn cut(&mut self, poller: &Poller, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let mut at = 0;
        let bad = loop {
            let rest = &conn.buf[at..];
            let Some(header) = rest.first_chunk::<{ frame::HEADER_LEN }>() else {
                break None;
            };
            let end = match frame::body_len(header, conn.max_frame) {
                Ok(len) => frame::HEADER_LEN + len,
                Err(e) => break Some(e),
            };
            if rest.len() < end {
                break None;
            }
            match decode::<Message>(&rest[frame::HEADER_LEN..end]) {
                Ok(msg) => self.ready.push((conn.node, msg)),
                Err(e) => break Some(e),
            }
            at += end;
        };
        conn.buf.drain(..at);
        conn.partial_since = match (conn.buf.is_empty(), conn.partial_since) {
            (true, _) => None,
            (false, None) => Some(Instant::now()),
            (false, since) => since,
        };
        // A large frame grew the buffer; do not keep that room for good.
        let keep = conn.buf.len().max(READ_CHUNK);
        if conn.buf.capacity() > 2 * keep {
            conn.buf.shrink_to(keep);
        }
        if let Some(e) = bad {
            log::warn!("closing the Raft connection from node {}: {e}", conn.node);
            self.close(poller, token);
        }
    }

    fn close(&mut self, poller: &Poller, token: u64) {
        if let Some(conn) = self.conns.remove(&token) {
            poller.remove(conn.stream.as_raw_fd());
            if self.by_node.get(&conn.node) == Some(&token) {
                self.by_node.remove(&conn.node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use super::super::clients::ClientReader;
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(60);

    fn reader() -> ClientReader {
        reader_with(Duration::from_secs(30))
    }

    fn reader_with(frame_timeout: Duration) -> ClientReader {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        ClientReader::new(
            listener,
            frame_timeout,
            crate::server::DEFAULT_MAX_CLIENT_CONNECTIONS,
            crate::server::DEFAULT_MAX_CLIENT_PARTIAL_BYTES,
        )
        .unwrap()
        .0
    }

    /// A connected pair: the far end (the "peer") and the near end.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (near, _) = listener.accept().unwrap();
        (far, near)
    }

    fn handover(
        node: NodeId,
        order: u64,
        stream: TcpStream,
        leftover: Vec<u8>,
        max_frame: usize,
    ) -> Handover {
        Handover {
            node,
            order,
            stream,
            leftover,
            max_frame,
        }
    }

    fn message(term: u64) -> Message {
        Message::VoteResponse {
            term,
            granted: true,
            pre_vote: false,
        }
    }

    fn frame_of(term: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        frame::write_frame(&mut bytes, &frame::encode(&message(term))).unwrap();
        bytes
    }

    /// Polls once for at most 20 ms; returns the peer messages as
    /// `(sender, term)`.
    fn poll_once(reader: &mut ClientReader) -> Vec<(NodeId, u64)> {
        let mut msgs = Vec::new();
        reader
            .poll(
                Duration::from_millis(20),
                &mut Vec::new(),
                &mut msgs,
                || false,
            )
            .unwrap();
        msgs.into_iter().map(|(from, m)| (from, m.term())).collect()
    }

    /// Polls until `want` messages came out or the deadline passed.
    fn poll_for(reader: &mut ClientReader, want: usize) -> Vec<(NodeId, u64)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        while got.len() < want && Instant::now() < deadline {
            got.extend(poll_once(reader));
        }
        got
    }

    /// Whether the loop closed its end before the deadline: the peer reads
    /// end of stream or a reset (a timeout is not a close).
    fn closed(far: &mut TcpStream) -> bool {
        far.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = [0u8; 64];
        loop {
            match far.read(&mut buf) {
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

    /// Bytes read before the hand-over and bytes read after it make one
    /// ordered stream of messages, also when a frame straddles the two.
    #[test]
    fn leftover_and_later_frames_come_out_in_order() {
        let mut reader = reader();
        let (mut far, near) = pair();
        let mut leftover = frame_of(1);
        let second = frame_of(2);
        leftover.extend_from_slice(&second[..5]);
        reader.adopt_peer(handover(2, 1, near, leftover, frame::MAX_FRAME));
        far.write_all(&second[5..]).unwrap();
        far.write_all(&frame_of(3)).unwrap();
        assert_eq!(poll_for(&mut reader, 3), vec![(2, 1), (2, 2), (2, 3)]);
    }

    /// Garbage, a frame over the limit and a body that does not decode each
    /// close the connection; what came before them is still delivered.
    #[test]
    fn bad_frames_close_the_connection() {
        let mut oversized = frame_of(1);
        oversized[5..9].copy_from_slice(&(1u32 << 20).to_le_bytes());
        let mut undecodable = Vec::new();
        frame::write_frame(&mut undecodable, &[0xff; 12]).unwrap();
        for (what, bad) in [
            ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            ("oversized", oversized),
            ("undecodable", undecodable),
        ] {
            let mut reader = reader();
            let (mut far, near) = pair();
            reader.adopt_peer(handover(3, 1, near, Vec::new(), 1024));
            let mut bytes = frame_of(7);
            bytes.extend_from_slice(&bad);
            far.write_all(&bytes).unwrap();
            assert_eq!(poll_for(&mut reader, 1), vec![(3, 7)], "{what}");
            // Keep polling: the loop reads the bad frame and closes.
            let closer = std::thread::spawn(move || closed(&mut far));
            let deadline = Instant::now() + DEADLINE;
            while !closer.is_finished() && Instant::now() < deadline {
                assert!(
                    poll_once(&mut reader).is_empty(),
                    "{what}: a message came after it"
                );
            }
            assert!(closer.join().unwrap(), "{what}: the connection stayed open");
        }
    }

    /// A connection stuck inside a frame is closed after the frame
    /// timeout; one that sends whole frames stays.
    #[test]
    fn a_connection_stuck_inside_a_frame_is_closed() {
        let mut reader = reader_with(Duration::from_millis(200));
        let (mut stuck_far, stuck_near) = pair();
        let (mut whole_far, whole_near) = pair();
        reader.adopt_peer(handover(2, 1, stuck_near, Vec::new(), frame::MAX_FRAME));
        reader.adopt_peer(handover(3, 1, whole_near, Vec::new(), frame::MAX_FRAME));
        stuck_far.write_all(&frame_of(6)[..7]).unwrap();
        whole_far.write_all(&frame_of(6)).unwrap();
        assert_eq!(poll_for(&mut reader, 1), vec![(3, 6)]);
        let closer = std::thread::spawn(move || closed(&mut stuck_far));
        let deadline = Instant::now() + DEADLINE;
        while !closer.is_finished() && Instant::now() < deadline {
            assert!(poll_once(&mut reader).is_empty());
        }
        assert!(closer.join().unwrap(), "the stuck connection stayed open");
        // The other one still delivers.
        whole_far.write_all(&frame_of(8)).unwrap();
        assert_eq!(poll_for(&mut reader, 1), vec![(3, 8)]);
    }

    /// A peer that dials again replaces its older connection: what the
    /// older one still held is delivered, then it is closed, and the new
    /// one carries on.
    #[test]
    fn a_newer_connection_from_a_peer_closes_the_older() {
        let mut reader = reader();
        let (mut old_far, old_near) = pair();
        reader.adopt_peer(handover(2, 1, old_near, Vec::new(), frame::MAX_FRAME));
        assert!(poll_for(&mut reader, 0).is_empty());
        old_far.write_all(&frame_of(4)).unwrap();
        // The frame waits, unread, in the older connection's socket.
        assert!(sent_all(&old_far), "the frame never left");
        let (mut new_far, new_near) = pair();
        reader.adopt_peer(handover(2, 2, new_near, Vec::new(), frame::MAX_FRAME));
        assert!(closed(&mut old_far), "the older connection stayed open");
        new_far.write_all(&frame_of(5)).unwrap();
        assert_eq!(poll_for(&mut reader, 2), vec![(2, 4), (2, 5)]);
    }

    /// Hand-overs can reach the loop out of order; an older connection
    /// arriving after a newer one is closed, and the newer one stays.
    #[test]
    fn a_late_older_connection_is_dropped() {
        let mut reader = reader();
        let (mut new_far, new_near) = pair();
        reader.adopt_peer(handover(2, 9, new_near, Vec::new(), frame::MAX_FRAME));
        let (mut old_far, old_near) = pair();
        reader.adopt_peer(handover(2, 8, old_near, Vec::new(), frame::MAX_FRAME));
        assert!(closed(&mut old_far), "the older connection stayed open");
        new_far.write_all(&frame_of(6)).unwrap();
        assert_eq!(poll_for(&mut reader, 1), vec![(2, 6)]);
    }

    /// Whether everything `far` sent has left its send queue (on loopback:
    /// sits in the other end's receive queue) before the deadline.
    fn sent_all(far: &TcpStream) -> bool {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            let mut queued: libc::c_int = 0;
            // SAFETY: TIOCOUTQ writes one int for a live socket.
            let r = unsafe { libc::ioctl(far.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
            if r == 0 && queued == 0 {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }
}

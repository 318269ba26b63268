//! Node-to-node transport and the frame codec shared by both ports.
//!
//! [`Transport`] is what the server uses to reach its peers. [`tcp`] holds the
//! real implementation; [`memory`] an in-process network for tests.

pub mod frame;
pub mod memory;
pub mod tcp;

use std::io::{self, ErrorKind};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::raft::Message;
use crate::{NodeId, Result};

/// Where a transport delivers inbound messages: `(sender, message)`.
pub type Inbox = Arc<dyn Fn(NodeId, Message) + Send + Sync>;

/// Takes over an inbound connection whose handshake named its peer, so that
/// its owner reads the peer's frames itself (the server's event loop waits
/// on them in its own `epoll`, saving a thread hand-off per message).
pub type Adopt = Arc<dyn Fn(Handover) + Send + Sync>;

/// An inbound connection handed to an [`Adopt`].
#[derive(Debug)]
pub struct Handover {
    /// The peer the handshake named.
    pub node: NodeId,
    /// Grows with every connection the transport accepts: of two hand-overs
    /// from one peer, the greater is the newer connection, whichever arrives
    /// first.
    pub order: u64,
    pub stream: TcpStream,
    /// Bytes already read from the stream past the handshake.
    pub leftover: Vec<u8>,
    /// The largest frame body to accept.
    pub max_frame: usize,
}

/// Sends Raft messages to peers and delivers theirs to an [`Inbox`].
pub trait Transport: Send {
    /// Starts accepting and delivering inbound messages to `inbox`. Called
    /// once, before any `send`.
    fn start(&mut self, inbox: Inbox) -> Result<()>;
    /// Like [`start`](Transport::start), but a transport over sockets may
    /// hand inbound connections to `adopt` once their peer is known, rather
    /// than read them itself; `inbox` still gets whatever it reads. The
    /// default ignores `adopt`.
    fn start_adopting(&mut self, inbox: Inbox, adopt: Adopt) -> Result<()> {
        let _ = adopt;
        self.start(inbox)
    }
    /// Queues `msg` for peer `to`. Never blocks: if the peer is unreachable
    /// or its queue is full the message may be dropped (Raft retries).
    fn send(&mut self, to: NodeId, msg: Message);
    /// Stops all threads and closes all connections.
    fn shutdown(&mut self);
}

/// Writes as much of `buf` as the socket takes now; never blocks. Returns
/// how many bytes went out (0 if the socket is full); an error only if
/// nothing went out.
pub(crate) fn send_nonblocking(stream: &TcpStream, mut buf: &[u8]) -> io::Result<usize> {
    let total = buf.len();
    while !buf.is_empty() {
        // SAFETY: the pointer and length describe a live slice; the flags
        // make this one call non-blocking and keep a closed peer from
        // raising SIGPIPE.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                ErrorKind::WouldBlock => break,
                ErrorKind::Interrupted => continue,
                // Report the bytes that left; the caller meets the error
                // on its next write.
                _ if buf.len() < total => break,
                _ => return Err(err),
            }
        }
        buf = &buf[n as usize..];
    }
    Ok(total - buf.len())
}

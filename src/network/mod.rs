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
use std::time::Duration;

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

/// How TCP itself watches a connection whose other side may vanish without
/// a word (power loss, a partition, a machine that rebooted): keepalive
/// probes on an idle connection, and a limit on how long sent data may go
/// unacknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeadPeerCheck {
    /// Silence before the first keepalive probe.
    pub idle: Duration,
    /// Between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub probes: u32,
    /// Sent data unacknowledged for this long drops the connection
    /// (`TCP_USER_TIMEOUT`); `None` leaves the system's retransmission
    /// limit (many minutes).
    pub unacked: Option<Duration>,
}

impl DeadPeerCheck {
    /// For connections between members: a vanished member is noticed
    /// within about ten seconds, also on a connection that only reads.
    pub(crate) const PEERS: DeadPeerCheck = DeadPeerCheck {
        idle: Duration::from_secs(5),
        interval: Duration::from_secs(1),
        probes: 5,
        unacked: Some(Duration::from_secs(10)),
    };

    /// For client connections: idle ones of vanished clients are dropped
    /// after about a minute and a half.
    pub(crate) const CLIENTS: DeadPeerCheck = DeadPeerCheck {
        idle: Duration::from_secs(60),
        interval: Duration::from_secs(10),
        probes: 3,
        unacked: None,
    };

    /// Sets the socket options. Where the system lacks one (outside Linux)
    /// only keepalive itself is turned on.
    pub(crate) fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        set_int(stream, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
        #[cfg(target_os = "linux")]
        {
            let secs = |d: Duration| i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX);
            set_int(
                stream,
                libc::IPPROTO_TCP,
                libc::TCP_KEEPIDLE,
                secs(self.idle),
            )?;
            set_int(
                stream,
                libc::IPPROTO_TCP,
                libc::TCP_KEEPINTVL,
                secs(self.interval),
            )?;
            let probes = i32::try_from(self.probes.max(1)).unwrap_or(i32::MAX);
            set_int(stream, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, probes)?;
            if let Some(unacked) = self.unacked {
                let ms = i32::try_from(unacked.as_millis()).unwrap_or(i32::MAX);
                set_int(stream, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms)?;
            }
        }
        Ok(())
    }
}

fn set_int(
    stream: &TcpStream,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size; the kernel
    // only reads it.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn get_int(stream: &TcpStream, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a live c_int and its size; the kernel writes at most that.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        value
    }

    #[test]
    fn dead_peer_checks_set_keepalive_and_the_unacknowledged_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(get_int(&stream, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
        DeadPeerCheck::PEERS.apply(&stream).unwrap();
        DeadPeerCheck::CLIENTS.apply(&accepted).unwrap();
        assert_eq!(get_int(&stream, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(get_int(&accepted, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        #[cfg(target_os = "linux")]
        {
            let tcp = libc::IPPROTO_TCP;
            assert_eq!(get_int(&stream, tcp, libc::TCP_KEEPIDLE), 5);
            assert_eq!(get_int(&stream, tcp, libc::TCP_KEEPINTVL), 1);
            assert_eq!(get_int(&stream, tcp, libc::TCP_KEEPCNT), 5);
            assert_eq!(get_int(&stream, tcp, libc::TCP_USER_TIMEOUT), 10_000);
            assert_eq!(get_int(&accepted, tcp, libc::TCP_KEEPIDLE), 60);
            assert_eq!(get_int(&accepted, tcp, libc::TCP_KEEPINTVL), 10);
            assert_eq!(get_int(&accepted, tcp, libc::TCP_KEEPCNT), 3);
            assert_eq!(get_int(&accepted, tcp, libc::TCP_USER_TIMEOUT), 0);
        }
    }
}

//! Node-to-node transport and the frame codec shared by both ports.
//!
//! [`Transport`] is what the server uses to reach its peers. [`tcp`] holds the
//! real implementation; [`memory`] an in-process network for tests.

pub mod frame;
pub mod memory;
pub mod tcp;

use std::sync::Arc;

use crate::raft::Message;
use crate::{NodeId, Result};

/// Where a transport delivers inbound messages: `(sender, message)`.
pub type Inbox = Arc<dyn Fn(NodeId, Message) + Send + Sync>;

/// Sends Raft messages to peers and delivers theirs to an [`Inbox`].
pub trait Transport: Send {
    /// Starts accepting and delivering inbound messages to `inbox`. Called
    /// once, before any `send`.
    fn start(&mut self, inbox: Inbox) -> Result<()>;
    /// Queues `msg` for peer `to`. Never blocks: if the peer is unreachable
    /// or its queue is full the message may be dropped (Raft retries).
    fn send(&mut self, to: NodeId, msg: Message);
    /// Stops all threads and closes all connections.
    fn shutdown(&mut self);
}

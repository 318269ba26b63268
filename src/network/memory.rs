//! An in-process network for tests: nodes in one process exchange messages
//! through a shared [`MemoryNetwork`], with partitions under the test's
//! control.
//!
//! # Invariants
//!
//! - Delivery is synchronous: [`Transport::send`] calls the receiver's inbox
//!   on the sender's thread before it returns, so messages from one sender to
//!   one receiver arrive in the order they were sent, and a test knows a
//!   message has arrived (or was dropped) as soon as `send` returns.
//! - A message is delivered only if the receiver's transport is started and
//!   not shut down, and the link from sender to receiver is up when `send`
//!   is called. Otherwise it is dropped and counted, like a lost packet.
//! - No lock is held while an inbox runs, so an inbox may itself use the
//!   network. An inbox must not block (the same rule as for the TCP
//!   transport); a message sent just as its receiver shuts down may still
//!   reach the old inbox, as on a real network.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Inbox, Transport};
use crate::raft::Message;
use crate::{Error, NodeId, Result};

/// A simulated network shared by the nodes of an in-process cluster. Cloning
/// it yields another handle to the same network.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// The inbox of every started transport.
    inboxes: HashMap<NodeId, Inbox>,
    /// Directed links that are down: `(from, to)`.
    cut: HashSet<(NodeId, NodeId)>,
    /// Nodes cut off from everyone.
    isolated: HashSet<NodeId>,
    delivered: u64,
    dropped: u64,
}

impl State {
    fn link_up(&self, from: NodeId, to: NodeId) -> bool {
        !self.isolated.contains(&from)
            && !self.isolated.contains(&to)
            && !self.cut.contains(&(from, to))
    }
}

/// Counters of a [`MemoryNetwork`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Messages handed to a receiver's inbox.
    pub delivered: u64,
    /// Messages dropped by a partition or for lack of a running receiver.
    pub dropped: u64,
}

impl MemoryNetwork {
    /// An empty network with every link up.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is a few sets and counters, consistent after any panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A transport for node `id` attached to this network. It receives
    /// nothing until it is started.
    pub fn transport(&self, id: NodeId) -> MemoryTransport {
        MemoryTransport {
            id,
            network: self.clone(),
            running: false,
        }
    }

    /// Cuts the link between `a` and `b` in both directions.
    pub fn disconnect(&self, a: NodeId, b: NodeId) {
        let mut state = self.state();
        state.cut.insert((a, b));
        state.cut.insert((b, a));
    }

    /// Cuts only the direction from `from` to `to` (an asymmetric partition).
    pub fn disconnect_one_way(&self, from: NodeId, to: NodeId) {
        self.state().cut.insert((from, to));
    }

    /// Restores the link between `a` and `b` in both directions (isolation
    /// set by [`MemoryNetwork::isolate`] still applies).
    pub fn reconnect(&self, a: NodeId, b: NodeId) {
        let mut state = self.state();
        state.cut.remove(&(a, b));
        state.cut.remove(&(b, a));
    }

    /// Cuts node `id` off from every other node.
    pub fn isolate(&self, id: NodeId) {
        self.state().isolated.insert(id);
    }

    /// Restores every link: undoes all disconnections and isolations.
    pub fn heal(&self) {
        let mut state = self.state();
        state.cut.clear();
        state.isolated.clear();
    }

    /// Whether a message sent now from `from` to `to` would pass the
    /// partitions (regardless of whether `to` is running).
    pub fn link_up(&self, from: NodeId, to: NodeId) -> bool {
        self.state().link_up(from, to)
    }

    /// The network's counters so far.
    pub fn stats(&self) -> MemoryStats {
        let state = self.state();
        MemoryStats {
            delivered: state.delivered,
            dropped: state.dropped,
        }
    }

    fn deliver(&self, from: NodeId, to: NodeId, msg: Message) {
        let inbox = {
            let mut state = self.state();
            let inbox = match state.inboxes.get(&to) {
                Some(inbox) if state.link_up(from, to) => Some(Arc::clone(inbox)),
                _ => None,
            };
            match inbox {
                Some(inbox) => {
                    state.delivered += 1;
                    inbox
                }
                None => {
                    state.dropped += 1;
                    return;
                }
            }
        };
        inbox(from, msg);
    }
}

/// One node's attachment to a [`MemoryNetwork`].
pub struct MemoryTransport {
    id: NodeId,
    network: MemoryNetwork,
    running: bool,
}

impl MemoryTransport {
    /// The node this transport belongs to.
    pub fn id(&self) -> NodeId {
        self.id
    }
}

impl Transport for MemoryTransport {
    /// Registers `inbox` for this node. Fails if another running transport
    /// already serves this node id on the same network.
    fn start(&mut self, inbox: Inbox) -> Result<()> {
        if self.running {
            return Err(Error::Failed("the transport is already running".into()));
        }
        let mut state = self.network.state();
        if state.inboxes.contains_key(&self.id) {
            return Err(Error::Config(format!(
                "node {} is already attached to this network",
                self.id
            )));
        }
        state.inboxes.insert(self.id, inbox);
        self.running = true;
        Ok(())
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        if !self.running {
            self.network.state().dropped += 1;
            return;
        }
        self.network.deliver(self.id, to, msg);
    }

    fn shutdown(&mut self) {
        if self.running {
            self.running = false;
            self.network.state().inboxes.remove(&self.id);
        }
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

//! The Raft node state machine. (Skeleton: implementation in progress.)

use super::{Config, Ready, Status};
use crate::storage::{LogStorage, StateStorage};
use crate::{LogIndex, NodeId, Result};

use super::Message;

/// A Raft node over a log and a state store.
pub struct Node<L: LogStorage, S: StateStorage> {
    config: Config,
    log: L,
    state: S,
}

impl<L: LogStorage, S: StateStorage> Node<L, S> {
    /// Builds a node from its configuration and durable storage; a restarted
    /// node rebuilds its state from `log` and `state` alone.
    pub fn new(config: Config, log: L, state: S) -> Result<Self> {
        Ok(Node { config, log, state })
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) -> Result<()> {
        todo!()
    }

    /// Handles one message from a peer.
    pub fn step(&mut self, from: NodeId, msg: Message) -> Result<()> {
        let _ = (from, msg);
        todo!()
    }

    /// Appends a command to the log on the leader; returns its index, or
    /// `Error::NotLeader` with a hint.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<LogIndex> {
        let _ = data;
        todo!()
    }

    /// Requests a linearizable read; it appears in [`Ready::reads`] once safe.
    pub fn read_index(&mut self, id: u64) -> Result<()> {
        let _ = id;
        todo!()
    }

    /// Whether [`Node::ready`] has anything to hand out.
    pub fn has_ready(&self) -> bool {
        todo!()
    }

    /// Takes the outputs produced since the last call.
    pub fn ready(&mut self) -> Ready {
        todo!()
    }

    /// Syncs the log, then records it as durable (a leader counts itself
    /// towards a quorum only after this).
    pub fn sync(&mut self) -> Result<()> {
        todo!()
    }

    /// The node's current status.
    pub fn status(&self) -> Status {
        todo!()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The log storage (read-only), for inspection.
    pub fn log_storage(&self) -> &L {
        &self.log
    }

    /// The state storage (read-only), for inspection.
    pub fn state_storage(&self) -> &S {
        &self.state
    }
}

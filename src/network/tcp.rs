//! TCP transport. (Placeholder signatures: implementation in progress.)

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::{Inbox, Transport};
use crate::raft::Message;
use crate::{NodeId, Result};

/// Configuration of a [`TcpTransport`].
pub struct TcpConfig {
    pub id: NodeId,
    pub cluster: String,
    pub listen: SocketAddr,
    pub peers: BTreeMap<NodeId, SocketAddr>,
}

/// TCP transport.
pub struct TcpTransport {}

impl TcpTransport {
    pub fn new(config: TcpConfig) -> Result<TcpTransport> {
        let _ = config;
        unimplemented!()
    }
}

impl Transport for TcpTransport {
    fn start(&mut self, inbox: Inbox) -> Result<()> {
        let _ = inbox;
        unimplemented!()
    }
    fn send(&mut self, to: NodeId, msg: Message) {
        let _ = (to, msg);
    }
    fn shutdown(&mut self) {}
}

//! The blocking client. (Placeholder signatures: implementation in progress.)

use std::net::SocketAddr;
use std::time::Duration;

use super::protocol::NodeStatus;
use crate::{NodeId, Result};

/// Result of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    pub swapped: bool,
    pub current: Option<Vec<u8>>,
}

/// A blocking client for a kvapp-c cluster.
pub struct Client {}

#[allow(unused_variables)]
impl Client {
    pub fn new(nodes: Vec<SocketAddr>, timeout: Duration) -> Client {
        unimplemented!()
    }
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        unimplemented!()
    }
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        unimplemented!()
    }
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        unimplemented!()
    }
    pub fn cas(&mut self, key: &[u8], expected: Option<&[u8]>, new: &[u8]) -> Result<CasOutcome> {
        unimplemented!()
    }
    pub fn list(&mut self, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
        unimplemented!()
    }
    pub fn status(&mut self) -> Vec<(NodeId, SocketAddr, Result<NodeStatus>)> {
        unimplemented!()
    }
}

//! kvapp-c: a distributed key-value store replicated with Raft.
//!
//! The crate is organised as a set of layers with dependencies flowing one way:
//!
//! - [`raft`]: the consensus core, a deterministic state machine driven by
//!   `tick`, `step` and `propose`. It performs no I/O of its own.
//! - [`storage`]: the [`storage::LogStorage`], [`storage::StateStorage`] and
//!   [`storage::KvStorage`] traits with in-memory and crash-safe file backends.
//! - [`network`]: the frame codec and the [`network::Transport`] trait with its
//!   TCP implementation.
//! - [`kv`]: the key-value state machine, the client protocol and the blocking
//!   [`kv::Client`].
//! - [`timing`]: timing presets and validation.
//! - [`server`]: wires all of the above into a running node.
//!
//! A program starts a node through [`server::Server::builder`] and talks to a
//! cluster through [`kv::Client`], exactly as the `kvapp-c` binary does.

pub mod bench;
pub mod error;
pub mod kv;
pub mod network;
pub mod process;
pub mod raft;
pub mod server;
pub mod shell;
pub mod sim;
pub mod storage;
pub mod timing;

pub use error::{Error, Result};
pub use kv::{CasOutcome, Client};
pub use server::{Server, ServerHandle};
pub use timing::TimingConfig;

/// Identifies a node in the cluster. Node ids are 1-based positions in the
/// cluster list.
pub type NodeId = u64;
/// A Raft term number.
pub type Term = u64;
/// A position in the replicated log; the first entry has index 1.
pub type LogIndex = u64;

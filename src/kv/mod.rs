//! The key-value state machine, its client protocol and the blocking client.

pub mod client;
pub mod machine;
pub mod protocol;

pub use client::{CasOutcome, Client};
pub use machine::KvStateMachine;

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
/// Longest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

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

use crate::{Error, Result};
use protocol::{Op, Query};

/// Checks a key: non-empty, at most [`MAX_KEY_BYTES`], and not starting
/// with the byte 0x00 (reserved for the store's internal records).
pub fn validate_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidInput("the key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidInput(format!(
            "the key is {} bytes long; the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if key[0] == 0 {
        return Err(Error::InvalidInput(
            "keys may not start with the byte 0x00".into(),
        ));
    }
    Ok(())
}

/// Checks a key a write would create: [`validate_key`], and no whitespace
/// (the shell splits its commands at whitespace, and `list` prints one key
/// per line). Checked where requests come in, not when the state machine
/// applies them: an entry already in a log must apply the same way on
/// every replica whichever version replays it. Gets and deletes of such a
/// key (stored before this rule) still work.
pub fn validate_new_key(key: &[u8]) -> Result<()> {
    validate_key(key)?;
    if key
        .utf8_chunks()
        .any(|chunk| chunk.valid().contains(char::is_whitespace))
    {
        return Err(Error::InvalidInput(
            "keys may not contain whitespace".into(),
        ));
    }
    Ok(())
}

/// Checks a value: at most [`MAX_VALUE_BYTES`].
pub fn validate_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::InvalidInput(format!(
            "the value is {} bytes long; the limit is {MAX_VALUE_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// Checks every key and value of a write.
pub fn validate_op(op: &Op) -> Result<()> {
    match op {
        Op::Put { key, value } => {
            validate_new_key(key)?;
            validate_value(value)
        }
        Op::Delete { key } => validate_key(key),
        Op::Cas { key, expected, new } => {
            validate_new_key(key)?;
            if let Some(e) = expected {
                validate_value(e)?;
            }
            validate_value(new)
        }
    }
}

/// Checks a read. A list prefix may be empty (all keys).
pub fn validate_query(query: &Query) -> Result<()> {
    match query {
        Query::Get { key } => validate_key(key),
        Query::List { prefix } if prefix.len() > MAX_KEY_BYTES => Err(Error::InvalidInput(
            format!("the prefix is longer than {MAX_KEY_BYTES} bytes"),
        )),
        Query::List { .. } => Ok(()),
    }
}

pub use client::{CLIENT_PORT_OFFSET, client_addr, client_addrs};
pub use machine::DEFAULT_MAX_SESSIONS;

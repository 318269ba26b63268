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

pub use client::{CLIENT_PORT_OFFSET, client_addr, client_addrs};
pub use machine::DEFAULT_MAX_SESSIONS;

/// Checks that `key` may be stored: non-empty, at most [`MAX_KEY_BYTES`]
/// long, and not starting with byte `0x00` (reserved for the state
/// machine's own records). Returns [`crate::Error::InvalidInput`] otherwise.
pub fn validate_key(key: &[u8]) -> crate::Result<()> {
    if key.is_empty() {
        return Err(crate::Error::InvalidInput("the key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(crate::Error::InvalidInput(format!(
            "the key is {} bytes long; the limit is {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    if key[0] == machine::INTERNAL_KEY_PREFIX {
        return Err(crate::Error::InvalidInput(
            "keys may not start with byte 0x00 (reserved for internal records)".into(),
        ));
    }
    Ok(())
}

/// Checks that `value` may be stored: at most [`MAX_VALUE_BYTES`] long.
/// Returns [`crate::Error::InvalidInput`] otherwise.
pub fn validate_value(value: &[u8]) -> crate::Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(crate::Error::InvalidInput(format!(
            "the value is {} bytes long; the limit is {MAX_VALUE_BYTES} bytes",
            value.len()
        )));
    }
    Ok(())
}

/// Checks every key and value of a write.
pub fn validate_op(op: &protocol::Op) -> crate::Result<()> {
    use protocol::Op;
    match op {
        Op::Put { key, value } => {
            validate_key(key)?;
            validate_value(value)
        }
        Op::Delete { key } => validate_key(key),
        Op::Cas { key, expected, new } => {
            validate_key(key)?;
            if let Some(e) = expected {
                validate_value(e)?;
            }
            validate_value(new)
        }
    }
}

/// Checks a read. A list prefix may be empty (all keys).
pub fn validate_query(query: &protocol::Query) -> crate::Result<()> {
    use protocol::Query;
    match query {
        Query::Get { key } => validate_key(key),
        Query::List { prefix } if prefix.len() > MAX_KEY_BYTES => Err(crate::Error::InvalidInput(
            format!("the prefix is longer than {MAX_KEY_BYTES} bytes"),
        )),
        Query::List { .. } => Ok(()),
    }
}

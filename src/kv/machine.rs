//! The key-value state machine. (Skeleton: implementation in progress.)

use super::protocol::{Outcome, Query};
use crate::storage::{Entry, KvStorage};
use crate::{LogIndex, Result};

/// Applies committed log entries to a [`KvStorage`], with client sessions.
pub struct KvStateMachine {
    storage: Box<dyn KvStorage>,
}

impl KvStateMachine {
    /// Opens the state machine over `storage`, restoring its sessions.
    pub fn new(storage: Box<dyn KvStorage>) -> Result<Self> {
        Ok(KvStateMachine { storage })
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> LogIndex {
        self.storage.applied_index()
    }

    /// Applies one committed entry; returns the outcome for the client that
    /// proposed it (`None` for a no-op entry). Entries at or below the
    /// applied index are ignored (returns `None`).
    pub fn apply(&mut self, entry: &Entry) -> Result<Option<Outcome>> {
        let _ = entry;
        todo!()
    }

    /// Serves a read against the applied state.
    pub fn query(&self, query: &Query) -> Result<Outcome> {
        let _ = query;
        todo!()
    }

    /// Makes everything applied so far durable.
    pub fn flush(&mut self) -> Result<()> {
        self.storage.flush()
    }
}

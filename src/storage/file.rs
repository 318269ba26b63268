//! File storage backends. (Placeholder signatures: implementation in progress.)

use std::path::Path;

use super::memory::{MemoryKv, MemoryLog, MemoryState};
use crate::Result;

/// A locked data directory.
pub struct DataDir {}

impl DataDir {
    pub fn open(path: &Path) -> Result<DataDir> {
        let _ = path;
        unimplemented!()
    }
    pub fn log(&self) -> Result<MemoryLog> {
        unimplemented!()
    }
    pub fn state(&self) -> Result<MemoryState> {
        unimplemented!()
    }
    pub fn kv(&self) -> Result<MemoryKv> {
        unimplemented!()
    }
}

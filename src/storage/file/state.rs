//! [`FileState`]: term and vote in one small file, replaced whole on save.
//!
//! # File format
//!
//! All integers are little-endian; the file is exactly 33 bytes.
//!
//! ```text
//!   0  magic      8 bytes  "KVAPPHST"
//!   8  version    u32      1
//!   12 term       u64
//!   20 has vote   u8       0 or 1
//!   21 vote       u64      the node voted for (0 when has vote is 0)
//!   29 crc        u32      CRC-32 of bytes 0..29
//! ```
//!
//! # Invariants
//!
//! - The value held in memory is always the one durably on disk (or the
//!   default when no file exists): `save` updates it only after the new file
//!   is synced, renamed into place and the directory synced. So `load` never
//!   touches the disk, and saving an unchanged state costs nothing.
//! - A crash during `save` leaves the old or the new file, never a mix; the
//!   `raft.state.tmp` a crash may leave behind is deleted on open.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{
    Claim, check_magic_version, corrupt_at, read_file, remove_stale_tmp, replace_file, u32_at,
    u64_at,
};
use crate::Result;
use crate::storage::{HardState, StateStorage};

const MAGIC: [u8; 8] = *b"KVAPPHST";
const VERSION: u32 = 1;
const LEN: usize = 33;

/// A crash-safe [`StateStorage`] in one file. Open it with
/// [`DataDir::state`](super::DataDir::state).
pub struct FileState {
    path: PathBuf,
    state: HardState,
    _claim: Claim,
}

impl fmt::Debug for FileState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileState")
            .field("path", &self.path)
            .field("state", &self.state)
            .finish()
    }
}

impl FileState {
    /// Opens the state file at `path`; a missing file is the default state.
    pub(super) fn open(path: &Path, claim: Claim) -> Result<FileState> {
        remove_stale_tmp(path)?;
        let state = match read_file(path, 4096)? {
            None => HardState::default(),
            Some(bytes) => decode(path, &bytes)?,
        };
        Ok(FileState {
            path: path.to_path_buf(),
            state,
            _claim: claim,
        })
    }
}

impl StateStorage for FileState {
    fn load(&self) -> Result<HardState> {
        Ok(self.state)
    }

    fn save(&mut self, state: &HardState) -> Result<()> {
        if *state == self.state {
            return Ok(());
        }
        replace_file(&self.path, &encode(state))?;
        self.state = *state;
        Ok(())
    }
}

fn encode(state: &HardState) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&state.term.to_le_bytes());
    b[20] = u8::from(state.vote.is_some());
    b[21..29].copy_from_slice(&state.vote.unwrap_or(0).to_le_bytes());
    let crc = crc32fast::hash(&b[..29]);
    b[29..33].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(path: &Path, b: &[u8]) -> Result<HardState> {
    check_magic_version(path, b, &MAGIC, "kvapp-c state file", VERSION)?;
    let corrupt = |offset: usize, reason: String| corrupt_at(path, offset, reason);
    if b.len() < LEN {
        return Err(corrupt(
            b.len(),
            format!("the file is truncated ({} of {LEN} bytes)", b.len()),
        ));
    }
    if b.len() > LEN {
        return Err(corrupt(
            LEN,
            format!("unexpected bytes after the {LEN}-byte state"),
        ));
    }
    if u32_at(b, 29) != crc32fast::hash(&b[..29]) {
        return Err(corrupt(0, "checksum mismatch".into()));
    }
    let vote = u64_at(b, 21);
    let vote = match b[20] {
        0 if vote == 0 => None,
        1 => Some(vote),
        _ => return Err(corrupt(20, "invalid vote fields".into())),
    };
    Ok(HardState {
        term: u64_at(b, 12),
        vote,
    })
}

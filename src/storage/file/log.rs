//! [`FileLog`]: the Raft log in one append-only file.
//!
//! # File format
//!
//! All integers are little-endian.
//!
//! ```text
//! header (36 bytes):
//!   0  magic          8 bytes  "KVAPPLOG"
//!   8  version        u32      3
//!   12 salt           u32      random, chosen when the file is created
//!   16 prefix index   u64      index of the last discarded entry (0: none)
//!   24 prefix term    u64      term of that entry (0: none)
//!   32 header crc     u32      CRC-32 of bytes 0..32
//! then one record per entry, back to back:
//!   0  length         u32      length of the body (16 + data length)
//!   4  crc            u32      CRC-32 of salt, length field and body
//!   8  body           index u64, term u64, data (scrambled, below)
//! then zeros: room written ahead of time (see `prealloc`), or nothing
//! ```
//!
//! The salt makes records of one file unforgeable by entry data: a client
//! that stores bytes looking like a record inside a value cannot produce a
//! record that checks out, so the scan on open (below) is not fooled.
//!
//! Entry data is stored XORed with a keystream drawn from the salt and the
//! entry's index. So a written log holds no 512-byte sector of zeros, even
//! where entries hold long runs of zeros, and a zero sector can only be one
//! the disk never wrote (see the opening rules below). Version 1 stored the
//! data as is; this build refuses such files. Version 2 is the same format
//! without the start file below: such logs still open, and a discard moves
//! their start without freeing space until the log is copied to a fresh
//! file (then in version 3).
//!
//! # Invariants
//!
//! - The records hold entries `prefix_index + 1 ..= last_index` in order,
//!   each index exactly one more than the one before. The header is written
//!   only when the file is created whole (through a synced and renamed tmp
//!   file), so it is never torn.
//! - In memory the log keeps one file offset per entry (8 bytes) and one
//!   `(first index, term)` pair per run of equal terms; entry data is read
//!   back from the file (normally the page cache) by `entries`. Memory is
//!   thus about 8 bytes per entry held, whatever the entry sizes.
//! - Bytes `0..written` of the log are in the file; `pending` holds the
//!   encoded records that follow, not yet handed to the OS. `append` only
//!   adds to `pending` (writing it out once it grows past 256 KiB);
//!   `start_sync` writes it out and returns a job that calls `fdatasync` on
//!   a shared handle of the file, so the wait can happen on another thread
//!   while appends, reads and truncations go on. Every change bumps a
//!   counter; a job records the count it made durable, so a job that never
//!   ran leaves its changes to the next sync. Nothing ever syncs inside
//!   `append`.
//! - After a failed write, sync or truncation the file's content is unknown,
//!   so the log refuses every further change (reads keep working); the owner
//!   is expected to stop and reopen.
//!
//! # Opening: torn tails versus corruption
//!
//! Opening reads and checks every record. The first record that is damaged
//! (too short for its header, a length outside the valid range or running
//! past the end of the file, or a checksum mismatch) ends the log. If the
//! file holds only zeros from there on, that is the room written ahead and
//! nothing changes. Otherwise the rest of the file is searched, at every
//! byte offset, for any record that checks out and carries an index at or
//! after the expected one:
//!
//! - none found: the damage is a torn tail, what a crash in the middle of an
//!   append leaves. The file is cut back to the last good record (and the cut
//!   synced), and a warning is logged.
//! - one found, with a whole 512-byte sector of zeros between the damaged
//!   record and it: a sync was cut short after the disk wrote later sectors
//!   but not earlier ones (a sector it never wrote still holds the zeros
//!   written ahead). The records after the hole were never synced, since a
//!   sync covers every byte before them, so they are cut with the torn
//!   record, and a warning is logged.
//! - one found, and no zero sector before it: good data follows bad data,
//!   which no crash of this writer produces. Opening fails with
//!   [`Error::Corrupt`] naming the file and the offset of the damaged
//!   record, and the file is left untouched.
//!
//! Before cutting, the damaged record itself is looked at. A crash leaves
//! the record it tore either cut off by the end of the file or with a
//! 512-byte sector the disk never wrote, so its part of that sector reads
//! as zeros. A damaged record that lies whole in the file and fails its
//! checksum without any such part was written whole and damaged afterwards
//! (bit rot, a stray write): it may have been synced and acknowledged, and
//! cutting it could lose a committed entry. Opening fails with
//! [`Error::Corrupt`] instead, leaving the file untouched.
//!
//! A record that checks out but carries the wrong index is corruption too.
//! The limits of this scheme: damage to a last record's length field that
//! makes the length invalid or run past the end of the file reads as a torn
//! write, and so does any damage to a last record whose part of some sector
//! happens to be zeros (a few bytes there, such as the top bytes of the term
//! of an entry without data); such a record is cut. And damage that zeroes
//! a whole sector in the middle of synced records (a lost write the disk
//! acknowledged) reads as a torn sync and cuts the records after it.
//! Scrambled data makes a zero sector in a written log as unlikely as
//! guessing the salt and the keystream.
//!
//! # Compaction
//!
//! A version 3 log always has a start file next to it, `raft.log.start`,
//! written when the log is created and replaced (through a synced and
//! renamed tmp file) whenever the start moves:
//!
//! ```text
//!   0  magic          8 bytes  "KVAPPLST"
//!   8  version        u32      1
//!   12 salt           u32      the log file's salt
//!   16 prefix index   u64      index of the last discarded entry
//!   24 prefix term    u64      term of that entry
//!   32 start          u64      file offset of the record of the next entry
//!   40 crc            u32      CRC-32 of bytes 0..40
//! ```
//!
//! Discarding a prefix moves the start instead of rewriting the file:
//! `discard_through` drops the entries from memory and writes out the
//! records; then a `log-discard` thread syncs them, publishes the new start
//! file, and punches everything from the end of the header to the new start
//! out of the file (`FALLOC_FL_PUNCH_HOLE`), which frees the disk blocks at
//! a cost that does not depend on the entries kept. The file's length
//! stays; it is sparse. Where punching holes is not supported the space
//! stays allocated, and nothing else changes. The thread keeps those syncs
//! (up to 140 ms under load) out of the caller's event loop; until it is
//! done the file still starts where it did, so a crash keeps entries the
//! log had discarded, which costs only space. The next discard, a fresh
//! file (below) and dropping the log wait for it.
//!
//! Opening reads the start file first and scans from `start`; the record
//! there must hold `prefix index + 1`. A start file whose salt is not the
//! log's was left by a crash while a fresh file replaced the log (below);
//! opening then starts after the header and writes a new start file. A
//! missing start file is treated the same, but if the log's first record is
//! damaged and valid records follow, the prefix may have been punched out:
//! that is an error, never cut as a torn write.
//!
//! A fresh file (with a new salt) replaces the log in two cases: discarding
//! every entry (a follower that installs a snapshot beyond its log), and a
//! start that passed 1 GiB while the log keeps at most 32 MiB, so
//! offsets and the file's apparent size stay bounded. The records kept are
//! copied behind a header holding the prefix, the file is synced and renamed
//! over the log, and then its start file is published.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use super::prealloc::Zeroer;
use super::{
    Claim, check_magic_version, commit_tmp, create_tmp, read_exact_at, remove_stale_tmp,
    replace_file, u32_at, u64_at, write_all_at,
};
use crate::storage::{Entry, LogStorage, SyncJob};
use crate::{Error, LogIndex, Result, Term};

const MAGIC: [u8; 8] = *b"KVAPPLOG";
const VERSION: u32 = 3;
/// The previous version, still opened: its files never had a prefix
/// punched out, so they need no start file.
const VERSION_2: u32 = 2;
/// Length of the file header.
const HEADER_LEN: u64 = 36;
/// Length of a record's length and checksum fields.
const RECORD_HEADER: usize = 8;
/// Length of a body's index and term fields.
const BODY_FIXED: usize = 16;
/// The largest entry data accepted; it matches the largest network frame,
/// since entries travel to followers in frames.
pub const MAX_ENTRY_DATA: usize = crate::network::frame::MAX_FRAME;
const MAX_BODY: usize = BODY_FIXED + MAX_ENTRY_DATA;
/// The largest prefix index a log file may carry.
const MAX_INDEX: LogIndex = i64::MAX as LogIndex;
/// `pending` is written out once it grows past this.
const WRITE_THRESHOLD: usize = 256 << 10;
/// Unit of reading when copying or searching the file.
const CHUNK: usize = 1 << 20;
/// The smallest unit a disk writes whole; a torn or never-written write
/// leaves whole sectors of zeros in preallocated space.
const SECTOR: u64 = 512;
const START_MAGIC: [u8; 8] = *b"KVAPPLST";
const START_VERSION: u32 = 1;
const START_LEN: usize = 44;
/// Holes are punched in whole blocks of this size.
const HOLE_BLOCK: u64 = 4096;
/// Once the log's start passes this offset and what it keeps is at most
/// [`REWRITE_MAX_KEPT`], the kept records are copied to a fresh file, so
/// offsets (and the file's apparent size) do not grow for ever.
const REWRITE_AT: u64 = 1 << 30;
/// The most a copy to a fresh file moves: it runs in the caller's thread
/// (the event loop), so it waits for a compaction that keeps little.
const REWRITE_MAX_KEPT: u64 = 32 << 20;

/// A crash-safe [`LogStorage`] in one file. Open it with
/// [`DataDir::log`](super::DataDir::log); see the module docs of
/// `storage::file` for the format and guarantees.
///
/// A clean drop hands buffered appends to the OS (without syncing), so a
/// reopen in a running system sees them; only [`LogStorage::sync`] makes
/// them survive a power loss.
pub struct FileLog {
    path: PathBuf,
    /// `raft.log.start`: where the log starts once a prefix was discarded.
    start_path: PathBuf,
    /// Shared with running sync jobs.
    file: Arc<File>,
    salt: u32,
    prefix_index: LogIndex,
    prefix_term: Term,
    /// File offset of the record of entry `prefix_index + 1 + i`.
    offsets: Vec<u64>,
    /// `(first index, term)` of each run of entries with equal terms, by
    /// ascending index; empty exactly when the log holds no entries.
    terms: Vec<(LogIndex, Term)>,
    /// Length of the part of the log already written to the file.
    written: u64,
    /// Encoded records for the log bytes from `written` on.
    pending: Vec<u8>,
    /// Count of changes made since opening; a sync job records the count
    /// it made durable in `shared`.
    changes: u64,
    /// What sync jobs report back, and the failure flag.
    shared: Arc<SyncShared>,
    /// Keeps zeros written ahead of the log's end.
    zeroer: Zeroer,
    /// Set once punching a hole failed as unsupported: no more tries.
    no_holes: bool,
    /// The disk part of the last discard (sync, start file, hole), running
    /// on a thread; it returns whether holes turned out unsupported.
    discarding: Option<JoinHandle<bool>>,
    /// The file's format version (2: holes are never punched in it).
    version: u32,
    /// See [`REWRITE_AT`]; changed only by tests.
    rewrite_at: u64,
    _claim: Claim,
}

impl fmt::Debug for FileLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLog")
            .field("path", &self.path)
            .field("first_index", &self.first_index())
            .field("last_index", &self.last_index())
            .field("bytes", &self.end())
            .field("pending", &self.pending.len())
            .field("failed", &self.shared.failed.load(Ordering::Relaxed))
            .finish()
    }
}

/// State shared between a [`FileLog`] and its sync jobs.
#[derive(Debug, Default)]
struct SyncShared {
    /// The highest change count known durable.
    synced: AtomicU64,
    /// Set when a write, sync or truncation failed: the file's content is
    /// unknown from then on.
    failed: AtomicBool,
    /// Held around each sync of the log's file; see [`SyncShared::sync`].
    one_sync: Mutex<()>,
}

impl SyncShared {
    /// Syncs the log's `file`, one sync at a time, and fails once anything
    /// failed. Sync jobs and the discard thread share one open file, and
    /// Linux reports a failed write-back to only one `fsync` of it: the
    /// sync after a failed one must not report the lost pages durable.
    fn sync(&self, file: &File) -> io::Result<()> {
        let _one = self.one_sync.lock().unwrap_or_else(|e| e.into_inner());
        if self.failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "an earlier write or sync of the log failed",
            ));
        }
        let result = file.sync_data();
        if result.is_err() {
            // After a failed fsync the kernel may have dropped the dirty
            // pages: nothing written since the last good sync can be
            // trusted.
            self.failed.store(true, Ordering::Release);
        }
        result
    }
}

/// Why a record cannot be read where one is expected.
enum Damage {
    Io(io::Error),
    Bad(String),
    /// The record lies whole in the file, this many bytes with its header,
    /// but fails its checksum. Opening tells a torn append from damage done
    /// after the record was written by looking at its bytes.
    Mismatch(u64),
}

impl FileLog {
    /// Opens the log at `path`, creating an empty one if it does not exist.
    pub(super) fn open(path: &Path, claim: Claim) -> Result<FileLog> {
        remove_stale_tmp(path)?;
        let start_path = start_path_of(path);
        remove_stale_tmp(&start_path)?;
        if !path.exists() {
            let salt = new_salt();
            replace_file(path, &encode_header(salt, 0, 0))?;
            replace_file(&start_path, &encode_start(salt, 0, 0, HEADER_LEN))?;
        }
        let io_err = |what: &str, e| Error::io(format!("{what} {}", path.display()), e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err("opening", e))?;
        let len = file
            .metadata()
            .map_err(|e| io_err("reading metadata of", e))?
            .len();

        let mut header = [0u8; HEADER_LEN as usize];
        let n = len.min(HEADER_LEN) as usize;
        read_exact_at(&file, &mut header[..n], 0).map_err(|e| io_err("reading", e))?;
        let version = if n >= 12 && u32_at(&header, 8) == VERSION_2 {
            VERSION_2
        } else {
            VERSION
        };
        check_magic_version(path, &header[..n], &MAGIC, "kvapp-c log file", version)?;
        let corrupt = |offset: u64, reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        if n < HEADER_LEN as usize {
            return Err(corrupt(
                0,
                format!("the header is truncated ({n} of {HEADER_LEN} bytes)"),
            ));
        }
        if u32_at(&header, 32) != crc32fast::hash(&header[..32]) {
            return Err(corrupt(0, "header checksum mismatch".into()));
        }
        let salt = u32_at(&header, 12);
        let mut prefix_index = u64_at(&header, 16);
        let mut prefix_term = u64_at(&header, 24);
        let mut start = HEADER_LEN;
        let mut have_start = false;
        if let Some(bytes) = super::read_file(&start_path, START_LEN as u64 + 1)? {
            let (index, term, at) = decode_start(&start_path, &bytes)?;
            if u32_at(&bytes, 12) != salt {
                ::log::warn!(
                    "removing {}: it belongs to a log file that was since replaced",
                    start_path.display()
                );
                fs_remove(&start_path)?;
            } else if index < prefix_index || at < HEADER_LEN || at > len {
                return Err(Error::Corrupt {
                    path: start_path.clone(),
                    offset: 16,
                    reason: format!(
                        "start at offset {at} after index {index} does not fit the log \
                         (prefix index {prefix_index}, {len} bytes)"
                    ),
                });
            } else {
                (prefix_index, prefix_term, start) = (index, term, at);
                have_start = true;
            }
        }
        // Far beyond any real log; rejecting it keeps index arithmetic safe.
        if prefix_index > MAX_INDEX {
            return Err(corrupt(
                16,
                format!("implausible prefix index {prefix_index}"),
            ));
        }

        let mut offsets = Vec::new();
        let mut terms = Vec::new();
        let mut reader = BufReader::with_capacity(CHUNK, &file);
        reader
            .seek(SeekFrom::Start(start))
            .map_err(|e| io_err("seeking in", e))?;
        let mut pos = start;
        let mut body = Vec::new();
        // Why the scan stopped, and the end of the damaged record if it lies
        // whole in the file.
        let mut damage: Option<(String, Option<u64>)> = None;
        while pos < len {
            match read_record(&mut reader, salt, len - pos, &mut body) {
                Ok(()) => {}
                Err(Damage::Io(e)) => return Err(io_err("reading", e)),
                Err(Damage::Bad(reason)) => {
                    damage = Some((reason, None));
                    break;
                }
                Err(Damage::Mismatch(n)) => {
                    damage = Some(("checksum mismatch".into(), Some(pos + n)));
                    break;
                }
            }
            let index = u64_at(&body, 0);
            let expected = prefix_index + offsets.len() as LogIndex + 1;
            if index != expected {
                if offsets.is_empty() && start > HEADER_LEN {
                    return Err(corrupt(
                        pos,
                        format!(
                            "the log's start ({}) names index {expected}, but the record \
                             there holds {index}",
                            start_path.display()
                        ),
                    ));
                }
                return Err(corrupt(
                    pos,
                    format!("record holds index {index} where {expected} was expected"),
                ));
            }
            offsets.push(pos);
            push_term(&mut terms, index, u64_at(&body, 8));
            pos += (RECORD_HEADER + body.len()) as u64;
        }
        drop(reader);

        let mut file_len = len;
        // A tail of zeros is space written ahead (see `prealloc`): the end.
        if let Some((reason, whole_to)) = damage
            && !all_zero(&file, pos, len).map_err(|e| io_err("reading", e))?
        {
            if version >= VERSION && !have_start && offsets.is_empty() {
                // A start file goes missing only in a crash while a fresh
                // file replaces the log, whose first record is then intact;
                // here it is not, so the prefix may have been punched out.
                return Err(corrupt(
                    pos,
                    format!(
                        "{} is missing and the log's first record is damaged ({reason}) \
                         while records follow: the log's start is unknown",
                        start_path.display()
                    ),
                ));
            }
            let expected = prefix_index + offsets.len() as LogIndex + 1;
            let found = find_record(&file, salt, pos + 1, len, expected)
                .map_err(|e| io_err("reading", e))?;
            let what = match found {
                None => "left by an interrupted append",
                // Every sync covers all bytes before it, so a record after
                // a sector that was never written was itself never synced.
                Some(found)
                    if has_zero_sector(&file, pos, found).map_err(|e| io_err("reading", e))? =>
                {
                    "and unsynced records after it, left by an interrupted sync"
                }
                Some(found) => {
                    return Err(corrupt(
                        pos,
                        format!(
                            "damaged record ({reason}) followed by a valid record at offset \
                             {found}"
                        ),
                    ));
                }
            };
            // A crash leaves the record it tore cut off by the end of the
            // file or with a sector the disk never wrote. This one was
            // written whole and damaged since, perhaps after it was synced
            // and acknowledged: cutting it could lose a committed entry.
            if let Some(to) = whole_to
                && !has_unwritten_part(&file, pos, to).map_err(|e| io_err("reading", e))?
            {
                return Err(corrupt(
                    pos,
                    format!(
                        "the record of entry {expected} fails its checksum, but every disk \
                         sector of it was written: it was damaged after it was written whole, \
                         not torn by a crash, and this node may have acknowledged it. Restore \
                         this node's data directory from a backup, or replace the node; do not \
                         just cut or delete the record, which may hold a committed entry"
                    ),
                ));
            }
            ::log::warn!(
                "{}: cutting a torn record at offset {pos} ({reason}; {} bytes) {what}",
                path.display(),
                len - pos
            );
            file.set_len(pos).map_err(|e| io_err("truncating", e))?;
            file.sync_data().map_err(|e| io_err("syncing", e))?;
            file_len = pos;
        }
        if version >= VERSION && !have_start {
            // Restore the start file a crash left out (see above).
            replace_file(
                &start_path,
                &encode_start(salt, prefix_index, prefix_term, HEADER_LEN),
            )?;
        }
        Ok(FileLog {
            path: path.to_path_buf(),
            start_path,
            file: Arc::new(file),
            salt,
            prefix_index,
            prefix_term,
            offsets,
            terms,
            written: pos,
            pending: Vec::new(),
            changes: 0,
            shared: Arc::default(),
            zeroer: Zeroer::new(path, file_len),
            no_holes: false,
            discarding: None,
            version,
            rewrite_at: REWRITE_AT,
            _claim: claim,
        })
    }

    /// The log's byte length, buffered records included.
    fn end(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Offset of the record of `index`, which must be held, or the end of
    /// the log for `last_index() + 1`.
    fn offset_of(&self, index: LogIndex) -> u64 {
        let i = (index - self.prefix_index - 1) as usize;
        self.offsets.get(i).copied().unwrap_or_else(|| self.end())
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed() {
            return Err(Error::io(
                format!("changing {}", self.path.display()),
                io::Error::other("an earlier write failed; reopen the log"),
            ));
        }
        Ok(())
    }

    fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    fn fail(&self) {
        self.shared.failed.store(true, Ordering::Release);
    }

    /// Hands `pending` to the OS. On failure `pending` is kept (so reads
    /// still see it) and the log refuses further changes.
    fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let to = self.written + self.pending.len() as u64;
        self.zeroer.before_write(to);
        if let Err(e) = write_all_at(&self.file, &self.pending, self.written) {
            self.fail();
            return Err(Error::io(format!("writing {}", self.path.display()), e));
        }
        self.written += self.pending.len() as u64;
        self.pending.clear();
        if self.pending.capacity() > 4 * WRITE_THRESHOLD {
            self.pending.shrink_to(WRITE_THRESHOLD);
        }
        Ok(())
    }

    /// Reads the log bytes `start..stop`, from the file and `pending`.
    fn read_range(&self, start: u64, stop: u64) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; (stop - start) as usize];
        if start < self.written {
            let file_stop = stop.min(self.written);
            read_exact_at(
                &self.file,
                &mut bytes[..(file_stop - start) as usize],
                start,
            )
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        }
        if stop > self.written {
            let from = start.max(self.written);
            let src = &self.pending[(from - self.written) as usize..(stop - self.written) as usize];
            bytes[(from - start) as usize..].copy_from_slice(src);
        }
        Ok(bytes)
    }
}

impl FileLog {
    /// Replaces the log with an empty one whose prefix is `(index, term)`:
    /// a fresh file (with a new salt) holding only the header, renamed over
    /// the log, then its start file.
    fn restart_after(&mut self, index: LogIndex, term: Term) -> Result<()> {
        // The discard on disk works on the file this replaces.
        self.settle_discard();
        self.check_usable()?;
        self.zeroer.finish(true);
        // A new salt: a start file left by a crash before the new one is
        // published names another file's salt, and opening replaces it.
        let salt = new_salt();
        let (tmp, file) = create_tmp(&self.path)?;
        if let Err(e) = write_all_at(&file, &encode_header(salt, index, term), 0) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(format!("writing {}", tmp.display()), e));
        }
        if let Err(e) = commit_tmp(&file, &tmp, &self.path) {
            // The rename may or may not have happened: stop changing the log.
            self.fail();
            return Err(e);
        }
        self.salt = salt;
        self.offsets.clear();
        self.terms.clear();
        self.file = Arc::new(file);
        self.written = HEADER_LEN;
        self.zeroer.reset(self.written);
        self.pending.clear();
        self.prefix_index = index;
        self.prefix_term = term;
        // The new file was synced whole before it replaced the old one.
        self.shared.synced.fetch_max(self.changes, Ordering::AcqRel);
        self.version = VERSION;
        if let Err(e) = replace_file(
            &self.start_path,
            &encode_start(salt, index, term, HEADER_LEN),
        ) {
            // Opening would drop the stale start file (its salt is the old
            // file's) and write a new one, but stop here as after any
            // failed change.
            self.fail();
            return Err(e);
        }
        Ok(())
    }

    /// Copies the records held to a fresh file (with a new salt) that
    /// starts right after its header, renames it over the log and publishes
    /// its start file. Costs a read and a write of the records kept.
    fn rewrite(&mut self) -> Result<()> {
        self.settle_discard();
        self.check_usable()?;
        self.write_pending()?;
        let salt = new_salt();
        let (tmp, file) = create_tmp(&self.path)?;
        let (offsets, end) = match self.write_copy(&file, salt) {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // The zero writer works on the file at the log's path: stopped
        // before the new file takes that path.
        self.zeroer.finish(true);
        let published = commit_tmp(&file, &tmp, &self.path).and_then(|()| {
            replace_file(
                &self.start_path,
                &encode_start(salt, self.prefix_index, self.prefix_term, HEADER_LEN),
            )
        });
        if let Err(e) = published {
            // The rename may or may not have happened: stop changing the log.
            self.fail();
            return Err(e);
        }
        ::log::info!(
            "{}: copied {} entries to a fresh file ({} bytes)",
            self.path.display(),
            offsets.len(),
            end
        );
        self.salt = salt;
        self.offsets = offsets;
        self.file = Arc::new(file);
        self.written = end;
        self.zeroer.reset(end);
        self.version = VERSION;
        // The new file was synced whole before it replaced the old one.
        self.shared.synced.fetch_max(self.changes, Ordering::AcqRel);
        Ok(())
    }

    /// Writes the header and every record held, encoded with `salt`, to
    /// `file`; returns the records' offsets there and the end.
    fn write_copy(&self, file: &File, salt: u32) -> Result<(Vec<u64>, u64)> {
        let io_err = |e| Error::io(format!("writing a copy of {}", self.path.display()), e);
        let mut w = std::io::BufWriter::with_capacity(CHUNK, file);
        w.write_all(&encode_header(salt, self.prefix_index, self.prefix_term))
            .map_err(io_err)?;
        let mut offsets = Vec::with_capacity(self.offsets.len());
        let mut pos = HEADER_LEN;
        let mut buf = Vec::new();
        let last = self.last_index();
        let mut next = self.prefix_index + 1;
        while next <= last {
            let hi = last.min(next + 255) + 1;
            for e in self.entries(next, hi)? {
                buf.clear();
                encode_record(&mut buf, salt, &e);
                offsets.push(pos);
                pos += buf.len() as u64;
                w.write_all(&buf).map_err(io_err)?;
            }
            next = hi;
        }
        w.flush().map_err(io_err)?;
        Ok((offsets, pos))
    }

    /// Lowers the start offset past which the log is copied to a fresh
    /// file (normally 1 GiB), so tests can reach it.
    #[doc(hidden)]
    pub fn set_rewrite_threshold(&mut self, bytes: u64) {
        self.rewrite_at = bytes;
    }

    /// The range to punch out once the log starts at `start`: from right
    /// after the header (the part of the first block that goes is zeroed,
    /// so the log's first record is gone too, which is how opening tells a
    /// punched log that lost its start file) to the block below `start`.
    fn hole_before(&self, start: u64) -> Option<(u64, u64)> {
        let from = HEADER_LEN;
        let to = start / HOLE_BLOCK * HOLE_BLOCK;
        (!self.no_holes && self.version >= VERSION && to > from).then_some((from, to - from))
    }

    /// The disk part of a discard through `index` (of `term`), whose next
    /// record is at `start`.
    fn disk_discard(&self, index: LogIndex, term: Term, start: u64) -> DiskDiscard {
        DiskDiscard {
            file: self.file.clone(),
            shared: self.shared.clone(),
            path: self.path.clone(),
            start_path: self.start_path.clone(),
            start_record: encode_start(self.salt, index, term, start),
            changes: self.changes,
            hole: self.hole_before(start),
        }
    }

    /// Waits for the disk part of the last discard, if one runs.
    fn settle_discard(&mut self) {
        if let Some(handle) = self.discarding.take() {
            match handle.join() {
                Ok(unsupported) => self.no_holes |= unsupported,
                Err(_) => self.fail(),
            }
        }
    }

    /// Waits until the last discard is on disk (its start file published
    /// and its space freed); for tests.
    #[doc(hidden)]
    pub fn wait_for_discard(&mut self) {
        self.settle_discard();
    }
}

/// The disk part of a discard that moved the log's start to `start` (the
/// record of `index + 1`): syncs the log, then publishes the start file,
/// then frees `hole`. `changes` is the change count written out before.
/// A failed sync or publish stops the log; a failed hole only keeps the
/// space. Returns whether holes are unsupported here.
struct DiskDiscard {
    file: Arc<File>,
    shared: Arc<SyncShared>,
    path: PathBuf,
    start_path: PathBuf,
    start_record: [u8; START_LEN],
    changes: u64,
    hole: Option<(u64, u64)>,
}

impl DiskDiscard {
    fn run(self) -> bool {
        // The record the new start names must be durable before the start
        // file points at it.
        if let Err(e) = self.shared.sync(&self.file) {
            ::log::error!(
                "syncing {} before moving its start: {e}",
                self.path.display()
            );
            return false;
        }
        self.shared.synced.fetch_max(self.changes, Ordering::AcqRel);
        if let Err(e) = replace_file(&self.start_path, &self.start_record) {
            // The rename may or may not have happened: stop changing the log.
            self.shared.failed.store(true, Ordering::Release);
            ::log::error!("{e}");
            return false;
        }
        let Some((from, len)) = self.hole else {
            return false;
        };
        match punch(&self.file, from, len) {
            Ok(()) => false,
            Err(e) => {
                ::log::warn!(
                    "{}: could not free the space of discarded entries ({e}); it stays allocated",
                    self.path.display()
                );
                e.raw_os_error() == Some(libc::EOPNOTSUPP)
            }
        }
    }
}

/// Deallocates `len` bytes at `offset` of `file`, which keeps its length.
#[cfg(target_os = "linux")]
fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn punch(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Where the start file of the log at `path` lives.
fn start_path_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".start");
    PathBuf::from(name)
}

/// Removes `path` if it exists.
fn fs_remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// The start file's bytes.
fn encode_start(salt: u32, index: LogIndex, term: Term, start: u64) -> [u8; START_LEN] {
    let mut b = [0u8; START_LEN];
    b[..8].copy_from_slice(&START_MAGIC);
    b[8..12].copy_from_slice(&START_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&salt.to_le_bytes());
    b[16..24].copy_from_slice(&index.to_le_bytes());
    b[24..32].copy_from_slice(&term.to_le_bytes());
    b[32..40].copy_from_slice(&start.to_le_bytes());
    let crc = crc32fast::hash(&b[..40]);
    b[40..44].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Checks a start file: `(prefix index, prefix term, start)`, or an
/// error naming the damage. (The salt, at 12, is the caller's to compare.)
fn decode_start(path: &Path, b: &[u8]) -> Result<(LogIndex, Term, u64)> {
    check_magic_version(
        path,
        b,
        &START_MAGIC,
        "kvapp-c log start file",
        START_VERSION,
    )?;
    let corrupt = |offset: usize, reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if b.len() != START_LEN {
        return Err(corrupt(
            b.len().min(START_LEN),
            format!("the file holds {} bytes, not {START_LEN}", b.len()),
        ));
    }
    if u32_at(b, 40) != crc32fast::hash(&b[..40]) {
        return Err(corrupt(40, "checksum mismatch".into()));
    }
    let index = u64_at(b, 16);
    if index > MAX_INDEX {
        return Err(corrupt(16, format!("implausible prefix index {index}")));
    }
    Ok((index, u64_at(b, 24), u64_at(b, 32)))
}

impl LogStorage for FileLog {
    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        self.check_usable()?;
        let first = self.last_index() + 1;
        for (expected, e) in (first..).zip(entries) {
            if e.index != expected {
                return Err(Error::InvalidInput(format!(
                    "append of index {} where {expected} was expected",
                    e.index
                )));
            }
            if e.data.len() > MAX_ENTRY_DATA {
                return Err(Error::InvalidInput(format!(
                    "entry {} holds {} bytes, more than the limit of {MAX_ENTRY_DATA}",
                    e.index,
                    e.data.len()
                )));
            }
        }
        for e in entries {
            let offset = self.end();
            encode_record(&mut self.pending, self.salt, e);
            self.offsets.push(offset);
            push_term(&mut self.terms, e.index, e.term);
        }
        if !entries.is_empty() {
            self.changes += 1;
        }
        if self.pending.len() >= WRITE_THRESHOLD {
            self.write_pending()?;
        }
        Ok(())
    }

    fn entries(&self, lo: LogIndex, hi: LogIndex) -> Result<Vec<Entry>> {
        if lo > hi || lo <= self.prefix_index || hi > self.last_index() + 1 {
            return Err(Error::InvalidInput(format!(
                "entries {lo}..{hi} outside the log {}..={}",
                self.first_index(),
                self.last_index()
            )));
        }
        if lo == hi {
            return Ok(Vec::new());
        }
        let start = self.offset_of(lo);
        let bytes = self.read_range(start, self.offset_of(hi))?;
        let mut out = Vec::with_capacity((hi - lo) as usize);
        let mut at = 0usize;
        for index in lo..hi {
            let offset = start + at as u64;
            let corrupt = |reason: String| Error::Corrupt {
                path: self.path.clone(),
                offset,
                reason,
            };
            let rest = &bytes[at..];
            if rest.len() < RECORD_HEADER + BODY_FIXED {
                return Err(corrupt("record shorter than its header".into()));
            }
            let len = u32_at(rest, 0) as usize;
            if len < BODY_FIXED || len > rest.len() - RECORD_HEADER {
                return Err(corrupt(format!("record length {len} out of place")));
            }
            let body = &rest[RECORD_HEADER..RECORD_HEADER + len];
            if u32_at(rest, 4) != record_crc(self.salt, &rest[..4], body) {
                return Err(corrupt("checksum mismatch on read".into()));
            }
            if u64_at(body, 0) != index {
                return Err(corrupt(format!(
                    "record holds index {} where {index} was expected",
                    u64_at(body, 0)
                )));
            }
            let mut data = body[BODY_FIXED..].to_vec();
            scramble(self.salt, index, &mut data);
            out.push(Entry {
                index,
                term: u64_at(body, 8),
                data,
            });
            at += RECORD_HEADER + len;
        }
        Ok(out)
    }

    fn term(&self, index: LogIndex) -> Result<Option<Term>> {
        if index == 0 {
            return Ok(Some(0));
        }
        if index == self.prefix_index {
            return Ok(Some(self.prefix_term));
        }
        if index < self.prefix_index || index > self.last_index() {
            return Ok(None);
        }
        let run = self.terms.partition_point(|&(start, _)| start <= index);
        Ok(self.terms.get(run.wrapping_sub(1)).map(|&(_, term)| term))
    }

    fn first_index(&self) -> LogIndex {
        self.prefix_index + 1
    }

    fn last_index(&self) -> LogIndex {
        self.prefix_index + self.offsets.len() as LogIndex
    }

    fn truncate_after(&mut self, index: LogIndex) -> Result<()> {
        self.check_usable()?;
        if index < self.prefix_index {
            return Err(Error::InvalidInput(format!(
                "truncate after {index} reaches into the discarded prefix (through {})",
                self.prefix_index
            )));
        }
        if index >= self.last_index() {
            return Ok(());
        }
        let cut = self.offset_of(index + 1);
        if cut >= self.written {
            self.pending.truncate((cut - self.written) as usize);
        } else {
            // The zeros ahead go too; a running helper stops first.
            self.zeroer.finish(true);
            if let Err(e) = self.file.set_len(cut) {
                self.fail();
                return Err(Error::io(format!("truncating {}", self.path.display()), e));
            }
            // The shorter length must be durable before new records are
            // written where the cut ones were: a crash that kept the old
            // length would show a torn new record over old bytes, with no
            // unwritten sector, which opening takes for damage to a record
            // written whole and refuses. Cuts are rare (a new leader's
            // conflicting entries), so the sync costs little.
            if let Err(e) = self.shared.sync(&self.file) {
                self.fail();
                return Err(Error::io(
                    format!("syncing {} after truncating it", self.path.display()),
                    e,
                ));
            }
            self.zeroer.reset(cut);
            self.pending.clear();
            self.written = cut;
        }
        self.offsets.truncate((index - self.prefix_index) as usize);
        while self.terms.last().is_some_and(|&(start, _)| start > index) {
            self.terms.pop();
        }
        self.changes += 1;
        Ok(())
    }

    fn discard_through(&mut self, index: LogIndex, term: Term) -> Result<()> {
        self.check_usable()?;
        if index <= self.prefix_index {
            return Ok(());
        }
        if index > MAX_INDEX {
            return Err(Error::InvalidInput(format!(
                "cannot discard through index {index}: beyond the largest log index"
            )));
        }
        if index >= self.last_index() {
            return self.restart_after(index, term);
        }
        let held = self.term(index)?;
        if held != Some(term) {
            return Err(Error::InvalidInput(format!(
                "cannot discard through {index} with term {term}: the log holds term {held:?} there"
            )));
        }
        // One discard on disk at a time, in order.
        self.settle_discard();
        self.check_usable()?;
        self.write_pending()?;
        let start = self.offset_of(index + 1);
        let disk = self.disk_discard(index, term, start);
        let dropped = (index - self.prefix_index) as usize;
        self.offsets.drain(..dropped);
        let holding = self
            .terms
            .partition_point(|&(first, _)| first <= index + 1)
            .saturating_sub(1);
        self.terms.drain(..holding);
        if let Some(run) = self.terms.first_mut() {
            run.0 = index + 1;
        }
        self.prefix_index = index;
        self.prefix_term = term;
        // The disk part runs beside the caller (its syncs took up to 140 ms
        // of the event loop under load). Until it is done the file still
        // starts where it did, so a crash keeps entries that were
        // discarded, which only costs space.
        let spawned = thread::Builder::new()
            .name("log-discard".into())
            .spawn(move || disk.run());
        match spawned {
            Ok(handle) => self.discarding = Some(handle),
            // The file keeps its old start, as after a crash; the next
            // discard moves it.
            Err(e) => ::log::warn!(
                "{}: no thread to move the start on disk ({e}); the space stays allocated for now",
                self.path.display()
            ),
        }
        let kept = self.end() - start;
        if start >= self.rewrite_at && kept <= REWRITE_MAX_KEPT {
            // The copy waits for the discard on disk, whose file it replaces.
            if let Err(e) = self.rewrite() {
                if self.failed() {
                    return Err(e);
                }
                // The discard stands and the log is whole; only the space of
                // the punched prefix's offsets is at stake. A later
                // compaction tries again.
                ::log::warn!(
                    "{}: copying to a fresh file failed: {e}",
                    self.path.display()
                );
            }
        }
        Ok(())
    }

    fn start_sync(&mut self) -> Result<SyncJob> {
        self.check_usable()?;
        let target = self.changes;
        if self.shared.synced.load(Ordering::Acquire) >= target {
            return Ok(SyncJob::done());
        }
        self.write_pending()?;
        let file = self.file.clone();
        let shared = self.shared.clone();
        let path = self.path.clone();
        Ok(SyncJob::new(move || {
            if let Err(e) = shared.sync(&file) {
                return Err(Error::io(format!("syncing {}", path.display()), e));
            }
            shared.synced.fetch_max(target, Ordering::AcqRel);
            Ok(())
        }))
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        // The directory lock must outlive the discard on disk.
        self.settle_discard();
        self.zeroer.stop();
        if !self.failed()
            && let Err(e) = self.write_pending()
        {
            ::log::warn!("{e}");
        }
    }
}

/// Records that entry `index` has `term`, `index` being the new last entry.
fn push_term(terms: &mut Vec<(LogIndex, Term)>, index: LogIndex, term: Term) {
    if terms.last().map(|&(_, t)| t) != Some(term) {
        terms.push((index, term));
    }
}

/// A salt for a new log file: hashed from the process's random hasher keys,
/// the time and the process id.
fn new_salt() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish() as u32
}

fn encode_header(
    salt: u32,
    prefix_index: LogIndex,
    prefix_term: Term,
) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&salt.to_le_bytes());
    h[16..24].copy_from_slice(&prefix_index.to_le_bytes());
    h[24..32].copy_from_slice(&prefix_term.to_le_bytes());
    let crc = crc32fast::hash(&h[..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The checksum of a record: over the file's salt, the length field and the
/// body.
fn record_crc(salt: u32, len_field: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(len_field);
    h.update(body);
    h.finalize()
}

/// Appends the record of `e` to `buf`, without intermediate allocation.
fn encode_record(buf: &mut Vec<u8>, salt: u32, e: &Entry) {
    let start = buf.len();
    let body_len = (BODY_FIXED + e.data.len()) as u32;
    buf.reserve(RECORD_HEADER + body_len as usize);
    buf.extend_from_slice(&body_len.to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&e.index.to_le_bytes());
    buf.extend_from_slice(&e.term.to_le_bytes());
    let data_start = buf.len();
    buf.extend_from_slice(&e.data);
    scramble(salt, e.index, &mut buf[data_start..]);
    let crc = record_crc(salt, &buf[start..start + 4], &buf[start + RECORD_HEADER..]);
    buf[start + 4..start + RECORD_HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// XORs `data`, the data of entry `index` in a log with `salt`, with the
/// entry's keystream (splitmix64 seeded from both), which stores or restores
/// it.
fn scramble(salt: u32, index: LogIndex, data: &mut [u8]) {
    let mut state = (u64::from(salt) << 32) ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03);
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes((&*chunk).try_into().expect("8 bytes")) ^ next();
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let key = next().to_le_bytes();
        for (b, k) in rest.iter_mut().zip(key) {
            *b ^= k;
        }
    }
}

/// Reads the record starting at the reader's position into `body` and
/// checks it; `remaining` is the number of file bytes from that position.
fn read_record(
    r: &mut impl Read,
    salt: u32,
    remaining: u64,
    body: &mut Vec<u8>,
) -> std::result::Result<(), Damage> {
    if remaining < RECORD_HEADER as u64 {
        return Err(Damage::Bad(format!(
            "only {remaining} bytes left for a record header"
        )));
    }
    let mut header = [0u8; RECORD_HEADER];
    r.read_exact(&mut header).map_err(Damage::Io)?;
    let len = u32_at(&header, 0) as usize;
    if !(BODY_FIXED..=MAX_BODY).contains(&len) {
        return Err(Damage::Bad(format!("invalid record length {len}")));
    }
    if len as u64 > remaining - RECORD_HEADER as u64 {
        return Err(Damage::Bad(format!(
            "record of {len} bytes runs past the end of the file"
        )));
    }
    body.clear();
    body.resize(len, 0);
    r.read_exact(body).map_err(Damage::Io)?;
    if u32_at(&header, 4) != record_crc(salt, &header[..4], body) {
        return Err(Damage::Mismatch((RECORD_HEADER + len) as u64));
    }
    Ok(())
}

/// Whether bytes `from..to` of `file` are all zero.
fn all_zero(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut chunk = vec![0u8; CHUNK];
    let mut at = from;
    while at < to {
        let n = CHUNK.min((to - at) as usize);
        read_exact_at(file, &mut chunk[..n], at)?;
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Whether some [`SECTOR`]-aligned sector that `from..to` of `file` reaches
/// into holds only zeros inside that range. A disk writes a sector whole or
/// not at all, and space ahead of the log reads as zeros, so a record the
/// disk did not finish writing has such a part. Entry data is scrambled, so
/// a record written whole has one only where a sector holds just a few of
/// its unscrambled bytes and they are zeros (see the module docs).
fn has_unwritten_part(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut sector = [0u8; SECTOR as usize];
    let mut at = from;
    while at < to {
        let stop = ((at / SECTOR + 1) * SECTOR).min(to);
        let part = &mut sector[..(stop - at) as usize];
        read_exact_at(file, part, at)?;
        if part.iter().all(|&b| b == 0) {
            return Ok(true);
        }
        at = stop;
    }
    Ok(false)
}

/// Whether `from..to` of `file` holds a whole [`SECTOR`]-aligned sector of
/// zeros: a sector the disk never wrote (preallocated space, or a hole).
fn has_zero_sector(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let first = from.div_ceil(SECTOR) * SECTOR;
    let mut sector = [0u8; SECTOR as usize];
    let mut at = first;
    while at + SECTOR <= to {
        read_exact_at(file, &mut sector, at)?;
        if sector.iter().all(|&b| b == 0) {
            return Ok(true);
        }
        at += SECTOR;
    }
    Ok(false)
}

/// Searches `from..end` of the file, at every byte offset, for a record
/// that checks out and holds an index of at least `min_index`; returns the
/// offset of the first one found.
fn find_record(
    file: &File,
    salt: u32,
    from: u64,
    end: u64,
    min_index: LogIndex,
) -> io::Result<Option<u64>> {
    // A candidate needs its length, checksum and index: 16 bytes.
    const PROBE: usize = RECORD_HEADER + 8;
    let mut window = vec![0u8; CHUNK + PROBE - 1];
    let mut record = Vec::new();
    let mut start = from;
    while start + PROBE as u64 <= end {
        let n = (window.len() as u64).min(end - start) as usize;
        read_exact_at(file, &mut window[..n], start)?;
        let candidates = n + 1 - PROBE;
        for i in 0..candidates {
            let len = u32_at(&window, i) as usize;
            let offset = start + i as u64;
            if !(BODY_FIXED..=MAX_BODY).contains(&len)
                || offset + (RECORD_HEADER + len) as u64 > end
                || u64_at(&window, i + RECORD_HEADER) < min_index
            {
                continue;
            }
            record.clear();
            record.resize(RECORD_HEADER + len, 0);
            read_exact_at(file, &mut record, offset)?;
            if u32_at(&record, 4) == record_crc(salt, &record[..4], &record[RECORD_HEADER..]) {
                return Ok(Some(offset));
            }
        }
        start += candidates as u64;
    }
    Ok(None)
}

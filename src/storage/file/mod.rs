//! Crash-safe file backends, all kept in one data directory.
//!
//! A [`DataDir`] owns a directory holding:
//!
//! | file          | backend       | written by                                  |
//! |---------------|---------------|---------------------------------------------|
//! | `LOCK`        | -             | an exclusive advisory lock, never content   |
//! | `raft.log`    | [`FileLog`]   | appends of CRC-checked records; a discarded prefix is punched out in place |
//! | `raft.log.start` | [`FileLog`] | where the log starts once a prefix was discarded; replaced whole |
//! | `raft.state`  | [`FileState`] | replaced whole on every save                |
//! | `kv.snapshot` | [`FileKv`]    | replaced whole on every flush               |
//! | `node.id`     | -             | the owning node, written once ([`DataDir::claim_identity`]) |
//!
//! Invariants every backend keeps:
//!
//! - **One owner.** The directory is locked (`LOCK`, `flock`-style exclusive
//!   lock) from [`DataDir::open`] until the `DataDir` *and* every backend
//!   opened from it are dropped, so two processes (or two opens in one
//!   process) never write the same files. Each backend can be open at most
//!   once per directory at a time.
//! - **No half-written file is ever visible.** A file is created or replaced
//!   by writing a `*.tmp` sibling, syncing it, renaming it over the target and
//!   syncing the directory. A crash leaves either the old or the new file; a
//!   leftover `*.tmp` is deleted on open. The only file changed in place is
//!   the log, and only by appending records that carry their own checksum,
//!   by cutting records off its end, or by freeing the blocks of records
//!   before its start (which `raft.log.start` moved past them first).
//! - **Corruption is reported, never repaired.** Every file starts with an
//!   8-byte magic and a little-endian `u32` format version (a version this
//!   build does not know is an error), and every byte of content is covered by
//!   a CRC-32. Data that fails a check makes `open` fail with
//!   [`Error::Corrupt`] naming the file and byte offset, and nothing is
//!   rewritten. The one automatic repair is cutting a torn record off the very
//!   end of the log, which is what a crash in the middle of an append leaves;
//!   a last record that was written whole and then damaged is reported, not
//!   cut.
//! - All integers are little-endian; nothing is stored as hex or text.
//!
//! The backends use positional I/O (`pread`/`pwrite`) and `fsync` on the
//! directory, which is what Unix file systems need for crash safety; they are
//! built and tested on Linux.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::storage::{KvStorage, LogStorage};
use crate::{Error, Result};

mod identity;
mod kv;
mod log;
mod prealloc;
mod state;

pub use identity::Identity;
pub use kv::FileKv;
pub use log::FileLog;
pub use state::FileState;

/// A locked data directory; opens the file backends inside it.
///
/// The lock is shared with every backend opened from the directory: it is
/// released only when the `DataDir` and all those backends are dropped (or
/// the process dies), so dropping the `DataDir` early is harmless.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    lock: Arc<DirLock>,
}

/// Which backend a [`Claim`] stands for.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Log = 0,
    State = 1,
    Kv = 2,
}

/// The held lock on a data directory, plus which backends are open.
#[derive(Debug)]
struct DirLock {
    path: PathBuf,
    /// The locked `LOCK` file; closing it releases the lock.
    _file: File,
    open: [AtomicBool; 3],
}

/// Keeps the directory locked while a backend is alive, and marks that
/// backend as open so it cannot be opened a second time.
#[derive(Debug)]
pub(crate) struct Claim {
    lock: Arc<DirLock>,
    slot: Slot,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.lock.open[self.slot as usize].store(false, Ordering::Release);
    }
}

impl DataDir {
    /// Name of the lock file.
    pub const LOCK_FILE: &'static str = "LOCK";
    /// Name of the Raft log file.
    pub const LOG_FILE: &'static str = "raft.log";
    /// Name of the term-and-vote file.
    pub const STATE_FILE: &'static str = "raft.state";
    /// Name of the key-value snapshot file.
    pub const KV_FILE: &'static str = "kv.snapshot";
    /// Name of the file recording which node owns the directory.
    pub const IDENTITY_FILE: &'static str = "node.id";

    /// The files a node keeps its state in, besides `node.id`.
    const NODE_FILES: [&'static str; 4] = [
        Self::LOG_FILE,
        "raft.log.start",
        Self::STATE_FILE,
        Self::KV_FILE,
    ];

    /// Records `me` as the directory's owner on first use; afterwards fails
    /// with [`Error::Config`] if the directory belongs to another node id or
    /// a cluster of another size (a wrong `--node-id` or `--data-dir`).
    ///
    /// First use means an empty directory: if `node.id` is missing but a
    /// node's files are there, it was deleted (or the directory was never
    /// this node's), and claiming would hide that, so it is an error too.
    pub fn claim_identity(&self, me: &Identity) -> Result<()> {
        let path = self.path.join(Self::IDENTITY_FILE);
        if !path.exists() {
            let present: Vec<&str> = Self::NODE_FILES
                .into_iter()
                .filter(|name| self.path.join(name).exists())
                .collect();
            if !present.is_empty() {
                return Err(Error::Config(format!(
                    "{} (which node owns the data directory) is missing, but the directory \
                     holds {}; restore the file, or start the node on an empty directory",
                    path.display(),
                    present.join(", ")
                )));
            }
        }
        identity::claim(&path, me)
    }

    /// Fails with [`Error::Config`] if `raft.state` (term and vote) is
    /// missing while `log` holds entries or `kv` a snapshot. A node saves
    /// its term before it writes any entry, so the file was deleted; a node
    /// starting without it would be back at term 0 with no vote, and could
    /// vote twice in one term.
    pub fn check_state_file(&self, log: &FileLog, kv: &FileKv) -> Result<()> {
        let path = self.path.join(Self::STATE_FILE);
        if path.exists() || (log.last_index() == 0 && kv.applied_index() == 0) {
            return Ok(());
        }
        Err(Error::Config(format!(
            "{} (the node's term and vote) is missing, but the data directory holds a log \
             through entry {} and a key-value store applied through entry {}; restore the \
             file, or start the node on an empty directory",
            path.display(),
            log.last_index(),
            kv.applied_index()
        )))
    }

    /// Opens (creating it if missing) the data directory at `path` and locks
    /// it. Fails at once with [`Error::Locked`] if another process, or
    /// another `DataDir` in this process, holds the lock, and with
    /// [`Error::Config`] if `path` exists and is not a directory.
    pub fn open(path: &Path) -> Result<DataDir> {
        if !path.is_dir() {
            fs::create_dir_all(path).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Error::Config(format!(
                    "data directory {} exists and is not a directory",
                    path.display()
                )),
                _ => Error::io(format!("creating data directory {}", path.display()), e),
            })?;
            // Make the new directory's own name durable, or a crash could
            // lose it together with everything later synced inside it.
            sync_dir(parent_dir(path))?;
        }
        let lock_path = path.join(Self::LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked(path.to_path_buf())),
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", lock_path.display()), e));
            }
        }
        Ok(DataDir {
            path: path.to_path_buf(),
            lock: Arc::new(DirLock {
                path: path.to_path_buf(),
                _file: file,
                open: Default::default(),
            }),
        })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the Raft log (`raft.log`), creating an empty one if missing.
    /// See [`FileLog`] for what opening checks and repairs.
    pub fn log(&self) -> Result<FileLog> {
        let claim = self.claim(Slot::Log, Self::LOG_FILE)?;
        FileLog::open(&self.path.join(Self::LOG_FILE), claim)
    }

    /// Opens the term-and-vote store (`raft.state`).
    pub fn state(&self) -> Result<FileState> {
        let claim = self.claim(Slot::State, Self::STATE_FILE)?;
        FileState::open(&self.path.join(Self::STATE_FILE), claim)
    }

    /// Opens the key-value store (`kv.snapshot`).
    pub fn kv(&self) -> Result<FileKv> {
        let claim = self.claim(Slot::Kv, Self::KV_FILE)?;
        FileKv::open(&self.path.join(Self::KV_FILE), claim)
    }

    fn claim(&self, slot: Slot, name: &str) -> Result<Claim> {
        if self.lock.open[slot as usize].swap(true, Ordering::AcqRel) {
            return Err(Error::InvalidInput(format!(
                "{} in {} is already open",
                name,
                self.lock.path.display()
            )));
        }
        Ok(Claim {
            lock: Arc::clone(&self.lock),
            slot,
        })
    }
}

/// The temporary sibling used while replacing `path`.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".tmp");
    PathBuf::from(name)
}

/// The directory holding `path`.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the directory's entries (creations, renames) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = File::open(dir)
            .map_err(|e| Error::io(format!("opening directory {}", dir.display()), e))?;
        d.sync_all()
            .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Deletes the `*.tmp` sibling of `path` left by a crash, if any. The
/// rename that would have published it never happened, so it holds nothing
/// the target file lacks.
fn remove_stale_tmp(path: &Path) -> Result<()> {
    let tmp = tmp_path(path);
    match fs::remove_file(&tmp) {
        Ok(()) => {
            ::log::warn!(
                "removed {} left over by an interrupted write",
                tmp.display()
            );
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", tmp.display()), e)),
    }
}

/// Creates (or empties) the `*.tmp` sibling of `path`, open for reading and
/// writing.
fn create_tmp(path: &Path) -> Result<(PathBuf, File)> {
    let tmp = tmp_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    Ok((tmp, file))
}

/// Publishes a fully written tmp file: syncs it, renames it over `path` and
/// syncs the directory. On failure before the rename, the tmp file is
/// removed and `path` is untouched.
fn commit_tmp(file: &File, tmp: &Path, path: &Path) -> Result<()> {
    let published = file
        .sync_all()
        .map_err(|e| Error::io(format!("syncing {}", tmp.display()), e))
        .and_then(|()| {
            fs::rename(tmp, path).map_err(|e| {
                Error::io(
                    format!("renaming {} to {}", tmp.display(), path.display()),
                    e,
                )
            })
        });
    if let Err(e) = published {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    sync_dir(parent_dir(path))
}

/// Atomically replaces (or creates) `path` with `bytes`, durably.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let (tmp, file) = create_tmp(path)?;
    if let Err(e) = write_all_at(&file, bytes, 0) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(format!("writing {}", tmp.display()), e));
    }
    commit_tmp(&file, &tmp, path)
}

/// Reads the whole of `path`, but at most `limit` bytes (enough for the
/// caller to notice the file is too long); `Ok(None)` if it does not exist.
fn read_file(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, limit), &mut bytes)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(Some(bytes))
}

/// Checks a file that ends in a CRC-32 of everything before it: magic and
/// version, at least `header_len` bytes ahead of the checksum, and the
/// checksum itself. Returns the checksum's offset (where the body ends).
fn check_checksummed(
    path: &Path,
    b: &[u8],
    magic: &[u8; 8],
    what: &str,
    version: u32,
    header_len: usize,
) -> Result<usize> {
    check_magic_version(path, b, magic, what, version)?;
    if b.len() < header_len + 4 {
        return Err(corrupt_at(
            path,
            b.len(),
            format!("the file is truncated ({} bytes)", b.len()),
        ));
    }
    let body_end = b.len() - 4;
    if u32_at(b, body_end) != crc32fast::hash(&b[..body_end]) {
        return Err(corrupt_at(
            path,
            body_end,
            format!("checksum mismatch over bytes 0..{body_end}"),
        ));
    }
    Ok(body_end)
}

/// An [`Error::Corrupt`] for `path` at byte `offset`.
fn corrupt_at(path: &Path, offset: usize, reason: String) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    }
}

/// Checks the magic and format version at the start of a file.
fn check_magic_version(
    path: &Path,
    bytes: &[u8],
    magic: &[u8; 8],
    what: &str,
    version: u32,
) -> Result<()> {
    let corrupt = |offset: u64, reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    if bytes.is_empty() {
        return Err(corrupt(0, format!("the file is empty (expected a {what})")));
    }
    let n = bytes.len().min(8);
    if bytes[..n] != magic[..n] {
        return Err(corrupt(0, format!("not a {what} (bad magic)")));
    }
    if bytes.len() < 12 {
        return Err(corrupt(
            0,
            format!("the header is truncated ({} bytes)", bytes.len()),
        ));
    }
    let found = u32_at(bytes, 8);
    if found != version {
        return Err(corrupt(
            8,
            format!("unsupported format version {found} (this build reads version {version})"),
        ));
    }
    Ok(())
}

/// The little-endian `u32` at `at`; the caller has checked the bounds.
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// The little-endian `u64` at `at`; the caller has checked the bounds.
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Bytes a background writer lets pile up in the page cache before it
/// writes them back ([`write_back`]). Small enough that a log sync meeting
/// them in the disk's queue waits little (1 MiB at a time doubled the
/// 64-client put p99 when the log's zeros were written that way).
const WRITE_BACK_CHUNK: usize = 128 << 10;

/// Writes bytes `offset..offset + len` of `file` back to the disk and waits
/// for them (not for the disk's cache, nor for metadata: a later sync still
/// makes them durable). Background writers call it as they go, so that
/// their final sync does not send megabytes to the disk at once, in front
/// of the log's syncs.
fn write_back(file: &File, offset: u64, len: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a live descriptor.
    let r = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes to a file from its start, writing back every
/// [`WRITE_BACK_CHUNK`] bytes as it goes (see [`write_back`]).
struct PacedWriter<'a> {
    file: &'a File,
    written: u64,
    written_back: u64,
}

impl<'a> PacedWriter<'a> {
    fn new(file: &'a File) -> PacedWriter<'a> {
        PacedWriter {
            file,
            written: 0,
            written_back: 0,
        }
    }
}

impl io::Write for PacedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&*self.file).write(buf)?;
        self.written += n as u64;
        let pending = (self.written - self.written_back) as usize;
        if pending >= WRITE_BACK_CHUNK {
            write_back(self.file, self.written_back, pending)?;
            self.written_back = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(windows)]
fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_write(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

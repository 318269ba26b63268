//! Space for the log written ahead of time, with zeros, on a helper thread.
//!
//! An `fdatasync` after an append that grows a file must also write the
//! file's metadata: the new size and, for freshly allocated blocks, the
//! extent tree. Overwriting blocks that already hold data (zeros here)
//! changes no metadata, so the sync writes only the data pages. On the
//! development VM the disk saw 2.5 writes per cache flush instead of 4
//! during a 64-client put run, and `bench` measured 8-13% more
//! single-client puts and 10-20% more 64-client puts (see BENCHMARKS.md).
//!
//! [`Zeroer`] keeps a stretch of zeros ahead of the log's end. When less
//! than [`LOW_WATER`] bytes of it remain, a `log-zero` thread writes the
//! next [`STEP`] bytes and syncs them. Until that thread is done, the range
//! it writes belongs to it: a log write that would reach into the range
//! (or a truncation, compaction or close) first stops it after its current
//! chunk and waits for that. The zeros are flushed as they are written,
//! 128 KiB at a time, so a sync of the log running meanwhile carries
//! little of them (1 MiB at a time doubled the 64-client p99). The zeros
//! are not `fallocate`d: on ext4 that leaves *unwritten* extents, which the
//! first write into them converts, a metadata change again. Writing them
//! with `O_DIRECT` (no page cache) was tried and cost 15% of the 64-client
//! put rate.
//!
//! Nothing here affects what the log holds: bytes past its last record are
//! zeros or absent, and opening treats a zero tail as the end (see the
//! module docs of `log`). A failure to write zeros (a full disk, say) is
//! logged and pauses preallocation for [`RETRY_AFTER`]; the log then grows
//! the file as it writes.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{WRITE_BACK_CHUNK, write_all_at, write_back};

/// Logs shorter than this are not preallocated (most test logs, and a
/// node's first moments).
const START_AT: u64 = 1 << 20;
/// Bytes zeroed by one run of the helper thread.
const STEP: u64 = 8 << 20;
/// A new run starts when fewer zeroed bytes than this remain ahead of the
/// log's end.
const LOW_WATER: u64 = 4 << 20;
/// How far past the log's end the first run starts, so that the log keeps
/// writing while it runs.
const SLACK: u64 = 1 << 20;
/// How long preallocation pauses after a helper failed.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Keeps zeroed space ahead of a log file's end; see the module docs.
#[derive(Debug)]
pub(super) struct Zeroer {
    /// The log file; the helper opens it on its own, so that a write-back
    /// error its flushes meet is still reported to the log's own syncs
    /// (Linux reports such an error once per open file).
    path: PathBuf,
    /// The file holds zeros (or nothing) from the log's end up to here.
    zeroed_to: u64,
    /// The running helper and the range it owns.
    job: Option<Job>,
    /// A helper failed: no preallocation before this time.
    paused_until: Option<Instant>,
    /// The log is closing: no more preallocation.
    closing: bool,
}

#[derive(Debug)]
struct Job {
    start: u64,
    stop: u64,
    /// Asks the helper to stop after its current chunk.
    cancel: Arc<AtomicBool>,
    /// How far the helper has written zeros.
    done_to: Arc<AtomicU64>,
    handle: JoinHandle<io::Result<()>>,
}

impl Zeroer {
    /// For the log file at `path`, `len` bytes long, whose bytes past the
    /// log's end are zeros.
    pub(super) fn new(path: &Path, len: u64) -> Zeroer {
        Zeroer {
            path: path.to_path_buf(),
            zeroed_to: len,
            job: None,
            paused_until: None,
            closing: false,
        }
    }

    /// Called before the log writes bytes up to `to`: stops a helper whose
    /// range the write reaches into (after its current chunk), and starts
    /// the next one when the zeroed space ahead runs low.
    pub(super) fn before_write(&mut self, to: u64) {
        if let Some(job) = &self.job {
            if to > job.start {
                self.finish(true);
            } else if job.handle.is_finished() {
                self.finish(false);
            }
        }
        if self.closing || self.job.is_some() || to < START_AT {
            return;
        }
        if let Some(until) = self.paused_until {
            if Instant::now() < until {
                return;
            }
            self.paused_until = None;
        }
        if to + LOW_WATER > self.zeroed_to {
            let start = self.zeroed_to.max(to + SLACK);
            let stop = start + STEP;
            let cancel = Arc::new(AtomicBool::new(false));
            let done_to = Arc::new(AtomicU64::new(start));
            let path = self.path.clone();
            let spawned = thread::Builder::new().name("log-zero".into()).spawn({
                let (cancel, done_to) = (cancel.clone(), done_to.clone());
                move || zero_range(&path, start, stop, &cancel, &done_to)
            });
            match spawned {
                Ok(handle) => {
                    self.job = Some(Job {
                        start,
                        stop,
                        cancel,
                        done_to,
                        handle,
                    })
                }
                Err(e) => self.give_up(&e),
            }
        }
    }

    /// Ends the running helper, if any: waits for it to finish its run, or
    /// with `cancel` only for its current chunk.
    pub(super) fn finish(&mut self, cancel: bool) {
        let Some(job) = self.job.take() else {
            return;
        };
        if cancel {
            job.cancel.store(true, Ordering::Relaxed);
        }
        let result = job
            .handle
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the zeroing thread panicked")));
        // Whatever the helper wrote is zeros; the rest of its range is
        // still a hole, which reads as zeros too.
        let done_to = job.done_to.load(Ordering::Relaxed).min(job.stop);
        self.zeroed_to = self.zeroed_to.max(done_to);
        if let Err(e) = result {
            self.give_up(&e);
        }
    }

    /// Stops the running helper and starts no more (the log is closing).
    pub(super) fn stop(&mut self) {
        self.finish(true);
        self.closing = true;
    }

    /// Starts over for a file cut or replaced to `len` bytes; the caller
    /// has stopped the helper first ([`finish`](Zeroer::finish)).
    pub(super) fn reset(&mut self, len: u64) {
        debug_assert!(self.job.is_none());
        self.zeroed_to = len;
    }

    fn give_up(&mut self, e: &io::Error) {
        ::log::warn!(
            "writing zeros ahead of the log failed ({e}); the log grows as it writes for the \
             next {} s",
            RETRY_AFTER.as_secs()
        );
        self.paused_until = Some(Instant::now() + RETRY_AFTER);
    }
}

impl Drop for Zeroer {
    fn drop(&mut self) {
        self.finish(true);
    }
}

/// Writes zeros to `start..stop` of the file at `path`, flushing each chunk
/// as it goes and recording its progress in `done_to`, then syncs the file
/// so the new blocks and size are durable. Stops early, without the sync,
/// once `cancel` is set (the log's next sync covers what it wrote).
fn zero_range(
    path: &Path,
    start: u64,
    stop: u64,
    cancel: &AtomicBool,
    done_to: &AtomicU64,
) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    let zeros = vec![0u8; WRITE_BACK_CHUNK];
    let mut at = start;
    while at < stop {
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        let n = ((stop - at) as usize).min(WRITE_BACK_CHUNK);
        write_all_at(&file, &zeros[..n], at)?;
        write_back(&file, at, n)?;
        at += n as u64;
        done_to.store(at, Ordering::Relaxed);
    }
    file.sync_data()
}

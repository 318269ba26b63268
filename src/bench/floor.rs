//! The floor of the machine: how long the two things every replicated write
//! waits for take here, measured directly, without kvapp-c in the way.
//!
//! - A small append to a file followed by `fdatasync`, in a directory on the
//!   disk that holds (or will hold) the data directories.
//! - The same from as many threads at once as there are nodes, each on its
//!   own file: what a sync costs when a whole cluster shares that disk, as
//!   a `--local` cluster does.
//! - A small message's round trip over loopback TCP with `TCP_NODELAY`,
//!   answered by another thread.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::report::{Floor, Percentiles, new_histogram, record};
use crate::{Error, Result};

/// Bytes appended per sync, about one small log record.
const APPEND_BYTES: usize = 300;
/// Bytes per round trip message.
const MESSAGE_BYTES: usize = 64;

/// How many samples of each to take at most, and how long to spend on each.
#[derive(Debug, Clone, Copy)]
pub struct FloorBudget {
    /// Most samples per measurement.
    pub samples: usize,
    /// Most time per measurement (at least a few samples are always taken).
    pub time: Duration,
}

impl Default for FloorBudget {
    fn default() -> Self {
        FloorBudget {
            samples: 2_000,
            time: Duration::from_secs(2),
        }
    }
}

/// Measures all three and returns them together; `writers` is how many
/// nodes would share the disk (the nodes of a local cluster).
pub fn measure(sync_dir: &Path, writers: usize, budget: FloorBudget) -> Result<Floor> {
    Ok(Floor {
        sync_dir: sync_dir.to_path_buf(),
        fdatasync: measure_fdatasync(sync_dir, budget)?,
        shared_writers: writers.max(1),
        shared_fdatasync: measure_shared_fdatasync(sync_dir, writers, budget)?,
        loopback_rtt: measure_loopback_rtt(budget)?,
    })
}

/// Appends 300 bytes (`APPEND_BYTES`) to a fresh file in `dir` and `fdatasync`s it,
/// over and over, timing each append plus sync. The file is removed after.
pub fn measure_fdatasync(dir: &Path, budget: FloorBudget) -> Result<Percentiles> {
    Ok(Percentiles::of(&sync_loop(dir, 0, budget.samples, budget)?))
}

/// The same appends and syncs from `writers` threads at once, each on a file
/// of its own in `dir`, as the nodes of a cluster whose data directories
/// share one disk sync their logs: every sync of every thread is one
/// sample. On many disks (virtual ones especially) syncs that overlap take
/// longer than one alone, and a write waits for at least two of them.
pub fn measure_shared_fdatasync(
    dir: &Path,
    writers: usize,
    budget: FloorBudget,
) -> Result<Percentiles> {
    let writers = writers.max(1);
    let samples = budget.samples.div_ceil(writers);
    let hists = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..writers)
            .map(|i| {
                std::thread::Builder::new()
                    .name(format!("bench-floor-{i}"))
                    .spawn_scoped(scope, move || sync_loop(dir, i + 1, samples, budget))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| match t {
                Ok(t) => t
                    .join()
                    .unwrap_or_else(|_| Err(Error::Failed("a floor sync thread panicked".into()))),
                Err(e) => Err(Error::io("starting a floor sync thread", e)),
            })
            .collect::<Vec<_>>()
    });
    let mut all = new_histogram();
    for hist in hists {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = all.add(hist?);
    }
    Ok(Percentiles::of(&all))
}

/// Appends and syncs up to `samples` times (at least 10, and only as long as
/// the budget's time allows beyond that) on a fresh file in `dir` named with
/// `tag`, which is removed after; returns the latencies.
fn sync_loop(
    dir: &Path,
    tag: usize,
    samples: usize,
    budget: FloorBudget,
) -> Result<hdrhistogram::Histogram<u64>> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = dir.join(format!(
        ".kvapp-bench-floor-{}-{nanos}-{tag}.tmp",
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let result = (|| {
        let record_bytes = [0x5au8; APPEND_BYTES];
        let mut hist = new_histogram();
        let start = Instant::now();
        // The first sync also pays for creating the file; not counted.
        for i in 0..=samples {
            let t = Instant::now();
            file.write_all(&record_bytes)
                .and_then(|()| file.sync_data())
                .map_err(|e| {
                    Error::io(format!("appending to and syncing {}", path.display()), e)
                })?;
            if i > 0 {
                record(&mut hist, t.elapsed());
            }
            if i >= 10 && start.elapsed() >= budget.time {
                break;
            }
        }
        Ok(hist)
    })();
    drop(file);
    let _ = std::fs::remove_file(&path);
    result
}

/// Sends 64-byte messages (`MESSAGE_BYTES`) over loopback TCP to a thread that echoes them,
/// timing each round trip.
pub fn measure_loopback_rtt(budget: FloorBudget) -> Result<Percentiles> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("binding a loopback port for the round-trip test", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the round-trip test's port", e))?;
    let echo = std::thread::Builder::new()
        .name("bench-echo".into())
        .spawn(move || -> std::io::Result<()> {
            let (mut stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            let mut buf = [0u8; MESSAGE_BYTES];
            loop {
                match stream.read_exact(&mut buf) {
                    Ok(()) => stream.write_all(&buf)?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })
        .map_err(|e| Error::io("starting the round-trip test's echo thread", e))?;
    let io = |e| Error::io("round trip over loopback TCP", e);
    let mut stream = TcpStream::connect(addr).map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    let mut hist = new_histogram();
    let msg = [0xa5u8; MESSAGE_BYTES];
    let mut buf = [0u8; MESSAGE_BYTES];
    let start = Instant::now();
    // The first rounds warm the connection and the threads up; not counted.
    let warmup = 50;
    let mut result = Ok(());
    for i in 0..budget.samples + warmup {
        let t = Instant::now();
        if let Err(e) = stream
            .write_all(&msg)
            .and_then(|()| stream.read_exact(&mut buf))
        {
            result = Err(io(e));
            break;
        }
        if i >= warmup {
            record(&mut hist, t.elapsed());
            if i >= warmup + 10 && start.elapsed() >= budget.time {
                break;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    drop(stream);
    let echoed = echo
        .join()
        .map_err(|_| Error::Failed("the round-trip test's echo thread panicked".into()))?;
    result?;
    echoed.map_err(|e| Error::io("echoing over loopback TCP", e))?;
    Ok(Percentiles::of(&hist))
}

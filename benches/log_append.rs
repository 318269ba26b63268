//! Log append throughput against the raw fsync rate of the disk.
//!
//! ```text
//! cargo bench --bench log_append [-- DIR]
//! KVAPP_BENCH_DIR=/data/scratch cargo bench --bench log_append
//! ```
//!
//! Runs in a fresh directory inside DIR (default: the current directory,
//! which is more likely than `/tmp` to be on a real disk). Measures:
//!
//! - raw: append 100 bytes to a plain file and `fdatasync`, repeatedly;
//! - batch 1: `FileLog::append` of one 100-byte entry, then `sync`;
//! - batch 64: 64 such entries, then one `sync` (group commit).
//!
//! Each mode runs for `KVAPP_BENCH_SECS` seconds in all (default 3), the
//! modes taking turns in ten slices.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kvapp_c::storage::file::DataDir;
use kvapp_c::storage::{Entry, LogStorage};

const ENTRY_BYTES: usize = 100;

/// The totals of one mode.
struct Run {
    name: &'static str,
    syncs: u64,
    entries: u64,
    elapsed: Duration,
    /// Latency of one append-and-sync round, in microseconds.
    latency: Histogram<u64>,
}

impl Run {
    fn new(name: &'static str) -> Run {
        Run {
            name,
            syncs: 0,
            entries: 0,
            elapsed: Duration::ZERO,
            latency: Histogram::new(3).expect("histogram"),
        }
    }
    fn syncs_per_sec(&self) -> f64 {
        self.syncs as f64 / self.elapsed.as_secs_f64()
    }
    fn entries_per_sec(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64()
    }
}

/// One round of a mode: writes some entries, syncs once, returns how many
/// entries it wrote.
type Round<'a> = Box<dyn FnMut() -> kvapp_c::Result<u64> + 'a>;

/// Repeats `round` for `budget`, adding to `run`.
fn measure(run: &mut Run, budget: Duration, round: &mut Round<'_>) -> kvapp_c::Result<()> {
    let start = Instant::now();
    while start.elapsed() < budget {
        let t = Instant::now();
        run.entries += round()?;
        run.syncs += 1;
        let _ = run.latency.record(t.elapsed().as_micros() as u64);
    }
    run.elapsed += start.elapsed();
    Ok(())
}

fn raw_fsync<'a>(dir: &Path) -> kvapp_c::Result<Round<'a>> {
    let path = dir.join("raw.bin");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| kvapp_c::Error::io("creating raw.bin", e))?;
    let payload = [0x5Au8; ENTRY_BYTES];
    Ok(Box::new(move || {
        file.write_all(&payload)
            .and_then(|()| file.sync_data())
            .map_err(|e| kvapp_c::Error::io("raw write+fdatasync", e))?;
        Ok(1)
    }))
}

fn file_log<'a>(dir: &Path, batch: usize) -> kvapp_c::Result<Round<'a>> {
    let mut log = DataDir::open(&dir.join(format!("log-batch-{batch}")))?.log()?;
    let mut entries: Vec<Entry> = (0..batch)
        .map(|_| Entry {
            index: 0,
            term: 1,
            data: vec![0xA5; ENTRY_BYTES],
        })
        .collect();
    Ok(Box::new(move || {
        let next = log.last_index() + 1;
        for (i, e) in entries.iter_mut().enumerate() {
            e.index = next + i as u64;
        }
        log.append(&entries)?;
        log.sync()?;
        Ok(batch as u64)
    }))
}

/// The file system type holding `dir`, from `/proc/mounts` (Linux only).
fn fs_type(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount_point = fields.next()?;
            let kind = fields.next()?;
            Some((PathBuf::from(mount_point), kind.to_string()))
        })
        .filter(|(mount_point, _)| dir.starts_with(mount_point))
        .max_by_key(|(mount_point, _)| mount_point.as_os_str().len())
        .map(|(_, kind)| kind)
}

fn main() -> kvapp_c::Result<()> {
    // `cargo bench` passes `--bench`; the first other argument is the dir.
    let base = std::env::var_os("KVAPP_BENCH_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::args()
                .skip(1)
                .find(|a| !a.starts_with("--"))
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let secs: f64 = std::env::var("KVAPP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let budget = Duration::from_secs_f64(secs);
    let tmp = tempfile::Builder::new()
        .prefix("kvapp-bench-")
        .tempdir_in(&base)
        .map_err(|e| {
            kvapp_c::Error::io(format!("creating a directory in {}", base.display()), e)
        })?;
    let kind = fs_type(tmp.path()).unwrap_or_else(|| "unknown".into());
    println!(
        "log_append: {} (file system: {kind}), {ENTRY_BYTES}-byte entries, {secs} s per mode",
        tmp.path().display()
    );
    if kind == "tmpfs" || kind == "ramfs" {
        println!("warning: {kind} does not reach a disk; fsync figures are meaningless here");
    }

    // The modes take turns in short slices, so that load from other
    // processes on the machine weighs on all of them alike.
    let mut modes = [
        (Run::new("raw write+fdatasync"), raw_fsync(tmp.path())?),
        (Run::new("FileLog batch 1"), file_log(tmp.path(), 1)?),
        (Run::new("FileLog batch 64"), file_log(tmp.path(), 64)?),
    ];
    const SLICES: u32 = 10;
    for _ in 0..SLICES {
        for (run, round) in &mut modes {
            measure(run, budget / SLICES, round)?;
        }
    }
    let runs = modes.map(|(run, _)| run);
    println!();
    println!(
        "{:<22} {:>10} {:>12} {:>10} {:>10}",
        "mode", "syncs/s", "entries/s", "p50 us", "p99 us"
    );
    for r in &runs {
        println!(
            "{:<22} {:>10.0} {:>12.0} {:>10} {:>10}",
            r.name,
            r.syncs_per_sec(),
            r.entries_per_sec(),
            r.latency.value_at_quantile(0.5),
            r.latency.value_at_quantile(0.99)
        );
    }
    let [raw, b1, b64] = &runs;
    println!();
    println!(
        "batch64/batch1 entries/s: {:.1}x (target >= 30x)",
        b64.entries_per_sec() / b1.entries_per_sec()
    );
    println!(
        "raw/batch1 syncs/s:       {:.2}x (target <= 1.5x)",
        raw.syncs_per_sec() / b1.syncs_per_sec()
    );
    Ok(())
}

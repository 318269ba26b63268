//! The key-value store's point operations, and what a background flush
//! costs the thread that applies writes.
//!
//! ```text
//! cargo bench --bench kv_store [-- DIR]
//! KVAPP_BENCH_KEYS=100000 cargo bench --bench kv_store
//! ```
//!
//! Fills a fresh `FileKv` (in a directory inside DIR, default the current
//! directory) with `KVAPP_BENCH_KEYS` keys (default 1 000 000) of 256-byte
//! values, then measures, one entry per `write` call as the state machine
//! applies them:
//!
//! - overwrites of random keys and gets of random keys, per second;
//! - inserts of new keys at random places in the key order, then deletes
//!   of them, per second (the store is filled at even key numbers, the new
//!   keys are odd ones);
//! - three background flushes: how long `flush_background` takes (the event
//!   loop waits that long), and the latency of each write made while the
//!   flush runs and until the writes made meanwhile are folded back.
//!
//! The writes come as fast as one thread makes them, some 30 times a
//! server's rate, so the map that shadows the flushed one grows to hundreds
//! of thousands of entries; its first doublings (each rehashes it in one
//! write) are the maximum of the first flushes. It keeps its capacity, so
//! later flushes show the steady state.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kvapp_c::storage::file::DataDir;
use kvapp_c::storage::{KvStorage, KvWrite};

const VALUE_BYTES: usize = 256;

/// A small deterministic generator of key numbers (xorshift).
struct Keys {
    state: u64,
    count: u64,
}

impl Keys {
    fn number(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state % self.count
    }

    /// A key the fill wrote.
    fn next(&mut self) -> Vec<u8> {
        key(2 * self.number())
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:08}").into_bytes()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let base: PathBuf = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .or_else(|| std::env::var("KVAPP_BENCH_DIR").ok())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let count = env_u64("KVAPP_BENCH_KEYS", 1_000_000).max(1);
    let dir = tempfile::Builder::new()
        .prefix("kvapp-bench-kv-")
        .tempdir_in(&base)
        .expect("a directory for the benchmark");
    let data = DataDir::open(dir.path()).expect("open the data directory");
    let mut kv = data.kv().expect("open the store");

    let started = Instant::now();
    let mut applied = 0;
    for first in (0..count).step_by(1000) {
        let batch = (first..count.min(first + 1000))
            .map(|i| KvWrite::Put(key(2 * i), vec![7; VALUE_BYTES]))
            .collect();
        applied += 1;
        kv.write(applied, batch).expect("fill");
    }
    println!(
        "filled {count} keys of {VALUE_BYTES} bytes in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let mut keys = Keys {
        state: 0x9e37_79b9_7f4a_7c15,
        count,
    };
    let ops = 200_000;
    let started = Instant::now();
    for _ in 0..ops {
        applied += 1;
        kv.write(
            applied,
            vec![KvWrite::Put(keys.next(), vec![8; VALUE_BYTES])],
        )
        .expect("put");
    }
    let puts = ops as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut found = 0u64;
    for _ in 0..ops {
        found += u64::from(kv.get(&keys.next()).expect("get").is_some());
    }
    let gets = ops as f64 / started.elapsed().as_secs_f64();
    assert_eq!(found, ops, "every key was written");
    println!("overwrites {puts:.0}/s, gets {gets:.0}/s (one key per call)");

    // New keys, each between two held ones, then the same keys deleted.
    let fresh: Vec<Vec<u8>> = {
        let mut seen = std::collections::HashSet::new();
        std::iter::from_fn(|| Some(key(2 * keys.number() + 1)))
            .filter(|k| seen.insert(k.clone()))
            .take(ops.min(count / 2) as usize)
            .collect()
    };
    let started = Instant::now();
    for k in &fresh {
        applied += 1;
        kv.write(applied, vec![KvWrite::Put(k.clone(), vec![8; VALUE_BYTES])])
            .expect("insert");
    }
    let inserts = fresh.len() as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for k in &fresh {
        applied += 1;
        kv.write(applied, vec![KvWrite::Delete(k.clone())])
            .expect("delete");
    }
    let deletes = fresh.len() as f64 / started.elapsed().as_secs_f64();
    println!(
        "inserts of new keys {inserts:.0}/s, deletes {deletes:.0}/s ({} keys)",
        fresh.len()
    );

    // What a background flush or a follower's snapshot does off the loop
    // before writing: sort the captured pairs and encode them.
    for round in 1..=3 {
        let job = kv.snapshot_job().expect("a snapshot job");
        let started = Instant::now();
        let bytes = job().expect("encode").len();
        println!(
            "snapshot job {round}: sorted and encoded {count} keys ({:.0} MB) in {}",
            bytes as f64 / 1e6,
            show(started.elapsed())
        );
    }

    for round in 1..=3 {
        // Something to flush.
        applied += 1;
        kv.write(
            applied,
            vec![KvWrite::Put(keys.next(), vec![9; VALUE_BYTES])],
        )
        .expect("put");
        let started = Instant::now();
        assert!(kv.flush_background().expect("flush"), "a flush was running");
        let start_cost = started.elapsed();
        // Nanoseconds, up to 100 s.
        let mut latency =
            Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).expect("histogram");
        let mut writes = 0u64;
        // Writes while the flush runs, then as many again while the backlog
        // is folded back.
        let mut after = None;
        loop {
            let t = Instant::now();
            applied += 1;
            kv.write(
                applied,
                vec![KvWrite::Put(keys.next(), vec![10; VALUE_BYTES])],
            )
            .expect("put");
            latency.saturating_record(t.elapsed().as_nanos() as u64);
            writes += 1;
            match after {
                None if kv.durable_index() >= applied - writes => after = Some(writes),
                Some(w) if writes >= 2 * w => break,
                _ => {}
            }
        }
        let flush_writes = after.unwrap_or(writes);
        println!(
            "flush {round}: flush_background {}, {} in the {flush_writes} writes during the flush and {} after: p50 {} p99 {} max {}",
            show(start_cost),
            show(started.elapsed()),
            writes - flush_writes,
            show(Duration::from_nanos(latency.value_at_quantile(0.5))),
            show(Duration::from_nanos(latency.value_at_quantile(0.99))),
            show(Duration::from_nanos(latency.max())),
        );
    }
}

fn show(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

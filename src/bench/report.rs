//! The figures a benchmark run produces and how they are printed: a few
//! human-readable lines, and with `--json` one JSON object on the last line.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::cpu::MachineShare;
use super::workload::Workload;

/// Longest latency a histogram records, in microseconds (one hour); longer
/// ones are recorded as this.
pub const MAX_RECORDED_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds with three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_RECORDED_US, 3).expect("valid histogram bounds")
}

/// Records one latency, clamped to the histogram's range.
pub fn record(hist: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    hist.saturating_record(us.clamp(1, MAX_RECORDED_US));
}

/// Percentiles of a set of latencies, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Percentiles {
    /// How many latencies were recorded.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// The largest.
    pub max_us: u64,
}

impl Percentiles {
    /// Reads the percentiles off `hist`; all zero if it is empty.
    pub fn of(hist: &Histogram<u64>) -> Percentiles {
        if hist.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: hist.len(),
            p50_us: hist.value_at_quantile(0.5),
            p90_us: hist.value_at_quantile(0.9),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
        }
    }
}

/// The result of the measured part of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The workload that ran.
    pub workload: Workload,
    /// How many client threads ran it.
    pub clients: usize,
    /// Successful operations in the measured part.
    pub ops: u64,
    /// Length of the measured part.
    pub elapsed: Duration,
    /// Latencies of the successful operations.
    pub latency: Percentiles,
    /// Operations that returned an error in the measured part.
    pub errors: u64,
}

impl Summary {
    /// Successful operations per second; zero for an empty run.
    pub fn ops_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }

    /// The human-readable report, a few lines each ending in a newline.
    pub fn render_text(&self) -> String {
        let l = &self.latency;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "workload {}  clients {}  ops {}  in {:.2} s",
            self.workload,
            self.clients,
            self.ops,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(s, "throughput  {:.0} ops/s", self.ops_per_s());
        let _ = writeln!(
            s,
            "latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            micros(l.p50_us),
            micros(l.p90_us),
            micros(l.p99_us),
            micros(l.p999_us),
            micros(l.max_us)
        );
        let _ = writeln!(s, "errors      {}", self.errors);
        s
    }

    /// The JSON object of `--json`, on one line without a newline, with the
    /// keys the command-line contract lists in its order, then any `extra`
    /// fields (already-encoded JSON values).
    pub fn to_json(&self, extra: &[(&str, String)]) -> String {
        let l = &self.latency;
        let mut s = String::from("{");
        let _ = write!(
            s,
            "\"workload\":{},\"clients\":{},\"ops\":{},\"ops_per_s\":{},\
             \"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\
             \"errors\":{}",
            json_string(self.workload.as_str()),
            self.clients,
            self.ops,
            json_number(self.ops_per_s()),
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            self.errors
        );
        for (key, value) in extra {
            let _ = write!(s, ",{}:{}", json_string(key), value);
        }
        s.push('}');
        s
    }
}

/// The floor of the machine: what one write must wait for at the least.
#[derive(Debug, Clone, PartialEq)]
pub struct Floor {
    /// The directory whose disk was measured.
    pub sync_dir: PathBuf,
    /// Latency of appending a small record to a file and `fdatasync`ing it.
    pub fdatasync: Percentiles,
    /// How many writers shared the disk for `shared_fdatasync`.
    pub shared_writers: usize,
    /// The same append and sync, with `shared_writers` threads doing it at
    /// once on files of their own (a cluster whose nodes share the disk).
    pub shared_fdatasync: Percentiles,
    /// Round trip of a small message over loopback TCP with `TCP_NODELAY`.
    pub loopback_rtt: Percentiles,
    /// The most request round trips a second this machine carries for the
    /// run's number of client threads (see [`crate::bench::floor`]), or why
    /// it could not be measured (too few file descriptors for twice the
    /// clients' connections, say); the rest of the run goes on without it.
    pub ceiling: std::result::Result<Ceiling, String>,
}

/// How many round trips `clients` threads, each with its own loopback
/// connection and one message in flight, got from one thread answering them
/// all with no other work, and what CPU that took.
#[derive(Debug, Clone, PartialEq)]
pub struct Ceiling {
    /// Client threads (and connections).
    pub clients: usize,
    /// Round trips completed in the window.
    pub round_trips: u64,
    /// Length of the window, in seconds.
    pub seconds: f64,
    /// The machine's CPUs over the window (`None`: not measured here).
    pub machine: Option<MachineShare>,
}

impl Ceiling {
    /// Round trips a second.
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.round_trips as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Microseconds of the machine's CPU time (both ends, the kernel's
    /// included) per round trip.
    pub fn cpu_us_per_round_trip(&self) -> Option<f64> {
        let m = self.machine?;
        (self.round_trips > 0).then(|| m.busy_seconds * 1e6 / self.round_trips as f64)
    }

    /// What share of the ceiling `ops_per_s` is (0 if there is no ceiling).
    pub fn share_of(&self, ops_per_s: f64) -> f64 {
        let top = self.per_second();
        if top > 0.0 { ops_per_s / top } else { 0.0 }
    }

    /// The line that sets a run's throughput against the ceiling, ending
    /// in a newline.
    pub fn render_share(&self, ops_per_s: f64) -> String {
        format!(
            "ceiling: {:.0} ops/s is {:.0}% of the {:.0} round trips/s the floor's {} client \
             thread{} got from a server doing nothing else\n",
            ops_per_s,
            self.share_of(ops_per_s) * 100.0,
            self.per_second(),
            self.clients,
            if self.clients == 1 { "" } else { "s" }
        )
    }
}

impl Floor {
    /// The least a replicated write can take on this machine, by medians:
    /// the leader's and a follower's syncs overlap, so one sync plus two round
    /// trips (client to leader, leader to follower).
    pub fn write_floor_us(&self) -> u64 {
        self.fdatasync.p50_us + 2 * self.loopback_rtt.p50_us
    }

    /// The same floor for nodes that share this one disk: their syncs
    /// overlap, so a sync costs what `shared_fdatasync` measured.
    pub fn shared_write_floor_us(&self) -> u64 {
        self.shared_fdatasync.p50_us + 2 * self.loopback_rtt.p50_us
    }

    /// The human-readable lines, each ending in a newline.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let f = &self.fdatasync;
        let r = &self.loopback_rtt;
        let _ = writeln!(
            s,
            "floor: fdatasync of a small append in {}: p50 {}  p99 {}  max {}  ({} samples)",
            self.sync_dir.display(),
            micros(f.p50_us),
            micros(f.p99_us),
            micros(f.max_us),
            f.count
        );
        let shared = &self.shared_fdatasync;
        let _ = writeln!(
            s,
            "floor: the same from {} writers at once (as that many nodes sharing this disk): p50 {}  p99 {}  max {}  ({} samples)",
            self.shared_writers,
            micros(shared.p50_us),
            micros(shared.p99_us),
            micros(shared.max_us),
            shared.count
        );
        let _ = writeln!(
            s,
            "floor: loopback TCP round trip (TCP_NODELAY): p50 {}  p99 {}  max {}  ({} samples)",
            micros(r.p50_us),
            micros(r.p99_us),
            micros(r.max_us),
            r.count
        );
        let _ = writeln!(
            s,
            "floor: a replicated write needs at least fdatasync + 2 round trips = {} (p50s); \
             {} if {} nodes share this disk",
            micros(self.write_floor_us()),
            micros(self.shared_write_floor_us()),
            self.shared_writers
        );
        match &self.ceiling {
            Ok(c) => {
                let cpu = match (c.cpu_us_per_round_trip(), c.machine) {
                    (Some(us), Some(m)) => format!(
                        ", {us:.1} us of CPU each (machine {:.0}% busy)",
                        m.busy * 100.0
                    ),
                    _ => String::new(),
                };
                let threads = if c.clients == 1 {
                    "1 client thread".to_string()
                } else {
                    format!("{} client threads", c.clients)
                };
                let _ = writeln!(
                    s,
                    "floor: ceiling of round trips for {threads}, one connection each, \
                     answered by one thread doing nothing else: {:.0}/s{cpu}",
                    c.per_second(),
                );
            }
            Err(e) => {
                let _ = writeln!(s, "floor: ceiling of round trips not measured: {e}");
            }
        }
        s
    }

    /// Extra `--json` fields for the floor.
    pub fn json_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("fdatasync_p50_us", self.fdatasync.p50_us.to_string()),
            ("fdatasync_p99_us", self.fdatasync.p99_us.to_string()),
            ("rtt_p50_us", self.loopback_rtt.p50_us.to_string()),
            ("rtt_p99_us", self.loopback_rtt.p99_us.to_string()),
            ("write_floor_us", self.write_floor_us().to_string()),
            ("shared_writers", self.shared_writers.to_string()),
            (
                "fdatasync_shared_p50_us",
                self.shared_fdatasync.p50_us.to_string(),
            ),
            (
                "fdatasync_shared_p99_us",
                self.shared_fdatasync.p99_us.to_string(),
            ),
            (
                "write_floor_shared_us",
                self.shared_write_floor_us().to_string(),
            ),
        ];
        if let Ok(c) = &self.ceiling {
            fields.push(("ceiling_clients", c.clients.to_string()));
            fields.push((
                "ceiling_round_trips_per_s",
                json_decimals(c.per_second(), 0),
            ));
            if let Some(us) = c.cpu_us_per_round_trip() {
                fields.push(("ceiling_cpu_us_per_round_trip", json_number(us)));
            }
        }
        fields
    }
}

/// A duration in microseconds for people: `850 us`, `12.3 ms`, `2.01 s`.
pub fn micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us} us")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `x` as a JSON number with one decimal; JSON has no NaN or infinity, so
/// those become 0.
pub fn json_number(x: f64) -> String {
    json_decimals(x, 1)
}

/// `x` as a JSON number with `decimals` decimals (0 if not finite).
pub fn json_decimals(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "0".to_string()
    }
}

//! Where the CPU went during the measured part of a run: each local node's
//! process, the bench process (its client threads) and the machine as a
//! whole, read from Linux's `/proc` at the start and the end of the window.
//!
//! This is the first thing to look at when asking what limits a figure: a
//! machine whose CPUs are nearly all busy is bound by CPU per request; one
//! with idle or I/O-wait time left is bound by latency (the disk's syncs, a
//! round trip). Per-process times are user plus system time; the kernel
//! counts most loopback TCP work as softirq time, which shows only in the
//! machine's share. Elsewhere than on Linux nothing is measured.

use std::time::Instant;

use super::report::json_decimals;

/// Jiffies the machine's CPUs spent in each state, summed over all CPUs
/// (the `cpu` line of `/proc/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineTicks {
    /// Every state together.
    pub total: u64,
    /// Idle, not waiting for I/O.
    pub idle: u64,
    /// Idle while some I/O was outstanding.
    pub iowait: u64,
    /// Handling software interrupts (loopback TCP, among others).
    pub softirq: u64,
    /// CPUs counted (the `cpuN` lines).
    pub cpus: usize,
}

/// One reading of the counters.
#[derive(Debug, Clone)]
pub struct CpuSample {
    /// When it was read.
    pub at: Instant,
    /// User plus system jiffies of each node process (`None`: unreadable).
    pub nodes: Vec<Option<u64>>,
    /// The same for this process.
    pub bench: Option<u64>,
    /// The machine's counters.
    pub machine: Option<MachineTicks>,
}

/// CPU used between two samples.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuUsage {
    /// Cores each node process kept busy on average (`None`: unknown).
    pub nodes: Vec<Option<f64>>,
    /// Cores the bench process kept busy.
    pub bench: Option<f64>,
    /// The machine's CPUs: how many, and the share of their time in each
    /// state.
    pub machine: Option<MachineShare>,
    /// Length of the window, in seconds.
    pub seconds: f64,
}

/// A window shorter than this is measured in too few of the kernel's
/// ticks (10 ms each, usually) to be more than a rough figure.
const ROUGH_BELOW_SECONDS: f64 = 1.0;

/// Shares of all CPUs' time, each between 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineShare {
    /// CPUs counted.
    pub cpus: usize,
    /// Seconds of CPU time spent busy, all CPUs together.
    pub busy_seconds: f64,
    /// Neither idle nor waiting for I/O.
    pub busy: f64,
    /// Of `busy`: software interrupts.
    pub softirq: f64,
    /// Idle with I/O outstanding.
    pub iowait: f64,
    /// Idle.
    pub idle: f64,
}

/// Reads the counters now for the given node processes.
pub fn sample(node_pids: &[u32]) -> CpuSample {
    CpuSample {
        at: Instant::now(),
        nodes: node_pids.iter().map(|&pid| process_ticks(pid)).collect(),
        bench: process_ticks(std::process::id()),
        machine: read_proc("/proc/stat").and_then(|text| parse_proc_stat(&text)),
    }
}

/// What was used from `start` to `end`, in cores (seconds of CPU per
/// second), given `ticks_per_second` jiffies per second.
pub fn usage_between(start: &CpuSample, end: &CpuSample, ticks_per_second: u64) -> CpuUsage {
    let secs = end.at.saturating_duration_since(start.at).as_secs_f64();
    let cores = |a: Option<u64>, b: Option<u64>| -> Option<f64> {
        let (a, b) = (a?, b?);
        if secs <= 0.0 || ticks_per_second == 0 || b < a {
            return None;
        }
        Some((b - a) as f64 / ticks_per_second as f64 / secs)
    };
    let nodes = start
        .nodes
        .iter()
        .zip(&end.nodes)
        .map(|(&a, &b)| cores(a, b))
        .collect();
    let machine = match (start.machine, end.machine) {
        (Some(a), Some(b)) if b.total > a.total => {
            let total = (b.total - a.total) as f64;
            let share = |x: u64, y: u64| y.saturating_sub(x) as f64 / total;
            let idle = share(a.idle, b.idle);
            let iowait = share(a.iowait, b.iowait);
            let busy_ticks = (b.total - a.total)
                .saturating_sub(b.idle.saturating_sub(a.idle))
                .saturating_sub(b.iowait.saturating_sub(a.iowait));
            Some(MachineShare {
                cpus: b.cpus,
                busy_seconds: busy_ticks as f64 / ticks_per_second.max(1) as f64,
                busy: (1.0 - idle - iowait).max(0.0),
                softirq: share(a.softirq, b.softirq),
                iowait,
                idle,
            })
        }
        _ => None,
    };
    CpuUsage {
        nodes,
        bench: cores(start.bench, end.bench),
        machine,
        seconds: secs,
    }
}

impl CpuUsage {
    /// Whether nothing at all could be read (not Linux, say).
    pub fn is_unknown(&self) -> bool {
        self.nodes.iter().all(Option::is_none) && self.bench.is_none() && self.machine.is_none()
    }

    /// Microseconds of the machine's CPU time (all processes, the
    /// kernel's interrupt work included) per operation, `ops` operations
    /// having been done in the window.
    pub fn machine_us_per_op(&self, ops: u64) -> Option<f64> {
        let m = self.machine?;
        if ops == 0 {
            return None;
        }
        Some(m.busy_seconds * 1e6 / ops as f64)
    }

    /// The human-readable line, ending in a newline.
    pub fn render_text(&self, ops: u64) -> String {
        let cores = |c: &Option<f64>| c.map_or_else(|| "?".to_string(), |c| format!("{c:.2}"));
        let mut s = String::from("cpu:");
        if !self.nodes.is_empty() {
            let nodes: Vec<String> = self.nodes.iter().map(cores).collect();
            s.push_str(&format!(" nodes {} cores,", nodes.join(" + ")));
        }
        s.push_str(&format!(" bench {} cores", cores(&self.bench)));
        if let Some(m) = self.machine {
            // Without local nodes (`--cluster`) the machine is the bench's
            // own host, and the cluster's CPU is not in these figures.
            let machine = if self.nodes.is_empty() {
                "this host, not the cluster's"
            } else {
                "machine"
            };
            s.push_str(&format!(
                "; {machine} ({} CPUs) busy {:.0}% (softirq {:.0}%), iowait {:.0}%, idle {:.0}%",
                m.cpus,
                m.busy * 100.0,
                m.softirq * 100.0,
                m.iowait * 100.0,
                m.idle * 100.0
            ));
        }
        if let Some(us) = self.machine_us_per_op(ops) {
            s.push_str(&format!("; {us:.1} us of CPU per op"));
        }
        if self.seconds < ROUGH_BELOW_SECONDS {
            s.push_str(&format!(
                " (rough: over {:.0} ms, counted in the kernel's ticks)",
                self.seconds * 1e3
            ));
        }
        s.push('\n');
        s
    }

    /// Extra `--json` fields; unknown values are left out.
    pub fn json_fields(&self, ops: u64) -> Vec<(&'static str, String)> {
        let mut fields = Vec::new();
        if !self.nodes.is_empty() && self.nodes.iter().all(Option::is_some) {
            let sum: f64 = self.nodes.iter().flatten().sum();
            fields.push(("cpu_nodes_cores", json2(sum)));
        }
        if let Some(b) = self.bench {
            fields.push(("cpu_bench_cores", json2(b)));
        }
        if let Some(m) = self.machine {
            fields.push(("cpu_machine_cpus", m.cpus.to_string()));
            fields.push(("cpu_machine_busy", json2(m.busy)));
            fields.push(("cpu_machine_iowait", json2(m.iowait)));
        }
        if let Some(us) = self.machine_us_per_op(ops) {
            fields.push(("cpu_us_per_op", json2(us)));
        }
        fields
    }
}

/// A JSON number with two decimals (0 if not finite).
fn json2(x: f64) -> String {
    json_decimals(x, 2)
}

/// User plus system jiffies of process `pid`, from `/proc/<pid>/stat`.
fn process_ticks(pid: u32) -> Option<u64> {
    parse_pid_stat(&read_proc(&format!("/proc/{pid}/stat"))?)
}

fn read_proc(path: &str) -> Option<String> {
    if cfg!(target_os = "linux") {
        std::fs::read_to_string(path).ok()
    } else {
        None
    }
}

/// User plus system jiffies from the text of `/proc/<pid>/stat`. The
/// command name (second field, in parentheses) may hold spaces and
/// parentheses itself, so the fields are counted after its last `)`.
pub fn parse_pid_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: state (field 3), ..., utime (14), stime (15).
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The machine's totals from the text of `/proc/stat` (its `cpu` line:
/// user, nice, system, idle, iowait, irq, softirq, steal, ...; guest time
/// is already inside user and nice, so it is not added again).
pub fn parse_proc_stat(text: &str) -> Option<MachineTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    if values.len() < 7 {
        return None;
    }
    let total = values.iter().take(8).sum();
    let cpus = text
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    Some(MachineTicks {
        total,
        idle: values[3],
        iowait: values[4],
        softirq: values[6],
        cpus,
    })
}

/// Jiffies per second (`sysconf(_SC_CLK_TCK)`, 100 where unknown).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

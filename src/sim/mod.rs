//! A deterministic whole-cluster simulator for the Raft core.
//!
//! One seed drives one run: the seed feeds a single random generator that
//! picks the run's parameters (3 or 5 nodes, PreVote and CheckQuorum on or
//! off, timing, which faults to inject) and then every decision of the run:
//! message delays, drops, duplicates, partitions, crashes, client requests.
//! The same seed therefore replays the same run exactly.
//!
//! A run has two phases. While faults are on, a fault injector keeps
//! changing the network (drops, duplicates, long delays that reorder
//! messages), cuts links symmetrically or one way and heals them, and
//! crashes nodes (losing their unsynced log writes) and restarts them from
//! their durable storage. Nodes tick at their own rates. Clients write and
//! read throughout. Then the faults stop: links heal, crashed nodes restart,
//! and within [`SimOptions::election_bound_ticks`] a leader must be elected,
//! and within [`SimOptions::progress_bound_ticks`] a write and a read issued
//! after the stop must complete.
//!
//! After every step the [`checker`] verifies Raft's safety properties and
//! linearizable reads; a violation ends the run with a [`Failure`] holding
//! the last events, the node states, and the seed to replay.
//!
//! [`run_seed`] runs one seed; [`run_seeds`] runs a range on a few threads
//! and gathers [`Stats`].

pub mod checker;
pub mod log;
pub mod trace;
pub mod world;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

#[cfg(feature = "mutations")]
use crate::raft::Mutation;

pub use checker::{Violation, ViolationKind};

/// Simulated time units per nominal tick.
pub const TICK: u64 = 10;

/// Seeds run by default (as in CI).
pub const DEFAULT_SEEDS: u64 = 2000;

/// The kinds of fault a run can see, for coverage statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Drop = 0,
    Duplicate,
    Reorder,
    Delay,
    PartitionSymmetric,
    PartitionOneWay,
    Crash,
    LostUnsynced,
    SkewedTicks,
    Compacted,
    SnapshotInstalled,
    DiscardUndone,
}

impl FaultKind {
    pub const COUNT: usize = 12;
    pub const ALL: [FaultKind; FaultKind::COUNT] = [
        FaultKind::Drop,
        FaultKind::Duplicate,
        FaultKind::Reorder,
        FaultKind::Delay,
        FaultKind::PartitionSymmetric,
        FaultKind::PartitionOneWay,
        FaultKind::Crash,
        FaultKind::LostUnsynced,
        FaultKind::SkewedTicks,
        FaultKind::Compacted,
        FaultKind::SnapshotInstalled,
        FaultKind::DiscardUndone,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Drop => "message dropped",
            FaultKind::Duplicate => "message duplicated",
            FaultKind::Reorder => "messages reordered on a link",
            FaultKind::Delay => "message delayed 1-30 ticks",
            FaultKind::PartitionSymmetric => "symmetric partition",
            FaultKind::PartitionOneWay => "one-way partition",
            FaultKind::Crash => "node crash + restart",
            FaultKind::LostUnsynced => "crash lost unsynced log writes",
            FaultKind::SkewedTicks => "skewed tick rates",
            FaultKind::Compacted => "log compacted",
            FaultKind::SnapshotInstalled => "follower installed a snapshot",
            FaultKind::DiscardUndone => "crash brought discarded entries back",
        }
    }
}

/// How a run is set up; drawn from the seed.
#[derive(Clone, Debug)]
pub struct Params {
    pub nodes: usize,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub heartbeat_ticks: u32,
    pub election_ticks_min: u32,
    pub election_ticks_max: u32,
    pub max_inflight: usize,
    pub max_append_bytes: usize,
    /// Time units between ticks, per node.
    pub tick_periods: Vec<u64>,
    pub clients: usize,
    /// Ticks of the faulty phase.
    pub fault_ticks: u64,
    pub drop: bool,
    pub dup: bool,
    pub delay: bool,
    pub partition: bool,
    pub one_way: bool,
    pub crash: bool,
    /// Chance that a node makes its state machine durable after applying.
    pub flush_chance: f64,
    /// Chance that a new leader crashes within a few ticks of taking office.
    pub new_leader_crash: f64,
    /// Longest wait, in tenths of a tick, between an input and the ready
    /// cycle that handles it (inputs arriving meanwhile share the cycle).
    pub max_batch_delay: u64,
    /// Chance that a node compacts its log after making its state machine
    /// durable, keeping `compact_keep` entries before the durable index.
    pub compact_chance: f64,
    pub compact_keep: u64,
    /// Whether a discard within a log becomes durable only with the next
    /// sync (the file log's is durable once its thread is done), so a crash
    /// can bring discarded entries back.
    pub lazy_discards: bool,
}

impl Params {
    fn draw(rng: &mut world::Rng) -> Self {
        let nodes = if rng.chance(0.5) { 3 } else { 5 };
        let skewed = rng.chance(0.5);
        let tick_periods = (0..nodes)
            .map(|_| {
                if skewed {
                    rng.between(TICK * 7 / 10, TICK * 14 / 10)
                } else {
                    TICK
                }
            })
            .collect();
        let election_ticks_min = rng.between(8, 12) as u32;
        let crash = rng.chance(0.75);
        Params {
            nodes,
            pre_vote: rng.chance(0.5),
            check_quorum: rng.chance(0.5),
            heartbeat_ticks: rng.between(1, 3) as u32,
            election_ticks_min,
            // A narrow range (two to four distinct timeouts) provokes split
            // votes and repeated candidacies.
            election_ticks_max: if rng.chance(0.3) {
                election_ticks_min + rng.between(2, 4) as u32
            } else {
                election_ticks_min * 2
            },
            max_inflight: [1, 4, 64][rng.between(0, 2) as usize],
            max_append_bytes: [40, 40, 200, 1 << 20][rng.between(0, 3) as usize],
            tick_periods,
            clients: rng.between(2, 8) as usize,
            fault_ticks: rng.between(400, 1000),
            drop: rng.chance(0.75),
            dup: rng.chance(0.75),
            delay: rng.chance(0.75),
            partition: rng.chance(0.75),
            one_way: rng.chance(0.75),
            crash,
            new_leader_crash: if crash {
                [0.0, 0.15, 0.4][rng.between(0, 2) as usize]
            } else {
                0.0
            },
            flush_chance: [0.0, 0.1, 0.5][rng.between(0, 2) as usize],
            max_batch_delay: if rng.chance(0.5) { 3 } else { 15 },
            // Drawn last, so the parameters above stay what each seed drew
            // before compaction was modelled.
            compact_chance: [0.0, 0.3, 1.0][rng.between(0, 2) as usize],
            compact_keep: [0, 3, 20][rng.between(0, 2) as usize],
            lazy_discards: rng.chance(0.8),
        }
    }

    fn skewed(&self) -> bool {
        self.tick_periods.iter().any(|p| *p != TICK)
    }

    /// One line describing the run's setup.
    pub fn describe(&self) -> String {
        let mut faults = Vec::new();
        for (on, name) in [
            (self.drop, "drop"),
            (self.dup, "dup"),
            (self.delay, "delay"),
            (self.partition, "partition"),
            (self.one_way, "one-way"),
            (self.crash, "crash"),
        ] {
            if on {
                faults.push(name);
            }
        }
        format!(
            "{} nodes, pre_vote={}, check_quorum={}, heartbeat {} ticks, election {}..{} ticks, max_inflight {}, max_append_bytes {}, tick periods {:?} (in tenths of a tick), {} clients, faults for {} ticks: [{}], new leader crash chance {}, state machine flush chance {}, ready cycles batch inputs for up to {} tenths of a tick, log compaction chance {} keeping {} entries, discards durable {}",
            self.nodes,
            self.pre_vote,
            self.check_quorum,
            self.heartbeat_ticks,
            self.election_ticks_min,
            self.election_ticks_max,
            self.max_inflight,
            self.max_append_bytes,
            self.tick_periods,
            self.clients,
            self.fault_ticks,
            faults.join(", "),
            self.new_leader_crash,
            self.flush_chance,
            self.max_batch_delay,
            self.compact_chance,
            self.compact_keep,
            if self.lazy_discards {
                "with the next sync"
            } else {
                "at once"
            }
        )
    }
}

/// Options that are not drawn from the seed.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Events kept for the failure trace.
    pub trace_len: usize,
    /// Force PreVote on or off instead of drawing it.
    pub pre_vote: Option<bool>,
    /// Force CheckQuorum on or off instead of drawing it.
    pub check_quorum: Option<bool>,
    /// Ticks after the faults stop within which a leader must hold the
    /// highest term.
    pub election_bound_ticks: u64,
    /// Ticks after the faults stop within which a write and a read issued
    /// after the stop must complete. Generous: with one small append in
    /// flight per follower, a far-behind majority catches up one entry per
    /// round trip (up to 186 ticks seen in seeds 0..100000).
    pub progress_bound_ticks: u64,
    /// A deliberately broken Raft rule to switch on in every node.
    #[cfg(feature = "mutations")]
    pub mutation: Option<Mutation>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            trace_len: 200,
            pre_vote: None,
            check_quorum: None,
            election_bound_ticks: 100,
            progress_bound_ticks: 400,
            #[cfg(feature = "mutations")]
            mutation: None,
        }
    }
}

/// Why a seed failed.
#[derive(Clone, Debug)]
pub struct Failure {
    pub violation: Violation,
    /// Simulated time of the failure, in tenths of a tick.
    pub time: u64,
    pub params: String,
    /// The last events, formatted.
    pub trace: String,
    /// Every node's state at the failure.
    pub state: String,
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    /// Cluster size, PreVote and CheckQuorum of the run.
    pub setup: (usize, bool, bool),
    /// Which [`FaultKind`]s the run saw.
    pub faults: [bool; FaultKind::COUNT],
    /// Ticks from the end of faults until a leader held the highest term.
    pub election_ticks: Option<u64>,
    /// Ticks from the end of faults until a new write and read completed.
    pub progress_ticks: Option<u64>,
    pub writes_acked: u64,
    pub reads_served: u64,
    /// Terms that had a leader.
    pub leaders: u64,
    pub events: u64,
    pub failure: Option<Failure>,
}

impl Outcome {
    /// A full report of a failed seed: what failed, the trace, the node
    /// states and the command that replays it.
    pub fn report(&self) -> Option<String> {
        let f = self.failure.as_ref()?;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "seed {} FAILED at tick {}.{}: {}",
            self.seed,
            f.time / TICK,
            f.time % TICK,
            f.violation
        );
        let _ = writeln!(out, "setup: {}", f.params);
        let _ = writeln!(out, "last events:\n{}", f.trace);
        let _ = writeln!(out, "node states:\n{}", f.state);
        let _ = writeln!(out, "replay with:\n  {}", replay_command(self.seed));
        Some(out)
    }
}

/// The command that replays `seed` alone.
pub fn replay_command(seed: u64) -> String {
    format!(
        "KVAPP_SIM_SEED={seed} KVAPP_SIM_SEEDS=1 cargo test --release --all-features --test simulation -- --nocapture"
    )
}

/// Runs one seed.
pub fn run_seed(seed: u64, opts: &SimOptions) -> Outcome {
    let mut rng = world::Rng::new(seed);
    let mut params = Params::draw(&mut rng);
    if let Some(p) = opts.pre_vote {
        params.pre_vote = p;
    }
    if let Some(c) = opts.check_quorum {
        params.check_quorum = c;
    }
    let skewed = params.skewed();
    let mut outcome = world::World::new(params, rng, opts.clone()).run(seed);
    outcome.faults[FaultKind::SkewedTicks as usize] = skewed;
    outcome
}

/// Reads `KVAPP_SIM_SEED` (first seed, default 0) and `KVAPP_SIM_SEEDS`
/// (how many, default `default_count`).
pub fn seeds_from_env(default_count: u64) -> Result<(u64, u64), String> {
    let read = |name: &str, default: u64| -> Result<u64, String> {
        match std::env::var(name) {
            Ok(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("{name}={v:?} is not a non-negative integer")),
            Err(_) => Ok(default),
        }
    };
    Ok((
        read("KVAPP_SIM_SEED", 0)?,
        read("KVAPP_SIM_SEEDS", default_count)?,
    ))
}

/// Threads to run seeds on: `KVAPP_SIM_THREADS`, else the available
/// parallelism capped at 4.
pub fn threads_from_env() -> usize {
    std::env::var("KVAPP_SIM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|t: &usize| *t > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4)
        })
}

/// Aggregated results of many seeds.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub seeds: u64,
    pub elapsed: Duration,
    pub fault_seeds: [u64; FaultKind::COUNT],
    /// Seeds per (nodes, PreVote, CheckQuorum).
    pub setups: std::collections::BTreeMap<(usize, bool, bool), u64>,
    /// Longest election after faults stopped, and its seed.
    pub longest_election: Option<(u64, u64)>,
    /// Longest time to a new write and read after faults stopped.
    pub longest_progress: Option<(u64, u64)>,
    pub writes_acked: u64,
    pub reads_served: u64,
    pub leaders: u64,
    pub events: u64,
    /// Failed seeds, in seed order.
    pub failures: Vec<Outcome>,
}

impl Stats {
    pub fn add(&mut self, o: Outcome) {
        self.seeds += 1;
        *self.setups.entry(o.setup).or_default() += 1;
        for (count, seen) in self.fault_seeds.iter_mut().zip(o.faults) {
            *count += u64::from(seen);
        }
        if let Some(t) = o.election_ticks
            && self.longest_election.is_none_or(|(best, _)| t > best)
        {
            self.longest_election = Some((t, o.seed));
        }
        if let Some(t) = o.progress_ticks
            && self.longest_progress.is_none_or(|(best, _)| t > best)
        {
            self.longest_progress = Some((t, o.seed));
        }
        self.writes_acked += o.writes_acked;
        self.reads_served += o.reads_served;
        self.events += o.events;
        self.leaders += o.leaders;
        if o.failure.is_some() {
            self.failures.push(o);
        }
    }

    /// A human-readable summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let secs = self.elapsed.as_secs_f64();
        let _ = writeln!(
            out,
            "simulated {} seeds in {:.2} s: {:.0} seeds/s, {} events, {} leaders elected, {} writes acknowledged, {} reads served, {} failed",
            self.seeds,
            secs,
            self.seeds as f64 / secs.max(1e-9),
            self.events,
            self.leaders,
            self.writes_acked,
            self.reads_served,
            self.failures.len()
        );
        let _ = writeln!(out, "fraction of seeds that saw each fault:");
        for kind in FaultKind::ALL {
            let _ = writeln!(
                out,
                "  {:<37} {:>6.1}%",
                kind.name(),
                100.0 * self.fault_seeds[kind as usize] as f64 / (self.seeds.max(1)) as f64
            );
        }
        let _ = writeln!(out, "seeds per setup:");
        for ((nodes, pre_vote, check_quorum), n) in &self.setups {
            let _ = writeln!(
                out,
                "  {nodes} nodes, pre_vote {:<3}, check_quorum {:<3}: {n}",
                if *pre_vote { "on" } else { "off" },
                if *check_quorum { "on" } else { "off" }
            );
        }
        if let Some((t, seed)) = self.longest_election {
            let _ = writeln!(
                out,
                "longest election after faults stopped: {t} ticks (seed {seed})"
            );
        }
        if let Some((t, seed)) = self.longest_progress {
            let _ = writeln!(
                out,
                "longest until a new write and read completed after faults stopped: {t} ticks (seed {seed})"
            );
        }
        out
    }
}

/// Runs `count` seeds from `start` on `threads` threads. Results do not
/// depend on the thread count.
pub fn run_seeds(start: u64, count: u64, threads: usize, opts: &SimOptions) -> Stats {
    let began = Instant::now();
    let threads = threads.max(1) as u64;
    let mut outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    let mut k = t;
                    while k < count {
                        mine.push(run_seed(start + k, opts));
                        k += threads;
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    outcomes.sort_by_key(|o| o.seed);
    let mut stats = Stats::default();
    for o in outcomes {
        stats.add(o);
    }
    stats.elapsed = began.elapsed();
    stats
}

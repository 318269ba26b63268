//! Deterministic whole-cluster simulation of the Raft core over many seeds.
//!
//! `KVAPP_SIM_SEEDS` (default 2000) seeds are run starting at
//! `KVAPP_SIM_SEED` (default 0); `KVAPP_SIM_THREADS` sets the thread count.
//! A failing seed prints what failed, the last events, the node states and
//! the command that replays it. Statistics print with `--nocapture`.

use kvapp_c::sim::{self, FaultKind, SimOptions};

#[test]
fn simulated_seeds_keep_raft_safe_and_live() {
    let (start, count) = match sim::seeds_from_env(sim::DEFAULT_SEEDS) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    let threads = sim::threads_from_env();
    let stats = sim::run_seeds(start, count, threads, &SimOptions::default());
    println!(
        "seeds {start}..{} on {threads} threads\n{}",
        start + count,
        stats.summary()
    );
    if let Some(first) = stats.failures.first() {
        let seeds: Vec<u64> = stats.failures.iter().map(|o| o.seed).collect();
        eprintln!("{}", first.report().expect("a failed outcome has a report"));
        panic!(
            "{} of {count} seeds failed: {seeds:?} (first one reported above)",
            seeds.len()
        );
    }
    assert_eq!(stats.seeds, count);
    assert!(stats.writes_acked > 0 && stats.reads_served > 0 || count == 0);
}

/// The same seed replays the same run: same events, same results.
#[test]
fn a_seed_replays_exactly() {
    let opts = SimOptions::default();
    for seed in [3, 17, 4242] {
        let a = sim::run_seed(seed, &opts);
        let b = sim::run_seed(seed, &opts);
        assert_eq!(
            (
                a.events,
                a.writes_acked,
                a.reads_served,
                a.faults,
                a.election_ticks
            ),
            (
                b.events,
                b.writes_acked,
                b.reads_served,
                b.faults,
                b.election_ticks
            ),
            "seed {seed} ran differently twice"
        );
        assert!(
            a.events > 100 && a.writes_acked > 0,
            "seed {seed} did almost nothing"
        );
    }
}

/// Every fault kind shows up in a modest number of seeds, and both PreVote
/// and CheckQuorum settings are covered.
#[test]
fn faults_are_all_exercised() {
    // The rarest kinds come up in about one seed in ten, so 400 seeds keep
    // the count of each far above the bar whatever the event order does.
    let stats = sim::run_seeds(
        100_000,
        400,
        sim::threads_from_env(),
        &SimOptions::default(),
    );
    for kind in FaultKind::ALL {
        eprintln!(
            "{} of 400 seeds saw {}",
            stats.fault_seeds[kind as usize],
            kind.name()
        );
    }
    for kind in FaultKind::ALL {
        assert!(
            stats.fault_seeds[kind as usize] >= 20,
            "only {} of 400 seeds saw {}",
            stats.fault_seeds[kind as usize],
            kind.name()
        );
    }
    for (pre_vote, check_quorum) in [(false, false), (false, true), (true, false), (true, true)] {
        let opts = SimOptions {
            pre_vote: Some(pre_vote),
            check_quorum: Some(check_quorum),
            ..SimOptions::default()
        };
        let stats = sim::run_seeds(200_000, 50, sim::threads_from_env(), &opts);
        if let Some(f) = stats.failures.first() {
            panic!("{}", f.report().unwrap_or_default());
        }
    }
}

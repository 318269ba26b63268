//! Each deliberately broken Raft rule must be caught by the simulator within
//! the seed count CI runs ([`sim::DEFAULT_SEEDS`]). Prints how many seeds
//! each took to catch and which check caught it.
#![cfg(feature = "mutations")]

use std::time::Instant;

use kvapp_c::raft::Mutation;
use kvapp_c::sim::{self, SimOptions};

/// Runs seeds from 0 until `mutation` is caught by a safety check; returns
/// the number of seeds run and a description of the catch.
fn seeds_to_catch(mutation: Mutation, limit: u64) -> Option<(u64, String)> {
    let opts = SimOptions {
        mutation: Some(mutation),
        ..SimOptions::default()
    };
    for seed in 0..limit {
        let outcome = sim::run_seed(seed, &opts);
        if let Some(f) = &outcome.failure {
            if !f.violation.kind.is_safety() {
                // A broken rule may also stall the cluster; what counts is
                // that a safety check names it.
                println!(
                    "{mutation:?}: seed {seed} failed {:?}, not a safety check; searching on",
                    f.violation.kind
                );
                continue;
            }
            // The report a developer gets: the failure, the recent events,
            // the node states and the exact replay command.
            let report = outcome.report().unwrap_or_default();
            let replay = format!("KVAPP_SIM_SEED={seed} KVAPP_SIM_SEEDS=1 cargo test");
            for part in ["FAILED", "last events:", "node states:", replay.as_str()] {
                assert!(report.contains(part), "report lacks {part:?}:\n{report}");
            }
            let events = report.lines().filter(|l| l.starts_with("  [")).count();
            assert!((1..=200).contains(&events), "{events} trace lines");
            return Some((seed + 1, format!("seed {seed}: {}", f.violation)));
        }
    }
    None
}

#[test]
fn every_mutation_is_caught() {
    // KVAPP_SIM_MUTATION_SEEDS widens the search when exploring; the
    // assertion always demands a catch within the CI seed count.
    let limit: u64 = std::env::var("KVAPP_SIM_MUTATION_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(sim::DEFAULT_SEEDS);
    let began = Instant::now();
    let mut missed = Vec::new();
    for mutation in [
        Mutation::CountStaleVotes,
        Mutation::CommitOldTermEntry,
        Mutation::SkipVoteLogCheck,
        Mutation::AcceptStaleAppend,
        Mutation::ReadWithoutQuorum,
        Mutation::AckBeforeSync,
        Mutation::InstallKeepsLog,
    ] {
        let t = Instant::now();
        match seeds_to_catch(mutation, limit) {
            Some((seeds, how)) => {
                println!(
                    "{mutation:?}: caught after {seeds} seeds in {:.2} s by {how}",
                    t.elapsed().as_secs_f64()
                );
                if seeds > sim::DEFAULT_SEEDS {
                    missed.push(format!("{mutation:?} needed {seeds} seeds"));
                }
            }
            None => {
                println!("{mutation:?}: NOT caught in {limit} seeds");
                missed.push(format!("{mutation:?} not caught in {limit} seeds"));
            }
        }
    }
    println!(
        "mutation search took {:.2} s",
        began.elapsed().as_secs_f64()
    );
    assert!(
        missed.is_empty(),
        "mutations not caught within {} seeds: {missed:?}",
        sim::DEFAULT_SEEDS
    );
}

//! The topology simulator's throughput and reach: how many random fault sequences (1 to 4
//! replicas, up to 80 events each, the real loop driving simulated servers) run per second,
//! and how many distinct states the loop published across them (roles, readiness, semi-sync,
//! kinds of finding). Every sequence is checked as the property test checks it; a failure
//! aborts the run. The sequences come from a fixed seed, so runs compare.
//!
//! `cargo bench -p chat-operator --bench topology_sim` (`SIM_BENCH_SEQUENCES`, default 3,000)

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::{collections::BTreeSet, time::Instant};

use proptest::{
    strategy::{Strategy, ValueTree},
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use sim::scenario::{run, scenario};

fn main() {
    let sequences: usize = std::env::var("SIM_BENCH_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let mut states = BTreeSet::new();
    let mut by_replicas = [0usize; 5];
    let mut events = 0usize;
    let started = Instant::now();
    for _ in 0..sequences {
        let sc = scenario().new_tree(&mut runner).unwrap().current();
        events += sc.events.len();
        by_replicas[sc.replicas] += 1;
        match run(&sc) {
            Ok(seen) => states.extend(seen),
            Err(why) => panic!("sequence failed: {why}\n{sc:#?}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "topology simulator, {sequences} sequences (1-4 replicas: {:?})",
        &by_replicas[1..]
    );
    println!(
        "  {:.0} sequences/s, {:.0} fault events/s, {:.1} s in all",
        sequences as f64 / secs,
        events as f64 / secs,
        secs
    );
    println!("  distinct states the loop published: {}", states.len());
}

//! The inspector's cost on the emission path: the push scenario of `summary.rs` (one value
//! per call through map -> filter -> scan, as an interval source pushes) with the inspector
//! off, on with no client, and on with a client reading counts and asking for state texts as
//! fast as it can. Contenders interleaved round by round; medians; ratios against "off".
//!
//! `cargo bench -p hmr-bench --bench inspector`. Results: BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hmr_bench::{CountingSink, build_release, load_codes, median, ns_per};
use host::inspect::tally::Tallies;
use host::loader::Loader;
use host::runtime::Publisher;

const PLUGIN: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("push", interval_ms(3_600_000))
        .map(|n: u64| n * 2)
        .filter(|n: &u64| n % 3 == 0)
        .scan(0u64, |acc: u64, n: u64| acc.wrapping_add(n));
}

plugin_api::export_plugin!(register);
"#;

const N_PUSH: u64 = 10_000_000;
const ROUNDS: usize = 9;

fn one_by_one(publisher: &Publisher) -> f64 {
    let mut d = publisher
        .driver(Arc::new(CountingSink::default()))
        .expect("seeded state");
    let end = black_box(N_PUSH);
    let started = Instant::now();
    for x in 0..end {
        let _ = d.push_one(x);
    }
    ns_per(started.elapsed(), N_PUSH)
}

fn main() -> anyhow::Result<()> {
    let built = build_release("bench_inspector", PLUGIN)?;
    let loader = Loader::new()?;
    let publisher = |version: u64, tallies: Option<&Tallies>| -> anyhow::Result<Publisher> {
        let (_lib, codes) = load_codes(&loader, &built.library, version)?;
        let code = codes
            .into_iter()
            .find(|c| c.name == "push")
            .ok_or_else(|| anyhow::anyhow!("no push pipeline"))?;
        Ok(match tallies {
            Some(t) => Publisher::inspected(code, t.pipeline("push")),
            None => Publisher::new(code),
        })
    };
    let off = publisher(1, None)?;
    let quiet = Tallies::default();
    let on = publisher(2, Some(&quiet))?;
    // Clients: one reads every count and asks for the state texts every 100 ms (ten times as
    // often as the page polls), one does so as fast as it can (the worst case; on this
    // 2-core machine it also takes a core from the pushing thread).
    let stop = Arc::new(AtomicBool::new(false));
    let client = |pause: Duration| -> anyhow::Result<(Publisher, std::thread::JoinHandle<u64>)> {
        let watched = Arc::new(Tallies::default());
        let p = publisher(3 + u64::from(pause.is_zero()), Some(&watched))?;
        let stop = stop.clone();
        let t = std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (_, t) in watched.all() {
                    let c = t.counts();
                    black_box(c.source() + c.by_path().map(|(_, n)| n).sum::<u64>());
                }
                black_box(watched.states(Duration::from_millis(10)));
                reads += 1;
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
            reads
        });
        Ok((p, t))
    };
    let (polled, polling) = client(Duration::from_millis(100))?;
    let (hammered, hammering) = client(Duration::ZERO)?;

    let names = [
        "inspector off",
        "on, no client",
        "on, a client every 100 ms",
        "on, a client without pause",
    ];
    let mut samples = vec![Vec::new(); names.len()];
    for round in 0..ROUNDS {
        for k in 0..names.len() {
            let i = (round + k) % names.len();
            let p = [&off, &on, &polled, &hammered][i];
            samples[i].push(one_by_one(p));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let join = |t: std::thread::JoinHandle<u64>| {
        t.join().map_err(|_| anyhow::anyhow!("a client panicked"))
    };
    let (polls, hammers) = (join(polling)?, join(hammering)?);
    let counts = quiet.pipeline("push").counts();
    anyhow::ensure!(
        counts.source() == N_PUSH * ROUNDS as u64,
        "the inspected pipeline counted {} source values, expected {}",
        counts.source(),
        N_PUSH * ROUNDS as u64
    );
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    println!(
        "### Inspector cost: push source, one value per call, map -> filter -> scan ({N_PUSH} values a round, {ROUNDS} rounds, median ns per value; target: on within 1.5x of off)\n"
    );
    println!("| contender | ns/value | vs off |");
    println!("|---|---:|---:|");
    for (name, m) in names.iter().zip(&medians) {
        println!("| {name} | {m:.2} | {:.2}x |", m / medians[0]);
    }
    println!(
        "\nRounds of reads (every count, then the state texts): {polls} by the 100 ms client, {hammers} by the one without pause."
    );
    Ok(())
}

//! The inspector's cost on the emission path: the push scenario of `summary.rs` (one value
//! per call through map -> filter -> scan, as an interval source pushes) with the inspector
//! off, on with no client, on with the page's updates client (`/api/updates`: a delta built
//! and encoded every 250 ms, the state texts asked once a second), and on with a client
//! reading counts and asking for state texts every 100 ms or as fast as it can. Then a `log`
//! operator's value through the inspector's hub: no hub, a hub with no client, a hub with an
//! updates client (which counts it and keeps the last texts). Contenders interleaved round
//! by round; medians; ratios against "off".
//!
//! `cargo bench -p hmr-bench --bench inspector`. Results: BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hmr_bench::{CountingSink, build_release, load_codes, median, ns_per};
use host::events::{EventSink, HostEvent, Sink};
use host::inspect::tally::Tallies;
use host::inspect::{Hub, Inspected, updates};
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
    let quiet = Arc::new(Tallies::default());
    let on = publisher(2, Some(&quiet))?;
    // Every inspected contender's marbles are asked for as `--inspect` asks: every track's
    // next value's text, each `MARBLE_PERIOD` (the sampler thread of `Inspector::start`).
    let sampled: Arc<std::sync::Mutex<Vec<Arc<Tallies>>>> = Arc::default();
    sampled
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .push(quiet.clone());
    // Clients: one reads every count and asks for the state texts every 100 ms (ten times as
    // often as the page polls), one does so as fast as it can (the worst case; on this
    // 2-core machine it also takes a core from the pushing thread).
    let stop = Arc::new(AtomicBool::new(false));
    let client = |pause: Duration| -> anyhow::Result<(Publisher, std::thread::JoinHandle<u64>)> {
        let watched = Arc::new(Tallies::default());
        sampled
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .push(watched.clone());
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
    // The page's client: what `/api/updates` does on its connection thread, minus the socket.
    let page_tallies = Arc::new(Tallies::default());
    sampled
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .push(page_tallies.clone());
    let paged = publisher(5, Some(&page_tallies))?;
    let sampler = {
        let (stop, sampled) = (stop.clone(), sampled.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(all) = sampled.lock() {
                    for t in all.iter() {
                        t.ask_marbles();
                    }
                }
                std::thread::sleep(host::inspect::tally::MARBLE_PERIOD);
            }
        })
    };
    let page = {
        let stop = stop.clone();
        let inspected = Inspected::new(Arc::new(Hub::new(Arc::new(Quiet))), page_tallies.clone());
        std::thread::spawn(move || {
            let mut parts = updates::Parts::new(&inspected, &Default::default());
            let (mut deltas, mut bytes) = (0u64, 0usize);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if let Some(d) = parts.delta(&inspected) {
                    bytes += d.to_string().len();
                    deltas += 1;
                }
                std::thread::sleep(updates::TICK.saturating_sub(t.elapsed()));
            }
            (deltas, bytes)
        })
    };

    let names = [
        "inspector off",
        "on, no client",
        "on, the page's updates client",
        "on, a client every 100 ms",
        "on, a client without pause",
    ];
    let mut samples = vec![Vec::new(); names.len()];
    for round in 0..ROUNDS {
        for k in 0..names.len() {
            let i = (round + k) % names.len();
            let p = [&off, &on, &paged, &polled, &hammered][i];
            samples[i].push(one_by_one(p));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let join = |t: std::thread::JoinHandle<u64>| {
        t.join().map_err(|_| anyhow::anyhow!("a client panicked"))
    };
    let (polls, hammers) = (join(polling)?, join(hammering)?);
    sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the marble sampler panicked"))?;
    let (deltas, delta_bytes) = page
        .join()
        .map_err(|_| anyhow::anyhow!("the updates client panicked"))?;
    // Every inspected contender counted every value and formatted its marbles (the same
    // work each).
    for t in sampled
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
    {
        let marbles: usize = t.lanes(None).iter().map(|l| l.marbles.len()).sum();
        anyhow::ensure!(marbles > 0, "an inspected contender kept no marbles");
    }
    for (name, t) in [("on", &*quiet), ("the page's", &*page_tallies)] {
        let counts = t.pipeline("push").counts();
        anyhow::ensure!(
            counts.source() == N_PUSH * ROUNDS as u64,
            "the {name} pipeline counted {} source values, expected {}",
            counts.source(),
            N_PUSH * ROUNDS as u64
        );
    }
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
        "\nRounds of reads (every count, then the state texts): {polls} by the 100 ms client, {hammers} by the one without pause; {deltas} deltas ({delta_bytes} bytes) built by the updates client."
    );
    emissions_through_the_hub()
}

/// A sink that does nothing with what it is given (the printer's own cost left out).
#[derive(Debug)]
struct Quiet;

impl EventSink for Quiet {
    fn event(&self, event: HostEvent) {
        black_box(event);
    }

    fn emission(&self, pipeline: &str, version: u64, value: &str) {
        black_box((pipeline, version, value));
    }
}

const N_EMIT: u64 = 2_000_000;

fn emit(sink: &Sink) -> f64 {
    let texts: Vec<String> = (0..1024u64).map(|n| n.to_string()).collect();
    let started = Instant::now();
    for n in 0..N_EMIT {
        sink.emission("push", 1, &texts[(n % 1024) as usize]);
    }
    ns_per(started.elapsed(), N_EMIT)
}

/// A `log` operator's value reported through the hub, with and without an updates client.
fn emissions_through_the_hub() -> anyhow::Result<()> {
    let bare: Sink = Arc::new(Quiet);
    let quiet_hub = Arc::new(Hub::new(Arc::new(Quiet)));
    let watched_hub = Arc::new(Hub::new(Arc::new(Quiet)));
    let _client = watched_hub.watch_emissions();
    let (quiet, watched): (Sink, Sink) = (quiet_hub, watched_hub.clone());
    let names = ["no inspector", "hub, no client", "hub, an updates client"];
    let inspected = Inspected::new(watched_hub, Arc::new(Tallies::default()));
    let mut parts = updates::Parts::new(&inspected, &Default::default());
    let mut samples = vec![Vec::new(); names.len()];
    for round in 0..ROUNDS {
        for k in 0..names.len() {
            let i = (round + k) % names.len();
            samples[i].push(emit([&bare, &quiet, &watched][i]));
        }
    }
    // The updates client was told of every emission, with the last one's text.
    let d = parts.delta(&inspected).unwrap_or_default();
    let e = &d["emissions"]["push"];
    anyhow::ensure!(
        e["count"] == N_EMIT * ROUNDS as u64
            && e["last"][2]["value"].as_str().and_then(|v| v.parse().ok())
                == Some((N_EMIT - 1) % 1024),
        "the updates client was told {e}"
    );
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    println!(
        "\n### A `log` operator's value through the inspector's hub ({N_EMIT} values a round, {ROUNDS} rounds, median ns per value)\n"
    );
    println!("| contender | ns/value | vs no inspector |");
    println!("|---|---:|---:|");
    for (name, m) in names.iter().zip(&medians) {
        println!("| {name} | {m:.2} | {:.2}x |", m / medians[0]);
    }
    Ok(())
}

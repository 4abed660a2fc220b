//! `make bench`: every comparison measured side by side in one run (contenders interleaved
//! round by round), medians quoted, ratios computed from those medians. Prints a markdown
//! summary ending in one verdict per target, and writes it to `target/bench-summary.md`.
//!
//! Every contender's result is checked in every round (against a closed form, or a value the
//! bench computes outside the timers); a check that fails, a settle wait that times out or a
//! scenario that cannot run makes the run exit non-zero after the summary. A missed timing
//! target is a verdict, not a failure (timings on a shared machine are noisy).
//!
//! Scenarios (see BENCHMARKS.md for the targets):
//! 1. batch source: `range` -> map -> filter -> reduce, host vs rxRust `from_iter` vs a loop;
//! 2. push source, one value per call: host vs rxRust `Subject` vs three `AtomicPtr` fn slots;
//! 3. per call: the host's hot-swappable call vs hot-lib-reloader's generated call;
//! 4. swap cost against the number of tracks (100, 1,000, 10,000);
//! 5. save to first new emission on the example plugin, split by phase;
//! 6. heap allocations per emission, host and plugins (an `LD_PRELOAD` malloc counter);
//! 7. reload at scale: 100 pipelines;
//! 8. emission latency while 50 reloads through the reloader swap code under a running
//!    pipeline;
//! 9. resident memory per reload over 200 reloads of the example plugin;
//! 10. heap state: `reduce`, `scan_map` and `scan` on a `Vec` state of 10k and 100k items,
//!     host vs rxRust's same operator;
//! 11. a subject with 1 and with 10 subscribers: a publisher pipeline delivering to subscriber
//!     pipelines through the host's hub, vs an rxRust `Subject` with the same subscribers;
//! 12. `merge`, `zip`, `combine_latest` on two inputs fed alternately (one value at a time,
//!     and in batches of 1024), host vs rxRust's same operator on two `Subject`s;
//! 13. time operators: `debounce_ms` and `throttle_ms` per value under a virtual clock (the
//!     driver fires the operators' wakes at their deadlines, as a pipeline thread does), host
//!     vs rxRust's `debounce` and `throttle_time` on a virtual-time scheduler;
//! 14. `switch_map` and `merge_map`, one inner subscription (`of(vec![x])`, a bare synchronous
//!     source, and `of(vec![x]).map(..)`, with an operator) created and ended per outer
//!     value (one value at a time, and in batches of 1024), host vs rxRust's `switch_map` /
//!     `flat_map` on a `Subject` with `from_iter(vec![x])` (`.map(..)`) inner streams;
//! 15. inner subscriptions at scale: a `merge_map` over `range(0, N)` with an inner interval
//!     (N = 1,000 and 10,000 live): the host's threads, resident memory per subscription, and
//!     the host side of a reload that re-projects them all (release builds).
//! 17. `--record`'s cost on scenario 2's push source: the same driver and values with and
//!     without a recording to a file (one tape, its writer thread), side by side.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use anyhow::Context;
use hmr_bench::{
    AllocationCounter, Built, CountingSink, Verdict, build_malloc_counter, build_release,
    chain_sum, load, median, ns_per, quantile,
};
use host::code::{Pushed, Wire};
use host::events::{ChannelSink, HostEvent, Sink};
use host::loader::Loader;
use host::record::Recorder;
use host::reloader::{Outcome, Reloader, plugin_manifest};
use host::runtime::{BATCH, PanicPolicy, Publisher};
use host::subjects::Hub;
use host::testkit::{Fixture, Harness, fixture_target_dir, rss_bytes, workspace_root};
use rxrust::prelude::*;
use rxrust::scheduler::{Scheduler, TaskHandle};

/// rxRust's context without its tokio scheduler feature: nothing here uses timers.
#[derive(Clone, Copy, Default)]
struct NoTimers;

impl<S> Scheduler<S> for NoTimers {
    fn schedule(&self, _source: S, _delay: Option<Duration>) -> TaskHandle {
        TaskHandle::finished()
    }
}

type Local<T> = rxrust::context::LocalCtx<T, NoTimers>;

/// rxRust's virtual-time scheduler (scenario 13), shared with the differential tests of the
/// time operators, which check rxRust's time operators on it against ours.
#[path = "../../plugin-api/tests/rx_clock/mod.rs"]
mod rx_clock;

/// The pipelines of scenarios 1, 2, 3 and 6. Each ends in a `reduce` whose state holds the
/// result, emitted to the host (`log`) when the source completes: the work reaches host
/// memory on every value and the host on completion, so none of it is dead code, and the
/// bench checks it.
/// - `batch`, `push`: the chain of 1 and 2; `push`'s last `reduce` keeps the last value, as
///   rxRust's subscriber does (`Cell::set`).
/// - `call`: one function (`n * 3 ^ 7`, hot-lib-reloader's `step`), results xor-folded.
/// - `nop`: nothing at all (scenario 3's reference: the fixed cost of the boundary).
/// - `log`: every value emitted to the host (scenario 6: the host's emission path).
/// - `counter`: the example plugin's `counter` chain (scenario 16: a replay's cost).
/// - `boxed`: one heap allocation in the plugin per value (scenario 6's control: the counter
///   must see it).
const PLUGIN: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("batch", range(0, 50_000_000))
        .map(|n: u64| n * 2)
        .filter(|n: &u64| n % 3 == 0)
        .reduce(0u64, |acc: u64, n: u64| acc.wrapping_add(n))
        .log();
    p.pipeline("push", interval_ms(3_600_000))
        .map(|n: u64| n * 2)
        .filter(|n: &u64| n % 3 == 0)
        .scan(0u64, |acc: u64, n: u64| acc.wrapping_add(n))
        .reduce(0u64, |_last: u64, s: u64| s)
        .log();
    p.pipeline("call", interval_ms(3_600_000))
        .map(|n: u64| n.wrapping_mul(3) ^ 7)
        .reduce(0u64, |acc: u64, v: u64| acc ^ v)
        .log();
    p.pipeline("nop", interval_ms(3_600_000));
    p.pipeline("log", interval_ms(3_600_000)).map(|n: u64| n * 2).log();
    // Scenario 16: the example plugin's `counter` chain.
    p.pipeline("counter", interval_ms(3_600_000))
        .map(|n: u64| n * 2)
        .filter(|n: &u64| n % 3 != 1)
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .log();
    p.pipeline("boxed", interval_ms(3_600_000))
        .map(|n: u64| *std::hint::black_box(Box::new(n)))
        .reduce(0u64, |acc: u64, n: u64| acc.wrapping_add(n))
        .log();
    // Scenario 11: a publisher and 1 or 10 subscribers; subscriber `i` maps `n * 2 + i`
    // (so each subscriber's result is its own) and keeps its running sum.
    for (name, k) in [("s1", 1u64), ("s10", 10)] {
        p.pipeline(&format!("pub_{k}"), interval_ms(3_600_000)).publish(name);
        for i in 0..k {
            p.pipeline(&format!("sub_{k}_{i}"), subject::<u64>(name))
                .map(move |n: u64| n * 2 + i)
                .scan(0u64, |acc: u64, n: u64| acc.wrapping_add(n))
                .reduce(0u64, |_last: u64, s: u64| s)
                .log();
        }
    }
    // Scenario 12: the fan-in operators on two `u64` ports, each folding what it emits
    // (in order) into one checked result.
    p.pipeline("merge", interval_ms(3_600_000))
        .merge(interval_ms(3_600_000))
        .reduce(0u64, |acc: u64, v: u64| acc.wrapping_mul(31).wrapping_add(v))
        .log();
    p.pipeline("zip", interval_ms(3_600_000))
        .zip(interval_ms(3_600_000), |a: u64, b: u64| a.wrapping_mul(3) ^ b)
        .reduce(0u64, |acc: u64, v: u64| acc.wrapping_mul(31).wrapping_add(v))
        .log();
    p.pipeline("combine_latest", interval_ms(3_600_000))
        .combine_latest(interval_ms(3_600_000), |a: &u64, b: &u64| a.wrapping_mul(3) ^ b)
        .reduce(0u64, |acc: u64, v: u64| acc.wrapping_mul(31).wrapping_add(v))
        .log();
    // Scenario 13: the time operators (5 ms, `TIME_MS`), what they emit folded.
    p.pipeline("debounce", interval_ms(3_600_000))
        .debounce_ms(5)
        .reduce(0u64, |acc: u64, v: u64| acc.wrapping_mul(31).wrapping_add(v))
        .log();
    p.pipeline("throttle", interval_ms(3_600_000))
        .throttle_ms(5)
        .reduce(0u64, |acc: u64, v: u64| acc.wrapping_mul(31).wrapping_add(v))
        .log();
    // Scenario 14: one inner subscription created and ended per outer value, its one value
    // folded (in order) into one checked result.
    p.pipeline("switch_map", interval_ms(3_600_000))
        .switch_map(|x: u64| of(vec![x]))
        .reduce(0u64, |acc: u64, v: u64| acc.wrapping_mul(31).wrapping_add(v))
        .log();
    p.pipeline("merge_map", interval_ms(3_600_000))
        .merge_map(|x: u64| of(vec![x]))
        .reduce(0u64, |acc: u64, v: u64| acc.wrapping_mul(31).wrapping_add(v))
        .log();
    // The same with an operator in the inner stream: bound (its track registered) and run
    // inside the call on states the plugin seeds, without a host subscription.
    p.pipeline("switch_map_op", interval_ms(3_600_000))
        .switch_map(|x: u64| of(vec![x]).map(|v: u64| v + 1))
        .reduce(0u64, |acc: u64, v: u64| acc.wrapping_mul(31).wrapping_add(v))
        .log();
    p.pipeline("merge_map_op", interval_ms(3_600_000))
        .merge_map(|x: u64| of(vec![x]).map(|v: u64| v + 1))
        .reduce(0u64, |acc: u64, v: u64| acc.wrapping_mul(31).wrapping_add(v))
        .log();
    // A seed that differs per outer value: the operator's signature (its seed's text) with it,
    // so each subscription's binding is another one.
    p.pipeline("merge_map_seed", interval_ms(3_600_000))
        .merge_map(|x: u64| of(vec![x]).scan(x, |a: u64, v: u64| a + v))
        .reduce(0u64, |acc: u64, v: u64| acc.wrapping_mul(31).wrapping_add(v))
        .log();
    // Subscribed the long way (a `publish`, to a subject nobody reads, is held by the host):
    // what every inner stream cost before, and what an asynchronous one costs.
    p.pipeline("merge_map_sub", interval_ms(3_600_000))
        .merge_map(|x: u64| of(vec![x]).map(|v: u64| v + 1).publish("bench_unread"))
        .reduce(0u64, |acc: u64, v: u64| acc.wrapping_mul(31).wrapping_add(v))
        .log();
}

plugin_api::export_plugin!(register);
"#;

/// Scenario 8's plugin: `PLUGIN`'s `push` alone (a reload restarts a completed `range`
/// pipeline, which would run 50M values in the background on every reload).
const LATENCY_PLUGIN: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("push", interval_ms(3_600_000))
        .map(|n: u64| n * 2)
        .filter(|n: &u64| n % 3 == 0)
        .scan(0u64, |acc: u64, n: u64| acc.wrapping_add(n))
        .reduce(0u64, |_last: u64, s: u64| s)
        .log();
}

plugin_api::export_plugin!(register);
"#;

/// `PIPELINES` pipelines, each with `SCOPES` keyed scopes and a stateful tail: (SCOPES + 3)
/// tracks a pipeline. Built once per configuration (`scale_plugin`).
const SCALE: &str = r#"
use plugin_api::prelude::*;

const PIPELINES: usize = {PIPELINES};
const SCOPES: usize = {SCOPES};

fn register(p: &mut Plugin) {
    let (pipelines, scopes) = (PIPELINES, SCOPES);
    for i in 0..pipelines {
        let mut chain = p.pipeline(&format!("p{i}"), interval_ms(3_600_000));
        for s in 0..scopes {
            chain = chain.scope(&format!("s{s}"), |c| c);
        }
        chain
            .map(|n: u64| n + 1)
            .scan(0u64, |acc: u64, n: u64| acc + n);
    }
}

plugin_api::export_plugin!(register);
"#;

/// Scenario 15's plugin: `{N}` live inner subscriptions (an hour's interval each: their
/// first value comes at once, the next after the bench).
const INNER_SCALE: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("m", range(0, {N}))
        .merge_map(|n: u64| interval_ms(3_600_000).map(move |i: u64| n * 10 + i))
        .log();
}

plugin_api::export_plugin!(register);
"#;

/// The host's threads (Linux; empty elsewhere).
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

const N_BATCH: u64 = 50_000_000;
const N_PUSH: u64 = 10_000_000;
const ROUNDS: usize = 7;

/// The environment variable that makes the bench binary run scenario 6's measuring child
/// (set by scenario 6 itself, with the counter preloaded): the library to load.
const ALLOC_CHILD: &str = "HMR_BENCH_ALLOC_CHILD";

struct Report {
    text: String,
    verdicts: Vec<Verdict>,
}

impl Report {
    fn line(&mut self, s: impl AsRef<str>) {
        println!("{}", s.as_ref());
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }

    /// Records the verdict on `target`: `met` is `None` for a row quoted for information.
    fn verdict(&mut self, target: &str, measured: String, met: Option<bool>) {
        self.verdicts.push(Verdict {
            target: target.to_owned(),
            measured,
            met,
        });
    }
}

/// What one timed run of a side-by-side comparison is.
enum Run<'a> {
    /// A contender: returns (time per item, the result it computed), checked every round.
    Checked(&'a mut dyn FnMut() -> anyhow::Result<(f64, u64)>),
    /// A reference row that computes nothing (a fixed cost): returns the time per item only.
    Reference(&'a mut dyn FnMut() -> anyhow::Result<f64>),
}

/// Runs each contender once per round, rotating the order, checks every contender's result
/// of every round against `expected`, and returns the medians (in the unit the contenders
/// return).
fn side_by_side(
    rounds: usize,
    expected: u64,
    contenders: &mut [(&str, Run<'_>)],
) -> anyhow::Result<Vec<f64>> {
    let n = contenders.len();
    let mut samples = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let (name, run) = &mut contenders[i];
            let t = match run {
                Run::Checked(run) => {
                    let (t, result) = run().with_context(|| format!("{name}, round {round}"))?;
                    anyhow::ensure!(
                        result == expected,
                        "results differ: {name} computed {result} in round {round}, expected {expected}"
                    );
                    t
                }
                Run::Reference(run) => run().with_context(|| format!("{name}, round {round}"))?,
            };
            samples[i].push(t);
        }
    }
    Ok(samples.iter_mut().map(|s| median(s)).collect())
}

fn table(
    report: &mut Report,
    title: &str,
    names: &[&str],
    medians: &[f64],
    unit: &str,
    base: usize,
) {
    report.line(format!("\n### {title}\n"));
    report.line(format!(
        "| contender | median {unit} | ratio to {} |",
        names[base]
    ));
    report.line("|---|---:|---:|");
    for (name, m) in names.iter().zip(medians) {
        report.line(format!("| {name} | {m:.2} | {:.2}x |", m / medians[base]));
    }
}

fn null_sink() -> Sink {
    Arc::new(CountingSink::default())
}

/// Completes `driver`'s chain (outside any timer) and returns what its final `reduce`
/// emitted to `capture`.
fn finish(driver: &mut host::runtime::Driver, capture: &CountingSink) -> anyhow::Result<u64> {
    let completed = driver
        .complete()
        .map_err(|e| anyhow::anyhow!("completing: {e}"))?;
    anyhow::ensure!(completed, "a user function panicked while completing");
    capture.last_u64()
}

fn batch(report: &mut Report, loaded: &hmr_bench::Loaded) -> anyhow::Result<()> {
    let publisher = &loaded.pipelines["batch"];
    let mut host = || -> anyhow::Result<(f64, u64)> {
        // A fresh sink and state every round: nothing carries over from the last one.
        let capture = Arc::new(CountingSink::default());
        let mut d = publisher
            .driver(capture.clone())
            .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
        let mut buf = [0u64; BATCH];
        let end = black_box(N_BATCH);
        let mut refused = 0u64;
        let started = Instant::now();
        let mut next = 0;
        while next < end {
            let len = ((end - next) as usize).min(BATCH);
            for (i, slot) in buf[..len].iter_mut().enumerate() {
                *slot = next + i as u64;
            }
            if !matches!(d.push(&buf[..len]), Ok(Pushed::Continue)) {
                refused += 1;
            }
            next += len as u64;
        }
        let t = started.elapsed();
        anyhow::ensure!(refused == 0, "{refused} batches did not go through");
        Ok((ns_per(t, N_BATCH), finish(&mut d, &capture)?))
    };
    let mut rx = || -> anyhow::Result<(f64, u64)> {
        let end = black_box(N_BATCH);
        let out = std::rc::Rc::new(std::cell::Cell::new(None));
        let o = out.clone();
        let started = Instant::now();
        Local::from_iter(0..end)
            .map(|n| n * 2)
            .filter(|n| n % 3 == 0)
            .reduce_initial(0u64, |acc, n| acc.wrapping_add(n))
            .subscribe(move |v| o.set(Some(v)));
        let t = started.elapsed();
        Ok((
            ns_per(t, N_BATCH),
            out.get().context("rxRust emitted nothing")?,
        ))
    };
    let mut plain = || -> anyhow::Result<(f64, u64)> {
        let end = black_box(N_BATCH);
        let started = Instant::now();
        let mut acc = 0u64;
        for n in 0..end {
            let m = n * 2;
            if m % 3 == 0 {
                acc = acc.wrapping_add(m);
            }
        }
        let t = started.elapsed();
        Ok((ns_per(t, N_BATCH), black_box(acc)))
    };
    let names = ["host (release plugin)", "rxRust from_iter", "plain loop"];
    let medians = side_by_side(
        ROUNDS,
        chain_sum(N_BATCH),
        &mut [
            (names[0], Run::Checked(&mut host)),
            (names[1], Run::Checked(&mut rx)),
            (names[2], Run::Checked(&mut plain)),
        ],
    )?;
    table(
        report,
        &format!(
            "1. Batch source: range(0, {N_BATCH}) -> map -> filter -> reduce (ns per item; target <= 2x rxRust)"
        ),
        &names,
        &medians,
        "ns/item",
        1,
    );
    let ratio = medians[0] / medians[1];
    report.verdict(
        "batch source within 2x of rxRust `from_iter`",
        format!(
            "{:.2} vs {:.2} ns/item: {ratio:.2}x",
            medians[0], medians[1]
        ),
        Some(ratio <= 2.0),
    );
    Ok(())
}

/// Pushes `n` values one at a time through a fresh driver of `publisher` (fresh state, fresh
/// sink), as an interval source does, then completes it outside the timer; returns (ns per
/// value, what the chain's final `reduce` emitted). Every push's status is checked.
fn one_by_one(publisher: &Publisher, n: u64) -> anyhow::Result<(f64, u64)> {
    let capture = Arc::new(CountingSink::default());
    let mut d = publisher
        .driver(capture.clone())
        .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
    let end = black_box(n);
    let mut refused = 0u64;
    let started = Instant::now();
    for x in 0..end {
        if !matches!(d.push_one(x), Ok(Pushed::Continue)) {
            refused += 1;
        }
    }
    let t = started.elapsed();
    anyhow::ensure!(refused == 0, "{refused} values did not go through");
    Ok((ns_per(t, n), finish(&mut d, &capture)?))
}

/// Values per round of scenario 17.
const N_RECORD: u64 = 1_000_000;

/// The deadlines of scenario 17's values: those of `interval_ms(1)`'s ticks.
const RECORD_PERIOD: Duration = Duration::from_millis(1);

/// Scenario 17: scenario 2's push, one value per call, without and with `--record`: the
/// pipeline thread's tape takes each value with its deadline before the push, as
/// `run_pipeline` does for an interval's tick (values 0, 1, 2, ... due one period apart, so
/// they extend the tape's open run); the writer thread formats and writes.
/// Every round checks the chain's result, and that the file holds every value with its time
/// (read back with `record::read`, runs expanded).
fn record_overhead(report: &mut Report, loaded: &hmr_bench::Loaded) -> anyhow::Result<()> {
    let publisher = &loaded.pipelines["push"];
    let dir = host::testkit::TempDir::new("bench_record");
    let file = dir.path().join("push.jsonl");
    // Not recorded: the same loop without the tape. The deadlines are stepped in both, as
    // `run_pipeline` steps an interval's whether it records or not.
    let mut plain = || -> anyhow::Result<(f64, u64)> {
        let capture = Arc::new(CountingSink::default());
        let mut d = publisher
            .driver(capture.clone())
            .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
        let end = black_box(N_RECORD);
        let mut refused = 0u64;
        let mut due = Instant::now();
        let started = Instant::now();
        for x in 0..end {
            if !matches!(d.push_one(x), Ok(Pushed::Continue)) {
                refused += 1;
            }
            due += RECORD_PERIOD;
        }
        let t = started.elapsed();
        black_box(due);
        anyhow::ensure!(refused == 0, "{refused} values did not go through");
        Ok((ns_per(t, N_RECORD), finish(&mut d, &capture)?))
    };
    // Per round: time the emitting thread waited for the writer, and the finish's share.
    let waited = std::cell::RefCell::new(Vec::new());
    let tails = std::cell::RefCell::new(Vec::new());
    let lines = std::cell::RefCell::new(Vec::new());
    let recorded = |with_finish: bool| -> anyhow::Result<(f64, u64)> {
        let recorder =
            Recorder::create(&file, dir.path(), host::clock::Clock::System, null_sink())?;
        let tape = recorder.recording().tape(publisher.code());
        let capture = Arc::new(CountingSink::default());
        let mut d = publisher
            .driver(capture.clone())
            .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
        let end = black_box(N_RECORD);
        let mut refused = 0u64;
        // An interval's deadlines, which the pipeline thread has at hand for each tick: the
        // next is one period after the last (`run_pipeline`'s `due.checked_add(period)`).
        let first_due = Instant::now();
        let mut due = first_due;
        let started = Instant::now();
        for x in 0..end {
            // As `run_pipeline`: the next deadline first (for its timer), then the tick.
            let next = due + RECORD_PERIOD;
            tape.tick(0, due, RECORD_PERIOD, next, x);
            if !matches!(d.push_one(x), Ok(Pushed::Continue)) {
                refused += 1;
            }
            due = next;
        }
        let emitting = started.elapsed();
        drop(tape);
        recorder.finish()?;
        let total = started.elapsed();
        anyhow::ensure!(refused == 0, "{refused} values did not go through");
        if !with_finish {
            waited
                .borrow_mut()
                .push(recorder.recording().waited().as_secs_f64() * 1e9 / N_RECORD as f64);
            tails
                .borrow_mut()
                .push((total - emitting).as_secs_f64() * 1e3);
        }
        // Every value is in the file, with its time: runs expanded, not lines counted.
        let read = host::record::read(&file)?;
        anyhow::ensure!(
            read.entries.len() as u64 == N_RECORD,
            "the recording holds {} values, not {N_RECORD}",
            read.entries.len()
        );
        let t0 = read.entries[0].t;
        let period = RECORD_PERIOD.as_nanos() as u64;
        for (x, e) in read.entries.iter().enumerate() {
            let x = x as u64;
            anyhow::ensure!(
                e.value == host::record::Value::U64(x) && e.t == t0 + x * period,
                "value {x} is recorded as {:?} at {}",
                e.value,
                e.t
            );
        }
        if !with_finish {
            lines.borrow_mut().push(
                std::fs::read(&file)?
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count() as f64,
            );
        }
        let t = if with_finish { total } else { emitting };
        Ok((ns_per(t, N_RECORD), finish(&mut d, &capture)?))
    };
    let names = [
        "host push, not recorded (deadlines stepped)",
        "host push, --record (the emitting thread, to its last value)",
        "host push, --record, until every value is written",
        "host push, not recorded, no deadlines (scenario 2's loop)",
    ];
    let mut emit_only = || recorded(false);
    let mut with_finish = || recorded(true);
    let mut bare = || one_by_one(publisher, N_RECORD);
    let all = side_by_side(
        ROUNDS,
        chain_sum(N_RECORD),
        &mut [
            (names[0], Run::Checked(&mut plain)),
            (names[1], Run::Checked(&mut emit_only)),
            (names[2], Run::Checked(&mut with_finish)),
            (names[3], Run::Checked(&mut bare)),
        ],
    )?;
    let waited_median = median(&mut waited.borrow_mut());
    let tail = median(&mut tails.borrow_mut());
    let lines_median = median(&mut lines.borrow_mut());
    table(
        report,
        &format!(
            "17. --record on the push source: map -> filter -> scan, one value at a time, {N_RECORD} values a round (ns per value; target <= 2x not recorded)"
        ),
        &names,
        &all,
        "ns/value",
        0,
    );
    report.line(format!(
        "\nThe emitting thread waited for the writer (a full channel) {waited_median:.1} ns per value \
         (median of the rounds); the end of a recording (formatting and writing what the \
         writer had not yet) took {tail:.1} ms (median). The file held {lines_median:.0} lines \
         (median; the header and the end included) for {N_RECORD} values."
    ));
    // Against both baselines: the loop stepping an interval's deadlines (what the runtime
    // does, recording or not), and scenario 2's bare loop (what "the push benchmark" times).
    let ratio = all[1] / all[0];
    let bare = all[1] / all[3];
    report.verdict(
        "`--record` on the push benchmark within 2x of not recording (both baselines)",
        format!(
            "{:.2} ns/value recorded: {ratio:.2}x the loop stepping deadlines ({:.2}), {bare:.2}x scenario 2's bare loop ({:.2})",
            all[1], all[0], all[3]
        ),
        Some(ratio <= 2.0 && bare <= 2.0),
    );
    Ok(())
}

static MAP_SLOT: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());
static FILTER_SLOT: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());
static SCAN_SLOT: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

fn slot_map(n: u64) -> u64 {
    n * 2
}
fn slot_filter(n: &u64) -> bool {
    n.is_multiple_of(3)
}
fn slot_scan(acc: u64, n: u64) -> u64 {
    acc.wrapping_add(n)
}

fn push(report: &mut Report, loaded: &hmr_bench::Loaded) -> anyhow::Result<()> {
    let publisher = &loaded.pipelines["push"];
    let mut host = || one_by_one(publisher, N_PUSH);
    let mut rx = || -> anyhow::Result<(f64, u64)> {
        let end = black_box(N_PUSH);
        let mut subject = Local::subject::<u64, Infallible>();
        let out = std::rc::Rc::new(std::cell::Cell::new(None));
        let o = out.clone();
        subject
            .clone()
            .map(|n| n * 2)
            .filter(|n| n % 3 == 0)
            .scan(0u64, |acc, n| acc.wrapping_add(n))
            .subscribe(move |v| o.set(Some(v)));
        let started = Instant::now();
        for x in 0..end {
            subject.next(x);
        }
        let t = started.elapsed();
        Ok((
            ns_per(t, N_PUSH),
            out.get().context("rxRust emitted nothing")?,
        ))
    };
    // black_box: a slot written once with a constant would let LLVM fold the loads away.
    MAP_SLOT.store(
        black_box(slot_map as fn(u64) -> u64 as *mut ()),
        Ordering::Release,
    );
    FILTER_SLOT.store(
        black_box(slot_filter as fn(&u64) -> bool as *mut ()),
        Ordering::Release,
    );
    SCAN_SLOT.store(
        black_box(slot_scan as fn(u64, u64) -> u64 as *mut ()),
        Ordering::Release,
    );
    let mut slots = || -> anyhow::Result<(f64, u64)> {
        let end = black_box(N_PUSH);
        let mut acc = 0u64;
        let started = Instant::now();
        for x in 0..end {
            // SAFETY: each slot holds a function pointer of exactly the type it is cast to,
            // stored above and never changed.
            let (map, filter, scan) = unsafe {
                (
                    std::mem::transmute::<*mut (), fn(u64) -> u64>(
                        MAP_SLOT.load(Ordering::Acquire),
                    ),
                    std::mem::transmute::<*mut (), fn(&u64) -> bool>(
                        FILTER_SLOT.load(Ordering::Acquire),
                    ),
                    std::mem::transmute::<*mut (), fn(u64, u64) -> u64>(
                        SCAN_SLOT.load(Ordering::Acquire),
                    ),
                )
            };
            let m = map(x);
            if filter(&m) {
                acc = scan(acc, m);
            }
        }
        let t = started.elapsed();
        Ok((ns_per(t, N_PUSH), black_box(acc)))
    };
    // Not a contender for the verdict: the same chain and values through `push_item`, the
    // entry of every port but 0 (`push_u64`'s path for intervals; lines and subject
    // deliveries take it with the port's table for a test).
    let mut item = || -> anyhow::Result<(f64, u64)> {
        let capture = Arc::new(CountingSink::default());
        let mut d = publisher
            .driver(capture.clone())
            .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
        let end = black_box(N_PUSH);
        let mut refused = 0u64;
        let started = Instant::now();
        for x in 0..end {
            // SAFETY: `x` is a live `u64`, valid for the call; `push_item` checks that port 0
            // takes `u64` values.
            let r = unsafe { d.push_item(0, Wire::U64, (&raw const x).cast()) };
            refused += u64::from(!matches!(r, Ok(Pushed::Continue)));
        }
        let t = started.elapsed();
        anyhow::ensure!(refused == 0, "{refused} values did not go through");
        Ok((ns_per(t, N_PUSH), finish(&mut d, &capture)?))
    };
    // Not a contender either: the floor of the host's design, the plugin's entry called
    // through its pointer with nothing around it (no watchdog marks, no look for new code,
    // no replay ring, no status read): what `push_one` adds is the host row minus this one.
    let mut floor = || -> anyhow::Result<(f64, u64)> {
        let capture = Arc::new(CountingSink::default());
        let mut d = publisher
            .driver(capture.clone())
            .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
        // Takes the code, and checks the entry takes the first value.
        anyhow::ensure!(
            matches!(d.push_one(0), Ok(Pushed::Continue)),
            "the first value did not go through"
        );
        let end = black_box(N_PUSH);
        let mut answers = 0u32;
        let started = Instant::now();
        for x in 1..end {
            // SAFETY: port 0 of the push pipeline takes `u64`s, `x` lives across the call,
            // the chain never completes before `finish`, and nothing publishes code meanwhile
            // (`push_one` took it).
            answers |= unsafe { d.push_unguarded(0, (&raw const x).cast()) };
        }
        let t = started.elapsed();
        anyhow::ensure!(
            answers == 0,
            "a value was not taken (status bits {answers:#x})"
        );
        Ok((ns_per(t, N_PUSH), finish(&mut d, &capture)?))
    };
    let names = [
        "host (one value per call)",
        "rxRust Subject",
        "3 AtomicPtr fn slots",
        "reference: host, the same chain through `Driver::push_item` (ports > 0)",
        "floor: the plugin's entry alone, called by the driver with nothing around it",
    ];
    let medians = side_by_side(
        ROUNDS,
        chain_sum(N_PUSH),
        &mut [
            (names[0], Run::Checked(&mut host)),
            (names[1], Run::Checked(&mut rx)),
            (names[2], Run::Checked(&mut slots)),
            (names[3], Run::Checked(&mut item)),
            (names[4], Run::Checked(&mut floor)),
        ],
    )?;
    table(
        report,
        "2. Push source: map -> filter -> scan, one value at a time (ns per value; target <= rxRust Subject)",
        &names,
        &medians,
        "ns/value",
        1,
    );
    let ratio = medians[0] / medians[1];
    report.line(format!(
        "\nThe floor (the plugin's entry alone) is {:.2}x rxRust; `push_one`'s own work around \
         it adds {:.2} ns a value ({:.0}% of the host row).",
        medians[4] / medians[1],
        medians[0] - medians[4],
        100.0 * (medians[0] - medians[4]) / medians[0]
    ));
    report.verdict(
        "push source no slower than rxRust `Subject`",
        format!(
            "{:.2} vs {:.2} ns/value: {ratio:.2}x (the plugin's entry alone: {:.2}x)",
            medians[0],
            medians[1],
            medians[4] / medians[1]
        ),
        Some(ratio <= 1.0),
    );
    Ok(())
}

#[hot_lib_reloader::hot_module(dylib = "hlr_fixture", lib_dir = env!("HLR_LIB_DIR"))]
mod hot_lib {
    #[hot_function]
    pub fn step(n: u64) -> u64 {}
}

static CALL_SLOT: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

fn per_call(report: &mut Report, loaded: &hmr_bench::Loaded) -> anyhow::Result<()> {
    let publisher = &loaded.pipelines["call"];
    // hot-lib-reloader is slow: a tenth of the values (the same count for every contender, so
    // the results compare).
    let n = N_PUSH / 10;
    // What every contender must compute, outside any timer.
    let expected = (0..n).fold(0u64, |acc, x| acc ^ (x.wrapping_mul(3) ^ 7));
    let mut host = || one_by_one(publisher, n);
    let mut hlr = || -> anyhow::Result<(f64, u64)> {
        let end = black_box(n);
        let mut acc = 0u64;
        let started = Instant::now();
        for x in 0..end {
            acc ^= hot_lib::step(x);
        }
        let t = started.elapsed();
        Ok((ns_per(t, n), black_box(acc)))
    };
    CALL_SLOT.store(
        black_box(hlr_fixture::step as fn(u64) -> u64 as *mut ()),
        Ordering::Release,
    );
    let mut slot = || -> anyhow::Result<(f64, u64)> {
        let end = black_box(n);
        let mut acc = 0u64;
        let started = Instant::now();
        for x in 0..end {
            // SAFETY: the slot holds `hlr_fixture::step`, a `fn(u64) -> u64`, stored above.
            let f = unsafe {
                std::mem::transmute::<*mut (), fn(u64) -> u64>(CALL_SLOT.load(Ordering::Acquire))
            };
            acc ^= f(x);
        }
        let t = started.elapsed();
        Ok((ns_per(t, n), black_box(acc)))
    };
    // The reference row: a pipeline without operators does no work and has no result; it
    // measures the boundary's fixed cost and is not a contender (nothing to check).
    let nop = &loaded.pipelines["nop"];
    let mut empty = || -> anyhow::Result<f64> {
        let mut d = nop
            .driver(null_sink())
            .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
        let end = black_box(n);
        let mut refused = 0u64;
        let started = Instant::now();
        for x in 0..end {
            if !matches!(d.push_one(x), Ok(Pushed::Continue)) {
                refused += 1;
            }
        }
        let t = started.elapsed();
        anyhow::ensure!(refused == 0, "{refused} values did not go through");
        Ok(ns_per(t, n))
    };
    let names = [
        "host hot-swappable call (map + xor-fold into host state)",
        "hot-lib-reloader #[hot_module] call (+ xor-fold)",
        "AtomicPtr fn call (+ xor-fold)",
        "reference, not a contender: host call into an empty pipeline (no work)",
    ];
    let medians = side_by_side(
        ROUNDS,
        expected,
        &mut [
            (names[0], Run::Checked(&mut host)),
            (names[1], Run::Checked(&mut hlr)),
            (names[2], Run::Checked(&mut slot)),
            (names[3], Run::Reference(&mut empty)),
        ],
    )?;
    table(
        report,
        &format!(
            "3. Per call: one function (n * 3 ^ 7) behind a hot-swappable call, {n} calls, results xor-folded and checked (ns per call)"
        ),
        &names,
        &medians,
        "ns/call",
        1,
    );
    report.verdict(
        "per call: against hot-lib-reloader (no DESIGN target)",
        format!(
            "{:.2} vs {:.2} ns/call: {:.2}x",
            medians[0],
            medians[1],
            medians[0] / medians[1]
        ),
        None,
    );
    Ok(())
}

/// The pipelines scenario 6 counts, with the values pushed, and what each must show: the
/// control `boxed` allocates once per value in the plugin, so a counter that does not see the
/// plugin's allocator fails the scenario.
const ALLOC_ROWS: [(&str, &str); 7] = [
    (
        "push",
        "`map` -> `filter` -> `scan` -> `reduce`, one value per call",
    ),
    ("call", "one `map` -> `reduce`, one value per call"),
    ("batch", "`map` -> `filter` -> `reduce`, batches of 1024"),
    ("log", "`map` -> `log`: every value emitted to the host"),
    ("boxed", "control: the plugin allocates a `Box` per value"),
    (
        "switch_map",
        "`switch_map` to `of(vec![x])` -> `reduce`: one inner subscription per value (freed after each call)",
    ),
    (
        "merge_map",
        "`merge_map` to `of(vec![x])` -> `reduce`: one inner subscription per value (freed after each call)",
    ),
];

/// Values pushed per pipeline in scenario 6.
const ALLOC_VALUES: u64 = 1_000_000;

/// A writer that counts the lines written to it and keeps nothing.
struct LineCounter(Arc<std::sync::atomic::AtomicU64>);

impl std::io::Write for LineCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let lines = buf.iter().filter(|&&b| b == b'\n').count() as u64;
        self.0.fetch_add(lines, Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Scenario 6's measuring child (this binary, run with the counter preloaded): loads
/// `library`, pushes `ALLOC_VALUES` through each of `ALLOC_ROWS` and prints one line per
/// pipeline, `<name> <values> <allocations>`.
fn alloc_child(library: &std::path::Path) -> anyhow::Result<()> {
    let counter = AllocationCounter::find()?;
    let loader = Loader::new()?;
    let loaded = load(&loader, library, 1)?;
    let mut lines = Vec::new();
    for (name, _) in ALLOC_ROWS {
        // The `log` row goes the whole way a person's emissions go: the printer's queue and
        // thread, formatted as `--json` lines (into a writer that counts them). Both threads'
        // allocations count; the printer is warmed up first and caught up before each reading.
        let printed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let printer = (name == "log")
            .then(|| {
                host::output::Printer::start(
                    host::events::Formatter::json(),
                    LineCounter(printed.clone()),
                    host::output::OUTPUT_QUEUE_BYTES,
                    host::output::WhenFull::Wait,
                    |_| {},
                )
            })
            .transpose()?;
        let sink = printer.as_ref().map_or_else(null_sink, |p| p.sink());
        let mut d = loaded.pipelines[name]
            .driver(sink)
            .map_err(|e| anyhow::anyhow!("seeding {name}: {e}"))?;
        let caught_up = |count: u64| -> anyhow::Result<()> {
            let deadline = Instant::now() + Duration::from_secs(60);
            while printed.load(Ordering::Relaxed) < count {
                anyhow::ensure!(Instant::now() < deadline, "the printer did not catch up");
                std::thread::yield_now();
            }
            Ok(())
        };
        let n = ALLOC_VALUES;
        if printer.is_some() {
            for x in 0..n {
                let _ = d.push_one(x);
            }
            caught_up(n)?;
        }
        let mut buf = [0u64; BATCH];
        let mut refused = 0u64;
        let before = counter.get();
        if name == "batch" {
            let mut next = 0;
            while next < n {
                for (i, s) in buf.iter_mut().enumerate() {
                    *s = next + i as u64;
                }
                if !matches!(d.push(&buf), Ok(Pushed::Continue)) {
                    refused += 1;
                }
                next += BATCH as u64;
            }
        } else {
            let inner = name.ends_with("_map");
            for x in 0..n {
                if !matches!(d.push_one(x), Ok(Pushed::Continue)) {
                    refused += 1;
                }
                if inner {
                    // As the pipeline thread does after each call: what ended is freed.
                    d.reap_inners();
                }
            }
        }
        if printer.is_some() {
            caught_up(2 * n)?;
        }
        let count = counter.get() - before;
        drop(printer);
        anyhow::ensure!(refused == 0, "{name}: {refused} pushes did not go through");
        // Printed after counting: formatting allocates.
        lines.push(format!("{name} {n} {count}"));
    }
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

fn allocations(report: &mut Report, library: &std::path::Path) -> anyhow::Result<()> {
    let dir = fixture_target_dir().join("..").join("hmr-bench-alloc");
    let counter = build_malloc_counter(&dir)?;
    let exe = std::env::current_exe().context("finding the bench binary")?;
    let out = std::process::Command::new(&exe)
        .env("LD_PRELOAD", &counter)
        .env(ALLOC_CHILD, library)
        .output()
        .with_context(|| format!("running {} with the counter preloaded", exe.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the measuring child failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let stdout = String::from_utf8(out.stdout).context("the child's output")?;
    let mut counts = std::collections::BTreeMap::new();
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [name, values, count] = f[..] {
            counts.insert(
                name.to_owned(),
                (values.parse::<u64>()?, count.parse::<u64>()?),
            );
        }
    }
    report.line("\n### 6. Heap allocations per emission, host and plugin (an `LD_PRELOAD` counter of the C allocator, which every plugin's std and the host call)\n");
    report.line("| pipeline | values | allocations | per value |");
    report.line("|---|---:|---:|---:|");
    let mut inside = Vec::new();
    for (name, what) in ALLOC_ROWS {
        let &(values, count) = counts
            .get(name)
            .with_context(|| format!("the child did not report {name}: {stdout:?}"))?;
        let per = count as f64 / values as f64;
        report.line(format!(
            "| {name}: {what} | {values} | {count} | {per:.6} |"
        ));
        match name {
            "boxed" => anyhow::ensure!(
                count >= values,
                "the counter is blind to the plugin's allocator: {count} allocations for \
                 {values} values that each allocate in the plugin"
            ),
            "switch_map" | "merge_map" => report.verdict(
                &format!("`{name}`: heap allocations per inner subscription (information)"),
                format!("{per:.2} allocations per outer value ({count} in {values})"),
                None,
            ),
            "log" => report.verdict(
                "no heap allocation per emission (`Copy` values), an emission reaching the host (`log`)",
                format!("{per:.2} allocations per value ({count} in {values})"),
                Some(count == 0),
            ),
            _ => inside.push((name, count, values)),
        }
    }
    let total: u64 = inside.iter().map(|(_, c, _)| c).sum();
    report.verdict(
        "no heap allocation per emission (`Copy` values), inside the pipeline (push, call, batch)",
        inside
            .iter()
            .map(|(n, c, v)| format!("{n} {c} in {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        Some(total == 0),
    );
    Ok(())
}

/// A release build of `SCALE` with `pipelines` pipelines of `scopes` scopes, and a reloader
/// for it.
fn scale_plugin(pipelines: usize, scopes: usize) -> anyhow::Result<(Built, Reloader)> {
    let source = SCALE
        .replace("{PIPELINES}", &pipelines.to_string())
        .replace("{SCOPES}", &scopes.to_string());
    let built = build_release(&format!("bench_scale_{pipelines}_{scopes}"), &source)?;
    let config = hmr_bench::release_config(&built.fixture)?;
    let reloader = Reloader::new(config, null_sink(), PanicPolicy::Drop)?;
    Ok((built, reloader))
}

fn swap_scaling(report: &mut Report) -> anyhow::Result<()> {
    report.line("\n### 4. Swap cost against the number of tracks (host side of a reload; target linear, < 10 ms at 10,000)\n");
    report.line("| tracks | load (copy + dlopen) | validate | register | reconcile + publish | host total | per track | slowest reload |");
    report.line("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut totals = Vec::new();
    for scopes in [7usize, 97, 997] {
        let (built, mut r) = scale_plugin(10, scopes)?;
        let scale_lib = &built.library;
        anyhow::ensure!(matches!(r.load_built(scale_lib, 0), Outcome::Loaded { .. }));
        let tracks = r.tracks().len();
        let mut load = Vec::new();
        let mut validate = Vec::new();
        let mut register = Vec::new();
        let mut swap = Vec::new();
        let mut total = Vec::new();
        for _ in 0..9 {
            anyhow::ensure!(matches!(r.load_built(scale_lib, 0), Outcome::Loaded { .. }));
            let t = r.last_timings();
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            load.push(us(t.load));
            validate.push(us(t.validate));
            register.push(us(t.register));
            swap.push(us(t.swap));
            total.push(us(t.load + t.validate + t.register + t.swap));
        }
        let slowest = total.iter().copied().fold(0.0, f64::max);
        let total_m = median(&mut total);
        report.line(format!(
            "| {tracks} | {:.0} us | {:.0} us | {:.0} us | {:.0} us | {:.2} ms | {:.2} us | {:.2} ms |",
            median(&mut load),
            median(&mut validate),
            median(&mut register),
            median(&mut swap),
            total_m / 1000.0,
            total_m / tracks as f64,
            slowest / 1000.0
        ));
        totals.push((tracks, total_m / 1000.0, slowest / 1000.0));
    }
    let [_, (mid_tracks, mid_ms, _), (top_tracks, top_ms, top_max)] = totals[..] else {
        anyhow::bail!("three configurations were measured, not {}", totals.len());
    };
    report.verdict(
        "swap: host side of a reload < 10 ms at 10,000 tracks",
        format!("{top_ms:.2} ms at {top_tracks} tracks"),
        Some(top_tracks >= 10_000 && top_ms < 10.0),
    );
    report.verdict(
        "swap: host side of a reload < 5 ms median, never over 10 ms, at 10,000 tracks (hardening issue)",
        format!("median {top_ms:.2} ms, slowest of 9 {top_max:.2} ms"),
        Some(top_tracks >= 10_000 && top_ms < 5.0 && top_max <= 10.0),
    );
    let growth = (top_ms / top_tracks as f64) / (mid_ms / mid_tracks as f64);
    report.verdict(
        "swap: linear in the tracks (per-track cost at 10,000 within 1.5x of at 1,000)",
        format!(
            "{:.2} / {:.2} us a track at {mid_tracks} / {top_tracks}: {growth:.2}x",
            mid_ms * 1000.0 / mid_tracks as f64,
            top_ms * 1000.0 / top_tracks as f64
        ),
        Some(growth <= 1.5),
    );
    Ok(())
}

fn inner_scale(report: &mut Report) -> anyhow::Result<()> {
    report.line("\n### 15. Inner subscriptions at scale: a `merge_map` over `range(0, N)`, an inner interval each (release)\n");
    report.line("| live inner subscriptions | threads before / live | RSS per subscription | host side of a reload (median of 9) | of which re-projection and report (swap) | slowest |");
    report.line("|---:|---:|---:|---:|---:|---:|");
    let mut at_1000 = None;
    for n in [1_000u64, 10_000] {
        let source = INNER_SCALE.replace("{N}", &n.to_string());
        let built = build_release(&format!("bench_inner_scale_{n}"), &source)?;
        let config = hmr_bench::release_config(&built.fixture)?;
        let threads_before = thread_count();
        let rss_before = rss_bytes();
        let mut r = Reloader::new(config, null_sink(), PanicPolicy::Drop)?;
        anyhow::ensure!(matches!(
            r.load_built(&built.library, 0),
            Outcome::Loaded { .. }
        ));
        // Wait until every subscription is live and in the tracking store (the dev loop's
        // drain between reloads: `Reloader::idle`): one `#k:inner` track and its `map` each.
        let base = r.tracks().len();
        let deadline = Instant::now() + Duration::from_secs(60);
        while r.tracks().len() < base + 2 * n as usize {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{n} inner subscriptions never all started"
            );
            std::thread::sleep(Duration::from_millis(10));
            r.idle();
        }
        let rss = rss_bytes().saturating_sub(rss_before) as f64 / n as f64;
        let threads_live = thread_count();
        let mut total = Vec::new();
        let mut swap = Vec::new();
        for _ in 0..9 {
            r.idle();
            anyhow::ensure!(matches!(
                r.load_built(&built.library, 0),
                Outcome::Loaded { .. }
            ));
            let t = r.last_timings();
            total.push((t.load + t.validate + t.register + t.swap).as_secs_f64() * 1e3);
            swap.push(t.swap.as_secs_f64() * 1e3);
        }
        let slowest = total.iter().copied().fold(0.0, f64::max);
        let total_m = median(&mut total);
        report.line(format!(
            "| {n} | {threads_before} / {threads_live} | {:.0} B | {total_m:.2} ms | {:.2} ms | {slowest:.2} ms |",
            rss,
            median(&mut swap)
        ));
        if n == 1_000 {
            at_1000 = Some((total_m, slowest));
        }
        drop(r);
    }
    let (m, worst) = at_1000.context("the 1,000 run")?;
    report.verdict(
        "a reload with 1,000 live inner subscriptions: host share under 10 ms",
        format!("median {m:.2} ms, slowest of 9 {worst:.2} ms"),
        Some(m < 10.0),
    );
    Ok(())
}

fn reload_at_scale(report: &mut Report) -> anyhow::Result<()> {
    report.line("\n### 7. Reload at scale: 100 pipelines (300 tracks, 100 source threads)\n");
    let (built, mut r) = scale_plugin(100, 0)?;
    let scale_lib = &built.library;
    anyhow::ensure!(matches!(r.load_built(scale_lib, 0), Outcome::Loaded { .. }));
    for _ in 0..5 {
        anyhow::ensure!(matches!(r.load_built(scale_lib, 0), Outcome::Loaded { .. }));
    }
    let before = rss_bytes();
    let mut total = Vec::new();
    let n = 20;
    for _ in 0..n {
        anyhow::ensure!(matches!(r.load_built(scale_lib, 0), Outcome::Loaded { .. }));
        let t = r.last_timings();
        total.push((t.load + t.validate + t.register + t.swap).as_secs_f64() * 1e3);
    }
    let grown = rss_bytes().saturating_sub(before) as f64 / n as f64;
    report.line(format!(
        "host side of a reload: median {:.2} ms; resident memory +{:.0} KiB a reload (over {n}); {} tracks",
        median(&mut total),
        grown / 1024.0,
        r.tracks().len()
    ));
    Ok(())
}

/// The calling thread's involuntary context switches so far (Linux), to tell a slow push
/// that waited from one whose thread was taken off its core.
fn involuntary_switches() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

/// Reloads scenario 8 makes under the running pipeline.
const LATENCY_RELOADS: usize = 50;

/// Scenario 8 counts the pushes slower than this (every push, not a sample).
const SLOW_PUSH: Duration = Duration::from_micros(100);

/// What scenario 8's measuring thread returns: the latency sample (1 push in 64), the true
/// maximum over every push, values pushed, pushes that did not go through, wall time, the
/// version its last push ran, and what the chain computed.
struct LatencyRun {
    sample: Vec<f64>,
    worst: Duration,
    /// When the slowest push started.
    worst_at: Instant,
    /// Pushes slower than `SLOW_PUSH` (every push counted).
    slow: u64,
    /// Times the kernel took the measuring thread off its core while it pushed (`None` off
    /// Linux).
    preempted: Option<u64>,
    count: u64,
    refused: u64,
    elapsed: Duration,
    version: u64,
    result: anyhow::Result<u64>,
}

fn latency_under_reloads(report: &mut Report) -> anyhow::Result<()> {
    let built = build_release("bench_latency", LATENCY_PLUGIN)?;
    let config = hmr_bench::release_config(&built.fixture)?;
    let mut r = Reloader::new(config, null_sink(), PanicPolicy::Drop)?;
    let first = r.load_built(&built.library, 0);
    anyhow::ensure!(
        matches!(first, Outcome::Loaded { .. }),
        "the first load: {first:?}"
    );
    // The pipeline the reloader runs; this thread drives its own `Driver` of it (state of its
    // own), which takes every version the reloader's reconcile publishes.
    let publisher = r
        .runtime()
        .publisher("push")
        .context("the reloader runs no pipeline `push`")?;
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = channel();
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || -> anyhow::Result<LatencyRun> {
            let capture = Arc::new(CountingSink::default());
            let mut d = publisher
                .driver(capture.clone())
                .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
            let mut sample = Vec::with_capacity(1 << 20);
            let mut worst = Duration::ZERO;
            let mut refused = 0u64;
            let mut slow = 0u64;
            let switches_before = involuntary_switches();
            let started = Instant::now();
            let mut worst_at = started;
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = d.push_one(x);
                let e = t.elapsed();
                if !matches!(r, Ok(Pushed::Continue)) {
                    refused += 1;
                }
                if e > worst {
                    worst = e;
                    worst_at = t;
                }
                if e > SLOW_PUSH {
                    slow += 1;
                }
                if x.is_multiple_of(64) && sample.len() < sample.capacity() {
                    sample.push(e.as_nanos() as f64);
                }
                x += 1;
                if x == 1 {
                    let _ = started_tx.send(());
                }
            }
            let elapsed = started.elapsed();
            let preempted = involuntary_switches()
                .zip(switches_before)
                .map(|(after, before)| after - before);
            let version = d.version();
            Ok(LatencyRun {
                sample,
                worst,
                worst_at,
                slow,
                preempted,
                count: x,
                refused,
                elapsed,
                version,
                result: finish(&mut d, &capture),
            })
        })
    };
    started_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the measuring thread did not start pushing within 10 s")?;
    // Let it run, then reloads through the reloader: load, register, reconcile, publish.
    std::thread::sleep(Duration::from_millis(100));
    let reloads_started = Instant::now();
    let mut last = 0;
    for _ in 0..LATENCY_RELOADS {
        match r.load_built(&built.library, 0) {
            Outcome::Loaded { version } => last = version,
            other => anyhow::bail!("a reload under load ended {other:?}"),
        }
    }
    let reloads_ended = Instant::now();
    let reload_time = reloads_ended - reloads_started;
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let run = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the driver thread panicked"))??;
    anyhow::ensure!(
        run.refused == 0,
        "{} of {} pushes did not go through during the reloads",
        run.refused,
        run.count
    );
    anyhow::ensure!(
        run.version == last,
        "the driver ran version {} at the end, the reloader published {last}",
        run.version
    );
    // Every swap kept the scan's state (same path, same signature: reported swapped), so the
    // total is the whole stream's.
    let result = run.result?;
    let expected = chain_sum(run.count);
    anyhow::ensure!(
        result == expected,
        "results differ: the scan across {LATENCY_RELOADS} swaps computed {result}, expected {expected} for {} values (state lost or values dropped)",
        run.count
    );
    let mut sample = run.sample;
    let worst_when = if run.worst_at < reloads_started {
        "before the reloads"
    } else if run.worst_at <= reloads_ended {
        "during the reloads"
    } else {
        "after the reloads"
    };
    let rate = run.count as f64 / run.elapsed.as_secs_f64();
    report.line(format!(
        "\n### 8. Emission latency while {LATENCY_RELOADS} reloads (through the reloader: load, register, reconcile, publish) swap the code of a running pipeline\n"
    ));
    report.line(format!(
        "{} values in {:.2} s ({:.1} M values/s, one value per push) while {LATENCY_RELOADS} reloads took {:.0} ms; \
         scan total checked against the closed form (state kept across every swap), last version {last} reached; \
         per-push latency, every push timed: **max {:.1} us** ({worst_when}), {} pushes over {} us, \
         the thread preempted {} times while pushing; \
         from a sample of 1 push in 64: median {:.0} ns, p99.9 {:.0} ns",
        run.count,
        run.elapsed.as_secs_f64(),
        rate / 1e6,
        reload_time.as_secs_f64() * 1e3,
        run.worst.as_secs_f64() * 1e6,
        run.slow,
        SLOW_PUSH.as_micros(),
        run.preempted.map_or("an unknown number of".to_owned(), |n| n.to_string()),
        median(&mut sample),
        quantile(&mut sample, 0.999),
    ));
    report.verdict(
        "emission path never waits for a reload (no DESIGN figure)",
        format!(
            "max push {:.1} us ({worst_when}), {} of {} pushes over {} us, {LATENCY_RELOADS} reloads in {:.0} ms",
            run.worst.as_secs_f64() * 1e6,
            run.slow,
            run.count,
            SLOW_PUSH.as_micros(),
            reload_time.as_secs_f64() * 1e3
        ),
        None,
    );
    Ok(())
}

fn save_to_emission(report: &mut Report) -> anyhow::Result<()> {
    let source = std::fs::read_to_string(workspace_root().join("example-plugin/src/lib.rs"))?;
    anyhow::ensure!(
        source.contains("interval_ms(500)"),
        "example plugin changed"
    );
    // Tick every millisecond so the wait for the next tick does not hide the host's share.
    let source = source.replace("interval_ms(500)", "interval_ms(1)");
    let fixture = Fixture::new("bench_save", &source);
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    let (mut total, mut build, mut load, mut swap, mut rest, mut first) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let bodies = ["n * 2)", "n * 3)"];
    for round in 0..9 {
        let (from, to) = (bodies[round % 2], bodies[(round + 1) % 2]);
        let saved = Instant::now();
        fixture.edit("src/lib.rs", from, to);
        let reload = host.wait_reload()?;
        let reported = Instant::now();
        let HostEvent::Reload {
            version,
            build_ms,
            load_ms,
            swap_us,
            ..
        } = reload
        else {
            unreachable!()
        };
        host.wait_emission_from("counter", version)?;
        let emitted = Instant::now();
        if round == 0 {
            continue; // warm-up: cargo's first incremental build of the copy
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let t = ms(emitted - saved);
        let b = build_ms as f64;
        let l = load_ms as f64;
        let s = swap_us as f64 / 1000.0;
        total.push(t);
        build.push(b);
        load.push(l);
        swap.push(s);
        first.push(ms(emitted - reported));
        rest.push(ms(reported - saved) - b - l - s);
    }
    drop(host);
    let (t, b) = (median(&mut total), median(&mut build));
    report.line("\n### 5. Save to first new emission, example plugin (debug build, as `cargo run -p host`; target < 300 ms, host share < 50 ms)\n");
    report.line("| phase | median ms |");
    report.line("|---|---:|");
    report.line(format!("| debounce + watcher | {:.1} |", median(&mut rest)));
    report.line(format!("| cargo build | {b:.1} |"));
    report.line(format!(
        "| load + validate + register | {:.1} |",
        median(&mut load)
    ));
    report.line(format!(
        "| reconcile + publish | {:.2} |",
        median(&mut swap)
    ));
    report.line(format!(
        "| to first new emission | {:.1} |",
        median(&mut first)
    ));
    report.line(format!("| **save to first new emission** | **{t:.1}** |"));
    report.line(format!("| host share (all but cargo) | {:.1} |", t - b));
    report.verdict(
        "save to first new emission < 300 ms (DESIGN: under 1 s)",
        format!("{t:.1} ms median (cargo {b:.1} ms)"),
        Some(t < 300.0),
    );
    report.verdict(
        "host's share of a save (all but cargo, debounce included) < 50 ms",
        format!("{:.1} ms", t - b),
        Some(t - b < 50.0),
    );
    Ok(())
}

fn soak(report: &mut Report) -> anyhow::Result<()> {
    report.line("\n### 9. Resident memory per reload, 200 reloads of the example plugin\n");
    report.line("| build | bytes a reload | mapped versions | live after settling |");
    report.line("|---|---:|---:|---:|");
    for release in [false, true] {
        let config = host::cargo::BuildConfig {
            manifest: plugin_manifest(&workspace_root().join("example-plugin"))?,
            release,
            target_dir: Some(fixture_target_dir()),
        };
        let built = host::cargo::build(&config)?;
        let (tx, rx) = channel();
        let mut r = Reloader::new(config, Arc::new(ChannelSink(tx)), PanicPolicy::Drop)?;
        for _ in 0..20 {
            anyhow::ensure!(matches!(
                r.load_built(&built.library, 0),
                Outcome::Loaded { .. }
            ));
        }
        let before = rss_bytes();
        let mut last = 0;
        for _ in 0..200 {
            match r.load_built(&built.library, 0) {
                Outcome::Loaded { version } => last = version,
                other => anyhow::bail!("a reload of the soak ended {other:?}"),
            }
        }
        let per = rss_bytes().saturating_sub(before) / 200;
        // Settle: wait for the counter to tick on the last version; a run that never gets
        // there measured nothing worth quoting.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut settled = false;
        while let Ok(e) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if matches!(e, HostEvent::Emission { ref pipeline, version, .. } if pipeline == "counter" && version == last)
            {
                settled = true;
                break;
            }
        }
        let build = if release { "release" } else { "debug" };
        anyhow::ensure!(
            settled,
            "{build}: the counter emitted nothing on the last version ({last}) within 5 s"
        );
        report.line(format!(
            "| {build} | {per} | {} | {} |",
            r.mapped_versions(),
            r.live_versions()
        ));
        report.verdict(
            &format!("resident memory < 1 MiB per reload, 200 reloads ({build})"),
            format!("{:.0} KiB a reload", per as f64 / 1024.0),
            Some(per < 1 << 20),
        );
    }
    Ok(())
}

/// The state sizes of scenario 10.
const HEAP_SIZES: [usize; 2] = [10_000, 100_000];
/// Values pushed per round in scenario 10 (the state grows by as many).
const HEAP_VALUES: u64 = 2_000;
/// Rounds of scenario 10 (each round is short: more rounds than elsewhere).
const HEAP_ROUNDS: usize = 15;

/// Scenario 10's plugin: for each operator and size, a pipeline folding values into a `Vec`
/// state that already holds `size` items (its seed), with room for every value pushed (so a
/// `Vec` growth does not show as a cost of the operator). Each ends in one `u64` result.
const HEAP_PLUGIN: &str = r#"
use plugin_api::prelude::*;

state! {
    pub struct Items { pub v: Vec<u64> }
}

/// Keeps the capacity: a state cloned from the seed has room for every value pushed.
impl Clone for Items {
    fn clone(&self) -> Items {
        let mut v = Vec::with_capacity(self.v.capacity());
        v.extend_from_slice(&self.v);
        Items { v }
    }
}

impl std::fmt::Debug for Items {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Items({})", self.v.len())
    }
}

fn filled(n: usize) -> Items {
    let mut v = Vec::with_capacity(n + {EXTRA});
    v.extend(0..n as u64);
    Items { v }
}

fn register(p: &mut Plugin) {
    for n in [{SIZES}] {
        p.pipeline(&format!("reduce_{n}"), range(0, 1))
            .reduce(filled(n), |mut a: Items, x: u64| { a.v.push(x); a })
            .map(|a: Items| a.v.len() as u64 + a.v[a.v.len() - 1])
            .log();
        p.pipeline(&format!("scan_map_{n}"), range(0, 1))
            .scan_map(filled(n), |a: &mut Items, x: u64| { a.v.push(x); a.v.len() as u64 + x })
            .reduce(0u64, |s: u64, y: u64| s.wrapping_add(y))
            .log();
        p.pipeline(&format!("scan_{n}"), range(0, 1))
            .scan(filled(n), |mut a: Items, x: u64| { a.v.push(x); a })
            .map(|a: Items| a.v.len() as u64 + a.v[a.v.len() - 1])
            .reduce(0u64, |s: u64, y: u64| s.wrapping_add(y))
            .log();
    }
}

plugin_api::export_plugin!(register);
"#;

/// rxRust's side of scenario 10: the same state type, seed and functions.
#[derive(Debug)]
struct Items {
    v: Vec<u64>,
}

impl Clone for Items {
    fn clone(&self) -> Items {
        let mut v = Vec::with_capacity(self.v.capacity());
        v.extend_from_slice(&self.v);
        Items { v }
    }
}

fn filled(n: usize) -> Items {
    let mut v = Vec::with_capacity(n + HEAP_VALUES as usize);
    v.extend(0..n as u64);
    Items { v }
}

/// One rxRust contender of scenario 10: a `Subject` fed one value per call, then completed
/// outside the timer; returns (ns per value, result).
fn rx_heap(op: &str, n: usize) -> (f64, u64) {
    let mut subject = Local::subject::<u64, Infallible>();
    let out = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let o = out.clone();
    let seed = filled(n);
    match op {
        "reduce" => {
            subject
                .clone()
                .reduce_initial(seed, |mut a: Items, x| {
                    a.v.push(x);
                    a
                })
                .map(|a: Items| a.v.len() as u64 + a.v[a.v.len() - 1])
                .subscribe(move |v| o.set(v));
        }
        "scan_map" => {
            subject
                .clone()
                .scan_map(seed, |a: &mut Items, x| {
                    a.v.push(x);
                    a.v.len() as u64 + x
                })
                .reduce_initial(0u64, |s, y| s.wrapping_add(y))
                .subscribe(move |v| o.set(v));
        }
        _ => {
            subject
                .clone()
                .scan(seed, |mut a: Items, x| {
                    a.v.push(x);
                    a
                })
                .map(|a: Items| a.v.len() as u64 + a.v[a.v.len() - 1])
                .reduce_initial(0u64, |s, y| s.wrapping_add(y))
                .subscribe(move |v| o.set(v));
        }
    }
    let end = black_box(HEAP_VALUES);
    let started = Instant::now();
    for x in 0..end {
        subject.next(x);
    }
    let t = started.elapsed();
    subject.complete();
    (ns_per(t, HEAP_VALUES), out.get())
}

/// The host's contender: a fresh driver (state seeded outside the timer), one value per
/// call, completed outside the timer; returns (ns per value, result).
fn host_heap(publisher: &Publisher) -> anyhow::Result<(f64, u64)> {
    one_by_one(publisher, HEAP_VALUES)
}

fn heap_state(report: &mut Report) -> anyhow::Result<()> {
    let sizes = HEAP_SIZES.map(|n| n.to_string()).join(", ");
    let source = HEAP_PLUGIN
        .replace("{SIZES}", &sizes)
        .replace("{EXTRA}", &HEAP_VALUES.to_string());
    let built = build_release("bench_heap", &source)?;
    let loader = Loader::new()?;
    let loaded = load(&loader, &built.library, 1)?;
    report.line(format!(
        "\n### 10. Heap state: a `Vec` accumulator of 10k and 100k items, {HEAP_VALUES} values a round, one per call (ns per value; target: reduce and scan_map flat in the size, scan at half rxRust's)\n"
    ));
    report.line("| operator | state items | host ns/value | rxRust ns/value | host / rxRust |");
    report.line("|---|---:|---:|---:|---:|");
    let m = HEAP_VALUES;
    for op in ["reduce", "scan_map", "scan"] {
        let mut by_size = Vec::new();
        for n in HEAP_SIZES {
            let publisher = &loaded.pipelines[&format!("{op}_{n}")];
            // What every contender must produce: reduce emits len + last once; the scans
            // sum len + x over the values.
            let expected = match op {
                "reduce" => n as u64 + m + (m - 1),
                _ => m * (n as u64 + 1) + m * (m - 1),
            };
            let mut host = || host_heap(publisher);
            let mut rx = || Ok(rx_heap(op, n));
            let medians = side_by_side(
                HEAP_ROUNDS,
                expected,
                &mut [
                    ("host", Run::Checked(&mut host)),
                    ("rxRust", Run::Checked(&mut rx)),
                ],
            )
            .with_context(|| format!("{op} of {n}"))?;
            report.line(format!(
                "| {op} | {n} | {:.1} | {:.1} | {:.2}x |",
                medians[0],
                medians[1],
                medians[0] / medians[1]
            ));
            by_size.push((n, medians[0], medians[0] / medians[1]));
        }
        let [(small, small_ns, small_ratio), (big, big_ns, big_ratio)] = by_size[..] else {
            anyhow::bail!("two sizes were measured, not {}", by_size.len());
        };
        if op == "scan" {
            report.verdict(
                "heap state: `scan` at half rxRust's (met at <= 0.6x)",
                format!("{small_ratio:.2}x / {big_ratio:.2}x at {small} / {big} items"),
                Some(small_ratio.max(big_ratio) <= 0.6),
            );
        } else {
            let growth = big_ns / small_ns;
            report.verdict(
                &format!(
                    "heap state: `{op}` flat in the state's size (met at <= 1.5x from 10k to 100k)"
                ),
                format!("{small_ns:.1} / {big_ns:.1} ns a value: {growth:.2}x"),
                Some(growth <= 1.5),
            );
        }
    }
    Ok(())
}

/// Values published per round in scenario 11.
const N_SUBJECT: u64 = 1_000_000;

/// The order-sensitive fold of scenarios 11 and 12 (what the host's `reduce`s compute).
fn fold31(acc: u64, v: u64) -> u64 {
    acc.wrapping_mul(31).wrapping_add(v)
}

/// What subscriber `i` of scenario 11 ends with after the values `0..n`: the sum of
/// `2x + i`, `n(n - 1) + i n` (wrapping).
fn subscriber_sum(n: u64, i: u64) -> u64 {
    n.wrapping_mul(n.wrapping_sub(1))
        .wrapping_add(i.wrapping_mul(n))
}

/// One host round of scenario 11: fresh subscriber drivers (fresh state, a sink each)
/// subscribed to `hub`, a fresh driver of the publisher, `n` values pushed one per call (the
/// interval source's path; each is delivered to every subscriber before the push returns),
/// then every subscriber completed outside the timer and unsubscribed. Returns (ns per value
/// per subscriber, the subscribers' results folded in subscription order).
fn host_subject(
    publisher: &Publisher,
    subscribers: &[Publisher],
    hub: &Hub,
    n: u64,
) -> anyhow::Result<(f64, u64)> {
    let mut subscribed = Vec::with_capacity(subscribers.len());
    for s in subscribers {
        let (d, capture, _) = started_subscriber(s)?;
        let d = Arc::new(host::runtime::SharedDriver::new(d));
        // SAFETY: the publisher's `publish` sends its source's `u64`s, and every subscriber
        // pipeline reads `subject::<u64>`: the layouts agree.
        unsafe { hub.subscribe_driver(0, d.clone(), PanicPolicy::Drop) }
            .map_err(|e| anyhow::anyhow!("subscribing: {e}"))?;
        subscribed.push((d, capture));
    }
    let mut p = publisher
        .driver(null_sink())
        .map_err(|e| anyhow::anyhow!("seeding the publisher: {e}"))?;
    let end = black_box(n);
    let mut refused = 0u64;
    let started = Instant::now();
    for x in 0..end {
        if !matches!(p.push_one(x), Ok(Pushed::Continue)) {
            refused += 1;
        }
    }
    let t = started.elapsed();
    let mut acc = 0u64;
    for (d, capture) in &subscribed {
        let mut d = d.lock();
        hub.unsubscribe_pipeline(d.pipeline());
        acc = fold31(acc, finish(&mut d, capture)?);
    }
    anyhow::ensure!(refused == 0, "{refused} values did not go through");
    Ok((ns_per(t, n * subscribers.len() as u64), acc))
}

/// A started driver of subscriber `s` with a sink of its own, and the layout a hub passes
/// with each value (the one its port 0 reads).
fn started_subscriber(
    s: &Publisher,
) -> anyhow::Result<(
    host::runtime::Driver,
    Arc<CountingSink>,
    hmr_track::Fingerprint,
)> {
    let capture = Arc::new(CountingSink::default());
    let mut d = s
        .driver(capture.clone())
        .map_err(|e| anyhow::anyhow!("seeding a subscriber: {e}"))?;
    d.start()
        .map_err(|e| anyhow::anyhow!("starting a subscriber: {e}"))?;
    let layout = s
        .code()
        .sources
        .first()
        .and_then(|src| src.item.clone())
        .ok_or_else(|| anyhow::anyhow!("a subscriber's port 0 reads no subject"))?;
    Ok((d, capture, layout))
}

/// Scenario 11's reference row: the same subscriber chains, each value pushed into each
/// subscriber's driver directly by the bench (the wire value and layout a hub passes, through
/// the same `push_subject`), without a publisher pipeline or a hub: no `publish` call, no lock, no
/// cycle check. The difference from `host_subject` is what the subject's delivery costs.
fn host_subject_direct(subscribers: &[Publisher], n: u64) -> anyhow::Result<(f64, u64)> {
    let mut drivers = subscribers
        .iter()
        .map(started_subscriber)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let end = black_box(n);
    let mut refused = 0u64;
    let started = Instant::now();
    for x in 0..end {
        let item: *const u64 = &x;
        for (d, _, layout) in &mut drivers {
            // SAFETY: a subject port's wire value is a pointer to the value: `item` points at
            // a live `u64` and outlives the call; each port reads `subject::<u64>`, whose
            // layout `layout` is (`push_subject` checks it, as for a hub's delivery).
            let r = unsafe { d.push_subject(0, (&raw const item).cast(), layout, "s10") };
            refused += u64::from(!matches!(r, Ok(Pushed::Continue)));
        }
    }
    let t = started.elapsed();
    let mut acc = 0u64;
    for (d, capture, _) in &mut drivers {
        acc = fold31(acc, finish(d, capture)?);
    }
    anyhow::ensure!(refused == 0, "{refused} values did not go through");
    Ok((ns_per(t, n * subscribers.len() as u64), acc))
}

/// Scenario 11's floor: the same subscriber chains, each value handed to each subscriber's
/// entry through the driver's pointer with nothing around it (`Driver::push_unguarded`: no
/// lock, no checks, no marks, no replay ring): the part of a delivery that is the plugin's.
fn host_subject_floor(subscribers: &[Publisher], n: u64) -> anyhow::Result<(f64, u64)> {
    let mut drivers = Vec::with_capacity(subscribers.len());
    for s in subscribers {
        let (mut d, capture, layout) = started_subscriber(s)?;
        // The first value the way a hub delivers it: the driver takes its code, and the
        // port is checked to read this layout.
        let first = 0u64;
        let item: *const u64 = &first;
        // SAFETY: a subject port's wire value is a pointer to the value, live for the call;
        // `push_subject` checks the layout before the value is read.
        let r = unsafe { d.push_subject(0, (&raw const item).cast(), &layout, "s10") };
        anyhow::ensure!(matches!(r, Ok(Pushed::Continue)), "the first value: {r:?}");
        drivers.push((d, capture));
    }
    let end = black_box(n);
    let mut answers = 0u32;
    let started = Instant::now();
    for x in 1..end {
        let item: *const u64 = &x;
        for (d, _) in &mut drivers {
            // SAFETY: port 0 reads `subject::<u64>` (checked by the first value), `item`
            // points at a live `u64` for the call, no chain completes before `finish`, and no
            // code is published meanwhile.
            answers |= unsafe { d.push_unguarded(0, (&raw const item).cast()) };
        }
    }
    let t = started.elapsed();
    anyhow::ensure!(
        answers == 0,
        "a value was not taken (status bits {answers:#x})"
    );
    let mut acc = 0u64;
    for (d, capture) in &mut drivers {
        acc = fold31(acc, finish(d, capture)?);
    }
    Ok((ns_per(t, n * subscribers.len() as u64), acc))
}

/// One rxRust round of scenario 11: a `Subject` with `k` subscribers doing the same work
/// (`map(n * 2 + i)` -> `scan(wrapping sum)`, the last value kept in a `Cell`, as scenario
/// 2's subscriber), `n` values pushed with `next`. Returns (ns per value per subscriber, the
/// subscribers' results folded in subscription order).
fn rx_subject(k: u64, n: u64) -> anyhow::Result<(f64, u64)> {
    let mut subject = Local::subject::<u64, Infallible>();
    let mut outs = Vec::new();
    for i in 0..k {
        let out = std::rc::Rc::new(std::cell::Cell::new(None));
        let o = out.clone();
        subject
            .clone()
            .map(move |n| n * 2 + i)
            .scan(0u64, |acc, n| acc.wrapping_add(n))
            .subscribe(move |v| o.set(Some(v)));
        outs.push(out);
    }
    let end = black_box(n);
    let started = Instant::now();
    for x in 0..end {
        subject.next(x);
    }
    let t = started.elapsed();
    subject.complete();
    let mut acc = 0u64;
    for out in &outs {
        acc = fold31(acc, out.get().context("an rxRust subscriber got nothing")?);
    }
    Ok((ns_per(t, n * k), acc))
}

fn subjects(report: &mut Report, loader: &Loader, library: &std::path::Path) -> anyhow::Result<()> {
    // The codes again (a second load of the same library), to give the publishers the
    // scenario's own subjects (`Publisher::with_subjects`).
    let (_lib, codes) = hmr_bench::load_codes(loader, library, 2)?;
    let mut codes: std::collections::BTreeMap<String, host::code::PipelineCode> =
        codes.into_iter().map(|c| (c.name.clone(), c)).collect();
    report.line(format!(
        "\n### 11. Subjects: one publisher, 1 and 10 subscribers (`map(n * 2 + i)` -> `scan`), {N_SUBJECT} values a round, one per call (ns per value per subscriber; target <= rxRust Subject)\n"
    ));
    report.line("| subscribers | host ns/value/subscriber | rxRust Subject ns/value/subscriber | host / rxRust | reference: the subscribers' drivers pushed directly, no publisher or hub (ns, / rxRust) | floor: the subscribers' entries alone (ns, / rxRust) |");
    report.line("|---:|---:|---:|---:|---:|---:|");
    for (name, k) in [("s1", 1u64), ("s10", 10)] {
        let hubs = Arc::new(host::subjects::Subjects::default());
        let hub = hubs.hub(name);
        let publisher = Publisher::with_subjects(
            codes
                .remove(&format!("pub_{k}"))
                .with_context(|| format!("the plugin has no pub_{k}"))?,
            hubs.clone(),
        );
        let subscribers = (0..k)
            .map(|i| {
                codes
                    .remove(&format!("sub_{k}_{i}"))
                    .map(Publisher::new)
                    .with_context(|| format!("the plugin has no sub_{k}_{i}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // A hub refuses a driver whose port does not read its subject (the publisher's
        // port 0 is an interval).
        let wrong = Arc::new(host::runtime::SharedDriver::new(
            publisher
                .driver(null_sink())
                .map_err(|e| anyhow::anyhow!("seeding the publisher: {e}"))?,
        ));
        // SAFETY: nothing is published while this runs, and the call is expected to fail.
        let refused = unsafe { hub.subscribe_driver(0, wrong, PanicPolicy::Drop) };
        anyhow::ensure!(
            refused.is_err(),
            "the hub of {name} took a port that does not read it"
        );
        let expected = (0..k).fold(0u64, |acc, i| fold31(acc, subscriber_sum(N_SUBJECT, i)));
        let mut host = || host_subject(&publisher, &subscribers, &hub, N_SUBJECT);
        let mut rx = || rx_subject(k, N_SUBJECT);
        let mut direct = || host_subject_direct(&subscribers, N_SUBJECT);
        let mut floor = || host_subject_floor(&subscribers, N_SUBJECT);
        let medians = side_by_side(
            ROUNDS,
            expected,
            &mut [
                ("host", Run::Checked(&mut host)),
                ("rxRust Subject", Run::Checked(&mut rx)),
                ("host, pushed directly", Run::Checked(&mut direct)),
                ("the subscribers' entries alone", Run::Checked(&mut floor)),
            ],
        )
        .with_context(|| format!("{k} subscribers"))?;
        let ratio = medians[0] / medians[1];
        report.line(format!(
            "| {k} | {:.2} | {:.2} | {ratio:.2}x | {:.2} ({:.2}x) | {:.2} ({:.2}x) |",
            medians[0],
            medians[1],
            medians[2],
            medians[2] / medians[1],
            medians[3],
            medians[3] / medians[1]
        ));
        report.verdict(
            &format!(
                "subject with {k} subscriber{}: per value per subscriber no slower than rxRust `Subject`",
                if k == 1 { "" } else { "s" }
            ),
            format!("{:.2} vs {:.2} ns: {ratio:.2}x", medians[0], medians[1]),
            Some(ratio <= 1.0),
        );
    }
    Ok(())
}

/// Values fed to each input per round in scenario 12.
const N_FANIN: u64 = 1_000_000;

/// What scenario 12 feeds the right input for the left's `x` (distinct from the left's, so a
/// value taken from the wrong input shows in the result).
fn right_of(x: u64) -> u64 {
    x + (1 << 32)
}

/// What each fan-in pipeline computes when its inputs are fed `0..n` (left) and
/// `right_of(0..n)` (right) alternately, `chunk` values of the left, then the same values'
/// partners on the right, and so on: a plain simulation of the operator, outside any timer.
fn fanin_expected(op: &str, n: u64, chunk: u64) -> u64 {
    let f = |a: u64, b: u64| a.wrapping_mul(3) ^ b;
    let mut acc = 0u64;
    let (mut qa, mut qb) = (
        std::collections::VecDeque::new(),
        std::collections::VecDeque::new(),
    );
    let (mut la, mut lb) = (None, None);
    let mut next = 0;
    while next < n {
        let len = chunk.min(n - next);
        let events = (next..next + len)
            .map(|x| (true, x))
            .chain((next..next + len).map(|x| (false, right_of(x))));
        for (left, v) in events {
            match op {
                "merge" => acc = fold31(acc, v),
                "zip" => {
                    if left {
                        qa.push_back(v)
                    } else {
                        qb.push_back(v)
                    }
                    if let (Some(&a), Some(&b)) = (qa.front(), qb.front()) {
                        qa.pop_front();
                        qb.pop_front();
                        acc = fold31(acc, f(a, b));
                    }
                }
                _ => {
                    if left {
                        la = Some(v)
                    } else {
                        lb = Some(v)
                    }
                    if let (Some(a), Some(b)) = (la, lb) {
                        acc = fold31(acc, f(a, b));
                    }
                }
            }
        }
        next += len;
    }
    acc
}

/// One host round of scenario 12: a fresh driver of the pipeline, its ports fed as
/// `fanin_expected` describes (when `chunk` is 1, one value per call, as a pipeline thread
/// feeds two intervals; otherwise in batches through the batch entry, the `range` path),
/// then completed outside the timer. Returns (ns per input value, what the final `reduce`
/// emitted).
fn host_fanin(publisher: &Publisher, n: u64, chunk: usize) -> anyhow::Result<(f64, u64)> {
    let capture = Arc::new(CountingSink::default());
    let mut d = publisher
        .driver(capture.clone())
        .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
    let mut left = vec![0u64; chunk];
    let mut right = vec![0u64; chunk];
    let end = black_box(n);
    let mut refused = 0u64;
    let started = Instant::now();
    let mut next = 0u64;
    while next < end {
        if chunk == 1 {
            // As a pipeline thread pushes two intervals: `push_one` for port 0, `push_u64`
            // for the others.
            let b = right_of(next);
            let r = (d.push_one(next), d.push_u64(1, b));
            refused += u64::from(!matches!(r.0, Ok(Pushed::Continue)));
            refused += u64::from(!matches!(r.1, Ok(Pushed::Continue)));
            next += 1;
        } else {
            let len = ((end - next) as usize).min(chunk);
            for (i, (l, r)) in left[..len].iter_mut().zip(&mut right[..len]).enumerate() {
                *l = next + i as u64;
                *r = right_of(*l);
            }
            refused += u64::from(!matches!(
                d.push_port(0, &left[..len]),
                Ok(Pushed::Continue)
            ));
            refused += u64::from(!matches!(
                d.push_port(1, &right[..len]),
                Ok(Pushed::Continue)
            ));
            next += len as u64;
        }
    }
    let t = started.elapsed();
    anyhow::ensure!(refused == 0, "{refused} pushes did not go through");
    // Complete the inputs in order until the operator completes (a `zip` completes on the
    // first, having nothing queued; `merge` and `combine_latest` on the second).
    let mut completed = false;
    for port in 0..2 {
        match d.complete_port(port) {
            Ok(Pushed::Complete { .. }) => {
                completed = true;
                break;
            }
            Ok(Pushed::Continue | Pushed::PortDone { .. }) => {}
            Ok(Pushed::Panicked { .. }) => anyhow::bail!("a user function panicked completing"),
            Err(e) => anyhow::bail!("completing port {port}: {e}"),
        }
    }
    anyhow::ensure!(completed, "the pipeline did not complete with both inputs");
    Ok((ns_per(t, 2 * n), capture.last_u64()?))
}

/// One rxRust round of scenario 12: the same operator on two `Subject`s fed the same values
/// in the same order, its outputs folded by `reduce_initial`, the subjects completed outside
/// the timer. Returns (ns per input value, the fold).
fn rx_fanin(op: &str, n: u64, chunk: u64) -> anyhow::Result<(f64, u64)> {
    let mut a = Local::subject::<u64, Infallible>();
    let mut b = Local::subject::<u64, Infallible>();
    let out = std::rc::Rc::new(std::cell::Cell::new(None));
    let o = out.clone();
    let f = |a: u64, b: u64| a.wrapping_mul(3) ^ b;
    match op {
        "merge" => {
            a.clone()
                .merge(b.clone())
                .reduce_initial(0u64, fold31)
                .subscribe(move |v| o.set(Some(v)));
        }
        "zip" => {
            a.clone()
                .zip(b.clone())
                .map(move |(x, y)| f(x, y))
                .reduce_initial(0u64, fold31)
                .subscribe(move |v| o.set(Some(v)));
        }
        _ => {
            a.clone()
                .combine_latest(b.clone(), f)
                .reduce_initial(0u64, fold31)
                .subscribe(move |v| o.set(Some(v)));
        }
    }
    let end = black_box(n);
    let started = Instant::now();
    let mut next = 0u64;
    while next < end {
        let len = chunk.min(end - next);
        for x in next..next + len {
            a.next(x);
        }
        for x in next..next + len {
            b.next(right_of(x));
        }
        next += len;
    }
    let t = started.elapsed();
    a.complete();
    b.complete();
    Ok((
        ns_per(t, 2 * n),
        out.get().context("rxRust emitted nothing")?,
    ))
}

fn fan_in(report: &mut Report, loaded: &hmr_bench::Loaded) -> anyhow::Result<()> {
    report.line(format!(
        "\n### 12. Fan-in: two inputs of {N_FANIN} values each, fed alternately, outputs folded by a `reduce` (ns per input value; target <= 2x rxRust's operator)\n"
    ));
    report.line("| operator | feed | host ns/value | rxRust ns/value | host / rxRust |");
    report.line("|---|---|---:|---:|---:|");
    for op in ["merge", "zip", "combine_latest"] {
        let publisher = &loaded.pipelines[op];
        let mut ratios = Vec::new();
        for chunk in [1usize, BATCH] {
            let feed = if chunk == 1 {
                "one value at a time".to_owned()
            } else {
                format!("batches of {chunk}")
            };
            let expected = fanin_expected(op, N_FANIN, chunk as u64);
            let mut host = || host_fanin(publisher, N_FANIN, chunk);
            let mut rx = || rx_fanin(op, N_FANIN, chunk as u64);
            let medians = side_by_side(
                ROUNDS,
                expected,
                &mut [
                    ("host", Run::Checked(&mut host)),
                    ("rxRust", Run::Checked(&mut rx)),
                ],
            )
            .with_context(|| format!("{op}, {feed}"))?;
            let ratio = medians[0] / medians[1];
            report.line(format!(
                "| {op} | {feed} | {:.2} | {:.2} | {ratio:.2}x |",
                medians[0], medians[1]
            ));
            ratios.push((
                format!(
                    "{feed}: {:.2} vs {:.2} ns, {ratio:.2}x",
                    medians[0], medians[1]
                ),
                ratio,
            ));
        }
        let measured: Vec<&str> = ratios.iter().map(|(m, _)| m.as_str()).collect();
        report.verdict(
            &format!("`{op}` per value within 2x of rxRust's (both feeds)"),
            measured.join("; "),
            Some(ratios.iter().all(|&(_, r)| r <= 2.0)),
        );
    }
    Ok(())
}

/// Scenario 13's values.
const N_TIME: u64 = 1_000_000;

/// The time operators' duration in scenario 13 (the plugin's `debounce_ms(5)`,
/// `throttle_ms(5)`), in ms.
const TIME_MS: u64 = 5;

/// When scenario 13 feeds value `i`, in ns of virtual time: bursts of 8 values 1 ms apart
/// (closer than the duration: a debounce restarts, a throttle drops), 21 ms between bursts
/// (longer: a debounce fires, a throttle window closes).
fn time_of(i: u64) -> u64 {
    const MS: u64 = 1_000_000;
    i * MS + (i / 8) * 20 * MS
}

/// Where scenario 13's values start on the host's clock, which counts ns from its origin
/// (`host::clock::to_ns`): one second after it (rxRust's virtual clock starts at 0).
const TIME_BASE: u64 = 1_000_000_000;

/// What scenario 13's pipeline `op` folds when fed `0..n` at `time_of`: a plain simulation
/// of the operator (rxRust's semantics: a debounce lets its value out when the next comes at
/// or after its deadline, and at the end; a throttle lets a value through at or after its
/// window's end), outside any timer.
fn time_expected(op: &str, n: u64) -> u64 {
    let d = TIME_MS * 1_000_000;
    let mut acc = 0u64;
    let mut window_end = 0u64;
    for i in 0..n {
        let t = time_of(i);
        let pass = match op {
            "debounce" => i + 1 == n || time_of(i + 1) >= t + d,
            _ => {
                let open = i == 0 || t >= window_end;
                if open {
                    window_end = t + d;
                }
                open
            }
        };
        if pass {
            acc = fold31(acc, i);
        }
    }
    acc
}

/// One host round of scenario 13: a fresh driver of pipeline `op`, fed `0..n`, each value
/// at its time, the operator's wakes run at their deadlines in between (earliest first, as
/// a pipeline thread runs them: `Driver::take_timers`, `at_due`, `wake_track`), then the
/// wakes left, all timed; completed outside the timer. Returns (ns per value, what the
/// final `reduce` emitted).
fn host_time(publisher: &Publisher, n: u64) -> anyhow::Result<(f64, u64)> {
    use std::cmp::Reverse;
    let capture = Arc::new(CountingSink::default());
    let mut d = publisher
        .driver(capture.clone())
        .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
    let at = |ns: u64| host::clock::from_ns(TIME_BASE + ns).context("a time past `Instant`");
    let mut timers = std::collections::BinaryHeap::new();
    let mut taken = Vec::new();
    let mut asked = 0u64;
    let mut refused = 0u64;
    let end = black_box(n);
    let started = Instant::now();
    for i in 0..=end {
        // The wakes due by this value's time (after the last value: all of them).
        let now = if i < end {
            TIME_BASE + time_of(i)
        } else {
            u64::MAX
        };
        loop {
            d.take_timers(&mut taken);
            for (deadline, track) in taken.drain(..) {
                timers.push(Reverse((deadline, asked, track)));
                asked += 1;
            }
            match timers.peek() {
                Some(&Reverse((deadline, _, key))) if deadline <= now => {
                    timers.pop();
                    let due = host::clock::from_ns(deadline).context("a deadline")?;
                    let host::runtime::Key::Op(track) = key else {
                        anyhow::bail!("a timer of an inner subscription in a flat pipeline");
                    };
                    let r = d.at_due(due, |d| d.wake_track(track));
                    refused += u64::from(!matches!(r, Ok(Pushed::Continue)));
                }
                _ => break,
            }
        }
        if i < end {
            let r = d.at_due(at(time_of(i))?, |d| d.push_one(i));
            refused += u64::from(!matches!(r, Ok(Pushed::Continue)));
        }
    }
    let t = started.elapsed();
    anyhow::ensure!(refused == 0, "{refused} pushes or wakes did not go through");
    Ok((ns_per(t, n), finish(&mut d, &capture)?))
}

/// One rxRust round of scenario 13: the same operator on a `Subject` on the virtual-time
/// scheduler, fed `0..n`, the clock moved to each value's time first (running the tasks due
/// by then, earliest first), then to the end; completed outside the timer. Returns (ns per
/// value, the fold), and sets `tasks` to the tasks it scheduled a value.
fn rx_time(op: &str, n: u64, tasks: &mut f64) -> anyhow::Result<(f64, u64)> {
    use rxrust::ops::throttle::ThrottleEdge;
    rx_clock::init();
    let mut s = rx_clock::Ctx::subject::<u64, Infallible>();
    let out = std::rc::Rc::new(std::cell::Cell::new(None));
    let o = out.clone();
    let d = Duration::from_millis(TIME_MS);
    if op == "debounce" {
        s.clone()
            .debounce(d)
            .reduce_initial(0u64, fold31)
            .subscribe(move |v| o.set(Some(v)));
    } else {
        s.clone()
            .throttle_time(d, ThrottleEdge::leading())
            .reduce_initial(0u64, fold31)
            .subscribe(move |v| o.set(Some(v)));
    }
    let end = black_box(n);
    let started = Instant::now();
    for i in 0..end {
        rx_clock::advance_to(Duration::from_nanos(time_of(i)));
        s.next(i);
    }
    rx_clock::advance_to(Duration::from_nanos(time_of(end) + 2 * d.as_nanos() as u64));
    let t = started.elapsed();
    *tasks = rx_clock::scheduled() as f64 / n as f64;
    s.complete();
    Ok((ns_per(t, n), out.get().context("rxRust emitted nothing")?))
}

/// What one task handle of the virtual-time scheduler costs rxRust (see `rx_clock`: an
/// open `TaskHandle` is had only from rxRust's own scheduler, a `spawn_local`), ns each.
fn rx_handles(n: u64) -> f64 {
    rx_clock::init();
    let started = Instant::now();
    for _ in 0..black_box(n) {
        black_box(rx_clock::live_handle());
    }
    let t = started.elapsed();
    rx_clock::init();
    ns_per(t, n)
}

fn time_operators(report: &mut Report, loaded: &hmr_bench::Loaded) -> anyhow::Result<()> {
    report.line(format!(
        "\n### 13. Time operators: {N_TIME} values in bursts of 8, 1 ms apart, 21 ms between bursts, a {TIME_MS} ms operator, under a virtual clock (ns per value, wakes included; target <= 2x rxRust's operator)\n"
    ));
    report.line(
        "| operator | host ns/value | rxRust ns/value | of which cancel handles | rxRust without them | host / rxRust | host / rxRust without handles |",
    );
    report.line("|---|---:|---:|---:|---:|---:|---:|");
    for (op, theirs) in [
        ("debounce", "debounce"),
        ("throttle", "throttle_time(_, ThrottleEdge::leading())"),
    ] {
        let publisher = &loaded.pipelines[op];
        let expected = time_expected(op, N_TIME);
        let mut tasks = 0.0;
        let mut host = || host_time(publisher, N_TIME);
        let mut rx = || rx_time(op, N_TIME, &mut tasks);
        let mut handles = || Ok(rx_handles(N_TIME / 10));
        let medians = side_by_side(
            ROUNDS,
            expected,
            &mut [
                ("host", Run::Checked(&mut host)),
                ("rxRust", Run::Checked(&mut rx)),
                ("handle", Run::Reference(&mut handles)),
            ],
        )
        .with_context(|| op.to_owned())?;
        // The scaffold's share of rxRust's time: its tasks a value times a handle's cost
        // (the same every round: the data is). What is left is a lower bound of rxRust's
        // operator on a scheduler of its own, and the target is judged against it.
        let scaffold = tasks * medians[2];
        let bare = medians[1] - scaffold;
        let (ratio, strict) = (medians[0] / medians[1], medians[0] / bare);
        report.line(format!(
            "| `{op}_ms` vs `{theirs}` | {:.2} | {:.2} | {scaffold:.2} ({tasks:.3} tasks a value) | {bare:.2} | {ratio:.2}x | {strict:.2}x |",
            medians[0], medians[1]
        ));
        report.verdict(
            &format!("`{op}_ms` per value within 2x of rxRust's `{theirs}`"),
            format!(
                "{:.2} vs {:.2} ns, {ratio:.2}x; vs {bare:.2} ns without the virtual \
                 scheduler's cancel handles ({:.0} ns each), {strict:.2}x",
                medians[0], medians[1], medians[2]
            ),
            Some(strict <= 2.0),
        );
    }
    Ok(())
}

/// Outer values per round in scenario 14.
const N_HIGHER: u64 = 200_000;

/// One host round of scenario 14: a fresh driver of the pipeline, fed `0..n` one value per
/// call (as a pipeline thread feeds an interval) or in batches through the batch entry (the
/// `range` path), the ended inner subscriptions freed after each call as the pipeline thread
/// does, then completed outside the timer. Returns (ns per outer value, what the final
/// `reduce` emitted).
fn host_higher(publisher: &Publisher, n: u64, chunk: usize) -> anyhow::Result<(f64, u64)> {
    let capture = Arc::new(CountingSink::default());
    let mut d = publisher
        .driver(capture.clone())
        .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
    let mut buf = vec![0u64; chunk];
    let end = black_box(n);
    let mut refused = 0u64;
    let started = Instant::now();
    let mut next = 0u64;
    while next < end {
        if chunk == 1 {
            refused += u64::from(!matches!(d.push_one(next), Ok(Pushed::Continue)));
            next += 1;
        } else {
            let len = ((end - next) as usize).min(chunk);
            for (i, slot) in buf[..len].iter_mut().enumerate() {
                *slot = next + i as u64;
            }
            refused += u64::from(!matches!(d.push_port(0, &buf[..len]), Ok(Pushed::Continue)));
            next += len as u64;
        }
        d.reap_inners();
    }
    let t = started.elapsed();
    anyhow::ensure!(refused == 0, "{refused} pushes did not go through");
    anyhow::ensure!(
        d.live_inners() == 0,
        "{} inner subscriptions still live",
        d.live_inners()
    );
    Ok((ns_per(t, n), finish(&mut d, &capture)?))
}

/// One rxRust round of scenario 14: the same operator on a `Subject` fed `0..n`, each value
/// projected to `from_iter(vec![x])` (one allocation, as our `of(vec![x])`), the outputs
/// folded by `reduce_initial`, the subject completed outside the timer. Returns (ns per
/// outer value, the fold).
fn rx_higher(op: &str, n: u64) -> anyhow::Result<(f64, u64)> {
    let mut s = Local::subject::<u64, Infallible>();
    let out = std::rc::Rc::new(std::cell::Cell::new(None));
    let o = out.clone();
    match op {
        "switch_map" => {
            s.clone()
                .switch_map(|x: u64| Local::from_iter(vec![x]))
                .reduce_initial(0u64, fold31)
                .subscribe(move |v| o.set(Some(v)));
        }
        "switch_map_op" => {
            s.clone()
                .switch_map(|x: u64| Local::from_iter(vec![x]).map(|v: u64| v + 1))
                .reduce_initial(0u64, fold31)
                .subscribe(move |v| o.set(Some(v)));
        }
        "merge_map_seed" => {
            s.clone()
                .flat_map(|x: u64| Local::from_iter(vec![x]).scan(x, |a: u64, v: u64| a + v))
                .reduce_initial(0u64, fold31)
                .subscribe(move |v| o.set(Some(v)));
        }
        "merge_map" => {
            s.clone()
                .flat_map(|x: u64| Local::from_iter(vec![x]))
                .reduce_initial(0u64, fold31)
                .subscribe(move |v| o.set(Some(v)));
        }
        _ => {
            s.clone()
                .flat_map(|x: u64| Local::from_iter(vec![x]).map(|v: u64| v + 1))
                .reduce_initial(0u64, fold31)
                .subscribe(move |v| o.set(Some(v)));
        }
    }
    let end = black_box(n);
    let started = Instant::now();
    for x in 0..end {
        s.next(x);
    }
    let t = started.elapsed();
    s.complete();
    Ok((ns_per(t, n), out.get().context("rxRust emitted nothing")?))
}

fn higher_order(report: &mut Report, loaded: &hmr_bench::Loaded) -> anyhow::Result<()> {
    report.line(format!(
        "\n### 14. Higher-order operators: {N_HIGHER} outer values, one inner subscription created and ended per value (`of(vec![x])`, a bare synchronous source run inside the call; `_op`: `of(vec![x]).map(..)`, bound and run inside the call; `_seed`: `of(vec![x]).scan(x, ..)`, a seed per outer value; `_sub`: `.publish(..)` added, subscribed the long way), outputs folded by a `reduce` (ns per outer value; target <= 2x rxRust's operator)\n"
    ));
    report.line("| operator (rxRust's) | feed | host ns/value | rxRust ns/value | host / rxRust |");
    report.line("|---|---|---:|---:|---:|");
    // Every row runs its inner stream inside the outer value's call: the bare rows without
    // binding it, the `_op` rows bound (a track) with its operator's state seeded by the
    // plugin.
    for (op, theirs) in [
        ("switch_map", "switch_map"),
        ("merge_map", "flat_map"),
        ("switch_map_op", "switch_map"),
        ("merge_map_op", "flat_map"),
        ("merge_map_seed", "flat_map"),
        ("merge_map_sub", "flat_map"),
    ] {
        let subscribed = op.ends_with("_sub");
        let seeded = op.ends_with("_seed");
        let with_op = op.ends_with("_op") || subscribed;
        // `scan(x, +)` over `of(vec![x])` emits 2x.
        let expected = (0..N_HIGHER)
            .map(|v| {
                if seeded {
                    2 * v
                } else {
                    v + u64::from(with_op)
                }
            })
            .fold(0, fold31);
        let publisher = &loaded.pipelines[op];
        let mut ratios = Vec::new();
        for chunk in [1usize, BATCH] {
            let feed = if chunk == 1 {
                "one value at a time".to_owned()
            } else {
                format!("batches of {chunk}")
            };
            let mut host = || host_higher(publisher, N_HIGHER, chunk);
            let mut rx = || rx_higher(op, N_HIGHER);
            let medians = side_by_side(
                ROUNDS,
                expected,
                &mut [
                    ("host", Run::Checked(&mut host)),
                    ("rxRust", Run::Checked(&mut rx)),
                ],
            )
            .with_context(|| format!("{op}, {feed}"))?;
            let ratio = medians[0] / medians[1];
            report.line(format!(
                "| {op} ({theirs}) | {feed} | {:.2} | {:.2} | {ratio:.2}x |",
                medians[0], medians[1]
            ));
            ratios.push((
                format!(
                    "{feed}: {:.2} vs {:.2} ns, {ratio:.2}x",
                    medians[0], medians[1]
                ),
                ratio,
            ));
        }
        let measured: Vec<&str> = ratios.iter().map(|(m, _)| m.as_str()).collect();
        let name = op
            .trim_end_matches("_op")
            .trim_end_matches("_sub")
            .trim_end_matches("_seed");
        if subscribed {
            report.verdict(
                &format!("`{name}` per outer value, an inner stream subscribed the long way (`of(vec![x]).map(..).publish(..)`: information, no target)"),
                measured.join("; "),
                None,
            );
            continue;
        }
        let inner = if seeded {
            "an operator whose seed is the outer value, `of(vec![x]).scan(x, ..)`: each binding another, run inside the call"
        } else if with_op {
            "an inner stream with an operator, `of(vec![x]).map(..)`: bound, run inside the call"
        } else {
            "a bare `of(vec![x])`: run inside the call"
        };
        report.verdict(
            &format!("`{name}` per outer value (one inner subscription; {inner}) within 2x of rxRust's `{theirs}` (both feeds)"),
            measured.join("; "),
            Some(ratios.iter().all(|&(_, r)| r <= 2.0)),
        );
    }
    Ok(())
}

/// Scenario 16, one row: a driver of `publisher` (version 1) that took `n` inputs, replaying
/// them through its code and `new` (version 2), against pushing the same `n` inputs live
/// through one version. Microseconds per replay (or per `n` pushes).
fn replay_row(
    publisher: &Publisher,
    new: &Arc<host::code::PipelineCode>,
    n: u64,
) -> anyhow::Result<[f64; 2]> {
    let driver = |keep: usize| -> anyhow::Result<host::runtime::Driver> {
        publisher.keep_inputs(keep);
        publisher
            .driver(Arc::new(CountingSink::default()))
            .map_err(|e| anyhow::anyhow!("seeding: {e}"))
    };
    let mut replay = || -> anyhow::Result<(f64, u64)> {
        let mut d = driver(n as usize)?;
        for x in 0..n {
            anyhow::ensure!(
                matches!(d.push_one(x), Ok(Pushed::Continue)),
                "input {x} refused"
            );
        }
        let started = Instant::now();
        let r = black_box(d.replay(new));
        let t = started.elapsed();
        anyhow::ensure!(
            r.status == "compared" && r.changed == 0 && r.panics.is_empty(),
            "unexpected replay: {r:?}"
        );
        Ok((t.as_secs_f64() * 1e6, r.inputs as u64))
    };
    let mut live = || -> anyhow::Result<(f64, u64)> {
        let mut d = driver(0)?;
        let mut taken = 0u64;
        let started = Instant::now();
        for x in 0..black_box(n) {
            taken += u64::from(matches!(d.push_one(x), Ok(Pushed::Continue)));
        }
        Ok((started.elapsed().as_secs_f64() * 1e6, taken))
    };
    let medians = side_by_side(
        ROUNDS * 3,
        n,
        &mut [
            ("replay", Run::Checked(&mut replay)),
            ("live", Run::Checked(&mut live)),
        ],
    )?;
    publisher.keep_inputs(host::replay::DEFAULT_INPUTS);
    Ok([medians[0], medians[1]])
}

/// Scenario 16: replay on reload. What a reload's replay of the recent inputs costs (old and
/// new code, each on a copy of the state, outputs compared), on two of the bench plugin's
/// chains, for 32 (the default) and 1,024 inputs; and what keeping the inputs costs the push
/// path (scenario 2's chain with `--replay 32` and `--replay 0`, side by side).
fn replay_on_reload(
    report: &mut Report,
    loaded: &hmr_bench::Loaded,
    loader: &Loader,
    library: &std::path::Path,
) -> anyhow::Result<()> {
    // The same library loaded again: version 2 of every pipeline, with equal signatures, so
    // every state is copied (not seeded) and no output changes (checked every round).
    let (_lib, codes) = hmr_bench::load_codes(loader, library, 2)?;
    let mut codes: std::collections::BTreeMap<String, host::code::PipelineCode> =
        codes.into_iter().map(|c| (c.name.clone(), c)).collect();
    report.line(
        "\n### 16. Replay on reload: the recent inputs through the old and the new code, each on a copy of the state (us per replay; target < 1 ms for 32 inputs)\n",
    );
    report.line("| chain | inputs | replay us (median) | reference: the same inputs pushed live through one version, us | replay / live |");
    report.line("|---|---:|---:|---:|---:|");
    let mut worst_32 = 0f64;
    for (name, chain) in [
        (
            "push",
            "map -> filter -> scan -> reduce -> log (emits at completion)",
        ),
        ("log", "map -> log (every input emits)"),
        (
            "counter",
            "the example's `counter`: map -> filter -> scan -> log",
        ),
    ] {
        let publisher = &loaded.pipelines[name];
        let new = Arc::new(
            codes
                .remove(name)
                .with_context(|| format!("the plugin has no {name}"))?,
        );
        for n in [32u64, 1024] {
            let [replay, live] = replay_row(publisher, &new, n)?;
            if n == 32 {
                worst_32 = worst_32.max(replay);
            }
            report.line(format!(
                "| `{name}`: {chain} | {n} | {replay:.1} | {live:.1} | {:.1}x |",
                replay / live
            ));
        }
    }
    report.verdict(
        "replay of 32 inputs on a reload under 1 ms",
        format!("{worst_32:.1} us (slowest chain)"),
        Some(worst_32 < 1000.0),
    );
    // Keeping the inputs on the push path.
    let publisher = &loaded.pipelines["push"];
    let mut kept = || {
        publisher.keep_inputs(host::replay::DEFAULT_INPUTS);
        one_by_one(publisher, N_PUSH)
    };
    let mut off = || {
        publisher.keep_inputs(0);
        one_by_one(publisher, N_PUSH)
    };
    let names = [
        "host push, --replay 32 (the default)",
        "host push, --replay 0",
    ];
    let medians = side_by_side(
        ROUNDS,
        chain_sum(N_PUSH),
        &mut [
            (names[0], Run::Checked(&mut kept)),
            (names[1], Run::Checked(&mut off)),
        ],
    )?;
    publisher.keep_inputs(host::replay::DEFAULT_INPUTS);
    table(
        report,
        "16b. Keeping the recent inputs on the push path: scenario 2's chain (ns per value)",
        &names,
        &medians,
        "ns/value",
        1,
    );
    report.verdict(
        "keeping recent inputs costs the push path little",
        format!(
            "{:.2} vs {:.2} ns/value: {:.2}x",
            medians[0],
            medians[1],
            medians[0] / medians[1]
        ),
        None,
    );
    Ok(())
}

fn main() {
    // Scenario 6's measuring child: this binary again, with the counter preloaded.
    if let Some(library) = std::env::var_os(ALLOC_CHILD) {
        if let Err(e) = alloc_child(std::path::Path::new(&library)) {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Runs the scenarios asked for, prints the summary and the verdicts; false when a check
/// failed (a result that differs, a settle wait that timed out, a scenario that could not
/// run).
fn run() -> anyhow::Result<bool> {
    let mut report = Report {
        text: String::new(),
        verdicts: Vec::new(),
    };
    let started = Instant::now();
    report.line(format!(
        "## Summary ({} cores, {})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::consts::ARCH
    ));
    // `cargo bench -p hmr-bench -- NAME...` runs the scenarios whose name contains one of the
    // NAMEs (`cargo bench` itself passes `--bench`).
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let plugin = build_release("bench_plugin", PLUGIN)?;
    let loader = Loader::new()?;
    let loaded = load(&loader, &plugin.library, 1)?;
    type Scenario<'a> = Box<dyn FnOnce(&mut Report) -> anyhow::Result<()> + 'a>;
    let scenarios: Vec<(&str, Scenario<'_>)> = vec![
        ("batch", Box::new(|r| batch(r, &loaded))),
        ("push", Box::new(|r| push(r, &loaded))),
        ("call", Box::new(|r| per_call(r, &loaded))),
        ("swap", Box::new(swap_scaling)),
        ("save", Box::new(save_to_emission)),
        ("alloc", Box::new(|r| allocations(r, &plugin.library))),
        ("scale", Box::new(reload_at_scale)),
        ("latency", Box::new(latency_under_reloads)),
        ("soak", Box::new(soak)),
        ("heap", Box::new(heap_state)),
        (
            "subject",
            Box::new(|r| subjects(r, &loader, &plugin.library)),
        ),
        ("fanin", Box::new(|r| fan_in(r, &loaded))),
        ("time", Box::new(|r| time_operators(r, &loaded))),
        ("higher", Box::new(|r| higher_order(r, &loaded))),
        ("inner_scale", Box::new(inner_scale)),
        (
            "replay",
            Box::new(|r| replay_on_reload(r, &loaded, &loader, &plugin.library)),
        ),
        ("record", Box::new(|r| record_overhead(r, &loaded))),
    ];
    let mut failures = Vec::new();
    for (name, scenario) in scenarios {
        if !wanted(name) {
            continue;
        }
        if let Err(e) = scenario(&mut report) {
            let message = format!("scenario `{name}` FAILED: {e:#}");
            report.line(format!("\n**{message}**"));
            failures.push(message);
        }
    }
    report.line("\n### Verdicts (computed from the medians and ratios above)\n");
    report.line("| target | measured | verdict |");
    report.line("|---|---|---|");
    let verdicts = std::mem::take(&mut report.verdicts);
    for v in &verdicts {
        report.line(format!("| {} | {} | {} |", v.target, v.measured, v.word()));
    }
    for f in &failures {
        report.line(format!("| checks | {f} | FAILED |"));
    }
    report.line(format!(
        "\n(whole run: {:.0} s; {} targets met, {} missed, {} checks failed)",
        started.elapsed().as_secs_f64(),
        verdicts.iter().filter(|v| v.met == Some(true)).count(),
        verdicts.iter().filter(|v| v.met == Some(false)).count(),
        failures.len()
    ));
    let out = fixture_target_dir().join("..").join("bench-summary.md");
    std::fs::write(&out, &report.text).with_context(|| format!("writing {}", out.display()))?;
    println!("\nwritten to {}", out.display());
    Ok(failures.is_empty())
}

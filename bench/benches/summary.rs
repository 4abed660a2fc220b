//! `make bench`: every comparison measured side by side in one run (contenders interleaved
//! round by round), medians quoted, ratios computed from those medians. Prints a markdown
//! summary and writes it to `target/bench-summary.md`.
//!
//! Scenarios (see BENCHMARKS.md for the targets):
//! 1. batch source: `range` -> map -> filter -> reduce, host vs rxRust `from_iter` vs a loop;
//! 2. push source, one value per call: host vs rxRust `Subject` vs three `AtomicPtr` fn slots;
//! 3. per call: the host's hot-swappable call vs hot-lib-reloader's generated call;
//! 4. swap cost against the number of tracks (100, 1,000, 10,000);
//! 5. save to first new emission on the example plugin, split by phase;
//! 6. heap allocations per emission (a counting global allocator);
//! 7. reload at scale: 100 pipelines;
//! 8. emission latency while 50 reloads swap code under a running pipeline;
//! 9. resident memory per reload over 200 reloads of the example plugin;
//! 10. heap state: `reduce`, `scan_map` and `scan` on a `Vec` state of 10k and 100k items,
//!     host vs rxRust's same operator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmr_bench::{Built, CountingSink, build_release, load, load_codes, median, ns_per, quantile};
use host::code::Pushed;
use host::events::{ChannelSink, HostEvent, Sink};
use host::loader::Loader;
use host::reloader::{Outcome, Reloader, plugin_manifest};
use host::runtime::{BATCH, PanicPolicy};
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

/// Counts heap allocations made by this process.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: defers every operation to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
        .scan(0u64, |acc: u64, n: u64| acc.wrapping_add(n));
    p.pipeline("call", interval_ms(3_600_000)).map(|n: u64| n.wrapping_mul(3) ^ 7);
    p.pipeline("nop", interval_ms(3_600_000));
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

const N_BATCH: u64 = 50_000_000;
const N_PUSH: u64 = 10_000_000;
const ROUNDS: usize = 7;

struct Report {
    text: String,
}

impl Report {
    fn line(&mut self, s: impl AsRef<str>) {
        println!("{}", s.as_ref());
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }
}

/// Runs each contender once per round, rotating the order, and returns the medians (in the
/// unit the contenders return).
fn side_by_side(rounds: usize, contenders: &mut [(&str, &mut dyn FnMut() -> f64)]) -> Vec<f64> {
    let n = contenders.len();
    let mut samples = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            samples[i].push((contenders[i].1)());
        }
    }
    samples.iter_mut().map(|s| median(s)).collect()
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

fn batch(report: &mut Report, loaded: &hmr_bench::Loaded) -> anyhow::Result<()> {
    let publisher = &loaded.pipelines["batch"];
    let capture = Arc::new(CountingSink::default());
    let mut host_result = 0u64;
    let mut host = || {
        let mut d = publisher.driver(capture.clone()).expect("seeded state");
        let mut buf = [0u64; BATCH];
        let end = black_box(N_BATCH);
        let started = Instant::now();
        let mut next = 0;
        while next < end {
            let len = ((end - next) as usize).min(BATCH);
            for (i, slot) in buf[..len].iter_mut().enumerate() {
                *slot = next + i as u64;
            }
            let _ = d.push(&buf[..len]);
            next += len as u64;
        }
        let _ = d.complete();
        let t = started.elapsed();
        if let Some(v) = capture.last.lock().ok().and_then(|l| l.clone()) {
            host_result = v.parse().unwrap_or(0);
        }
        ns_per(t, N_BATCH)
    };
    let mut rx_result = 0u64;
    let mut rx = || {
        let end = black_box(N_BATCH);
        let out = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let o = out.clone();
        let started = Instant::now();
        Local::from_iter(0..end)
            .map(|n| n * 2)
            .filter(|n| n % 3 == 0)
            .reduce_initial(0u64, |acc, n| acc.wrapping_add(n))
            .subscribe(move |v| o.set(v));
        let t = started.elapsed();
        rx_result = out.get();
        ns_per(t, N_BATCH)
    };
    let mut loop_result = 0u64;
    let mut plain = || {
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
        loop_result = black_box(acc);
        ns_per(t, N_BATCH)
    };
    let names = ["host (release plugin)", "rxRust from_iter", "plain loop"];
    let medians = side_by_side(
        ROUNDS,
        &mut [
            (names[0], &mut host),
            (names[1], &mut rx),
            (names[2], &mut plain),
        ],
    );
    anyhow::ensure!(
        host_result == rx_result && rx_result == loop_result,
        "results differ: host {host_result}, rxRust {rx_result}, loop {loop_result}"
    );
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
    Ok(())
}

/// Pushes `N_PUSH` values one at a time through a fresh driver of `publisher`, as an interval
/// source does; ns per value.
fn one_by_one(publisher: &host::runtime::Publisher) -> f64 {
    let mut d = publisher.driver(null_sink()).expect("seeded state");
    let end = black_box(N_PUSH);
    let started = Instant::now();
    for x in 0..end {
        let _ = d.push_one(x);
    }
    ns_per(started.elapsed(), N_PUSH)
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
    let mut host = || one_by_one(publisher);
    let mut rx = || {
        let end = black_box(N_PUSH);
        let mut subject = Local::subject::<u64, Infallible>();
        let out = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let o = out.clone();
        subject
            .clone()
            .map(|n| n * 2)
            .filter(|n| n % 3 == 0)
            .scan(0u64, |acc, n| acc.wrapping_add(n))
            .subscribe(move |v| o.set(v));
        let started = Instant::now();
        for x in 0..end {
            subject.next(x);
        }
        let t = started.elapsed();
        black_box(out.get());
        ns_per(t, N_PUSH)
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
    let mut slots = || {
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
        black_box(acc);
        ns_per(t, N_PUSH)
    };
    let names = [
        "host (one value per call)",
        "rxRust Subject",
        "3 AtomicPtr fn slots",
    ];
    let medians = side_by_side(
        ROUNDS,
        &mut [
            (names[0], &mut host),
            (names[1], &mut rx),
            (names[2], &mut slots),
        ],
    );
    table(
        report,
        "2. Push source: map -> filter -> scan, one value at a time (ns per value; target <= rxRust Subject)",
        &names,
        &medians,
        "ns/value",
        1,
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
    let mut host = || one_by_one(publisher);
    let n_hlr = N_PUSH / 10;
    let mut hlr = || {
        let end = black_box(n_hlr);
        let mut acc = 0u64;
        let started = Instant::now();
        for x in 0..end {
            acc ^= hot_lib::step(x);
        }
        let t = started.elapsed();
        black_box(acc);
        ns_per(t, n_hlr)
    };
    CALL_SLOT.store(
        black_box(hlr_fixture::step as fn(u64) -> u64 as *mut ()),
        Ordering::Release,
    );
    let mut slot = || {
        let end = black_box(N_PUSH);
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
        black_box(acc);
        ns_per(t, N_PUSH)
    };
    let nop = &loaded.pipelines["nop"];
    let mut empty = || one_by_one(nop);
    let names = [
        "host hot-swappable call",
        "hot-lib-reloader #[hot_module] call",
        "AtomicPtr fn call",
        "host call into an empty pipeline (the fixed cost)",
    ];
    let medians = side_by_side(
        ROUNDS,
        &mut [
            (names[0], &mut host),
            (names[1], &mut hlr),
            (names[2], &mut slot),
            (names[3], &mut empty),
        ],
    );
    table(
        report,
        "3. Per call: one function behind a hot-swappable call (ns per call)",
        &names,
        &medians,
        "ns/call",
        1,
    );
    Ok(())
}

fn allocations(report: &mut Report, loaded: &hmr_bench::Loaded) -> anyhow::Result<()> {
    report.line("\n### 6. Heap allocations per emission (counting global allocator)\n");
    report.line("| pipeline | values | allocations | per value |");
    report.line("|---|---:|---:|---:|");
    for name in ["push", "call", "batch"] {
        let mut d = loaded.pipelines[name]
            .driver(null_sink())
            .expect("seeded state");
        let n = 1_000_000u64;
        let mut buf = [0u64; BATCH];
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        if name == "batch" {
            let mut next = 0;
            while next < n {
                for (i, s) in buf.iter_mut().enumerate() {
                    *s = next + i as u64;
                }
                let _ = d.push(&buf);
                next += BATCH as u64;
            }
        } else {
            for x in 0..n {
                let _ = d.push_one(x);
            }
        }
        let count = ALLOCATIONS.load(Ordering::Relaxed) - before;
        report.line(format!(
            "| {name} | {n} | {count} | {:.6} |",
            count as f64 / n as f64
        ));
    }
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
    report.line("| tracks | load (copy + dlopen) | validate | register | reconcile + publish | host total | per track |");
    report.line("|---:|---:|---:|---:|---:|---:|---:|");
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
        let total_m = median(&mut total);
        report.line(format!(
            "| {tracks} | {:.0} us | {:.0} us | {:.0} us | {:.0} us | {:.2} ms | {:.2} us |",
            median(&mut load),
            median(&mut validate),
            median(&mut register),
            median(&mut swap),
            total_m / 1000.0,
            total_m / tracks as f64
        ));
    }
    Ok(())
}

fn reload_at_scale(report: &mut Report) -> anyhow::Result<()> {
    report.line("\n### 7. Reload at scale: 100 pipelines (300 tracks, 100 source threads)\n");
    let (built, mut r) = scale_plugin(100, 0)?;
    let scale_lib = &built.library;
    anyhow::ensure!(matches!(r.load_built(scale_lib, 0), Outcome::Loaded { .. }));
    for _ in 0..5 {
        r.load_built(scale_lib, 0);
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

fn latency_under_reloads(report: &mut Report, library: &std::path::Path) -> anyhow::Result<()> {
    let loader = Loader::new()?;
    let first = load(&loader, library, 1)?;
    let publisher = first.pipelines["push"].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new((Vec::<f64>::new(), 0u64, Duration::ZERO)));
    let worker = {
        let (stop, stats, publisher) = (stop.clone(), stats.clone(), publisher.clone());
        std::thread::spawn(move || {
            let mut d = publisher.driver(null_sink()).expect("seeded state");
            let mut lat = Vec::with_capacity(1 << 20);
            let mut worst = Duration::ZERO;
            let started = Instant::now();
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = d.push_one(x);
                let e = t.elapsed();
                debug_assert!(matches!(r, Ok(Pushed::Continue)));
                worst = worst.max(e);
                if x.is_multiple_of(64) && lat.len() < lat.capacity() {
                    lat.push(e.as_nanos() as f64);
                }
                x += 1;
            }
            *stats.lock().expect("stats") = (lat, x, started.elapsed());
            let _ = worst;
        })
    };
    // Let it run, then 50 reloads: load + register + publish, as the reloader does.
    std::thread::sleep(Duration::from_millis(100));
    let mut keep = Vec::new();
    let reloads_started = Instant::now();
    for v in 2..52 {
        let (lib, codes) = load_codes(&loader, library, v)?;
        for code in codes {
            if code.name == "push" {
                publisher.publish(code);
            }
        }
        keep.push(lib);
    }
    let reload_time = reloads_started.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the driver thread panicked"))?;
    let (mut lat, count, elapsed) = std::mem::take(&mut *stats.lock().expect("stats"));
    let rate = count as f64 / elapsed.as_secs_f64();
    report.line("\n### 8. Emission latency while 50 reloads swap the code of a running pipeline\n");
    report.line(format!(
        "{count} values in {:.2} s ({:.1} M values/s, one value per push) while 50 reloads took {:.0} ms; \
         per-push latency (sampled 1 in 64): median {:.0} ns, p99.9 {:.0} ns, max {:.1} us",
        elapsed.as_secs_f64(),
        rate / 1e6,
        reload_time.as_secs_f64() * 1e3,
        median(&mut lat),
        quantile(&mut lat, 0.999),
        quantile(&mut lat, 1.0) / 1000.0
    ));
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
    report.line("\n### 5. Save to first new emission, example plugin (debug build, as `cargo run -p host`; target < 300 ms, host share < 5 ms)\n");
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
            r.load_built(&built.library, 0);
        }
        let before = rss_bytes();
        let mut last = 0;
        for _ in 0..200 {
            if let Outcome::Loaded { version } = r.load_built(&built.library, 0) {
                last = version;
            }
        }
        let per = rss_bytes().saturating_sub(before) / 200;
        // Settle: wait for the counter to tick on the last version.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(e) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if matches!(e, HostEvent::Emission { ref pipeline, version, .. } if pipeline == "counter" && version == last)
            {
                break;
            }
        }
        report.line(format!(
            "| {} | {per} | {} | {} |",
            if release { "release" } else { "debug" },
            r.mapped_versions(),
            r.live_versions()
        ));
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
fn host_heap(publisher: &host::runtime::Publisher) -> (f64, u64) {
    let capture = Arc::new(CountingSink::default());
    let mut d = publisher.driver(capture.clone()).expect("seeded state");
    let end = black_box(HEAP_VALUES);
    let started = Instant::now();
    for x in 0..end {
        let _ = d.push_one(x);
    }
    let t = started.elapsed();
    let _ = d.complete();
    let result = capture
        .last
        .lock()
        .ok()
        .and_then(|l| l.clone())
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    (ns_per(t, HEAP_VALUES), result)
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
        for n in HEAP_SIZES {
            let publisher = &loaded.pipelines[&format!("{op}_{n}")];
            // What every contender must produce: reduce emits len + last once; the scans
            // sum len + x over the values.
            let expected = match op {
                "reduce" => n as u64 + m + (m - 1),
                _ => m * (n as u64 + 1) + m * (m - 1),
            };
            let results = Mutex::new(Vec::new());
            let mut host = || {
                let (ns, r) = host_heap(publisher);
                results.lock().expect("results").push(("host", r));
                ns
            };
            let mut rx = || {
                let (ns, r) = rx_heap(op, n);
                results.lock().expect("results").push(("rxRust", r));
                ns
            };
            let medians =
                side_by_side(HEAP_ROUNDS, &mut [("host", &mut host), ("rxRust", &mut rx)]);
            for (who, r) in results.into_inner().expect("results") {
                anyhow::ensure!(
                    r == expected,
                    "{op} of {n}: {who} computed {r}, expected {expected}"
                );
            }
            report.line(format!(
                "| {op} | {n} | {:.1} | {:.1} | {:.2}x |",
                medians[0],
                medians[1],
                medians[0] / medians[1]
            ));
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    let mut report = Report {
        text: String::new(),
    };
    let started = Instant::now();
    let mut header = String::new();
    let _ = writeln!(
        header,
        "## Summary ({} cores, {})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::consts::ARCH
    );
    report.line(header.trim_end());
    // `cargo bench -p hmr-bench -- NAME` runs the scenarios whose name contains NAME.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let plugin = build_release("bench_plugin", PLUGIN)?;
    let loader = Loader::new()?;
    let loaded = load(&loader, &plugin.library, 1)?;
    if wanted("batch") {
        batch(&mut report, &loaded)?;
    }
    if wanted("push") {
        push(&mut report, &loaded)?;
    }
    if wanted("call") {
        per_call(&mut report, &loaded)?;
    }
    if wanted("swap") {
        swap_scaling(&mut report)?;
    }
    if wanted("save") {
        save_to_emission(&mut report)?;
    }
    if wanted("alloc") {
        allocations(&mut report, &loaded)?;
    }
    if wanted("scale") {
        reload_at_scale(&mut report)?;
    }
    if wanted("latency") {
        latency_under_reloads(&mut report, &plugin.library)?;
    }
    if wanted("soak") {
        soak(&mut report)?;
    }
    if wanted("heap") {
        heap_state(&mut report)?;
    }
    report.line(format!(
        "\n(whole run: {:.0} s)",
        started.elapsed().as_secs_f64()
    ));
    let out = fixture_target_dir().join("..").join("bench-summary.md");
    std::fs::write(&out, &report.text)?;
    println!("\nwritten to {}", out.display());
    Ok(())
}

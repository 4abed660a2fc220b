//! Scale of higher-order operators on a real build, under a virtual clock: a `merge_map`
//! over `range(0, N)` with an inner `interval_ms(1000)` keeps N inner subscriptions live on
//! the pipeline's one thread (the host's thread count does not grow with N), every inner
//! interval emits once a period, and a reload re-projects them all. Prints the memory per
//! inner subscription and the reload's times (the host's share: load, swap, and the pipeline
//! thread's re-projection). Alone in its test binary: the thread count is the process's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host::events::{EventSink, HostEvent};
use host::reloader::{Outcome, Reloader};
use host::runtime::PanicPolicy;
use host::testkit::{Fixture, TempDir, rss_bytes};
use integration_tests::{build_copy, reload_fields};

const SETTLE: Duration = Duration::from_secs(120);
const PERIOD_MS: u64 = 1000;

/// Counts each inner subscription's emissions (the value is `n * 1_000_000 + x`: inner `n`)
/// without keeping them, so the memory measured is the host's; other events go to a channel
/// with the time they came.
struct Counting {
    count: Vec<AtomicU64>,
    last: Vec<AtomicU64>,
    version: Vec<AtomicU64>,
    stray: AtomicU64,
    tx: Mutex<Sender<(Instant, HostEvent)>>,
}

impl EventSink for Counting {
    fn event(&self, event: HostEvent) {
        if let HostEvent::Emission {
            pipeline,
            version,
            value,
        } = &event
        {
            return self.emission(pipeline, *version, value);
        }
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let _ = tx.send((Instant::now(), event));
    }

    fn emission(&self, _pipeline: &str, version: u64, value: &str) {
        let Ok(v) = value.parse::<u64>() else {
            self.stray.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match self.count.get((v / 1_000_000) as usize) {
            Some(c) => {
                let n = (v / 1_000_000) as usize;
                c.fetch_add(1, Ordering::Relaxed);
                self.last[n].store(v % 1_000_000, Ordering::Relaxed);
                self.version[n].store(version, Ordering::Relaxed);
            }
            None => {
                self.stray.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Counting {
    /// Every inner subscription emitted `count` values in all, the last `last` from
    /// `version`; and nothing else came.
    fn check(&self, count: u64, last: u64, version: u64) {
        assert_eq!(self.stray.load(Ordering::Relaxed), 0, "stray emissions");
        let got = |n: usize| {
            (
                self.count[n].load(Ordering::Relaxed),
                self.last[n].load(Ordering::Relaxed),
                self.version[n].load(Ordering::Relaxed),
            )
        };
        let wrong: Vec<usize> = (0..self.count.len())
            .filter(|&n| got(n) != (count, last, version))
            .collect();
        assert!(
            wrong.is_empty(),
            "{} of {} inner subscriptions did not emit {count} values, the last {last} from \
             v{version}: the first {:?}",
            wrong.len(),
            self.count.len(),
            wrong
                .iter()
                .take(5)
                .map(|&n| (n, got(n)))
                .collect::<Vec<_>>()
        );
    }
}

fn host_threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .filter(|n| n.starts_with("hmr-") && !n.starts_with("hmr-cargo-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The host's threads once every one that is ending has ended (a detached thread leaves
/// `/proc` a little after it was told to end), or what is left after `SETTLE`.
fn host_threads_after_stop() -> Vec<String> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let names = host_threads();
        if names.is_empty() || Instant::now() >= deadline {
            return names;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn events(rx: &Receiver<(Instant, HostEvent)>) -> Vec<(Instant, HostEvent)> {
    rx.try_iter().collect()
}

fn plugin(n: u64, k: u64) -> String {
    format!(
        "use plugin_api::prelude::*;\n\nfn register(p: &mut Plugin) {{\n    \
         p.pipeline(\"m\", range(0, {n}))\n        \
         .merge_map(|n: u64| interval_ms({PERIOD_MS}).map(move |i: u64| n * 1_000_000 + i * 10 + {k}))\n        \
         .log();\n}}\n\nplugin_api::export_plugin!(register);\n"
    )
}

/// What one run with `n` live inner subscriptions measured.
#[derive(Debug)]
struct Run {
    n: u64,
    /// The host's threads: before it started, with the inner subscriptions live, after it.
    threads: (Vec<String>, Vec<String>, Vec<String>),
    rss_per_inner: f64,
    load_ms: u64,
    swap_us: u64,
    reproject: Duration,
    reload_call: Duration,
    /// The re-projection notice's length.
    notice_bytes: usize,
}

fn run(n: u64) -> anyhow::Result<Run> {
    let fixture = Fixture::new(&format!("higher_scale_{n}"), &plugin(n, 0));
    let keep = TempDir::new("higher_scale_libs");
    let config = fixture.build_config(false)?;
    let v1_lib = build_copy(&config, keep.path(), "v1.so")?;
    fixture.write("src/lib.rs", &plugin(n, 1));
    let v2_lib = build_copy(&config, keep.path(), "v2.so")?;

    let (tx, rx) = channel();
    let zeros = || (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
    let sink = Arc::new(Counting {
        count: zeros(),
        last: zeros(),
        version: zeros(),
        stray: AtomicU64::new(0),
        tx: Mutex::new(tx),
    });
    let before = host_threads();
    let rss_before = rss_bytes();
    let mut reloader = Reloader::new(config, sink.clone(), PanicPolicy::Drop)?;
    let (clock, time) = host::clock::Clock::virtual_clock();
    reloader.runtime().set_clock(clock);
    let Outcome::Loaded { version: v1 } = reloader.load_built(&v1_lib, 0) else {
        anyhow::bail!("v1 did not load: {:?}", events(&rx));
    };
    assert!(time.settle(SETTLE), "settled with {n} inner subscriptions");
    // Every inner interval's first value comes at once.
    sink.check(1, 0, v1);
    let rss_live = rss_bytes();
    let live = host_threads();
    time.advance(Duration::from_millis(PERIOD_MS));
    assert!(time.settle(SETTLE));
    sink.check(2, 10, v1);

    let started = Instant::now();
    let Outcome::Loaded { version: v2 } = reloader.load_built(&v2_lib, 0) else {
        anyhow::bail!("v2 did not load: {:?}", events(&rx));
    };
    let reload_call = started.elapsed();
    assert!(time.settle(SETTLE));
    let told = events(&rx);
    let (at, reload) = told
        .iter()
        .find(|(_, e)| matches!(e, HostEvent::Reload { .. }))
        .expect("a reload event");
    let (swapped, reset, added, removed) = reload_fields(reload);
    assert!(
        reset.is_empty() && added.is_empty() && removed.is_empty(),
        "{reload:?}"
    );
    let HostEvent::Reload {
        load_ms,
        swap_us,
        tracks,
        ..
    } = reload
    else {
        unreachable!("matched above")
    };
    // Each live subscription's `map` is swapped: counted in the reload when the pipeline's
    // thread re-projected them before it was reported (`PREPARE_WAIT`), or else told in a
    // notice once the thread took the code. Either way, all of them.
    let registered = tracks.iter().filter(|t| !t.path.contains(":inner")).count();
    let in_reload = swapped - registered;
    let notice = told.iter().find_map(|(t, e)| match e {
        HostEvent::Notice { message, .. } => Some((t, message)),
        _ => None,
    });
    let in_notice = notice.map_or(0, |(_, m)| m.matches(": swapped").count());
    assert_eq!(
        in_reload + in_notice,
        n as usize,
        "{} in the reload, {} in a notice",
        in_reload,
        in_notice
    );
    // The re-projection's time: inside the reload call when it was prepared, else from
    // the reload event to the notice.
    let reproject = match notice {
        Some((done, _)) => done.saturating_duration_since(*at),
        None => reload_call,
    };
    let notice_bytes = notice.map_or(0, |(_, m)| m.len());
    // The count goes on through the new code: i = 2, + 1.
    time.advance(Duration::from_millis(PERIOD_MS));
    assert!(time.settle(SETTLE));
    sink.check(3, 21, v2);

    drop(reloader);
    let after = host_threads_after_stop();
    let errors: Vec<HostEvent> = events(&rx)
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| matches!(e, HostEvent::Error { .. }))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    Ok(Run {
        n,
        threads: (before, live, after),
        rss_per_inner: rss_live.saturating_sub(rss_before) as f64 / n as f64,
        load_ms: *load_ms,
        swap_us: *swap_us,
        reproject,
        reload_call,
        notice_bytes,
    })
}

/// 1,000 then 10,000 live inner intervals: every one emits once a period, before and after
/// a reload that swaps them all; the host's thread count is the same for both (one thread
/// for the pipeline, whatever the number of inner subscriptions) and back to where it was
/// once the host is gone; the memory per inner subscription stays within a generous bound.
#[test]
fn ten_thousand_inner_intervals_run_on_a_fixed_number_of_threads() -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for n in [1_000, 10_000] {
        let r = run(n)?;
        eprintln!(
            "{n} inner subscriptions: threads before/live/after {:?}, {:.0} bytes of RSS each, \
             reload: load {} ms, swap {} us, re-projection on the pipeline thread {:?} \
             (prepared inside the reload call, or from the reload event to its notice; a notice of {} bytes), load_built call {:?}",
            r.threads,
            r.rss_per_inner,
            r.load_ms,
            r.swap_us,
            r.reproject,
            r.notice_bytes,
            r.reload_call
        );
        runs.push(r);
    }
    for r in &runs {
        let (before, live, after) = &r.threads;
        assert!(before.is_empty(), "{before:?}");
        assert!(
            live.len() <= 4,
            "{} inner subscriptions ran on {live:?}",
            r.n
        );
        assert!(
            after.is_empty(),
            "left after the host with {} inners: {after:?}",
            r.n
        );
        assert!(
            r.rss_per_inner < 16.0 * 1024.0,
            "{} bytes per inner subscription",
            r.rss_per_inner
        );
    }
    assert_eq!(
        runs[0].threads.1, runs[1].threads.1,
        "the host's threads do not depend on the number of inner subscriptions"
    );
    Ok(())
}

//! Reloads while values flow at millions a second through a stateful pipeline: nothing lost,
//! nothing delivered twice, no deadlock, and what each value ran through is checked from
//! outside the code under test. Two libraries alternate; each one's code tags what it
//! processes (`TAG`), and the state counts how often the tag of consecutive values changed.
//! The tags and that count are compared with the order of the reload events on the channel
//! the host reports to. Two runs: the batch path (`range`, [`host::runtime::Driver::push`])
//! and the push path (`push_one`, what `interval_ms` uses), the latter driven by the test at
//! full speed through a second driver on the pipeline's publisher. (The soak, which
//! measures this process's memory, has a file of its own.)

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use host::events::{EventSink, HostEvent};
use host::reloader::{Outcome, Reloader};
use host::runtime::PanicPolicy;
use host::testkit::{Fixture, TempDir};
use integration_tests::build_copy;

/// How many values lie between two checkpoints (emissions).
const STEP: u64 = 1 << 18;

/// How many reloads follow the first load.
const RELOADS: u64 = 50;

/// The least rate, in values a second, the pipeline must sustain while reloading.
const MIN_RATE: f64 = 1_000_000.0;

/// `SOURCE` is the pipeline's source and `FIRST` its first value that counts; `TAG` is 1 in
/// library a and 2 in library b.
const LOAD: &str = r#"
use plugin_api::prelude::*;

const TAG: u64 = 1;

state! {
    #[derive(Clone, Debug)]
    pub struct Tally { pub count: u64, pub sum: u64, pub tag: u64, pub switches: u64, pub fresh: u64 }
}

fn register(p: &mut Plugin) {
    p.pipeline("load", SOURCE)
        .filter(|n: &u64| *n >= FIRST)
        .map(|n: u64| (n, TAG))
        .scan(
            Tally { count: 0, sum: 0, tag: 0, switches: 0, fresh: 0 },
            |mut t: Tally, (n, tag): (u64, u64)| {
                t.count += 1;
                t.sum = t.sum.wrapping_add(n);
                t.fresh = 0;
                if t.tag != tag {
                    t.switches += 1;
                    t.tag = tag;
                    t.fresh = 1;
                }
                t
            },
        )
        .filter(|t: &Tally| t.count % (1 << 18) == 0 || t.fresh == 1)
        .log();
}

plugin_api::export_plugin!(register);
"#;

/// A checkpoint: `Tally { count, sum, tag, switches, fresh }` as the plugin printed it. One
/// is logged every [`STEP`] values, and at the first value a version's code ran (`fresh`),
/// so a version's first value shows up in the event order the instant it is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tally {
    count: u64,
    sum: u64,
    tag: u64,
    switches: u64,
    fresh: u64,
}

fn tally(text: &str) -> Tally {
    let field = |name: &str| -> u64 {
        let at = text
            .find(&format!("{name}: "))
            .unwrap_or_else(|| panic!("{name} in {text}"))
            + name.len()
            + 2;
        let digits: String = text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().expect("a number")
    };
    Tally {
        count: field("count"),
        sum: field("sum"),
        tag: field("tag"),
        switches: field("switches"),
        fresh: field("fresh"),
    }
}

/// The tag of version `v`'s code: odd versions load library a (tag 1), even ones b (tag 2).
fn tag_of(version: u64) -> u64 {
    if version % 2 == 1 { 1 } else { 2 }
}

/// Both libraries of a run, built from `source`, counting values from `first` on.
fn libraries(
    name: &str,
    source: &str,
    first: u64,
    keep: &TempDir,
) -> anyhow::Result<(Fixture, [PathBuf; 2])> {
    let fixture = Fixture::new(
        name,
        &LOAD
            .replace("SOURCE", source)
            .replace("FIRST", &format!("{first}u64")),
    );
    let config = fixture.build_config(false)?;
    let a = build_copy(&config, keep.path(), "liba.so")?;
    fixture.edit("src/lib.rs", "const TAG: u64 = 1;", "const TAG: u64 = 2;");
    let b = build_copy(&config, keep.path(), "libb.so")?;
    Ok((fixture, [a, b]))
}

/// What the events of one run said, in the order they arrived.
#[derive(Debug, Default)]
struct Seen {
    /// The first value that counts (values are `first`, `first + 1`, ...).
    first: u64,
    /// (version, checkpoint), in arrival order.
    checkpoints: Vec<(u64, Tally)>,
    /// Versions whose `loaded` / `reload` event has arrived, in order.
    reported: Vec<u64>,
}

impl Seen {
    /// Reads events until a [`STEP`] checkpoint of `version` arrives (so each version carries
    /// load for a while); checks each event as it comes:
    /// a checkpoint's version was reported before it (the report comes before any value of
    /// its version), versions never go back, and the code's own tag is the tag of the
    /// version the host says ran it.
    fn until_checkpoint_of(
        &mut self,
        rx: &Receiver<HostEvent>,
        version: u64,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = rx.recv_timeout(left).map_err(|_| {
                anyhow::anyhow!("no checkpoint from v{version} within 60 s (deadlock?)")
            })?;
            match e {
                HostEvent::Loaded { version: v, .. } => self.reported.push(v),
                HostEvent::Reload {
                    version: v, resets, ..
                } => {
                    assert!(
                        resets.is_empty(),
                        "a same-signature reload reset: {resets:?}"
                    );
                    self.reported.push(v);
                }
                HostEvent::Emission {
                    version: v, value, ..
                } => {
                    let t = tally(&value);
                    assert!(
                        self.reported.contains(&v),
                        "a value of v{v} before its reload was reported ({:?})",
                        self.reported
                    );
                    if let Some((last, _)) = self.checkpoints.last() {
                        assert!(*last <= v, "v{v} after v{last}");
                    }
                    assert_eq!(t.tag, tag_of(v), "v{v} ran another version's code: {t:?}");
                    self.checkpoints.push((v, t));
                    if v == version && t.fresh == 0 {
                        return Ok(());
                    }
                }
                HostEvent::Error { message, .. } => panic!("error under load: {message}"),
                _ => {}
            }
        }
    }

    /// Checks the run as a whole.
    fn check(&self, rate: f64) {
        assert_eq!(
            self.reported,
            (1..=RELOADS + 1).collect::<Vec<_>>(),
            "every load reported once, in order"
        );
        let (mut last, mut previous_step) = (0, 0);
        for (version, t) in &self.checkpoints {
            assert!(t.count > last, "a checkpoint repeated at v{version}: {t:?}");
            last = t.count;
            if t.count % STEP == 0 {
                assert_eq!(
                    t.count,
                    previous_step + STEP,
                    "a checkpoint lost before v{version}"
                );
                previous_step = t.count;
            } else {
                assert!(t.fresh == 1 && t.count < previous_step + STEP, "{t:?}");
            }
            let model = (u128::from(t.count) * u128::from(self.first)
                + u128::from(t.count) * u128::from(t.count - 1) / 2) as u64;
            assert_eq!(
                t.sum, model,
                "values lost or delivered twice before {}",
                t.count
            );
            // The tag changed once at the first value (from the seed's 0) and once at every
            // version, since the test loads the next version only after the current one ran:
            // a value run by the wrong code, or a version skipped, changes the count.
            assert_eq!(
                t.switches, *version,
                "v{version}: {} code changes seen by the state",
                t.switches
            );
        }
        let fresh: Vec<u64> = self
            .checkpoints
            .iter()
            .filter(|(_, t)| t.fresh == 1)
            .map(|(v, _)| *v)
            .collect();
        assert_eq!(
            fresh,
            (1..=RELOADS + 1).collect::<Vec<_>>(),
            "the driver ran every version, once each, in order"
        );
        assert!(
            rate >= MIN_RATE,
            "{rate:.0} values a second under reloads, expected at least {MIN_RATE}"
        );
    }
}

/// Loads `libs` alternately, each only after the previous version produced a checkpoint;
/// returns what was seen and the rate (values a second) from the first load to the end.
fn run(
    reloader: &mut Reloader,
    rx: &Receiver<HostEvent>,
    libs: &[PathBuf; 2],
    first: u64,
    after_first_load: impl FnOnce(&mut Reloader),
) -> anyhow::Result<(Seen, f64)> {
    let mut seen = Seen {
        first,
        ..Seen::default()
    };
    let started = Instant::now();
    assert_eq!(
        reloader.load_built(&libs[0], 0),
        Outcome::Loaded { version: 1 }
    );
    after_first_load(reloader);
    seen.until_checkpoint_of(rx, 1)?;
    for version in 2..=RELOADS + 1 {
        let lib = &libs[usize::from(tag_of(version) == 2)];
        assert_eq!(reloader.load_built(lib, 0), Outcome::Loaded { version });
        seen.until_checkpoint_of(rx, version)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let values = seen
        .checkpoints
        .iter()
        .map(|(_, t)| t.count)
        .max()
        .unwrap_or(0);
    let rate = values as f64 / elapsed;
    eprintln!(
        "{} reloads, {values} values in {elapsed:.2} s: {:.1} M values a second",
        RELOADS,
        rate / 1e6
    );
    Ok((seen, rate))
}

/// Forwards events to a channel; holds each `reload` report until one more emission has gone
/// through. Code committed before its report would emit its first value's checkpoint at once
/// (the filter logs it), and that checkpoint would reach the channel ahead of the report;
/// code committed after it cannot emit before the report is let through. So a commit ahead of
/// the report is caught whatever the scheduler does, on both paths (every event, the source
/// thread's and the test driver's emissions too, goes through this sink).
struct HoldReports {
    tx: Sender<HostEvent>,
    emissions: AtomicU64,
}

impl HoldReports {
    fn new(tx: Sender<HostEvent>) -> HoldReports {
        HoldReports {
            tx,
            emissions: AtomicU64::new(0),
        }
    }
}

impl EventSink for HoldReports {
    fn event(&self, event: HostEvent) {
        if matches!(event, HostEvent::Reload { .. }) {
            let from = self.emissions.load(Ordering::Acquire);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.emissions.load(Ordering::Acquire) == from && Instant::now() < deadline {
                std::thread::yield_now();
            }
        }
        let emission = matches!(event, HostEvent::Emission { .. });
        let _ = self.tx.send(event);
        if emission {
            self.emissions.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The batch path: a `range` source pushes 1024 values a call while 50 reloads happen; each
/// report is held until the source thread emitted once more ([`HoldReports`]).
#[test]
fn fifty_reloads_under_load_on_the_batch_path() -> anyhow::Result<()> {
    let keep = TempDir::new("under-load-batch-libs");
    let (fixture, libs) = libraries("under_load_batch", "range(0, 1 << 40)", 0, &keep)?;
    let (tx, rx) = channel();
    let mut reloader = Reloader::new(
        fixture.build_config(false)?,
        Arc::new(HoldReports::new(tx)),
        PanicPolicy::Drop,
    )?;
    let (seen, rate) = run(&mut reloader, &rx, &libs, 0, |_| {})?;
    drop(reloader);
    seen.check(rate);
    Ok(())
}

/// The push path: the pipeline's own interval ticks once an hour (its first tick, 0, is
/// filtered out), and a thread of the test
/// pushes values one at a time, as fast as it can, through a driver of its own on the
/// pipeline's publisher while 50 reloads happen. Its emissions go through the reloader's sink,
/// so event order compares the two; each report is held until the pusher emitted once more
/// ([`HoldReports`]).
#[test]
fn fifty_reloads_under_load_on_the_push_one_path() -> anyhow::Result<()> {
    let keep = TempDir::new("under-load-push-libs");
    let (fixture, libs) = libraries("under_load_push", "interval_ms(3_600_000)", 1, &keep)?;
    let (tx, rx) = channel();
    let sink = Arc::new(HoldReports::new(tx));
    let mut reloader = Reloader::new(
        fixture.build_config(false)?,
        sink.clone(),
        PanicPolicy::Drop,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut pusher = None;
    // The pipeline's own thread pushes 0 at its first tick: the filter keeps it out, and the
    // test's values start at 1.
    let (seen, rate) = run(&mut reloader, &rx, &libs, 1, |reloader| {
        let publisher = reloader.runtime().publisher("load").expect("load runs");
        let stop = stop.clone();
        pusher = Some(std::thread::spawn(move || -> Result<u64, String> {
            let mut driver = publisher.driver(sink)?;
            let mut n = 1u64;
            while !stop.load(Ordering::Relaxed) {
                driver.push_one(n)?;
                n += 1;
            }
            Ok(n)
        }));
    })?;
    stop.store(true, Ordering::Relaxed);
    let pushed = pusher
        .expect("the pusher started")
        .join()
        .expect("the pusher did not panic")
        .map_err(anyhow::Error::msg)?;
    drop(reloader);
    eprintln!("pushed {pushed} values one at a time");
    seen.check(rate);
    Ok(())
}

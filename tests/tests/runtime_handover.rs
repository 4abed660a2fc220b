//! The hand-over from one version to the next on the emitting side: what a source thread
//! runs and keeps is what the reload reported, whatever the timing. These tests drive a
//! pipeline's `Driver` by hand (a second driver on the pipeline's publisher, whose pushes the
//! test decides), so "the driver did not emit between two reloads" is a fact, not a race.

use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::Duration;

use host::events::{ChannelSink, HostEvent};
use host::loader::Loader;
use host::reloader::Outcome;
use host::runtime::{Ended, PanicPolicy, Publisher, Runtime, spawn_source_thread};
use host::testkit::{Fixture, Harness, TempDir};
use integration_tests::{
    build_copy, channel_reloader, next_matching, reload_fields, reload_version,
};

/// A counter that ticks once (at start) and then not for an hour: the runtime's own thread
/// stays out of the way, and the test's driver decides when values flow.
const SLOW_COUNTER: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("counter", interval_ms(3_600_000))
        .map(|_n: u64| 1u64)
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .log();
}

plugin_api::export_plugin!(register);
"#;

const WAIT: Duration = Duration::from_secs(30);

/// The emission (version, value) a manual push produced.
fn emitted(rx: &std::sync::mpsc::Receiver<HostEvent>) -> anyhow::Result<(u64, String)> {
    match next_matching(rx, WAIT, |e| matches!(e, HostEvent::Emission { .. }))? {
        HostEvent::Emission { version, value, .. } => Ok((version, value)),
        _ => unreachable!(),
    }
}

/// Issue: a seed edited 0 -> 100 -> 0 between two emissions was reported as two resets while
/// the driver, comparing only the code it last ran with the newest, kept the state. What the
/// driver does must be what the report says.
#[test]
fn a_driver_that_skips_versions_does_what_each_report_said() -> anyhow::Result<()> {
    let fixture = Fixture::new("handover_skip", SLOW_COUNTER);
    let config = fixture.build_config(false)?;
    let keep = TempDir::new("handover-skip-libs");
    let seed0 = build_copy(&config, keep.path(), "lib0.so")?;
    fixture.edit("src/lib.rs", "scan(0u64", "scan(100u64");
    let seed100 = build_copy(&config, keep.path(), "lib100.so")?;

    let (mut reloader, rx) = channel_reloader(config)?;
    assert_eq!(
        reloader.load_built(&seed0, 0),
        Outcome::Loaded { version: 1 }
    );
    let publisher = reloader
        .runtime()
        .publisher("counter")
        .expect("counter runs");
    let (tx, mine) = channel();
    let mut driver = publisher
        .driver(Arc::new(ChannelSink(tx)))
        .map_err(anyhow::Error::msg)?;
    driver.push_one(0).map_err(anyhow::Error::msg)?;
    assert_eq!(emitted(&mine)?, (1, "1".to_owned()));

    // Two reloads, each reporting the scan's state reset, with no emission in between.
    let reset_scan = |rx: &std::sync::mpsc::Receiver<HostEvent>| -> anyhow::Result<Vec<String>> {
        let e = next_matching(rx, WAIT, |e| matches!(e, HostEvent::Reload { .. }))?;
        Ok(reload_fields(&e).1)
    };
    assert_eq!(
        reloader.load_built(&seed100, 0),
        Outcome::Loaded { version: 2 }
    );
    let resets = reset_scan(&rx)?;
    assert!(
        resets.iter().any(|r| r.starts_with("counter|1:scan")),
        "{resets:?}"
    );
    assert_eq!(
        reloader.load_built(&seed0, 0),
        Outcome::Loaded { version: 3 }
    );
    let resets = reset_scan(&rx)?;
    assert!(
        resets.iter().any(|r| r.starts_with("counter|1:scan")),
        "{resets:?}"
    );

    // The report said reset: the total starts again from v3's seed (0), not from the kept 1.
    driver.push_one(1).map_err(anyhow::Error::msg)?;
    assert_eq!(emitted(&mine)?, (3, "1".to_owned()));

    // A reload that reports the scan swapped keeps it.
    assert_eq!(
        reloader.load_built(&seed0, 0),
        Outcome::Loaded { version: 4 }
    );
    assert!(reset_scan(&rx)?.is_empty());
    driver.push_one(2).map_err(anyhow::Error::msg)?;
    assert_eq!(emitted(&mine)?, (4, "2".to_owned()));
    Ok(())
}

/// Issue: staged code was stored where the driver reads, so a driver that had not yet acted
/// on the previous generation bump ran version N+1 before `reload vN+1` was reported.
#[test]
fn staged_code_never_runs_before_it_is_committed() -> anyhow::Result<()> {
    let fixture = Fixture::new("handover_staged", SLOW_COUNTER);
    let config = fixture.build_config(false)?;
    let keep = TempDir::new("handover-staged-libs");
    let lib = build_copy(&config, keep.path(), "lib.so")?;

    let loader = Loader::new()?;
    let mut recorder = hmr_track_recorder();
    let mut code = |version: u64| -> anyhow::Result<host::code::PipelineCode> {
        let (lib, _) = loader.load(&lib, version)?;
        let (_, mut codes) =
            host::register::register(&lib, &mut recorder, host::register::REGISTER_DEADLINE)?;
        Ok(codes.remove(0))
    };
    let (tx, _events) = channel();
    let mut runtime = Runtime::new(Arc::new(ChannelSink(tx)), PanicPolicy::Drop);
    runtime.publish(code(1)?);
    assert!(runtime.launch().is_empty());
    let publisher = runtime.publisher("counter").expect("counter runs");
    let (tx, mine) = channel();
    let mut driver = publisher
        .driver(Arc::new(ChannelSink(tx)))
        .map_err(anyhow::Error::msg)?;

    runtime.publish(code(2)?);
    assert!(runtime.launch().is_empty());
    // Version 3 is staged (its reload not reported yet) while the driver has not yet acted
    // on version 2's commit.
    runtime.publish(code(3)?);
    driver.push_one(0).map_err(anyhow::Error::msg)?;
    assert_eq!(emitted(&mine)?.0, 2, "staged code ran before its commit");
    assert!(runtime.launch().is_empty());
    driver.push_one(1).map_err(anyhow::Error::msg)?;
    assert_eq!(emitted(&mine)?.0, 3);
    Ok(())
}

fn hmr_track_recorder() -> hmr_track::Recorder {
    hmr_track::Recorder::without_log()
}

fn failing_spawner(
    _name: String,
    _body: Box<dyn FnOnce() + Send>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    Err(std::io::Error::other("no threads left (planted)"))
}

/// Issue: when a source thread could not be started, the pipeline still read as running and
/// every later reload "swapped" it. It must be reported, and started by the next reload.
#[test]
fn a_pipeline_whose_thread_cannot_start_is_reported_and_retried() -> anyhow::Result<()> {
    let fixture = Fixture::new("handover_spawn", SLOW_COUNTER);
    let config = fixture.build_config(false)?;
    let keep = TempDir::new("handover-spawn-libs");
    let lib = build_copy(&config, keep.path(), "lib.so")?;

    let (mut reloader, rx) = channel_reloader(config)?;
    reloader.runtime().set_spawner(failing_spawner);
    assert_eq!(reloader.load_built(&lib, 0), Outcome::Loaded { version: 1 });
    let error = next_matching(&rx, WAIT, |e| matches!(e, HostEvent::Error { .. }))?;
    let HostEvent::Error {
        pipeline, message, ..
    } = &error
    else {
        unreachable!()
    };
    assert_eq!(pipeline, "counter");
    assert!(
        message.contains("cannot start the source thread of counter")
            && message.contains("planted"),
        "{message}"
    );
    assert_eq!(reloader.runtime().status()["counter"], Ended::NotStarted);

    reloader.runtime().set_spawner(spawn_source_thread);
    assert_eq!(reloader.load_built(&lib, 0), Outcome::Loaded { version: 2 });
    let reload = next_matching(&rx, WAIT, |e| matches!(e, HostEvent::Reload { .. }))?;
    let HostEvent::Reload {
        restarts, swapped, ..
    } = &reload
    else {
        unreachable!()
    };
    assert_eq!(restarts.len(), 1, "{reload:?}");
    assert_eq!(restarts[0].pipeline, "counter");
    assert_eq!(restarts[0].reason, "its thread could not be started");
    assert_eq!(*swapped, 0, "{reload:?}");
    // The runtime's own thread now runs it: its first tick is immediate.
    let emission = next_matching(&rx, WAIT, |e| matches!(e, HostEvent::Emission { .. }))?;
    assert!(
        matches!(&emission, HostEvent::Emission { version: 2, pipeline, .. } if pipeline == "counter"),
        "{emission:?}"
    );
    Ok(())
}

/// A user function that never returns (here: blocks for good, which costs no CPU; a `loop {}`
/// is the same to the watchdog) is reported with its pipeline and operator path; the next
/// reload says the pipeline is stuck instead of swapped; the other pipelines run on.
#[test]
fn a_stuck_user_function_is_reported_and_not_called_swapped() -> anyhow::Result<()> {
    let fixture = Fixture::new("handover_stuck", integration_tests::STUCK);
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    let stuck = host.wait_for("a stuck event", WAIT, |e| {
        matches!(e, HostEvent::Stuck { .. })
    })?;
    let HostEvent::Stuck {
        pipeline,
        path,
        seconds,
        retired,
    } = &stuck
    else {
        unreachable!()
    };
    assert_eq!((pipeline.as_str(), path.as_str()), ("spin", "spin|0:map"));
    assert!(*seconds >= host::runtime::STUCK_AFTER.as_secs_f64());
    assert!(!retired);

    fixture.edit("src/lib.rs", "n + 1", "n + 2");
    let reload = host.wait_reload()?;
    let HostEvent::Reload { stuck, swapped, .. } = &reload else {
        unreachable!()
    };
    assert_eq!(stuck, &vec!["spin".to_owned()], "{reload:?}");
    // `ok` (pipeline, map, log) swapped; none of `spin`'s tracks.
    assert_eq!(*swapped, 3, "{reload:?}");
    let version = reload_version(&reload);
    host.wait_emission_from("ok", version)?;
    // A rebuild later (many of the watchdog's 100 ms looks), still the one report.
    host.drain();
    let reports = host
        .history()
        .iter()
        .filter(|e| matches!(e, HostEvent::Stuck { pipeline, .. } if pipeline == "spin"))
        .count();
    assert_eq!(reports, 1, "reported once per call");
    Ok(())
}

/// Two versions whose subjects form no cycle each, but do across them: in v1 `a` reads `x`
/// (and ticks on its own) and publishes `y`, which `b` only logs; in v2 `a` publishes `z` and
/// `b` publishes what it reads to `x`. While a reload is half done (`a` still on v1, `b` on
/// v2) a value goes x -> a -> y -> b -> x -> a, which would lock `a`'s driver again on the
/// same thread.
const CROSS_VERSION_CYCLE: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("src", interval_ms(3_600_000)).publish("x");
    p.pipeline("a", subject::<u64>("x"))
        .merge(interval_ms(TICK))
        .map(|n: u64| n + 1)
        .publish("y");
    p.pipeline("b", subject::<u64>("y")).map(|n: u64| n * 10).log();
}

plugin_api::export_plugin!(register);
"#;

/// The codes of `src` and `a` in v1 and of `b` in v2 of [`CROSS_VERSION_CYCLE`], with `a`
/// ticking every `tick` ms on its own.
fn cross_version_codes(name: &str, tick: u64) -> anyhow::Result<Vec<host::code::PipelineCode>> {
    let fixture = Fixture::new(
        name,
        &CROSS_VERSION_CYCLE.replace("TICK", &tick.to_string()),
    );
    let config = fixture.build_config(false)?;
    let keep = TempDir::new("handover-cycle-libs");
    let v1 = build_copy(&config, keep.path(), "lib1.so")?;
    fixture.edit("src/lib.rs", ".publish(\"y\")", ".publish(\"z\")");
    fixture.edit("src/lib.rs", "map(|n: u64| n * 10).log()", "publish(\"x\")");
    let v2 = build_copy(&config, keep.path(), "lib2.so")?;

    let loader = Loader::new()?;
    let mut recorder = hmr_track_recorder();
    let mut codes = |lib: &std::path::Path, version: u64| {
        let (lib, _) = loader.load(lib, version)?;
        let (_, codes) =
            host::register::register(&lib, &mut recorder, host::register::REGISTER_DEADLINE)?;
        anyhow::Ok(
            codes
                .into_iter()
                .map(|c| (c.name.clone(), c))
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
    };
    let mut old = codes(&v1, 1)?;
    let mut new = codes(&v2, 2)?;
    Ok(vec![
        old.remove("src").expect("src"),
        old.remove("a").expect("a"),
        new.remove("b").expect("b"),
    ])
}

/// The first error on `events`: it must be `a`'s, naming subject `x` and the cycle.
fn assert_cycle_refused(events: &std::sync::mpsc::Receiver<HostEvent>) -> anyhow::Result<()> {
    let error = next_matching(events, WAIT, |e| matches!(e, HostEvent::Error { .. }))?;
    let HostEvent::Error {
        pipeline, message, ..
    } = &error
    else {
        unreachable!()
    };
    assert_eq!(pipeline, "a", "{error:?}");
    assert!(
        message.contains("subject \"x\"") && message.contains("a cycle through subjects"),
        "{message}"
    );
    Ok(())
}

/// The delivery refuses a value that would come back into a driver its thread is already
/// in (a cycle through subjects made of two versions), with an error naming the subject,
/// instead of deadlocking on the driver's lock; the rest of the delivery goes on. Here the
/// whole loop is deliveries on the publisher's thread (the test's drivers, by hand).
#[test]
fn a_cycle_through_subjects_across_versions_is_refused_not_deadlocked() -> anyhow::Result<()> {
    // `a` ticks once an hour: the test's push is the only value.
    let [src, a, b]: [host::code::PipelineCode; 3] =
        cross_version_codes("handover_cycle", 3_600_000)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("three codes"))?;
    let subjects = Arc::new(host::subjects::Subjects::default());
    let src = Publisher::with_subjects(src, subjects.clone());
    let a = Publisher::with_subjects(a, subjects.clone());
    let b = Publisher::with_subjects(b, subjects.clone());

    let (tx, events) = channel();
    let sink: host::events::Sink = Arc::new(ChannelSink(tx));
    let subscribe = |p: &Publisher, subject: &str| -> anyhow::Result<()> {
        let mut d = p.driver(sink.clone()).map_err(anyhow::Error::msg)?;
        d.start().map_err(anyhow::Error::msg)?;
        let d = Arc::new(host::runtime::SharedDriver::new(d));
        // SAFETY: every pipeline here reads and publishes `u64`s.
        unsafe {
            subjects
                .hub(subject)
                .subscribe_driver(0, d, PanicPolicy::Drop)
        }
        .map_err(anyhow::Error::msg)
    };
    subscribe(&a, "x")?;
    subscribe(&b, "y")?;
    let mut src = src.driver(sink.clone()).map_err(anyhow::Error::msg)?;

    // On its own thread: a deadlock fails the test by its timeout instead of hanging it.
    let (done_tx, done) = channel();
    std::thread::spawn(move || {
        let r = src.push_one(4).map(|p| format!("{p:?}"));
        let _ = done_tx.send(r);
    });
    let pushed = done
        .recv_timeout(WAIT)
        .map_err(|_| anyhow::anyhow!("the delivery did not return: a deadlock on a's lock"))?;
    assert_eq!(pushed.map_err(anyhow::Error::msg)?, "Continue");
    assert_cycle_refused(&events)
}

/// The same loop started by `a`'s own thread (its interval ticks): that thread holds `a`'s
/// lock while its value goes to `b` and comes back, and must be seen holding it. The
/// runtime runs the three pipelines, each on its thread.
#[test]
fn a_cycle_back_into_the_pipeline_thread_holding_the_lock_is_refused() -> anyhow::Result<()> {
    let (tx, events) = channel();
    let mut runtime = Runtime::new(Arc::new(ChannelSink(tx)), PanicPolicy::Drop);
    for code in cross_version_codes("handover_cycle_own", 5)? {
        runtime.publish(code);
    }
    assert!(runtime.launch().is_empty());
    assert_cycle_refused(&events)?;
    // And the pipelines run on: `a` ticks again, and is refused again (no deadlock).
    assert_cycle_refused(&events)?;
    runtime.stop_all();
    Ok(())
}

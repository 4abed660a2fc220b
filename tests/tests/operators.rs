//! Operators and the plugin's build settings on real builds: `scan_map` keeps its state
//! across reloads and resets it on a panic; a plugin built with `panic = "abort"` is refused.

use host::events::HostEvent;
use host::testkit::{Fixture, Harness};
use integration_tests::{COUNTER, assert_steps, reload_fields, reload_version, value};

/// `scan_map` accumulates in place (a `Vec` here) and emits what its closure returns; the
/// state survives a reload that changes the closure's body, and a panic in the closure
/// resets it to the seed, which the error says.
#[test]
fn scan_map_keeps_its_state_across_a_reload_and_a_panic_resets_it() -> anyhow::Result<()> {
    const SCAN_MAP: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("seen", interval_ms(5))
        .scan_map(Vec::<u64>::new(), |v: &mut Vec<u64>, n: u64| {
            v.push(n);
            v.len() as u64 * 1
        })
        .log();
}

plugin_api::export_plugin!(register);
"#;
    let fixture = Fixture::new("scan_map_reload", SCAN_MAP);
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    host.wait_emission("seen", |v| value(v) >= 3)?;

    fixture.edit("src/lib.rs", "v.len() as u64 * 1", "v.len() as u64 * 1000");
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (swapped, reset, _, _) = reload_fields(&reload);
    assert!(reset.is_empty(), "{reset:?}");
    // The pipeline, its `scan_map` and its `log`.
    assert_eq!(swapped, 3, "{reload:?}");
    host.wait_emission_from("seen", v2)?;
    host.wait_emission("seen", |_| true)?;
    // The k-th value is the vector's length k: times 1 under v1, 1000 under v2. Nothing
    // was lost or reset by the reload.
    let emissions = host.emissions("seen");
    for (k, (version, v)) in emissions.iter().enumerate() {
        let times = if *version == v1 { 1 } else { 1000 };
        assert_eq!(
            value(v),
            (k as i64 + 1) * times,
            "value {k} (v{version}) in {emissions:?}"
        );
    }

    // Now a panic on every tenth length, after the push: the half-updated vector is dropped
    // and the state starts again from the seed (empty).
    fixture.edit(
        "src/lib.rs",
        "v.len() as u64 * 1000",
        r#"{ assert!(v.len() % 10 != 0, "full at {}", v.len()); v.len() as u64 * 7 }"#,
    );
    let v3 = reload_version(&host.wait_reload()?);
    let error = host.wait_for("the panic", host::testkit::EMISSION_TIMEOUT, |e| {
        matches!(e, HostEvent::Error { .. })
    })?;
    let HostEvent::Error { path, message, .. } = error else {
        unreachable!()
    };
    assert_eq!(path, "seen|0:scan_map");
    assert!(
        message.starts_with("full at ") && message.ends_with(" (its state was reset to the seed)"),
        "{message}"
    );
    let (version, first) = host.wait_emission("seen", |_| true)?;
    assert_eq!(
        (version, value(&first)),
        (v3, 7),
        "length 1 again, after the reset"
    );
    host.stop();
    Ok(())
}

/// A plugin whose profile sets `panic = "abort"` could kill the host with any panic: it is
/// refused with a message naming the panic strategy, before any of its code runs, and the
/// old version keeps running. Building it does not spoil the shared fixture target dir: the
/// next normal build loads, with the state kept.
#[test]
fn a_plugin_built_with_panic_abort_is_refused() -> anyhow::Result<()> {
    let fixture = Fixture::new("panic_abort", COUNTER);
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    host.wait_emission("counter", |v| value(v) >= 2)?;

    fixture.edit(
        "Cargo.toml",
        "debug = false",
        "debug = false\npanic = \"abort\"",
    );
    match host.wait_outcome()? {
        HostEvent::LoadFailed { error } => {
            assert!(
                error.contains("was built with panic strategy `abort`"),
                "{error}"
            );
            assert!(error.contains("would abort the host"), "{error}");
        }
        other => panic!("expected load-failed, got {other:?}"),
    }
    for _ in 0..2 {
        let (v, _) = host.wait_emission("counter", |_| true)?;
        assert_eq!(v, v1, "the last good version keeps emitting");
    }

    fixture.edit(
        "Cargo.toml",
        "debug = false\npanic = \"abort\"",
        "debug = false",
    );
    fixture.edit("src/lib.rs", "1u64", "7u64");
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (_, reset, _, _) = reload_fields(&reload);
    assert!(reset.is_empty(), "{reset:?}");
    host.wait_emission_from("counter", v2)?;
    assert_steps(
        &host.emissions("counter"),
        0,
        |v| if v == v1 { 1 } else { 7 },
    );
    host.stop();
    Ok(())
}

/// The rxRust operator set on a real build. The host runs the start entry point once when it
/// starts a pipeline's source: `start_with`'s value comes first, and a `take` full at the
/// start completes the pipeline before its source produced anything. The
/// completion-time emitters emit when the source completes. A `distinct`'s set survives a
/// reload that edits the code before it: the new version passes only values never seen.
#[test]
fn the_operator_set_runs_on_a_real_build_and_keeps_its_state() -> anyhow::Result<()> {
    const OPS: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("firsts", range(0, 3)).start_with(100).log();
    p.pipeline("started", interval_ms(3_600_000)).start_with(7).take(1).log();
    p.pipeline("tail", range(0, 10)).map(|n: u64| n % 4).distinct().take_last(2).log();
    p.pipeline("seen", interval_ms(2)).map(|n: u64| n % 4 * 1).distinct().log();
    p.pipeline("clock", interval_ms(2)).log();
}

plugin_api::export_plugin!(register);
"#;
    let fixture = Fixture::new("operator_set", OPS);
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    // Each completed pipeline and the number of source values it took.
    let mut completed = std::collections::BTreeMap::new();
    host.wait_for("three completions", host::testkit::EMISSION_TIMEOUT, |e| {
        if let HostEvent::Completed {
            pipeline,
            emissions,
            ..
        } = e
        {
            completed.insert(pipeline.clone(), *emissions);
        }
        completed.len() == 3
    })?;
    let taken: Vec<(&str, u64)> = completed.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    assert_eq!(taken, [("firsts", 3), ("started", 0), ("tail", 10)]);
    let values = |host: &Harness, pipeline: &str, version: u64| -> Vec<String> {
        host.emissions(pipeline)
            .into_iter()
            .filter(|(v, _)| *v == version)
            .map(|(_, value)| value)
            .collect()
    };
    assert_eq!(values(&host, "firsts", v1), ["100", "0", "1", "2"]);
    assert_eq!(values(&host, "started", v1), ["7"]);
    assert_eq!(values(&host, "tail", v1), ["2", "3"]);

    host.wait_emission("seen", |v| v == "3")?;
    fixture.edit("src/lib.rs", "n % 4 * 1", "n % 8 * 1");
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (_, reset, _, _) = reload_fields(&reload);
    assert!(reset.is_empty(), "{reset:?}");
    for _ in 0..4 {
        host.wait_emission("seen", |_| true)?;
    }
    // Then 50 ticks of v2 on an interval of the same period: `seen`'s interval has gone
    // round `n % 8` several times, so a set lost at the swap would have let 0 to 3 through
    // again (its first four values alone are 4 to 7 one time in eight).
    while host
        .emissions("clock")
        .iter()
        .filter(|(v, _)| *v == v2)
        .count()
        < 50
    {
        host.wait_emission("clock", |_| true)?;
    }
    host.drain();
    let seen = host.emissions("seen");
    let (old, new): (Vec<_>, Vec<_>) = seen.iter().partition(|(v, _)| *v == v1);
    assert!(new.iter().all(|(v, _)| *v == v2), "{seen:?}");
    let old: Vec<i64> = old.iter().map(|(_, x)| value(x)).collect();
    let mut new: Vec<i64> = new.iter().map(|(_, x)| value(x)).collect();
    assert_eq!(old, [0, 1, 2, 3], "{seen:?}");
    new.sort_unstable();
    assert_eq!(
        new,
        [4, 5, 6, 7],
        "only values the set had not seen: {seen:?}"
    );
    host.stop();
    Ok(())
}

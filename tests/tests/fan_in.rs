//! Fan-in operators on real builds: each one's state (host slots) across a reload that edits
//! code around it, and a change of an inner stream's source. A `zip` with values queued is
//! covered by `streams.rs` (`a_zip_keeps_its_queue_across_a_reload`).

use host::events::HostEvent;
use host::testkit::{EMISSION_TIMEOUT, Fixture, Harness};
use integration_tests::{plugin, reload_fields, reload_version, value};

/// What version 2 adds to every value, so its emissions are told apart.
const V2: i64 = 500_000;

/// The emissions of `pipeline` as numbers, v2's extra taken off, then `tick` of each: they
/// must count up by one, across the reload too (an interval's tick lost, repeated or counted
/// again from 0 at the swap shows here).
fn assert_ticks_in_order(host: &Harness, pipeline: &str, v2: u64, tick: impl Fn(i64) -> i64) {
    let ticks: Vec<(u64, i64)> = host
        .emissions(pipeline)
        .into_iter()
        .map(|(version, x)| {
            let x = value(&x) - if version == v2 { V2 } else { 0 };
            (version, tick(x))
        })
        .collect();
    assert!(
        ticks.windows(2).all(|w| w[1].1 == w[0].1 + 1),
        "{pipeline}: ticks out of step (version, tick): {ticks:?}"
    );
    assert!(
        ticks.iter().filter(|(v, _)| *v == v2).count() >= 3,
        "{pipeline}: {ticks:?}"
    );
}

/// The position in the harness's history of the first event `pred` accepts.
fn position(host: &Harness, pred: impl Fn(&HostEvent) -> bool) -> Option<usize> {
    host.history().iter().position(pred)
}

/// A `combine_latest` keeps both latest values across a reload that edits its function. In
/// `left_kept` the left input (`range(2, 3)`) emitted 2 and completed before the reload, so
/// every value after it combines that 2 with a new tick; in `right_kept` the right input
/// (`range(7, 8)`) did. The first emission of the new code must combine the value from before
/// the reload: a forgotten one would leave nothing to combine, ever.
#[test]
fn combine_latest_keeps_both_latest_values_across_a_reload() -> anyhow::Result<()> {
    let source = |extra: i64| {
        plugin(&format!(
            r#"    p.pipeline("left_kept", range(2, 3))
        .combine_latest(interval_ms(20), |a: &u64, b: &u64| a * 1_000_000 + b + {extra})
        .log();
    p.pipeline("right_kept", interval_ms(20))
        .combine_latest(range(7, 8), |a: &u64, b: &u64| a * 1_000_000 + b + {extra})
        .log();"#
        ))
    };
    let fixture = Fixture::new("fan_in_combine_latest", &source(0));
    let mut host = Harness::start(&fixture.options())?;
    let (v1, tracks) = host.wait_loaded()?;
    let paths: Vec<&str> = tracks.iter().map(|t| t.path.as_str()).collect();
    assert!(paths.contains(&"left_kept|0:combine_latest"), "{paths:?}");
    host.wait_emission("left_kept", |v| value(v) >= 2_000_002)?;
    host.wait_emission("right_kept", |v| value(v) >= 2_000_007)?;
    fixture.write("src/lib.rs", &source(V2));
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (_, reset, added, removed) = reload_fields(&reload);
    assert!(
        reset.is_empty() && added.is_empty() && removed.is_empty(),
        "{reload:?}"
    );
    // left_kept: a * 1,000,000 + b with a = 2 from before the reload, b a tick after it.
    let first = value(&host.wait_emission_from("left_kept", v2)?) - V2;
    assert_eq!(first / 1_000_000, 2, "the left value 2 was kept: {first}");
    let last_v1 = host
        .emissions("left_kept")
        .iter()
        .filter(|(v, _)| *v == v1)
        .map(|(_, x)| value(x) % 1_000_000)
        .max()
        .expect("v1 emitted");
    assert!(
        first % 1_000_000 > last_v1,
        "a tick after the reload: {first}"
    );
    // right_kept: the right value 7 from before the reload, with a new tick.
    let first_right = value(&host.wait_emission_from("right_kept", v2)?) - V2;
    assert_eq!(
        first_right % 1_000_000,
        7,
        "the right value 7 was kept: {first_right}"
    );
    // Three ticks of v2 each, then every tick once, in order, from v1 into v2.
    host.wait_emission("left_kept", |v| value(v) >= V2 + first + 2)?;
    host.wait_emission("right_kept", |v| value(v) >= V2 + first_right + 2_000_000)?;
    for (version, x) in host.emissions("right_kept") {
        let x = value(&x) - if version == v2 { V2 } else { 0 };
        assert_eq!(x % 1_000_000, 7, "{x} (v{version})");
    }
    assert_ticks_in_order(&host, "left_kept", v2, |x| x % 1_000_000);
    assert_ticks_in_order(&host, "right_kept", v2, |x| x / 1_000_000);
    host.stop();
    Ok(())
}

/// A `with_latest_from` keeps its latest right value across a reload that edits its
/// function: the right input (`range(7, 8)`) emitted 7 and completed before the reload, so
/// the new code's first value pairs a new tick with that 7 (a forgotten one would drop every
/// tick from then on).
#[test]
fn with_latest_from_keeps_its_latest_right_value_across_a_reload() -> anyhow::Result<()> {
    let source = |extra: i64| {
        plugin(&format!(
            r#"    p.pipeline("w", interval_ms(20))
        .with_latest_from(range(7, 8), |a: u64, b: &u64| a * 1_000_000 + b + {extra})
        .log();"#
        ))
    };
    let fixture = Fixture::new("fan_in_with_latest_from", &source(0));
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    host.wait_emission("w", |v| value(v) >= 2_000_007)?;
    fixture.write("src/lib.rs", &source(V2));
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (_, reset, _, _) = reload_fields(&reload);
    assert!(reset.is_empty(), "{reload:?}");
    let first = value(&host.wait_emission_from("w", v2)?) - V2;
    assert_eq!(first % 1_000_000, 7, "the right value 7 was kept: {first}");
    host.wait_emission("w", |v| value(v) >= V2 + first + 2_000_000)?;
    for (version, x) in host.emissions("w") {
        let x = value(&x) - if version == v2 { V2 } else { 0 };
        assert_eq!(x % 1_000_000, 7, "{x} (v{version})");
    }
    assert_ticks_in_order(&host, "w", v2, |x| x / 1_000_000);
    host.stop();
    Ok(())
}

/// A `merge` keeps which inputs completed across a reload: its left input (`range(0, 3)`)
/// completed before the reload; the reload edits the right input's `take_while` so that it
/// completes at its next tick, and the merge completes then: the `count` after it emits the
/// number of values merged (plus 1,000,000, to tell it apart). A merge that forgot the left
/// input's completion would never complete downstream. (The host itself ends a pipeline
/// once every port is done, so its `completed` event alone would not show it.)
#[test]
fn merge_keeps_which_inputs_completed_across_a_reload() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "fan_in_merge",
        &plugin(
            r#"    p.pipeline("m", range(0, 3))
        .merge(interval_ms(20).map(|n: u64| n + 100).take_while(|n: &u64| *n < u64::MAX))
        .log()
        .count()
        .map(|n: u64| n + 1_000_000)
        .log();"#,
        ),
    );
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    host.wait_emission("m", |v| value(v) >= 103)?;
    let before: Vec<(u64, String)> = host.emissions("m");
    let lefts: Vec<&str> = before
        .iter()
        .filter(|(_, x)| value(x) < 100)
        .map(|(_, x)| x.as_str())
        .collect();
    assert_eq!(
        lefts,
        ["0", "1", "2"],
        "the left input ran out before the reload"
    );
    assert!(before.iter().all(|(v, _)| *v == v1));
    fixture.edit("src/lib.rs", "*n < u64::MAX", "*n < 100");
    let reload = host.wait_reload()?;
    let (_, reset, _, _) = reload_fields(&reload);
    assert!(reset.is_empty(), "{reload:?}");
    let restarts = match &reload {
        HostEvent::Reload { restarts, .. } => restarts.len(),
        _ => unreachable!(),
    };
    assert_eq!(restarts, 0, "swapped, not restarted: {reload:?}");
    host.wait_for(
        "m completed",
        EMISSION_TIMEOUT,
        |e| matches!(e, HostEvent::Completed { pipeline, .. } if pipeline == "m"),
    )?;
    let reloaded = position(&host, |e| matches!(e, HostEvent::Reload { .. })).expect("seen");
    let completed = position(
        &host,
        |e| matches!(e, HostEvent::Completed { pipeline, .. } if pipeline == "m"),
    )
    .expect("seen");
    assert!(completed > reloaded, "completed after the reload");
    let emissions = host.emissions("m");
    let (counts, merged): (Vec<i64>, Vec<i64>) = emissions
        .iter()
        .map(|(_, x)| value(x))
        .partition(|x| *x >= 1_000_000);
    assert_eq!(
        counts,
        [1_000_000 + merged.len() as i64],
        "the merge completed downstream: {emissions:?}"
    );
    host.stop();
    Ok(())
}

/// A change of an inner stream's source (`interval_ms(7)` to `interval_ms(9)` inside a
/// `merge`) resets that fan-in's state, and the reload event says so: the merge's track is
/// reset with the seed (its inner stream's sources) named, and the pipeline is restarted
/// because its sources changed (the host starts a pipeline afresh whenever a source changes:
/// every state of that pipeline starts from its seed, the left `range` runs again).
#[test]
fn an_inner_source_change_resets_the_fan_in_and_says_so() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "fan_in_source_change",
        &plugin(
            r#"    p.pipeline("m", range(1, 4))
        .merge(interval_ms(7).map(|_n: u64| 1000u64))
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .log();"#,
        ),
    );
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    host.wait_emission("m", |v| value(v) >= 3006)?;
    fixture.edit("src/lib.rs", "interval_ms(7)", "interval_ms(9)");
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (_, reset, added, removed) = reload_fields(&reload);
    assert_eq!(
        reset,
        ["m|0:merge: seed changed from interval_ms(7) to interval_ms(9)"],
        "{reload:?}"
    );
    assert!(added.is_empty() && removed.is_empty(), "{reload:?}");
    let HostEvent::Reload { restarts, .. } = &reload else {
        unreachable!()
    };
    let restarts: Vec<(&str, &str)> = restarts
        .iter()
        .map(|r| (r.pipeline.as_str(), r.reason.as_str()))
        .collect();
    // Which of its two sources changed, as written.
    assert_eq!(
        restarts,
        [(
            "m",
            "its sources changed (interval_ms(7) -> interval_ms(9))"
        )],
        "{reload:?}"
    );
    // Started afresh: a fresh total, into which the range's 1, 2, 3 go again (whether the
    // new thread's first tick comes before them or not), then the new ticks.
    host.wait_for("m from v2 past 3006", EMISSION_TIMEOUT, |e| {
        matches!(e, HostEvent::Emission { pipeline, version, value: x }
            if pipeline == "m" && *version == v2 && value(x) >= 3006)
    })?;
    let after: Vec<i64> = host
        .emissions("m")
        .into_iter()
        .filter(|(v, _)| *v == v2)
        .map(|(_, x)| value(&x))
        .collect();
    let steps: Vec<i64> = std::iter::once(after[0])
        .chain(after.windows(2).map(|w| w[1] - w[0]))
        .collect();
    let from_range: Vec<i64> = steps.iter().copied().filter(|s| *s != 1000).collect();
    assert_eq!(from_range, [1, 2, 3], "a fresh total: {after:?}");
    host.stop();
    Ok(())
}

/// `Driver::push_u64`, how a pipeline thread pushes an interval's tick on any port but the
/// first: a value of a `u64` port goes in, in order with the first port's; a port that takes
/// lines, a port the pipeline does not have, and any port of a completed chain get the
/// answers `push_item` gives them, and nothing runs. Its test of the port is refreshed with
/// the code: after a migration to code whose port 1 reads lines (the driver took it on a
/// push of port 0), a `u64` for port 1 is refused, not read as a line.
#[test]
fn a_u64_port_past_the_first_takes_its_values_and_refuses_what_it_must() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::mpsc::channel;

    use host::code::Pushed;
    use host::events::ChannelSink;
    use host::loader::Loader;
    use host::runtime::Publisher;
    use host::testkit::TempDir;

    let fixture = Fixture::new(
        "fan_in_u64_ports",
        &plugin(
            r#"p.pipeline("m", interval_ms(1000))
        .merge(interval_ms(1000))
        .merge(file_lines("in.txt").map(|s: String| s.len() as u64))
        .take(3)
        .log();
    p.pipeline("n", interval_ms(1000))
        .merge(file_lines("in.txt").map(|s: String| s.len() as u64))
        .take(3)
        .log();"#,
        ),
    );
    let config = fixture.build_config(false)?;
    let keep = TempDir::new("fan-in-u64-ports-libs");
    let lib = integration_tests::build_copy(&config, keep.path(), "lib.so")?;
    let (lib, _) = Loader::new()?.load(&lib, 1)?;
    let mut recorder = hmr_track::Recorder::without_log();
    let (_, codes) =
        host::register::register(&lib, &mut recorder, host::register::REGISTER_DEADLINE)?;
    let mut codes = codes.into_iter();
    let (Some(m), Some(n)) = (codes.next(), codes.next()) else {
        anyhow::bail!("the plugin registered fewer than two pipelines");
    };
    let publisher = Publisher::new(m);
    let (tx, rx) = channel();
    let mut d = publisher
        .driver(Arc::new(ChannelSink(tx)))
        .map_err(anyhow::Error::msg)?;
    d.start().map_err(anyhow::Error::msg)?;
    let refused = |name: &str, port: u32| format!("port {port} of {name} does not take U64 values");
    let steps: [(u32, u64, Result<Pushed, String>); 5] = [
        (1, 8, Ok(Pushed::Continue)),
        (0, 7, Ok(Pushed::Continue)),
        (2, 9, Err(refused("m", 2))),
        (3, 9, Err(refused("m", 3))),
        (64, 9, Err(refused("m", 64))),
    ];
    let push = |d: &mut host::runtime::Driver, port: u32, x: u64| d.push_u64(port, x);
    for (port, x, expected) in steps {
        assert_eq!(push(&mut d, port, x), expected, "m: port {port}, value {x}");
    }
    // Version 2: `n`, whose port 1 reads lines (its state starts afresh: other tracks).
    publisher.publish(n);
    let steps: [(u32, u64, Result<Pushed, String>); 5] = [
        (0, 10, Ok(Pushed::Continue)),
        (1, 11, Err(refused("n", 1))),
        (0, 12, Ok(Pushed::Continue)),
        (0, 13, Ok(Pushed::Complete { consumed: 1 })),
        (1, 14, Ok(Pushed::Complete { consumed: 1 })),
    ];
    for (port, x, expected) in steps {
        assert_eq!(push(&mut d, port, x), expected, "n: port {port}, value {x}");
    }
    let emitted: Vec<String> = rx
        .try_iter()
        .filter_map(|e| match e {
            HostEvent::Emission { value, .. } => Some(value),
            _ => None,
        })
        .collect();
    assert_eq!(emitted, ["8", "7", "10", "12", "13"]);
    Ok(())
}

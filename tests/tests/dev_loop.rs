//! The dev loop end to end, on real cargo builds and real library loads: edit a fixture
//! plugin while a host runs it and check what the next emissions run.

use host::events::HostEvent;
use host::testkit::{Fixture, Harness};
use integration_tests::{COUNTER, assert_steps, paths, reload_fields, reload_version, value};

/// Editing a closure body swaps the code, keeps the scan total, loses and repeats nothing,
/// and leaves every structural path as it was.
#[test]
fn body_edit_swaps_code_and_keeps_state_and_paths() -> anyhow::Result<()> {
    let fixture = Fixture::new("body_edit", COUNTER);
    let mut host = Harness::start(&fixture.options())?;
    let (v1, tracks_before) = host.wait_loaded()?;
    host.wait_emission("counter", |v| value(v) >= 3)?;

    fixture.edit("src/lib.rs", "|_n: u64| 1u64", "|_n: u64| 1000u64");
    let reload = host.wait_reload()?;
    let (swapped, reset, added, removed) = reload_fields(&reload);
    assert!(
        reset.is_empty() && added.is_empty() && removed.is_empty(),
        "{reload:?}"
    );
    assert_eq!(
        swapped,
        tracks_before.len(),
        "every track swapped: {reload:?}"
    );
    let HostEvent::Reload {
        version: v2,
        tracks: tracks_after,
        ..
    } = reload
    else {
        unreachable!()
    };
    assert!(v2 > v1);
    assert_eq!(paths(&tracks_before), paths(&tracks_after));

    host.wait_emission("counter", |v| value(v) >= 3000)?;
    let emissions = host.emissions("counter");
    host.stop();

    // Every emission steps the total by exactly one step of the version that produced it:
    // 1 under v1, 1000 under v2. Nothing lost, nothing repeated, state kept across the swap.
    assert!(
        emissions.iter().all(|(v, _)| *v == v1 || *v == v2),
        "{emissions:?}"
    );
    assert_steps(&emissions, 0, |v| if v == v1 { 1 } else { 1000 });
    let switch = emissions
        .iter()
        .position(|(ver, _)| *ver == v2)
        .expect("a v2 emission");
    assert!(
        emissions[switch..].iter().all(|(ver, _)| *ver == v2),
        "v1 after v2: {emissions:?}"
    );
    Ok(())
}

/// Changing a `scan`'s state type resets that state only, says why, and the next values
/// come from the new seed; the operator before it keeps its path.
#[test]
fn scan_state_type_change_resets_that_state_with_reason() -> anyhow::Result<()> {
    let fixture = Fixture::new("scan_type", COUNTER);
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    host.wait_emission("counter", |v| value(v) >= 5)?;

    fixture.edit(
        "src/lib.rs",
        ".scan(0u64, |acc: u64, n: u64| acc + n)",
        ".scan(-100i64, |acc: i64, n: u64| acc - n as i64)",
    );
    let reload = host.wait_reload()?;
    let (_, reset, added, removed) = reload_fields(&reload);
    assert!(added.is_empty() && removed.is_empty(), "{reload:?}");
    let scan_reset: Vec<&String> = reset
        .iter()
        .filter(|r| r.starts_with("counter|1:scan"))
        .collect();
    assert_eq!(scan_reset.len(), 1, "{reset:?}");
    assert!(
        scan_reset[0].contains("state type changed from u64 to i64"),
        "{reset:?}"
    );
    assert!(
        !reset.iter().any(|r| r.starts_with("counter|0:map")),
        "map kept: {reset:?}"
    );

    // Fresh from the new seed: -101, -102, ...
    let HostEvent::Reload { version: v2, .. } = reload else {
        unreachable!()
    };
    let first = host.wait_emission_from("counter", v2)?;
    assert_eq!(
        value(&first),
        -101,
        "the reset state starts from the new seed"
    );
    Ok(())
}

/// Adding a pipeline starts it; removing one stops it after the registration ran to its end.
#[test]
fn adding_and_removing_a_pipeline() -> anyhow::Result<()> {
    let fixture = Fixture::new("add_remove", COUNTER);
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    host.wait_emission("counter", |_| true)?;

    let extra = r#"    p.pipeline("extra", interval_ms(5))
        .map(|n: u64| n + 10_000)
        .log();
}"#;
    let text = fixture.read("src/lib.rs");
    let body_end = text
        .find("}\n\nplugin_api::export_plugin!")
        .expect("register's end");
    fixture.write(
        "src/lib.rs",
        &format!("{}{}{}", &text[..body_end], extra, &text[body_end + 1..]),
    );
    let reload = host.wait_reload()?;
    let (swapped, reset, added, removed) = reload_fields(&reload);
    assert_eq!(
        added,
        vec!["extra", "extra|0:map", "extra|1:log"],
        "{reload:?}"
    );
    assert!(reset.is_empty() && removed.is_empty(), "{reload:?}");
    assert_eq!(swapped, 4, "the counter's four tracks: {reload:?}");
    host.wait_emission("extra", |v| value(v) >= 10_000)?;

    // Remove the counter.
    let text = fixture.read("src/lib.rs");
    let start = text
        .find("    p.pipeline(\"counter\"")
        .expect("counter pipeline");
    let end = start + text[start..].find(".log();\n").expect("its end") + ".log();\n".len();
    fixture.write("src/lib.rs", &format!("{}{}", &text[..start], &text[end..]));
    let reload = host.wait_reload()?;
    let (_, _, added, removed) = reload_fields(&reload);
    assert!(added.is_empty(), "{reload:?}");
    assert_eq!(
        removed.iter().filter(|p| p.starts_with("counter")).count(),
        4,
        "the counter and its three operators: {reload:?}"
    );
    // The removed counter's thread is told to stop, not waited for: an emission it was in
    // the middle of may still land after the reload event, but nothing after that. Two
    // further `extra` values later, the counter has been silent.
    let is_counter =
        |e: &HostEvent| matches!(e, HostEvent::Emission { pipeline, .. } if pipeline == "counter");
    let at_reload = host.history().len();
    host.wait_emission("extra", |_| true)?;
    host.wait_emission("extra", |_| true)?;
    let settled = host.history().len();
    host.wait_emission("extra", |_| true)?;
    host.wait_emission("extra", |_| true)?;
    let in_flight = host.history()[at_reload..settled]
        .iter()
        .filter(|e| is_counter(e))
        .count();
    let later = host.history()[settled..]
        .iter()
        .filter(|e| is_counter(e))
        .count();
    assert!(
        in_flight <= 1,
        "{in_flight} counter values after its removal"
    );
    assert_eq!(later, 0, "the removed counter still emits");
    Ok(())
}

/// A pipeline that had completed, or whose source changed, starts afresh on the new code:
/// the reload lists it as restarted (its tracks are not counted as swapped) and it emits
/// from the new version, from fresh state.
#[test]
fn completed_and_source_changed_pipelines_restart_on_the_new_code() -> anyhow::Result<()> {
    const TWO: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("counter", interval_ms(5))
        .map(|_n: u64| 1u64)
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .log();
    p.pipeline("total", range(0, 100))
        .reduce(0u64, |acc: u64, n: u64| acc + n)
        .log();
}

plugin_api::export_plugin!(register);
"#;
    let fixture = Fixture::new("restarts", TWO);
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    host.wait_emission("total", |v| v == "4950")?;
    host.wait_emission("counter", |v| value(v) >= 3)?;

    // (edit, pipeline expected to restart, its reason, total's next value)
    let cases = [
        (
            "acc + n)\n        .log();\n}",
            "total",
            "it had completed",
            "9900",
        ),
        ("interval_ms(5)", "counter", "its source changed", "9900"),
    ];
    let edits = [
        (
            "acc + n)\n        .log();\n}",
            "2 * n + acc)\n        .log();\n}",
        ),
        ("interval_ms(5)", "interval_ms(6)"),
    ];
    for ((_, pipeline, reason, total), (from, to)) in cases.iter().zip(edits) {
        fixture.edit("src/lib.rs", from, to);
        let reload = host.wait_reload()?;
        let HostEvent::Reload {
            version,
            swapped,
            restarted,
            restarts,
            ..
        } = &reload
        else {
            unreachable!()
        };
        assert_eq!(*restarted, restarts.len());
        let restarted: Vec<(&str, &str)> = restarts
            .iter()
            .map(|r| (r.pipeline.as_str(), r.reason.as_str()))
            .collect();
        assert!(restarted.contains(&(*pipeline, *reason)), "{reload:?}");
        // total (3 tracks) restarts every time (it always completed before); the counter
        // (4 tracks) restarts only when its source changed.
        let expected_swapped = if *pipeline == "counter" { 0 } else { 4 };
        assert_eq!(*swapped, expected_swapped, "{reload:?}");
        let (v, got) = host.wait_emission("total", |_| true)?;
        assert_eq!((v, got.as_str()), (*version, *total));
        if *pipeline == "counter" {
            // Fresh state: the count starts again at 1.
            host.wait_emission_from("counter", *version)?;
            let first = host
                .emissions("counter")
                .into_iter()
                .find(|(v, _)| v == version)
                .expect("an emission of the new version");
            assert_eq!(value(&first.1), 1);
        }
    }
    Ok(())
}

/// State that owns heap memory (a `Vec` in a `scan`) is allocated by one version and kept,
/// grown and finally freed by the next: the allocator hazard of ARCHITECTURE.md, exercised.
#[test]
fn heap_owning_state_survives_a_reload() -> anyhow::Result<()> {
    const HEAP: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("seen", interval_ms(5))
        .scan(Vec::<u64>::new(), |mut v: Vec<u64>, n: u64| { v.push(n); v })
        .map(|v: Vec<u64>| (v.len() as u64) * 1 + v.iter().sum::<u64>() * 0)
        .log();
}

plugin_api::export_plugin!(register);
"#;
    let fixture = Fixture::new("heap_state", HEAP);
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    host.wait_emission("seen", |v| value(v) >= 3)?;
    // The new body reads the same vector differently: the sum of the values seen.
    fixture.edit(
        "src/lib.rs",
        "* 1 + v.iter().sum::<u64>() * 0",
        "* 0 + v.iter().sum::<u64>() * 1",
    );
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (_, reset, _, _) = reload_fields(&reload);
    assert!(reset.is_empty(), "{reset:?}");
    host.wait_emission_from("seen", v2)?;
    host.wait_emission("seen", |_| true)?;
    // Under v1 the k-th value is k (the length); under v2 it is 0 + 1 + ... + (k - 1): the
    // vector kept every value pushed under v1.
    let emissions = host.emissions("seen");
    for (k, (version, v)) in emissions.iter().enumerate() {
        let k = k as i64 + 1;
        let expected = if *version == v1 { k } else { k * (k - 1) / 2 };
        assert_eq!(
            value(v),
            expected,
            "value {k} (v{version}) in {emissions:?}"
        );
    }
    host.stop();
    Ok(())
}

/// A save the compiler does not see (a comment at the end of the file) builds a library
/// identical to the running one: nothing is loaded, the person is told, state untouched.
#[test]
fn a_save_that_changes_nothing_loads_nothing() -> anyhow::Result<()> {
    let fixture = Fixture::new("unchanged", COUNTER);
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    host.wait_emission("counter", |_| true)?;
    fixture.write("src/lib.rs", &format!("{COUNTER}\n// a note\n"));
    let outcome = host.wait_outcome()?;
    assert!(
        matches!(outcome, HostEvent::Unchanged { .. }),
        "{outcome:?}"
    );
    host.wait_emission("counter", |_| true)?;
    let reloader = host.stop().expect("the reloader");
    assert_eq!(reloader.current(), Some(v1));
    assert_eq!(reloader.mapped_versions(), 1);
    assert_steps(&host.emissions("counter"), 0, |_| 1);
    Ok(())
}

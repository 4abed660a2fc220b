//! The dev loop end to end, on real cargo builds and real library loads: edit a fixture
//! plugin while a host runs it and check what the next emissions run.

use std::time::Duration;

use host::events::HostEvent;
use host::testkit::{EMISSION_TIMEOUT, Fixture, Harness};
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

    // A v2 value and one after it (v1 passes any threshold too, given time).
    host.wait_emission_from("counter", v2)?;
    host.wait_emission("counter", |_| true)?;
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
        (
            "interval_ms(5)",
            "counter",
            "its source changed (interval_ms(5) -> interval_ms(6))",
            "9900",
        ),
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

/// A changed seed resets the state and the total starts again from the new seed, through a
/// real plugin and the watching host.
#[test]
fn a_seed_change_resets_the_state_and_the_total_starts_from_the_new_seed() -> anyhow::Result<()> {
    let fixture = Fixture::new("seed_change", COUNTER);
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    host.wait_emission("counter", |v| value(v) >= 3)?;

    fixture.edit("src/lib.rs", "scan(0u64", "scan(100u64");
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (_, reset, added, removed) = reload_fields(&reload);
    assert_eq!(
        reset,
        vec!["counter|1:scan: seed changed from 0 to 100"],
        "{reload:?}"
    );
    assert!(added.is_empty() && removed.is_empty(), "{reload:?}");
    // Three values of v2 (v1 alone could reach any total first on a slow machine).
    host.wait_for("three values of v2", EMISSION_TIMEOUT, |e| {
        matches!(e, HostEvent::Emission { pipeline, version, value: v }
            if pipeline == "counter" && *version == v2 && value(v) >= 103)
    })?;
    let emissions = host.emissions("counter");
    let switch = emissions
        .iter()
        .position(|(v, _)| *v == v2)
        .expect("a v2 emission");
    assert_steps(&emissions[..switch], 0, |_| 1);
    assert!(emissions[..switch].iter().all(|(v, _)| *v == v1));
    assert_steps(&emissions[switch..], 100, |_| 1);
    Ok(())
}

/// A keyed `scope` moved among its siblings (an operator inserted before it) keeps its
/// path and its state; the same `scan` outside a scope moves to a new path and starts afresh.
#[test]
fn a_moved_scope_keeps_its_state() -> anyhow::Result<()> {
    const SCOPED: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("keyed", interval_ms(5))
        .map(|_n: u64| 1u64)
        .scope("total", |c| c.scan(0u64, |acc: u64, n: u64| acc + n))
        .log();
    p.pipeline("plain", interval_ms(5))
        .map(|_n: u64| 1u64)
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .log();
}

plugin_api::export_plugin!(register);
"#;
    let fixture = Fixture::new("moved_scope", SCOPED);
    let mut host = Harness::start(&fixture.options())?;
    let (_, tracks) = host.wait_loaded()?;
    assert!(
        paths(&tracks).contains(&"keyed|#total:scope|0:scan".to_owned()),
        "{tracks:?}"
    );
    host.wait_emission("keyed", |v| value(v) >= 3)?;
    host.wait_emission("plain", |v| value(v) >= 3)?;

    // The same edit in both pipelines: a map inserted before the scan.
    let text = fixture.read("src/lib.rs");
    fixture.write(
        "src/lib.rs",
        &text.replace(
            ".map(|_n: u64| 1u64)",
            ".map(|n: u64| n)\n        .map(|_n: u64| 1u64)",
        ),
    );
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (_, reset, added, removed) = reload_fields(&reload);
    let scans = |list: &[String]| -> Vec<String> {
        list.iter()
            .filter(|p| p.contains("scan"))
            .cloned()
            .collect()
    };
    assert_eq!(scans(&added), vec!["plain|2:scan"], "{reload:?}");
    assert_eq!(scans(&removed), vec!["plain|1:scan"], "{reload:?}");
    assert!(
        !reset
            .iter()
            .any(|r| r.split(": ").next().is_some_and(|p| p.contains("scan"))),
        "{reload:?}"
    );
    let HostEvent::Reload { tracks, .. } = &reload else {
        unreachable!()
    };
    assert!(paths(tracks).contains(&"keyed|#total:scope|0:scan".to_owned()));

    // A value of v2 from each (a value of v1 may still come after the report).
    host.wait_emission_from("keyed", v2)?;
    let first_plain = host.wait_emission_from("plain", v2)?;
    assert_eq!(value(&first_plain), 1, "the unkeyed scan starts afresh");
    let keyed = host.emissions("keyed");
    assert!(keyed.iter().any(|(v, _)| *v == v2), "{keyed:?}");
    assert_steps(&keyed, 0, |_| 1);
    Ok(())
}

/// A fix that restores the running code needs no reload: the broken save fails to build,
/// the fix builds the library that is running, nothing is loaded, and the state goes on.
#[test]
fn a_fix_that_restores_the_running_code_needs_no_reload() -> anyhow::Result<()> {
    let fixture = Fixture::new("restoring_fix", COUNTER);
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    host.wait_emission("counter", |v| value(v) >= 2)?;
    fixture.edit("src/lib.rs", "acc + n)", "acc + n +)");
    let outcome = host.wait_outcome()?;
    assert!(
        matches!(outcome, HostEvent::BuildFailed { .. }),
        "{outcome:?}"
    );
    fixture.write("src/lib.rs", COUNTER);
    let outcome = host.wait_outcome()?;
    assert!(
        matches!(outcome, HostEvent::Unchanged { .. }),
        "{outcome:?}"
    );
    let at_fix = host.history().len();
    let (version, _) = host.wait_emission("counter", |_| true)?;
    assert_eq!(version, v1, "the counter went on after the fix, on v1");
    let reloader = host.stop().expect("the reloader");
    assert_eq!(reloader.current(), Some(v1));
    assert_eq!(reloader.mapped_versions(), 1, "nothing was loaded");
    let emissions = host.emissions("counter");
    assert!(emissions.iter().all(|(v, _)| *v == v1), "{emissions:?}");
    assert_steps(&emissions, 0, |_| 1);
    assert!(host.history().len() > at_fix);
    Ok(())
}

/// The reloader never waits for a source thread: a pipeline whose user function blocks (until
/// the test opens a gate) is removed by a reload, which is reported while the function still
/// blocks; the other pipeline takes the new code; the blocked thread ends once released.
#[test]
fn the_reloader_never_waits_for_a_blocked_source() -> anyhow::Result<()> {
    let gate_dir = host::testkit::TempDir::new("blocked-source-gate");
    let gate = gate_dir.path().join("open");
    let source = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("blocked", interval_ms(5))
        .map(|n: u64| {
            if n == 1 {
                while !std::path::Path::new(GATE).exists() {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            n
        })
        .log();
    p.pipeline("ok", interval_ms(5)).map(|n: u64| n + 1).log();
}

plugin_api::export_plugin!(register);
"#
    .replace("GATE", &format!("{:?}", gate.display().to_string()));
    let fixture = Fixture::new("blocked_source", &source);
    /// Opens the gate when dropped: a test that fails early leaves no thread blocked.
    struct OpenOnDrop(std::path::PathBuf);
    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, "");
        }
    }
    let mut host = Harness::start(&fixture.options())?;
    // Dropped before `host`.
    let _open = OpenOnDrop(gate.clone());
    host.wait_loaded()?;
    // The watchdog says when the function is inside its blocking call.
    host.wait_for(
        "the blocked pipeline reported stuck",
        Duration::from_secs(30),
        |e| matches!(e, HostEvent::Stuck { pipeline, .. } if pipeline == "blocked"),
    )?;
    // From now on, opens the gate when told to, or after a minute: a reloader that waited
    // for the blocked thread would report only then, with the gate open. (Started here, so
    // the first build's time does not count against it.)
    let (release, released) = std::sync::mpsc::channel::<()>();
    let timer = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            let _ = released.recv_timeout(Duration::from_secs(60));
            std::fs::write(&gate, "")
        })
    };

    let text = fixture.read("src/lib.rs");
    let start = text.find("    p.pipeline(\"blocked\"").expect("blocked");
    let end = start + text[start..].find(".log();\n").expect("its end") + ".log();\n".len();
    fixture.write(
        "src/lib.rs",
        &format!("{}{}", &text[..start], &text[end..]).replace("n + 1", "n + 2"),
    );
    let reload = host.wait_reload()?;
    assert!(
        !gate.exists(),
        "the reload came only once the function returned"
    );
    let (_, _, _, removed) = reload_fields(&reload);
    assert_eq!(
        removed,
        vec!["blocked", "blocked|0:map", "blocked|1:log"],
        "{reload:?}"
    );
    host.wait_emission_from("ok", reload_version(&reload))?;
    assert!(!gate.exists(), "the reload came while the function blocked");

    let _ = release.send(());
    timer.join().expect("the gate timer")?;
    host.stop();
    Ok(())
}

/// Orphans are removed children first: removing a pipeline with nested scopes removes every
/// track, and the tracking store (which refuses to remove a track that still has children)
/// refuses nothing.
#[test]
fn orphans_are_removed_children_first() -> anyhow::Result<()> {
    const NESTED: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("deep", interval_ms(5))
        .scope("outer", |c| {
            c.map(|n: u64| n + 1)
                .scope("inner", |c| c.scan(0u64, |acc: u64, n: u64| acc + n).map(|n: u64| n))
        })
        .log();
    p.pipeline("ok", interval_ms(5)).map(|n: u64| n + 1).log();
}

plugin_api::export_plugin!(register);
"#;
    let fixture = Fixture::new("nested_orphans", NESTED);
    let mut host = Harness::start(&fixture.options())?;
    let (_, tracks) = host.wait_loaded()?;
    let deep: Vec<String> = paths(&tracks)
        .into_iter()
        .filter(|p| p.starts_with("deep"))
        .collect();
    assert!(deep.len() >= 6, "{deep:?}");
    host.wait_emission("deep", |_| true)?;

    let text = fixture.read("src/lib.rs");
    let start = text.find("    p.pipeline(\"deep\"").expect("deep");
    let end = start + text[start..].find(".log();\n").expect("its end") + ".log();\n".len();
    fixture.write(
        "src/lib.rs",
        &format!("{}{}", &text[..start], &text[end..]).replace("n + 1", "n + 2"),
    );
    let reload = host.wait_reload()?;
    let (_, _, _, mut removed) = reload_fields(&reload);
    removed.sort();
    let mut expected = deep.clone();
    expected.sort();
    assert_eq!(removed, expected, "{reload:?}");
    host.wait_emission_from("ok", reload_version(&reload))?;
    let reloader = host.stop().expect("the reloader");
    let errors = host.errors();
    assert!(errors.is_empty(), "{errors:?}");
    let left: Vec<&String> = reloader
        .recorder()
        .state
        .store
        .tracks
        .values()
        .map(|t| &t.path)
        .filter(|p| p.starts_with("deep"))
        .collect();
    assert!(left.is_empty(), "orphans left in the store: {left:?}");
    Ok(())
}

/// The reasons a reload restarts a pipeline instead of swapping it, in one reload: it had
/// completed, a panic had ended it (`--on-panic error`), its source changed, its number of
/// sources changed (each named as written). (A thread that
/// could not start: `runtime_handover.rs`. "Its source had stopped" is not reached on Linux:
/// an `Instant` holds any `interval_ms` period, even `u64::MAX` ms.)
#[test]
fn restart_reasons() -> anyhow::Result<()> {
    const FOUR: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("done", range(0, 10)).log();
    p.pipeline("failed", interval_ms(5))
        .map(|n: u64| if n == 1 { panic!("fails at 1") } else { n })
        .log();
    p.pipeline("moved", interval_ms(5)).log();
    p.pipeline("merged", interval_ms(8)).merge(interval_ms(9)).log();
}

plugin_api::export_plugin!(register);
"#;
    use host::runtime::Ended;
    let fixture = Fixture::new("restart_reasons", FOUR);
    let config = fixture.build_config(false)?;
    let keep = host::testkit::TempDir::new("restart-reasons-libs");
    let a = integration_tests::build_copy(&config, keep.path(), "liba.so")?;
    fixture.edit(
        "src/lib.rs",
        "interval_ms(5)).log()",
        "interval_ms(6)).log()",
    );
    fixture.edit("src/lib.rs", ".merge(interval_ms(9))", "");
    let b = integration_tests::build_copy(&config, keep.path(), "libb.so")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reloader = host::reloader::Reloader::new(
        config,
        std::sync::Arc::new(host::events::ChannelSink(tx)),
        host::runtime::PanicPolicy::Error,
    )?;
    assert_eq!(
        reloader.load_built(&a, 0),
        host::reloader::Outcome::Loaded { version: 1 }
    );
    // Two end on their own; wait until the runtime says so.
    let expected = [
        ("done", Ended::Completed),
        ("failed", Ended::Errored),
        ("moved", Ended::Running),
        ("merged", Ended::Running),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = reloader.runtime().status();
        if expected.iter().all(|(p, e)| status.get(*p) == Some(e)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pipelines did not end as expected: {status:?}"
        );
        std::thread::yield_now();
    }
    assert_eq!(
        reloader.load_built(&b, 0),
        host::reloader::Outcome::Loaded { version: 2 }
    );
    let reload = integration_tests::next_matching(&rx, Duration::from_secs(30), |e| {
        matches!(e, HostEvent::Reload { .. })
    })?;
    let HostEvent::Reload {
        restarts,
        restarted,
        swapped,
        ..
    } = &reload
    else {
        unreachable!()
    };
    let mut restarts: Vec<(&str, &str)> = restarts
        .iter()
        .map(|r| (r.pipeline.as_str(), r.reason.as_str()))
        .collect();
    restarts.sort();
    assert_eq!(
        restarts,
        vec![
            ("done", "it had completed"),
            ("failed", "it had ended with an error"),
            (
                "merged",
                "its sources changed (interval_ms(8), interval_ms(9) -> interval_ms(8))"
            ),
            (
                "moved",
                "its source changed (interval_ms(5) -> interval_ms(6))"
            ),
        ]
    );
    assert_eq!(*restarted, 4);
    assert_eq!(*swapped, 0, "{reload:?}");
    Ok(())
}

/// `--release` (`Options::release`) builds the plugin with optimizations: the library comes
/// from cargo's release profile and its code runs without debug assertions.
#[test]
fn release_builds_with_optimizations() -> anyhow::Result<()> {
    const MODE: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("mode", interval_ms(5))
        .map(|_n: u64| u64::from(cfg!(debug_assertions)))
        .log();
}

plugin_api::export_plugin!(register);
"#;
    for (release, profile, debug_assertions) in [(false, "debug", "1"), (true, "release", "0")] {
        let fixture = Fixture::new(&format!("release_{release}"), MODE);
        let mut options = fixture.options();
        options.release = release;
        let mut host = Harness::start(&options)?;
        host.wait_loaded()?;
        let (_, v) = host.wait_emission("mode", |_| true)?;
        assert_eq!(v, debug_assertions, "release {release}");
        let reloader = host.stop().expect("the reloader");
        let built = reloader.versions()[0].built().to_owned();
        let dir = built
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|d| d.to_str())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(dir, profile, "{}", built.display());
    }
    Ok(())
}

/// `--debounce-ms` (`Options::debounce`): a write that has not closed its file builds only
/// after that much quiet; a finished save builds at once, whatever the debounce.
#[test]
fn debounce_applies_to_unfinished_writes_only() -> anyhow::Result<()> {
    use std::io::Write;
    let debounce = Duration::from_millis(2500);
    let fixture = Fixture::new("debounce", COUNTER);
    let mut options = fixture.options();
    options.debounce = debounce;
    let mut host = Harness::start(&options)?;
    host.wait_loaded()?;
    // Time from a write to its reload, less what cargo and the load took.
    let waited = |host: &mut Harness, wrote: std::time::Instant| -> anyhow::Result<Duration> {
        let reload = host.wait_reload()?;
        let elapsed = wrote.elapsed();
        let HostEvent::Reload {
            build_ms, load_ms, ..
        } = reload
        else {
            unreachable!()
        };
        Ok(elapsed.saturating_sub(Duration::from_millis(build_ms + load_ms)))
    };

    // An unfinished write: the file stays open (no close event) until the reload came.
    let path = fixture.path().join("src/lib.rs");
    let mut file = std::fs::OpenOptions::new().write(true).open(&path)?;
    let wrote = std::time::Instant::now();
    file.write_all(COUNTER.replace("1u64", "2u64").as_bytes())?;
    file.flush()?;
    let unfinished = waited(&mut host, wrote)?;
    // Closing it is a finished write: it builds the same library once more.
    drop(file);
    let outcome = host.wait_outcome()?;
    assert!(
        matches!(outcome, HostEvent::Unchanged { .. }),
        "{outcome:?}"
    );

    // A finished save (written elsewhere, renamed into place).
    let wrote = std::time::Instant::now();
    fixture.edit("src/lib.rs", "2u64", "3u64");
    let finished = waited(&mut host, wrote)?;
    eprintln!("waited {unfinished:?} after an unfinished write, {finished:?} after a save");
    assert!(
        unfinished >= debounce,
        "built {unfinished:?} after an unfinished write, before the {debounce:?} debounce"
    );
    assert!(
        finished < debounce / 2,
        "a finished save waited {finished:?} (debounce {debounce:?})"
    );
    Ok(())
}

/// A sink that panics on the reloader's thread at the first load, saying so first (a session
/// stopped before its first build ends stops that build, and nothing panics).
struct PanicsOnLoad(std::sync::Mutex<std::sync::mpsc::Sender<()>>);

impl host::events::EventSink for PanicsOnLoad {
    fn event(&self, event: HostEvent) {
        if matches!(event, HostEvent::Loaded { .. }) {
            let _ = self.0.lock().map(|tx| tx.send(()));
            panic!("planted panic on the reloader's thread");
        }
    }
}

/// A panic of the reloader's thread is not lost: stopping the session (what
/// `Harness::stop` does) panics with it, and so does dropping a session not stopped, so a test
/// on a session whose reloader died fails.
#[test]
fn a_panicked_reloader_fails_the_test() -> anyhow::Result<()> {
    let fixture = Fixture::new("panicked_reloader", COUNTER);
    for stop in [true, false] {
        let (tx, panicking) = std::sync::mpsc::channel();
        let session = host::session::Session::start(
            &fixture.options(),
            std::sync::Arc::new(PanicsOnLoad(std::sync::Mutex::new(tx))),
        )?;
        panicking
            .recv_timeout(host::testkit::BUILD_TIMEOUT)
            .map_err(|_| anyhow::anyhow!("the first load did not happen"))?;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            if stop {
                let _ = session.stop();
            } else {
                drop(session);
            }
        }));
        let payload = outcome.expect_err("the reloader's panic went on");
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        assert_eq!(
            message, "planted panic on the reloader's thread",
            "stop: {stop}"
        );
    }
    Ok(())
}

/// Each library copy is unlinked once mapped, refused ones too (a complete shared library
/// that is not a plugin is copied, opened and refused at its header), and nothing of the
/// copies is left in the directory the loader puts them in.
#[cfg(target_os = "linux")]
#[test]
fn copies_are_unlinked_and_nothing_is_left() -> anyhow::Result<()> {
    let fixture = Fixture::new("copies_unlinked", COUNTER);
    let config = fixture.build_config(false)?;
    let built = host::cargo::build(&config)?;
    let (mut reloader, _rx) = integration_tests::channel_reloader(config)?;
    let not_a_plugin = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .map(std::path::Path::new)
    .find(|p| p.exists())
    .expect("libm, a complete shared library that is not a plugin");
    // Beside cargo's library, where the loader puts copies of what it loads from there.
    let not_a_plugin_here = built
        .library
        .parent()
        .expect("a directory")
        .join("libm-not-a-plugin.so");
    std::fs::copy(not_a_plugin, &not_a_plugin_here)?;
    let not_a_plugin = not_a_plugin_here.as_path();
    for _ in 0..3 {
        assert!(matches!(
            reloader.load_built(&built.library, 0),
            host::reloader::Outcome::Loaded { .. }
        ));
    }
    assert_eq!(
        reloader.load_built(not_a_plugin, 0),
        host::reloader::Outcome::LoadFailed
    );
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    for v in reloader.versions() {
        let path = v.path().display().to_string();
        assert!(!v.path().exists(), "{path} was not unlinked");
        assert!(
            maps.lines()
                .any(|l| l.ends_with(&format!("{path} (deleted)"))),
            "{path} is not mapped as a deleted file"
        );
    }
    // The loader's prefix (`<pid>-<n>-v`): what every copy's name starts with.
    let prefix = integration_tests::copies_prefix(&reloader);
    let dir = reloader.versions()[0].path().parent().expect("a directory");
    let refused: Vec<&str> = maps
        .lines()
        .filter(|l| {
            l.contains(&format!("{}/{prefix}", dir.display())) && l.contains("libm-not-a-plugin")
        })
        .collect();
    assert!(!refused.is_empty(), "the refused copy is mapped");
    assert!(
        refused.iter().all(|l| l.ends_with(" (deleted)")),
        "the refused copy was not unlinked: {refused:?}"
    );
    let left: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
    Ok(())
}

//! The dev loop end to end, on real cargo builds and real library loads: edit a fixture
//! plugin while a host runs it and check what the next emissions run.

use host::events::HostEvent;
use host::testkit::{Fixture, Harness};

/// A counter whose running total makes lost, repeated or reset state visible: every value
/// adds `STEP` to the total.
const COUNTER: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("counter", interval_ms(5))
        .map(|_n: u64| 1u64)
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .log();
}

plugin_api::export_plugin!(register);
"#;

fn value(v: &str) -> i64 {
    v.parse().unwrap_or_else(|_| panic!("not a number: {v:?}"))
}

fn reload_fields(e: &HostEvent) -> (usize, Vec<String>, Vec<String>, Vec<String>) {
    match e {
        HostEvent::Reload {
            swapped,
            reset,
            added,
            removed,
            ..
        } => (
            *swapped,
            reset.iter().map(|r| format!("{}: {}", r.path, r.reason)).collect(),
            added.clone(),
            removed.clone(),
        ),
        other => panic!("not a reload: {other:?}"),
    }
}

fn paths(tracks: &[host::events::TrackInfo]) -> Vec<String> {
    tracks.iter().map(|t| t.path.clone()).collect()
}

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
    assert!(reset.is_empty() && added.is_empty() && removed.is_empty(), "{reload:?}");
    assert_eq!(swapped, tracks_before.len(), "every track swapped: {reload:?}");
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
    let mut previous = 0i64;
    for (version, v) in &emissions {
        let step = if *version == v1 { 1 } else { 1000 };
        assert!(*version == v1 || *version == v2, "unknown version in {emissions:?}");
        assert_eq!(value(v), previous + step, "at {v} (v{version}) in {emissions:?}");
        previous = value(v);
    }
    let switch = emissions.iter().position(|(ver, _)| *ver == v2).expect("a v2 emission");
    assert!(emissions[switch..].iter().all(|(ver, _)| *ver == v2), "v1 after v2: {emissions:?}");
    Ok(())
}

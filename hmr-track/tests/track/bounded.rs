//! A long session's store stays the same size: 200 reloads that swap, reset, add, remove
//! and re-subscribe leave as many entities, modules and subscriptions as 100 did.

use hmr_track::{MODULE_HISTORY, PREV_ENTITY_HISTORY, Recorder};

use crate::support::{parse, run, settle};

/// The sizes that must not grow: modules, pipelines, operators, subscriptions, and the
/// longest `prev_entity_ids`.
fn sizes(rec: &Recorder) -> [usize; 5] {
    let store = &rec.state.store;
    [
        store.modules.len(),
        store.pipelines.len(),
        store.operators.len(),
        store.subscriptions.len(),
        store
            .tracks
            .values()
            .map(|t| t.prev_entity_ids.len())
            .max()
            .unwrap_or(0),
    ]
}

#[test]
fn the_store_stays_flat_over_many_reloads() {
    // Each run changes a seed (a reset), keeps the rest (swaps), and every other run adds or
    // removes a pipeline (with its subscription).
    let program = |i: usize| {
        let extra = if i.is_multiple_of(2) {
            " extra{map}"
        } else {
            ""
        };
        parse(&format!(
            "counter{{map filter scan({})}} total{{reduce(0)}}{extra}",
            i % 3
        ))
    };
    let mut rec = Recorder::without_log();
    let mut at = Vec::new();
    for i in 0..200 {
        let r = run(&mut rec, &program(i)).expect("the run is accepted");
        settle(&mut rec, r.module).expect("the host's reconcile is accepted");
        for pipeline in ["counter", "total", "extra"] {
            let track = rec.state.store.paths.get(pipeline).copied();
            if let Some(track) = track {
                let active = rec
                    .state
                    .store
                    .subscriptions
                    .values()
                    .any(|s| s.track == track && s.active);
                if !active {
                    rec.subscribe(track).expect("subscribes");
                }
            }
        }
        if i == 99 || i == 199 {
            at.push(sizes(&rec));
        }
    }
    assert_eq!(at[0], at[1], "sizes after 100 and after 200 reloads");
    let [modules, .., prev] = at[1];
    assert_eq!(modules, MODULE_HISTORY.min(200));
    assert!(prev <= PREV_ENTITY_HISTORY, "{prev}");
}

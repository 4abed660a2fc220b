//! Benchmarks of the tracking store: folding track events and resolving tracks by path.
//!
//! Run with `cargo bench -p hmr-track`.

use divan::{Bencher, black_box};
use hmr_track::{Event, ModuleOutcome, Recorder, Signature, State, UpdateOutcome};

fn main() {
    divan::main();
}

/// 1,000 pipelines of 1 + 49 tracks: 50,000 track-call / track-call-return pairs.
const PIPELINES: u64 = 1_000;
const PER_PIPELINE: u64 = 49;

/// One registration run: `module-call`, 100,000 track events, `module-call-return`.
fn track_events(module: u64) -> Vec<Event> {
    let mut events = Vec::with_capacity((PIPELINES * (PER_PIPELINE + 1) * 2 + 2) as usize);
    events.push(Event::ModuleCall {
        module,
        label: format!("v{module}"),
    });
    let kinds = ["map", "filter", "scan", "tap"];
    let mut id = 0;
    for p in 0..PIPELINES {
        let pipeline = id;
        id += 1;
        events.push(Event::TrackCall {
            track: pipeline,
            kind: "pipeline".into(),
            key: Some(format!("pipeline-{p}")),
            signature: Signature::default(),
        });
        for i in 0..PER_PIPELINE {
            events.push(Event::TrackCall {
                track: id,
                kind: kinds[(i % 4) as usize].into(),
                key: None,
                signature: Signature {
                    seed: Some(i.to_string()),
                    ..Signature::default()
                },
            });
            events.push(Event::TrackCallReturn { track: id });
            id += 1;
        }
        events.push(Event::TrackCallReturn { track: pipeline });
    }
    events.push(Event::ModuleCallReturn {
        module,
        outcome: ModuleOutcome::Ok,
    });
    events
}

fn loaded() -> State {
    State::replay(&track_events(1)).expect("valid events")
}

/// 10,000 paths spread over the store.
fn sample_paths(state: &State) -> Vec<String> {
    let step = state.store.paths.len() / 10_000;
    state
        .store
        .paths
        .keys()
        .step_by(step)
        .take(10_000)
        .cloned()
        .collect()
}

#[divan::bench(sample_count = 10)]
fn apply_100k_track_events(bencher: Bencher) {
    let events = track_events(1);
    bencher
        .with_inputs(State::default)
        .bench_local_values(|mut state| {
            for event in &events {
                state.apply(event).expect("valid event");
            }
            state
        });
}

#[divan::bench(sample_count = 20)]
fn find_10k_tracks_by_path(bencher: Bencher) {
    let state = loaded();
    let paths = sample_paths(&state);
    assert_eq!(paths.len(), 10_000);
    bencher.bench_local(|| {
        let mut found = 0u64;
        for path in &paths {
            found += black_box(&state).find_by_path(path).map_or(0, |t| t.id);
        }
        found
    });
}

#[divan::bench(sample_count = 20)]
fn derive_10k_structural_paths(bencher: Bencher) {
    let state = loaded();
    let ids: Vec<u64> = sample_paths(&state)
        .iter()
        .filter_map(|p| state.find_by_path(p).map(|t| t.id))
        .collect();
    bencher.bench_local(|| {
        let mut total = 0usize;
        for &id in &ids {
            total += black_box(&state)
                .derive_structural_path(id)
                .map_or(0, |p| p.len());
        }
        total
    });
}

/// The host-side reconcile of a reload of 10,000 tracks: re-run the registration (module 2)
/// and swap every pending track.
#[divan::bench(sample_count = 10)]
fn rerun_and_swap_10k_tracks(bencher: Bencher) {
    let mut rec = Recorder::new();
    let register = |rec: &mut Recorder| {
        let module = rec.module_call("bench").expect("module-call");
        for p in 0..200 {
            let name = format!("pipeline-{p}");
            let pipeline = rec
                .track_call("pipeline", Some(&name), Signature::default())
                .expect("track-call");
            for _ in 0..49 {
                let t = rec
                    .track_call("map", None, Signature::default())
                    .expect("track-call");
                rec.track_call_return(t).expect("track-call-return");
            }
            rec.track_call_return(pipeline).expect("track-call-return");
        }
        rec.module_call_return(module, ModuleOutcome::Ok)
            .expect("module-call-return");
    };
    register(&mut rec);
    let first = rec.log.len();
    register(&mut rec);
    let rerun: Vec<Event> = rec.log[first..].to_vec();
    let base = State::replay(&rec.log[..first]).expect("valid events");
    bencher
        .with_inputs(|| base.clone())
        .bench_local_values(|mut state| {
            for event in &rerun {
                state.apply(event).expect("valid event");
            }
            for track in state.pending_updates(2) {
                state
                    .apply(&Event::TrackUpdate {
                        track,
                        module: 2,
                        outcome: UpdateOutcome::Swapped,
                    })
                    .expect("swap");
            }
            state
        });
}

/// The host's path for the same reload: no log, each track-call hinted with the last run's
/// id at its place, the run settled in one pass (`settle_run`).
#[divan::bench(sample_count = 10)]
fn rerun_hinted_and_settle_10k_tracks(bencher: Bencher) {
    let register = |rec: &mut Recorder, hints: &[u64]| -> Vec<u64> {
        let mut made = Vec::with_capacity(10_000);
        let module = rec.module_call("bench").expect("module-call");
        for p in 0..200 {
            let name = format!("pipeline-{p}");
            let hint = hints.get(made.len()).copied();
            let pipeline = rec
                .track_call_hinted("pipeline", Some(&name), Signature::default(), hint)
                .expect("track-call");
            made.push(pipeline);
            for _ in 0..49 {
                let hint = hints.get(made.len()).copied();
                let t = rec
                    .track_call_hinted("map", None, Signature::default(), hint)
                    .expect("track-call");
                made.push(t);
                rec.track_call_return(t).expect("track-call-return");
            }
            rec.track_call_return(pipeline).expect("track-call-return");
        }
        rec.module_call_return(module, ModuleOutcome::Ok)
            .expect("module-call-return");
        made
    };
    let mut base = Recorder::without_log();
    let hints = register(&mut base, &[]);
    bencher
        .with_inputs(|| base.clone())
        .bench_local_values(|mut rec| {
            register(&mut rec, &hints);
            rec.settle_run(2).expect("settle");
            rec
        });
}

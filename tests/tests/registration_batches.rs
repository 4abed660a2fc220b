//! A registration reaches the store in batches while the plugin's `register` still runs (the
//! store's replay overlaps the plugin's registration). A run that fails after some batches
//! were replayed leaves nothing of itself in the store, whatever the failure: a panic, a
//! `register` that never returns, a key the store refuses in a late batch. The plugin's own
//! error is the one reported, even when an earlier batch met a store error. Real builds, one
//! plugin whose registration a file in its crate steers.

use std::time::Duration;

use host::loader::Loader;
use host::register::Registrar;
use host::testkit::{Fixture, TempDir};
use integration_tests::build_copy;

/// Twelve pipelines of 400 keyed scopes (about 800 registration calls a pipeline, so a run
/// sends several batches before its end); what `mode` says happens after the eleventh
/// pipeline (`endless`: more pipelines, batches all along, until the mode changes, which the
/// next run does), or, for `early-twice-then-panic`, a second pipeline named `p0` right after
/// the first.
const BATCHES: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    let mode = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mode"))
        .unwrap_or_default();
    let mode = mode.trim();
    for i in 0..12 {
        let mut chain = p.pipeline(&format!("p{i}"), interval_ms(3_600_000));
        for s in 0..400 {
            chain = chain.scope(&format!("s{s}"), |c| c);
        }
        chain.scan(0u64, |a: u64, n: u64| a.wrapping_add(n)).log();
        if i == 0 && mode == "early-twice-then-panic" {
            p.pipeline("p0", interval_ms(5)).log();
        }
        if i == 10 {
            match mode {
                "panic" | "early-twice-then-panic" => panic!("planted after the batches"),
                "block" => loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                },
                "twice" => {
                    p.pipeline("p3", interval_ms(5)).log();
                }
                // Pipelines without end (until the test says otherwise), batches all along.
                "endless" => {
                    for k in 0.. {
                        let mode = std::fs::read_to_string(concat!(
                            env!("CARGO_MANIFEST_DIR"),
                            "/mode"
                        ))
                        .unwrap_or_default();
                        if mode.trim() != "endless" {
                            break;
                        }
                        let mut chain = p.pipeline(&format!("e{k}"), interval_ms(5));
                        for s in 0..50 {
                            chain = chain.scope(&format!("s{s}"), |c| c);
                        }
                        chain.log();
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                _ => {}
            }
        }
    }
}

plugin_api::export_plugin!(register);
"#;

/// What a registration run leaves in the store: everything but the record of the runs.
/// (Compared as text: the store's `Debug`, the tracks in id order.)
fn kept(recorder: &hmr_track::Recorder) -> String {
    let s = &recorder.state.store;
    assert!(recorder.state.stack.is_empty(), "a call left open");
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        s.tracks.iter().collect::<Vec<_>>(),
        s.pipelines,
        s.operators,
        s.subscriptions,
        s.subjects,
        s.paths,
        recorder.state.current_module,
    )
}

#[test]
fn a_run_that_fails_after_its_first_batches_leaves_nothing_in_the_store() -> anyhow::Result<()> {
    let fixture = Fixture::new("registration_batches", BATCHES);
    let config = fixture.build_config(false)?;
    let keep = TempDir::new("registration-batches-libs");
    let lib = build_copy(&config, keep.path(), "lib.so")?;
    let loader = Loader::new()?;
    // With its log: what reached the store before a run failed is in it.
    let mut recorder = hmr_track::Recorder::new();
    let mut registrar = Registrar::default();
    let mut version = 0;
    let mut run = |mode: &str,
                   recorder: &mut hmr_track::Recorder,
                   deadline: Duration|
     -> anyhow::Result<Result<usize, String>> {
        fixture.write("mode", mode);
        version += 1;
        let (lib, _) = loader.load(&lib, version)?;
        match registrar.register(&lib, recorder, deadline) {
            Ok((module, pipelines)) => {
                // As the reloader does after a registration: the run's updates committed.
                recorder.settle_run(module)?;
                Ok(Ok(pipelines.len()))
            }
            Err(e) => Ok(Err(e.to_string())),
        }
    };
    let deadline = host::register::REGISTER_DEADLINE;
    assert_eq!(run("", &mut recorder, deadline)?, Ok(12));
    let tracks = recorder.state.store.tracks.len();
    assert!(tracks > 4_800, "{tracks} tracks");
    let mut good = kept(&recorder);

    // Each: the mode, the deadline, a part of the error.
    let cases = [
        (
            "panic",
            deadline,
            "register panicked: planted after the batches",
        ),
        ("block", Duration::from_secs(2), "did not return within 2s"),
        ("twice", deadline, "two pipelines are named `p3`"),
        (
            "endless",
            Duration::from_secs(2),
            "did not return within 2s",
        ),
        (
            "early-twice-then-panic",
            deadline,
            "register panicked: planted after the batches",
        ),
    ];
    for (mode, deadline, part) in cases {
        let failed = run(mode, &mut recorder, deadline)?;
        match failed {
            Err(e) => assert!(e.contains(part), "{mode}: {e}"),
            Ok(n) => panic!("{mode}: registered {n} pipelines"),
        }
        // The run's batches reached the store while the plugin ran (a panic or a stall
        // after the eleventh pipeline: ten pipelines' scopes in batches before it)...
        let from = recorder
            .log
            .iter()
            .rposition(|e| matches!(e, hmr_track::Event::ModuleCall { .. }))
            .expect("the run's module-call");
        let replayed = recorder.log[from..]
            .iter()
            .filter(|e| matches!(e, hmr_track::Event::TrackCall { .. }))
            .count();
        if mode != "early-twice-then-panic" {
            assert!(
                replayed >= 4_000,
                "{mode}: {replayed} track-calls before it failed"
            );
        }
        // ... and the rollback took every one of them out.
        let after = kept(&recorder);
        assert!(
            after == good,
            "{mode}: the failed run left a trace in the store"
        );
        // The next good run registers the same tracks again (after a `register` that never
        // returned, on a new registration thread).
        assert_eq!(run("", &mut recorder, deadline)?, Ok(12), "after {mode}");
        assert_eq!(recorder.state.store.tracks.len(), tracks, "after {mode}");
        good = kept(&recorder);
    }
    Ok(())
}

//! Subjects as entities of the tracking store, on real builds: after each load the store lists
//! every subject with its value type, publishers and subscribers; a reload updates them, one
//! that drops every use of a subject removes it, and a refused registration changes nothing.

use std::collections::BTreeSet;

use hmr_track::{Id, Store};
use host::events::HostEvent;
use host::reloader::{Outcome, Reloader};
use host::testkit::Fixture;
use integration_tests::{channel_reloader, next_matching, plugin};
use std::time::Duration;

/// One publisher and two subscribers of `evens`.
const V1: &str = r#"    p.pipeline("src", interval_ms(5))
        .map(|n: u64| n * 2)
        .publish("evens");
    p.pipeline("count", subject::<u64>("evens"))
        .scan(0u64, |acc: u64, _n: u64| acc + 1)
        .log();
    p.pipeline("echo", subject::<u64>("evens")).log();
    // more"#;

/// What the store says of a subject: (value type, publisher paths, subscriber paths).
type Seen = (String, BTreeSet<String>, BTreeSet<String>);

fn subject(reloader: &Reloader, name: &str) -> Option<Seen> {
    let state = &reloader.recorder().state;
    let paths = |ids: &BTreeSet<Id>| -> BTreeSet<String> {
        ids.iter()
            .map(|id| {
                state
                    .track(*id)
                    .map_or(format!("missing track {id}"), |t| t.path.clone())
            })
            .collect()
    };
    state.subject(name).map(|s| {
        (
            s.item.name.to_string(),
            paths(&s.publishers),
            paths(&s.subscribers),
        )
    })
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| (*p).to_owned()).collect()
}

fn loaded(reloader: &mut Reloader) -> u64 {
    match reloader.reload() {
        Outcome::Loaded { version } => version,
        other => panic!("expected a load, got {other:?}"),
    }
}

/// The parts of the store a refused registration must leave alone.
fn entities(store: &Store) -> impl PartialEq + std::fmt::Debug + use<> {
    (
        store.subjects.clone(),
        store.tracks.values().cloned().collect::<Vec<_>>(),
        store.paths.clone(),
        store.pipelines.clone(),
        store.operators.clone(),
    )
}

#[test]
fn subjects_in_the_store_follow_each_load() -> anyhow::Result<()> {
    let fixture = Fixture::new("subjects_store", &plugin(V1));
    let (mut reloader, events) = channel_reloader(fixture.build_config(false)?)?;

    // v1: one publisher, two subscribers.
    let v1 = loaded(&mut reloader);
    assert_eq!(
        subject(&reloader, "evens"),
        Some(("u64".into(), set(&["src"]), set(&["count", "echo"])))
    );
    let evens = reloader
        .recorder()
        .state
        .subject("evens")
        .expect("declared");
    assert_eq!((evens.module, evens.created_by), (v1, v1));
    assert_eq!(reloader.recorder().state.subjects().count(), 1);

    // Refused registrations leave the store as it was: a type mismatch (the host's check),
    // and a run that declares a new subject, then names one the store refuses (an empty name).
    let refused = [
        (
            ".map(|n: u64| n * 2)",
            ".map(|n: u64| n as u32 * 2)",
            &[
                "subject \"evens\": ",
                "`u32`",
                "`u64`",
                "must agree on the value type",
            ][..],
        ),
        (
            "    // more",
            "    p.pipeline(\"odd\", interval_ms(5)).publish(\"odds\");\n    \
             p.pipeline(\"anon\", interval_ms(5)).publish(\"\");",
            &["pipeline anon: publish \"\": subject-use: invalid subject name"][..],
        ),
    ];
    for (from, to, why) in refused {
        let before = entities(&reloader.recorder().state.store);
        fixture.edit("src/lib.rs", from, to);
        assert_eq!(reloader.reload(), Outcome::LoadFailed, "{to}");
        let failed = next_matching(&events, Duration::from_secs(5), |e| {
            matches!(e, HostEvent::LoadFailed { .. })
        })?;
        let HostEvent::LoadFailed { error } = failed else {
            unreachable!()
        };
        for part in why {
            assert!(error.contains(part), "{part} in {error}");
        }
        assert_eq!(entities(&reloader.recorder().state.store), before, "{to}");
        assert_eq!(reloader.current(), Some(v1));
        fixture.edit("src/lib.rs", to, from);
    }

    // v2: `echo` reads an interval instead; the subject keeps its identity.
    fixture.edit(
        "src/lib.rs",
        r#"p.pipeline("echo", subject::<u64>("evens"))"#,
        r#"p.pipeline("echo", interval_ms(5))"#,
    );
    let v2 = loaded(&mut reloader);
    assert_eq!(
        subject(&reloader, "evens"),
        Some(("u64".into(), set(&["src"]), set(&["count"])))
    );
    let evens = reloader
        .recorder()
        .state
        .subject("evens")
        .expect("declared");
    assert_eq!((evens.module, evens.created_by), (v2, v1));

    // v3: nothing uses `evens` any more.
    fixture.edit("src/lib.rs", r#".publish("evens")"#, ".log()");
    fixture.edit(
        "src/lib.rs",
        r#"p.pipeline("count", subject::<u64>("evens"))"#,
        r#"p.pipeline("count", interval_ms(5))"#,
    );
    loaded(&mut reloader);
    assert_eq!(subject(&reloader, "evens"), None);
    assert_eq!(reloader.recorder().state.subjects().count(), 0);
    assert!(reloader.recorder().state.find_by_path("count").is_some());
    reloader.runtime().stop_all();
    Ok(())
}

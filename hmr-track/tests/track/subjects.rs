//! Subjects as entities: declared by `subject-use` inside a run, replaced by each `ok` run,
//! gone when a run no longer mentions them, untouched by a failed run; refusals change nothing.

use std::collections::BTreeSet;

use hmr_track::{ApplyError, Event, Id, ModuleOutcome, Recorder, State, Store, SubjectRole};

use crate::support::{Use, item, parse, run_with_subjects, settle};

use SubjectRole::{Publish, Subscribe};

const PROGRAM: &str = "counts{map} a{map} b{filter}";

fn id(rec: &Recorder, path: &str) -> Id {
    rec.state.find_by_path(path).expect("track exists").id
}

fn ids(rec: &Recorder, paths: &[&str]) -> BTreeSet<Id> {
    paths.iter().map(|p| id(rec, p)).collect()
}

/// (subject, type, publishers, subscribers, module, created_by) of every subject, by name.
type View = (String, String, BTreeSet<Id>, BTreeSet<Id>, u64, u64);

fn view(state: &State) -> Vec<View> {
    state
        .subjects()
        .map(|s| {
            (
                s.name.clone(),
                s.item.name.to_string(),
                s.publishers.clone(),
                s.subscribers.clone(),
                s.module,
                s.created_by,
            )
        })
        .collect()
}

/// Runs `program` with `uses` and settles it like the host (orphans removed).
fn reload(rec: &mut Recorder, program: &str, uses: &[Use<'_>]) -> u64 {
    let run = run_with_subjects(rec, &parse(program), uses).expect("the run is accepted");
    settle(rec, run.module).expect("the run settles");
    run.module
}

const ONE_PUBLISHER_TWO_READERS: &[Use<'_>] = &[
    ("counts", "totals", Publish, "u64"),
    ("a", "totals", Subscribe, "u64"),
    ("b", "totals", Subscribe, "u64"),
];

#[test]
fn a_subject_follows_the_runs_that_declare_it() {
    let mut rec = Recorder::new();
    reload(&mut rec, PROGRAM, ONE_PUBLISHER_TWO_READERS);
    let (counts, readers) = (id(&rec, "counts"), ids(&rec, &["a", "b"]));
    assert_eq!(
        view(&rec.state),
        [(
            "totals".into(),
            "u64".into(),
            BTreeSet::from([counts]),
            readers.clone(),
            1,
            1
        )]
    );

    // Reload: `b` no longer reads it (and `b` itself is gone).
    reload(
        &mut rec,
        "counts{map} a{map}",
        &ONE_PUBLISHER_TWO_READERS[..2],
    );
    assert!(rec.state.find_by_path("b").is_none());
    assert_eq!(
        view(&rec.state),
        [(
            "totals".into(),
            "u64".into(),
            BTreeSet::from([counts]),
            ids(&rec, &["a"]),
            2,
            1
        )]
    );

    // Reload: the value type changes, publisher and reader agreeing.
    let as_text: &[Use<'_>] = &[
        ("counts", "totals", Publish, "String"),
        ("a", "totals", Subscribe, "String"),
    ];
    reload(&mut rec, "counts{map} a{map}", as_text);
    assert_eq!(
        rec.state.subject("totals").map(|s| &*s.item.name),
        Some("String")
    );

    // Reload: nothing mentions it any more; the pipelines stay.
    reload(&mut rec, "counts{map} a{map}", &[]);
    assert!(
        rec.state.subject("totals").is_none(),
        "{:?}",
        view(&rec.state)
    );
    assert_eq!(rec.state.subjects().count(), 0);
    assert!(rec.state.find_by_path("counts").is_some());
    assert_eq!(
        State::replay(&rec.log).as_ref(),
        Ok(&rec.state),
        "the log rebuilds the state"
    );
}

#[test]
fn queries_list_subjects_by_name_and_by_track() {
    let mut rec = Recorder::new();
    let uses: &[Use<'_>] = &[
        ("counts", "zeta", Publish, "u64"),
        ("counts", "alpha", Publish, "u64"),
        ("a", "alpha", Subscribe, "u64"),
        ("a", "alpha", Subscribe, "u64"),
        ("b", "zeta", Subscribe, "u64"),
    ];
    reload(&mut rec, PROGRAM, uses);
    let names: Vec<&str> = rec.state.subjects().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"]);
    let of = |path: &str| -> Vec<String> {
        rec.state
            .subjects_of_track(id(&rec, path))
            .iter()
            .map(|s| s.name.clone())
            .collect()
    };
    assert_eq!(of("counts"), ["alpha", "zeta"]);
    assert_eq!(of("a"), ["alpha"]);
    assert_eq!(of("b"), ["zeta"]);
    assert_eq!(
        rec.state.subject("alpha").map(|s| s.subscribers.len()),
        Some(1),
        "a repeated use counts once"
    );
    assert!(rec.state.subject("nope").is_none());
}

#[test]
fn a_failed_run_leaves_the_subjects_as_they_were() {
    // What the failed second run declares before it fails: it changes an existing subject
    // (another type, other readers) and makes a new one.
    let second: &[Use<'_>] = &[
        ("counts", "totals", Publish, "i32"),
        ("c", "totals", Subscribe, "i32"),
        ("c", "fresh", Publish, "u8"),
    ];
    for cut in 0..=second.len() {
        let mut rec = Recorder::new();
        reload(&mut rec, PROGRAM, ONE_PUBLISHER_TWO_READERS);
        let before = rec.state.store.subjects.clone();
        let module = rec.module_call("v2").unwrap();
        for node in parse("counts{map} c{map}") {
            crate::support::emit(&mut rec, &node, &mut vec![0], &mut Vec::new()).unwrap();
        }
        for &(pipeline, subject, role, ty) in &second[..cut] {
            let track = id(&rec, pipeline);
            rec.subject_use(subject, track, role, item(ty)).unwrap();
        }
        rec.module_call_return(
            module,
            ModuleOutcome::Failed {
                reason: "boom".into(),
            },
        )
        .unwrap();
        assert_eq!(rec.state.store.subjects, before, "cut {cut}");
        assert!(rec.state.stack.is_empty());
    }
}

#[test]
fn the_store_with_subjects_round_trips_through_json() {
    let mut rec = Recorder::new();
    reload(&mut rec, PROGRAM, ONE_PUBLISHER_TWO_READERS);
    let json = serde_json::to_value(&rec.state).unwrap();
    assert_eq!(json["store"]["subjects"]["totals"]["item"]["name"], "u64");
    let back: State = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, rec.state);
    // A store serialized before subjects were entities still reads.
    let mut old = json["store"].clone();
    old.as_object_mut().unwrap().remove("subjects");
    let store: Store = serde_json::from_value(old).unwrap();
    assert!(store.subjects.is_empty());
    assert_eq!(store.tracks, rec.state.store.tracks);
}

/// Applies `event` expecting a refusal; checks the state did not change.
fn refuse(state: &mut State, event: &Event) -> ApplyError {
    let before = state.clone();
    let error = state.apply(event).expect_err("event must be refused");
    assert_eq!(*state, before, "refused {event:?} changed the state");
    assert_eq!(error.event(), event.name());
    error
}

#[test]
fn subject_uses_that_break_a_rule_are_refused() {
    // Run 1 made `counts`, `a`, `b` and the subject; run 2 (open) registered `counts` again,
    // opened `c` (not closed) and declared `totals` as u64 from `counts`.
    let mut rec = Recorder::new();
    reload(&mut rec, PROGRAM, ONE_PUBLISHER_TWO_READERS);
    let mut closed = rec.clone();
    let module = rec.module_call("v2").unwrap();
    crate::support::emit(
        &mut rec,
        &parse("counts{map}")[0],
        &mut vec![0],
        &mut Vec::new(),
    )
    .unwrap();
    let counts = id(&rec, "counts");
    let map = id(&rec, "counts|0:map");
    let old = id(&rec, "a");
    rec.subject_use("totals", counts, Publish, item("u64"))
        .unwrap();
    let open = rec
        .track_call("pipeline", Some("c"), hmr_track::Signature::default())
        .unwrap();
    let use_of = |subject: &str, track: Id, ty: &str| Event::SubjectUse {
        subject: subject.into(),
        track,
        role: Subscribe,
        item: item(ty),
    };
    let table: &[(Event, &str)] = &[
        (
            use_of("", counts, "u64"),
            "subject-use: invalid subject name \"\" (a subject name is non-empty and holds no \
             control character)",
        ),
        (
            use_of("a\nb", counts, "u64"),
            "subject-use: invalid subject name \"a\\nb\" (a subject name is non-empty and holds \
             no control character)",
        ),
        (
            use_of("totals", 999, "u64"),
            "subject-use: unknown track 999",
        ),
        (
            use_of("totals", old, "u64"),
            &format!("subject-use: track {old} is not registered by the running module {module}"),
        ),
        (
            use_of("totals", map, "u64"),
            &format!("subject-use: track {map} is not a pipeline track"),
        ),
        (
            use_of("totals", open, "u64"),
            &format!("subject-use: track {open} is not a pipeline track"),
        ),
        (
            use_of("totals", counts, "i32"),
            &format!(
                "subject-use: subject \"totals\" carries u64 in module {module}, track {counts} \
                 uses it with i32"
            ),
        ),
        (use_of("totals", counts, "u64"), ""),
    ];
    for (event, text) in table {
        if text.is_empty() {
            // The same type again is accepted.
            rec.clone().record(event.clone()).unwrap();
            continue;
        }
        let error = refuse(&mut rec.state, event);
        assert_eq!(error.to_string(), *text);
    }
    // Outside a run.
    let error = refuse(&mut closed.state, &use_of("totals", counts, "u64"));
    assert_eq!(
        error.to_string(),
        "subject-use: no module is open (call it between module-call and module-call-return)"
    );
}

#[test]
fn a_publisher_left_behind_is_removed_without_a_dangling_reference() {
    let mut rec = Recorder::new();
    reload(&mut rec, PROGRAM, ONE_PUBLISHER_TWO_READERS);
    let old_counts = id(&rec, "counts");
    // v2: `counts` is gone, `c` publishes instead.
    let uses: &[Use<'_>] = &[
        ("c", "totals", Publish, "u64"),
        ("a", "totals", Subscribe, "u64"),
    ];
    let run = run_with_subjects(&mut rec, &parse("a{map} c{map}"), uses).unwrap();
    let subject = rec.state.subject("totals").unwrap().clone();
    assert_eq!(subject.publishers, ids(&rec, &["c"]));
    assert!(!subject.publishers.contains(&old_counts));
    let settled = settle(&mut rec, run.module).unwrap();
    assert!(settled.removed.contains(&"counts".to_owned()));
    for track in subject.publishers.iter().chain(&subject.subscribers) {
        assert!(rec.state.track(*track).is_some());
    }
}

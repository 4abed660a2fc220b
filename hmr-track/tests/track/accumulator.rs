//! The accumulator's rules, event by event: paths, correlation, modules, updates, subscriptions,
//! ids and refusals (each refusal leaves the state exactly as it was).

use hmr_track::{
    ApplyError, Event, ModuleOutcome, ModuleStatus, Recorder, Signature, State, UpdateOutcome,
    apply,
};
use std::sync::Arc;

use crate::support::{parse, paths, recorded, replay_checked, run, settle};

/// Applies `event` expecting a refusal; checks the state did not change.
fn refuse(state: &mut State, event: Event) -> ApplyError {
    let before = state.clone();
    let error = state.apply(&event).expect_err("event must be refused");
    assert_eq!(*state, before, "refused {event:?} changed the state");
    assert_eq!(error.event(), event.name());
    error
}

fn track_call(track: u64, kind: &str, key: Option<&str>) -> Event {
    Event::TrackCall {
        track,
        kind: kind.into(),
        key: key.map(Into::into),
        signature: Signature::default(),
    }
}

fn module_call(module: u64) -> Event {
    Event::ModuleCall {
        module,
        label: format!("v{module}"),
    }
}

#[test]
fn paths_of_programs() {
    let table: &[(&str, &[&str])] = &[
        (
            "counter{map filter}",
            &["counter", "counter|0:map", "counter|1:filter"],
        ),
        (
            "counter{map filter scan(0) tap}",
            &[
                "counter",
                "counter|0:map",
                "counter|1:filter",
                "counter|2:scan",
                "counter|3:tap",
            ],
        ),
        (
            "counter{#norm:scope{map} map}",
            &[
                "counter",
                "counter|#norm:scope",
                "counter|#norm:scope|0:map",
                "counter|0:map",
            ],
        ),
        (
            // The index restarts in every scope, like hook call order.
            "a{map{tap tap} filter{tap}}",
            &[
                "a",
                "a|0:map",
                "a|0:map|0:tap",
                "a|0:map|1:tap",
                "a|1:filter",
                "a|1:filter|0:tap",
            ],
        ),
        (
            // Keyed scopes consume no index.
            "a{map #x:scope #y:scope{filter} map}",
            &[
                "a",
                "a|#x:scope",
                "a|#y:scope",
                "a|#y:scope|0:filter",
                "a|0:map",
                "a|1:map",
            ],
        ),
        (
            "total{reduce(0)} counter{map}",
            &["counter", "counter|0:map", "total", "total|0:reduce"],
        ),
        ("#solo:scope{map}", &["solo", "solo|0:map"]),
        ("x{#k:map #k:filter}", &["x", "x|#k:filter", "x|#k:map"]),
    ];
    for (src, expected) in table {
        let rec = recorded(src);
        assert_eq!(paths(&rec.state), *expected, "{src}");
        assert!(rec.state.stack.is_empty(), "{src}");
        for track in rec.state.store.tracks.values() {
            assert_eq!(
                rec.state.derive_structural_path(track.id).as_deref(),
                Ok(track.path.as_str()),
                "{src}"
            );
        }
    }
}

#[test]
fn bad_track_calls_are_refused_with_their_reason() {
    // Each row: a prefix of events (accepted), then the refused event and its error text.
    let table: Vec<(Vec<Event>, Event, &str)> = vec![
        (
            vec![],
            track_call(0, "pipeline", Some("c")),
            "track-call: no module is open (call it between module-call and module-call-return)",
        ),
        (
            vec![module_call(1)],
            track_call(0, "map", None),
            "track-call: a top-level track must be keyed (kind map has no key)",
        ),
        (
            vec![module_call(1)],
            track_call(0, "pipeline", Some("")),
            "track-call: invalid key \"\" (keys are non-empty and hold none of '|', ':', '#' and no control character)",
        ),
        (
            vec![module_call(1)],
            track_call(0, "pipeline", Some("a|b")),
            "track-call: invalid key \"a|b\" (keys are non-empty and hold none of '|', ':', '#' and no control character)",
        ),
        (
            vec![module_call(1)],
            track_call(0, "pipeline", Some("a:b")),
            "track-call: invalid key \"a:b\" (keys are non-empty and hold none of '|', ':', '#' and no control character)",
        ),
        (
            vec![module_call(1)],
            track_call(0, "pipeline", Some("#a")),
            "track-call: invalid key \"#a\" (keys are non-empty and hold none of '|', ':', '#' and no control character)",
        ),
        (
            vec![module_call(1)],
            track_call(0, "pipeline", Some("a\0b")),
            "track-call: invalid key \"a\\0b\" (keys are non-empty and hold none of '|', ':', '#' and no control character)",
        ),
        (
            vec![module_call(1)],
            track_call(0, "pipeline", Some("a\nb")),
            "track-call: invalid key \"a\\nb\" (keys are non-empty and hold none of '|', ':', '#' and no control character)",
        ),
        (
            vec![module_call(1)],
            track_call(0, "", Some("a")),
            "track-call: invalid kind \"\" (kinds are non-empty and hold no '|')",
        ),
        (
            vec![
                module_call(1),
                track_call(0, "pipeline", Some("c")),
                Event::TrackCallReturn { track: 0 },
            ],
            track_call(1, "pipeline", Some("c")),
            "track-call: duplicate path c in module 1",
        ),
        (
            vec![
                module_call(1),
                track_call(0, "pipeline", Some("c")),
                track_call(1, "scope", Some("k")),
                Event::TrackCallReturn { track: 1 },
            ],
            track_call(2, "scope", Some("k")),
            "track-call: duplicate path c|#k:scope in module 1",
        ),
        (
            vec![module_call(1), track_call(0, "pipeline", Some("c"))],
            track_call(0, "map", None),
            "track-call: id 0 is already in use",
        ),
        (
            vec![
                module_call(1),
                track_call(0, "pipeline", Some("c")),
                Event::TrackCallReturn { track: 0 },
                Event::ModuleCallReturn {
                    module: 1,
                    outcome: ModuleOutcome::Ok,
                },
                module_call(2),
            ],
            track_call(7, "pipeline", Some("c")),
            "track-call: path c belongs to track 0, found 7",
        ),
        (
            vec![module_call(1)],
            Event::TrackCall {
                track: 0,
                kind: "map".into(),
                key: Some("m".into()),
                signature: Signature {
                    kind: "filter".into(),
                    ..Signature::default()
                },
            },
            "track-call: signature kind filter differs from track kind map",
        ),
    ];
    for (prefix, event, text) in table {
        let mut state = State::replay(&prefix).expect("prefix is accepted");
        assert_eq!(refuse(&mut state, event).to_string(), text);
    }
}

#[test]
fn bad_returns_are_refused() {
    let open = vec![
        module_call(1),
        track_call(0, "pipeline", Some("c")),
        Event::PipelineCall {
            entity: 1,
            name: "c".into(),
        },
    ];
    let table: Vec<(Vec<Event>, Event, &str)> = vec![
        (
            vec![],
            Event::TrackCallReturn { track: 3 },
            "track-call-return: return for 3 without its call (nothing is open)",
        ),
        (
            vec![],
            Event::ModuleCallReturn {
                module: 1,
                outcome: ModuleOutcome::Ok,
            },
            "module-call-return: return for 1 without its call (nothing is open)",
        ),
        (
            vec![module_call(1)],
            Event::ModuleCallReturn {
                module: 2,
                outcome: ModuleOutcome::Ok,
            },
            "module-call-return: return for another id (expected 1, found 2)",
        ),
        (
            open.clone(),
            Event::PipelineCallReturn { entity: 9 },
            "pipeline-call-return: return for another id (expected 1, found 9)",
        ),
        (
            open.clone(),
            Event::OperatorCallReturn { entity: 1 },
            "operator-call-return: 1 is an open pipeline-call, not this call",
        ),
        (
            open.clone(),
            Event::TrackCallReturn { track: 0 },
            "track-call-return: track 0 is closed while pipeline 1 opened inside it is still open",
        ),
        (
            open.clone(),
            Event::TrackCallReturn { track: 5 },
            "track-call-return: return for another id (expected 0, found 5)",
        ),
        (
            [open.clone(), vec![track_call(2, "map", None)]].concat(),
            Event::PipelineCallReturn { entity: 1 },
            "pipeline-call-return: entity 1 returns inside track 2, which was opened after its call",
        ),
        (
            open.clone(),
            Event::ModuleCallReturn {
                module: 1,
                outcome: ModuleOutcome::Ok,
            },
            "module-call-return: module 1 is closed while track 0 opened inside it is still open",
        ),
        (
            [
                open.clone(),
                vec![
                    Event::PipelineCallReturn { entity: 1 },
                    Event::OperatorCall {
                        entity: 2,
                        kind: "map".into(),
                    },
                ],
            ]
            .concat(),
            Event::OperatorCallReturn { entity: 2 },
            "operator-call-return: track 0 already produced entity 1, a second one (2) is not allowed",
        ),
        (
            vec![],
            Event::OperatorCall {
                entity: 0,
                kind: "map".into(),
            },
            "operator-call: no module is open (call it between module-call and module-call-return)",
        ),
        (
            open.clone(),
            Event::OperatorCall {
                entity: 0,
                kind: "map".into(),
            },
            "operator-call: id 0 is already in use",
        ),
        (
            vec![module_call(1)],
            module_call(2),
            "module-call: module 1 is still open",
        ),
        (
            vec![
                module_call(3),
                Event::ModuleCallReturn {
                    module: 3,
                    outcome: ModuleOutcome::Ok,
                },
            ],
            module_call(3),
            "module-call: module 3 is not greater than the last module 3",
        ),
    ];
    for (prefix, event, text) in table {
        let mut state = State::replay(&prefix).expect("prefix is accepted");
        assert_eq!(refuse(&mut state, event).to_string(), text);
    }
}

#[test]
fn the_entity_returned_directly_inside_a_scope_is_correlated() {
    let mut rec = Recorder::new();
    let m = rec.module_call("v1").unwrap();
    let c = rec
        .track_call("pipeline", Some("c"), Signature::default())
        .unwrap();
    let map = rec.track_call("map", None, Signature::default()).unwrap();
    let op = rec.operator_call("map").unwrap();
    rec.operator_call_return(op).unwrap();
    rec.track_call_return(map).unwrap();
    // The pipeline is created after its children: still directly inside `c`.
    let pipeline = rec.pipeline_call("c").unwrap();
    // A pipeline call may enclose a nested track; the operator inside belongs to that track.
    let scope = rec
        .track_call("scope", Some("k"), Signature::default())
        .unwrap();
    rec.track_call_return(scope).unwrap();
    rec.pipeline_call_return(pipeline).unwrap();
    rec.track_call_return(c).unwrap();
    rec.module_call_return(m, ModuleOutcome::Ok).unwrap();

    let state = &rec.state;
    assert_eq!(state.track(c).unwrap().entity_id, Some(pipeline));
    assert_eq!(state.track(map).unwrap().entity_id, Some(op));
    assert_eq!(state.track(scope).unwrap().entity_id, None);
    assert_eq!(
        state.track(c).unwrap().signature.children,
        [Arc::from("map"), Arc::from("scope")]
    );
    assert_eq!(&*state.track(c).unwrap().signature.kind, "pipeline");
    assert_eq!(state.store.pipelines[&pipeline].module, m);
    assert_eq!(&*state.store.operators[&op].kind, "map");
}

#[test]
fn children_carried_by_the_event_are_ignored() {
    let mut rec = Recorder::new();
    let m = rec.module_call("v1").unwrap();
    let signature = Signature {
        children: vec!["bogus".into()],
        ..Signature::default()
    };
    let c = rec.track_call("pipeline", Some("c"), signature).unwrap();
    assert!(rec.state.track(c).unwrap().signature.children.is_empty());
    rec.track_call_return(c).unwrap();
    rec.module_call_return(m, ModuleOutcome::Ok).unwrap();
    assert!(rec.state.track(c).unwrap().signature.children.is_empty());
}

#[test]
fn a_rerun_leaves_pendings_and_keeps_committed_fields() {
    let mut rec = recorded("c{map scan(0)}");
    let before = rec.state.find_by_path("c|1:scan").unwrap().clone();
    let second = run(&mut rec, &parse("c{map scan(5)}")).unwrap();
    assert_eq!(second.module, 2);
    let after = rec.state.find_by_path("c|1:scan").unwrap();
    assert_eq!(after.id, before.id);
    assert_eq!(after.signature, before.signature);
    assert_eq!(after.entity_id, before.entity_id);
    assert_eq!(after.module, 1);
    let pending = after.pending.as_ref().unwrap();
    assert_eq!(pending.module, 2);
    assert_eq!(pending.signature.seed.as_deref(), Some("5"));
    assert_ne!(pending.entity_id, before.entity_id);
    assert!(pending.entity_id.is_some());
    assert_eq!(rec.state.current_module, Some(2));
}

#[test]
fn track_updates_commit_pendings() {
    let mut rec = recorded("c{map scan(0)}");
    let sub = rec
        .subscribe(rec.state.find_by_path("c").unwrap().id)
        .unwrap();
    let scan = rec.state.find_by_path("c|1:scan").unwrap().clone();
    let map = rec.state.find_by_path("c|0:map").unwrap().clone();
    run(&mut rec, &parse("c{map scan(5)}")).unwrap();

    // Swapping a changed signature is refused, with the reason.
    let error = refuse(
        &mut rec.state,
        Event::TrackUpdate {
            track: scan.id,
            module: 2,
            outcome: UpdateOutcome::Swapped,
        },
    );
    assert_eq!(
        error.to_string(),
        format!(
            "track-update: track {} cannot be swapped: seed changed from 0 to 5",
            scan.id
        )
    );

    let settled = settle(&mut rec, 2).unwrap();
    assert_eq!(settled.swapped, ["c", "c|0:map"]);
    assert_eq!(
        settled.reset,
        [("c|1:scan".to_owned(), "seed changed from 0 to 5".to_owned())]
    );
    assert!(settled.added.is_empty() && settled.removed.is_empty());

    let new_scan = rec.state.track(scan.id).unwrap();
    assert_eq!(new_scan.version, 1);
    assert_eq!(new_scan.module, 2);
    assert_eq!(new_scan.created_by, 1);
    assert_eq!(new_scan.pending, None);
    assert_eq!(new_scan.signature.seed.as_deref(), Some("5"));
    assert_eq!(new_scan.prev_entity_ids, [scan.entity_id.unwrap()]);
    assert_ne!(new_scan.entity_id, scan.entity_id);
    assert_eq!(rec.state.track(map.id).unwrap().version, 1);
    // The subscription follows the track across the swap.
    assert!(rec.state.store.subscriptions[&sub].active);

    // A second update of the same track finds no pending.
    let error = refuse(
        &mut rec.state,
        Event::TrackUpdate {
            track: scan.id,
            module: 2,
            outcome: UpdateOutcome::Swapped,
        },
    );
    assert_eq!(
        error,
        ApplyError::NoPending {
            event: "track-update",
            track: scan.id,
            module: 2
        }
    );
}

#[test]
fn bad_track_updates_are_refused() {
    let mut rec = recorded("c{map{tap}}");
    let c = rec.state.find_by_path("c").unwrap().id;
    let map = rec.state.find_by_path("c|0:map").unwrap().id;
    let sub = rec.subscribe(c).unwrap();
    let update = |track, module, outcome| Event::TrackUpdate {
        track,
        module,
        outcome,
    };

    // Module 1 is current and registered everything: nothing is pending or orphaned.
    let e = refuse(&mut rec.state, update(map, 1, UpdateOutcome::Swapped));
    assert_eq!(
        e,
        ApplyError::NoPending {
            event: "track-update",
            track: map,
            module: 1
        }
    );
    let e = refuse(&mut rec.state, update(map, 1, UpdateOutcome::Removed));
    assert_eq!(
        e,
        ApplyError::NotOrphan {
            event: "track-update",
            track: map,
            module: 1
        }
    );
    let e = refuse(&mut rec.state, update(map, 2, UpdateOutcome::Removed));
    assert_eq!(
        e,
        ApplyError::ModuleNotCurrent {
            event: "track-update",
            module: 2,
            current: Some(1)
        }
    );
    let e = refuse(&mut rec.state, update(999, 1, UpdateOutcome::Removed));
    assert_eq!(
        e,
        ApplyError::UnknownTrack {
            event: "track-update",
            track: 999
        }
    );

    // Module 2 drops the whole pipeline.
    let m2 = rec.module_call("v2").unwrap();
    let e = refuse(&mut rec.state, update(map, 1, UpdateOutcome::Removed));
    assert_eq!(
        e,
        ApplyError::ModuleStillOpen {
            event: "track-update",
            open: m2
        }
    );
    rec.module_call_return(m2, ModuleOutcome::Ok).unwrap();
    let e = refuse(&mut rec.state, update(map, m2, UpdateOutcome::Removed));
    assert!(
        matches!(e, ApplyError::HasChildren { track, .. } if track == map),
        "{e}"
    );
    let e = refuse(&mut rec.state, update(c, m2, UpdateOutcome::Removed));
    assert!(matches!(e, ApplyError::HasChildren { .. }), "{e}");
    let orphans = rec.state.orphans(m2);
    assert_eq!(orphans.len(), 3);
    rec.update(orphans[0], m2, UpdateOutcome::Removed).unwrap();
    rec.update(orphans[1], m2, UpdateOutcome::Removed).unwrap();
    let e = refuse(&mut rec.state, update(c, m2, UpdateOutcome::Removed));
    assert_eq!(
        e,
        ApplyError::ActiveSubscription {
            event: "track-update",
            track: c,
            subscription: sub
        }
    );
    rec.unsubscribe(sub).unwrap();
    rec.update(c, m2, UpdateOutcome::Removed).unwrap();
    assert!(rec.state.store.tracks.is_empty());
    assert!(rec.state.store.paths.is_empty());
    assert_eq!(State::replay(&rec.log).unwrap(), rec.state);
}

#[test]
fn a_failed_run_is_rolled_back_whole() {
    let mut rec = recorded("c{map scan(0)}");
    let c = rec.state.find_by_path("c").unwrap().id;
    let sub = rec.subscribe(c).unwrap();
    let before = rec.state.clone();

    let m = rec.module_call("v2").unwrap();
    let c2 = rec
        .track_call("pipeline", Some("c"), Signature::default())
        .unwrap();
    assert_eq!(c2, c);
    let p = rec.pipeline_call("c").unwrap();
    rec.pipeline_call_return(p).unwrap();
    let new = rec
        .track_call("filter", None, Signature::default())
        .unwrap();
    let sub2 = rec.subscribe(c).unwrap();
    let op = rec.operator_call("filter").unwrap();
    // The registration panics here, with frames still open.
    assert!(rec.state.track(c).unwrap().pending.is_some());
    rec.module_call_return(
        m,
        ModuleOutcome::Failed {
            reason: "panic in register".into(),
        },
    )
    .unwrap();

    let state = &rec.state;
    assert!(state.stack.is_empty());
    assert_eq!(state.store.tracks, before.store.tracks);
    assert_eq!(state.store.paths, before.store.paths);
    assert_eq!(state.store.pipelines, before.store.pipelines);
    assert_eq!(state.store.operators, before.store.operators);
    assert_eq!(state.store.subscriptions, before.store.subscriptions);
    assert!(state.track(new).is_none() && !state.store.operators.contains_key(&op));
    assert!(!state.store.subscriptions.contains_key(&sub2));
    assert!(state.store.subscriptions[&sub].active);
    assert_eq!(state.current_module, Some(1));
    assert_eq!(
        state.store.modules[&m].status,
        ModuleStatus::Failed {
            reason: "panic in register".into()
        }
    );
    // Ids are never reused, and the next good run goes on from there.
    assert!(state.fresh_id() > op);
    let third = run(&mut rec, &parse("c{map scan(0)}")).unwrap();
    assert_eq!(third.module, 3);
    let settled = settle(&mut rec, 3).unwrap();
    assert_eq!(settled.swapped.len(), 3);
    assert_eq!(State::replay(&rec.log).unwrap(), rec.state);
}

#[test]
fn subscriptions() {
    let mut rec = recorded("c{map #k:scope}");
    let c = rec.state.find_by_path("c").unwrap().id;
    let map = rec.state.find_by_path("c|0:map").unwrap().id;
    let scope = rec.state.find_by_path("c|#k:scope").unwrap().id;
    // An operator's track takes an inner subscription (a higher-order operator's, see
    // `tests/track/runtime.rs`); a scope that produced nothing takes none.
    let mut inner = rec.state.clone();
    inner
        .apply(&Event::SubscribeCall {
            subscription: 100,
            track: map,
        })
        .unwrap();
    assert!(inner.store.subscriptions[&100].inner);
    let e = refuse(
        &mut rec.state,
        Event::SubscribeCall {
            subscription: 100,
            track: scope,
        },
    );
    assert_eq!(
        e,
        ApplyError::NotAPipelineTrack {
            event: "subscribe-call",
            track: scope
        }
    );
    let e = refuse(
        &mut rec.state,
        Event::SubscribeCall {
            subscription: 100,
            track: 77,
        },
    );
    assert_eq!(
        e,
        ApplyError::UnknownTrack {
            event: "subscribe-call",
            track: 77
        }
    );
    let e = refuse(
        &mut rec.state,
        Event::SubscribeCall {
            subscription: map,
            track: c,
        },
    );
    assert_eq!(
        e,
        ApplyError::IdInUse {
            event: "subscribe-call",
            id: map
        }
    );

    let id = rec.state.fresh_id();
    rec.record(Event::SubscribeCall {
        subscription: id,
        track: c,
    })
    .unwrap();
    assert!(!rec.state.store.subscriptions[&id].active);
    let e = refuse(&mut rec.state, Event::UnsubscribeCall { subscription: id });
    assert_eq!(
        e,
        ApplyError::CallAlreadyOpen {
            event: "unsubscribe-call",
            id
        }
    );
    let e = refuse(
        &mut rec.state,
        Event::UnsubscribeCallReturn { subscription: id },
    );
    assert_eq!(
        e.to_string(),
        format!("unsubscribe-call-return: {id} is an open subscribe-call, not this call")
    );
    rec.record(Event::SubscribeCallReturn { subscription: id })
        .unwrap();
    assert!(rec.state.store.subscriptions[&id].active);
    rec.unsubscribe(id).unwrap();
    assert!(!rec.state.store.subscriptions[&id].active);
    let e = refuse(&mut rec.state, Event::UnsubscribeCall { subscription: id });
    assert_eq!(
        e,
        ApplyError::SubscriptionNotActive {
            event: "unsubscribe-call",
            subscription: id
        }
    );
    let e = refuse(&mut rec.state, Event::UnsubscribeCall { subscription: 555 });
    assert_eq!(
        e,
        ApplyError::UnknownSubscription {
            event: "unsubscribe-call",
            subscription: 555
        }
    );
    let e = refuse(
        &mut rec.state,
        Event::SubscribeCallReturn { subscription: id },
    );
    assert_eq!(
        e,
        ApplyError::ReturnWithoutCall {
            event: "subscribe-call-return",
            found: id
        }
    );
    assert!(rec.state.stack.is_empty());
}

#[test]
fn ids_come_from_the_path_or_are_fresh() {
    let mut rec = recorded("c{map}");
    let map = rec.state.find_by_path("c|0:map").unwrap().id;
    assert!(rec.state.fresh_id() > map);
    assert_eq!(rec.state.next_id, rec.state.fresh_id());
    let e = rec.state.track_id_for("pipeline", Some("c")).unwrap_err();
    assert_eq!(
        e,
        ApplyError::NoModuleOpen {
            event: "track-call"
        }
    );

    let m = rec.module_call("v2").unwrap();
    let c = rec.state.track_id_for("pipeline", Some("c")).unwrap();
    assert_eq!(Some(c), rec.state.find_by_path("c").map(|t| t.id));
    let fresh = rec.state.track_id_for("pipeline", Some("d")).unwrap();
    assert_eq!(fresh, rec.state.fresh_id());
    let e = rec.state.track_id_for("map", None).unwrap_err();
    assert_eq!(
        e,
        ApplyError::TopLevelNotKeyed {
            event: "track-call",
            kind: "map".into()
        }
    );
    rec.track_call("pipeline", Some("c"), Signature::default())
        .unwrap();
    assert_eq!(rec.state.track_id_for("map", None).unwrap(), map);
    assert_eq!(
        rec.state.track_id_for("filter", None).unwrap(),
        rec.state.fresh_id()
    );

    // An event may introduce an id beyond next_id: next_id follows it.
    rec.record(Event::OperatorCall {
        entity: 1000,
        kind: "map".into(),
    })
    .unwrap();
    assert_eq!(rec.state.fresh_id(), 1001);
    rec.operator_call_return(1000).unwrap();
    rec.track_call_return(c).unwrap();
    rec.module_call_return(m, ModuleOutcome::Ok).unwrap();
    // The duplicate check matches the track-call's.
    rec.module_call("v3").unwrap();
    rec.track_call("pipeline", Some("c"), Signature::default())
        .unwrap();
    rec.track_call_return(c).unwrap();
    let e = rec.state.track_id_for("pipeline", Some("c")).unwrap_err();
    assert_eq!(
        e,
        ApplyError::DuplicatePath {
            event: "track-call",
            path: "c".into(),
            module: 3
        }
    );
}

#[test]
fn the_pure_apply_threads_the_state() {
    let events = recorded("c{map filter}").log;
    let mut state = State::default();
    for event in &events {
        state = apply(state, event).unwrap();
    }
    assert_eq!(state, State::replay(&events).unwrap());
    assert!(apply(state, &Event::TrackCallReturn { track: 0 }).is_err());
}

#[test]
fn replay_checked_stops_at_the_first_refusal() {
    let mut events = recorded("c{map filter}").log;
    events.insert(3, Event::TrackCallReturn { track: 42 });
    let (state, refused) = replay_checked(&events);
    let (index, error) = refused.unwrap();
    assert_eq!(index, 3);
    assert_eq!(error.event(), "track-call-return");
    assert_eq!(state, State::replay(&events[..3]).unwrap());
}

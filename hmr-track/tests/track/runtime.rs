//! Run-time tracks: inner subscriptions of higher-order operators make tracks under the
//! operator's track inside their `subscribe-call`, lose them when they end, and are
//! re-projected after a reload.

use hmr_track::{ApplyError, Event, Id, ModuleOutcome, Recorder, Signature, State, UpdateOutcome};

use crate::support::{Node, parse, recorded, refuse_with, run, settle};

/// The registration: `p|1:switch_map` is the higher-order operator.
const PROGRAM: &str = "p{map switch_map filter}";

fn sig(seed: Option<&str>) -> Signature {
    Signature {
        seed: seed.map(str::to_owned),
        ..Signature::default()
    }
}

/// The host's inner subscription `n` on `op`: a keyed `#n:inner` track, then the inner
/// stream's operators below it (`inner` is a parsed tree, emitted in preorder). Returns the
/// subscription and its tracks in call order.
fn subscribe_inner(rec: &mut Recorder, op: Id, n: &str, inner: &str) -> (Id, Vec<Id>) {
    let sub = rec.subscribe_at(op).expect("subscribe-call");
    let mut tracks = Vec::new();
    let root = rec
        .inner_track_call("inner", Some(n), Signature::default())
        .expect("the subscription's keyed track");
    tracks.push(root);
    for node in parse_inner(inner) {
        emit_inner(rec, &node, &mut tracks).expect("inner track-calls");
    }
    rec.track_call_return(root).expect("return");
    rec.subscribe_call_return(sub)
        .expect("subscribe-call-return");
    (sub, tracks)
}

/// Inner operators: `map scan(0){tap}` (no pipeline at the top, unlike [`parse`]).
fn parse_inner(src: &str) -> Vec<Node> {
    // `parse` makes top-level items pipelines: wrap in one and unwrap.
    parse(&format!("x{{{src}}}")).remove(0).children
}

fn emit_inner(rec: &mut Recorder, node: &Node, out: &mut Vec<Id>) -> Result<(), ApplyError> {
    let track = rec.inner_track_call(&node.kind, node.key.as_deref(), sig(node.seed.as_deref()))?;
    out.push(track);
    for child in &node.children {
        emit_inner(rec, child, out)?;
    }
    rec.track_call_return(track)
}

fn path(rec: &Recorder, id: Id) -> String {
    rec.state.track(id).expect("track").path.clone()
}

fn op(rec: &Recorder) -> Id {
    rec.state
        .find_by_path("p|1:switch_map")
        .expect("operator")
        .id
}

#[test]
fn an_inner_subscription_makes_tracks_under_the_operator() {
    let mut rec = recorded(PROGRAM);
    let op = op(&rec);
    let op_before = rec.state.track(op).unwrap().clone();
    let (sub, tracks) = subscribe_inner(&mut rec, op, "7", "map scan(0){tap} filter");
    let paths: Vec<String> = tracks.iter().map(|&t| path(&rec, t)).collect();
    assert_eq!(
        paths,
        [
            "p|1:switch_map|#7:inner",
            "p|1:switch_map|#7:inner|0:map",
            "p|1:switch_map|#7:inner|1:scan",
            "p|1:switch_map|#7:inner|1:scan|0:tap",
            "p|1:switch_map|#7:inner|2:filter",
        ]
    );
    for &t in &tracks {
        let track = rec.state.track(t).unwrap();
        assert_eq!(track.subscription, Some(sub));
        assert_eq!(
            (track.module, track.created_by),
            (1, 1),
            "the current module"
        );
        assert_eq!(rec.state.derive_structural_path(t).unwrap(), track.path);
        assert_eq!(rec.state.find_by_path(&track.path).map(|t| t.id), Some(t));
        assert_eq!(track.entity_id, None);
    }
    // The parent comes from the stack: the subscription's track, then the open run-time track.
    assert_eq!(rec.state.track(tracks[0]).unwrap().parent, Some(op));
    assert_eq!(rec.state.track(tracks[3]).unwrap().parent, Some(tracks[2]));
    let children: Vec<Id> = rec.state.children(op).iter().map(|t| t.id).collect();
    assert_eq!(children, [tracks[0]]);
    let inner_children: Vec<Id> = rec.state.children(tracks[0]).iter().map(|t| t.id).collect();
    assert_eq!(inner_children, [tracks[1], tracks[2], tracks[4]]);
    // Run-time children do not change the operator's registered signature.
    assert_eq!(rec.state.track(op).unwrap(), &op_before);
    assert_eq!(
        rec.state.track(tracks[0]).unwrap().signature.children,
        ["map".into(), "scan".into(), "filter".into()] as [std::sync::Arc<str>; 3]
    );
    let of_sub: Vec<Id> = rec
        .state
        .tracks_of_subscription(sub)
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(of_sub, tracks);
    let stored = &rec.state.store.subscriptions[&sub];
    assert!(stored.active && stored.inner);
    assert_eq!(stored.track, op);
    assert!(rec.state.stack.is_empty());
    assert_eq!(State::replay(&rec.log).as_ref(), Ok(&rec.state));
}

#[test]
fn concurrent_subscriptions_do_not_collide_and_a_shared_path_is_refused() {
    let mut rec = recorded(PROGRAM);
    let op = op(&rec);
    let (a, ta) = subscribe_inner(&mut rec, op, "1", "map");
    let (b, tb) = subscribe_inner(&mut rec, op, "2", "map");
    assert_eq!(path(&rec, ta[1]), "p|1:switch_map|#1:inner|0:map");
    assert_eq!(path(&rec, tb[1]), "p|1:switch_map|#2:inner|0:map");
    assert_ne!(a, b);
    // A third subscription producing a live one's path is refused, naming its owner.
    let c = rec.subscribe_at(op).unwrap();
    let e = rec
        .inner_track_call("inner", Some("1"), Signature::default())
        .unwrap_err();
    assert_eq!(
        e,
        ApplyError::PathTaken {
            event: "track-call",
            path: "p|1:switch_map|#1:inner".into(),
            track: ta[0],
            owner: format!("subscription {a}"),
        }
    );
    assert_eq!(
        e.to_string(),
        format!(
            "track-call: path p|1:switch_map|#1:inner is held by track {} of subscription {a}",
            ta[0]
        )
    );
    // The same path twice in one subscription is a duplicate, as in a run.
    let t = rec
        .inner_track_call("inner", Some("3"), Signature::default())
        .unwrap();
    rec.track_call_return(t).unwrap();
    let e = rec
        .inner_track_call("inner", Some("3"), Signature::default())
        .unwrap_err();
    assert!(
        matches!(&e, ApplyError::DuplicatePath { path, .. } if path == "p|1:switch_map|#3:inner"),
        "{e}"
    );
    // A subscription's unkeyed top-level tracks are indexed per subscription call.
    let u = rec
        .inner_track_call("tap", None, Signature::default())
        .unwrap();
    assert_eq!(path(&rec, u), "p|1:switch_map|0:tap");
    rec.track_call_return(u).unwrap();
    let v = rec
        .inner_track_call("tap", None, Signature::default())
        .unwrap();
    assert_eq!(path(&rec, v), "p|1:switch_map|1:tap");
    rec.track_call_return(v).unwrap();
    rec.subscribe_call_return(c).unwrap();
    assert_eq!(State::replay(&rec.log).as_ref(), Ok(&rec.state));
}

#[test]
fn unsubscribing_removes_every_track_of_the_subscription() {
    let mut rec = recorded(PROGRAM);
    let op = op(&rec);
    let (keep, kept) = subscribe_inner(&mut rec, op, "1", "map scan{tap{filter}}");
    let (sub, tracks) = subscribe_inner(&mut rec, op, "2", "map scan{tap{filter}}");
    let registration = rec.state.store.tracks.len() - kept.len() - tracks.len();
    rec.unsubscribe(sub).unwrap();
    for &t in &tracks {
        assert!(rec.state.track(t).is_none(), "track {t} left");
        assert_eq!(
            rec.state.derive_structural_path(t),
            Err(ApplyError::UnknownTrack {
                event: "derive-structural-path",
                track: t
            })
        );
    }
    assert!(
        rec.state
            .find_by_path("p|1:switch_map|#2:inner|1:scan|0:tap|0:filter")
            .is_none()
    );
    let children: Vec<Id> = rec.state.children(op).iter().map(|t| t.id).collect();
    assert_eq!(children, [kept[0]]);
    assert_eq!(rec.state.store.tracks.len(), registration + kept.len());
    assert_eq!(rec.state.store.paths.len(), rec.state.store.tracks.len());
    // An inner subscription leaves the store when it ends.
    assert!(!rec.state.store.subscriptions.contains_key(&sub));
    assert!(rec.state.tracks_of_subscription(sub).is_empty());
    assert_eq!(
        rec.unsubscribe(sub),
        Err(ApplyError::UnknownSubscription {
            event: "unsubscribe-call",
            subscription: sub
        })
    );
    // Its key is free again.
    let (again, _) = subscribe_inner(&mut rec, op, "2", "map");
    assert!(rec.state.store.subscriptions[&again].active);
    rec.unsubscribe(keep).unwrap();
    rec.unsubscribe(again).unwrap();
    assert_eq!(rec.state.store.tracks.len(), registration);
    assert_eq!(State::replay(&rec.log).as_ref(), Ok(&rec.state));
}

#[test]
fn a_pipeline_subscription_can_make_run_time_tracks_and_stays_when_ended() {
    let mut rec = recorded(PROGRAM);
    let p = rec.state.find_by_path("p").unwrap().id;
    let sub = rec.subscribe_at(p).unwrap();
    let t = rec
        .inner_track_call("source", Some("s"), Signature::default())
        .unwrap();
    rec.track_call_return(t).unwrap();
    rec.subscribe_call_return(sub).unwrap();
    assert_eq!(path(&rec, t), "p|#s:source");
    assert!(!rec.state.store.subscriptions[&sub].inner);
    rec.unsubscribe(sub).unwrap();
    assert!(rec.state.track(t).is_none());
    let stored = &rec.state.store.subscriptions[&sub];
    assert!(!stored.active && stored.tracks.is_empty());
}

#[test]
fn reloads_never_report_run_time_tracks() {
    let mut rec = recorded(PROGRAM);
    let op = op(&rec);
    let (sub, tracks) = subscribe_inner(&mut rec, op, "1", "map scan(0)");
    let before: Vec<_> = tracks
        .iter()
        .map(|&t| rec.state.track(t).unwrap().clone())
        .collect();

    // The same registration again: nothing is orphaned, nothing run-time is pending.
    let second = run(&mut rec, &parse(PROGRAM)).unwrap();
    assert!(rec.state.orphans(second.module).is_empty());
    let pending = rec.state.pending_updates(second.module);
    assert!(tracks.iter().all(|t| !pending.contains(t)));
    assert!(
        rec.state
            .tracks_of_module(second.module)
            .iter()
            .all(|t| t.subscription.is_none())
    );
    let mut fast = rec.clone();
    let settlement = fast.settle_run(second.module).unwrap();
    for list in [&settlement.swapped, &settlement.added, &settlement.orphans] {
        assert!(tracks.iter().all(|t| !list.contains(t)), "{settlement:?}");
    }
    assert_eq!(settlement.swapped.len(), 4);
    let settled = settle(&mut rec, second.module).unwrap();
    assert!(settled.removed.is_empty() && settled.added.is_empty());
    assert_eq!(fast.state, rec.state);

    // A failed run leaves them as they were; a subscription made inside it goes, with its
    // tracks.
    let m = rec.module_call("v3").unwrap();
    let (inside, inside_tracks) = subscribe_inner(&mut rec, op, "2", "map");
    assert_eq!(rec.state.store.subscriptions[&inside].module, Some(m));
    rec.module_call_return(
        m,
        ModuleOutcome::Failed {
            reason: "boom".into(),
        },
    )
    .unwrap();
    let after: Vec<_> = tracks
        .iter()
        .map(|&t| rec.state.track(t).unwrap().clone())
        .collect();
    assert_eq!(after, before);
    assert!(rec.state.store.subscriptions[&sub].active);
    assert!(!rec.state.store.subscriptions.contains_key(&inside));
    assert!(inside_tracks.iter().all(|&t| rec.state.track(t).is_none()));
    assert_eq!(rec.state.store.paths.len(), rec.state.store.tracks.len());
    assert_eq!(State::replay(&rec.log).as_ref(), Ok(&rec.state));
}

#[test]
fn an_orphaned_operator_keeps_its_live_subscriptions_until_they_end() {
    let mut rec = recorded(PROGRAM);
    let op = op(&rec);
    let (sub, tracks) = subscribe_inner(&mut rec, op, "1", "map{tap}");
    // Version 2 drops the switch_map (and the filter after it).
    let second = run(&mut rec, &parse("p{map}")).unwrap();
    let orphans = rec.state.orphans(second.module);
    assert!(orphans.contains(&op));
    assert!(tracks.iter().all(|t| !orphans.contains(t)));
    let e = refuse_with(
        &mut rec.state,
        Event::TrackUpdate {
            track: op,
            module: second.module,
            outcome: UpdateOutcome::Removed,
        },
    );
    assert_eq!(
        e,
        ApplyError::HoldsRunTimeTracks {
            event: "track-update",
            track: op,
            child: tracks[0],
            subscription: sub,
        }
    );
    assert_eq!(
        e.to_string(),
        format!(
            "track-update: track {op} still holds run-time track {} of subscription {sub} (unsubscribe it first)",
            tracks[0]
        )
    );
    // An inner subscription without tracks still holds the operator.
    let bare = rec.subscribe_at(op).unwrap();
    rec.subscribe_call_return(bare).unwrap();
    rec.unsubscribe(sub).unwrap();
    let e = refuse_with(
        &mut rec.state,
        Event::TrackUpdate {
            track: op,
            module: second.module,
            outcome: UpdateOutcome::Removed,
        },
    );
    assert_eq!(
        e,
        ApplyError::ActiveSubscription {
            event: "track-update",
            track: op,
            subscription: bare,
        }
    );
    // The test reconciler ends the live subscriptions of each orphan, then removes it.
    settle(&mut rec, second.module).unwrap();
    assert!(rec.state.track(op).is_none());
    assert_eq!(
        rec.state.store.paths.keys().cloned().collect::<Vec<_>>(),
        ["p", "p|0:map"]
    );
    assert!(rec.state.store.subscriptions.is_empty());
    assert_eq!(State::replay(&rec.log).as_ref(), Ok(&rec.state));
}

/// A re-projection under module 2: `map` same, `scan` seed changed, `tap` dropped, `#k:scope`
/// added.
#[test]
fn a_re_projection_swaps_resets_adds_and_removes_inner_tracks() {
    let mut rec = recorded(PROGRAM);
    let op = op(&rec);
    let (sub, tracks) = subscribe_inner(&mut rec, op, "1", "map scan(0) tap");
    let e = refuse_with(
        &mut rec.state,
        Event::SubscribeCall {
            subscription: sub,
            track: op,
        },
    );
    assert_eq!(
        e,
        ApplyError::AlreadyProjected {
            event: "subscribe-call",
            subscription: sub,
            code: 1,
            current: Some(1),
        }
    );
    let second = run(&mut rec, &parse(PROGRAM)).unwrap();
    settle(&mut rec, second.module).unwrap();
    let m = second.module;

    let e = refuse_with(
        &mut rec.state,
        Event::SubscribeCall {
            subscription: sub,
            track: tracks[0],
        },
    );
    assert_eq!(
        e,
        ApplyError::SubscriptionTrackMismatch {
            event: "subscribe-call",
            subscription: sub,
            track: op,
            found: tracks[0],
        }
    );
    rec.reproject(sub).unwrap();
    let root = rec
        .inner_track_call("inner", Some("1"), Signature::default())
        .unwrap();
    assert_eq!(root, tracks[0], "the same path keeps its id");
    let mut new = Vec::new();
    for node in parse_inner("map scan(5) #k:scope") {
        emit_inner(&mut rec, &node, &mut new).unwrap();
    }
    // Updates wait for the re-projection to return.
    let e = refuse_with(
        &mut rec.state,
        Event::TrackUpdate {
            track: tracks[1],
            module: m,
            outcome: UpdateOutcome::Swapped,
        },
    );
    assert_eq!(
        e,
        ApplyError::CallNotAllowed {
            event: "track-update",
            open: format!("the subscribe-call of subscription {sub}"),
        }
    );
    rec.track_call_return(root).unwrap();
    rec.subscribe_call_return(sub).unwrap();
    assert_eq!(rec.state.store.subscriptions[&sub].code, m);
    assert_eq!(new[..2], tracks[1..3]);
    let scope = new[2];
    assert_eq!(path(&rec, scope), "p|1:switch_map|#1:inner|#k:scope");
    assert_eq!(rec.state.track(scope).unwrap().created_by, m);

    // What the host reports per inner operator.
    assert_eq!(
        rec.state.projection_updates(sub),
        vec![tracks[0], tracks[1], tracks[2]]
    );
    assert_eq!(rec.state.projection_orphans(sub), vec![tracks[3]]);
    assert!(
        rec.state.pending_updates(m).is_empty(),
        "a run's pendings only"
    );
    assert!(rec.state.orphans(m).is_empty());
    let e = refuse_with(
        &mut rec.state,
        Event::TrackUpdate {
            track: tracks[2],
            module: m,
            outcome: UpdateOutcome::Swapped,
        },
    );
    assert_eq!(
        e,
        ApplyError::SignatureChanged {
            event: "track-update",
            track: tracks[2],
            reason: "seed changed from 0 to 5".into(),
        }
    );
    let e = refuse_with(
        &mut rec.state,
        Event::TrackUpdate {
            track: tracks[1],
            module: m,
            outcome: UpdateOutcome::Removed,
        },
    );
    assert_eq!(
        e,
        ApplyError::NotOrphan {
            event: "track-update",
            track: tracks[1],
            module: m,
        }
    );
    rec.update(
        tracks[0],
        m,
        UpdateOutcome::Reset {
            reason: "children changed".into(),
        },
    )
    .unwrap();
    rec.update(tracks[1], m, UpdateOutcome::Swapped).unwrap();
    rec.update(
        tracks[2],
        m,
        UpdateOutcome::Reset {
            reason: "seed changed from 0 to 5".into(),
        },
    )
    .unwrap();
    rec.update(tracks[3], m, UpdateOutcome::Removed).unwrap();
    let scan = rec.state.track(tracks[2]).unwrap();
    assert_eq!((scan.version, scan.module), (1, m));
    assert_eq!(scan.signature.seed.as_deref(), Some("5"));
    assert!(rec.state.track(tracks[3]).is_none());
    let left: Vec<String> = rec
        .state
        .tracks_of_subscription(sub)
        .iter()
        .map(|t| t.path.clone())
        .collect();
    assert_eq!(
        left,
        [
            "p|1:switch_map|#1:inner",
            "p|1:switch_map|#1:inner|#k:scope",
            "p|1:switch_map|#1:inner|0:map",
            "p|1:switch_map|#1:inner|1:scan",
        ]
    );
    assert!(rec.state.projection_updates(sub).is_empty());
    assert!(rec.state.projection_orphans(sub).is_empty());
    // The end removes what the re-projection left, added ones included.
    rec.unsubscribe(sub).unwrap();
    assert_eq!(rec.state.store.tracks.len(), 4);
    assert_eq!(State::replay(&rec.log).as_ref(), Ok(&rec.state));
}

#[test]
fn run_time_calls_are_refused_where_they_would_corrupt_the_store() {
    let mut rec = recorded(PROGRAM);
    let op = op(&rec);
    let map = rec.state.find_by_path("p|0:map").unwrap().id;
    let e = rec
        .inner_track_call("map", None, Signature::default())
        .unwrap_err();
    assert_eq!(
        e,
        ApplyError::NoSubscriptionOpen {
            event: "track-call"
        }
    );
    assert_eq!(
        e.to_string(),
        "track-call: no subscribe-call is open (run-time tracks are made inside one)"
    );
    let (sub, tracks) = subscribe_inner(&mut rec, op, "1", "map");

    // A registration track-call at a run-time track's path.
    let m = rec.module_call("v2").unwrap();
    let p = rec
        .track_call("pipeline", Some("p"), Signature::default())
        .unwrap();
    let first = rec.track_call("map", None, Signature::default()).unwrap();
    rec.track_call_return(first).unwrap();
    let sw = rec
        .track_call("switch_map", None, Signature::default())
        .unwrap();
    assert_eq!(sw, op);
    let e = rec
        .track_call("inner", Some("1"), Signature::default())
        .unwrap_err();
    assert_eq!(
        e,
        ApplyError::PathTaken {
            event: "track-call",
            path: "p|1:switch_map|#1:inner".into(),
            track: tracks[0],
            owner: format!("subscription {sub}"),
        }
    );
    // A subscription made inside the run: the run's frames below it stay open until it
    // returns, and it makes no entity.
    let inside = rec.subscribe_at(op).unwrap();
    let e = refuse_with(&mut rec.state, Event::TrackCallReturn { track: sw });
    assert_eq!(
        e,
        ApplyError::OpenCallsInside {
            event: "track-call-return",
            scope: format!("track {sw}"),
            open: format!("the subscribe-call of subscription {inside}"),
        }
    );
    let e = rec.operator_call("map").unwrap_err();
    assert_eq!(
        e,
        ApplyError::CallNotAllowed {
            event: "operator-call",
            open: format!("the subscribe-call of subscription {inside}"),
        }
    );
    // Its top-level track hangs under the track it names (here the run's open one) with the
    // subscription's own index, and counts in no registered signature.
    let t = rec
        .inner_track_call("tap", None, Signature::default())
        .unwrap();
    assert_eq!(path(&rec, t), "p|1:switch_map|0:tap");
    assert_eq!(rec.state.track(t).unwrap().parent, Some(op));
    let e = refuse_with(
        &mut rec.state,
        Event::SubscribeCallReturn {
            subscription: inside,
        },
    );
    assert_eq!(
        e,
        ApplyError::OpenCallsInside {
            event: "subscribe-call-return",
            scope: format!("subscription {inside}"),
            open: format!("track {t}"),
        }
    );
    rec.track_call_return(t).unwrap();
    rec.subscribe_call_return(inside).unwrap();
    // The run's own indices go on as if the subscription was not there.
    let f = rec
        .track_call("filter", None, Signature::default())
        .unwrap();
    assert_eq!(path(&rec, f), "p|1:switch_map|0:filter");
    rec.track_call_return(f).unwrap();
    rec.track_call_return(sw).unwrap();
    rec.track_call_return(p).unwrap();
    rec.module_call_return(m, ModuleOutcome::Ok).unwrap();
    let op_pending = rec.state.track(op).unwrap().pending.clone().unwrap();
    assert_eq!(
        op_pending.signature.children,
        ["filter".into()] as [std::sync::Arc<str>; 1]
    );
    // The run made `p|1:switch_map|0:filter`: a subscription cannot take that path.
    let s2 = rec.subscribe_at(op).unwrap();
    let e = rec
        .inner_track_call("filter", None, Signature::default())
        .unwrap_err();
    assert_eq!(
        e,
        ApplyError::PathTaken {
            event: "track-call",
            path: "p|1:switch_map|0:filter".into(),
            track: f,
            owner: "the registration".into(),
        }
    );
    rec.subscribe_call_return(s2).unwrap();
    let s3 = rec.subscribe_at(map).unwrap();
    // A registration run cannot start inside a subscribe-call.
    let e = refuse_with(
        &mut rec.state,
        Event::ModuleCall {
            module: 9,
            label: "v9".into(),
        },
    );
    assert_eq!(
        e,
        ApplyError::CallNotAllowed {
            event: "module-call",
            open: format!("the subscribe-call of subscription {s3}"),
        }
    );
    rec.subscribe_call_return(s3).unwrap();
    assert!(rec.state.stack.is_empty());
    assert_eq!(State::replay(&rec.log).as_ref(), Ok(&rec.state));
}

#[test]
fn nested_inner_subscriptions_end_innermost_first() {
    let mut rec = recorded(PROGRAM);
    let op = op(&rec);
    let (outer, tracks) = subscribe_inner(&mut rec, op, "1", "switch_map");
    // A higher-order operator of the inner stream takes its own inner subscription.
    let (nested, nested_tracks) = subscribe_inner(&mut rec, tracks[1], "4", "map");
    assert_eq!(
        path(&rec, nested_tracks[1]),
        "p|1:switch_map|#1:inner|0:switch_map|#4:inner|0:map"
    );
    assert_eq!(rec.state.store.subscriptions[&nested].parent, Some(outer));
    let e = rec.unsubscribe(outer).unwrap_err();
    assert_eq!(
        e,
        ApplyError::ActiveSubscription {
            event: "unsubscribe-call",
            track: tracks[1],
            subscription: nested,
        }
    );
    rec.unsubscribe(nested).unwrap();
    assert!(rec.state.store.subscriptions[&outer].nested.is_empty());
    rec.unsubscribe(outer).unwrap();
    assert!(
        tracks
            .iter()
            .chain(&nested_tracks)
            .all(|&t| rec.state.track(t).is_none())
    );
    assert_eq!(State::replay(&rec.log).as_ref(), Ok(&rec.state));
}

#[test]
fn the_recorder_without_log_builds_the_same_state() {
    let script = |rec: &mut Recorder| {
        run(rec, &parse(PROGRAM)).unwrap();
        let op = op(rec);
        let (a, _) = subscribe_inner(rec, op, "1", "map scan{tap}");
        let (b, _) = subscribe_inner(rec, op, "2", "filter");
        let second = run(rec, &parse(PROGRAM)).unwrap();
        settle(rec, second.module).unwrap();
        rec.reproject(a).unwrap();
        let root = rec
            .inner_track_call("inner", Some("1"), Signature::default())
            .unwrap();
        for node in parse_inner("map tap") {
            emit_inner(rec, &node, &mut Vec::new()).unwrap();
        }
        rec.track_call_return(root).unwrap();
        rec.subscribe_call_return(a).unwrap();
        for t in rec.state.projection_updates(a) {
            rec.update(t, second.module, UpdateOutcome::Swapped)
                .unwrap_or_else(|_| {
                    rec.update(
                        t,
                        second.module,
                        UpdateOutcome::Reset { reason: "r".into() },
                    )
                    .unwrap()
                });
        }
        for t in rec.state.projection_orphans(a) {
            rec.update(t, second.module, UpdateOutcome::Removed)
                .unwrap();
        }
        rec.unsubscribe(b).unwrap();
    };
    let mut logged = Recorder::new();
    let mut fast = Recorder::without_log();
    script(&mut logged);
    script(&mut fast);
    assert_eq!(logged.state, fast.state);
    assert_eq!(State::replay(&logged.log).as_ref(), Ok(&logged.state));
    let json = serde_json::to_string(&logged.state).unwrap();
    let back: State = serde_json::from_str(&json).unwrap();
    assert_eq!(back, logged.state);
}

#[test]
fn a_projection_failing_half_way_leaves_nothing_and_re_projections_wait_for_runs() {
    let mut rec = recorded(PROGRAM);
    let op = op(&rec);
    let tracks_before = rec.state.store.tracks.clone();
    // The projection panics after two track-calls: the host closes what is open and ends it.
    let sub = rec.subscribe_at(op).unwrap();
    let root = rec
        .inner_track_call("inner", Some("1"), Signature::default())
        .unwrap();
    let map = rec
        .inner_track_call("map", None, Signature::default())
        .unwrap();
    rec.track_call_return(map).unwrap();
    rec.track_call_return(root).unwrap();
    rec.subscribe_call_return(sub).unwrap();
    rec.unsubscribe(sub).unwrap();
    assert_eq!(rec.state.store.tracks, tracks_before);
    assert!(rec.state.store.subscriptions.is_empty());

    // A re-projection is refused while a run is open.
    let (sub, _) = subscribe_inner(&mut rec, op, "2", "map");
    let m = rec.module_call("v2").unwrap();
    let e = refuse_with(
        &mut rec.state,
        Event::SubscribeCall {
            subscription: sub,
            track: op,
        },
    );
    assert_eq!(
        e,
        ApplyError::ModuleStillOpen {
            event: "subscribe-call",
            open: m
        }
    );
    rec.module_call_return(m, ModuleOutcome::Failed { reason: "x".into() })
        .unwrap();
    // A failed run made no module current: still nothing newer to re-project with.
    let e = rec.reproject(sub).unwrap_err();
    assert!(
        matches!(
            e,
            ApplyError::AlreadyProjected {
                code: 1,
                current: Some(1),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "subscribe-call: subscription {sub} was projected with module 1, a re-projection needs a newer current module (current: 1)"
        )
    );
    assert_eq!(State::replay(&rec.log).as_ref(), Ok(&rec.state));
}

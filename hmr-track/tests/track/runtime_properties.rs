//! Property tests of run-time tracks: random sessions of registration runs (ok and failed),
//! inner subscriptions under random operator tracks (nested ones too), re-projections and
//! unsubscriptions, run twice side by side: through the events (`Recorder::new`, unhinted
//! track-calls, a run settled by `track-update` events) and through the fast paths
//! (`Recorder::without_log`, hinted track-calls, `State::settle_run`).

use std::collections::{BTreeMap, BTreeSet};

use hmr_track::{
    ApplyError, Id, ModuleOutcome, Recorder, State, Track, UpdateOutcome, signature_change,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::properties::{assert_consistent, config, node, program};
use crate::support::{Node, Place, signature};

/// One step of a session.
#[derive(Clone, Debug)]
enum Op {
    /// A registration run of one of the session's programs: `ok`, or failed after `cut`
    /// track-calls; before its return (where a failed one stopped, its frames open) it may
    /// make an inner subscription (which a failed run removes).
    Run {
        program: Index,
        ok: bool,
        cut: Index,
        inside: Option<(Index, Vec<Node>)>,
    },
    /// An inner subscription on an operator track (a registration's, or a run-time one:
    /// nested), its root keyed by its number, or (`shared`) by `k`, which two live
    /// subscriptions on one operator cannot both hold.
    Subscribe {
        at: Index,
        shared: bool,
        inner: Vec<Node>,
    },
    /// Ends a live subscription (its nested ones first).
    Unsubscribe(Index),
    /// Re-projects a live subscription with the current module: the same inner stream
    /// (`0`), its seeds changed (`1`) or another one (`2`).
    Reproject {
        which: Index,
        mode: u8,
        inner: Vec<Node>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let inner = || vec(node(), 0..4);
    prop_oneof![
        3 => (any::<Index>(), prop::bool::weighted(0.75), any::<Index>(),
              prop::option::weighted(0.3, (any::<Index>(), inner())))
            .prop_map(|(program, ok, cut, inside)| Op::Run { program, ok, cut, inside }),
        4 => (any::<Index>(), prop::bool::weighted(0.2), inner())
            .prop_map(|(at, shared, inner)| Op::Subscribe { at, shared, inner }),
        2 => any::<Index>().prop_map(Op::Unsubscribe),
        2 => (any::<Index>(), 0u8..3, inner())
            .prop_map(|(which, mode, inner)| Op::Reproject { which, mode, inner }),
    ]
}

/// The operator tracks an inner subscription may take, in id order: a registration track
/// whose committed entity is an operator, or any run-time track.
fn operator_tracks(state: &State) -> Vec<Id> {
    let mut ids: Vec<Id> = state
        .store
        .tracks
        .values()
        .filter(|t| {
            t.subscription.is_some()
                || t.entity_id
                    .is_some_and(|e| state.store.operators.contains_key(&e))
        })
        .map(|t| t.id)
        .collect();
    ids.sort_unstable();
    ids
}

fn live_subscriptions(state: &State) -> Vec<Id> {
    state
        .store
        .subscriptions
        .values()
        .filter(|s| s.active && s.inner)
        .map(|s| s.id)
        .collect()
}

/// Emits an inner stream's tracks (preorder); a refused track-call skips its subtree, as a
/// host reporting the error would. Returns the paths accepted.
fn emit_inner(rec: &mut Recorder, nodes: &[Node], out: &mut Vec<String>) {
    for node in nodes {
        let signature = signature(node);
        let Ok(track) = rec.inner_track_call(&node.kind, node.key.as_deref(), signature) else {
            continue;
        };
        out.push(rec.state.track(track).expect("made").path.clone());
        emit_inner(rec, &node.children, out);
        rec.track_call_return(track)
            .expect("inner track-call-return");
    }
}

/// An inner subscription on `at`: `#key:inner`, then `inner` below it. Returns it and the
/// paths it holds.
pub(crate) fn subscribe(
    rec: &mut Recorder,
    at: Id,
    key: &str,
    inner: &[Node],
) -> (Id, Vec<String>) {
    let sub = rec
        .subscribe_at(at)
        .expect("subscribe-call on an operator track");
    let root = [Node {
        kind: "inner".into(),
        key: Some(key.into()),
        seed: None,
        entity: Place::None,
        children: inner.to_vec(),
    }];
    let mut paths = Vec::new();
    emit_inner(rec, &root, &mut paths);
    rec.subscribe_call_return(sub)
        .expect("subscribe-call-return");
    (sub, paths)
}

/// Ends `sub` after the subscriptions nested in it; returns every subscription ended.
fn end_tree(rec: &mut Recorder, sub: Id, ended: &mut Vec<Id>) {
    let nested = rec.state.store.subscriptions[&sub].nested.clone();
    for n in nested {
        end_tree(rec, n, ended);
    }
    rec.unsubscribe(sub)
        .expect("unsubscribe with no live nested subscription");
    ended.push(sub);
}

/// Ends every live subscription on `track` (and those nested in them).
fn end_subscriptions_on(rec: &mut Recorder, track: Id, ended: &mut Vec<Id>) {
    let on: Vec<Id> = rec
        .state
        .subscriptions_on(track)
        .iter()
        .map(|s| s.id)
        .collect();
    for sub in on {
        end_tree(rec, sub, ended);
    }
}

/// Emits one registration scope (with its entity), stopping with `Err(())` once `budget`
/// track-calls were made; the hint of the n-th track-call is `hints[n]`.
fn emit_run(
    rec: &mut Recorder,
    node: &Node,
    budget: &mut usize,
    hints: Option<&[Id]>,
    made: &mut Vec<Id>,
) -> Result<(), ()> {
    if *budget == 0 {
        return Err(());
    }
    *budget -= 1;
    let hint = hints.and_then(|h| h.get(made.len()).copied());
    let track = rec
        .track_call_hinted(&node.kind, node.key.as_deref(), signature(node), hint)
        .expect("a generated program registers");
    made.push(track);
    let entity = |rec: &mut Recorder| {
        if node.kind == "pipeline" {
            let id = rec
                .pipeline_call(node.key.as_deref().unwrap_or("p"))
                .unwrap();
            rec.pipeline_call_return(id).unwrap();
        } else {
            let id = rec.operator_call(&node.kind).unwrap();
            rec.operator_call_return(id).unwrap();
        }
    };
    if node.entity == Place::Before {
        entity(rec);
    }
    for child in &node.children {
        emit_run(rec, child, budget, hints, made)?;
    }
    if node.entity == Place::After {
        entity(rec);
    }
    rec.track_call_return(track).unwrap();
    Ok(())
}

/// One side of the session: the events (`fast == false`) or the fast paths.
struct Side {
    rec: Recorder,
    fast: bool,
    /// The last ok run's track ids in call order (the fast side's hints).
    last: Vec<Id>,
}

/// What a step did, compared between the two sides.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Skipped,
    Run {
        module: u64,
        ok: bool,
        /// Subscriptions ended because their operator was orphaned.
        ended: Vec<Id>,
        /// The subscription made inside the run, with its paths.
        inside: Option<(Id, Vec<String>)>,
    },
    Subscribed(Id, Vec<String>),
    Ended(Vec<Id>),
    Reprojected {
        sub: Id,
        paths: Vec<String>,
        swapped: Vec<Id>,
        reset: Vec<Id>,
        removed: Vec<Id>,
        ended: Vec<Id>,
    },
}

/// The harness's model: per live inner subscription, the paths it holds and the stream it
/// was last projected with (key, tree).
#[derive(Default)]
struct Model {
    paths: BTreeMap<Id, BTreeSet<String>>,
    streams: BTreeMap<Id, (String, Vec<Node>)>,
    ended: BTreeSet<Id>,
}

impl Side {
    fn step(&mut self, op: &Op, programs: &[Vec<Node>], model: &Model) -> Outcome {
        match op {
            Op::Run {
                program,
                ok,
                cut,
                inside,
            } => {
                let program = &programs[program.index(programs.len())];
                let total: usize = program.iter().map(Node::count).sum();
                let budget = if *ok {
                    usize::MAX
                } else {
                    cut.index(total + 1)
                };
                self.run(program, *ok, budget, inside)
            }
            Op::Subscribe { at, shared, inner } => {
                let state = &self.rec.state;
                // A shared key goes where a live subscription is, so that two may meet.
                let taken: Vec<Id> = live_subscriptions(state)
                    .iter()
                    .map(|s| state.store.subscriptions[s].track)
                    .collect();
                let ops = if *shared && !taken.is_empty() {
                    taken
                } else {
                    operator_tracks(state)
                };
                if ops.is_empty() {
                    return Outcome::Skipped;
                }
                let at = ops[at.index(ops.len())];
                let key = if *shared {
                    "k".to_owned()
                } else {
                    self.rec.state.fresh_id().to_string()
                };
                let (sub, paths) = subscribe(&mut self.rec, at, &key, inner);
                Outcome::Subscribed(sub, paths)
            }
            Op::Unsubscribe(which) => {
                let live = live_subscriptions(&self.rec.state);
                if live.is_empty() {
                    return Outcome::Skipped;
                }
                let mut ended = Vec::new();
                end_tree(&mut self.rec, live[which.index(live.len())], &mut ended);
                Outcome::Ended(ended)
            }
            Op::Reproject { which, mode, inner } => {
                // Those made (or last re-projected) before the current module.
                let state = &self.rec.state;
                let live: Vec<Id> = live_subscriptions(state)
                    .into_iter()
                    .filter(|s| Some(state.store.subscriptions[s].code) < state.current_module)
                    .collect();
                if live.is_empty() {
                    return Outcome::Skipped;
                }
                let sub = live[which.index(live.len())];
                let (key, old) = model.streams[&sub].clone();
                let stream = match mode {
                    0 => old,
                    1 => {
                        let mut changed = old;
                        reseed(&mut changed, &mut 0);
                        changed
                    }
                    _ => inner.clone(),
                };
                self.reproject(sub, &key, &stream)
            }
        }
    }

    fn run(
        &mut self,
        program: &[Node],
        ok: bool,
        mut budget: usize,
        inside: &Option<(Index, Vec<Node>)>,
    ) -> Outcome {
        let rec = &mut self.rec;
        let module = rec.module_call("session").unwrap();
        let hints = self.fast.then_some(self.last.as_slice());
        let mut made = Vec::new();
        for node in program {
            if emit_run(rec, node, &mut budget, hints, &mut made).is_err() {
                break;
            }
        }
        // After the registration, or where a failed one stopped (its frames open).
        let mut made_inside = None;
        if let Some((at, inner)) = inside {
            let ops = operator_tracks(&rec.state);
            if !ops.is_empty() {
                let key = rec.state.fresh_id().to_string();
                made_inside = Some(subscribe(rec, ops[at.index(ops.len())], &key, inner));
            }
        }
        if !ok {
            rec.module_call_return(
                module,
                ModuleOutcome::Failed {
                    reason: "cut".into(),
                },
            )
            .unwrap();
            return Outcome::Run {
                module,
                ok,
                ended: Vec::new(),
                inside: made_inside,
            };
        }
        rec.module_call_return(module, ModuleOutcome::Ok).unwrap();
        self.last = made;
        // A completed run reports no run-time track: not as pending, not as an orphan.
        let orphans = rec.state.orphans(module);
        let pending = rec.state.pending_updates(module);
        for id in orphans.iter().chain(&pending) {
            assert_eq!(
                rec.state.track(*id).unwrap().subscription,
                None,
                "track {id}"
            );
        }
        assert!(
            rec.state
                .tracks_of_module(module)
                .iter()
                .all(|t| t.subscription.is_none())
        );
        // The host ends the subscriptions on orphaned operators, then settles.
        let mut ended = Vec::new();
        for &orphan in &orphans {
            end_subscriptions_on(rec, orphan, &mut ended);
        }
        if self.fast {
            let settlement = rec.state.settle_run(module).unwrap();
            let listed = settlement
                .swapped
                .iter()
                .chain(settlement.reset.iter().map(|(id, _)| id))
                .chain(&settlement.added)
                .chain(&settlement.orphans);
            for id in listed {
                assert_eq!(
                    rec.state.track(*id).unwrap().subscription,
                    None,
                    "track {id}"
                );
            }
            assert_eq!(settlement.orphans, {
                let mut o = orphans.clone();
                o.sort_unstable();
                o
            });
            for &orphan in &orphans {
                rec.update(orphan, module, UpdateOutcome::Removed).unwrap();
            }
        } else {
            crate::support::settle(rec, module).unwrap();
        }
        // No orphan survives a completed run.
        assert!(rec.state.orphans(module).is_empty());
        Outcome::Run {
            module,
            ok,
            ended,
            inside: made_inside,
        }
    }

    fn reproject(&mut self, sub: Id, key: &str, stream: &[Node]) -> Outcome {
        let rec = &mut self.rec;
        match rec.reproject(sub) {
            Ok(()) => {}
            Err(ApplyError::AlreadyProjected { .. }) => return Outcome::Skipped,
            Err(e) => panic!("re-projection refused: {e}"),
        }
        let module = rec.state.current_module.unwrap();
        let root = [Node {
            kind: "inner".into(),
            key: Some(key.into()),
            seed: None,
            entity: Place::None,
            children: stream.to_vec(),
        }];
        let mut paths = Vec::new();
        emit_inner(rec, &root, &mut paths);
        rec.subscribe_call_return(sub).unwrap();
        let (mut swapped, mut reset, mut removed, mut ended) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for id in rec.state.projection_updates(sub) {
            let t = rec.state.track(id).unwrap();
            let outcome =
                match signature_change(&t.signature, &t.pending.as_ref().unwrap().signature) {
                    None => {
                        swapped.push(id);
                        UpdateOutcome::Swapped
                    }
                    Some(reason) => {
                        reset.push(id);
                        UpdateOutcome::Reset { reason }
                    }
                };
            rec.update(id, module, outcome).unwrap();
        }
        let orphans = rec.state.projection_orphans(sub);
        for &id in &orphans {
            end_subscriptions_on(rec, id, &mut ended);
        }
        for id in orphans {
            rec.update(id, module, UpdateOutcome::Removed).unwrap();
            removed.push(id);
        }
        Outcome::Reprojected {
            sub,
            paths,
            swapped,
            reset,
            removed,
            ended,
        }
    }
}

/// Changes the seed of every other node.
fn reseed(nodes: &mut [Node], n: &mut usize) {
    for node in nodes {
        if n.is_multiple_of(2) {
            node.seed = Some(format!("r{n}"));
        }
        *n += 1;
        reseed(&mut node.children, n);
    }
}

/// The run-time invariants, against the model.
fn check(state: &State, model: &Model) {
    assert_consistent(state);
    // Paths unique among live tracks.
    let paths: BTreeSet<&str> = state
        .store
        .tracks
        .values()
        .map(|t| t.path.as_str())
        .collect();
    assert_eq!(
        paths.len(),
        state.store.tracks.len(),
        "two tracks share a path"
    );
    for track in state.store.tracks.values() {
        let Some(sub) = track.subscription else {
            continue;
        };
        assert!(
            !model.ended.contains(&sub),
            "track {} of ended subscription {sub}",
            track.path
        );
        let stored = state
            .store
            .subscriptions
            .get(&sub)
            .unwrap_or_else(|| panic!("track {} of a missing subscription {sub}", track.path));
        assert!(
            stored.active,
            "track {} of inactive subscription {sub}",
            track.path
        );
        assert!(stored.tracks.contains(&track.id));
        // Settled: committed at the subscription's code module, nothing pending.
        assert_eq!(track.module, stored.code, "{}", track.path);
        assert_eq!(track.pending, None, "{}", track.path);
    }
    for (sub, expected) in &model.paths {
        let held: BTreeSet<String> = state
            .tracks_of_subscription(*sub)
            .iter()
            .map(|t: &&Track| t.path.clone())
            .collect();
        assert_eq!(&held, expected, "subscription {sub}");
        assert_eq!(state.store.subscriptions[sub].tracks.len(), expected.len());
    }
    let live: BTreeSet<Id> = live_subscriptions(state).into_iter().collect();
    assert_eq!(live, model.paths.keys().copied().collect());
    assert!(state.stack.is_empty());
}

impl Model {
    fn apply(&mut self, outcome: &Outcome, op: &Op) {
        let end = |model: &mut Model, subs: &[Id]| {
            for s in subs {
                model.paths.remove(s);
                model.streams.remove(s);
                model.ended.insert(*s);
            }
        };
        match (outcome, op) {
            (Outcome::Skipped, _) => {}
            (
                Outcome::Run {
                    ok, ended, inside, ..
                },
                Op::Run { inside: made, .. },
            ) => {
                if let (Some((sub, paths)), Some((_, inner))) = (inside, made) {
                    if *ok {
                        self.add(*sub, paths, inner);
                    } else {
                        // A failed run removed what it made, this subscription too.
                        end(self, &[*sub]);
                    }
                }
                // Then the settlement ended those on orphaned operators (maybe that one).
                end(self, ended);
            }
            (Outcome::Subscribed(sub, paths), Op::Subscribe { inner, .. }) => {
                self.add(*sub, paths, inner);
            }
            (Outcome::Ended(subs), _) => end(self, subs),
            (
                Outcome::Reprojected {
                    sub, paths, ended, ..
                },
                Op::Reproject { .. },
            ) => {
                end(self, ended);
                self.paths.insert(*sub, paths.iter().cloned().collect());
            }
            (outcome, op) => panic!("{outcome:?} for {op:?}"),
        }
    }

    fn add(&mut self, sub: Id, paths: &[String], inner: &[Node]) {
        self.paths.insert(sub, paths.iter().cloned().collect());
        // The root's key is its path's last segment (`#key:inner`), when it was accepted.
        let key = paths
            .first()
            .and_then(|p| p.rsplit('|').next())
            .and_then(|s| s.strip_prefix('#'))
            .and_then(|s| s.strip_suffix(":inner"))
            .unwrap_or("unplaced")
            .to_owned();
        self.streams.insert(sub, (key, inner.to_vec()));
    }
}

proptest! {
    #![proptest_config(config())]

    /// For any session of registration runs (ok and failed), inner subscriptions (nested
    /// ones too), re-projections and unsubscriptions: paths stay unique, every stored path is
    /// the derived one, a subscription holds exactly the tracks it made (its last
    /// re-projection's), none of an ended one remains, a completed run reports no run-time
    /// track and leaves no orphan, a failed run leaves the others' tracks as they were, and
    /// the fast paths (hinted track-calls, `settle_run`) build the events' store step by step.
    #[test]
    fn run_time_tracks_follow_their_subscriptions(
        programs in vec(program(), 2..4),
        ops in vec(op(), 1..32),
    ) {
        let mut events = Side { rec: Recorder::new(), fast: false, last: Vec::new() };
        let mut fast = Side { rec: Recorder::without_log(), fast: true, last: Vec::new() };
        let mut model = Model::default();
        // A first run, so there are operators to subscribe to.
        let a = events.run(&programs[0], true, usize::MAX, &None);
        let b = fast.run(&programs[0], true, usize::MAX, &None);
        prop_assert_eq!(a, b);
        prop_assert_eq!(&events.rec.state, &fast.rec.state);
        for op in &ops {
            let before: BTreeMap<Id, Vec<Track>> = model
                .paths
                .keys()
                .map(|&s| (s, events.rec.state.tracks_of_subscription(s).into_iter().cloned().collect()))
                .collect();
            let a = events.step(op, &programs, &model);
            let b = fast.step(op, &programs, &model);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(&events.rec.state, &fast.rec.state);
            if let Outcome::Run { ok: false, .. } = &a {
                // A failed run leaves every earlier subscription's tracks as they were.
                for (sub, tracks) in &before {
                    let after: Vec<Track> = events.rec.state.tracks_of_subscription(*sub).into_iter().cloned().collect();
                    prop_assert_eq!(&after, tracks);
                }
            }
            model.apply(&a, op);
            check(&events.rec.state, &model);
        }
        let replayed = State::replay(&events.rec.log);
        prop_assert_eq!(replayed.as_ref(), Ok(&events.rec.state));
    }
}

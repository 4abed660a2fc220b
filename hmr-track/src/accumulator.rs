//! The accumulator: [`State`] (`stack` of open calls + `store` of entities) and `apply`, which
//! validates an event fully and only then mutates, so a refused event changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ApplyError;
use crate::event::{Event, ModuleOutcome, SubjectRole, UpdateOutcome};
use crate::model::{
    Fingerprint, Id, Module, ModuleId, ModuleStatus, Operator, Pending, Pipeline, Signature,
    Subject, SubjectPending, Subscription, Track, describe_pair, signature_change,
};
use crate::path;
use crate::tracks::TrackMap;

/// How many replaced core entities a track remembers (`prev_entity_ids`); older ones leave
/// the store, so a long session's store does not grow with its reloads.
pub const PREV_ENTITY_HISTORY: usize = 4;

/// How many registration runs the store remembers (`modules`).
pub const MODULE_HISTORY: usize = 64;

/// Everything the accumulator knows: the open calls and the entities.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct State {
    /// Open calls, per kind.
    pub stack: Stack,
    /// Entities by id, and the path index.
    pub store: Store,
    /// The next fresh id: greater than every id an event introduced.
    pub next_id: Id,
    /// The last module whose run returned `Ok`.
    pub current_module: Option<ModuleId>,
}

/// Open calls, one vector per kind, innermost last.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stack {
    /// Open `module-call`s (at most one).
    pub modules: Vec<ModuleId>,
    /// Open `track-call`s.
    pub tracks: Vec<TrackFrame>,
    /// Open `pipeline-call`s and `operator-call`s.
    pub entities: Vec<EntityFrame>,
    /// Open `subscribe-call`s and `unsubscribe-call`s.
    pub subscriptions: Vec<SubscriptionFrame>,
}

impl Stack {
    /// True when no call of any kind is open (a balanced program ends so).
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
            && self.tracks.is_empty()
            && self.entities.is_empty()
            && self.subscriptions.is_empty()
    }
}

/// An open track scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackFrame {
    /// The track.
    pub track: Id,
    /// The index the next unkeyed child gets (0 each time the track is entered).
    pub next_index: u32,
    /// The core entity returned directly inside this scope so far.
    pub entity: Option<Id>,
    /// Kinds of the child tracks called so far, in order.
    pub child_kinds: Vec<Arc<str>>,
}

/// Which core entity an [`EntityFrame`] creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntityKind {
    /// A `pipeline-call`.
    Pipeline,
    /// An `operator-call`.
    Operator,
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntityKind::Pipeline => "pipeline",
            EntityKind::Operator => "operator",
        })
    }
}

/// An open `pipeline-call` or `operator-call`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityFrame {
    /// The entity being created.
    pub entity: Id,
    /// Pipeline or operator.
    pub kind: EntityKind,
    /// How many track frames were open at the call; the return must see the same number.
    pub track_depth: usize,
}

/// Which subscription call a [`SubscriptionFrame`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubscriptionCall {
    /// A `subscribe-call`.
    Subscribe,
    /// An `unsubscribe-call`.
    Unsubscribe,
}

/// An open `subscribe-call` or `unsubscribe-call`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionFrame {
    /// The subscription.
    pub subscription: Id,
    /// Subscribe or unsubscribe.
    pub call: SubscriptionCall,
    /// The registration run open at the call, if any (a failed run drops its frames).
    pub module: Option<ModuleId>,
    /// How many track frames were open at the call: the frames above are the subscription's
    /// run-time tracks, and a `track-call` at this depth is a child of the subscription's
    /// track.
    #[serde(default)]
    pub track_depth: usize,
    /// The index the next unkeyed child of the subscription's track gets in this call.
    #[serde(default)]
    pub next_index: u32,
    /// True for a re-projection: a `subscribe-call` of a subscription already active.
    #[serde(default)]
    pub reprojection: bool,
}

/// Entities by id (`BTreeMap`s, so serialization is deterministic) and the path index.
///
/// Read it freely; change it only through events ([`State::apply`]): a hashed copy of
/// `paths`, kept beside it for lookups, is updated there (and rebuilt on deserialization).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "StoreData")]
pub struct Store {
    /// Registration runs.
    pub modules: BTreeMap<ModuleId, Module>,
    /// Tracks by id.
    pub tracks: TrackMap,
    /// Pipelines by id.
    pub pipelines: BTreeMap<Id, Pipeline>,
    /// Operators by id.
    pub operators: BTreeMap<Id, Operator>,
    /// Subscriptions by id.
    pub subscriptions: BTreeMap<Id, Subscription>,
    /// Subjects by name.
    pub subjects: BTreeMap<String, Subject>,
    /// Structural path -> track id, one entry per track.
    pub paths: BTreeMap<String, Id>,
    /// `paths` again, hashed: a lookup by path is one hash, not a dozen string comparisons
    /// down a B-tree (a registration looks every track up by path).
    #[serde(skip)]
    path_index: HashMap<String, Id, BuildFnv>,
}

/// An Fx-style hash (rustc's): paths are short strings hashed once per registered track, where
/// SipHash's DoS resistance buys nothing (the keys come from the developer's own plugin); eight
/// bytes a step, not one.
#[derive(Clone, Copy, Debug, Default)]
struct BuildFnv;

impl std::hash::BuildHasher for BuildFnv {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(0)
    }
}

#[derive(Clone, Copy, Debug)]
struct Fnv(u64);

impl Fnv {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }
    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b));
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// What a [`Store`] serializes as.
#[derive(Deserialize)]
struct StoreData {
    modules: BTreeMap<ModuleId, Module>,
    tracks: TrackMap,
    pipelines: BTreeMap<Id, Pipeline>,
    operators: BTreeMap<Id, Operator>,
    subscriptions: BTreeMap<Id, Subscription>,
    /// Absent from a store serialized before subjects were entities.
    #[serde(default)]
    subjects: BTreeMap<String, Subject>,
    paths: BTreeMap<String, Id>,
}

impl From<StoreData> for Store {
    fn from(d: StoreData) -> Store {
        let path_index = d.paths.iter().map(|(p, id)| (p.clone(), *id)).collect();
        Store {
            modules: d.modules,
            tracks: d.tracks,
            pipelines: d.pipelines,
            operators: d.operators,
            subscriptions: d.subscriptions,
            subjects: d.subjects,
            paths: d.paths,
            path_index,
        }
    }
}

impl Store {
    /// The track id at `path`.
    pub fn track_at(&self, path: &str) -> Option<Id> {
        self.path_index.get(path).copied()
    }

    fn insert_path(&mut self, path: String, id: Id) {
        self.path_index.insert(path.clone(), id);
        self.paths.insert(path, id);
    }

    /// Removes core entities that left a track's bounded history.
    fn forget_entities(&mut self, forgotten: &[Id]) {
        for id in forgotten {
            self.pipelines.remove(id);
            self.operators.remove(id);
        }
    }

    fn remove_path(&mut self, path: &str) {
        self.path_index.remove(path);
        self.paths.remove(path);
    }
}

/// Where the next `track-call` lands (computed from the stack top and validated).
const TRACK_CALL: &str = "track-call";

struct TrackPlan {
    module: ModuleId,
    index: Option<u32>,
    parent: Option<Id>,
    /// The path, when no track has it yet (an existing track holds it: see [`TrackPlan::path`]).
    new_path: Option<String>,
    existing: Option<Id>,
    /// The subscription whose open subscribe-call makes the track (a run-time track).
    subscription: Option<Id>,
    /// True when the parent is the subscription's own track (the index and the child count
    /// are the subscription frame's).
    at_subscription: bool,
}

impl TrackPlan {
    /// The planned path: the new one, or the existing track's (the same text).
    fn path(&self, store: &Store) -> String {
        match (
            &self.new_path,
            self.existing.and_then(|id| store.tracks.get(&id)),
        ) {
            (Some(p), _) => p.clone(),
            (None, Some(t)) => t.path.clone(),
            (None, None) => String::new(),
        }
    }
}

thread_local! {
    /// A buffer for the path a track-call plans: found in the store, it is not allocated.
    static PATH_BUFFER: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Applies `event` to `state` and returns the new state: the pure form of [`State::apply`].
/// On error `state` is dropped (clone it first to keep it); [`State::apply`] keeps it instead.
pub fn apply(mut state: State, event: &Event) -> Result<State, ApplyError> {
    state.apply(event)?;
    Ok(state)
}

impl State {
    /// A state with nothing in it.
    pub fn new() -> State {
        State::default()
    }

    /// Folds every event into a new state, stopping at the first error.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> Result<State, ApplyError> {
        let mut state = State::default();
        for event in events {
            state.apply(event)?;
        }
        Ok(state)
    }

    /// The id the next new track, entity or subscription should take.
    pub fn fresh_id(&self) -> Id {
        self.next_id
    }

    /// The module whose registration is running (between `module-call` and its return).
    pub fn running_module(&self) -> Option<ModuleId> {
        self.stack.modules.last().copied()
    }

    /// The innermost open `subscribe-call` (an initial one or a re-projection): while one is
    /// open, `track-call`s make run-time tracks of its subscription.
    pub fn open_subscribe(&self) -> Option<&SubscriptionFrame> {
        self.stack
            .subscriptions
            .iter()
            .rev()
            .find(|f| f.call == SubscriptionCall::Subscribe)
    }

    /// The open call (subscribe or unsubscribe) of `subscription`, if any.
    fn subscription_call_open(&self, subscription: Id) -> Option<&SubscriptionFrame> {
        self.stack
            .subscriptions
            .iter()
            .find(|f| f.subscription == subscription)
    }

    /// The id a `track-call` of `kind`/`key` must carry now: the id of the track already at the
    /// path it would get (computed from the stack top), else [`State::fresh_id`]. Fails as the
    /// `track-call` would (no module nor subscribe-call open, bad key, unkeyed top level,
    /// duplicate path, a path another owner holds).
    pub fn track_id_for(&self, kind: &str, key: Option<&str>) -> Result<Id, ApplyError> {
        let plan = self.plan_track_call(TRACK_CALL, kind, key)?;
        let existing = plan.existing.and_then(|id| self.store.tracks.get(&id));
        if let Some(t) = existing.filter(|t| t.subscription != plan.subscription) {
            return Err(path_taken(TRACK_CALL, t));
        }
        match plan.existing {
            Some(_) if existing.is_some_and(|t| registered_in(t, plan.module)) => {
                Err(ApplyError::DuplicatePath {
                    event: TRACK_CALL,
                    path: plan.path(&self.store),
                    module: plan.module,
                })
            }
            Some(id) => Ok(id),
            None => Ok(self.fresh_id()),
        }
    }

    /// True when a track, entity or subscription has this id.
    pub fn id_in_use(&self, id: Id) -> bool {
        self.store.tracks.contains_key(&id)
            || self.store.pipelines.contains_key(&id)
            || self.store.operators.contains_key(&id)
            || self.store.subscriptions.contains_key(&id)
    }

    /// Applies one event atomically: on `Err` the state is exactly as before.
    pub fn apply(&mut self, event: &Event) -> Result<(), ApplyError> {
        match event {
            Event::ModuleCall { module, label } => self.module_call(*module, label),
            Event::ModuleCallReturn { module, outcome } => {
                self.module_call_return(*module, outcome)
            }
            Event::TrackCall {
                track,
                kind,
                key,
                signature,
            } => self.track_call(*track, kind, key.as_deref(), signature),
            Event::TrackCallReturn { track } => self.track_call_return(*track),
            Event::PipelineCall { entity, name } => {
                self.entity_call("pipeline-call", *entity, EntityKind::Pipeline, name)
            }
            Event::PipelineCallReturn { entity } => {
                self.entity_call_return("pipeline-call-return", *entity, EntityKind::Pipeline)
            }
            Event::OperatorCall { entity, kind } => {
                self.entity_call("operator-call", *entity, EntityKind::Operator, kind)
            }
            Event::OperatorCallReturn { entity } => {
                self.entity_call_return("operator-call-return", *entity, EntityKind::Operator)
            }
            Event::SubscribeCall {
                subscription,
                track,
            } => self.subscribe_call(*subscription, *track),
            Event::SubscribeCallReturn { subscription } => self.subscription_call_return(
                "subscribe-call-return",
                *subscription,
                SubscriptionCall::Subscribe,
            ),
            Event::UnsubscribeCall { subscription } => self.unsubscribe_call(*subscription),
            Event::UnsubscribeCallReturn { subscription } => self.subscription_call_return(
                "unsubscribe-call-return",
                *subscription,
                SubscriptionCall::Unsubscribe,
            ),
            Event::SubjectUse {
                subject,
                track,
                role,
                item,
            } => self.subject_use(subject, *track, *role, item),
            Event::TrackUpdate {
                track,
                module,
                outcome,
            } => self.track_update(*track, *module, outcome),
        }
    }

    fn introduce(&mut self, id: Id) {
        self.next_id = self.next_id.max(id.saturating_add(1));
    }

    fn open_module(&self, event: &'static str) -> Result<ModuleId, ApplyError> {
        self.running_module()
            .ok_or(ApplyError::NoModuleOpen { event })
    }

    // ---- modules -------------------------------------------------------------------------

    fn module_call(&mut self, module: ModuleId, label: &str) -> Result<(), ApplyError> {
        const EVENT: &str = "module-call";
        if let Some(open) = self.running_module() {
            return Err(ApplyError::ModuleStillOpen { event: EVENT, open });
        }
        if let Some(frame) = self.open_subscribe() {
            // The run's track-calls would land in the subscription.
            return Err(ApplyError::CallNotAllowed {
                event: EVENT,
                open: format!("the subscribe-call of subscription {}", frame.subscription),
            });
        }
        if let Some(last) = self
            .store
            .modules
            .keys()
            .next_back()
            .copied()
            .filter(|&last| module <= last)
        {
            return Err(ApplyError::ModuleNotIncreasing {
                event: EVENT,
                module,
                last,
            });
        }
        self.stack.modules.push(module);
        self.store.modules.insert(
            module,
            Module {
                id: module,
                label: label.to_owned(),
                status: ModuleStatus::Running,
            },
        );
        // Bounded history: only the newest runs are kept (ids only ever grow, so the newest
        // still tells the next id).
        while self.store.modules.len() > MODULE_HISTORY {
            self.store.modules.pop_first();
        }
        Ok(())
    }

    fn module_call_return(
        &mut self,
        module: ModuleId,
        outcome: &ModuleOutcome,
    ) -> Result<(), ApplyError> {
        const EVENT: &str = "module-call-return";
        let Some(open) = self.running_module() else {
            return Err(ApplyError::ReturnWithoutCall {
                event: EVENT,
                found: module,
            });
        };
        if open != module {
            return Err(ApplyError::ReturnMismatch {
                event: EVENT,
                expected: open,
                found: module,
            });
        }
        match outcome {
            ModuleOutcome::Ok => {
                let scope = || format!("module {module}");
                if let Some(frame) = self.stack.tracks.last() {
                    return Err(ApplyError::OpenCallsInside {
                        event: EVENT,
                        scope: scope(),
                        open: format!("track {}", frame.track),
                    });
                }
                if let Some(frame) = self.stack.entities.last() {
                    return Err(ApplyError::OpenCallsInside {
                        event: EVENT,
                        scope: scope(),
                        open: format!("{} {}", frame.kind, frame.entity),
                    });
                }
                if let Some(frame) = self
                    .stack
                    .subscriptions
                    .iter()
                    .find(|f| f.module == Some(module))
                {
                    return Err(ApplyError::OpenCallsInside {
                        event: EVENT,
                        scope: scope(),
                        open: format!("subscription {}", frame.subscription),
                    });
                }
                self.stack.modules.pop();
                if let Some(m) = self.store.modules.get_mut(&module) {
                    m.status = ModuleStatus::Ok;
                }
                commit_subjects(&mut self.store.subjects, module);
                self.current_module = Some(module);
            }
            ModuleOutcome::Failed { reason } => self.roll_back(module, reason),
        }
        Ok(())
    }

    /// Undoes the run `module`: its frames, the tracks it created, its pendings, its entities
    /// and subscriptions. Cannot fail.
    fn roll_back(&mut self, module: ModuleId, reason: &str) {
        let Store {
            modules,
            tracks,
            pipelines,
            operators,
            subscriptions,
            subjects,
            paths,
            path_index,
        } = &mut self.store;
        self.stack.modules.pop();
        self.stack.tracks.clear();
        self.stack.entities.clear();
        self.stack
            .subscriptions
            .retain(|frame| frame.module != Some(module));
        // Subscriptions made inside the run go, with their run-time tracks.
        let dropped: BTreeSet<Id> = subscriptions
            .values()
            .filter(|s| s.module == Some(module))
            .map(|s| s.id)
            .collect();
        tracks.retain(|_, track| {
            if track.created_by == module
                || track.subscription.is_some_and(|s| dropped.contains(&s))
            {
                paths.remove(&track.path);
                path_index.remove(&track.path);
                return false;
            }
            if track.pending.as_ref().is_some_and(|p| p.module == module) {
                track.pending = None;
            }
            true
        });
        pipelines.retain(|_, p| p.module != module);
        operators.retain(|_, o| o.module != module);
        subscriptions.retain(|_, s| s.module != Some(module));
        for s in subscriptions.values_mut() {
            s.nested.retain(|n| !dropped.contains(n));
        }
        subjects.retain(|_, subject| {
            if subject.pending.as_ref().is_some_and(|p| p.module == module) {
                subject.pending = None;
            }
            subject.created_by != module
        });
        if let Some(m) = modules.get_mut(&module) {
            m.status = ModuleStatus::Failed {
                reason: reason.to_owned(),
            };
        }
    }

    // ---- tracks --------------------------------------------------------------------------

    fn plan_track_call(
        &self,
        event: &'static str,
        kind: &str,
        key: Option<&str>,
    ) -> Result<TrackPlan, ApplyError> {
        // Inside an open subscribe-call the track is the subscription's (a run-time track),
        // made with the subscription's code module; else it is the running registration's.
        let owner = self.open_subscribe();
        let (module, subscription) = match owner {
            Some(frame) => (
                self.store
                    .subscriptions
                    .get(&frame.subscription)
                    .map_or(0, |s| s.code),
                Some(frame),
            ),
            None => (self.open_module(event)?, None),
        };
        path::check_kind(event, kind)?;
        if let Some(key) = key {
            path::check_key(event, key)?;
        }
        // The parent: the top track frame, unless the subscription opened no track yet (its
        // own track is then the parent, with the subscription frame's child index).
        let top = self.stack.tracks.last();
        let parent_frame = match subscription {
            Some(sub) if self.stack.tracks.len() <= sub.track_depth => {
                let track = self
                    .store
                    .subscriptions
                    .get(&sub.subscription)
                    .map_or(Id::MAX, |s| s.track);
                Some((track, sub.next_index, true))
            }
            _ => top.map(|f| (f.track, f.next_index, false)),
        };
        PATH_BUFFER.with(|buffer| {
            let mut path = buffer.borrow_mut();
            path.clear();
            let (parent, index, at_subscription) =
                match parent_frame {
                    None => match key {
                        Some(key) => {
                            path.push_str(key);
                            (None, None, false)
                        }
                        None => {
                            return Err(ApplyError::TopLevelNotKeyed {
                                event,
                                kind: kind.to_owned(),
                            });
                        }
                    },
                    Some((track, next_index, at_subscription)) => {
                        let parent = self.store.tracks.get(&track).ok_or_else(|| {
                            ApplyError::BrokenTrack {
                                event,
                                track,
                                detail: "an open track frame (or subscription) names a track \
                                         not in the store"
                                    .into(),
                            }
                        })?;
                        let index = match key {
                            Some(_) => None,
                            None if next_index == u32::MAX => {
                                return Err(ApplyError::TooManyChildren {
                                    event,
                                    parent: track,
                                });
                            }
                            None => Some(next_index),
                        };
                        path::nested_path_into(&mut path, &parent.path, index, key, kind);
                        (Some(track), index, at_subscription)
                    }
                };
            let existing = self.store.track_at(&path);
            Ok(TrackPlan {
                module,
                index,
                parent,
                new_path: existing.is_none().then(|| path.clone()),
                existing,
                subscription: subscription.map(|s| s.subscription),
                at_subscription,
            })
        })
    }

    /// The plan of a `track-call` of `kind`/`key` when the track `hint` is where it lands
    /// (see [`State::track_call_auto`]); `None` when it is not, or when the call must fail.
    fn plan_from_hint(&self, kind: &str, key: Option<&str>, hint: Id) -> Option<TrackPlan> {
        let module = self.running_module()?;
        if !self.stack.subscriptions.is_empty() && self.open_subscribe().is_some() {
            // A run-time track-call: its parent may be the subscription's track.
            return None;
        }
        let track = self.store.tracks.get(&hint)?;
        let frame = self.stack.tracks.last();
        let index = match (frame, key) {
            (_, Some(_)) => None,
            (Some(frame), None) if frame.next_index < u32::MAX => Some(frame.next_index),
            // An unkeyed top-level track, or too many children: the full plan says why.
            _ => return None,
        };
        let parent = frame.map(|f| f.track);
        (track.parent == parent
            && track.index == index
            && track.key.as_deref() == key
            && same_str(&track.kind, kind))
        .then_some(TrackPlan {
            module,
            index,
            parent,
            new_path: None,
            existing: Some(hint),
            subscription: None,
            at_subscription: false,
        })
    }

    fn track_call(
        &mut self,
        track: Id,
        kind: &str,
        key: Option<&str>,
        signature: &Signature,
    ) -> Result<(), ApplyError> {
        let plan = self.plan_track_call(TRACK_CALL, kind, key)?;
        self.track_call_planned(plan, track, kind, key, signature.clone())
    }

    /// A `track-call` whose id is the one its path picks (the existing track's, else a fresh
    /// one), planned once: what [`State::track_id_for`] followed by [`State::apply`] of the
    /// event does, without computing the path twice or copying the signature. Returns the id.
    ///
    /// `hint` is the track the caller expects (the one at the same place in the last run):
    /// when it is the open track's child with this kind, key and index, its path is the one
    /// the call would build (a track's path is its parent's path and its own segment, fixed
    /// at creation), so the plan takes it without building or hashing the path. Any other
    /// hint is ignored. Either way the outcome is the unhinted call's.
    pub(crate) fn track_call_auto(
        &mut self,
        kind: &str,
        key: Option<&str>,
        signature: Signature,
        hint: Option<Id>,
    ) -> Result<Id, ApplyError> {
        let plan = match hint.and_then(|hint| self.plan_from_hint(kind, key, hint)) {
            Some(plan) => plan,
            None => self.plan_track_call(TRACK_CALL, kind, key)?,
        };
        let track = plan.existing.unwrap_or_else(|| self.fresh_id());
        self.track_call_planned(plan, track, kind, key, signature)?;
        Ok(track)
    }

    fn track_call_planned(
        &mut self,
        plan: TrackPlan,
        track: Id,
        kind: &str,
        key: Option<&str>,
        signature: Signature,
    ) -> Result<(), ApplyError> {
        const EVENT: &str = TRACK_CALL;
        let kind_mismatch = || {
            (!signature.kind.is_empty() && !same_str(&signature.kind, kind)).then(|| {
                ApplyError::KindMismatch {
                    event: EVENT,
                    kind: kind.to_owned(),
                    signature_kind: signature.kind.to_string(),
                }
            })
        };
        // Checks in the order they are reported: duplicate path, kind, id. The existing
        // track is looked up once, mutably, and changed only after every check passed.
        let existing = match plan.existing {
            None => {
                if let Some(e) = kind_mismatch() {
                    return Err(e);
                }
                if self.id_in_use(track) {
                    return Err(ApplyError::IdInUse {
                        event: EVENT,
                        id: track,
                    });
                }
                None
            }
            Some(expected) => {
                let Some(t) = self.store.tracks.get_mut(&expected) else {
                    return Err(ApplyError::BrokenTrack {
                        event: EVENT,
                        track: expected,
                        detail: "the path index names a track not in the store".into(),
                    });
                };
                if t.subscription != plan.subscription {
                    return Err(path_taken(EVENT, t));
                }
                if registered_in(t, plan.module) {
                    return Err(ApplyError::DuplicatePath {
                        event: EVENT,
                        path: t.path.clone(),
                        module: plan.module,
                    });
                }
                if let Some(e) = kind_mismatch() {
                    return Err(e);
                }
                if expected != track {
                    return Err(ApplyError::TrackIdMismatch {
                        event: EVENT,
                        path: t.path.clone(),
                        expected,
                        found: track,
                    });
                }
                Some(t)
            }
        };
        // Validated: mutate.
        let mut signature = signature;
        if !same_str(&signature.kind, kind) {
            signature.kind = Arc::from(kind);
        }
        signature.children.clear();
        if plan.at_subscription {
            // A child of the subscription's track: counted by the subscription frame, and
            // not one of the track's registered children (its signature stays as registered).
            if plan.index.is_some()
                && let Some(frame) = self
                    .stack
                    .subscriptions
                    .iter_mut()
                    .rev()
                    .find(|f| f.call == SubscriptionCall::Subscribe)
            {
                frame.next_index += 1;
            }
        } else if let Some(frame) = self.stack.tracks.last_mut() {
            if plan.index.is_some() {
                frame.next_index += 1;
            }
            frame.child_kinds.push(signature.kind.clone());
        }
        match existing {
            Some(existing) => {
                existing.pending = Some(Pending {
                    module: plan.module,
                    signature,
                    entity_id: None,
                });
            }
            None => {
                let path = plan.new_path.unwrap_or_default();
                self.store.insert_path(path.clone(), track);
                self.store.tracks.insert(
                    track,
                    Track {
                        id: track,
                        path,
                        entity_id: None,
                        prev_entity_ids: Vec::new(),
                        parent: plan.parent,
                        index: plan.index,
                        key: key.map(str::to_owned),
                        kind: signature.kind.clone(),
                        signature,
                        version: 0,
                        module: plan.module,
                        created_by: plan.module,
                        pending: None,
                        subscription: plan.subscription,
                    },
                );
                if let Some(sub) = plan
                    .subscription
                    .and_then(|s| self.store.subscriptions.get_mut(&s))
                {
                    sub.tracks.push(track);
                }
                self.introduce(track);
            }
        }
        self.stack.tracks.push(TrackFrame {
            track,
            next_index: 0,
            entity: None,
            child_kinds: Vec::new(),
        });
        Ok(())
    }

    fn track_call_return(&mut self, track: Id) -> Result<(), ApplyError> {
        const EVENT: &str = "track-call-return";
        check_return(EVENT, self.stack.tracks.last().map(|f| f.track), track)?;
        if let Some(entity) = self
            .stack
            .entities
            .last()
            .filter(|e| e.track_depth >= self.stack.tracks.len())
        {
            return Err(ApplyError::OpenCallsInside {
                event: EVENT,
                scope: format!("track {track}"),
                open: format!("{} {}", entity.kind, entity.entity),
            });
        }
        let owner = self.open_subscribe();
        if let Some(sub) = owner.filter(|f| f.track_depth >= self.stack.tracks.len()) {
            return Err(ApplyError::OpenCallsInside {
                event: EVENT,
                scope: format!("track {track}"),
                open: format!("the subscribe-call of subscription {}", sub.subscription),
            });
        }
        // The module the track's registration in this call belongs to: the subscription's
        // code module for a run-time track, else the running registration.
        let module = match owner {
            Some(sub) => self
                .store
                .subscriptions
                .get(&sub.subscription)
                .map_or(0, |s| s.code),
            None => self.open_module(EVENT)?,
        };
        // One lookup validates and, once nothing else can fail, mutates.
        let Some(stored) = self.store.tracks.get_mut(&track) else {
            return Err(ApplyError::BrokenTrack {
                event: EVENT,
                track,
                detail: "the open track frame names a track not in the store".into(),
            });
        };
        // Validated: mutate.
        let Some(frame) = self.stack.tracks.pop() else {
            return Ok(());
        };
        match stored.pending.as_mut() {
            Some(pending) if pending.module == module => {
                pending.signature.children = frame.child_kinds;
                pending.entity_id = frame.entity;
            }
            _ => {
                stored.signature.children = frame.child_kinds;
                stored.entity_id = frame.entity;
            }
        }
        Ok(())
    }

    /// Refuses a `track-update` of a run-time track while its subscription's call is open
    /// (a re-projection still registering).
    fn check_not_reprojecting(&self, event: &'static str, track: Id) -> Result<(), ApplyError> {
        match self
            .store
            .tracks
            .get(&track)
            .and_then(|t| t.subscription)
            .and_then(|s| self.subscription_call_open(s))
        {
            Some(frame) => Err(ApplyError::CallNotAllowed {
                event,
                open: format!("the subscribe-call of subscription {}", frame.subscription),
            }),
            None => Ok(()),
        }
    }

    /// `track-update` `swapped` / `reset`: validated and committed with one lookup (this runs
    /// once per track on every reload).
    fn commit_update(
        &mut self,
        track: Id,
        module: ModuleId,
        outcome: &UpdateOutcome,
    ) -> Result<(), ApplyError> {
        const EVENT: &str = "track-update";
        let current = self.current_module;
        if !self.stack.subscriptions.is_empty() {
            self.check_not_reprojecting(EVENT, track)?;
        }
        let Some(stored) = self.store.tracks.get_mut(&track) else {
            return Err(ApplyError::UnknownTrack {
                event: EVENT,
                track,
            });
        };
        if current != Some(module) {
            return Err(ApplyError::ModuleNotCurrent {
                event: EVENT,
                module,
                current,
            });
        }
        let Some(pending) = stored.pending.as_ref().filter(|p| p.module == module) else {
            return Err(ApplyError::NoPending {
                event: EVENT,
                track,
                module,
            });
        };
        if matches!(outcome, UpdateOutcome::Swapped)
            && let Some(reason) = signature_change(&stored.signature, &pending.signature)
        {
            return Err(ApplyError::SignatureChanged {
                event: EVENT,
                track,
                reason,
            });
        }
        // Validated: mutate.
        let mut forgotten = Vec::new();
        commit_pending(stored, module, &mut forgotten);
        self.store.forget_entities(&forgotten);
        Ok(())
    }

    /// Settles the run `module` in one pass over the store, as one decision: every track it
    /// registered again is committed, `swapped` when its [`Signature`] is unchanged and
    /// `reset` (with [`signature_change`]'s reason) when not, exactly as the `track-update`
    /// events of [`Settlement::updates`] would commit them one by one; tracks it created are
    /// listed as `added`, tracks it did not register as `orphans` (left in place: removing
    /// them is the caller's, with `track-update` `removed`, once their pipelines stopped).
    ///
    /// Refused, changing nothing, while a run is open or when `module` is not the current
    /// module (the errors a `track-update` would get).
    pub fn settle_run(&mut self, module: ModuleId) -> Result<Settlement, ApplyError> {
        const EVENT: &str = "track-update";
        if let Some(open) = self.running_module() {
            return Err(ApplyError::ModuleStillOpen { event: EVENT, open });
        }
        if self.current_module != Some(module) {
            return Err(ApplyError::ModuleNotCurrent {
                event: EVENT,
                module,
                current: self.current_module,
            });
        }
        // Validated: mutate.
        let mut settlement = Settlement {
            module,
            ..Settlement::default()
        };
        let mut forgotten = Vec::new();
        for stored in self.store.tracks.values_mut() {
            if stored.subscription.is_some() {
                // A run-time track: not the run's (re-projections settle their own).
                continue;
            }
            match stored.pending.as_ref() {
                Some(pending) if pending.module == module => {
                    match signature_change(&stored.signature, &pending.signature) {
                        None => settlement.swapped.push(stored.id),
                        Some(reason) => settlement.reset.push((stored.id, reason)),
                    }
                    commit_pending(stored, module, &mut forgotten);
                }
                _ if stored.module == module && stored.created_by == module => {
                    settlement.added.push(stored.id);
                }
                _ if stored.module < module => settlement.orphans.push(stored.id),
                _ => {}
            }
        }
        self.store.forget_entities(&forgotten);
        settlement.swapped.sort_unstable();
        settlement.reset.sort_unstable_by_key(|(id, _)| *id);
        settlement.added.sort_unstable();
        settlement.orphans.sort_unstable();
        Ok(settlement)
    }

    fn track_update(
        &mut self,
        track: Id,
        module: ModuleId,
        outcome: &UpdateOutcome,
    ) -> Result<(), ApplyError> {
        const EVENT: &str = "track-update";
        if let Some(open) = self.running_module() {
            return Err(ApplyError::ModuleStillOpen { event: EVENT, open });
        }
        if !matches!(outcome, UpdateOutcome::Removed) {
            return self.commit_update(track, module, outcome);
        }
        let Some(stored) = self.store.tracks.get(&track) else {
            return Err(ApplyError::UnknownTrack {
                event: EVENT,
                track,
            });
        };
        if self.current_module != Some(module) {
            return Err(ApplyError::ModuleNotCurrent {
                event: EVENT,
                module,
                current: self.current_module,
            });
        }
        match outcome {
            // Committed by `commit_update` above.
            UpdateOutcome::Swapped | UpdateOutcome::Reset { .. } => {}
            UpdateOutcome::Removed => {
                // A run-time track is an orphan of its subscription's last re-projection,
                // made with this module; a registration track, of this module's run.
                let projected = stored.subscription.is_none_or(|s| {
                    self.store
                        .subscriptions
                        .get(&s)
                        .is_some_and(|s| s.code == module)
                });
                if !(projected
                    && stored.module < module
                    && stored.pending.as_ref().is_none_or(|p| p.module != module))
                {
                    return Err(ApplyError::NotOrphan {
                        event: EVENT,
                        track,
                        module,
                    });
                }
                if !self.stack.subscriptions.is_empty() {
                    self.check_not_reprojecting(EVENT, track)?;
                }
                let prefix = path::descendant_prefix(&stored.path);
                if let Some((_, &child)) = self
                    .store
                    .paths
                    .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                    .next()
                    .filter(|(p, _)| p.starts_with(&prefix))
                {
                    // A live subscription's run-time track below a registration track: end
                    // the subscription first (its end removes them).
                    if let Some(subscription) = self
                        .store
                        .tracks
                        .get(&child)
                        .and_then(|c| c.subscription)
                        .filter(|&s| stored.subscription != Some(s))
                    {
                        return Err(ApplyError::HoldsRunTimeTracks {
                            event: EVENT,
                            track,
                            child,
                            subscription,
                        });
                    }
                    return Err(ApplyError::HasChildren {
                        event: EVENT,
                        track,
                        child,
                    });
                }
                let busy = self.store.subscriptions.values().find(|s| {
                    s.track == track
                        && (s.active
                            || self
                                .stack
                                .subscriptions
                                .iter()
                                .any(|f| f.subscription == s.id))
                });
                if let Some(subscription) = busy {
                    return Err(ApplyError::ActiveSubscription {
                        event: EVENT,
                        track,
                        subscription: subscription.id,
                    });
                }
                // Validated: mutate. The track's entities and ended subscriptions go with it.
                if let Some(removed) = self.store.tracks.remove(&track) {
                    self.store.remove_path(&removed.path);
                    for id in removed.entity_id.iter().chain(&removed.prev_entity_ids) {
                        self.store.pipelines.remove(id);
                        self.store.operators.remove(id);
                    }
                    self.store.subscriptions.retain(|_, s| s.track != track);
                    if let Some(owner) = removed
                        .subscription
                        .and_then(|s| self.store.subscriptions.get_mut(&s))
                    {
                        owner.tracks.retain(|&t| t != track);
                    }
                }
            }
        }
        Ok(())
    }

    // ---- core entities -------------------------------------------------------------------

    fn entity_call(
        &mut self,
        event: &'static str,
        entity: Id,
        kind: EntityKind,
        name: &str,
    ) -> Result<(), ApplyError> {
        let module = self.open_module(event)?;
        if let Some(frame) = self.open_subscribe() {
            // Run-time tracks carry no core entity (the registration made the operators).
            return Err(ApplyError::CallNotAllowed {
                event,
                open: format!("the subscribe-call of subscription {}", frame.subscription),
            });
        }
        if self.id_in_use(entity) {
            return Err(ApplyError::IdInUse { event, id: entity });
        }
        // Validated: mutate.
        match kind {
            EntityKind::Pipeline => {
                self.store.pipelines.insert(
                    entity,
                    Pipeline {
                        id: entity,
                        name: name.to_owned(),
                        module,
                    },
                );
            }
            EntityKind::Operator => {
                // The kind of the track scope the operator is made in, shared when equal.
                let shared = self
                    .stack
                    .tracks
                    .last()
                    .and_then(|f| self.store.tracks.get(&f.track))
                    .map(|t| match &t.pending {
                        Some(p) => &p.signature.kind,
                        None => &t.signature.kind,
                    })
                    .filter(|k| ***k == *name)
                    .cloned();
                self.store.operators.insert(
                    entity,
                    Operator {
                        id: entity,
                        kind: shared.unwrap_or_else(|| Arc::from(name)),
                        module,
                    },
                );
            }
        }
        self.stack.entities.push(EntityFrame {
            entity,
            kind,
            track_depth: self.stack.tracks.len(),
        });
        self.introduce(entity);
        Ok(())
    }

    fn entity_call_return(
        &mut self,
        event: &'static str,
        entity: Id,
        kind: EntityKind,
    ) -> Result<(), ApplyError> {
        check_return(event, self.stack.entities.last().map(|f| f.entity), entity)?;
        let Some(frame) = self.stack.entities.last() else {
            return Ok(());
        };
        if frame.kind != kind {
            return Err(ApplyError::WrongReturnKind {
                event,
                id: entity,
                open: format!("{}-call", frame.kind),
            });
        }
        if frame.track_depth != self.stack.tracks.len() {
            let crossed = self
                .stack
                .tracks
                .get(frame.track_depth)
                .map_or(entity, |t| t.track);
            return Err(ApplyError::CrossesTrack {
                event,
                entity,
                track: crossed,
            });
        }
        if let Some((track, first)) = self
            .stack
            .tracks
            .last()
            .and_then(|top| top.entity.map(|first| (top.track, first)))
        {
            return Err(ApplyError::SecondEntity {
                event,
                track,
                first,
                second: entity,
            });
        }
        // Validated: mutate.
        self.stack.entities.pop();
        if let Some(top) = self.stack.tracks.last_mut() {
            top.entity = Some(entity);
        }
        Ok(())
    }

    // ---- subscriptions -------------------------------------------------------------------

    fn subscribe_call(&mut self, subscription: Id, track: Id) -> Result<(), ApplyError> {
        const EVENT: &str = "subscribe-call";
        let Some(stored) = self.store.tracks.get(&track) else {
            return Err(ApplyError::UnknownTrack {
                event: EVENT,
                track,
            });
        };
        if self.store.subscriptions.contains_key(&subscription) {
            return self.reproject_call(subscription, track);
        }
        // A pipeline subscription, or an inner one: on a track that produced an operator (a
        // higher-order operator's) or on a run-time track (nested). A scope that produced
        // nothing is refused.
        let pipeline = stored
            .entity_id
            .is_some_and(|e| self.store.pipelines.contains_key(&e));
        let inner = !pipeline
            && (stored.subscription.is_some()
                || stored
                    .entity_id
                    .is_some_and(|e| self.store.operators.contains_key(&e)));
        if !pipeline && !inner {
            return Err(ApplyError::NotAPipelineTrack {
                event: EVENT,
                track,
            });
        }
        let parent = stored.subscription;
        if self.id_in_use(subscription) {
            return Err(ApplyError::IdInUse {
                event: EVENT,
                id: subscription,
            });
        }
        // Validated: mutate.
        let module = self.running_module();
        self.store.subscriptions.insert(
            subscription,
            Subscription {
                id: subscription,
                track,
                active: false,
                module,
                inner,
                code: self.current_module.unwrap_or(0),
                tracks: Vec::new(),
                parent,
                nested: Vec::new(),
            },
        );
        if let Some(p) = parent.and_then(|p| self.store.subscriptions.get_mut(&p)) {
            p.nested.push(subscription);
        }
        self.stack.subscriptions.push(SubscriptionFrame {
            subscription,
            call: SubscriptionCall::Subscribe,
            module,
            track_depth: self.stack.tracks.len(),
            next_index: 0,
            reprojection: false,
        });
        self.introduce(subscription);
        Ok(())
    }

    /// A `subscribe-call` of an active subscription: a re-projection with the current
    /// module's code. Its track-calls register the subscription's tracks again (a pending on
    /// each, from the current module) or add new ones; those it does not register again are
    /// its orphans ([`State::projection_orphans`]) once it returned.
    fn reproject_call(&mut self, subscription: Id, track: Id) -> Result<(), ApplyError> {
        const EVENT: &str = "subscribe-call";
        let Some(existing) = self.store.subscriptions.get(&subscription) else {
            return Ok(());
        };
        if existing.track != track {
            return Err(ApplyError::SubscriptionTrackMismatch {
                event: EVENT,
                subscription,
                track: existing.track,
                found: track,
            });
        }
        if self.subscription_call_open(subscription).is_some() {
            return Err(ApplyError::CallAlreadyOpen {
                event: EVENT,
                id: subscription,
            });
        }
        if !existing.active {
            return Err(ApplyError::SubscriptionNotActive {
                event: EVENT,
                subscription,
            });
        }
        if let Some(open) = self.running_module() {
            return Err(ApplyError::ModuleStillOpen { event: EVENT, open });
        }
        let current = self.current_module;
        let Some(code) = current.filter(|&c| c > existing.code) else {
            return Err(ApplyError::AlreadyProjected {
                event: EVENT,
                subscription,
                code: existing.code,
                current,
            });
        };
        // Validated: mutate.
        if let Some(existing) = self.store.subscriptions.get_mut(&subscription) {
            existing.code = code;
        }
        self.stack.subscriptions.push(SubscriptionFrame {
            subscription,
            call: SubscriptionCall::Subscribe,
            module: None,
            track_depth: self.stack.tracks.len(),
            next_index: 0,
            reprojection: true,
        });
        Ok(())
    }

    fn unsubscribe_call(&mut self, subscription: Id) -> Result<(), ApplyError> {
        const EVENT: &str = "unsubscribe-call";
        let Some(stored) = self.store.subscriptions.get(&subscription) else {
            return Err(ApplyError::UnknownSubscription {
                event: EVENT,
                subscription,
            });
        };
        if self.subscription_call_open(subscription).is_some() {
            return Err(ApplyError::CallAlreadyOpen {
                event: EVENT,
                id: subscription,
            });
        }
        if !stored.active {
            return Err(ApplyError::SubscriptionNotActive {
                event: EVENT,
                subscription,
            });
        }
        self.check_no_live_nested(EVENT, subscription)?;
        // Validated: mutate.
        let module = self.running_module();
        self.stack.subscriptions.push(SubscriptionFrame {
            subscription,
            call: SubscriptionCall::Unsubscribe,
            module,
            track_depth: self.stack.tracks.len(),
            next_index: 0,
            reprojection: false,
        });
        Ok(())
    }

    /// Refuses ending `subscription` while an inner subscription on one of its run-time
    /// tracks is live (active, or its call open): end the nested one first.
    fn check_no_live_nested(
        &self,
        event: &'static str,
        subscription: Id,
    ) -> Result<(), ApplyError> {
        let Some(stored) = self.store.subscriptions.get(&subscription) else {
            return Ok(());
        };
        let live = stored.nested.iter().find_map(|n| {
            self.store
                .subscriptions
                .get(n)
                .filter(|s| s.active || self.subscription_call_open(s.id).is_some())
        });
        match live {
            Some(nested) => Err(ApplyError::ActiveSubscription {
                event,
                track: nested.track,
                subscription: nested.id,
            }),
            None => Ok(()),
        }
    }

    fn subscription_call_return(
        &mut self,
        event: &'static str,
        subscription: Id,
        call: SubscriptionCall,
    ) -> Result<(), ApplyError> {
        let top = self.stack.subscriptions.last().map(|f| f.subscription);
        check_return(event, top, subscription)?;
        let Some(frame) = self.stack.subscriptions.last() else {
            return Ok(());
        };
        if frame.call != call {
            let open = match frame.call {
                SubscriptionCall::Subscribe => "subscribe-call",
                SubscriptionCall::Unsubscribe => "unsubscribe-call",
            };
            return Err(ApplyError::WrongReturnKind {
                event,
                id: subscription,
                open: open.to_owned(),
            });
        }
        if let Some(open) = self.stack.tracks.get(frame.track_depth) {
            return Err(ApplyError::OpenCallsInside {
                event,
                scope: format!("subscription {subscription}"),
                open: format!("track {}", open.track),
            });
        }
        if call == SubscriptionCall::Unsubscribe {
            self.check_no_live_nested(event, subscription)?;
        }
        // Validated: mutate.
        self.stack.subscriptions.pop();
        match call {
            SubscriptionCall::Subscribe => {
                if let Some(stored) = self.store.subscriptions.get_mut(&subscription) {
                    stored.active = true;
                }
            }
            SubscriptionCall::Unsubscribe => self.end_subscription(subscription),
        }
        Ok(())
    }

    /// An ended subscription: its run-time tracks leave the store (children before
    /// parents), and so does the subscription itself when it is an inner one (a pipeline
    /// subscription stays, inactive). Cannot fail.
    fn end_subscription(&mut self, subscription: Id) {
        let Some(stored) = self.store.subscriptions.get_mut(&subscription) else {
            return;
        };
        stored.active = false;
        let tracks = std::mem::take(&mut stored.tracks);
        let (inner, parent) = (stored.inner, stored.parent);
        for id in tracks.iter().rev() {
            if let Some(removed) = self.store.tracks.remove(id) {
                self.store.remove_path(&removed.path);
            }
        }
        if inner {
            self.store.subscriptions.remove(&subscription);
            if let Some(p) = parent.and_then(|p| self.store.subscriptions.get_mut(&p)) {
                p.nested.retain(|&n| n != subscription);
            }
        }
    }
}

impl State {
    // ---- subjects ------------------------------------------------------------------------

    fn subject_use(
        &mut self,
        subject: &str,
        track: Id,
        role: SubjectRole,
        item: &Fingerprint,
    ) -> Result<(), ApplyError> {
        const EVENT: &str = "subject-use";
        let module = self.open_module(EVENT)?;
        if subject.is_empty() || subject.chars().any(char::is_control) {
            return Err(ApplyError::InvalidSubject {
                event: EVENT,
                subject: subject.to_owned(),
            });
        }
        let Some(stored) = self.store.tracks.get(&track) else {
            return Err(ApplyError::UnknownTrack {
                event: EVENT,
                track,
            });
        };
        if !registered_in(stored, module) {
            return Err(ApplyError::TrackNotInRun {
                event: EVENT,
                track,
                module,
            });
        }
        // The entity of this run's registration of the track (set when its scope returned).
        let entity = match &stored.pending {
            Some(p) if p.module == module => p.entity_id,
            _ => stored.entity_id,
        };
        if !entity.is_some_and(|e| self.store.pipelines.contains_key(&e)) {
            return Err(ApplyError::NotAPipelineTrack {
                event: EVENT,
                track,
            });
        }
        let Some(existing) = self.store.subjects.get_mut(subject) else {
            // Validated: mutate. The first declaration of a new subject.
            let (publishers, subscribers) = uses_of(role, track);
            self.store.subjects.insert(
                subject.to_owned(),
                Subject {
                    name: subject.to_owned(),
                    item: item.clone(),
                    publishers,
                    subscribers,
                    module,
                    created_by: module,
                    pending: None,
                },
            );
            return Ok(());
        };
        // What this run declared for the subject so far, if anything.
        let declared = if existing.module == module {
            Some((
                &existing.item,
                &mut existing.publishers,
                &mut existing.subscribers,
            ))
        } else {
            existing
                .pending
                .as_mut()
                .filter(|p| p.module == module)
                .map(|p| (&p.item, &mut p.publishers, &mut p.subscribers))
        };
        match declared {
            Some((declared, _, _)) if declared != item => {
                let (declared, found) = describe_pair(Some(declared), Some(item));
                Err(ApplyError::SubjectTypeMismatch {
                    event: EVENT,
                    subject: subject.to_owned(),
                    module,
                    declared,
                    track,
                    found,
                })
            }
            // Validated: mutate.
            Some((_, publishers, subscribers)) => {
                match role {
                    SubjectRole::Publish => publishers.insert(track),
                    SubjectRole::Subscribe => subscribers.insert(track),
                };
                Ok(())
            }
            None => {
                let (publishers, subscribers) = uses_of(role, track);
                existing.pending = Some(SubjectPending {
                    module,
                    item: item.clone(),
                    publishers,
                    subscribers,
                });
                Ok(())
            }
        }
    }
}

/// The publisher and subscriber sets of a subject's first use in a run.
fn uses_of(role: SubjectRole, track: Id) -> (BTreeSet<Id>, BTreeSet<Id>) {
    let one = BTreeSet::from([track]);
    match role {
        SubjectRole::Publish => (one, BTreeSet::new()),
        SubjectRole::Subscribe => (BTreeSet::new(), one),
    }
}

/// At the `ok` return of run `module`: what it declared replaces what earlier runs did, and a
/// subject it did not mention leaves the store (its uses were all in code the run replaced).
fn commit_subjects(subjects: &mut BTreeMap<String, Subject>, module: ModuleId) {
    subjects.retain(|_, subject| {
        match subject.pending.take() {
            Some(p) if p.module == module => {
                subject.item = p.item;
                subject.publishers = p.publishers;
                subject.subscribers = p.subscribers;
                subject.module = module;
            }
            other => subject.pending = other,
        }
        subject.module == module
    });
}

/// The refusal of a `track-call` at the path `holder` holds for another owner.
fn path_taken(event: &'static str, holder: &Track) -> ApplyError {
    ApplyError::PathTaken {
        event,
        path: holder.path.clone(),
        track: holder.id,
        owner: match holder.subscription {
            Some(s) => format!("subscription {s}"),
            None => "the registration".to_owned(),
        },
    }
}

/// A `*-call-return` for `found` must close the innermost open call of its kind, `top`.
fn check_return(event: &'static str, top: Option<Id>, found: Id) -> Result<(), ApplyError> {
    match top {
        None => Err(ApplyError::ReturnWithoutCall { event, found }),
        Some(expected) if expected != found => Err(ApplyError::ReturnMismatch {
            event,
            expected,
            found,
        }),
        Some(_) => Ok(()),
    }
}

/// Whether `track` was already registered by the run `module` (committed by it, or pending
/// from it): a second registration at its path in the same run is a duplicate.
fn registered_in(track: &Track, module: ModuleId) -> bool {
    track.module == module || track.pending.as_ref().is_some_and(|p| p.module == module)
}

/// Commits `stored`'s pending registration from `module` (what a `swapped` or `reset`
/// `track-update` does once validated); the entities that leave its bounded history go to
/// `forgotten`, to be removed from the store.
fn commit_pending(stored: &mut Track, module: ModuleId, forgotten: &mut Vec<Id>) {
    let Some(pending) = stored.pending.take() else {
        return;
    };
    stored.signature = pending.signature;
    if let Some(old) = stored.entity_id.take() {
        stored.prev_entity_ids.push(old);
    }
    // Bounded history: the oldest replaced entity leaves the track's history and the store
    // (an entity belongs to the one scope run that produced it, so nothing else refers to it).
    if stored.prev_entity_ids.len() > PREV_ENTITY_HISTORY {
        let excess = stored.prev_entity_ids.len() - PREV_ENTITY_HISTORY;
        forgotten.extend(stored.prev_entity_ids.drain(..excess));
    }
    stored.entity_id = pending.entity_id;
    stored.version += 1;
    stored.module = module;
}

/// What [`State::settle_run`] decided for a run and committed: track ids, each list in id
/// order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    /// The run settled.
    pub module: ModuleId,
    /// Registered again with the same signature: their state is kept.
    pub swapped: Vec<Id>,
    /// Registered again with another signature, and why (see [`signature_change`]).
    pub reset: Vec<(Id, String)>,
    /// Created by the run.
    pub added: Vec<Id>,
    /// Not registered by the run: still in the store, to be removed.
    pub orphans: Vec<Id>,
}

impl Settlement {
    /// The `track-update` events that commit the same tracks one by one (swapped and reset,
    /// in id order): applying them to the state before [`State::settle_run`] yields the state
    /// after it.
    pub fn updates(&self) -> Vec<Event> {
        let mut updates: Vec<(Id, UpdateOutcome)> = self
            .swapped
            .iter()
            .map(|&id| (id, UpdateOutcome::Swapped))
            .chain(self.reset.iter().map(|(id, reason)| {
                (
                    *id,
                    UpdateOutcome::Reset {
                        reason: reason.clone(),
                    },
                )
            }))
            .collect();
        updates.sort_unstable_by_key(|(id, _)| *id);
        updates
            .into_iter()
            .map(|(track, outcome)| Event::TrackUpdate {
                track,
                module: self.module,
                outcome,
            })
            .collect()
    }
}

/// String equality that first asks whether both are the same bytes in memory (a track-call's
/// kind is usually its signature's own kind).
#[inline]
fn same_str(a: &str, b: &str) -> bool {
    std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len() || a == b
}

//! The tracking store of the HMR host: `hmr_track` entities, the paired call events that build
//! them, a pure accumulator that folds events into a [`State`], and the structural-path queries
//! the host reconciles with.
//!
//! While a plugin version runs its registration, the host emits [`Event`]s; [`State::apply`]
//! folds each into a [`Stack`] of open calls and a [`Store`] of entities ([`Track`], [`Module`],
//! [`Pipeline`], [`Operator`], [`Subscription`], [`Subject`]). A track is named by its structural path; a
//! later version registering the same path leaves a [`Pending`] on the existing track, and the
//! host settles it with a `track-update` (swapped when the [`Signature`]s are equal, reset
//! otherwise) or removes the [`State::orphans`] of the new run. The crate is pure data and logic:
//! no I/O, no threads. [`Recorder`] keeps a state and its event log and picks ids.
//!
//! ```
//! use hmr_track::{ModuleOutcome, Recorder, Signature, UpdateOutcome};
//!
//! # fn main() -> Result<(), hmr_track::ApplyError> {
//! let mut rec = Recorder::new();
//! // One run of the registration: p.pipeline("counter", ..).map(..).filter(..)
//! let run = |rec: &mut Recorder| -> Result<u64, hmr_track::ApplyError> {
//!     let module = rec.module_call("example-plugin")?;
//!     let counter = rec.track_call("pipeline", Some("counter"), Signature::default())?;
//!     let pipeline = rec.pipeline_call("counter")?;
//!     rec.pipeline_call_return(pipeline)?;
//!     for kind in ["map", "filter"] {
//!         let track = rec.track_call(kind, None, Signature::default())?;
//!         let op = rec.operator_call(kind)?;
//!         rec.operator_call_return(op)?;
//!         rec.track_call_return(track)?;
//!     }
//!     rec.track_call_return(counter)?;
//!     rec.module_call_return(module, ModuleOutcome::Ok)?;
//!     Ok(module)
//! };
//! run(&mut rec)?;
//! let filter = rec.state.find_by_path("counter|1:filter").expect("registered").id;
//! assert_eq!(rec.state.derive_structural_path(filter)?, "counter|1:filter");
//!
//! // The plugin is rebuilt: the same registration runs again as module 2.
//! let module = run(&mut rec)?;
//! assert!(rec.state.orphans(module).is_empty());
//! for track in rec.state.pending_updates(module) {
//!     rec.update(track, module, UpdateOutcome::Swapped)?;
//! }
//! assert_eq!(rec.state.track(filter).map(|t| t.version), Some(1));
//! assert!(rec.state.stack.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! # Event vocabulary
//!
//! One closed enum, [`Event`], serialized with a `"type"` tag holding the kebab-case name. Calls
//! come in pairs `xyz-call` / `xyz-call-return` and nest like a call stack:
//!
//! | event | meaning |
//! |---|---|
//! | `module-call` / `-return` | one run of a plugin version's registration; the return is `ok` or `failed` (a failed run is rolled back whole) |
//! | `track-call` / `-return` | a track scope (the DSL's `pipeline(..)`, each operator, `scope("key", ..)`); the parent is the open track on top of the stack, never passed in the event |
//! | `pipeline-call` / `-return` | a pipeline (observable) is created |
//! | `operator-call` / `-return` | an operator is created |
//! | `subscribe-call` / `-return` | a subscription starts: to a pipeline track, or an inner one to a higher-order operator's track (or to a run-time track); the `track-call`s inside make its run-time tracks. For a subscription already active it is a re-projection (see run-time tracks) |
//! | `unsubscribe-call` / `-return` | it ends; its run-time tracks leave the store at the return (an inner subscription too) |
//! | `subject-use` | inside a run, not a scope: a pipeline track of the run publishes to (`publish`) or reads (`subscribe`) a subject, with its value type |
//! | `track-update` | after a run returned `ok`: a track moved to the new version (`swapped`, `reset` with a reason) or was `removed`; after a re-projection, the same for its run-time tracks |
//!
//! Pipeline and operator calls and `subject-use` need an open `module-call`; track calls need
//! one or an open `subscribe-call`. Returns must match the innermost open call of their kind,
//! and a scope cannot close while a call opened inside it is open (a track opened before an
//! open `subscribe-call` cannot return before it). A refused event returns an [`ApplyError`]
//! naming it and leaves the state untouched.
//!
//! # Correlation rule
//!
//! The core entity (pipeline or operator) whose `*-call-return` happens while a track is the top
//! of the track stack — called and returned directly inside that scope, not inside a nested
//! track — is what the scope returned. A scope returns at most one (a second is an error; an
//! entity created inside another entity's call directly in the same scope counts too). At
//! `track-call-return` it becomes the track's `entity_id` (a new track) or `pending.entity_id` (a
//! track registered again by a later run). A scope that produced nothing (a keyed `scope`) keeps
//! `entity_id` `None`. The same return also fills `signature.children` with the kinds of the
//! scope's direct child tracks, in call order. Run-time tracks correlate with nothing (no
//! entity is made inside a `subscribe-call`); their own children are recorded as above, but
//! a run-time track hanging directly under a registered track is not one of its children.
//!
//! # Run-time tracks
//!
//! A higher-order operator (`switch_map`, `merge_map`, ...) subscribes an inner stream per
//! outer value, at run time. The host reports it as a `subscribe-call` naming the operator's
//! track, then the inner stream's `track-call`s, then the `subscribe-call-return`
//! ([`Recorder::subscribe_at`], [`Recorder::inner_track_call`],
//! [`Recorder::subscribe_call_return`]), outside or inside a registration run:
//!
//! - **Parent and index.** Inside an open `subscribe-call`, a track-call makes a *run-time
//!   track* of that subscription ([`Track::subscription`]). The parent comes from the stack:
//!   the open run-time track, or the subscription's own track for the first level (not a
//!   registration frame that happens to be open below the `subscribe-call`). The index is per
//!   parent, counted in this call; keys as everywhere. The host opens one keyed track per
//!   subscription, `#<subscription number>:inner`, so the concurrent subscriptions of a
//!   `merge_map` never meet: `s|1:switch_map|#3:inner|0:map`.
//! - **Owner.** Run-time tracks are made with the code of the current module (the last `ok`
//!   run): their `module` and `created_by` are [`Subscription::code`]. They carry no core
//!   entity (a pipeline or operator call inside a `subscribe-call` is refused), and do not
//!   count in the registered signature of the track they hang under. A path is held by one
//!   owner: a registration track-call at a run-time track's path, a run-time one at a
//!   registration track's path or at another live subscription's, is refused
//!   ([`ApplyError::PathTaken`]); the same path twice in one subscription call is a
//!   [`ApplyError::DuplicatePath`]. No `module-call` starts while a `subscribe-call` is open.
//! - **End.** `unsubscribe-call-return` removes the subscription's run-time tracks (children
//!   before parents) from the store and the path index; an inner subscription (one not on a
//!   pipeline track) leaves the store too, a pipeline subscription stays inactive. Refused
//!   while an inner subscription made on one of its run-time tracks is live (nested ones end
//!   first).
//! - **Runs.** A registration never registers run-time tracks, so a run never reports them:
//!   not in [`State::orphans`], [`State::pending_updates`], [`State::tracks_of_module`] nor
//!   [`State::settle_run`]. A subscription made inside a run belongs to it like any other: a
//!   `failed` return removes it with its run-time tracks; those of subscriptions made outside
//!   the run are untouched. A registration track that still holds a live subscription's
//!   run-time tracks cannot be `removed` ([`ApplyError::HoldsRunTimeTracks`]), nor one with a
//!   live subscription ([`ApplyError::ActiveSubscription`]): the host ends the operator's
//!   inner subscriptions first (it disposes of the operator anyway), then removes it.
//! - **Re-projection.** After a reload the host re-runs the new projection on each live
//!   inner subscription. It reports it as a `subscribe-call` of the *same* subscription and
//!   track ([`Recorder::reproject`]), refused while a run is open and unless the current
//!   module is newer than [`Subscription::code`] ([`ApplyError::AlreadyProjected`]), which it
//!   becomes. Inside, track-calls work as a registration's: a path the subscription holds
//!   gets a [`Pending`] from the current module (same id), a new path a new track; a path
//!   held elsewhere is refused. After the return, [`State::projection_updates`] lists the
//!   tracks to `swapped` / `reset` and [`State::projection_orphans`] those the new projection
//!   dropped, to `removed` (children first); all with `track-update` of the current module,
//!   which waits for the re-projection's return. So an added or removed inner operator is
//!   expressible, and reloads are counted per inner track as for the registration's.
//! - **A projection that fails half-way** (a panic): the host returns the open run-time
//!   tracks and the `subscribe-call`, then unsubscribes; nothing of it is left.
//!
//! # Subjects
//!
//! A [`Subject`] is keyed by its name. A registration run declares every subject it uses, one
//! `subject-use` per publisher or subscriber, naming a closed pipeline track of the run (its
//! scope returned a pipeline); the run's first use of a name fixes the value type for the run,
//! and a later use with another type is refused ([`ApplyError::SubjectTypeMismatch`]). A new
//! name makes a subject at once (`created_by` the run); for an existing one the run's
//! declaration waits in [`Subject::pending`]. At the `ok` return of the run what it declared
//! replaces the subject's type, publishers and subscribers (`module` becomes the run), and
//! every subject the run did not mention leaves the store: the registration describes the whole
//! program, so such a subject has no publisher and no subscriber left in the new code (its old
//! pipelines are orphans, removed afterwards). A `failed` return drops what the run declared,
//! as for tracks. So after an `ok` run a subject names only tracks of that run, never an orphan,
//! and removing orphans never leaves a subject pointing at a missing track.
//!
//! # Path format
//!
//! - Top-level tracks must be keyed (the pipeline's name); their segment is the key verbatim.
//! - A nested unkeyed track's segment is `{index}:{kind}`, the index counting the parent's
//!   unkeyed children in this run of the parent (restarting each time the parent is entered,
//!   like hook call order).
//! - A nested keyed track's segment is `#{key}:{kind}`; it does not consume an index, so adding
//!   or moving a keyed scope shifts no unkeyed sibling.
//! - Segments are joined with `|`: `counter|0:map|1:filter`, `counter|#norm:scope|0:map`.
//! - Keys are non-empty and hold none of `|`, `:`, `#` and no control character; kinds are
//!   non-empty without `|`. A path registered twice in one run is an error.
//! - A run-time track's path continues its parent's the same way: under the subscription's
//!   track first (`s|1:switch_map|#3:inner`), the index counting the subscription call's
//!   unkeyed tracks there; below, the open run-time track's (`s|1:switch_map|#3:inner|0:map`).
//!   Registered twice in one subscription call, or held by another owner, it is refused.
//!
//! # From the TypeScript seed
//!
//! | seed (`tracking/v2`) | here |
//! |---|---|
//! | `__$(key, fn)` | the DSL's track scope: a `track-call` / `track-call-return` pair |
//! | `hmr_track` | [`Track`] |
//! | `hmr_module` | [`Module`] (one registration run, id = plugin version) |
//! | `hmr-module-call` / `-return` | `module-call` / `module-call-return` |
//! | `track-call` / `track-call-return` | the same names |
//! | `observable` / `operator` / `subscription` | [`Pipeline`] / [`Operator`] / [`Subscription`] |
//! | `deriveStructuralPath` | [`State::derive_structural_path`] |
//! | `prev_observable_ids` | [`Track::prev_entity_ids`] |
//! | `entity_id` | [`Track::entity_id`] |
//! | `state$ = { stack, store }` | [`State`] `{ stack: Stack, store: Store, .. }` |
//! | `03_scan-accumulator.ts` | [`apply`] / [`State::apply`] |
//! | `index: 0 // TODO` | per-parent index, restarting each run ([`TrackFrame::next_index`]) |
//! | orphans (completed, unsubscribed) | [`State::orphans`] + `track-update` `removed` |
//! | `$` child trackers made at run time | run-time tracks inside a `subscribe-call` ([`Track::subscription`], [`State::tracks_of_subscription`]) |
//! | (none: subjects are new here) | [`Subject`], `subject-use`, [`State::subjects`] / [`State::subject`] |
//!
//! # Not covered
//!
//! Unsubscribing, inside a run that then fails, a subscription made before that run is not
//! undone by the rollback (nor are its run-time tracks brought back). A re-projection's
//! pendings left unsettled when a later module becomes current cannot be committed any more;
//! the next re-projection replaces them.

mod accumulator;
mod error;
mod event;
mod model;
pub mod path;
mod query;
mod recorder;
mod tracks;

pub use accumulator::{
    EntityFrame, EntityKind, MODULE_HISTORY, PREV_ENTITY_HISTORY, Settlement, Stack, State, Store,
    SubscriptionCall, SubscriptionFrame, TrackFrame, apply,
};
pub use error::ApplyError;
pub use event::{Event, ModuleOutcome, SubjectRole, UpdateOutcome};
pub use model::{
    Fingerprint, Id, Module, ModuleId, ModuleStatus, Operator, Pending, Pipeline, Signature,
    Subject, SubjectPending, Subscription, Track, signature_change,
};
pub use recorder::Recorder;
pub use tracks::{BuildIdHash, IdHasher, TrackMap};

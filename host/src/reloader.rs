//! The reload sequence. One call of [`Reloader::reload`] is one attempt, all or nothing. The
//! steps are numbered as in ARCHITECTURE.md ("The reload sequence"; step 0, waiting for the
//! save to finish, is the watcher's):
//!
//! 1. **Build**: `cargo build` the plugin ([`crate::cargo`]); on a compile error report
//!    `build-failed` with the first diagnostic and stop here. A library byte-identical to
//!    the running one ends the attempt ([`Outcome::Unchanged`]).
//! 2. to 4. **Load**: check the file, copy it to a private path, open it, check its ABI
//!    header ([`crate::loader`]); on any mismatch report `load-failed` and stop here.
//! 5. **Register**: run the plugin's `register` on its own thread with a deadline, then
//!    replay what it said into the tracking store as one `module-call`
//!    ([`crate::register`]); a panic, a refused track or a missed deadline rolls the run back
//!    (`load-failed`).
//! 6. **Reconcile** by structural path: every re-registered track gets a `track-update`,
//!    `swapped` when its signature is unchanged, `reset` (with the reason) when not, and a
//!    state lineage to match (the one decision the source threads follow); new tracks are
//!    `added`; tracks of the previous version not registered again are `removed`, only now
//!    that the registration ran to its end, and their pipelines stopped.
//! 7. **Stage** each pipeline's new code on the reloader's side ([`crate::runtime`]).
//! 8. **Report** one `loaded` / `reload` event with the counts and timings, then commit:
//!    publish each staged code with its generation, start new and restarted pipelines.
//! 9. (On each source thread, at its next emission: migrate the state, run the new code.)
//!
//! Until step 6 nothing running has changed, so any failure leaves the last good version
//! running untouched. Versions are retired, never unmapped ([`crate::loader`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmr_track::{ApplyError, Id, Recorder, Settlement, Signature, UpdateOutcome};

pub use crate::cargo::plugin_manifest;
use crate::cargo::{BuildConfig, BuildError, Builder};
use crate::code::PipelineCode;
use crate::events::{HostEvent, ResetInfo, RestartInfo, Sink, TrackInfo};
use crate::inner::{Census, RegCall};
use crate::loader::{LibVersion, Loader};
use crate::runtime::{PanicPolicy, Published, Runtime};

/// What one reload attempt ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new version runs.
    Loaded {
        /// Its number.
        version: u64,
    },
    /// Cargo failed.
    BuildFailed,
    /// The library or its registration was refused.
    LoadFailed,
    /// Cargo produced the same library as the one running (a save that changed nothing the
    /// compiler sees): nothing was loaded.
    Unchanged,
}

/// Where the last successful reload's time went: cargo, then the host's share (steps 2 to
/// 7; the report and the commit after it are not timed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Cargo (step 1), as given to [`Reloader::load_built`] for a library built elsewhere.
    pub build: Duration,
    /// Reading and checking the library file, writing the private copy, `dlopen` (steps 2
    /// and 3), without the header check.
    pub load: Duration,
    /// Reading and checking the ABI header (step 4).
    pub validate: Duration,
    /// Running the plugin's `register` on its thread and replaying it into the tracking
    /// store (step 5).
    pub register: Duration,
    /// Reconciling by path and staging the new code (steps 6 and 7).
    pub swap: Duration,
    /// Replaying the recent inputs through the old and the new code (`--replay`), before
    /// the reload is reported.
    pub replay: Duration,
}

/// Builds, loads and swaps plugin versions into a [`Runtime`].
pub struct Reloader {
    builder: Builder,
    sink: Sink,
    loader: Loader,
    recorder: Recorder,
    runtime: Runtime,
    versions: Vec<Arc<LibVersion>>,
    current: Option<u64>,
    subscriptions: BTreeMap<String, Id>,
    /// The tracking store's subscription of each live inner subscription (pipeline, number)
    /// it was told of (`Runtime::take_census`).
    inner_subs: BTreeMap<(Arc<str>, u64), Id>,
    /// How many inner subscriptions that started and ended inside one call the census told
    /// of (`Census::Passed`), entered into the store or not (see `enter_census`).
    passed_inner: u64,
    /// Of those, how many the plugin named by memo (`Census::Passed::named`).
    passed_named: u64,
    builds: Vec<(Instant, Instant)>,
    timings: Timings,
    /// A hash of the bytes of the library running now (see [`Outcome::Unchanged`]).
    running_library: Option<u64>,
    unchanged: usize,
    /// The state lineage of every live operator track (see [`crate::code::OpCode::lineage`]).
    lineages: std::collections::HashMap<Id, u64, hmr_track::BuildIdHash>,
    register_deadline: Duration,
    registrar: crate::register::Registrar,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("manifest", &self.builder.config().manifest)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for the plugin crate whose manifest is `build.manifest`.
    pub fn new(build: BuildConfig, sink: Sink, policy: PanicPolicy) -> std::io::Result<Reloader> {
        let mut runtime = Runtime::new(sink.clone(), policy);
        if let Some(dir) = build.manifest.parent() {
            runtime.set_base_dir(dir);
        }
        Ok(Reloader {
            builder: Builder::new(build, Some(sink.clone())),
            runtime,
            sink,
            loader: Loader::new()?,
            // The host never replays: a log would grow with every reload.
            recorder: Recorder::without_log(),
            versions: Vec::new(),
            current: None,
            subscriptions: BTreeMap::new(),
            inner_subs: BTreeMap::new(),
            passed_inner: 0,
            passed_named: 0,
            builds: Vec::new(),
            timings: Timings::default(),
            running_library: None,
            unchanged: 0,
            lineages: std::collections::HashMap::default(),
            register_deadline: crate::register::REGISTER_DEADLINE,
            registrar: crate::register::Registrar::default(),
        })
    }

    /// How long a plugin's `register` may run ([`crate::register::REGISTER_DEADLINE`] unless
    /// set).
    pub fn set_register_deadline(&mut self, deadline: Duration) {
        self.register_deadline = deadline;
    }

    /// The plugin crate's directory.
    pub fn plugin_dir(&self) -> &Path {
        self.builder.plugin_dir()
    }

    /// The cargo side: target directory, the last build's inputs, a canceller.
    pub fn builder(&mut self) -> &mut Builder {
        &mut self.builder
    }

    /// The version running now.
    pub fn current(&self) -> Option<u64> {
        self.current
    }

    /// The tracking store (read only).
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// How many inner subscriptions that started and ended inside their outer value's call
    /// the tracking store was told of so far (entered into it only while its log is kept:
    /// [`Reloader::keep_store_log`]).
    pub fn passed_inner_subscriptions(&self) -> u64 {
        self.passed_inner
    }

    /// Of [`Reloader::passed_inner_subscriptions`], how many the plugin named by the memo of
    /// their binding instead of describing them (a test's view of the fast way).
    #[doc(hidden)]
    pub fn named_inner_subscriptions(&self) -> u64 {
        self.passed_named
    }

    /// From now on, keeps every event the tracking store applies in its log
    /// (`recorder().log`), which a running host does not (it would grow with every
    /// registration and inner subscription): a test's or a debugging session's view of
    /// what the store was told, a run-time track that came and went included.
    pub fn keep_store_log(&mut self) {
        self.recorder.log_disabled = false;
        // The seeds of subscriptions that pass inside their calls are logged for it (each
        // one's where they are not its binding's).
        self.runtime.log_census_seeds();
    }

    /// The running pipelines.
    pub fn runtime(&mut self) -> &mut Runtime {
        &mut self.runtime
    }

    /// Every library version loaded, oldest first (all still mapped).
    pub fn versions(&self) -> &[Arc<LibVersion>] {
        &self.versions
    }

    /// Library versions mapped (all of them: none is ever unmapped).
    pub fn mapped_versions(&self) -> usize {
        self.versions.len()
    }

    /// Versions whose code, closures or state may still run or be dropped: held by running
    /// code or state slots, beyond our own list.
    pub fn live_versions(&self) -> usize {
        self.versions
            .iter()
            .filter(|v| Arc::strong_count(v) > 1)
            .count()
    }

    /// Loads a library that is already built (skips step 1), even one identical to the
    /// running version; used by tests and benchmarks.
    pub fn load_built(&mut self, library: &Path, build_ms: u64) -> Outcome {
        let started = Instant::now();
        let Some(bytes) = self.read_library(library) else {
            return Outcome::LoadFailed;
        };
        let outcome = self.load_and_swap(library, &bytes, started, build_ms);
        self.timings.build = Duration::from_millis(build_ms);
        if matches!(outcome, Outcome::Loaded { .. }) {
            // Not hashed: the next build is loaded whatever it holds.
            self.running_library = None;
        }
        outcome
    }

    /// How many builds produced the library already running ([`Outcome::Unchanged`]).
    pub fn unchanged_builds(&self) -> usize {
        self.unchanged
    }

    /// Where the last successful reload's time went.
    pub fn last_timings(&self) -> Timings {
        self.timings
    }

    /// When each cargo build started and ended, in order (builds never overlap: this is
    /// the only place that runs them, on one thread). A build killed because the host is
    /// stopping is not among them: it has no outcome.
    pub fn build_windows(&self) -> &[(Instant, Instant)] {
        &self.builds
    }

    /// Steps 1 to 8.
    pub fn reload(&mut self) -> Outcome {
        let started = Instant::now();
        let built = self.builder.build();
        if matches!(built, Err(BuildError::Stopped)) {
            // The host is shutting down and killed the build: no outcome to report.
            return Outcome::BuildFailed;
        }
        self.builds.push((started, Instant::now()));
        let artifact = match built {
            Ok(a) => a,
            Err(e) => {
                self.sink.event(HostEvent::BuildFailed {
                    error: format!("{e:#}"),
                });
                return Outcome::BuildFailed;
            }
        };
        let started = Instant::now();
        let Some(bytes) = self.read_library(&artifact.library) else {
            return Outcome::LoadFailed;
        };
        // A build identical to the running one is recognised by its bytes' hash.
        let hash = Some(crate::cargo::content_hash(&bytes));
        if hash == self.running_library {
            self.unchanged += 1;
            self.sink.event(HostEvent::Unchanged {
                build_ms: artifact.elapsed.as_millis() as u64,
            });
            return Outcome::Unchanged;
        }
        let build_ms = artifact.elapsed.as_millis() as u64;
        let outcome = self.load_and_swap(&artifact.library, &bytes, started, build_ms);
        self.timings.build = artifact.elapsed;
        if matches!(outcome, Outcome::Loaded { .. }) {
            self.running_library = hash;
        }
        outcome
    }

    /// The bytes of the library cargo built, read once; `None` after reporting why not.
    fn read_library(&self, library: &Path) -> Option<Vec<u8>> {
        match crate::loader::read(library) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.sink.event(HostEvent::LoadFailed {
                    error: e.to_string(),
                });
                None
            }
        }
    }

    /// Steps 2 to 8 on `bytes`, read from `library` at `load_started`.
    fn load_and_swap(
        &mut self,
        library: &Path,
        bytes: &[u8],
        load_started: Instant,
        build_ms: u64,
    ) -> Outcome {
        let version = self.recorder.next_module();
        let lib = match self.loader.load_bytes(library, bytes, version) {
            Ok((lib, validate)) => {
                self.timings.validate = validate;
                self.timings.load = load_started.elapsed() - validate;
                lib
            }
            Err(e) => {
                self.sink.event(HostEvent::LoadFailed {
                    error: e.to_string(),
                });
                return Outcome::LoadFailed;
            }
        };
        // Mapped from here on, whatever happens next.
        self.versions.push(lib.clone());
        // The inner subscriptions that started and ended since the last reload enter the
        // store first, as of the version they ran (a run cannot start inside one).
        self.enter_census();
        let register_started = Instant::now();
        let (module, pipelines) =
            match self
                .registrar
                .register(&lib, &mut self.recorder, self.register_deadline)
            {
                Ok(r) => r,
                Err(e) => {
                    self.sink.event(HostEvent::LoadFailed {
                        error: e.to_string(),
                    });
                    return Outcome::LoadFailed;
                }
            };
        drop(lib);
        self.timings.register = register_started.elapsed();
        let load_ms = load_started.elapsed().as_millis() as u64;
        let swap_started = Instant::now();
        let mut report = self.reconcile(module, pipelines);
        let projections = std::mem::take(&mut report.projections);
        self.timings.swap = swap_started.elapsed();
        let swap_us = self.timings.swap.as_micros() as u64;
        // What the new code does with the recent inputs, found before it runs for real.
        let replay_started = Instant::now();
        let mut replay = if self.current.is_none() {
            Vec::new()
        } else {
            self.runtime.replay(REPLAY_WAIT)
        };
        replay.sort_by(|a, b| a.pipeline.cmp(&b.pipeline));
        self.timings.replay = replay_started.elapsed();
        let first = self.current.is_none();
        self.current = Some(module);
        let tracks = self.tracks();
        let event = if first {
            HostEvent::Loaded {
                version: module,
                tracks,
                build_ms,
                load_ms,
            }
        } else {
            HostEvent::Reload {
                version: module,
                swapped: report.swapped,
                reset: report.reset.len(),
                added: report.added.len(),
                removed: report.removed.len(),
                restarted: report.restarted.len(),
                resets: report.reset,
                added_paths: report.added,
                removed_paths: report.removed,
                restarts: report.restarted,
                stuck: report.stuck,
                build_ms,
                load_ms,
                swap_us,
                mapped_versions: self.mapped_versions(),
                live_versions: self.live_versions(),
                tracks,
                replay,
            }
        };
        self.sink.event(event);
        for (pipeline, e) in self.runtime.launch() {
            self.sink.event(HostEvent::Error {
                path: pipeline.clone(),
                message: format!(
                    "cannot start the source thread of {pipeline}: {e}; it does not run, and the \
                     next reload tries again"
                ),
                pipeline,
            });
        }
        // The tracking store learns of the re-projections after the new code runs: nothing
        // waits for it.
        for (pipeline, id, calls) in projections {
            self.enter_projection(&pipeline, id, &calls, module);
        }
        Outcome::Loaded { version: module }
    }

    /// Every track of the running version, in path order.
    pub fn tracks(&self) -> Vec<TrackInfo> {
        let store = &self.recorder.state.store;
        // `paths` is ordered by path: no sort, and each kind is shared, not copied.
        store
            .paths
            .iter()
            .filter_map(|(path, id)| store.tracks.get(id).map(|t| (path, t)))
            .map(|(path, t)| TrackInfo {
                path: path.clone(),
                kind: t.kind.clone(),
                version: t.version,
            })
            .collect()
    }

    /// Steps 6 and 7.
    fn reconcile(&mut self, module: u64, pipelines: Vec<PipelineCode>) -> Report {
        let mut report = Report::default();
        // One plan, decided and committed in one pass over the store: this is the part of a
        // reload that grows with the number of tracks, so re-registered, new and orphaned
        // tracks are sorted out together, each signature compared once.
        let settlement = self.recorder.settle_run(module).unwrap_or_else(|e| {
            self.internal_error(&e);
            Settlement::default()
        });
        let state = &self.recorder.state;
        let path_of = |id: &Id| state.track(*id).map(|t| t.path.clone()).unwrap_or_default();
        for (id, reason) in &settlement.reset {
            report.reset.push(ResetInfo {
                path: path_of(id),
                reason: reason.clone(),
            });
        }
        if self.current.is_some() {
            report.added = settlement.added.iter().map(path_of).collect();
        }
        report.reset.sort_by(|a, b| a.path.cmp(&b.path));
        report.added.sort();
        let mut orphans: Vec<&hmr_track::Track> = settlement
            .orphans
            .iter()
            .filter_map(|id| state.track(*id))
            .collect();
        // Children before parents, so each removal leaves no child behind.
        orphans.sort_by(|a, b| b.path.cmp(&a.path));
        let removed_pipelines: BTreeSet<String> = orphans
            .iter()
            .filter(|t| &*t.kind == "pipeline")
            .map(|t| t.key.clone().unwrap_or_default())
            .collect();
        report.removed = orphans.iter().rev().map(|t| t.path.clone()).collect();
        let orphans: Vec<Id> = orphans.iter().map(|t| t.id).collect();
        // The one decision: the drivers keep exactly the states reported as swapped.
        for &id in &settlement.added {
            self.lineages.insert(id, module);
        }
        for (id, _) in &settlement.reset {
            self.lineages.insert(*id, module);
        }
        for &id in &settlement.swapped {
            self.lineages.entry(id).or_insert(module);
        }
        let swapped = settlement.swapped;
        // Step 5: removed pipelines first, then the new code.
        for name in removed_pipelines {
            self.runtime.remove(&name);
            if let Some(sub) = self.subscriptions.remove(&name)
                && let Err(e) = self.recorder.unsubscribe(sub)
            {
                self.internal_error(&e);
            }
        }
        for id in orphans {
            self.end_inner_subs_on(id);
            self.lineages.remove(&id);
            if let Err(e) = self.recorder.update(id, module, UpdateOutcome::Removed) {
                self.internal_error(&e);
            }
        }
        for mut code in pipelines {
            for op in &mut code.ops {
                op.lineage = self.lineages.get(&op.track).copied().unwrap_or(module);
            }
            let name = code.name.clone();
            let track = code.track;
            match self.runtime.publish(code) {
                Published::Restarted(why) => report.restarted.push(RestartInfo {
                    pipeline: name.clone(),
                    reason: why.to_string(),
                }),
                Published::Stuck => report.stuck.push(name.clone()),
                Published::Swapped | Published::Started => {}
            }
            if !self.subscriptions.contains_key(&name) {
                match self.recorder.subscribe(track) {
                    Ok(sub) => {
                        self.subscriptions.insert(name, sub);
                    }
                    Err(e) => self.internal_error(&e),
                }
            }
        }
        // Live inner subscriptions: re-projected with the staged code by their pipelines'
        // threads now, so the report counts their tracks (what each driver applies when it
        // takes the code).
        let mut inner_swapped = 0;
        for (pipeline, plan) in self.runtime.prepare_inners(PREPARE_WAIT) {
            // Entered into the store once the reload is reported (off its critical path).
            for (id, calls) in plan.projected {
                report.projections.push((pipeline.clone(), id, calls));
            }
            inner_swapped += plan.swapped;
            report.reset.extend(
                plan.reset
                    .into_iter()
                    .map(|(path, reason)| ResetInfo { path, reason }),
            );
            report.added.extend(plan.added);
            report.removed.extend(plan.removed);
        }
        report.reset.sort_by(|a, b| a.path.cmp(&b.path));
        report.added.sort();
        // A restarted pipeline runs the new code from fresh state, and a stuck one cannot
        // take it yet: their tracks were not swapped, whatever their signatures say.
        let restarted_track = |id: &Id| {
            let Some(path) = self.recorder.state.track(*id).map(|t| t.path.as_str()) else {
                return false;
            };
            let under = |pipeline: &str| {
                path == pipeline
                    || path
                        .strip_prefix(pipeline)
                        .is_some_and(|rest| rest.starts_with('|'))
            };
            report.restarted.iter().any(|r| under(&r.pipeline))
                || report.stuck.iter().any(|p| under(p))
        };
        report.swapped = inner_swapped
            + if report.restarted.is_empty() && report.stuck.is_empty() {
                swapped.len()
            } else {
                swapped.iter().filter(|id| !restarted_track(id)).count()
            };
        report
    }

    /// Between reloads (the dev loop calls it every [`crate::watch::CENSUS_EVERY`] while it
    /// waits): brings the tracking store up to date with the pipelines' inner subscriptions.
    pub fn idle(&mut self) {
        self.enter_census();
    }

    /// As [`Reloader::idle`], and then, until `done` holds, enters each census message as it
    /// arrives, waiting for it at most until `timeout` has passed. Whether `done` held: a
    /// test's way to wait for what the pipelines' threads tell the tracking store after their
    /// calls are done.
    #[doc(hidden)]
    pub fn idle_until(&mut self, timeout: Duration, done: impl Fn(&Reloader) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        self.enter_census();
        while !done(self) {
            match self.runtime.next_census(deadline) {
                Some(c) => self.enter_census_messages([c]),
                None => return false,
            }
        }
        true
    }

    /// Enters into the tracking store what the pipelines' inner subscriptions did since the
    /// last call (`Runtime::take_census`): a started one as a subscription of its
    /// higher-order operator's track with its run-time tracks (`#N:inner` and the inner
    /// stream's), an ended one unsubscribed (its tracks leave the store).
    fn enter_census(&mut self) {
        let census = self.runtime.take_census();
        self.enter_census_messages(census);
    }

    /// Enters `census` (see [`Reloader::enter_census`]).
    fn enter_census_messages(&mut self, census: impl IntoIterator<Item = Census>) {
        for c in census {
            match c {
                Census::Passed {
                    pipeline,
                    op_track,
                    calls,
                    first,
                    count,
                    seeds,
                    named,
                } => {
                    self.passed_inner = self.passed_inner.saturating_add(count);
                    self.passed_named = self.passed_named.saturating_add(named);
                    // Each entered and removed, as a subscription that started and ended:
                    // which leaves the store's contents as they were (only its id counter
                    // moves on), so it is done only where the events are seen (the store's
                    // log kept, `keep_store_log`). The inspector's drivers make no such runs
                    // (they count per subscription) and it is set before the first load; the
                    // tallies are checked all the same, should one ever come later. Otherwise
                    // a fast outer source's millions of them (about a microsecond each in a
                    // release build, ten in a debug one) would keep the dev loop from the
                    // next reload.
                    if self.recorder.log_disabled && self.runtime.tallies().is_none() {
                        continue;
                    }
                    if self.recorder.state.track(op_track).is_none() {
                        continue;
                    }
                    let mut cursor = 0;
                    for id in first..first.saturating_add(count) {
                        let sub = match &seeds {
                            // With its own seeds.
                            Some(log) => {
                                let own = log.calls_of(&calls, &mut cursor);
                                self.enter_started(&pipeline, id, op_track, &own)
                            }
                            None => self.enter_started(&pipeline, id, op_track, &calls),
                        };
                        self.leave(&pipeline, id, sub);
                    }
                }
                Census::Started {
                    pipeline,
                    id,
                    op_track,
                    calls,
                } => {
                    // Its operator may be gone already (a reload removed it).
                    if self.recorder.state.track(op_track).is_none() {
                        continue;
                    }
                    if let Some(sub) = self.enter_started(&pipeline, id, op_track, &calls) {
                        self.inner_subs.insert((pipeline, id), sub);
                    }
                }
                Census::Ended { pipeline, id } => {
                    let sub = self.inner_subs.remove(&(pipeline.clone(), id));
                    self.leave(&pipeline, id, sub);
                }
            }
        }
    }

    /// Enters subscription `id` of `pipeline` under `op_track` with its run-time tracks;
    /// returns the store's subscription, or `None` when it could not be entered (said as an
    /// internal error).
    fn enter_started(
        &mut self,
        pipeline: &Arc<str>,
        id: u64,
        op_track: Id,
        calls: &[RegCall],
    ) -> Option<Id> {
        match self.recorder.subscribe_at(op_track) {
            Ok(sub) => {
                let replayed = self.replay_inner_calls(id, calls);
                let returned = self.recorder.subscribe_call_return(sub);
                match replayed.and(returned) {
                    Ok(()) => {
                        self.show_inner(pipeline, id, sub);
                        Some(sub)
                    }
                    Err(e) => {
                        self.internal_error(&e);
                        let _ = self.recorder.unsubscribe(sub);
                        None
                    }
                }
            }
            Err(e) => {
                self.internal_error(&e);
                None
            }
        }
    }

    /// Subscription `id` of `pipeline` (the store's `sub`, if it was entered) ended: its
    /// tracks leave the store.
    fn leave(&mut self, pipeline: &Arc<str>, id: u64, sub: Option<Id>) {
        if let Some(t) = self.runtime.tallies() {
            t.run_time().end(pipeline, id);
        }
        if let Some(sub) = sub
            && let Err(e) = self.recorder.unsubscribe(sub)
        {
            self.internal_error(&e);
        }
    }

    /// With the inspector on: shows subscription `id` of `pipeline` (the store's `sub`) with
    /// its run-time tracks as the store has them now (paths, kinds, versions).
    fn show_inner(&self, pipeline: &Arc<str>, id: u64, sub: Id) {
        let Some(t) = self.runtime.tallies() else {
            return;
        };
        let tracks = self
            .recorder
            .state
            .tracks_of_subscription(sub)
            .into_iter()
            .map(|t| TrackInfo {
                path: t.path.clone(),
                kind: t.kind.clone(),
                version: t.version,
            })
            .collect();
        t.run_time().set(pipeline, id, tracks);
    }

    /// The run-time track calls of subscription `id`: its own keyed track `#id:inner`, then
    /// the inner stream's, as its binding made them. Every track it opens is closed, whatever
    /// fails.
    fn replay_inner_calls(&mut self, id: u64, calls: &[RegCall]) -> Result<(), ApplyError> {
        let key = id.to_string();
        let top = self
            .recorder
            .inner_track_call("inner", Some(&key), Signature::default())?;
        let mut open = vec![top];
        let mut result = Ok(());
        for c in calls {
            match c {
                RegCall::Open(kind, key, signature) => {
                    match self.recorder.inner_track_call(
                        kind,
                        key.as_deref(),
                        (**signature).clone(),
                    ) {
                        Ok(t) => open.push(t),
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                RegCall::Close => {
                    if open.len() > 1
                        && let Some(t) = open.pop()
                        && let Err(e) = self.recorder.track_call_return(t)
                    {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        while let Some(t) = open.pop() {
            let closed = self.recorder.track_call_return(t);
            if result.is_ok() {
                result = closed;
            }
        }
        result
    }

    /// A live inner subscription re-projected with `module`'s code (what the reload
    /// reports): the store's re-projection of it, and the `track-update`s of its tracks
    /// (swapped when the signature is unchanged, reset otherwise, removed when the new
    /// projection no longer has them).
    fn enter_projection(&mut self, pipeline: &str, id: u64, calls: &[RegCall], module: u64) {
        let pipeline: Arc<str> = Arc::from(pipeline);
        let Some(&sub) = self.inner_subs.get(&(pipeline.clone(), id)) else {
            // Started after the last census: it enters the store at the next one.
            return;
        };
        if let Err(e) = self.recorder.reproject(sub) {
            self.internal_error(&e);
            return;
        }
        let replayed = self.replay_inner_calls(id, calls);
        let returned = self.recorder.subscribe_call_return(sub);
        if let Err(e) = replayed.and(returned) {
            self.internal_error(&e);
            return;
        }
        let state = &self.recorder.state;
        let updates: Vec<(Id, UpdateOutcome)> = state
            .projection_updates(sub)
            .into_iter()
            .filter_map(|t| {
                let track = state.track(t)?;
                let pending = track.pending.as_ref()?;
                Some((
                    t,
                    match hmr_track::signature_change(&track.signature, &pending.signature) {
                        None => UpdateOutcome::Swapped,
                        Some(reason) => UpdateOutcome::Reset { reason },
                    },
                ))
            })
            .chain(
                state
                    .projection_orphans(sub)
                    .into_iter()
                    .map(|t| (t, UpdateOutcome::Removed)),
            )
            .collect();
        for (t, outcome) in updates {
            if let Err(e) = self.recorder.update(t, module, outcome) {
                self.internal_error(&e);
            }
        }
        self.show_inner(&pipeline, id, sub);
    }

    /// Before a registration track is removed: the inner subscriptions on it end in the
    /// store (their pipeline's thread ends them when it takes the new code).
    fn end_inner_subs_on(&mut self, track: Id) {
        let ending: Vec<((Arc<str>, u64), Id)> = self
            .inner_subs
            .iter()
            .filter(|(_, sub)| {
                self.recorder
                    .state
                    .store
                    .subscriptions
                    .get(sub)
                    .is_some_and(|s| s.track == track)
            })
            .map(|(k, s)| (k.clone(), *s))
            .collect();
        for (key, sub) in ending {
            if let Some(t) = self.runtime.tallies() {
                t.run_time().end(&key.0, key.1);
            }
            self.inner_subs.remove(&key);
            if let Err(e) = self.recorder.unsubscribe(sub) {
                self.internal_error(&e);
            }
        }
    }

    fn internal_error(&self, e: &dyn std::fmt::Display) {
        self.sink.event(HostEvent::Error {
            pipeline: String::new(),
            path: String::new(),
            message: format!("tracking store refused an update (a host bug): {e}"),
        });
    }
}

/// How long a reload waits for the pipelines with live inner subscriptions to re-project
/// them (`Runtime::prepare_inners`) before it reports; one that answers later re-projects
/// when it takes the code and tells what happened in a `notice`.
const PREPARE_WAIT: Duration = Duration::from_millis(500);

/// How long a reload waits for the pipelines' replays (each stops after
/// [`crate::replay::BUDGET`]); a pipeline busy in a long call is left out of the report.
const REPLAY_WAIT: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Report {
    /// The re-projections of live inner subscriptions, for the tracking store.
    projections: Vec<(String, u64, std::sync::Arc<[RegCall]>)>,
    swapped: usize,
    reset: Vec<ResetInfo>,
    added: Vec<String>,
    removed: Vec<String>,
    restarted: Vec<RestartInfo>,
    stuck: Vec<String>,
}

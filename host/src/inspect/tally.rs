//! Per-track emission counts and state texts, written by source threads for the inspector.
//!
//! Nothing here exists when `--inspect` is off: the runtime then has no [`Tallies`], each
//! driver calls the plugin's plain entry points (no counting compiled in) and passes a null
//! [`plugin_api::abi::EmitCx::counts`].
//!
//! With it on, each pipeline has a [`PipelineTally`]. Its driver (the source thread) owns a
//! [`Counts`] array, one cell per operator plus one for the source, and calls the plugin's
//! counting entry points, which bump the cells with relaxed loads and stores (one writer).
//! Readers (the inspector's threads) load the cells relaxed: a count may lag by the values of
//! the call in progress, never tear. When new code arrives the driver makes a new array for
//! its operators, carrying each track's count over by track id, so `emissions` counts from the
//! moment the track was added, across reloads and restarts.
//!
//! Marbles: a cell's top bit is a request ([`plugin_api::abi::WANT_MARBLE`]). The
//! inspector's sampler sets it in every cell each [`MARBLE_PERIOD`]; the counting entry
//! points, counting the next value of a marked cell, clear it and hand that value's Debug
//! text to the host, which
//! keeps the last [`MARBLES_PER_TRACK`] per track with their time and version. So values are
//! formatted only for what is kept, at a bounded rate per track, whatever the emission rate.
//!
//! State texts: a state slot is written by its source thread without synchronisation, so it
//! is read on that thread only. A reader sets [`PipelineTally::want_state`]; the driver sees it
//! after its next call into the plugin and writes the Debug text of every slot (the plugin's
//! `StateVTable::debug`, capped at [`STATE_CAP`] bytes), then wakes the readers. A pipeline
//! that emits rarely answers late; the reader waits a bounded time and shows the last texts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hmr_track::Id;
use plugin_api::abi::WANT_MARBLE;

use crate::code::{OpCode, PipelineCode};

/// The most bytes of Debug text kept per state.
pub const STATE_CAP: usize = 256;

/// How many state changes (one per stateful operator per migration) a pipeline keeps.
pub const KEPT_CHANGES: usize = 256;

/// What taking new code did to one stateful operator's state, seen by its source thread as
/// it migrated the slots (so `before` is the state the old code left, `after` what the new
/// code starts from).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StateChange {
    /// Its number among every pipeline's state changes (from 1), for the page's updates
    /// (which send the changes newer than the last they sent).
    #[serde(skip)]
    pub seq: u64,
    /// The plugin version the thread moved to.
    pub version: u64,
    /// The operator.
    pub path: String,
    /// Its state's Debug text before (`None`: the operator is new).
    pub before: Option<String>,
    /// Its state's Debug text after.
    pub after: Option<String>,
    /// Whether the state was kept (else reset to the seed, or new).
    pub kept: bool,
}

/// The emission counters of one version of one pipeline's code.
#[derive(Debug)]
pub struct Counts {
    /// Each operator's track and path, in operator order.
    pub ops: Vec<(Id, String)>,
    /// Cell 0: source values taken; cell `1 + i`: values operator `i` emitted. The top bit
    /// is a marble request ([`WANT_MARBLE`], set by [`Tallies::ask_marbles`]), not a count:
    /// read counts through [`Counts::get`].
    pub cells: Box<[AtomicU64]>,
}

impl Counts {
    fn empty() -> Counts {
        Counts {
            ops: Vec::new(),
            cells: Box::new([AtomicU64::new(0)]),
        }
    }

    /// Counters for `code`, each starting where `old` had the same track (the source's cell
    /// carried over too).
    pub(crate) fn for_code(code: &PipelineCode, old: &Counts) -> Counts {
        Counts::for_ops(&code.ops, old)
    }

    /// Counters for `ops` (a pipeline's, or an inner subscription's), each starting where
    /// `old` had the same track (the source's cell carried over too).
    pub(crate) fn for_ops(ops: &[OpCode], old: &Counts) -> Counts {
        let ops: Vec<(Id, String)> = ops.iter().map(|o| (o.track, o.path.clone())).collect();
        let mut cells = Vec::with_capacity(ops.len() + 1);
        cells.push(AtomicU64::new(old.get(0)));
        for (track, _) in &ops {
            let before = old
                .ops
                .iter()
                .position(|(t, _)| t == track)
                .map_or(0, |i| old.get(i + 1));
            cells.push(AtomicU64::new(before));
        }
        Counts {
            ops,
            cells: cells.into_boxed_slice(),
        }
    }

    /// The count of cell `i` (without its marble request).
    pub fn get(&self, i: usize) -> u64 {
        self.cells[i].load(Ordering::Relaxed) & !WANT_MARBLE
    }

    /// Asks for a marble of every cell (an atomic `fetch_or` each: a request a count's
    /// store overwrites is lost, and asked again next time).
    fn ask_marbles(&self) {
        for c in self.cells.iter() {
            c.fetch_or(WANT_MARBLE, Ordering::Relaxed);
        }
    }

    /// Values the source handed to the chain.
    pub fn source(&self) -> u64 {
        self.get(0)
    }

    /// Values emitted by each operator, with its path.
    pub fn by_path(&self) -> impl Iterator<Item = (&str, u64)> {
        self.ops
            .iter()
            .enumerate()
            .map(|(i, (_, p))| (p.as_str(), self.get(i + 1)))
    }

    /// The pointer the plugin's counting entry points take.
    pub(crate) fn as_ptr(&self) -> *const AtomicU64 {
        self.cells.as_ptr()
    }
}

/// The most bytes of a marble's text (the plugin cuts longer ones and marks them `…`).
pub use plugin_api::dsl::MARBLE_CAP;

/// How many calls after each request look for marble requests: a track that emits in none
/// of them (a filter that passes few values) waits for a later round.
pub const SAMPLED_CALLS: u32 = 16;

/// The most marbles kept per track (older ones are dropped).
pub const MARBLES_PER_TRACK: usize = 48;

/// How often each track is asked for its next value's text: at most this many marbles a
/// second per track are formatted, whatever the rate of values.
pub const MARBLE_PERIOD: Duration = Duration::from_millis(100);

/// One recent value of a track: its Debug text (capped by the plugin at
/// [`plugin_api::dsl::MARBLE_CAP`] bytes), when, and which plugin version's code produced it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Marble {
    /// Milliseconds since the inspector started ([`Tallies::now_ms`]).
    pub t_ms: u64,
    /// The plugin version whose code emitted it.
    pub version: u64,
    /// Its Debug text.
    pub value: String,
    /// Its number among its pipeline's marbles (from 1): what an updates client sent last.
    pub seq: u64,
}

/// A pipeline's lanes and the number of its last marble.
#[derive(Debug, Default)]
struct Lanes {
    by_path: BTreeMap<String, VecDeque<Marble>>,
    seq: u64,
}

/// A track's recent values, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Lane {
    /// The track's path.
    pub path: String,
    /// At most [`MARBLES_PER_TRACK`], oldest first.
    pub marbles: Vec<Marble>,
}

/// The Debug texts of a pipeline's states, as its thread last wrote them.
#[derive(Debug, Default)]
pub struct StateTexts {
    /// How many times the thread answered.
    pub seq: u64,
    /// Operator path and its state's text (`None`: no state).
    pub texts: Vec<(String, Option<String>)>,
}

/// What the inspector reads of one pipeline.
#[derive(Debug)]
pub struct PipelineTally {
    name: String,
    origin: Instant,
    counts: ArcSwap<Counts>,
    want_state: AtomicBool,
    states: Mutex<StateTexts>,
    answered: Condvar,
    changes: Mutex<VecDeque<StateChange>>,
    /// Recent values by track path (the current code's tracks and the source's).
    lanes: Mutex<Lanes>,
    /// How many more calls look for marble requests (`EmitCx::marble_calls`).
    marble_calls: AtomicU32,
    /// The counters of each live inner subscription, by its number ([`InnerTally`]).
    inners: Mutex<HashMap<u64, Arc<Counts>>>,
    /// Shared by every pipeline's tally: numbers the state changes, and counts the ones no
    /// longer kept.
    seqs: Arc<ChangeSeqs>,
}

/// The numbering of state changes across pipelines.
#[derive(Debug, Default)]
struct ChangeSeqs {
    /// The last number given.
    last: AtomicU64,
    /// Changes dropped from a full pipeline's record.
    dropped: AtomicU64,
}

impl PipelineTally {
    fn new(name: &str, origin: Instant, seqs: Arc<ChangeSeqs>) -> PipelineTally {
        PipelineTally {
            name: name.to_owned(),
            origin,
            counts: ArcSwap::from_pointee(Counts::empty()),
            want_state: AtomicBool::new(false),
            states: Mutex::new(StateTexts::default()),
            answered: Condvar::new(),
            changes: Mutex::default(),
            lanes: Mutex::default(),
            marble_calls: AtomicU32::new(0),
            inners: Mutex::default(),
            seqs,
        }
    }

    /// Keeps a marble of track `path`, emitted by `version`'s code. Called by the plugin's
    /// counting entry points through the driver (on the pipeline's thread, or a publisher's
    /// delivering to it), at most once per track per [`MARBLE_PERIOD`].
    pub(crate) fn marble(&self, path: &str, version: u64, value: &str) {
        let t_ms = self.origin.elapsed().as_millis() as u64;
        let mut lanes = lock(&self.lanes);
        lanes.seq += 1;
        let seq = lanes.seq;
        let lane = match lanes.by_path.get_mut(path) {
            Some(lane) => lane,
            None => lanes.by_path.entry(path.to_owned()).or_default(),
        };
        if lane.len() == MARBLES_PER_TRACK {
            lane.pop_front();
        }
        lane.push_back(Marble {
            t_ms,
            version,
            value: value.to_owned(),
            seq,
        });
    }

    /// What the driver's `EmitCx::marble_calls` points at.
    pub(crate) fn marble_calls(&self) -> *const AtomicU32 {
        &raw const self.marble_calls
    }

    /// The recent values of each track, by path.
    pub fn lanes(&self) -> Vec<Lane> {
        self.lanes_after(0).0
    }

    /// The marbles numbered after `seq`, by lane (the lanes with any), and the number of the
    /// last marble.
    pub fn lanes_after(&self, seq: u64) -> (Vec<Lane>, u64) {
        let lanes = lock(&self.lanes);
        let out = lanes
            .by_path
            .iter()
            .filter_map(|(path, m)| {
                let marbles: Vec<Marble> = m.iter().filter(|x| x.seq > seq).cloned().collect();
                (!marbles.is_empty()).then(|| Lane {
                    path: path.clone(),
                    marbles,
                })
            })
            .collect();
        (out, lanes.seq)
    }

    /// The counters of the live inner subscriptions numbered `ids` (those the pipeline has:
    /// an ended one is gone), one lock for all.
    pub fn inner_counts(&self, ids: impl IntoIterator<Item = u64>) -> Vec<Arc<Counts>> {
        let inners = lock(&self.inners);
        ids.into_iter()
            .filter_map(|id| inners.get(&id).cloned())
            .collect()
    }

    /// The counters of the code the pipeline's thread runs now.
    pub fn counts(&self) -> Arc<Counts> {
        self.counts.load_full()
    }

    /// Installs counters for `code`, carried over from the current ones; the driver calls it
    /// when it starts and when it takes new code.
    pub(crate) fn counts_for(&self, code: &PipelineCode) -> Arc<Counts> {
        let counts = Arc::new(Counts::for_code(code, &self.counts.load()));
        self.counts.store(counts.clone());
        // The lanes of tracks the code no longer has go (bounded by the tracks there are).
        lock(&self.lanes)
            .by_path
            .retain(|path, _| *path == self.name || counts.ops.iter().any(|(_, p)| p == path));
        counts
    }

    /// Whether a reader asked for the state texts (the driver checks after each call).
    #[inline]
    pub(crate) fn wants_state(&self) -> bool {
        self.want_state.load(Ordering::Relaxed)
    }

    /// The driver's record of a migration to `version`: each stateful operator's state text
    /// before (by path, from the old code's operators) and after, and the paths whose state
    /// was not kept.
    pub(crate) fn record_migration(
        &self,
        version: u64,
        before: &[(String, Option<String>)],
        after: &[(String, Option<String>)],
        reset: &[String],
    ) {
        let mut changes = lock(&self.changes);
        for (path, text) in after {
            if text.is_none() {
                continue;
            }
            if changes.len() == KEPT_CHANGES {
                changes.pop_front();
                self.seqs.dropped.fetch_add(1, Ordering::Relaxed);
            }
            changes.push_back(StateChange {
                seq: self.seqs.last.fetch_add(1, Ordering::Relaxed) + 1,
                version,
                path: path.clone(),
                before: before
                    .iter()
                    .find(|(p, _)| p == path)
                    .and_then(|(_, t)| t.clone()),
                after: text.clone(),
                kept: !reset.contains(path),
            });
        }
    }

    /// The state changes recorded, oldest first.
    pub fn changes(&self) -> Vec<StateChange> {
        lock(&self.changes).iter().cloned().collect()
    }

    /// The state changes numbered after `seq`, oldest first.
    pub fn changes_after(&self, seq: u64) -> Vec<StateChange> {
        let changes = lock(&self.changes);
        let newer = changes.partition_point(|c| c.seq <= seq);
        changes.range(newer..).cloned().collect()
    }

    /// Asks the pipeline's thread for fresh state texts without waiting for them: it
    /// answers after its next call into the plugin ([`PipelineTally::last_states`] reads it).
    pub fn ask_states(&self) {
        self.want_state.store(true, Ordering::Relaxed);
    }

    /// The texts of the thread's last answer and how many answers it gave (0: none yet).
    pub fn last_states(&self) -> (u64, Vec<(String, Option<String>)>) {
        let s = lock(&self.states);
        (s.seq, s.texts.clone())
    }

    /// How many answers the thread gave so far.
    pub fn answers(&self) -> u64 {
        lock(&self.states).seq
    }

    /// The driver's answer: the state texts of its operators.
    pub(crate) fn answer(&self, texts: Vec<(String, Option<String>)>) {
        let mut s = lock(&self.states);
        s.texts = texts;
        s.seq += 1;
        self.want_state.store(false, Ordering::Relaxed);
        self.answered.notify_all();
    }

    /// Asks the pipeline's thread for fresh state texts and waits until `deadline` for its
    /// answer; returns the freshest texts there are (possibly older ones, or none).
    pub fn states(&self, deadline: Instant) -> Vec<(String, Option<String>)> {
        let mut s = lock(&self.states);
        let seq = s.seq;
        self.want_state.store(true, Ordering::Relaxed);
        while s.seq == seq {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = match self.answered.wait_timeout(s, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
        s.texts.clone()
    }
}

/// The counters of one live inner subscription's operators (cell `1 + op` for inner
/// operator `op`; cell 0 stays 0: the inner stream's sources are not counted, the operator
/// that takes them is), registered in its pipeline's tally while the subscription lives: the
/// subscription holds it, and its end (the subscription freed) takes the counters out.
#[derive(Debug)]
pub(crate) struct InnerTally {
    tally: Arc<PipelineTally>,
    id: u64,
    counts: Arc<Counts>,
}

impl InnerTally {
    /// Counters for subscription `id`'s operators `ops`, registered in `tally`.
    pub(crate) fn start(tally: &Arc<PipelineTally>, id: u64, ops: &[OpCode]) -> InnerTally {
        let counts = Arc::new(Counts::for_ops(ops, &Counts::empty()));
        lock(&tally.inners).insert(id, counts.clone());
        InnerTally {
            tally: tally.clone(),
            id,
            counts,
        }
    }

    /// The pointer the counting entry points take (the subscription's `EmitCx::counts`),
    /// valid while this lives and until the next [`InnerTally::recount`].
    pub(crate) fn as_ptr(&self) -> *const AtomicU64 {
        self.counts.as_ptr()
    }

    /// The subscription took new code (a re-projection): counters for its operators `ops`,
    /// each carried over by track; returns the new pointer.
    pub(crate) fn recount(&mut self, ops: &[OpCode]) -> *const AtomicU64 {
        self.counts = Arc::new(Counts::for_ops(ops, &self.counts));
        lock(&self.tally.inners).insert(self.id, self.counts.clone());
        self.as_ptr()
    }
}

impl Drop for InnerTally {
    fn drop(&mut self) {
        // Only its own: a restarted pipeline's new thread numbers its subscriptions from 1
        // again, and may register one before the old thread's are freed.
        let mut inners = lock(&self.tally.inners);
        if inners
            .get(&self.id)
            .is_some_and(|c| Arc::ptr_eq(c, &self.counts))
        {
            inners.remove(&self.id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every pipeline's tally, by pipeline name (kept across restarts and removals: a pipeline
/// that comes back continues its counts), and the live run-time tracks (the reloader's).
#[derive(Debug)]
pub struct Tallies {
    pipelines: Mutex<BTreeMap<String, Arc<PipelineTally>>>,
    run_time: super::inner::RunTimeTracks,
    seqs: Arc<ChangeSeqs>,
    /// Where marble times count from.
    origin: Instant,
}

impl Default for Tallies {
    fn default() -> Tallies {
        Tallies {
            pipelines: Mutex::default(),
            run_time: Default::default(),
            seqs: Arc::default(),
            origin: Instant::now(),
        }
    }
}

impl Tallies {
    /// The run-time tracks of the live inner subscriptions, as the tracking store has them.
    pub fn run_time(&self) -> &super::inner::RunTimeTracks {
        &self.run_time
    }

    /// The tally of pipeline `name`, created on first use.
    pub fn pipeline(&self, name: &str) -> Arc<PipelineTally> {
        lock(&self.pipelines)
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(PipelineTally::new(name, self.origin, self.seqs.clone())))
            .clone()
    }

    /// The tally of pipeline `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<Arc<PipelineTally>> {
        lock(&self.pipelines).get(name).cloned()
    }

    /// Milliseconds since the tallies were made: the time axis of the marbles.
    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The time axis' reading at `at` (0 before the origin).
    pub fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// Asks every track of every pipeline for the Debug text of its next value (the
    /// inspector's sampler calls this every [`MARBLE_PERIOD`]).
    pub fn ask_marbles(&self) {
        for (_, t) in self.all() {
            t.counts.load().ask_marbles();
            t.marble_calls.store(SAMPLED_CALLS, Ordering::Relaxed);
        }
    }

    /// The lanes of every pipeline, or of pipeline `only`.
    pub fn lanes(&self, only: Option<&str>) -> Vec<Lane> {
        self.all()
            .into_iter()
            .filter(|(name, _)| only.is_none_or(|o| o == name))
            .flat_map(|(_, t)| t.lanes())
            .collect()
    }

    /// All tallies, by pipeline name.
    pub fn all(&self) -> Vec<(String, Arc<PipelineTally>)> {
        lock(&self.pipelines)
            .iter()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect()
    }

    /// The number of the last state change recorded (0: none yet).
    pub fn last_change(&self) -> u64 {
        self.seqs.last.load(Ordering::Relaxed)
    }

    /// State changes dropped because their pipeline's record was full.
    pub fn dropped_changes(&self) -> u64 {
        self.seqs.dropped.load(Ordering::Relaxed)
    }

    /// Asks every pipeline's thread for fresh state texts, without waiting.
    pub fn ask_states(&self) {
        for (_, t) in self.all() {
            t.ask_states();
        }
    }

    /// State texts of every pipeline, asked of all at once and waited for `wait` at most.
    pub fn states(&self, wait: Duration) -> BTreeMap<String, Option<String>> {
        let deadline = Instant::now() + wait;
        let all = self.all();
        for (_, t) in &all {
            t.want_state.store(true, Ordering::Relaxed);
        }
        let mut out = BTreeMap::new();
        for (_, t) in all {
            for (path, text) in t.states(deadline) {
                out.insert(path, text);
            }
        }
        out
    }
}

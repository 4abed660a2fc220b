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
//! State texts: a state slot is written by its source thread without synchronisation, so it
//! is read on that thread only. A reader sets [`PipelineTally::want_state`]; the driver sees it
//! after its next call into the plugin and writes the Debug text of every slot (the plugin's
//! `StateVTable::debug`, capped at [`STATE_CAP`] bytes), then wakes the readers. A pipeline
//! that emits rarely answers late; the reader waits a bounded time and shows the last texts.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hmr_track::Id;

use crate::code::PipelineCode;

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
    /// Cell 0: source values taken; cell `1 + i`: values operator `i` emitted.
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
        let ops: Vec<(Id, String)> = code.ops.iter().map(|o| (o.track, o.path.clone())).collect();
        let mut cells = Vec::with_capacity(ops.len() + 1);
        cells.push(AtomicU64::new(old.cells[0].load(Ordering::Relaxed)));
        for (track, _) in &ops {
            let before = old
                .ops
                .iter()
                .position(|(t, _)| t == track)
                .map_or(0, |i| old.cells[i + 1].load(Ordering::Relaxed));
            cells.push(AtomicU64::new(before));
        }
        Counts {
            ops,
            cells: cells.into_boxed_slice(),
        }
    }

    /// Values the source handed to the chain.
    pub fn source(&self) -> u64 {
        self.cells[0].load(Ordering::Relaxed)
    }

    /// Values emitted by each operator, with its path.
    pub fn by_path(&self) -> impl Iterator<Item = (&str, u64)> {
        self.ops
            .iter()
            .enumerate()
            .map(|(i, (_, p))| (p.as_str(), self.cells[i + 1].load(Ordering::Relaxed)))
    }

    /// The pointer the plugin's counting entry points take.
    pub(crate) fn as_ptr(&self) -> *const AtomicU64 {
        self.cells.as_ptr()
    }
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
    counts: ArcSwap<Counts>,
    want_state: AtomicBool,
    states: Mutex<StateTexts>,
    answered: Condvar,
    changes: Mutex<VecDeque<StateChange>>,
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
    fn new(seqs: Arc<ChangeSeqs>) -> PipelineTally {
        PipelineTally {
            counts: ArcSwap::from_pointee(Counts::empty()),
            want_state: AtomicBool::new(false),
            states: Mutex::new(StateTexts::default()),
            answered: Condvar::new(),
            changes: Mutex::default(),
            seqs,
        }
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every pipeline's tally, by pipeline name (kept across restarts and removals: a pipeline
/// that comes back continues its counts).
#[derive(Debug, Default)]
pub struct Tallies {
    pipelines: Mutex<BTreeMap<String, Arc<PipelineTally>>>,
    seqs: Arc<ChangeSeqs>,
}

impl Tallies {
    /// The tally of pipeline `name`, created on first use.
    pub fn pipeline(&self, name: &str) -> Arc<PipelineTally> {
        lock(&self.pipelines)
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(PipelineTally::new(self.seqs.clone())))
            .clone()
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

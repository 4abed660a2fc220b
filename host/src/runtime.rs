//! Running pipelines: one source thread per pipeline, its state slots, and the hand-over
//! from one code version to the next.
//!
//! Architecture invariant: **one version per emission.** The current code of a pipeline is
//! published with one atomic store (`ArcSwap::store`, then a generation bump); the source
//! thread reads the generation once per emission (or batch) with one atomic load. When it
//! changed, the thread itself takes the new code and migrates the state slots (keep a slot
//! when the operator has the same track and signature: kind, input, output and state types,
//! seed; reseed it otherwise) before the next emission. No lock is taken on this path, and a
//! reload never waits for an emission or the other way round (a `log` operator's value is
//! queued for the printer thread, [`crate::output`], which alone waits on stdout).

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender};
use plugin_api::abi::{
    EmitCx, HostApi, InnerCall, InnerDesc, InnerHandle, PushOneFn, RSignature, RStr, inner_answer,
    inner_kind, source_kind,
};

use crate::clock::Clock;
use crate::code::{PipelineCode, Pushed, SourceSpec, StateSlots, Wire};
use crate::events::{HostEvent, ReplayInfo, Sink, cap_message};
use crate::inner::{Census, HeldValue, Inner, InnerCode, InnerCtx, InnerHost, InnerPort, InnerReg};
use crate::inspect::tally::{Counts, InnerTally, PipelineTally, STATE_CAP, Tallies};
use crate::subjects::{Dir, Hub, Subjects};
use hmr_track::Id;

/// How many `range` values go into one call of the plugin.
pub const BATCH: usize = 1024;

/// How many values of a batch go into one call of a chain with a higher-order operator.
/// Inner subscriptions that end inside a call are freed only after it (their env may be on
/// the plugin's stack): fed whole, a batch of 1,024 outer values piles up 1,024 dead
/// subscriptions before any is freed, and the next ones are allocated in memory out of cache.
/// In short runs, freed between the calls, each run reuses what the run before let go
/// (BENCHMARKS.md, 14).
const INNER_RUN: usize = 8;

/// How long a source thread may stay inside one call into plugin code before the watchdog
/// reports it as stuck (a user function that loops, or blocks for good).
pub const STUCK_AFTER: Duration = Duration::from_secs(2);

/// How often the watchdog looks at the source threads.
const WATCHDOG_TICK: Duration = Duration::from_millis(100);

/// The stack of a source thread. Plugin code runs on it: a stack overflow there aborts the
/// whole host (Rust cannot recover from one), so it gets more than std's 2 MiB default.
pub const SOURCE_THREAD_STACK: usize = 16 << 20;

/// How long shutdown waits for source threads to finish the emission they are in; a thread
/// stuck in plugin code is left behind (it cannot be killed) and ends with the process.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What a panic in a user function does to its subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PanicPolicy {
    /// Drop the value that panicked and keep the subscription (the default).
    #[default]
    Drop,
    /// End the subscription, as Rx's `error` does; the next good reload subscribes it again.
    Error,
}

/// Why a pipeline's source thread stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Still running.
    Running,
    /// Its source completed.
    Completed,
    /// A panic ended it under [`PanicPolicy::Error`], or its state could not be seeded.
    Errored,
    /// The host stopped it.
    Stopped,
    /// Its thread could not be started.
    NotStarted,
}

/// What the source thread and the reloader share.
pub(crate) struct Shared {
    generation: AtomicU64,
    /// The newest committed code: a version is stored here only after its reload was reported
    /// (code and generation are published together, see [`Publisher::publish`]).
    code: ArcSwap<PipelineCode>,
    stop: AtomicBool,
    ended: AtomicU64,
    /// Calls into plugin code begun plus calls finished: odd while the thread is inside one.
    /// Written by the driver with plain stores, read by the watchdog.
    calls: AtomicU64,
    /// The operator whose user function the running call last entered (the plugin writes it
    /// through [`EmitCx::current_op`]).
    op: AtomicU32,
    /// The operator paths of the code the driver runs (index = operator number).
    paths: ArcSwap<Vec<String>>,
    /// Set by the watchdog while the thread has been inside one call for [`STUCK_AFTER`].
    stuck: AtomicBool,
    /// The inspector's counters and state texts (`--inspect`); `None`: nothing is counted.
    tally: Option<Arc<PipelineTally>>,
    /// The pipeline thread's inbox: lines from host sources, and wake-ups.
    inbox: (Sender<Msg>, Receiver<Msg>),
    /// The host's subjects (what `publish` operators deliver to).
    subjects: Arc<Subjects>,
    /// Where deadlines are read.
    clock: Clock,
    /// Live inner subscriptions (as the pipeline's thread last saw them).
    live_inners: std::sync::atomic::AtomicUsize,
    /// Deadlines in the pipeline thread's heap (intervals' ticks, timers), as it last saw
    /// them.
    timers_held: std::sync::atomic::AtomicUsize,
    /// Where the driver tells what its inner subscriptions did, for the tracking store (set
    /// by the `Runtime` that starts the pipeline).
    census: std::sync::OnceLock<Sender<Census>>,
    /// The next unclaimed inner subscription number of the pipeline's name, which drivers
    /// claim in blocks of [`INNER_ID_BLOCK`]. A `Runtime` hands every start of one name the
    /// same counter: a restarted pipeline's new thread numbers its subscriptions after the
    /// old thread's, which may still be ending them (their paths, `...|#N:inner`, and the
    /// census's keys never repeat).
    inner_ids: Arc<AtomicU64>,
    /// Whether the census logs each passed subscription's own seeds (`SeedLog`): only the
    /// tracking store's log shows them (`Reloader::keep_store_log`), so only then. The
    /// `Runtime`'s, shared by its pipelines.
    census_seeds: Arc<AtomicBool>,
    /// Where inner subscriptions open their host sources (files, sockets, stdin).
    feeds: std::sync::OnceLock<Arc<Mutex<crate::feed::Feeds>>>,
    /// How many recent inputs the driver keeps for a replay on reload (`--replay`).
    replay_inputs: std::sync::atomic::AtomicUsize,
    /// Under a virtual clock: pokes sent to the thread and not handled yet.
    pokes: Arc<AtomicU64>,
    /// What whoever holds the driver has to look at after a call (`flags` bits, one load):
    /// hub subscriptions its inner
    /// subscriptions asked for (`HostCx::hub_asks`), inner work (a call ended an inner
    /// subscription, or a re-projection ran: `Driver::after_inner_work`), and whether its
    /// thread ended and unsubscribed it (a delivery that still holds a subscriber of it runs
    /// and subscribes nothing more).
    pub(crate) flags: AtomicU8,
}

/// This thread's tag: the address of a thread-local, distinct among live threads and never
/// 0 (one TLS address computation).
#[inline(always)]
pub(crate) fn thread_tag() -> usize {
    std::thread_local! {
        static TAG: u8 = const { 0 };
    }
    TAG.with(|t| std::ptr::from_ref(t) as usize)
}

pub use crate::waits::{DriverLock, Locked};

/// A shared driver (a subject reader's), behind the lock whose word marks its holder.
pub type SharedDriver = DriverLock<Driver>;

/// What reaches a pipeline thread through its inbox.
#[derive(Debug)]
pub enum Msg {
    /// A line of the source on `port`.
    Line(u32, String),
    /// The source on `port` completed.
    Complete(u32),
    /// The source on `port` reports an error (the pipeline goes on).
    Error(u32, String),
    /// The source on `port` has something to say once (a file waited for).
    Notice(u32, String),
    /// Look at the stop flag and the clock again.
    Wake,
    /// A line of inner subscription `.0`'s source on port `.1`.
    InnerLine(u64, u32, String),
    /// Inner subscription `.0`'s source on port `.1` completed.
    InnerComplete(u64, u32),
    /// A reload staged this code: re-project the live inner subscriptions with it now
    /// (nothing runs through it yet) and answer what each would go through.
    Prepare(Arc<PipelineCode>, Sender<InnerPlan>),
    /// A reload staged this code: replay the recent inputs through the current code and
    /// through it, each on a copy of the state, and answer what changed (nothing of it
    /// reaches the outside).
    Replay(Arc<PipelineCode>, Sender<ReplayInfo>),
    /// Under a virtual clock: another thread gave this one work (a subject delivery that set
    /// a timer); `settle` waits until it is handled ([`crate::clock::VirtualClock::poke`]).
    Poke,
}

/// What a reload does to a pipeline's live inner subscriptions, decided by re-projecting them
/// with the staged code before the reload is reported (`Runtime::prepare_inners`), and
/// applied exactly when the pipeline takes that code.
#[derive(Clone, Debug, Default)]
pub struct InnerPlan {
    /// Inner operators whose code is swapped with their state kept.
    pub swapped: usize,
    /// Inner operators reset, and subscriptions restarted: path and why.
    pub reset: Vec<(String, String)>,
    /// Inner operators the new projection added.
    pub added: Vec<String>,
    /// Inner operators gone, and subscriptions ended.
    pub removed: Vec<String>,
    /// The re-projections, for the tracking store: subscription and its registration calls.
    pub(crate) projected: Vec<(u64, Arc<[crate::inner::RegCall]>)>,
}

/// The bits of `Shared::flags`.
pub(crate) mod flags {
    pub(crate) const HUB_ASKS: u8 = 1;
    pub(crate) const INNER_WORK: u8 = 2;
    pub(crate) const DETACHED: u8 = 4;
}

impl Shared {
    /// Sets a bit of `flags`. A read-modify-write: two drivers may share one `Shared` (a
    /// [`Publisher::driver`] beside the runtime's own), each under its own lock.
    #[inline]
    fn set_flag(&self, bit: u8) {
        self.flags.fetch_or(bit, Ordering::Relaxed);
    }

    /// Clears a bit of `flags` (as `set_flag`).
    #[inline]
    fn clear_flag(&self, bit: u8) {
        self.flags.fetch_and(!bit, Ordering::Relaxed);
    }

    /// Whether its thread ended and unsubscribed its driver (see `Shared::flags`).
    #[inline]
    pub(crate) fn detached(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & flags::DETACHED != 0
    }

    fn new(code: PipelineCode, tally: Option<Arc<PipelineTally>>) -> Shared {
        Shared::with_subjects(code, tally, Arc::default(), Clock::System)
    }

    fn with_subjects(
        code: PipelineCode,
        tally: Option<Arc<PipelineTally>>,
        subjects: Arc<Subjects>,
        clock: Clock,
    ) -> Shared {
        let paths = code.ops.iter().map(|o| o.path.clone()).collect();
        Shared {
            inbox: crossbeam_channel::unbounded(),
            subjects,
            clock,
            live_inners: std::sync::atomic::AtomicUsize::new(0),
            timers_held: std::sync::atomic::AtomicUsize::new(0),
            census: std::sync::OnceLock::new(),
            inner_ids: Arc::new(AtomicU64::new(1)),
            census_seeds: Arc::new(AtomicBool::new(false)),
            feeds: std::sync::OnceLock::new(),
            replay_inputs: std::sync::atomic::AtomicUsize::new(crate::replay::DEFAULT_INPUTS),
            pokes: Arc::default(),
            flags: AtomicU8::new(0),
            generation: AtomicU64::new(0),
            code: ArcSwap::from_pointee(code),
            stop: AtomicBool::new(false),
            ended: AtomicU64::new(ended_code(Ended::Running)),
            calls: AtomicU64::new(0),
            op: AtomicU32::new(u32::MAX),
            paths: ArcSwap::from_pointee(paths),
            stuck: AtomicBool::new(false),
            tally,
        }
    }

    fn name(&self) -> String {
        self.code.load().name.clone()
    }

    /// Whether the pipeline ended (completed, errored, stopped).
    pub(crate) fn ended(&self) -> bool {
        self.stop.load(Ordering::Acquire)
            || ended_from(self.ended.load(Ordering::Acquire)) != Ended::Running
    }

    /// Records how the pipeline ended (a subscriber ended by a delivery) and wakes its
    /// thread, which then ends too.
    pub(crate) fn end(&self, e: Ended) {
        self.ended.store(ended_code(e), Ordering::Release);
        let _ = self.inbox.0.send(Msg::Wake);
    }

    /// The path of the operator the running call is in, or the pipeline's name.
    fn current_path(&self) -> String {
        let op = self.op.load(Ordering::Relaxed) as usize;
        self.paths
            .load()
            .get(op)
            .cloned()
            .unwrap_or_else(|| self.name())
    }
}

fn ended_code(e: Ended) -> u64 {
    match e {
        Ended::Running => 0,
        Ended::Completed => 1,
        Ended::Errored => 2,
        Ended::Stopped => 3,
        Ended::NotStarted => 4,
    }
}

fn ended_from(v: u64) -> Ended {
    match v {
        1 => Ended::Completed,
        2 => Ended::Errored,
        3 => Ended::Stopped,
        4 => Ended::NotStarted,
        _ => Ended::Running,
    }
}

/// The hubs a subject reader is subscribed to (by its thread).
type Subscribed = Vec<Arc<Hub>>;

struct Running {
    publisher: Publisher,
    thread: Option<JoinHandle<()>>,
    sources: Vec<SourceSpec>,
    /// For a pipeline reading subjects: its driver, shared with the publishers' threads,
    /// and the hubs it is subscribed to.
    subscribed: Option<Subscribed>,
    /// What its host sources hold (tasks, listeners); dropped when it stops.
    held: Vec<crate::feed::Held>,
    /// Whether a host source could not be opened: the next reload restarts the pipeline,
    /// which tries again.
    open_failed: bool,
    /// What the pipeline held before a restart, for its new start to take over, and the old
    /// thread's inbox (what those sources sent that it did not take yet; the rest is sent
    /// back, see [`Handover`]).
    reusable: Vec<crate::feed::Held>,
    old_inbox: Option<(Sender<Msg>, Receiver<Msg>)>,
    /// Published but not started yet (see [`Runtime::launch`]).
    waiting: bool,
    /// New code staged but not committed yet (see [`Runtime::launch`]). Held here, on the
    /// reloader's side, so the source thread cannot see it before it is committed.
    staged: Option<Arc<PipelineCode>>,
}

impl Running {
    /// Asks the source thread to stop at its next check (between emissions) and wakes it if
    /// it sleeps; returns its handle without waiting for it.
    fn signal_stop(&mut self) -> Option<JoinHandle<()>> {
        self.publisher.shared.stop.store(true, Ordering::Release);
        if let Some(hubs) = self.subscribed.take() {
            let name = self.publisher.shared.name();
            for h in hubs {
                h.unsubscribe(&name);
            }
        }
        self.held.clear();
        let _ = self.publisher.shared.inbox.0.send(Msg::Wake);
        let t = self.thread.take()?;
        t.thread().unpark();
        Some(t)
    }
}

/// Starts a source thread: its name and body. Replaceable so tests can make it fail.
pub type Spawner = fn(String, Box<dyn FnOnce() + Send>) -> std::io::Result<JoinHandle<()>>;

/// How the runtime starts source threads (the default [`Spawner`]): named, with
/// [`SOURCE_THREAD_STACK`].
pub fn spawn_source_thread(
    name: String,
    body: Box<dyn FnOnce() + Send>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .stack_size(SOURCE_THREAD_STACK)
        .spawn(body)
}

/// The running pipelines, by name.
pub struct Runtime {
    sink: Sink,
    policy: PanicPolicy,
    pipelines: BTreeMap<String, Running>,
    /// Threads asked to stop and not joined yet: the reloader never waits for a source
    /// thread (a user function may be slow, or loop forever); they are joined once they have
    /// finished, or at shutdown.
    /// Weak: a finished thread's `Shared` (and the code it holds, so its library) is freed
    /// at once, not at the next reap; a stuck thread holds its own.
    retired: Vec<(std::sync::Weak<Shared>, JoinHandle<()>)>,
    spawner: Spawner,
    watchdog: Watchdog,
    /// The inspector's tallies (`--inspect`), handed to every pipeline started.
    tallies: Option<Arc<Tallies>>,
    /// The host's subjects.
    subjects: Arc<Subjects>,
    /// The clock pipelines started from now on read.
    clock: Clock,
    /// Whether a virtual clock was told a reload is staged (released at `launch`).
    held: bool,
    /// What the pipelines' inner subscriptions did, for the tracking store.
    census: (Sender<Census>, Receiver<Census>),
    /// Where each pipeline name's inner subscriptions take their numbers, kept across its
    /// restarts (see [`Shared::inner_ids`]).
    inner_ids: BTreeMap<String, Arc<AtomicU64>>,
    /// Whether the census logs passed subscriptions' own seeds (see [`Shared::census_seeds`]).
    census_seeds: Arc<AtomicBool>,
    /// Recent inputs each pipeline started from now on keeps (`--replay`; 0: none).
    replay_inputs: usize,
    /// What host sources need: the directory relative paths resolve against, the I/O
    /// runtime, the shared listeners and stdin.
    feeds: Arc<Mutex<crate::feed::Feeds>>,
    /// Recording source values (`--record`), or replaying them (`--replay-from`).
    record: crate::record::Mode,
}

/// A thread that reports source threads stuck inside one call into plugin code.
struct Watchdog {
    watched: Arc<Mutex<Vec<Watched>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Watched {
    /// Weak: the watchdog keeps nothing alive (a pipeline's code holds its library live).
    /// A stuck thread holds its own `Arc`, so it stays watched.
    shared: std::sync::Weak<Shared>,
    /// Whether the pipeline was removed or restarted (its thread was told to stop).
    retired: bool,
    /// The `calls` value last seen odd, and since when.
    seen: Option<(u64, Instant)>,
}

impl Watchdog {
    fn start(sink: Sink, stuck_after: Duration) -> Watchdog {
        let watched: Arc<Mutex<Vec<Watched>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (watched.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("hmr-watchdog".to_owned())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    std::thread::park_timeout(WATCHDOG_TICK);
                    // The `Arc`s upgraded here are dropped after the lock is released: one may
                    // be the last (its thread just ended), and dropping it runs plugin code
                    // (the closures' destructors), which must not run under this lock.
                    let mut upgraded = Vec::new();
                    let mut list = w.lock().unwrap_or_else(|p| p.into_inner());
                    list.retain_mut(|x| {
                        let Some(shared) = x.shared.upgrade() else {
                            return false;
                        };
                        let keep = !(x.retired
                            && ended_from(shared.ended.load(Ordering::Acquire)) != Ended::Running);
                        if keep {
                            watch_one(x, &shared, &sink, stuck_after);
                        }
                        upgraded.push(shared);
                        keep
                    });
                    drop(list);
                    drop(upgraded);
                }
            })
            .ok();
        Watchdog {
            watched,
            stop,
            thread,
        }
    }

    fn watch(&self, shared: &Arc<Shared>) {
        self.lock().push(Watched {
            shared: Arc::downgrade(shared),
            retired: false,
            seen: None,
        });
    }

    fn retire(&self, shared: &Arc<Shared>) {
        if let Some(x) = self
            .lock()
            .iter_mut()
            .find(|x| std::ptr::eq(x.shared.as_ptr(), Arc::as_ptr(shared)))
        {
            x.retired = true;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn watch_one(x: &mut Watched, shared: &Shared, sink: &Sink, stuck_after: Duration) {
    let calls = shared.calls.load(Ordering::Relaxed);
    if calls.is_multiple_of(2) {
        x.seen = None;
        shared.stuck.store(false, Ordering::Release);
        return;
    }
    match x.seen {
        Some((c, since)) if c == calls => {
            if since.elapsed() >= stuck_after && !shared.stuck.swap(true, Ordering::AcqRel) {
                let pipeline = shared.name();
                sink.event(HostEvent::Stuck {
                    path: shared.current_path(),
                    pipeline,
                    seconds: since.elapsed().as_secs_f64(),
                    retired: x.retired,
                });
            }
        }
        _ => {
            x.seen = Some((calls, Instant::now()));
            shared.stuck.store(false, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("pipelines", &self.pipelines.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What [`Runtime::publish`] did with a pipeline (effective at [`Runtime::launch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Published {
    /// The running thread will pick the code up at its next emission, state kept.
    Swapped,
    /// Started afresh, from fresh state, for the reason given.
    Restarted(Restart),
    /// It is new: started.
    Started,
    /// Its thread is stuck inside a call into plugin code (see [`STUCK_AFTER`]): the new
    /// code is staged and runs once that call returns, if it ever does.
    Stuck,
}

/// Why a known pipeline was started afresh instead of swapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Its source's kind or parameters changed: the sources that differ, as written
    /// (`interval_ms(5) -> interval_ms(6)`; with several ports, each that changed, or all of
    /// them when their number changed).
    SourceChanged(String),
    /// It had completed: a reload subscribes it again, so the new code's result shows.
    Completed,
    /// A panic had ended it (`--on-panic error`) or its state could not be seeded.
    Errored,
    /// Its source had stopped (an interval schedule beyond what a clock can represent).
    Stopped,
    /// Its thread could not be started at the last reload.
    NotStarted,
    /// One of its host sources could not be opened (an address in use): a reload tries
    /// again.
    SourceFailed,
}

impl std::fmt::Display for Restart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Restart::SourceChanged(what) => return write!(f, "{what}"),
            Restart::Completed => "it had completed",
            Restart::Errored => "it had ended with an error",
            Restart::Stopped => "its source had stopped",
            Restart::NotStarted => "its thread could not be started",
            Restart::SourceFailed => "a source of it could not be opened",
        })
    }
}

/// Why a pipeline whose sources went from `old` to `new` (not equal) restarts, naming the
/// sources that differ as written: `its source changed (interval_ms(5) -> interval_ms(6))`.
fn source_change(old: &[SourceSpec], new: &[SourceSpec]) -> String {
    let pairs: Vec<String> = if old.len() == new.len() {
        old.iter()
            .zip(new)
            .filter(|(o, n)| o != n)
            .map(|(o, n)| format!("{} -> {}", o.label, n.label))
            .collect()
    } else {
        let labels = |s: &[SourceSpec]| -> String {
            s.iter()
                .map(|s| s.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        vec![format!("{} -> {}", labels(old), labels(new))]
    };
    let noun = if old.len() == 1 && new.len() == 1 {
        "source"
    } else {
        "sources"
    };
    format!("its {noun} changed ({})", pairs.join("; "))
}

impl Runtime {
    /// A runtime reporting to `sink`.
    pub fn new(sink: Sink, policy: PanicPolicy) -> Runtime {
        Runtime {
            watchdog: Watchdog::start(sink.clone(), STUCK_AFTER),
            sink,
            policy,
            pipelines: BTreeMap::new(),
            retired: Vec::new(),
            spawner: spawn_source_thread,
            tallies: None,
            subjects: Arc::default(),
            clock: Clock::System,
            held: false,
            census: crossbeam_channel::unbounded(),
            inner_ids: BTreeMap::new(),
            census_seeds: Arc::new(AtomicBool::new(false)),
            replay_inputs: crate::replay::DEFAULT_INPUTS,
            feeds: Arc::new(Mutex::new(crate::feed::Feeds::new())),
            record: crate::record::Mode::Live,
        }
    }

    /// Pipelines started from now on keep their last `n` inputs, replayed through the old
    /// and the new code on each reload (`--replay N`; 0 turns it off).
    pub fn set_replay(&mut self, n: usize) {
        self.replay_inputs = n;
    }

    /// Pipelines started from now on record their source values (`--record`), or take a
    /// recording's instead of their own sources' (`--replay-from`): see [`crate::record`].
    pub fn set_record_mode(&mut self, mode: crate::record::Mode) {
        self.record = mode;
    }

    /// Pipelines started from now on read `clock` (a virtual clock in tests).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// `stdin_lines` reads `reader` instead of the process's standard input (tests).
    pub fn set_stdin(&mut self, reader: crate::feed::StdinReader) {
        lock(&self.feeds).set_stdin(reader);
    }

    /// Relative paths of sources (`file_lines`) resolve against `dir` (the plugin crate's).
    pub fn set_base_dir(&mut self, dir: &std::path::Path) {
        lock(&self.feeds).set_base_dir(dir);
    }

    /// Counts emissions and answers state requests into `tallies` in every pipeline started
    /// from now on (the inspector's; see [`crate::inspect::tally`]).
    pub fn set_tallies(&mut self, tallies: Arc<Tallies>) {
        self.tallies = Some(tallies);
    }

    /// The inspector's tallies, if it is on.
    pub(crate) fn tallies(&self) -> Option<&Arc<Tallies>> {
        self.tallies.as_ref()
    }

    /// Replaces how source threads are started (tests use it to make a start fail).
    pub fn set_spawner(&mut self, spawner: Spawner) {
        self.spawner = spawner;
    }

    /// Makes `code` the current code of its pipeline at the next [`Runtime::launch`],
    /// starting the pipeline if needed.
    pub fn publish(&mut self, code: PipelineCode) -> Published {
        if let Clock::Virtual(v) = &self.clock
            && !self.held
        {
            v.hold();
            self.held = true;
        }
        self.reap();
        // The subjects it publishes to and reads, with their value types, recorded before any
        // pipeline runs this code: an inner subscription that starts from now on is checked
        // against them (the reload checked the pipelines' own uses against each other).
        let publishes = code
            .publishes
            .iter()
            .map(|p| (p.subject.clone(), Dir::Publishes, p.item.clone()));
        let reads = code
            .sources
            .iter()
            .filter(|s| s.kind == source_kind::SUBJECT)
            .filter_map(|s| Some((s.text.clone(), Dir::Reads, s.item.clone()?)));
        let uses: Vec<_> = publishes.chain(reads).collect();
        let name = code.name.clone();
        let published = self.publish_code(code);
        self.subjects.set_pipeline(&name, uses);
        published
    }

    fn publish_code(&mut self, code: PipelineCode) -> Published {
        let name = code.name.clone();
        let restart = self.pipelines.get(&name).map(|r| {
            if r.sources != code.sources {
                return Some(Restart::SourceChanged(source_change(
                    &r.sources,
                    &code.sources,
                )));
            }
            if r.open_failed {
                return Some(Restart::SourceFailed);
            }
            match ended_from(r.publisher.shared.ended.load(Ordering::Acquire)) {
                Ended::Running => None,
                Ended::Completed => Some(Restart::Completed),
                Ended::Errored => Some(Restart::Errored),
                Ended::Stopped => Some(Restart::Stopped),
                Ended::NotStarted => Some(Restart::NotStarted),
            }
        });
        match restart {
            Some(None) => {
                let r = self.pipelines.get_mut(&name).expect("checked above");
                r.staged = Some(Arc::new(code));
                if r.publisher.shared.stuck.load(Ordering::Acquire) {
                    Published::Stuck
                } else {
                    Published::Swapped
                }
            }
            Some(Some(why)) => {
                // Its unchanged host sources (a file's position, a listener and its
                // connections) go over to the pipeline restarted because another source
                // changed or failed; one that had ended subscribes them afresh (a file is
                // read from its start again, as a new subscription to it would be).
                let takes_over = matches!(why, Restart::SourceChanged(_) | Restart::SourceFailed);
                let held = self
                    .pipelines
                    .get_mut(&name)
                    .filter(|_| takes_over)
                    .map(|r| {
                        let inbox = r.publisher.shared.inbox.clone();
                        (std::mem::take(&mut r.held), inbox)
                    });
                self.remove(&name);
                self.start(code);
                if let (Some(r), Some((held, inbox))) = (self.pipelines.get_mut(&name), held) {
                    r.reusable = held;
                    r.old_inbox = Some(inbox);
                }
                Published::Restarted(why)
            }
            None => {
                self.start(code);
                Published::Started
            }
        }
    }

    /// Joins retired threads that have finished.
    fn reap(&mut self) {
        let (done, live): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(_, t)| t.is_finished());
        for (_, t) in done {
            let _ = t.join();
        }
        self.retired = live;
    }

    /// Registers `code` as a pipeline to start at the next [`Runtime::launch`].
    fn start(&mut self, code: PipelineCode) {
        let name = code.name.clone();
        let sources = code.sources.clone();
        let tally = self.tallies.as_ref().map(|t| t.pipeline(&name));
        let mut shared =
            Shared::with_subjects(code, tally, self.subjects.clone(), self.clock.clone());
        let _ = shared.census.set(self.census.0.clone());
        shared.census_seeds = self.census_seeds.clone();
        shared.inner_ids = self
            .inner_ids
            .entry(name.clone())
            .or_insert_with(|| Arc::new(AtomicU64::new(1)))
            .clone();
        let _ = shared.feeds.set(self.feeds.clone());
        shared
            .replay_inputs
            .store(self.replay_inputs, Ordering::Relaxed);
        self.pipelines.insert(
            name,
            Running {
                publisher: Publisher {
                    shared: Arc::new(shared),
                },
                thread: None,
                sources,
                subscribed: None,
                held: Vec::new(),
                open_failed: false,
                reusable: Vec::new(),
                old_inbox: None,
                waiting: true,
                staged: None,
            },
        );
    }

    /// From now on, the census logs the seeds of each subscription that passes inside its
    /// call where they are not its binding's (the tracking store's log shows them; nothing
    /// else reads them).
    pub(crate) fn log_census_seeds(&self) {
        self.census_seeds.store(true, Ordering::Relaxed);
    }

    /// What the pipelines' inner subscriptions did since the last call: for the tracking
    /// store, which the reloader updates before each registration run.
    pub(crate) fn take_census(&self) -> Vec<Census> {
        self.census.1.try_iter().collect()
    }

    /// The next census message, waiting for it until `deadline` (`Reloader::idle_until`).
    pub(crate) fn next_census(&self, deadline: Instant) -> Option<Census> {
        self.census.1.recv_deadline(deadline).ok()
    }

    /// How many census messages wait for the tracking store (a test's view of how much a
    /// burst of inner subscriptions queues).
    #[doc(hidden)]
    pub fn census_backlog(&self) -> usize {
        self.census.1.len()
    }

    /// Before a reload is reported: asks each pipeline that will swap to staged code and has
    /// live inner subscriptions to re-project them with that code now (on its own thread:
    /// the projection is plugin code), and returns what each answered within `wait`. A
    /// pipeline that did not answer in time (busy in a long call) re-projects when it takes
    /// the code, and tells what happened in a `notice` instead.
    pub fn prepare_inners(&mut self, wait: Duration) -> Vec<(String, InnerPlan)> {
        let mut asked = Vec::new();
        for r in self.pipelines.values() {
            let Some(code) = &r.staged else {
                continue;
            };
            let shared = &r.publisher.shared;
            if shared.live_inners.load(Ordering::Acquire) == 0 || shared.ended() {
                continue;
            }
            // A rendezvous: the thread's answer is taken by this call or refused (once the
            // receiver is dropped after the wait), so the thread knows whether it was told.
            let (one, answer) = crossbeam_channel::bounded(0);
            if shared.inbox.0.send(Msg::Prepare(code.clone(), one)).is_ok() {
                asked.push((code.name.clone(), answer));
            }
        }
        // Taken in the order asked: a thread that answers first waits for its turn, within
        // the same deadline.
        let deadline = Instant::now() + wait;
        asked
            .into_iter()
            .filter_map(|(name, answer)| answer.recv_deadline(deadline).ok().map(|p| (name, p)))
            .collect()
    }

    /// Before a reload is reported: asks each pipeline that will swap to staged code and
    /// keeps recent inputs to replay them through its current code and the staged code, each
    /// on a copy of its state (on its own thread: it is plugin code, and the slots are the
    /// thread's), and returns what each answered within `wait`, by pipeline name. Nothing
    /// runs through the staged code for real, and nothing reaches the outside. A pipeline
    /// busy in a long call is left out.
    pub fn replay(&mut self, wait: Duration) -> Vec<ReplayInfo> {
        let mut asked = Vec::new();
        let mut busy = Vec::new();
        for r in self.pipelines.values() {
            let Some(code) = &r.staged else {
                continue;
            };
            let shared = &r.publisher.shared;
            if shared.replay_inputs.load(Ordering::Relaxed) == 0 || shared.ended() {
                continue;
            }
            if shared.stuck.load(Ordering::Relaxed) {
                // Its thread is in a call that has not returned for seconds: not asked.
                busy.push(crate::replay::not_replayed(
                    &code.name,
                    "its thread is stuck in a call into plugin code".to_owned(),
                ));
                continue;
            }
            // A rendezvous: an answer after the wait is refused and dropped.
            let (one, answer) = crossbeam_channel::bounded(0);
            if shared.inbox.0.send(Msg::Replay(code.clone(), one)).is_ok() {
                asked.push((code.name.clone(), answer));
            }
        }
        let deadline = Instant::now() + wait;
        let late = |name: &str| {
            crate::replay::not_replayed(
                name,
                format!(
                    "its thread did not answer within {} ms (busy in a call)",
                    wait.as_millis()
                ),
            )
        };
        asked
            .into_iter()
            .map(|(name, answer)| {
                answer
                    .recv_deadline(deadline)
                    .unwrap_or_else(|_| late(&name))
            })
            .chain(busy)
            .collect()
    }

    /// Makes what [`Runtime::publish`] did take effect: commits staged code (running
    /// pipelines switch at their next emission) and starts the source threads of new and
    /// restarted pipelines. Split from `publish` so a reload reports itself before any value
    /// of the new version is emitted. Returns the pipelines whose thread could not be
    /// started, with the cause: they count as not started, and the next reload starts them.
    pub fn launch(&mut self) -> Vec<(String, std::io::Error)> {
        // The pipelines started here count their intervals from now, all of them, not from
        // whenever each thread first runs: a virtual clock moved in between (a test that saw
        // one of them emit) would start the others late, their ticks before it lost.
        let launched = self.clock.now();
        for r in self.pipelines.values_mut() {
            if let Some(code) = r.staged.take() {
                // Its thread takes it at its next value, or at once when it waits (a wake).
                r.publisher.publish_shared(code);
            }
        }
        let mut failed = Vec::new();
        for (name, r) in &mut self.pipelines {
            if !r.waiting {
                continue;
            }
            r.waiting = false;
            let shared = r.publisher.shared.clone();
            let sink = self.sink.clone();
            let policy = self.policy;
            // Host sources (files, sockets, stdin) feed the inbox; errors binding them are
            // the pipeline's errors, and the other sources run on.
            let tx = shared.inbox.0.clone();
            let mut moved: Vec<(u32, u32)> = Vec::new();
            for (port, spec) in r.sources.iter().enumerate() {
                if !self.record.opens_sources() {
                    break;
                }
                let opened = lock(&self.feeds).open(spec, port as u32, &tx, &mut r.reusable);
                match opened {
                    Ok(Some((held, from))) => {
                        if let Some(old) = from {
                            moved.push((old, port as u32));
                        }
                        r.held.push(held);
                    }
                    Ok(None) => {}
                    Err(message) => {
                        // The port stays open and silent (the pipeline does not complete
                        // for it); the next reload restarts the pipeline to try again.
                        r.open_failed = true;
                        let _ = tx.send(Msg::Error(
                            port as u32,
                            format!("{message}; the next reload tries again"),
                        ));
                    }
                }
            }
            // What did not go over is closed; what did brings what the old thread had not
            // taken from it yet (the old thread takes nothing more once told to stop).
            r.reusable.clear();
            let handover = r.old_inbox.take().map(|rx| (rx, moved));
            // A pipeline reading a subject is driven by the publishers' threads too: its
            // driver is shared, behind a lock, and subscribed to each subject's hub.
            let subject_ports: Vec<(u32, &SourceSpec)> = r
                .sources
                .iter()
                .enumerate()
                .filter(|(_, s)| s.kind == source_kind::SUBJECT)
                .map(|(i, s)| (i as u32, s))
                .collect();
            // The thread makes the driver (its seeds are plugin code: never run on the
            // reloader's thread), subscribes the chain, then subscribes to the hubs.
            let subscribe: Vec<(Arc<Hub>, u32)> = subject_ports
                .into_iter()
                .map(|(port, spec)| (self.subjects.hub(&spec.text), port))
                .collect();
            if !subscribe.is_empty() {
                r.subscribed = Some(subscribe.iter().map(|(h, _)| h.clone()).collect());
            }
            // Under a virtual clock, the thread counts as busy from now until it first waits.
            let ticket = match &shared.clock {
                Clock::Virtual(v) => Some(v.register(shared.inbox.0.clone(), shared.pokes.clone())),
                Clock::System => None,
            };
            let hook = self.record.hook(&shared.code.load_full(), &self.sink);
            let body = Box::new(move || {
                let ended = match catch_unwind(AssertUnwindSafe(|| {
                    let time = LaunchTime {
                        start: launched,
                        ticket,
                    };
                    run_pipeline(&shared, &sink, policy, subscribe, time, handover, hook)
                })) {
                    Ok(e) => e,
                    Err(_) => Ended::Errored,
                };
                shared.ended.store(ended_code(ended), Ordering::Release);
            });
            match (self.spawner)(format!("hmr-src-{name}"), body) {
                Ok(thread) => {
                    self.watchdog.watch(&r.publisher.shared);
                    r.thread = Some(thread);
                }
                Err(e) => {
                    r.publisher
                        .shared
                        .ended
                        .store(ended_code(Ended::NotStarted), Ordering::Release);
                    failed.push((name.clone(), e));
                }
            }
        }
        // Every pipeline of this launch has subscribed: stdin may be read now.
        lock(&self.feeds).opened();
        if self.held
            && let Clock::Virtual(v) = &self.clock
        {
            v.release();
        }
        self.held = false;
        failed
    }

    /// The host's subjects (each pipeline's `publish` delivers to one of their hubs).
    pub fn subjects(&self) -> &Arc<Subjects> {
        &self.subjects
    }

    /// Stops and forgets the pipeline `name` without waiting for its thread, which finishes
    /// its current emission, drops its state and exits.
    pub fn remove(&mut self, name: &str) -> bool {
        self.subjects.remove_pipeline(name);
        match self.pipelines.remove(name) {
            Some(mut r) => {
                let shared = r.publisher.shared.clone();
                self.watchdog.retire(&shared);
                if let Some(t) = r.signal_stop() {
                    self.retired.push((Arc::downgrade(&shared), t));
                }
                true
            }
            None => false,
        }
    }

    /// How many deadlines (intervals' next ticks, operators' and inner subscriptions'
    /// timers) the thread of pipeline `name` holds, as it last counted them.
    pub fn timers_held(&self, name: &str) -> Option<usize> {
        self.pipelines
            .get(name)
            .map(|r| r.publisher.shared.timers_held.load(Ordering::Relaxed))
    }

    /// How each pipeline is doing.
    pub fn status(&self) -> BTreeMap<String, Ended> {
        self.pipelines
            .iter()
            .map(|(n, r)| {
                (
                    n.clone(),
                    ended_from(r.publisher.shared.ended.load(Ordering::Acquire)),
                )
            })
            .collect()
    }

    /// The pipelines whose thread the watchdog found stuck inside one call into plugin code
    /// for [`STUCK_AFTER`] or more, with the operator path it is in.
    pub fn stuck(&self) -> Vec<(String, String)> {
        self.pipelines
            .iter()
            .filter(|(_, r)| r.publisher.shared.stuck.load(Ordering::Acquire))
            .map(|(n, r)| (n.clone(), r.publisher.shared.current_path()))
            .collect()
    }

    /// Threads of removed or restarted pipelines that are stuck in plugin code: they cannot
    /// be stopped (Rust threads cannot be killed) and end with the process.
    pub fn stuck_retired(&self) -> usize {
        self.retired
            .iter()
            .filter(|(s, t)| {
                !t.is_finished() && s.upgrade().is_some_and(|s| s.stuck.load(Ordering::Acquire))
            })
            .count()
    }

    /// The publisher of the pipeline `name` (tests drive a second driver with it).
    pub fn publisher(&self, name: &str) -> Option<Publisher> {
        self.pipelines.get(name).map(|r| r.publisher.clone())
    }

    /// Waits until every pipeline's source thread has ended (completed or errored).
    pub fn join_all(&mut self) {
        for r in self.pipelines.values_mut() {
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Stops every pipeline and waits for their threads (shutdown: each finishes the
    /// emission it is in), for [`SHUTDOWN_GRACE`] at most: a thread stuck in plugin code
    /// cannot be stopped and is left to end with the process.
    pub fn stop_all(&mut self) {
        for name in self.pipelines.keys().cloned().collect::<Vec<_>>() {
            self.remove(&name);
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        for (shared, t) in std::mem::take(&mut self.retired) {
            while !t.is_finished() && Instant::now() < deadline {
                if shared
                    .upgrade()
                    .is_some_and(|s| s.stuck.load(Ordering::Acquire))
                {
                    break;
                }
                std::thread::park_timeout(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// What `refuse_one` answers: not a status of the plugin's.
const REFUSED: u32 = u32::MAX;

/// `push_one`'s entry point while port 0 takes no `u64`s: reads nothing, answers
/// [`REFUSED`].
unsafe extern "C" fn refuse_one(
    _env: *const c_void,
    _states: *const *mut u8,
    _port: u32,
    _item: *const c_void,
    _cx: *const EmitCx,
) -> u32 {
    REFUSED
}

/// `push_one`'s entry point once the chain completed: reads nothing, answers COMPLETE.
unsafe extern "C" fn completed_one(
    _env: *const c_void,
    _states: *const *mut u8,
    _port: u32,
    _item: *const c_void,
    _cx: *const EmitCx,
) -> u32 {
    plugin_api::abi::status::COMPLETE
}

/// Where a `publish` operator delivers: its subject's hub, and the value layout its code
/// declared.
type PublishTo = (Arc<Hub>, hmr_track::Fingerprint);

/// What the plugin's callbacks see during a push: the pipeline's identity and the sink.
struct HostCx {
    pipeline: String,
    /// The pipeline's name, shared by what the census tells (no copy per subscription).
    census_name: Arc<str>,
    version: Cell<u64>,
    /// Shared with the inner subscriptions of each higher-order operator (`Inner::op_path`).
    paths: RefCell<Vec<Arc<str>>>,
    sink: Sink,
    /// By operator number: the hub a `publish` operator delivers to, and the layout its
    /// code declared for the values.
    publish: RefCell<Vec<Option<PublishTo>>>,
    subjects: Arc<Subjects>,
    /// The runtime's clock, which time operators read (`EmitCx::now`).
    clock: Clock,
    /// While the thread runs something that was due at a deadline (an interval's tick, an
    /// operator's timer): that deadline, in ns, which is what `EmitCx::now` reads then, so
    /// a thread that runs late (or a virtual clock moved by a large step) times what it runs
    /// as it was due, as a scheduler does. `u64::MAX` otherwise: the clock's time.
    due: Cell<u64>,
    /// By operator number: its track, which keys its timers across versions.
    tracks: RefCell<Vec<Id>>,
    /// The wakes asked for (`EmitCx::schedule`, an inner subscription's interval) that the
    /// pipeline's thread has not taken into its timers yet: deadline (ns of the clock) and
    /// what is due.
    timers: RefCell<Vec<(u64, Key)>>,
    /// The current code's library (inner subscriptions made now belong to it).
    lib: RefCell<Option<Arc<crate::loader::LibVersion>>>,
    /// The run-time registration of the inner stream being bound.
    reg: RefCell<InnerReg>,
    /// The registration API inner streams are bound through (`EmitCx::api`).
    api: Cell<*const HostApi>,
    /// Live inner subscriptions, by number (boxed: see `graveyard`).
    inners: RefCell<crate::inner::Inners>,
    /// Inner subscriptions ended during a call, freed after it returns. Boxed, as in
    /// `inners`: an `Inner` is 352 bytes, and moving it in and out of the map, here and to
    /// its drop was a third of a subscription's cost (BENCHMARKS.md, 14).
    #[allow(clippy::vec_box)]
    graveyard: RefCell<Vec<Box<Inner>>>,
    /// The callback contexts of freed subscriptions, for the next ones (at most
    /// [`CTX_POOL`]). Boxed: a subscription's context must stay where it is, and the box is
    /// what is reused.
    #[allow(clippy::vec_box)]
    ctx_pool: RefCell<Vec<Box<InnerCtx>>>,
    /// The callback contexts of the subscriptions run inside their outer value's call
    /// (`subscribe_sync`), one per level of nesting, and how many are in use: kept for the
    /// pipeline's life (a panic reported after its subscription ended still reads its own).
    #[allow(clippy::vec_box)]
    sync_ctxs: RefCell<Vec<Box<InnerCtx>>>,
    sync_depth: Cell<usize>,
    /// A run of subscriptions that started and ended inside their call, not yet told to the
    /// census: operator track, calls, first number, how many. Told before the census hears any
    /// other subscription start, when the driver is dropped, and after the calls
    /// (`reap_inners`). (Ends of other subscriptions may come before it: the store keys
    /// everything by number.)
    passed: RefCell<Option<PassedRun>>,
    /// By higher-order operator: the last binding of its synchronous inner stream, to hand
    /// out again while the plugin describes the same operators (`subscribe_sync`) or names
    /// the memo (`subscribe_sync_again`); dropped whenever the driver takes other code (see
    /// [`crate::inner::SyncMemo`]).
    sync_memos: RefCell<Vec<Option<crate::inner::SyncMemo>>>,
    /// The next inner subscription's number and the end of the block of numbers claimed
    /// from [`Shared::inner_ids`] (equal: claim another, [`HostCx::inner_id`]); the next
    /// host-local track id of an inner operator.
    next_inner: Cell<u64>,
    inner_ids_end: Cell<u64>,
    next_track: Cell<u64>,
    /// While a live subscription is re-projected: the library of the code projecting, the
    /// higher-order operator's path and the subscription's; and what the projection handed
    /// over.
    reprojecting: RefCell<Option<(Arc<crate::loader::LibVersion>, String, String)>>,
    reprojected: RefCell<Option<InnerCode>>,
    /// Subscriptions restarted by a re-projection, whose start (and synchronous sources)
    /// the thread runs next.
    starts: RefCell<Vec<u64>>,
    /// Where subscriptions that start and end are told, for the tracking store.
    census: Option<Sender<Census>>,
    /// With the inspector on: the pipeline's tally, where subscriptions count and marbles
    /// go.
    tally: Option<Arc<PipelineTally>>,
    /// Where inner subscriptions open their host sources, and the inbox those deliver to.
    feeds: Option<Arc<Mutex<crate::feed::Feeds>>>,
    inbox: Sender<Msg>,
    /// Subscriptions a re-projection ended while their operator was kept (subscription,
    /// operator's track): the thread tells the operator next (`inner_kind::ENDED`).
    ended: RefCell<Vec<(u64, Id)>>,
    /// Subjects inner subscriptions read, to subscribe once the call that started them
    /// returns (hub, subscription, port): a hub subscriber needs the driver's shared
    /// handle, which only whoever drives the driver holds (`subscribe_asks`).
    hub_asks: RefCell<Vec<(Arc<Hub>, u64, u32)>>,
    /// The pipeline's shared half: where `hub_asks` having any is flagged
    /// (`Shared::flags`), and, by address, what its hub subscribers are known by.
    shared: Arc<Shared>,
}

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// The pipeline's operator on this track.
    Op(Id),
    /// The operator on this track of inner subscription `.0`.
    InnerOp(u64, Id),
    /// The next value of inner subscription `.0`'s interval on port `.1`.
    InnerPort(u64, u32),
}

/// `m` locked, whatever a panic elsewhere left in it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sources of an inner stream not read yet (shared, so that it costs no allocation).
static NO_SOURCES: std::sync::LazyLock<Arc<[SourceSpec]>> =
    std::sync::LazyLock::new(|| Arc::from(Vec::new()));

/// Subscriptions `first..first + count` that started and ended inside their calls under the
/// higher-order operator `op_track`, each with `calls`: told to the census as one message.
struct PassedRun {
    op_track: Id,
    calls: Arc<[crate::inner::RegCall]>,
    first: u64,
    count: u64,
    /// Each subscription's seeds, when its first subscription's were not `calls`' (a run
    /// with a log logs every subscription's; one without has `calls`' seeds throughout).
    seeds: Option<crate::inner::SeedLog>,
    /// How many were named by memo (`subscribe_sync_again`).
    named: u64,
}

/// No registration call (an inner stream without tracks of its own), shared.
static NO_CALLS: std::sync::LazyLock<Arc<[crate::inner::RegCall]>> =
    std::sync::LazyLock::new(|| Arc::from(Vec::new()));

/// The smallest heap of deadlines a pipeline thread sweeps for ended inner subscriptions'
/// timers.
const TIMER_SWEEP_MIN: usize = 256;

/// Nesting deeper than this (a chain of higher-order operators each running a synchronous
/// inner stream with operators) goes the long way.
const MAX_SYNC_DEPTH: usize = 64;

/// How many freed subscriptions' callback contexts a pipeline keeps for reuse.
const CTX_POOL: usize = 64;

/// Host-local ids of inner subscriptions' operators: far above the store's.
const INNER_TRACKS: u64 = 1 << 62;

/// How many inner subscription numbers a driver claims from its pipeline's counter at a time
/// ([`Shared::inner_ids`]): one atomic add per block, not per subscription.
const INNER_ID_BLOCK: u64 = 1024;

impl Drop for HostCx {
    fn drop(&mut self) {
        // The pipeline's thread ends: its subscriptions end with it.
        self.flush_passed();
        if let Some(census) = &self.census {
            let mut ids = self.live_ids();
            ids.extend(self.graveyard.get_mut().iter().map(|i| i.id));
            for id in ids {
                let _ = census.send(Census::Ended {
                    pipeline: self.census_name.clone(),
                    id,
                });
            }
        }
    }
}

impl HostCx {
    /// The live inner subscriptions' numbers, in the order they started.
    fn live_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.inners.borrow().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The operators' paths, owned.
    fn op_paths(&self) -> Vec<String> {
        self.paths.borrow().iter().map(|p| p.to_string()).collect()
    }

    fn set_code(&self, code: &PipelineCode) {
        self.version.set(code.version);
        // Each memo holds a binding registered under the last code (see `SyncMemo`).
        self.sync_memos.borrow_mut().clear();
        *self.lib.borrow_mut() = Some(code.lib().clone());
        *self.tracks.borrow_mut() = code.ops.iter().map(|o| o.track).collect();
        *self.paths.borrow_mut() = code.ops.iter().map(|o| Arc::from(&*o.path)).collect();
        let mut hubs = vec![None; code.ops.len()];
        for p in &code.publishes {
            if let Some(slot) = hubs.get_mut(p.op as usize) {
                *slot = Some((self.subjects.hub(&p.subject), p.item.clone()));
            }
        }
        *self.publish.borrow_mut() = hubs;
    }
}

unsafe extern "C" fn cb_log(host: *mut c_void, _op: u32, text: RStr) {
    // SAFETY: `host` is the `HostCx` of the running thread, alive for the push that calls
    // back; `text` is valid for the call.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let h = &*host.cast::<HostCx>();
        // Borrowed when the text is UTF-8 (a Debug text is): the sink decides what to copy.
        let value = text.to_string_lossy().unwrap_or_default();
        h.sink.emission(&h.pipeline, h.version.get(), &value);
    }));
}

unsafe extern "C" fn cb_marble(host: *mut c_void, op: u32, text: RStr) {
    // SAFETY: as in `cb_log`.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let h = &*host.cast::<HostCx>();
        if let Some(t) = &h.tally {
            // The path in the code this driver runs (a retiring thread's marbles land in
            // its own code's lanes, not in the new code's at the same number).
            let paths = h.paths.borrow();
            let path = match op {
                u32::MAX => &*h.pipeline,
                op => match paths.get(op as usize) {
                    Some(p) => &**p,
                    None => return,
                },
            };
            t.marble(
                path,
                h.version.get(),
                &text.to_string_lossy().unwrap_or_default(),
            );
        }
    }));
}

unsafe extern "C" fn cb_error(host: *mut c_void, op: u32, message: RStr) {
    // SAFETY: as in `cb_log`.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let h = &*host.cast::<HostCx>();
        let path = h
            .paths
            .borrow()
            .get(op as usize)
            .map(|p| p.to_string())
            .unwrap_or_else(|| h.pipeline.clone());
        h.sink.event(HostEvent::Error {
            pipeline: h.pipeline.clone(),
            path,
            message: cap_message(&message.to_string_lossy().unwrap_or_default()).into_owned(),
        });
    }));
}

unsafe extern "C" fn cb_now(host: *mut c_void) -> u64 {
    // SAFETY: as in `cb_log`.
    let h = unsafe { &*host.cast::<HostCx>() };
    match h.due.get() {
        u64::MAX => h.clock.now_ns(),
        due => due,
    }
}

unsafe extern "C" fn cb_schedule(host: *mut c_void, op: u32, deadline: u64) {
    // SAFETY: as in `cb_log`.
    let h = unsafe { &*host.cast::<HostCx>() };
    // `try_borrow`: never a panic here, whatever the plugin does.
    if let (Ok(tracks), Ok(mut timers)) = (h.tracks.try_borrow(), h.timers.try_borrow_mut())
        && let Some(&track) = tracks.get(op as usize)
    {
        timers.push((deadline, Key::Op(track)));
    }
}

// ---- Inner subscriptions: the run-time registration API and the callbacks ----

unsafe extern "C" fn cbr_track_call(
    ctx: *mut c_void,
    kind: RStr,
    key: RStr,
    signature: *const RSignature,
) -> u64 {
    // SAFETY: `ctx` is the `HostCx` of the running thread (the API it made); the plugin
    // passes strings and a signature valid for the call.
    catch_unwind(AssertUnwindSafe(|| unsafe {
        let h = &*ctx.cast::<HostCx>();
        let Ok(mut reg) = h.reg.try_borrow_mut() else {
            return 0;
        };
        reg.open(kind, key, &*signature)
    }))
    .unwrap_or(0)
}

unsafe extern "C" fn cbr_track_call_return(ctx: *mut c_void, _track: u64) {
    // SAFETY: as in `cbr_track_call`.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let h = &*ctx.cast::<HostCx>();
        if let Ok(mut reg) = h.reg.try_borrow_mut() {
            reg.close();
        }
    }));
}

unsafe extern "C" fn cbr_add_pipeline(
    _ctx: *mut c_void,
    desc: *const plugin_api::abi::PipelineDesc,
) {
    // Never called at run time by the DSL; a pipeline handed over here is freed unused.
    // SAFETY: the plugin passes a description valid for the call, whose env it gave up.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        ((*desc).drop_env)((*desc).env)
    }));
}

unsafe extern "C" fn cbr_fail(_ctx: *mut c_void, _message: RStr) {}

/// Byte equality without the library call for empty strings (most sources' texts): the
/// call cost a subscription more than the comparison (scenario 14's profile).
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// Whether `spec` is the source `src` describes (no allocation: strings compared in place).
///
/// # Safety
/// The strings of `src` must be readable for the call.
unsafe fn same_source(
    spec: &crate::code::SourceSpec,
    src: &plugin_api::abi::SourceDesc,
    names: &mut crate::register::Names,
) -> bool {
    // SAFETY: forwarded.
    unsafe {
        spec.kind == src.kind
            && spec.a == src.a
            && spec.b == src.b
            // Bytes compared, not validated first: equal bytes are the (valid) spec's text;
            // invalid ones differ from its lossy copy, and are read again.
            && same_bytes(src.text.bytes().unwrap_or_default(), spec.text.as_bytes())
            && same_bytes(src.label.bytes().unwrap_or_default(), spec.label.as_bytes())
            && names.fingerprint(&src.item) == spec.item
    }
}

/// Reads an inner stream's description: its sources, and its operators with paths under
/// `base` (tracks assigned later). `reg.names` is the pipeline's run-time cache of kinds and
/// type names (the same few for every subscription: decoded once, not per subscription);
/// `reg.sources` the last sources read, reused while they match.
///
/// # Safety
/// `desc` must be valid for the call, as the plugin passes it.
unsafe fn read_inner(
    desc: &InnerDesc,
    opened: &[(String, hmr_track::Signature)],
    base: &str,
    reg: &mut InnerReg,
) -> Result<(Arc<[crate::code::SourceSpec]>, Vec<crate::code::OpCode>), String> {
    let InnerReg {
        names,
        sources: last,
        ..
    } = reg;
    // SAFETY: the plugin passes `n_sources` descriptions and `n_ops` operators valid for the
    // call.
    let (sources, ops) = unsafe {
        (
            if desc.n_sources == 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(desc.sources, desc.n_sources)
            },
            if desc.n_ops == 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(desc.ops, desc.n_ops)
            },
        )
    };
    let same = last.as_ref().is_some_and(|l| {
        l.len() == sources.len()
            && l.iter()
                .zip(sources)
                // SAFETY: strings valid for the call.
                .all(|(spec, src)| unsafe { same_source(spec, src, names) })
    });
    // No other subscription holds the last ones (it ended): rewritten in place, their
    // strings' capacity reused (an `of(..)` source's label holds its items, so it differs
    // from one outer value to the next).
    let rewritten = !same
        && match last.as_mut().and_then(Arc::get_mut) {
            Some(specs) if specs.len() == sources.len() => {
                for (spec, src) in specs.iter_mut().zip(sources) {
                    spec.kind = src.kind;
                    spec.a = src.a;
                    spec.b = src.b;
                    spec.text.clear();
                    // SAFETY: strings valid for the call.
                    spec.text
                        .push_str(&unsafe { src.text.to_string_lossy() }.unwrap_or_default());
                    spec.label.clear();
                    // SAFETY: as above.
                    spec.label
                        .push_str(&unsafe { src.label.to_string_lossy() }.unwrap_or_default());
                    // SAFETY: as above.
                    spec.item = unsafe { names.fingerprint(&src.item) };
                }
                true
            }
            _ => false,
        };
    let sources: Arc<[crate::code::SourceSpec]> = match last {
        Some(l) if same || rewritten => l.clone(),
        _ => {
            let read: Arc<[crate::code::SourceSpec]> = sources
                .iter()
                .map(|src| crate::code::SourceSpec {
                    kind: src.kind,
                    a: src.a,
                    b: src.b,
                    // SAFETY: strings valid for the call.
                    text: unsafe { src.text.to_string_lossy() }
                        .unwrap_or_default()
                        .into_owned(),
                    // SAFETY: as above.
                    label: unsafe { src.label.to_string_lossy() }
                        .unwrap_or_default()
                        .into_owned(),
                    // SAFETY: as above.
                    item: unsafe { names.fingerprint(&src.item) },
                })
                .collect();
            *last = Some(read.clone());
            read
        }
    };
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let Some((rel, sig)) = (op.track as usize)
            .checked_sub(1)
            .and_then(|t| opened.get(t))
        else {
            return Err(format!(
                "inner operator {i}: track handle {} was not registered",
                op.track
            ));
        };
        let fp = &op.state.fingerprint;
        let layout = std::alloc::Layout::from_size_align(fp.size, fp.align.max(1))
            .map_err(|_| format!("inner operator {i}: its state has no valid layout"))?;
        // SAFETY: a fingerprint valid for the call.
        let vtable_state = unsafe { names.fingerprint(fp) };
        if vtable_state != sig.state || (vtable_state.is_none() && fp.size != 0) {
            return Err(format!(
                "inner operator {rel}: its state type differs between its signature and its \
                 state vtable"
            ));
        }
        out.push(crate::code::OpCode {
            track: 0,
            path: crate::inner::join_path(base, rel),
            kind: sig.kind.to_string(),
            signature: sig.clone(),
            lineage: 0,
            layout,
            init: op.state.init,
            drop: op.state.drop,
            debug: op.state.debug,
            clone: op.state.clone,
        });
    }
    Ok((sources, out))
}

impl HostCx {
    fn now_ns(&self) -> u64 {
        match self.due.get() {
            u64::MAX => self.clock.now_ns(),
            due => due,
        }
    }

    fn error_at(&self, path: String, message: String) {
        self.sink.event(HostEvent::Error {
            pipeline: self.pipeline.clone(),
            path,
            message: cap_message(&message).into_owned(),
        });
    }

    /// Makes a subscription's callback context (its `host` and `current_op` set by the
    /// caller, into the subscription's `InnerHost`).
    fn inner_cx(&self) -> EmitCx {
        EmitCx {
            host: std::ptr::null_mut(),
            log: cbi_log,
            error: cbi_error,
            publish: cbi_publish,
            current_op: std::ptr::null(),
            counts: std::ptr::null(),
            marble: plugin_api::abi::no_marble,
            marble_calls: std::ptr::null(),
            now: cbi_now,
            schedule: cbi_schedule,
            subscribe: cbi_subscribe,
            subscribe_sync: cbi_subscribe_sync,
            subscribe_sync_again: cbi_subscribe_sync_again,
            unsubscribe: cbi_unsubscribe,
            api: self.api.get(),
        }
    }

    /// Fresh host-local tracks for `ops`, reusing `old`'s for the same paths.
    fn assign_tracks(&self, ops: &mut [crate::code::OpCode], old: &[crate::code::OpCode]) {
        for op in ops {
            op.track = match old.iter().find(|o| o.path == op.path) {
                Some(o) => o.track,
                None => {
                    let t = self.next_track.get();
                    self.next_track.set(t + 1);
                    t
                }
            };
        }
    }

    /// Ports of `sources`: intervals start now (their first value is due at once). Empty
    /// (no allocation) when none is an interval: a missing port is a finished one.
    fn start_ports(&self, id: u64, sources: &[crate::code::SourceSpec]) -> Vec<InnerPort> {
        if !sources.iter().any(|s| s.kind == source_kind::INTERVAL) {
            return Vec::new();
        }
        // The clock is read only for an interval (most inner streams have none).
        let mut now = None;
        sources
            .iter()
            .enumerate()
            .map(|(port, s)| {
                if s.kind == source_kind::INTERVAL {
                    let now = *now.get_or_insert_with(|| self.now_ns());
                    self.timers
                        .borrow_mut()
                        .push((now, Key::InnerPort(id, port as u32)));
                    InnerPort::Interval {
                        period: Duration::from_millis(s.a.max(1)),
                        n: 0,
                        next: now,
                    }
                } else {
                    InnerPort::Done
                }
            })
            .collect()
    }

    /// Opens the host sources (files, sockets, stdin) of inner subscription `id`, delivering
    /// to this pipeline's inbox: what they hold (a file's position, a listener) lives as long
    /// as the subscription, and a re-projection that keeps the sources keeps them. A source
    /// that cannot be opened is an error at `path`; its port stays silent.
    fn open_inner_sources(
        &self,
        id: u64,
        sources: &[crate::code::SourceSpec],
        path: impl Fn() -> String,
    ) -> Vec<crate::feed::Held> {
        let Some(feeds) = &self.feeds else {
            return Vec::new();
        };
        // Most inner streams read no host source (intervals, `of`, `range`): the shared
        // `Feeds` is not locked for them (the stdin gate is opened by every launch).
        if !sources.iter().any(|s| s.wire() == Wire::Str) {
            return Vec::new();
        }
        let mut held = Vec::new();
        let mut feeds = lock(feeds);
        for (port, spec) in sources.iter().enumerate() {
            match feeds.open_for(spec, port as u32, id, &self.inbox, &mut Vec::new()) {
                Ok(Some((h, _))) => held.push(h),
                Ok(None) => {}
                Err(e) => self.error_at(path(), e),
            }
        }
        // An inner subscription that reads stdin starts now: nothing else is waited for.
        feeds.opened();
        held
    }

    /// Enters the uses of subjects of inner subscription `path` (the subjects among
    /// `sources` it reads, those of `publishes` it publishes to), counted while the guard
    /// lives; or why they are refused: a value type other than a pipeline's own use of the
    /// subject, or a loop through subjects they would close (see `Subjects::enter_inner`).
    fn enter_subjects(
        &self,
        sources: &[crate::code::SourceSpec],
        publishes: &[crate::inner::InnerPublish],
        path: impl Fn() -> String,
    ) -> Result<Option<crate::subjects::InnerUses>, String> {
        // Most inner streams use no subject: nothing is formatted or locked for them.
        if publishes.is_empty() && !sources.iter().any(|s| s.kind == source_kind::SUBJECT) {
            return Ok(None);
        }
        let reads: Vec<(&str, Option<&hmr_track::Fingerprint>)> = sources
            .iter()
            .filter(|s| s.kind == source_kind::SUBJECT)
            .map(|s| (s.text.as_str(), s.item.as_ref()))
            .collect();
        let publishes: Vec<(&str, &hmr_track::Fingerprint)> = publishes
            .iter()
            .map(|(_, hub, item)| (hub.name(), item))
            .collect();
        self.subjects
            .enter_inner(&self.pipeline, &path(), &reads, &publishes)
    }

    /// The `publish` operators of the inner stream `desc` describes (empty, no allocation,
    /// when it has none), or why one cannot be read.
    ///
    /// # Safety
    /// `desc`'s publish descriptions and their strings must be readable for the call.
    unsafe fn read_publishes(
        &self,
        desc: &InnerDesc,
    ) -> Result<Vec<crate::inner::InnerPublish>, String> {
        if desc.n_publishes == 0 {
            return Ok(Vec::new());
        }
        if desc.publishes.is_null() {
            return Err("its publish operators were not described".to_owned());
        }
        // SAFETY: the plugin passes `n_publishes` descriptions valid for the call.
        let publishes = unsafe { std::slice::from_raw_parts(desc.publishes, desc.n_publishes) };
        let mut reg = self.reg.borrow_mut();
        publishes
            .iter()
            .map(|p| {
                // SAFETY: strings valid for the call.
                let subject = unsafe { p.subject.to_string_lossy() };
                // SAFETY: as above.
                let item = unsafe { reg.names.fingerprint(&p.item) };
                match (subject, item) {
                    (Some(subject), Some(item)) => Ok((p.op, self.subjects.hub(&subject), item)),
                    _ => Err(format!(
                        "its publish operator {}: the subject's name or value type could not \
                         be read",
                        p.op
                    )),
                }
            })
            .collect()
    }

    /// Subscribes inner subscription `id` to the subjects among `sources` (the hub
    /// subscribers are made once the running call returns, see `subscribe_asks`): what it
    /// holds unsubscribes it when it ends or restarts. Empty (no allocation) when it reads
    /// no subject.
    fn link_subjects(
        &self,
        id: u64,
        sources: &[crate::code::SourceSpec],
    ) -> Vec<crate::inner::HubLink> {
        if !sources.iter().any(|s| s.kind == source_kind::SUBJECT) {
            return Vec::new();
        }
        let mut links = Vec::new();
        let mut asks = self.hub_asks.borrow_mut();
        for (port, s) in sources.iter().enumerate() {
            if s.kind != source_kind::SUBJECT {
                continue;
            }
            let hub = self.subjects.hub(&s.text);
            asks.push((hub.clone(), id, port as u32));
            if !links
                .iter()
                .any(|l: &crate::inner::HubLink| Arc::ptr_eq(&l.hub, &hub))
            {
                links.push(crate::inner::HubLink {
                    hub,
                    owner: Arc::as_ptr(&self.shared) as usize,
                    id,
                });
            }
        }
        self.shared.set_flag(flags::HUB_ASKS);
        links
    }

    /// The next inner subscription's number (taken by setting `next_inner` past it): a new
    /// block of numbers is claimed from the pipeline's counter when the last is used up.
    fn inner_id(&self) -> u64 {
        let id = self.next_inner.get();
        if id != self.inner_ids_end.get() {
            return id;
        }
        let first = self
            .shared
            .inner_ids
            .fetch_add(INNER_ID_BLOCK, Ordering::Relaxed);
        self.next_inner.set(first);
        self.inner_ids_end.set(first + INNER_ID_BLOCK);
        first
    }

    /// A subscription's callback context, new, its pointers into itself set (the box keeps
    /// them valid), for no subscription yet.
    fn fresh_ctx(&self) -> Box<InnerCtx> {
        let mut ctx = Box::new(InnerCtx {
            host: InnerHost {
                parent: (self as *const HostCx).cast::<c_void>(),
                instance: 0,
                paths: Vec::new(),
                tracks: Vec::new(),
                current_op: AtomicU32::new(u32::MAX),
                publishes: Vec::new(),
                sync: None,
            },
            cx: self.inner_cx(),
        });
        ctx.cx.host = (&raw mut ctx.host).cast::<c_void>();
        ctx.cx.current_op = &raw const ctx.host.current_op;
        ctx
    }

    /// Tells the census a run of subscriptions that passed inside their calls.
    fn tell_passed(&self, run: Option<PassedRun>) {
        if let (Some(census), Some(run)) = (&self.census, run) {
            let _ = census.send(Census::Passed {
                pipeline: self.census_name.clone(),
                op_track: run.op_track,
                calls: run.calls,
                first: run.first,
                count: run.count,
                seeds: run.seeds,
                named: run.named,
            });
        }
    }

    /// Tells the census the run under way, if any (see `HostCx::passed`).
    fn flush_passed(&self) {
        // Never borrowed across a call out (plugin code, a send): a conflict is a defect.
        let mut passed = self.passed.borrow_mut();
        // Once a pass, mostly with nothing to tell (no tracking store): not moved then.
        if passed.is_some() {
            let run = passed.take();
            drop(passed);
            self.tell_passed(run);
        }
    }

    /// `subscribe_sync` from a pipeline's higher-order operator `op`: an inner stream that
    /// starts and ends inside the running call, its operators described by `ops` and `sigs`
    /// (none for a bare source), run by the plugin on its own states. Their tracks are
    /// registered here (or the operator's last binding is handed out again, `SyncMemo`). It
    /// takes the next number, and the census hears that it started (with its binding's
    /// calls, and its own seeds where they differ from the binding's: `SeedLog`) and ended,
    /// as for one subscribed and ended in the call; nothing is held but a
    /// callback context for its operators (`*cx`), one per level of nesting, reused. 0,
    /// nothing registered (the plugin binds the stream in full and subscribes it the long
    /// way), while re-projecting, with the inspector on (counts are per subscription), for an
    /// operator this code does not have, or for operators other than one track each in
    /// order.
    ///
    /// With operators, `*memo` (when not null) is the number of the memo the binding came
    /// from (`SyncMemo::token`), unless the seeds are being logged (the plugin must then
    /// describe every subscription's operators, seeds and all).
    ///
    /// # Safety
    /// The strings of `ops` and `sigs` (as many) must be readable for the call; `cx` and
    /// `memo` are null or writable.
    unsafe fn subscribe_sync(
        &self,
        op: u32,
        ops: &[plugin_api::abi::OpDesc],
        sigs: &[RSignature],
        cx: *mut *const EmitCx,
        memo_out: *mut u64,
    ) -> u64 {
        let Some((op_track, depth)) = self.sync_allowed(op) else {
            return 0;
        };
        // Held to the end: the binding is borrowed from its memo, and `Arc`s are cloned only
        // where they are kept anew (an atomic add or subtract each, four a subscription
        // before).
        let mut memos = self.sync_memos.borrow_mut();
        let memo = if ops.is_empty() {
            None
        } else {
            let linear = ops.iter().enumerate().all(|(i, o)| o.track == i as u64 + 1);
            if !linear || sigs.len() != ops.len() || !self.may_give_context(depth, cx) {
                return 0;
            }
            if memos.len() <= op as usize {
                memos.resize_with(op as usize + 1, || None);
            }
            let memo = &mut memos[op as usize];
            let repeats = memo.as_ref().is_some_and(|m| m.matches(ops, sigs));
            if !repeats {
                // Registered here, as the plugin's track calls would have been: one track per
                // operator, directly under the subscription.
                let mut reg = self.reg.borrow_mut();
                for (o, sig) in ops.iter().zip(sigs) {
                    // SAFETY: the caller's obligation.
                    unsafe { reg.open(o.kind, RStr::NONE, sig) };
                    reg.close();
                }
                let binding = reg.finish();
                // SAFETY: the caller's obligation.
                *memo = Some(unsafe { crate::inner::SyncMemo::new(ops, sigs, binding) });
            }
            memo.as_ref()
        };
        // SAFETY: the caller's obligation.
        let id = unsafe { self.enter_sync(op, op_track, depth, memo, Some(sigs), cx) };
        if let Some(m) = memo
            && !memo_out.is_null()
            && !self.shared.census_seeds.load(Ordering::Relaxed)
        {
            // SAFETY: the caller's obligation.
            unsafe { *memo_out = m.token };
        }
        id
    }

    /// `subscribe_sync_again` from a pipeline's higher-order operator `op`: as
    /// `subscribe_sync` for operators the plugin described as memo `token`'s were, handed
    /// that memo's binding. 0 (nothing done) for a memo the operator no longer has, while
    /// the seeds are logged (they are not passed here), and wherever `subscribe_sync`
    /// answers 0. (A run that logs seeds, should one be under way, is told and not
    /// continued: `enter_sync`.)
    ///
    /// # Safety
    /// `cx` is null or writable.
    unsafe fn subscribe_sync_again(&self, op: u32, token: u64, cx: *mut *const EmitCx) -> u64 {
        if self.shared.census_seeds.load(Ordering::Relaxed) {
            return 0;
        }
        let Some((op_track, depth)) = self.sync_allowed(op) else {
            return 0;
        };
        if !self.may_give_context(depth, cx) {
            return 0;
        }
        let memos = self.sync_memos.borrow();
        let Some(memo) = memos
            .get(op as usize)
            .and_then(Option::as_ref)
            .filter(|m| m.token == token)
        else {
            return 0;
        };
        // SAFETY: `cx` is writable (the caller's obligation); no seeds are read.
        unsafe { self.enter_sync(op, op_track, depth, Some(memo), None, cx) }
    }

    /// Whether a synchronous inner stream with operators may have a context of its own at
    /// nesting `depth` (handed through `cx`): a place for it, not nested too deep, and no
    /// track opened through the registration API before (the host registers the operators'
    /// tracks itself).
    fn may_give_context(&self, depth: usize, cx: *mut *const EmitCx) -> bool {
        !cx.is_null() && depth < MAX_SYNC_DEPTH && self.reg.borrow().opened_so_far() == 0
    }

    /// What `subscribe_sync` and `subscribe_sync_again` ask first: operator `op`'s track
    /// and the nesting depth, unless the stream must go the long way (while counting or
    /// re-projecting, for an operator this code does not have).
    fn sync_allowed(&self, op: u32) -> Option<(u64, usize)> {
        if self.tally.is_some() || self.reprojecting.borrow().is_some() {
            return None;
        }
        let op_track = self.tracks.borrow().get(op as usize).copied()?;
        Some((op_track, self.sync_depth.get()))
    }

    /// Numbers a synchronous inner subscription of operator `op` (track `op_track`), tells
    /// the census, and points `*cx` at a context for its operators (with `memo`, its
    /// binding; a bare source has none). `sigs`: its operators' signatures, for their seeds;
    /// `None` when the plugin named the memo (no seed is logged then: a run under way that
    /// logs them is not continued but told, and the next begun without).
    ///
    /// # Safety
    /// The seeds of `sigs` must be readable for the call; with `memo`, `cx` is writable.
    unsafe fn enter_sync(
        &self,
        op: u32,
        op_track: u64,
        depth: usize,
        memo: Option<&crate::inner::SyncMemo>,
        sigs: Option<&[RSignature]>,
        cx: *mut *const EmitCx,
    ) -> u64 {
        let id = self.inner_id();
        self.next_inner.set(id + 1);
        if self.census.is_some() {
            let calls = memo.map_or(&*NO_CALLS, |m| &m.binding.calls);
            let mut passed = self.passed.borrow_mut();
            let same_run = passed.as_ref().is_some_and(|run| {
                run.op_track == op_track
                    && run.first + run.count == id
                    && Arc::ptr_eq(&run.calls, calls)
            });
            let log = passed
                .as_mut()
                .filter(|_| same_run)
                .and_then(|run| run.seeds.as_mut())
                .filter(|log| log.size() < crate::inner::SeedLog::CAP)
                .zip(sigs);
            if let Some((log, sigs)) = log {
                // A run that logs seeds logs every subscription's.
                // SAFETY: the caller's obligation.
                unsafe { log.push(sigs) };
                if let Some(run) = passed.as_mut() {
                    run.count += 1;
                }
            } else {
                // Whether this subscription's seeds are not its binding's (a binding is handed
                // out whatever its operators' seeds: see `SyncMemo`).
                // Only asked when the seeds are logged at all.
                let own = self.shared.census_seeds.load(Ordering::Relaxed)
                    && sigs.is_some_and(|sigs| {
                        // SAFETY: the caller's obligation.
                        memo.is_some_and(|m| !unsafe { m.same_seeds(sigs) })
                    });
                let named = u64::from(sigs.is_none());
                match &mut *passed {
                    Some(run) if same_run && run.seeds.is_none() && !own => {
                        run.count += 1;
                        run.named += named;
                    }
                    _ => {
                        let seeds = own.then(|| {
                            let mut log = crate::inner::SeedLog::default();
                            // SAFETY: the caller's obligation (`own`: `sigs` is some).
                            unsafe { log.push(sigs.unwrap_or_default()) };
                            log
                        });
                        let earlier = passed.replace(PassedRun {
                            op_track,
                            calls: calls.clone(),
                            first: id,
                            count: 1,
                            seeds,
                            named,
                        });
                        drop(passed);
                        self.tell_passed(earlier);
                        // Told after the call, when the thread reaps.
                        self.shared.set_flag(flags::INNER_WORK);
                    }
                }
            }
        }
        if let Some(binding) = memo.map(|m| &m.binding) {
            let mut ctxs = self.sync_ctxs.borrow_mut();
            if ctxs.len() == depth {
                ctxs.push(self.fresh_ctx());
            }
            // The context's callbacks and pointers are this pipeline's for its life (the box
            // stays put); the registration API is the current code's.
            let ctx = &mut ctxs[depth];
            ctx.host.instance = id;
            if !ctx
                .host
                .sync
                .as_ref()
                .is_some_and(|(o, b)| *o == op && Arc::ptr_eq(b, binding))
            {
                ctx.host.sync = Some((op, binding.clone()));
            }
            ctx.cx.api = self.api.get();
            // SAFETY: the plugin passes a place for the context, valid for the call.
            unsafe { *cx = &raw const ctx.cx };
            self.sync_depth.set(depth + 1);
        }
        id
    }

    /// `subscribe` from a pipeline's higher-order operator `op`.
    fn subscribe(&self, op: u32, desc: &InnerDesc, out: &mut InnerHandle) -> bool {
        let reprojecting = self.reprojecting.borrow().clone();
        let Some(lib) = reprojecting
            .as_ref()
            .map(|(lib, ..)| lib.clone())
            .or_else(|| self.lib.borrow().clone())
        else {
            // No code yet (never the case once a driver exists): free what was handed over.
            // SAFETY: the plugin gave up the env and the value; each is freed once, by its
            // own glue.
            unsafe {
                (desc.drop_env)(desc.env);
                if !desc.value.is_null() {
                    let _ = (desc.value_drop)(desc.value.cast::<u8>());
                }
            }
            return false;
        };
        // The env is ours from here: freed with its code whatever happens.
        let mut code = InnerCode {
            env: desc.env,
            drop_env: desc.drop_env,
            lib: lib.clone(),
            ops: Vec::new(),
            sources: NO_SOURCES.clone(),
            calls: NO_CALLS.clone(),
            subjects: None,
        };
        let value = if desc.value.is_null() {
            None
        } else {
            // SAFETY: the plugin gave up the value at `desc.value`, of `desc.value_type`.
            match unsafe { HeldValue::take(desc, &lib) } {
                Some(v) => Some(v),
                None => {
                    // SAFETY: as above: dropped in place with its own glue, since it cannot
                    // be held.
                    let _ = unsafe { (desc.value_drop)(desc.value.cast::<u8>()) };
                    None
                }
            }
        };
        // The binding's tracks: the last binding's again when it made the same calls.
        let binding = self.reg.borrow_mut().finish();
        let (opened, calls) = (&binding.opened, binding.calls.clone());
        if let Some((_, op_path, path)) = reprojecting {
            // SAFETY: `desc` is valid for the call.
            let read = unsafe { read_inner(desc, opened, "", &mut self.reg.borrow_mut()) };
            match read {
                Ok((sources, ops)) => {
                    // SAFETY: `desc` is valid for the call.
                    let entered = unsafe { self.read_publishes(desc) }.and_then(|publishes| {
                        let uses = self.enter_subjects(&sources, &publishes, || path.clone())?;
                        Ok((publishes, uses))
                    });
                    // Refused as at a subscription: the live one ends (`reproject`).
                    match entered {
                        Err(why) => self.error_at(op_path, why),
                        Ok((publishes, uses)) => {
                            code.sources = sources;
                            code.ops = ops;
                            code.calls = calls;
                            code.subjects = crate::inner::CodeSubjects::boxed(publishes, uses);
                            *self.reprojected.borrow_mut() = Some(code);
                        }
                    }
                }
                Err(e) => self.error_at(op_path, e),
            }
            return false;
        }
        let Some(op_track) = self.tracks.borrow().get(op as usize).copied() else {
            return false;
        };
        // Borrowed, not cloned (an allocation per subscription): nothing below changes paths.
        let paths = self.paths.borrow();
        let Some(op_path) = paths.get(op as usize) else {
            return false;
        };
        let Some(value) = value else {
            self.error_at(
                op_path.to_string(),
                "an inner subscription without its outer value".to_owned(),
            );
            return false;
        };
        let id = self.inner_id();
        // Formatted here for the ops' paths only when there are ops (an error's message
        // formats it again).
        let path = if opened.is_empty() {
            String::new()
        } else {
            crate::inner::subscription_path(op_path, id)
        };
        // SAFETY: `desc` is valid for the call.
        let read = unsafe { read_inner(desc, opened, &path, &mut self.reg.borrow_mut()) };
        let (sources, mut ops) = match read {
            Ok(x) => x,
            Err(e) => {
                self.error_at(op_path.to_string(), e);
                return false;
            }
        };
        // Most inner streams use no subject: nothing more to read or check for them.
        if desc.n_publishes != 0 || sources.iter().any(|s| s.kind == source_kind::SUBJECT) {
            // SAFETY: `desc` is valid for the call.
            let entered = unsafe { self.read_publishes(desc) }.and_then(|publishes| {
                let path = || crate::inner::subscription_path(op_path, id);
                let uses = self.enter_subjects(&sources, &publishes, path)?;
                Ok((publishes, uses))
            });
            match entered {
                Ok((publishes, uses)) => {
                    code.subjects = crate::inner::CodeSubjects::boxed(publishes, uses);
                }
                Err(why) => {
                    // Its number is used up: each refusal names its own.
                    self.next_inner.set(id + 1);
                    self.error_at(op_path.to_string(), why);
                    return false;
                }
            }
        }
        self.assign_tracks(&mut ops, &[]);
        let slots = match StateSlots::new_for(&ops, code.env, &lib) {
            Ok(s) => s,
            Err(e) => {
                self.error_at(crate::inner::subscription_path(op_path, id), e.to_string());
                return false;
            }
        };
        let op_path = op_path.clone();
        drop(paths);
        self.next_inner.set(id + 1);
        code.ops = ops;
        code.sources = sources;
        let ports = self.start_ports(id, &code.sources);
        // The path is formatted only for an error (two allocations per subscription
        // otherwise, scenario 6).
        let held = self.open_inner_sources(id, &code.sources, || {
            crate::inner::subscription_path(&op_path, id)
        });
        let hubs = self.link_subjects(id, &code.sources);
        // A freed subscription's context if there is one (its vectors' capacity kept).
        let pooled = self.ctx_pool.borrow_mut().pop();
        let mut ctx = pooled.unwrap_or_else(|| self.fresh_ctx());
        ctx.host.parent = (self as *const HostCx).cast::<c_void>();
        ctx.host.instance = id;
        ctx.host.paths.clear();
        ctx.host
            .paths
            .extend(code.ops.iter().map(|o| o.path.clone()));
        ctx.host.tracks.clear();
        ctx.host.tracks.extend(code.ops.iter().map(|o| o.track));
        ctx.host.publishes.clear();
        ctx.host.publishes.extend_from_slice(code.publishes());
        ctx.host.sync = None;
        ctx.cx = self.inner_cx();
        ctx.cx.host = (&raw mut ctx.host).cast::<c_void>();
        ctx.cx.current_op = &raw const ctx.host.current_op;
        let tally = self.tally.as_ref().map(|t| {
            let t = InnerTally::start(t, id, &code.ops);
            ctx.cx.counts = t.as_ptr();
            t
        });
        out.instance = id;
        out.states = slots.as_ptr();
        out.cx = &raw const ctx.cx;
        self.flush_passed();
        if let Some(census) = &self.census {
            let _ = census.send(Census::Started {
                pipeline: self.census_name.clone(),
                id,
                op_track,
                calls,
            });
        }
        // Numbers are never reused: nothing is replaced (and nothing dropped under the borrow).
        let replaced = self.inners.borrow_mut().insert(
            id,
            Box::new(Inner {
                id,
                op_track,
                held,
                hubs,
                op_path,
                value,
                slots,
                code,
                ports,
                ctx,
                tally,
            }),
        );
        debug_assert!(replaced.is_none(), "inner subscription {id} numbered twice");
        true
    }
}

unsafe extern "C" fn cb_subscribe(
    host: *mut c_void,
    op: u32,
    desc: *const InnerDesc,
    out: *mut InnerHandle,
) -> bool {
    // SAFETY: `host` is the `HostCx` of the running thread; `desc` and `out` are valid for
    // the call.
    catch_unwind(AssertUnwindSafe(|| unsafe {
        (*host.cast::<HostCx>()).subscribe(op, &*desc, &mut *out)
    }))
    .unwrap_or(false)
}

unsafe extern "C" fn cb_subscribe_sync(
    host: *mut c_void,
    op: u32,
    ops: *const plugin_api::abi::OpDesc,
    sigs: *const RSignature,
    n_ops: usize,
    cx: *mut *const EmitCx,
    memo: *mut u64,
) -> u64 {
    // SAFETY: `host` is the `HostCx` of the running thread; the plugin passes `n_ops`
    // descriptions and signatures (and `cx` and `memo`) valid for the call.
    catch_unwind(AssertUnwindSafe(|| unsafe {
        let (ops, sigs) = if n_ops == 0 {
            (&[][..], &[][..])
        } else if ops.is_null() || sigs.is_null() {
            // Operators said but not described: not a bare source (whose values would be
            // lost unrun), and nothing to register.
            return 0;
        } else {
            (
                std::slice::from_raw_parts(ops, n_ops),
                std::slice::from_raw_parts(sigs, n_ops),
            )
        };
        (*host.cast::<HostCx>()).subscribe_sync(op, ops, sigs, cx, memo)
    }))
    .unwrap_or(0)
}

unsafe extern "C" fn cb_subscribe_sync_again(
    host: *mut c_void,
    op: u32,
    memo: u64,
    cx: *mut *const EmitCx,
) -> u64 {
    // SAFETY: `host` is the `HostCx` of the running thread; the plugin passes `cx` valid for
    // the call.
    catch_unwind(AssertUnwindSafe(|| unsafe {
        (*host.cast::<HostCx>()).subscribe_sync_again(op, memo, cx)
    }))
    .unwrap_or(0)
}

unsafe extern "C" fn cb_unsubscribe(host: *mut c_void, _op: u32, instance: u64) {
    // SAFETY: as in `cb_log`.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let h = &*host.cast::<HostCx>();
        // A subscription run inside its outer value's call: its context is free again.
        let depth = h.sync_depth.get();
        if depth > 0
            && let Ok(ctxs) = h.sync_ctxs.try_borrow()
            && ctxs
                .get(depth - 1)
                .is_some_and(|c| c.host.instance == instance)
        {
            h.sync_depth.set(depth - 1);
            return;
        }
        let ended = h.inners.borrow_mut().remove(&instance);
        if let Some(mut i) = ended {
            // Its sources are let go now, so that the next subscription may rewrite the
            // shared ones in place (`read_inner`).
            i.code.sources = NO_SOURCES.clone();
            // Freed after the call: its env and slots may still be on the plugin's stack.
            h.graveyard.borrow_mut().push(i);
            h.shared.set_flag(flags::INNER_WORK);
        }
    }));
}

/// The pipeline's `HostCx` behind an inner subscription's context.
///
/// # Safety
/// `host` must be an `InnerHost` of a live subscription of the running thread.
unsafe fn inner_host<'a>(host: *mut c_void) -> (&'a InnerHost, &'a HostCx) {
    // SAFETY: guaranteed by the caller; the parent outlives its subscriptions.
    unsafe {
        let i = &*host.cast::<InnerHost>();
        (i, &*i.parent.cast::<HostCx>())
    }
}

unsafe extern "C" fn cbi_log(host: *mut c_void, _op: u32, text: RStr) {
    // SAFETY: as in `inner_host`; `text` is valid for the call.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let (_, h) = inner_host(host);
        let value = text.to_string_lossy().unwrap_or_default();
        h.sink.emission(&h.pipeline, h.version.get(), &value);
    }));
}

unsafe extern "C" fn cbi_error(host: *mut c_void, op: u32, message: RStr) {
    // SAFETY: as in `cbi_log`.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let (i, h) = inner_host(host);
        let path = i.path_of(op, |ho| h.paths.borrow().get(ho as usize).cloned());
        h.error_at(
            path,
            message.to_string_lossy().unwrap_or_default().into_owned(),
        );
    }));
}

unsafe extern "C" fn cbi_publish(host: *mut c_void, op: u32, value: *const c_void) {
    // SAFETY: as in `cbi_log`; `value` is the publisher's value, borrowed for the call.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let (ih, h) = inner_host(host);
        // A delivery never comes back into this pipeline: a loop is refused when an inner
        // subscription would close one (`Subjects::enter_inner`), and a subscriber of this
        // pipeline is behind its lock, which this thread holds (its word is this thread's tag).
        if let Some((_, hub, item)) = ih.publishes.iter().find(|(o, ..)| *o == op) {
            hub.deliver(&h.pipeline, value, item, &h.sink);
        }
    }));
}

unsafe extern "C" fn cbi_now(host: *mut c_void) -> u64 {
    // SAFETY: as in `inner_host`.
    let (_, h) = unsafe { inner_host(host) };
    h.now_ns()
}

unsafe extern "C" fn cbi_schedule(host: *mut c_void, op: u32, deadline: u64) {
    // SAFETY: as in `inner_host`.
    let (i, h) = unsafe { inner_host(host) };
    if let (Some(&track), Ok(mut timers)) = (i.tracks.get(op as usize), h.timers.try_borrow_mut()) {
        timers.push((deadline, Key::InnerOp(i.instance, track)));
    }
}

unsafe extern "C" fn cbi_subscribe(
    host: *mut c_void,
    _op: u32,
    desc: *const InnerDesc,
    _out: *mut InnerHandle,
) -> bool {
    // A higher-order operator inside an inner stream: refused, its env and value freed.
    // SAFETY: as in `inner_host`; `desc` is valid for the call and its env and value given up.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let (i, h) = inner_host(host);
        let d = &*desc;
        (d.drop_env)(d.env);
        if !d.value.is_null() {
            let _ = (d.value_drop)(d.value.cast::<u8>());
        }
        if let Ok(mut reg) = h.reg.try_borrow_mut() {
            reg.clear();
        }
        h.error_at(
            i.paths.first().cloned().unwrap_or_default(),
            "a higher-order operator inside an inner stream is not supported".to_owned(),
        );
    }));
    false
}

unsafe extern "C" fn cbi_unsubscribe(_host: *mut c_void, _op: u32, _instance: u64) {}

/// A higher-order operator inside an inner stream: subscribed the long way, which refuses it
/// (`cbi_subscribe`).
unsafe extern "C" fn cbi_subscribe_sync(
    _host: *mut c_void,
    _op: u32,
    _ops: *const plugin_api::abi::OpDesc,
    _sigs: *const RSignature,
    _n_ops: usize,
    _cx: *mut *const EmitCx,
    _memo: *mut u64,
) -> u64 {
    0
}

/// As `cbi_subscribe_sync`.
unsafe extern "C" fn cbi_subscribe_sync_again(
    _host: *mut c_void,
    _op: u32,
    _memo: u64,
    _cx: *mut *const EmitCx,
) -> u64 {
    0
}

unsafe extern "C" fn cb_publish(host: *mut c_void, op: u32, value: *const c_void) {
    // SAFETY: as in `cb_log`; `value` is the publisher's value, borrowed for the call.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let h = &*host.cast::<HostCx>();
        // Borrowed for the delivery, not cloned: a delivery never runs this pipeline's code
        // again while this call runs (a loop back into it is refused at registration, when an
        // inner subscription would close one, and at run time by its marked lock), and a
        // migration, the only writer, runs on this pipeline's own calls.
        let publish = h.publish.borrow();
        if let Some(Some((hub, item))) = publish.get(op as usize) {
            hub.deliver(&h.pipeline, value, item, &h.sink);
        }
    }));
}

/// The reload side of one pipeline: publishes new code for its [`Driver`].
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field(
                "generation",
                &self.shared.generation.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl Publisher {
    /// Drivers made from now on keep their last `n` inputs for a replay on reload (0: none;
    /// a `Runtime` sets what `--replay` says).
    pub fn keep_inputs(&self, n: usize) {
        self.shared.replay_inputs.store(n, Ordering::Relaxed);
    }

    /// A pipeline whose first code is `code`; pair it with a [`Driver`].
    pub fn new(code: PipelineCode) -> Publisher {
        Publisher {
            shared: Arc::new(Shared::new(code, None)),
        }
    }

    /// A pipeline whose drivers count emissions and answer state requests into `tally` (as
    /// with `--inspect`).
    pub fn inspected(code: PipelineCode, tally: Arc<PipelineTally>) -> Publisher {
        Publisher {
            shared: Arc::new(Shared::new(code, Some(tally))),
        }
    }

    /// Makes `code` current: one store, then a generation bump the driver sees at its next
    /// push. Never waits for the driver. Code and generation go together: whatever code a
    /// driver finds here was published (so reported) before it, never staged ahead of its
    /// report (staging is the reloader's business, see [`Runtime::launch`]).
    pub fn publish(&self, code: PipelineCode) {
        self.publish_shared(Arc::new(code));
    }

    fn publish_shared(&self, code: Arc<PipelineCode>) {
        self.shared.code.store(code);
        self.shared.generation.fetch_add(1, Ordering::Release);
        // A thread waiting for input takes the new code now rather than at its next value,
        // so an idle pipeline does not keep the old version live.
        let _ = self.shared.inbox.0.send(Msg::Wake);
    }

    /// The pipeline's newest committed code (a recording's tape names its sources with it,
    /// see [`crate::record::Recording::tape`]).
    pub fn code(&self) -> Arc<PipelineCode> {
        self.shared.code.load_full()
    }

    /// The driver for this pipeline, owning fresh, seeded state. Create it on the thread
    /// that will push.
    pub fn driver(&self, sink: Sink) -> Result<Driver, String> {
        Driver::new(self.shared.clone(), sink)
    }
}

/// The emission side of one pipeline: the code it runs, the state it owns, and the context
/// the plugin's callbacks report through. Used by one thread.
pub struct Driver {
    shared: Arc<Shared>,
    generation: u64,
    /// `code`'s single-value entry point and closures, and `states`' slot array, kept here so
    /// an emission reaches them without going through `code` (refreshed with it).
    hot: (PushOneFn, *const c_void, *const *mut u8),
    /// `code`'s single-value entry point for any port (`hot`'s is for port 0 only), and what
    /// each port takes: its wire type and, for a subject, the layout of its values. A value
    /// of that wire type (and layout), for a started driver whose code is current, goes
    /// straight in (see `Driver::push_checked`). Refreshed with `code`.
    entry: (PushOneFn, Vec<PortTakes>),
    code: Arc<PipelineCode>,
    states: StateSlots,
    /// Shared, not boxed: `cx.host` points into it, and moving an `Rc` (unlike a `Box`)
    /// asserts nothing about pointers taken from it.
    host: Rc<HostCx>,
    cx: EmitCx,
    /// Calls into plugin code begun plus finished (mirrored to `shared.calls`).
    calls: u64,
    /// Whether the chain was subscribed (`start` ran): once per driver.
    started: bool,
    /// Whether the chain's end completed: nothing more runs through it.
    done: bool,
    /// With the inspector on: its tally, and the counters `cx.counts` points into (held here
    /// so the pointer stays valid).
    tally: Option<(Arc<PipelineTally>, Arc<Counts>)>,
    /// The run-time registration API `cx.api` points at.
    _api: Box<HostApi>,
    /// Re-projections made for staged code (`Msg::Prepare`), by subscription: the version
    /// and the inner code, taken when the driver takes that version.
    prepared: BTreeMap<u64, (u64, Result<InnerCode, String>, bool)>,
    /// Subscriptions whose re-projection with a version panicked (subscription, version).
    projection_panics: BTreeSet<(u64, u64)>,
    /// A re-projection the driver applied had panicked: under `--on-panic error` the
    /// pipeline ends, as for any panic.
    pub(crate) reprojection_panicked: bool,
    /// The last inputs, for a replay on reload.
    recent: crate::replay::Recent,
    /// The subjects its inner subscriptions were subscribed to through its shared handle
    /// (`subscribe_asks`): what its thread unsubscribes it from when it ends.
    inner_hubs: Vec<Arc<Hub>>,
    /// Whether `code` has a higher-order operator: batches go in short runs (`push_runs`).
    inner_runs: bool,
    /// Bit `p` set when port `p` (below 64) of `code` takes `u64` values: the test of a
    /// `u64` pushed into a port (`push_checked`), refreshed with `entry`.
    u64_ports: u64,
}

// SAFETY: a driver's pointers (`hot`, `cx`) point into what it owns (its code, its slots,
// its `HostCx`), and its `Rc` is never cloned outside it, so moving the whole driver to
// another thread moves everything they point at with it. A driver is used by one thread at
// a time: its pipeline thread, or (for a pipeline reading a subject) whoever holds the lock
// it lives behind.
unsafe impl Send for Driver {}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("pipeline", &self.host.pipeline)
            .field("version", &self.code.version)
            .finish_non_exhaustive()
    }
}

impl Driver {
    fn new(shared: Arc<Shared>, sink: Sink) -> Result<Driver, String> {
        // Read the generation before the code: a publish in between is seen at the first push.
        let generation = shared.generation.load(Ordering::Acquire);
        let code = shared.code.load_full();
        let states = StateSlots::new(&code).map_err(|e| e.to_string())?;
        let host = Rc::new(HostCx {
            pipeline: code.name.clone(),
            census_name: Arc::from(&*code.name),
            version: Cell::new(code.version),
            paths: RefCell::new(Vec::new()),
            sink,
            publish: RefCell::new(Vec::new()),
            subjects: shared.subjects.clone(),
            clock: shared.clock.clone(),
            due: Cell::new(u64::MAX),
            tracks: RefCell::new(Vec::new()),
            timers: RefCell::new(Vec::new()),
            lib: RefCell::new(None),
            reg: RefCell::new(InnerReg::default()),
            api: Cell::new(std::ptr::null()),
            inners: RefCell::new(crate::inner::Inners::default()),
            graveyard: RefCell::new(Vec::new()),
            ctx_pool: RefCell::new(Vec::new()),
            sync_ctxs: RefCell::new(Vec::new()),
            sync_depth: Cell::new(0),
            passed: RefCell::new(None),
            sync_memos: RefCell::new(Vec::new()),
            next_inner: Cell::new(0),
            inner_ids_end: Cell::new(0),
            next_track: Cell::new(INNER_TRACKS),
            reprojecting: RefCell::new(None),
            reprojected: RefCell::new(None),
            starts: RefCell::new(Vec::new()),
            ended: RefCell::new(Vec::new()),
            census: shared.census.get().cloned(),
            tally: shared.tally.clone(),
            feeds: shared.feeds.get().cloned(),
            inbox: shared.inbox.0.clone(),
            hub_asks: RefCell::new(Vec::new()),
            shared: shared.clone(),
        });
        let api = Box::new(HostApi {
            abi_version: plugin_api::abi::ABI_VERSION,
            ctx: Rc::as_ptr(&host).cast_mut().cast::<c_void>(),
            track_call: cbr_track_call,
            track_call_return: cbr_track_call_return,
            add_pipeline: cbr_add_pipeline,
            fail: cbr_fail,
        });
        host.api.set(&raw const *api);
        host.set_code(&code);
        let tally = shared.tally.clone().map(|t| {
            let counts = t.counts_for(&code);
            (t, counts)
        });
        let cx = EmitCx {
            host: Rc::as_ptr(&host).cast_mut().cast::<c_void>(),
            log: cb_log,
            error: cb_error,
            publish: cb_publish,
            // `shared` is held by the driver, so the pointer outlives every call.
            current_op: &raw const shared.op,
            // Held by the driver (`tally`) and replaced only with the code, in `migrate`.
            counts: tally.as_ref().map_or(std::ptr::null(), |(_, c)| c.as_ptr()),
            marble: cb_marble,
            // Held by the driver (`tally`) for its life.
            marble_calls: tally
                .as_ref()
                .map_or(std::ptr::null(), |(t, _)| t.marble_calls()),
            now: cb_now,
            schedule: cb_schedule,
            subscribe: cb_subscribe,
            subscribe_sync: cb_subscribe_sync,
            subscribe_sync_again: cb_subscribe_sync_again,
            unsubscribe: cb_unsubscribe,
            api: &raw const *api,
        };
        shared.paths.store(Arc::new(host.op_paths()));
        let (push_one, env) = code.push_one_raw(tally.is_some());
        let push_one = if code.sources.first().map(SourceSpec::wire) == Some(Wire::U64) {
            push_one
        } else {
            refuse_one as PushOneFn
        };
        let calls = shared.calls.load(Ordering::Relaxed);
        let mut recent = crate::replay::Recent::new(shared.replay_inputs.load(Ordering::Relaxed));
        recent.set_code(&code);
        let entry = port_entry(&code, tally.is_some());
        let inner_runs = code.runs_inners();
        let u64_ports = u64_ports(&entry.1);
        Ok(Driver {
            hot: (push_one, env, states.as_ptr()),
            entry,
            shared,
            generation,
            code,
            states,
            host,
            cx,
            calls,
            started: false,
            done: false,
            tally,
            _api: api,
            prepared: BTreeMap::new(),
            projection_panics: BTreeSet::new(),
            reprojection_panicked: false,
            recent,
            inner_hubs: Vec::new(),
            inner_runs,
            u64_ports,
        })
    }

    /// With the inspector on, answers a pending request for the state texts. Called after
    /// each call into the plugin, on the thread that owns the slots: the only place where
    /// reading them cannot race a push. Without the inspector: one predictable branch.
    #[inline(always)]
    fn after_call(&mut self) {
        if let Some((t, _)) = &self.tally
            && t.wants_state()
        {
            self.answer_state();
        }
    }

    #[cold]
    fn answer_state(&mut self) {
        // The states' Debug impls are plugin code: a call the watchdog watches.
        self.shared.op.store(u32::MAX, Ordering::Relaxed);
        self.mark_call();
        let texts = self.state_texts();
        self.mark_call();
        if let Some((t, _)) = &self.tally {
            t.answer(texts);
        }
    }

    /// Each operator's path and its state's Debug text, read here, on the owning thread.
    fn state_texts(&mut self) -> Vec<(String, Option<String>)> {
        let texts = self.states.debug_texts(STATE_CAP);
        let paths = self.code.ops.iter().map(|o| o.path.clone());
        paths.zip(texts).collect()
    }

    /// Marks the start (odd) or the end (even) of a call into plugin code, for the watchdog.
    /// A plain store: only this thread writes the counter.
    #[inline(always)]
    fn mark_call(&mut self) {
        self.calls += 1;
        self.shared.calls.store(self.calls, Ordering::Relaxed);
    }

    /// The plugin version whose code the next push runs (after a refresh).
    pub fn version(&self) -> u64 {
        self.code.version
    }

    /// Takes the newest code if the generation moved: one atomic load when it did not.
    /// Otherwise migrates the state slots to the new code (see [`StateSlots::migrate`]).
    #[inline]
    fn refresh(&mut self) -> Result<(), String> {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g == self.generation {
            return Ok(());
        }
        self.migrate(g)
    }

    #[cold]
    fn migrate(&mut self, g: u64) -> Result<(), String> {
        let new = self.shared.code.load_full();
        // With the inspector on: the states as the old code left them.
        let before = self.tally.is_some().then(|| self.state_texts());
        let old = std::mem::replace(&mut self.states, StateSlots::empty());
        let (states, reset) = old.migrate(&new).map_err(|e| e.to_string())?;
        self.states = states;
        self.generation = g;
        self.host.set_code(&new);
        self.shared.paths.store(Arc::new(self.host.op_paths()));
        if let Some((t, counts)) = &mut self.tally {
            *counts = t.counts_for(&new);
            self.cx.counts = counts.as_ptr();
        }
        let (_, env) = new.push_one_raw(self.tally.is_some());
        self.hot = (self.port0_entry(&new), env, self.states.as_ptr());
        self.entry = port_entry(&new, self.tally.is_some());
        self.u64_ports = u64_ports(&self.entry.1);
        // The old code is dropped here if nothing else holds it (live inner subscriptions
        // keep their own version's library until re-projected; kept subject values move to
        // the new version's glue).
        self.inner_runs = new.runs_inners();
        self.code = new;
        self.recent.set_code(&self.code);
        if !self.host.inners.borrow().is_empty() {
            let lines = self.reproject(&reset);
            if !lines.is_empty() {
                self.host.sink.event(HostEvent::Notice {
                    pipeline: self.host.pipeline.clone(),
                    message: format!(
                        "re-projected {} inner subscription(s) with version {}: {}",
                        lines.len(),
                        self.code.version,
                        lines.join("; ")
                    ),
                });
            }
        }
        if let Some(before) = before {
            let after = self.state_texts();
            if let Some((t, _)) = &self.tally {
                t.record_migration(self.code.version, &before, &after, &reset);
            }
        }
        Ok(())
    }

    /// Runs `items` (values of port 0, a `u64` source) through the newest code. One
    /// emission (or batch) runs through exactly one version. Fails only when a state could
    /// not be seeded for new code.
    #[inline]
    pub fn push(&mut self, items: &[u64]) -> Result<Pushed, String> {
        self.push_port(0, items)
    }

    /// Runs `items` (values of `port`, a `u64` source) through the newest code.
    #[inline]
    pub fn push_port(&mut self, port: u32, items: &[u64]) -> Result<Pushed, String> {
        // The batch path does not say which operator it is in (see `EmitCx::current_op`):
        // a stuck batch is reported at the pipeline, not at a stale operator.
        self.shared.op.store(u32::MAX, Ordering::Relaxed);
        if self.done {
            return Ok(Pushed::Complete { consumed: 1 });
        }
        self.mark_call();
        let r = self.refresh().and_then(|()| {
            if self.code.sources.get(port as usize).map(SourceSpec::wire) != Some(Wire::U64) {
                return Err(format!("port {port} takes no u64 values"));
            }
            Ok(self.push_runs(port, items))
        });
        self.mark_call();
        self.after_call();
        match &r {
            Ok(
                Pushed::Complete { consumed }
                | Pushed::PortDone { consumed }
                | Pushed::Panicked { consumed },
            ) => {
                // Only what was taken: the caller pushes the rest again.
                self.recent
                    .keep_u64s(port, &items[..(*consumed).min(items.len())]);
            }
            Ok(_) => self.recent.keep_u64s(port, items),
            Err(_) => {}
        }
        self.note(&r);
        r
    }

    /// Notes a completion: the chain's end completed, so nothing more runs through it.
    #[inline(always)]
    fn note(&mut self, r: &Result<Pushed, String>) {
        if let Ok(Pushed::Complete { .. }) = r {
            self.done = true;
            self.hot.0 = completed_one;
        }
    }

    /// `push_one`'s entry point for `code`: the plugin's while port 0 takes `u64`s and the
    /// chain has not completed, else one of the host's that reads nothing.
    fn port0_entry(&self, code: &PipelineCode) -> PushOneFn {
        if self.done {
            completed_one
        } else if code.sources.first().map(SourceSpec::wire) == Some(Wire::U64) {
            code.push_one_raw(self.tally.is_some()).0
        } else {
            refuse_one
        }
    }

    /// Runs one value of port 0 (a `u64` source) through the newest code (a push
    /// source's emission).
    // Always inlined: the source loop calling it per value keeps the driver's fields in
    // registers; as a call it cost 1.8 ns a value more (BENCHMARKS.md, 2).
    #[inline(always)]
    pub fn push_one(&mut self, x: u64) -> Result<Pushed, String> {
        // `mark_call` twice, with the count in a register across the call (one store to
        // `self.calls` instead of two load-add-store chains through memory).
        let calls = self.calls;
        self.shared.calls.store(calls + 1, Ordering::Relaxed);
        let r = self.refresh().map(|()| {
            let (push_one, env, states) = self.hot;
            // SAFETY: `hot` holds the current code's entry point for port 0 and closures and
            // the slot array of `states`, built for that code (refreshed together in
            // `migrate`); `code` keeps the library live. The entry point is the plugin's only
            // while port 0 takes `u64`s and the chain has not completed; otherwise it is one of
            // the host's (`refuse_one`, `completed_one`), which read nothing. The plugin
            // catches its own panics.
            unsafe { push_one(env, states, 0, (&raw const x).cast::<c_void>(), &self.cx) }
        });
        // Nothing in between marks a call (a migration runs inside this one).
        debug_assert_eq!(self.calls, calls);
        self.calls = calls + 2;
        self.shared.calls.store(calls + 2, Ordering::Relaxed);
        self.after_call();
        match r {
            Ok(REFUSED) => Err(self.not_u64()),
            Ok(s) => {
                // Taken by the chain (or by a completed one, which takes nothing more and is
                // never replayed).
                self.recent.keep_u64(0, x);
                let p = Pushed::from_one(s);
                self.note(&Ok(p));
                Ok(p)
            }
            Err(e) => Err(e),
        }
    }

    /// The plugin's entry called with one wire value of `port` and nothing around it: no
    /// watchdog marks (a call stuck in it is not seen), no look for new code, nothing kept
    /// for a replay, no inspector answer, and the status returned as the plugin answered it,
    /// not noted (a completion leaves the driver believing the chain runs). Not a way to run
    /// a pipeline: a benchmark's floor, what [`Driver::push_one`]'s or a subject delivery's
    /// own work adds to the plugin's (BENCHMARKS.md, 2 and 11).
    ///
    /// # Safety
    /// `port` is a port of the driver's current code that takes values of `item`'s wire type
    /// (and layout, for a subject's), and `item` points at one, valid for the call: else the
    /// plugin reads memory as another type. Not memory safety but the caller's business
    /// too: the chain has started and not completed (pushing after a completion breaks the
    /// stream's rules), and the caller knows which code runs (the driver takes no new code
    /// here; a push through the driver's checked paths takes it).
    #[doc(hidden)]
    #[inline(always)]
    pub unsafe fn push_unguarded(&mut self, port: u32, item: *const c_void) -> u32 {
        debug_assert!(
            self.started && !self.done && (port as usize) < self.entry.1.len(),
            "push_unguarded into a chain not running, or a port it does not have"
        );
        let push = self.entry.0;
        let (_, env, states) = self.hot;
        // SAFETY: the current code's entry, closures and slots (refreshed together); the
        // rest is the caller's obligation.
        unsafe { push(env, states, port, item, &self.cx) }
    }

    /// Runs one value of `port`, a `u64` source (an interval's tick on any port), through
    /// the newest code: port 0 through [`Driver::push_one`], any other through `push_item`'s
    /// path, whose test of the port is then one bit of a mask (`u64_ports`) rather than the
    /// port's entry in the table.
    #[inline(always)]
    pub fn push_u64(&mut self, port: u32, x: u64) -> Result<Pushed, String> {
        if port == 0 {
            return self.push_one(x);
        }
        // SAFETY: `x` is a live `u64`, valid for the call.
        unsafe { self.push_item(port, Wire::U64, (&raw const x).cast()) }
    }

    #[cold]
    fn not_u64(&self) -> String {
        format!("port 0 of {} takes no u64 values", self.code.name)
    }

    /// Runs one wire value of `port` through the newest code, if the newest code's port
    /// takes values of `wire`; an `Err` otherwise.
    ///
    /// # Safety
    /// `item` must point at one initialised value of `wire`'s type (a `u64`, an `RStr`
    /// view, or a subject's value of the port's checked layout), valid for the call.
    #[inline(always)]
    pub unsafe fn push_item(
        &mut self,
        port: u32,
        wire: Wire,
        item: *const c_void,
    ) -> Result<Pushed, String> {
        // SAFETY: forwarded; no layout to check beyond the wire type.
        unsafe { self.push_checked(port, wire, item, None) }
    }

    /// Runs one subject value of `port` (a pointer to a value of the layout `item`
    /// describes, published to `subject`) through the newest code, if that code's port reads
    /// values of that layout; an `Err` naming both types otherwise (the value is not read).
    ///
    /// # Safety
    /// `value` must point at a pointer to a live value of `item`'s layout, both valid for the
    /// call.
    #[inline(always)]
    pub unsafe fn push_subject(
        &mut self,
        port: u32,
        value: *const c_void,
        item: &hmr_track::Fingerprint,
        subject: &str,
    ) -> Result<Pushed, String> {
        // SAFETY: forwarded; `push_checked` compares the layouts before the value is read.
        let r = unsafe { self.push_checked(port, Wire::Ptr, value, Some((item, subject))) };
        // Delivered on the publisher's thread: a timer it set is for the pipeline's own
        // thread, which may be waiting for its inbox.
        if !self.host.timers.borrow().is_empty() {
            let _ = self.shared.inbox.0.send(Msg::Wake);
        }
        r
    }

    /// # Safety
    /// As `push_item` (`layout`: `None`) and `push_subject`.
    #[inline(always)]
    unsafe fn push_checked(
        &mut self,
        port: u32,
        wire: Wire,
        item: *const c_void,
        layout: Option<(&hmr_track::Fingerprint, &str)>,
    ) -> Result<Pushed, String> {
        // The common case, with `prepare_push`'s checks folded into one test: a started, not
        // completed chain whose code is current and whose port takes `wire` (and, for a
        // subject's value, its layout). Anything else is prepared (or refused) first. A
        // `u64` (an interval's tick) is tested against one bit of `u64_ports`, a line or a
        // subject's value against the port's entry in the table (inlined, `wire` is a
        // constant of the caller's: one test or the other is compiled).
        let takes_it = if wire == Wire::U64 && layout.is_none() {
            port < 64 && self.u64_ports >> port & 1 == 1
        } else {
            let takes = PortTakes {
                wire,
                layout: layout.map(|(f, _)| (f.hash, f.size, f.align)),
            };
            self.entry.1.get(port as usize) == Some(&takes)
        };
        let direct = !self.done
            && self.started
            && self.shared.generation.load(Ordering::Acquire) == self.generation
            && takes_it;
        if !direct {
            // SAFETY: forwarded.
            return unsafe { self.push_prepared(port, wire, item, layout) };
        }
        // SAFETY: forwarded; the port takes `wire` (and the layout), checked above.
        unsafe { self.push_direct(port, wire, item, layout.map(|(_, s)| s)) }
    }

    /// `push_checked` when its one test fails, out of its way: the value goes in once
    /// `prepare_push` has made the driver ready for it, or is refused.
    ///
    /// # Safety
    /// As `push_checked`.
    #[cold]
    #[inline(never)]
    unsafe fn push_prepared(
        &mut self,
        port: u32,
        wire: Wire,
        item: *const c_void,
        layout: Option<(&hmr_track::Fingerprint, &str)>,
    ) -> Result<Pushed, String> {
        if let Some(refused) = self.prepare_push(port, wire, layout) {
            return refused;
        }
        // SAFETY: forwarded; `prepare_push` checked the port's wire type and layout.
        unsafe { self.push_direct(port, wire, item, layout.map(|(_, s)| s)) }
    }

    /// Runs `item` into `port` of the current code (keeps it, marks the call): the port is
    /// known to take it.
    ///
    /// # Safety
    /// As `push_checked`, and the driver's code current and its `port` taking `wire` values
    /// (of the subject's layout, for `Wire::Ptr`).
    #[inline(always)]
    unsafe fn push_direct(
        &mut self,
        port: u32,
        wire: Wire,
        item: *const c_void,
        subject: Option<&str>,
    ) -> Result<Pushed, String> {
        // `mark_call` twice, with the count in a register across the call (as `push_one`).
        let calls = self.calls;
        self.shared.calls.store(calls + 1, Ordering::Relaxed);
        let push_one = self.entry.0;
        let (_, env, states) = self.hot;
        // SAFETY: the current code's entry point and closures (refreshed with the code, whose
        // generation the caller checked or `prepare_push` took) and the slot array built for
        // it; the port takes `wire` values (and the layout): the caller's obligation.
        let s = unsafe { push_one(env, states, port, item, &self.cx) };
        debug_assert_eq!(self.calls, calls);
        self.calls = calls + 2;
        self.shared.calls.store(calls + 2, Ordering::Relaxed);
        self.after_call();
        // Kept after the call, as `push_one` keeps its value (the plugin only borrows it).
        // SAFETY: the caller's obligation: `item` points at one value of `wire`'s type (of
        // the port's layout, for a subject's), valid for the whole push.
        unsafe { self.keep(port, wire, item, subject) };
        let p = Pushed::from_one(s);
        self.note(&Ok(p));
        Ok(p)
    }

    /// What `push_checked` does when its one test fails: answers for a completed chain,
    /// starts the chain if it was not (a subject's publisher may deliver before the
    /// subscriber's own thread subscribed it: `start_with` comes first whoever runs it),
    /// takes new code, and says why the port does not take the value. `None`: the value
    /// goes in as on the direct path (the driver's `entry` is current again).
    #[cold]
    #[inline(never)]
    fn prepare_push(
        &mut self,
        port: u32,
        wire: Wire,
        layout: Option<(&hmr_track::Fingerprint, &str)>,
    ) -> Option<Result<Pushed, String>> {
        if self.done {
            return Some(Ok(Pushed::Complete { consumed: 1 }));
        }
        if !self.started {
            match self.start() {
                Ok(Pushed::Continue | Pushed::Panicked { .. }) => {}
                done => return Some(done),
            }
        }
        if let Err(e) = self.take_new_code() {
            return Some(Err(e));
        }
        let spec = self.code.sources.get(port as usize);
        if spec.map(SourceSpec::wire) != Some(wire) {
            return Some(Err(format!(
                "port {port} of {} does not take {wire:?} values",
                self.code.name
            )));
        }
        if let Some((published, subject)) = layout {
            let reads = spec.and_then(|s| s.item.as_ref());
            // The layout hash describes the type whole (names, offsets, fields).
            let same = reads.is_some_and(|r| {
                r.hash == published.hash && r.size == published.size && r.align == published.align
            });
            if !same {
                return Some(Err(format!(
                    "subject {subject:?}: a value of `{}` was not delivered: this version of {} \
                     reads `{}` (publisher and subscriber were reloaded apart)",
                    published.name,
                    self.code.name,
                    reads.map_or("nothing", |r| &*r.name)
                )));
            }
        }
        None
    }

    /// Keeps a value of `port` for a replay on reload: a `u64` or a line; a subject's value
    /// is not kept (the pipeline is then not replayed).
    ///
    /// # Safety
    /// `item` must point at one initialised value of `wire`'s type, valid for the call.
    #[inline(always)]
    unsafe fn keep(&mut self, port: u32, wire: Wire, item: *const c_void, subject: Option<&str>) {
        match wire {
            // SAFETY: the caller's obligation.
            Wire::U64 => self.recent.keep_u64(port, unsafe { *item.cast::<u64>() }),
            Wire::Str => {
                // SAFETY: the caller's obligation: a line view valid for the call.
                let line = unsafe { (*item.cast::<RStr>()).to_string_lossy() };
                self.recent.keep_line(port, &line.unwrap_or_default());
            }
            Wire::Ptr if self.recent.keeps() => {
                // SAFETY: the caller's obligation: `item` points at a pointer to a live value
                // of the port's layout (checked against the publisher's), which the ring
                // clones with the glue of the code it last took (`Recent::set_code`).
                let kept = unsafe {
                    self.recent
                        .keep_subject(port, *item.cast::<*const c_void>())
                };
                match kept {
                    Ok(()) => {}
                    Err(status) => self.recent.unkept(|| {
                        let why = if status == plugin_api::abi::clone_status::PANICKED {
                            "the Clone of one of its values panicked"
                        } else {
                            "its values cannot be kept"
                        };
                        format!("it reads subject {:?}: {why}", subject.unwrap_or(""))
                    }),
                }
            }
            Wire::Ptr => {}
        }
    }

    /// `Msg::Replay`: runs the recent inputs through the current code and through `new`
    /// (staged by a reload), each on a copy of the state, and says what changed. Nothing
    /// reaches the outside; the live state and code are untouched. Public for benches and
    /// other drivers; the runtime calls it on the pipeline's thread.
    pub fn replay(&mut self, new: &Arc<PipelineCode>) -> ReplayInfo {
        // Plugin code: a call the watchdog watches, at no operator in particular.
        self.shared.op.store(u32::MAX, Ordering::Relaxed);
        self.mark_call();
        let now = self.host.now_ns();
        let r = crate::replay::run(
            &self.code,
            &mut self.states,
            new,
            &self.recent,
            now,
            crate::replay::BUDGET,
        );
        self.mark_call();
        r
    }

    /// Tells the chain port 0's source completed; false if a user function panicked.
    pub fn complete(&mut self) -> Result<bool, String> {
        self.complete_port(0)
            .map(|p| !matches!(p, Pushed::Panicked { .. }))
    }

    /// Tells the chain source `port` completed.
    pub fn complete_port(&mut self, port: u32) -> Result<Pushed, String> {
        if self.done {
            return Ok(Pushed::Complete { consumed: 1 });
        }
        self.mark_call();
        let r = self
            .refresh()
            .map(|()| self.code.complete(&self.states, port, &self.cx));
        self.mark_call();
        self.recent.keep_complete(port);
        self.note(&r);
        if self.tally.is_some() {
            // Perhaps the last word of a completed pipeline: its final states stay readable.
            self.answer_state();
        }
        r
    }

    /// Subscribes the chain: `start_with` values are emitted here.
    pub fn start(&mut self) -> Result<Pushed, String> {
        if self.started {
            return Ok(Pushed::Continue);
        }
        self.started = true;
        self.mark_call();
        let r = self
            .refresh()
            .map(|()| self.code.start(&self.states, &self.cx));
        self.mark_call();
        self.after_call();
        self.note(&r);
        r
    }

    /// Runs `items` of `port` through the current code: at once, or, for a chain with a
    /// higher-order operator, `INNER_RUN` values a call with the inner subscriptions that
    /// ended freed between the calls. All through the one version the caller took.
    fn push_runs(&self, port: u32, items: &[u64]) -> Pushed {
        if !self.inner_runs || items.len() <= INNER_RUN {
            return self.code.push(&self.states, port, items, &self.cx);
        }
        let mut before = 0;
        for run in items.chunks(INNER_RUN) {
            if before != 0 {
                self.reap_dead();
            }
            match self.code.push(&self.states, port, run, &self.cx) {
                Pushed::Continue => before += run.len(),
                stopped => return stopped.after(before),
            }
        }
        Pushed::Continue
    }

    /// Live inner subscriptions (of higher-order operators).
    pub fn live_inners(&self) -> usize {
        self.host.inners.borrow().len()
    }

    /// Frees the inner subscriptions that ended during the last calls (their held outer
    /// values, slots and inner code). A subscription that ends inside a call is only moved
    /// aside then, since its env and slots may still be on the plugin's stack: whoever
    /// drives the driver calls this between calls (the pipeline thread does on each pass),
    /// or the ended subscriptions pile up.
    pub fn reap_inners(&self) {
        self.reap_dead();
        // The run of subscriptions passed inside the calls, told once the calls are done
        // (not between the runs of one batch: a run spans them).
        self.host.flush_passed();
    }

    /// Frees the inner subscriptions that ended (see [`Driver::reap_inners`]).
    fn reap_dead(&self) {
        // Between calls no inner stream runs inside one: every context lent for one is free
        // (the plugin's guard ended each). Reset in case one was not, so that the depth never
        // drifts towards the limit past which they all go the long way.
        debug_assert_eq!(
            self.host.sync_depth.get(),
            0,
            "a synchronous inner stream not ended"
        );
        self.host.sync_depth.set(0);
        if let Some(census) = &self.host.census {
            for dead in self.host.graveyard.borrow().iter() {
                let _ = census.send(Census::Ended {
                    pipeline: self.host.census_name.clone(),
                    id: dead.id,
                });
            }
        }
        let mut dead = std::mem::take(&mut *self.host.graveyard.borrow_mut());
        if dead.is_empty() {
            return;
        }
        // Dropped outside the borrow (a drop is plugin code), their callback contexts kept
        // for the next subscriptions; then the emptied vector goes back, so the next
        // subscription that ends does not allocate one.
        for inner in dead.drain(..) {
            let ctx = {
                let Inner { ctx, .. } = *inner;
                ctx
            };
            if let Ok(mut pool) = self.host.ctx_pool.try_borrow_mut()
                && pool.len() < CTX_POOL
            {
                pool.push(ctx);
            }
        }
        if let Ok(mut g) = self.host.graveyard.try_borrow_mut()
            && g.is_empty()
        {
            *g = dead;
        }
    }

    /// The subscriptions a re-projection restarted, to start now.
    pub(crate) fn take_starts(&self) -> Vec<u64> {
        std::mem::take(&mut *self.host.starts.borrow_mut())
    }

    /// The subscriptions a re-projection ended while their operator was kept, to tell it now.
    pub(crate) fn take_ended(&self) -> Vec<(u64, Id)> {
        std::mem::take(&mut *self.host.ended.borrow_mut())
    }

    /// Tells the higher-order operator on `op_track` that the host ended its subscription
    /// `id` (see `inner_kind::ENDED`): it counts it as ended (and may go on: `concat_map`'s
    /// next queued value, a completion).
    fn inner_ended(&mut self, id: u64, op_track: Id) -> Result<Pushed, String> {
        if self.done {
            return Ok(Pushed::Complete { consumed: 0 });
        }
        self.mark_call();
        let r = self.refresh().map(|()| {
            let Some(h) = self.code.ops.iter().position(|o| o.track == op_track) else {
                return Pushed::Continue;
            };
            let mut call = InnerCall {
                instance: id,
                env: std::ptr::null(),
                states: std::ptr::null(),
                cx: std::ptr::null(),
                kind: inner_kind::ENDED,
                port: 0,
                item: std::ptr::null(),
                op: 0,
                next: std::ptr::null(),
                answer: inner_answer::NONE,
            };
            match self
                .code
                .wake(&self.states, h as u32, Some(&mut call), &self.cx)
            {
                Pushed::PortDone { .. } => Pushed::Continue,
                p => p,
            }
        });
        self.mark_call();
        self.after_call();
        self.note(&r);
        r
    }

    /// Runs one event of inner subscription `id` through the newest code (nothing if it
    /// ended, or its operator is gone).
    fn inner_event(
        &mut self,
        id: u64,
        kind: u32,
        port: u32,
        item: *const c_void,
        op: u32,
    ) -> Result<Pushed, String> {
        self.inner_event_answer(id, kind, port, item, op).0
    }

    /// As `inner_event`, with whether the event's port answered that it is done.
    fn inner_event_answer(
        &mut self,
        id: u64,
        kind: u32,
        port: u32,
        item: *const c_void,
        op: u32,
    ) -> (Result<Pushed, String>, bool) {
        if self.done {
            return (Ok(Pushed::Complete { consumed: 0 }), false);
        }
        self.mark_call();
        let r = self.refresh().map(|()| {
            let found = self.host.inners.borrow().get(&id).map(|i| {
                (
                    i.op_track,
                    i.code.env.cast_const(),
                    i.slots.as_ptr(),
                    &raw const i.ctx.cx,
                )
            });
            let Some((op_track, env, states, cx)) = found else {
                return (Pushed::Continue, inner_answer::NONE);
            };
            let Some(h) = self.code.ops.iter().position(|o| o.track == op_track) else {
                return (Pushed::Continue, inner_answer::NONE);
            };
            // A stuck inner operator is named by its higher-order operator.
            self.shared.op.store(h as u32, Ordering::Relaxed);
            let mut call = InnerCall {
                instance: id,
                env,
                states,
                cx,
                kind,
                port,
                item,
                op,
                next: std::ptr::null(),
                answer: inner_answer::NONE,
            };
            let p = match self
                .code
                .wake(&self.states, h as u32, Some(&mut call), &self.cx)
            {
                Pushed::PortDone { .. } => Pushed::Continue,
                p => p,
            };
            (p, call.answer)
        });
        self.mark_call();
        self.after_call();
        let mut port_done = false;
        let r = r.map(|(p, answer)| {
            port_done = answer == inner_answer::PORT_DONE;
            if port_done
                && let Some(i) = self.host.inners.borrow_mut().get_mut(&id)
                && let Some(p) = i.ports.get_mut(port as usize)
            {
                *p = InnerPort::Done;
            }
            p
        });
        self.note(&r);
        (r, port_done)
    }

    /// Runs a value of inner subscription `id`'s `port` (`item` points at it: a line's view
    /// for `Wire::Str`; for a subject's value, a pointer to a value of `subject`'s layout),
    /// if that port of the subscription's current code takes it: a subscription restarted
    /// by a reload may read another source on that port now, and a value still on its way
    /// from the old one is dropped (a subject's, with an error: the publisher's code
    /// declared another type). `Pushed::PortDone` when the port answered it is done.
    ///
    /// # Safety
    /// `item` must point at a value of `wire`'s type (and, for `subject`, the pointer it
    /// holds at a live value of the fingerprint's layout), valid for the call.
    unsafe fn push_inner_checked(
        &mut self,
        id: u64,
        port: u32,
        wire: Wire,
        item: *const c_void,
        subject: Option<(&hmr_track::Fingerprint, &str)>,
    ) -> Result<Pushed, String> {
        if self.done {
            return Ok(Pushed::Complete { consumed: 0 });
        }
        // The newest code first: a migration re-projects (and may restart) the subscription,
        // which is plugin code (marked as a call, for the watchdog).
        self.mark_call();
        let fresh = self.refresh();
        self.mark_call();
        fresh?;
        let takes = {
            let inners = self.host.inners.borrow();
            let Some(inner) = inners.get(&id) else {
                return Ok(Pushed::Continue);
            };
            match (inner.code.sources.get(port as usize), subject) {
                (Some(s), None) => s.wire() == wire,
                (Some(s), Some((published, name))) => {
                    let same = s.kind == source_kind::SUBJECT
                        && s.text == name
                        && s.item.as_ref().is_some_and(|f| {
                            (f.hash, f.size, f.align)
                                == (published.hash, published.size, published.align)
                        });
                    if !same && s.kind == source_kind::SUBJECT && s.text == name {
                        return Err(format!(
                            "subject {name:?}: a value of `{}` was not delivered: {} reads `{}`",
                            published.name,
                            inner.path(),
                            s.item.as_ref().map_or("?", |f| &*f.name)
                        ));
                    }
                    same
                }
                (None, _) => false,
            }
        };
        if !takes {
            return Ok(Pushed::Continue);
        }
        match self.inner_event_answer(id, inner_kind::PUSH, port, item, 0) {
            (Ok(Pushed::Continue), true) => Ok(Pushed::PortDone { consumed: 1 }),
            (r, _) => r,
        }
    }

    /// Delivers a value published to `subject` to inner subscription `id`'s `port` (see
    /// `push_inner_checked`).
    ///
    /// # Safety
    /// As `push_subject`.
    #[inline(never)]
    pub(crate) unsafe fn push_inner_subject(
        &mut self,
        id: u64,
        port: u32,
        value: *const c_void,
        item: &hmr_track::Fingerprint,
        subject: &str,
    ) -> Result<Pushed, String> {
        // SAFETY: forwarded; the layouts are compared before the value is read.
        let r =
            unsafe { self.push_inner_checked(id, port, Wire::Ptr, value, Some((item, subject))) };
        if !self.host.timers.borrow().is_empty() {
            let _ = self.shared.inbox.0.send(Msg::Wake);
        }
        r
    }

    /// Whether inner subscriptions started by the last calls read subjects not subscribed
    /// yet (see `subscribe_asks`).
    #[inline(always)]
    pub(crate) fn has_hub_asks(&self) -> bool {
        self.shared.flags.load(Ordering::Relaxed) & flags::HUB_ASKS != 0
    }

    /// Inner subscription `id`'s interval on `port` is due at `due` (ns): its next value,
    /// and the deadline after it.
    fn inner_tick(&mut self, id: u64, port: u32, due: u64) -> Result<Pushed, String> {
        let x = {
            let mut inners = self.host.inners.borrow_mut();
            let Some(i) = inners.get_mut(&id) else {
                return Ok(Pushed::Continue);
            };
            let Some(InnerPort::Interval { period, n, next }) = i.ports.get_mut(port as usize)
            else {
                return Ok(Pushed::Continue);
            };
            // The timer of an interval a restart replaced (the same subscription and port):
            // its chain ends here, or the port would tick twice.
            if *next != due {
                return Ok(Pushed::Continue);
            }
            let x = *n;
            *n += 1;
            *next = due.saturating_add(period.as_nanos() as u64);
            self.host
                .timers
                .borrow_mut()
                .push((*next, Key::InnerPort(id, port)));
            x
        };
        self.inner_event(
            id,
            inner_kind::PUSH,
            port,
            (&raw const x).cast::<c_void>(),
            0,
        )
    }

    /// A timer of inner subscription `id`'s operator on `track` is due.
    fn inner_timer(&mut self, id: u64, track: Id) -> Result<Pushed, String> {
        let op = self
            .host
            .inners
            .borrow()
            .get(&id)
            .and_then(|i| i.op_of(track));
        match op {
            Some(op) => self.inner_event(id, inner_kind::WAKE, 0, std::ptr::null(), op),
            None => Ok(Pushed::Continue),
        }
    }

    /// Starts a subscription a re-projection restarted.
    fn inner_start(&mut self, id: u64) -> Result<Pushed, String> {
        self.inner_event(id, inner_kind::START, 0, std::ptr::null(), 0)
    }

    /// Runs the projection of `code`'s operator `h` on `inner`'s outer value: the new inner
    /// code, its operators under the subscription's path, with the live ones' tracks where
    /// the paths are the same.
    fn project_one(
        &mut self,
        code: &PipelineCode,
        h: usize,
        inner: &Inner,
    ) -> Result<InnerCode, String> {
        *self.host.reprojecting.borrow_mut() =
            Some((code.lib().clone(), code.ops[h].path.clone(), inner.path()));
        self.host.reprojected.borrow_mut().take();
        // SAFETY: the held value is of operator `h`'s input type (the caller checked that
        // the operator keeps its signature, input included).
        let st = unsafe { code.project(h as u32, inner.value.as_ptr(), &self.cx) };
        *self.host.reprojecting.borrow_mut() = None;
        if st == plugin_api::abi::status::PANICKED {
            self.projection_panics.insert((inner.id, code.version));
        }
        let projected = self.host.reprojected.borrow_mut().take();
        let mut new = match projected {
            Some(c) if st == plugin_api::abi::status::CONTINUE => c,
            _ => {
                return Err(format!(
                    "the new projection of {} failed",
                    inner.value.debug_text(200)
                ));
            }
        };
        for op in &mut new.ops {
            op.path = format!("{}|{}", inner.path(), op.path.trim_start_matches('|'));
        }
        self.host.assign_tracks(&mut new.ops, &inner.code.ops);
        Ok(new)
    }

    /// Whether `inner`'s higher-order operator keeps its state in `code`: its number there.
    fn keeps_operator(
        &self,
        code: &PipelineCode,
        inner: &Inner,
        reset: Option<&[String]>,
    ) -> Option<usize> {
        let h = code.ops.iter().position(|o| o.track == inner.op_track)?;
        let keeps = match reset {
            Some(reset) => !reset.contains(&code.ops[h].path),
            None => self
                .code
                .ops
                .iter()
                .find(|o| o.track == inner.op_track)
                .is_some_and(|old| code.ops[h].keeps_state_of(old)),
        };
        keeps.then_some(h)
    }

    /// What taking `new` would do to `inner`, given its re-projection `projected`.
    fn plan_one(inner: &Inner, projected: &InnerCode, plan: &mut InnerPlan) {
        if projected.sources != inner.code.sources {
            plan.reset
                .push((inner.path(), Self::restart_reason(inner, projected)));
            return;
        }
        for op in &projected.ops {
            match inner.code.ops.iter().find(|o| o.path == op.path) {
                Some(old) => match hmr_track::signature_change(&old.signature, &op.signature) {
                    None => plan.swapped += 1,
                    Some(why) => plan.reset.push((op.path.clone(), why)),
                },
                None => plan.added.push(op.path.clone()),
            }
        }
        for old in &inner.code.ops {
            if !projected.ops.iter().any(|o| o.path == old.path) {
                plan.removed.push(old.path.clone());
            }
        }
    }

    fn restart_reason(inner: &Inner, projected: &InnerCode) -> String {
        let old: Vec<&str> = inner.code.sources.iter().map(|s| &*s.label).collect();
        let new: Vec<&str> = projected.sources.iter().map(|s| &*s.label).collect();
        format!(
            "its source changed ({} -> {}); restarted from the new projection",
            old.join(", "),
            new.join(", ")
        )
    }

    /// `Msg::Prepare`: re-projects every live inner subscription with the staged code `new`
    /// (no value runs through it), keeps the results for when the driver takes `new`, and
    /// answers what that will do.
    pub(crate) fn prepare(&mut self, new: &Arc<PipelineCode>) -> InnerPlan {
        self.prepared.clear();
        let mut plan = InnerPlan::default();
        let ids = self.host.live_ids();
        self.mark_call();
        for id in ids {
            let Some(inner) = self.host.inners.borrow_mut().remove(&id) else {
                continue;
            };
            match self.keeps_operator(new, &inner, None) {
                None => {
                    plan.removed.push(inner.path());
                }
                Some(h) => {
                    let projected = self.project_one(new, h, &inner);
                    match &projected {
                        Ok(code) => {
                            Self::plan_one(&inner, code, &mut plan);
                            plan.projected.push((id, code.calls.clone()));
                        }
                        Err(_) => plan.removed.push(inner.path()),
                    }
                    // Applied as decided, failures included (not projected twice).
                    self.prepared.insert(id, (new.version, projected, true));
                }
            }
            let replaced = self.host.inners.borrow_mut().insert(id, inner);
            debug_assert!(replaced.is_none(), "inner subscription {id} put back twice");
        }
        self.mark_call();
        plan
    }

    /// The last `Msg::Prepare` answer was not taken by the reload: its re-projections are
    /// told in a notice when applied.
    pub(crate) fn untold(&mut self) {
        for (_, _, told) in self.prepared.values_mut() {
            *told = false;
        }
    }

    /// Re-projects every live inner subscription with the code just taken (see
    /// `inner.rs`), with what `Msg::Prepare` projected where it did (what the reload
    /// reported), projecting now otherwise: returns one line per subscription projected
    /// now, for a notice.
    fn reproject(&mut self, reset: &[String]) -> Vec<String> {
        self.shared.set_flag(flags::INNER_WORK);
        let ids = self.host.live_ids();
        let mut prepared = std::mem::take(&mut self.prepared);
        let version = self.code.version;
        let code = self.code.clone();
        let mut lines = Vec::new();
        for id in ids {
            let Some(mut inner) = self.host.inners.borrow_mut().remove(&id) else {
                continue;
            };
            let Some(h) = self.keeps_operator(&code, &inner, Some(reset)) else {
                lines.push(format!(
                    "{}: ended (its higher-order operator was reset or removed)",
                    inner.path()
                ));
                self.host.graveyard.borrow_mut().push(inner);
                continue;
            };
            let (new, told) = match prepared.remove(&id) {
                Some((v, c, told)) if v == version => (c, told),
                _ => (self.project_one(&code, h, &inner), false),
            };
            let new = match new {
                Ok(c) => c,
                Err(e) => {
                    if self.projection_panics.remove(&(id, version)) {
                        self.reprojection_panicked = true;
                    }
                    lines.push(format!("{}: ended ({e})", inner.path()));
                    self.host.ended.borrow_mut().push((id, inner.op_track));
                    self.host.graveyard.borrow_mut().push(inner);
                    continue;
                }
            };
            let line;
            if new.sources != inner.code.sources {
                match StateSlots::new_for(&new.ops, new.env, &new.lib) {
                    Ok(slots) => {
                        line = format!(
                            "{}: reset: {}",
                            inner.path(),
                            Self::restart_reason(&inner, &new)
                        );
                        inner.ports = self.host.start_ports(id, &new.sources);
                        inner.held = Vec::new();
                        inner.held = self
                            .host
                            .open_inner_sources(id, &new.sources, || inner.path());
                        // The old subjects' subscribers go first (the same hub may be
                        // subscribed again, at another port).
                        inner.hubs = Vec::new();
                        inner.hubs = self.host.link_subjects(id, &new.sources);
                        let old_slots = std::mem::replace(&mut inner.slots, slots);
                        drop(old_slots);
                        inner.code = new;
                        self.host.starts.borrow_mut().push(id);
                    }
                    Err(e) => {
                        lines.push(format!("{}: ended ({e})", inner.path()));
                        self.host.ended.borrow_mut().push((id, inner.op_track));
                        self.host.graveyard.borrow_mut().push(inner);
                        continue;
                    }
                }
            } else {
                let slots = std::mem::replace(&mut inner.slots, StateSlots::empty());
                match slots.migrate_to(&new.ops, new.env, &new.lib) {
                    Ok((slots, reset_ops)) => {
                        inner.slots = slots;
                        inner.code = new;
                        line = if reset_ops.is_empty() {
                            format!("{}: swapped", inner.path())
                        } else {
                            format!(
                                "{}: swapped; state reset (signature changed): {}",
                                inner.path(),
                                reset_ops.join(", ")
                            )
                        };
                    }
                    Err(e) => {
                        lines.push(format!("{}: ended ({e})", inner.path()));
                        self.host.ended.borrow_mut().push((id, inner.op_track));
                        self.host.graveyard.borrow_mut().push(inner);
                        continue;
                    }
                }
            }
            if !told {
                lines.push(line);
            }
            inner.ctx.host.paths = inner.code.ops.iter().map(|o| o.path.clone()).collect();
            inner.ctx.host.tracks = inner.code.ops.iter().map(|o| o.track).collect();
            inner.ctx.host.publishes.clear();
            inner
                .ctx
                .host
                .publishes
                .extend_from_slice(inner.code.publishes());
            if let Some(t) = &mut inner.tally {
                inner.ctx.cx.counts = t.recount(&inner.code.ops);
            }
            let replaced = self.host.inners.borrow_mut().insert(id, inner);
            debug_assert!(replaced.is_none(), "inner subscription {id} put back twice");
        }
        // Projections for subscriptions that ended since, or for another version: freed.
        drop(prepared);
        lines
    }

    /// Runs `f` with the time operators' clock reading `due` (see `HostCx::due`): what a
    /// pipeline thread does for an interval's tick and an operator's wake. Public for the
    /// benches, which drive a pipeline's timers this way without a thread (with
    /// [`Driver::take_timers`] and [`Driver::wake_track`]).
    #[inline]
    pub fn at_due<R>(&mut self, due: Instant, f: impl FnOnce(&mut Driver) -> R) -> R {
        self.host.due.set(crate::clock::to_ns(due));
        let r = f(self);
        self.host.due.set(u64::MAX);
        r
    }

    /// Moves the wakes asked for into `into`, as (deadline in ns of the clock, see
    /// [`crate::clock::to_ns`], and what is due); the caller runs each at its deadline
    /// through [`Driver::at_due`] (an operator's with [`Driver::wake_track`]), as the
    /// pipeline thread does.
    pub fn take_timers(&self, into: &mut Vec<(u64, Key)>) {
        if let Ok(mut t) = self.host.timers.try_borrow_mut()
            && !t.is_empty()
        {
            into.append(&mut t);
        }
    }

    /// A timer of the operator on `track` is due: runs that operator's wake in the newest
    /// code (after a migration, so what it emits runs through the new code downstream).
    /// Nothing runs if the newest code has no operator on that track.
    pub fn wake_track(&mut self, track: Id) -> Result<Pushed, String> {
        if self.done {
            return Ok(Pushed::Complete { consumed: 0 });
        }
        self.mark_call();
        let r = self.refresh().map(|()| {
            match self.code.ops.iter().position(|o| o.track == track) {
                Some(op) => match self.code.wake(&self.states, op as u32, None, &self.cx) {
                    // No port was fed: the status says nothing of one.
                    Pushed::PortDone { .. } => Pushed::Continue,
                    p => p,
                },
                None => Pushed::Continue,
            }
        });
        self.mark_call();
        self.after_call();
        self.note(&r);
        r
    }

    /// Takes the newest code now if it was published since the last call (a migration: the
    /// plugin's seeds and drops run, watched like any call), without running any value.
    pub fn take_new_code(&mut self) -> Result<(), String> {
        self.mark_call();
        let r = self.refresh();
        self.mark_call();
        r
    }

    /// After a delivery on another thread (a subject's publisher), which holds the driver
    /// between calls now, when a call ended an inner subscription or a re-projection ran:
    /// frees the subscriptions that ended (their hub subscribers with them: a pipeline fed
    /// only by subjects may not run its own thread for a long time), and wakes the
    /// pipeline's thread for what only it runs (a subscription a re-projection restarted or
    /// ended, to start or to tell).
    #[cold]
    fn after_inner_work(&self) {
        self.reap_inners();
        let pending = !self.host.starts.borrow().is_empty() || !self.host.ended.borrow().is_empty();
        if pending {
            match &self.shared.clock {
                Clock::Virtual(v) => v.poke(&self.shared.inbox.0, &self.shared.pokes),
                Clock::System => {
                    let _ = self.shared.inbox.0.send(Msg::Wake);
                }
            }
        }
    }

    /// Under a virtual clock, after a delivery on another thread (a subject's publisher):
    /// if it set a timer, pokes this pipeline's thread so `settle` waits until it took it.
    pub(crate) fn poke_if_timers(&self) {
        if let Clock::Virtual(v) = &self.shared.clock
            && !self.host.timers.borrow().is_empty()
        {
            v.poke(&self.shared.inbox.0, &self.shared.pokes);
        }
    }

    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        &self.host.pipeline
    }

    /// The number of ports of the code it runs.
    pub fn ports(&self) -> usize {
        self.code.sources.len()
    }

    pub(crate) fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }
}

/// What a port takes, as a push compares it: its wire type and, for a subject, the layout
/// of its values (hash, size, align).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PortTakes {
    wire: Wire,
    layout: Option<(u64, u64, u64)>,
}

/// The ports of `takes` below 64 that take `u64` values, as bits.
fn u64_ports(takes: &[PortTakes]) -> u64 {
    takes
        .iter()
        .take(64)
        .enumerate()
        .filter(|(_, t)| t.wire == Wire::U64)
        .fold(0, |bits, (p, _)| bits | 1 << p)
}

/// `code`'s entry point for any port and what each port takes (see `Driver::entry`).
fn port_entry(code: &PipelineCode, counted: bool) -> (PushOneFn, Vec<PortTakes>) {
    let takes = code
        .sources
        .iter()
        .map(|s| {
            let wire = s.wire();
            let layout = s
                .item
                .as_ref()
                .filter(|_| wire == Wire::Ptr)
                .map(|f| (f.hash, f.size, f.align));
            PortTakes { wire, layout }
        })
        .collect();
    (code.push_one_raw(counted).0, takes)
}

/// Where a pipeline thread's driver lives: on the thread, or behind the lock it shares with
/// the threads publishing to the subjects it reads (as a pipeline's source, or inside an
/// inner subscription's stream).
enum DriverCell {
    Local(Box<Driver>, PanicPolicy),
    /// With the subscriptions that aim at it, undone when the thread ends.
    Locked(Subscription),
    /// Never seen outside `DriverCell::lock_up`.
    Moving,
}

impl DriverCell {
    #[inline]
    fn with<R>(&mut self, f: impl FnOnce(&mut Driver) -> R) -> R {
        let (r, asked) = match self {
            DriverCell::Local(d, _) => {
                let r = f(d);
                (r, d.has_hub_asks())
            }
            DriverCell::Locked(s) => {
                let mut d = s.driver.lock_as(thread_tag());
                let r = f(&mut d);
                if d.has_hub_asks() {
                    subscribe_asks(&mut d, &s.driver, &s.shared, s.policy);
                }
                (r, false)
            }
            DriverCell::Moving => unreachable!("a driver cell is never used while it moves"),
        };
        if asked {
            self.lock_up();
        }
        r
    }

    /// A driver on the thread whose inner subscriptions now read a subject: moved behind a
    /// lock (publishers deliver on their threads from now on), and subscribed.
    #[cold]
    fn lock_up(&mut self) {
        let DriverCell::Local(d, policy) = std::mem::replace(self, DriverCell::Moving) else {
            unreachable!("only a local driver is locked up");
        };
        let shared = d.shared.clone();
        // SAFETY (of the move): a driver moves whole (see its `Send`): its pointers point
        // into what it owns or into its `Rc`'d `HostCx`.
        let sub = Subscription {
            hubs: Vec::new(),
            driver: Arc::new(SharedDriver::new(*d)),
            shared,
            policy,
        };
        {
            let mut d = sub.driver.lock_as(thread_tag());
            subscribe_asks(&mut d, &sub.driver, &sub.shared, policy);
        }
        *self = DriverCell::Locked(sub);
    }
}

/// Makes the hub subscribers that inner subscriptions started by the last calls asked for
/// (`HostCx::link_subjects`), aimed at the driver `d` through its shared handle `driver`:
/// called by whoever holds the driver after a call (its pipeline's thread, a publisher's
/// delivery). A subscription that ended meanwhile, or restarted reading another source on
/// that port, is not subscribed.
/// After a delivery into `d` whose pipeline's flags are set: its inner subscriptions' hub
/// asks subscribed, what they left to do done (see `Driver::after_inner_work`).
#[cold]
#[inline(never)]
pub(crate) fn after_inner_delivery(
    d: &mut Driver,
    driver: &Arc<SharedDriver>,
    shared: &Arc<Shared>,
    policy: PanicPolicy,
) {
    if d.has_hub_asks() {
        subscribe_asks(d, driver, shared, policy);
    }
    if shared.flags.load(Ordering::Relaxed) & flags::INNER_WORK != 0 {
        shared.clear_flag(flags::INNER_WORK);
        d.after_inner_work();
    }
}

#[cold]
#[inline(never)]
pub(crate) fn subscribe_asks(
    d: &mut Driver,
    driver: &Arc<SharedDriver>,
    shared: &Arc<Shared>,
    policy: PanicPolicy,
) {
    d.shared.clear_flag(flags::HUB_ASKS);
    let asks = std::mem::take(&mut *d.host.hub_asks.borrow_mut());
    if d.shared.detached() {
        return;
    }
    for (hub, id, port) in asks {
        let live = d.host.inners.borrow().get(&id).and_then(|i| {
            i.code
                .sources
                .get(port as usize)
                .is_some_and(|s| s.kind == source_kind::SUBJECT && s.text == hub.name())
                .then(|| format!("{}|#{id}:inner", i.op_path))
        });
        let Some(path) = live else {
            continue;
        };
        hub.subscribe(
            &d.host.pipeline,
            path,
            crate::subjects::Target::Inner(id, port),
            driver.clone(),
            shared.clone(),
            policy,
        );
        if !d.inner_hubs.iter().any(|h| Arc::ptr_eq(h, &hub)) {
            d.inner_hubs.push(hub);
        }
    }
}

/// What a pipeline thread does for one port.
enum PortRun {
    /// `interval_ms`: its period and next value (its deadline is in the thread's timers).
    Interval { period: Duration, n: u64 },
    /// `range`, `of`: the values `next..end`, pushed in batches.
    Batch { next: u64, end: u64 },
    /// Fed through the inbox (lines) or by publishers (subjects).
    Fed,
    /// Completed.
    Done,
}

/// A restarted pipeline's old inbox and the ports its taken-over sources moved from and to.
///
/// The new thread takes the taken-over sources' messages from the old inbox and sends every
/// other one back (a wake, a poke, a question: the old thread's, which may still be waiting
/// for them). Left out, the wake that tells the old thread to stop could be the new thread's
/// to drop: the old one then slept to its next deadline (an hour, for an hourly interval),
/// its inner subscriptions alive in the tracking store meanwhile.
type Handover = ((Sender<Msg>, Receiver<Msg>), Vec<(u32, u32)>);

/// What a restarted pipeline's new thread takes from the old thread's inbox (see
/// [`Handover`]): the taken-over sources' messages, on their new ports, in order. Every other
/// message goes back to the old inbox.
fn take_over(((old_tx, old), moved): Handover) -> std::collections::VecDeque<Msg> {
    let new_port = |p: u32| moved.iter().find(|(o, _)| *o == p).map(|(_, n)| *n);
    // All taken before any is sent back (`try_iter` would see those again).
    let msgs: Vec<Msg> = old.try_iter().collect();
    let mut taken = std::collections::VecDeque::new();
    for m in msgs {
        let moved = match &m {
            Msg::Line(p, _) | Msg::Complete(p) | Msg::Error(p, _) | Msg::Notice(p, _) => {
                new_port(*p)
            }
            Msg::Wake
            | Msg::Prepare(..)
            | Msg::Replay(..)
            | Msg::InnerLine(..)
            | Msg::InnerComplete(..)
            | Msg::Poke => None,
        };
        match (m, moved) {
            (Msg::Line(_, l), Some(n)) => taken.push_back(Msg::Line(n, l)),
            (Msg::Complete(_), Some(n)) => taken.push_back(Msg::Complete(n)),
            (Msg::Error(_, e), Some(n)) => taken.push_back(Msg::Error(n, e)),
            (Msg::Notice(_, e), Some(n)) => taken.push_back(Msg::Notice(n, e)),
            // A source's message of a port that did not go over, or the old thread's.
            (m, _) => {
                let _ = old_tx.send(m);
            }
        }
    }
    taken
}

/// A subject reader's subscriptions, made by its thread once its chain started; undone
/// when the thread ends.
struct Subscription {
    hubs: Vec<(Arc<Hub>, u32)>,
    driver: Arc<SharedDriver>,
    shared: Arc<Shared>,
    policy: PanicPolicy,
}

impl Subscription {
    fn subscribe(&self) {
        let name = self.shared.name();
        for (hub, port) in &self.hubs {
            hub.subscribe(
                &name,
                name.clone(),
                crate::subjects::Target::Port(*port),
                self.driver.clone(),
                self.shared.clone(),
                self.policy,
            );
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Under the driver's lock (the order every delivery takes: driver, then a hub's
        // edit lock), so no delivery in between subscribes an inner subscription anew: a
        // hub's subscriber holds the driver, which holds the hub.
        let mut d = self.driver.lock();
        d.shared.set_flag(flags::DETACHED);
        for (hub, _) in &self.hubs {
            hub.unsubscribe_driver(&self.driver);
        }
        // Its inner subscriptions' subjects too.
        let inner = std::mem::take(&mut d.inner_hubs);
        for hub in inner {
            hub.unsubscribe_driver(&self.driver);
        }
    }
}

/// How a pipeline thread goes on after a push.
enum Step {
    Go,
    End(Ended),
}

/// What a pipeline thread's deadline is for: an interval's next tick (by port), or a timer
/// (the order it was asked for, and what it is for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Port(u32),
    Timer(u64, Key),
    /// A replayed value that runs after the timers due at its instant.
    Replay,
}

/// How many of `n` values a batch push took: all, or up to the one that completed the
/// chain or the port or panicked (the rest is pushed again, or not at all).
fn batch_taken(r: &Result<Pushed, String>, n: usize) -> usize {
    match r {
        Ok(Pushed::Continue) => n,
        Ok(
            Pushed::Complete { consumed }
            | Pushed::Panicked { consumed }
            | Pushed::PortDone { consumed },
        ) => *consumed,
        Err(_) => 0,
    }
}

/// When a pipeline was launched, and its registration with a virtual clock.
struct LaunchTime {
    /// The clock's time at the launch: its intervals' first ticks.
    start: Instant,
    ticket: Option<crate::clock::Ticket>,
}

/// A pipeline's thread: runs its `u64` sources itself (intervals on their deadlines,
/// ranges in batches) and takes what host sources send to its inbox (lines), until every
/// port is done, the pipeline completes, or the host stops it.
fn run_pipeline(
    shared: &Arc<Shared>,
    sink: &Sink,
    policy: PanicPolicy,
    subscribe: Vec<(Arc<Hub>, u32)>,
    time: LaunchTime,
    handover: Option<Handover>,
    hook: crate::record::Hook,
) -> Ended {
    let LaunchTime { start, ticket } = time;
    use crate::record::{Hook, What};
    let (tape, mut script) = match hook {
        Hook::Off => (None, None),
        Hook::Record(t) => (Some(t), None),
        Hook::Replay(s) => (None, Some(s)),
    };
    let name = shared.name();
    let report = |e: String| {
        sink.event(HostEvent::Error {
            path: name.clone(),
            pipeline: name.clone(),
            message: e,
        });
        Ended::Errored
    };
    let driver = match Driver::new(shared.clone(), sink.clone()) {
        Ok(d) => d,
        Err(e) => return report(e),
    };
    // A subject reader's driver is shared with its publishers' threads, behind a lock; the
    // guard unsubscribes it when this thread ends, so its last reference (and the plugin's
    // drops it runs) stays on this thread.
    let mut cell = if subscribe.is_empty() {
        DriverCell::Local(Box::new(driver), policy)
    } else {
        DriverCell::Locked(Subscription {
            hubs: subscribe,
            driver: Arc::new(SharedDriver::new(driver)),
            shared: shared.clone(),
            policy,
        })
    };
    let sources = cell.with(|d| d.code.sources.clone());
    let clock = shared.clock.clone();
    let mut ports: Vec<PortRun> = sources
        .iter()
        .map(|s| match s.kind {
            source_kind::INTERVAL => PortRun::Interval {
                period: Duration::from_millis(s.a.max(1)),
                n: 0,
            },
            source_kind::RANGE => PortRun::Batch {
                next: s.a,
                end: s.b,
            },
            source_kind::OF => PortRun::Batch { next: 0, end: s.a },
            _ => PortRun::Fed,
        })
        .map(|p| if script.is_some() { PortRun::Fed } else { p })
        .collect();
    // The intervals' deadlines and the operators' timers, earliest first (ties: intervals
    // by port, then operators' timers in the order they were asked for).
    let mut timers: BinaryHeap<Reverse<(Instant, Due)>> = ports
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p, PortRun::Interval { .. }))
        .map(|(i, _)| Reverse((start, Due::Port(i as u32))))
        .collect();
    // A replay's next value waits in the heap at its time, as an interval's tick does.
    let replay_due = |s: &crate::record::Script| {
        s.next_due().map(|(at, before, port)| {
            Reverse((at, if before { Due::Port(port) } else { Due::Replay }))
        })
    };
    if let Some(next) = script.as_ref().and_then(replay_due) {
        timers.push(next);
    }
    // Operators' timers: how many were asked for (their order), and a buffer to take them in.
    let mut asked = 0u64;
    let mut taken: Vec<(u64, Key)> = Vec::new();
    // Operator timers in the heap (a pipeline waits for them before it counts as done).
    let mut op_timers = 0usize;
    // The heap's length past which the timers of ended inner subscriptions are dropped from
    // it (see below); doubled from what is left after each sweep, so sweeps cost O(1) a timer.
    let mut sweep_at = TIMER_SWEEP_MIN;
    let mut produced = 0u64;
    let mut first: Option<Instant> = None;
    let completed = |produced: u64, first: Option<Instant>| {
        sink.event(HostEvent::Completed {
            pipeline: name.clone(),
            emissions: produced,
            elapsed_us: first.map_or(0, |t| t.elapsed().as_micros() as u64),
        });
        Ended::Completed
    };
    // What one push's outcome means for the port and the pipeline.
    let outcome = |r: Result<Pushed, String>, port: &mut PortRun| -> Result<Step, String> {
        match r? {
            Pushed::Continue => Ok(Step::Go),
            Pushed::Complete { .. } => Ok(Step::End(Ended::Completed)),
            Pushed::PortDone { .. } => {
                *port = PortRun::Done;
                Ok(Step::Go)
            }
            Pushed::Panicked { .. } if policy == PanicPolicy::Error => {
                Ok(Step::End(Ended::Errored))
            }
            Pushed::Panicked { .. } => Ok(Step::Go),
        }
    };
    macro_rules! step {
        ($r:expr, $port:expr) => {
            match outcome($r, $port) {
                Ok(Step::Go) => {}
                Ok(Step::End(Ended::Completed)) => return completed(produced, first),
                Ok(Step::End(e)) => return e,
                Err(e) => return report(e),
            }
        };
    }
    let mut begun = PortRun::Fed;
    step!(cell.with(|d| d.start()), &mut begun);
    // Subscribed: now the publishers may deliver (its `start_with` came first).
    if let DriverCell::Locked(s) = &cell {
        s.subscribe();
    }
    let rx = shared.inbox.1.clone();
    let mut buf = [0u64; BATCH];
    let mut pending: Option<Msg> = None;
    // Pokes handled since the thread last went idle (under a virtual clock).
    let mut pokes = 0u64;
    // What the sources taken over from a restarted pipeline sent to its old thread and it
    // did not take: first, on their new ports.
    let mut backlog = handover.map(take_over).unwrap_or_default();
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return Ended::Stopped;
        }
        // A delivery from a publisher's thread may have ended the pipeline.
        match ended_from(shared.ended.load(Ordering::Acquire)) {
            Ended::Running => {}
            e => return e,
        }
        // 1. What host sources sent (a bounded number, so timers and batches get their turn).
        for _ in 0..BATCH {
            if shared.stop.load(Ordering::Acquire) {
                // Told to stop: what is left is for the pipeline's next start, if any.
                return Ended::Stopped;
            }
            let Some(msg) = pending
                .take()
                .or_else(|| backlog.pop_front())
                .or_else(|| rx.try_recv().ok())
            else {
                break;
            };
            match msg {
                Msg::Line(port, line) => {
                    let Some(p) = ports.get_mut(port as usize) else {
                        continue;
                    };
                    if matches!(p, PortRun::Done) {
                        continue;
                    }
                    first.get_or_insert_with(Instant::now);
                    produced += 1;
                    // Its time is when it is taken, before the push.
                    let at = tape.as_ref().map(|t| t.now());
                    let view = RStr::new(&line);
                    // SAFETY: a line port takes `RStr` views (checked against the newest
                    // code's port by `push_item`); `view` outlives the call.
                    let r = cell.with(|d| unsafe {
                        d.push_item(port, Wire::Str, (&raw const view).cast::<c_void>())
                    });
                    if let (Some(t), Some(at)) = (&tape, at) {
                        t.line(port, at, line);
                    }
                    step!(r, p);
                }
                Msg::Complete(port) => {
                    let Some(p) = ports.get_mut(port as usize) else {
                        continue;
                    };
                    if matches!(p, PortRun::Done) {
                        continue;
                    }
                    if let Some(t) = &tape {
                        t.complete(port, t.now());
                    }
                    let r = cell.with(|d| d.complete_port(port));
                    *p = PortRun::Done;
                    step!(r, p);
                }
                Msg::Error(_, message) => sink.event(HostEvent::Error {
                    pipeline: name.clone(),
                    path: name.clone(),
                    message,
                }),
                Msg::Notice(_, message) => sink.event(HostEvent::Notice {
                    pipeline: name.clone(),
                    message,
                }),
                Msg::InnerLine(id, port, line) => {
                    let view = RStr::new(&line);
                    // SAFETY: `view` is a line's view, valid for the call; it runs only if
                    // the port reads lines.
                    let r = cell.with(|d| unsafe {
                        d.push_inner_checked(
                            id,
                            port,
                            Wire::Str,
                            (&raw const view).cast::<c_void>(),
                            None,
                        )
                    });
                    step!(r, &mut PortRun::Fed);
                }
                Msg::InnerComplete(id, port) => {
                    let r = cell.with(|d| {
                        d.inner_event(id, inner_kind::COMPLETE, port, std::ptr::null(), 0)
                    });
                    step!(r, &mut PortRun::Fed);
                }
                Msg::Replay(code, answer) => {
                    // Muted: what it finds is the reload's to report, or nobody's. A panic of
                    // the host's own code in it is reported there, and the pipeline runs on.
                    let replayed =
                        catch_unwind(AssertUnwindSafe(|| cell.with(|d| d.replay(&code))))
                            .unwrap_or_else(|p| {
                                crate::replay::not_replayed(
                                    &code.name,
                                    format!(
                                        "the replay failed: {}",
                                        crate::session::panic_text(&*p)
                                    ),
                                )
                            });
                    let _ = answer.send(replayed);
                }
                Msg::Prepare(code, answer) => {
                    let plan = cell.with(|d| d.prepare(&code));
                    // Not taken (the reload stopped waiting): what was prepared is applied
                    // all the same, and told in a notice instead.
                    if answer.send(plan).is_err() {
                        cell.with(|d| d.untold());
                    }
                }
                Msg::Poke => pokes += 1,
                Msg::Wake => {
                    // New code may have been published: take it even if no value comes.
                    if let Err(e) = cell.with(|d| d.take_new_code()) {
                        return report(e);
                    }
                }
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return Ended::Stopped;
        }
        // 2. Inner subscriptions a reload restarted: their start and synchronous sources.
        for id in cell.with(|d| d.take_starts()) {
            let r = cell.with(|d| d.inner_start(id));
            step!(r, &mut PortRun::Fed);
        }
        // Those it ended while their operator was kept: the operator is told.
        for (id, track) in cell.with(|d| d.take_ended()) {
            let r = cell.with(|d| d.inner_ended(id, track));
            step!(r, &mut PortRun::Fed);
        }
        // 3. Intervals and timers that are due.
        let epoch = ticket.as_ref().map(|t| t.epoch());
        let now = clock.now();
        // Earliest deadline first, one at a time, so intervals and timers interleave as their
        // deadlines do however late this thread runs.
        let next_due = loop {
            // The wakes asked for by the calls so far (a timer due now runs in this pass).
            let reprojection_panicked = cell.with(|d| {
                d.take_timers(&mut taken);
                d.reap_inners();
                let live = d.live_inners();
                d.shared.live_inners.store(live, Ordering::Release);
                std::mem::take(&mut d.reprojection_panicked)
            });
            // A panic in a re-projection (reported at its operator) is a panic like any.
            if reprojection_panicked && policy == PanicPolicy::Error {
                return Ended::Errored;
            }
            for (deadline, key) in taken.drain(..) {
                // A deadline past `Instant`'s range never comes.
                if let Some(at) = crate::clock::from_ns(deadline) {
                    timers.push(Reverse((at, Due::Timer(asked, key))));
                    asked += 1;
                    op_timers += 1;
                }
            }
            // An ended inner subscription's timers (its interval's next tick, its operators'
            // wakes) would wait in the heap until their deadlines, doing nothing then: a fast
            // outer stream with long inner periods would grow it without bound. Dropped once
            // the heap has doubled since the last sweep.
            if timers.len() > sweep_at {
                let before = timers.len();
                cell.with(|d| {
                    let inners = d.host.inners.borrow();
                    timers.retain(|Reverse((_, due))| match due {
                        Due::Timer(_, Key::InnerPort(id, _) | Key::InnerOp(id, _)) => {
                            inners.contains_key(id)
                        }
                        _ => true,
                    });
                });
                op_timers -= before - timers.len();
                sweep_at = (2 * timers.len()).max(TIMER_SWEEP_MIN);
            }
            shared.timers_held.store(timers.len(), Ordering::Relaxed);
            let Some(&Reverse((due, what))) = timers.peek() else {
                break None;
            };
            if due > now {
                break Some(due);
            }
            timers.pop();
            let port = match what {
                Due::Port(_) | Due::Replay if script.is_some() => {
                    let s = script.as_mut().expect("matched above");
                    let Some(item) = s.take() else {
                        continue;
                    };
                    if let Some(next) = replay_due(s) {
                        timers.push(next);
                    }
                    let port = item.port;
                    let p = &mut ports[port as usize];
                    if matches!(p, PortRun::Done) {
                        continue;
                    }
                    first.get_or_insert_with(Instant::now);
                    match item.what {
                        What::Tick(x) => {
                            produced += 1;
                            let r = cell.with(|d| d.at_due(due, |d| d.push_u64(port, x)));
                            step!(r, p);
                        }
                        What::Line(line) => {
                            produced += 1;
                            let view = RStr::new(&line);
                            let r = cell.with(|d| {
                                // SAFETY: a line port takes `RStr` views (checked by
                                // `push_item`); `view` outlives the call.
                                d.at_due(due, |d| unsafe {
                                    d.push_item(port, Wire::Str, (&raw const view).cast())
                                })
                            });
                            step!(r, p);
                        }
                        What::Complete => {
                            let r = cell.with(|d| d.at_due(due, |d| d.complete_port(port)));
                            *p = PortRun::Done;
                            step!(r, p);
                        }
                        What::Values(values) => {
                            // As a live batch goes: what a panic left is pushed again.
                            let mut items = &values[..];
                            while !items.is_empty() {
                                let r = cell.with(|d| d.at_due(due, |d| d.push_port(port, items)));
                                let taken = batch_taken(&r, items.len());
                                produced += taken as u64;
                                let port_done = matches!(r, Ok(Pushed::PortDone { .. }));
                                step!(r, p);
                                if port_done {
                                    break;
                                }
                                items = &items[taken.min(items.len())..];
                            }
                        }
                    }
                    if shared.stop.load(Ordering::Acquire) {
                        return Ended::Stopped;
                    }
                    continue;
                }
                Due::Port(port) => port,
                Due::Replay => continue,
                Due::Timer(_, key) => {
                    op_timers -= 1;
                    let ns = crate::clock::to_ns(due);
                    let r = cell.with(|d| {
                        d.at_due(due, |d| match key {
                            Key::Op(track) => d.wake_track(track),
                            Key::InnerOp(id, track) => d.inner_timer(id, track),
                            Key::InnerPort(id, port) => d.inner_tick(id, port, ns),
                        })
                    });
                    step!(r, &mut PortRun::Fed);
                    if shared.stop.load(Ordering::Acquire) {
                        return Ended::Stopped;
                    }
                    continue;
                }
            };
            let p = &mut ports[port as usize];
            // A port that ended (its stream completed) keeps no timer.
            let PortRun::Interval { period, n } = p else {
                continue;
            };
            first.get_or_insert_with(Instant::now);
            produced += 1;
            let x = *n;
            *n += 1;
            // The next tick is one period after this one was due: no drift, and no
            // overflow for any period (a schedule beyond `Instant`'s range stops it).
            let next = match due.checked_add(*period) {
                Some(next) => {
                    timers.push(Reverse((next, Due::Port(port))));
                    next
                }
                None => {
                    *p = PortRun::Done;
                    continue;
                }
            };
            if let Some(t) = &tape {
                t.tick(port, due, *period, next, x);
            }
            let r = cell.with(|d| d.at_due(due, |d| d.push_u64(port, x)));
            step!(r, p);
            if shared.stop.load(Ordering::Acquire) {
                return Ended::Stopped;
            }
        };
        // 3. One batch of the first batch port.
        if let Some(port) = ports
            .iter()
            .position(|p| matches!(p, PortRun::Batch { .. }))
        {
            let p = &mut ports[port];
            let PortRun::Batch { next, end } = p else {
                unreachable!("matched above")
            };
            if *next >= *end {
                if let Some(t) = &tape {
                    t.complete(port as u32, t.now());
                }
                let r = cell.with(|d| d.complete_port(port as u32));
                *p = PortRun::Done;
                step!(r, p);
                continue;
            }
            let len = ((*end - *next) as usize).min(BATCH);
            for (i, slot) in buf[..len].iter_mut().enumerate() {
                *slot = *next + i as u64;
            }
            *next += len as u64;
            first.get_or_insert_with(Instant::now);
            let at = tape.as_ref().map(|t| t.now());
            let mut items = &buf[..len];
            while !items.is_empty() {
                let r = cell.with(|d| d.push_port(port as u32, items));
                let taken = batch_taken(&r, items.len());
                produced += taken as u64;
                if let (Some(t), Some(at), Some(&x)) = (&tape, at, items.first()) {
                    t.run(port as u32, at, x, taken as u64);
                }
                let port_done = matches!(r, Ok(Pushed::PortDone { .. }));
                step!(r, p);
                if port_done {
                    break;
                }
                items = &items[taken.min(items.len())..];
            }
            continue;
        }
        // 4. Every port done, no operator waiting for a timer (a `delay` holding values or its
        // completion) and no inner subscription live: the pipeline is.
        if ports.iter().all(|p| matches!(p, PortRun::Done))
            && op_timers == 0
            && cell.with(|d| d.live_inners()) == 0
        {
            return completed(produced, first);
        }
        // 5. Wait for the next deadline or message.
        if let Some(due) = next_due
            && due <= clock.now()
        {
            continue;
        }
        let msg = match (&ticket, next_due) {
            (Some(t), _) => {
                // Virtual time moves only by `advance`, which wakes this thread.
                if let Ok(m) = rx.try_recv() {
                    Some(m)
                } else {
                    t.idle_until(
                        epoch.unwrap_or_default(),
                        next_due,
                        std::mem::take(&mut pokes),
                    );
                    rx.recv().ok()
                }
            }
            (None, Some(due)) => rx
                .recv_timeout(due.saturating_duration_since(Instant::now()))
                .ok(),
            (None, None) => rx.recv().ok(),
        };
        // Handled first at the top of the loop, before what came after it.
        pending = msg;
    }
}

/// For code that drives pipelines without the runtime's threads (the benchmarks): a
/// publisher whose drivers deliver to given subjects.
impl Publisher {
    /// A pipeline whose first code is `code` and whose `publish` operators deliver to the
    /// hubs of `subjects`, as a pipeline of a [`Runtime`] delivers to [`Runtime::subjects`].
    /// Its subscribers are subscribed with [`Hub::subscribe_driver`].
    pub fn with_subjects(code: PipelineCode, subjects: Arc<Subjects>) -> Publisher {
        Publisher {
            shared: Arc::new(Shared::with_subjects(code, None, subjects, Clock::System)),
        }
    }
}

impl Driver {
    /// What the driver shares with its publisher (a hub subscribing it needs it).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The sources of the code it runs, in port order.
    pub(crate) fn sources(&self) -> &[SourceSpec] {
        &self.code.sources
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::abi::{SourceDesc, source_kind};

    unsafe extern "C" fn no_env(_env: *mut c_void) {}
    unsafe extern "C" fn no_drop(_dst: *mut u8) -> bool {
        true
    }
    unsafe extern "C" fn no_debug(
        _src: *const u8,
        _buf: *mut u8,
        _cap: usize,
        len: *mut usize,
    ) -> u32 {
        // SAFETY: the caller passes a writable length.
        unsafe { *len = 0 };
        0
    }

    /// A restarted pipeline's new thread takes over the messages of the sources that went
    /// over (on their new ports, in order) and sends every other one back to the old inbox,
    /// above all the wake that tells the old thread to stop.
    #[test]
    fn a_take_over_leaves_the_old_thread_its_own_messages() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for m in [
            Msg::Line(0, "a".into()),
            Msg::Wake,
            Msg::Line(1, "not moved".into()),
            Msg::Complete(0),
            Msg::Poke,
            Msg::InnerComplete(3, 0),
        ] {
            tx.send(m).unwrap();
        }
        let taken: Vec<String> = take_over(((tx, rx.clone()), vec![(0, 2)]))
            .iter()
            .map(|m| format!("{m:?}"))
            .collect();
        assert_eq!(taken, ["Line(2, \"a\")", "Complete(2)"]);
        let left: Vec<String> = rx.try_iter().map(|m| format!("{m:?}")).collect();
        assert_eq!(
            left,
            [
                "Wake",
                "Line(1, \"not moved\")",
                "Poke",
                "InnerComplete(3, 0)"
            ]
        );
    }

    fn desc(sources: &[SourceDesc]) -> InnerDesc {
        InnerDesc {
            env: std::ptr::null_mut(),
            drop_env: no_env,
            sources: sources.as_ptr(),
            n_sources: sources.len(),
            ops: std::ptr::null(),
            n_ops: 0,
            publishes: std::ptr::null(),
            n_publishes: 0,
            value: std::ptr::null_mut(),
            value_type: plugin_api::fingerprint::of::<u64>(),
            value_drop: no_drop,
            value_debug: no_debug,
        }
    }

    fn source(kind: u32, label: &str) -> SourceDesc {
        SourceDesc {
            kind,
            a: 1,
            b: 0,
            text: RStr::NONE,
            item: plugin_api::fingerprint::of::<u64>(),
            label: RStr::new(label),
            owner: 0,
            value_clone: no_clone,
            value_drop: no_drop,
            value_plain: false,
        }
    }

    unsafe extern "C" fn no_clone(_src: *const u8, _dst: *mut u8) -> u32 {
        plugin_api::abi::clone_status::UNSUPPORTED
    }

    /// What `read_inner` should do with the shared sources of the last inner stream read.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Expect {
        /// A new allocation.
        Fresh,
        /// The last ones, as they are (the same sources).
        Shared,
        /// The last ones, rewritten in place (no subscription held them).
        Rewritten,
    }

    #[test]
    fn shared_sources_are_reused_only_when_the_same_or_held_by_nobody() {
        use Expect::*;
        // (sources' labels, keep the result alive as a live subscription would, expected)
        let steps: &[(&[&str], bool, Expect)] = &[
            (&["of::<u64>([1])"], true, Fresh),
            // The first is held: a different label may not overwrite it.
            (&["of::<u64>([2])"], true, Fresh),
            (&["of::<u64>([2])"], true, Shared),
            (&["interval_ms(5)", "of::<u64>([2])"], false, Fresh),
            // Nobody holds the last ones any more (dropped at once above).
            (&["interval_ms(5)", "of::<u64>([3])"], false, Rewritten),
            (&["interval_ms(7)", "of::<u64>([3])"], true, Rewritten),
            (&["interval_ms(7)", "of::<u64>([4])"], true, Fresh),
        ];
        let mut reg = InnerReg::default();
        let mut held: Vec<(Arc<[SourceSpec]>, Vec<String>)> = Vec::new();
        for (i, &(labels, keep, expect)) in steps.iter().enumerate() {
            let before = reg.sources.clone().map(|l| Arc::as_ptr(&l));
            let descs: Vec<SourceDesc> = labels
                .iter()
                .map(|l| {
                    let kind = if l.starts_with("interval") {
                        source_kind::INTERVAL
                    } else {
                        source_kind::OF
                    };
                    source(kind, l)
                })
                .collect();
            // SAFETY: the description and its strings live across the call.
            let (got, _) = unsafe { read_inner(&desc(&descs), &[], "", &mut reg) }.unwrap();
            let read: Vec<String> = got.iter().map(|s| s.label.clone()).collect();
            assert_eq!(read, labels.to_vec(), "step {i}: labels read");
            let reused = before == Some(Arc::as_ptr(&got));
            let was = match (reused, expect) {
                (false, _) => Fresh,
                (true, Rewritten) => Rewritten,
                (true, _) => Shared,
            };
            assert_eq!(was, expect, "step {i}");
            // What live subscriptions hold is never changed under them.
            for (j, (arc, labels)) in held.iter().enumerate() {
                let now: Vec<&str> = arc.iter().map(|s| &*s.label).collect();
                assert_eq!(now, *labels, "step {i}: held sources {j} changed");
            }
            if keep {
                held.push((got, read));
            }
        }
    }
}

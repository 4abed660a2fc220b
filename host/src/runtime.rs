//! Running pipelines: one source thread per pipeline, its state slots, and the hand-over
//! from one code version to the next.
//!
//! Architecture invariant: **one version per emission.** The current code of a pipeline is
//! published with one atomic store (`ArcSwap::store`, then a generation bump); the source
//! thread reads the generation once per emission (or batch) with one atomic load. When it
//! changed, the thread itself takes the new code and migrates the state slots (keep a slot
//! when track, state type and seed are equal; reseed it otherwise) before the next emission.
//! No lock is taken on this path, and a reload never waits for an emission or the other way
//! round.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use plugin_api::abi::{EmitCx, RStr, SourceDesc, source_kind};

use crate::code::{PipelineCode, Pushed, StateSlots};
use crate::events::{HostEvent, Sink};

/// How many `range` values go into one call of the plugin.
pub const BATCH: usize = 1024;

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
}

/// What the source thread and the reloader share.
struct Shared {
    generation: AtomicU64,
    code: ArcSwap<PipelineCode>,
    stop: AtomicBool,
    ended: AtomicU64,
}

fn ended_code(e: Ended) -> u64 {
    match e {
        Ended::Running => 0,
        Ended::Completed => 1,
        Ended::Errored => 2,
        Ended::Stopped => 3,
    }
}

fn ended_from(v: u64) -> Ended {
    match v {
        1 => Ended::Completed,
        2 => Ended::Errored,
        3 => Ended::Stopped,
        _ => Ended::Running,
    }
}

struct Running {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    source: SourceDesc,
    /// Published but not started yet (see [`Runtime::launch`]).
    waiting: bool,
}

impl Running {
    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The running pipelines, by name.
pub struct Runtime {
    sink: Sink,
    policy: PanicPolicy,
    pipelines: BTreeMap<String, Running>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("pipelines", &self.pipelines.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What [`Runtime::publish`] did with a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// The running thread will pick the code up at its next emission.
    Swapped,
    /// It was not running (completed, errored, or its source changed): started afresh.
    Restarted,
    /// It is new: started.
    Started,
}

impl Runtime {
    /// A runtime reporting to `sink`.
    pub fn new(sink: Sink, policy: PanicPolicy) -> Runtime {
        Runtime {
            sink,
            policy,
            pipelines: BTreeMap::new(),
        }
    }

    /// Names of the pipelines the runtime knows.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pipelines.keys().map(String::as_str)
    }

    /// Makes `code` the current code of its pipeline, starting the pipeline if needed.
    pub fn publish(&mut self, code: PipelineCode) -> Published {
        let name = code.name.clone();
        let restart = self.pipelines.get(&name).map(|r| {
            r.source != code.source
                || ended_from(r.shared.ended.load(Ordering::Acquire)) != Ended::Running
        });
        match restart {
            Some(false) => {
                let r = &self.pipelines[&name];
                r.shared.code.store(Arc::new(code));
                r.shared.generation.fetch_add(1, Ordering::Release);
                Published::Swapped
            }
            Some(true) => {
                if let Some(mut old) = self.pipelines.remove(&name) {
                    old.stop();
                }
                self.start(code);
                Published::Restarted
            }
            None => {
                self.start(code);
                Published::Started
            }
        }
    }

    /// Registers `code` as a pipeline to start at the next [`Runtime::launch`].
    fn start(&mut self, code: PipelineCode) {
        let name = code.name.clone();
        let source = code.source;
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            code: ArcSwap::from_pointee(code),
            stop: AtomicBool::new(false),
            ended: AtomicU64::new(ended_code(Ended::Running)),
        });
        self.pipelines.insert(
            name,
            Running {
                shared,
                thread: None,
                source,
                waiting: true,
            },
        );
    }

    /// Starts the source threads of pipelines published since the last call (so a reload
    /// can report itself before new pipelines emit).
    pub fn launch(&mut self) -> std::io::Result<()> {
        for (name, r) in &mut self.pipelines {
            if !r.waiting {
                continue;
            }
            r.waiting = false;
            let shared = r.shared.clone();
            let sink = self.sink.clone();
            let policy = self.policy;
            let thread = std::thread::Builder::new()
                .name(format!("hmr-src-{name}"))
                .spawn(move || {
                    let ended =
                        match catch_unwind(AssertUnwindSafe(|| run_source(&shared, &sink, policy)))
                        {
                            Ok(e) => e,
                            Err(_) => Ended::Errored,
                        };
                    shared.ended.store(ended_code(ended), Ordering::Release);
                })?;
            r.thread = Some(thread);
        }
        Ok(())
    }

    /// Stops and forgets the pipeline `name`; its state is dropped by its thread.
    pub fn remove(&mut self, name: &str) -> bool {
        match self.pipelines.remove(name) {
            Some(mut r) => {
                r.stop();
                true
            }
            None => false,
        }
    }

    /// How each pipeline is doing.
    pub fn status(&self) -> BTreeMap<String, Ended> {
        self.pipelines
            .iter()
            .map(|(n, r)| {
                (
                    n.clone(),
                    ended_from(r.shared.ended.load(Ordering::Acquire)),
                )
            })
            .collect()
    }

    /// Waits until every pipeline's source thread has ended (completed or errored).
    pub fn join_all(&mut self) {
        for r in self.pipelines.values_mut() {
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Stops every pipeline.
    pub fn stop_all(&mut self) {
        for (_, mut r) in std::mem::take(&mut self.pipelines) {
            r.stop();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// What the plugin's callbacks see during a push: the pipeline's identity and the sink.
struct HostCx {
    pipeline: String,
    version: Cell<u64>,
    paths: RefCell<Vec<String>>,
    sink: Sink,
}

unsafe extern "C" fn cb_log(host: *mut c_void, _op: u32, text: RStr) {
    // SAFETY: `host` is the `HostCx` of the running thread, alive for the push that calls
    // back; `text` is valid for the call.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let h = &*host.cast::<HostCx>();
        let value = text.to_string_lossy().unwrap_or_default().into_owned();
        h.sink.event(HostEvent::Emission {
            pipeline: h.pipeline.clone(),
            version: h.version.get(),
            value,
        });
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
            .cloned()
            .unwrap_or_else(|| h.pipeline.clone());
        h.sink.event(HostEvent::Error {
            pipeline: h.pipeline.clone(),
            path,
            message: message.to_string_lossy().unwrap_or_default().into_owned(),
        });
    }));
}

/// The source thread's view of its pipeline: the code it runs and the state it owns.
struct Local {
    generation: u64,
    code: Arc<PipelineCode>,
    states: StateSlots,
}

impl Local {
    /// Takes the newest code if the generation moved. One atomic load when it did not.
    #[inline]
    fn refresh(&mut self, shared: &Shared, host: &HostCx) -> Result<(), String> {
        let g = shared.generation.load(Ordering::Acquire);
        if g == self.generation {
            return Ok(());
        }
        let new = shared.code.load_full();
        let old = std::mem::replace(&mut self.states, StateSlots::empty());
        let (states, _reset) = old.migrate(&new).map_err(|e| e.to_string())?;
        self.states = states;
        self.generation = g;
        host.version.set(new.version);
        *host.paths.borrow_mut() = new.ops.iter().map(|o| o.path.clone()).collect();
        // The old code is dropped here if nothing else holds it.
        self.code = new;
        Ok(())
    }
}

fn run_source(shared: &Shared, sink: &Sink, policy: PanicPolicy) -> Ended {
    let code = shared.code.load_full();
    let host = HostCx {
        pipeline: code.name.clone(),
        version: Cell::new(code.version),
        paths: RefCell::new(code.ops.iter().map(|o| o.path.clone()).collect()),
        sink: sink.clone(),
    };
    let report_init = |e: String| {
        sink.event(HostEvent::Error {
            pipeline: host.pipeline.clone(),
            path: host.pipeline.clone(),
            message: e,
        });
        Ended::Errored
    };
    let states = match StateSlots::new(&code) {
        Ok(s) => s,
        Err(e) => return report_init(e.to_string()),
    };
    let mut local = Local {
        generation: shared.generation.load(Ordering::Acquire),
        code,
        states,
    };
    // Code published between our load of `code` and of `generation` is picked up at the
    // first emission: `refresh` compares against a generation at most as new as the code.
    let cx = EmitCx {
        host: (&raw const host).cast_mut().cast::<c_void>(),
        log: cb_log,
        error: cb_error,
    };
    let source = local.code.source;
    let mut produced = 0u64;
    let mut first: Option<Instant> = None;
    let finish = |local: &mut Local, produced: u64, first: Option<Instant>| {
        if !local.code.complete(&local.states, &cx) && policy == PanicPolicy::Error {
            return Ended::Errored;
        }
        sink.event(HostEvent::Completed {
            pipeline: host.pipeline.clone(),
            emissions: produced,
            elapsed_us: first.map_or(0, |t| t.elapsed().as_micros() as u64),
        });
        Ended::Completed
    };
    match source.kind {
        source_kind::INTERVAL => {
            let period = Duration::from_millis(source.a.max(1));
            let start = Instant::now();
            let mut n = 0u64;
            loop {
                let due = start + period * (n as u32);
                loop {
                    if shared.stop.load(Ordering::Acquire) {
                        return Ended::Stopped;
                    }
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    std::thread::park_timeout(due - now);
                }
                if let Err(e) = local.refresh(shared, &host) {
                    return report_init(e);
                }
                first.get_or_insert_with(Instant::now);
                produced += 1;
                match local.code.push(&local.states, &[n], &cx) {
                    Pushed::Continue => {}
                    Pushed::Complete { .. } => return finish(&mut local, produced, first),
                    Pushed::Panicked { .. } => {
                        if policy == PanicPolicy::Error {
                            return Ended::Errored;
                        }
                    }
                }
                n += 1;
            }
        }
        source_kind::RANGE => {
            let (mut next, end) = (source.a, source.b);
            let mut buf = [0u64; BATCH];
            while next < end {
                if shared.stop.load(Ordering::Acquire) {
                    return Ended::Stopped;
                }
                if let Err(e) = local.refresh(shared, &host) {
                    return report_init(e);
                }
                let len = ((end - next) as usize).min(BATCH);
                for (i, slot) in buf[..len].iter_mut().enumerate() {
                    *slot = next + i as u64;
                }
                first.get_or_insert_with(Instant::now);
                let mut items = &buf[..len];
                loop {
                    match local.code.push(&local.states, items, &cx) {
                        Pushed::Continue => {
                            produced += items.len() as u64;
                            break;
                        }
                        Pushed::Complete { consumed } => {
                            produced += consumed as u64;
                            return finish(&mut local, produced, first);
                        }
                        Pushed::Panicked { consumed } => {
                            produced += consumed as u64;
                            if policy == PanicPolicy::Error {
                                return Ended::Errored;
                            }
                            items = &items[consumed.min(items.len())..];
                            if items.is_empty() {
                                break;
                            }
                        }
                    }
                }
                next += len as u64;
            }
            finish(&mut local, produced, first)
        }
        other => report_init(format!("unknown source kind {other}")),
    }
}

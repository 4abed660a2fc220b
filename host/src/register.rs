//! Running one plugin version's registration inside a `module-call`.
//!
//! The host lends the plugin a [`HostApi`] whose callbacks turn each DSL call into events of
//! the tracking store (`track-call`, `pipeline-call`, `operator-call`, their returns) and
//! collect the compiled pipelines. The run is all or nothing: the first error (a panic in
//! `register`, a key the store refuses, a state layout the host cannot allocate) makes the
//! whole run fail, the store rolls it back (`module-call-return` with `failed`), and every
//! pipeline collected so far is dropped.

use std::alloc::Layout;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use hmr_track::{Fingerprint, Id, ModuleId, ModuleOutcome, Recorder, Signature, SubjectRole};
use plugin_api::abi::{self, HostApi, PipelineDesc, RFingerprint, RSignature, RStr};

use crate::code::{OpCode, PipelineCode};
use crate::loader::LibVersion;

/// A registration that did not run to its end.
#[derive(Debug, thiserror::Error)]
#[error("registration of {library} failed: {reason}")]
pub struct RegisterError {
    /// The library.
    pub library: String,
    /// The first error.
    pub reason: String,
}

/// What the plugin's registration said, collected on the thread that runs it (see
/// [`register`]): the track scopes it opened and closed, in order, and the pipelines it
/// compiled. Handles given to the plugin are indexes of the tracks opened in the run + 1;
/// the store's ids are assigned when the calls are replayed into it, on the reloader's
/// thread. The calls go there in batches while the plugin runs on (`Collected`), so that
/// the store's replay overlaps the plugin's registration instead of following it.
struct Ctx {
    lib: Arc<LibVersion>,
    version: u64,
    /// The calls not yet sent.
    batch: Batch,
    /// Tracks opened in the batches sent before `batch`: the handle of `batch.tracks[i]` is
    /// `base + i + 1`.
    base: usize,
    /// Where full batches go (`None` once the reloader stopped listening: the rest is kept
    /// until the end, and dropped with the run).
    out: Option<mpsc::Sender<Stamped>>,
    /// Tracks opened before the pipeline being registered now (when the last pipeline was
    /// added): an operator's track is one of its own pipeline's.
    first: usize,
    names: Names,
    /// Pipelines as compiled, with handles where track ids will go.
    pipelines: Vec<PipelineCode>,
    error: Option<String>,
}

/// Registration calls in order, with what they opened.
#[derive(Default)]
struct Batch {
    calls: Vec<Call>,
    /// The key and signature of each track scope opened in this batch, in order.
    tracks: Vec<Opened>,
    /// The batch's keys, one after the other: a registration of 10,000 keyed scopes makes
    /// one allocation a batch here, not one a key (each freed later on another thread,
    /// which glibc's per-thread arenas make slower still).
    keys: String,
}

impl Batch {
    fn with_capacity(tracks: usize) -> Batch {
        Batch {
            calls: Vec::with_capacity(2 * tracks),
            tracks: Vec::with_capacity(tracks),
            keys: String::with_capacity(8 * tracks),
        }
    }
}

/// A batch is sent on once it holds this many calls, when the pipeline that made them is
/// added (an operator's description refers to its own pipeline's tracks, which the
/// collecting side keeps until then).
const BATCH_CALLS: usize = 1024;

/// What the registration thread sends the reloader's thread: full batches while the plugin
/// runs, then the rest and the pipelines. Each with the time it was sent: what the plugin
/// said before the deadline counts, however late the reloader reads it (`recv_sent_by`).
enum Collected {
    Batch(Batch),
    Done(Box<Ctx>),
}

/// A message of the registration thread and when it was sent.
type Stamped = (Instant, Collected);

/// A track scope the plugin opened.
struct Opened {
    /// Where its key is in its batch's `keys`.
    key: Option<std::ops::Range<usize>>,
    signature: Signature,
}

/// One registration call, in order.
enum Call {
    /// A track scope opened (handle = index into `Ctx::tracks` + 1).
    Open,
    /// The scope with this handle closed.
    Close(u64),
}

/// Handles are indexes + 1, so that 0 can mean "refused".
fn track_of(handle: u64) -> Option<usize> {
    (handle as usize).checked_sub(1)
}

impl Ctx {
    fn fail(&mut self, reason: String) {
        if self.error.is_none() {
            self.error = Some(reason);
        }
    }

    fn track_call(&mut self, key: Option<&str>, signature: Signature) -> u64 {
        if self.error.is_some() {
            return 0;
        }
        let b = &mut self.batch;
        let key = key.map(|key| {
            let start = b.keys.len();
            b.keys.push_str(key);
            start..b.keys.len()
        });
        b.tracks.push(Opened { key, signature });
        b.calls.push(Call::Open);
        (self.base + b.tracks.len()) as u64
    }

    fn track_call_return(&mut self, handle: u64) {
        if self.error.is_some() {
            return;
        }
        if track_of(handle).is_none_or(|i| i >= self.base + self.batch.tracks.len()) {
            return self.fail(format!(
                "track-call-return for an unknown track handle {handle}"
            ));
        }
        self.batch.calls.push(Call::Close(handle));
    }

    /// Sends the batch on if it is full (see [`BATCH_CALLS`]).
    fn send_full(&mut self) {
        if self.batch.calls.len() < BATCH_CALLS || self.error.is_some() {
            return;
        }
        let Some(out) = &self.out else {
            return;
        };
        // Room for as many tracks as this batch took: pipelines tend to look alike.
        let next = Batch::with_capacity(self.batch.tracks.len());
        let full = std::mem::replace(&mut self.batch, next);
        let opened = full.tracks.len();
        if out.send((Instant::now(), Collected::Batch(full))).is_ok() {
            self.base += opened;
        } else {
            // The reloader gave up on this run (its deadline passed): nothing more to say.
            self.out = None;
        }
    }

    fn add_pipeline(&mut self, desc: &PipelineDesc) {
        // Take ownership of `env` first, so it is freed even if the run fails.
        let mut code = PipelineCode {
            // SAFETY: the plugin passes a name valid for the call.
            name: unsafe { desc.name.to_string_lossy() }
                .unwrap_or_default()
                .into_owned(),
            // A handle for now: replaced by the track's id in `replay`.
            track: desc.track,
            version: self.version,
            sources: Vec::new(),
            value_glue: Vec::new(),
            publishes: Vec::new(),
            ops: Vec::new(),
            env: desc.env,
            push: desc.push,
            push_one: desc.push_one,
            complete: desc.complete,
            start: desc.start,
            push_counted: desc.push_counted,
            push_one_counted: desc.push_one_counted,
            complete_counted: desc.complete_counted,
            start_counted: desc.start_counted,
            wake: desc.wake,
            wake_counted: desc.wake_counted,
            project: desc.project,
            describe: desc.describe,
            drop_env: desc.drop_env,
            lib: self.lib.clone(),
        };
        if self.error.is_some() {
            return;
        }
        let ops = if desc.n_ops == 0 {
            &[][..]
        } else {
            // SAFETY: the plugin passes `n_ops` descriptions valid for the call.
            unsafe { std::slice::from_raw_parts(desc.ops, desc.n_ops) }
        };
        let sources = if desc.n_sources == 0 || desc.sources.is_null() {
            &[][..]
        } else {
            // SAFETY: the plugin passes `n_sources` descriptions valid for the call.
            unsafe { std::slice::from_raw_parts(desc.sources, desc.n_sources) }
        };
        if sources.is_empty() {
            return self.fail(format!("pipeline {}: it has no source", code.name));
        }
        for (port, src) in sources.iter().enumerate() {
            let known = matches!(
                src.kind,
                abi::source_kind::INTERVAL
                    | abi::source_kind::RANGE
                    | abi::source_kind::OF
                    | abi::source_kind::STDIN_LINES
                    | abi::source_kind::FILE_LINES
                    | abi::source_kind::TCP_LINES
                    | abi::source_kind::SUBJECT
            );
            if !known {
                return self.fail(format!(
                    "pipeline {}, source {port}: unknown source kind {}",
                    code.name, src.kind
                ));
            }
            // SAFETY: the plugin passes strings valid for the call.
            let (text, label) = unsafe {
                (
                    src.text.to_string_lossy().unwrap_or_default().into_owned(),
                    src.label.to_string_lossy().unwrap_or_default().into_owned(),
                )
            };
            let item = fingerprint(&src.item);
            if src.kind == abi::source_kind::SUBJECT && item.is_none() {
                // Its values are read through a pointer: their layout must be known.
                return self.fail(format!(
                    "pipeline {}, source {port} ({label}): names no value type",
                    code.name
                ));
            }
            code.value_glue
                .push((src.value_clone, src.value_drop, src.value_plain));
            code.sources.push(crate::code::SourceSpec {
                kind: src.kind,
                a: src.a,
                b: src.b,
                text,
                label,
                item,
            });
        }
        let publishes = if desc.n_publishes == 0 || desc.publishes.is_null() {
            &[][..]
        } else {
            // SAFETY: the plugin passes `n_publishes` descriptions valid for the call.
            unsafe { std::slice::from_raw_parts(desc.publishes, desc.n_publishes) }
        };
        for p in publishes {
            // SAFETY: the plugin passes strings valid for the call.
            let subject = unsafe { p.subject.to_string_lossy() }
                .unwrap_or_default()
                .into_owned();
            let Some(item) = fingerprint(&p.item) else {
                return self.fail(format!(
                    "pipeline {}: publish({subject:?}) names no value type",
                    code.name
                ));
            };
            if p.op as usize >= desc.n_ops {
                return self.fail(format!(
                    "pipeline {}: publish({subject:?}) names operator {} of {}",
                    code.name, p.op, desc.n_ops
                ));
            }
            code.publishes.push(crate::code::PublishSpec {
                op: p.op,
                subject,
                item,
                debug: p.debug,
            });
        }
        for (i, op) in ops.iter().enumerate() {
            match op_code(&self.batch.tracks, self.base, self.first, desc.env, i, op) {
                Ok(o) => code.ops.push(o),
                Err(e) => {
                    // SAFETY: the plugin passes a kind valid for the call.
                    let kind = unsafe { op.kind.to_string_lossy() }.unwrap_or_default();
                    return self.fail(format!(
                        "pipeline {}, operator {i} ({kind}): {e}",
                        code.name
                    ));
                }
            }
        }
        self.pipelines.push(code);
        self.first = self.base + self.batch.tracks.len();
        self.send_full();
    }
}

/// Checks operator `index` of a pipeline against what its track-call said, and makes its
/// [`OpCode`]. Two premises of keeping state are checked here, not assumed:
///
/// - the state type of the signature sent with `track_call` (what decides whether a later
///   version keeps this state) is the state type of the vtable (what sizes, seeds and drops
///   the slot); were they to differ, state kept by signature would be read as another type;
/// - the pipeline's code knows an operator of this index: `init` is asked with a null slot
///   (no plugin code beyond the lookup runs), so a slot is never left unseeded and later
///   dropped as if it held a value.
///
/// `tracks` are the tracks opened since the last batch sent, the first with handle `base + 1`;
/// an operator's track must be its own pipeline's, opened after the tracks before `first`
/// (whatever went in which batch).
fn op_code(
    tracks: &[Opened],
    base: usize,
    first: usize,
    env: *mut c_void,
    index: usize,
    op: &abi::OpDesc,
) -> Result<OpCode, String> {
    let Opened { signature: sig, .. } = track_of(op.track)
        .filter(|&i| i >= first)
        .and_then(|i| i.checked_sub(base))
        .and_then(|i| tracks.get(i))
        .ok_or_else(|| {
            format!(
                "track handle {} was not returned by a track-call of this pipeline",
                op.track
            )
        })?;
    let fp = &op.state.fingerprint;
    let vtable_state = fingerprint(fp);
    if vtable_state != sig.state || (vtable_state.is_none() && fp.size != 0) {
        return Err(format!(
            "its state type is {} by its signature but {} by its state vtable: refusing a \
             library whose kept state could be read as another type",
            describe(sig.state.as_ref()),
            match &vtable_state {
                Some(v) => describe(Some(v)),
                None => format!("none (size {})", fp.size),
            }
        ));
    }
    let layout = Layout::from_size_align(fp.size, fp.align.max(1)).map_err(|_| {
        format!(
            "state of size {} and alignment {} is not a valid layout",
            fp.size, fp.align
        )
    })?;
    // SAFETY: `env` is the pipeline's closures the plugin just handed over with these
    // descriptions; a null `dst` asks `init` to write nothing (`InitFn`).
    let status = unsafe { (op.state.init)(env, index as u32, std::ptr::null_mut()) };
    if status != abi::init_status::OK {
        return Err(format!(
            "its code has no operator {index} to seed (init answered {status}): the \
             pipeline's description disagrees with its code"
        ));
    }
    Ok(OpCode {
        // A handle for now: replaced by the track's id in `replay`.
        track: op.track,
        path: String::new(),
        // SAFETY: the plugin passes a kind valid for the call.
        kind: unsafe { op.kind.to_string_lossy() }
            .unwrap_or_default()
            .into_owned(),
        signature: sig.clone(),
        lineage: 0,
        layout,
        init: op.state.init,
        drop: op.state.drop,
        debug: op.state.debug,
        clone: op.state.clone,
    })
}

/// A state type for a message: its name and layout, or `none`.
fn describe(fp: Option<&Fingerprint>) -> String {
    match fp {
        Some(f) => format!(
            "`{}` (size {}, align {}, layout hash {:#x})",
            f.name, f.size, f.align, f.hash
        ),
        None => "none".to_owned(),
    }
}

/// Kinds and type names, shared: a registration repeats the same few (`map`, `u64`) for
/// every track, and the plugin passes each from the same `'static` string in its image, so
/// a name is decoded and allocated once per registration, then found by its address (and
/// checked byte for byte, so a plugin reusing a buffer gets the right name all the same).
pub(crate) struct Names {
    /// A small direct-mapped cache by address: no hashing, one compare on a hit.
    slots: [Option<(usize, Arc<str>)>; NAME_SLOTS],
}

const NAME_SLOTS: usize = 64;

impl Default for Names {
    fn default() -> Names {
        Names {
            slots: std::array::from_fn(|_| None),
        }
    }
}

impl Names {
    /// The shared string for `s`; `None` for the absent string.
    ///
    /// # Safety
    /// `s` must be readable for the call (the plugin passes strings valid for the call).
    pub(crate) unsafe fn get(&mut self, s: RStr) -> Option<Arc<str>> {
        if s.ptr.is_null() {
            return None;
        }
        // SAFETY: guaranteed by the caller.
        let bytes = unsafe { std::slice::from_raw_parts(s.ptr, s.len) };
        let address = s.ptr as usize;
        let slot = &mut self.slots[(address >> 3 ^ s.len) % NAME_SLOTS];
        if let Some((a, name)) = slot
            && *a == address
            && name.as_bytes() == bytes
        {
            return Some(name.clone());
        }
        let name: Arc<str> = Arc::from(String::from_utf8_lossy(bytes));
        *slot = Some((address, name.clone()));
        Some(name)
    }

    /// # Safety
    /// As for [`Names::get`]: the fingerprint's name must be readable for the call.
    pub(crate) unsafe fn fingerprint(&mut self, fp: &RFingerprint) -> Option<Fingerprint> {
        // SAFETY: forwarded.
        let name = unsafe { self.get(fp.name) }?;
        Some(Fingerprint {
            name,
            size: fp.size as u64,
            align: fp.align as u64,
            hash: fp.hash,
        })
    }

    /// # Safety
    /// As for [`Names::get`], for `kind` and every string of `sig`.
    pub(crate) unsafe fn signature(&mut self, kind: RStr, sig: &RSignature) -> Signature {
        // SAFETY: forwarded.
        unsafe {
            Signature {
                kind: self.get(kind).unwrap_or_else(|| Arc::from("")),
                input: self.fingerprint(&sig.input),
                output: self.fingerprint(&sig.output),
                state: self.fingerprint(&sig.state),
                seed: sig.seed.to_string_lossy().map(|s| s.into_owned()),
                children: Vec::new(),
            }
        }
    }
}

/// A fingerprint read once, not shared (messages and checks outside a registration).
fn fingerprint(fp: &RFingerprint) -> Option<Fingerprint> {
    // SAFETY: fingerprint names point at `'static` type names in the plugin image, valid for
    // the call (we copy them).
    unsafe { Names::default().fingerprint(fp) }
}

/// Runs `f` on the context behind `ctx`, never letting a host panic unwind into the plugin.
///
/// # Safety
/// `ctx` must be the `Ctx` that `register` put in the `HostApi`, alive and not otherwise
/// borrowed for the duration of the call.
unsafe fn with_ctx<R>(ctx: *mut c_void, fallback: R, f: impl FnOnce(&mut Ctx) -> R) -> R {
    // SAFETY: guaranteed by the caller.
    let ctx = unsafe { &mut *ctx.cast::<Ctx>() };
    match catch_unwind(AssertUnwindSafe(|| f(ctx))) {
        Ok(r) => r,
        Err(_) => {
            ctx.fail("the host panicked in a registration callback".to_owned());
            fallback
        }
    }
}

unsafe extern "C" fn cb_track_call(
    ctx: *mut c_void,
    kind: RStr,
    key: RStr,
    sig: *const RSignature,
) -> u64 {
    // SAFETY: `ctx` is ours (see `register`); the plugin passes strings and a signature
    // valid for the call.
    unsafe {
        with_ctx(ctx, 0, |c| {
            let key = key.to_string_lossy();
            let sig = c.names.signature(kind, &*sig);
            c.track_call(key.as_deref(), sig)
        })
    }
}

unsafe extern "C" fn cb_track_call_return(ctx: *mut c_void, track: u64) {
    // SAFETY: `ctx` is ours (see `register`).
    unsafe { with_ctx(ctx, (), |c| c.track_call_return(track)) }
}

unsafe extern "C" fn cb_add_pipeline(ctx: *mut c_void, desc: *const PipelineDesc) {
    // SAFETY: `ctx` is ours; the plugin passes a description valid for the call.
    unsafe { with_ctx(ctx, (), |c| c.add_pipeline(&*desc)) }
}

unsafe extern "C" fn cb_fail(ctx: *mut c_void, message: RStr) {
    // SAFETY: `ctx` is ours; the plugin passes a message valid for the call.
    unsafe {
        with_ctx(ctx, (), |c| {
            let m = message.to_string_lossy().unwrap_or_default();
            c.fail(format!("register panicked: {m}"));
        })
    }
}

/// How long a plugin's `register` may run before the host gives up on it
/// ([`RegisterError`] says it did not return).
pub const REGISTER_DEADLINE: Duration = Duration::from_secs(5);

/// Runs the registration of `lib` as module `version` of `recorder` (a one-off
/// [`Registrar`]: see [`Registrar::register`]).
pub fn register(
    lib: &Arc<LibVersion>,
    recorder: &mut Recorder,
    deadline: Duration,
) -> Result<(ModuleId, Vec<PipelineCode>), RegisterError> {
    Registrar::default().register(lib, recorder, deadline)
}

/// What one recorder's registrations keep from one run to the next: the track ids of the
/// last run, in call order. The n-th track-call of the next run is hinted with the n-th id
/// ([`Recorder::track_call_hinted`]): a plugin registering what it registered last time
/// (every reload that changes no structure) has each track found without building or
/// hashing its path; a wrong hint costs nothing but the check.
///
/// It also keeps the thread that runs the plugin's `register` for the next run: starting a
/// thread per reload (a 16 MiB stack mapped, a clone, a first run through the scheduler)
/// cost 50 to 120 us before the plugin ran, over a millisecond under load.
#[derive(Debug, Default)]
pub struct Registrar {
    last_ids: Vec<Id>,
    worker: Option<Worker>,
}

/// The registration thread, waiting for jobs.
#[derive(Debug)]
struct Worker {
    jobs: mpsc::Sender<Job>,
}

/// One registration to run on the worker; the collected calls go back through `done`.
struct Job {
    lib: Arc<LibVersion>,
    version: u64,
    expected: usize,
    done: mpsc::Sender<Stamped>,
}

impl Worker {
    fn start() -> Result<Worker, String> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("hmr-register".to_owned())
            .stack_size(crate::runtime::SOURCE_THREAD_STACK)
            .spawn(move || {
                for job in queue {
                    // `lib` moves into the context and back with it: between jobs the thread
                    // holds no version.
                    let done = job.done.clone();
                    let ctx = collect(job.lib, job.version, job.expected, Some(job.done));
                    let _ = done.send((Instant::now(), Collected::Done(Box::new(ctx))));
                }
            })
            .map_err(|e| format!("cannot start the registration thread: {e}"))?;
        Ok(Worker { jobs })
    }
}

impl Registrar {
    /// Hands `job` to the kept worker, or to a new one if there is none or it has ended.
    fn send(&mut self, job: Job) -> Result<Worker, String> {
        let job = match self.worker.take() {
            Some(worker) => match worker.jobs.send(job) {
                Ok(()) => return Ok(worker),
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let worker = Worker::start()?;
        worker
            .jobs
            .send(job)
            .map_err(|_| "the registration thread ended before its first job".to_owned())?;
        Ok(worker)
    }

    /// Runs the registration of `lib` as module `version` of `recorder`. On success returns
    /// the compiled pipelines, operator paths filled in; on failure the run is rolled back in
    /// the store and nothing of it remains.
    ///
    /// The plugin's `register` runs on a thread of its own and what it says is collected
    /// there and sent here in batches, which are replayed into the store on the caller's
    /// thread while the plugin goes on (the run's `module-call` is open from the start). So a
    /// `register` that never returns (a loop, a blocked call) costs the caller `deadline`, not
    /// its thread: it gets an error and the run is rolled back, the batches it sent
    /// included. The stuck thread cannot be stopped; it keeps `lib` (and what it allocated)
    /// alive, and counts among the live versions.
    pub fn register(
        &mut self,
        lib: &Arc<LibVersion>,
        recorder: &mut Recorder,
        deadline: Duration,
    ) -> Result<(ModuleId, Vec<PipelineCode>), RegisterError> {
        let library = lib.built().display().to_string();
        let fail = |reason: String| RegisterError {
            library: library.clone(),
            reason,
        };
        let version = recorder.next_module();
        let expected = recorder.state.store.tracks.len();
        // The run starts in the store before the plugin runs: its batches are replayed as
        // they come.
        let module = recorder
            .module_call(&library)
            .map_err(|e| fail(e.to_string()))?;
        debug_assert_eq!(module, version);
        let rollback = |recorder: &mut Recorder, reason: String| {
            // What was replayed of the run leaves the store; the version number is used up,
            // as by any failed run, so the next attempt is not reported under the same number.
            match recorder.module_call_return(
                module,
                ModuleOutcome::Failed {
                    reason: reason.clone(),
                },
            ) {
                Ok(_) => fail(reason),
                Err(e) => fail(format!("{reason}; rolling back failed too: {e}")),
            }
        };
        let (done, answer) = mpsc::channel();
        let job = Job {
            lib: lib.clone(),
            version,
            expected,
            done,
        };
        let worker = match self.send(job) {
            Ok(w) => w,
            Err(e) => return Err(rollback(recorder, e)),
        };
        // No deadline past what the clock can count.
        let until = Instant::now().checked_add(deadline);
        let mut run = Replay {
            ids: Vec::with_capacity(expected),
            failed: None,
        };
        let ctx = loop {
            match recv_sent_by(&answer, until) {
                Ok(Collected::Batch(batch)) => run.batch(recorder, batch, &self.last_ids),
                Ok(Collected::Done(ctx)) => {
                    self.worker = Some(worker);
                    break ctx;
                }
                Err(e) => {
                    // The worker is left to its fate (stuck in the plugin's `register`, or
                    // gone); the next registration starts another.
                    drop(worker);
                    let reason = match e {
                        mpsc::RecvTimeoutError::Timeout => format!(
                            "register() of v{version} did not return within {deadline:?} (a \
                             loop or a blocking call in the plugin's registration?); the thread \
                             running it cannot be stopped and keeps v{version} mapped and live"
                        ),
                        mpsc::RecvTimeoutError::Disconnected => format!(
                            "the registration thread ended without an answer for v{version} (a \
                             host bug: it panicked)"
                        ),
                    };
                    return Err(rollback(recorder, reason));
                }
            }
        };
        match run.finish(*ctx, recorder, module, &self.last_ids) {
            Ok((pipelines, ids)) => {
                self.last_ids = ids;
                Ok((module, pipelines))
            }
            Err(reason) => Err(rollback(recorder, reason)),
        }
    }
}

/// The next message of `rx` sent by `until` (`None`: whenever it comes). The deadline is the
/// plugin's, not the reader's: a message sent in time is taken however late it is read (the
/// reader was replaying the batches before it), and `Timeout` comes once the next message
/// was sent after `until`, or none was sent by then. So a `register` that never stops
/// adding pipelines cannot keep the reader replaying past the deadline: the messages sent by
/// then are finite.
fn recv_sent_by<T>(
    rx: &mpsc::Receiver<(Instant, T)>,
    until: Option<Instant>,
) -> Result<T, mpsc::RecvTimeoutError> {
    let Some(until) = until else {
        return rx
            .recv()
            .map(|(_, m)| m)
            .map_err(|_| mpsc::RecvTimeoutError::Disconnected);
    };
    let left = until.saturating_duration_since(Instant::now());
    let (sent, m) = if left.is_zero() {
        rx.try_recv().map_err(|e| match e {
            mpsc::TryRecvError::Empty => mpsc::RecvTimeoutError::Timeout,
            mpsc::TryRecvError::Disconnected => mpsc::RecvTimeoutError::Disconnected,
        })?
    } else {
        rx.recv_timeout(left)?
    };
    if sent > until {
        return Err(mpsc::RecvTimeoutError::Timeout);
    }
    Ok(m)
}

/// Runs the plugin's `register` against a collecting [`HostApi`].
///
/// The first batch makes room for `expected` tracks (the last run's count), each next one
/// for as many as the batch before it took: growing a batch by doubling would copy every
/// signature collected so far, several times over.
fn collect(
    lib: Arc<LibVersion>,
    version: u64,
    expected: usize,
    out: Option<mpsc::Sender<Stamped>>,
) -> Ctx {
    let mut ctx = Ctx {
        lib: lib.clone(),
        version,
        batch: Batch::with_capacity(expected),
        base: 0,
        out,
        first: 0,
        names: Names::default(),
        pipelines: Vec::new(),
        error: None,
    };
    let api = HostApi {
        abi_version: abi::ABI_VERSION,
        ctx: (&raw mut ctx).cast::<c_void>(),
        track_call: cb_track_call,
        track_call_return: cb_track_call_return,
        add_pipeline: cb_add_pipeline,
        fail: cb_fail,
    };
    // SAFETY: the header was checked by the loader (same ABI), `api` and the `ctx` it points
    // at live across the call, and the plugin catches its own panics.
    let ran = unsafe { (lib.header().register)(&api) };
    if !ran && ctx.error.is_none() {
        ctx.error = Some("register panicked".to_owned());
    }
    if ctx.error.is_none() {
        ctx.error = subject_mismatch(&ctx.pipelines).or_else(|| subject_cycle(&ctx.pipelines));
    }
    ctx
}

/// A cycle through subjects (a pipeline whose values, published to a subject, come back to
/// it through the pipelines reading that subject), as a message naming the loop; `None`
/// when there is none. Delivery is synchronous, so such a loop would run forever or block:
/// a registration with one fails.
pub fn subject_cycle(pipelines: &[PipelineCode]) -> Option<String> {
    use std::collections::BTreeMap;
    // Who reads each subject.
    let mut readers: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in pipelines.iter().enumerate() {
        for s in &p.sources {
            if s.kind == abi::source_kind::SUBJECT {
                readers.entry(s.text.as_str()).or_default().push(i);
            }
        }
    }
    // Edges: pipeline -> (subject, a pipeline reading it).
    let edges: Vec<Vec<(&str, usize)>> = pipelines
        .iter()
        .map(|p| {
            p.publishes
                .iter()
                .flat_map(|x| {
                    readers
                        .get(x.subject.as_str())
                        .into_iter()
                        .flatten()
                        .map(move |r| (x.subject.as_str(), *r))
                })
                .collect()
        })
        .collect();
    // Depth-first, iterative: 0 unseen, 1 on the current path, 2 done.
    let mut state = vec![0u8; pipelines.len()];
    for root in 0..pipelines.len() {
        if state[root] != 0 {
            continue;
        }
        // (pipeline, next edge to follow); `via[k]` the subject that led to `stack[k]`.
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        let mut via: Vec<&str> = vec![""];
        state[root] = 1;
        while let Some(&mut (i, ref mut e)) = stack.last_mut() {
            if let Some(&(subject, next)) = edges[i].get(*e) {
                *e += 1;
                match state[next] {
                    0 => {
                        state[next] = 1;
                        stack.push((next, 0));
                        via.push(subject);
                    }
                    1 => {
                        let start = stack.iter().position(|(p, _)| *p == next).unwrap_or(0);
                        let mut text = String::new();
                        for k in start..stack.len() {
                            let out = if k + 1 < stack.len() {
                                via[k + 1]
                            } else {
                                subject
                            };
                            let to = if k + 1 < stack.len() {
                                stack[k + 1].0
                            } else {
                                next
                            };
                            if !text.is_empty() {
                                text.push_str(", ");
                            }
                            text.push_str(&format!(
                                "{} publishes {out:?} read by {}",
                                pipelines[stack[k].0].name, pipelines[to].name
                            ));
                        }
                        return Some(format!(
                            "subjects form a cycle ({text}): delivery is synchronous, so a \
                             value would come back to the pipeline that published it"
                        ));
                    }
                    _ => {}
                }
            } else {
                state[i] = 2;
                stack.pop();
                via.pop();
            }
        }
    }
    None
}

/// The first subject whose publishers and subscribers disagree on the value type, as a
/// message naming the subject and both types; `None` when they all agree.
pub fn subject_mismatch(pipelines: &[PipelineCode]) -> Option<String> {
    use std::collections::BTreeMap;
    let mut seen: BTreeMap<&str, (&Fingerprint, String)> = BTreeMap::new();
    let uses = pipelines.iter().flat_map(|p| {
        let publishes = p
            .publishes
            .iter()
            .map(move |x| (x.subject.as_str(), &x.item, format!("{} publishes", p.name)));
        let reads = p
            .sources
            .iter()
            .filter(|s| s.kind == abi::source_kind::SUBJECT)
            .filter_map(move |s| {
                s.item
                    .as_ref()
                    .map(|item| (s.text.as_str(), item, format!("{} reads", p.name)))
            });
        publishes.chain(reads)
    });
    for (subject, item, who) in uses {
        match seen.get(subject) {
            None => {
                seen.insert(subject, (item, who));
            }
            Some((first, first_who)) if *first != item => {
                return Some(type_disagreement(subject, first_who, first, &who, item));
            }
            Some(_) => {}
        }
    }
    None
}

/// The message for two uses of `subject` that disagree on its value type: `first_who`
/// (`prices publishes`) uses `first`, `who` (`w reads`) uses `item`.
pub(crate) fn type_disagreement(
    subject: &str,
    first_who: &str,
    first: &Fingerprint,
    who: &str,
    item: &Fingerprint,
) -> String {
    let what = if first.name == item.name {
        format!(
            "`{}` with another layout (layout hash {:#x} vs {:#x})",
            item.name, first.hash, item.hash
        )
    } else {
        format!("`{}`", item.name)
    };
    format!(
        "subject {subject:?}: {first_who} `{}` but {who} {what}: publisher and subscribers \
         must agree on the value type",
        first.name
    )
}

/// The replay of a registration's batches into the store, inside the run's `module-call`
/// (opened by [`Registrar::register`] before the plugin ran, and closed or rolled back by
/// it): the n-th track-call hinted with the n-th id of the last run.
struct Replay {
    /// The store's id of each track opened so far, by handle - 1.
    ids: Vec<Id>,
    /// The first error the store met; the batches after it are not replayed.
    failed: Option<String>,
}

impl Replay {
    /// Replays `batch` (the calls after the previous batch's).
    fn batch(&mut self, recorder: &mut Recorder, batch: Batch, hints: &[Id]) {
        if self.failed.is_none()
            && let Err(e) = self.calls(recorder, batch, hints)
        {
            self.failed = Some(e);
        }
    }

    fn calls(&mut self, recorder: &mut Recorder, batch: Batch, hints: &[Id]) -> Result<(), String> {
        let Batch {
            calls,
            tracks,
            keys,
        } = batch;
        let mut tracks = tracks.into_iter();
        for call in calls {
            match call {
                Call::Open => {
                    let Opened { key, signature } =
                        tracks.next().ok_or("more scopes opened than recorded")?;
                    let key = key.and_then(|range| keys.get(range));
                    let kind = signature.kind.clone();
                    let hint = hints.get(self.ids.len()).copied();
                    self.ids.push(
                        open(recorder, &kind, key, signature, hint)
                            .map_err(|e| in_person_terms(&kind, key, e))?,
                    );
                }
                Call::Close(handle) => {
                    let id = track_of(handle)
                        .and_then(|i| self.ids.get(i))
                        .ok_or_else(|| {
                            format!("track-call-return for a track not open: {handle}")
                        })?;
                    recorder.track_call_return(*id).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Replays the last batch and ends the run in the store (`module-call-return`). Returns
    /// the pipelines with their track ids and operator paths, and the run's track ids in call
    /// order; the error that fails the run otherwise (the caller rolls it back): the
    /// plugin's own (a panic in `register`, a refused description) before the store's.
    fn finish(
        mut self,
        ctx: Ctx,
        recorder: &mut Recorder,
        module: ModuleId,
        hints: &[Id],
    ) -> Result<(Vec<PipelineCode>, Vec<Id>), String> {
        let Ctx {
            batch,
            mut pipelines,
            error,
            ..
        } = ctx;
        if let Some(e) = error {
            return Err(e);
        }
        self.batch(recorder, batch, hints);
        if let Some(e) = self.failed {
            return Err(e);
        }
        let ids = self.ids;
        declare_subjects(recorder, &pipelines, &ids)?;
        recorder
            .module_call_return(module, ModuleOutcome::Ok)
            .map_err(|e| e.to_string())?;
        let id_of = |handle: u64| track_of(handle).and_then(|i| ids.get(i)).copied();
        for p in &mut pipelines {
            p.track = id_of(p.track).unwrap_or(Id::MAX);
            for op in &mut p.ops {
                op.track = id_of(op.track).unwrap_or(Id::MAX);
                op.path = recorder
                    .state
                    .track(op.track)
                    .map(|t| t.path.clone())
                    .unwrap_or_default();
            }
        }
        Ok((pipelines, ids))
    }
}

/// The subjects each pipeline publishes to and reads, as `subject-use` events of the open run
/// (the pipelines' tracks are closed by now): the store then lists every subject with its value
/// type, publishers and subscribers, as of this run.
fn declare_subjects(
    recorder: &mut Recorder,
    pipelines: &[PipelineCode],
    ids: &[Id],
) -> Result<(), String> {
    for p in pipelines {
        let track = track_of(p.track)
            .and_then(|i| ids.get(i))
            .copied()
            .ok_or_else(|| format!("pipeline {}: its track was never opened", p.name))?;
        let publishes = p
            .publishes
            .iter()
            .map(|x| Ok::<_, String>((&x.subject, SubjectRole::Publish, &x.item)));
        let reads = p
            .sources
            .iter()
            .filter(|s| s.kind == abi::source_kind::SUBJECT)
            .map(|s| {
                let item = s.item.as_ref().ok_or_else(|| {
                    format!(
                        "pipeline {}: subject({:?}) names no value type",
                        p.name, s.text
                    )
                })?;
                Ok((&s.text, SubjectRole::Subscribe, item))
            });
        for used in publishes.chain(reads) {
            let (subject, role, item) = used?;
            recorder
                .subject_use(subject, track, role, item.clone())
                .map_err(|e| format!("pipeline {}: {role} {subject:?}: {e}", p.name))?;
        }
    }
    Ok(())
}

/// A refused `track-call` in the terms of the person who wrote the DSL call: pipelines have
/// names, scopes have keys (the store's own text speaks of paths and modules).
fn in_person_terms(kind: &str, key: Option<&str>, e: hmr_track::ApplyError) -> String {
    use hmr_track::ApplyError::{DuplicatePath, InvalidKey};
    let what = if kind == "pipeline" { "name" } else { "key" };
    match (e, key) {
        (DuplicatePath { .. }, Some(key)) if kind == "pipeline" => {
            format!("two pipelines are named `{key}`")
        }
        (DuplicatePath { path, .. }, Some(key)) => {
            format!("two {kind}s side by side are keyed `{key}` (at {path})")
        }
        (InvalidKey { key, .. }, _) => format!(
            "{kind} {what} {key:?} is not allowed: a {what} is non-empty and holds none of \
             '|', ':', '#' and no control character"
        ),
        (e, _) => e.to_string(),
    }
}

/// One track scope opened by the plugin, as store events: the `track-call` and the core
/// entity it wraps (`pipeline-call` / `operator-call` and their returns).
fn open(
    recorder: &mut Recorder,
    kind: &str,
    key: Option<&str>,
    sig: Signature,
    hint: Option<Id>,
) -> Result<Id, hmr_track::ApplyError> {
    let track = recorder.track_call_hinted(kind, key, sig, hint)?;
    match kind {
        "pipeline" => {
            let e = recorder.pipeline_call(key.unwrap_or_default())?;
            recorder.pipeline_call_return(e)?;
        }
        "scope" => {}
        _ => {
            let e = recorder.operator_call(kind)?;
            recorder.operator_call_return(e)?;
        }
    }
    Ok(track)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::abi::{OpDesc, StateVTable, init_status};

    /// A pipeline's `init` that knows operators 0 and 1 and writes nothing.
    unsafe extern "C" fn init_two(_env: *const c_void, op: u32, _dst: *mut u8) -> u32 {
        if op < 2 {
            init_status::OK
        } else {
            init_status::UNKNOWN_OP
        }
    }

    unsafe extern "C" fn debug_nothing(
        _src: *const u8,
        _buf: *mut u8,
        _cap: usize,
        _len: *mut usize,
    ) -> u32 {
        plugin_api::abi::debug_status::NO_STATE
    }

    unsafe extern "C" fn clone_nothing(_src: *const u8, _dst: *mut u8) -> u32 {
        plugin_api::abi::clone_status::OK
    }

    unsafe extern "C" fn drop_nothing(_dst: *mut u8) -> bool {
        true
    }

    const NONE: RFingerprint = plugin_api::fingerprint::NONE;

    fn state(name: &'static str, size: usize, hash: u64) -> RFingerprint {
        RFingerprint {
            name: RStr::new(name),
            size,
            align: 8,
            hash,
        }
    }

    /// The deadline is the sender's: what was sent by then is taken however late it is
    /// read; the first message sent after it is a timeout, queued or not, so a flood of
    /// messages cannot carry the reader past it; with no deadline, whatever comes.
    #[test]
    fn the_deadline_counts_what_was_sent_by_then() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let before = now
            .checked_sub(ms(10))
            .expect("a clock past its first 10 ms");
        let until = now.checked_sub(ms(5)).expect("as above");
        let (tx, rx) = mpsc::channel();
        for (sent, m) in [(before, 0), (until, 1), (now, 2), (before, 3)] {
            tx.send((sent, m)).expect("the receiver is here");
        }
        // Read after the deadline, in order: two sent in time, then one sent late.
        assert_eq!(recv_sent_by(&rx, Some(until)).ok(), Some(0));
        assert_eq!(recv_sent_by(&rx, Some(until)).ok(), Some(1));
        assert_eq!(
            recv_sent_by(&rx, Some(until)),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        // Nothing queued: a timeout at once past the deadline, the message before it.
        assert_eq!(recv_sent_by(&rx, Some(until)).ok(), Some(3));
        assert_eq!(
            recv_sent_by(&rx, Some(until)),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        tx.send((now + ms(1), 4)).expect("the receiver is here");
        assert_eq!(recv_sent_by(&rx, Some(now + ms(60_000))).ok(), Some(4));
        tx.send((now, 5)).expect("the receiver is here");
        assert_eq!(recv_sent_by(&rx, None).ok(), Some(5));
        drop(tx);
        assert_eq!(
            recv_sent_by(&rx, None),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }

    /// An operator's track must be one of its own pipeline's (opened after `first`), however
    /// the run's tracks were split into batches (`base`).
    #[test]
    fn an_operator_names_a_track_of_its_own_pipeline() {
        let fp = state("u64", 8, 7);
        let opened = || Opened {
            key: None,
            signature: Signature {
                kind: Arc::from("scan"),
                input: None,
                output: None,
                state: fingerprint(&fp),
                seed: None,
                children: Vec::new(),
            },
        };
        // Tracks 6 to 8 (handles 7 to 9) since the last batch; this pipeline's from 7.
        let tracks = [opened(), opened(), opened()];
        let (base, first) = (6, 7);
        for (handle, accepted) in [(6, false), (7, false), (8, true), (9, true), (10, false)] {
            let op = OpDesc {
                track: handle,
                kind: RStr::new("scan"),
                state: StateVTable {
                    fingerprint: fp,
                    init: init_two,
                    drop: drop_nothing,
                    debug: debug_nothing,
                    clone: clone_nothing,
                },
            };
            let got = op_code(&tracks, base, first, std::ptr::null_mut(), 0, &op);
            match got {
                Ok(_) => assert!(accepted, "handle {handle} accepted"),
                Err(e) => {
                    assert!(!accepted, "handle {handle} refused: {e}");
                    assert!(e.contains("of this pipeline"), "{e}");
                }
            }
        }
    }

    /// Operator descriptions built by hand, as a faulty or forged plugin could send them:
    /// the state its track-call announced, the state its vtable allocates, its index; and
    /// what the host must say (`None`: accepted).
    #[test]
    fn op_descriptions_that_break_a_premise_are_refused() {
        let u64_state = state("u64", 8, 1);
        let cases: [(&str, RFingerprint, RFingerprint, usize, Option<&str>); 8] = [
            ("stateless", NONE, NONE, 0, None),
            ("same state", u64_state, u64_state, 1, None),
            (
                "another layout hash",
                u64_state,
                state("u64", 8, 2),
                0,
                Some(
                    "its state type is `u64` (size 8, align 8, layout hash 0x1) by its signature but `u64` (size 8, align 8, layout hash 0x2) by its state vtable",
                ),
            ),
            (
                "another size",
                u64_state,
                state("u64", 16, 1),
                0,
                Some("but `u64` (size 16,"),
            ),
            (
                "state only in the vtable",
                NONE,
                u64_state,
                0,
                Some("its state type is none by its signature but `u64`"),
            ),
            (
                "state only in the signature",
                u64_state,
                NONE,
                0,
                Some("by its signature but none (size 0) by its state vtable"),
            ),
            (
                "a nameless state with a size",
                NONE,
                RFingerprint { size: 8, ..NONE },
                0,
                Some("by its signature but none (size 8) by its state vtable"),
            ),
            (
                "an operator the code does not have",
                u64_state,
                u64_state,
                2,
                Some("its code has no operator 2 to seed (init answered 2)"),
            ),
        ];
        for (what, announced, vtable, index, expected) in cases {
            let sig = RSignature {
                input: NONE,
                output: NONE,
                state: announced,
                seed: RStr::NONE,
            };
            // SAFETY: the strings of `sig` are `'static`.
            let sig = unsafe { Names::default().signature(RStr::new("scan"), &sig) };
            let tracks = vec![Opened {
                key: None,
                signature: sig,
            }];
            let op = OpDesc {
                track: 1,
                kind: RStr::new("scan"),
                state: StateVTable {
                    fingerprint: vtable,
                    init: init_two,
                    drop: drop_nothing,
                    debug: debug_nothing,
                    clone: clone_nothing,
                },
            };
            let got = op_code(&tracks, 0, 0, std::ptr::null_mut(), index, &op);
            match (expected, got) {
                (None, Ok(code)) => assert_eq!(code.layout.size(), vtable.size, "{what}"),
                (Some(part), Err(e)) => assert!(e.contains(part), "{what}: {e}"),
                (None, Err(e)) => panic!("{what}: refused: {e}"),
                (Some(part), Ok(_)) => panic!("{what}: accepted, expected {part:?}"),
            }
        }
    }
}

//! A minimal host, shared by the tests of this directory: it records a registration,
//! allocates and seeds the state slots as the real host does, runs the chain through its
//! `extern "C"` entry points and drops everything at the end. No library is loaded: the
//! plugin is the test binary itself.
//!
//! Each test binary uses part of it.
#![allow(dead_code)]

pub mod inner;

use std::alloc::Layout;
use std::cell::RefCell;
use std::ffi::c_void;

use plugin_api::abi::{
    EmitCx, HostApi, OpDesc, PipelineDesc, RSignature, RStr, init_status, status,
};
use plugin_api::dsl::run_register;
use plugin_api::prelude::*;

/// Set in a child process that wants the plugin's own panic hook kept (see [`register`]).
pub const CHILD: &str = "HMR_OPERATORS_ABORT_CHILD";

/// One pipeline as the plugin handed it over.
pub struct Captured {
    pub env: *mut c_void,
    pub desc: PipelineDesc,
    pub ops: Vec<OpDesc>,
}

/// What a track-call announced.
#[derive(Clone, Debug)]
pub struct Announced {
    pub handle: u64,
    pub kind: String,
    /// The state type's name, size and hash.
    pub state: (Option<String>, usize, u64),
    /// The signature's seed text.
    pub seed: Option<String>,
}

/// What the registration produced.
#[derive(Default)]
pub struct Registry {
    next: u64,
    pub announced: Vec<Announced>,
    pub pipelines: Vec<Captured>,
    pub failed: Option<String>,
}

unsafe extern "C" fn track_call(
    ctx: *mut c_void,
    kind: RStr,
    _key: RStr,
    sig: *const RSignature,
) -> u64 {
    // SAFETY: `ctx` is the `Registry` of `register`; the plugin passes a valid signature and
    // strings valid for the call.
    unsafe {
        let (reg, sig) = (&mut *ctx.cast::<Registry>(), &*sig);
        reg.next += 1;
        let owned = |s: RStr| s.to_string_lossy().map(|n| n.into_owned());
        reg.announced.push(Announced {
            handle: reg.next,
            kind: owned(kind).unwrap_or_default(),
            state: (owned(sig.state.name), sig.state.size, sig.state.hash),
            seed: owned(sig.seed),
        });
        reg.next
    }
}

unsafe extern "C" fn track_call_return(_ctx: *mut c_void, _track: u64) {}

unsafe extern "C" fn add_pipeline(ctx: *mut c_void, desc: *const PipelineDesc) {
    // SAFETY: as in `track_call`; the descriptions are valid for the call, and are copied.
    unsafe {
        let reg = &mut *ctx.cast::<Registry>();
        let d = &*desc;
        let ops = std::slice::from_raw_parts(d.ops, d.n_ops).to_vec();
        reg.pipelines.push(Captured {
            env: d.env,
            desc: PipelineDesc {
                name: RStr::NONE,
                ops: std::ptr::null(),
                ..*d
            },
            ops,
        });
    }
}

unsafe extern "C" fn fail(ctx: *mut c_void, message: RStr) {
    // SAFETY: as in `track_call`.
    unsafe {
        let reg = &mut *ctx.cast::<Registry>();
        reg.failed = message.to_string_lossy().map(|m| m.into_owned());
    }
}

type Build = Box<dyn FnOnce(&mut Plugin<'_>)>;

thread_local! {
    /// The registration [`register`] runs (a closure: `run_register` takes a `fn`).
    static BUILD: RefCell<Option<Build>> = RefCell::new(None);
}

fn trampoline(p: &mut Plugin<'_>) {
    let build = BUILD
        .with(|b| b.borrow_mut().take())
        .expect("a registration to run");
    build(p)
}

/// Runs `f` as a plugin's registration against the host here.
pub fn register(f: impl FnOnce(&mut Plugin<'_>) + 'static) -> Registry {
    BUILD.with(|b| *b.borrow_mut() = Some(Box::new(f)));
    let mut reg = Registry::default();
    let api = HostApi {
        abi_version: plugin_api::abi::ABI_VERSION,
        ctx: (&raw mut reg).cast::<c_void>(),
        track_call,
        track_call_return,
        add_pipeline,
        fail,
    };
    // SAFETY: `api` and the registry it points at live across the call.
    let ok = unsafe { run_register(&api, trampoline) };
    assert!(ok, "registration failed: {:?}", reg.failed);
    // The plugin installs a silent panic hook in its std, which is this binary's: restore
    // the default so that a failing assertion still prints (unless a test wants the hook).
    if std::env::var_os(CHILD).is_none() {
        let _ = std::panic::take_hook();
    }
    reg
}

/// What the chain sent to the host while it ran.
#[derive(Default)]
pub struct Sink {
    logs: RefCell<Vec<String>>,
    /// The clock when each of `logs` was logged.
    log_times: RefCell<Vec<u64>>,
    errors: RefCell<Vec<(u32, String)>>,
    /// Where the plugin says which operator it is in (`EmitCx::current_op`).
    current_op: std::sync::atomic::AtomicU32,
    /// The virtual clock the chain reads (`EmitCx::now`), in nanoseconds.
    now: std::cell::Cell<u64>,
    /// The wakes asked for (`EmitCx::schedule`): deadline, operator, and the order asked.
    timers: RefCell<Vec<(u64, u64, u32)>>,
    asked: std::cell::Cell<u64>,
    /// Inner subscriptions of higher-order operators (`inner.rs`).
    inner: inner::Inners,
}

unsafe extern "C" fn on_now(host: *mut c_void) -> u64 {
    // SAFETY: `host` is the `Sink` of the running pipeline.
    unsafe { (*host.cast::<Sink>()).now.get() }
}

unsafe extern "C" fn on_schedule(host: *mut c_void, op: u32, deadline: u64) {
    // SAFETY: as in `on_now`.
    let sink = unsafe { &*host.cast::<Sink>() };
    let n = sink.asked.get();
    sink.asked.set(n + 1);
    sink.timers.borrow_mut().push((deadline, n, op));
}

unsafe extern "C" fn on_log(host: *mut c_void, _op: u32, text: RStr) {
    // SAFETY: `host` is the `Sink` of the running pipeline; `text` is valid for the call.
    unsafe {
        let sink = &*host.cast::<Sink>();
        let text = text.to_string_lossy().unwrap_or_default().into_owned();
        sink.logs.borrow_mut().push(text);
        sink.log_times.borrow_mut().push(sink.now.get());
    }
}

unsafe extern "C" fn on_publish(_host: *mut c_void, _op: u32, _value: *const c_void) {}

unsafe extern "C" fn on_error(host: *mut c_void, op: u32, message: RStr) {
    // SAFETY: as in `on_log`.
    unsafe {
        let sink = &*host.cast::<Sink>();
        let text = message.to_string_lossy().unwrap_or_default().into_owned();
        sink.errors.borrow_mut().push((op, text));
    }
}

/// A pipeline running on slots allocated and seeded here, as the host does it.
pub struct Running {
    pub p: Captured,
    pub slots: Vec<(*mut u8, Layout)>,
    sink: Box<Sink>,
    pub cx: EmitCx,
}

impl Running {
    pub fn new(p: Captured) -> Running {
        let mut slots = Vec::new();
        for (i, op) in p.ops.iter().enumerate() {
            let fp = &op.state.fingerprint;
            let layout = Layout::from_size_align(fp.size, fp.align).expect("a valid layout");
            let ptr = if layout.size() == 0 {
                layout.align() as *mut u8
            } else {
                // SAFETY: a non-zero size.
                unsafe { std::alloc::alloc(layout) }
            };
            // SAFETY: `ptr` fits the operator's state; `env` is the pipeline's.
            let s = unsafe { (op.state.init)(p.env, i as u32, ptr) };
            assert_eq!(s, init_status::OK, "seeding operator {i}");
            slots.push((ptr, layout));
        }
        let sink = Box::<Sink>::default();
        let cx = EmitCx {
            host: (&raw const *sink).cast_mut().cast::<c_void>(),
            log: on_log,
            error: on_error,
            publish: on_publish,
            current_op: &raw const sink.current_op,
            counts: std::ptr::null(),
            marble: plugin_api::abi::no_marble,
            marble_calls: std::ptr::null(),
            now: on_now,
            schedule: on_schedule,
            subscribe: inner::on_subscribe,
            subscribe_sync: inner::on_subscribe_sync,
            subscribe_sync_again: inner::on_subscribe_sync_again,
            unsubscribe: inner::on_unsubscribe,
            api: sink.inner.api(),
        };
        Running { p, slots, sink, cx }
    }

    /// Swaps in `new` (another registration of the same chain) as a reload that keeps every
    /// state does: the slots stay, the old closures are freed.
    pub fn reload(&mut self, new: Captured) {
        assert_eq!(new.ops.len(), self.p.ops.len(), "the same chain");
        for (old, op) in self.p.ops.iter().zip(&new.ops) {
            let (a, b) = (&old.state.fingerprint, &op.state.fingerprint);
            assert_eq!((a.size, a.align, a.hash), (b.size, b.align, b.hash));
        }
        let old = std::mem::replace(&mut self.p, new);
        // SAFETY: the old closures are freed once, by their own version.
        unsafe { (old.desc.drop_env)(old.env) };
    }

    pub fn ptrs(&self) -> Vec<*mut u8> {
        self.slots.iter().map(|s| s.0).collect()
    }

    /// Tells the chain it starts, as the host does before the source's first value.
    pub fn start(&self) -> u32 {
        let ptrs = self.ptrs();
        // SAFETY: one seeded slot per operator and a valid context.
        unsafe { (self.p.desc.start)(self.p.env, ptrs.as_ptr(), &self.cx) }
    }

    /// Pushes `xs` as one batch; returns the status and how many were taken.
    pub fn push(&self, xs: &[u64]) -> (u32, usize) {
        self.push_port(0, xs)
    }

    /// Pushes `xs` as one batch on source `port` (a fan-in's ports: the left input's first,
    /// then the right one's); returns the status and how many were taken.
    pub fn push_port(&self, port: u32, xs: &[u64]) -> (u32, usize) {
        let ptrs = self.ptrs();
        let mut consumed = 0;
        // SAFETY: one seeded slot per operator, a valid batch and context.
        let s = unsafe {
            (self.p.desc.push)(
                self.p.env,
                ptrs.as_ptr(),
                port,
                xs.as_ptr().cast(),
                xs.len(),
                &self.cx,
                &mut consumed,
            )
        };
        (s, consumed)
    }

    /// Pushes each of `xs` on its own, as a push source does.
    pub fn push_each(&self, xs: impl IntoIterator<Item = u64>) -> Vec<u32> {
        xs.into_iter().map(|x| self.push_one_port(0, x)).collect()
    }

    /// Pushes `x` alone on source `port`, through the single-value entry point.
    pub fn push_one_port(&self, port: u32, x: u64) -> u32 {
        let ptrs = self.ptrs();
        // SAFETY: as in `push_port`; `x` outlives the call.
        unsafe {
            (self.p.desc.push_one)(
                self.p.env,
                ptrs.as_ptr(),
                port,
                (&raw const x).cast(),
                &self.cx,
            )
        }
    }

    pub fn complete(&self) -> u32 {
        self.complete_port(0)
    }

    /// Tells the chain that source `port` completed.
    pub fn complete_port(&self, port: u32) -> u32 {
        let ptrs = self.ptrs();
        // SAFETY: as in `push_port`.
        unsafe { (self.p.desc.complete)(self.p.env, ptrs.as_ptr(), port, &self.cx) }
    }

    /// The virtual clock, in nanoseconds.
    pub fn now(&self) -> u64 {
        self.sink.now.get()
    }

    /// How many wakes are outstanding.
    pub fn timers(&self) -> usize {
        self.sink.timers.borrow().len()
    }

    /// Fires the one wake due first at or before `t` (ties: the order asked for), with the
    /// clock at its deadline; returns the deadline and the wake's status, or `None` if no
    /// wake is due by `t` (the clock then stays).
    pub fn fire_next(&self, t: u64) -> Option<(u64, u32)> {
        let next = {
            let mut timers = self.sink.timers.borrow_mut();
            let i = (0..timers.len())
                .filter(|&i| timers[i].0 <= t)
                .min_by_key(|&i| (timers[i].0, timers[i].1))?;
            timers.remove(i)
        };
        self.sink.now.set(next.0.max(self.sink.now.get()));
        Some((next.0, self.wake(next.2)))
    }

    /// Moves the virtual clock to `t` (nanoseconds), waking each operator whose timer is
    /// due on the way, earliest deadline first (ties: the order they were asked for), with
    /// the clock at that deadline, as the host's pipeline thread does. Returns the statuses
    /// of the wakes that were not `CONTINUE`.
    pub fn advance_to(&self, t: u64) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some((_, s)) = self.fire_next(t) {
            if s != status::CONTINUE {
                out.push(s);
            }
        }
        self.sink.now.set(t.max(self.sink.now.get()));
        out
    }

    /// Runs operator `op`'s wake.
    pub fn wake(&self, op: u32) -> u32 {
        let ptrs = self.ptrs();
        // SAFETY: as in `push_port`.
        unsafe {
            (self.p.desc.wake)(
                self.p.env,
                ptrs.as_ptr(),
                op,
                std::ptr::null_mut(),
                &self.cx,
            )
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.sink.logs.borrow().clone()
    }

    /// What the chain logged, each text with the clock when it was logged.
    pub fn timed_logs(&self) -> Vec<(u64, String)> {
        let times = self.sink.log_times.borrow();
        times.iter().copied().zip(self.logs()).collect()
    }

    pub fn errors(&self) -> Vec<(u32, String)> {
        self.sink.errors.borrow().clone()
    }

    /// The Debug text of operator `op`'s state, through its vtable.
    pub fn state_text(&self, op: usize) -> String {
        let mut buf = vec![0u8; 4096];
        let mut len = 0;
        let vtable = &self.p.ops[op].state;
        // SAFETY: the slot holds the operator's seeded state; `buf` has room for 4096 bytes.
        let s = unsafe { (vtable.debug)(self.slots[op].0, buf.as_mut_ptr(), buf.len(), &mut len) };
        assert_eq!(s, plugin_api::abi::debug_status::OK, "op {op}");
        String::from_utf8(buf[..len].to_vec()).expect("utf-8")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for (op, (ptr, layout)) in self.p.ops.iter().zip(&self.slots) {
            // SAFETY: each slot holds a value seeded above and is dropped once.
            unsafe {
                assert!((op.state.drop)(*ptr), "dropping a state panicked");
                if layout.size() != 0 {
                    std::alloc::dealloc(*ptr, *layout);
                }
            }
        }
        // SAFETY: the closures are freed once, by their own version.
        unsafe { (self.p.desc.drop_env)(self.p.env) };
    }
}

/// The one pipeline of a registration, with its slots seeded.
pub fn only_pipeline(reg: Registry) -> Running {
    Running::new(only_captured(reg))
}

/// The one pipeline of a registration, as handed over.
pub fn only_captured(reg: Registry) -> Captured {
    let mut pipelines = reg.pipelines;
    assert_eq!(pipelines.len(), 1);
    pipelines.remove(0)
}

/// How a feed reaches the chain.
#[derive(Clone, Debug)]
pub enum Feed {
    /// In batches of these sizes (cycled), through the batch entry point.
    Batches(Vec<usize>),
    /// One value at a time, through the single-value entry point.
    OneByOne,
}

/// Runs a pipeline built by `build` as the host runs a source: start, `values` fed as
/// `feed` says until the chain completes, then completion. With `reload_at: Some(i)`, the
/// chain `rebuild` registers takes over after `i` values and carries on with the first
/// registration's state slots, as across a reload that keeps every state. Returns what
/// the chain logged, then `complete after k`: how many of the source's values the chain
/// had taken when it completed (all of them when the source's completion completed it).
/// Any status but `CONTINUE` and `COMPLETE` fails the test.
pub fn run_feed(
    build: impl Fn(&mut Plugin<'_>) + Clone + 'static,
    rebuild: impl Fn(&mut Plugin<'_>) + Clone + 'static,
    values: &[u64],
    feed: &Feed,
    reload_at: Option<usize>,
) -> Vec<String> {
    let mut run = only_pipeline(register(build));
    // The source's values the chain had taken when it completed.
    let mut taken = None;
    let mut done = match run.start() {
        status::CONTINUE => false,
        status::COMPLETE => {
            taken = Some(0);
            true
        }
        other => panic!("start returned {other}: {:?}", run.errors()),
    };
    let mut fed = 0;
    let mut sizes = match feed {
        Feed::Batches(sizes) => sizes.clone(),
        Feed::OneByOne => vec![1],
    };
    sizes.retain(|&n| n > 0);
    if sizes.is_empty() {
        sizes.push(1);
    }
    let mut size = sizes.iter().copied().cycle();
    while !done && fed < values.len() {
        if reload_at == Some(fed) {
            run.reload(only_captured(register(rebuild.clone())));
        }
        let mut n = size.next().expect("cycled").min(values.len() - fed);
        if let Some(r) = reload_at.filter(|&r| r > fed) {
            n = n.min(r - fed);
        }
        let chunk = &values[fed..fed + n];
        let (s, consumed) = match feed {
            Feed::Batches(_) => {
                let (s, consumed) = run.push(chunk);
                if s == status::COMPLETE {
                    assert!(consumed >= 1 && consumed <= chunk.len(), "{consumed}");
                }
                (s, consumed)
            }
            Feed::OneByOne => {
                assert_eq!(chunk.len(), 1, "one value at a time");
                (run.push_each(chunk.iter().copied())[0], 1)
            }
        };
        match s {
            status::CONTINUE => {}
            status::COMPLETE => {
                done = true;
                taken = Some(fed + consumed);
            }
            other => panic!("push returned {other}: {:?}", run.errors()),
        }
        fed += n;
    }
    // The source completes only if the chain did not complete first (the host calls no
    // `complete` after a COMPLETE status); a source's completion completes a linear chain.
    if !done {
        let s = run.complete();
        assert_eq!(s, status::COMPLETE, "complete: {:?}", run.errors());
    }
    assert_eq!(run.errors(), vec![]);
    let mut out = run.logs();
    out.push(format!("complete after {}", taken.unwrap_or(values.len())));
    out
}

/// `cases` property cases from a fixed seed (`seed`), so every run checks the same inputs:
/// a failure is reproducible, never a flake; `PROPTEST_RNG_SEED` picks another seed for
/// exploring.
pub fn fixed_seed(cases: u32, seed: u64) -> proptest::test_runner::Config {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seed);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        ..proptest::test_runner::Config::default()
    }
}

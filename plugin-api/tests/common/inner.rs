//! Inner subscriptions of the higher-order operators (`switch_map`, `merge_map`,
//! `concat_map`, `exhaust_map`), run by the minimal host the way the real host runs them
//! (`host/src/runtime.rs`: `HostCx::subscribe`, `cb_unsubscribe`, `Driver::inner_event`,
//! `inner_tick`, `reap_inners`, `reproject`), simplified:
//!
//! - the run-time registration API ([`Inners::api`]) records the tracks an inner stream
//!   announces while it is bound (handles 1, 2, ... per binding, as the host's `InnerReg`);
//! - `subscribe` takes the inner stream's env and moves the outer value into a host
//!   allocation, allocates and seeds the inner operators' slots through their `init` with
//!   the inner env, answers an [`InnerHandle`] (instance number, slots, an `EmitCx` for the
//!   instance), and starts the instance's `interval_ms` ports on the virtual clock (their
//!   first value due at once, as the host's `start_ports`);
//! - `unsubscribe` moves the instance to a graveyard, freed by [`Running::reap`] after the
//!   call returns;
//! - inner values and inner operators' timers reach the chain through its `wake` entry with
//!   the higher-order operator's number and an [`InnerCall`] (`PUSH`, `WAKE`), in deadline
//!   order together with the pipeline's own timers ([`Running::run_until`]);
//! - a reload re-projects each live instance through the new code's `project` entry and
//!   swaps its env, keeping its slots, ports and timers ([`Running::reload_reprojecting`]).
//!
//! Simplifications: inner timers are keyed by the inner operator's number, not its track
//! (the tests reload the same chain, so the numbers do not move); a re-projection whose
//! sources or state types changed is not restarted (the real host restarts it): it is
//! reported as an error, which the tests here never expect.

use std::alloc::Layout;
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::BTreeMap;
use std::ffi::c_void;

use plugin_api::abi::{
    DropEnvFn, DropStateFn, EmitCx, HostApi, InnerCall, InnerDesc, InnerHandle, OpDesc,
    PipelineDesc, RSignature, RStr, init_status, inner_answer, inner_kind, source_kind, status,
};

use super::{Captured, Running, Sink};

/// A track announced through the run-time registration API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunTimeTrack {
    pub kind: String,
    pub key: Option<String>,
    /// How many tracks were open around it (0: directly under the subscription).
    pub depth: usize,
}

/// What is due at a deadline of an inner subscription.
#[derive(Clone, Copy, Debug)]
enum Due {
    /// The next value of instance `.0`'s interval on port `.1`.
    Port(u64, u32),
    /// A timer of instance `.0`'s operator `.1`.
    Op(u64, u32),
}

/// How an inner port is driven.
#[derive(Clone, Copy, Debug)]
enum Port {
    /// An interval: period (ns) and next value.
    Interval { period: u64, n: u64 },
    /// Run by the higher-order operator itself (`range`, `of`), or done.
    Done,
}

/// A source as the plugin described it (what a re-projection compares).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Source {
    kind: u32,
    a: u64,
    b: u64,
    label: String,
}

/// An outer value moved into host memory.
struct Held {
    ptr: *mut u8,
    layout: Layout,
    drop: DropStateFn,
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: a live value of the layout it was allocated with, dropped once with its
        // own glue.
        unsafe {
            assert!((self.drop)(self.ptr), "dropping an outer value panicked");
            if self.layout.size() != 0 {
                std::alloc::dealloc(self.ptr, self.layout);
            }
        }
    }
}

/// The compiled inner stream of one version.
struct Code {
    env: *mut c_void,
    drop_env: DropEnvFn,
    ops: Vec<OpDesc>,
    sources: Vec<Source>,
}

impl Drop for Code {
    fn drop(&mut self) {
        // SAFETY: the env was handed over by the plugin and is freed once.
        unsafe { (self.drop_env)(self.env) };
    }
}

/// Seeded state slots of an instance.
struct Slots {
    drops: Vec<DropStateFn>,
    slots: Vec<(*mut u8, Layout)>,
    ptrs: Vec<*mut u8>,
}

impl Slots {
    /// Allocates and seeds one slot per operator of `ops` through their `init` with `env`.
    fn seed(ops: &[OpDesc], env: *mut c_void) -> Result<Slots, String> {
        let mut s = Slots {
            drops: Vec::new(),
            slots: Vec::new(),
            ptrs: Vec::new(),
        };
        for (i, op) in ops.iter().enumerate() {
            let fp = &op.state.fingerprint;
            let layout = Layout::from_size_align(fp.size, fp.align.max(1))
                .map_err(|e| format!("inner operator {i}: {e}"))?;
            let ptr = if layout.size() == 0 {
                layout.align() as *mut u8
            } else {
                // SAFETY: a non-zero size.
                unsafe { std::alloc::alloc(layout) }
            };
            // SAFETY: `ptr` fits the operator's state; `env` is the inner stream's.
            let st = unsafe { (op.state.init)(env, i as u32, ptr) };
            if st != init_status::OK {
                if layout.size() != 0 {
                    // SAFETY: allocated just above, never initialised.
                    unsafe { std::alloc::dealloc(ptr, layout) };
                }
                return Err(format!("seeding inner operator {i}: status {st}"));
            }
            s.drops.push(op.state.drop);
            s.slots.push((ptr, layout));
            s.ptrs.push(ptr);
        }
        Ok(s)
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        for (drop, (ptr, layout)) in self.drops.iter().zip(&self.slots) {
            // SAFETY: each slot holds a seeded state, dropped once.
            unsafe {
                assert!(drop(*ptr), "dropping an inner state panicked");
                if layout.size() != 0 {
                    std::alloc::dealloc(*ptr, *layout);
                }
            }
        }
    }
}

/// The callbacks' view of one instance (behind its `EmitCx::host`).
struct InstHost {
    sink: *const Sink,
    instance: u64,
}

/// One inner subscription.
struct Instance {
    /// The higher-order operator's number in the pipeline.
    op: u32,
    value: Held,
    slots: Slots,
    code: Code,
    ports: Vec<Port>,
    host: Box<InstHost>,
    cx: Box<EmitCx>,
}

/// What a re-projection handed over.
struct Projected {
    code: Code,
    opened: usize,
}

/// The inner subscriptions of one running pipeline (part of its [`Sink`]).
#[derive(Default)]
pub struct Inners {
    api: OnceCell<HostApi>,
    /// The tracks the binding under way opened (handle: index + 1), and how many are open.
    opened: RefCell<Vec<RunTimeTrack>>,
    depth: Cell<usize>,
    /// Every track announced at run time, in order.
    pub announced: RefCell<Vec<RunTimeTrack>>,
    live: RefCell<BTreeMap<u64, Instance>>,
    graveyard: RefCell<Vec<Instance>>,
    /// The last instance number given.
    last: Cell<u64>,
    /// Deadline (ns), the order asked (the sink's counter, shared with the pipeline's
    /// timers), and what is due.
    timers: RefCell<Vec<(u64, u64, Due)>>,
    reprojecting: Cell<bool>,
    reprojected: RefCell<Option<Projected>>,
    /// How many instances were ended and freed.
    pub freed: Cell<u64>,
    /// How many synchronous inner streams ran inside the outer value's call without being
    /// subscribed (`EmitCx::subscribe_sync`); numbered as instances are.
    pub synced: Cell<u64>,
    /// Those with operators: the context handed for them, while they run (until their
    /// `unsubscribe`), then until the next [`Running::reap`].
    #[allow(clippy::type_complexity)]
    sync_live: RefCell<Vec<(u64, Box<InstHost>, Box<EmitCx>)>>,
    #[allow(clippy::type_complexity)]
    sync_done: RefCell<Vec<(u64, Box<InstHost>, Box<EmitCx>)>>,
    /// Whether `subscribe_sync` answers 0 (every inner stream subscribed).
    pub refuse_sync: Cell<bool>,
    /// By higher-order operator: the memo number last answered and the operators' kinds it
    /// was answered for (`subscribe_sync_again` names it).
    sync_memos: RefCell<BTreeMap<u32, (u64, Vec<String>)>>,
    /// The last memo number given.
    last_memo: Cell<u64>,
    /// How many synchronous inner streams were named by memo instead of described.
    pub named: Cell<u64>,
    /// The sources' labels of every inner stream subscribed, in order.
    pub labels: RefCell<Vec<String>>,
}

impl Inners {
    /// The run-time registration API (`EmitCx::api`) for the pipeline whose sink this is.
    pub(super) fn api(&self) -> *const HostApi {
        self.api.get_or_init(|| HostApi {
            abi_version: plugin_api::abi::ABI_VERSION,
            ctx: (self as *const Inners).cast_mut().cast::<c_void>(),
            track_call: rt_track_call,
            track_call_return: rt_track_call_return,
            add_pipeline: rt_add_pipeline,
            fail: rt_fail,
        })
    }

    fn push_timer(&self, sink: &Sink, deadline: u64, due: Due) {
        let n = sink.asked.get();
        sink.asked.set(n + 1);
        self.timers.borrow_mut().push((deadline, n, due));
    }

    fn subscribe(&self, sink: &Sink, op: u32, desc: &InnerDesc, out: &mut InnerHandle) -> bool {
        let opened = std::mem::take(&mut *self.opened.borrow_mut());
        self.depth.set(0);
        let sources = read_sources(desc);
        self.labels
            .borrow_mut()
            .extend(sources.iter().map(|s| s.label.clone()));
        // SAFETY: the plugin passes `n_ops` operators valid for the call.
        let ops = unsafe { slice(desc.ops, desc.n_ops) }.to_vec();
        let code = Code {
            env: desc.env,
            drop_env: desc.drop_env,
            ops,
            sources,
        };
        if self.reprojecting.get() {
            if !desc.value.is_null() {
                // SAFETY: given up by the plugin; dropped with its own glue.
                unsafe { (desc.value_drop)(desc.value.cast()) };
            }
            *self.reprojected.borrow_mut() = Some(Projected {
                code,
                opened: opened.len(),
            });
            return false;
        }
        let refuse = |why: String| {
            sink.errors.borrow_mut().push((op, why));
            false
        };
        if desc.value.is_null() {
            return refuse("a subscription without its outer value".to_owned());
        }
        // Moved: the plugin forgets its copy, the bytes are ours.
        let fp = &desc.value_type;
        let layout = Layout::from_size_align(fp.size, fp.align.max(1)).expect("a value layout");
        let ptr = if layout.size() == 0 {
            layout.align() as *mut u8
        } else {
            // SAFETY: a non-zero size.
            unsafe { std::alloc::alloc(layout) }
        };
        // SAFETY: `desc.value` points at a live value of this layout, given up by the plugin.
        unsafe { std::ptr::copy_nonoverlapping(desc.value.cast::<u8>(), ptr, layout.size()) };
        let value = Held {
            ptr,
            layout,
            drop: desc.value_drop,
        };
        if let Some(i) = code
            .ops
            .iter()
            .position(|o| o.track == 0 || o.track as usize > opened.len())
        {
            return refuse(format!("inner operator {i}: its track was not registered"));
        }
        if desc.n_publishes > 0 {
            return refuse("an inner stream publishes".to_owned());
        }
        if let Some(s) = code.sources.iter().find(|s| {
            !matches!(
                s.kind,
                source_kind::INTERVAL | source_kind::RANGE | source_kind::OF
            )
        }) {
            return refuse(format!("an inner stream's source is `{}`", s.label));
        }
        let slots = match Slots::seed(&code.ops, code.env) {
            Ok(s) => s,
            Err(e) => return refuse(e),
        };
        let id = self.last.get() + 1;
        self.last.set(id);
        let now = sink.now.get();
        let ports = code
            .sources
            .iter()
            .enumerate()
            .map(|(port, s)| {
                if s.kind == source_kind::INTERVAL {
                    self.push_timer(sink, now, Due::Port(id, port as u32));
                    Port::Interval {
                        period: s.a.max(1) * 1_000_000,
                        n: 0,
                    }
                } else {
                    Port::Done
                }
            })
            .collect();
        let host = Box::new(InstHost {
            sink: sink as *const Sink,
            instance: id,
        });
        let cx = instance_cx(&host, sink, self.api());
        out.instance = id;
        out.states = slots.ptrs.as_ptr();
        out.cx = &raw const *cx;
        self.live.borrow_mut().insert(
            id,
            Instance {
                op,
                value,
                slots,
                code,
                ports,
                host,
                cx,
            },
        );
        true
    }
}

/// A slice from the plugin's pointer and length (empty for a null pointer).
///
/// # Safety
/// Unless `n` is 0, `ptr` must point at `n` values valid for `'a`.
unsafe fn slice<'a, T>(ptr: *const T, n: usize) -> &'a [T] {
    if n == 0 {
        &[]
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(ptr, n) }
    }
}

fn read_sources(desc: &InnerDesc) -> Vec<Source> {
    // SAFETY: the plugin passes `n_sources` descriptions, their strings valid for the call.
    unsafe { slice(desc.sources, desc.n_sources) }
        .iter()
        .map(|s| Source {
            kind: s.kind,
            a: s.a,
            b: s.b,
            // SAFETY: as above.
            label: unsafe { s.label.to_string_lossy() }
                .unwrap_or_default()
                .into_owned(),
        })
        .collect()
}

// ---- The run-time registration API ----

unsafe extern "C" fn rt_track_call(
    ctx: *mut c_void,
    kind: RStr,
    key: RStr,
    _sig: *const RSignature,
) -> u64 {
    // SAFETY: `ctx` is the `Inners` that made the API; strings valid for the call.
    unsafe {
        let inners = &*ctx.cast::<Inners>();
        let owned = |s: RStr| s.to_string_lossy().map(|n| n.into_owned());
        let track = RunTimeTrack {
            kind: owned(kind).unwrap_or_default(),
            key: owned(key),
            depth: inners.depth.get(),
        };
        inners.depth.set(inners.depth.get() + 1);
        inners.announced.borrow_mut().push(track.clone());
        let mut opened = inners.opened.borrow_mut();
        opened.push(track);
        opened.len() as u64
    }
}

unsafe extern "C" fn rt_track_call_return(ctx: *mut c_void, _track: u64) {
    // SAFETY: as in `rt_track_call`.
    let inners = unsafe { &*ctx.cast::<Inners>() };
    inners.depth.set(inners.depth.get().saturating_sub(1));
}

unsafe extern "C" fn rt_add_pipeline(_ctx: *mut c_void, desc: *const PipelineDesc) {
    // Never called at run time; freed unused.
    // SAFETY: a description valid for the call, whose env the plugin gave up.
    unsafe { ((*desc).drop_env)((*desc).env) };
}

unsafe extern "C" fn rt_fail(_ctx: *mut c_void, _message: RStr) {}

// ---- The pipeline's callbacks for inner subscriptions ----

pub(super) unsafe extern "C" fn on_subscribe(
    host: *mut c_void,
    op: u32,
    desc: *const InnerDesc,
    out: *mut InnerHandle,
) -> bool {
    // SAFETY: `host` is the `Sink` of the running pipeline; `desc` and `out` are valid for
    // the call.
    unsafe {
        let sink = &*host.cast::<Sink>();
        sink.inner.subscribe(sink, op, &*desc, &mut *out)
    }
}

pub(super) unsafe extern "C" fn on_subscribe_sync(
    host: *mut c_void,
    op: u32,
    ops: *const OpDesc,
    sigs: *const RSignature,
    n_ops: usize,
    cx: *mut *const EmitCx,
    memo: *mut u64,
) -> u64 {
    // SAFETY: as in `on_subscribe`; `ops`, `sigs` (and `cx` and `memo`, with operators)
    // valid for the call.
    let sink = unsafe { &*host.cast::<Sink>() };
    let inner = &sink.inner;
    if inner.reprojecting.get() || inner.refuse_sync.get() {
        return 0;
    }
    // SAFETY: as above.
    let (ops, sigs) = unsafe { (slice(ops, n_ops), slice(sigs, n_ops)) };
    let mut kinds = Vec::new();
    if !ops.is_empty() {
        // One track per operator, in order, as the host requires, and nothing registered
        // through the API before (the host registers them itself).
        let linear = ops.iter().enumerate().all(|(i, o)| o.track == i as u64 + 1);
        if cx.is_null() || !linear || sigs.len() != ops.len() || !inner.opened.borrow().is_empty() {
            return 0;
        }
        for o in ops {
            // SAFETY: the plugin's strings, valid for the call.
            let kind = unsafe { o.kind.to_string_lossy() }.unwrap_or_default();
            kinds.push(kind.into_owned());
        }
    }
    // SAFETY: `cx` is valid for the call (checked non-null above, with operators).
    let id = unsafe { enter_sync(sink, &kinds, cx) };
    if !ops.is_empty() && !memo.is_null() {
        // A memo number for these kinds: the last one if the same, else a new one.
        let mut memos = inner.sync_memos.borrow_mut();
        let token = match memos.get(&op) {
            Some((token, same)) if *same == kinds => *token,
            _ => {
                let token = inner.last_memo.get() + 1;
                inner.last_memo.set(token);
                memos.insert(op, (token, kinds));
                token
            }
        };
        // SAFETY: `memo` is valid for the call (the plugin's).
        unsafe { *memo = token };
    }
    id
}

/// Names the operators a memo number was answered for: as `on_subscribe_sync` with them.
pub(super) unsafe extern "C" fn on_subscribe_sync_again(
    host: *mut c_void,
    op: u32,
    memo: u64,
    cx: *mut *const EmitCx,
) -> u64 {
    // SAFETY: as in `on_subscribe`; `cx` valid for the call.
    let sink = unsafe { &*host.cast::<Sink>() };
    let inner = &sink.inner;
    if inner.reprojecting.get()
        || inner.refuse_sync.get()
        || cx.is_null()
        || !inner.opened.borrow().is_empty()
    {
        return 0;
    }
    let Some(kinds) = inner
        .sync_memos
        .borrow()
        .get(&op)
        .filter(|(token, _)| *token == memo)
        .map(|(_, kinds)| kinds.clone())
    else {
        return 0;
    };
    inner.named.set(inner.named.get() + 1);
    // SAFETY: `cx` is valid for the call (checked non-null above).
    unsafe { enter_sync(sink, &kinds, cx) }
}

/// Numbers a synchronous inner stream run inside the call whose operators are of `kinds`
/// (none: a bare source), announcing their tracks as the host registers them (unkeyed,
/// under the subscription), and hands a context for them through `cx`.
///
/// # Safety
/// With operators, `cx` must be writable.
unsafe fn enter_sync(sink: &Sink, kinds: &[String], cx: *mut *const EmitCx) -> u64 {
    let inner = &sink.inner;
    inner
        .announced
        .borrow_mut()
        .extend(kinds.iter().map(|kind| RunTimeTrack {
            kind: kind.clone(),
            key: None,
            depth: 0,
        }));
    let id = inner.last.get() + 1;
    inner.last.set(id);
    inner.synced.set(inner.synced.get() + 1);
    if !kinds.is_empty() {
        let ih = Box::new(InstHost {
            sink: sink as *const Sink,
            instance: id,
        });
        let ecx = instance_cx(&ih, sink, inner.api());
        // SAFETY: the caller's obligation.
        unsafe { *cx = &raw const *ecx };
        inner.sync_live.borrow_mut().push((id, ih, ecx));
    }
    id
}

pub(super) unsafe extern "C" fn on_unsubscribe(host: *mut c_void, _op: u32, instance: u64) {
    // SAFETY: as in `on_subscribe`.
    let sink = unsafe { &*host.cast::<Sink>() };
    let mut sync = sink.inner.sync_live.borrow_mut();
    if let Some(at) = sync.iter().position(|(id, ..)| *id == instance) {
        // Kept until the next reap: a panic is reported through it after it ended.
        let ended = sync.remove(at);
        sink.inner.sync_done.borrow_mut().push(ended);
        return;
    }
    drop(sync);
    let ended = sink.inner.live.borrow_mut().remove(&instance);
    if let Some(i) = ended {
        // Freed after the call: its env and slots may be on the plugin's stack.
        sink.inner.graveyard.borrow_mut().push(i);
    }
}

// ---- An instance's callbacks ----

/// The callback context of the instance behind `host` (which must outlive it).
fn instance_cx(host: &InstHost, sink: &Sink, api: *const HostApi) -> Box<EmitCx> {
    Box::new(EmitCx {
        host: (host as *const InstHost).cast_mut().cast::<c_void>(),
        log: cbi_log,
        error: cbi_error,
        publish: cbi_publish,
        current_op: &raw const sink.current_op,
        counts: std::ptr::null(),
        marble: plugin_api::abi::no_marble,
        marble_calls: std::ptr::null(),
        now: cbi_now,
        schedule: cbi_schedule,
        subscribe: cbi_subscribe,
        subscribe_sync: cbi_subscribe_sync,
        subscribe_sync_again: no_subscribe_sync_again,
        unsubscribe: cbi_unsubscribe,
        api,
    })
}

/// The instance and sink behind an instance's context.
///
/// # Safety
/// `host` must be the `InstHost` of a live (or not yet freed) instance.
unsafe fn inst<'a>(host: *mut c_void) -> (&'a InstHost, &'a Sink) {
    // SAFETY: guaranteed by the caller; the sink outlives its instances.
    unsafe {
        let i = &*host.cast::<InstHost>();
        (i, &*i.sink)
    }
}

unsafe extern "C" fn cbi_log(host: *mut c_void, _op: u32, text: RStr) {
    // SAFETY: as in `inst`; `text` is valid for the call.
    unsafe {
        let (_, sink) = inst(host);
        let text = text.to_string_lossy().unwrap_or_default().into_owned();
        sink.logs.borrow_mut().push(text);
    }
}

unsafe extern "C" fn cbi_error(host: *mut c_void, op: u32, message: RStr) {
    // SAFETY: as in `cbi_log`.
    unsafe {
        let (i, sink) = inst(host);
        let text = message.to_string_lossy().unwrap_or_default();
        sink.errors
            .borrow_mut()
            .push((op, format!("inner {}: {text}", i.instance)));
    }
}

unsafe extern "C" fn cbi_publish(_host: *mut c_void, _op: u32, _value: *const c_void) {}

unsafe extern "C" fn cbi_now(host: *mut c_void) -> u64 {
    // SAFETY: as in `inst`.
    let (_, sink) = unsafe { inst(host) };
    sink.now.get()
}

unsafe extern "C" fn cbi_schedule(host: *mut c_void, op: u32, deadline: u64) {
    // SAFETY: as in `inst`.
    let (i, sink) = unsafe { inst(host) };
    sink.inner
        .push_timer(sink, deadline, Due::Op(i.instance, op));
}

/// A higher-order operator inside an inner stream: the long way, refused there.
unsafe extern "C" fn cbi_subscribe_sync(
    _host: *mut c_void,
    _op: u32,
    _ops: *const OpDesc,
    _sigs: *const RSignature,
    _n_ops: usize,
    _cx: *mut *const EmitCx,
    _memo: *mut u64,
) -> u64 {
    0
}

/// An inner stream's own higher-order operators run the long way (`cbi_subscribe_sync`):
/// no memo to name.
pub(super) unsafe extern "C" fn no_subscribe_sync_again(
    _host: *mut c_void,
    _op: u32,
    _memo: u64,
    _cx: *mut *const EmitCx,
) -> u64 {
    0
}

unsafe extern "C" fn cbi_subscribe(
    host: *mut c_void,
    op: u32,
    desc: *const InnerDesc,
    _out: *mut InnerHandle,
) -> bool {
    // A higher-order operator inside an inner stream: refused, as the host does.
    // SAFETY: as in `inst`; `desc` is valid for the call, its env and value given up.
    unsafe {
        let (_, sink) = inst(host);
        let d = &*desc;
        (d.drop_env)(d.env);
        if !d.value.is_null() {
            (d.value_drop)(d.value.cast());
        }
        sink.inner.opened.borrow_mut().clear();
        sink.errors.borrow_mut().push((
            op,
            "a higher-order operator inside an inner stream".to_owned(),
        ));
    }
    false
}

unsafe extern "C" fn cbi_unsubscribe(_host: *mut c_void, _op: u32, _instance: u64) {}

impl Running {
    /// Live inner subscriptions.
    pub fn live_inners(&self) -> usize {
        self.sink.inner.live.borrow().len()
    }

    /// How many synchronous inner streams ran without being subscribed, and how many of
    /// those with operators have not ended yet.
    pub fn synced_inners(&self) -> (u64, usize) {
        (
            self.sink.inner.synced.get(),
            self.sink.inner.sync_live.borrow().len(),
        )
    }

    /// Of those, how many the plugin named by memo instead of describing their operators.
    pub fn named_inners(&self) -> u64 {
        self.sink.inner.named.get()
    }

    /// Makes the host answer 0 to `subscribe_sync` (or not).
    pub fn refuse_sync(&self, refuse: bool) {
        self.sink.inner.refuse_sync.set(refuse);
    }

    /// The sources' labels of every inner stream subscribed so far.
    pub fn subscribed_labels(&self) -> Vec<String> {
        self.sink.inner.labels.borrow().clone()
    }

    /// How many ended inner subscriptions were freed.
    pub fn freed_inners(&self) -> u64 {
        self.sink.inner.freed.get()
    }

    /// The tracks announced at run time so far.
    pub fn run_time_tracks(&self) -> Vec<RunTimeTrack> {
        self.sink.inner.announced.borrow().clone()
    }

    /// Frees the inner subscriptions that ended during the last calls (the host does so
    /// after each call returns).
    pub fn reap(&self) {
        self.sink.inner.sync_done.borrow_mut().clear();
        let dead = std::mem::take(&mut *self.sink.inner.graveyard.borrow_mut());
        self.sink
            .inner
            .freed
            .set(self.sink.inner.freed.get() + dead.len() as u64);
        drop(dead);
    }

    /// Runs one event of inner subscription `id` through the chain's `wake` entry, with the
    /// higher-order operator's number. Returns the status (`PORT_DONE` read as `CONTINUE`).
    fn inner_event(&self, id: u64, kind: u32, port: u32, item: *const c_void, op: u32) -> u32 {
        let found = self.sink.inner.live.borrow().get(&id).map(|i| {
            (
                i.op,
                i.code.env.cast_const(),
                i.slots.ptrs.as_ptr(),
                &raw const *i.cx,
            )
        });
        let Some((h, env, states, cx)) = found else {
            return status::CONTINUE;
        };
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
        let ptrs = self.ptrs();
        // SAFETY: the pipeline's seeded slots, a live event of one of operator `h`'s
        // subscriptions (its env, slots and context are on the heap: they stay where they are
        // if it ends in the call and moves to the graveyard) and a valid context.
        let s = unsafe { (self.p.desc.wake)(self.p.env, ptrs.as_ptr(), h, &mut call, &self.cx) };
        if call.answer == inner_answer::PORT_DONE
            && let Some(i) = self.sink.inner.live.borrow_mut().get_mut(&id)
            && let Some(p) = i.ports.get_mut(port as usize)
        {
            *p = Port::Done;
        }
        self.reap();
        match s {
            status::PORT_DONE => status::CONTINUE,
            s => s,
        }
    }

    /// The earliest deadline due at or before `t` (the pipeline's timers and the inner
    /// subscriptions' alike), if any.
    pub fn next_due(&self, t: u64) -> Option<u64> {
        let a = self.sink.timers.borrow().iter().map(|x| x.0).min();
        let b = self.sink.inner.timers.borrow().iter().map(|x| x.0).min();
        a.into_iter().chain(b).min().filter(|&d| d <= t)
    }

    /// Runs the earliest thing due at or before `t` (ties: the order asked), with the clock
    /// at its deadline, as the host's pipeline thread does: an operator's timer, an inner
    /// operator's timer or an inner interval's next value. Returns its deadline and status.
    pub fn run_one(&self, t: u64) -> Option<(u64, u32)> {
        let key = |x: &(u64, u64)| (x.0, x.1);
        let outer = {
            let timers = self.sink.timers.borrow();
            (0..timers.len())
                .filter(|&i| timers[i].0 <= t)
                .min_by_key(|&i| key(&(timers[i].0, timers[i].1)))
                .map(|i| (i, (timers[i].0, timers[i].1)))
        };
        let inner = {
            let timers = self.sink.inner.timers.borrow();
            (0..timers.len())
                .filter(|&i| timers[i].0 <= t)
                .min_by_key(|&i| key(&(timers[i].0, timers[i].1)))
                .map(|i| (i, (timers[i].0, timers[i].1)))
        };
        let inner_first = match (outer, inner) {
            (None, None) => return None,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((_, a)), Some((_, b))) => b < a,
        };
        if !inner_first {
            let (i, _) = outer.expect("an outer timer");
            let (deadline, _, op) = self.sink.timers.borrow_mut().remove(i);
            self.sink.now.set(deadline.max(self.sink.now.get()));
            let s = self.wake(op);
            self.reap();
            return Some((deadline, s));
        }
        let (i, _) = inner.expect("an inner timer");
        let (deadline, _, due) = self.sink.inner.timers.borrow_mut().remove(i);
        self.sink.now.set(deadline.max(self.sink.now.get()));
        let s = match due {
            Due::Op(id, op) => self.inner_event(id, inner_kind::WAKE, 0, std::ptr::null(), op),
            Due::Port(id, port) => {
                let x = {
                    let mut live = self.sink.inner.live.borrow_mut();
                    match live
                        .get_mut(&id)
                        .and_then(|i| i.ports.get_mut(port as usize))
                    {
                        Some(Port::Interval { period, n }) => {
                            let x = *n;
                            *n += 1;
                            Some((x, deadline + *period))
                        }
                        _ => None,
                    }
                };
                match x {
                    Some((x, next)) => {
                        self.sink
                            .inner
                            .push_timer(&self.sink, next, Due::Port(id, port));
                        self.inner_event(id, inner_kind::PUSH, port, (&raw const x).cast(), 0)
                    }
                    None => status::CONTINUE,
                }
            }
        };
        Some((deadline, s))
    }

    /// Runs everything due up to `t` ([`Running::run_one`]), then sets the clock to `t`.
    /// Returns the statuses that were not `CONTINUE`.
    pub fn run_until(&self, t: u64) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some((_, s)) = self.run_one(t) {
            if s != status::CONTINUE {
                out.push(s);
            }
        }
        self.sink.now.set(t.max(self.sink.now.get()));
        out
    }

    /// Drops every timer (a completed pipeline's thread stops).
    pub fn clear_timers(&self) {
        self.sink.timers.borrow_mut().clear();
        self.sink.inner.timers.borrow_mut().clear();
    }

    /// A reload that keeps every state ([`Running::reload`]), then the re-projection of each
    /// live inner subscription through the new code's `project` entry, as the host's
    /// `Driver::reproject`: the new inner stream's env replaces the old one, and its slots,
    /// ports (an interval's count) and timers stay. A changed source or state type is
    /// reported as an error (the host would restart the subscription).
    pub fn reload_reprojecting(&mut self, new: Captured) {
        self.reload(new);
        let ids: Vec<u64> = self.sink.inner.live.borrow().keys().copied().collect();
        for id in ids {
            let Some(mut inst) = self.sink.inner.live.borrow_mut().remove(&id) else {
                continue;
            };
            self.sink.inner.reprojecting.set(true);
            // SAFETY: the held value is of operator `inst.op`'s input type; a valid context.
            let st = unsafe {
                (self.p.desc.project)(self.p.env, inst.op, inst.value.ptr.cast(), &self.cx)
            };
            self.sink.inner.reprojecting.set(false);
            let projected = self.sink.inner.reprojected.borrow_mut().take();
            let op = inst.op;
            let fail = |why: String| self.sink.errors.borrow_mut().push((op, why));
            let Some(p) = projected.filter(|_| st == status::CONTINUE) else {
                fail(format!("re-projecting inner {id}: status {st}"));
                self.sink.inner.graveyard.borrow_mut().push(inst);
                continue;
            };
            let same_states = p.code.ops.len() == inst.code.ops.len()
                && p.code.ops.iter().zip(&inst.code.ops).all(|(a, b)| {
                    let (a, b) = (&a.state.fingerprint, &b.state.fingerprint);
                    (a.size, a.align, a.hash) == (b.size, b.align, b.hash)
                });
            if p.code.sources != inst.code.sources || !same_states || p.opened < p.code.ops.len() {
                fail(format!(
                    "re-projecting inner {id}: its sources or states changed (not supported here)"
                ));
                self.sink.inner.graveyard.borrow_mut().push(inst);
                continue;
            }
            inst.slots.drops = p.code.ops.iter().map(|o| o.state.drop).collect();
            inst.code = p.code;
            self.sink.inner.live.borrow_mut().insert(id, inst);
        }
        self.reap();
    }
}

impl Drop for Inners {
    fn drop(&mut self) {
        // Instances before the API they point at (fields drop in order; explicit here).
        self.live.get_mut().clear();
        self.graveyard.get_mut().clear();
        self.reprojected.get_mut().take();
    }
}

//! The pipeline DSL: [`Plugin::pipeline`], sources, streams and operators.
//!
//! A pipeline is built in two steps:
//!
//! 1. **Building.** Sources ([`interval_ms`], [`file_lines`], [`subject`], ...) are
//!    [`Stream`]s; every operator (the methods of [`Pipe`], implemented by [`Stream`] and by
//!    the pipeline's [`Chain`]) wraps the stage built so far in a generic struct ([`Then`]),
//!    and the fan-in operators ([`Pipe::merge`], [`Pipe::zip`], ...) join two stages into one
//!    with two sets of *ports* (one port per source). When the chain's statement ends (the
//!    [`Chain`] is dropped) the whole pipeline is one monomorphised type.
//! 2. **Binding.** Only then does the chain talk to the host: it walks its stages in the
//!    order they were written and opens a track scope for each operator
//!    ([`HostApi::track_call`]), nesting the operators of an inner stream under the fan-in
//!    operator that takes it (`a|1:merge|0:map`), assigns each operator its state slot
//!    number, and hands the host the entry points (`push_entry::<S>`), which run every
//!    operator on the values of one port inside one call, with the closures inlined.
//!
//! Operator state (a `scan` accumulator, a `take` counter, a `zip` queue) is never stored in
//! the plugin: the host allocates a slot per operator and passes the slots in on every call,
//! so the state survives when the host swaps in a new version of this code.

use core::cell::Cell;
use core::ffi::c_void;
use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::Ordering::Relaxed;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::{
    CloneStateFn, DebugStateFn, DropStateFn, EmitCx, HostApi, InnerCall, OpDesc, PipelineDesc,
    PublishDesc, RFingerprint, RSignature, RStr, SourceDesc, StateVTable, WANT_MARBLE,
    clone_status, debug_status, init_status, status,
};
use crate::fingerprint;
use crate::shape::Shape;

pub use crate::source::{
    Lines, Of, Root, SubjectItems, Ticks, Wire, file_lines, interval_ms, of, range, stdin_lines,
    subject, tcp_lines,
};

/// The plugin's handle on the host during registration.
pub struct Plugin<'h> {
    host: &'h HostApi,
}

impl fmt::Debug for Plugin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").finish_non_exhaustive()
    }
}

/// Kept for part-1 code that names it: every source is a [`Stream`] now.
pub type Source<W> = Stream<Root<W>>;

impl<'h> Plugin<'h> {
    /// Starts the pipeline `name` (its identity across reloads) on `source`: a source such
    /// as [`interval_ms`], or any [`Stream`] built on one.
    pub fn pipeline<S: Stage>(&mut self, name: &str, source: Stream<S>) -> Chain<'_, S> {
        Chain {
            host: self.host,
            name: name.to_owned(),
            body: Some(source.body),
            _plugin: PhantomData,
        }
    }
}

/// Whether a receiver wants more values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// Done: send nothing more this way (the receiver completed, or everything after it did).
    Complete,
}

/// What receives a stage's values: the next operator, a fan-in operator's input, or the
/// pipeline's end. `next` and `complete` return [`Flow::Complete`] once the receiver wants
/// nothing more.
pub trait Observer<T> {
    /// One value.
    fn next(&mut self, value: T) -> Flow;
    /// The end of the values.
    fn complete(&mut self) -> Flow;
}

pub(crate) const NO_OP: u32 = u32::MAX;

/// What operators see of the host while they run.
pub struct Cx<'a> {
    /// One slot pointer per operator (the host passes exactly as many as the chain has).
    states: *const *mut u8,
    emit: &'a EmitCx,
    panicked_op: Cell<u32>,
    /// What a panic did to the panicking operator's state, for the error report.
    pub(crate) after_panic: Cell<AfterPanic>,
    /// Whether each user function call first writes its operator to
    /// [`EmitCx::current_op`]: on for single values (push sources, completion), where it is
    /// one store among many; off on the batch path, whose loop it would slow by half. A
    /// constant of each entry point, so the test is compiled away.
    mark_ops: bool,
    /// Set when the pipeline's end received `complete`.
    completed: Cell<bool>,
    /// Where a panic inside an inner subscription's operator is reported: that
    /// subscription's context and the operator's number there (null: this call's own).
    pub(crate) panic_to: Cell<(*const EmitCx, u32)>,
    /// A panic was caught and reported inside this call (one value of an inner stream's
    /// synchronous source): the higher-order operator that ran it answers the call with
    /// `PANICKED` once it is done ([`rethrow_contained`]).
    pub(crate) contained: Cell<bool>,
}

/// What a panic in a `scan`, `scan_map` or `reduce` function did to that operator's state
/// (see [`Pipe::reduce`] for the rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterPanic {
    /// The panic did not touch any state (or the operator keeps none).
    Untouched,
    /// The state was dropped and replaced by a clone of the seed.
    Reseeded,
    /// `scan_map` only: cloning the seed panicked too, so the state stays as the panic left it.
    LeftAsIs,
}

impl AfterPanic {
    /// The note appended to the panic's message.
    fn note(self) -> &'static str {
        match self {
            AfterPanic::Untouched => "",
            AfterPanic::Reseeded => " (its state was reset to the seed)",
            AfterPanic::LeftAsIs => {
                " (its state is kept as the panic left it: cloning the seed to reset it panicked too)"
            }
        }
    }
}

impl fmt::Debug for Cx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cx")
            .field("states", &self.states)
            .finish_non_exhaustive()
    }
}

impl<'a> Cx<'a> {
    /// The context of an inner subscription's operators: its slots, its callbacks.
    pub(crate) fn inner(states: *const *mut u8, emit: &'a EmitCx, mark_ops: bool) -> Cx<'a> {
        Cx {
            states,
            emit,
            panicked_op: Cell::new(NO_OP),
            after_panic: Cell::new(AfterPanic::Untouched),
            mark_ops,
            completed: Cell::new(false),
            panic_to: Cell::new((core::ptr::null(), NO_OP)),
            contained: Cell::new(false),
        }
    }

    /// The operator a panic in this call is attributed to (after it unwound through it).
    pub(crate) fn panicked_op(&self) -> u32 {
        self.panicked_op.get()
    }

    /// The callbacks of this call.
    pub(crate) fn emit(&self) -> &'a EmitCx {
        self.emit
    }

    /// Whether single-value paths mark their operators (see the field).
    pub(crate) fn marks_ops(&self) -> bool {
        self.mark_ops
    }
}

impl Cx<'_> {
    /// Runs `f` as the user function of operator `op`: if it panics, the panic is attributed
    /// to `op`. Costs nothing when it does not panic (the guard only runs while unwinding).
    #[inline(always)]
    pub(crate) fn user<R>(&self, op: u32, f: impl FnOnce() -> R) -> R {
        struct Guard<'c>(&'c Cell<u32>, u32);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                if self.0.get() == NO_OP {
                    self.0.set(self.1);
                }
            }
        }
        if self.mark_ops {
            // SAFETY: the host passes a `current_op` valid for the call (`EmitCx` documents
            // it).
            unsafe { (*self.emit.current_op).store(op, core::sync::atomic::Ordering::Relaxed) };
        }
        let guard = Guard(&self.panicked_op, op);
        let r = f();
        core::mem::forget(guard);
        r
    }

    /// The state slot of operator `op`.
    ///
    /// # Safety
    /// The slot must hold an initialised `A` (the host allocates and seeds slots with this
    /// version's, or a fingerprint-equal version's, [`StateVTable`]), and no other reference
    /// to it may be live while the returned one is.
    #[inline(always)]
    pub(crate) unsafe fn state<A>(&self, op: u32) -> *mut A {
        // SAFETY: `op` is the index of one of this chain's operators (assigned in order by the
        // binder) and the host passes one slot pointer per operator.
        unsafe { (*self.states.add(op as usize)).cast::<A>() }
    }

    fn log(&self, op: u32, text: &str) {
        // SAFETY: `emit` is the host's context for this call; `text` outlives the call.
        unsafe { (self.emit.log)(self.emit.host, op, RStr::new(text)) }
    }

    /// The runtime's clock, in nanoseconds (see [`EmitCx::now`]).
    pub(crate) fn now(&self) -> u64 {
        // SAFETY: `emit` is the host's context for this call.
        unsafe { (self.emit.now)(self.emit.host) }
    }

    /// Asks for a wake of operator `op` at `deadline` (see [`EmitCx::schedule`]).
    pub(crate) fn schedule(&self, op: u32, deadline: u64) {
        // SAFETY: `emit` is the host's context for this call.
        unsafe { (self.emit.schedule)(self.emit.host, op, deadline) }
    }

    /// Whether the pipeline's end received `complete` during this call.
    pub(crate) fn is_completed(&self) -> bool {
        self.completed.get()
    }

    fn publish<T>(&self, op: u32, value: &T) {
        // SAFETY: `emit` is the host's context for this call; `value` is a `T` of the type
        // this operator declared in its `PublishDesc`, borrowed for the call.
        unsafe { (self.emit.publish)(self.emit.host, op, (value as *const T).cast::<c_void>()) }
    }
}

/// The operator number [`Tally::emitted`] takes for the source's values.
pub(crate) const SOURCE: u32 = u32::MAX;

mod sealed {
    pub trait Sealed {}
}

/// Whether a compiled chain counts emissions: [`Silent`] (the plain entry points, no cost),
/// [`Counted`] (the inspector's entry points, one relaxed load and store per emission), or
/// [`Sampled`] (the same, and marbles: what the counting entry points run for a call the
/// host wants marbles from, [`EmitCx::marble_calls`]).
pub trait Tally: sealed::Sealed + 'static {
    /// Notes one value emitted by operator `op` (or taken from a source, [`SOURCE`]), and
    /// hands its Debug text to the host when the host asked for one
    /// ([`crate::abi::WANT_MARBLE`]): a marble.
    ///
    /// Takes the value and gives it back: a reference to it on the hot path would keep it in
    /// memory for every value (its address escaping into the marble's call), which cost the
    /// push scenario 2 ns a value; moved, it stays in registers, and only the cold path that
    /// formats it takes its address.
    fn emitted<T: fmt::Debug>(cx: &Cx<'_>, op: u32, value: T) -> T;
    /// Whether it counts anything (the inspector is on): an inner stream's values are then
    /// counted on its own subscription's cells, so it is never run on the outer context.
    const COUNTS: bool = true;
}

/// Counts nothing.
#[derive(Clone, Copy, Debug)]
pub struct Silent;

/// Counts into [`EmitCx::counts`].
#[derive(Clone, Copy, Debug)]
pub struct Counted;

/// Counts into [`EmitCx::counts`], and writes a marble for each cell marked
/// [`WANT_MARBLE`].
#[derive(Clone, Copy, Debug)]
pub struct Sampled;

impl sealed::Sealed for Silent {}
impl sealed::Sealed for Counted {}
impl sealed::Sealed for Sampled {}

impl Tally for Silent {
    const COUNTS: bool = false;
    #[inline(always)]
    fn emitted<T: fmt::Debug>(_cx: &Cx<'_>, _op: u32, value: T) -> T {
        value
    }
}

impl Tally for Counted {
    #[inline(always)]
    fn emitted<T: fmt::Debug>(cx: &Cx<'_>, op: u32, value: T) -> T {
        if let Some(c) = count_cell(cx, op) {
            // One writer (this thread): a load and a store, no read-modify-write
            // instruction. A marble request in the word is kept for a sampled call.
            c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
        }
        value
    }
}

impl Tally for Sampled {
    #[inline(always)]
    fn emitted<T: fmt::Debug>(cx: &Cx<'_>, op: u32, value: T) -> T {
        let Some(c) = count_cell(cx, op) else {
            return value;
        };
        // The request rides in the word the count loads: cleared by its store.
        let v = c.load(Relaxed);
        c.store((v & !WANT_MARBLE).wrapping_add(1), Relaxed);
        if v & WANT_MARBLE != 0 {
            return marble_of(cx, op, value);
        }
        value
    }
}

/// The count cell of operator `op` (the source's: [`SOURCE`]), if this call counts.
#[inline(always)]
fn count_cell<'c>(cx: &Cx<'c>, op: u32) -> Option<&'c core::sync::atomic::AtomicU64> {
    let counts = cx.emit.counts;
    if counts.is_null() {
        return None;
    }
    // The source's cell is 0, operator `op`'s is `op + 1` (wrapping maps SOURCE to 0).
    let cell = op.wrapping_add(1) as usize;
    // SAFETY: the host passes one cell per operator plus one with the counting entry
    // points, valid for the call (`EmitCx::counts`); `op` is an operator of this chain.
    Some(unsafe { &*counts.add(cell) })
}

/// Whether this call of a counting entry point looks for marble requests
/// ([`EmitCx::marble_calls`]); if so, takes one call off.
///
/// # Safety
/// `cx` must be the host's context for the call.
#[inline(always)]
unsafe fn sampling(cx: *const EmitCx) -> bool {
    // SAFETY: the caller's obligation; `marble_calls` is null or valid for the call.
    let calls = unsafe { (*cx).marble_calls.as_ref() };
    match calls {
        Some(n) => {
            let left = n.load(Relaxed);
            if left == 0 {
                return false;
            }
            n.store(left - 1, Relaxed);
            true
        }
        None => false,
    }
}

/// The counting entry points: each runs the chain that only counts, or, for a call the host
/// wants marbles from, the one that also writes them.
unsafe extern "C" fn push_counted<S: Stage>(
    env: *const c_void,
    states: *const *mut u8,
    port: u32,
    items: *const c_void,
    n: usize,
    cx: *const EmitCx,
    consumed: *mut usize,
) -> u32 {
    // SAFETY: the host passes the arguments `PushFn` documents, as the chains take them.
    unsafe {
        if sampling(cx) {
            push_entry::<S, Sampled>(env, states, port, items, n, cx, consumed)
        } else {
            push_entry::<S, Counted>(env, states, port, items, n, cx, consumed)
        }
    }
}

/// See [`push_counted`].
unsafe extern "C" fn push_one_counted<S: Stage>(
    env: *const c_void,
    states: *const *mut u8,
    port: u32,
    item: *const c_void,
    cx: *const EmitCx,
) -> u32 {
    // SAFETY: the host passes the arguments `PushOneFn` documents, as the chains take them.
    unsafe {
        if sampling(cx) {
            push_one_entry::<S, Sampled>(env, states, port, item, cx)
        } else {
            push_one_entry::<S, Counted>(env, states, port, item, cx)
        }
    }
}

/// See [`push_counted`].
unsafe extern "C" fn wake_counted<S: Stage>(
    env: *const c_void,
    states: *const *mut u8,
    op: u32,
    inner: *mut InnerCall,
    cx: *const EmitCx,
) -> u32 {
    // SAFETY: the host passes the arguments `WakeFn` documents, as the chains take them.
    unsafe {
        if sampling(cx) {
            wake_entry::<S, Sampled>(env, states, op, inner, cx)
        } else {
            wake_entry::<S, Counted>(env, states, op, inner, cx)
        }
    }
}

/// The most bytes of a marble's Debug text (longer texts end in `…`).
pub const MARBLE_CAP: usize = 120;

/// Writes `value`'s Debug text, capped at [`MARBLE_CAP`] bytes, to the host as a marble. A
/// panicking Debug impl costs the marble, nothing else: the inspector never changes what a
/// chain does.
/// [`marble`] of `value`, given back.
#[cold]
#[inline(never)]
fn marble_of<T: fmt::Debug>(cx: &Cx<'_>, op: u32, value: T) -> T {
    marble(cx, op, &value);
    value
}

#[cold]
#[inline(never)]
fn marble(cx: &Cx<'_>, op: u32, value: &dyn fmt::Debug) {
    const ELLIPSIS: &str = "…";
    let mut buf = [0u8; MARBLE_CAP + ELLIPSIS.len()];
    let len = catch_unwind(AssertUnwindSafe(|| {
        let mut w = Capped {
            buf: &mut buf[..MARBLE_CAP],
            len: 0,
            full: false,
        };
        let _ = fmt::write(&mut w, format_args!("{value:?}"));
        (w.len, w.full)
    }));
    // A panicking Debug impl costs the marble: its payload is forgotten (a payload whose
    // drop panics must not unwind from here), and the panic counts as caught, unless this
    // runs while another panic unwinds (that one is not caught yet).
    let (mut len, full) = match len {
        Ok(r) => r,
        Err(payload) => {
            core::mem::forget(payload);
            if !std::thread::panicking() {
                caught();
            }
            return;
        }
    };
    if full {
        buf[len..len + ELLIPSIS.len()].copy_from_slice(ELLIPSIS.as_bytes());
        len += ELLIPSIS.len();
    }
    // `Capped` cuts at character boundaries, so the bytes are UTF-8.
    let text = core::str::from_utf8(&buf[..len]).unwrap_or_default();
    // SAFETY: `emit` is the host's context for this call; `text` outlives the call.
    unsafe { (cx.emit.marble)(cx.emit.host, op, RStr::new(text)) }
}

/// A stage: a source, or a source followed by operators, or two stages joined by a fan-in
/// operator, monomorphised into one type. Its values arrive on *ports*, one per source.
pub trait Stage: Send + Sync + 'static {
    /// The type of the values the stage emits (Debug: the inspector shows them as
    /// marbles).
    type Out: fmt::Debug;
    /// The number of sources (ports) feeding it.
    const PORTS: u32;
    /// Runs value `i` of `items` (the wire values of source `port`, counted from this
    /// stage's first port) through the stage, handing what it emits to `k`.
    fn push<C: Tally, K: Observer<Self::Out>>(
        &self,
        cx: &Cx<'_>,
        port: u32,
        items: *const c_void,
        i: usize,
        k: &mut K,
    ) -> Flow;
    /// Source `port` completed.
    fn complete<C: Tally, K: Observer<Self::Out>>(&self, cx: &Cx<'_>, port: u32, k: &mut K)
    -> Flow;
    /// Subscription: what operators emit before any source value (`start_with`).
    fn start<C: Tally, K: Observer<Self::Out>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow;
    /// A timer of operator `op` is due (`inner` null), or an event for one of its inner
    /// subscriptions: runs [`Op::wake`] of that operator, handing what it emits to the rest
    /// of the chain (built on the way down to it, as `push` does). `None` when the stage has
    /// no operator `op`.
    fn wake<C: Tally, K: Observer<Self::Out>>(
        &self,
        cx: &Cx<'_>,
        op: u32,
        inner: Option<&mut InnerCall>,
        k: &mut K,
    ) -> Option<Flow>;
    /// Runs the projection of higher-order operator `op` on a clone of `value`, binds the
    /// stream it returns and hands it to the host (see [`crate::abi::ProjectFn`]). `None`
    /// when the stage has no operator `op`, `Some(false)` when that operator projects
    /// nothing.
    ///
    /// # Safety
    /// `value` must point at a live value of operator `op`'s input type.
    unsafe fn project(&self, cx: &Cx<'_>, op: u32, value: *const c_void) -> Option<bool>;
    /// Registers the stage's tracks and sources in order (see [`Binder`]).
    fn bind(&mut self, b: &mut Binder<'_>);
    /// The sources as written, for a signature (`interval_ms(50)`).
    fn label(&self) -> String;
    /// Writes the Debug text of the value the wire value at `item` of source `port` stands
    /// for; false when there is no such port or its values have no Debug text.
    ///
    /// # Safety
    /// `item` must point at one wire value of source `port`'s type.
    unsafe fn describe(&self, port: u32, item: *const c_void, out: &mut dyn fmt::Write) -> bool;
    /// Writes the seed state of operator `op` into `dst`; returns false, writing nothing, when
    /// the stage has no operator `op`. A null `dst` only asks whether operator `op` exists.
    ///
    /// # Safety
    /// Unless null, `dst` must be valid for writes of operator `op`'s state type and aligned
    /// for it.
    unsafe fn init(&self, op: u32, dst: *mut u8) -> bool;
    /// For a synchronous source (`of(..)`, `range(..)`: one port) through operators that
    /// are all [`Op::SYNC`]: the wire values it emits, `from..to`, each pushed on port 0
    /// before it completes, and whether there is no operator at all (`true`: a bare
    /// source); `None` for any other stage. A higher-order operator runs such an inner
    /// stream inside the outer value's call without subscribing it
    /// ([`crate::abi::EmitCx::subscribe_sync`]).
    #[doc(hidden)]
    fn sync_source(&self) -> Option<(u64, u64, bool)> {
        None
    }
}

/// One operator, from `In` to `Out`.
pub trait Op<In>: Send + Sync + 'static {
    /// What it emits.
    type Out;
    /// Whether it asks the host for nothing that would outlive the call it runs in (no
    /// timer, no `publish`, no inner subscription): an inner stream made of such operators
    /// over a synchronous source lives and ends inside its outer value's call, and a
    /// higher-order operator runs it without subscribing it (`Stage::sync_source`).
    const SYNC: bool = false;
    /// Its index in the pipeline (its state slot), or [`NO_OP`] for a marker.
    fn index(&self) -> u32;
    /// Registers its track (see [`Binder::op`]).
    fn bind(&mut self, b: &mut Binder<'_>);
    /// Handles one value.
    fn push<C: Tally, K: Observer<Self::Out>>(&self, cx: &Cx<'_>, x: In, k: &mut K) -> Flow;
    /// Handles completion: flushes what it holds, then completes `k`.
    fn complete<C: Tally, K: Observer<Self::Out>>(&self, _cx: &Cx<'_>, k: &mut K) -> Flow {
        k.complete()
    }
    /// Handles subscription (`start_with` emits here).
    fn start<C: Tally, K: Observer<Self::Out>>(&self, _cx: &Cx<'_>, _k: &mut K) -> Flow {
        Flow::Continue
    }
    /// A timer it asked for ([`Cx::schedule`]) is due, or was (wakes can be late, or
    /// stale): emits what its state says is due by [`Cx::now`]. With `inner` non-null: an
    /// event for one of its inner subscriptions (higher-order operators only).
    fn wake<C: Tally, K: Observer<Self::Out>>(
        &self,
        _cx: &Cx<'_>,
        _inner: Option<&mut InnerCall>,
        _k: &mut K,
    ) -> Flow {
        Flow::Continue
    }
    /// Re-projects: see [`Stage::project`]. False for every operator but the higher-order
    /// ones.
    ///
    /// # Safety
    /// `value` must point at a live value of the operator's input type.
    unsafe fn project(&self, _cx: &Cx<'_>, _value: *const c_void) -> bool {
        false
    }
    /// Writes its seed state.
    ///
    /// # Safety
    /// `dst` must be valid for writes of its state type and aligned for it.
    unsafe fn init(&self, _dst: *mut u8) {}
}

/// What the binder needs to register an operator's track, fixed when it is built.
pub(crate) struct Meta {
    kind: &'static str,
    input: RFingerprint,
    output: RFingerprint,
    state: Option<StateFns>,
    seed: Seed,
}

/// An operator's seed arguments as its track's signature shows them (DESIGN.md,
/// "Signature"): written out when the operator is bound, not when it is built. An inner
/// stream is built for every outer value and most are bound the lean way, where the text
/// goes on the stack ([`LeanOps`]): formatted into a `String` at construction, a `scan(x, ..)`
/// seed cost a sixth of such a subscription (BENCHMARKS.md, 14).
pub(crate) enum Seed {
    /// No seed arguments.
    None,
    /// Written when the operator was built (a subject's name, a fan-in's other stream).
    Text(String),
    /// A count or a duration: its decimal digits.
    Count(u64),
    /// The operator's seed value, in its Debug form: the stage hands it to the binder
    /// ([`Binder::op_seeded`]).
    Value,
}

/// Written into a seed's text when its value's `Debug` returned an error.
const SEED_DEBUG_FAILED: &str = "<its Debug failed>";
/// Written into a seed's text, or a source's label, when the value's `Debug` panicked.
pub(crate) const DEBUG_PANICKED: &str = "<its Debug panicked>";

/// A seed value as the stage hands it to the binder ([`Binder::op_seeded`]).
#[derive(Clone, Copy)]
pub(crate) enum SeedValue<'a> {
    /// An integer, written without `core::fmt` (its `Debug` text: the sign and the digits).
    Int { negative: bool, magnitude: u64 },
    /// Any other value, written with its `Debug`.
    Debug(&'a dyn fmt::Debug),
}

impl<'a> SeedValue<'a> {
    /// `v`, an integer of up to 64 bits told apart by its type (a `scan(x, ..)` seed is
    /// written for every outer value: through `core::fmt`, a `u64`'s text was a seventh of
    /// such a subscription, BENCHMARKS.md, 14).
    pub(crate) fn of<A: fmt::Debug + 'static>(v: &'a A) -> SeedValue<'a> {
        let any: &dyn core::any::Any = v;
        macro_rules! unsigned {
            ($($t:ty),*) => {$(
                if let Some(n) = any.downcast_ref::<$t>() {
                    return SeedValue::Int { negative: false, magnitude: *n as u64 };
                }
            )*};
        }
        macro_rules! signed {
            ($($t:ty),*) => {$(
                if let Some(n) = any.downcast_ref::<$t>() {
                    return SeedValue::Int {
                        negative: *n < 0,
                        magnitude: n.unsigned_abs() as u64,
                    };
                }
            )*};
        }
        unsigned!(u64, u32, u16, u8, usize);
        signed!(i64, i32, i16, i8, isize);
        SeedValue::Debug(v)
    }
}

/// Writes `v` in decimal, after a `-` if `negative` (an integer's `Debug` and `Display`
/// text): two digits at a time from a table, into a buffer written once (a `push` per digit
/// and a division per digit were a twentieth of an inner subscription's instructions,
/// BENCHMARKS.md, 14). `of`'s labels and seeds' text both write integers this way.
pub(crate) fn write_int(out: &mut impl fmt::Write, negative: bool, mut v: u64) -> fmt::Result {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut digits = [b'-'; 21];
    let mut at = digits.len();
    while v >= 100 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if v >= 10 {
        let pair = v as usize * 2;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + v as u8;
    }
    if negative {
        // The buffer's bytes are '-' where no digit was written.
        at -= 1;
    }
    // SAFETY: ASCII digits and a minus sign only (checking them, a call to `from_utf8`, took
    // about as long as writing them).
    out.write_str(unsafe { core::str::from_utf8_unchecked(&digits[at..]) })
}

impl Seed {
    /// Writes the seed's text to `out` (`value`: the stage's seed value, for
    /// [`Seed::Value`]); false, writing nothing, when there is none.
    fn write(&self, value: Option<SeedValue<'_>>, out: &mut impl fmt::Write) -> bool {
        match (self, value) {
            (Seed::None, _) => false,
            (Seed::Text(t), _) => out.write_str(t).is_ok(),
            (Seed::Count(n), _) => write_int(out, false, *n).is_ok(),
            (
                Seed::Value,
                Some(SeedValue::Int {
                    negative,
                    magnitude,
                }),
            ) => write_int(out, negative, magnitude).is_ok(),
            (Seed::Value, Some(SeedValue::Debug(v))) => {
                // The value's `Debug` is user code, run while the stream is bound: a panic in
                // it or an error from it must not leave a binding half made, nor make a seed
                // none (which would change the operator's signature), so either is written
                // into the text (after what it wrote), as any other seed.
                match contained(catch_unwind(AssertUnwindSafe(|| write!(out, "{v:?}")))) {
                    Some(Ok(())) => true,
                    Some(Err(_)) => out.write_str(SEED_DEBUG_FAILED).is_ok(),
                    None => out.write_str(DEBUG_PANICKED).is_ok(),
                }
            }
            (Seed::Value, None) => {
                debug_assert!(false, "a seed value the stage did not hand to the binder");
                false
            }
        }
    }

    /// Whether [`Seed::write`] writes a text (`value_given`: the stage handed its seed
    /// value), to a writer that never fails.
    fn present(&self, value_given: bool) -> bool {
        match self {
            Seed::None => false,
            Seed::Text(_) | Seed::Count(_) => true,
            Seed::Value => value_given,
        }
    }
}

/// What a lean binding's memo compares of an operator ([`bind_lean_checked`]): its kind (a
/// static string of this library, compared by address and length), its input's and
/// output's type fingerprints (the hash of the type's name, size and alignment), its state's
/// (the hash of its layout description, its size and alignment), and whether it has a seed;
/// not the seed's text. The host's memo compares the types' names too (`inner::op_key`).
///
/// A higher-order operator keeps the descriptions of its own stage type's streams only
/// (`higher::LeanMemo`), whose operators, types and state glue that type fixes: the check
/// confirms what the type already says, and refuses, rather than trusts, a stream that
/// differs. The words, in order: the kind's address and length, the input's, output's and
/// state's hashes, the state's size and alignment, 1 with a seed (else 0); compared folded,
/// without a branch per word (as `op_key`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpShape([u64; 8]);

impl PartialEq for OpShape {
    fn eq(&self, other: &OpShape) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .fold(0, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for OpShape {}

impl Meta {
    /// Its shape, `seeded` or not.
    fn shape(&self, seeded: bool) -> OpShape {
        let s = self.state_fingerprint();
        let w = |n: usize| n as u64;
        OpShape([
            w(self.kind.as_ptr() as usize),
            w(self.kind.len()),
            self.input.hash,
            self.output.hash,
            s.hash,
            w(s.size),
            w(s.align),
            u64::from(seeded),
        ])
    }

    /// The signature of its track, with `seed` as its seed's text.
    fn signature(&self, seed: RStr) -> RSignature {
        RSignature {
            input: self.input,
            output: self.output,
            state: self.state_fingerprint(),
            seed,
        }
    }

    /// Its state's fingerprint ([`fingerprint::NONE`] without state).
    fn state_fingerprint(&self) -> RFingerprint {
        self.state.map_or(fingerprint::NONE, |(fp, ..)| fp)
    }
}

// SAFETY: the fingerprints' names are `'static` strings in this library's image (type
// names); nothing else in a `Meta` is a pointer.
unsafe impl Send for Meta {}
// SAFETY: as above; a `Meta` is never mutated through a shared reference.
unsafe impl Sync for Meta {}

/// An operator's place in its pipeline: its description until bound, then its slot number.
pub struct At {
    /// The operator's number (its state slot), assigned by [`Binder::op`].
    pub(crate) op: u32,
    meta: Meta,
}

impl At {
    /// An operator of `kind` from `In` to `Out`, with optional state and seed arguments.
    pub(crate) fn new<In: 'static, Out: 'static>(
        kind: &'static str,
        state: Option<StateFns>,
        seed: Seed,
    ) -> At {
        At {
            op: NO_OP,
            meta: Meta {
                kind,
                input: fingerprint::of::<In>(),
                output: fingerprint::of::<Out>(),
                state,
                seed,
            },
        }
    }
}

impl fmt::Debug for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("At")
            .field("op", &self.op)
            .field("kind", &self.meta.kind)
            .finish_non_exhaustive()
    }
}

/// A keyed scope's boundary on a chain's spine (see [`Pipe::scope`]).
#[derive(Clone, Debug)]
pub(crate) enum Mark {
    Open { key: Key, input: RFingerprint },
    Close,
}

// SAFETY: as for `Meta`: the only pointers are `'static` type names.
unsafe impl Send for Mark {}
// SAFETY: as above.
unsafe impl Sync for Mark {}

/// A scope's key as the chain keeps it until it is bound: short keys (the usual `s{i}`,
/// an id) inline, longer ones on the heap. A registration of 10,000 scopes made one
/// allocation per scope for its key alone (BENCHMARKS.md, 4).
#[derive(Clone, Debug)]
pub(crate) enum Key {
    Inline { len: u8, bytes: [u8; KEY_INLINE] },
    Heap(String),
}

/// The longest key kept inline.
const KEY_INLINE: usize = 22;

impl Key {
    fn new(key: &str) -> Key {
        if key.len() <= KEY_INLINE {
            let mut bytes = [0u8; KEY_INLINE];
            bytes[..key.len()].copy_from_slice(key.as_bytes());
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(key.to_owned())
        }
    }

    /// The key's bytes: a copy of the `str` it was made from (inline, the first `len`
    /// bytes, cut nowhere else), so UTF-8 without a check here (the host checks what it
    /// reads anyway).
    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(s) => s.as_bytes(),
        }
    }

    fn as_rstr(&self) -> RStr {
        let bytes = self.as_bytes();
        RStr {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }
}

struct OpInfo {
    track: u64,
    kind: &'static str,
    state: RFingerprint,
    drop: DropStateFn,
    debug: DebugStateFn,
    clone: CloneStateFn,
}

impl OpInfo {
    /// Operator `meta` of track `track` (an operator without state keeps the empty one).
    fn new(track: u64, meta: &Meta) -> OpInfo {
        let (state, drop, debug, clone) = meta.state.unwrap_or((
            fingerprint::NONE,
            drop_nothing,
            debug_nothing,
            clone_nothing,
        ));
        OpInfo {
            track,
            kind: meta.kind,
            state,
            drop,
            debug,
            clone,
        }
    }

    /// The operator's description for the host, its state seeded through stage `S`'s env.
    fn desc<S: Stage>(&self) -> OpDesc {
        self.desc_seeded_by(init_entry::<S>)
    }

    /// The operator's description for the host, its state seeded by `init`.
    fn desc_seeded_by(&self, init: crate::abi::InitFn) -> OpDesc {
        OpDesc {
            track: self.track,
            kind: RStr::new(self.kind),
            state: StateVTable {
                fingerprint: self.state,
                init,
                drop: self.drop,
                debug: self.debug,
                clone: self.clone,
            },
        }
    }
}

struct PublishInfo {
    op: u32,
    subject: String,
    item: RFingerprint,
    debug: DebugStateFn,
}

impl PublishInfo {
    /// Its description, whose subject is a view of `self.subject` (valid while it lives).
    fn desc(&self) -> PublishDesc {
        PublishDesc {
            op: self.op,
            subject: RStr::new(&self.subject),
            item: self.item,
            debug: self.debug,
        }
    }
}

/// One open spine: its scope marks (by position), the position reached, the next mark.
type Spine = (Vec<(u32, Mark)>, u32, usize);

/// Registers a pipeline's tracks with the host, in the order the chain was written: the
/// operators of one *spine* (a stream's straight line of operators) in order, the scope
/// boundaries between them, and each inner stream's spine inside its fan-in operator's
/// track.
pub struct Binder<'h> {
    host: &'h HostApi,
    ops: Vec<OpInfo>,
    /// Their `label` and `text` are views of the strings of the stage being bound (see
    /// [`Binder::source`]).
    sources: Vec<SourceDesc>,
    publishes: Vec<PublishInfo>,
    /// The innermost open track a source belongs to.
    owners: Vec<u64>,
    /// Per open spine: its scope marks (by position) and the position reached.
    spines: Vec<Spine>,
    /// Scope tracks opened and not closed yet.
    scopes: Vec<u64>,
    /// A lean binding: operators are recorded there, not registered; sources are not
    /// described (see [`LeanOps`]).
    lean: Option<&'h mut LeanOps>,
}

impl fmt::Debug for Binder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Binder")
            .field("ops", &self.ops.len())
            .finish_non_exhaustive()
    }
}

impl<'h> Binder<'h> {
    /// A binder with nothing bound yet (no vector allocated).
    fn new(host: &'h HostApi, lean: Option<&'h mut LeanOps>) -> Binder<'h> {
        Binder {
            host,
            ops: Vec::new(),
            sources: Vec::new(),
            publishes: Vec::new(),
            owners: Vec::new(),
            spines: Vec::new(),
            scopes: Vec::new(),
            lean,
        }
    }

    fn track_call(&self, kind: &str, key: Option<&str>, signature: &RSignature) -> u64 {
        self.track_call_keyed(kind, key.map_or(RStr::NONE, RStr::new), signature)
    }

    /// `track_call` with the key as the host reads it (UTF-8 bytes, or none).
    fn track_call_keyed(&self, kind: &str, key: RStr, signature: &RSignature) -> u64 {
        // SAFETY: `host` is valid for the registration; arguments outlive the call.
        unsafe { (self.host.track_call)(self.host.ctx, RStr::new(kind), key, signature) }
    }

    fn track_return(&self, track: u64) {
        // SAFETY: as in `track_call`.
        unsafe { (self.host.track_call_return)(self.host.ctx, track) }
    }

    /// The signature of operator `meta`, its seed's text (if any, `value` the stage's seed
    /// value) written to `text` first: the signature's seed is a view of `text`, or of the
    /// seed's own text when it has one.
    fn signature(meta: &Meta, value: Option<SeedValue<'_>>, text: &mut String) -> RSignature {
        meta.signature(match &meta.seed {
            Seed::Text(t) => RStr::new(t),
            other if other.write(value, text) => RStr::new(text),
            _ => RStr::NONE,
        })
    }

    /// Applies the scope marks of the current spine that stand before its next operator,
    /// and moves past it.
    fn advance(&mut self) {
        self.apply_marks();
        if let Some(spine) = self.spines.last_mut() {
            spine.1 += 1;
        }
    }

    fn apply_marks(&mut self) {
        loop {
            let Some(spine) = self.spines.last_mut() else {
                return;
            };
            let (marks, pos, next) = spine;
            let Some((at, mark)) = marks.get_mut(*next) else {
                return;
            };
            if *at > *pos {
                return;
            }
            // Each mark is read once (`next` moves past it): taken, not cloned (a key's copy
            // per scope and registration, 4% of a 10,000-track reload's instructions).
            let mark = std::mem::replace(mark, Mark::Close);
            *next += 1;
            match mark {
                Mark::Open { key, input } => {
                    let signature = RSignature {
                        input,
                        output: fingerprint::NONE,
                        state: fingerprint::NONE,
                        seed: RStr::NONE,
                    };
                    let t = self.track_call_keyed("scope", key.as_rstr(), &signature);
                    self.scopes.push(t);
                }
                Mark::Close => {
                    if let Some(t) = self.scopes.pop() {
                        self.track_return(t);
                    }
                }
            }
        }
    }

    fn open_spine(&mut self, marks: Vec<(u32, Mark)>) {
        self.spines.push((marks, 0, 0));
    }

    fn close_spine(&mut self) {
        // Marks after the last operator (a scope closing at the end).
        if let Some(spine) = self.spines.last_mut() {
            spine.1 = u32::MAX;
        }
        self.apply_marks();
        self.spines.pop();
    }

    /// Registers `stage`'s tracks on a spine with scope marks `marks`; scopes left open by a
    /// mark out of order close at the end.
    fn bind_stage<S: Stage>(&mut self, stage: &mut S, marks: Vec<(u32, Mark)>) {
        self.open_spine(marks);
        stage.bind(self);
        self.close_spine();
        while let Some(t) = self.scopes.pop() {
            self.track_return(t);
        }
    }

    /// Registers one operator: opens and closes its track and gives it the next slot.
    pub fn op(&mut self, at: &mut At) {
        self.op_with(at, None);
    }

    /// [`Binder::op`] for an operator whose signature shows its seed value ([`Seed::Value`]).
    pub(crate) fn op_seeded<A: fmt::Debug + 'static>(&mut self, at: &mut At, seed: &A) {
        self.op_with(at, Some(SeedValue::of(seed)));
    }

    fn op_with(&mut self, at: &mut At, seed: Option<SeedValue<'_>>) {
        if let Some(lean) = self.lean.as_deref_mut() {
            lean.op(at, seed);
            return;
        }
        self.advance();
        let mut text = String::new();
        let signature = Self::signature(&at.meta, seed, &mut text);
        let track = self.track_call(at.meta.kind, None, &signature);
        self.track_return(track);
        at.op = self.push_op(track, &at.meta);
    }

    fn push_op(&mut self, track: u64, meta: &Meta) -> u32 {
        let index = self.ops.len() as u32;
        self.ops.push(OpInfo::new(track, meta));
        index
    }

    /// Registers a fan-in operator and runs `inner` (which binds the inner stream) inside
    /// its track; the inner stream's scope marks are `marks`.
    pub(crate) fn fan_in(
        &mut self,
        at: &mut At,
        marks: Vec<(u32, Mark)>,
        inner: impl FnOnce(&mut Binder<'h>),
    ) {
        if let Some(lean) = self.lean.as_deref_mut() {
            // Not a straight line of operators: bound in full.
            lean.refused = true;
            return;
        }
        self.advance();
        let mut text = String::new();
        let signature = Self::signature(&at.meta, None, &mut text);
        let track = self.track_call(at.meta.kind, None, &signature);
        at.op = self.push_op(track, &at.meta);
        self.owners.push(track);
        self.open_spine(marks);
        inner(self);
        self.close_spine();
        self.owners.pop();
        self.track_return(track);
    }

    /// In a lean binding ([`bind_lean`]), counts a source and returns true (the caller
    /// describes nothing); false in a full one.
    pub(crate) fn lean_source(&mut self) -> bool {
        let Some(lean) = self.lean.as_deref_mut() else {
            return false;
        };
        // One source is the stream's own (`Stage::sync_source`); a second one is not.
        lean.refused |= lean.sources > 0;
        lean.sources += 1;
        true
    }

    /// Whether this is a lean binding ([`bind_lean`]), which registers nothing.
    pub(crate) fn is_lean(&self) -> bool {
        self.lean.is_some()
    }

    /// Registers a source: the next port. Its description keeps views of `label` and
    /// `text` (no copies: a binding allocates no strings).
    ///
    /// # Safety
    /// `label` and `text` must stay where they are until the host has read the description
    /// this binding hands over: they are the strings of the stage being bound (their heap
    /// buffers do not move when the stage moves into its `Env`).
    pub(crate) unsafe fn source(&mut self, mut desc: SourceDesc, label: &str, text: &str) {
        if self.lean_source() {
            return;
        }
        desc.owner = self.owners.last().copied().unwrap_or(0);
        desc.label = RStr::new(label);
        if !desc.text.is_none() {
            desc.text = RStr::new(text);
        }
        self.sources.push(desc);
    }

    /// Registers a `publish` operator's subject.
    fn publish(&mut self, op: u32, subject: &str, item: RFingerprint, debug: DebugStateFn) {
        if let Some(lean) = self.lean.as_deref_mut() {
            lean.refused = true;
            return;
        }
        self.publishes.push(PublishInfo {
            op,
            subject: subject.to_owned(),
            item,
            debug,
        });
    }
}

/// The start of every chain is a [`Root`] (see `source.rs`); a chain `S` followed by the
/// operator `O` is this.
#[derive(Debug)]
pub struct Then<S, O>(pub(crate) S, pub(crate) O);

/// The receiver a [`Then`] hands its upstream: runs `O` on each value, counting what `O`
/// emits, into `K`.
struct ThenObs<'a, 'c, C, O, K> {
    cx: &'a Cx<'c>,
    o: &'a O,
    k: &'a mut K,
    _c: PhantomData<C>,
}

/// Counts each value it passes (as operator `op`'s emission).
pub(crate) struct Counting<'a, 'c, C, K> {
    pub(crate) cx: &'a Cx<'c>,
    pub(crate) op: u32,
    pub(crate) k: &'a mut K,
    pub(crate) _c: PhantomData<C>,
}

impl<T: fmt::Debug, C: Tally, K: Observer<T>> Observer<T> for Counting<'_, '_, C, K> {
    #[inline(always)]
    fn next(&mut self, value: T) -> Flow {
        let value = C::emitted(self.cx, self.op, value);
        self.k.next(value)
    }
    #[inline(always)]
    fn complete(&mut self) -> Flow {
        self.k.complete()
    }
}

impl<In, C: Tally, O: Op<In>, K: Observer<O::Out>> Observer<In> for ThenObs<'_, '_, C, O, K>
where
    O::Out: fmt::Debug,
{
    #[inline(always)]
    fn next(&mut self, value: In) -> Flow {
        let mut counted = Counting::<C, K> {
            cx: self.cx,
            op: self.o.index(),
            k: self.k,
            _c: PhantomData,
        };
        self.o.push::<C, _>(self.cx, value, &mut counted)
    }
    #[inline(always)]
    fn complete(&mut self) -> Flow {
        let mut counted = Counting::<C, K> {
            cx: self.cx,
            op: self.o.index(),
            k: self.k,
            _c: PhantomData,
        };
        self.o.complete::<C, _>(self.cx, &mut counted)
    }
}

impl<S: Stage, O: Op<S::Out>> Stage for Then<S, O>
where
    O::Out: fmt::Debug,
{
    type Out = O::Out;
    const PORTS: u32 = S::PORTS;
    #[inline(always)]
    fn push<C: Tally, K: Observer<O::Out>>(
        &self,
        cx: &Cx<'_>,
        port: u32,
        items: *const c_void,
        i: usize,
        k: &mut K,
    ) -> Flow {
        let mut obs = ThenObs::<C, O, K> {
            cx,
            o: &self.1,
            k,
            _c: PhantomData,
        };
        self.0.push::<C, _>(cx, port, items, i, &mut obs)
    }
    fn complete<C: Tally, K: Observer<O::Out>>(&self, cx: &Cx<'_>, port: u32, k: &mut K) -> Flow {
        let mut obs = ThenObs::<C, O, K> {
            cx,
            o: &self.1,
            k,
            _c: PhantomData,
        };
        self.0.complete::<C, _>(cx, port, &mut obs)
    }
    fn start<C: Tally, K: Observer<O::Out>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        // RxJS order: an operator's own subscription values come before its upstream's.
        let mut counted = Counting::<C, K> {
            cx,
            op: self.1.index(),
            k,
            _c: PhantomData,
        };
        if self.1.start::<C, _>(cx, &mut counted) == Flow::Complete {
            return Flow::Complete;
        }
        let mut obs = ThenObs::<C, O, K> {
            cx,
            o: &self.1,
            k,
            _c: PhantomData,
        };
        self.0.start::<C, _>(cx, &mut obs)
    }
    fn wake<C: Tally, K: Observer<O::Out>>(
        &self,
        cx: &Cx<'_>,
        op: u32,
        inner: Option<&mut InnerCall>,
        k: &mut K,
    ) -> Option<Flow> {
        if op == self.1.index() {
            let mut counted = Counting::<C, K> {
                cx,
                op,
                k,
                _c: PhantomData,
            };
            return Some(self.1.wake::<C, _>(cx, inner, &mut counted));
        }
        let mut obs = ThenObs::<C, O, K> {
            cx,
            o: &self.1,
            k,
            _c: PhantomData,
        };
        self.0.wake::<C, _>(cx, op, inner, &mut obs)
    }
    fn sync_source(&self) -> Option<(u64, u64, bool)> {
        if !O::SYNC {
            return None;
        }
        self.0.sync_source().map(|(from, to, _)| (from, to, false))
    }
    unsafe fn project(&self, cx: &Cx<'_>, op: u32, value: *const c_void) -> Option<bool> {
        if op == self.1.index() {
            // SAFETY: forwarded: `value` is of this operator's input type.
            return Some(unsafe { self.1.project(cx, value) });
        }
        // SAFETY: forwarded.
        unsafe { self.0.project(cx, op, value) }
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        self.0.bind(b);
        self.1.bind(b);
    }
    fn label(&self) -> String {
        self.0.label()
    }
    unsafe fn describe(&self, port: u32, item: *const c_void, out: &mut dyn fmt::Write) -> bool {
        // SAFETY: forwarded: the ports are the upstream stage's.
        unsafe { self.0.describe(port, item, out) }
    }
    unsafe fn init(&self, op: u32, dst: *mut u8) -> bool {
        if op == self.1.index() {
            if !dst.is_null() {
                // SAFETY: forwarded caller obligation: `dst` fits operator `op`'s state.
                unsafe { self.1.init(dst) }
            }
            true
        } else {
            // SAFETY: as above.
            unsafe { self.0.init(op, dst) }
        }
    }
}

/// The pipeline's end: notes completion, wants every value.
struct Terminal<'a> {
    completed: &'a Cell<bool>,
}

impl<T> Observer<T> for Terminal<'_> {
    #[inline(always)]
    fn next(&mut self, _value: T) -> Flow {
        Flow::Continue
    }
    fn complete(&mut self) -> Flow {
        self.completed.set(true);
        Flow::Complete
    }
}

/// A stream: a source, perhaps followed by operators, that is not (yet) a pipeline. Hand
/// it to [`Plugin::pipeline`], or to a fan-in operator of another stream.
pub struct Stream<S: Stage> {
    pub(crate) body: Body<S>,
}

impl<S: Stage> fmt::Debug for Stream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("sources", &self.body.stage.label())
            .finish_non_exhaustive()
    }
}

/// A stage and the scope marks written along its spine.
pub struct Body<S> {
    pub(crate) stage: S,
    marks: Vec<(u32, Mark)>,
    /// Operators on the spine so far (where the next mark goes).
    len: u32,
}

impl<S> Body<S> {
    pub(crate) fn new(stage: S) -> Body<S> {
        Body {
            stage,
            marks: Vec::new(),
            len: 0,
        }
    }

    fn then<S2>(self, f: impl FnOnce(S) -> S2) -> Body<S2> {
        Body {
            stage: f(self.stage),
            marks: self.marks,
            len: self.len + 1,
        }
    }

    pub(crate) fn into_parts(self) -> (S, Vec<(u32, Mark)>) {
        (self.stage, self.marks)
    }

    /// Whether scope marks were written along its spine.
    pub(crate) fn has_marks(&self) -> bool {
        !self.marks.is_empty()
    }
}

/// A pipeline under construction. Dropping it (at the end of the statement that built it)
/// registers its tracks and hands the compiled chain to the host.
pub struct Chain<'p, S: Stage> {
    host: &'p HostApi,
    name: String,
    body: Option<Body<S>>,
    _plugin: PhantomData<&'p mut ()>,
}

impl<S: Stage> fmt::Debug for Chain<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("pipeline", &self.name)
            .finish_non_exhaustive()
    }
}

/// The operators, on a [`Stream`] and on a pipeline's [`Chain`] alike.
pub trait Pipe: Sized {
    /// The stage built so far.
    type S: Stage;
    /// The same kind of builder around another stage.
    type With<S2: Stage>: Pipe<S = S2>;

    #[doc(hidden)]
    fn body_mut(&mut self) -> &mut Body<Self::S>;
    #[doc(hidden)]
    fn map_body<S2: Stage>(self, f: impl FnOnce(Body<Self::S>) -> Body<S2>) -> Self::With<S2>;

    /// Appends the operator `op`.
    #[doc(hidden)]
    fn then<O: Op<<Self::S as Stage>::Out>>(self, op: O) -> Next<Self, O>
    where
        O::Out: fmt::Debug,
    {
        self.map_body(|b| b.then(|s| Then(s, op)))
    }

    /// Transforms each value.
    fn map<U: fmt::Debug + 'static, F>(self, f: F) -> Next<Self, Map<F, Out<Self>, U>>
    where
        F: Fn(Out<Self>) -> U + Send + Sync + 'static,
    {
        self.then(Map {
            f,
            at: At::new::<Out<Self>, U>("map", None, Seed::None),
            _t: PhantomData,
        })
    }

    /// Passes the values for which `f` returns true.
    fn filter<F>(self, f: F) -> Next<Self, Filter<F, Out<Self>>>
    where
        F: Fn(&Out<Self>) -> bool + Send + Sync + 'static,
    {
        self.then(Filter {
            f,
            at: At::new::<Out<Self>, Out<Self>>("filter", None, Seed::None),
            _t: PhantomData,
        })
    }

    /// Calls `f` on each value and passes it on.
    fn tap<F>(self, f: F) -> Next<Self, Tap<F, Out<Self>>>
    where
        F: Fn(&Out<Self>) + Send + Sync + 'static,
    {
        self.then(Tap {
            f,
            at: At::new::<Out<Self>, Out<Self>>("tap", None, Seed::None),
            _t: PhantomData,
        })
    }

    /// Folds each value into an accumulator kept by the host and emits every new one.
    ///
    /// `f` takes the accumulator by value and returns the next one; the operator emits a
    /// clone of it, which is the only clone per value (a `Vec` state costs one copy of the
    /// `Vec` per value: use [`Pipe::scan_map`] to emit something smaller). If `f` panics,
    /// the state is reset to a clone of `seed`, as described at [`Pipe::reduce`].
    fn scan<A, F>(self, seed: A, f: F) -> Next<Self, Scan<A, F, Out<Self>>>
    where
        A: Shape + Clone + fmt::Debug + Send + Sync,
        F: Fn(A, Out<Self>) -> A + Send + Sync + 'static,
    {
        self.then(Scan {
            seed,
            f,
            at: At::new::<Out<Self>, A>("scan", Some(state_fns::<A>()), Seed::Value),
            _t: PhantomData,
        })
    }

    /// Updates an accumulator kept by the host in place and emits what `f` returns (rxRust's
    /// `scan_map`): no clone per value, whatever the state's size. Its signature is `scan`'s:
    /// the state type `A`, the output `U`, and the seed's Debug text.
    ///
    /// If `f` panics, the state (which `f` may have left half-updated) is dropped and reset
    /// to a clone of `seed`, and the error reports the reset. If cloning the seed panics too,
    /// the state is kept as the panic left it, and the error says so.
    fn scan_map<A, U, F>(self, seed: A, f: F) -> Next<Self, ScanMap<A, F, Out<Self>, U>>
    where
        A: Shape + Clone + fmt::Debug + Send + Sync,
        U: fmt::Debug + 'static,
        F: Fn(&mut A, Out<Self>) -> U + Send + Sync + 'static,
    {
        self.then(ScanMap {
            seed,
            f,
            at: At::new::<Out<Self>, U>("scan_map", Some(state_fns::<A>()), Seed::Value),
            _t: PhantomData,
        })
    }

    /// Folds each value into an accumulator kept by the host and emits it once, when the
    /// stream completes. No clone per value: the accumulator moves into `f` and back.
    ///
    /// **A panic in `f`** (of `reduce` and `scan`) drops the accumulator `f` was given, so the
    /// state is reset to a clone of `seed` (made only then), and the error reporting the
    /// panic says so: `<message> (its state was reset to the seed)`. The slot is never left
    /// without a value. If cloning the seed panics as well, nothing can fill the slot: the
    /// process (and with it the host) aborts, after printing why to stderr.
    fn reduce<A, F>(self, seed: A, f: F) -> Next<Self, Reduce<A, F, Out<Self>>>
    where
        A: Shape + Clone + fmt::Debug + Send + Sync,
        F: Fn(A, Out<Self>) -> A + Send + Sync + 'static,
    {
        self.then(Reduce {
            seed,
            f,
            at: At::new::<Out<Self>, A>("reduce", Some(state_fns::<A>()), Seed::Value),
            _t: PhantomData,
        })
    }

    /// Passes the first `n` values, then completes.
    fn take(self, n: u64) -> Next<Self, Take<Out<Self>>> {
        self.then(Take {
            n,
            at: At::new::<Out<Self>, Out<Self>>("take", Some(state_fns::<u64>()), Seed::Count(n)),
            _t: PhantomData,
        })
    }

    /// Prints each value (its Debug text) through the host, and passes it on.
    fn log(self) -> Next<Self, Log<Out<Self>>>
    where
        Out<Self>: fmt::Debug,
    {
        self.then(Log {
            at: At::new::<Out<Self>, Out<Self>>("log", None, Seed::None),
            _t: PhantomData,
        })
    }

    /// Sends each value to the host-owned subject `name` (delivered at once, in order, to
    /// every pipeline reading [`subject`]`::<T>(name)`), and passes it on. Publisher and
    /// subscribers must agree on the value type: a reload where they do not is rejected.
    fn publish(self, name: &str) -> Next<Self, Publish<Out<Self>>>
    where
        Out<Self>: Shape + Clone + fmt::Debug + Send + Sync,
    {
        self.then(Publish {
            subject: name.to_owned(),
            at: At::new::<Out<Self>, Out<Self>>("publish", None, Seed::Text(format!("{name:?}"))),
            _t: PhantomData,
        })
    }

    /// Runs `f` on the chain inside a keyed scope: the operators `f` adds are identified by
    /// `key` and their position inside the scope, so they keep their identity (and state)
    /// when the scope moves among its siblings, like a React key.
    fn scope<R: Pipe>(mut self, key: &str, f: impl FnOnce(Self) -> R) -> R {
        let body = self.body_mut();
        body.marks.push((
            body.len,
            Mark::Open {
                key: Key::new(key),
                input: fingerprint::of::<Out<Self>>(),
            },
        ));
        let mut r = f(self);
        let body = r.body_mut();
        body.marks.push((body.len, Mark::Close));
        r
    }

    /// Emits the values of both this stream and `other`; completes when both have.
    fn merge<S2>(self, other: Stream<S2>) -> Self::With<crate::fanin::Merge<Self::S, S2>>
    where
        S2: Stage<Out = Out<Self>>,
    {
        crate::fanin::merge(self, other)
    }

    /// Pairs the n-th value of this stream with the n-th of `other` through `f`; values
    /// wait in host-owned queues (kept across reloads). Completes when a stream that
    /// completed has nothing queued.
    fn zip<S2, V, F>(
        self,
        other: Stream<S2>,
        f: F,
    ) -> Self::With<crate::fanin::Zip<Self::S, S2, F, V>>
    where
        S2: Stage,
        Out<Self>: Shape + fmt::Debug + Send + Sync,
        S2::Out: Shape + fmt::Debug + Send + Sync,
        F: Fn(Out<Self>, S2::Out) -> V + Send + Sync + 'static,
        V: fmt::Debug + 'static,
    {
        crate::fanin::zip(self, other, f)
    }

    /// Once both streams have emitted, emits `f(latest of this, latest of other)` on each
    /// value of either. Completes when both have.
    fn combine_latest<S2, V, F>(
        self,
        other: Stream<S2>,
        f: F,
    ) -> Self::With<crate::fanin::CombineLatest<Self::S, S2, F, V>>
    where
        S2: Stage,
        Out<Self>: Shape + Clone + fmt::Debug + Send + Sync,
        S2::Out: Shape + Clone + fmt::Debug + Send + Sync,
        F: Fn(&Out<Self>, &S2::Out) -> V + Send + Sync + 'static,
        V: fmt::Debug + 'static,
    {
        crate::fanin::combine_latest(self, other, f)
    }

    /// On each value of this stream, once `other` has emitted, emits `f(value, latest of
    /// other)`. Completes when this stream does.
    fn with_latest_from<S2, V, F>(
        self,
        other: Stream<S2>,
        f: F,
    ) -> Self::With<crate::fanin::WithLatestFrom<Self::S, S2, F, V>>
    where
        S2: Stage,
        S2::Out: Shape + Clone + fmt::Debug + Send + Sync,
        F: Fn(Out<Self>, &S2::Out) -> V + Send + Sync + 'static,
        V: fmt::Debug + 'static,
    {
        crate::fanin::with_latest_from(self, other, f)
    }
}

/// The builder `P` extended by the operator `O`.
pub type Next<P, O> = <P as Pipe>::With<Then<<P as Pipe>::S, O>>;

/// The type of the values a builder's stage emits.
pub type Out<P> = <<P as Pipe>::S as Stage>::Out;

impl<S: Stage> Pipe for Stream<S> {
    type S = S;
    type With<S2: Stage> = Stream<S2>;
    fn body_mut(&mut self) -> &mut Body<S> {
        &mut self.body
    }
    fn map_body<S2: Stage>(self, f: impl FnOnce(Body<S>) -> Body<S2>) -> Stream<S2> {
        Stream { body: f(self.body) }
    }
}

impl<'p, S: Stage> Pipe for Chain<'p, S> {
    type S = S;
    type With<S2: Stage> = Chain<'p, S2>;
    fn body_mut(&mut self) -> &mut Body<S> {
        self.body
            .as_mut()
            .expect("a chain is consumed by each operator call")
    }
    fn map_body<S2: Stage>(mut self, f: impl FnOnce(Body<S>) -> Body<S2>) -> Chain<'p, S2> {
        let body = self
            .body
            .take()
            .expect("a chain is consumed by each operator call");
        Chain {
            host: self.host,
            name: std::mem::take(&mut self.name),
            body: Some(f(body)),
            _plugin: PhantomData,
        }
    }
}

impl<S: Stage> Body<S> {
    /// Joins `other` to this body with the fan-in stage `make` builds from both stages and
    /// the other's scope marks.
    pub(crate) fn join<S2: Stage, J: Stage>(
        self,
        other: Body<S2>,
        make: impl FnOnce(S, S2, Vec<(u32, Mark)>) -> J,
    ) -> Body<J> {
        let (b, marks) = other.into_parts();
        self.then(|a| make(a, b, marks))
    }
}

/// An inner stream bound at run time: what [`InnerDesc`] points at, kept alive while the
/// host reads it.
pub(crate) struct BoundInner {
    pub(crate) ops: Vec<OpDesc>,
    /// Their strings are views of the bound stage's (see [`Binder::source`]).
    pub(crate) sources: Vec<SourceDesc>,
    /// Its `publish` operators: their subjects are views of `_subjects`' strings.
    pub(crate) publishes: Vec<PublishDesc>,
    /// Held for the views in `publishes`.
    _subjects: Vec<PublishInfo>,
    /// The synchronous sources (`range`, `of`): port, first and end index.
    pub(crate) sync: SyncPorts,
}

impl Drop for BoundInner {
    fn drop(&mut self) {
        // The vectors go back to this thread's scratch for the next binding.
        let mut ops = std::mem::take(&mut self.ops);
        let mut sources = std::mem::take(&mut self.sources);
        ops.clear();
        sources.clear();
        // `try_with`: during the thread's teardown they are dropped instead.
        let _ = SCRATCH.try_with(|s| {
            if let Ok(mut scratch) = s.try_borrow_mut() {
                scratch.descs = ops;
                scratch.sources = sources;
            }
        });
    }
}

/// An inner stream's synchronous sources (port, first and end index): most have one, held
/// without an allocation.
#[derive(Clone, Debug, Default)]
pub(crate) enum SyncPorts {
    #[default]
    None,
    One((u32, u64, u64)),
    Many(Vec<(u32, u64, u64)>),
}

impl SyncPorts {
    fn push(&mut self, x: (u32, u64, u64)) {
        *self = match std::mem::take(self) {
            SyncPorts::None => SyncPorts::One(x),
            SyncPorts::One(a) => SyncPorts::Many(vec![a, x]),
            SyncPorts::Many(mut v) => {
                v.push(x);
                SyncPorts::Many(v)
            }
        };
    }

    pub(crate) fn as_slice(&self) -> &[(u32, u64, u64)] {
        match self {
            SyncPorts::None => &[],
            SyncPorts::One(x) => std::slice::from_ref(x),
            SyncPorts::Many(v) => v,
        }
    }
}

/// How many operators a lean binding records (more: the stream is bound in full).
pub(crate) const LEAN_OPS: usize = 8;
// `LeanOps::seeded` has a bit per operator.
const _: () = assert!(LEAN_OPS <= u8::BITS as usize);

/// The operators of an inner stream that runs inside its outer value's call, recorded by a
/// lean binding ([`bind_lean`]): each one's description and its track's signature, for the
/// host to register in the one call that numbers the subscription
/// ([`crate::abi::EmitCx::subscribe_sync`]), instead of a track call and return per
/// operator through the general [`Binder`] (scope marks, spines, sources, scratch vectors:
/// more than half of such a subscription's instructions, BENCHMARKS.md, 14). On the stack,
/// nothing allocated (but seeds' text past [`LEAN_TEXT`] bytes).
///
/// Checking instead ([`bind_lean_checked`]), it records nothing but the operators' number
/// of each: it compares each operator's shape with that of a binding the host answered
/// before, whose descriptions the caller kept (see `higher::LeanMemo`).
pub(crate) struct LeanOps {
    /// The stage's state seeding entry (every description's `init`).
    init: crate::abi::InitFn,
    /// Checking: the shapes to compare with, and how many (null and 0 when recording); set
    /// by [`bind_lean_checked`] on a `LeanOps` of its own, for the call.
    check: *const OpShape,
    check_len: usize,
    shapes: [core::mem::MaybeUninit<OpShape>; LEAN_OPS],
    descs: [core::mem::MaybeUninit<OpDesc>; LEAN_OPS],
    /// Their seeds are pointed at [`LeanOps::text`] only by [`LeanOps::parts`] (the text may
    /// move to the heap, and the whole may move, until then).
    sigs: [core::mem::MaybeUninit<RSignature>; LEAN_OPS],
    /// By operator: where its seed's text is in `text` (start and end), written for those
    /// whose bit is set in `seeded`.
    seed_at: [core::mem::MaybeUninit<(u32, u32)>; LEAN_OPS],
    seeded: u8,
    /// Made at the first seed (most inner streams have none: nothing to set up for them).
    text: Option<LeanText>,
    /// How many of each are written.
    len: usize,
    sources: u32,
    /// Not a straight line of at most [`LEAN_OPS`] operators over one source: the stream is
    /// bound in full.
    refused: bool,
}

/// How many bytes of seeds' text a lean binding keeps on the stack.
const LEAN_TEXT: usize = 96;

/// The seeds' text of a lean binding: on the stack, moved to the heap when it outgrows it.
struct LeanText {
    inline: [u8; LEAN_TEXT],
    len: usize,
    heap: Option<String>,
}

impl LeanText {
    fn new() -> LeanText {
        LeanText {
            inline: [0; LEAN_TEXT],
            len: 0,
            heap: None,
        }
    }

    /// The text written, as bytes (only `str`s are written, whole: it is UTF-8).
    fn bytes(&self) -> &[u8] {
        match &self.heap {
            Some(h) => h.as_bytes(),
            None => &self.inline[..self.len],
        }
    }

    #[cfg(test)]
    fn as_str(&self) -> &str {
        core::str::from_utf8(self.bytes()).expect("only strs are written")
    }

    fn len(&self) -> usize {
        self.heap.as_ref().map_or(self.len, String::len)
    }
}

impl fmt::Write for LeanText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(h) = &mut self.heap {
            h.push_str(s);
        } else if let Some(room) = self.inline.get_mut(self.len..self.len + s.len()) {
            room.copy_from_slice(s.as_bytes());
            self.len += s.len();
        } else {
            let mut h = String::with_capacity(2 * (self.len + s.len()));
            // Only `str`s were written, whole.
            h.push_str(core::str::from_utf8(&self.inline[..self.len]).unwrap_or_default());
            h.push_str(s);
            self.heap = Some(h);
        }
        Ok(())
    }
}

impl LeanOps {
    pub(crate) fn new<S: Stage>() -> LeanOps {
        LeanOps {
            init: init_entry::<S>,
            check: core::ptr::null(),
            check_len: 0,
            shapes: [const { core::mem::MaybeUninit::uninit() }; LEAN_OPS],
            descs: [const { core::mem::MaybeUninit::uninit() }; LEAN_OPS],
            sigs: [const { core::mem::MaybeUninit::uninit() }; LEAN_OPS],
            seed_at: [const { core::mem::MaybeUninit::uninit() }; LEAN_OPS],
            seeded: 0,
            text: None,
            len: 0,
            sources: 0,
            refused: false,
        }
    }

    /// Records operator `at` as the next one (its number in the stream is its position);
    /// `seed`: its seed value, for [`Seed::Value`].
    fn op(&mut self, at: &mut At, seed: Option<SeedValue<'_>>) {
        if self.len == LEAN_OPS {
            self.refused = true;
            return;
        }
        let meta = &at.meta;
        if !self.check.is_null() {
            // The seed's text is not written: whether there is one is the shape's.
            let same = self.len < self.check_len
                // SAFETY: `check` points at `check_len` shapes while checking
                // (`bind_lean_checked`).
                && unsafe { *self.check.add(self.len) }
                    == meta.shape(meta.seed.present(seed.is_some()));
            self.refused |= !same;
            at.op = self.len as u32;
            self.len += 1;
            return;
        }
        self.descs[self.len]
            .write(OpInfo::new(self.len as u64 + 1, meta).desc_seeded_by(self.init));
        let mut seeded = false;
        if !matches!(meta.seed, Seed::None) {
            let text = self.text.get_or_insert_with(LeanText::new);
            let start = text.len();
            if meta.seed.write(seed, text) {
                self.seed_at[self.len].write((start as u32, text.len() as u32));
                self.seeded |= 1 << self.len;
                seeded = true;
            }
        }
        self.shapes[self.len].write(meta.shape(seeded));
        // Its seed pointed at the text by `parts`.
        self.sigs[self.len].write(meta.signature(RStr::NONE));
        at.op = self.len as u32;
        self.len += 1;
    }

    /// The operators' descriptions, their tracks' signatures and their shapes, in order,
    /// the signatures' seeds pointing at the text this holds (valid while it is borrowed).
    /// Only of a binding that recorded them (not checked).
    pub(crate) fn parts(&mut self) -> (&[OpDesc], &[RSignature], &[OpShape]) {
        debug_assert!(self.check.is_null(), "the parts of a checking binding");
        if self.seeded != 0
            && let Some(text) = &self.text
        {
            let text = text.bytes();
            for (i, (sig, at)) in self.sigs[..self.len]
                .iter_mut()
                .zip(&self.seed_at)
                .enumerate()
            {
                if self.seeded & (1 << i) == 0 {
                    continue;
                }
                // SAFETY: written for each operator whose bit is set (`op`).
                let (start, end) = unsafe { at.assume_init() };
                // A whole seed's text, UTF-8 (written as a `str`).
                let seed = text.get(start as usize..end as usize).unwrap_or_default();
                // SAFETY: the first `len` are written (`op`).
                unsafe { sig.assume_init_mut() }.seed = RStr {
                    ptr: seed.as_ptr(),
                    len: seed.len(),
                };
            }
        }
        // SAFETY: the first `len` of each are written (`op`), and `MaybeUninit<T>` has `T`'s
        // layout.
        unsafe {
            (
                core::slice::from_raw_parts(self.descs.as_ptr().cast::<OpDesc>(), self.len),
                core::slice::from_raw_parts(self.sigs.as_ptr().cast::<RSignature>(), self.len),
                core::slice::from_raw_parts(self.shapes.as_ptr().cast::<OpShape>(), self.len),
            )
        }
    }
}

/// Binds an inner stream the lean way (see [`LeanOps`]): each operator numbered and
/// recorded in `lean`, nothing registered, no source described (labels left for later).
/// False when the stream is not one source through at most [`LEAN_OPS`] operators, one
/// track each (it is then bound in full, which numbers its operators again).
pub(crate) fn bind_lean<S: Stage>(stage: &mut S, api: &HostApi, lean: &mut LeanOps) -> bool {
    let mut b = Binder::new(api, Some(lean));
    stage.bind(&mut b);
    // A lean binding pushes to none of the binder's vectors (each of its entry points
    // returns first): nothing to free, so no drop glue to run.
    debug_assert!(
        b.ops.is_empty()
            && b.sources.is_empty()
            && b.publishes.is_empty()
            && b.owners.is_empty()
            && b.spines.is_empty()
            && b.scopes.is_empty()
    );
    core::mem::forget(b);
    !lean.refused
}

/// [`bind_lean`] checking instead of recording: true when the stream is, operator for
/// operator, of `shapes` (as many operators, each of the same kind, types, state layout and
/// seed presence; the seeds' text is not written), each operator numbered as recording
/// would number it. Its `LeanOps` records nothing, so none is handed out.
pub(crate) fn bind_lean_checked<S: Stage>(
    stage: &mut S,
    api: &HostApi,
    shapes: &[OpShape],
) -> bool {
    let mut lean = LeanOps::new::<S>();
    // Read by `LeanOps::op` during the call only: `shapes` outlives it.
    lean.check = shapes.as_ptr();
    lean.check_len = shapes.len();
    bind_lean(stage, api, &mut lean) && lean.len == shapes.len()
}

/// Vectors a binding at run time reuses (one thread runs a pipeline and its inner
/// subscriptions): emptied, their capacity kept.
struct Scratch {
    ops: Vec<OpInfo>,
    spines: Vec<Spine>,
    sources: Vec<SourceDesc>,
    descs: Vec<OpDesc>,
}

thread_local! {
    /// Each vector taken by a binding and given back when it is done, moved alone (a
    /// nested binding, should one happen, finds them taken and allocates). Moving the whole
    /// scratch in and out of a `Cell` three times a subscription was a twenty-fifth of its
    /// instructions (BENCHMARKS.md, 14).
    static SCRATCH: std::cell::RefCell<Scratch> = const {
        std::cell::RefCell::new(Scratch {
            ops: Vec::new(),
            spines: Vec::new(),
            sources: Vec::new(),
            descs: Vec::new(),
        })
    };
}

/// Binds an inner stream built at run time (its tracks registered through `api`, under
/// whatever the host has open), numbering its operators from 0.
pub(crate) fn bind_inner<S: Stage>(
    stage: &mut S,
    marks: Vec<(u32, Mark)>,
    api: &HostApi,
) -> BoundInner {
    let (ops, spines, sources, mut descs) = SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => (
            std::mem::take(&mut s.ops),
            std::mem::take(&mut s.spines),
            std::mem::take(&mut s.sources),
            std::mem::take(&mut s.descs),
        ),
        Err(_) => Default::default(),
    });
    let mut b = Binder {
        host: api,
        ops,
        sources,
        publishes: Vec::new(),
        owners: Vec::new(),
        spines,
        scopes: Vec::new(),
        lean: None,
    };
    b.bind_stage(stage, marks);
    descs.clear();
    descs.extend(b.ops.iter().map(OpInfo::desc::<S>));
    let sources = std::mem::take(&mut b.sources);
    let mut sync = SyncPorts::None;
    for (port, s) in sources.iter().enumerate() {
        match s.kind {
            crate::abi::source_kind::RANGE => sync.push((port as u32, s.a, s.b)),
            crate::abi::source_kind::OF => sync.push((port as u32, 0, s.a)),
            _ => {}
        }
    }
    // Most inner streams publish nothing: no allocation then.
    let subjects = std::mem::take(&mut b.publishes);
    let publishes: Vec<PublishDesc> = subjects.iter().map(PublishInfo::desc).collect();
    // The binder's own vectors go back now; the descriptions' with the `BoundInner`.
    let mut ops = std::mem::take(&mut b.ops);
    let mut spines = std::mem::take(&mut b.spines);
    ops.clear();
    spines.clear();
    SCRATCH.with(|s| {
        if let Ok(mut scratch) = s.try_borrow_mut() {
            scratch.ops = ops;
            scratch.spines = spines;
        }
    });
    BoundInner {
        ops: descs,
        sources,
        publishes,
        _subjects: subjects,
        sync,
    }
}

impl<S: Stage> Chain<'_, S> {
    fn finish(&mut self) {
        let Some(body) = self.body.take() else {
            return;
        };
        let (mut stage, marks) = body.into_parts();
        let host = self.host;
        let label = stage.label();
        let signature = RSignature {
            input: fingerprint::NONE,
            output: fingerprint::NONE,
            state: fingerprint::NONE,
            seed: RStr::new(&label),
        };
        let mut b = Binder::new(host, None);
        let track = b.track_call("pipeline", Some(&self.name), &signature);
        b.owners.push(track);
        b.bind_stage(&mut stage, marks);
        let ops: Vec<OpDesc> = b.ops.iter().map(OpInfo::desc::<S>).collect();
        let sources = std::mem::take(&mut b.sources);
        let publishes: Vec<PublishDesc> = b.publishes.iter().map(PublishInfo::desc).collect();
        let env = Box::into_raw(Box::new(Env {
            stage,
            sync: SyncPorts::None,
        }));
        let desc = PipelineDesc {
            name: RStr::new(&self.name),
            track,
            sources: sources.as_ptr(),
            n_sources: sources.len(),
            env: env.cast::<c_void>(),
            push: push_entry::<S, Silent>,
            push_one: push_one_entry::<S, Silent>,
            complete: complete_entry::<S, Silent>,
            start: start_entry::<S, Silent>,
            push_counted: push_counted::<S>,
            push_one_counted: push_one_counted::<S>,
            complete_counted: complete_entry::<S, Counted>,
            start_counted: start_entry::<S, Counted>,
            wake: wake_entry::<S, Silent>,
            wake_counted: wake_counted::<S>,
            project: project_entry::<S>,
            describe: describe_entry::<S>,
            drop_env: drop_env_entry::<S>,
            ops: ops.as_ptr(),
            n_ops: ops.len(),
            publishes: publishes.as_ptr(),
            n_publishes: publishes.len(),
        };
        // SAFETY: `host` is valid for the registration; `desc` and the arrays it points at
        // outlive the call, and ownership of `env` passes to the host, which frees it with
        // `drop_env`.
        unsafe {
            (host.add_pipeline)(host.ctx, &desc);
        }
        b.track_return(track);
    }
}

impl<S: Stage> Drop for Chain<'_, S> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The registration is failing; the host discards the whole run.
            return;
        }
        self.finish();
    }
}

pub(crate) struct Env<S> {
    pub(crate) stage: S,
    /// An inner stream's synchronous sources (port, first and end index), which its
    /// higher-order operator runs itself; none for a pipeline.
    pub(crate) sync: SyncPorts,
}

/// `publish(name)`: hands each value to the host (which delivers it to the subject's
/// subscribers before returning) and passes it on.
pub struct Publish<T> {
    subject: String,
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<T: Shape + Clone + fmt::Debug + Send + Sync + 'static> Op<T> for Publish<T> {
    type Out = T;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
        b.publish(
            self.at.op,
            &self.subject,
            fingerprint::of_state::<T>(),
            debug_state::<T>,
        );
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        // The subscribers' code runs inside this call: a panic there is reported by their
        // own pipelines, never here.
        cx.publish(self.at.op, &x);
        k.next(x)
    }
}

/// `map(f)`.
pub struct Map<F, T, U> {
    f: F,
    at: At,
    _t: PhantomData<fn(T) -> U>,
}

impl<F: Fn(T) -> U + Send + Sync + 'static, T: 'static, U: 'static> Op<T> for Map<F, T, U> {
    type Out = U;
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<U>>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        let y = cx.user(self.at.op, || (self.f)(x));
        k.next(y)
    }
}

/// `filter(f)`.
pub struct Filter<F, T> {
    f: F,
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<F: Fn(&T) -> bool + Send + Sync + 'static, T: 'static> Op<T> for Filter<F, T> {
    type Out = T;
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        if cx.user(self.at.op, || (self.f)(&x)) {
            k.next(x)
        } else {
            Flow::Continue
        }
    }
}

/// `tap(f)`.
pub struct Tap<F, T> {
    f: F,
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<F: Fn(&T) + Send + Sync + 'static, T: 'static> Op<T> for Tap<F, T> {
    type Out = T;
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        cx.user(self.at.op, || (self.f)(&x));
        k.next(x)
    }
}

/// `scan(seed, f)`: state `A`, emits every new accumulator (one clone per value: the one it
/// emits).
pub struct Scan<A, F, T> {
    seed: A,
    f: F,
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<A, F, T> Op<T> for Scan<A, F, T>
where
    A: Clone + fmt::Debug + Send + Sync + 'static,
    F: Fn(A, T) -> A + Send + Sync + 'static,
    T: 'static,
{
    type Out = A;
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op_seeded(&mut self.at, &self.seed);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<A>>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        // SAFETY: the host seeded this slot with an `A` (fingerprint-checked) and no other
        // reference to it exists: each operator touches only its own slot.
        let slot = unsafe { cx.state::<A>(self.at.op) };
        // The clone is a user `Clone` impl: it counts as the operator's code too.
        let out = cx.user(self.at.op, || {
            let refill = Refill {
                slot,
                seed: &self.seed,
                op: self.at.op,
                after_panic: &cx.after_panic,
            };
            // SAFETY: the slot holds an initialised `A`; it is moved out here and written
            // back below, or by `refill` if `f` unwinds.
            let acc = unsafe { slot.read() };
            let next = (self.f)(acc, x);
            refill.disarm();
            // SAFETY: the slot's value was moved out above; this puts the new one back.
            unsafe { slot.write(next) };
            // A panic in this clone leaves the new state in place: only the value is lost.
            // SAFETY: the slot holds the `A` just written; nothing else refers to it.
            unsafe { (*slot).clone() }
        });
        k.next(out)
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for an `A`.
        unsafe { dst.cast::<A>().write(self.seed.clone()) }
    }
}

/// `scan_map(seed, f)`: state `A`, updated in place by `f`, which returns what to emit; no
/// clone per value.
pub struct ScanMap<A, F, T, U> {
    seed: A,
    f: F,
    at: At,
    _t: PhantomData<fn(T) -> U>,
}

impl<A, F, T, U> Op<T> for ScanMap<A, F, T, U>
where
    A: Clone + fmt::Debug + Send + Sync + 'static,
    F: Fn(&mut A, T) -> U + Send + Sync + 'static,
    T: 'static,
    U: 'static,
{
    type Out = U;
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op_seeded(&mut self.at, &self.seed);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<U>>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        // SAFETY: as for `Scan`: a seeded `A`, touched only by this operator.
        let slot = unsafe { cx.state::<A>(self.at.op) };
        let out = cx.user(self.at.op, || {
            let reset = Reset {
                slot,
                seed: &self.seed,
                after_panic: &cx.after_panic,
            };
            // SAFETY: the slot holds an initialised `A`; this is the only reference to it
            // while `f` runs, and it is gone before `reset` could touch the slot.
            let out = (self.f)(unsafe { &mut *slot }, x);
            reset.disarm();
            out
        });
        k.next(out)
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for an `A`.
        unsafe { dst.cast::<A>().write(self.seed.clone()) }
    }
}

/// `reduce(seed, f)`: state `A`, emits the accumulator once, on completion (no clone per
/// value; one when it emits).
pub struct Reduce<A, F, T> {
    seed: A,
    f: F,
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<A, F, T> Op<T> for Reduce<A, F, T>
where
    A: Clone + fmt::Debug + Send + Sync + 'static,
    F: Fn(A, T) -> A + Send + Sync + 'static,
    T: 'static,
{
    type Out = A;
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op_seeded(&mut self.at, &self.seed);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<A>>(&self, cx: &Cx<'_>, x: T, _k: &mut K) -> Flow {
        // SAFETY: as for `Scan`: a seeded `A`, touched only by this operator.
        let slot = unsafe { cx.state::<A>(self.at.op) };
        cx.user(self.at.op, || {
            let refill = Refill {
                slot,
                seed: &self.seed,
                op: self.at.op,
                after_panic: &cx.after_panic,
            };
            // SAFETY: as in `Scan::push`: moved out here, written back below or by `refill`.
            let acc = unsafe { slot.read() };
            let next = (self.f)(acc, x);
            refill.disarm();
            // SAFETY: the slot's value was moved out above; this puts the new one back.
            unsafe { slot.write(next) };
        });
        Flow::Continue
    }
    fn complete<C: Tally, K: Observer<A>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        // SAFETY: as in `push`.
        let acc = unsafe { &*cx.state::<A>(self.at.op) };
        let value = cx.user(self.at.op, || acc.clone());
        if k.next(value) == Flow::Complete {
            return Flow::Complete;
        }
        k.complete()
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for an `A`.
        unsafe { dst.cast::<A>().write(self.seed.clone()) }
    }
}

/// `take(n)`: state `u64` (values passed so far).
pub struct Take<T> {
    n: u64,
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<T: 'static> Op<T> for Take<T> {
    type Out = T;
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        // SAFETY: a seeded `u64`, touched only by this operator.
        let taken = unsafe { &mut *cx.state::<u64>(self.at.op) };
        if self.n == 0 {
            // `take(0)` completes once (its state 1 says it did), at its first value if its
            // subscription did not already.
            if *taken == 0 {
                *taken = 1;
                k.complete();
            }
            return Flow::Complete;
        }
        if *taken >= self.n {
            // Completed already (with its n-th value): a value that still arrives (from
            // another port of a stream it is in) completes nothing again.
            return Flow::Complete;
        }
        *taken += 1;
        let done = *taken >= self.n;
        let r = k.next(x);
        if done {
            if r == Flow::Continue {
                k.complete();
            }
            Flow::Complete
        } else {
            r
        }
    }
    /// A `take` already full at subscription (`take(0)`, or a count kept full) completes
    /// there, without its upstream starting, as in RxJS (`take(0)` is `EMPTY`).
    fn start<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        // SAFETY: as in `push`.
        let taken = unsafe { &mut *cx.state::<u64>(self.at.op) };
        if *taken >= self.n {
            if self.n == 0 {
                *taken = 1;
            }
            k.complete();
            return Flow::Complete;
        }
        Flow::Continue
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for a `u64`.
        unsafe { dst.cast::<u64>().write(0) }
    }
}

/// `log()`: hands each value's Debug text to the host, which prints it as an emission.
pub struct Log<T> {
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<T: fmt::Debug + 'static> Op<T> for Log<T> {
    type Out = T;
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        cx.user(self.at.op, || {
            with_debug_text(&x, |text| cx.log(self.at.op, text))
        });
        k.next(x)
    }
}
/// Refills a state slot whose value was moved into a user function (`scan`, `reduce`) if
/// that function unwinds: the slot must never be left without a value, since the host will
/// hand it to the next call and drop it at the end.
///
/// Armed only while the function runs; [`Refill::disarm`] once it has returned. It clones the
/// seed while unwinding, so the happy path pays no clone. If that clone panics as well, no
/// value exists to put in the slot, and the process aborts after saying why on stderr.
struct Refill<'a, A: Clone> {
    slot: *mut A,
    seed: &'a A,
    op: u32,
    after_panic: &'a Cell<AfterPanic>,
}

impl<A: Clone> Refill<'_, A> {
    fn disarm(self) {
        core::mem::forget(self);
    }
}

impl<A: Clone> Drop for Refill<'_, A> {
    fn drop(&mut self) {
        // Only reached while unwinding out of the user function, which owned the old value.
        match catch_unwind(AssertUnwindSafe(|| self.seed.clone())) {
            Ok(seed) => {
                // SAFETY: `slot` is this operator's slot, valid and aligned for an `A`, and its
                // value was moved out (into the function that panicked): writing does not leak
                // or double-drop anything.
                unsafe { self.slot.write(seed) };
                self.after_panic.set(AfterPanic::Reseeded);
            }
            Err(payload) => {
                core::mem::forget(payload);
                fatal(&format!(
                    "operator {} panicked with its state moved out, and cloning its seed to \
                     restore the state panicked too: its state slot cannot be refilled",
                    self.op
                ));
            }
        }
    }
}

/// Resets a state updated in place (`scan_map`) to its seed if the update unwinds: the
/// value is still valid, but may be half-updated. Armed only while the function runs.
struct Reset<'a, A: Clone> {
    slot: *mut A,
    seed: &'a A,
    after_panic: &'a Cell<AfterPanic>,
}

impl<A: Clone> Reset<'_, A> {
    fn disarm(self) {
        core::mem::forget(self);
    }
}

impl<A: Clone> Drop for Reset<'_, A> {
    fn drop(&mut self) {
        // Only reached while unwinding out of the user function, whose `&mut A` is gone.
        match catch_unwind(AssertUnwindSafe(|| self.seed.clone())) {
            Ok(seed) => {
                // SAFETY: `slot` is this operator's slot holding an initialised `A` that no
                // reference points at any more (the function that borrowed it has unwound).
                let old = unsafe { self.slot.replace(seed) };
                // Not `contained`: the panic that brought us here is still in flight.
                if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(old))) {
                    core::mem::forget(payload);
                }
                self.after_panic.set(AfterPanic::Reseeded);
            }
            Err(payload) => {
                // The half-updated value is still a valid `A`: keep it rather than abort.
                core::mem::forget(payload);
                self.after_panic.set(AfterPanic::LeftAsIs);
            }
        }
    }
}

/// Ends the process after printing `message` to stderr: for the few states from which no
/// sound way back exists. The host shares the process, so it ends too; the message is what
/// the person gets.
#[cold]
fn fatal(message: &str) -> ! {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "[hmr plugin] fatal: {message}; aborting");
    std::process::abort()
}

/// Formats `value` with Debug into a stack buffer (a heap string only when it does not fit)
/// and passes the text to `f`.
fn with_debug_text<T: fmt::Debug>(value: &T, f: impl FnOnce(&str)) {
    struct Buf {
        bytes: [u8; 256],
        len: usize,
        overflow: bool,
    }
    impl fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.len + s.len();
            if end > self.bytes.len() {
                self.overflow = true;
                return Err(fmt::Error);
            }
            self.bytes[self.len..end].copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
    let mut buf = Buf {
        bytes: [0; 256],
        len: 0,
        overflow: false,
    };
    let fitted = fmt::write(&mut buf, format_args!("{value:?}")).is_ok();
    if fitted && !buf.overflow {
        // Only whole `&str`s were copied in, so the prefix is valid UTF-8.
        f(core::str::from_utf8(&buf.bytes[..buf.len]).unwrap_or("<invalid utf-8>"));
    } else {
        f(&format!("{value:?}"));
    }
}

pub(crate) unsafe extern "C" fn drop_state<A>(dst: *mut u8) -> bool {
    // SAFETY: the host calls this only on a slot that holds an initialised `A` it will not
    // use again.
    let run = catch_unwind(AssertUnwindSafe(|| unsafe {
        dst.cast::<A>().drop_in_place()
    }));
    contained(run).is_some()
}

/// `Some` of a caught call's result, `None` if it panicked. The panic's payload is forgotten,
/// not dropped: a payload whose destructor panics would otherwise unwind out of an
/// `extern "C"` function and abort the host.
pub(crate) fn contained<R>(run: std::thread::Result<R>) -> Option<R> {
    match run {
        Ok(r) => Some(r),
        Err(payload) => {
            caught();
            core::mem::forget(payload);
            None
        }
    }
}

std::thread_local! {
    /// Whether a panic raised by this library's code is unwinding on this thread and has not
    /// been caught by one of its entry points yet (see [`quiet_hook`]).
    static UNWINDING: Cell<bool> = const { Cell::new(false) };
}

/// Marks the panic in flight on this thread as caught by an entry point.
fn caught() {
    let _ = UNWINDING.try_with(|u| u.set(false));
}

/// This library's panic hook: silent for the panics its entry points catch (the host reports
/// them, with the operator's path), loud for those that may end the process, which no one
/// could report afterwards:
///
/// - every panic when the library was built with `panic = "abort"` (the host refuses such a
///   library before running any of its code, so this is a second line);
/// - a panic raised while another one unwinds on the same thread (in a destructor, or in
///   the seed clone that refills a state): Rust aborts when such a panic leaves a destructor.
///   A nested panic that is then caught (a user function catching its own) is printed too.
fn quiet_hook(info: &std::panic::PanicHookInfo<'_>) {
    let nested = UNWINDING.try_with(|u| u.replace(true)).unwrap_or(true);
    if nested || !cfg!(panic = "unwind") {
        use std::io::Write;
        let why = if nested {
            "panic while another panic unwinds (the process may abort)"
        } else {
            "panic in a library built with panic = \"abort\" (the process aborts)"
        };
        let _ = writeln!(std::io::stderr(), "[hmr plugin] {why}: {info}");
    }
}

pub(crate) unsafe extern "C" fn drop_nothing(_dst: *mut u8) -> bool {
    true
}

unsafe extern "C" fn debug_nothing(
    _src: *const u8,
    _buf: *mut u8,
    _cap: usize,
    len: *mut usize,
) -> u32 {
    // SAFETY: the host passes a writable `len`.
    unsafe { *len = 0 };
    debug_status::NO_STATE
}

/// A state's fingerprint, drop glue, Debug writer and clone glue.
pub(crate) type StateFns = (RFingerprint, DropStateFn, DebugStateFn, CloneStateFn);

/// The glue of a `Clone` state (a replay on reload copies it).
pub(crate) fn state_fns<A: Shape + fmt::Debug + Clone>() -> StateFns {
    (
        fingerprint::of_state::<A>(),
        drop_state::<A> as DropStateFn,
        debug_state::<A> as DebugStateFn,
        clone_state::<A> as CloneStateFn,
    )
}

/// The glue of a state that cannot be copied (it holds values the operator does not require
/// to be `Clone`): a replay on reload does not run its pipeline, and says why.
pub(crate) fn state_fns_uncloned<A: Shape + fmt::Debug>() -> StateFns {
    (
        fingerprint::of_state::<A>(),
        drop_state::<A> as DropStateFn,
        debug_state::<A> as DebugStateFn,
        clone_unsupported as CloneStateFn,
    )
}

pub(crate) unsafe extern "C" fn clone_state<A: Clone>(src: *const u8, dst: *mut u8) -> u32 {
    let run = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host calls this on a slot holding an initialised `A` that nothing
        // mutates during the call, and `dst` is valid and aligned for an `A`, uninitialised.
        unsafe {
            let copy = (*src.cast::<A>()).clone();
            dst.cast::<A>().write(copy);
        }
    }));
    match contained(run) {
        Some(()) => clone_status::OK,
        None => clone_status::PANICKED,
    }
}

pub(crate) unsafe extern "C" fn clone_unsupported(_src: *const u8, _dst: *mut u8) -> u32 {
    clone_status::UNSUPPORTED
}

/// A stateless operator's (zero-sized) state: nothing to write.
unsafe extern "C" fn clone_nothing(_src: *const u8, _dst: *mut u8) -> u32 {
    clone_status::OK
}

/// Writes into the host's buffer; stops the formatting (an error) once it is full, so a huge
/// text costs no more than `cap` bytes of formatting.
struct Capped<'b> {
    buf: &'b mut [u8],
    len: usize,
    full: bool,
}

impl fmt::Write for Capped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            self.full = true;
            return Err(fmt::Error);
        }
        Ok(())
    }
}

impl Capped<'_> {
    /// A writer into `cap` bytes at `buf` (nothing when `cap` is 0 or `buf` null).
    ///
    /// # Safety
    /// Unless `cap` is 0 or `buf` null, `buf` must be valid for `cap` writable bytes for as
    /// long as the writer lives.
    unsafe fn new<'b>(buf: *mut u8, cap: usize) -> Capped<'b> {
        let buf: &'b mut [u8] = if cap == 0 || buf.is_null() {
            &mut []
        } else {
            // SAFETY: the caller's obligation.
            unsafe { core::slice::from_raw_parts_mut(buf, cap) }
        };
        Capped {
            buf,
            len: 0,
            full: false,
        }
    }

    /// The [`debug_status`] of what was written: `panicked` when the formatting did.
    fn status(&self, panicked: bool) -> u32 {
        if panicked {
            debug_status::PANICKED
        } else if self.full {
            debug_status::TRUNCATED
        } else {
            debug_status::OK
        }
    }
}

pub(crate) unsafe extern "C" fn describe_entry<S: Stage>(
    env: *const c_void,
    port: u32,
    item: *const c_void,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> u32 {
    let describe = |w: &mut Capped<'_>| {
        // SAFETY: `env` comes from `finish` for this `S`; `item` is one wire value of
        // `port`'s type (the host's obligation).
        unsafe { (*env.cast::<Env<S>>()).stage.describe(port, item, w) }
    };
    // SAFETY: the host passes `cap` writable bytes at `buf` and a writable `len`
    // (`DescribeFn`).
    unsafe { write_capped(buf, cap, len, describe) }
}

/// Runs `f` with a writer into `cap` bytes at `buf`, catching its panics, and writes the
/// length written to `*len`; the [`debug_status`] (`NO_STATE` when `f` answers false).
///
/// # Safety
/// `buf` must be valid for `cap` writable bytes (or `cap` 0, or `buf` null), and `len`
/// writable.
unsafe fn write_capped(
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
    f: impl FnOnce(&mut Capped<'_>) -> bool,
) -> u32 {
    // SAFETY: the caller's obligation.
    let mut w = unsafe { Capped::new(buf, cap) };
    let run = contained(catch_unwind(AssertUnwindSafe(|| f(&mut w))));
    // SAFETY: the caller's obligation.
    unsafe { *len = w.len };
    match run {
        Some(false) => debug_status::NO_STATE,
        r => w.status(r.is_none()),
    }
}

pub(crate) unsafe extern "C" fn debug_state<A: fmt::Debug>(
    src: *const u8,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> u32 {
    let debug = |w: &mut Capped<'_>| {
        // SAFETY: the host calls this only on a slot holding an initialised `A` that nothing
        // mutates during the call (on the thread that owns it, between two pushes).
        let value = unsafe { &*src.cast::<A>() };
        let _ = fmt::write(w, format_args!("{value:?}"));
        true
    };
    // SAFETY: the host passes `cap` writable bytes at `buf` and a writable `len`
    // (`DebugStateFn`).
    unsafe { write_capped(buf, cap, len, debug) }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    };
    // A payload whose destructor panics must not unwind out of here.
    contained(catch_unwind(AssertUnwindSafe(move || drop(payload))));
    message
}

/// Builds the [`Cx`] for one call from the raw arguments.
///
/// # Safety
/// `env` must come from `finish` for this `S`, `states` must point at one slot pointer per
/// operator of the chain, and `cx` at a live [`EmitCx`].
unsafe fn enter<'a, S>(
    env: *const c_void,
    states: *const *mut u8,
    cx: *const EmitCx,
    mark_ops: bool,
) -> (&'a Env<S>, Cx<'a>) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let env = &*env.cast::<Env<S>>();
        let cx = Cx {
            states,
            emit: &*cx,
            panicked_op: Cell::new(NO_OP),
            mark_ops,
            after_panic: Cell::new(AfterPanic::Untouched),
            completed: Cell::new(false),
            panic_to: Cell::new((core::ptr::null(), NO_OP)),
            contained: Cell::new(false),
        };
        (env, cx)
    }
}

fn report_panic(cx: &Cx<'_>, payload: Box<dyn std::any::Any + Send>) -> u32 {
    caught();
    if payload.is::<Contained>() {
        // Reported where it was caught (`contain_panic`).
        return status::PANICKED;
    }
    let mut message = panic_message(payload);
    message.push_str(cx.after_panic.get().note());
    let (inner, op) = cx.panic_to.get();
    if inner.is_null() {
        // SAFETY: `emit` is the host's live context for this call; the message outlives it.
        unsafe { (cx.emit.error)(cx.emit.host, cx.panicked_op.get(), RStr::new(&message)) };
    } else {
        // SAFETY: an inner subscription's context, valid for this call (the host frees a
        // subscription only after the call returns).
        unsafe { ((*inner).error)((*inner).host, op, RStr::new(&message)) };
    }
    status::PANICKED
}

/// Reports a panic caught inside a call, on one value of an inner stream (`inner`, whose
/// callbacks are `inner_emit`), at the operator it happened in (an inner one, or one of
/// the outer chain downstream), and marks the call as having contained one.
pub(crate) fn contain_panic(
    outer: &Cx<'_>,
    inner: &Cx<'_>,
    inner_emit: *const EmitCx,
    payload: Box<dyn std::any::Any + Send>,
) {
    caught();
    if payload.is::<Contained>() {
        // A higher-order operator downstream contained (and reported) it: passed on.
        outer.contained.set(true);
        return;
    }
    let mut message = panic_message(payload);
    // Where: a stream that ran inside this one's call and let the panic out of its own
    // operator (its `PanicAt` named it on the context it unwound into), else the operator
    // of this stream or of the outer chain it happened in.
    let deeper = [inner, outer]
        .iter()
        .map(|c| c.panic_to.get())
        .find(|(to, _)| !to.is_null());
    let (cx, emit, op) = match deeper {
        Some((to, op)) => (inner, to, op),
        None if inner.panicked_op.get() != NO_OP => (inner, inner_emit, inner.panicked_op.get()),
        None => (outer, outer.emit as *const EmitCx, outer.panicked_op.get()),
    };
    message.push_str(cx.after_panic.get().note());
    // SAFETY: the host's live contexts for this call (an inner subscription's is freed only
    // after the call returns; a `panic_to` is one of them).
    unsafe { ((*emit).error)((*emit).host, op, RStr::new(&message)) };
    // Reported: nothing of it is left to name a later panic of this call.
    for c in [outer, inner] {
        c.panicked_op.set(NO_OP);
        c.after_panic.set(AfterPanic::Untouched);
        c.panic_to.set((core::ptr::null(), NO_OP));
    }
    outer.contained.set(true);
}

/// What a higher-order operator unwinds with ([`rethrow_contained`]): the panic it stands
/// for was reported already.
pub(crate) struct Contained;

/// At the end of a higher-order operator's own work: if it contained a panic (and would
/// otherwise go on), unwinds to the entry point, which answers `PANICKED` as for any panic
/// on this value. Only the higher-order operators pay this check, not every call.
#[inline]
pub(crate) fn rethrow_contained(cx: &Cx<'_>, flow: Flow) -> Flow {
    if cx.contained.replace(false) && flow == Flow::Continue {
        std::panic::resume_unwind(Box::new(Contained));
    }
    flow
}

/// The status of a call whose stage returned `flow`.
#[inline(always)]
fn flow_status(cx: &Cx<'_>, flow: Flow) -> u32 {
    match flow {
        Flow::Continue => status::CONTINUE,
        Flow::Complete if cx.completed.get() => status::COMPLETE,
        Flow::Complete => status::PORT_DONE,
    }
}

unsafe extern "C" fn push_entry<S: Stage, C: Tally>(
    env: *const c_void,
    states: *const *mut u8,
    port: u32,
    items: *const c_void,
    n: usize,
    cx: *const EmitCx,
    consumed: *mut usize,
) -> u32 {
    // SAFETY: the host passes the arguments `PushFn` documents.
    let (env, cx) = unsafe { enter::<S>(env, states, cx, false) };
    let position = Cell::new(0usize);
    let run = catch_unwind(AssertUnwindSafe(|| {
        let mut end = Terminal {
            completed: &cx.completed,
        };
        for i in 0..n {
            position.set(i);
            let flow = env.stage.push::<C, _>(&cx, port, items, i, &mut end);
            if flow == Flow::Complete {
                return flow_status(&cx, flow);
            }
        }
        status::CONTINUE
    }));
    let s = match run {
        Ok(s) => s,
        Err(payload) => report_panic(&cx, payload),
    };
    if s != status::CONTINUE {
        // SAFETY: the host passes a writable `consumed`.
        unsafe { *consumed = position.get() + 1 };
    }
    s
}

unsafe extern "C" fn push_one_entry<S: Stage, C: Tally>(
    env: *const c_void,
    states: *const *mut u8,
    port: u32,
    item: *const c_void,
    cx: *const EmitCx,
) -> u32 {
    // SAFETY: the host passes the arguments `PushOneFn` documents.
    let (env, cx) = unsafe { enter::<S>(env, states, cx, true) };
    let run = catch_unwind(AssertUnwindSafe(|| {
        let mut end = Terminal {
            completed: &cx.completed,
        };
        flow_status(&cx, env.stage.push::<C, _>(&cx, port, item, 0, &mut end))
    }));
    run.unwrap_or_else(|payload| report_panic(&cx, payload))
}

unsafe extern "C" fn complete_entry<S: Stage, C: Tally>(
    env: *const c_void,
    states: *const *mut u8,
    port: u32,
    cx: *const EmitCx,
) -> u32 {
    // SAFETY: the host passes the arguments `CompleteFn` documents.
    let (env, cx) = unsafe { enter::<S>(env, states, cx, true) };
    let run = catch_unwind(AssertUnwindSafe(|| {
        let mut end = Terminal {
            completed: &cx.completed,
        };
        env.stage.complete::<C, _>(&cx, port, &mut end);
        // The port's source completed: whatever the stage answered, nothing more comes from
        // it; the pipeline completed if its end did.
        if cx.completed.get() {
            status::COMPLETE
        } else {
            status::PORT_DONE
        }
    }));
    run.unwrap_or_else(|payload| report_panic(&cx, payload))
}

unsafe extern "C" fn start_entry<S: Stage, C: Tally>(
    env: *const c_void,
    states: *const *mut u8,
    cx: *const EmitCx,
) -> u32 {
    // SAFETY: the host passes the arguments `StartFn` documents.
    let (env, cx) = unsafe { enter::<S>(env, states, cx, true) };
    let run = catch_unwind(AssertUnwindSafe(|| {
        let mut end = Terminal {
            completed: &cx.completed,
        };
        let flow = env.stage.start::<C, _>(&cx, &mut end);
        if cx.completed.get() || flow == Flow::Complete {
            status::COMPLETE
        } else {
            status::CONTINUE
        }
    }));
    run.unwrap_or_else(|payload| report_panic(&cx, payload))
}

unsafe extern "C" fn wake_entry<S: Stage, C: Tally>(
    env: *const c_void,
    states: *const *mut u8,
    op: u32,
    inner: *mut InnerCall,
    cx: *const EmitCx,
) -> u32 {
    // SAFETY: the host passes the arguments `WakeFn` documents.
    let (env, cx) = unsafe { enter::<S>(env, states, cx, true) };
    let run = catch_unwind(AssertUnwindSafe(|| {
        let mut end = Terminal {
            completed: &cx.completed,
        };
        // An operator this code does not have (a stale timer) has nothing to run.
        // SAFETY: null, or a live event the host built for this call (`WakeFn`).
        let inner = unsafe { inner.as_mut() };
        match env.stage.wake::<C, _>(&cx, op, inner, &mut end) {
            Some(Flow::Complete) if cx.completed.get() => status::COMPLETE,
            _ => status::CONTINUE,
        }
    }));
    run.unwrap_or_else(|payload| report_panic(&cx, payload))
}

unsafe extern "C" fn project_entry<S: Stage>(
    env: *const c_void,
    op: u32,
    value: *const c_void,
    cx: *const EmitCx,
) -> u32 {
    // SAFETY: the host passes the arguments `ProjectFn` documents (no slots are read).
    let (env, cx) = unsafe { enter::<S>(env, core::ptr::null(), cx, true) };
    let run = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `value` is a live value of operator `op`'s input type (the host's
        // obligation).
        match unsafe { env.stage.project(&cx, op, value) } {
            Some(true) => status::CONTINUE,
            _ => status::COMPLETE,
        }
    }));
    run.unwrap_or_else(|payload| report_panic(&cx, payload))
}

pub(crate) unsafe extern "C" fn init_entry<S: Stage>(
    env: *const c_void,
    op: u32,
    dst: *mut u8,
) -> u32 {
    // SAFETY: `env` comes from `finish` for this `S` and `dst` is null or a slot sized and
    // aligned for operator `op`'s state, as `InitFn` documents.
    let run = contained(catch_unwind(AssertUnwindSafe(|| unsafe {
        (*env.cast::<Env<S>>()).stage.init(op, dst)
    })));
    match run {
        Some(true) => init_status::OK,
        Some(false) => init_status::UNKNOWN_OP,
        None => init_status::PANICKED,
    }
}

pub(crate) unsafe extern "C" fn drop_env_entry<S: Stage>(env: *mut c_void) {
    // SAFETY: `env` came from `Box::into_raw` in `finish` and the host frees it once.
    let env = unsafe { Box::from_raw(env.cast::<Env<S>>()) };
    contained(catch_unwind(AssertUnwindSafe(move || drop(env))));
}

/// Runs the plugin's registration function `f` against `host`; used by
/// [`export_plugin!`](crate::export_plugin).
///
/// # Safety
/// `host` must point at a [`HostApi`] valid for the duration of the call.
pub unsafe fn run_register(host: *const HostApi, f: fn(&mut Plugin<'_>)) -> bool {
    static QUIET: std::sync::Once = std::sync::Once::new();
    // Panics in plugin code are caught and reported by the host with the track's path; the
    // plugin's own copy of std would otherwise also print them to stderr.
    QUIET.call_once(|| std::panic::set_hook(Box::new(quiet_hook)));
    // SAFETY: guaranteed by the caller.
    let host = unsafe { &*host };
    let mut plugin = Plugin { host };
    match catch_unwind(AssertUnwindSafe(|| f(&mut plugin))) {
        Ok(()) => true,
        Err(payload) => {
            caught();
            let message = panic_message(payload);
            // SAFETY: `host` is valid for the registration; the message outlives the call.
            unsafe { (host.fail)(host.ctx, RStr::new(&message)) };
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SyncPorts;

    /// A lean binding checked against the shapes another recorded passes when its operators
    /// are, in order, of the same kinds, types, state layouts and seed presence, whatever
    /// their closures and seeds' values; it fails on any other kind, type, state, or number
    /// of operators.
    #[test]
    fn a_checked_lean_binding_passes_the_same_shapes_only() {
        use super::{LeanOps, OpShape, Stage, Stream, bind_lean, bind_lean_checked};
        use crate::abi::{HostApi, RSignature, RStr};
        use crate::prelude::*;
        use core::ffi::c_void;
        unsafe extern "C" fn track_call(
            _: *mut c_void,
            _: RStr,
            _: RStr,
            _: *const RSignature,
        ) -> u64 {
            panic!("a lean binding registers nothing")
        }
        unsafe extern "C" fn track_call_return(_: *mut c_void, _: u64) {}
        unsafe extern "C" fn add_pipeline(_: *mut c_void, _: *const crate::abi::PipelineDesc) {}
        unsafe extern "C" fn fail(_: *mut c_void, _: RStr) {}
        let api = HostApi {
            abi_version: crate::abi::ABI_VERSION,
            ctx: core::ptr::null_mut(),
            track_call,
            track_call_return,
            add_pipeline,
            fail,
        };
        // Records a stream's shapes.
        fn shapes<S: Stage>(stream: Stream<S>, api: &HostApi) -> Vec<OpShape> {
            let (mut stage, _) = stream.body.into_parts();
            let mut lean = LeanOps::new::<S>();
            assert!(bind_lean(&mut stage, api, &mut lean));
            lean.parts().2.to_vec()
        }
        // Checks a stream against them.
        fn check<S: Stage>(stream: Stream<S>, api: &HostApi, against: &[OpShape]) -> bool {
            let (mut stage, _) = stream.body.into_parts();
            bind_lean_checked(&mut stage, api, against)
        }
        let map = shapes(of(vec![1u64]).map(|x: u64| x + 1), &api);
        let scan = shapes(of(vec![1u64]).scan(0u64, |a: u64, v: u64| a + v), &api);
        let take = shapes(of(vec![1u64]).map(|x: u64| x + 1).take(1), &api);
        let scan_map = shapes(
            of(vec![1u64]).scan_map(0u64, |a: &mut u64, v: u64| *a + v),
            &api,
        );
        let cases: [(&str, bool, bool); 13] = [
            (
                "another closure",
                check(of(vec![2u64]).map(|x: u64| x * 3), &api, &map),
                true,
            ),
            (
                "filter for map",
                check(of(vec![2u64]).filter(|x: &u64| *x > 1), &api, &map),
                false,
            ),
            (
                "another output",
                check(of(vec![2u64]).map(|x: u64| x as u32), &api, &map),
                false,
            ),
            (
                "another input",
                check(of(vec![2u32]).map(|x: u32| u64::from(x)), &api, &map),
                false,
            ),
            (
                "one more",
                check(of(vec![2u64]).map(|x: u64| x).map(|x: u64| x), &api, &map),
                false,
            ),
            (
                "one fewer",
                check(of(vec![2u64]).map(|x: u64| x + 1), &api, &take),
                false,
            ),
            (
                "another seed",
                check(
                    of(vec![2u64]).scan(9u64, |a: u64, v: u64| a * v),
                    &api,
                    &scan,
                ),
                true,
            ),
            (
                "another state",
                check(
                    of(vec![2u64]).scan(9u32, |a: u32, v: u64| a + v as u32),
                    &api,
                    &scan,
                ),
                false,
            ),
            (
                "another count",
                check(of(vec![2u64]).map(|x: u64| x).take(5), &api, &take),
                true,
            ),
            (
                "skip for take",
                check(of(vec![2u64]).map(|x: u64| x).skip(1), &api, &take),
                false,
            ),
            (
                "one against none",
                check(of(vec![2u64]).map(|x: u64| x), &api, &[]),
                false,
            ),
            (
                "another scan_map seed",
                check(
                    of(vec![2u64]).scan_map(5u64, |a: &mut u64, v: u64| *a * v),
                    &api,
                    &scan_map,
                ),
                true,
            ),
            (
                // The same input and output: only the state's type differs.
                "another scan_map state",
                check(
                    of(vec![2u64]).scan_map(5u32, |a: &mut u32, v: u64| u64::from(*a) + v),
                    &api,
                    &scan_map,
                ),
                false,
            ),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, want, "{name}");
        }
    }

    /// A seed value's text is its `Debug` text, for the integers written without `core::fmt`
    /// (each type's extremes, zero, and values of each length) and for any other value;
    /// and a lean binding's text reads back whole, on the stack or spilled to the heap.
    #[test]
    fn a_seed_is_written_as_its_debug_text() {
        use super::{LEAN_TEXT, LeanText, Seed, SeedValue};
        use core::fmt::{Debug, Write};
        fn check<A: Debug + 'static>(v: A) {
            let mut got = String::new();
            assert!(Seed::Value.write(Some(SeedValue::of(&v)), &mut got));
            assert_eq!(got, format!("{v:?}"), "{}", core::any::type_name::<A>());
        }
        for n in [0u64, 1, 9, 10, 99, 12_345, u64::MAX / 10, u64::MAX] {
            check(n);
            check(n as usize);
            check(n as u32);
            check(n as u16);
            check(n as u8);
            let mut got = String::new();
            assert!(Seed::Count(n).write(None, &mut got));
            assert_eq!(got, n.to_string());
        }
        for n in [0i64, -1, 1, -10, 99, -12_345, i64::MIN, i64::MAX] {
            check(n);
            check(n as isize);
            check(n as i32);
            check(n as i16);
            check(n as i8);
        }
        check(i32::MIN);
        check(i16::MIN);
        check(i8::MIN);
        check(u128::MAX);
        check("a \"seed\"".to_owned());
        check((1u8, -2i64, [3.5f64]));
        check(Some(vec!['x']));
        let mut none = String::new();
        assert!(!Seed::None.write(Some(SeedValue::of(&1u64)), &mut none) && none.is_empty());
        // A `Debug` that fails or panics still gives a seed, its text saying so.
        struct Fails;
        impl Debug for Fails {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("ab")?;
                Err(core::fmt::Error)
            }
        }
        struct Panics;
        impl Debug for Panics {
            fn fmt(&self, _: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                panic!("no text for this seed")
            }
        }
        let mut failed = String::new();
        assert!(Seed::Value.write(Some(SeedValue::of(&Fails)), &mut failed));
        assert_eq!(failed, format!("ab{}", super::SEED_DEBUG_FAILED));
        let mut panicked = String::new();
        assert!(Seed::Value.write(Some(SeedValue::of(&Panics)), &mut panicked));
        assert_eq!(panicked, super::DEBUG_PANICKED);
        // The lean binding's buffer: up to its size on the stack, then all of it on the heap.
        for pieces in [
            vec!["ab"; 3],
            vec!["x"; LEAN_TEXT],
            vec!["é"; LEAN_TEXT],
            vec!["0123456789"; 30],
        ] {
            let mut text = LeanText::new();
            for p in &pieces {
                text.write_str(p).unwrap();
            }
            let want = pieces.concat();
            assert_eq!(text.as_str(), want);
            assert_eq!(text.len(), want.len());
            assert_eq!(
                text.heap.is_some(),
                want.len() > LEAN_TEXT,
                "{} bytes",
                want.len()
            );
        }
    }

    #[test]
    fn sync_ports_hold_what_was_pushed_in_order() {
        for n in 0..5u32 {
            let want: Vec<(u32, u64, u64)> = (0..n).map(|i| (i, u64::from(i), 10)).collect();
            let mut ports = SyncPorts::None;
            for &p in &want {
                ports.push(p);
            }
            assert_eq!(ports.as_slice(), &want[..], "{n} ports");
        }
    }

    #[test]
    fn a_scope_key_reads_back_as_written_inline_or_not() {
        let long = "k".repeat(super::KEY_INLINE + 1);
        let at_limit = "k".repeat(super::KEY_INLINE);
        // Multi-byte characters on both sides of the inline limit (21 + 2 bytes: heap).
        let wide = format!("{}é", "k".repeat(super::KEY_INLINE - 1));
        let keys = ["", "s0", "s997", "ключ", &at_limit, &long, &wide];
        for key in keys {
            let k = super::Key::new(key);
            assert_eq!(k.as_bytes(), key.as_bytes());
            // SAFETY: the view borrows `k`, live and unchanged while it is read.
            let read = unsafe { k.as_rstr().to_string_lossy() };
            assert_eq!(read.as_deref(), Some(key));
            let inline = matches!(k, super::Key::Inline { .. });
            assert_eq!(inline, key.len() <= super::KEY_INLINE, "{key:?} inline");
        }
    }
}

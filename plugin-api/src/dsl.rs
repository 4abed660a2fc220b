//! The pipeline DSL: [`Plugin::pipeline`], sources and operators.
//!
//! Each operator call does two things while the plugin's `register` function runs:
//!
//! 1. it opens and closes a track scope through the host ([`HostApi::track_call`] /
//!    [`HostApi::track_call_return`]), so the host's tracking store learns the operator's
//!    structural path and signature;
//! 2. it wraps the chain built so far in a generic struct ([`Then`]), so when the chain is
//!    finished (the [`Chain`] value is dropped at the end of its statement) the whole pipeline
//!    is one monomorphised type. Its entry point (`push_entry::<S>`) runs every operator on
//!    a batch of source values inside one call, with the closures inlined: no indirect call
//!    and no allocation per operator per value.
//!
//! Operator state (a `scan` accumulator, a `take` counter) is never stored in the plugin:
//! the host allocates a slot per operator and passes the slots in on every call, so the state
//! survives when the host swaps in a new version of this code.

use core::cell::Cell;
use core::ffi::c_void;
use core::fmt;
use core::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::{
    DebugStateFn, DropStateFn, EmitCx, HostApi, OpDesc, PipelineDesc, RFingerprint, RSignature,
    RStr, SourceDesc, StateVTable, debug_status, init_status, source_kind, status,
};
use crate::fingerprint;
use crate::shape::Shape;

/// The plugin's handle on the host during registration.
pub struct Plugin<'h> {
    host: &'h HostApi,
}

impl fmt::Debug for Plugin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").finish_non_exhaustive()
    }
}

/// A source of `u64` values, run by the host on a thread of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    desc: SourceDesc,
    label: String,
}

/// Emits 0, 1, 2, ... every `period` milliseconds, forever.
pub fn interval_ms(period: u64) -> Source {
    Source {
        desc: SourceDesc {
            kind: source_kind::INTERVAL,
            a: period,
            b: 0,
        },
        label: format!("interval_ms({period})"),
    }
}

/// Emits `start..end` as fast as the pipeline takes them, in batches, then completes.
pub fn range(start: u64, end: u64) -> Source {
    Source {
        desc: SourceDesc {
            kind: source_kind::RANGE,
            a: start,
            b: end,
        },
        label: format!("range({start}, {end})"),
    }
}

impl<'h> Plugin<'h> {
    /// Starts the pipeline `name` (its identity across reloads) on `source`.
    pub fn pipeline(&mut self, name: &str, source: Source) -> Chain<'_, Root> {
        let signature = RSignature {
            input: fingerprint::NONE,
            output: fingerprint::of::<u64>(),
            state: fingerprint::NONE,
            seed: RStr::new(&source.label),
        };
        // SAFETY: `host` is the table the host passed to this registration, valid for its
        // duration; the strings and the signature live across the call.
        let track = unsafe {
            (self.host.track_call)(
                self.host.ctx,
                RStr::new("pipeline"),
                RStr::new(name),
                &signature,
            )
        };
        Chain {
            host: self.host,
            inner: Some(Inner {
                name: name.to_owned(),
                track,
                source: source.desc,
                stage: Root,
                ops: Vec::new(),
            }),
            _plugin: PhantomData,
        }
    }
}

/// Whether a chain wants more values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// Done: no more values wanted (a `take` reached its count, a `take_while` refused one).
    Complete,
}

const NO_OP: u32 = u32::MAX;

/// What operators see of the host while they run.
pub struct Cx<'a> {
    /// One slot pointer per operator (the host passes exactly as many as the chain has).
    states: *const *mut u8,
    emit: &'a EmitCx,
    panicked_op: Cell<u32>,
    /// What a panic did to the panicking operator's state, for the error report.
    after_panic: Cell<AfterPanic>,
    /// Whether each user function call first writes its operator to
    /// [`EmitCx::current_op`]: on for single values (push sources, completion), where it is
    /// one store among many; off on the batch path, whose loop it would slow by half. A
    /// constant of each entry point, so the test is compiled away.
    mark_ops: bool,
}

/// What a panic in a `scan`, `scan_map` or `reduce` function did to that operator's state
/// (see [`Chain::reduce`] for the rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterPanic {
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
        // DSL) and the host passes one slot pointer per operator.
        unsafe { (*self.states.add(op as usize)).cast::<A>() }
    }
}

/// The operator number [`Tally::count`] takes for the source's values.
const SOURCE: u32 = u32::MAX;

mod sealed {
    pub trait Sealed {}
}

/// Whether a compiled chain counts emissions: [`Silent`] (the plain entry points, no cost) or
/// [`Counted`] (the inspector's entry points, one relaxed load and store per emission).
pub trait Tally: sealed::Sealed + 'static {
    /// Notes one value emitted by operator `op` (or taken from the source, [`SOURCE`]).
    fn count(cx: &Cx<'_>, op: u32);
}

/// Counts nothing.
#[derive(Clone, Copy, Debug)]
pub struct Silent;

/// Counts into [`EmitCx::counts`].
#[derive(Clone, Copy, Debug)]
pub struct Counted;

impl sealed::Sealed for Silent {}
impl sealed::Sealed for Counted {}

impl Tally for Silent {
    #[inline(always)]
    fn count(_cx: &Cx<'_>, _op: u32) {}
}

impl Tally for Counted {
    #[inline(always)]
    fn count(cx: &Cx<'_>, op: u32) {
        use core::sync::atomic::Ordering::Relaxed;
        let counts = cx.emit.counts;
        if counts.is_null() {
            return;
        }
        // The source's cell is 0, operator `op`'s is `op + 1` (wrapping maps SOURCE to 0).
        let cell = op.wrapping_add(1) as usize;
        // SAFETY: the host passes one cell per operator plus one with the counting entry
        // points, valid for the call (`EmitCx::counts`); `op` is an operator of this chain.
        let c = unsafe { &*counts.add(cell) };
        // One writer (this thread): a load and a store, no read-modify-write instruction.
        c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
    }
}

/// A chain of operators from the `u64` source to `Out`, monomorphised into one type.
pub trait Stage: Send + Sync + 'static {
    /// The type of the values the chain emits.
    type Out;
    /// Runs one source value through the chain, calling `k` for each value it emits; `C`
    /// counts each operator's emissions (or, [`Silent`], does nothing).
    fn push<C: Tally, K: FnMut(Self::Out) -> Flow>(&self, cx: &Cx<'_>, x: u64, k: &mut K) -> Flow;
    /// Starts the chain, before the source's first value: operators emit what they emit on
    /// subscription (a `start_with`), the one nearest the end first, as in Rx.
    fn start<C: Tally, K: FnMut(Self::Out) -> Flow>(&self, cx: &Cx<'_>, k: &mut K) -> Flow;
    /// Completes the chain, flushing what operators hold (a `reduce` emits here).
    fn complete<C: Tally, K: FnMut(Self::Out) -> Flow>(&self, cx: &Cx<'_>, k: &mut K) -> Flow;
    /// Writes the seed state of operator `op` into `dst`; returns false, writing nothing, when
    /// the chain has no operator `op`. A null `dst` only asks whether operator `op` exists.
    ///
    /// # Safety
    /// Unless null, `dst` must be valid for writes of operator `op`'s state type and aligned
    /// for it.
    unsafe fn init(&self, op: u32, dst: *mut u8) -> bool;
}

/// One operator, from `In` to `Out`.
pub trait Op<In>: Send + Sync + 'static {
    /// What it emits.
    type Out;
    /// Its index in the pipeline.
    fn index(&self) -> u32;
    /// Handles one value.
    fn push<K: FnMut(Self::Out) -> Flow>(&self, cx: &Cx<'_>, x: In, k: &mut K) -> Flow;
    /// Handles the pipeline's start (before the source's first value).
    fn start<K: FnMut(Self::Out) -> Flow>(&self, _cx: &Cx<'_>, _k: &mut K) -> Flow {
        Flow::Continue
    }
    /// Handles completion.
    fn complete<K: FnMut(Self::Out) -> Flow>(&self, _cx: &Cx<'_>, _k: &mut K) -> Flow {
        Flow::Continue
    }
    /// Writes its seed state.
    ///
    /// # Safety
    /// `dst` must be valid for writes of its state type and aligned for it.
    unsafe fn init(&self, _dst: *mut u8) {}
}

/// The start of every chain: the source's values, unchanged.
#[derive(Clone, Copy, Debug)]
pub struct Root;

impl Stage for Root {
    type Out = u64;
    #[inline(always)]
    fn push<C: Tally, K: FnMut(u64) -> Flow>(&self, cx: &Cx<'_>, x: u64, k: &mut K) -> Flow {
        C::count(cx, SOURCE);
        k(x)
    }
    #[inline(always)]
    fn start<C: Tally, K: FnMut(u64) -> Flow>(&self, _cx: &Cx<'_>, _k: &mut K) -> Flow {
        Flow::Continue
    }
    #[inline(always)]
    fn complete<C: Tally, K: FnMut(u64) -> Flow>(&self, _cx: &Cx<'_>, _k: &mut K) -> Flow {
        Flow::Continue
    }
    unsafe fn init(&self, _op: u32, _dst: *mut u8) -> bool {
        // The source has no state and no operator index: whatever was asked for is unknown.
        false
    }
}

/// A chain `S` followed by the operator `O`.
#[derive(Debug)]
pub struct Then<S, O>(S, O);

impl<S: Stage, O: Op<S::Out>> Stage for Then<S, O> {
    type Out = O::Out;
    #[inline(always)]
    fn push<C: Tally, K: FnMut(O::Out) -> Flow>(&self, cx: &Cx<'_>, x: u64, k: &mut K) -> Flow {
        let o = &self.1;
        let mut counted = |z: O::Out| {
            C::count(cx, o.index());
            k(z)
        };
        self.0
            .push::<C, _>(cx, x, &mut |y| o.push(cx, y, &mut counted))
    }
    #[inline(always)]
    fn start<C: Tally, K: FnMut(O::Out) -> Flow>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        let o = &self.1;
        let mut counted = |z: O::Out| {
            C::count(cx, o.index());
            k(z)
        };
        // This operator's start values come before those of the chain upstream, which then
        // pass through it: `start_with(1).start_with(2)` emits 2, 1.
        if o.start(cx, &mut counted) == Flow::Complete {
            return Flow::Complete;
        }
        self.0
            .start::<C, _>(cx, &mut |y| o.push(cx, y, &mut counted))
    }
    #[inline(always)]
    fn complete<C: Tally, K: FnMut(O::Out) -> Flow>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        let o = &self.1;
        let mut counted = |z: O::Out| {
            C::count(cx, o.index());
            k(z)
        };
        let upstream = self
            .0
            .complete::<C, _>(cx, &mut |y| o.push(cx, y, &mut counted));
        let own = o.complete(cx, &mut counted);
        if upstream == Flow::Complete || own == Flow::Complete {
            Flow::Complete
        } else {
            Flow::Continue
        }
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

/// `map(f)`.
pub struct Map<F, T, U> {
    f: F,
    op: u32,
    _t: PhantomData<fn(T) -> U>,
}

impl<F: Fn(T) -> U + Send + Sync + 'static, T: 'static, U: 'static> Op<T> for Map<F, T, U> {
    type Out = U;
    fn index(&self) -> u32 {
        self.op
    }
    #[inline(always)]
    fn push<K: FnMut(U) -> Flow>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        let y = cx.user(self.op, || (self.f)(x));
        k(y)
    }
}

/// `filter(f)`.
pub struct Filter<F, T> {
    f: F,
    op: u32,
    _t: PhantomData<fn(T)>,
}

impl<F: Fn(&T) -> bool + Send + Sync + 'static, T: 'static> Op<T> for Filter<F, T> {
    type Out = T;
    fn index(&self) -> u32 {
        self.op
    }
    #[inline(always)]
    fn push<K: FnMut(T) -> Flow>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        if cx.user(self.op, || (self.f)(&x)) {
            k(x)
        } else {
            Flow::Continue
        }
    }
}

/// `tap(f)`.
pub struct Tap<F, T> {
    f: F,
    op: u32,
    _t: PhantomData<fn(T)>,
}

impl<F: Fn(&T) + Send + Sync + 'static, T: 'static> Op<T> for Tap<F, T> {
    type Out = T;
    fn index(&self) -> u32 {
        self.op
    }
    #[inline(always)]
    fn push<K: FnMut(T) -> Flow>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        cx.user(self.op, || (self.f)(&x));
        k(x)
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

/// `scan(seed, f)`: state `A`, emits every new accumulator (one clone per value: the one it
/// emits).
pub struct Scan<A, F, T> {
    seed: A,
    f: F,
    op: u32,
    _t: PhantomData<fn(T)>,
}

impl<A, F, T> Op<T> for Scan<A, F, T>
where
    A: Clone + Send + Sync + 'static,
    F: Fn(A, T) -> A + Send + Sync + 'static,
    T: 'static,
{
    type Out = A;
    fn index(&self) -> u32 {
        self.op
    }
    #[inline(always)]
    fn push<K: FnMut(A) -> Flow>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        // SAFETY: the host seeded this slot with an `A` (fingerprint-checked) and no other
        // reference to it exists: each operator touches only its own slot.
        let slot = unsafe { cx.state::<A>(self.op) };
        // The clone is a user `Clone` impl: it counts as the operator's code too.
        let out = cx.user(self.op, || {
            let refill = Refill {
                slot,
                seed: &self.seed,
                op: self.op,
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
        k(out)
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
    op: u32,
    _t: PhantomData<fn(T) -> U>,
}

impl<A, F, T, U> Op<T> for ScanMap<A, F, T, U>
where
    A: Clone + Send + Sync + 'static,
    F: Fn(&mut A, T) -> U + Send + Sync + 'static,
    T: 'static,
    U: 'static,
{
    type Out = U;
    fn index(&self) -> u32 {
        self.op
    }
    #[inline(always)]
    fn push<K: FnMut(U) -> Flow>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        // SAFETY: as for `Scan`: a seeded `A`, touched only by this operator.
        let slot = unsafe { cx.state::<A>(self.op) };
        let out = cx.user(self.op, || {
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
        k(out)
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
    op: u32,
    _t: PhantomData<fn(T)>,
}

impl<A, F, T> Op<T> for Reduce<A, F, T>
where
    A: Clone + Send + Sync + 'static,
    F: Fn(A, T) -> A + Send + Sync + 'static,
    T: 'static,
{
    type Out = A;
    fn index(&self) -> u32 {
        self.op
    }
    #[inline(always)]
    fn push<K: FnMut(A) -> Flow>(&self, cx: &Cx<'_>, x: T, _k: &mut K) -> Flow {
        // SAFETY: as for `Scan`: a seeded `A`, touched only by this operator.
        let slot = unsafe { cx.state::<A>(self.op) };
        cx.user(self.op, || {
            let refill = Refill {
                slot,
                seed: &self.seed,
                op: self.op,
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
    fn complete<K: FnMut(A) -> Flow>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        // SAFETY: as in `push`.
        let acc = unsafe { &*cx.state::<A>(self.op) };
        let value = cx.user(self.op, || acc.clone());
        k(value)
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for an `A`.
        unsafe { dst.cast::<A>().write(self.seed.clone()) }
    }
}

/// `take(n)`: state `u64` (values passed so far).
pub struct Take<T> {
    n: u64,
    op: u32,
    _t: PhantomData<fn(T)>,
}

impl<T: 'static> Op<T> for Take<T> {
    type Out = T;
    fn index(&self) -> u32 {
        self.op
    }
    #[inline(always)]
    fn push<K: FnMut(T) -> Flow>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        // SAFETY: a seeded `u64`, touched only by this operator.
        let taken = unsafe { &mut *cx.state::<u64>(self.op) };
        if *taken >= self.n {
            return Flow::Complete;
        }
        *taken += 1;
        let done = *taken >= self.n;
        let r = k(x);
        if done { Flow::Complete } else { r }
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for a `u64`.
        unsafe { dst.cast::<u64>().write(0) }
    }
}

/// `log()`: hands each value's Debug text to the host, which prints it as an emission.
pub struct Log<T> {
    op: u32,
    _t: PhantomData<fn(T)>,
}

impl<T: fmt::Debug + 'static> Op<T> for Log<T> {
    type Out = T;
    fn index(&self) -> u32 {
        self.op
    }
    #[inline(always)]
    fn push<K: FnMut(T) -> Flow>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        cx.user(self.op, || {
            with_debug_text(&x, |text| cx.log(self.op, text))
        });
        k(x)
    }
}

impl Cx<'_> {
    fn log(&self, op: u32, text: &str) {
        // SAFETY: `emit` is the host's context for this call; `text` outlives the call.
        unsafe { (self.emit.log)(self.emit.host, op, RStr::new(text)) }
    }
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

struct OpInfo {
    track: u64,
    kind: &'static str,
    state: RFingerprint,
    drop: DropStateFn,
    debug: DebugStateFn,
}

struct Inner<S> {
    name: String,
    track: u64,
    source: SourceDesc,
    stage: S,
    ops: Vec<OpInfo>,
}

/// The chain `S` extended by the operator `O`.
pub type Next<'p, S, O> = Chain<'p, Then<S, O>>;

/// A pipeline under construction. Dropping it (at the end of the statement that built it)
/// hands the compiled chain to the host.
pub struct Chain<'p, S: Stage> {
    host: &'p HostApi,
    inner: Option<Inner<S>>,
    _plugin: PhantomData<&'p mut ()>,
}

impl<S: Stage> fmt::Debug for Chain<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("pipeline", &self.inner.as_ref().map(|i| i.name.as_str()))
            .finish_non_exhaustive()
    }
}

unsafe extern "C" fn drop_state<A>(dst: *mut u8) -> bool {
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
fn contained<R>(run: std::thread::Result<R>) -> Option<R> {
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

unsafe extern "C" fn drop_nothing(_dst: *mut u8) -> bool {
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

/// A state's fingerprint, drop glue and Debug writer.
pub(crate) type StateFns = (RFingerprint, DropStateFn, DebugStateFn);

pub(crate) fn state_fns<A: Shape + fmt::Debug>() -> StateFns {
    (
        fingerprint::of_state::<A>(),
        drop_state::<A> as DropStateFn,
        debug_state::<A> as DebugStateFn,
    )
}

unsafe extern "C" fn debug_state<A: fmt::Debug>(
    src: *const u8,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> u32 {
    /// Writes into the host's buffer; stops the formatting (an error) once it is full, so a
    /// huge state costs no more than `cap` bytes of formatting.
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
    let out: &mut [u8] = if cap == 0 || buf.is_null() {
        &mut []
    } else {
        // SAFETY: the host passes `cap` writable bytes at `buf`.
        unsafe { core::slice::from_raw_parts_mut(buf, cap) }
    };
    let mut w = Capped {
        buf: out,
        len: 0,
        full: false,
    };
    let run = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host calls this only on a slot holding an initialised `A` that nothing
        // mutates during the call (on the thread that owns it, between two pushes).
        let value = unsafe { &*src.cast::<A>() };
        let _ = fmt::write(&mut w, format_args!("{value:?}"));
    }));
    let panicked = contained(run).is_none();
    // SAFETY: the host passes a writable `len`.
    unsafe { *len = w.len };
    if panicked {
        debug_status::PANICKED
    } else if w.full {
        debug_status::TRUNCATED
    } else {
        debug_status::OK
    }
}

impl<'p, S: Stage> Chain<'p, S> {
    fn inner(&mut self) -> Inner<S> {
        self.inner
            .take()
            .expect("a chain is consumed by each operator call")
    }

    /// Opens and closes the track of the next operator and returns its index.
    pub(crate) fn track_op<In: 'static, Out: 'static>(
        &mut self,
        kind: &'static str,
        state: Option<StateFns>,
        seed: Option<&str>,
    ) -> u32 {
        let (state_fp, drop, debug) =
            state.unwrap_or((fingerprint::NONE, drop_nothing, debug_nothing));
        let signature = RSignature {
            input: fingerprint::of::<In>(),
            output: fingerprint::of::<Out>(),
            state: state_fp,
            seed: seed.map(RStr::new).unwrap_or(RStr::NONE),
        };
        let host = self.host;
        // SAFETY: `host` is valid for the registration; arguments outlive the calls.
        let track = unsafe {
            let t = (host.track_call)(host.ctx, RStr::new(kind), RStr::NONE, &signature);
            (host.track_call_return)(host.ctx, t);
            t
        };
        let inner = self.inner.as_mut().expect("chain already consumed");
        let index = inner.ops.len() as u32;
        inner.ops.push(OpInfo {
            track,
            kind,
            state: state_fp,
            drop,
            debug,
        });
        index
    }

    pub(crate) fn then<O: Op<S::Out>>(mut self, op: O) -> Chain<'p, Then<S, O>> {
        let inner = self.inner();
        Chain {
            host: self.host,
            inner: Some(Inner {
                name: inner.name,
                track: inner.track,
                source: inner.source,
                stage: Then(inner.stage, op),
                ops: inner.ops,
            }),
            _plugin: PhantomData,
        }
    }

    /// Transforms each value.
    pub fn map<U: 'static, F>(mut self, f: F) -> Next<'p, S, Map<F, S::Out, U>>
    where
        F: Fn(S::Out) -> U + Send + Sync + 'static,
    {
        let op = self.track_op::<S::Out, U>("map", None, None);
        self.then(Map {
            f,
            op,
            _t: PhantomData,
        })
    }

    /// Passes the values for which `f` returns true.
    pub fn filter<F>(mut self, f: F) -> Next<'p, S, Filter<F, S::Out>>
    where
        F: Fn(&S::Out) -> bool + Send + Sync + 'static,
    {
        let op = self.track_op::<S::Out, S::Out>("filter", None, None);
        self.then(Filter {
            f,
            op,
            _t: PhantomData,
        })
    }

    /// Calls `f` on each value and passes it on.
    pub fn tap<F>(mut self, f: F) -> Next<'p, S, Tap<F, S::Out>>
    where
        F: Fn(&S::Out) + Send + Sync + 'static,
    {
        let op = self.track_op::<S::Out, S::Out>("tap", None, None);
        self.then(Tap {
            f,
            op,
            _t: PhantomData,
        })
    }

    /// The state signature of an accumulating operator: `A`'s fingerprint and drop glue,
    /// and the seed's Debug text.
    fn accumulator<A: Shape + fmt::Debug>(seed: &A) -> (StateFns, String) {
        (state_fns::<A>(), format!("{seed:?}"))
    }

    /// Folds each value into an accumulator kept by the host and emits every new one.
    ///
    /// `f` takes the accumulator by value and returns the next one; the operator emits a
    /// clone of it, which is the only clone per value (a `Vec` state costs one copy of the
    /// `Vec` per value: use [`Chain::scan_map`] to emit something smaller). If `f` panics,
    /// the state is reset to a clone of `seed`, as described at [`Chain::reduce`].
    pub fn scan<A, F>(mut self, seed: A, f: F) -> Next<'p, S, Scan<A, F, S::Out>>
    where
        A: Shape + Clone + fmt::Debug + Send + Sync,
        F: Fn(A, S::Out) -> A + Send + Sync + 'static,
    {
        let (state, seed_text) = Self::accumulator(&seed);
        let op = self.track_op::<S::Out, A>("scan", Some(state), Some(&seed_text));
        self.then(Scan {
            seed,
            f,
            op,
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
    pub fn scan_map<A, U, F>(mut self, seed: A, f: F) -> Next<'p, S, ScanMap<A, F, S::Out, U>>
    where
        A: Shape + Clone + fmt::Debug + Send + Sync,
        U: 'static,
        F: Fn(&mut A, S::Out) -> U + Send + Sync + 'static,
    {
        let (state, seed_text) = Self::accumulator(&seed);
        let op = self.track_op::<S::Out, U>("scan_map", Some(state), Some(&seed_text));
        self.then(ScanMap {
            seed,
            f,
            op,
            _t: PhantomData,
        })
    }

    /// Folds each value into an accumulator kept by the host and emits it once, when the
    /// source completes. No clone per value: the accumulator moves into `f` and back.
    ///
    /// **A panic in `f`** (of `reduce` and `scan`) drops the accumulator `f` was given, so the
    /// state is reset to a clone of `seed` (made only then), and the error reporting the
    /// panic says so: `<message> (its state was reset to the seed)`. The slot is never left
    /// without a value. If cloning the seed panics as well, nothing can fill the slot: the
    /// process (and with it the host) aborts, after printing why to stderr.
    pub fn reduce<A, F>(mut self, seed: A, f: F) -> Next<'p, S, Reduce<A, F, S::Out>>
    where
        A: Shape + Clone + fmt::Debug + Send + Sync,
        F: Fn(A, S::Out) -> A + Send + Sync + 'static,
    {
        let (state, seed_text) = Self::accumulator(&seed);
        let op = self.track_op::<S::Out, A>("reduce", Some(state), Some(&seed_text));
        self.then(Reduce {
            seed,
            f,
            op,
            _t: PhantomData,
        })
    }

    /// Passes the first `n` values, then completes the pipeline.
    pub fn take(mut self, n: u64) -> Next<'p, S, Take<S::Out>> {
        let seed_text = format!("{n}");
        let op =
            self.track_op::<S::Out, S::Out>("take", Some(state_fns::<u64>()), Some(&seed_text));
        self.then(Take {
            n,
            op,
            _t: PhantomData,
        })
    }

    /// Prints each value (its Debug text) through the host, and passes it on.
    pub fn log(mut self) -> Next<'p, S, Log<S::Out>>
    where
        S::Out: fmt::Debug,
    {
        let op = self.track_op::<S::Out, S::Out>("log", None, None);
        self.then(Log {
            op,
            _t: PhantomData,
        })
    }

    /// Runs `f` on the chain inside a keyed scope: the operators `f` adds are identified by
    /// `key` and their position inside the scope, so they keep their identity (and state)
    /// when the scope moves among its siblings, like a React key.
    pub fn scope<S2: Stage>(
        self,
        key: &str,
        f: impl FnOnce(Chain<'p, S>) -> Chain<'p, S2>,
    ) -> Chain<'p, S2> {
        let host = self.host;
        let signature = RSignature {
            input: fingerprint::of::<S::Out>(),
            output: fingerprint::NONE,
            state: fingerprint::NONE,
            seed: RStr::NONE,
        };
        // SAFETY: `host` is valid for the registration; arguments outlive the call.
        let track =
            unsafe { (host.track_call)(host.ctx, RStr::new("scope"), RStr::new(key), &signature) };
        let chain = f(self);
        // SAFETY: as above.
        unsafe { (host.track_call_return)(host.ctx, track) };
        chain
    }

    fn finish(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let ops: Vec<OpDesc> = inner
            .ops
            .iter()
            .map(|o| OpDesc {
                track: o.track,
                kind: RStr::new(o.kind),
                state: StateVTable {
                    fingerprint: o.state,
                    init: init_entry::<S>,
                    drop: o.drop,
                    debug: o.debug,
                },
            })
            .collect();
        let n_ops = ops.len();
        let env = Box::into_raw(Box::new(Env { stage: inner.stage }));
        let desc = PipelineDesc {
            name: RStr::new(&inner.name),
            track: inner.track,
            source: inner.source,
            env: env.cast::<c_void>(),
            push: push_entry::<S, Silent>,
            push_one: push_one_entry::<S, Silent>,
            start: start_entry::<S, Silent>,
            complete: complete_entry::<S, Silent>,
            push_counted: push_entry::<S, Counted>,
            push_one_counted: push_one_entry::<S, Counted>,
            start_counted: start_entry::<S, Counted>,
            complete_counted: complete_entry::<S, Counted>,
            drop_env: drop_env_entry::<S>,
            ops: ops.as_ptr(),
            n_ops,
        };
        let host = self.host;
        // SAFETY: `host` is valid for the registration; `desc` and `ops` outlive the call,
        // and ownership of `env` passes to the host, which frees it with `drop_env`.
        unsafe {
            (host.add_pipeline)(host.ctx, &desc);
            (host.track_call_return)(host.ctx, inner.track);
        }
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

struct Env<S> {
    stage: S,
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
        };
        (env, cx)
    }
}

fn report_panic(cx: &Cx<'_>, payload: Box<dyn std::any::Any + Send>) -> u32 {
    caught();
    let mut message = panic_message(payload);
    message.push_str(cx.after_panic.get().note());
    // SAFETY: `emit` is the host's live context for this call; the message outlives it.
    unsafe { (cx.emit.error)(cx.emit.host, cx.panicked_op.get(), RStr::new(&message)) };
    status::PANICKED
}

unsafe extern "C" fn push_entry<S: Stage, C: Tally>(
    env: *const c_void,
    states: *const *mut u8,
    items: *const u64,
    n: usize,
    cx: *const EmitCx,
    consumed: *mut usize,
) -> u32 {
    // SAFETY: the host passes the arguments `PushFn` documents.
    let (env, cx) = unsafe { enter::<S>(env, states, cx, false) };
    let items = if n == 0 {
        &[][..]
    } else {
        // SAFETY: the host passes `n` readable values at `items`.
        unsafe { core::slice::from_raw_parts(items, n) }
    };
    let position = Cell::new(0usize);
    let run = catch_unwind(AssertUnwindSafe(|| {
        let mut sink = |_out: S::Out| Flow::Continue;
        for (i, &x) in items.iter().enumerate() {
            position.set(i);
            if env.stage.push::<C, _>(&cx, x, &mut sink) == Flow::Complete {
                return status::COMPLETE;
            }
        }
        status::CONTINUE
    }));
    match run {
        Ok(status::COMPLETE) => {
            // SAFETY: the host passes a writable `consumed`.
            unsafe { *consumed = position.get() + 1 };
            status::COMPLETE
        }
        Ok(s) => s,
        Err(payload) => {
            // SAFETY: the host passes a writable `consumed`.
            unsafe { *consumed = position.get() + 1 };
            report_panic(&cx, payload)
        }
    }
}

unsafe extern "C" fn push_one_entry<S: Stage, C: Tally>(
    env: *const c_void,
    states: *const *mut u8,
    x: u64,
    cx: *const EmitCx,
) -> u32 {
    // SAFETY: the host passes the arguments `PushOneFn` documents.
    let (env, cx) = unsafe { enter::<S>(env, states, cx, true) };
    let run = catch_unwind(AssertUnwindSafe(|| {
        env.stage
            .push::<C, _>(&cx, x, &mut |_out: S::Out| Flow::Continue)
    }));
    match run {
        Ok(Flow::Continue) => status::CONTINUE,
        Ok(Flow::Complete) => status::COMPLETE,
        Err(payload) => report_panic(&cx, payload),
    }
}

unsafe extern "C" fn start_entry<S: Stage, C: Tally>(
    env: *const c_void,
    states: *const *mut u8,
    cx: *const EmitCx,
) -> u32 {
    // SAFETY: the host passes the arguments `StartFn` documents.
    let (env, cx) = unsafe { enter::<S>(env, states, cx, true) };
    let run = catch_unwind(AssertUnwindSafe(|| {
        let mut sink = |_out: S::Out| Flow::Continue;
        match env.stage.start::<C, _>(&cx, &mut sink) {
            Flow::Continue => status::CONTINUE,
            Flow::Complete => status::COMPLETE,
        }
    }));
    run.unwrap_or_else(|payload| report_panic(&cx, payload))
}

unsafe extern "C" fn complete_entry<S: Stage, C: Tally>(
    env: *const c_void,
    states: *const *mut u8,
    cx: *const EmitCx,
) -> u32 {
    // SAFETY: the host passes the arguments `CompleteFn` documents.
    let (env, cx) = unsafe { enter::<S>(env, states, cx, true) };
    let run = catch_unwind(AssertUnwindSafe(|| {
        let mut sink = |_out: S::Out| Flow::Continue;
        match env.stage.complete::<C, _>(&cx, &mut sink) {
            Flow::Continue => status::CONTINUE,
            Flow::Complete => status::COMPLETE,
        }
    }));
    run.unwrap_or_else(|payload| report_panic(&cx, payload))
}

unsafe extern "C" fn init_entry<S: Stage>(env: *const c_void, op: u32, dst: *mut u8) -> u32 {
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

unsafe extern "C" fn drop_env_entry<S: Stage>(env: *mut c_void) {
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

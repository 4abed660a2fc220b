//! Higher-order operators: `switch_map`, `merge_map`, `concat_map`, `exhaust_map`.
//!
//! Each outer value goes through the user's *projection*, which builds a [`Stream`] at run
//! time. The operator binds that stream (its tracks are registered with the host at run
//! time, under the operator's track) and hands it to the host ([`EmitCx::subscribe`]), which
//! keeps the outer value, allocates and seeds the inner stream's state slots, and drives its
//! asynchronous sources (intervals) on the pipeline's thread. The operator itself runs the
//! subscription's start (`start_with`) and its synchronous sources (`range`, `of`) at once,
//! inside the outer value's call, as Rx does: `range(0, 3).switch_map(|x| of(vec![x, x]))`
//! emits `0 0 1 1 2 2`. Later values of the inner stream arrive through the chain's `wake`
//! entry with an [`InnerCall`]; they run the inner stream's code, then the rest of the
//! outer chain.
//!
//! An inner stream that lives and ends inside the outer value's call (a synchronous source,
//! alone or through [`Op::SYNC`] operators, with no scope) is not handed to the host: the
//! operator asks it for a number ([`EmitCx::subscribe_sync`]), seeds the operators' states
//! in its own memory and runs it at once; the host only lends a context for its operators.
//!
//! The operator's own state (a host slot) is what it decides with: the live subscription
//! (`switch_map`, `concat_map`, `exhaust_map`), how many are live, `concat_map`'s queue of
//! outer values waiting for their turn (kept across a reload, like any state), and whether
//! the outer stream completed. RxJS semantics: `switch_map` ends the live inner subscription
//! when a new outer value comes, `concat_map` queues outer values while one is live,
//! `exhaust_map` ignores them, `merge_map` runs them all; each completes when the outer
//! stream has completed and no inner subscription is live (or queued).
//!
//! **On reload** the host re-runs the new version's projection on each live subscription's
//! outer value ([`crate::abi::ProjectFn`]), matches the new inner tracks to the live ones by
//! path and signature, and swaps their code: see ARCHITECTURE.md.

use core::ffi::c_void;
use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use std::collections::VecDeque;

use crate::abi::{EmitCx, InnerCall, InnerDesc, InnerHandle, RStr, inner_answer, inner_kind};
use crate::dsl::{
    At, Binder, Cx, Env, Flow, LEAN_OPS, LeanOps, NO_OP, Next, Observer, Op, OpShape, Out, Pipe,
    Seed, Stage, Stream, Tally, bind_inner, bind_lean, bind_lean_checked, contain_panic, contained,
    debug_state, drop_env_entry, drop_state, rethrow_contained, state_fns_uncloned,
};
use crate::fingerprint;
use crate::shape::Shape;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Which higher-order operator: how it treats an outer value while an inner subscription is
/// live.
pub trait Mode: Send + Sync + 'static {
    /// The operator's kind (its track's).
    const KIND: &'static str;
    #[doc(hidden)]
    const MODE: u8;
}

const SWITCH: u8 = 0;
const MERGE: u8 = 1;
const CONCAT: u8 = 2;
const EXHAUST: u8 = 3;

/// `switch_map`: a new outer value ends the live inner subscription.
#[derive(Debug)]
pub struct Switch;
/// `merge_map`: every inner subscription runs.
#[derive(Debug)]
pub struct Merge;
/// `concat_map`: outer values wait in a queue for the live one to complete.
#[derive(Debug)]
pub struct Concat;
/// `exhaust_map`: outer values are ignored while one is live.
#[derive(Debug)]
pub struct Exhaust;

impl Mode for Switch {
    const KIND: &'static str = "switch_map";
    const MODE: u8 = SWITCH;
}
impl Mode for Merge {
    const KIND: &'static str = "merge_map";
    const MODE: u8 = MERGE;
}
impl Mode for Concat {
    const KIND: &'static str = "concat_map";
    const MODE: u8 = CONCAT;
}
impl Mode for Exhaust {
    const KIND: &'static str = "exhaust_map";
    const MODE: u8 = EXHAUST;
}

/// The state of a higher-order operator: the live inner subscription (0: none; the last one
/// started, for `merge_map`), how many are live, `concat_map`'s queue, and whether the outer
/// stream completed.
type HoState<T> = (u64, u64, VecDeque<T>, bool);

/// A higher-order operator: projection `F` from `T` to a stream of stage `S2`.
pub struct HigherOrder<F, T, S2, M> {
    f: F,
    at: At,
    memo: LeanMemo,
    _t: PhantomData<fn(T) -> (S2, M)>,
}

/// What a higher-order operator keeps of its synchronous inner streams' lean bindings: the
/// operators' descriptions and shapes of the first one the host answered with a memo number
/// (`EmitCx::subscribe_sync`), and the last such number for bindings of those shapes. The
/// next stream of the same shapes is checked against them ([`bind_lean_checked`]: nothing
/// written, no seed's text) and subscribed with the number
/// (`EmitCx::subscribe_sync_again`), its states laid out as the kept descriptions say; one
/// that is not, or that the host no longer answers, is described as before
/// ([`HigherOrder::run_described`]). The number
/// is the host's to check: it answers it only while it still holds that binding, under the
/// same code (BENCHMARKS.md, 14).
#[derive(Default)]
struct LeanMemo {
    template: std::sync::OnceLock<Template>,
    /// 0: none to try.
    token: std::sync::atomic::AtomicU64,
}

/// The operators of a lean binding a higher-order operator keeps ([`LeanMemo`]).
struct Template {
    descs: Box<[crate::abi::OpDesc]>,
    shapes: Box<[OpShape]>,
    layout: StatesLayout,
}

// SAFETY: the descriptions' pointers are `'static` strings and functions of this library's
// image (operator kinds, type names, state glue), never written through.
unsafe impl Send for Template {}
// SAFETY: as above; a template is never mutated once made.
unsafe impl Sync for Template {}

impl LeanMemo {
    /// Keeps `token` for a binding of `descs` and `shapes` the host answered with it, if it
    /// is of the shapes kept (the first such binding's, kept now if none is).
    fn keep(
        &self,
        token: u64,
        descs: &[crate::abi::OpDesc],
        shapes: &[OpShape],
        layout: &StatesLayout,
    ) {
        let t = self.template.get_or_init(|| Template {
            descs: descs.into(),
            shapes: shapes.into(),
            layout: *layout,
        });
        if *t.shapes == *shapes {
            self.token
                .store(token, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl<F, T, S2, M> fmt::Debug for HigherOrder<F, T, S2, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HigherOrder")
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

/// What an inner stream hands the rest of the chain: its values (`K`, the chain's receiver,
/// counts them as the higher-order operator's emissions: it is the `Counting` wrapper of the
/// operator's `Then`, in `push` and `wake` alike); its completion ends the subscription.
struct InnerObs<'a, 'c, C, T, K> {
    cx: &'a Cx<'c>,
    op: u32,
    instance: u64,
    k: &'a mut K,
    ended: bool,
    _t: PhantomData<fn(C, T)>,
}

impl<C: Tally, T, V, K: Observer<V>> Observer<V> for InnerObs<'_, '_, C, T, K> {
    #[inline(always)]
    fn next(&mut self, v: V) -> Flow {
        if self.ended {
            return Flow::Complete;
        }
        self.k.next(v)
    }
    fn complete(&mut self) -> Flow {
        if !self.ended {
            self.ended = true;
            let emit = self.cx.emit();
            // SAFETY: the host's context for this call; it frees the subscription after
            // the call returns.
            unsafe { (emit.unsubscribe)(emit.host, self.op, self.instance) };
            // SAFETY: this operator's slot holds a `HoState<T>`; no other reference to it is
            // live here (the chain downstream touches its own slots only).
            let s = unsafe { &mut *self.cx.state::<HoState<T>>(self.op) };
            s.1 = s.1.saturating_sub(1);
            if s.0 == self.instance {
                s.0 = 0;
            }
        }
        Flow::Complete
    }
}

/// What an inner stream run inside the outer value's call hands the rest of the chain: its
/// values, until it completes (which ends it, not the chain).
struct SyncObs<'a, K> {
    k: &'a mut K,
    ended: bool,
}

impl<V, K: Observer<V>> Observer<V> for SyncObs<'_, K> {
    #[inline(always)]
    fn next(&mut self, v: V) -> Flow {
        if self.ended {
            return Flow::Complete;
        }
        self.k.next(v)
    }
    fn complete(&mut self) -> Flow {
        self.ended = true;
        Flow::Complete
    }
}

/// The states of an inner stream run inside its outer value's call, in one block of this
/// side's memory (the caller's [`StateRoom`] when they fit, else the heap): seeded by the
/// stage's operators, dropped with their own glue.
struct SyncStates<'a> {
    ops: &'a [crate::abi::OpDesc],
    block: *mut u8,
    /// The block's layout, if it was allocated (not the room).
    heap: Option<std::alloc::Layout>,
    /// By operator: where its state is.
    ptrs: [*mut u8; LEAN_OPS],
    /// How many are seeded (dropped at the end).
    seeded: usize,
    /// The room `block` may be, borrowed for as long.
    _room: core::marker::PhantomData<&'a mut StateRoom>,
}

/// How many bytes of states an inner stream run inside its call keeps on the stack.
const STATE_ROOM: usize = 64;

/// Room on the caller's stack for the states of an inner stream run inside its call, when
/// they fit (an allocation and its free were a tenth of a `scan(x, ..)` subscription's
/// instructions, BENCHMARKS.md, 14).
#[repr(C, align(16))]
struct StateRoom([core::mem::MaybeUninit<u8>; STATE_ROOM]);

impl StateRoom {
    fn new() -> StateRoom {
        StateRoom([const { core::mem::MaybeUninit::uninit() }; STATE_ROOM])
    }
}

/// Whether operator `op` keeps no state (its state is not seeded, nor dropped: it has none).
fn stateless(op: &crate::abi::OpDesc) -> bool {
    op.state.fingerprint.name.is_none()
}

/// Where the states of a lean binding's operators go in one block ([`SyncStates`]).
#[derive(Clone, Copy)]
struct StatesLayout {
    /// By operator: its state's offset in the block.
    offsets: [usize; LEAN_OPS],
    block: std::alloc::Layout,
}

impl StatesLayout {
    /// The layout of the states of `ops`, as a lean binding records them (at most
    /// [`LEAN_OPS`]: the operators' numbers index `offsets`).
    fn of(ops: &[crate::abi::OpDesc]) -> StatesLayout {
        let n = ops.len();
        assert!(n <= LEAN_OPS, "{n} operators in a lean binding");
        let mut offsets = [0; LEAN_OPS];
        // Each state at an offset aligned for it; the block aligned for the strictest.
        let (mut size, mut align) = (0usize, 1usize);
        for (o, op) in offsets[..n].iter_mut().zip(ops) {
            let a = op.state.fingerprint.align.max(1);
            size = size.next_multiple_of(a);
            *o = size;
            size += op.state.fingerprint.size;
            align = align.max(a);
        }
        StatesLayout {
            offsets,
            block: std::alloc::Layout::from_size_align(size, align)
                .expect("state layouts the compiler gave"),
        }
    }
}

impl<'a> SyncStates<'a> {
    /// The states of `ops` laid out by `layout` (theirs: [`StatesLayout::of`]), in `room`
    /// when they fit.
    fn new(
        ops: &'a [crate::abi::OpDesc],
        layout: &StatesLayout,
        room: &'a mut StateRoom,
    ) -> SyncStates<'a> {
        let n = ops.len();
        assert!(n <= LEAN_OPS, "{n} operators in a lean binding");
        let whole = layout.block;
        let (size, align) = (whole.size(), whole.align());
        let (block, heap) = if size == 0 {
            // Every state is zero-sized: any aligned, non-null address will do.
            (align as *mut u8, None)
        } else if size <= STATE_ROOM && align <= core::mem::align_of::<StateRoom>() {
            (room.0.as_mut_ptr().cast::<u8>(), None)
        } else {
            // SAFETY: a non-zero size.
            let b = unsafe { std::alloc::alloc(whole) };
            if b.is_null() {
                std::alloc::handle_alloc_error(whole);
            }
            (b, Some(whole))
        };
        let mut ptrs = [core::ptr::null_mut(); LEAN_OPS];
        for (p, &o) in ptrs[..n].iter_mut().zip(&layout.offsets) {
            // In bounds of the block (or of nothing, for a zero-sized state at its end).
            *p = block.wrapping_add(o);
        }
        SyncStates {
            ops,
            block,
            heap,
            ptrs,
            seeded: 0,
            _room: core::marker::PhantomData,
        }
    }

    fn ptrs(&mut self) -> *const *mut u8 {
        self.ptrs.as_ptr()
    }

    /// Seeds every state through the stage's operators, in order; stops at the first that
    /// cannot be seeded (its seed's `Clone` panicked, or the stage has no such operator) and
    /// returns its number and why. Those seeded are dropped at the end.
    fn seed<S: Stage>(&mut self, stage: &S) -> Result<(), (u32, &'static str)> {
        for (i, op) in self.ops.iter().enumerate() {
            if stateless(op) {
                self.seeded += 1;
                continue;
            }
            let dst = self.ptrs[i];
            // SAFETY: `dst` is aligned for operator `i`'s state and as large.
            let run = contained(catch_unwind(AssertUnwindSafe(|| unsafe {
                stage.init(i as u32, dst)
            })));
            match run {
                Some(true) => self.seeded += 1,
                Some(false) => {
                    return Err((
                        i as u32,
                        "the plugin has no operator to seed here: its description of the \
                         inner stream disagrees with its code",
                    ));
                }
                None => return Err((i as u32, "the seed panicked while being cloned")),
            }
        }
        Ok(())
    }
}

impl SyncStates<'_> {
    /// Drops the seeded states, each once with its own glue (which contains a panic of its
    /// drop); none is seeded after.
    fn drop_seeded(&mut self) {
        for (op, &p) in self.ops[..self.seeded].iter().zip(&self.ptrs) {
            if !stateless(op) {
                // SAFETY: a seeded state, dropped once (`seeded` is reset below).
                unsafe { (op.state.drop)(p) };
            }
        }
        self.seeded = 0;
    }
}

impl Drop for SyncStates<'_> {
    fn drop(&mut self) {
        self.drop_seeded();
        if let Some(layout) = self.heap {
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.block, layout) };
        }
    }
}

/// Ends an inner subscription run inside its outer value's call: its states dropped, then the
/// host told (`unsubscribe`), also when unwinding.
struct SyncEnd<'a, 'e> {
    emit: &'e EmitCx,
    op: u32,
    id: u64,
    states: SyncStates<'a>,
}

impl Drop for SyncEnd<'_, '_> {
    fn drop(&mut self) {
        // Before the host hears of the end (the states' block itself goes after).
        self.states.drop_seeded();
        // SAFETY: the host's context for this call.
        unsafe { (self.emit.unsubscribe)(self.emit.host, self.op, self.id) };
    }
}

/// Attributes a panic unwinding out of an inner subscription's operator to that operator
/// (its path is the inner track's), instead of to the pipeline.
struct PanicAt<'a, 'b, 'c> {
    outer: &'a Cx<'b>,
    inner: &'a Cx<'c>,
    emit: *const EmitCx,
}

impl Drop for PanicAt<'_, '_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let op = self.inner.panicked_op();
            if op != NO_OP {
                self.outer.panic_to.set((self.emit, op));
            }
        }
    }
}

impl<F, T, S2, M> HigherOrder<F, T, S2, M>
where
    F: Fn(T) -> Stream<S2> + Send + Sync + 'static,
    T: Shape + Clone + fmt::Debug + Send + Sync + 'static,
    S2: Stage,
    M: Mode,
{
    #[allow(clippy::mut_from_ref)]
    fn state<'s>(&self, cx: &'s Cx<'_>) -> &'s mut HoState<T> {
        // SAFETY: the host seeded this slot with a `HoState<T>` (fingerprint-checked); each
        // caller drops the reference before the chain runs on.
        unsafe { &mut *cx.state::<HoState<T>>(self.at.op) }
    }

    /// Runs the user's projection on `x` and binds the stream it returns.
    fn project_bound(&self, cx: &Cx<'_>, x: &T) -> (Box<Env<S2>>, crate::dsl::BoundInner) {
        let stream = cx.user(self.at.op, || (self.f)(x.clone()));
        let (stage, marks) = stream.body.into_parts();
        Self::bound(cx, stage, marks)
    }

    /// Binds an inner stream's stage (its tracks registered with the host now).
    fn bound(
        cx: &Cx<'_>,
        mut stage: S2,
        marks: Vec<(u32, crate::dsl::Mark)>,
    ) -> (Box<Env<S2>>, crate::dsl::BoundInner) {
        let emit = cx.emit();
        // SAFETY: the host passes a registration API valid for the call.
        let api = unsafe { &*emit.api };
        let mut bound = bind_inner(&mut stage, marks, api);
        (Self::env(stage, &mut bound), bound)
    }

    /// The env of a bound stage, for the host: its closures and synchronous sources.
    fn env(stage: S2, bound: &mut crate::dsl::BoundInner) -> Box<Env<S2>> {
        Box::new(Env {
            stage,
            sync: std::mem::take(&mut bound.sync),
        })
    }

    fn describe(env: Box<Env<S2>>, bound: &crate::dsl::BoundInner) -> InnerDesc {
        InnerDesc {
            env: Box::into_raw(env).cast::<c_void>(),
            drop_env: drop_env_entry::<S2>,
            sources: bound.sources.as_ptr(),
            n_sources: bound.sources.len(),
            ops: bound.ops.as_ptr(),
            n_ops: bound.ops.len(),
            publishes: bound.publishes.as_ptr(),
            n_publishes: bound.publishes.len(),
            value: core::ptr::null_mut(),
            value_type: fingerprint::of::<T>(),
            value_drop: drop_state::<T>,
            value_debug: debug_state::<T>,
        }
    }

    /// Projects `x`, subscribes the stream and runs its start and synchronous sources.
    /// Returns whether that subscription already ended (or was refused).
    fn subscribe<C: Tally, K: Observer<S2::Out>>(&self, cx: &Cx<'_>, mut x: T, k: &mut K) -> bool {
        let op = self.at.op;
        let mut stream = cx.user(op, || (self.f)(x.clone()));
        // Run where it was made: moved out of its body, the stage was copied (208 bytes for
        // `of(vec![x]).map(..)`) before anything ran.
        let marked = stream.body.has_marks();
        let stage = &mut stream.body.stage;
        // A synchronous source through operators that hold nothing past the call lives and
        // ends inside this call: run at once, its env and states on this side, no held
        // value, if the host agrees (it numbers it, and tells the tracking store it started
        // and ended). Never while counting: counts are per subscription on the host.
        if !C::COUNTS
            && !marked
            && let Some((from, to, bare)) = stage.sync_source()
        {
            let emit = cx.emit();
            // SAFETY: the host passes a registration API valid for the call.
            let api = unsafe { &*emit.api };
            if bare {
                // Bound by nobody and ended by nobody: null pointers, as the host's contract
                // says. It runs on the outer chain's context.
                let (ops, sigs, place, memo) = {
                    use core::ptr::{null, null_mut};
                    (null(), null(), null_mut(), null_mut())
                };
                // SAFETY: the host's context for this call; 0 operators and null pointers are
                // the contract's form for a bare source (`EmitCx::subscribe_sync`).
                let id = unsafe { (emit.subscribe_sync)(emit.host, op, ops, sigs, 0, place, memo) };
                if id != 0 {
                    drop(x);
                    Self::run_sync::<C, K>(cx, cx, emit, stage, from, to, k);
                    return true;
                }
            } else {
                let token = self.memo.token.load(std::sync::atomic::Ordering::Relaxed);
                if token != 0
                    && let Some(t) = self.memo.template.get()
                    && bind_lean_checked(stage, api, &t.shapes)
                {
                    // The operators of a binding the host answered with `token`: named, not
                    // described again (`LeanMemo`).
                    let mut inner_cx: *const EmitCx = core::ptr::null();
                    // SAFETY: the host's context for this call; `inner_cx` lives across it.
                    let id = unsafe {
                        (emit.subscribe_sync_again)(emit.host, op, token, &raw mut inner_cx)
                    };
                    if id != 0 {
                        self.run_sync_ops::<C, K>(
                            cx, x, stage, &t.descs, &t.layout, id, inner_cx, from, to, k,
                        );
                        return true;
                    }
                    // Gone, or the host wants them described: not named again until it
                    // answers another number.
                    self.memo
                        .token
                        .store(0, std::sync::atomic::Ordering::Relaxed);
                }
                match self.run_described::<C, K>(cx, x, stage, from, to, k) {
                    Ok(()) => return true,
                    Err(back) => x = back,
                }
            }
            // Refused, or not a line the lean binding records: bound in full (its tracks
            // registered, its source's label written) and subscribed the long way.
        }
        let (stage, marks) = stream.body.into_parts();
        let (env, bound) = Self::bound(cx, stage, marks);
        self.subscribe_bound::<C, K>(cx, x, env, bound, k)
    }

    /// Runs a synchronous inner stream with operators inside this call, its operators
    /// described to the host (`subscribe_sync`; kept for naming next time when the host
    /// answers a memo number, `LeanMemo`). Gives `x` back when the stream is not one the
    /// lean binding records or the host refused it: it is then subscribed the long way.
    ///
    /// Out of line: its binding's records (a few KiB) stay off the frame of a bare source's
    /// subscription, which describes nothing. (The memo's check makes a `LeanOps` of its
    /// own, `bind_lean_checked`; out of line as well, it read no faster.)
    #[inline(never)]
    fn run_described<C: Tally, K: Observer<S2::Out>>(
        &self,
        cx: &Cx<'_>,
        x: T,
        stage: &mut S2,
        from: u64,
        to: u64,
        k: &mut K,
    ) -> Result<(), T> {
        let op = self.at.op;
        let emit = cx.emit();
        // SAFETY: the host passes a registration API valid for the call.
        let api = unsafe { &*emit.api };
        let mut lean = LeanOps::new::<S2>();
        if !bind_lean(stage, api, &mut lean) {
            return Err(x);
        }
        let (ops, sigs, shapes) = lean.parts();
        // A stream whose operators bound none of their own runs on the outer chain's
        // context, with no context of its own, as a bare source (null pointers).
        let mut inner_cx: *const EmitCx = core::ptr::null();
        let mut memo = 0u64;
        let (ops_ptr, sigs_ptr, place, memo_place) = if ops.is_empty() {
            use core::ptr::{null, null_mut};
            (null(), null(), null_mut(), null_mut())
        } else {
            (
                ops.as_ptr(),
                sigs.as_ptr(),
                &raw mut inner_cx,
                &raw mut memo,
            )
        };
        // SAFETY: the host's context for this call; the operators' descriptions and
        // signatures (and the seeds' text, `lean`'s, borrowed by `ops` and `sigs`),
        // `inner_cx` and `memo` live across it.
        let id = unsafe {
            (emit.subscribe_sync)(
                emit.host,
                op,
                ops_ptr,
                sigs_ptr,
                ops.len(),
                place,
                memo_place,
            )
        };
        if id == 0 {
            return Err(x);
        }
        if ops.is_empty() {
            drop(x);
            Self::run_sync::<C, K>(cx, cx, emit, stage, from, to, k);
        } else {
            let layout = StatesLayout::of(ops);
            if memo != 0 {
                self.memo.keep(memo, ops, shapes, &layout);
            }
            self.run_sync_ops::<C, K>(cx, x, stage, ops, &layout, id, inner_cx, from, to, k);
        }
        Ok(())
    }

    /// Subscribes a bound inner stream (the host takes its env and the outer value) and runs
    /// its start and synchronous sources. Returns whether it already ended (or was refused).
    fn subscribe_bound<C: Tally, K: Observer<S2::Out>>(
        &self,
        cx: &Cx<'_>,
        x: T,
        env: Box<Env<S2>>,
        bound: crate::dsl::BoundInner,
        k: &mut K,
    ) -> bool {
        let op = self.at.op;
        let env_ptr: *const Env<S2> = &*env;
        let mut desc = Self::describe(env, &bound);
        let mut value = ManuallyDrop::new(x);
        desc.value = (&raw mut *value).cast::<c_void>();
        let mut h = InnerHandle {
            instance: 0,
            states: core::ptr::null(),
            cx: core::ptr::null(),
        };
        let emit = cx.emit();
        // SAFETY: the host's context for this call; `desc` and what it points at live across
        // it. The host takes the env and moves the value out whatever it answers.
        let ok = unsafe { (emit.subscribe)(emit.host, op, &desc, &mut h) };
        drop(bound);
        if !ok {
            return true;
        }
        {
            let s = self.state(cx);
            s.0 = h.instance;
            s.1 += 1;
        }
        // SAFETY: the host keeps the env until after this call, even if the subscription
        // ends in it.
        let env = unsafe { &*env_ptr };
        let mut call = InnerCall {
            instance: h.instance,
            env: env_ptr.cast::<c_void>(),
            states: h.states,
            cx: h.cx,
            kind: inner_kind::START,
            port: 0,
            item: core::ptr::null(),
            op: 0,
            next: core::ptr::null(),
            answer: inner_answer::NONE,
        };
        self.run_inner::<C, K>(cx, env, &mut call, k).1
    }

    /// Runs inner subscription `id` of a synchronous source through its operators inside
    /// this call: their states seeded here, on this side, and dropped at its end, which the
    /// host hears of (`unsubscribe`, also when unwinding); `inner_cx` is the host's context
    /// for its operators (their paths). A panic in one of them names its path, as in a
    /// subscribed inner stream.
    #[allow(clippy::too_many_arguments)]
    fn run_sync_ops<C: Tally, K: Observer<S2::Out>>(
        &self,
        cx: &Cx<'_>,
        x: T,
        stage: &S2,
        ops: &[crate::abi::OpDesc],
        layout: &StatesLayout,
        id: u64,
        inner_cx: *const EmitCx,
        from: u64,
        to: u64,
        k: &mut K,
    ) {
        let mut room = StateRoom::new();
        let mut end = SyncEnd {
            emit: cx.emit(),
            op: self.at.op,
            id,
            states: SyncStates::new(ops, layout, &mut room),
        };
        // The outer value goes now that the end is guaranteed (its drop is user code).
        drop(x);
        if inner_cx.is_null() {
            // The host numbered it but gave no context (never, by its contract): it ends
            // unrun.
            return;
        }
        // SAFETY: the host's context for the subscription's operators, valid until the
        // running call returns.
        let inner_emit = unsafe { &*inner_cx };
        if let Err((op, why)) = end.states.seed(stage) {
            // As the host refuses a subscription whose seed fails: said at the operator, the
            // stream ends unrun, the outer stream goes on.
            // SAFETY: the host's context; the message outlives the call.
            unsafe { (inner_emit.error)(inner_emit.host, op, RStr::new(why)) };
            return;
        }
        let icx = Cx::inner(end.states.ptrs(), inner_emit, cx.marks_ops());
        let _guard = PanicAt {
            outer: cx,
            inner: &icx,
            emit: inner_cx,
        };
        Self::run_sync::<C, K>(cx, &icx, inner_emit, stage, from, to, k);
        // Dropped where they are, in reverse order (the guard, the inner context, then the
        // end): moved into a `drop` call, the end (136 bytes) was copied first.
    }

    /// Runs a synchronous source's values `from..to` through `stage` (on `icx`, the inner
    /// stream's context; the outer one for a bare source) and the rest of the chain, then
    /// its completion (which ends it), unless the chain completes first. A panic on one
    /// value drops that value only (reported at the operator it happened in, and the call
    /// answers PANICKED at its end), as in a subscribed inner stream.
    fn run_sync<C: Tally, K: Observer<S2::Out>>(
        cx: &Cx<'_>,
        icx: &Cx<'_>,
        inner_emit: &EmitCx,
        stage: &S2,
        from: u64,
        to: u64,
        k: &mut K,
    ) {
        let mut obs = SyncObs { k, ended: false };
        stage.start::<C, _>(icx, &mut obs);
        for i in from..to {
            if obs.ended || cx.is_completed() {
                return;
            }
            let one = catch_unwind(AssertUnwindSafe(|| {
                stage.push::<C, _>(icx, 0, (&raw const i).cast::<c_void>(), 0, &mut obs)
            }));
            match one {
                Ok(Flow::Complete) => break,
                Ok(Flow::Continue) => {}
                Err(payload) => contain_panic(cx, icx, inner_emit, payload),
            }
        }
        if !obs.ended && !cx.is_completed() {
            stage.complete::<C, _>(icx, 0, &mut obs);
        }
    }

    /// Runs one event of an inner subscription. Returns the flow for the outer chain and
    /// whether the subscription ended.
    fn run_inner<C: Tally, K: Observer<S2::Out>>(
        &self,
        cx: &Cx<'_>,
        env: &Env<S2>,
        call: &mut InnerCall,
        k: &mut K,
    ) -> (Flow, bool) {
        // SAFETY: the host passes the subscription's live context.
        let emit = unsafe { &*call.cx };
        let icx = Cx::inner(call.states, emit, cx.marks_ops());
        let mut obs = InnerObs::<C, T, K> {
            cx,
            op: self.at.op,
            instance: call.instance,
            k,
            ended: false,
            _t: PhantomData,
        };
        let guard = PanicAt {
            outer: cx,
            inner: &icx,
            emit: call.cx,
        };
        let flow = match call.kind {
            inner_kind::PUSH => env
                .stage
                .push::<C, _>(&icx, call.port, call.item, 0, &mut obs),
            inner_kind::COMPLETE => env.stage.complete::<C, _>(&icx, call.port, &mut obs),
            inner_kind::WAKE => {
                // SAFETY: null, or the nested event the host built for this call.
                let next = unsafe { call.next.cast_mut().as_mut() };
                env.stage
                    .wake::<C, _>(&icx, call.op, next, &mut obs)
                    .unwrap_or(Flow::Continue)
            }
            inner_kind::START => {
                let mut flow = env.stage.start::<C, _>(&icx, &mut obs);
                for &(port, from, to) in env.sync.as_slice() {
                    if obs.ended || cx.is_completed() {
                        break;
                    }
                    for i in from..to {
                        // A panic on one value drops that value only (it is reported at its
                        // operator, and the call answers PANICKED at its end), as for any
                        // source: the rest of the synchronous source still runs.
                        let one = catch_unwind(AssertUnwindSafe(|| {
                            env.stage.push::<C, _>(
                                &icx,
                                port,
                                (&raw const i).cast::<c_void>(),
                                0,
                                &mut obs,
                            )
                        }));
                        let f = match one {
                            Ok(f) => f,
                            Err(payload) => {
                                contain_panic(cx, &icx, call.cx, payload);
                                Flow::Continue
                            }
                        };
                        if f == Flow::Complete {
                            break;
                        }
                    }
                    if !obs.ended && !cx.is_completed() {
                        flow = env.stage.complete::<C, _>(&icx, port, &mut obs);
                    }
                }
                flow
            }
            _ => Flow::Continue,
        };
        drop(guard);
        if flow == Flow::Complete && !obs.ended && !cx.is_completed() {
            call.answer = inner_answer::PORT_DONE;
        }
        let ended = obs.ended;
        let out = if cx.is_completed() {
            Flow::Complete
        } else {
            Flow::Continue
        };
        (out, ended)
    }

    /// One outer value (see [`Op::push`]).
    fn push_value<C: Tally, K: Observer<S2::Out>>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        {
            let s = self.state(cx);
            match M::MODE {
                EXHAUST if s.1 > 0 => return Flow::Continue,
                // Behind the queue (which a panicking projection may have left waiting).
                CONCAT if s.1 > 0 || !s.2.is_empty() => {
                    s.2.push_back(x);
                    if s.1 > 0 {
                        return Flow::Continue;
                    }
                    return self.after_end::<C, K>(cx, k);
                }
                SWITCH if s.0 != 0 => {
                    let emit = cx.emit();
                    // SAFETY: the host's context for this call.
                    unsafe { (emit.unsubscribe)(emit.host, self.at.op, s.0) };
                    s.0 = 0;
                    s.1 = s.1.saturating_sub(1);
                }
                _ => {}
            }
        }
        if self.subscribe::<C, K>(cx, x, k) {
            return self.after_end::<C, K>(cx, k);
        }
        if cx.is_completed() {
            Flow::Complete
        } else {
            Flow::Continue
        }
    }

    /// One event of an inner subscription (see [`Op::wake`]).
    fn inner_event<C: Tally, K: Observer<S2::Out>>(
        &self,
        cx: &Cx<'_>,
        inner: Option<&mut InnerCall>,
        k: &mut K,
    ) -> Flow {
        let Some(call) = inner else {
            return Flow::Continue;
        };
        if call.kind == inner_kind::ENDED {
            {
                let s = self.state(cx);
                s.1 = s.1.saturating_sub(1);
                if s.0 == call.instance {
                    s.0 = 0;
                }
            }
            return self.after_end::<C, K>(cx, k);
        }
        // SAFETY: the host passes a live event for one of this operator's subscriptions,
        // whose env this version's projection built (it re-projects on taking new code).
        let env = unsafe { &*call.env.cast::<Env<S2>>() };
        let (flow, ended) = self.run_inner::<C, K>(cx, env, call, k);
        if ended {
            return self.after_end::<C, K>(cx, k);
        }
        flow
    }

    /// After an inner subscription ended: `concat_map` starts the next queued value; the
    /// operator completes once the outer stream has and nothing is live or queued.
    fn after_end<C: Tally, K: Observer<S2::Out>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        loop {
            if cx.is_completed() {
                return Flow::Complete;
            }
            let next = {
                let s = self.state(cx);
                if M::MODE == CONCAT && s.1 == 0 {
                    s.2.pop_front()
                } else {
                    None
                }
            };
            if let Some(x) = next {
                if self.subscribe::<C, K>(cx, x, k) {
                    continue;
                }
                return if cx.is_completed() {
                    Flow::Complete
                } else {
                    Flow::Continue
                };
            }
            let s = self.state(cx);
            if s.3 && s.1 == 0 && s.2.is_empty() {
                return k.complete();
            }
            return Flow::Continue;
        }
    }
}

impl<F, T, S2, M> Op<T> for HigherOrder<F, T, S2, M>
where
    F: Fn(T) -> Stream<S2> + Send + Sync + 'static,
    T: Shape + Clone + fmt::Debug + Send + Sync + 'static,
    S2: Stage,
    M: Mode,
{
    type Out = S2::Out;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    fn push<C: Tally, K: Observer<S2::Out>>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        let flow = self.push_value::<C, K>(cx, x, k);
        rethrow_contained(cx, flow)
    }
    fn complete<C: Tally, K: Observer<S2::Out>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        let s = self.state(cx);
        s.3 = true;
        if s.1 == 0 && s.2.is_empty() {
            return k.complete();
        }
        // The last inner subscription's end completes it.
        Flow::Continue
    }
    fn wake<C: Tally, K: Observer<S2::Out>>(
        &self,
        cx: &Cx<'_>,
        inner: Option<&mut InnerCall>,
        k: &mut K,
    ) -> Flow {
        let flow = self.inner_event::<C, K>(cx, inner, k);
        rethrow_contained(cx, flow)
    }
    unsafe fn project(&self, cx: &Cx<'_>, value: *const c_void) -> bool {
        // SAFETY: the caller passes a live `T`.
        let x = unsafe { &*value.cast::<T>() };
        let (env, bound) = self.project_bound(cx, x);
        let desc = Self::describe(env, &bound);
        let mut h = InnerHandle {
            instance: 0,
            states: core::ptr::null(),
            cx: core::ptr::null(),
        };
        let emit = cx.emit();
        // SAFETY: the host's context for this call; `desc` and what it points at (`bound`)
        // live across it; the host takes the env whatever it answers.
        unsafe { (emit.subscribe)(emit.host, self.at.op, &desc, &mut h) };
        true
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for the state.
        unsafe {
            dst.cast::<HoState<T>>()
                .write((0, 0, VecDeque::new(), false))
        }
    }
}

/// The higher-order operators, on every stream and pipeline. The closure builds a stream
/// for each outer value (`T: Clone`: the host keeps the value to re-project it on reload;
/// `Shape`: `concat_map` queues it in its state).
pub trait HigherOrderOperators: Pipe {
    /// Projects each value to a stream and emits its values until the next value comes
    /// (which ends that inner subscription). Completes when the outer stream has and the
    /// last inner one has.
    fn switch_map<S2, F>(self, f: F) -> Next<Self, HigherOrder<F, Out<Self>, S2, Switch>>
    where
        S2: Stage,
        F: Fn(Out<Self>) -> Stream<S2> + Send + Sync + 'static,
        Out<Self>: Shape + Clone + fmt::Debug + Send + Sync,
    {
        higher(self, f)
    }
    /// Projects each value to a stream and emits the values of all of them as they come.
    fn merge_map<S2, F>(self, f: F) -> Next<Self, HigherOrder<F, Out<Self>, S2, Merge>>
    where
        S2: Stage,
        F: Fn(Out<Self>) -> Stream<S2> + Send + Sync + 'static,
        Out<Self>: Shape + Clone + fmt::Debug + Send + Sync,
    {
        higher(self, f)
    }
    /// Projects each value to a stream, one at a time: values that come while one runs
    /// wait in a queue (state, kept across reloads).
    fn concat_map<S2, F>(self, f: F) -> Next<Self, HigherOrder<F, Out<Self>, S2, Concat>>
    where
        S2: Stage,
        F: Fn(Out<Self>) -> Stream<S2> + Send + Sync + 'static,
        Out<Self>: Shape + Clone + fmt::Debug + Send + Sync,
    {
        higher(self, f)
    }
    /// Projects a value to a stream and ignores the values that come while it runs.
    fn exhaust_map<S2, F>(self, f: F) -> Next<Self, HigherOrder<F, Out<Self>, S2, Exhaust>>
    where
        S2: Stage,
        F: Fn(Out<Self>) -> Stream<S2> + Send + Sync + 'static,
        Out<Self>: Shape + Clone + fmt::Debug + Send + Sync,
    {
        higher(self, f)
    }
}

impl<P: Pipe> HigherOrderOperators for P {}

fn higher<P, S2, F, M>(this: P, f: F) -> Next<P, HigherOrder<F, Out<P>, S2, M>>
where
    P: Pipe,
    S2: Stage,
    M: Mode,
    F: Fn(Out<P>) -> Stream<S2> + Send + Sync + 'static,
    Out<P>: Shape + Clone + fmt::Debug + Send + Sync,
{
    let state = state_fns_uncloned::<HoState<Out<P>>>();
    let at = At::new::<Out<P>, S2::Out>(M::KIND, Some(state), Seed::None);
    this.then(HigherOrder {
        f,
        at,
        memo: LeanMemo::default(),
        _t: PhantomData,
    })
}

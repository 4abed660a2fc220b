//! Fan-in operators: `merge`, `zip`, `combine_latest`, `with_latest_from`. Each joins two
//! stages into one whose ports are the left stage's followed by the right one's; its state
//! (which inputs completed, a `zip`'s queues, the latest values) lives in a host slot like
//! any operator's, so it survives reloads.
//!
//! Completion follows RxJS: `merge` and `combine_latest` complete when both inputs have
//! (`combine_latest` also when an input completes without ever emitting, as RxJS documents
//! and rxRust and RxJava do; RxJS 7's code waits for both, though nothing can be emitted any
//! more); `zip` when an input that completed has nothing queued; `with_latest_from` when its
//! own input does. An input completing while the pipeline goes on makes its port answer
//! `PORT_DONE`, at `start` too (see [`FanIn`]'s `start`). `with_latest_from` starts its right
//! input first, as RxJS and rxRust subscribe it first. `tests/differential_fanin.rs` checks
//! all four against rxRust 1.0.0-rc.6.

use core::ffi::c_void;
use core::fmt;
use core::marker::PhantomData;
use std::collections::VecDeque;

use crate::dsl::{
    At, Binder, Counting, Cx, Flow, Mark, Observer, Out, Pipe, Seed, Stage, StateFns, Stream,
    Tally, state_fns, state_fns_uncloned,
};
use crate::shape::Shape;

/// Bits of the `done` state: which inputs completed.
const LEFT: u8 = 1;
const RIGHT: u8 = 2;
/// The operator completed: whatever an input still sends is refused (its port is done).
const CLOSED: u8 = 4;

/// What each fan-in operator does with its inputs' values and completions. `L` and `R` are
/// the inputs' value types, `A` the state.
#[doc(hidden)]
pub trait Join<L, R>: Send + Sync + 'static {
    /// What the operator emits.
    type Out: fmt::Debug;
    /// Its state.
    type State: Shape + fmt::Debug + Send + Sync + 'static;
    /// Its kind (the track's).
    fn kind() -> &'static str;
    /// Its state's glue (cloned for a replay when its values are `Clone`).
    fn state_fns() -> StateFns;
    /// Whether the right input is subscribed (started) before the left one, as RxJS and
    /// rxRust do for `with_latest_from`: a start value of the right input is then the latest
    /// one when the left input's start value arrives.
    const RIGHT_FIRST: bool = false;
    /// Its seed state.
    fn seed() -> Self::State;
    /// A value of the left input.
    fn left<C: Tally, K: Observer<Self::Out>>(
        &self,
        cx: &Cx<'_>,
        op: u32,
        s: &mut Self::State,
        x: L,
        k: &mut K,
    ) -> Flow;
    /// A value of the right input.
    fn right<C: Tally, K: Observer<Self::Out>>(
        &self,
        cx: &Cx<'_>,
        op: u32,
        s: &mut Self::State,
        x: R,
        k: &mut K,
    ) -> Flow;
    /// Input `side` completed; returns whether the output completes.
    fn done(s: &mut Self::State, side: u8) -> bool;
    /// Whether the operator completed (its output is done).
    fn closed(s: &Self::State) -> bool;
    /// Marks the operator completed.
    fn close(s: &mut Self::State);
}

/// Two stages joined by the fan-in operator `J`.
pub struct FanIn<A, B, J> {
    a: A,
    b: B,
    j: J,
    at: At,
    marks: Option<Vec<(u32, Mark)>>,
}

impl<A, B, J> fmt::Debug for FanIn<A, B, J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanIn")
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

/// The receiver one input of a fan-in hands its values to.
struct Side<'a, 'c, C, A, B, J: Join<A, B>, K> {
    cx: &'a Cx<'c>,
    j: &'a J,
    op: u32,
    side: u8,
    k: &'a mut K,
    _t: PhantomData<fn(A, B, C)>,
}

impl<'a, 'c, C: Tally, A, B, J: Join<A, B>, K: Observer<J::Out>> Side<'a, 'c, C, A, B, J, K> {
    #[allow(clippy::mut_from_ref)]
    fn state(&self) -> &'a mut J::State {
        // SAFETY: the host seeded this operator's slot with a `J::State` (fingerprint-checked)
        // and only this operator touches it, one call at a time.
        unsafe { &mut *self.cx.state::<J::State>(self.op) }
    }

    fn counted(&mut self) -> Counting<'_, 'c, C, K> {
        Counting {
            cx: self.cx,
            op: self.op,
            k: self.k,
            _c: PhantomData,
        }
    }

    fn finish(&mut self) -> Flow {
        let side = self.side;
        let s = self.state();
        if J::closed(s) {
            return Flow::Complete;
        }
        if J::done(s, side) {
            J::close(s);
            self.k.complete();
        }
        Flow::Complete
    }
}

impl<C: Tally, A, B, J: Join<A, B>, K: Observer<J::Out>> Observer<A>
    for Side<'_, '_, C, A, B, J, K>
{
    #[inline(always)]
    fn next(&mut self, x: A) -> Flow {
        let (cx, op, j) = (self.cx, self.op, self.j);
        let s = self.state();
        if J::closed(s) {
            // Completed already (the other input ended it): this input's port is done.
            return Flow::Complete;
        }
        j.left::<C, _>(cx, op, s, x, &mut self.counted())
    }
    fn complete(&mut self) -> Flow {
        self.finish()
    }
}

/// The right input's receiver (`Side` with the other value type).
struct RightSide<'a, 'c, C, A, B, J: Join<A, B>, K>(Side<'a, 'c, C, A, B, J, K>);

impl<C: Tally, A, B, J: Join<A, B>, K: Observer<J::Out>> Observer<B>
    for RightSide<'_, '_, C, A, B, J, K>
{
    #[inline(always)]
    fn next(&mut self, x: B) -> Flow {
        let (cx, op, j) = (self.0.cx, self.0.op, self.0.j);
        let s = self.0.state();
        if J::closed(s) {
            return Flow::Complete;
        }
        j.right::<C, _>(cx, op, s, x, &mut self.0.counted())
    }
    fn complete(&mut self) -> Flow {
        self.0.finish()
    }
}

impl<SA: Stage, SB: Stage, J: Join<SA::Out, SB::Out>> FanIn<SA, SB, J> {
    fn side<'a, 'c, C: Tally, K: Observer<J::Out>>(
        &'a self,
        cx: &'a Cx<'c>,
        side: u8,
        k: &'a mut K,
    ) -> Side<'a, 'c, C, SA::Out, SB::Out, J, K> {
        Side {
            cx,
            j: &self.j,
            op: self.at.op,
            side,
            k,
            _t: PhantomData,
        }
    }
}

impl<SA: Stage, SB: Stage, J: Join<SA::Out, SB::Out>> Stage for FanIn<SA, SB, J> {
    type Out = J::Out;
    const PORTS: u32 = SA::PORTS + SB::PORTS;
    #[inline(always)]
    fn push<C: Tally, K: Observer<J::Out>>(
        &self,
        cx: &Cx<'_>,
        port: u32,
        items: *const c_void,
        i: usize,
        k: &mut K,
    ) -> Flow {
        if port < SA::PORTS {
            let mut left = self.side::<C, K>(cx, LEFT, k);
            self.a.push::<C, _>(cx, port, items, i, &mut left)
        } else {
            let mut right = RightSide(self.side::<C, K>(cx, RIGHT, k));
            self.b
                .push::<C, _>(cx, port - SA::PORTS, items, i, &mut right)
        }
    }
    fn complete<C: Tally, K: Observer<J::Out>>(&self, cx: &Cx<'_>, port: u32, k: &mut K) -> Flow {
        if port < SA::PORTS {
            let mut left = self.side::<C, K>(cx, LEFT, k);
            self.a.complete::<C, _>(cx, port, &mut left)
        } else {
            let mut right = RightSide(self.side::<C, K>(cx, RIGHT, k));
            self.b.complete::<C, _>(cx, port - SA::PORTS, &mut right)
        }
    }
    /// Starts both inputs (the left one first, unless [`Join::RIGHT_FIRST`]). An input that
    /// completes here (a `take(0)`, a `start_with(v).take(1)`) completes its side only: the
    /// answer is `Complete` only if the pipeline's end completed, otherwise the pipeline goes
    /// on, and that input's port reports `PORT_DONE` at its first value.
    fn start<C: Tally, K: Observer<J::Out>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        for right in [J::RIGHT_FIRST, !J::RIGHT_FIRST] {
            if right {
                let mut right = RightSide(self.side::<C, K>(cx, RIGHT, k));
                self.b.start::<C, _>(cx, &mut right);
            } else {
                let mut left = self.side::<C, K>(cx, LEFT, k);
                self.a.start::<C, _>(cx, &mut left);
            }
            if cx.is_completed() {
                return Flow::Complete;
            }
        }
        Flow::Continue
    }
    fn wake<C: Tally, K: Observer<J::Out>>(
        &self,
        cx: &Cx<'_>,
        op: u32,
        mut inner: Option<&mut crate::abi::InnerCall>,
        k: &mut K,
    ) -> Option<Flow> {
        {
            let mut left = self.side::<C, K>(cx, LEFT, k);
            if let Some(f) = self.a.wake::<C, _>(cx, op, inner.as_deref_mut(), &mut left) {
                return Some(f);
            }
        }
        let mut right = RightSide(self.side::<C, K>(cx, RIGHT, k));
        self.b.wake::<C, _>(cx, op, inner, &mut right)
    }
    unsafe fn project(&self, cx: &Cx<'_>, op: u32, value: *const c_void) -> Option<bool> {
        // SAFETY: forwarded.
        unsafe {
            self.a
                .project(cx, op, value)
                .or_else(|| self.b.project(cx, op, value))
        }
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        self.a.bind(b);
        // A lean binding refuses a fan-in, and the stream is bound again in full: the scope
        // marks are taken only by a binding that registers them.
        let marks = if b.is_lean() {
            Vec::new()
        } else {
            self.marks.take().unwrap_or_default()
        };
        let inner = &mut self.b;
        b.fan_in(&mut self.at, marks, |b| inner.bind(b));
    }
    fn label(&self) -> String {
        self.a.label()
    }
    unsafe fn describe(&self, port: u32, item: *const c_void, out: &mut dyn fmt::Write) -> bool {
        // SAFETY: forwarded to the side that owns the port (the left one's first).
        unsafe {
            if port < SA::PORTS {
                self.a.describe(port, item, out)
            } else {
                self.b.describe(port - SA::PORTS, item, out)
            }
        }
    }
    unsafe fn init(&self, op: u32, dst: *mut u8) -> bool {
        if op == self.at.op {
            if !dst.is_null() {
                // SAFETY: the caller guarantees `dst` fits this operator's state.
                unsafe { dst.cast::<J::State>().write(J::seed()) };
            }
            return true;
        }
        // SAFETY: forwarded caller obligation.
        unsafe { self.a.init(op, dst) || self.b.init(op, dst) }
    }
}

fn join<P: Pipe, S2: Stage, J: Join<Out<P>, S2::Out>>(
    this: P,
    other: Stream<S2>,
    j: J,
) -> P::With<FanIn<P::S, S2, J>> {
    let text = other.body.stage.label();
    let at = At::new::<S2::Out, J::Out>(J::kind(), Some(J::state_fns()), Seed::Text(text));
    this.map_body(|body| {
        body.join(other.body, |a, b, marks| FanIn {
            a,
            b,
            j,
            at,
            marks: Some(marks),
        })
    })
}

/// `merge`: both inputs' values, in arrival order. State: which inputs completed.
pub struct MergeJoin<T>(PhantomData<fn(T)>);

impl<T: fmt::Debug + 'static> Join<T, T> for MergeJoin<T> {
    type Out = T;
    type State = u8;
    fn kind() -> &'static str {
        "merge"
    }
    fn state_fns() -> StateFns {
        state_fns::<u8>()
    }
    fn seed() -> u8 {
        0
    }
    fn left<C: Tally, K: Observer<T>>(
        &self,
        _: &Cx<'_>,
        _: u32,
        _: &mut u8,
        x: T,
        k: &mut K,
    ) -> Flow {
        k.next(x)
    }
    fn right<C: Tally, K: Observer<T>>(
        &self,
        _: &Cx<'_>,
        _: u32,
        _: &mut u8,
        x: T,
        k: &mut K,
    ) -> Flow {
        k.next(x)
    }
    fn done(s: &mut u8, side: u8) -> bool {
        *s |= side;
        *s & (LEFT | RIGHT) == LEFT | RIGHT
    }
    fn closed(s: &u8) -> bool {
        *s & CLOSED != 0
    }
    fn close(s: &mut u8) {
        *s |= CLOSED;
    }
}

/// `a.merge(b)`.
pub type Merge<A, B> = FanIn<A, B, MergeJoin<<A as Stage>::Out>>;

pub(crate) fn merge<P: Pipe, S2: Stage<Out = Out<P>>>(
    this: P,
    other: Stream<S2>,
) -> P::With<Merge<P::S, S2>> {
    join(this, other, MergeJoin(PhantomData))
}

/// `zip`: the n-th values of both inputs, paired by `f`. State: both queues and which
/// inputs completed.
pub struct ZipJoin<F, L, R, V> {
    f: F,
    _t: PhantomData<fn(L, R) -> V>,
}

/// The state of a `zip`: the values waiting on each side and which inputs completed.
pub type ZipState<L, R> = (VecDeque<L>, VecDeque<R>, u8);

impl<F, L, R, V> Join<L, R> for ZipJoin<F, L, R, V>
where
    F: Fn(L, R) -> V + Send + Sync + 'static,
    L: Shape + fmt::Debug + Send + Sync + 'static,
    R: Shape + fmt::Debug + Send + Sync + 'static,
    V: fmt::Debug + 'static,
{
    type Out = V;
    type State = ZipState<L, R>;
    fn kind() -> &'static str {
        "zip"
    }
    fn state_fns() -> StateFns {
        state_fns_uncloned::<ZipState<L, R>>()
    }
    fn seed() -> Self::State {
        (VecDeque::new(), VecDeque::new(), 0)
    }
    fn left<C: Tally, K: Observer<V>>(
        &self,
        cx: &Cx<'_>,
        op: u32,
        s: &mut Self::State,
        x: L,
        k: &mut K,
    ) -> Flow {
        match s.1.pop_front() {
            Some(y) => {
                let v = cx.user(op, || (self.f)(x, y));
                let flow = k.next(v);
                if flow == Flow::Continue && s.2 & RIGHT != 0 && s.1.is_empty() {
                    s.2 |= CLOSED;
                    k.complete();
                    return Flow::Complete;
                }
                flow
            }
            None => {
                s.0.push_back(x);
                Flow::Continue
            }
        }
    }
    fn right<C: Tally, K: Observer<V>>(
        &self,
        cx: &Cx<'_>,
        op: u32,
        s: &mut Self::State,
        y: R,
        k: &mut K,
    ) -> Flow {
        match s.0.pop_front() {
            Some(x) => {
                let v = cx.user(op, || (self.f)(x, y));
                let flow = k.next(v);
                if flow == Flow::Continue && s.2 & LEFT != 0 && s.0.is_empty() {
                    s.2 |= CLOSED;
                    k.complete();
                    return Flow::Complete;
                }
                flow
            }
            None => {
                s.1.push_back(y);
                Flow::Continue
            }
        }
    }
    fn done(s: &mut Self::State, side: u8) -> bool {
        s.2 |= side;
        if side == LEFT {
            s.0.is_empty()
        } else {
            s.1.is_empty()
        }
    }
    fn closed(s: &Self::State) -> bool {
        s.2 & CLOSED != 0
    }
    fn close(s: &mut Self::State) {
        s.2 |= CLOSED;
    }
}

/// `a.zip(b, f)`.
pub type Zip<A, B, F, V> = FanIn<A, B, ZipJoin<F, <A as Stage>::Out, <B as Stage>::Out, V>>;

pub(crate) fn zip<P, S2, F, V>(this: P, other: Stream<S2>, f: F) -> P::With<Zip<P::S, S2, F, V>>
where
    P: Pipe,
    S2: Stage,
    Out<P>: Shape + fmt::Debug + Send + Sync,
    S2::Out: Shape + fmt::Debug + Send + Sync,
    F: Fn(Out<P>, S2::Out) -> V + Send + Sync + 'static,
    V: fmt::Debug + 'static,
{
    join(this, other, ZipJoin { f, _t: PhantomData })
}

/// `combine_latest`: `f` of both latest values. State: the latest values and which inputs
/// completed.
pub struct CombineJoin<F, L, R, V> {
    f: F,
    _t: PhantomData<fn(L, R) -> V>,
}

/// The state of a `combine_latest`.
pub type CombineState<L, R> = (Option<L>, Option<R>, u8);

impl<F, L, R, V> Join<L, R> for CombineJoin<F, L, R, V>
where
    F: Fn(&L, &R) -> V + Send + Sync + 'static,
    L: Shape + Clone + fmt::Debug + Send + Sync + 'static,
    R: Shape + Clone + fmt::Debug + Send + Sync + 'static,
    V: fmt::Debug + 'static,
{
    type Out = V;
    type State = CombineState<L, R>;
    fn kind() -> &'static str {
        "combine_latest"
    }
    fn state_fns() -> StateFns {
        state_fns::<CombineState<L, R>>()
    }
    fn seed() -> Self::State {
        (None, None, 0)
    }
    fn left<C: Tally, K: Observer<V>>(
        &self,
        cx: &Cx<'_>,
        op: u32,
        s: &mut Self::State,
        x: L,
        k: &mut K,
    ) -> Flow {
        s.0 = Some(x);
        match (&s.0, &s.1) {
            (Some(a), Some(b)) => {
                let v = cx.user(op, || (self.f)(a, b));
                k.next(v)
            }
            _ => Flow::Continue,
        }
    }
    fn right<C: Tally, K: Observer<V>>(
        &self,
        cx: &Cx<'_>,
        op: u32,
        s: &mut Self::State,
        y: R,
        k: &mut K,
    ) -> Flow {
        s.1 = Some(y);
        match (&s.0, &s.1) {
            (Some(a), Some(b)) => {
                let v = cx.user(op, || (self.f)(a, b));
                k.next(v)
            }
            _ => Flow::Continue,
        }
    }
    fn done(s: &mut Self::State, side: u8) -> bool {
        s.2 |= side;
        let never_emitted = if side == LEFT {
            s.0.is_none()
        } else {
            s.1.is_none()
        };
        never_emitted || s.2 & (LEFT | RIGHT) == LEFT | RIGHT
    }
    fn closed(s: &Self::State) -> bool {
        s.2 & CLOSED != 0
    }
    fn close(s: &mut Self::State) {
        s.2 |= CLOSED;
    }
}

/// `a.combine_latest(b, f)`.
pub type CombineLatest<A, B, F, V> =
    FanIn<A, B, CombineJoin<F, <A as Stage>::Out, <B as Stage>::Out, V>>;

pub(crate) fn combine_latest<P, S2, F, V>(
    this: P,
    other: Stream<S2>,
    f: F,
) -> P::With<CombineLatest<P::S, S2, F, V>>
where
    P: Pipe,
    S2: Stage,
    Out<P>: Shape + Clone + fmt::Debug + Send + Sync,
    S2::Out: Shape + Clone + fmt::Debug + Send + Sync,
    F: Fn(&Out<P>, &S2::Out) -> V + Send + Sync + 'static,
    V: fmt::Debug + 'static,
{
    join(this, other, CombineJoin { f, _t: PhantomData })
}

/// `with_latest_from`: each value of the left input with the latest of the right one.
/// State: the latest right value, and whether the operator completed.
pub struct LatestJoin<F, L, R, V> {
    f: F,
    _t: PhantomData<fn(L, R) -> V>,
}

impl<F, L, R, V> Join<L, R> for LatestJoin<F, L, R, V>
where
    F: Fn(L, &R) -> V + Send + Sync + 'static,
    L: 'static,
    R: Shape + Clone + fmt::Debug + Send + Sync + 'static,
    V: fmt::Debug + 'static,
{
    type Out = V;
    type State = (Option<R>, u8);
    fn kind() -> &'static str {
        "with_latest_from"
    }
    fn state_fns() -> StateFns {
        state_fns::<(Option<R>, u8)>()
    }
    const RIGHT_FIRST: bool = true;
    fn seed() -> (Option<R>, u8) {
        (None, 0)
    }
    fn left<C: Tally, K: Observer<V>>(
        &self,
        cx: &Cx<'_>,
        op: u32,
        s: &mut (Option<R>, u8),
        x: L,
        k: &mut K,
    ) -> Flow {
        match &s.0 {
            Some(b) => {
                let v = cx.user(op, || (self.f)(x, b));
                k.next(v)
            }
            None => Flow::Continue,
        }
    }
    fn right<C: Tally, K: Observer<V>>(
        &self,
        _cx: &Cx<'_>,
        _op: u32,
        s: &mut (Option<R>, u8),
        y: R,
        _k: &mut K,
    ) -> Flow {
        s.0 = Some(y);
        Flow::Continue
    }
    fn done(_s: &mut (Option<R>, u8), side: u8) -> bool {
        side == LEFT
    }
    fn closed(s: &(Option<R>, u8)) -> bool {
        s.1 & CLOSED != 0
    }
    fn close(s: &mut (Option<R>, u8)) {
        s.1 |= CLOSED;
    }
}

/// `a.with_latest_from(b, f)`.
pub type WithLatestFrom<A, B, F, V> =
    FanIn<A, B, LatestJoin<F, <A as Stage>::Out, <B as Stage>::Out, V>>;

pub(crate) fn with_latest_from<P, S2, F, V>(
    this: P,
    other: Stream<S2>,
    f: F,
) -> P::With<WithLatestFrom<P::S, S2, F, V>>
where
    P: Pipe,
    S2: Stage,
    S2::Out: Shape + Clone + fmt::Debug + Send + Sync,
    F: Fn(Out<P>, &S2::Out) -> V + Send + Sync + 'static,
    V: fmt::Debug + 'static,
{
    join(this, other, LatestJoin { f, _t: PhantomData })
}

//! The rxRust operator set: filtering (`distinct_until_changed`, `distinct`, `skip`,
//! `skip_while`, `take_while`, `first`, `filter_map`), buffering (`take_last`, `last`,
//! `pairwise`, `buffer_count`), aggregation (`count`, `default_if_empty`), `start_with` and
//! `flat_map`.
//!
//! Semantics are rxRust 1.0's (RxJS's where they agree), checked differentially against
//! rxRust by `plugin-api/tests/differential.rs`. As everywhere in the DSL, an operator's
//! state (a `distinct`'s set, a `take_last`'s queue) lives in a slot owned by the host, never
//! in the operator: it survives a reload that keeps the operator's signature. So a value type
//! that an operator keeps in its state must be [`Shape`] (a primitive, a tuple, a `Vec`, a
//! `String` or a struct declared in [`state!`](crate::state)) and `Debug` (the inspector
//! shows states).
//!
//! Operators that emit on completion (`last`, `take_last`, `count`, `default_if_empty`,
//! `buffer_count`'s partial buffer) do so from [`Op::complete`], whether the source ended or
//! an operator upstream of them (a `take`) completed the pipeline: a completion travels down
//! the chain, as in Rx. `start_with` emits from [`Op::start`], which the host runs once when
//! it starts the pipeline's source.

use core::fmt;
use core::marker::PhantomData;
use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

use crate::dsl::{
    At, Binder, Cx, Flow, Next, Observer, Op, Out, Pipe, Seed, Tally, state_fns, state_fns_uncloned,
};
use crate::shape::Shape;

/// The largest buffer `buffer_count` reserves up front (a larger one grows as it fills).
const BUFFER_RESERVE: u64 = 4096;

/// `distinct_until_changed()`: state `Option<T>`, the last value passed.
pub struct DistinctUntilChanged<T> {
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<T: PartialEq + Clone + 'static> Op<T> for DistinctUntilChanged<T> {
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
        // SAFETY: the host seeded this slot with an `Option<T>` (fingerprint-checked) and no
        // other reference to it exists: each operator touches only its own slot.
        let last = unsafe { &mut *cx.state::<Option<T>>(self.at.op) };
        // `eq` and `clone` are the user's code.
        let changed = cx.user(self.at.op, || {
            if last.as_ref() == Some(&x) {
                return false;
            }
            // Replaced, then dropped: the slot holds a value even if the drop panics.
            drop(last.replace(x.clone()));
            true
        });
        if changed { k.next(x) } else { Flow::Continue }
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for an `Option<T>`.
        unsafe { dst.cast::<Option<T>>().write(None) }
    }
}

/// `distinct()`: state `HashSet<T>`, every value passed.
pub struct Distinct<T> {
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<T: Eq + Hash + Clone + 'static> Op<T> for Distinct<T> {
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
        // SAFETY: as for `DistinctUntilChanged`: a seeded `HashSet<T>`, touched only here.
        let seen = unsafe { &mut *cx.state::<HashSet<T>>(self.at.op) };
        // `hash`, `eq` and `clone` are the user's code; a panic in them leaves a valid set.
        let new = cx.user(self.at.op, || {
            if seen.contains(&x) {
                false
            } else {
                seen.insert(x.clone());
                true
            }
        });
        if new { k.next(x) } else { Flow::Continue }
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for a `HashSet<T>`.
        unsafe { dst.cast::<HashSet<T>>().write(HashSet::new()) }
    }
}

/// `skip(n)`: state `u64`, the values skipped so far.
pub struct Skip<T> {
    n: u64,
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<T: 'static> Op<T> for Skip<T> {
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
        let skipped = unsafe { &mut *cx.state::<u64>(self.at.op) };
        if *skipped < self.n {
            *skipped += 1;
            return Flow::Continue;
        }
        k.next(x)
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for a `u64`.
        unsafe { dst.cast::<u64>().write(0) }
    }
}

/// `skip_while(f)`: state `bool`, whether `f` has refused a value (skipping is over).
pub struct SkipWhile<F, T> {
    f: F,
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<F: Fn(&T) -> bool + Send + Sync + 'static, T: 'static> Op<T> for SkipWhile<F, T> {
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
        // SAFETY: a seeded `bool`, touched only by this operator.
        let passing = unsafe { &mut *cx.state::<bool>(self.at.op) };
        if !*passing {
            if cx.user(self.at.op, || (self.f)(&x)) {
                return Flow::Continue;
            }
            *passing = true;
        }
        k.next(x)
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for a `bool`.
        unsafe { dst.cast::<bool>().write(false) }
    }
}

/// `take_while(f)`: state `bool`, whether `f` has refused a value (the operator completed).
pub struct TakeWhile<F, T> {
    f: F,
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<F: Fn(&T) -> bool + Send + Sync + 'static, T: 'static> Op<T> for TakeWhile<F, T> {
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
        // SAFETY: a seeded `bool`, touched only by this operator.
        let done = unsafe { &mut *cx.state::<bool>(self.at.op) };
        if *done {
            return Flow::Complete;
        }
        if cx.user(self.at.op, || (self.f)(&x)) {
            k.next(x)
        } else {
            *done = true;
            k.complete();
            Flow::Complete
        }
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for a `bool`.
        unsafe { dst.cast::<bool>().write(false) }
    }
}

/// `first()`: state `bool`, whether it passed its value (and completed).
pub struct First<T> {
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<T: 'static> Op<T> for First<T> {
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
        // SAFETY: a seeded `bool`, touched only by this operator.
        let done = unsafe { &mut *cx.state::<bool>(self.at.op) };
        if !*done {
            *done = true;
            if k.next(x) == Flow::Continue {
                k.complete();
            }
        }
        Flow::Complete
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for a `bool`.
        unsafe { dst.cast::<bool>().write(false) }
    }
}

/// `take_last(n)`: state `VecDeque<T>`, the last `n` values, emitted on completion.
pub struct TakeLast<T> {
    n: u64,
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<T: 'static> Op<T> for TakeLast<T> {
    type Out = T;
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, x: T, _k: &mut K) -> Flow {
        if self.n == 0 {
            return Flow::Continue;
        }
        // SAFETY: a seeded `VecDeque<T>`, touched only by this operator.
        let queue = unsafe { &mut *cx.state::<VecDeque<T>>(self.at.op) };
        if queue.len() as u64 >= self.n {
            // Popped, then dropped: the queue is whole even if the drop panics.
            drop(queue.pop_front());
        }
        queue.push_back(x);
        Flow::Continue
    }
    fn complete<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        // SAFETY: as in `push`.
        let queue = unsafe { &mut *cx.state::<VecDeque<T>>(self.at.op) };
        for x in core::mem::take(queue) {
            if k.next(x) == Flow::Complete {
                return Flow::Complete;
            }
        }
        k.complete()
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for a `VecDeque<T>`.
        unsafe { dst.cast::<VecDeque<T>>().write(VecDeque::new()) }
    }
}

/// `last()`: state `Option<T>`, the last value, emitted on completion.
pub struct Last<T> {
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<T: 'static> Op<T> for Last<T> {
    type Out = T;
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, x: T, _k: &mut K) -> Flow {
        // SAFETY: a seeded `Option<T>`, touched only by this operator.
        let last = unsafe { &mut *cx.state::<Option<T>>(self.at.op) };
        // Replaced, then dropped: the slot holds a value even if the drop panics.
        drop(last.replace(x));
        Flow::Continue
    }
    fn complete<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        // SAFETY: as in `push`.
        let last = unsafe { &mut *cx.state::<Option<T>>(self.at.op) };
        if let Some(x) = last.take()
            && k.next(x) == Flow::Complete
        {
            return Flow::Complete;
        }
        k.complete()
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for an `Option<T>`.
        unsafe { dst.cast::<Option<T>>().write(None) }
    }
}

/// `pairwise()`: state `Option<T>`, the previous value.
pub struct Pairwise<T> {
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<T: Clone + 'static> Op<T> for Pairwise<T> {
    type Out = (T, T);
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<(T, T)>>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        // SAFETY: a seeded `Option<T>`, touched only by this operator.
        let prev = unsafe { &mut *cx.state::<Option<T>>(self.at.op) };
        // The clone kept for the next pair is the user's code.
        let pair = cx.user(self.at.op, || {
            let keep = x.clone();
            prev.replace(keep).map(|p| (p, x))
        });
        match pair {
            Some(pair) => k.next(pair),
            None => Flow::Continue,
        }
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for an `Option<T>`.
        unsafe { dst.cast::<Option<T>>().write(None) }
    }
}

/// `start_with(v)`: no state; emits a clone of `v` when the pipeline starts.
pub struct StartWith<T> {
    v: T,
    at: At,
}

impl<T: Clone + fmt::Debug + Send + Sync + 'static> Op<T> for StartWith<T> {
    type Out = T;
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op_seeded(&mut self.at, &self.v);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<T>>(&self, _cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        k.next(x)
    }
    fn start<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        let v = cx.user(self.at.op, || self.v.clone());
        k.next(v)
    }
}

/// `buffer_count(n)`: state `Vec<T>`, the buffer being filled.
pub struct BufferCount<T> {
    n: u64,
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<T: 'static> Op<T> for BufferCount<T> {
    type Out = Vec<T>;
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<Vec<T>>>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        // SAFETY: a seeded `Vec<T>`, touched only by this operator.
        let buffer = unsafe { &mut *cx.state::<Vec<T>>(self.at.op) };
        buffer.push(x);
        if (buffer.len() as u64) < self.n {
            return Flow::Continue;
        }
        let next = Vec::with_capacity(self.n.min(BUFFER_RESERVE) as usize);
        k.next(core::mem::replace(buffer, next))
    }
    fn complete<C: Tally, K: Observer<Vec<T>>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        // SAFETY: as in `push`.
        let buffer = unsafe { &mut *cx.state::<Vec<T>>(self.at.op) };
        if !buffer.is_empty() && k.next(core::mem::take(buffer)) == Flow::Complete {
            return Flow::Complete;
        }
        k.complete()
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for a `Vec<T>`.
        unsafe { dst.cast::<Vec<T>>().write(Vec::new()) }
    }
}

/// `filter_map(f)`: no state.
pub struct FilterMap<F, T, U> {
    f: F,
    at: At,
    _t: PhantomData<fn(T) -> U>,
}

impl<F, T, U> Op<T> for FilterMap<F, T, U>
where
    F: Fn(T) -> Option<U> + Send + Sync + 'static,
    T: 'static,
    U: 'static,
{
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
        match cx.user(self.at.op, || (self.f)(x)) {
            Some(y) => k.next(y),
            None => Flow::Continue,
        }
    }
}

/// `count()`: state `u64`, the values seen, emitted on completion.
pub struct Count<T> {
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<T: 'static> Op<T> for Count<T> {
    type Out = u64;
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<u64>>(&self, cx: &Cx<'_>, _x: T, _k: &mut K) -> Flow {
        // SAFETY: a seeded `u64`, touched only by this operator.
        let n = unsafe { &mut *cx.state::<u64>(self.at.op) };
        *n += 1;
        Flow::Continue
    }
    fn complete<C: Tally, K: Observer<u64>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        // SAFETY: as in `push`.
        let n = unsafe { *cx.state::<u64>(self.at.op) };
        if k.next(n) == Flow::Complete {
            return Flow::Complete;
        }
        k.complete()
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for a `u64`.
        unsafe { dst.cast::<u64>().write(0) }
    }
}

/// `default_if_empty(v)`: state `bool`, whether a value passed.
pub struct DefaultIfEmpty<T> {
    v: T,
    at: At,
}

impl<T: Clone + Send + Sync + 'static> Op<T> for DefaultIfEmpty<T> {
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
        // SAFETY: a seeded `bool`, touched only by this operator.
        unsafe { *cx.state::<bool>(self.at.op) = true };
        k.next(x)
    }
    fn complete<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        // SAFETY: as in `push`.
        let seen = unsafe { *cx.state::<bool>(self.at.op) };
        if !seen {
            let v = cx.user(self.at.op, || self.v.clone());
            if k.next(v) == Flow::Complete {
                return Flow::Complete;
            }
        }
        k.complete()
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for a `bool`.
        unsafe { dst.cast::<bool>().write(false) }
    }
}

/// `flat_map(f)`: no state.
pub struct FlatMap<F, T, I> {
    f: F,
    at: At,
    _t: PhantomData<fn(T) -> I>,
}

impl<F, T, I> Op<T> for FlatMap<F, T, I>
where
    F: Fn(T) -> I + Send + Sync + 'static,
    I: IntoIterator + 'static,
    T: 'static,
{
    type Out = I::Item;
    const SYNC: bool = true;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline(always)]
    fn push<C: Tally, K: Observer<I::Item>>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        // `f`, `into_iter` and every `next` are the user's code; what `k` runs is not.
        let mut items = cx.user(self.at.op, || (self.f)(x).into_iter());
        loop {
            match cx.user(self.at.op, || items.next()) {
                Some(y) => {
                    if k.next(y) == Flow::Complete {
                        return Flow::Complete;
                    }
                }
                None => return Flow::Continue,
            }
        }
    }
}

/// The rxRust operator set, on a [`Stream`](crate::dsl::Stream) and on a pipeline's
/// [`Chain`](crate::dsl::Chain) alike (in the prelude).
pub trait Operators: Pipe {
    /// Passes a value only when it differs (`!=`) from the last value passed; the first
    /// always passes. State: the last value (`Option<T>`).
    fn distinct_until_changed(self) -> Next<Self, DistinctUntilChanged<Out<Self>>>
    where
        Out<Self>: Shape + PartialEq + Clone + fmt::Debug + Send,
    {
        let state = state_fns::<Option<Out<Self>>>();
        let at = At::new::<Out<Self>, Out<Self>>("distinct_until_changed", Some(state), Seed::None);
        self.then(DistinctUntilChanged {
            at,
            _t: PhantomData,
        })
    }

    /// Passes each value not passed before. State: every value passed (`HashSet<T>`), which
    /// grows with the number of distinct values.
    fn distinct(self) -> Next<Self, Distinct<Out<Self>>>
    where
        Out<Self>: Shape + Eq + Hash + Clone + fmt::Debug + Send,
    {
        let state = state_fns::<HashSet<Out<Self>>>();
        let at = At::new::<Out<Self>, Out<Self>>("distinct", Some(state), Seed::None);
        self.then(Distinct {
            at,
            _t: PhantomData,
        })
    }

    /// Drops the first `n` values and passes the rest. State: the number dropped (`u64`);
    /// its signature's seed is `n`, so a reload that changes `n` starts counting again.
    fn skip(self, n: u64) -> Next<Self, Skip<Out<Self>>> {
        let at = At::new::<Out<Self>, Out<Self>>("skip", Some(state_fns::<u64>()), Seed::Count(n));
        self.then(Skip {
            n,
            at,
            _t: PhantomData,
        })
    }

    /// Drops values while `f` returns true, then passes every value (`f` is not called
    /// again). State: whether skipping is over (`bool`).
    fn skip_while<F>(self, f: F) -> Next<Self, SkipWhile<F, Out<Self>>>
    where
        F: Fn(&Out<Self>) -> bool + Send + Sync + 'static,
    {
        let state = state_fns::<bool>();
        let at = At::new::<Out<Self>, Out<Self>>("skip_while", Some(state), Seed::None);
        self.then(SkipWhile {
            f,
            at,
            _t: PhantomData,
        })
    }

    /// Passes values while `f` returns true; the first value for which it returns false is
    /// dropped and completes the pipeline (rxRust's `take_while`, not inclusive). State:
    /// whether it completed (`bool`).
    fn take_while<F>(self, f: F) -> Next<Self, TakeWhile<F, Out<Self>>>
    where
        F: Fn(&Out<Self>) -> bool + Send + Sync + 'static,
    {
        let state = state_fns::<bool>();
        let at = At::new::<Out<Self>, Out<Self>>("take_while", Some(state), Seed::None);
        self.then(TakeWhile {
            f,
            at,
            _t: PhantomData,
        })
    }

    /// Passes the first value, then completes the pipeline: `take(1)`. On a source that
    /// completes empty it emits nothing, as rxRust's `first` does; RxJS's would error with
    /// `EmptyError`, which a pipeline has no channel for (use `default_if_empty` before it to
    /// get a value either way). State: whether it passed its value (`bool`).
    fn first(self) -> Next<Self, First<Out<Self>>> {
        let at = At::new::<Out<Self>, Out<Self>>("first", Some(state_fns::<bool>()), Seed::None);
        self.then(First {
            at,
            _t: PhantomData,
        })
    }

    /// Emits the last `n` values, in order, when the pipeline completes (the source ended or
    /// an operator upstream, such as a `take`, completed it); `n = 0` emits nothing. State:
    /// those values (`VecDeque<T>`, moved out as they are emitted); its signature's seed is
    /// `n`, so a reload that changes `n` empties it.
    fn take_last(self, n: u64) -> Next<Self, TakeLast<Out<Self>>>
    where
        Out<Self>: Shape + fmt::Debug + Send,
    {
        let state = state_fns_uncloned::<VecDeque<Out<Self>>>();
        let at = At::new::<Out<Self>, Out<Self>>("take_last", Some(state), Seed::Count(n));
        self.then(TakeLast {
            n,
            at,
            _t: PhantomData,
        })
    }

    /// Emits the last value when the pipeline completes; nothing if there was none (as
    /// rxRust's `last`; RxJS's would error, see [`Operators::first`]). State: the last value
    /// (`Option<T>`).
    fn last(self) -> Next<Self, Last<Out<Self>>>
    where
        Out<Self>: Shape + fmt::Debug + Send,
    {
        let state = state_fns_uncloned::<Option<Out<Self>>>();
        let at = At::new::<Out<Self>, Out<Self>>("last", Some(state), Seed::None);
        self.then(Last {
            at,
            _t: PhantomData,
        })
    }

    /// Emits each value paired with the one before it, `(previous, current)`, from the
    /// second value on. State: the previous value (`Option<T>`).
    fn pairwise(self) -> Next<Self, Pairwise<Out<Self>>>
    where
        Out<Self>: Shape + Clone + fmt::Debug + Send,
    {
        let state = state_fns::<Option<Out<Self>>>();
        let at = At::new::<Out<Self>, (Out<Self>, Out<Self>)>("pairwise", Some(state), Seed::None);
        self.then(Pairwise {
            at,
            _t: PhantomData,
        })
    }

    /// Emits a clone of `v` when the pipeline starts, before the source's first value, then
    /// passes the source's values. No state; its signature's seed is `v`'s Debug text.
    ///
    /// "Starts" is when the host starts the pipeline's source (at its first load, or when a
    /// reload restarts it because its source changed). A reload that adds a `start_with` to
    /// a pipeline already running, or changes its value, emits nothing: that stream has
    /// started, as an Rx `startWith` acts only on subscription.
    fn start_with(self, v: Out<Self>) -> Next<Self, StartWith<Out<Self>>>
    where
        Out<Self>: Clone + fmt::Debug + Send + Sync,
    {
        let at = At::new::<Out<Self>, Out<Self>>("start_with", None, Seed::Value);
        self.then(StartWith { v, at })
    }

    /// Collects values into `Vec`s of `n` and emits each full one; on completion, emits the
    /// partial one if it holds any value. As in rxRust, `n = 0` emits each value alone.
    /// State: the buffer being filled (`Vec<T>`); its signature's seed is `n`, so a reload
    /// that changes `n` empties it.
    fn buffer_count(self, n: u64) -> Next<Self, BufferCount<Out<Self>>>
    where
        Out<Self>: Shape + fmt::Debug + Send,
    {
        let state = state_fns_uncloned::<Vec<Out<Self>>>();
        let at = At::new::<Out<Self>, Vec<Out<Self>>>("buffer_count", Some(state), Seed::Count(n));
        self.then(BufferCount {
            n,
            at,
            _t: PhantomData,
        })
    }

    /// Transforms each value with `f` and passes what it returns in `Some`; drops the value
    /// on `None`.
    fn filter_map<U: fmt::Debug + 'static, F>(self, f: F) -> Next<Self, FilterMap<F, Out<Self>, U>>
    where
        F: Fn(Out<Self>) -> Option<U> + Send + Sync + 'static,
    {
        let at = At::new::<Out<Self>, U>("filter_map", None, Seed::None);
        self.then(FilterMap {
            f,
            at,
            _t: PhantomData,
        })
    }

    /// Emits the number of values seen (`u64`) when the pipeline completes; 0 if there were
    /// none. State: the count (`u64`).
    fn count(self) -> Next<Self, Count<Out<Self>>> {
        let at = At::new::<Out<Self>, u64>("count", Some(state_fns::<u64>()), Seed::None);
        self.then(Count {
            at,
            _t: PhantomData,
        })
    }

    /// Passes every value; if none passed when the pipeline completes, emits a clone of `v`.
    /// State: whether a value passed (`bool`).
    ///
    /// Unlike the other operators' arguments, `v` is not part of the signature's seed: the
    /// state does not depend on it, and a reload that only changes `v` must not forget that
    /// values passed (the pipeline would then emit the default as if it had been empty).
    fn default_if_empty(self, v: Out<Self>) -> Next<Self, DefaultIfEmpty<Out<Self>>>
    where
        Out<Self>: Clone + Send + Sync,
    {
        let state = state_fns::<bool>();
        let at = At::new::<Out<Self>, Out<Self>>("default_if_empty", Some(state), Seed::None);
        self.then(DefaultIfEmpty { v, at })
    }

    /// Passes every item of what `f` returns for each value (anything `IntoIterator`: a
    /// `Vec`, an `Option`, a range, an iterator), in order, as `Iterator::flat_map` does. It
    /// stops iterating as soon as the pipeline completes downstream (a `take`).
    ///
    /// Unlike rxRust's `flat_map`, whose inner values are observables, the inner values are
    /// iterated synchronously: the order is always the one of a concatenation.
    fn flat_map<I, F>(self, f: F) -> Next<Self, FlatMap<F, Out<Self>, I>>
    where
        I: IntoIterator + 'static,
        I::Item: fmt::Debug + 'static,
        F: Fn(Out<Self>) -> I + Send + Sync + 'static,
    {
        let at = At::new::<Out<Self>, I::Item>("flat_map", None, Seed::None);
        self.then(FlatMap {
            f,
            at,
            _t: PhantomData,
        })
    }
}

impl<P: Pipe> Operators for P {}

//! Time operators: `debounce_ms`, `throttle_ms`, `delay_ms`, `buffer_time_ms`.
//!
//! They run on the host's timers, never on a thread of their own: an operator that wants to
//! act later asks the host for a wake at a deadline ([`Cx::schedule`]), and the host, when
//! the runtime's clock ([`Cx::now`], the system's or a virtual one) reaches it, resumes the
//! chain at that operator ([`Op::wake`]), so what it emits runs through the rest of the chain
//! as any value does.
//!
//! **Everything time-related is state.** A pending debounced value and its deadline, a
//! `delay` queue with each value's deadline, a time buffer and its next boundary live in the
//! operator's slot, owned by the host, like a `scan` total. The host keys its timers by the
//! operator's track, so a reload that keeps the operator's signature keeps both: a debounce
//! pending when the reload lands fires at its original deadline, through the new code
//! downstream of it. The duration is the signature's seed: a reload that changes it resets
//! the operator (its pending values are dropped, and the reload says so).
//!
//! Wakes can be late (a busy thread) or stale (a timer asked for by a state that was since
//! reset): each operator compares its own deadlines with the clock when woken, and keeps at
//! most one timer outstanding (`armed`, the deadline of the one it asked for), so a fast
//! source does not fill the host's timer heap.
//!
//! Semantics are rxRust 1.0's, checked differentially under a virtual clock by
//! `plugin-api/tests/differential_time.rs`.

use core::fmt;
use core::marker::PhantomData;
use std::collections::VecDeque;

use crate::dsl::{
    At, Binder, Cx, Flow, Next, Observer, Op, Out, Pipe, Seed, Tally, state_fns_uncloned,
};
use crate::shape::Shape;

/// No deadline (no timer outstanding, nothing scheduled).
const NEVER: u64 = u64::MAX;

fn nanos(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

/// Asks for a wake at `want` unless one at or before it is outstanding.
#[inline]
fn arm(cx: &Cx<'_>, op: u32, armed: &mut u64, want: u64) {
    if want < *armed {
        cx.schedule(op, want);
        *armed = want;
    }
}

/// A wake at `now` consumed the outstanding timer if it was due.
#[inline]
fn disarm(armed: &mut u64, now: u64) {
    if now >= *armed {
        *armed = NEVER;
    }
}

/// `debounce_ms(ms)`: state `(Option<T>, u64, u64)`: the pending value, its deadline, and the
/// outstanding timer.
pub struct Debounce<T> {
    period: u64,
    at: At,
    _t: PhantomData<fn(T)>,
}

type DebounceState<T> = (Option<T>, u64, u64);

impl<T: 'static> Op<T> for Debounce<T> {
    type Out = T;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline]
    fn push<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, x: T, _k: &mut K) -> Flow {
        // SAFETY: the host seeded this slot with a `DebounceState<T>` (fingerprint-checked)
        // and only this operator touches it.
        let s = unsafe { &mut *cx.state::<DebounceState<T>>(self.at.op) };
        let due = cx.now().saturating_add(self.period);
        // Replaced, then dropped: the slot holds a value even if the drop panics.
        drop(s.0.replace(x));
        s.1 = due;
        arm(cx, self.at.op, &mut s.2, due);
        Flow::Continue
    }
    fn wake<C: Tally, K: Observer<T>>(
        &self,
        cx: &Cx<'_>,
        _inner: Option<&mut crate::abi::InnerCall>,
        k: &mut K,
    ) -> Flow {
        // SAFETY: as in `push`.
        let s = unsafe { &mut *cx.state::<DebounceState<T>>(self.at.op) };
        let now = cx.now();
        disarm(&mut s.2, now);
        if s.0.is_none() {
            return Flow::Continue;
        }
        if now >= s.1 {
            let x = s.0.take().expect("checked above");
            return k.next(x);
        }
        // A later value moved the deadline.
        arm(cx, self.at.op, &mut s.2, s.1);
        Flow::Continue
    }
    fn complete<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        // SAFETY: as in `push`.
        let s = unsafe { &mut *cx.state::<DebounceState<T>>(self.at.op) };
        // As rxRust and RxJS: the pending value goes out at once, then the completion.
        if let Some(x) = s.0.take()
            && k.next(x) == Flow::Complete
        {
            return Flow::Complete;
        }
        k.complete()
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for the state.
        unsafe { dst.cast::<DebounceState<T>>().write((None, NEVER, NEVER)) }
    }
}

/// `throttle_ms(ms)`: state `u64`, the end of the current window (0: none yet).
pub struct Throttle<T> {
    period: u64,
    at: At,
    _t: PhantomData<fn(T)>,
}

impl<T: 'static> Op<T> for Throttle<T> {
    type Out = T;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline]
    fn push<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, x: T, k: &mut K) -> Flow {
        // SAFETY: a seeded `(u64, bool)`, touched only by this operator.
        let (until, open) = unsafe { &mut *cx.state::<(u64, bool)>(self.at.op) };
        let now = cx.now();
        if *open && now < *until {
            return Flow::Continue;
        }
        *open = true;
        *until = now.saturating_add(self.period);
        k.next(x)
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for a `(u64, bool)`.
        unsafe { dst.cast::<(u64, bool)>().write((0, false)) }
    }
}

/// `delay_ms(ms)`: state `(VecDeque<(u64, T)>, u64, u64)`: the values waiting with their
/// deadlines, the deadline of the completion (if the source completed), and the outstanding
/// timer.
pub struct Delay<T> {
    period: u64,
    at: At,
    _t: PhantomData<fn(T)>,
}

type DelayState<T> = (VecDeque<(u64, T)>, u64, u64);

impl<T: 'static> Op<T> for Delay<T> {
    type Out = T;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline]
    fn push<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, x: T, _k: &mut K) -> Flow {
        // SAFETY: a seeded `DelayState<T>`, touched only by this operator.
        let s = unsafe { &mut *cx.state::<DelayState<T>>(self.at.op) };
        let due = cx.now().saturating_add(self.period);
        s.0.push_back((due, x));
        arm(cx, self.at.op, &mut s.2, due);
        Flow::Continue
    }
    fn wake<C: Tally, K: Observer<T>>(
        &self,
        cx: &Cx<'_>,
        _inner: Option<&mut crate::abi::InnerCall>,
        k: &mut K,
    ) -> Flow {
        // SAFETY: as in `push`.
        let s = unsafe { &mut *cx.state::<DelayState<T>>(self.at.op) };
        let now = cx.now();
        disarm(&mut s.2, now);
        // Deadlines only grow (the clock does not go back), so the queue is in order.
        while let Some(&(due, _)) = s.0.front() {
            if due > now {
                break;
            }
            let (_, x) = s.0.pop_front().expect("peeked");
            if k.next(x) == Flow::Complete {
                return Flow::Complete;
            }
        }
        if s.0.is_empty() && s.1 <= now {
            // The completion, delayed like the values before it (rxRust).
            s.1 = NEVER;
            return k.complete();
        }
        let next = s.0.front().map_or(s.1, |&(due, _)| due).min(s.1);
        arm(cx, self.at.op, &mut s.2, next);
        Flow::Continue
    }
    fn complete<C: Tally, K: Observer<T>>(&self, cx: &Cx<'_>, _k: &mut K) -> Flow {
        // SAFETY: as in `push`.
        let s = unsafe { &mut *cx.state::<DelayState<T>>(self.at.op) };
        let due = cx.now().saturating_add(self.period);
        s.1 = due;
        arm(cx, self.at.op, &mut s.2, due);
        // Not complete yet: the completion comes from `wake`, after the values.
        Flow::Continue
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for the state.
        unsafe {
            dst.cast::<DelayState<T>>()
                .write((VecDeque::new(), NEVER, NEVER))
        }
    }
}

/// `buffer_time_ms(ms)`: state `(Vec<T>, u64, u64)`: the buffer, the end of the current
/// period (`u64::MAX` until it starts), and the outstanding timer.
pub struct BufferTime<T> {
    period: u64,
    at: At,
    _t: PhantomData<fn(T)>,
}

type BufferTimeState<T> = (Vec<T>, u64, u64);

impl<T: 'static> BufferTime<T> {
    /// Starts the periods at `now` if they have not started (at subscription, or at the
    /// first value of an operator a reload added).
    fn begin(&self, cx: &Cx<'_>, s: &mut BufferTimeState<T>) {
        if s.1 == NEVER {
            s.1 = cx.now().saturating_add(self.period.max(1));
            arm(cx, self.at.op, &mut s.2, s.1);
        }
    }
}

impl<T: 'static> Op<T> for BufferTime<T> {
    type Out = Vec<T>;
    fn index(&self) -> u32 {
        self.at.op
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        b.op(&mut self.at);
    }
    #[inline]
    fn push<C: Tally, K: Observer<Vec<T>>>(&self, cx: &Cx<'_>, x: T, _k: &mut K) -> Flow {
        // SAFETY: a seeded `BufferTimeState<T>`, touched only by this operator.
        let s = unsafe { &mut *cx.state::<BufferTimeState<T>>(self.at.op) };
        s.0.push(x);
        self.begin(cx, s);
        Flow::Continue
    }
    fn start<C: Tally, K: Observer<Vec<T>>>(&self, cx: &Cx<'_>, _k: &mut K) -> Flow {
        // SAFETY: as in `push`.
        let s = unsafe { &mut *cx.state::<BufferTimeState<T>>(self.at.op) };
        self.begin(cx, s);
        Flow::Continue
    }
    fn wake<C: Tally, K: Observer<Vec<T>>>(
        &self,
        cx: &Cx<'_>,
        _inner: Option<&mut crate::abi::InnerCall>,
        k: &mut K,
    ) -> Flow {
        // SAFETY: as in `push`.
        let s = unsafe { &mut *cx.state::<BufferTimeState<T>>(self.at.op) };
        let now = cx.now();
        disarm(&mut s.2, now);
        if s.1 == NEVER {
            return Flow::Continue;
        }
        let mut flow = Flow::Continue;
        if now >= s.1 {
            // The next period starts where this one ended (a late wake skips the periods
            // it missed: one buffer for all of them).
            let period = self.period.max(1);
            let behind = (now - s.1) / period;
            s.1 = s.1.saturating_add(period.saturating_mul(behind + 1));
            // As rxRust: an empty buffer is not emitted.
            if !s.0.is_empty() {
                flow = k.next(core::mem::take(&mut s.0));
            }
        }
        if flow == Flow::Continue {
            arm(cx, self.at.op, &mut s.2, s.1);
        }
        flow
    }
    fn complete<C: Tally, K: Observer<Vec<T>>>(&self, cx: &Cx<'_>, k: &mut K) -> Flow {
        // SAFETY: as in `push`.
        let s = unsafe { &mut *cx.state::<BufferTimeState<T>>(self.at.op) };
        s.1 = NEVER;
        if !s.0.is_empty() && k.next(core::mem::take(&mut s.0)) == Flow::Complete {
            return Flow::Complete;
        }
        k.complete()
    }
    unsafe fn init(&self, dst: *mut u8) {
        // SAFETY: the caller guarantees `dst` is valid and aligned for the state.
        unsafe {
            dst.cast::<BufferTimeState<T>>()
                .write((Vec::new(), NEVER, NEVER))
        }
    }
}

/// The time operators, on every stream and pipeline. Each runs on the host's timers (see
/// the module documentation): what it holds, values and deadlines alike, is its state,
/// kept across a reload that keeps its signature; the duration is the signature's seed.
pub trait TimeOperators: Pipe {
    /// Emits a value once `ms` milliseconds passed without another; each value restarts
    /// the wait. On completion the pending value is emitted at once, then the completion
    /// (rxRust, RxJS). State: the pending value, its deadline and the outstanding timer.
    fn debounce_ms(self, ms: u64) -> Next<Self, Debounce<Out<Self>>>
    where
        Out<Self>: Shape + fmt::Debug + Send,
    {
        let state = state_fns_uncloned::<DebounceState<Out<Self>>>();
        let at = At::new::<Out<Self>, Out<Self>>("debounce_ms", Some(state), Seed::Count(ms));
        self.then(Debounce {
            period: nanos(ms),
            at,
            _t: PhantomData,
        })
    }

    /// Emits a value, then drops every value for `ms` milliseconds (a leading throttle:
    /// RxJS's `throttleTime` default, rxRust's `throttle_time` with
    /// `ThrottleEdge::leading()`). State: the end of the current window.
    fn throttle_ms(self, ms: u64) -> Next<Self, Throttle<Out<Self>>> {
        let state = state_fns_uncloned::<(u64, bool)>();
        let at = At::new::<Out<Self>, Out<Self>>("throttle_ms", Some(state), Seed::Count(ms));
        self.then(Throttle {
            period: nanos(ms),
            at,
            _t: PhantomData,
        })
    }

    /// Emits each value `ms` milliseconds after it came, and the completion `ms` after the
    /// source's (rxRust). State: the values waiting, with their deadlines.
    fn delay_ms(self, ms: u64) -> Next<Self, Delay<Out<Self>>>
    where
        Out<Self>: Shape + fmt::Debug + Send,
    {
        let state = state_fns_uncloned::<DelayState<Out<Self>>>();
        let at = At::new::<Out<Self>, Out<Self>>("delay_ms", Some(state), Seed::Count(ms));
        self.then(Delay {
            period: nanos(ms),
            at,
            _t: PhantomData,
        })
    }

    /// Collects values for `ms` milliseconds at a time (periods from subscription) and
    /// emits each period's values as one `Vec`; an empty period emits nothing (rxRust; RxJS
    /// emits `[]`). On completion the partial buffer is emitted, if any. State: the buffer
    /// and the end of the current period.
    fn buffer_time_ms(self, ms: u64) -> Next<Self, BufferTime<Out<Self>>>
    where
        Out<Self>: Shape + fmt::Debug + Send,
    {
        let state = state_fns_uncloned::<BufferTimeState<Out<Self>>>();
        let at =
            At::new::<Out<Self>, Vec<Out<Self>>>("buffer_time_ms", Some(state), Seed::Count(ms));
        self.then(BufferTime {
            period: nanos(ms),
            at,
            _t: PhantomData,
        })
    }
}

impl<P: Pipe> TimeOperators for P {}

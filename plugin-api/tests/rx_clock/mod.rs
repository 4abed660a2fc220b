//! A virtual-time scheduler for rxRust 1.0.0-rc.6, for the time operators' differential tests
//! and benchmarks (`bench/benches/summary.rs` includes this file).
//!
//! rxRust's own `TestScheduler` is compiled only into rxRust's own tests (`#[cfg(test)]`), so
//! this is a port of it: a thread-local clock that moves only when told, and a queue of
//! tasks run in order of their deadline, ties in the order they were scheduled (FIFO), each
//! with the clock set to its deadline, exactly as `TestScheduler::advance_by` runs them. A
//! task that sleeps (rxRust's `TaskState::Sleeping(d)`, `buffer_time`'s period) is queued
//! again at its deadline plus `d`; one that yields, at the same time after the others.
//!
//! Cancellation: rxRust cancels a task (a debounce's previous timer) by closing the
//! `TaskHandle` its scheduler returned, and `TaskHandle` can only be made open inside rxRust,
//! by its own schedulers. Each task here therefore gets its handle from rxRust's
//! `LocalScheduler`, which spawns a never-polled placeholder future on a tokio `LocalSet`
//! that is never run (the same `spawn_local` call rxRust's `LocalScheduler` makes for each
//! task it schedules); the queue skips a task whose handle was closed, and closes it when
//! the task finishes.

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rxrust::scheduler::tokio::task::LocalSet;
use rxrust::scheduler::{LocalScheduler, Schedulable, Scheduler, SleepProvider, TaskHandle};
use rxrust::subscription::Subscription;

/// rxRust's local context on the virtual clock: `Ctx::subject::<u64, Infallible>()`.
pub type Ctx<T> = rxrust::context::LocalCtx<T, VirtualScheduler>;

struct Entry {
    at: Duration,
    id: u64,
    future: Pin<Box<dyn Future<Output = ()>>>,
    handle: TaskHandle,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.id) == (other.at, other.id)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.id).cmp(&(other.at, other.id))
    }
}

#[derive(Default)]
struct State {
    now: Duration,
    /// Tasks scheduled since `init` (a sleeping task queued again is not counted again).
    scheduled: u64,
    next_id: u64,
    queue: BinaryHeap<Reverse<Entry>>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
    /// Where the placeholders behind the tasks' handles are spawned (never run).
    static HANDLES: RefCell<LocalSet> = RefCell::new(LocalSet::new());
    /// The deadline a sleeping task asked for while it was polled.
    static SLEEP: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// The virtual clock's scheduler (zero-sized: the state is the thread's).
#[derive(Clone, Copy, Default)]
pub struct VirtualScheduler;

/// Resets the clock to zero and forgets every task (call before each run).
pub fn init() {
    let old = STATE.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let set = HANDLES.with(|h| std::mem::replace(&mut *h.borrow_mut(), LocalSet::new()));
    // Dropped outside the borrows: a task's drop may touch the scheduler.
    drop(old);
    drop(set);
}

/// The virtual clock.
pub fn now() -> Duration {
    STATE.with(|s| s.borrow().now)
}

/// How many tasks were scheduled since [`init`] (each with its handle).
pub fn scheduled() -> u64 {
    STATE.with(|s| s.borrow().scheduled)
}

/// How many tasks are queued (cancelled ones included until their deadline).
pub fn pending() -> usize {
    STATE.with(|s| s.borrow().queue.len())
}

fn push(at: Duration, future: Pin<Box<dyn Future<Output = ()>>>, handle: TaskHandle) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let id = s.next_id;
        s.next_id += 1;
        s.queue.push(Reverse(Entry {
            at,
            id,
            future,
            handle,
        }));
    });
}

/// Moves the clock to `t`, running every task due by then, earliest first (ties: first
/// scheduled first), each with the clock at its deadline (`TestScheduler::advance_by`).
pub fn advance_to(t: Duration) {
    loop {
        let due = STATE.with(|s| {
            let mut s = s.borrow_mut();
            if s.queue.peek().is_none_or(|e| e.0.at > t) {
                return None;
            }
            let Reverse(e) = s.queue.pop().expect("peeked");
            s.now = s.now.max(e.at);
            Some(e)
        });
        let Some(mut e) = due else { break };
        if e.handle.is_closed() {
            continue;
        }
        SLEEP.with(|c| c.set(None));
        let mut cx = Context::from_waker(Waker::noop());
        match e.future.as_mut().poll(&mut cx) {
            Poll::Ready(()) => e.handle.unsubscribe(),
            Poll::Pending => {
                let at = SLEEP.with(Cell::take).unwrap_or(e.at);
                push(at, e.future, e.handle);
            }
        }
    }
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.now = s.now.max(t);
    });
}

/// An open handle, from rxRust's own scheduler (see the module documentation).
pub fn live_handle() -> TaskHandle {
    HANDLES.with(|h| {
        let set = h.borrow();
        let _inside = set.enter();
        LocalScheduler.schedule(std::future::pending::<()>(), None)
    })
}

/// A virtual sleep: ready once the clock reaches its deadline.
pub struct Sleep {
    at: Duration,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if now() >= self.at {
            Poll::Ready(())
        } else {
            SLEEP.with(|c| c.set(Some(self.at)));
            Poll::Pending
        }
    }
}

impl SleepProvider for VirtualScheduler {
    type SleepFuture = Sleep;
    fn sleep(&self, duration: Duration) -> Sleep {
        Sleep {
            at: now() + duration,
        }
    }
}

impl<S> Scheduler<S> for VirtualScheduler
where
    S: Schedulable<VirtualScheduler> + 'static,
    S::Future: 'static,
{
    fn schedule(&self, source: S, delay: Option<Duration>) -> TaskHandle {
        let future = Box::pin(source.into_future(self));
        let handle = live_handle();
        STATE.with(|s| s.borrow_mut().scheduled += 1);
        push(now() + delay.unwrap_or_default(), future, handle.clone());
        handle
    }
}

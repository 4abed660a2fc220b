//! The runtime's clock: the system's, or a virtual one that tests (and, later, replays)
//! drive by hand.
//!
//! Every deadline of a pipeline thread (an interval's next tick) is computed from
//! [`Clock::now`]. Under a [`VirtualClock`] time stands still until
//! [`VirtualClock::advance`] moves it; then every pipeline thread wakes, runs what became due
//! in deadline order, and reports itself idle, so [`VirtualClock::settle`] can wait until
//! everything due by the new time has run: a test then knows exactly what was emitted, with
//! no sleep standing in for synchronisation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::runtime::Msg;

/// What a registered thread has seen before it first reports itself idle.
const NOT_IDLE_YET: u64 = u64::MAX;

/// Where the runtime reads the time.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The system's monotonic clock: deadlines are waited for.
    #[default]
    System,
    /// A clock that moves only when told to.
    Virtual(Arc<VirtualClock>),
}

/// The instant every clock counts nanoseconds from ([`Clock::now_ns`]): fixed at its first
/// use, for the life of the process, so a deadline an operator keeps in its state means the
/// same time to every version of the code.
fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// `t` as nanoseconds since the origin (0 for an instant before it).
pub fn to_ns(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(origin()).as_nanos()).unwrap_or(u64::MAX)
}

/// The instant `ns` nanoseconds after the origin, or `None` past `Instant`'s range.
pub fn from_ns(ns: u64) -> Option<Instant> {
    origin().checked_add(Duration::from_nanos(ns))
}

impl Clock {
    /// The current time in nanoseconds since the origin: what the plugin's time operators
    /// read ([`plugin_api::abi::EmitCx::now`]).
    pub fn now_ns(&self) -> u64 {
        to_ns(self.now())
    }

    /// A new virtual clock, and the handle that drives it.
    pub fn virtual_clock() -> (Clock, Arc<VirtualClock>) {
        let v = Arc::new(VirtualClock::new());
        (Clock::Virtual(v.clone()), v)
    }

    /// The current time.
    pub fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            Clock::Virtual(v) => v.now(),
        }
    }
}

/// A pipeline thread's registration with a [`VirtualClock`]; unregisters when dropped.
#[derive(Debug)]
pub struct Ticket {
    clock: Arc<VirtualClock>,
    seen: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
    pokes: Arc<AtomicU64>,
}

impl Ticket {
    /// The time the thread is about to run to: read before it looks at its deadlines.
    pub fn epoch(&self) -> u64 {
        self.clock.state().epoch
    }

    /// The thread ran everything due up to the time of `epoch` and is about to wait.
    pub fn idle(&self, epoch: u64) {
        self.idle_until(epoch, None, 0);
    }

    /// [`Ticket::idle`], saying when the thread's next deadline is (for
    /// [`VirtualClock::next_deadline`]) and how many [`VirtualClock::poke`]s it has handled
    /// since it last said.
    pub fn idle_until(&self, epoch: u64, next: Option<Instant>, handled: u64) {
        let _s = self.clock.state();
        let next = next.map_or(u64::MAX, to_ns);
        self.next.store(next, Ordering::Release);
        self.pokes.fetch_sub(handled, Ordering::AcqRel);
        self.seen.store(epoch, Ordering::Release);
        self.clock.changed.notify_all();
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.clock.state();
        s.threads.retain(|t| !Arc::ptr_eq(&t.seen, &self.seen));
        self.clock.changed.notify_all();
    }
}

struct VState {
    now: Duration,
    /// Bumped by every `advance` and `release`.
    epoch: u64,
    /// Reloads reported and not yet in effect ([`VirtualClock::hold`]).
    held: usize,
    threads: Vec<Registered>,
}

/// A pipeline thread registered with a [`VirtualClock`].
struct Registered {
    inbox: Sender<Msg>,
    /// The epoch it last reported itself idle at.
    seen: Arc<AtomicU64>,
    /// Its next deadline then, in nanoseconds since the origin (`u64::MAX`: none).
    next: Arc<AtomicU64>,
    /// Pokes sent to it and not handled yet ([`VirtualClock::poke`]).
    pokes: Arc<AtomicU64>,
}

/// Virtual time: starts at an arbitrary instant and moves only by [`VirtualClock::advance`].
pub struct VirtualClock {
    base: Instant,
    state: Mutex<VState>,
    changed: Condvar,
}

impl std::fmt::Debug for VirtualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualClock")
            .field("elapsed", &self.state().now)
            .finish()
    }
}

impl Default for VirtualClock {
    fn default() -> VirtualClock {
        VirtualClock::new()
    }
}

impl VirtualClock {
    /// A clock at its start.
    pub fn new() -> VirtualClock {
        // Fix the origin first, so the virtual time never reads as before it.
        let _ = origin();
        VirtualClock {
            base: Instant::now(),
            state: Mutex::new(VState {
                now: Duration::ZERO,
                epoch: 0,
                held: 0,
                threads: Vec::new(),
            }),
            changed: Condvar::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, VState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.base + self.state().now
    }

    /// How far the clock has moved since it started.
    pub fn elapsed(&self) -> Duration {
        self.state().now
    }

    /// Registers a pipeline thread woken through `inbox` whenever the clock moves. Until
    /// it first reports itself idle, [`VirtualClock::settle`] waits for it.
    /// `pokes` counts the [`VirtualClock::poke`]s sent to it and not handled yet.
    pub fn register(self: &Arc<Self>, inbox: Sender<Msg>, pokes: Arc<AtomicU64>) -> Ticket {
        let seen = Arc::new(AtomicU64::new(NOT_IDLE_YET));
        let next = Arc::new(AtomicU64::new(u64::MAX));
        self.state().threads.push(Registered {
            inbox,
            seen: seen.clone(),
            next: next.clone(),
            pokes: pokes.clone(),
        });
        Ticket {
            clock: self.clone(),
            seen,
            next,
            pokes,
        }
    }

    /// Another thread gave the pipeline whose inbox is `inbox` work for its own thread (a
    /// subject delivery that set a timer): `settle` waits until that thread has handled the
    /// `Msg::Poke` this sends (`pokes` is the pipeline's count given to `register`).
    pub fn poke(&self, inbox: &Sender<Msg>, pokes: &AtomicU64) {
        pokes.fetch_add(1, Ordering::AcqRel);
        if inbox.send(Msg::Poke).is_err() {
            pokes.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The earliest deadline the registered threads reported when they last went idle
    /// (after a `settle`: what is due next), if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let s = self.state();
        let ns = s
            .threads
            .iter()
            .map(|t| t.next.load(Ordering::Acquire))
            .min()
            .filter(|ns| *ns != u64::MAX)?;
        from_ns(ns)
    }

    /// Moves the clock forward by `by` and wakes every pipeline thread.
    pub fn advance(&self, by: Duration) {
        let mut s = self.state();
        s.now += by;
        s.epoch += 1;
        for t in &s.threads {
            let _ = t.inbox.send(Msg::Wake);
        }
    }

    /// A reload staged new code that its pipelines take only once it is launched (after it
    /// was reported): until the matching [`VirtualClock::release`], `settle` waits, so a
    /// test that saw the reload and settles knows the pipelines run the new code.
    pub fn hold(&self) {
        self.state().held += 1;
    }

    /// The staged code of a [`VirtualClock::hold`] was published: every pipeline thread is
    /// woken to take it, and counts as busy until it waits again.
    pub fn release(&self) {
        let mut s = self.state();
        s.held = s.held.saturating_sub(1);
        s.epoch += 1;
        for t in &s.threads {
            let _ = t.inbox.send(Msg::Wake);
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Waits until every registered pipeline thread has run what was due by the current
    /// time and waits again, and no reload is staged but not launched; false if that took longer than `timeout` (a thread busy or
    /// stuck in plugin code).
    pub fn settle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.state();
        loop {
            let epoch = s.epoch;
            if s.held == 0
                && s.threads.iter().all(|t| {
                    let seen = t.seen.load(Ordering::Acquire);
                    seen != NOT_IDLE_YET && seen >= epoch && t.pokes.load(Ordering::Acquire) == 0
                })
            {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

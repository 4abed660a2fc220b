//! Deliveries that would wait for each other forever.
//!
//! A delivery into a subject's subscriber locks the subscriber's driver on the publisher's
//! thread while the publisher's own driver stays locked (delivery is synchronous). Two
//! threads each holding a driver the other's delivery needs would wait forever. Loops
//! through subjects are refused where they can be seen: at registration (the pipelines' own
//! code), and when an inner subscription starts or is re-projected (`Subjects::enter_inner`).
//! What is left is a loop that no single version closes: one pipeline still running its old
//! code while another already runs its new code, for the instant of a reload. That one is
//! caught here, when a delivery is about to wait: on one thread (the lock is held by this
//! thread: its word is this thread's tag, a cycle of one) or across several.
//!
//! A delivery that finds the driver it needs locked registers what it waits for in one
//! table, after checking under the table's lock that waiting would not close a cycle (the
//! driver's holder waits for a driver whose holder waits ... for one this thread holds).
//! Of the threads whose waits would form a cycle, the last to register sees every other
//! step of it: the drivers each thread holds carry its tag (a [`DriverLock`]'s word is its
//! holder's tag, set when it was taken, before that thread registered its own wait under the
//! same lock), and a thread that waits holds what it holds until its wait ends. That thread
//! is refused (its value is dropped with an error), it unwinds its own delivery, and the
//! others go on. (A thread that got its lock and has not yet taken its wait out of the table
//! leaves an entry whose target's word is its own tag: the walk goes round it until its
//! bound and finds no cycle, rightly, as that thread runs.) An uncontended lock costs one
//! compare-exchange; the table is touched only by a delivery that would block.
//!
//! The driver's lock is [`DriverLock`] (below), the one lock of the host written here rather
//! than taken from `std`.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::thread_tag;

/// A lock that records which thread holds it: its word is the holder's
/// [`thread_tag`] (0 when free), so taking it marks it and letting go clears the mark.
pub(crate) trait Held: Send + Sync {
    fn holder(&self) -> &AtomicUsize;
}

/// The lock of a driver shared between its pipeline's thread and the publishers that deliver
/// into it (a subject reader). Its word is the holder's thread tag: taking it is one
/// compare-exchange (0 to the tag), letting go one plain store, and the mark a delivery's
/// cycle check reads (who holds this driver) is that word, set and cleared with the lock.
/// A `std::sync::Mutex` and a separate mark cost two locked read-modify-writes and two
/// stores per delivery (BENCHMARKS.md, 11).
///
/// A thread that finds it taken spins a little, then parks until the holder lets go. The
/// holder wakes parked threads when it sees one registered; the one race this leaves (a
/// thread registering at the instant the holder lets go, the holder's read of the count
/// passing its store of the word) ends at the park's timeout, [`PARK`]: a late wake, never a
/// lost one. A panic while it is held lets go of it (the guard drops): there is no poisoning,
/// as the host took every `Mutex` poisoned or not.
pub struct DriverLock<T> {
    holder: AtomicUsize,
    /// Threads parked (or about to park) waiting for it.
    waiters: AtomicUsize,
    parked: Mutex<Vec<std::thread::Thread>>,
    /// How long a waiting thread parks before it looks again, woken or not ([`PARK`]).
    park: Duration,
    /// How many times a thread parked waiting for it (a test tells a wake from no park).
    #[cfg(test)]
    parks: AtomicUsize,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through a `Locked` guard, and at most one guard exists at
// a time: one is made only by the compare-exchange of the word from 0 to a tag, and the word
// goes back to 0 only when that guard drops. The value moves between threads with the lock
// (`T: Send`); the word's acquire and release order its accesses.
unsafe impl<T: Send> Send for DriverLock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for DriverLock<T> {}

impl<T: Send> Held for DriverLock<T> {
    fn holder(&self) -> &AtomicUsize {
        &self.holder
    }
}

/// How long a waiting thread parks before it looks at the lock again, woken or not.
pub(crate) const PARK: Duration = Duration::from_millis(1);

impl<T> DriverLock<T> {
    /// A free lock around `value`.
    pub fn new(value: T) -> DriverLock<T> {
        DriverLock {
            holder: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            parked: Mutex::new(Vec::new()),
            park: PARK,
            #[cfg(test)]
            parks: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// A free lock whose waiters park for `park` at a time (a test's, to tell a wake from a
    /// timeout).
    #[cfg(test)]
    fn with_park(value: T, park: Duration) -> DriverLock<T> {
        DriverLock {
            park,
            ..DriverLock::new(value)
        }
    }

    /// Takes the lock for this thread, waiting while another holds it. Never call it on a
    /// thread that holds it already (it would wait for itself).
    pub fn lock(&self) -> Locked<'_, T> {
        self.lock_as(thread_tag())
    }

    /// Takes the lock for the thread tagged `tag` (this one), waiting while another holds it.
    #[inline(always)]
    pub(crate) fn lock_as(&self, tag: usize) -> Locked<'_, T> {
        match self.try_lock_as(tag) {
            Some(g) => g,
            None => self.lock_slow(tag),
        }
    }

    /// Takes the lock for the thread tagged `tag` if it is free.
    #[inline(always)]
    pub(crate) fn try_lock_as(&self, tag: usize) -> Option<Locked<'_, T>> {
        debug_assert_ne!(tag, 0, "a thread tag is never 0");
        self.holder
            .compare_exchange(0, tag, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Locked {
                lock: self,
                _not_send: PhantomData,
            })
    }

    /// The tag of the thread holding it, 0 when none does.
    pub(crate) fn held_by(&self) -> usize {
        self.holder.load(Ordering::Relaxed)
    }

    #[cold]
    #[inline(never)]
    fn lock_slow(&self, tag: usize) -> Locked<'_, T> {
        // It would wait for itself forever.
        assert_ne!(
            self.held_by(),
            tag,
            "a driver's lock taken twice by one thread"
        );
        match self.spin_for(tag) {
            Some(g) => g,
            None => self.park_for(tag),
        }
    }

    /// Tries the lock again [`SPINS`] times.
    fn spin_for(&self, tag: usize) -> Option<Locked<'_, T>> {
        (0..SPINS).find_map(|_| {
            std::hint::spin_loop();
            self.try_lock_as(tag)
        })
    }

    /// Waits for the lock parked, until the holder lets go (see the type's doc).
    fn park_for(&self, tag: usize) -> Locked<'_, T> {
        let me = std::thread::current();
        loop {
            // Listed, then counted, before it looks again: a holder letting go after that
            // look sees the count and unparks every listed thread (an unpark before the park
            // makes the park return at once); in the race the type's doc names, the park
            // times out.
            lock_list(&self.parked).push(me.clone());
            self.waiters.fetch_add(1, Ordering::SeqCst);
            let got = self.try_lock_as(tag);
            if got.is_none() {
                #[cfg(test)]
                self.parks.fetch_add(1, Ordering::SeqCst);
                std::thread::park_timeout(self.park);
            }
            self.waiters.fetch_sub(1, Ordering::SeqCst);
            {
                let mut parked = lock_list(&self.parked);
                if let Some(i) = parked.iter().position(|t| t.id() == me.id()) {
                    parked.swap_remove(i);
                }
            }
            if let Some(g) = got.or_else(|| self.try_lock_as(tag)) {
                return g;
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn wake(&self) {
        for t in lock_list(&self.parked).iter() {
            t.unpark();
        }
    }
}

fn lock_list<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A held [`DriverLock`]: the value, for as long as it lives. Dropping it lets go (also when
/// its holder unwinds). It stays on the thread that took it (the lock's word names that
/// thread: moved, it would name the wrong one), and is shared between threads only where the
/// value may be (`T: Sync`), as a `MutexGuard`.
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// let lock = host::runtime::DriverLock::new(0u64);
/// send(lock.lock()); // a guard does not move to another thread
/// ```
///
/// ```compile_fail
/// fn sync<T: Sync>(_: &T) {}
/// let lock = host::runtime::DriverLock::new(std::cell::Cell::new(0u64));
/// sync(&lock.lock()); // nor is it shared when its value may not be
/// ```
pub struct Locked<'a, T> {
    lock: &'a DriverLock<T>,
    _not_send: PhantomData<(&'a mut T, *const ())>,
}

// SAFETY: a shared `Locked` gives only `&T` (through `Deref`), which threads may share when
// `T: Sync`; it is not `Send` (the raw pointer in its marker).
unsafe impl<T: Sync> Sync for Locked<'_, T> {}

impl<T> std::ops::Deref for Locked<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard is the only one (see `DriverLock`'s `Sync`), so nothing else
        // reaches the value while it lives.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> std::ops::DerefMut for Locked<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference through it.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for Locked<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        self.lock.holder.store(0, Ordering::Release);
        if self.lock.waiters.load(Ordering::Relaxed) != 0 {
            self.lock.wake();
        }
    }
}

/// One thread waiting: its tag, and what it waits for.
struct Wait {
    tag: usize,
    target: Arc<dyn Held>,
}

/// The threads waiting now for a lock some delivery needs.
static WAITS: Mutex<Vec<Wait>> = Mutex::new(Vec::new());

/// How many times a thread tries a taken lock again before it parks (or, for a delivery,
/// looks at the table): a lock held for one push is usually free within that.
const SPINS: u32 = 64;

/// Whether thread `tag` waiting for `target` would close a cycle, given who waits for what
/// (`waits`): the number of threads in it, or `None`.
fn cycle(waits: &[Wait], tag: usize, target: &dyn Held) -> Option<usize> {
    let mut holder = target.holder().load(Ordering::Relaxed);
    // A cycle through `tag` has at most one step per waiting thread, and one more.
    for threads in 1..=waits.len() + 1 {
        if holder == tag {
            return Some(threads);
        }
        if holder == 0 {
            return None;
        }
        let w = waits.iter().find(|w| w.tag == holder)?;
        holder = w.target.holder().load(Ordering::Relaxed);
    }
    None
}

/// Locks `lock` for thread `tag`, unless waiting for it would close a cycle of threads each
/// waiting for a lock the next holds: then `Err` with the number of threads in that cycle,
/// and nothing is locked.
#[inline(always)]
pub(crate) fn lock_unless_cycle<T: Send + 'static>(
    lock: &Arc<DriverLock<T>>,
    tag: usize,
) -> Result<Locked<'_, T>, usize> {
    match lock.try_lock_as(tag) {
        Some(g) => Ok(g),
        None => wait_unless_cycle(lock, tag),
    }
}

#[cold]
#[inline(never)]
fn wait_unless_cycle<T: Send + 'static>(
    lock: &Arc<DriverLock<T>>,
    tag: usize,
) -> Result<Locked<'_, T>, usize> {
    // This thread holds it already: a cycle of one, refused without waiting for anything.
    if lock.held_by() == tag {
        return Err(1);
    }
    if let Some(g) = lock.spin_for(tag) {
        return Ok(g);
    }
    {
        let mut waits = WAITS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(threads) = cycle(&waits, tag, &**lock) {
            return Err(threads);
        }
        let target: Arc<dyn Held> = lock.clone();
        waits.push(Wait { tag, target });
    }
    // Spun already: parked at once.
    let g = lock.park_for(tag);
    let mut waits = WAITS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = waits.iter().position(|w| w.tag == tag) {
        waits.swap_remove(i);
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::thread_tag;
    use std::sync::Barrier;
    use std::time::Duration;

    /// A driver's lock, around a count.
    type Cell = DriverLock<u64>;

    /// What a thread did when it asked for the next lock: got it, or was refused (with the
    /// threads in the cycle).
    type Outcome = Result<(), usize>;

    /// Runs `n` threads; thread `i` locks (and marks) cell `i`, then, once all hold theirs,
    /// asks for cell `wants[i]` (if any), adds 1 to it, and lets go of both; a thread that
    /// wants none lets go only once all the others wait in the table. Fails if the threads do
    /// not all end within 10 s (a deadlock).
    fn run(n: usize, wants: &[Option<usize>]) -> Vec<Outcome> {
        let cells: Vec<Arc<Cell>> = (0..n).map(|_| Arc::new(Cell::new(0))).collect();
        let waiting = wants.iter().filter(|w| w.is_some()).count();
        let barrier = Arc::new(Barrier::new(n));
        let (done, results) = std::sync::mpsc::channel();
        for (i, want) in wants.iter().copied().enumerate() {
            let (cells, barrier, done) = (cells.clone(), barrier.clone(), done.clone());
            std::thread::spawn(move || {
                let tag = thread_tag();
                let own = &cells[i];
                let mut g = own.lock_as(tag);
                barrier.wait();
                let outcome = match want {
                    // Holds its lock until every thread that wants one waits in the table, so
                    // that each of them is checked (not handed the lock by its spins).
                    None => {
                        let mine = |w: &Wait| {
                            let at = Arc::as_ptr(&w.target).cast::<()>();
                            cells
                                .iter()
                                .any(|c| std::ptr::eq(Arc::as_ptr(c).cast::<()>(), at))
                        };
                        while WAITS.lock().unwrap().iter().filter(|w| mine(w)).count() < waiting {
                            std::thread::yield_now();
                        }
                        Ok(())
                    }
                    Some(j) => {
                        let other = &cells[j];
                        lock_unless_cycle(other, tag).map(|mut h| {
                            *h += 1;
                        })
                    }
                };
                *g += 1;
                drop(g);
                let _ = done.send((i, tag, outcome));
            });
        }
        let mut out = vec![Ok(()); n];
        let mut tags = Vec::new();
        for _ in 0..n {
            let (i, tag, o) = results
                .recv_timeout(Duration::from_secs(10))
                .expect("threads waiting for each other's locks never ended (a deadlock)");
            out[i] = o;
            tags.push(tag);
        }
        // Each took its wait out of the table when it ended (other tests' may be there).
        let waits = WAITS.lock().unwrap();
        assert!(
            !waits.iter().any(|w| tags.contains(&w.tag)),
            "waits left behind"
        );
        out
    }

    #[test]
    fn the_lock_lets_one_thread_in_at_a_time() {
        // (threads, rounds each, hold the lock across a yield every nth round: parks)
        let cases: &[(usize, u64, u64)] = &[(2, 200_000, 0), (4, 50_000, 0), (4, 20_000, 100)];
        for &(threads, rounds, every) in cases {
            // Short parks: waiting threads come back at once and race for the lock.
            let lock = Arc::new(DriverLock::with_park(0, Duration::from_micros(1)));
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let lock = lock.clone();
                    std::thread::spawn(move || {
                        let tag = thread_tag();
                        for i in 0..rounds {
                            let mut g = lock.lock_as(tag);
                            assert_eq!(lock.held_by(), tag, "the word names the holder");
                            // A read and a later write: two threads inside at once lose counts.
                            let v = std::hint::black_box(*g);
                            if every != 0 && i % every == 0 {
                                std::thread::yield_now();
                            }
                            *g = v + 1;
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let total = threads as u64 * rounds;
            assert_eq!(*lock.lock(), total, "{threads} threads, {rounds} rounds");
            assert_eq!(lock.held_by(), 0);
            assert_eq!(lock.waiters.load(Ordering::Relaxed), 0);
            assert!(lock_list(&lock.parked).is_empty());
        }
    }

    #[test]
    fn a_parked_thread_is_woken_when_the_holder_lets_go() {
        // Parks of a minute: a thread woken only by its park's timeout fails the test.
        let lock = Arc::new(DriverLock::with_park(0u64, Duration::from_secs(60)));
        let g = lock.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                *lock.lock() += 1;
                let _ = tx.send(());
            })
        };
        // Let go once the other thread parks (counted just before its park: a wake before
        // the park makes the park return at once).
        while lock.parks.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        drop(g);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the waiting thread was not woken when the lock was let go");
        waiter.join().unwrap();
        assert_eq!(*lock.lock(), 1);
    }

    #[test]
    fn a_wait_that_would_close_a_cycle_is_refused_and_the_others_go_on() {
        // (threads, what each wants once it holds its own, how many are refused)
        let cases: &[(&str, usize, &[Option<usize>], usize)] = &[
            ("a thread wanting the lock it holds", 1, &[Some(0)], 1),
            (
                "two threads, each wanting the other's",
                2,
                &[Some(1), Some(0)],
                1,
            ),
            ("a ring of three", 3, &[Some(1), Some(2), Some(0)], 1),
            (
                "a ring of four",
                4,
                &[Some(1), Some(2), Some(3), Some(0)],
                1,
            ),
            (
                "a chain ending at a thread that waits for nothing",
                3,
                &[Some(1), Some(2), None],
                0,
            ),
            ("two waiting for one", 3, &[Some(2), Some(2), None], 0),
        ];
        for &(name, n, wants, refused) in cases {
            let out = run(n, wants);
            let got: Vec<usize> = out.iter().filter_map(|o| o.err()).collect();
            assert_eq!(got.len(), refused, "{name}: refused {out:?}");
            // The one refused names the whole ring.
            assert!(got.iter().all(|&t| t == n), "{name}: {out:?}");
        }
    }
}

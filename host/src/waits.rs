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
//! thread, by its mark `Shared::holder`: a cycle of one) or across several.
//!
//! A delivery that finds the driver it needs locked registers what it waits for in one
//! table, after checking under the table's lock that waiting would not close a cycle (the
//! driver's holder waits for a driver whose holder waits ... for one this thread holds).
//! Of the threads whose waits would form a cycle, the last to register sees every other
//! step of it: each thread marked the drivers it holds (`Shared::holder`, stored before it
//! registered its own wait under the same lock), and a thread that waits holds what it
//! holds until its wait ends. That thread is refused (its value is dropped with an error),
//! it unwinds its own delivery, and the others go on. An uncontended lock costs what it did:
//! one `try_lock`; the table is touched only by a delivery that would block.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

/// A lock that records which thread holds it (its [`thread_tag`](crate::runtime::thread_tag),
/// 0 when none), marked by that thread once it holds the lock and cleared before it lets go.
pub(crate) trait Held: Send + Sync {
    fn holder(&self) -> &AtomicUsize;
}

/// One thread waiting: its tag, and what it waits for.
struct Wait {
    tag: usize,
    target: Arc<dyn Held>,
}

/// The threads waiting now for a lock some delivery needs.
static WAITS: Mutex<Vec<Wait>> = Mutex::new(Vec::new());

/// How many times a delivery tries a contended lock again before it looks at the table (a
/// lock held for one push is usually free within that).
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

/// Locks `lock` (guarding `target`'s driver) for thread `tag`, unless waiting for it would
/// close a cycle of threads each waiting for a lock the next holds: then `Err` with the
/// number of threads in that cycle, and nothing is locked. The caller marks the lock held.
pub(crate) fn lock_unless_cycle<'a, T, H: Held + 'static>(
    lock: &'a Mutex<T>,
    target: &Arc<H>,
    tag: usize,
) -> Result<MutexGuard<'a, T>, usize> {
    match lock.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        Err(TryLockError::WouldBlock) => wait_unless_cycle(lock, target, tag),
    }
}

#[cold]
#[inline(never)]
fn wait_unless_cycle<'a, T, H: Held + 'static>(
    lock: &'a Mutex<T>,
    target: &Arc<H>,
    tag: usize,
) -> Result<MutexGuard<'a, T>, usize> {
    // This thread holds it already (it marked it, and clears the mark before it lets go):
    // a cycle of one, refused without waiting for anything.
    if target.holder().load(Ordering::Relaxed) == tag {
        return Err(1);
    }
    for _ in 0..SPINS {
        std::hint::spin_loop();
        match lock.try_lock() {
            Ok(g) => return Ok(g),
            Err(TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) => {}
        }
    }
    {
        let mut waits = WAITS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(threads) = cycle(&waits, tag, &**target) {
            return Err(threads);
        }
        let target: Arc<dyn Held> = target.clone();
        waits.push(Wait { tag, target });
    }
    let g = lock.lock().unwrap_or_else(|p| p.into_inner());
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

    /// A lock with its holder mark, as a driver and its `Shared` are.
    #[derive(Default)]
    struct Cell {
        holder: AtomicUsize,
        lock: Mutex<u64>,
    }

    impl Held for Cell {
        fn holder(&self) -> &AtomicUsize {
            &self.holder
        }
    }

    /// What a thread did when it asked for the next lock: got it, or was refused (with the
    /// threads in the cycle).
    type Outcome = Result<(), usize>;

    /// Runs `n` threads; thread `i` locks (and marks) cell `i`, then, once all hold theirs,
    /// asks for cell `wants[i]` (if any), adds 1 to it, and lets go of both; a thread that
    /// wants none lets go only once all the others wait in the table. Fails if the threads do
    /// not all end within 10 s (a deadlock).
    fn run(n: usize, wants: &[Option<usize>]) -> Vec<Outcome> {
        let cells: Vec<Arc<Cell>> = (0..n).map(|_| Arc::new(Cell::default())).collect();
        let waiting = wants.iter().filter(|w| w.is_some()).count();
        let barrier = Arc::new(Barrier::new(n));
        let (done, results) = std::sync::mpsc::channel();
        for (i, want) in wants.iter().copied().enumerate() {
            let (cells, barrier, done) = (cells.clone(), barrier.clone(), done.clone());
            std::thread::spawn(move || {
                let tag = thread_tag();
                let own = &cells[i];
                let mut g = own.lock.lock().unwrap();
                own.holder.store(tag, Ordering::Relaxed);
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
                        lock_unless_cycle(&other.lock, other, tag).map(|mut h| {
                            other.holder.store(tag, Ordering::Relaxed);
                            *h += 1;
                            other.holder.store(0, Ordering::Relaxed);
                        })
                    }
                };
                *g += 1;
                own.holder.store(0, Ordering::Relaxed);
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

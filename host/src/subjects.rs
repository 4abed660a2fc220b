//! Subjects: named host objects that `publish` operators deliver to and `subject::<T>`
//! sources read. A subject outlives every plugin version: its hub keeps its name and its
//! subscribers across reloads (a pipeline that keeps running keeps its subscription).
//!
//! Delivery is synchronous and in order, as with an Rx `Subject`: the publisher's
//! `publish` call runs each subscriber's chain on the publisher's thread before it returns.
//! A subscriber's driver is shared with its own thread (if it has other sources) behind a
//! lock; pipelines that read no subject never take one. A value that would be delivered
//! back into a pipeline already running on this thread (a cycle through subjects), or whose
//! delivery would wait for a thread that waits for this one (`crate::waits`), is dropped
//! with an error instead of deadlocking.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hmr_track::Fingerprint;

use arc_swap::ArcSwap;

use crate::code::Pushed;
use crate::events::{HostEvent, Sink};
use crate::runtime::{PanicPolicy, SharedDriver, thread_tag};
use crate::waits::lock_unless_cycle;

/// The host's subjects, by name, and who uses them.
#[derive(Default)]
pub struct Subjects {
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
    uses: Mutex<Uses>,
}

/// Whether a use of a subject reads or publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Dir {
    Reads,
    Publishes,
}

impl Dir {
    fn verb(self) -> &'static str {
        match self {
            Dir::Reads => "reads",
            Dir::Publishes => "publishes",
        }
    }
}

/// Who uses which subject: each pipeline's own code (as the runtime was last handed it) and
/// its live inner subscriptions (counted). What an inner subscription's uses are checked
/// against when it starts or is re-projected: the value types of the pipelines' own uses,
/// and the loops the uses would close.
#[derive(Default)]
struct Uses {
    /// By pipeline: (subject, direction, value type) of its own code.
    pipelines: HashMap<String, Vec<(String, Dir, Fingerprint)>>,
    /// (pipeline, subject, direction) of live inner subscriptions, with their count.
    inner: HashMap<(String, String, Dir), usize>,
}

impl Uses {
    /// Every (pipeline, subject, direction) in use.
    fn edges(&self) -> impl Iterator<Item = (&str, &str, Dir)> {
        let own = self.pipelines.iter().flat_map(|(p, uses)| {
            uses.iter()
                .map(move |(s, d, _)| (p.as_str(), s.as_str(), *d))
        });
        let inner = self
            .inner
            .keys()
            .map(|(p, s, d)| (p.as_str(), s.as_str(), *d));
        own.chain(inner)
    }

    /// A loop through subjects that `pipeline`'s extra uses `extra` would close (a value
    /// published by a pipeline coming back to it, synchronously: on its own thread a
    /// refusal, across two threads a deadlock), as a message naming it.
    fn cycle(&self, pipeline: &str, extra: &[(&str, Dir)]) -> Option<String> {
        use std::collections::{BTreeMap, BTreeSet};
        let mut readers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut publishers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let all = self
            .edges()
            .chain(extra.iter().map(|(s, d)| (pipeline, *s, *d)));
        for (p, s, d) in all {
            match d {
                Dir::Reads => readers.entry(s).or_default().insert(p),
                Dir::Publishes => publishers.entry(s).or_default().insert(p),
            };
        }
        // Breadth-first from `pipeline` along (publishes s) -> (reads s): the first way back
        // to it, with the steps that lead there.
        let mut seen: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([pipeline]);
        while let Some(p) = queue.pop_front() {
            for (s, pubs) in &publishers {
                if !pubs.contains(p) {
                    continue;
                }
                for &r in readers.get(s).into_iter().flatten() {
                    if r == pipeline {
                        // The steps back from `p` to `pipeline`, then in order.
                        let mut steps = vec![format!("{p} publishes {s:?} read by {r}")];
                        let mut at = p;
                        while at != pipeline {
                            let (from, via) = seen[at];
                            steps.push(format!("{from} publishes {via:?} read by {at}"));
                            at = from;
                        }
                        steps.reverse();
                        return Some(format!(
                            "subjects would form a cycle ({}): delivery is synchronous, so a \
                             value would come back to the pipeline that published it",
                            steps.join(", ")
                        ));
                    }
                    if r != p && !seen.contains_key(r) {
                        seen.insert(r, (p, s));
                        queue.push_back(r);
                    }
                }
            }
        }
        None
    }
}

/// An inner subscription's uses of subjects, counted while it lives (see
/// [`Subjects::enter_inner`]).
pub(crate) struct InnerUses {
    subjects: Arc<Subjects>,
    keys: Vec<(String, String, Dir)>,
}

impl Drop for InnerUses {
    fn drop(&mut self) {
        let mut uses = self.subjects.lock_uses();
        for key in self.keys.drain(..) {
            if let Some(n) = uses.inner.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    uses.inner.remove(&key);
                }
            }
        }
    }
}

impl std::fmt::Debug for Subjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Subjects")
            .field("names", &hubs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Subjects {
    fn lock_uses(&self) -> std::sync::MutexGuard<'_, Uses> {
        self.uses.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the subjects pipeline `name`'s code reads and publishes to (with their value
    /// types), replacing what its earlier code did. The reload checked them against the
    /// other pipelines'; an inner subscription is checked against them when it starts.
    pub(crate) fn set_pipeline(&self, name: &str, uses: Vec<(String, Dir, Fingerprint)>) {
        let mut all = self.lock_uses();
        if uses.is_empty() {
            all.pipelines.remove(name);
        } else {
            all.pipelines.insert(name.to_owned(), uses);
        }
    }

    /// Forgets the subjects pipeline `name`'s code uses (it was removed).
    pub(crate) fn remove_pipeline(&self, name: &str) {
        self.lock_uses().pipelines.remove(name);
    }

    /// Counts the uses of subjects (`reads`, `publishes`: subject and value type) of an inner
    /// subscription of `pipeline` (`path`, for messages) while the returned guard lives; or
    /// why they are refused: a value type that differs from a pipeline's own use of the
    /// subject (a message naming the subject, both uses and both types), or a loop through
    /// subjects they would close. `None` (and nothing counted) when there are no uses.
    pub(crate) fn enter_inner(
        self: &Arc<Self>,
        pipeline: &str,
        path: &str,
        reads: &[(&str, Option<&Fingerprint>)],
        publishes: &[(&str, &Fingerprint)],
    ) -> Result<Option<InnerUses>, String> {
        if reads.is_empty() && publishes.is_empty() {
            return Ok(None);
        }
        let mut uses = self.lock_uses();
        let asked = reads.iter().map(|(s, f)| (*s, Dir::Reads, *f)).chain(
            publishes
                .iter()
                .map(|(s, f)| (*s, Dir::Publishes, Some(*f))),
        );
        for (subject, dir, item) in asked.clone() {
            let Some(item) = item else { continue };
            let own = uses.pipelines.iter().find_map(|(p, u)| {
                u.iter()
                    .find(|(s, _, f)| s == subject && f != item)
                    .map(|(_, d, f)| (p, *d, f))
            });
            if let Some((p, d, declared)) = own {
                return Err(crate::register::type_disagreement(
                    subject,
                    &format!("{p} {}", d.verb()),
                    declared,
                    &format!("{path} {}", dir.verb()),
                    item,
                ));
            }
        }
        let extra: Vec<(&str, Dir)> = asked.map(|(s, d, _)| (s, d)).collect();
        if let Some(why) = uses.cycle(pipeline, &extra) {
            return Err(why);
        }
        let keys: Vec<(String, String, Dir)> = extra
            .iter()
            .map(|(s, d)| (pipeline.to_owned(), (*s).to_owned(), *d))
            .collect();
        for key in &keys {
            *uses.inner.entry(key.clone()).or_default() += 1;
        }
        Ok(Some(InnerUses {
            subjects: self.clone(),
            keys,
        }))
    }

    /// The hub of the subject `name`, created on first use.
    pub fn hub(&self, name: &str) -> Arc<Hub> {
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        hubs.entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Hub {
                    name: name.to_owned(),
                    subscribers: ArcSwap::from_pointee(Vec::new()),
                    edit: Mutex::new(()),
                })
            })
            .clone()
    }
}

/// Where a subscriber's values go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A port of the pipeline's chain (`subject::<T>(..)` as a pipeline's source).
    Port(u32),
    /// A port of the pipeline's inner subscription `.0` (`subject::<T>(..)` inside the
    /// stream a higher-order operator's projection returned).
    Inner(u64, u32),
}

/// One subscriber of a subject: a pipeline's port, or a port of one of its inner
/// subscriptions.
pub struct Subscriber {
    pipeline: String,
    /// Where its errors are reported: the pipeline, or the inner subscription
    /// (`pipeline|i:switch_map|#id:inner`).
    path: String,
    target: Target,
    /// The port's stream completed (a `take` on it): it gets nothing more.
    port_done: AtomicBool,
    driver: Arc<SharedDriver>,
    shared: Arc<crate::runtime::Shared>,
    policy: PanicPolicy,
}

/// A subject: its name and its subscribers. Publishing reads the subscriber list with one
/// atomic load; (un)subscribing replaces it.
pub struct Hub {
    name: String,
    subscribers: ArcSwap<Vec<Arc<Subscriber>>>,
    edit: Mutex<()>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("name", &self.name).finish()
    }
}

impl Hub {
    /// The subject's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many subscribers it has now (pipelines' ports, inner subscriptions' ports).
    pub fn subscribers(&self) -> usize {
        self.subscribers.load().len()
    }

    /// Subscribes `target` of the pipeline `pipeline` (its driver, shared with its thread;
    /// its errors reported at `path`); nothing if that target is subscribed already.
    pub(crate) fn subscribe(
        &self,
        pipeline: &str,
        path: String,
        target: Target,
        driver: Arc<SharedDriver>,
        shared: Arc<crate::runtime::Shared>,
        policy: PanicPolicy,
    ) {
        let _g = self.edit.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.subscribers.load();
        if old
            .iter()
            .any(|s| s.target == target && Arc::ptr_eq(&s.driver, &driver))
        {
            return;
        }
        let mut list: Vec<Arc<Subscriber>> = old.as_ref().clone();
        list.push(Arc::new(Subscriber {
            pipeline: pipeline.to_owned(),
            path,
            target,
            port_done: AtomicBool::new(false),
            driver,
            shared,
            policy,
        }));
        self.subscribers.store(Arc::new(list));
    }

    /// Removes the subscriptions of `driver` (a pipeline restarted since may be subscribed
    /// under the same name: only this driver's go).
    pub(crate) fn unsubscribe_driver(&self, driver: &Arc<SharedDriver>) {
        let _g = self.edit.lock().unwrap_or_else(|p| p.into_inner());
        let list: Vec<Arc<Subscriber>> = self
            .subscribers
            .load()
            .iter()
            .filter(|s| !Arc::ptr_eq(&s.driver, driver))
            .cloned()
            .collect();
        self.subscribers.store(Arc::new(list));
    }

    /// Removes the subscriptions of inner subscription `id` of the pipeline whose shared
    /// half is at `owner` (its driver's [`Arc::as_ptr`] of `Shared`).
    pub(crate) fn unsubscribe_inner(&self, owner: usize, id: u64) {
        let _g = self.edit.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.subscribers.load();
        let mine = |s: &Subscriber| {
            matches!(s.target, Target::Inner(i, _) if i == id)
                && Arc::as_ptr(&s.shared) as usize == owner
        };
        if !old.iter().any(|s| mine(s)) {
            return;
        }
        let list: Vec<Arc<Subscriber>> = old.iter().filter(|s| !mine(s)).cloned().collect();
        self.subscribers.store(Arc::new(list));
    }

    /// Removes every subscription of the pipeline `pipeline`.
    pub(crate) fn unsubscribe(&self, pipeline: &str) {
        let _g = self.edit.lock().unwrap_or_else(|p| p.into_inner());
        let list: Vec<Arc<Subscriber>> = self
            .subscribers
            .load()
            .iter()
            .filter(|s| s.pipeline != pipeline)
            .cloned()
            .collect();
        self.subscribers.store(Arc::new(list));
    }

    /// Delivers the value at `value` (published by `from`, whose code declared it of type
    /// `item`) to every subscriber, in subscription order, before returning. A subscriber
    /// whose current code reads another type (the instant of a reload that changed both
    /// sides: the publisher may still run its old code) does not get it: that is an error
    /// of the subscriber, and the value is not read.
    ///
    /// # Safety
    /// `value` must point at a live value of the layout `item` describes, valid for the
    /// call.
    pub(crate) unsafe fn deliver(
        &self,
        from: &str,
        value: *const c_void,
        item: &Fingerprint,
        sink: &Sink,
    ) {
        let subs = self.subscribers.load();
        let tag = thread_tag();
        for s in subs.iter() {
            if s.port_done.load(Ordering::Relaxed) || s.shared.ended() {
                continue;
            }
            // Unless waiting for it would close a cycle of threads each holding a driver the
            // next one's delivery needs (`crate::waits`): `Err` with the number of threads.
            let mut d = match lock_unless_cycle(&s.driver, tag) {
                Ok(d) => d,
                Err(threads) => {
                    let message = if threads == 1 {
                        // This thread holds it: the value would run it again while it runs.
                        format!(
                            "a value published to subject {:?} by {from} would run {} again \
                             while it runs (a cycle through subjects): dropped",
                            self.name, s.pipeline
                        )
                    } else {
                        format!(
                            "a value published to subject {:?} by {from} was dropped: \
                             delivering it would wait for {}, whose lock is held by a thread \
                             that waits, directly or through others, for a lock this thread \
                             holds (a cycle through subjects across {threads} threads, as a \
                             reload taken by one pipeline and not yet by another can close)",
                            self.name, s.pipeline
                        )
                    };
                    sink.event(HostEvent::Error {
                        pipeline: s.pipeline.clone(),
                        path: s.path.clone(),
                        message,
                    });
                    continue;
                }
            };
            // Its thread ended and unsubscribed it while this delivery waited for the lock.
            if d.stopped() || s.shared.detached() {
                continue;
            }
            // A subject port's wire values are pointers to the values.
            let ptr: *const c_void = value;
            let at = (&raw const ptr).cast::<c_void>();
            let r = match s.target {
                // SAFETY: the caller's obligation: `value` is a live value of `item`'s
                // layout; `push_subject` reads it only if the port's current code reads that
                // layout; `ptr` outlives the call.
                Target::Port(port) => unsafe { d.push_subject(port, at, item, &self.name) },
                // SAFETY: as above, for the inner subscription's port.
                Target::Inner(id, port) => unsafe {
                    d.push_inner_subject(id, port, at, item, &self.name)
                },
            };
            // Inner subscriptions started by that value, reading subjects: subscribed now.
            // The subscriptions it ended are freed (their hub subscribers with them), and the
            // subscriber's thread is woken for what only it runs (a subscription a
            // re-projection restarted). One load when there is nothing of the kind.
            if s.shared.flags.load(Ordering::Relaxed) != 0 {
                crate::runtime::after_inner_delivery(&mut d, &s.driver, &s.shared, s.policy);
            }
            // A timer set for the subscriber's thread: a virtual clock's `settle` waits until
            // that thread has taken it.
            d.poke_if_timers();
            match r {
                Ok(Pushed::Continue) => {}
                Ok(Pushed::PortDone { .. }) => s.port_done.store(true, Ordering::Release),
                Ok(Pushed::Panicked { .. }) => {
                    if s.policy == PanicPolicy::Error {
                        s.shared.end(crate::runtime::Ended::Errored);
                    }
                }
                Ok(Pushed::Complete { .. }) => {
                    // Marked under the lock, so no other publisher pushes after it; its own
                    // thread sees it at its next look and ends.
                    s.shared.end(crate::runtime::Ended::Completed);
                    drop(d);
                    sink.event(HostEvent::Completed {
                        pipeline: s.pipeline.clone(),
                        emissions: 0,
                        elapsed_us: 0,
                    });
                }
                Err(e) => sink.event(HostEvent::Error {
                    pipeline: s.pipeline.clone(),
                    path: s.path.clone(),
                    message: e,
                }),
            }
        }
    }
}

/// Subscriptions made outside the runtime: the benchmarks drive a subject's publisher and
/// subscribers on one thread, through the same delivery as the runtime's pipelines.
impl Hub {
    /// Subscribes `port` of `driver`'s pipeline to this subject, as [`Runtime::launch`]
    /// subscribes a pipeline reading subjects: each value published is pushed into `driver`
    /// (locked) on the publisher's thread, before `publish` returns.
    /// [`Hub::unsubscribe_pipeline`] ends it. Fails when `port` of the driver's code does not
    /// read this subject.
    ///
    /// Subscribe at most one driver of a `Publisher` (its drivers share the flags a delivery
    /// reads).
    ///
    /// # Safety
    /// Every value published to this subject while the subscription lasts must have the
    /// layout of the values `port` reads (for the runtime's pipelines, the reloader checks
    /// the fingerprints of publishers and subscribers before they run).
    ///
    /// [`Runtime::launch`]: crate::runtime::Runtime::launch
    pub unsafe fn subscribe_driver(
        &self,
        port: u32,
        driver: Arc<SharedDriver>,
        policy: PanicPolicy,
    ) -> Result<(), String> {
        let (pipeline, shared) = {
            let d = driver.lock();
            let reads = d.sources().get(port as usize).is_some_and(|s| {
                s.kind == plugin_api::abi::source_kind::SUBJECT && s.text == self.name
            });
            if !reads {
                return Err(format!(
                    "port {port} of {} does not read the subject {:?}",
                    d.pipeline(),
                    self.name
                ));
            }
            (d.pipeline().to_owned(), d.shared().clone())
        };
        let path = pipeline.clone();
        self.subscribe(&pipeline, path, Target::Port(port), driver, shared, policy);
        Ok(())
    }

    /// Removes every subscription of the pipeline `pipeline` (made with
    /// [`Hub::subscribe_driver`] or by the runtime).
    pub fn unsubscribe_pipeline(&self, pipeline: &str) {
        self.unsubscribe(pipeline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(name: &str) -> Fingerprint {
        Fingerprint {
            name: Arc::from(name),
            size: 8,
            align: 8,
            hash: name.len() as u64,
        }
    }

    /// Each case: the pipelines' own uses, an inner subscription of `p` reading and
    /// publishing, and the loop it would close (or none).
    #[test]
    fn the_loop_an_inner_subscription_would_close_is_named_step_by_step() {
        /// The pipelines' own uses, the inner stream's reads and publishes, the loop.
        type Case<'a> = (
            &'a [(&'a str, &'a str, Dir)],
            &'a [&'a str],
            &'a [&'a str],
            Option<&'a str>,
        );
        let cases: [Case; 5] = [
            // `p` publishes what its own inner stream reads.
            (
                &[("p", "t", Dir::Publishes)],
                &["t"],
                &[],
                Some("p publishes \"t\" read by p"),
            ),
            // Through two others: p -> q -> r -> p.
            (
                &[
                    ("p", "a", Dir::Publishes),
                    ("q", "a", Dir::Reads),
                    ("q", "b", Dir::Publishes),
                    ("r", "b", Dir::Reads),
                    ("r", "c", Dir::Publishes),
                ],
                &["c"],
                &[],
                Some(
                    "p publishes \"a\" read by q, q publishes \"b\" read by r, \
                     r publishes \"c\" read by p",
                ),
            ),
            // The inner stream publishes where `p` reads, through `q`.
            (
                &[
                    ("p", "x", Dir::Reads),
                    ("q", "y", Dir::Reads),
                    ("q", "x", Dir::Publishes),
                ],
                &[],
                &["y"],
                Some("p publishes \"y\" read by q, q publishes \"x\" read by p"),
            ),
            // A chain that does not come back.
            (
                &[
                    ("p", "a", Dir::Publishes),
                    ("q", "a", Dir::Reads),
                    ("q", "b", Dir::Publishes),
                ],
                &["c"],
                &[],
                None,
            ),
            // Others loop among themselves (as a half-done reload might): not `p`'s loop.
            (
                &[
                    ("q", "a", Dir::Publishes),
                    ("q", "a", Dir::Reads),
                    ("p", "b", Dir::Publishes),
                ],
                &["a"],
                &[],
                None,
            ),
        ];
        for (own, reads, publishes, want) in cases {
            let subjects = Arc::new(Subjects::default());
            let mut by: HashMap<&str, Vec<(String, Dir, Fingerprint)>> = HashMap::new();
            for (p, s, d) in own {
                by.entry(p)
                    .or_default()
                    .push(((*s).to_owned(), *d, fp("u64")));
            }
            for (p, uses) in by {
                subjects.set_pipeline(p, uses);
            }
            let u64 = fp("u64");
            let reads: Vec<(&str, Option<&Fingerprint>)> =
                reads.iter().map(|s| (*s, Some(&u64))).collect();
            let publishes: Vec<(&str, &Fingerprint)> =
                publishes.iter().map(|s| (*s, &u64)).collect();
            let got = subjects.enter_inner("p", "p|0:switch_map|#1:inner", &reads, &publishes);
            match (want, got) {
                (Some(steps), Err(e)) => assert!(
                    e.starts_with(&format!("subjects would form a cycle ({steps}): ")),
                    "{e}"
                ),
                (None, Ok(guard)) => {
                    // Counted while the guard lives, gone with it.
                    assert!(guard.is_some());
                    assert!(!subjects.lock_uses().inner.is_empty());
                    drop(guard);
                    assert!(subjects.lock_uses().inner.is_empty());
                }
                (want, got) => panic!("{own:?}: wanted {want:?}, got {:?}", got.err()),
            }
        }
    }

    /// A use of another value type than a pipeline's own is refused, naming both.
    #[test]
    fn an_inner_use_of_another_type_is_refused_naming_both() {
        let subjects = Arc::new(Subjects::default());
        subjects.set_pipeline("prices", vec![("t".to_owned(), Dir::Publishes, fp("u64"))]);
        let s = fp("alloc::string::String");
        let e = subjects
            .enter_inner("w", "w|0:switch_map|#1:inner", &[("t", Some(&s))], &[])
            .err();
        assert_eq!(
            e.as_deref(),
            Some(
                "subject \"t\": prices publishes `u64` but w|0:switch_map|#1:inner reads \
                 `alloc::string::String`: publisher and subscribers must agree on the value \
                 type"
            )
        );
        // Once the pipeline is gone, nothing is declared there.
        subjects.remove_pipeline("prices");
        let ok = subjects.enter_inner("w", "w|0:switch_map|#2:inner", &[("t", Some(&s))], &[]);
        assert!(ok.is_ok_and(|g| g.is_some()));
    }
}

//! Subjects: named host objects that `publish` operators deliver to and `subject::<T>`
//! sources read. A subject outlives every plugin version: its hub keeps its name and its
//! subscribers across reloads (a pipeline that keeps running keeps its subscription).
//!
//! Delivery is synchronous and in order, as with an Rx `Subject`: the publisher's
//! `publish` call runs each subscriber's chain on the publisher's thread before it returns.
//! A subscriber's driver is shared with its own thread (if it has other sources) behind a
//! lock; pipelines that read no subject never take one. A value that would be delivered
//! back into a pipeline already running on this thread (a cycle through subjects) is
//! dropped with an error instead of deadlocking.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hmr_track::Fingerprint;

use arc_swap::ArcSwap;

use crate::code::Pushed;
use crate::events::{HostEvent, Sink};
use crate::runtime::{Driver, PanicPolicy, lock_marked, thread_tag};

/// The host's subjects, by name.
#[derive(Default)]
pub struct Subjects {
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
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
    /// The hub of the subject `name`, created on first use.
    pub fn hub(&self, name: &str) -> Arc<Hub> {
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        hubs.entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Hub {
                    name: name.to_owned(),
                    subscribers: ArcSwap::from_pointee(Vec::new()),
                    edit: Mutex::new(()),
                    declared: Mutex::new(None),
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
    target: Target,
    /// The port's stream completed (a `take` on it): it gets nothing more.
    port_done: AtomicBool,
    driver: Arc<Mutex<Driver>>,
    shared: Arc<crate::runtime::Shared>,
    policy: PanicPolicy,
}

/// A subject: its name and its subscribers. Publishing reads the subscriber list with one
/// atomic load; (un)subscribing replaces it.
pub struct Hub {
    name: String,
    subscribers: ArcSwap<Vec<Arc<Subscriber>>>,
    edit: Mutex<()>,
    /// The value type the newest pipeline code publishing or reading here declared, and who
    /// (`prices publishes`; set when the runtime is handed that code, before it runs): what an
    /// inner subscription reading or publishing to the subject is checked against when it
    /// starts (the pipelines' own uses are checked against each other by the reload).
    declared: Mutex<Option<(Fingerprint, String)>>,
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

    /// Subscribes `target` of the pipeline `pipeline` (its driver, shared with its thread);
    /// nothing if that target is subscribed already.
    pub(crate) fn subscribe(
        &self,
        pipeline: &str,
        target: Target,
        driver: Arc<Mutex<Driver>>,
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
    pub(crate) fn unsubscribe_driver(&self, driver: &Arc<Mutex<Driver>>) {
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

    /// Records the value type a pipeline's code declared (`who`: `prices publishes`, `w
    /// reads`, for messages).
    pub(crate) fn declare(&self, item: &Fingerprint, who: &str) {
        let mut d = self.declared.lock().unwrap_or_else(|p| p.into_inner());
        match &*d {
            Some((f, w)) if f == item && w == who => {}
            _ => *d = Some((item.clone(), who.to_owned())),
        }
    }

    /// Why an inner subscription's use of values of `item` (`who`: `w|0:switch_map|#1:inner
    /// reads`) is refused: the newest pipeline code using the subject declared another type
    /// (a message naming the subject, both uses and both types).
    pub(crate) fn refuses(&self, item: Option<&Fingerprint>, who: &str) -> Option<String> {
        let d = self.declared.lock().unwrap_or_else(|p| p.into_inner());
        let (declared, declared_by) = d.as_ref()?;
        let item = item?;
        if declared == item {
            return None;
        }
        let what = if declared.name == item.name {
            format!(
                "`{}` with another layout (layout hash {:#x} vs {:#x})",
                item.name, item.hash, declared.hash
            )
        } else {
            format!("`{}`", item.name)
        };
        Some(format!(
            "subject {:?}: {declared_by} `{}` but {who} {what}: publisher and subscribers \
             must agree on the value type",
            self.name, declared.name
        ))
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
            // Only this thread writes its own tag there, and clears it before it unlocks.
            if s.shared.holder.load(Ordering::Relaxed) == tag {
                sink.event(HostEvent::Error {
                    pipeline: s.pipeline.clone(),
                    path: s.pipeline.clone(),
                    message: format!(
                        "a value published to subject {:?} by {from} would run {} again while \
                         it runs (a cycle through subjects): dropped",
                        self.name, s.pipeline
                    ),
                });
                continue;
            }
            let mut d = lock_marked(&s.driver, &s.shared.holder, tag);
            if d.stopped() {
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
            if d.has_hub_asks() {
                crate::runtime::subscribe_asks(&mut d, &s.driver, &s.shared, s.policy);
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
                Err(e) => {
                    // An inner subscription whose code reads another type than the
                    // publisher's (a reload changed the publisher's) is told once: its
                    // code cannot change until it is re-projected, which subscribes anew.
                    if let Target::Inner(..) = s.target {
                        s.port_done.store(true, Ordering::Release);
                    }
                    sink.event(HostEvent::Error {
                        pipeline: s.pipeline.clone(),
                        path: s.pipeline.clone(),
                        message: e,
                    })
                }
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
    /// The caller locks `driver` itself only where no value can be published to this
    /// subject meanwhile (its own lock is not marked, see `runtime::lock_marked`); subscribe
    /// at most one driver of a `Publisher` (its drivers share the mark).
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
        driver: Arc<Mutex<Driver>>,
        policy: PanicPolicy,
    ) -> Result<(), String> {
        let (pipeline, shared) = {
            let d = driver.lock().unwrap_or_else(|p| p.into_inner());
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
        self.subscribe(&pipeline, Target::Port(port), driver, shared, policy);
        Ok(())
    }

    /// Removes every subscription of the pipeline `pipeline` (made with
    /// [`Hub::subscribe_driver`] or by the runtime).
    pub fn unsubscribe_pipeline(&self, pipeline: &str) {
        self.unsubscribe(pipeline);
    }
}

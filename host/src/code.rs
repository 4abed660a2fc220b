//! One version of one pipeline's code ([`PipelineCode`]), its operators' state slots in host
//! memory ([`StateSlots`]), and the calls into the plugin that run them.
//!
//! This module, `loader`, `register` and the emission path of `runtime` (`Driver`) are the
//! only places that call plugin code.

use std::alloc::Layout;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Arc;

use hmr_track::Fingerprint;
use hmr_track::{Id, Signature};
use plugin_api::abi::{
    CloneStateFn, CompleteFn, DebugStateFn, DescribeFn, DropEnvFn, DropStateFn, EmitCx, InitFn,
    ProjectFn, PushFn, PushOneFn, StartFn, WakeFn, clone_status, debug_status, init_status,
    source_kind, status,
};

use crate::loader::LibVersion;

/// An operator of a compiled pipeline.
#[derive(Clone, Debug)]
pub struct OpCode {
    /// Its track in the store (stable across versions for the same structural path).
    pub track: Id,
    /// Its structural path.
    pub path: String,
    /// Its kind.
    pub kind: String,
    /// Its signature as registered (types and seed; the store's view of it).
    pub signature: Signature,
    /// The identity of the state this operator takes over: the reloader gives a track a new
    /// lineage whenever it reports the track's state reset (or the track new), and passes the
    /// old one on when it reports it swapped. A driver keeps a slot only across equal
    /// lineages, so what it does is what the report said, even when it jumps several
    /// versions at once. 0: not reconciled (code loaded outside a reloader): the signature
    /// alone decides.
    pub lineage: u64,
    pub(crate) layout: Layout,
    pub(crate) init: InitFn,
    pub(crate) drop: DropStateFn,
    pub(crate) debug: DebugStateFn,
    pub(crate) clone: CloneStateFn,
}

impl OpCode {
    /// Whether state written by `old` may be handed to this operator unchanged: the same
    /// track with the same signature (the rule the reloader reports as `swapped`).
    pub fn keeps_state_of(&self, old: &OpCode) -> bool {
        self.track == old.track
            && self.lineage == old.lineage
            && hmr_track::signature_change(&old.signature, &self.signature).is_none()
    }

    /// Whether the operator keeps state.
    pub fn has_state(&self) -> bool {
        self.signature.state.is_some()
    }
}

/// One source of a pipeline (one port), as the plugin described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSpec {
    /// One of [`source_kind`].
    pub kind: u32,
    /// First numeric parameter.
    pub a: u64,
    /// Second numeric parameter.
    pub b: u64,
    /// The text parameter (a path, an address, a subject name); empty when none.
    pub text: String,
    /// The source as written (`interval_ms(50)`): its signature.
    pub label: String,
    /// For a subject: the layout fingerprint of its values.
    pub item: Option<Fingerprint>,
}

impl SourceSpec {
    /// How the port's values cross the boundary.
    pub fn wire(&self) -> Wire {
        match self.kind {
            source_kind::STDIN_LINES | source_kind::FILE_LINES | source_kind::TCP_LINES => {
                Wire::Str
            }
            source_kind::SUBJECT => Wire::Ptr,
            _ => Wire::U64,
        }
    }
}

/// The wire type of a port (see `plugin_api::abi::source_kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// `u64` values (intervals, ranges, `of` indices).
    U64,
    /// Lines, passed as `RStr` views.
    Str,
    /// A subject's values, passed as pointers to the publisher's value.
    Ptr,
}

/// A `publish` operator of a pipeline.
#[derive(Clone, Debug)]
pub struct PublishSpec {
    /// Its operator number.
    pub op: u32,
    /// The subject's name.
    pub subject: String,
    /// The layout fingerprint of the values it publishes.
    pub item: Fingerprint,
    /// Writes a published value's Debug text.
    pub(crate) debug: DebugStateFn,
}

/// One plugin version's code for one pipeline.
pub struct PipelineCode {
    /// Pipeline name.
    pub name: String,
    /// The pipeline's track.
    pub track: Id,
    /// Plugin version.
    pub version: u64,
    /// Its sources, in port order (the first is the pipeline's own).
    pub sources: Vec<SourceSpec>,
    /// Per port, the clone and drop glue of a subject's values (what a replay on reload
    /// keeps them with; `UNSUPPORTED` for the other sources), and whether the values are
    /// plain bytes (`SourceDesc::value_plain`: kept by a copy, dropped by forgetting them).
    pub(crate) value_glue: Vec<(CloneStateFn, DropStateFn, bool)>,
    /// Its `publish` operators.
    pub publishes: Vec<PublishSpec>,
    /// Operators in chain order.
    pub ops: Vec<OpCode>,
    pub(crate) env: *mut c_void,
    pub(crate) push: PushFn,
    pub(crate) push_one: PushOneFn,
    pub(crate) complete: CompleteFn,
    pub(crate) start: StartFn,
    pub(crate) push_counted: PushFn,
    pub(crate) push_one_counted: PushOneFn,
    pub(crate) complete_counted: CompleteFn,
    pub(crate) start_counted: StartFn,
    pub(crate) wake: WakeFn,
    pub(crate) wake_counted: WakeFn,
    pub(crate) project: ProjectFn,
    pub(crate) describe: DescribeFn,
    pub(crate) drop_env: DropEnvFn,
    pub(crate) lib: Arc<LibVersion>,
}

impl std::fmt::Debug for PipelineCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineCode")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("ops", &self.ops)
            .finish_non_exhaustive()
    }
}

// SAFETY: `env` is the plugin's `Env<S>` where every stage is `Send + Sync` (bounds of the
// DSL's `Stage` trait), and the function pointers are immutable code in a library that is
// never unmapped (`lib` keeps it counted as live).
unsafe impl Send for PipelineCode {}
// SAFETY: as above; the plugin's entry points take `env` by shared pointer only.
unsafe impl Sync for PipelineCode {}

impl Drop for PipelineCode {
    fn drop(&mut self) {
        // SAFETY: `env` came from this version's `finish` and is freed once, here, by the
        // same version's drop function; the library is still mapped (`self.lib`).
        unsafe { (self.drop_env)(self.env) }
    }
}

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// All values went through.
    Continue,
    /// The chain completed after taking `consumed` values.
    Complete {
        /// Values taken, the one that completed the chain included.
        consumed: usize,
    },
    /// A user function panicked on the value at `consumed - 1`; the plugin reported it.
    Panicked {
        /// Values taken, the panicking one included.
        consumed: usize,
    },
    /// This port's stream completed after taking `consumed` values (an inner stream's
    /// `take`); the pipeline goes on.
    PortDone {
        /// Values taken, the one that completed the port included.
        consumed: usize,
    },
}

impl Pushed {
    /// What a single-value push (`push_one`) returned: the value counts as taken either way.
    #[inline]
    pub(crate) fn from_one(status: u32) -> Pushed {
        match status {
            status::CONTINUE => Pushed::Continue,
            status::COMPLETE => Pushed::Complete { consumed: 1 },
            status::PORT_DONE => Pushed::PortDone { consumed: 1 },
            _ => Pushed::Panicked { consumed: 1 },
        }
    }

    /// What a push of the part of a batch after its first `before` values returned, as the
    /// whole batch's answer (the values counted from the batch's start).
    pub(crate) fn after(self, before: usize) -> Pushed {
        match self {
            Pushed::Continue => Pushed::Continue,
            Pushed::Complete { consumed } => Pushed::Complete {
                consumed: before + consumed,
            },
            Pushed::Panicked { consumed } => Pushed::Panicked {
                consumed: before + consumed,
            },
            Pushed::PortDone { consumed } => Pushed::PortDone {
                consumed: before + consumed,
            },
        }
    }
}

/// The kinds of the higher-order operators: the operators that start inner subscriptions.
pub(crate) const HIGHER_ORDER: [&str; 4] = ["switch_map", "merge_map", "concat_map", "exhaust_map"];

impl PipelineCode {
    /// Whether the chain has a higher-order operator (it starts inner subscriptions).
    pub(crate) fn runs_inners(&self) -> bool {
        self.ops
            .iter()
            .any(|o| HIGHER_ORDER.contains(&o.kind.as_str()))
    }

    /// The library version this code belongs to.
    pub fn lib(&self) -> &Arc<LibVersion> {
        &self.lib
    }

    /// The Debug text of the value the wire value at `item` of source `port` stands for (an
    /// `of`'s index as its item), at most `cap` bytes; `None` when the port's values have
    /// none.
    ///
    /// # Safety
    /// `item` must point at one initialised value of the port's wire type, valid for the
    /// call.
    pub(crate) unsafe fn describe(
        &self,
        port: u32,
        item: *const c_void,
        cap: usize,
    ) -> Option<String> {
        let mut buf = vec![0u8; cap];
        let mut len = 0usize;
        // SAFETY: `env` is this version's; `item` is the caller's obligation; `buf` has `cap`
        // writable bytes; the plugin catches its panics.
        let status =
            unsafe { (self.describe)(self.env, port, item, buf.as_mut_ptr(), cap, &mut len) };
        let text = || String::from_utf8_lossy(&buf[..len.min(cap)]).into_owned();
        match status {
            debug_status::OK => Some(text()),
            debug_status::TRUNCATED => Some(text() + "…"),
            debug_status::PANICKED => Some(format!("<its Debug panicked after {:?}>", text())),
            _ => None,
        }
    }

    /// Runs `n` wire values at `items` of source `port` through the chain; with
    /// [`EmitCx::counts`] set, through the entry point that counts emissions into it.
    ///
    /// # Safety
    /// `items` must point at `n` initialised values of the port's wire type
    /// ([`SourceSpec::wire`]), valid for the call, and `port` must be one of this code's
    /// ports.
    #[inline]
    pub unsafe fn push_raw(
        &self,
        states: &StateSlots,
        port: u32,
        items: *const c_void,
        n: usize,
        cx: &EmitCx,
    ) -> Pushed {
        debug_assert_eq!(states.ptrs.len(), self.ops.len());
        let mut consumed = 0usize;
        let push = if cx.counts.is_null() {
            self.push
        } else {
            self.push_counted
        };
        // SAFETY: `states` was built for this code's operators by `StateSlots::new` or
        // `migrate` (one initialised slot per operator, fingerprint-checked); `items` and
        // `cx` are valid for the call (the caller's obligation); the plugin catches every
        // panic before returning.
        let s = unsafe {
            push(
                self.env,
                states.ptrs.as_ptr(),
                port,
                items,
                n,
                cx,
                &mut consumed,
            )
        };
        let consumed = consumed.clamp(1, n.max(1));
        match s {
            status::CONTINUE => Pushed::Continue,
            status::COMPLETE => Pushed::Complete { consumed },
            status::PORT_DONE => Pushed::PortDone { consumed },
            _ => Pushed::Panicked { consumed },
        }
    }

    /// Runs `items` (values of a `u64` port) through the chain.
    #[inline]
    pub fn push(&self, states: &StateSlots, port: u32, items: &[u64], cx: &EmitCx) -> Pushed {
        assert!(
            self.sources
                .get(port as usize)
                .is_some_and(|s| s.wire() == Wire::U64),
            "port {port} of {} takes no u64 values",
            self.name
        );
        // SAFETY: a `u64` port of this code, `items.len()` values.
        unsafe {
            self.push_raw(
                states,
                port,
                items.as_ptr().cast::<c_void>(),
                items.len(),
                cx,
            )
        }
    }

    /// The single-value entry point and its closures, for the emission path, which keeps them
    /// at hand instead of reaching through the code for every value (see `Driver::push_one`).
    /// `counted`: the entry point that also counts emissions (the inspector's).
    pub(crate) fn push_one_raw(&self, counted: bool) -> (PushOneFn, *const std::ffi::c_void) {
        let push_one = if counted {
            self.push_one_counted
        } else {
            self.push_one
        };
        (push_one, self.env)
    }

    /// Tells the chain source `port` completed. Counts emissions when [`EmitCx::counts`] is
    /// set.
    pub fn complete(&self, states: &StateSlots, port: u32, cx: &EmitCx) -> Pushed {
        let complete = if cx.counts.is_null() {
            self.complete
        } else {
            self.complete_counted
        };
        // SAFETY: as in `push_raw`.
        let s = unsafe { complete(self.env, states.ptrs.as_ptr(), port, cx) };
        Pushed::from_one(s)
    }

    /// Subscribes the chain (`start_with` values). Counts emissions when
    /// [`EmitCx::counts`] is set.
    pub fn start(&self, states: &StateSlots, cx: &EmitCx) -> Pushed {
        let start = if cx.counts.is_null() {
            self.start
        } else {
            self.start_counted
        };
        // SAFETY: as in `push_raw`.
        let s = unsafe { start(self.env, states.ptrs.as_ptr(), cx) };
        Pushed::from_one(s)
    }

    /// Runs operator `op`'s due timers (a time operator emitting what became due), or with
    /// `inner` an event of one of its inner subscriptions. Counts emissions when
    /// [`EmitCx::counts`] is set.
    pub(crate) fn wake(
        &self,
        states: &StateSlots,
        op: u32,
        inner: Option<&mut plugin_api::abi::InnerCall>,
        cx: &EmitCx,
    ) -> Pushed {
        let wake = if cx.counts.is_null() {
            self.wake
        } else {
            self.wake_counted
        };
        let inner = inner.map_or(std::ptr::null_mut(), |c| c as *mut _);
        // SAFETY: as in `push_raw`; `op` is any number (the plugin ignores one it lacks);
        // `inner` is null or an event built by the host from a live subscription of `op`,
        // whose env this code's projection built.
        let s = unsafe { wake(self.env, states.ptrs.as_ptr(), op, inner, cx) };
        Pushed::from_one(s)
    }

    /// Re-projects the outer value at `value` through operator `op`'s projection: the
    /// plugin hands the inner stream to `cx`'s `subscribe`. Returns the plugin's status.
    ///
    /// # Safety
    /// `value` must point at a live value of operator `op`'s input type.
    pub(crate) unsafe fn project(&self, op: u32, value: *const c_void, cx: &EmitCx) -> u32 {
        // SAFETY: forwarded; `env` is this code's.
        unsafe { (self.project)(self.env, op, value, cx) }
    }
}

struct Slot {
    ptr: NonNull<u8>,
    layout: Layout,
    op: OpCode,
    /// The version whose `drop` this slot will call; kept live while the slot exists.
    lib: Arc<LibVersion>,
}

/// The state slots of one running pipeline, in host memory, one per operator.
pub struct StateSlots {
    slots: Vec<Slot>,
    ptrs: Vec<*mut u8>,
}

impl std::fmt::Debug for StateSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateSlots")
            .field("slots", &self.slots.len())
            .finish()
    }
}

// SAFETY: slots hold values of `Send` state types (DSL bounds) and are used by one thread
// at a time (the pipeline's runner owns them).
unsafe impl Send for StateSlots {}

/// A state's seed could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The seed's `Clone` panicked.
    #[error("the seed of {path} panicked while being cloned")]
    Panicked {
        /// The operator.
        path: String,
    },
    /// The plugin's code has no operator of that index (its description of the pipeline
    /// disagrees with its code: a plugin-api defect or a forged library).
    #[error(
        "the plugin has no operator {index} to seed for {path}: its pipeline description disagrees with its code"
    )]
    UnknownOp {
        /// The operator.
        path: String,
        /// The index asked for.
        index: usize,
    },
    /// The plugin answered with a status this host does not know.
    #[error("seeding {path} returned the unknown status {status}")]
    Status {
        /// The operator.
        path: String,
        /// What it returned.
        status: u32,
    },
}

impl StateSlots {
    /// The slot pointers, one per operator, as the plugin's entry points take them.
    pub(crate) fn as_ptr(&self) -> *const *mut u8 {
        self.ptrs.as_ptr()
    }

    /// No slots (a placeholder while slots are being migrated).
    pub fn empty() -> StateSlots {
        StateSlots {
            slots: Vec::new(),
            ptrs: Vec::new(),
        }
    }

    /// Fresh, seeded slots for every operator of `code`.
    pub fn new(code: &PipelineCode) -> Result<StateSlots, InitError> {
        StateSlots::new_for(&code.ops, code.env, &code.lib)
    }

    /// Fresh slots for `ops`, seeded by their `init` with `env` (the closures of version
    /// `lib` that the operators belong to: a pipeline's or an inner stream's).
    pub(crate) fn new_for(
        ops: &[OpCode],
        env: *const c_void,
        lib: &Arc<LibVersion>,
    ) -> Result<StateSlots, InitError> {
        let mut slots = StateSlots {
            slots: Vec::with_capacity(ops.len()),
            ptrs: Vec::with_capacity(ops.len()),
        };
        for (i, op) in ops.iter().enumerate() {
            let slot = fresh_slot(env, lib, i, op)?;
            slots.ptrs.push(slot.ptr.as_ptr());
            slots.slots.push(slot);
        }
        Ok(slots)
    }

    /// Moves these slots (written by `old`'s operators) to `new`'s operators: a slot whose
    /// operator has the same track and signature in `new` is kept as it is; every other
    /// operator of `new` gets a fresh seed, and slots nobody takes are dropped with the code
    /// that made them. Returns the paths whose state was reset.
    pub fn migrate(self, new: &PipelineCode) -> Result<(StateSlots, Vec<String>), InitError> {
        self.migrate_to(&new.ops, new.env, &new.lib)
    }

    /// [`StateSlots::migrate`] to operators `ops` of version `lib`, seeded with `env`.
    pub(crate) fn migrate_to(
        self,
        ops: &[OpCode],
        env: *const c_void,
        lib: &Arc<LibVersion>,
    ) -> Result<(StateSlots, Vec<String>), InitError> {
        let mut old: Vec<Option<Slot>> = self.into_slots().into_iter().map(Some).collect();
        let mut out = StateSlots {
            slots: Vec::with_capacity(ops.len()),
            ptrs: Vec::with_capacity(ops.len()),
        };
        let mut reset = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let kept = old
                .iter_mut()
                .find(|s| s.as_ref().is_some_and(|s| op.keeps_state_of(&s.op)))
                .and_then(Option::take);
            let slot = match kept {
                Some(mut s) => {
                    // Fingerprint-equal types: the new version's drop glue is as good as the
                    // old one's, and using it lets the old version retire.
                    s.op = op.clone();
                    s.lib = lib.clone();
                    s
                }
                None => {
                    if op.has_state() {
                        reset.push(op.path.clone());
                    }
                    fresh_slot(env, lib, i, op)?
                }
            };
            out.ptrs.push(slot.ptr.as_ptr());
            out.slots.push(slot);
        }
        // Slots not taken drop here, through their own version's drop function.
        drop(old);
        Ok((out, reset))
    }

    /// Copies of these slots for `ops` (of version `lib`, seeded with `env`), leaving these
    /// untouched: an operator that would keep its slot in a migration ([`OpCode::keeps_state_of`])
    /// gets a clone of it, made by the glue of the version that wrote it; every other one a
    /// fresh seed. Copies for the slots' own operators are clones of them all. What a replay
    /// on reload runs on. Takes `&mut self` for the reason [`StateSlots::debug_texts`] does.
    pub(crate) fn copy_for(
        &mut self,
        ops: &[OpCode],
        env: *const c_void,
        lib: &Arc<LibVersion>,
    ) -> Result<StateSlots, String> {
        let mut out = StateSlots {
            slots: Vec::with_capacity(ops.len()),
            ptrs: Vec::with_capacity(ops.len()),
        };
        // Each slot copied at most once, as a migration moves it at most once.
        let mut taken = vec![false; self.slots.len()];
        for (i, op) in ops.iter().enumerate() {
            let kept = self
                .slots
                .iter()
                .zip(&mut taken)
                .find(|(s, taken)| !**taken && op.keeps_state_of(&s.op));
            let slot = match kept {
                Some((s, taken)) => {
                    *taken = true;
                    s.clone_for(op, lib)?
                }
                None => fresh_slot(env, lib, i, op).map_err(|e| e.to_string())?,
            };
            out.ptrs.push(slot.ptr.as_ptr());
            out.slots.push(slot);
        }
        Ok(out)
    }

    /// The Debug text of each operator's state (`None` for an operator without state), at
    /// most `cap` bytes each (a cut text ends with `…`). Takes `&mut self`: the plugin reads
    /// the slots, so no push may run meanwhile, and only the owner of the slots (the thread
    /// that pushes) can call it.
    pub fn debug_texts(&mut self, cap: usize) -> Vec<Option<String>> {
        let mut buf = vec![0u8; cap];
        self.slots
            .iter()
            .map(|slot| {
                let mut len = 0usize;
                // SAFETY: the slot holds an initialised value of the operator's state type
                // (seeded by a fingerprint-equal version, see `Slot`), nothing else touches it
                // during the call (`&mut self`), `buf` has `cap` writable bytes, and
                // `slot.lib` keeps the code of `debug` mapped.
                let status =
                    unsafe { (slot.op.debug)(slot.ptr.as_ptr(), buf.as_mut_ptr(), cap, &mut len) };
                let text = || String::from_utf8_lossy(&buf[..len.min(cap)]).into_owned();
                match status {
                    debug_status::OK => Some(text()),
                    debug_status::TRUNCATED => Some(text() + "…"),
                    debug_status::PANICKED => {
                        Some(format!("<its Debug panicked after {:?}>", text()))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    fn into_slots(mut self) -> Vec<Slot> {
        self.ptrs.clear();
        std::mem::take(&mut self.slots)
    }
}

fn fresh_slot(
    env: *const c_void,
    lib: &Arc<LibVersion>,
    index: usize,
    op: &OpCode,
) -> Result<Slot, InitError> {
    let ptr = if op.layout.size() == 0 {
        // A dangling pointer aligned for the type is valid for zero-sized reads and writes.
        NonNull::new(op.layout.align() as *mut u8).unwrap_or(NonNull::dangling())
    } else {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(op.layout) };
        NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(op.layout))
    };
    // SAFETY: `ptr` is valid and aligned for the operator's state layout (checked against its
    // fingerprint at registration), and `init` is this code's own initialiser.
    let status = unsafe { (op.init)(env, index as u32, ptr.as_ptr()) };
    if status != init_status::OK {
        if op.layout.size() != 0 {
            // SAFETY: allocated above with this layout and never initialised (`init`
            // writes nothing unless it returns OK).
            unsafe { std::alloc::dealloc(ptr.as_ptr(), op.layout) };
        }
        let path = op.path.clone();
        return Err(match status {
            init_status::PANICKED => InitError::Panicked { path },
            init_status::UNKNOWN_OP => InitError::UnknownOp { path, index },
            status => InitError::Status { path, status },
        });
    }
    Ok(Slot {
        ptr,
        layout: op.layout,
        op: op.clone(),
        lib: lib.clone(),
    })
}

impl Slot {
    /// A clone of this slot's value for `op` (whose state type is fingerprint-equal), made by
    /// the clone glue of the version that wrote it.
    fn clone_for(&self, op: &OpCode, lib: &Arc<LibVersion>) -> Result<Slot, String> {
        let ptr = if self.layout.size() == 0 {
            NonNull::new(self.layout.align() as *mut u8).unwrap_or(NonNull::dangling())
        } else {
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { std::alloc::alloc(self.layout) };
            NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(self.layout))
        };
        // SAFETY: the slot holds an initialised value of the state type, which nothing else
        // touches during the call (the caller owns the slots); `ptr` is valid and aligned for
        // that type, uninitialised; `self.lib` keeps the clone glue mapped.
        let status = unsafe { (self.op.clone)(self.ptr.as_ptr(), ptr.as_ptr()) };
        if status != clone_status::OK {
            if self.layout.size() != 0 {
                // SAFETY: allocated above with this layout, never initialised (the glue
                // writes nothing unless it answers OK).
                unsafe { std::alloc::dealloc(ptr.as_ptr(), self.layout) };
            }
            return Err(match status {
                clone_status::UNSUPPORTED => format!(
                    "the state of {} ({}) cannot be copied: its values need not be Clone",
                    self.op.path, self.op.kind
                ),
                clone_status::PANICKED => {
                    format!("the Clone of the state of {} panicked", self.op.path)
                }
                s => format!(
                    "copying the state of {} returned the unknown status {s}",
                    self.op.path
                ),
            });
        }
        Ok(Slot {
            ptr,
            layout: self.layout,
            op: op.clone(),
            lib: lib.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: the slot holds an initialised value of the operator's state type, which is
        // dropped once, here, by the drop function of the version that seeded it (or of a
        // fingerprint-equal one); `self.lib` keeps that version live.
        let _ = unsafe { (self.op.drop)(self.ptr.as_ptr()) };
        let _ = &self.lib;
        if self.layout.size() != 0 {
            // SAFETY: allocated in `fresh_slot` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
        }
    }
}

impl Drop for StateSlots {
    fn drop(&mut self) {
        self.ptrs.clear();
        self.slots.clear();
    }
}

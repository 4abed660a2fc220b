//! **Replay on reload**: what did my save change.
//!
//! Each pipeline's driver keeps its last inputs ([`Recent`]: source values and completions,
//! `--replay N`, 32 by default). When a reload stages new code for a running pipeline, the
//! reloader asks the pipeline's own thread (the code is plugin code, and the slots are the
//! thread's) to run those inputs through the old code and through the new code, each on a
//! **copy** of the live state ([`StateSlots::copy_for`]: the new code's copy keeps exactly
//! the slots a migration would keep, seeds the rest), and to compare what each emits
//! ([`run`]). Nothing reaches the outside: the callbacks the chain calls during a replay
//! ([`Muted`]) collect what `log` and `publish` would have emitted and the panics, and
//! deliver nothing; no event but the reload's report is emitted. `tap` closures are user
//! code and run. The replay is informative only: it never changes what the reload does.
//!
//! A subject's values are the publisher's, borrowed for the delivery: the ring keeps a clone
//! made by the reader's code ([`Recent::keep_subject`]).
//!
//! Not replayed, with the reason: a pipeline with a time operator (its pending timers are
//! host state a copy would have to move in time) or a higher-order one (its inner
//! subscriptions are host objects with sources of their own), one whose subject value could
//! not be cloned, one whose state cannot be copied (an operator
//! whose values need not be `Clone`: `take_last`, `last`, `buffer_count`, `zip`). A pipeline
//! whose `log` or `publish` operators changed their type or went away is reported
//! incomparable, not run.

use std::cell::RefCell;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use std::alloc::Layout;
use std::sync::Arc;

use plugin_api::abi::{
    CloneStateFn, DropStateFn, EmitCx, HostApi, InnerDesc, InnerHandle, RSignature, RStr,
    clone_status,
};

use crate::code::{HIGHER_ORDER, PipelineCode, Pushed, StateSlots, Wire};
use crate::events::{ReplayInfo, ReplaySample};
use crate::inner::Bytes;
use crate::loader::LibVersion;

/// How many recent inputs a pipeline keeps by default (`--replay N`).
pub const DEFAULT_INPUTS: usize = 32;

/// How long one pipeline's replay may run (old and new code together) before it is cut
/// short; the report then says how many inputs it compared.
pub const BUDGET: Duration = Duration::from_millis(100);

/// Samples of changed inputs a report carries.
pub const SAMPLES: usize = 5;

/// The most bytes of one Debug text in a sample.
const TEXT_CAP: usize = 200;

/// Operator kinds whose pipelines are not replayed, and why.
const NOT_REPLAYED: &[(&str, &str)] = &[
    (
        "debounce_ms",
        "a time operator: its pending timers are not copied",
    ),
    (
        "throttle_ms",
        "a time operator: its pending timers are not copied",
    ),
    (
        "delay_ms",
        "a time operator: its pending timers are not copied",
    ),
    (
        "buffer_time_ms",
        "a time operator: its pending timers are not copied",
    ),
];

/// One input of a pipeline, as its driver took it.
#[derive(Debug)]
pub(crate) enum Input<'a> {
    /// A value of a `u64` port (an interval's count, a `range` value, an `of` index).
    U64(u32, u64),
    /// A line of a line source.
    Line(u32, &'a str),
    /// A subject's value (a clone the ring holds), by its address.
    Held(u32, *const c_void),
    /// The source on the port completed.
    Complete(u32),
}

/// What kind of input a slot of the ring holds.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
enum Kind {
    U64,
    Line,
    Held,
    /// A subject's value of 8 plain bytes (no drop glue), in the slot's `x`.
    Inline,
    Complete,
}

/// One slot of the ring: plain data, so keeping a `u64` is two stores (a line's text is in
/// the slot's buffer beside it).
#[derive(Clone, Copy, Debug)]
struct Kept {
    kind: Kind,
    port: u32,
    x: u64,
}

/// The last inputs of a pipeline, oldest overwritten first. Keeping a `u64` costs two stores
/// and an index update; a line is copied into its slot's buffer, reused from one line to the
/// next (no allocation once the buffers are as long as the lines).
#[derive(Debug, Default)]
pub(crate) struct Recent {
    /// `cap` slots from the start (placeholders until written).
    ring: Vec<Kept>,
    /// One text buffer per slot, for lines (empty, unallocated, until a line comes).
    lines: Vec<String>,
    /// Per slot, a subject's value the slot holds (and its port), cloned with that port's
    /// glue: a value of at most 24 bytes inside the slot, a larger one in an allocation the
    /// slot reuses; dropped when another value of the port takes the slot, or at the end.
    held: Vec<Option<(u32, Bytes)>>,
    /// Per port, how a subject port's values are kept (`None` for the other sources).
    glue: Vec<Option<Glue>>,
    /// Bit `p`: port `p`'s values are 8 plain bytes (a number), kept in the slot itself
    /// (`Kind::Inline`: a copy, no call into the plugin, no room).
    inline: u64,
    /// Keeps the code of `glue` live.
    lib: Option<Arc<LibVersion>>,
    cap: usize,
    /// Where the next input goes.
    next: usize,
    /// Whether the ring went round once (every slot holds an input).
    full: bool,
    /// Why this pipeline's inputs cannot be replayed (a subject's value could not be kept).
    pub(crate) unkept: Option<String>,
}

impl Recent {
    /// Keeps the last `cap` inputs (0: none).
    pub(crate) fn new(cap: usize) -> Recent {
        let placeholder = Kept {
            kind: Kind::Complete,
            port: 0,
            x: 0,
        };
        Recent {
            ring: vec![placeholder; cap],
            lines: vec![String::new(); cap],
            held: (0..cap).map(|_| None).collect(),
            glue: Vec::new(),
            inline: 0,
            lib: None,
            cap,
            next: 0,
            full: false,
            unkept: None,
        }
    }

    /// Writes the next slot, or nothing when nothing is kept; returns its index.
    #[inline(always)]
    fn put(&mut self, kept: Kept) -> Option<usize> {
        let i = self.next;
        let cap = self.cap;
        *self.ring.get_mut(i)? = kept;
        if i + 1 == cap {
            self.next = 0;
            self.full = true;
        } else {
            self.next = i + 1;
        }
        Some(i)
    }

    /// Keeps a value of a `u64` port.
    #[inline(always)]
    pub(crate) fn keep_u64(&mut self, port: u32, x: u64) {
        self.put(Kept {
            kind: Kind::U64,
            port,
            x,
        });
    }

    /// Keeps values of a `u64` port (the last `cap` of them).
    #[inline]
    pub(crate) fn keep_u64s(&mut self, port: u32, items: &[u64]) {
        let from = items.len().saturating_sub(self.cap);
        for &x in &items[from..] {
            self.keep_u64(port, x);
        }
    }

    /// Keeps a line.
    #[inline]
    pub(crate) fn keep_line(&mut self, port: u32, line: &str) {
        let kept = Kept {
            kind: Kind::Line,
            port,
            x: 0,
        };
        if let Some(text) = self.put(kept).and_then(|i| self.lines.get_mut(i)) {
            text.clear();
            text.push_str(line);
        }
    }

    /// Whether inputs are kept at all (`--replay` is not 0).
    pub(crate) fn keeps(&self) -> bool {
        self.cap != 0
    }

    /// Keeps a clone of a subject's value, made by the port's glue; the glue's status when
    /// it could not (nothing is kept then).
    ///
    /// # Safety
    /// `value` must point at a live value of the port's layout (checked against the
    /// publisher's), which nothing mutates during the call.
    #[inline(always)]
    pub(crate) unsafe fn keep_subject(
        &mut self,
        port: u32,
        value: *const c_void,
    ) -> Result<(), u32> {
        // The common case inline: an 8-byte plain value (a number), its bytes in the slot.
        if port < 64 && self.inline >> port & 1 == 1 {
            // SAFETY: `value` points at a live value of the port's layout, 8 bytes of any
            // alignment up to 8 (the caller's obligation); read as bytes, unaligned.
            let x = unsafe { value.cast::<u64>().read_unaligned() };
            self.put(Kept {
                kind: Kind::Inline,
                port,
                x,
            });
            return Ok(());
        }
        // SAFETY: forwarded.
        unsafe { self.keep_subject_slow(port, value) }
    }

    /// `keep_subject` in general.
    ///
    /// # Safety
    /// As `keep_subject`.
    unsafe fn keep_subject_slow(&mut self, port: u32, value: *const c_void) -> Result<(), u32> {
        let i = self.next;
        if i >= self.ring.len() {
            return Ok(());
        }
        let Some(g) = self.glue.get(port as usize).copied().flatten() else {
            return Err(clone_status::UNSUPPORTED);
        };
        // The slot's room is reused, in place, for a value of the same port (the same
        // layout); another port's value goes first. (In place: moving the room in and out
        // of the slot cost a store-forwarding stall per value.)
        if self.held[i].as_ref().is_some_and(|(p, _)| *p != port)
            && let Some((p, room)) = self.held[i].take()
        {
            self.free(p, room);
        }
        let fresh = self.held[i].is_none();
        let slot = self.held[i].get_or_insert_with(|| (port, Bytes::new(g.layout)));
        let room = slot.1.as_mut_ptr();
        if g.plain {
            // A value without drop glue (a number, a struct of numbers): its bytes, with no
            // call into the plugin; the copy it replaces is forgotten, not dropped.
            // SAFETY: `value` points at a live value of the port's layout (the caller's
            // obligation); the room is valid for that layout; the two do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(value.cast::<u8>(), room, g.layout.size()) };
        } else {
            if !fresh {
                // SAFETY: the room holds a live value of this port, dropped once, here.
                let _ = unsafe { (g.drop)(room) };
            }
            // SAFETY: the room is valid and aligned for the layout, uninitialised (dropped
            // above, or new); `value` is the caller's obligation; the glue is the port's, in
            // the code `self.lib` keeps.
            let status = unsafe { (g.clone)(value.cast::<u8>(), room) };
            if status != clone_status::OK {
                if let Some((_, room)) = self.held[i].take() {
                    room.release(g.layout);
                }
                return Err(status);
            }
        }
        self.put(Kept {
            kind: Kind::Held,
            port,
            x: 0,
        });
        Ok(())
    }

    /// Takes `code`'s glue for its subject ports (when the driver starts, and when it takes
    /// new code): kept values are then dropped by that version's glue, as good as the old
    /// one's for a fingerprint-equal type, so the old version can retire. A port whose
    /// layout changed (never, for a swap: a changed subject type restarts the pipeline), or
    /// whose values became or stopped being plain bytes (a `Drop` impl added or removed: the
    /// fingerprint does not see it), has its values dropped by the old glue first.
    pub(crate) fn set_code(&mut self, code: &PipelineCode) {
        let glue: Vec<Option<Glue>> = code
            .sources
            .iter()
            .zip(&code.value_glue)
            .map(|(s, &(clone, drop, plain))| {
                let fp = s.item.as_ref()?;
                let size = usize::try_from(fp.size).ok()?;
                let align = usize::try_from(fp.align).ok()?.max(1);
                let layout = Layout::from_size_align(size, align).ok()?;
                Some(Glue {
                    clone,
                    // A plain value's copy is forgotten, not dropped.
                    drop: if plain { forget_plain } else { drop },
                    plain,
                    layout,
                })
            })
            .collect();
        self.take_glue(glue);
        self.lib = Some(code.lib().clone());
    }

    /// `set_code` with its ports' glue read: the kept values follow it.
    fn take_glue(&mut self, glue: Vec<Option<Glue>>) {
        // A value kept under other terms (another layout, or a copy of plain bytes where
        // the new version's type has drop glue, or the other way round) goes with the glue
        // it was kept with.
        let terms = |g: &[Option<Glue>], port: usize| {
            g.get(port).copied().flatten().map(|g| (g.layout, g.plain))
        };
        for i in 0..self.held.len() {
            let Some(port) = self.held[i].as_ref().map(|(p, _)| *p as usize) else {
                continue;
            };
            if terms(&self.glue, port) != terms(&glue, port)
                && let Some((p, room)) = self.held[i].take()
            {
                self.free(p, room);
            }
        }
        // The same for the values kept in the ring's slots: one whose port's terms changed
        // reads as a completion, as a freed room does (its slot's room, if any, may hold
        // another port's value).
        for k in &mut self.ring {
            let port = k.port as usize;
            if matches!(k.kind, Kind::Inline) && terms(&self.glue, port) != terms(&glue, port) {
                k.kind = Kind::Complete;
            }
        }
        self.inline = glue
            .iter()
            .enumerate()
            .take(64)
            .filter(|(_, g)| {
                g.is_some_and(|g| g.plain && g.layout.size() == 8 && g.layout.align() <= 8)
            })
            .fold(0, |m, (p, _)| m | 1 << p);
        self.glue = glue;
    }

    /// Drops a kept value of `port` and frees its room.
    fn free(&self, port: u32, mut room: Bytes) {
        match self.glue.get(port as usize).copied().flatten() {
            Some(g) => {
                // SAFETY: the room holds a live value of this port's layout, dropped once,
                // here, by the glue of a version `self.lib` keeps.
                let _ = unsafe { (g.drop)(room.as_mut_ptr()) };
                room.release(g.layout);
            }
            // Never: a value is kept only through its port's glue, and `set_code` frees
            // the values of a port whose glue goes. Leaked rather than dropped blind.
            None => debug_assert!(false, "a kept value of port {port} without glue"),
        }
    }

    /// Keeps a completion.
    #[inline]
    pub(crate) fn keep_complete(&mut self, port: u32) {
        self.put(Kept {
            kind: Kind::Complete,
            port,
            x: 0,
        });
    }

    /// Notes that a value was not kept (a subject's): the pipeline is not replayed.
    #[cold]
    pub(crate) fn unkept(&mut self, why: impl FnOnce() -> String) {
        if self.cap != 0 && self.unkept.is_none() {
            self.unkept = Some(why());
        }
    }

    /// How many inputs are kept.
    pub(crate) fn len(&self) -> usize {
        if self.full { self.cap } else { self.next }
    }

    /// The kept inputs, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Input<'_>> {
        let order = if !self.full {
            0..self.len()
        } else {
            self.next..self.next + self.cap
        };
        order.map(move |i| {
            let i = i % self.cap.max(1);
            let k = self.ring[i];
            match k.kind {
                Kind::Inline => Input::Held(k.port, (&raw const self.ring[i].x).cast()),
                Kind::U64 => Input::U64(k.port, k.x),
                Kind::Line => Input::Line(k.port, &self.lines[i]),
                Kind::Held => match &self.held[i] {
                    Some((_, room)) => Input::Held(k.port, room.as_ptr()),
                    None => Input::Complete(k.port),
                },
                Kind::Complete => Input::Complete(k.port),
            }
        })
    }
}

impl Drop for Recent {
    fn drop(&mut self) {
        for i in 0..self.held.len() {
            if let Some((port, room)) = self.held[i].take() {
                self.free(port, room);
            }
        }
    }
}

/// How the ring keeps one subject port's values: the reader's clone and drop glue, and the
/// values' layout.
#[derive(Clone, Copy, Debug)]
struct Glue {
    clone: CloneStateFn,
    drop: DropStateFn,
    /// Values without drop glue: kept by copying their bytes, without a call into the
    /// plugin (`SourceDesc::value_plain`).
    plain: bool,
    layout: Layout,
}

/// The drop of a plain value's copy: nothing to do.
unsafe extern "C" fn forget_plain(_value: *mut u8) -> bool {
    true
}

/// What a chain emits to the outside during a replay, collected instead of delivered.
struct Muted<'a> {
    code: &'a PipelineCode,
    /// What the input being run made the chain emit (`log` texts, `publish`ed values).
    out: RefCell<Vec<String>>,
    /// Panics (path: message), in order.
    panics: RefCell<Vec<String>>,
    /// What `EmitCx::now` reads: the clock when the replay began.
    now: u64,
    /// Where the plugin writes the operator it is in (read by nobody during a replay).
    op: AtomicU32,
    /// What `EmitCx::api` points at.
    api: HostApi,
}

impl Muted<'_> {
    fn path(&self, op: u32) -> String {
        self.code
            .ops
            .get(op as usize)
            .map_or_else(|| self.code.name.clone(), |o| o.path.clone())
    }
}

/// The registration callbacks an inner stream would use: a replay never runs one (pipelines
/// with higher-order operators are not replayed), so they do nothing.
fn refusing_api() -> HostApi {
    HostApi {
        abi_version: plugin_api::abi::ABI_VERSION,
        ctx: std::ptr::null_mut(),
        track_call: api_track_call,
        track_call_return: api_track_call_return,
        add_pipeline: api_add_pipeline,
        fail: api_fail,
    }
}

unsafe extern "C" fn api_track_call(
    _ctx: *mut c_void,
    _name: RStr,
    _key: RStr,
    _signature: *const RSignature,
) -> u64 {
    0
}

unsafe extern "C" fn api_track_call_return(_ctx: *mut c_void, _track: u64) {}

unsafe extern "C" fn api_add_pipeline(
    _ctx: *mut c_void,
    _desc: *const plugin_api::abi::PipelineDesc,
) {
}

unsafe extern "C" fn api_fail(_ctx: *mut c_void, _message: RStr) {}

unsafe extern "C" fn muted_log(host: *mut c_void, _op: u32, text: RStr) {
    // SAFETY: `host` is the `Muted` of the replay running on this thread, alive for the call;
    // `text` is valid for the call.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let m = &*host.cast::<Muted<'_>>();
        let text = text.to_string_lossy().unwrap_or_default();
        m.out.borrow_mut().push(cut(&text));
    }));
}

unsafe extern "C" fn muted_error(host: *mut c_void, op: u32, message: RStr) {
    // SAFETY: as in `muted_log`.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let m = &*host.cast::<Muted<'_>>();
        let message = message.to_string_lossy().unwrap_or_default();
        m.out
            .borrow_mut()
            .push(format!("<panicked: {}>", cut(&message)));
        let mut panics = m.panics.borrow_mut();
        if panics.len() < SAMPLES {
            panics.push(format!("{}: {}", m.path(op), cut(&message)));
        }
    }));
}

unsafe extern "C" fn muted_publish(host: *mut c_void, op: u32, value: *const c_void) {
    // SAFETY: as in `muted_log`; `value` is the publisher's value (of the `PublishSpec`'s
    // type), borrowed for the call.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let m = &*host.cast::<Muted<'_>>();
        let Some(p) = m.code.publishes.iter().find(|p| p.op == op) else {
            return;
        };
        let mut buf = vec![0u8; TEXT_CAP];
        let mut len = 0usize;
        let _ = (p.debug)(value.cast::<u8>(), buf.as_mut_ptr(), TEXT_CAP, &mut len);
        let text = String::from_utf8_lossy(&buf[..len.min(TEXT_CAP)]);
        m.out
            .borrow_mut()
            .push(format!("{:?} <- {text}", p.subject));
    }));
}

unsafe extern "C" fn muted_now(host: *mut c_void) -> u64 {
    // SAFETY: as in `muted_log`.
    unsafe { (*host.cast::<Muted<'_>>()).now }
}

unsafe extern "C" fn muted_schedule(_host: *mut c_void, _op: u32, _deadline: u64) {}

unsafe extern "C" fn muted_subscribe(
    _host: *mut c_void,
    _op: u32,
    desc: *const InnerDesc,
    _out: *mut InnerHandle,
) -> bool {
    // The host owns what it was handed, whatever it answers: free it (never reached, as
    // pipelines with higher-order operators are not replayed, but sound if it were).
    // SAFETY: `desc` is valid for the call; its env and value are the host's now.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let d = &*desc;
        if !d.value.is_null() {
            let _ = (d.value_drop)(d.value.cast::<u8>());
        }
        (d.drop_env)(d.env);
    }));
    false
}

unsafe extern "C" fn muted_unsubscribe(_host: *mut c_void, _op: u32, _instance: u64) {}

/// Never reached either (see `muted_subscribe`): the long way, which refuses.
unsafe extern "C" fn muted_subscribe_sync(
    _host: *mut c_void,
    _op: u32,
    _ops: *const plugin_api::abi::OpDesc,
    _sigs: *const plugin_api::abi::RSignature,
    _n_ops: usize,
    _cx: *mut *const EmitCx,
    _memo: *mut u64,
) -> u64 {
    0
}

/// Never reached (see `muted_subscribe_sync`).
unsafe extern "C" fn muted_subscribe_sync_again(
    _host: *mut c_void,
    _op: u32,
    _memo: u64,
    _cx: *mut *const EmitCx,
) -> u64 {
    0
}

/// `text`, cut to [`TEXT_CAP`] bytes at a character boundary.
fn cut(text: &str) -> String {
    if text.len() <= TEXT_CAP {
        return text.to_owned();
    }
    let mut n = TEXT_CAP;
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    format!("{}…", &text[..n])
}

/// Why `code` is not replayed, if it is not: a kind of `NOT_REPLAYED`, or a higher-order
/// operator ([`HIGHER_ORDER`]).
fn not_replayable(code: &PipelineCode) -> Option<String> {
    code.ops.iter().find_map(|op| {
        let why = NOT_REPLAYED
            .iter()
            .find(|(kind, _)| *kind == op.kind)
            .map(|(_, why)| *why)
            .or_else(|| {
                HIGHER_ORDER
                    .contains(&op.kind.as_str())
                    .then_some("a higher-order operator: its inner subscriptions are not copied")
            })?;
        Some(format!("{} is {}, {why}", op.path, op.kind))
    })
}

/// Why the outputs of `old` and `new` cannot be compared: a `log` or `publish` operator
/// that changed its input type, or that one version has and the other lacks.
fn incomparable(old: &PipelineCode, new: &PipelineCode) -> Option<String> {
    let sinks = |c: &PipelineCode| {
        c.ops
            .iter()
            .filter(|o| o.kind == "log" || o.kind == "publish")
            .map(|o| (o.path.clone(), o.signature.input.clone()))
            .collect::<Vec<_>>()
    };
    let (a, b) = (sinks(old), sinks(new));
    for (path, input) in &a {
        match b.iter().find(|(p, _)| p == path) {
            None => return Some(format!("{path} is gone")),
            Some((_, now)) if now != input => {
                let name = |f: &Option<hmr_track::Fingerprint>| {
                    f.as_ref()
                        .map_or_else(|| "nothing".to_owned(), |f| f.name.to_string())
                };
                return Some(format!(
                    "{path} now takes `{}`, not `{}`",
                    name(now),
                    name(input)
                ));
            }
            Some(_) => {}
        }
    }
    b.iter()
        .find(|(p, _)| !a.iter().any(|(q, _)| q == p))
        .map(|(path, _)| format!("{path} is new"))
}

/// A pipeline not replayed, and why.
pub(crate) fn not_replayed(pipeline: &str, why: String) -> ReplayInfo {
    report(pipeline, "not-replayed", Some(why))
}

fn report(pipeline: &str, status: &str, reason: Option<String>) -> ReplayInfo {
    ReplayInfo {
        pipeline: pipeline.to_owned(),
        inputs: 0,
        changed: 0,
        samples: Vec::new(),
        status: status.to_owned(),
        reason,
        panics: Vec::new(),
    }
}

/// One side of a replay: a version's code, its state copy and its muted callbacks.
struct Side<'a> {
    code: &'a PipelineCode,
    states: StateSlots,
    /// Shared, not boxed: `cx` points into it, and moving an `Rc` (unlike a `Box`) asserts
    /// nothing about pointers taken from it (as `Driver::host`).
    muted: Rc<Muted<'a>>,
    cx: EmitCx,
    /// The chain's end completed: it emits nothing more.
    done: bool,
}

impl<'a> Side<'a> {
    fn new(code: &'a PipelineCode, states: StateSlots, now: u64) -> Side<'a> {
        let muted = Rc::new(Muted {
            code,
            out: RefCell::new(Vec::new()),
            panics: RefCell::new(Vec::new()),
            now,
            op: AtomicU32::new(u32::MAX),
            api: refusing_api(),
        });
        let cx = EmitCx {
            host: Rc::as_ptr(&muted).cast_mut().cast::<c_void>(),
            log: muted_log,
            error: muted_error,
            publish: muted_publish,
            current_op: &raw const muted.op,
            counts: std::ptr::null(),
            marble: plugin_api::abi::no_marble,
            marble_calls: std::ptr::null(),
            now: muted_now,
            schedule: muted_schedule,
            subscribe: muted_subscribe,
            subscribe_sync: muted_subscribe_sync,
            subscribe_sync_again: muted_subscribe_sync_again,
            unsubscribe: muted_unsubscribe,
            api: &raw const muted.api,
        };
        Side {
            code,
            states,
            muted,
            cx,
            done: false,
        }
    }

    /// Runs `input` through this side's code; what it emitted.
    fn run(&mut self, input: &Input<'_>) -> Vec<String> {
        if !self.done {
            let pushed = match input {
                Input::U64(port, x) => self.push(*port, Wire::U64, (&raw const *x).cast()),
                Input::Line(port, text) => {
                    let view = RStr::new(text);
                    self.push(*port, Wire::Str, (&raw const view).cast())
                }
                Input::Held(port, value) => self.push(*port, Wire::Ptr, (&raw const *value).cast()),
                Input::Complete(port) => self.code.complete(&self.states, *port, &self.cx),
            };
            self.done = matches!(pushed, Pushed::Complete { .. });
        }
        std::mem::take(&mut *self.muted.out.borrow_mut())
    }

    fn push(&self, port: u32, wire: Wire, item: *const c_void) -> Pushed {
        if self.code.sources.get(port as usize).map(|s| s.wire()) != Some(wire) {
            // The ports' types are the same in both versions (a source change restarts the
            // pipeline instead), so this is never reached; nothing runs if it is.
            return Pushed::Continue;
        }
        let (push_one, env) = self.code.push_one_raw(false);
        // SAFETY: this code's entry point and closures, and slots built for its operators
        // (`copy_for`); the port takes `wire` values (checked above) and `item` points at
        // one, valid for the call; `cx` points into `self.muted`, alive for the call. The
        // plugin catches its own panics.
        let s = unsafe { push_one(env, self.states.as_ptr(), port, item, &self.cx) };
        Pushed::from_one(s)
    }
}

/// Replays `recent` through `old` (running with `states`) and through `new` (the staged
/// code), each on a copy of `states`, and compares what they emit, input by input. Stops
/// after `budget`. `now` is what the chains read as the clock.
pub(crate) fn run(
    old: &PipelineCode,
    states: &mut StateSlots,
    new: &PipelineCode,
    recent: &Recent,
    now: u64,
    budget: Duration,
) -> ReplayInfo {
    let name = &old.name;
    if let Some(why) = &recent.unkept {
        return report(name, "not-replayed", Some(why.clone()));
    }
    if let Some(why) = not_replayable(old).or_else(|| not_replayable(new)) {
        return report(name, "not-replayed", Some(why));
    }
    if let Some(why) = incomparable(old, new) {
        let mut r = report(name, "incomparable", Some(why));
        r.inputs = recent.len();
        return r;
    }
    let copies = states
        .copy_for(&old.ops, old.env, old.lib())
        .and_then(|a| Ok((a, states.copy_for(&new.ops, new.env, new.lib())?)));
    let (a, b) = match copies {
        Ok(c) => c,
        Err(why) => return report(name, "not-replayed", Some(why)),
    };
    let started = Instant::now();
    let mut r = report(name, "compared", None);
    let (mut old_side, mut new_side) = (Side::new(old, a, now), Side::new(new, b, now));
    for input in recent.iter() {
        if started.elapsed() > budget {
            r.status = "cut-short".to_owned();
            r.reason = Some(format!(
                "the replay ran past its budget of {} ms after {} of {} inputs",
                budget.as_millis(),
                r.inputs,
                recent.len()
            ));
            break;
        }
        let was = old_side.run(&input);
        let now = new_side.run(&input);
        r.inputs += 1;
        if was != now {
            r.changed += 1;
            if r.samples.len() < SAMPLES {
                r.samples.push(ReplaySample {
                    input: describe(old, &input),
                    old: outputs(&was),
                    new: outputs(&now),
                });
            }
        }
    }
    for (side, label) in [(&old_side, "old"), (&new_side, "new")] {
        for p in side.muted.panics.borrow().iter() {
            r.panics.push(format!("{label} code: {p}"));
        }
    }
    // The copies drop here, through their versions' glue, on this thread.
    r
}

/// An input's Debug text, as the source's values read (an `of` index as its item).
fn describe(code: &PipelineCode, input: &Input<'_>) -> String {
    let text = match input {
        // SAFETY: `x` is a value of the port's wire type `u64` (kept from a `u64` port).
        Input::U64(port, x) => unsafe { code.describe(*port, (&raw const *x).cast(), TEXT_CAP) },
        Input::Line(port, text) => {
            let view = RStr::new(text);
            // SAFETY: a line port's wire value is an `RStr` view, valid for the call.
            unsafe { code.describe(*port, (&raw const view).cast(), TEXT_CAP) }
        }
        // SAFETY: a subject port's wire value is a pointer to a live value of its layout (the
        // ring's clone, alive while the ring is).
        Input::Held(port, value) => unsafe {
            code.describe(*port, (&raw const *value).cast(), TEXT_CAP)
        },
        Input::Complete(port) => Some(format!("complete (port {port})")),
    };
    text.unwrap_or_else(|| match input {
        Input::U64(_, x) => x.to_string(),
        Input::Line(_, t) => format!("{t:?}"),
        Input::Held(port, _) => format!("a value of subject port {port}"),
        Input::Complete(port) => format!("complete (port {port})"),
    })
}

/// What one input made a chain emit, as one text.
fn outputs(out: &[String]) -> String {
    if out.is_empty() {
        "nothing".to_owned()
    } else {
        out.join(", ")
    }
}

/// The line a person reads for one pipeline's replay, or `None` when there is nothing to
/// say (no input changed, or it was not replayed). Panics that the old code had too change
/// nothing and go unsaid; the first of the new code's is named.
pub fn line(r: &ReplayInfo) -> Option<String> {
    let panics = r
        .panics
        .iter()
        .find_map(|p| p.strip_prefix("new code: "))
        .map_or_else(String::new, |p| format!("; the new code panicked: {p}"));
    match r.status.as_str() {
        "incomparable" => Some(format!(
            "{}: replay not compared: {}",
            r.pipeline,
            r.reason.as_deref().unwrap_or("")
        )),
        "not-replayed" => None,
        _ if r.changed == 0 && r.status == "compared" => None,
        _ => {
            let mut s = format!(
                "{}: {} of {} recent inputs now give other values",
                r.pipeline, r.changed, r.inputs
            );
            if let Some(e) = r.samples.first() {
                s.push_str(&format!(", e.g. {}: {} -> {}", e.input, e.old, e.new));
            }
            if r.status == "cut-short" {
                s.push_str(&format!(
                    " ({})",
                    r.reason.as_deref().unwrap_or("cut short")
                ));
            }
            s.push_str(&panics);
            Some(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What to keep: `u` a value, `l` a line, `c` a completion, `b` a batch of three values.
    fn kept(cap: usize, script: &str) -> Vec<String> {
        let mut r = Recent::new(cap);
        for (i, c) in script.chars().enumerate() {
            let i = i as u64;
            match c {
                'u' => r.keep_u64(0, i),
                'l' => r.keep_line(1, &format!("line {i}")),
                'c' => r.keep_complete(2),
                'b' => r.keep_u64s(3, &[i * 10, i * 10 + 1, i * 10 + 2]),
                _ => unreachable!(),
            }
        }
        assert!(r.len() <= cap);
        r.iter().map(|i| format!("{i:?}")).collect()
    }

    #[test]
    fn the_ring_keeps_the_last_inputs_oldest_first() {
        let cases: &[(usize, &str, &[&str])] = &[
            (0, "uulcb", &[]),
            (3, "", &[]),
            (3, "uu", &["U64(0, 0)", "U64(0, 1)"]),
            (3, "uuu", &["U64(0, 0)", "U64(0, 1)", "U64(0, 2)"]),
            (3, "uuuu", &["U64(0, 1)", "U64(0, 2)", "U64(0, 3)"]),
            (
                3,
                "ulcu",
                &["Line(1, \"line 1\")", "Complete(2)", "U64(0, 3)"],
            ),
            (2, "ub", &["U64(3, 11)", "U64(3, 12)"]),
            (
                4,
                "ub",
                &["U64(0, 0)", "U64(3, 10)", "U64(3, 11)", "U64(3, 12)"],
            ),
            (1, "ulu", &["U64(0, 2)"]),
            (2, "lllll", &["Line(1, \"line 3\")", "Line(1, \"line 4\")"]),
        ];
        for (cap, script, expected) in cases {
            assert_eq!(kept(*cap, script), *expected, "cap {cap}, {script:?}");
        }
    }

    #[test]
    fn a_line_reuses_the_buffer_of_the_line_it_overwrites() {
        let mut r = Recent::new(1);
        r.keep_line(0, "a first, long line");
        let before = match r.iter().next() {
            Some(Input::Line(_, t)) => t.as_ptr(),
            other => panic!("{other:?}"),
        };
        r.keep_line(4, "shorter");
        match r.iter().next() {
            Some(Input::Line(4, t)) => {
                assert_eq!(t, "shorter");
                assert_eq!(t.as_ptr(), before, "no new allocation");
            }
            other => panic!("{other:?}"),
        }
    }

    unsafe extern "C" fn clone_u32(src: *const u8, dst: *mut u8) -> u32 {
        // SAFETY: the test passes a live `u32` and room for one.
        unsafe { dst.cast::<u32>().write(src.cast::<u32>().read()) };
        clone_status::OK
    }

    /// A subject port's glue in these tests: plain values of `layout`.
    fn plain(layout: Layout) -> Option<Glue> {
        Some(Glue {
            clone: clone_u32,
            drop: forget_plain,
            plain: true,
            layout,
        })
    }

    /// What the ring reads back: a held value as the `u64` (or `u32`) it points at.
    fn read_back(r: &Recent, size: usize) -> Vec<String> {
        r.iter()
            .map(|i| match i {
                // SAFETY: the ring's values of these tests are `u64`s or `u32`s.
                Input::Held(p, v) if size == 8 => format!("{p}: {}", unsafe { *v.cast::<u64>() }),
                // SAFETY: as above.
                Input::Held(p, v) => format!("{p}: {}", unsafe { *v.cast::<u32>() }),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn plain_eight_byte_values_are_kept_in_the_ring_and_go_with_their_terms() {
        let u64s = Layout::new::<u64>();
        let mut r = Recent::new(3);
        r.take_glue(vec![None, plain(u64s), plain(Layout::new::<u32>())]);
        assert_eq!(r.inline, 0b10, "only the 8-byte port is kept inline");
        for x in [7u64, 8, 9, 10] {
            // SAFETY: port 1 reads `u64`s; `x` lives across the call.
            unsafe { r.keep_subject(1, (&raw const x).cast()) }.unwrap();
        }
        assert_eq!(read_back(&r, 8), ["1: 8", "1: 9", "1: 10"]);
        // A `u32` port's values go to the slot's room, beside the inline ones.
        let y = 5u32;
        // SAFETY: port 2 reads `u32`s.
        unsafe { r.keep_subject(2, (&raw const y).cast()) }.unwrap();
        assert_eq!(r.iter().count(), 3);
        // The same terms again (a swap): the values stay.
        r.take_glue(vec![None, plain(u64s), plain(Layout::new::<u32>())]);
        assert_eq!(read_back(&r, 8)[..2], ["1: 9", "1: 10"]);
        // Port 1 now reads another layout: its kept values read as completions, not as
        // the new layout's bytes; port 2's value stays.
        r.take_glue(vec![
            None,
            plain(Layout::new::<u32>()),
            plain(Layout::new::<u32>()),
        ]);
        assert_eq!(r.inline, 0);
        assert_eq!(read_back(&r, 4), ["Complete(1)", "Complete(1)", "2: 5"]);
    }

    #[test]
    fn a_subject_value_marks_the_pipeline_not_replayed_once() {
        let mut r = Recent::new(4);
        r.unkept(|| "first".to_owned());
        r.unkept(|| "second".to_owned());
        assert_eq!(r.unkept.as_deref(), Some("first"));
        let mut off = Recent::new(0);
        off.unkept(|| "nothing is kept".to_owned());
        assert_eq!(off.unkept, None);
    }

    #[test]
    fn a_person_reads_one_line_per_pipeline_with_something_to_say() {
        let sample = |i: &str, o: &str, n: &str| ReplaySample {
            input: i.into(),
            old: o.into(),
            new: n.into(),
        };
        let info = |status: &str, changed, samples, reason: Option<&str>, panics: Vec<String>| {
            ReplayInfo {
                pipeline: "counter".into(),
                inputs: 32,
                changed,
                samples,
                status: status.into(),
                reason: reason.map(str::to_owned),
                panics,
            }
        };
        let cases = [
            (info("compared", 0, vec![], None, vec![]), None),
            (
                info("compared", 12, vec![sample("7", "14", "21")], None, vec![]),
                Some("counter: 12 of 32 recent inputs now give other values, e.g. 7: 14 -> 21"),
            ),
            (
                info(
                    "not-replayed",
                    0,
                    vec![],
                    Some("counter|0:debounce_ms is ..."),
                    vec![],
                ),
                None,
            ),
            (
                info(
                    "incomparable",
                    0,
                    vec![],
                    Some("counter|1:log now takes `f64`, not `u64`"),
                    vec![],
                ),
                Some("counter: replay not compared: counter|1:log now takes `f64`, not `u64`"),
            ),
            (
                info(
                    "compared",
                    1,
                    vec![sample("2", "3", "<panicked: boom>")],
                    None,
                    vec![
                        "old code: counter|0:map: bang".into(),
                        "new code: counter|0:map: boom".into(),
                    ],
                ),
                Some(
                    "counter: 1 of 32 recent inputs now give other values, e.g. 2: 3 -> <panicked: boom>; the new code panicked: counter|0:map: boom",
                ),
            ),
            (
                info(
                    "compared",
                    0,
                    vec![],
                    None,
                    vec![
                        "old code: counter|0:map: boom".into(),
                        "new code: counter|0:map: boom".into(),
                    ],
                ),
                None,
            ),
            (
                info(
                    "cut-short",
                    0,
                    vec![],
                    Some("the replay ran past its budget of 100 ms after 5 of 32 inputs"),
                    vec![],
                ),
                Some(
                    "counter: 0 of 32 recent inputs now give other values (the replay ran past its budget of 100 ms after 5 of 32 inputs)",
                ),
            ),
        ];
        for (r, expected) in cases {
            assert_eq!(line(&r).as_deref(), expected, "{r:?}");
        }
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(TEXT_CAP);
        let c = cut(&long);
        assert!(
            c.ends_with('…') && c.len() <= TEXT_CAP + '…'.len_utf8(),
            "{c}"
        );
    }
}

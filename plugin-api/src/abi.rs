//! The stable ABI: every type and function that crosses the library boundary.
//!
//! Architecture invariant: only `#[repr(C)]` data, integers and `extern "C"` function
//! pointers appear here. No Rust-ABI type (`String`, `Vec`, trait objects, `Result`, enums
//! with data) crosses between host and plugin; strings travel as [`RStr`] views that the
//! receiver copies before the call returns.
//!
//! The load sequence the host follows (see `host::loader`):
//!
//! 1. look up [`HEADER_SYMBOL`] (`hmr_plugin_header`) and call it;
//! 2. check [`PluginHeader::magic`], then [`PluginHeader::abi_version`] and
//!    [`PluginHeader::header_size`]: these three leading fields are frozen across ABI versions
//!    so that any future host can read them;
//! 3. compare the plugin-api version, the rustc version and the target strings, and refuse a
//!    plugin whose panic strategy is not `unwind`;
//! 4. only then call [`PluginHeader::register`] with a [`HostApi`].

use core::ffi::c_void;

/// The name of the exported function returning `*const PluginHeader`.
pub const HEADER_SYMBOL: &[u8] = b"hmr_plugin_header";

/// The first eight bytes of every plugin header.
pub const MAGIC: [u8; 8] = *b"RXHMR\0\x01\x00";

/// Bumped whenever any type in this module changes layout or meaning.
pub const ABI_VERSION: u32 = 13;

/// The version of the `plugin-api` crate compiled into this side of the boundary.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `rustc -V` of the compiler that built this side of the boundary.
pub const RUSTC_VERSION: &str = env!("HMR_RUSTC_VERSION");

/// The target triple this side of the boundary was built for.
pub const TARGET: &str = env!("HMR_TARGET");

/// The panic strategy this side of the boundary was built with: `unwind`, or `abort` (a
/// profile's `panic = "abort"`, or `-C panic=abort`). Compiled into the plugin with the rest
/// of plugin-api, so it is the plugin's: the host refuses a plugin whose panics cannot be
/// caught, since any of them would end the host's process.
pub const PANIC_STRATEGY: &str = if cfg!(panic = "unwind") {
    "unwind"
} else {
    "abort"
};

/// A borrowed UTF-8 string: a pointer and a length. The receiver must copy it before the
/// call it was passed to returns, unless the documentation of that call says otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RStr {
    /// Start of the bytes; may be null only when `len` is 0.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl RStr {
    /// The absent string (used for "no key").
    pub const NONE: RStr = RStr {
        ptr: core::ptr::null(),
        len: 0,
    };

    /// A view of `s`; valid as long as `s` is.
    pub const fn new(s: &str) -> RStr {
        RStr {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// Whether this is [`RStr::NONE`].
    pub fn is_none(&self) -> bool {
        self.ptr.is_null()
    }

    /// The string this view points at; `None` for [`RStr::NONE`]. Invalid UTF-8 is replaced,
    /// so a corrupt string from a bad library cannot cause undefined behaviour here.
    ///
    /// # Safety
    /// Unless null, `ptr` must point at `len` readable bytes that stay valid and unchanged
    /// for `'a`.
    pub unsafe fn to_string_lossy<'a>(&self) -> Option<std::borrow::Cow<'a, str>> {
        // SAFETY: forwarded.
        let bytes = unsafe { self.bytes() }?;
        // The common case (valid UTF-8) checked by the fast validator; `from_utf8_lossy`'s
        // chunked walk only for text that needs replacing.
        Some(match core::str::from_utf8(bytes) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(bytes),
        })
    }

    /// The bytes, unchecked (`None` for [`RStr::NONE`]): to compare with a known string
    /// without validating them first (equal bytes are that string).
    ///
    /// # Safety
    /// As [`RStr::to_string_lossy`].
    pub unsafe fn bytes<'a>(&self) -> Option<&'a [u8]> {
        if self.ptr.is_null() {
            return None;
        }
        // SAFETY: the caller guarantees `ptr..ptr+len` is readable for `'a`.
        Some(unsafe { core::slice::from_raw_parts(self.ptr, self.len) })
    }
}

/// A type fingerprint: enough to tell whether state written by one plugin version may be
/// read by another as the same type. Two fingerprints match only if all four fields do.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RFingerprint {
    /// `core::any::type_name` of the type (a `'static` string in the plugin's image).
    pub name: RStr,
    /// `size_of`.
    pub size: usize,
    /// `align_of`.
    pub align: usize,
    /// A hash of the layout description (see `plugin_api::fingerprint`).
    pub hash: u64,
}

/// The signature of a track as the plugin states it: types and seed arguments, never the
/// body of a closure.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RSignature {
    /// Input value type; `name` is [`RStr::NONE`] when the track has no input.
    pub input: RFingerprint,
    /// Output value type; `name` is [`RStr::NONE`] when the track has no output.
    pub output: RFingerprint,
    /// State type; `name` is [`RStr::NONE`] when the track keeps no state.
    pub state: RFingerprint,
    /// Debug text of the seed arguments (`scan` seed, `take(n)`, a source's parameters).
    pub seed: RStr,
}

/// Source kinds (values of [`SourceDesc::kind`]). The comment on each says how its values
/// cross the boundary (the port's *wire* type, see [`PushFn`]).
pub mod source_kind {
    /// `interval_ms(period)`: `a` is the period in milliseconds; emits 0, 1, 2, ... forever.
    /// Wire: `u64`.
    pub const INTERVAL: u32 = 1;
    /// `range(start, end)`: `a..b`, then completes. Wire: `u64`.
    pub const RANGE: u32 = 2;
    /// `of(items)`: `a` items held by the plugin; the host sends their indices `0..a`, then
    /// completes. Wire: `u64` (the index).
    pub const OF: u32 = 3;
    /// `stdin_lines()`: each line of the host's standard input; completes at its end.
    /// Wire: [`RStr`](super::RStr) (valid for the call; the plugin copies it).
    pub const STDIN_LINES: u32 = 4;
    /// `file_lines(path)`: `text` is the path, relative to the plugin crate's directory
    /// unless absolute; every line, then each line appended; never completes. Wire: `RStr`.
    pub const FILE_LINES: u32 = 5;
    /// `tcp_lines(addr)`: `text` is the address to listen on; each line of each connection.
    /// Wire: `RStr`.
    pub const TCP_LINES: u32 = 6;
    /// `subject::<T>(name)`: `text` is the subject's name; each value published to it.
    /// Wire: `*const T`, a value the publisher owns, borrowed for the call (the plugin clones
    /// it); `item` is `T`'s layout fingerprint, checked against every publisher's.
    pub const SUBJECT: u32 = 7;
}

/// One source of a pipeline (one *port*): the host runs it and feeds its values to the
/// pipeline's entry points with this port's number (its index in
/// [`PipelineDesc::sources`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SourceDesc {
    /// One of [`source_kind`].
    pub kind: u32,
    /// First numeric parameter.
    pub a: u64,
    /// Second numeric parameter.
    pub b: u64,
    /// Text parameter (a path, an address, a subject name), or [`RStr::NONE`].
    pub text: RStr,
    /// The type of the values the source feeds into the chain (for `subject`, its layout
    /// fingerprint).
    pub item: RFingerprint,
    /// The source as written (`interval_ms(50)`): its signature. A source keeps what it
    /// holds (a position, a listener, a count) across a reload when its owner track and its
    /// label are unchanged.
    pub label: RStr,
    /// The handle of the track the source belongs to: the pipeline's track for the
    /// pipeline's own source, the fan-in operator's track for an inner stream's source.
    pub owner: u64,
    /// For a subject: clones the value a wire item points at (`src` is the value, of the
    /// `item` layout) into `dst`, for a replay on reload to keep it; `UNSUPPORTED` for other
    /// sources.
    pub value_clone: CloneStateFn,
    /// Drops a value `value_clone` wrote.
    pub value_drop: DropStateFn,
    /// The values have no drop glue (`!core::mem::needs_drop`): the host may keep one by
    /// copying its bytes instead of calling `value_clone`, and drop such a copy by forgetting
    /// it (the chain clones what it reads from it, as from the publisher's value).
    pub value_plain: bool,
}

/// A `publish(subject)` operator of a pipeline.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PublishDesc {
    /// Its operator number (what it passes to [`EmitCx::publish`]).
    pub op: u32,
    /// The subject's name.
    pub subject: RStr,
    /// The layout fingerprint of the values it publishes.
    pub item: RFingerprint,
    /// Writes a published value's Debug text (what a replay on reload compares).
    pub debug: DebugStateFn,
}

/// Values returned by [`PushFn`], [`PushOneFn`], [`CompleteFn`] and [`StartFn`].
pub mod status {
    /// The chain wants more values.
    pub const CONTINUE: u32 = 0;
    /// The pipeline completed (its end received `complete`): stop every source.
    pub const COMPLETE: u32 = 1;
    /// A user function panicked; the plugin already reported it through [`super::EmitCx::error`].
    pub const PANICKED: u32 = 2;
    /// This port's stream completed (a `take` inside an inner stream) but the pipeline goes
    /// on: stop this port's source only.
    pub const PORT_DONE: u32 = 3;
}

/// How a pipeline's compiled chain reaches the host while it runs.
#[repr(C)]
#[derive(Debug)]
pub struct EmitCx {
    /// Host data for the callbacks.
    pub host: *mut c_void,
    /// `log` operator number `op` produced `text` (a value's Debug text).
    pub log: unsafe extern "C" fn(host: *mut c_void, op: u32, text: RStr),
    /// Operator number `op` panicked with `message`.
    pub error: unsafe extern "C" fn(host: *mut c_void, op: u32, message: RStr),
    /// `publish` operator number `op` publishes the value at `value` (a `T` of its
    /// [`PublishDesc::item`] type, borrowed for the call): the host delivers it to every
    /// subscriber before returning.
    pub publish: unsafe extern "C" fn(host: *mut c_void, op: u32, value: *const c_void),
    /// Where the plugin writes the number of the operator whose user function it is about to
    /// run (a relaxed store, read by the host's watchdog to name the operator a stuck call is
    /// in), on the single-value paths (`push_one`, `complete`, `start`); the batch path
    /// (`push`) leaves it alone. Never null; valid for the call.
    pub current_op: *const core::sync::atomic::AtomicU32,
    /// Emission counters for the inspector, or null: cell 0 counts the source values the
    /// chain took, cell `1 + op` the values operator `op` emitted. Only the counting entry
    /// points ([`PipelineDesc::push_counted`], ...) touch them, with relaxed loads and stores
    /// (one writer: the thread calling); the host passes a null pointer to the others.
    /// Valid for the call, with one cell per operator plus one.
    pub counts: *const core::sync::atomic::AtomicU64,
    /// Operator number `op` emitted (or the source, `u32::MAX`, handed the chain) the value
    /// whose Debug text (capped) is `text`: a marble the host asked for by setting
    /// [`WANT_MARBLE`] in the value's count cell ([`EmitCx::counts`]). Only the counting
    /// entry points call it.
    pub marble: unsafe extern "C" fn(host: *mut c_void, op: u32, text: RStr),
    /// How many of the next calls of the counting entry points (`push`, `push_one`, `wake`)
    /// look for marble requests, or null (never): while it is above 0, such a call runs the
    /// chain compiled with the checks ([`WANT_MARBLE`]) and takes one off; otherwise the
    /// chain that only counts, so the requests cost the values nothing between two rounds
    /// of asking (a relaxed load per call). Valid for the call.
    pub marble_calls: *const core::sync::atomic::AtomicU32,
    /// The runtime's clock, in nanoseconds from an origin fixed for the host's life (a
    /// virtual clock in tests and replays): what time operators compare their deadlines
    /// with. Read only by operators that need the time, never per value of the others.
    pub now: unsafe extern "C" fn(host: *mut c_void) -> u64,
    /// Asks the host to call [`PipelineDesc::wake`] for operator number `op` once the clock
    /// reads `deadline` (nanoseconds, as [`EmitCx::now`]) or later. The host keys the
    /// timer by the operator's track, so it survives a reload that keeps the track, and
    /// resolves it to the operator's number in the code current when it fires. A wake may
    /// come late, or for an operator whose state no longer wants it: operators check their
    /// own deadlines, kept in their state.
    pub schedule: unsafe extern "C" fn(host: *mut c_void, op: u32, deadline: u64),
    /// The higher-order operator number `op` subscribes an inner stream it just built (its
    /// tracks were registered through [`EmitCx::api`] just before). The host takes
    /// ownership of `desc.env` and of the value at `desc.value` (moved out: the plugin must
    /// not drop it) whatever it answers. On success it fills `out` and returns true; false
    /// when it refused (the reason is an `error` event; nothing of it runs).
    pub subscribe: unsafe extern "C" fn(
        host: *mut c_void,
        op: u32,
        desc: *const InnerDesc,
        out: *mut InnerHandle,
    ) -> bool,
    /// The higher-order operator number `op` ends inner subscription `instance` (its inner
    /// stream completed, or a `switch_map` moved on). The host frees it after the current
    /// call returns: its env and slots stay valid until then.
    pub unsubscribe: unsafe extern "C" fn(host: *mut c_void, op: u32, instance: u64),
    /// The higher-order operator number `op` is about to run an inner stream that lives and
    /// ends inside the running call: a synchronous source (`of(..)`, `range(..)`) through
    /// operators that ask the host for nothing that outlives the call (no timer, no
    /// `publish`; `Op::SYNC`), with no `hmr_track` scope. The plugin keeps its env and its
    /// operators' states itself; the host gives it a number (counted with the others; the
    /// tracking store hears it start and end, as for any subscription) and returns it, or 0
    /// when it wants the stream subscribed through [`EmitCx::subscribe`] instead.
    ///
    /// With operators (`n_ops` > 0), the plugin passes each one's description and the
    /// signature of its track, in order (`ops[i].track` is `i + 1`), valid for the call, and
    /// registers nothing through [`EmitCx::api`]: the host registers the tracks itself, one
    /// per operator, unkeyed, directly under the subscription, as if the plugin had made the
    /// calls. On success the host writes to `*cx` a context for the operators (their `log`
    /// and `error`, with the subscription's paths), valid until the running call returns (a
    /// panic is reported through it after the subscription ended). The plugin ends the
    /// subscription with [`EmitCx::unsubscribe`] before the running call returns (also when
    /// unwinding). When the host answers 0 it registered nothing: the plugin binds the
    /// stream for [`EmitCx::subscribe`]. A bare source (`n_ops` 0, `ops`, `sigs`, `cx` and
    /// `memo` null) is bound by nobody and ended by nobody.
    ///
    /// With operators, on success the host may also write to `*memo` (when not null) a
    /// nonzero number naming the tracks it registered them as, for
    /// [`EmitCx::subscribe_sync_again`]; it leaves `*memo` alone otherwise.
    pub subscribe_sync: unsafe extern "C" fn(
        host: *mut c_void,
        op: u32,
        ops: *const OpDesc,
        sigs: *const RSignature,
        n_ops: usize,
        cx: *mut *const EmitCx,
        memo: *mut u64,
    ) -> u64,
    /// [`EmitCx::subscribe_sync`] for a stream whose operators are, in order, the same as
    /// those of a subscription the host answered with `memo` (the same kinds, types and
    /// state layouts, each with a seed where that one had one; the seeds' text may differ),
    /// without describing them again: the plugin keeps the descriptions it passed then and
    /// uses them for this subscription. Answers 0 when the host no longer holds that
    /// binding (another code version, another stream since) or wants the operators
    /// described (it records each subscription's seeds): the plugin then calls
    /// [`EmitCx::subscribe_sync`]. Otherwise as that call, `*cx` included.
    pub subscribe_sync_again:
        unsafe extern "C" fn(host: *mut c_void, op: u32, memo: u64, cx: *mut *const EmitCx) -> u64,
    /// The registration callbacks an inner stream's tracks are registered through at run
    /// time (only [`HostApi::track_call`] and [`HostApi::track_call_return`] are called).
    /// Valid for the call.
    pub api: *const HostApi,
}

/// The bit of a count cell ([`EmitCx::counts`]) the host sets (an atomic `fetch_or`) to ask
/// for the Debug text of the next value the cell counts: the counting entry points, counting
/// that value in a call that looks for requests ([`EmitCx::marble_calls`]), clear it and
/// hand the text to [`EmitCx::marble`]. A request a count's store overwrites is lost, and
/// asked again. Readers of a count mask it.
pub const WANT_MARBLE: u64 = 1 << 63;

/// An [`EmitCx::marble`] for a context whose counts the host never marks (it is never
/// called there).
///
/// # Safety
/// None: it does nothing.
pub unsafe extern "C" fn no_marble(_host: *mut c_void, _op: u32, _text: RStr) {}

/// An inner stream built at run time by a higher-order operator's projection, bound and
/// compiled, handed to the host ([`EmitCx::subscribe`]).
#[repr(C)]
#[derive(Debug)]
pub struct InnerDesc {
    /// The inner stream's closures (owned by the host from now on; freed with `drop_env`).
    pub env: *mut c_void,
    /// Frees `env`.
    pub drop_env: DropEnvFn,
    /// Its sources, in port order, valid for the call.
    pub sources: *const SourceDesc,
    /// Number of sources.
    pub n_sources: usize,
    /// Its operators, in slot order (their `init` takes `env`), valid for the call.
    pub ops: *const OpDesc,
    /// Number of operators.
    pub n_ops: usize,
    /// Its `publish` operators (their `op` numbered as its operators are), valid for the
    /// call.
    pub publishes: *const PublishDesc,
    /// Number of `publish` operators.
    pub n_publishes: usize,
    /// The outer value the inner stream was projected from, to move into host memory (null
    /// from [`ProjectFn`]: the host has it already).
    pub value: *mut c_void,
    /// The outer value's type (size and alignment to allocate it with).
    pub value_type: RFingerprint,
    /// Drops an outer value in place.
    pub value_drop: DropStateFn,
    /// Writes an outer value's Debug text.
    pub value_debug: DebugStateFn,
}

/// What the host answers to [`EmitCx::subscribe`].
#[repr(C)]
#[derive(Debug)]
pub struct InnerHandle {
    /// The inner subscription's number (never 0), stable across reloads.
    pub instance: u64,
    /// Its operators' slots (seeded), valid until the host frees the subscription.
    pub states: *const *mut u8,
    /// The context its operators call back through, valid as long as `states`.
    pub cx: *const EmitCx,
}

/// Values of [`InnerCall::kind`].
pub mod inner_kind {
    /// A value of the inner subscription's source `port` (at `item`, of its wire type).
    pub const PUSH: u32 = 0;
    /// The inner subscription's source `port` completed.
    pub const COMPLETE: u32 = 1;
    /// A timer of the inner subscription's operator `op` is due (`next` null), or an event
    /// for a higher-order operator `op` inside the inner stream (`next`).
    pub const WAKE: u32 = 2;
    /// The host restarted the subscription (a reload changed its source): subscribe its
    /// stream (`start_with`) and run its synchronous sources (`range`, `of`).
    pub const START: u32 = 3;
    /// The host ended the subscription while the operator was kept (a reload's new
    /// projection of its outer value failed): the operator counts it as ended, as if its
    /// inner stream had completed. Nothing of the subscription runs: `env`, `states` and
    /// `cx` are null.
    pub const ENDED: u32 = 4;
}

/// Values the plugin writes to [`InnerCall::answer`].
pub mod inner_answer {
    /// Nothing to report.
    pub const NONE: u32 = 0;
    /// The port fed is done (its stream completed inside the inner stream).
    pub const PORT_DONE: u32 = 1;
}

/// An event for one inner subscription of a higher-order operator, passed to
/// [`PipelineDesc::wake`] with that operator's number.
#[repr(C)]
#[derive(Debug)]
pub struct InnerCall {
    /// The subscription's number.
    pub instance: u64,
    /// Its env, built by the projection of the code the call runs (the host re-projects
    /// live subscriptions when it takes new code).
    pub env: *const c_void,
    /// Its slots.
    pub states: *const *mut u8,
    /// Its callback context.
    pub cx: *const EmitCx,
    /// One of [`inner_kind`].
    pub kind: u32,
    /// The port, for `PUSH` and `COMPLETE`.
    pub port: u32,
    /// The value, for `PUSH`.
    pub item: *const c_void,
    /// The inner operator, for `WAKE`.
    pub op: u32,
    /// For `WAKE` of a nested higher-order operator: its event; null for a timer.
    pub next: *const InnerCall,
    /// Written by the plugin: one of [`inner_answer`].
    pub answer: u32,
}

/// Run the chain on `n` values of source `port`.
///
/// `items` points at `n` values of the port's wire type (see [`source_kind`]). `states`
/// points at one pointer per operator (in operator order) to its state slot in host memory,
/// allocated with the size and alignment of [`StateVTable`] and initialised by
/// [`StateVTable::init`] of a version whose fingerprint matches. On any status but
/// [`status::CONTINUE`], `*consumed` is the number of values taken from `items`, the one
/// that panicked or completed included; on [`status::CONTINUE`] all were taken.
pub type PushFn = unsafe extern "C" fn(
    env: *const c_void,
    states: *const *mut u8,
    port: u32,
    items: *const c_void,
    n: usize,
    cx: *const EmitCx,
    consumed: *mut usize,
) -> u32;

/// Run the chain on one value of source `port`, at `item` (one value of the port's wire
/// type): [`PushFn`] for a single value, without the batch's bookkeeping. Returns a
/// [`status`]; the value counts as taken whatever it returns.
pub type PushOneFn = unsafe extern "C" fn(
    env: *const c_void,
    states: *const *mut u8,
    port: u32,
    item: *const c_void,
    cx: *const EmitCx,
) -> u32;

/// Tell the chain source `port` completed (a `reduce` emits here once its pipeline's end
/// completes). Returns a [`status`].
pub type CompleteFn = unsafe extern "C" fn(
    env: *const c_void,
    states: *const *mut u8,
    port: u32,
    cx: *const EmitCx,
) -> u32;

/// Subscribe the chain: operators that emit at subscription (`start_with`) emit here. The
/// host calls it once, before the first value of the pipeline's first run.
pub type StartFn =
    unsafe extern "C" fn(env: *const c_void, states: *const *mut u8, cx: *const EmitCx) -> u32;

/// A timer of operator `op` (asked for with [`EmitCx::schedule`]) is due (`inner` null):
/// the operator emits what became due (a debounced value, a delayed one, a time buffer)
/// through the rest of the chain. With `inner`, an event for one inner subscription of
/// the higher-order operator `op` (see [`InnerCall`]). Returns a [`status`];
/// [`status::PORT_DONE`] means nothing here (no port of the pipeline was fed) and the host
/// reads it as [`status::CONTINUE`].
pub type WakeFn = unsafe extern "C" fn(
    env: *const c_void,
    states: *const *mut u8,
    op: u32,
    inner: *mut InnerCall,
    cx: *const EmitCx,
) -> u32;

/// Runs the projection of higher-order operator `op` on (a clone of) the outer value at
/// `value` and binds the inner stream it returns (tracks through [`EmitCx::api`]), then
/// hands it to the host through [`EmitCx::subscribe`] with a null `value` (the host has
/// it), and nothing more: no start, no value runs. The host calls it when it takes new code
/// for each live inner subscription (a reload re-projects, as React re-renders with the same
/// props). Returns a [`status`]: `CONTINUE` once handed over, `PANICKED` (reported through
/// `cx`), or `COMPLETE` when the code has no such operator.
pub type ProjectFn = unsafe extern "C" fn(
    env: *const c_void,
    op: u32,
    value: *const c_void,
    cx: *const EmitCx,
) -> u32;

/// Values returned by [`InitFn`].
pub mod init_status {
    /// The seed was written (or, for a null `dst`, the operator exists).
    pub const OK: u32 = 0;
    /// The seed's `Clone` panicked; nothing was written.
    pub const PANICKED: u32 = 1;
    /// The pipeline has no operator of that index; nothing was written.
    pub const UNKNOWN_OP: u32 = 2;
}

/// Write operator `op`'s seed state into `dst`; returns an [`init_status`]. Anything but
/// [`init_status::OK`] leaves `dst` uninitialised. With a null `dst` nothing is written and
/// nothing of the plugin's code runs: the call only says whether operator `op` exists (the
/// host checks every operator of a pipeline this way at registration).
pub type InitFn = unsafe extern "C" fn(env: *const c_void, op: u32, dst: *mut u8) -> u32;

/// Drop the state value at `dst` in place; returns false if its drop panicked.
pub type DropStateFn = unsafe extern "C" fn(dst: *mut u8) -> bool;

/// Values returned by [`DebugStateFn`].
pub mod debug_status {
    /// The whole Debug text was written.
    pub const OK: u32 = 0;
    /// The text did not fit: the first bytes were written, cut at a character boundary.
    pub const TRUNCATED: u32 = 1;
    /// The state's `Debug` panicked; `*len` bytes were written before it did.
    pub const PANICKED: u32 = 2;
    /// The operator keeps no state; nothing was written.
    pub const NO_STATE: u32 = 3;
}

/// Write the Debug text of the state value at `src` into `buf` (at most `cap` bytes of
/// UTF-8) and its length into `*len`; returns a [`debug_status`]. The host calls it only on
/// the thread that owns the slot, between two calls that run the chain.
pub type DebugStateFn =
    unsafe extern "C" fn(src: *const u8, buf: *mut u8, cap: usize, len: *mut usize) -> u32;

/// Values returned by [`CloneStateFn`].
pub mod clone_status {
    /// The clone was written to `dst`.
    pub const OK: u32 = 0;
    /// The state's `Clone` panicked; nothing was written.
    pub const PANICKED: u32 = 1;
    /// The state type is not `Clone` (its operator's values are not): nothing was written.
    pub const UNSUPPORTED: u32 = 2;
}

/// Write a clone of the state value at `src` into `dst` (valid and aligned for the state
/// type, uninitialised); returns a [`clone_status`]. The host calls it only on the thread
/// that owns the slot, between two calls that run the chain (a replay's state copies).
pub type CloneStateFn = unsafe extern "C" fn(src: *const u8, dst: *mut u8) -> u32;

/// Write the Debug text of the wire value at `item` of source `port` (as [`PushOneFn`] takes
/// it: an index of an `of` is written as its item) into `buf` (at most `cap` bytes of UTF-8)
/// and its length into `*len`; returns a [`debug_status`] (`NO_STATE`: no such port, or a
/// value type without Debug text).
pub type DescribeFn = unsafe extern "C" fn(
    env: *const c_void,
    port: u32,
    item: *const c_void,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> u32;

/// Drop a pipeline's closures (`env`).
pub type DropEnvFn = unsafe extern "C" fn(env: *mut c_void);

/// How to create and destroy an operator's state. For a zero-sized state (no state, or a
/// state such as `()`), the host passes a dangling, aligned pointer instead of allocating.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StateVTable {
    /// The state's type.
    pub fingerprint: RFingerprint,
    /// Writes the seed.
    pub init: InitFn,
    /// Drops a state value.
    pub drop: DropStateFn,
    /// Writes a state value's Debug text (the inspector shows it).
    pub debug: DebugStateFn,
    /// Clones a state value (a replay on reload runs on copies of the live state).
    pub clone: CloneStateFn,
}

/// One operator of a pipeline, in chain order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpDesc {
    /// The handle [`HostApi::track_call`] returned for the operator's track.
    pub track: u64,
    /// Operator kind (`map`, `scan`, ...).
    pub kind: RStr,
    /// Its state.
    pub state: StateVTable,
}

/// A compiled pipeline handed to the host at the end of its registration.
#[repr(C)]
#[derive(Debug)]
pub struct PipelineDesc {
    /// The pipeline's name.
    pub name: RStr,
    /// The handle of the pipeline's track.
    pub track: u64,
    /// Its sources (its ports, in port order; the first is the pipeline's own), valid for
    /// the duration of the call.
    pub sources: *const SourceDesc,
    /// Number of sources (at least 1).
    pub n_sources: usize,
    /// The closures of the chain, owned by the host from now on; freed with `drop_env`.
    pub env: *mut c_void,
    /// Feeds values.
    pub push: PushFn,
    /// Feeds one value.
    pub push_one: PushOneFn,
    /// Signals a source's completion.
    pub complete: CompleteFn,
    /// Subscribes the chain.
    pub start: StartFn,
    /// [`PipelineDesc::push`], also counting emissions into [`EmitCx::counts`].
    pub push_counted: PushFn,
    /// [`PipelineDesc::push_one`], also counting emissions into [`EmitCx::counts`].
    pub push_one_counted: PushOneFn,
    /// [`PipelineDesc::complete`], also counting emissions into [`EmitCx::counts`].
    pub complete_counted: CompleteFn,
    /// [`PipelineDesc::start`], also counting emissions into [`EmitCx::counts`].
    pub start_counted: StartFn,
    /// Runs an operator's due timers.
    pub wake: WakeFn,
    /// [`PipelineDesc::wake`], also counting emissions into [`EmitCx::counts`].
    pub wake_counted: WakeFn,
    /// Re-projects a live inner subscription.
    pub project: ProjectFn,
    /// Writes a source value's Debug text (a replay's samples, a recording).
    pub describe: DescribeFn,
    /// Frees `env`.
    pub drop_env: DropEnvFn,
    /// `n_ops` operator descriptions, valid for the duration of the call.
    pub ops: *const OpDesc,
    /// Number of operators.
    pub n_ops: usize,
    /// `n_publishes` `publish` operators, valid for the duration of the call.
    pub publishes: *const PublishDesc,
    /// Number of `publish` operators.
    pub n_publishes: usize,
}

/// Functions the host lends the plugin for the duration of one registration.
#[repr(C)]
#[derive(Debug)]
pub struct HostApi {
    /// The host's [`ABI_VERSION`].
    pub abi_version: u32,
    /// Host data for the callbacks.
    pub ctx: *mut c_void,
    /// Open a track scope of `kind` under the innermost open scope; `key` is
    /// [`RStr::NONE`] for an unkeyed scope. Returns the track's handle, or 0 when the host
    /// rejected it (the host records why and rejects the registration at its end).
    pub track_call: unsafe extern "C" fn(
        ctx: *mut c_void,
        kind: RStr,
        key: RStr,
        signature: *const RSignature,
    ) -> u64,
    /// Close the innermost track scope, which must be `track`.
    pub track_call_return: unsafe extern "C" fn(ctx: *mut c_void, track: u64),
    /// Hand over a compiled pipeline; the host takes ownership of `env`.
    pub add_pipeline: unsafe extern "C" fn(ctx: *mut c_void, desc: *const PipelineDesc),
    /// Report a failure of the registration (a panic's message); the host rejects the run.
    pub fail: unsafe extern "C" fn(ctx: *mut c_void, message: RStr),
}

/// The registration entry point: runs the plugin's `register` function against `host`.
/// Returns true when it ran to its end without panicking.
pub type RegisterFn = unsafe extern "C" fn(host: *const HostApi) -> bool;

/// What a plugin exports through [`HEADER_SYMBOL`].
#[repr(C)]
#[derive(Debug)]
pub struct PluginHeader {
    /// Always [`MAGIC`]. Frozen field.
    pub magic: [u8; 8],
    /// The plugin's [`ABI_VERSION`]. Frozen field.
    pub abi_version: u32,
    /// `size_of::<PluginHeader>()` as the plugin sees it. Frozen field.
    pub header_size: u32,
    /// The plugin's [`API_VERSION`].
    pub api_version: RStr,
    /// The plugin's [`RUSTC_VERSION`].
    pub rustc_version: RStr,
    /// The plugin's [`TARGET`].
    pub target: RStr,
    /// The plugin's [`PANIC_STRATEGY`].
    pub panic_strategy: RStr,
    /// The registration entry point.
    pub register: RegisterFn,
}

// SAFETY: every pointer in a header points at `'static`, immutable data in the plugin image
// (string constants and functions), so sharing a header between threads is sound.
unsafe impl Sync for PluginHeader {}

impl PluginHeader {
    /// The header describing this side of the boundary, with `register` as entry point.
    pub const fn new(register: RegisterFn) -> PluginHeader {
        PluginHeader {
            magic: MAGIC,
            abi_version: ABI_VERSION,
            header_size: core::mem::size_of::<PluginHeader>() as u32,
            api_version: RStr::new(API_VERSION),
            rustc_version: RStr::new(RUSTC_VERSION),
            target: RStr::new(TARGET),
            panic_strategy: RStr::new(PANIC_STRATEGY),
            register,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid text is borrowed as it is, invalid bytes are replaced (never read past the
    /// view), the absent string is `None`; `bytes` gives the view unchecked.
    #[test]
    fn rstr_reads_text_lossily_and_bytes_as_they_are() {
        let cases: [(&[u8], &str); 4] = [
            (b"of([1, 2])", "of([1, 2])"),
            ("é ✓".as_bytes(), "é ✓"),
            (b"a\xffb", "a\u{fffd}b"),
            (b"", ""),
        ];
        for (bytes, text) in cases {
            let r = RStr {
                ptr: bytes.as_ptr(),
                len: bytes.len(),
            };
            // SAFETY: `bytes` outlives the reads.
            let (read, raw) = unsafe { (r.to_string_lossy(), r.bytes()) };
            assert_eq!(read.as_deref(), Some(text), "{bytes:?}");
            assert_eq!(
                matches!(read, Some(std::borrow::Cow::Borrowed(_))),
                std::str::from_utf8(bytes).is_ok(),
                "{bytes:?}"
            );
            assert_eq!(raw, Some(bytes));
        }
        // SAFETY: the absent string reads nothing.
        assert!(unsafe { RStr::NONE.to_string_lossy() }.is_none());
        // SAFETY: as above.
        assert!(unsafe { RStr::NONE.bytes() }.is_none());
    }
}

//! Inner subscriptions of higher-order operators (`switch_map`, `merge_map`, `concat_map`,
//! `exhaust_map`), held by the pipeline's driver.
//!
//! A higher-order operator builds a stream at run time for each outer value, binds it (its
//! tracks arrive through the run-time registration API, [`InnerReg`]) and subscribes it
//! ([`plugin_api::abi::EmitCx::subscribe`]). The host makes an [`Inner`]: the outer value,
//! moved into host memory with its drop and Debug glue ([`HeldValue`]); the inner stream's
//! closures (per code version); its operators ([`OpCode`]s with paths under the
//! subscription's own track, `pipeline|1:switch_map|#3:inner|0:map`) and their state slots;
//! and its sources' ports. The higher-order operator runs the synchronous sources itself;
//! the host drives the asynchronous ones (intervals) on the pipeline's thread, with the same
//! deadline heap as the pipeline's own intervals and timers.
//!
//! When the pipeline takes new code, each live subscription is **re-projected**: the new
//! version's projection runs on the held outer value ([`plugin_api::abi::ProjectFn`]), its
//! tracks are matched to the live ones by path and signature, and kept slots stay (an inner
//! `scan` total, a `debounce` pending), as do the sources' positions (an interval's count) and
//! pending timers; a changed source restarts the subscription from the new projection (fresh
//! slots, sources from their start). See `Driver::reproject` in `runtime.rs`.

use std::alloc::Layout;
use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use hmr_track::{Fingerprint, Id, Signature};
use plugin_api::abi::{DebugStateFn, DropEnvFn, DropStateFn, EmitCx, InnerDesc, RSignature, RStr};

use crate::code::{OpCode, SourceSpec, StateSlots};
use crate::loader::LibVersion;
use crate::register::Names;

/// One run-time registration call of an inner stream, as the tracking store takes it.
#[derive(Clone, Debug)]
pub(crate) enum RegCall {
    /// A track opened: kind, key, signature.
    Open(String, Option<String>, Box<Signature>),
    /// The innermost open track closed.
    Close,
}

/// What a pipeline's inner subscriptions did, for the tracking store (`Reloader` enters it
/// before each registration run, see ARCHITECTURE.md).
#[derive(Clone, Debug)]
pub(crate) enum Census {
    /// Subscription `id` of `pipeline` started under the higher-order operator `op_track`,
    /// registering these calls.
    Started {
        pipeline: Arc<str>,
        id: u64,
        op_track: Id,
        calls: Arc<[RegCall]>,
    },
    /// It ended.
    Ended { pipeline: Arc<str>, id: u64 },
    /// Subscriptions `first..first + count` of `pipeline` each started and ended inside one
    /// call (run by the plugin, `EmitCx::subscribe_sync`) under the higher-order operator
    /// `op_track`, each registering these calls (with its own seeds from `seeds`, if there):
    /// one message for a run of them, not two each (a `merge_map` over a fast source makes
    /// millions).
    Passed {
        pipeline: Arc<str>,
        op_track: Id,
        calls: Arc<[RegCall]>,
        first: u64,
        count: u64,
        seeds: Option<SeedLog>,
        /// How many of them the plugin named by the memo of their binding instead of
        /// describing their operators (`EmitCx::subscribe_sync_again`).
        named: u64,
    },
}

/// The seeds of each subscription of a run told as one (`Census::Passed`) whose seeds are
/// not all its calls' (`merge_map(|x| of(..).scan(x, ..))`: a seed per outer value): for
/// each subscription in order, the text of each of its seeds, in the order of the calls'
/// tracks that have one.
#[derive(Clone, Debug, Default)]
pub(crate) struct SeedLog {
    text: Vec<u8>,
    /// Where each seed's text ends in `text` (it starts where the one before ends).
    ends: Vec<usize>,
}

impl SeedLog {
    /// How many bytes a log holds (its text and its ends) before its run is told and
    /// another begins.
    pub(crate) const CAP: usize = 1 << 16;

    /// Appends one subscription's seeds (of the signatures that have one).
    ///
    /// # Safety
    /// The seeds of `sigs` must be readable for the call.
    pub(crate) unsafe fn push(&mut self, sigs: &[RSignature]) {
        for sig in sigs {
            // SAFETY: forwarded.
            if let Some(bytes) = unsafe { sig.seed.bytes() } {
                self.text.extend_from_slice(bytes);
                self.ends.push(self.text.len());
            }
        }
    }

    /// How many bytes it holds: its text and where each seed ends (a run of empty seeds is
    /// capped too).
    pub(crate) fn size(&self) -> usize {
        self.text.len() + self.ends.len() * std::mem::size_of::<usize>()
    }

    /// The next subscription's calls: `calls` with each track's seed, where it has one,
    /// the log's next (`cursor`: how many of the log's seeds were taken so far).
    pub(crate) fn calls_of(&self, calls: &[RegCall], cursor: &mut usize) -> Vec<RegCall> {
        calls
            .iter()
            .map(|call| match call {
                RegCall::Open(kind, key, sig) if sig.seed.is_some() => {
                    let start = match cursor.checked_sub(1) {
                        None => 0,
                        Some(i) => self.ends.get(i).copied().unwrap_or(self.text.len()),
                    };
                    let end = self.ends.get(*cursor).copied().unwrap_or(start);
                    *cursor += 1;
                    let text = self.text.get(start..end).unwrap_or_default();
                    let mut sig = sig.clone();
                    sig.seed = Some(String::from_utf8_lossy(text).into_owned());
                    RegCall::Open(kind.clone(), key.clone(), sig)
                }
                other => other.clone(),
            })
            .collect()
    }
}

/// What one binding of an inner stream registered: its tracks relative to the subscription
/// (`0:map`, `1:merge|0:map`) with their signatures, in handle order, and its calls for the
/// tracking store. Shared by every subscription whose binding made the same calls.
#[derive(Debug, Default)]
pub(crate) struct Binding {
    /// Every track opened, by handle - 1: relative path and signature.
    pub(crate) opened: Vec<(String, Signature)>,
    /// The calls as made, for the tracking store.
    pub(crate) calls: Arc<[RegCall]>,
}

/// An operator as the plugin described it, but its seed's text: its kind's address and
/// length, for each of its signature's types (input, output, state) its name's address and
/// length, its size, alignment and hash, and whether it has a seed.
type OpKey = [usize; 18];

fn op_key(o: &plugin_api::abi::OpDesc, sig: &RSignature) -> OpKey {
    let (i, out, st) = (&sig.input, &sig.output, &sig.state);
    [
        o.kind.ptr as usize,
        o.kind.len,
        i.name.ptr as usize,
        i.name.len,
        i.size,
        i.align,
        i.hash as usize,
        out.name.ptr as usize,
        out.name.len,
        out.size,
        out.align,
        out.hash as usize,
        st.name.ptr as usize,
        st.name.len,
        st.size,
        st.align,
        st.hash as usize,
        usize::from(sig.seed.is_none()),
    ]
}

/// Whether two keys are equal: every word compared, folded without a branch (an array's
/// `==` is a call to `bcmp`, a twentieth of a subscription run inside its call).
fn same_key(a: &OpKey, b: &OpKey) -> bool {
    a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The last binding of one higher-order operator's synchronous inner stream
/// (`HostCx::subscribe_sync`), with the operators' descriptions it was registered from.
/// The next stream that describes the same operators gets that binding again without a
/// registration: its kinds and type names compared as addresses (a plugin's static text,
/// which stays where it is for the process's life: libraries are never unloaded, so an equal
/// address and length is the same text), whatever its seeds say (a track's path does not
/// depend on them; the census takes a subscription's own seeds where they differ from the
/// binding's, [`SeedLog`]). The driver drops its memos whenever it takes other code
/// (`HostCx::set_code`): a binding is handed out only under the code it was registered for,
/// and nothing of an old version is kept for it.
///
/// Each memo has a number no other memo of the process has (`token`): the plugin may name
/// it instead of describing the same operators again (`HostCx::subscribe_sync_again`); a
/// number of a memo dropped or replaced is never answered.
pub(crate) struct SyncMemo {
    pub(crate) token: u64,
    keys: Vec<OpKey>,
    /// The seeds' bytes the binding was registered with, by operator (`None`: no seed).
    seeds: Vec<Option<Box<[u8]>>>,
    pub(crate) binding: Arc<Binding>,
}

impl SyncMemo {
    /// A memo of `binding`, registered from `ops` and `sigs`.
    ///
    /// # Safety
    /// The seeds of `sigs` must be readable for the call.
    pub(crate) unsafe fn new(
        ops: &[plugin_api::abi::OpDesc],
        sigs: &[RSignature],
        binding: Arc<Binding>,
    ) -> SyncMemo {
        /// The next memo's number (from 1: 0 names none).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        SyncMemo {
            token: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            keys: ops
                .iter()
                .zip(sigs)
                .map(|(o, sig)| op_key(o, sig))
                .collect(),
            // SAFETY: forwarded.
            seeds: sigs
                .iter()
                .map(|sig| unsafe { sig.seed.bytes() }.map(Box::from))
                .collect(),
            binding,
        }
    }

    /// Whether `ops` and `sigs` describe the memo's operators, but for their seeds' text.
    pub(crate) fn matches(&self, ops: &[plugin_api::abi::OpDesc], sigs: &[RSignature]) -> bool {
        self.keys.len() == ops.len()
            && sigs.len() == ops.len()
            && self
                .keys
                .iter()
                .zip(ops.iter().zip(sigs))
                .all(|(k, (o, sig))| same_key(k, &op_key(o, sig)))
    }

    /// Whether the seeds of `sigs` are the ones the binding was registered with.
    ///
    /// # Safety
    /// The seeds of `sigs` must be readable for the call.
    pub(crate) unsafe fn same_seeds(&self, sigs: &[RSignature]) -> bool {
        self.seeds.len() == sigs.len()
            && self.seeds.iter().zip(sigs).all(|(seed, sig)| {
                // SAFETY: forwarded.
                seed.as_deref() == unsafe { sig.seed.bytes() }
            })
    }
}

/// The tracks an inner stream registers while it is bound ([`Binding`]). A projection's
/// stream has the same tracks from one outer value to the next, as a rule: while a binding
/// repeats the last one call for call (kind, key and signature compared in place), nothing is
/// decoded, formatted or copied, and the last [`Binding`] is handed out again
/// ([`InnerReg::finish`]); from the first call that differs, the binding is built afresh.
#[derive(Default)]
pub(crate) struct InnerReg {
    /// The last binding finished.
    last: Option<Arc<Binding>>,
    /// How many calls of the binding under way repeated `last`'s (while `fresh` is empty).
    matched: usize,
    /// How many tracks it opened so far.
    handles: u64,
    /// Built afresh from the first call that differed from `last` (`building`).
    building: bool,
    fresh: Binding,
    /// Open tracks of `fresh`: their relative path and how many unkeyed children so far.
    stack: Vec<(String, u32)>,
    /// Unkeyed children of the subscription itself so far.
    top: u32,
    fresh_calls: Vec<RegCall>,
    pub(crate) names: Names,
    /// The sources of the last inner stream read (`read_inner` in `runtime.rs`), handed to
    /// the next subscriptions while theirs are the same: one allocation per operator and
    /// code version instead of a vector and label per subscription.
    pub(crate) sources: Option<Arc<[SourceSpec]>>,
}

/// Whether `fp` is `stored` (bytes compared in place).
///
/// # Safety
/// `fp`'s name must be readable for the call.
unsafe fn same_fingerprint(
    fp: &plugin_api::abi::RFingerprint,
    stored: &Option<Fingerprint>,
) -> bool {
    // SAFETY: forwarded.
    match (unsafe { fp.name.bytes() }, stored) {
        (None, None) => true,
        (Some(name), Some(s)) => {
            fp.size as u64 == s.size
                && fp.align as u64 == s.align
                && fp.hash == s.hash
                && name == s.name.as_bytes()
        }
        _ => false,
    }
}

impl InnerReg {
    /// Whether call `kind`, `key`, `sig` is the next one of `last`.
    ///
    /// # Safety
    /// As for [`InnerReg::open`].
    unsafe fn repeats(&self, kind: RStr, key: RStr, sig: &RSignature) -> bool {
        let Some(last) = &self.last else {
            return false;
        };
        let Some(RegCall::Open(_, stored_key, stored)) = last.calls.get(self.matched) else {
            return false;
        };
        // SAFETY: forwarded.
        unsafe {
            key.bytes() == stored_key.as_deref().map(str::as_bytes)
                && kind.bytes() == Some(stored.kind.as_bytes())
                && sig.seed.bytes() == stored.seed.as_deref().map(str::as_bytes)
                && same_fingerprint(&sig.input, &stored.input)
                && same_fingerprint(&sig.output, &stored.output)
                && same_fingerprint(&sig.state, &stored.state)
        }
    }

    /// Leaves `last` for a binding of its own: the calls repeated so far are made again
    /// into `fresh`, from `last`'s.
    fn diverge(&mut self) {
        self.building = true;
        let Some(last) = self.last.clone() else {
            return;
        };
        for call in &last.calls[..self.matched] {
            match call {
                RegCall::Open(_, key, signature) => {
                    self.open_decoded(key.clone(), (**signature).clone());
                }
                RegCall::Close => self.close_fresh(),
            }
        }
    }

    fn open_decoded(&mut self, key: Option<String>, signature: Signature) {
        let segment = match &key {
            Some(k) => format!("#{k}:{}", signature.kind),
            None => {
                let counter = match self.stack.last_mut() {
                    Some((_, n)) => n,
                    None => &mut self.top,
                };
                let i = *counter;
                *counter += 1;
                format!("{i}:{}", signature.kind)
            }
        };
        let path = match self.stack.last() {
            Some((parent, _)) => format!("{parent}|{segment}"),
            None => segment,
        };
        self.stack.push((path.clone(), 0));
        self.fresh_calls.push(RegCall::Open(
            signature.kind.to_string(),
            key,
            Box::new(signature.clone()),
        ));
        self.fresh.opened.push((path, signature));
    }

    fn close_fresh(&mut self) {
        self.stack.pop();
        self.fresh_calls.push(RegCall::Close);
    }

    /// A track opened: returns its handle.
    ///
    /// # Safety
    /// `kind`, `key` and the strings of `sig` must be readable for the call.
    pub(crate) unsafe fn open(&mut self, kind: RStr, key: RStr, sig: &RSignature) -> u64 {
        // SAFETY: forwarded.
        if !self.building && unsafe { self.repeats(kind, key, sig) } {
            self.matched += 1;
        } else {
            if !self.building {
                self.diverge();
            }
            // SAFETY: forwarded.
            let (signature, key) = unsafe {
                (
                    self.names.signature(kind, sig),
                    key.to_string_lossy().map(|k| k.into_owned()),
                )
            };
            self.open_decoded(key, signature);
        }
        self.handles += 1;
        self.handles
    }

    /// The innermost open track closed.
    pub(crate) fn close(&mut self) {
        if !self.building
            && let Some(last) = &self.last
            && matches!(last.calls.get(self.matched), Some(RegCall::Close))
        {
            self.matched += 1;
            return;
        }
        if !self.building {
            self.diverge();
        }
        self.close_fresh();
    }

    /// The binding under way, finished: `last` again when it repeated it whole, else the one
    /// built (which becomes `last`). The next binding starts from nothing.
    pub(crate) fn finish(&mut self) -> Arc<Binding> {
        let whole = !self.building
            && self
                .last
                .as_ref()
                .is_some_and(|l| l.calls.len() == self.matched);
        let binding = match &self.last {
            Some(last) if whole => last.clone(),
            _ => {
                if !self.building {
                    self.diverge();
                }
                let mut fresh = std::mem::take(&mut self.fresh);
                fresh.calls = std::mem::take(&mut self.fresh_calls).into();
                let b = Arc::new(fresh);
                self.last = Some(b.clone());
                b
            }
        };
        self.clear();
        binding
    }

    /// How many tracks the binding under way opened so far.
    pub(crate) fn opened_so_far(&self) -> u64 {
        self.handles
    }

    /// Forgets the binding under way (before the next one).
    pub(crate) fn clear(&mut self) {
        self.matched = 0;
        self.handles = 0;
        self.building = false;
        self.stack.clear();
        self.top = 0;
        self.fresh.opened.clear();
        self.fresh_calls.clear();
    }
}

/// Where a held value's bytes are (an inner subscription's outer value, a value a replay on
/// reload keeps).
#[derive(Debug)]
pub(crate) enum Bytes {
    /// In its own allocation (or, for a zero-sized value, a dangling aligned pointer).
    Heap(NonNull<u8>),
    /// In the owner itself: a value of at most [`INLINE`] bytes and 8-byte alignment (a
    /// number, a short `String` or `Vec` header) costs no allocation. A Rust value may be
    /// moved with its bytes, so it moves with its owner; the plugin only borrows it for the
    /// length of a call.
    Inline([MaybeUninit<u64>; INLINE / 8]),
}

/// The size of the largest value held without an allocation.
const INLINE: usize = 24;

impl Bytes {
    /// Room for a value of `layout` (uninitialised): inline when it fits.
    pub(crate) fn new(layout: Layout) -> Bytes {
        if layout.size() == 0 {
            Bytes::Heap(NonNull::new(layout.align() as *mut u8).unwrap_or(NonNull::dangling()))
        } else if layout.size() <= INLINE && layout.align() <= 8 {
            Bytes::Inline([MaybeUninit::uninit(); INLINE / 8])
        } else {
            // SAFETY: a non-zero size.
            let p = unsafe { std::alloc::alloc(layout) };
            Bytes::Heap(NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout)))
        }
    }

    /// Where the value is (valid while the bytes stay where they are).
    pub(crate) fn as_ptr(&self) -> *const c_void {
        match self {
            Bytes::Heap(p) => p.as_ptr().cast_const().cast::<c_void>(),
            Bytes::Inline(buf) => buf.as_ptr().cast::<c_void>(),
        }
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            Bytes::Heap(p) => p.as_ptr(),
            Bytes::Inline(buf) => buf.as_mut_ptr().cast::<u8>(),
        }
    }

    /// Frees the room of a value of `layout` (already dropped, or never written).
    pub(crate) fn release(self, layout: Layout) {
        if let Bytes::Heap(p) = self
            && layout.size() != 0
        {
            // SAFETY: allocated in `Bytes::new` with this layout.
            unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
        }
    }
}

/// An outer value moved into host memory, dropped with its own version's glue.
pub(crate) struct HeldValue {
    bytes: Bytes,
    layout: Layout,
    drop: DropStateFn,
    pub(crate) debug: DebugStateFn,
    /// The version whose glue `drop` and `debug` are; kept mapped while the value lives.
    _lib: Arc<LibVersion>,
}

impl HeldValue {
    /// Moves the value at `desc.value` into a fresh allocation.
    ///
    /// # Safety
    /// `desc.value` must point at a live value of `desc.value_type`, which the caller gives
    /// up (the plugin forgets it).
    pub(crate) unsafe fn take(desc: &InnerDesc, lib: &Arc<LibVersion>) -> Option<HeldValue> {
        let fp = &desc.value_type;
        let layout = Layout::from_size_align(fp.size, fp.align.max(1)).ok()?;
        let mut bytes = Bytes::new(layout);
        // SAFETY: the room is valid for `layout.size()` bytes and aligned for it; a Rust move
        // is a copy of the bytes and the plugin forgets its copy.
        unsafe {
            std::ptr::copy_nonoverlapping(
                desc.value.cast::<u8>(),
                bytes.as_mut_ptr(),
                layout.size(),
            )
        };
        Some(HeldValue {
            bytes,
            layout,
            drop: desc.value_drop,
            debug: desc.value_debug,
            _lib: lib.clone(),
        })
    }

    /// The value, for a re-projection (valid while the `HeldValue` stays where it is).
    pub(crate) fn as_ptr(&self) -> *const c_void {
        self.bytes.as_ptr()
    }

    /// Its Debug text, at most `cap` bytes.
    pub(crate) fn debug_text(&self, cap: usize) -> String {
        let mut buf = vec![0u8; cap];
        let mut len = 0usize;
        // SAFETY: the value is live; `buf` has `cap` writable bytes.
        let _ =
            unsafe { (self.debug)(self.as_ptr().cast::<u8>(), buf.as_mut_ptr(), cap, &mut len) };
        String::from_utf8_lossy(&buf[..len.min(cap)]).into_owned()
    }
}

impl Drop for HeldValue {
    fn drop(&mut self) {
        // SAFETY: the value is live and dropped once, by its version's glue (kept mapped).
        let _ = unsafe { (self.drop)(self.bytes.as_mut_ptr()) };
        let bytes = std::mem::replace(
            &mut self.bytes,
            Bytes::Inline([MaybeUninit::uninit(); INLINE / 8]),
        );
        bytes.release(self.layout);
    }
}

// SAFETY: the value is of a `Send` type (the DSL requires `Send + Sync` of outer values)
// and only its owner touches it.
unsafe impl Send for HeldValue {}

/// How the host drives one port of an inner subscription.
#[derive(Clone, Debug)]
pub(crate) enum InnerPort {
    /// An interval: the next value and when it is due (ns of the clock). A timer due at
    /// another instant is a stale one (of the source a restart replaced): it does nothing.
    Interval { period: Duration, n: u64, next: u64 },
    /// Run by the higher-order operator itself (`range`, `of`), or finished.
    Done,
}

/// The callbacks' view of one inner subscription (behind its `EmitCx::host`).
pub(crate) struct InnerHost {
    /// The pipeline's callback context (`HostCx`), for what is the pipeline's (the clock,
    /// the timers, the sink, the run-time registration).
    pub(crate) parent: *const c_void,
    pub(crate) instance: u64,
    /// By inner operator number: its path and track.
    pub(crate) paths: Vec<String>,
    pub(crate) tracks: Vec<Id>,
    /// Where its operators mark the one they run (`EmitCx::current_op`): not the
    /// pipeline's, whose numbers are the outer chain's; the watchdog names the
    /// higher-order operator instead (the driver marks it before an inner event).
    pub(crate) current_op: std::sync::atomic::AtomicU32,
    /// Its `publish` operators (as its code's, `InnerCode::publishes`).
    pub(crate) publishes: Vec<InnerPublish>,
    /// For a subscription run inside its outer value's call (`paths` empty): the
    /// higher-order operator's number in the pipeline and the binding, its operators' paths
    /// derived from them when an error needs one.
    pub(crate) sync: Option<(u32, Arc<Binding>)>,
}

impl InnerHost {
    /// The path of inner operator `op`; `op_path` gives the path of the pipeline's operator
    /// by number.
    pub(crate) fn path_of(&self, op: u32, op_path: impl Fn(u32) -> Option<Arc<str>>) -> String {
        if let Some(p) = self.paths.get(op as usize) {
            return p.clone();
        }
        match &self.sync {
            Some((ho, binding)) => match (op_path(*ho), binding.opened.get(op as usize)) {
                (Some(ho), Some((rel, _))) => {
                    join_path(&subscription_path(&ho, self.instance), rel)
                }
                _ => String::new(),
            },
            None => String::new(),
        }
    }
}

/// The compiled stream of one version of a subscription.
pub(crate) struct InnerCode {
    pub(crate) env: *mut c_void,
    pub(crate) drop_env: DropEnvFn,
    pub(crate) lib: Arc<LibVersion>,
    pub(crate) ops: Vec<OpCode>,
    /// Shared by the subscriptions whose sources are the same (the pipeline's `HostCx` keeps
    /// the last ones read and hands them out again while they match).
    pub(crate) sources: Arc<[SourceSpec]>,
    /// Its run-time registration calls, for the tracking store (a re-projection's).
    pub(crate) calls: Arc<[RegCall]>,
    /// Its `publish` operators and uses of subjects, if it has any (boxed: most inner
    /// streams have none, and an `InnerCode` moves with its subscription).
    pub(crate) subjects: Option<Box<CodeSubjects>>,
}

/// An inner stream's `publish` operators and uses of subjects.
pub(crate) struct CodeSubjects {
    /// Its `publish` operators: operator number, subject's hub, declared value type.
    pub(crate) publishes: Vec<InnerPublish>,
    /// Its uses of subjects (reads and publishes), counted while this code is the
    /// subscription's (`Subjects::enter_inner`).
    pub(crate) _uses: Option<crate::subjects::InnerUses>,
}

impl CodeSubjects {
    /// What an inner stream holds of subjects, boxed; `None` when it holds nothing.
    pub(crate) fn boxed(
        publishes: Vec<InnerPublish>,
        uses: Option<crate::subjects::InnerUses>,
    ) -> Option<Box<CodeSubjects>> {
        (!publishes.is_empty() || uses.is_some()).then(|| {
            Box::new(CodeSubjects {
                publishes,
                _uses: uses,
            })
        })
    }
}

impl InnerCode {
    /// Its `publish` operators.
    pub(crate) fn publishes(&self) -> &[InnerPublish] {
        self.subjects.as_ref().map_or(&[], |s| &s.publishes)
    }
}

/// An inner stream's `publish` operator: its number among the stream's operators, the
/// subject's hub, and the value type its code declared.
pub(crate) type InnerPublish = (u32, Arc<crate::subjects::Hub>, hmr_track::Fingerprint);

impl Drop for InnerCode {
    fn drop(&mut self) {
        // SAFETY: the env was handed over by this version's plugin and is freed once, by its
        // own function (the library stays mapped: `lib`).
        unsafe { (self.drop_env)(self.env) };
    }
}

/// Live inner subscriptions by number. Hashed, not ordered: a subscription that starts and
/// ends within one call costs an insert and a remove, about 270 instructions in a `BTreeMap`
/// (BENCHMARKS.md, 14); whoever needs them in order (a re-projection) sorts the numbers.
pub(crate) type Inners =
    std::collections::HashMap<u64, Box<Inner>, std::hash::BuildHasherDefault<IdHasher>>;

/// Hashes subscription numbers (the host's own counter, never chosen from outside) with one
/// multiplication (Fibonacci hashing: consecutive numbers spread over the table's low bits,
/// which pick the bucket, and its high bits, which tag it).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The path of subscription `id` of the higher-order operator at `op_path`
/// (`pipeline|1:switch_map|#3:inner`), written into one buffer of its size (`format!` grew it
/// several times, a tenth of a subscription's instructions, BENCHMARKS.md 14).
pub(crate) fn subscription_path(op_path: &str, id: u64) -> String {
    use std::fmt::Write as _;
    let mut p = String::with_capacity(op_path.len() + 28);
    p.push_str(op_path);
    p.push_str("|#");
    let _ = write!(p, "{id}");
    p.push_str(":inner");
    p
}

/// `base|rel`, in one buffer of its size.
pub(crate) fn join_path(base: &str, rel: &str) -> String {
    let mut p = String::with_capacity(base.len() + 1 + rel.len());
    p.push_str(base);
    p.push('|');
    p.push_str(rel);
    p
}

/// One live inner subscription.
pub(crate) struct Inner {
    /// The subscription's number.
    pub(crate) id: u64,
    /// Its host sources (a file's task and position, a listener's subscription): closed
    /// when it ends, first.
    pub(crate) held: Vec<crate::feed::Held>,
    /// The subjects it reads: unsubscribed when it ends or restarts.
    pub(crate) hubs: Vec<HubLink>,
    /// The higher-order operator's track.
    pub(crate) op_track: Id,
    /// The higher-order operator's path (shared with the pipeline's `HostCx`): the
    /// subscription's own is derived from it when a report needs it ([`Inner::path`]).
    pub(crate) op_path: Arc<str>,
    pub(crate) value: HeldValue,
    /// Dropped after the slots (fields drop in order): the slots' drop glue may live in the
    /// same version.
    pub(crate) slots: StateSlots,
    pub(crate) code: InnerCode,
    /// By port: empty when no source is an interval (a missing port is a finished one).
    pub(crate) ports: Vec<InnerPort>,
    pub(crate) ctx: Box<InnerCtx>,
    /// With the inspector on: its operators' counters (`ctx.cx.counts` points into them),
    /// shown while it lives.
    pub(crate) tally: Option<crate::inspect::tally::InnerTally>,
}

/// An inner subscription's subscription to a subject: undone when dropped (the hub
/// subscriber itself is made after the call that started the subscription returns, by
/// whoever holds the driver: see `subscribe_asks` in `runtime.rs`).
pub(crate) struct HubLink {
    pub(crate) hub: Arc<crate::subjects::Hub>,
    /// The pipeline's `Shared`, by address (see `Hub::unsubscribe_inner`).
    pub(crate) owner: usize,
    pub(crate) id: u64,
}

impl Drop for HubLink {
    fn drop(&mut self) {
        self.hub.unsubscribe_inner(self.owner, self.id);
    }
}

/// The callbacks' view of a subscription and its callback context, in one allocation (the
/// context's `host` points at `host`; a box, so both stay put while the `Inner` moves).
pub(crate) struct InnerCtx {
    pub(crate) host: InnerHost,
    pub(crate) cx: EmitCx,
}

// SAFETY: an `Inner` lives in its pipeline's driver and moves with it (see `Driver`'s
// `Send`): its pointers point into what it owns or into the driver's `HostCx`.
unsafe impl Send for Inner {}

impl Inner {
    /// The subscription's path (`pipeline|1:switch_map|#3:inner`).
    pub(crate) fn path(&self) -> String {
        subscription_path(&self.op_path, self.id)
    }

    /// The inner operator on `track`, by number.
    pub(crate) fn op_of(&self, track: Id) -> Option<u32> {
        self.code
            .ops
            .iter()
            .position(|o| o.track == track)
            .map(|i| i as u32)
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, BuildHasherDefault};
    use std::sync::Arc;

    use plugin_api::abi::{RSignature, RStr};
    use plugin_api::fingerprint;

    use super::{Binding, IdHasher, InnerReg, RegCall};

    /// One registration call: open (kind, key, seed, state type) or close.
    #[derive(Clone, Copy, Debug)]
    enum Call {
        Open(
            &'static str,
            Option<&'static str>,
            Option<&'static str>,
            bool,
        ),
        Close,
    }
    use Call::{Close, Open};

    fn bind(reg: &mut InnerReg, calls: &[Call]) -> Arc<Binding> {
        for c in calls {
            match *c {
                Open(kind, key, seed, state) => {
                    let sig = RSignature {
                        input: fingerprint::of::<u64>(),
                        output: fingerprint::of::<u64>(),
                        state: if state {
                            fingerprint::of::<(u64, u32)>()
                        } else {
                            fingerprint::NONE
                        },
                        seed: seed.map_or(RStr::NONE, RStr::new),
                    };
                    let key = key.map_or(RStr::NONE, RStr::new);
                    // SAFETY: every string is `'static`.
                    unsafe { reg.open(RStr::new(kind), key, &sig) };
                }
                Close => reg.close(),
            }
        }
        reg.finish()
    }

    /// What a binding holds, comparable.
    fn view(b: &Binding) -> (Vec<(String, String)>, Vec<String>) {
        let opened = b
            .opened
            .iter()
            .map(|(path, sig)| (path.clone(), format!("{sig:?}")))
            .collect();
        let calls = b
            .calls
            .iter()
            .map(|c| match c {
                RegCall::Open(kind, key, sig) => format!("open {kind} {key:?} {sig:?}"),
                RegCall::Close => "close".to_owned(),
            })
            .collect();
        (opened, calls)
    }

    /// A memo of a synchronous stream's operators matches the same descriptions again,
    /// whatever their seeds' text (told apart by its bytes, wherever it is), and nothing
    /// else: a seed where there was none or none where there was one, another kind, another
    /// state type, one operator more or less.
    #[test]
    fn a_sync_memo_matches_the_same_operators_only() {
        use plugin_api::abi::{OpDesc, StateVTable};
        unsafe extern "C" fn init(_env: *const std::ffi::c_void, _op: u32, _dst: *mut u8) -> u32 {
            0
        }
        unsafe extern "C" fn drop_state(_p: *mut u8) -> bool {
            true
        }
        unsafe extern "C" fn debug(_: *const u8, _: *mut u8, _: usize, _: *mut usize) -> u32 {
            0
        }
        unsafe extern "C" fn clone(_: *const u8, _: *mut u8) -> u32 {
            0
        }
        // (kind, seed, keeps a state)
        type Described = (&'static str, Option<String>, bool);
        let describe = |ops: &[Described]| -> (Vec<OpDesc>, Vec<RSignature>) {
            ops.iter()
                .enumerate()
                .map(|(i, (kind, seed, state))| {
                    let state_fp = if *state {
                        fingerprint::of::<(u64, u32)>()
                    } else {
                        fingerprint::NONE
                    };
                    let desc = OpDesc {
                        track: i as u64 + 1,
                        kind: RStr::new(kind),
                        state: StateVTable {
                            fingerprint: state_fp,
                            init,
                            drop: drop_state,
                            debug,
                            clone,
                        },
                    };
                    let sig = RSignature {
                        input: fingerprint::of::<u64>(),
                        output: fingerprint::of::<u64>(),
                        state: state_fp,
                        seed: seed.as_deref().map_or(RStr::NONE, RStr::new),
                    };
                    (desc, sig)
                })
                .unzip()
        };
        let base: Vec<Described> = vec![("map", None, false), ("take", Some("3".into()), false)];
        let (ops, sigs) = describe(&base);
        // SAFETY: the seeds are `base`'s, alive for the call.
        let memo = unsafe { super::SyncMemo::new(&ops, &sigs, Arc::default()) };
        let other_map: &'static str = Box::leak("map".to_owned().into_boxed_str());
        // Per case: `None` when the memo's binding is not handed out, else whether the seeds are
        // the binding's own (the census takes them apart when not).
        let cases: Vec<(&str, Vec<Described>, Option<bool>)> = vec![
            ("the same", base.clone(), Some(true)),
            (
                "the same seed elsewhere",
                vec![
                    ("map", None, false),
                    ("take", Some(String::from("3")), false),
                ],
                Some(true),
            ),
            (
                "another seed",
                vec![("map", None, false), ("take", Some("4".into()), false)],
                Some(false),
            ),
            (
                "a seed where none was",
                vec![
                    ("map", Some("".into()), false),
                    ("take", Some("3".into()), false),
                ],
                None,
            ),
            (
                "no seed where one was",
                vec![("map", None, false), ("take", None, false)],
                None,
            ),
            (
                "another kind",
                vec![("filter", None, false), ("take", Some("3".into()), false)],
                None,
            ),
            (
                "its text at another address",
                vec![(other_map, None, false), ("take", Some("3".into()), false)],
                None,
            ),
            (
                "a state",
                vec![("map", None, true), ("take", Some("3".into()), false)],
                None,
            ),
            ("one fewer", vec![("map", None, false)], None),
            (
                "one more",
                vec![
                    ("map", None, false),
                    ("take", Some("3".into()), false),
                    ("map", None, false),
                ],
                None,
            ),
        ];
        for (name, described, want) in cases {
            let (ops, sigs) = describe(&described);
            // SAFETY: the seeds are `described`'s, alive for the call.
            let got = memo
                .matches(&ops, &sigs)
                .then(|| unsafe { memo.same_seeds(&sigs) });
            assert_eq!(got, want, "{name}");
        }
    }

    /// A run's seed log gives each subscription its own seeds, in the order they were
    /// logged, on the tracks that have one, and leaves the other calls as they are.
    #[test]
    fn a_seed_log_gives_each_subscription_its_own_seeds() {
        use super::{RegCall, SeedLog};
        use plugin_api::abi::{RSignature, RStr};
        use plugin_api::fingerprint;
        let sig = |seed: Option<&str>| hmr_track::Signature {
            kind: "scan".into(),
            seed: seed.map(str::to_owned),
            ..hmr_track::Signature::default()
        };
        let open = |kind: &str, seed| RegCall::Open(kind.into(), None, Box::new(sig(seed)));
        let calls = vec![
            open("map", None),
            RegCall::Close,
            open("scan", Some("0")),
            RegCall::Close,
            open("take", Some("1")),
            RegCall::Close,
        ];
        let subs: [[Option<&str>; 3]; 3] = [
            [None, Some("7"), Some("1")],
            [None, Some(""), Some("1")],
            [None, Some("[1, 2]"), Some("\u{e9}")],
        ];
        let mut log = SeedLog::default();
        for seeds in &subs {
            let sigs: Vec<RSignature> = seeds
                .iter()
                .map(|s| RSignature {
                    input: fingerprint::NONE,
                    output: fingerprint::NONE,
                    state: fingerprint::NONE,
                    seed: s.map_or(RStr::NONE, RStr::new),
                })
                .collect();
            // SAFETY: the seeds are `subs`' static text.
            unsafe { log.push(&sigs) };
        }
        let mut cursor = 0;
        for seeds in &subs {
            let got = log.calls_of(&calls, &mut cursor);
            let want: Vec<String> = calls
                .iter()
                .enumerate()
                .map(|(i, c)| match c {
                    RegCall::Open(kind, ..) => {
                        format!("{kind} {:?}", seeds[i / 2])
                    }
                    RegCall::Close => "close".into(),
                })
                .collect();
            let got: Vec<String> = got
                .iter()
                .map(|c| match c {
                    RegCall::Open(kind, _, sig) => format!("{kind} {:?}", sig.seed.as_deref()),
                    RegCall::Close => "close".into(),
                })
                .collect();
            assert_eq!(got, want);
        }
        assert_eq!(cursor, 6, "every seed taken once");
    }

    /// The paths written without `format!` are the text `format!` wrote.
    #[test]
    fn paths_are_the_formatted_text() {
        for (op_path, id) in [
            ("", 0),
            ("p|1:switch_map", 3),
            ("a|0:merge|1:map", u64::MAX),
        ] {
            let sub = super::subscription_path(op_path, id);
            assert_eq!(sub, format!("{op_path}|#{id}:inner"));
            for rel in ["", "0:map", "1:merge|0:map"] {
                assert_eq!(super::join_path(&sub, rel), format!("{sub}|{rel}"));
            }
        }
    }

    /// A binding that repeats the last one is the last one, shared; any other is what a
    /// registry that never saw a binding makes of it (the reference), whatever came before.
    #[test]
    fn a_repeated_binding_is_shared_and_any_other_is_built_as_if_fresh() {
        let map = Open("map", None, None, false);
        let scan = Open("scan", None, Some("0"), true);
        let scan1 = Open("scan", None, Some("1"), true);
        let keyed = Open("scope", Some("k"), None, false);
        let bindings: [&[Call]; 12] = [
            &[map, Close, scan, Close],
            &[map, Close, scan, Close],
            &[map, Close, scan1, Close],
            &[map, Close],
            &[map, Close, scan1, Close, map, Close],
            &[keyed, map, Close, scan, Close, Close],
            &[keyed, map, Close, scan, Close, Close],
            &[keyed, map, Close, Close, scan, Close],
            &[Open("map", Some("k"), None, false), Close],
            &[Open("map", None, None, true), Close],
            &[],
            &[],
        ];
        let mut reg = InnerReg::default();
        let mut last: Option<Arc<Binding>> = None;
        for (i, calls) in bindings.iter().enumerate() {
            let got = bind(&mut reg, calls);
            let want = bind(&mut InnerReg::default(), calls);
            assert_eq!(view(&got), view(&want), "binding {i}: {calls:?}");
            let repeated = i > 0 && format!("{:?}", bindings[i - 1]) == format!("{calls:?}");
            let shared = last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &got));
            assert_eq!(shared, repeated, "binding {i} shared");
            last = Some(got);
        }
    }

    /// Consecutive subscription numbers, from any start, land in distinct buckets of a table
    /// their size (the low bits) and carry varied tags (the top 7 bits): the map stays one
    /// probe deep.
    #[test]
    fn consecutive_numbers_spread_over_buckets_and_tags() {
        let build = BuildHasherDefault::<IdHasher>::default();
        for (start, n) in [(0u64, 1024u64), (1, 4096), (1 << 40, 16_384)] {
            let mask = n - 1;
            let hashes: Vec<u64> = (start..start + n).map(|id| build.hash_one(id)).collect();
            let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h & mask).collect();
            let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
            assert_eq!(buckets.len() as u64, n, "from {start}: buckets");
            assert!(
                tags.len() >= 100,
                "from {start}: {} tags of 128",
                tags.len()
            );
        }
    }
}

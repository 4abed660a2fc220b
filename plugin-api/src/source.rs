//! Sources: where a pipeline's values come from. Every source runs in the host (a timer, a
//! file, a socket, stdin, a subject), so what it holds survives reloads; the plugin side
//! of a source is a [`Root`] stage that turns the port's *wire* values (see
//! [`source_kind`](crate::abi::source_kind)) into the values the chain sees.

use core::ffi::c_void;
use core::fmt;
use core::marker::PhantomData;

use crate::abi::{CloneStateFn, DropStateFn, RStr, SourceDesc, source_kind};
use crate::dsl::{
    Binder, Body, Cx, Flow, Observer, Stage, Stream, Tally, clone_state, clone_unsupported,
    drop_nothing, drop_state,
};
use crate::fingerprint;
use crate::shape::Shape;

/// How a source's wire values become the chain's values.
pub trait Wire: Send + Sync + 'static {
    /// The wire type (one element of the `items` array the host passes).
    type Raw;
    /// The values the chain sees.
    type Out: fmt::Debug;
    /// Converts one wire value; `None` skips it (an index out of range).
    fn read(&self, raw: &Self::Raw) -> Option<Self::Out>;
    /// Writes the Debug text of the value `raw` stands for (a replay's samples, a
    /// recording); false when the values have none.
    fn describe(&self, raw: &Self::Raw, out: &mut dyn fmt::Write) -> bool {
        let _ = (raw, out);
        false
    }
    /// How the host keeps a value of this source for a replay on reload when the value is
    /// not the host's own (a subject's, borrowed from its publisher): its clone and drop glue.
    fn value_glue() -> (CloneStateFn, DropStateFn) {
        (clone_unsupported, drop_nothing)
    }
    /// Whether a value kept for a replay may be a copy of its bytes (see
    /// [`SourceDesc::value_plain`]).
    fn value_plain() -> bool {
        false
    }
}

/// `u64` values as they are: `interval_ms`, `range`.
#[derive(Clone, Copy, Debug)]
pub struct Ticks;

impl Wire for Ticks {
    type Raw = u64;
    type Out = u64;
    #[inline(always)]
    fn read(&self, raw: &u64) -> Option<u64> {
        Some(*raw)
    }
    fn describe(&self, raw: &u64, out: &mut dyn fmt::Write) -> bool {
        let _ = write!(out, "{raw}");
        true
    }
}

/// `of(items)`: the host sends indices; the items stay in the plugin.
#[derive(Debug)]
pub struct Of<T> {
    items: Vec<T>,
}

impl<T: Clone + fmt::Debug + Send + Sync + 'static> Wire for Of<T> {
    type Raw = u64;
    type Out = T;
    #[inline(always)]
    fn read(&self, raw: &u64) -> Option<T> {
        self.items.get(*raw as usize).cloned()
    }
    fn describe(&self, raw: &u64, out: &mut dyn fmt::Write) -> bool {
        match self.items.get(*raw as usize) {
            Some(item) => {
                let _ = write!(out, "{item:?}");
                true
            }
            None => false,
        }
    }
}

/// Lines (`stdin_lines`, `file_lines`, `tcp_lines`): borrowed from the host, owned here.
#[derive(Clone, Copy, Debug)]
pub struct Lines;

impl Wire for Lines {
    type Raw = RStr;
    type Out = String;
    #[inline(always)]
    fn read(&self, raw: &RStr) -> Option<String> {
        // SAFETY: the host passes line views valid for the call (`source_kind`).
        unsafe { raw.to_string_lossy() }.map(|s| s.into_owned())
    }
    fn describe(&self, raw: &RStr, out: &mut dyn fmt::Write) -> bool {
        // SAFETY: as in `read`.
        match unsafe { raw.to_string_lossy() } {
            Some(line) => {
                let _ = write!(out, "{line:?}");
                true
            }
            None => false,
        }
    }
}

/// A subject's values: borrowed from the publisher, cloned here.
pub struct SubjectItems<T> {
    _t: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for SubjectItems<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectItems")
    }
}

impl<T: Clone + fmt::Debug + Send + Sync + 'static> Wire for SubjectItems<T> {
    type Raw = *const T;
    type Out = T;
    #[inline(always)]
    fn read(&self, raw: &*const T) -> Option<T> {
        // SAFETY: the host passes a pointer to a live `T` of this layout (the subject's
        // fingerprint was checked against the publisher's), borrowed for the call.
        Some(unsafe { (**raw).clone() })
    }
    fn describe(&self, raw: &*const T, out: &mut dyn fmt::Write) -> bool {
        // SAFETY: as in `read`.
        let value = unsafe { &**raw };
        let _ = write!(out, "{value:?}");
        true
    }
    fn value_glue() -> (CloneStateFn, DropStateFn) {
        (clone_state::<T>, drop_state::<T>)
    }
    fn value_plain() -> bool {
        // A `T` without drop glue owns nothing: its bytes, copied, are a value to read (and
        // clone) as the publisher's is, and forgetting the copy leaks nothing.
        !core::mem::needs_drop::<T>()
    }
}

/// A source: port 0 of the stage it starts.
pub struct Root<W> {
    wire: W,
    desc: SourceDesc,
    /// Its label, or empty while `make_label` is set.
    label: String,
    /// Writes the label from the wire and description, when it is first needed (at
    /// binding): an inner stream run without binding (`Stage::sync_source`) never formats
    /// it (`of`'s holds its items' text).
    make_label: Option<fn(&W, &SourceDesc) -> String>,
    text: String,
}

impl<W> Root<W> {
    /// Writes the label now if it was left for later.
    fn write_label(&mut self) {
        if let Some(make) = self.make_label.take() {
            self.label = Self::made(make, &self.wire, &self.desc);
        }
    }

    fn label_text(&self) -> String {
        match self.make_label {
            Some(make) => Self::made(make, &self.wire, &self.desc),
            None => self.label.clone(),
        }
    }

    /// The label `make` writes. It runs while a stream is bound, between the host's track
    /// calls (an inner stream's root inside its fan-in's track): a panic in it would leave the
    /// host a binding half made, so it is caught and said in the label, as for a seed.
    fn made(make: fn(&W, &SourceDesc) -> String, wire: &W, desc: &SourceDesc) -> String {
        crate::dsl::contained(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || make(wire, desc),
        )))
        // An `of`'s items' `Debug` is user code.
        .unwrap_or_else(|| crate::dsl::DEBUG_PANICKED.to_owned())
    }
}

impl<W: fmt::Debug> fmt::Debug for Root<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Root")
            .field("label", &self.label_text())
            .finish()
    }
}

// SAFETY: the `SourceDesc` holds only views into `label`/`text` (owned by the root) and
// fingerprint strings in the image; nothing in it is shared mutable state.
unsafe impl<W: Send> Send for Root<W> {}
// SAFETY: as above.
unsafe impl<W: Sync> Sync for Root<W> {}

impl<W: Wire> Stage for Root<W> {
    type Out = W::Out;
    const PORTS: u32 = 1;
    #[inline(always)]
    fn push<C: Tally, K: Observer<W::Out>>(
        &self,
        cx: &Cx<'_>,
        _port: u32,
        items: *const c_void,
        i: usize,
        k: &mut K,
    ) -> Flow {
        // SAFETY: the host passes at least `i + 1` wire values of this port's type.
        let raw = unsafe { &*items.cast::<W::Raw>().add(i) };
        match self.wire.read(raw) {
            Some(x) => k.next(C::emitted(cx, crate::dsl::SOURCE, x)),
            None => Flow::Continue,
        }
    }
    fn complete<C: Tally, K: Observer<W::Out>>(&self, _cx: &Cx<'_>, _port: u32, k: &mut K) -> Flow {
        k.complete();
        Flow::Complete
    }
    fn start<C: Tally, K: Observer<W::Out>>(&self, _cx: &Cx<'_>, _k: &mut K) -> Flow {
        Flow::Continue
    }
    fn wake<C: Tally, K: Observer<W::Out>>(
        &self,
        _cx: &Cx<'_>,
        _op: u32,
        _inner: Option<&mut crate::abi::InnerCall>,
        _k: &mut K,
    ) -> Option<Flow> {
        None
    }
    unsafe fn project(&self, _cx: &Cx<'_>, _op: u32, _value: *const c_void) -> Option<bool> {
        None
    }
    fn bind(&mut self, b: &mut Binder<'_>) {
        // A lean binding describes no source (an inner stream run inside its outer value's
        // call never hands its sources over): the label is left for later.
        if b.lean_source() {
            return;
        }
        self.write_label();
        // SAFETY: the strings are this root's, which the stage keeps (in its `Env`) at least
        // until the host has read the binding's description.
        unsafe { b.source(self.desc, &self.label, &self.text) };
    }
    fn label(&self) -> String {
        self.label_text()
    }
    fn sync_source(&self) -> Option<(u64, u64, bool)> {
        match self.desc.kind {
            source_kind::OF => Some((0, self.desc.a, true)),
            source_kind::RANGE => Some((self.desc.a, self.desc.b, true)),
            _ => None,
        }
    }
    unsafe fn describe(&self, port: u32, item: *const c_void, out: &mut dyn fmt::Write) -> bool {
        // SAFETY: the host passes one wire value of this port's type (the caller's
        // obligation).
        port == 0 && self.wire.describe(unsafe { &*item.cast::<W::Raw>() }, out)
    }
    unsafe fn init(&self, _op: u32, _dst: *mut u8) -> bool {
        // A source has no state in the plugin and no operator index.
        false
    }
}

/// A source's label: written now, or when it is first needed.
enum Label<W> {
    Now(String),
    Later(fn(&W, &SourceDesc) -> String),
}

fn root<W: Wire>(
    wire: W,
    kind: u32,
    a: u64,
    b: u64,
    text: Option<&str>,
    label: Label<W>,
) -> Stream<Root<W>> {
    root_typed::<W>(wire, kind, a, b, text, label, fingerprint::of::<W::Out>())
}

fn root_typed<W: Wire>(
    wire: W,
    kind: u32,
    a: u64,
    b: u64,
    text: Option<&str>,
    label: Label<W>,
    item: crate::abi::RFingerprint,
) -> Stream<Root<W>> {
    let (label, make_label) = match label {
        Label::Now(text) => (text, None),
        Label::Later(make) => (String::new(), Some(make)),
    };
    Stream {
        body: Body::new(Root {
            wire,
            desc: SourceDesc {
                kind,
                a,
                b,
                // Replaced by a view of `text` when the pipeline is handed over.
                text: if text.is_some() {
                    RStr::new("")
                } else {
                    RStr::NONE
                },
                item,
                label: RStr::NONE,
                owner: 0,
                value_clone: W::value_glue().0,
                value_drop: W::value_glue().1,
                value_plain: W::value_plain(),
            },
            label,
            make_label,
            text: text.unwrap_or_default().to_owned(),
        }),
    }
}

/// Emits 0, 1, 2, ... every `period` milliseconds, forever.
pub fn interval_ms(period: u64) -> Stream<Root<Ticks>> {
    root(
        Ticks,
        source_kind::INTERVAL,
        period,
        0,
        None,
        Label::Later(|_, d| format!("interval_ms({})", d.a)),
    )
}

/// Emits `start..end` as fast as the pipeline takes them, in batches, then completes.
pub fn range(start: u64, end: u64) -> Stream<Root<Ticks>> {
    root(
        Ticks,
        source_kind::RANGE,
        start,
        end,
        None,
        Label::Later(|_, d| format!("range({}, {})", d.a, d.b)),
    )
}

/// Emits each item, then completes. The items are part of the source's signature: an edit
/// that changes them starts the source again from its first item.
pub fn of<T: Clone + fmt::Debug + Send + Sync + 'static>(items: Vec<T>) -> Stream<Root<Of<T>>> {
    let n = items.len() as u64;
    root(
        Of { items },
        source_kind::OF,
        n,
        0,
        None,
        Label::Later(|w, _| of_label(&w.items)),
    )
}

/// `of`'s label: `of::<T>(items)`, the items' text cut to 160 bytes and a hash when longer
/// than 200, written into one buffer sized for short lists (one allocation).
fn of_label<T: fmt::Debug + 'static>(items: &Vec<T>) -> String {
    use core::fmt::Write as _;
    let n = items.len();
    let name = core::any::type_name::<T>();
    let mut label = String::with_capacity(name.len() + 8 + (24 * items.len()).min(240));
    label.push_str("of::<");
    label.push_str(name);
    label.push_str(">(");
    let start = label.len();
    write_items(&mut label, items);
    if label.len() - start > 200 {
        let hash = fingerprint::fnv1a(fingerprint::FNV_OFFSET, &label.as_bytes()[start..]);
        let mut cut = start + 160;
        while !label.is_char_boundary(cut) {
            cut -= 1;
        }
        label.truncate(cut);
        let _ = write!(label, "... ({n} items, hash {hash:016x})");
    }
    label.push(')');
    label
}

/// Writes `items` as `{items:?}` does; integers without the formatting machinery (the same
/// text: an integer's `Debug` is its decimal `Display`). An `of` in an inner stream is built
/// for every outer value, and this was a sixth of a subscription's cost (BENCHMARKS.md, 14).
fn write_items<T: fmt::Debug + 'static>(label: &mut String, items: &Vec<T>) {
    use core::any::Any;
    use core::fmt::Write as _;
    let any: &dyn Any = items;
    macro_rules! ints {
        ($($t:ty),*) => {$(
            if let Some(v) = any.downcast_ref::<Vec<$t>>() {
                label.push('[');
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        label.push_str(", ");
                    }
                    #[allow(unused_comparisons, clippy::cast_lossless)]
                    let _ = crate::dsl::write_int(
                        label,
                        *x < 0,
                        (*x as i128).unsigned_abs() as u64,
                    );
                }
                label.push(']');
                return;
            }
        )*};
    }
    ints!(u64, u32, u16, u8, usize, i64, i32, i16, i8, isize);
    let _ = write!(label, "{items:?}");
}

/// Each line of the host's standard input (without its line ending); completes at the end
/// of the input. Every pipeline reading it gets every line.
pub fn stdin_lines() -> Stream<Root<Lines>> {
    root(
        Lines,
        source_kind::STDIN_LINES,
        0,
        0,
        None,
        Label::Now("stdin_lines()".to_owned()),
    )
}

/// Every line of the file at `path` (relative to the plugin crate's directory unless
/// absolute), then each line appended, like `tail -F`: waits for a missing file, follows
/// truncation and rotation, holds a last line until its newline arrives. Never completes.
pub fn file_lines(path: &str) -> Stream<Root<Lines>> {
    root(
        Lines,
        source_kind::FILE_LINES,
        0,
        0,
        Some(path),
        Label::Now(format!("file_lines({path:?})")),
    )
}

/// Each line received on any connection to `addr`, which the host listens on.
pub fn tcp_lines(addr: &str) -> Stream<Root<Lines>> {
    root(
        Lines,
        source_kind::TCP_LINES,
        0,
        0,
        Some(addr),
        Label::Now(format!("tcp_lines({addr:?})")),
    )
}

/// Every value published to the host-owned subject `name` (by a [`publish`] in any
/// pipeline), delivered synchronously and in order.
///
/// [`publish`]: crate::dsl::Pipe::publish
pub fn subject<T: Shape + Clone + fmt::Debug + Send + Sync + 'static>(
    name: &str,
) -> Stream<Root<SubjectItems<T>>> {
    root_typed(
        SubjectItems { _t: PhantomData },
        source_kind::SUBJECT,
        0,
        0,
        Some(name),
        Label::Now(format!(
            "subject::<{}>({name:?})",
            core::any::type_name::<T>()
        )),
        fingerprint::of_state::<T>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The label as `of` wrote it with two `format!`s (the signature every reload compares:
    /// it must not change).
    fn reference<T: fmt::Debug>(items: &[T]) -> String {
        let n = items.len() as u64;
        let mut text = format!("{items:?}");
        if text.len() > 200 {
            let hash = fingerprint::fnv1a(fingerprint::FNV_OFFSET, text.as_bytes());
            let mut cut = 160;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text = format!("{}... ({n} items, hash {hash:016x})", &text[..cut]);
        }
        format!("of::<{}>({text})", core::any::type_name::<T>())
    }

    /// An `of` whose items' `Debug` panics gets a label that says so, written (not thrown)
    /// wherever the label is asked for: at binding, or for a message.
    #[test]
    fn a_label_whose_debug_panics_says_so() {
        #[derive(Clone)]
        struct Panics;
        impl fmt::Debug for Panics {
            fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
                panic!("no text for this item")
            }
        }
        let mut stream = of(vec![Panics]);
        assert_eq!(stream.body.stage.label(), crate::dsl::DEBUG_PANICKED);
        stream.body.stage.write_label();
        assert_eq!(stream.body.stage.label, crate::dsl::DEBUG_PANICKED);
        assert!(stream.body.stage.make_label.is_none());
    }

    #[test]
    fn of_labels_are_the_items_text_cut_as_before() {
        fn same<T: Clone + fmt::Debug + Send + Sync + 'static>(items: Vec<T>) {
            let got = of(items.clone()).body.stage.label();
            assert_eq!(got, reference(&items), "{} items", items.len());
        }
        let numbers: Vec<Vec<u64>> = vec![vec![], vec![7], (0..10).collect(), (0..100).collect()];
        for items in numbers {
            same(items);
        }
        // Every integer type written without `Debug`, at its extremes and signs.
        same(vec![u64::MAX, 0, 10, 99, 100]);
        same(vec![i64::MIN, -1, 0, 1, i64::MAX]);
        same(vec![u32::MAX, 5]);
        same(vec![i32::MIN, -40, i32::MAX]);
        same(vec![u16::MAX, 1]);
        same(vec![i16::MIN, i16::MAX]);
        same(vec![u8::MAX, 0]);
        same(vec![i8::MIN, -7, i8::MAX]);
        same(vec![usize::MAX, 3]);
        same(vec![isize::MIN, isize::MAX]);
        same::<i32>(vec![]);
        same((-60i64..60).collect());
        // Every number of digits, at its edges (the pairs table and the odd leading digit);
        // past the cut, the hash of the whole text still compares every digit.
        same(
            (0..20)
                .flat_map(|e| {
                    let p = 10u64.pow(e);
                    [p - 1, p, p + 1, p.saturating_mul(5)]
                })
                .collect::<Vec<u64>>(),
        );
        same((-1100i64..1100).collect());
        same(vec![1.5f64, -0.0]);
        // Not among the types written directly: through `Debug`, the same.
        same(vec![u128::MAX, 0]);
        same(vec![i128::MIN, i128::MAX]);
        // Multi-byte characters across the cut, at each offset.
        for pad in 0..4 {
            let items: Vec<String> = (0..40)
                .map(|i| format!("{}é{i}ü", "a".repeat(pad)))
                .collect();
            let got = of(items.clone()).body.stage.label();
            assert_eq!(got, reference(&items), "strings padded by {pad}");
        }
    }
}

//! The accumulating operators (`scan`, `scan_map`, `reduce`) and `init`, run through their
//! `extern "C"` entry points by a minimal host written here: it records the registration,
//! allocates and seeds the state slots as the real host does, pushes values and drops
//! everything at the end. No library is loaded: the plugin is this test binary.

use std::alloc::Layout;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::fmt;

use plugin_api::abi::{
    EmitCx, HostApi, OpDesc, PipelineDesc, RSignature, RStr, init_status, status,
};
use plugin_api::dsl::run_register;
use plugin_api::prelude::*;

thread_local! {
    static CLONES: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// When set, cloning a `Counted` panics (after the slots are seeded).
    static CLONE_PANICS: Cell<bool> = const { Cell::new(false) };
}

fn clones() -> usize {
    CLONES.with(Cell::get)
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

plugin_api::state! {
    /// A heap-owning state that counts its clones and its live instances (on this thread).
    pub struct Counted { pub items: Vec<u64> }
}

impl Counted {
    fn new() -> Counted {
        LIVE.with(|l| l.set(l.get() + 1));
        Counted { items: Vec::new() }
    }
}

impl Clone for Counted {
    fn clone(&self) -> Counted {
        if CLONE_PANICS.with(Cell::get) {
            panic!("clone refused");
        }
        CLONES.with(|c| c.set(c.get() + 1));
        LIVE.with(|l| l.set(l.get() + 1));
        Counted {
            items: self.items.clone(),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        LIVE.with(|l| l.set(l.get() - 1));
    }
}

impl fmt::Debug for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.items.len(), self.items.iter().sum::<u64>())
    }
}

/// One pipeline as the plugin handed it over.
struct Captured {
    env: *mut c_void,
    desc: PipelineDesc,
    ops: Vec<OpDesc>,
}

/// What the registration produced.
#[derive(Default)]
struct Registry {
    next: u64,
    /// The state fingerprint each track-call announced, by handle.
    announced: Vec<(u64, Option<String>, usize, u64)>,
    pipelines: Vec<Captured>,
    failed: Option<String>,
}

unsafe extern "C" fn track_call(
    ctx: *mut c_void,
    _kind: RStr,
    _key: RStr,
    sig: *const RSignature,
) -> u64 {
    // SAFETY: `ctx` is the `Registry` of `register`; the plugin passes a valid signature.
    let (reg, sig) = unsafe { (&mut *ctx.cast::<Registry>(), &*sig) };
    reg.next += 1;
    // SAFETY: the plugin's strings are valid for the call.
    let name = unsafe { sig.state.name.to_string_lossy() }.map(|n| n.into_owned());
    reg.announced
        .push((reg.next, name, sig.state.size, sig.state.hash));
    reg.next
}

unsafe extern "C" fn track_call_return(_ctx: *mut c_void, _track: u64) {}

unsafe extern "C" fn add_pipeline(ctx: *mut c_void, desc: *const PipelineDesc) {
    // SAFETY: as in `track_call`; the descriptions are valid for the call, and are copied.
    unsafe {
        let reg = &mut *ctx.cast::<Registry>();
        let d = &*desc;
        let ops = std::slice::from_raw_parts(d.ops, d.n_ops).to_vec();
        reg.pipelines.push(Captured {
            env: d.env,
            desc: PipelineDesc {
                name: RStr::NONE,
                ops: std::ptr::null(),
                ..*d
            },
            ops,
        });
    }
}

unsafe extern "C" fn fail(ctx: *mut c_void, message: RStr) {
    // SAFETY: as in `track_call`.
    unsafe {
        let reg = &mut *ctx.cast::<Registry>();
        reg.failed = message.to_string_lossy().map(|m| m.into_owned());
    }
}

/// Runs `f` as a plugin's registration against the host here.
fn register(f: fn(&mut Plugin<'_>)) -> Registry {
    let mut reg = Registry::default();
    let api = HostApi {
        abi_version: plugin_api::abi::ABI_VERSION,
        ctx: (&raw mut reg).cast::<c_void>(),
        track_call,
        track_call_return,
        add_pipeline,
        fail,
    };
    // SAFETY: `api` and the registry it points at live across the call.
    let ok = unsafe { run_register(&api, f) };
    assert!(ok, "registration failed: {:?}", reg.failed);
    // The plugin installs a silent panic hook in its std, which is this binary's: restore
    // the default so that a failing assertion still prints (unless a test wants the hook).
    if std::env::var_os(CHILD).is_none() {
        let _ = std::panic::take_hook();
    }
    reg
}

/// What the chain sent to the host while it ran.
#[derive(Default)]
struct Sink {
    logs: RefCell<Vec<String>>,
    errors: RefCell<Vec<(u32, String)>>,
    /// Where the plugin says which operator it is in (`EmitCx::current_op`).
    current_op: std::sync::atomic::AtomicU32,
}

unsafe extern "C" fn on_log(host: *mut c_void, _op: u32, text: RStr) {
    // SAFETY: `host` is the `Sink` of the running pipeline; `text` is valid for the call.
    unsafe {
        let sink = &*host.cast::<Sink>();
        let text = text.to_string_lossy().unwrap_or_default().into_owned();
        sink.logs.borrow_mut().push(text);
    }
}

unsafe extern "C" fn on_publish(_host: *mut c_void, _op: u32, _value: *const c_void) {}

unsafe extern "C" fn on_error(host: *mut c_void, op: u32, message: RStr) {
    // SAFETY: as in `on_log`.
    unsafe {
        let sink = &*host.cast::<Sink>();
        let text = message.to_string_lossy().unwrap_or_default().into_owned();
        sink.errors.borrow_mut().push((op, text));
    }
}

/// A pipeline running on slots allocated and seeded here, as the host does it.
struct Running {
    p: Captured,
    slots: Vec<(*mut u8, Layout)>,
    sink: Box<Sink>,
    cx: EmitCx,
}

impl Running {
    fn start(p: Captured) -> Running {
        let mut slots = Vec::new();
        for (i, op) in p.ops.iter().enumerate() {
            let fp = &op.state.fingerprint;
            let layout = Layout::from_size_align(fp.size, fp.align).expect("a valid layout");
            let ptr = if layout.size() == 0 {
                layout.align() as *mut u8
            } else {
                // SAFETY: a non-zero size.
                unsafe { std::alloc::alloc(layout) }
            };
            // SAFETY: `ptr` fits the operator's state; `env` is the pipeline's.
            let s = unsafe { (op.state.init)(p.env, i as u32, ptr) };
            assert_eq!(s, init_status::OK, "seeding operator {i}");
            slots.push((ptr, layout));
        }
        let sink = Box::<Sink>::default();
        let cx = EmitCx {
            host: (&raw const *sink).cast_mut().cast::<c_void>(),
            log: on_log,
            error: on_error,
            publish: on_publish,
            current_op: &raw const sink.current_op,
            counts: std::ptr::null(),
        };
        Running { p, slots, sink, cx }
    }

    fn ptrs(&self) -> Vec<*mut u8> {
        self.slots.iter().map(|s| s.0).collect()
    }

    /// Pushes `xs` as one batch; returns the status and how many were taken.
    fn push(&self, xs: &[u64]) -> (u32, usize) {
        let ptrs = self.ptrs();
        let mut consumed = 0;
        // SAFETY: one seeded slot per operator, a valid batch and context.
        let s = unsafe {
            (self.p.desc.push)(
                self.p.env,
                ptrs.as_ptr(),
                0,
                xs.as_ptr().cast(),
                xs.len(),
                &self.cx,
                &mut consumed,
            )
        };
        (s, consumed)
    }

    /// Pushes each of `xs` on its own, as a push source does.
    fn push_each(&self, xs: impl IntoIterator<Item = u64>) -> Vec<u32> {
        let ptrs = self.ptrs();
        xs.into_iter()
            // SAFETY: as in `push`.
            .map(|x| unsafe {
                (self.p.desc.push_one)(
                    self.p.env,
                    ptrs.as_ptr(),
                    0,
                    (&raw const x).cast(),
                    &self.cx,
                )
            })
            .collect()
    }

    fn complete(&self) -> u32 {
        let ptrs = self.ptrs();
        // SAFETY: as in `push`.
        unsafe { (self.p.desc.complete)(self.p.env, ptrs.as_ptr(), 0, &self.cx) }
    }

    fn logs(&self) -> Vec<String> {
        self.sink.logs.borrow().clone()
    }

    fn errors(&self) -> Vec<(u32, String)> {
        self.sink.errors.borrow().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for (op, (ptr, layout)) in self.p.ops.iter().zip(&self.slots) {
            // SAFETY: each slot holds a value seeded above and is dropped once.
            unsafe {
                assert!((op.state.drop)(*ptr), "dropping a state panicked");
                if layout.size() != 0 {
                    std::alloc::dealloc(*ptr, *layout);
                }
            }
        }
        // SAFETY: the closures are freed once, by their own version.
        unsafe { (self.p.desc.drop_env)(self.p.env) };
    }
}

fn only_pipeline(reg: Registry) -> Running {
    let mut pipelines = reg.pipelines;
    assert_eq!(pipelines.len(), 1);
    Running::start(pipelines.remove(0))
}

fn scan_counted(p: &mut Plugin<'_>) {
    p.pipeline("p", range(0, 10))
        .scan(Counted::new(), |mut acc: Counted, x: u64| {
            acc.items.push(x);
            acc
        })
        .log();
}

fn scan_map_counted(p: &mut Plugin<'_>) {
    p.pipeline("p", range(0, 10))
        .scan_map(Counted::new(), |acc: &mut Counted, x: u64| {
            acc.items.push(x);
            acc.items.iter().sum::<u64>()
        })
        .log();
}

fn reduce_counted(p: &mut Plugin<'_>) {
    p.pipeline("p", range(0, 10))
        .reduce(Counted::new(), |mut acc: Counted, x: u64| {
            acc.items.push(x);
            acc
        })
        .log();
}

/// `reduce` and `scan_map` never clone their state per value; `scan` clones it exactly once
/// per value (what it emits). Their results are what the fold says, and every state value
/// is dropped exactly once.
#[test]
fn clones_per_value() {
    type Case = (&'static str, fn(&mut Plugin<'_>), usize, usize, usize);
    // (operator, plugin, values, clones while pushing, clones on completion)
    let cases: [Case; 6] = [
        ("reduce", reduce_counted, 1_000, 0, 1),
        ("reduce", reduce_counted, 10_000, 0, 1),
        ("scan_map", scan_map_counted, 1_000, 0, 0),
        ("scan_map", scan_map_counted, 10_000, 0, 0),
        ("scan", scan_counted, 1_000, 1_000, 0),
        ("scan", scan_counted, 10_000, 10_000, 0),
    ];
    for (what, plugin, n, while_pushing, on_complete) in cases {
        let before = live();
        let run = only_pipeline(register(plugin));
        let values: Vec<u64> = (0..n as u64).collect();
        let seeded = clones();
        for batch in values.chunks(1024) {
            assert_eq!(run.push(batch).0, status::CONTINUE, "{what}");
        }
        let pushed = clones();
        assert_eq!(run.complete(), status::COMPLETE, "{what}");
        assert_eq!(
            pushed - seeded,
            while_pushing,
            "{what} of {n}: clones per value"
        );
        assert_eq!(
            clones() - pushed,
            on_complete,
            "{what} of {n}: clones on completion"
        );
        let logs = run.logs();
        let total: u64 = values.iter().sum();
        let last = match what {
            "scan_map" => format!("{total}"),
            _ => format!("{n}:{total}"),
        };
        assert_eq!(logs.last(), Some(&last), "{what} of {n}: the result");
        let expected_logs = if what == "reduce" { 1 } else { n };
        assert_eq!(logs.len(), expected_logs, "{what} of {n}: emissions");
        drop(run);
        assert_eq!(live(), before, "{what} of {n}: every state dropped once");
    }
}

fn panicky_scan(p: &mut Plugin<'_>) {
    p.pipeline("p", interval_ms(1))
        .scan(100u64, |acc: u64, x: u64| {
            assert!(x != 3, "boom {x}");
            acc + x
        })
        .log();
}

fn panicky_scan_map(p: &mut Plugin<'_>) {
    p.pipeline("p", interval_ms(1))
        .scan_map(vec![100u64], |acc: &mut Vec<u64>, x: u64| {
            // Half an update, then the panic: the reset must not keep the half.
            acc.push(x);
            assert!(x != 3, "boom {x}");
            acc.iter().sum::<u64>()
        })
        .log();
}

fn panicky_reduce(p: &mut Plugin<'_>) {
    p.pipeline("p", interval_ms(1))
        .reduce(100u64, |acc: u64, x: u64| {
            assert!(x != 3, "boom {x}");
            acc + x
        })
        .log();
}

/// A panic in the function of `scan`, `scan_map` or `reduce` resets that operator's state
/// to its seed and says so in the error; the values after it fold into the fresh seed.
#[test]
fn a_panic_resets_the_state_to_the_seed_and_says_so() {
    type Case = (&'static str, fn(&mut Plugin<'_>), Vec<&'static str>);
    let cases: [Case; 3] = [
        // 100, +0, +1, +2, panic: reset to 100, +4, +5.
        (
            "scan",
            panicky_scan,
            vec!["100", "101", "103", "104", "109"],
        ),
        (
            "scan_map",
            panicky_scan_map,
            vec!["100", "101", "103", "104", "109"],
        ),
        ("reduce", panicky_reduce, vec!["109"]),
    ];
    for (what, plugin, expected) in cases {
        let run = only_pipeline(register(plugin));
        let statuses = run.push_each(0..6);
        let panicked: Vec<usize> = statuses
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == status::PANICKED)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(panicked, vec![3], "{what}: {statuses:?}");
        assert_eq!(
            run.errors(),
            vec![(0, "boom 3 (its state was reset to the seed)".to_owned())],
            "{what}"
        );
        assert_eq!(run.complete(), status::COMPLETE, "{what}");
        assert_eq!(run.logs(), expected, "{what}");
    }
}

fn scan_map_unclonable(p: &mut Plugin<'_>) {
    p.pipeline("p", interval_ms(1))
        .scan_map(Counted::new(), |acc: &mut Counted, x: u64| {
            acc.items.push(x);
            assert!(x != 2, "boom {x}");
            acc.items.len() as u64
        })
        .log();
}

/// When `scan_map`'s reset cannot clone the seed, the half-updated state is kept (it is a
/// valid value) and the error says so.
#[test]
fn scan_map_keeps_the_state_when_the_seed_cannot_be_cloned() {
    let before = live();
    let run = only_pipeline(register(scan_map_unclonable));
    CLONE_PANICS.with(|c| c.set(true));
    let statuses = run.push_each(0..4);
    CLONE_PANICS.with(|c| c.set(false));
    assert_eq!(
        statuses,
        vec![
            status::CONTINUE,
            status::CONTINUE,
            status::PANICKED,
            status::CONTINUE
        ]
    );
    assert_eq!(
        run.errors(),
        vec![(
            0,
            "boom 2 (its state is kept as the panic left it: cloning the seed to reset it panicked too)"
                .to_owned()
        )]
    );
    // 0, 1, then 2 pushed before the panic and kept, then 3.
    assert_eq!(run.logs(), vec!["1", "2", "4"]);
    drop(run);
    assert_eq!(live(), before, "every state dropped once");
}

/// Set in the child process of [`reduce_aborts_with_a_message_when_the_seed_cannot_be_cloned`].
const CHILD: &str = "HMR_OPERATORS_ABORT_CHILD";

fn reduce_unclonable(p: &mut Plugin<'_>) {
    p.pipeline("p", interval_ms(1))
        .reduce(Counted::new(), |mut acc: Counted, x: u64| {
            acc.items.push(x);
            assert!(x != 1, "boom {x}");
            acc
        })
        .log();
}

/// `reduce` moved its state into the function that panicked, and cloning the seed panics
/// too: no value can fill the slot, so the process aborts, and says why on stderr first.
/// Run in a child process (this test binary again), since it ends the process.
#[test]
fn reduce_aborts_with_a_message_when_the_seed_cannot_be_cloned() {
    if std::env::var_os(CHILD).is_some() {
        let run = only_pipeline(register(reduce_unclonable));
        CLONE_PANICS.with(|c| c.set(true));
        run.push_each(0..3);
        unreachable!("the process should have aborted");
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "reduce_aborts_with_a_message_when_the_seed_cannot_be_cloned",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("running the child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(6), "aborted: {stderr}");
    }
    #[cfg(not(unix))]
    assert!(!out.status.success(), "{stderr}");
    for expected in [
        // The plugin's hook prints the panic nested in the unwinding one.
        "[hmr plugin] panic while another panic unwinds (the process may abort)",
        "clone refused",
        "[hmr plugin] fatal: operator 0 panicked with its state moved out, and cloning its seed to restore the state panicked too",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

/// `init` says which operators exist: OK for each of the chain's, UNKNOWN_OP (writing
/// nothing) past the end; a null slot only asks.
#[test]
fn init_reports_unknown_operators() {
    let reg = register(reduce_counted);
    let p = &reg.pipelines[0];
    assert_eq!(p.ops.len(), 2);
    let init = p.ops[0].state.init;
    let mut scratch = std::mem::MaybeUninit::<Counted>::uninit();
    let cases: [(u32, *mut u8, u32); 5] = [
        (0, std::ptr::null_mut(), init_status::OK),
        (1, std::ptr::null_mut(), init_status::OK),
        (2, std::ptr::null_mut(), init_status::UNKNOWN_OP),
        (u32::MAX, std::ptr::null_mut(), init_status::UNKNOWN_OP),
        (
            7,
            scratch.as_mut_ptr().cast::<u8>(),
            init_status::UNKNOWN_OP,
        ),
    ];
    let before = (clones(), live());
    for (op, dst, expected) in cases {
        // SAFETY: `env` is the pipeline's; `dst` is null or fits a `Counted`.
        assert_eq!(unsafe { init(p.env, op, dst) }, expected, "operator {op}");
    }
    assert_eq!((clones(), live()), before, "nothing was seeded");
    // SAFETY: freed once.
    unsafe { (p.desc.drop_env)(p.env) };
}

/// Every operator's state vtable carries the state fingerprint its track-call announced
/// (what the host checks at registration).
#[test]
fn state_vtables_match_the_announced_signatures() {
    for plugin in [scan_counted, scan_map_counted, reduce_counted, panicky_scan] {
        let reg = register(plugin);
        let p = &reg.pipelines[0];
        for op in &p.ops {
            let fp = &op.state.fingerprint;
            let announced = reg
                .announced
                .iter()
                .find(|a| a.0 == op.track)
                .expect("the operator's track was announced");
            // SAFETY: a `'static` type name in this binary.
            let name = unsafe { fp.name.to_string_lossy() }.map(|n| n.into_owned());
            assert_eq!(
                (&announced.1, announced.2, announced.3),
                (&name, fp.size, fp.hash)
            );
        }
        // SAFETY: freed once.
        unsafe { (p.desc.drop_env)(p.env) };
    }
}

fn counting_chain(p: &mut Plugin<'_>) {
    p.pipeline("p", range(0, 100))
        .map(|x: u64| x * 2)
        .filter(|x: &u64| x.is_multiple_of(3))
        .take(4)
        .reduce(0u64, |a: u64, x: u64| a + x)
        .log();
}

/// The counting entry points count what each operator emitted (cell `1 + op`) and the source
/// values taken (cell 0); the plain ones count nothing, even with cells to count into.
#[test]
fn counting_entry_points_count_each_operators_emissions() {
    use std::sync::atomic::{AtomicU64, Ordering};
    // (how, cells: source, map, filter, take, reduce, log)
    let cases: [(&str, [u64; 6]); 3] = [
        ("plain batch", [0; 6]),
        ("counted batch", [10, 10, 4, 4, 1, 1]),
        ("counted one by one", [10, 10, 4, 4, 1, 1]),
    ];
    for (how, expected) in cases {
        let mut run = only_pipeline(register(counting_chain));
        let cells: Vec<AtomicU64> = (0..6).map(|_| AtomicU64::new(0)).collect();
        run.cx.counts = cells.as_ptr();
        let ptrs = run.ptrs();
        let values: Vec<u64> = (0..20).collect();
        let (push, complete) = match how {
            "plain batch" => (run.p.desc.push, run.p.desc.complete),
            _ => (run.p.desc.push_counted, run.p.desc.complete_counted),
        };
        if how == "counted one by one" {
            for &x in &values {
                // SAFETY: one seeded slot per operator, a valid context and counts.
                let s = unsafe {
                    (run.p.desc.push_one_counted)(
                        run.p.env,
                        ptrs.as_ptr(),
                        0,
                        (&raw const x).cast(),
                        &run.cx,
                    )
                };
                if s == status::COMPLETE {
                    break;
                }
            }
        } else {
            let mut consumed = 0;
            // SAFETY: as above.
            let s = unsafe {
                push(
                    run.p.env,
                    ptrs.as_ptr(),
                    0,
                    values.as_ptr().cast(),
                    values.len(),
                    &run.cx,
                    &mut consumed,
                )
            };
            assert_eq!((s, consumed), (status::COMPLETE, 10), "{how}");
        }
        // The `take` completed the pipeline, which flushed the `reduce`: the host calls no
        // `complete` after a COMPLETE status.
        let _ = complete;
        let got: Vec<u64> = cells.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(got, expected, "{how}");
        // The chain ran the same either way: 0 + 6 + 12 + 18.
        assert_eq!(run.logs(), ["36"], "{how}");
        run.cx.counts = std::ptr::null();
    }
}

/// A state's Debug text through its vtable: whole, cut to the buffer at a character boundary,
/// or absent for an operator without state.
#[test]
fn state_debug_text_is_written_capped() {
    use plugin_api::abi::debug_status;
    let run = only_pipeline(register(scan_counted));
    assert_eq!(run.push(&[1, 2, 3]).0, status::CONTINUE);
    // (operator, buffer size, status, text)
    let cases = [
        (0, 64, debug_status::OK, "3:6"),
        (0, 2, debug_status::TRUNCATED, "3:"),
        (0, 0, debug_status::TRUNCATED, ""),
        (1, 64, debug_status::NO_STATE, ""),
    ];
    for (op, cap, expected, text) in cases {
        let mut buf = vec![0u8; cap];
        let mut len = usize::MAX;
        let vtable = &run.p.ops[op].state;
        // SAFETY: the slot holds the operator's seeded state; `buf` has `cap` bytes.
        let s = unsafe { (vtable.debug)(run.slots[op].0, buf.as_mut_ptr(), cap, &mut len) };
        assert_eq!(s, expected, "op {op}, cap {cap}");
        assert_eq!(&buf[..len], text.as_bytes(), "op {op}, cap {cap}");
    }
}

//! The accumulating operators (`scan`, `scan_map`, `reduce`) and `init`, run through their
//! `extern "C"` entry points by the minimal host of `common`.

mod common;

use std::cell::Cell;
use std::fmt;

use common::{CHILD, only_pipeline, register};
use plugin_api::abi::{init_status, status};
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
                .find(|a| a.handle == op.track)
                .expect("the operator's track was announced");
            // SAFETY: a `'static` type name in this binary.
            let name = unsafe { fp.name.to_string_lossy() }.map(|n| n.into_owned());
            assert_eq!(announced.state, (name, fp.size, fp.hash));
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

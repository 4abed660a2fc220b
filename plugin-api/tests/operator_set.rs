//! The rxRust operator set (`plugin_api::ops`) through its `extern "C"` entry points, on the
//! minimal host of `common`: the start entry point, signatures, state texts, panics in user
//! functions, and `flat_map`'s early stop. What each operator emits is checked against
//! rxRust in `differential.rs`.

mod common;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{only_pipeline, register};
use plugin_api::abi::status;
use plugin_api::prelude::*;

thread_local! {
    /// When set, cloning a `Touchy` panics.
    static CLONE_PANICS: Cell<bool> = const { Cell::new(false) };
    /// How many items `flat_map`'s iterator produced.
    static NEXTS: Cell<u64> = const { Cell::new(0) };
}

plugin_api::state! {
    /// A value whose `Clone` panics on demand.
    #[derive(Debug, PartialEq)]
    pub struct Touchy { pub n: u64 }
}

impl Clone for Touchy {
    fn clone(&self) -> Touchy {
        assert!(!CLONE_PANICS.with(Cell::get), "clone refused");
        Touchy { n: self.n }
    }
}

/// `start_with` emits on start, before the first value; several emit nearest the end first
/// (as Rx's `startWith(1).startWith(2)` gives 2, 1), and what an upstream one emits passes
/// through the operators after it. The counting entry point counts the start's emissions.
#[test]
fn start_emits_start_with_values_before_the_first_value() {
    let mut run = only_pipeline(register(|p| {
        p.pipeline("p", range(0, 10))
            .start_with(1)
            .map(|x: u64| x * 10)
            .start_with(2)
            .log();
    }));
    let cells: Vec<AtomicU64> = (0..5).map(|_| AtomicU64::new(0)).collect();
    run.cx.counts = cells.as_ptr();
    let ptrs = run.ptrs();
    // SAFETY: one seeded slot per operator, a valid context with one cell per operator + 1.
    let s = unsafe { (run.p.desc.start_counted)(run.p.env, ptrs.as_ptr(), &run.cx) };
    run.cx.counts = std::ptr::null();
    assert_eq!(s, status::CONTINUE);
    let counts: Vec<u64> = cells.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    // (source, start_with(1), map, start_with(2), log)
    assert_eq!(counts, [0, 1, 1, 2, 2]);
    assert_eq!(run.logs(), ["2", "10"]);
    assert_eq!(run.push(&[5, 6]).0, status::CONTINUE);
    assert_eq!(run.complete(), status::COMPLETE);
    assert_eq!(run.logs(), ["2", "10", "50", "60"]);
}

/// A `take` downstream that is full after the start's emissions completes the chain from
/// the start entry point (the host then completes it without running the source).
#[test]
fn start_completes_the_chain_when_a_take_downstream_is_full() {
    let cases: [(u64, u32, &[&str]); 3] = [
        (0, status::COMPLETE, &[]),
        (1, status::COMPLETE, &["2"]),
        (3, status::CONTINUE, &["2", "1"]),
    ];
    for (k, expected, logs) in cases {
        let run = only_pipeline(register(move |p| {
            p.pipeline("p", range(0, 10))
                .start_with(1)
                .start_with(2)
                .take(k)
                .log();
        }));
        assert_eq!(run.start(), expected, "take({k})");
        assert_eq!(run.logs(), logs, "take({k})");
    }
}

/// A panic in an operator's user code (a predicate, a closure, an iterator, a `Clone`) is
/// reported at that operator with its message; the values after it go on.
#[test]
fn a_panic_in_user_code_is_reported_at_its_operator() {
    type Plugin = fn(&mut plugin_api::dsl::Plugin<'_>);
    // (what, plugin, start's status, values one by one, their statuses, error, logs)
    type Case = (
        &'static str,
        Plugin,
        u32,
        Vec<u64>,
        Vec<u32>,
        (u32, &'static str),
        Vec<&'static str>,
    );
    const C: u32 = status::CONTINUE;
    const P: u32 = status::PANICKED;
    let cases: [Case; 6] = [
        (
            "skip_while",
            |p| {
                p.pipeline("p", range(0, 9))
                    .map(|x: u64| x)
                    .skip_while(|x: &u64| {
                        assert!(*x != 3, "boom {x}");
                        *x < 5
                    })
                    .log();
            },
            C,
            vec![1, 3, 6, 1],
            vec![C, P, C, C],
            (1, "boom 3"),
            vec!["6", "1"],
        ),
        (
            "take_while",
            |p| {
                p.pipeline("p", range(0, 9))
                    .take_while(|x: &u64| {
                        assert!(*x != 3, "boom {x}");
                        *x < 5
                    })
                    .log();
            },
            C,
            vec![1, 3, 2],
            vec![C, P, C],
            (0, "boom 3"),
            vec!["1", "2"],
        ),
        (
            "filter_map",
            |p| {
                p.pipeline("p", range(0, 9))
                    .filter_map(|x: u64| {
                        assert!(x != 3, "boom {x}");
                        x.is_multiple_of(2).then_some(x)
                    })
                    .log();
            },
            C,
            vec![2, 3, 4, 5],
            vec![C, P, C, C],
            (0, "boom 3"),
            vec!["2", "4"],
        ),
        (
            "flat_map",
            |p| {
                p.pipeline("p", range(0, 9))
                    .flat_map(|x: u64| {
                        (0..x).inspect(move |&i| assert!(i != 2, "boom at {i} of {x}"))
                    })
                    .log();
            },
            C,
            vec![4, 2],
            vec![P, C],
            (0, "boom at 2 of 4"),
            vec!["0", "1", "0", "1"],
        ),
        (
            "start_with",
            |p| {
                p.pipeline("p", range(0, 9))
                    .map(|n: u64| Touchy { n })
                    .start_with(Touchy { n: 7 })
                    .map(|t: Touchy| t.n)
                    .log();
            },
            P,
            vec![1],
            vec![C],
            (1, "clone refused"),
            vec!["1"],
        ),
        (
            "distinct_until_changed",
            |p| {
                p.pipeline("p", range(0, 9))
                    .map(|n: u64| Touchy { n })
                    .distinct_until_changed()
                    .map(|t: Touchy| t.n)
                    .log();
            },
            C,
            vec![1],
            vec![P],
            (1, "clone refused"),
            vec![],
        ),
    ];
    for (what, plugin, start, values, statuses, error, logs) in cases {
        let run = only_pipeline(register(plugin));
        CLONE_PANICS.with(|c| c.set(true));
        let started = run.start();
        let pushed = run.push_each(values);
        CLONE_PANICS.with(|c| c.set(false));
        assert_eq!(started, start, "{what}: start");
        assert_eq!(pushed, statuses, "{what}");
        assert_eq!(run.errors(), vec![(error.0, error.1.to_owned())], "{what}");
        assert_eq!(run.logs(), logs, "{what}");
    }
}

/// `flat_map` stops pulling from its iterator as soon as the chain completes downstream: no
/// item is produced past the one that completed it.
#[test]
fn flat_map_stops_iterating_when_downstream_completes() {
    // (take downstream, how: batch or one by one, status, items produced, logs)
    let cases: [(u64, bool, u32, u64, &[&str]); 4] = [
        (3, true, status::COMPLETE, 3, &["0", "1", "2"]),
        (3, false, status::COMPLETE, 3, &["0", "1", "2"]),
        (1, true, status::COMPLETE, 1, &["0"]),
        (0, true, status::COMPLETE, 1, &[]),
    ];
    for (k, batch, expected, produced, logs) in cases {
        NEXTS.with(|n| n.set(0));
        let run = only_pipeline(register(move |p| {
            p.pipeline("p", range(0, 9))
                .flat_map(|_x: u64| {
                    (0..1_000_000u64).inspect(|_| NEXTS.with(|n| n.set(n.get() + 1)))
                })
                .take(k)
                .log();
        }));
        let s = if batch {
            let (s, consumed) = run.push(&[7, 8, 9]);
            assert_eq!(
                consumed, 1,
                "take({k}): the first value completed the chain"
            );
            s
        } else {
            run.push_each([7])[0]
        };
        assert_eq!(s, expected, "take({k})");
        assert_eq!(NEXTS.with(Cell::get), produced, "take({k}): items produced");
        assert_eq!(run.logs(), logs, "take({k})");
    }
}

fn every_operator(p: &mut plugin_api::dsl::Plugin<'_>) {
    p.pipeline("p", range(0, 10))
        .distinct_until_changed()
        .distinct()
        .skip(3)
        .skip_while(|x: &u64| *x < 2)
        .take_while(|x: &u64| *x < 100)
        .take_last(2)
        .last()
        .start_with(7)
        .default_if_empty(9)
        .filter_map(Some)
        .flat_map(|x: u64| [x, x])
        .first()
        .pairwise()
        .buffer_count(4)
        .count()
        .log();
}

/// Each operator announces its kind, its arguments as the signature's seed (so a changed
/// argument resets its state), and its state type; its state vtable carries the same
/// fingerprint. `default_if_empty`'s value is left out of the seed on purpose (see its
/// documentation).
#[test]
fn signatures_name_each_operators_arguments_and_state() {
    use std::any::type_name;
    use std::collections::{HashSet, VecDeque};
    let reg = register(every_operator);
    let got: Vec<(String, Option<String>, Option<String>)> = reg
        .announced
        .iter()
        .map(|a| (a.kind.clone(), a.seed.clone(), a.state.0.clone()))
        .collect();
    let s = |t: &str| Some(t.to_owned());
    let expected = vec![
        ("pipeline", s("range(0, 10)"), None),
        (
            "distinct_until_changed",
            None,
            s(type_name::<Option<u64>>()),
        ),
        ("distinct", None, s(type_name::<HashSet<u64>>())),
        ("skip", s("3"), s("u64")),
        ("skip_while", None, s("bool")),
        ("take_while", None, s("bool")),
        ("take_last", s("2"), s(type_name::<VecDeque<u64>>())),
        ("last", None, s(type_name::<Option<u64>>())),
        ("start_with", s("7"), None),
        ("default_if_empty", None, s("bool")),
        ("filter_map", None, None),
        ("flat_map", None, None),
        ("first", None, s("bool")),
        ("pairwise", None, s(type_name::<Option<u64>>())),
        ("buffer_count", s("4"), s(type_name::<Vec<(u64, u64)>>())),
        ("count", None, s("u64")),
        ("log", None, None),
    ];
    let expected: Vec<_> = expected
        .into_iter()
        .map(|(k, seed, state)| (k.to_owned(), seed, state))
        .collect();
    assert_eq!(got, expected);
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
        assert_eq!(
            announced.state,
            (name, fp.size, fp.hash),
            "{}",
            announced.kind
        );
    }
    // SAFETY: freed once.
    unsafe { (p.desc.drop_env)(p.env) };
}

/// What each stateful operator keeps, as the inspector reads it (the state's Debug text).
#[test]
fn state_texts_show_what_each_operator_keeps() {
    type Plugin = fn(&mut plugin_api::dsl::Plugin<'_>);
    let cases: [(&str, Plugin, &[u64], &str); 11] = [
        (
            "distinct_until_changed",
            |p| drop(p.pipeline("p", range(0, 1)).distinct_until_changed()),
            &[1, 1, 3],
            "Some(3)",
        ),
        (
            "distinct",
            |p| drop(p.pipeline("p", range(0, 1)).distinct()),
            &[5, 5],
            "{5}",
        ),
        (
            "skip",
            |p| drop(p.pipeline("p", range(0, 1)).skip(2)),
            &[9, 9, 9],
            "2",
        ),
        (
            "skip_while",
            |p| drop(p.pipeline("p", range(0, 1)).skip_while(|x: &u64| *x < 3)),
            &[1, 4, 1],
            "true",
        ),
        (
            "take_while",
            |p| drop(p.pipeline("p", range(0, 1)).take_while(|x: &u64| *x < 3)),
            &[1, 2],
            "false",
        ),
        (
            "take_last",
            |p| drop(p.pipeline("p", range(0, 1)).take_last(2)),
            &[1, 2, 3],
            "[2, 3]",
        ),
        (
            "last",
            |p| drop(p.pipeline("p", range(0, 1)).last()),
            &[1, 7],
            "Some(7)",
        ),
        (
            "pairwise",
            |p| drop(p.pipeline("p", range(0, 1)).pairwise()),
            &[4],
            "Some(4)",
        ),
        (
            "buffer_count",
            |p| drop(p.pipeline("p", range(0, 1)).buffer_count(3)),
            &[1, 2, 3, 4],
            "[4]",
        ),
        (
            "count",
            |p| drop(p.pipeline("p", range(0, 1)).count()),
            &[1, 1, 1],
            "3",
        ),
        (
            "default_if_empty",
            |p| drop(p.pipeline("p", range(0, 1)).default_if_empty(0)),
            &[1],
            "true",
        ),
    ];
    for (what, plugin, values, text) in cases {
        let run = only_pipeline(register(plugin));
        assert_eq!(run.push(values).0, status::CONTINUE, "{what}");
        assert_eq!(run.state_text(0), text, "{what}");
    }
}

/// `first` and `take_while` complete the pipeline on the value that ends them, so the host
/// stops the source there (`consumed` counts the values taken, that one included); the
/// others never complete it on their own.
#[test]
fn completing_operators_stop_the_source() {
    type Plugin = fn(&mut plugin_api::dsl::Plugin<'_>);
    // (what, plugin, status of a batch of 0..8, values taken)
    let cases: [(&str, Plugin, u32, usize); 5] = [
        (
            "first",
            |p| drop(p.pipeline("p", range(0, 1)).first()),
            status::COMPLETE,
            1,
        ),
        (
            "take_while",
            |p| drop(p.pipeline("p", range(0, 1)).take_while(|x: &u64| *x < 3)),
            status::COMPLETE,
            4,
        ),
        (
            "skip_while",
            |p| drop(p.pipeline("p", range(0, 1)).skip_while(|x: &u64| *x < 3)),
            status::CONTINUE,
            8,
        ),
        (
            "take_last",
            |p| drop(p.pipeline("p", range(0, 1)).take_last(2)),
            status::CONTINUE,
            8,
        ),
        (
            "distinct",
            |p| drop(p.pipeline("p", range(0, 1)).distinct()),
            status::CONTINUE,
            8,
        ),
    ];
    let values: Vec<u64> = (0..8).collect();
    for (what, plugin, expected, taken) in cases {
        let run = only_pipeline(register(plugin));
        let (s, consumed) = run.push(&values);
        let consumed = if s == status::CONTINUE {
            values.len()
        } else {
            consumed
        };
        assert_eq!((s, consumed), (expected, taken), "{what}");
    }
}

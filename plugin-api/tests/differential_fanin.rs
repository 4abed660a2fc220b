//! Differential tests of the fan-in operators (`merge`, `zip`, `combine_latest`,
//! `with_latest_from`): a generated schedule of values on two inputs, interleaved, with either
//! input completing at generated points, runs through our operator (one pipeline with two
//! `range`-sourced inputs, fed port by port through the `extern "C"` entry points by the
//! minimal host of `common`) and through rxRust 1.0.0-rc.6's operator fed by two `Subject`s
//! in the same order. Both must give the same outputs and complete at the same point (the
//! outputs compared end in `|` where the output completed).
//!
//! Each case varies:
//! - the schedule: values on either input (few distinct ones, the right input's offset by
//!   10 so a `merge` shows where each value came from), and each input's completion, or
//!   none, anywhere in it (an empty schedule too);
//! - an optional `start_with` on either input (values emitted at subscription);
//! - a `take(k)` on either input, the right one inside the inner stream, so its port reports
//!   `PORT_DONE` and the pipeline goes on (`take(0)` included: it completes at subscription);
//! - a `take(a)` downstream of the fan-in, completing the pipeline;
//! - how the values arrive: runs of values on one port in batches of generated sizes, or one
//!   by one;
//! - an optional reload at some point of the schedule: the chain is registered again and its
//!   new code carries on with the old code's state slots (the fan-in's state among them); the
//!   new code adds `NEW_CODE` to each value it emits (a `map` after the operator), and
//!   rxRust's side adds it from that event on, so a value that went through the old code
//!   after the reload shows.
//!
//! An absent `take` is written as `take(u64::MAX)` on both sides (it never completes), to
//! keep the number of chain shapes down.
//!
//! Besides the outputs, our pipeline must report `PORT_DONE` for a port exactly where rxRust's
//! input completes while the output goes on: at the same step of the schedule (the value
//! inside a batch that completed it, by the count the batch entry point returns), or, for an
//! input that completes at subscription (a `take(0)`), at that port's first step, since
//! `start` has no port to name. Where the output completes too, the status is `COMPLETE`.
//!
//! The issue asks for RxJS's completion semantics. rxRust agrees with RxJS on these four
//! with one exception, where we side with rxRust: RxJS's documentation says `combineLatest`
//! completes as soon as an input completes without having emitted (no output can come after
//! that), and rxRust, RxJava and our operator do so, while RxJS 7's code waits until every
//! input has completed (the documentation and code disagree: ReactiveX/rxjs#4745). So rxRust
//! stays the reference throughout. A `take(0)` completes at subscription in both (RxJS's
//! `take(0)` is `EMPTY`).
//!
//! Subscription order follows RxJS and rxRust: `with_latest_from` subscribes its right
//! input first (a `start_with` on it is the latest value when the left input's start value
//! arrives).

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::{Feed, only_captured, only_pipeline, register};
use plugin_api::abi::status;
use plugin_api::prelude::*;
use proptest::prelude::*;

mod rx {
    use std::time::Duration;

    pub use rxrust::prelude::*;
    use rxrust::scheduler::{Scheduler, TaskHandle};

    /// rxRust's context without its tokio scheduler feature: nothing here uses timers.
    #[derive(Clone, Copy, Default)]
    pub struct NoTimers;

    impl<S> Scheduler<S> for NoTimers {
        fn schedule(&self, _source: S, _delay: Option<Duration>) -> TaskHandle {
            TaskHandle::finished()
        }
    }

    pub type Local<T> = rxrust::context::LocalCtx<T, NoTimers>;
}

/// One step of a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    /// A value on input 0 (left) or 1 (right).
    Value(u32, u64),
    /// Input 0 or 1 completes.
    Complete(u32),
}

/// One generated case.
#[derive(Clone, Debug)]
struct Case {
    events: Vec<Ev>,
    /// `start_with` on the left and right inputs.
    starts: (Option<u64>, Option<u64>),
    /// `take` on the left and right inputs.
    takes: (Option<u64>, Option<u64>),
    /// `take(a)` downstream of the fan-in.
    after: Option<u64>,
    feed: Feed,
    /// A reload before event `i`.
    reload_at: Option<usize>,
}

/// A schedule: `values` (input, value) in order, input 0 completing before value `c0` and
/// input 1 before value `c1` (past the end: after the last value; `None`: never), input 1
/// first when both complete at the same point and `right_first`. Values on an input after its
/// completion are left out.
fn schedule(
    values: &[(bool, u64)],
    c0: Option<usize>,
    c1: Option<usize>,
    right_first: bool,
) -> Vec<Ev> {
    let mut events = Vec::new();
    let mut done = [false; 2];
    for i in 0..=values.len() {
        let mut at = Vec::new();
        for (port, c) in [(0u32, c0), (1, c1)] {
            let last = i == values.len();
            if c.is_some_and(|c| c == i || (last && c > i)) {
                at.push(port);
            }
        }
        if right_first {
            at.reverse();
        }
        for port in at {
            done[port as usize] = true;
            events.push(Ev::Complete(port));
        }
        if let Some(&(right, x)) = values.get(i) {
            let port = u32::from(right);
            if !done[port as usize] {
                events.push(Ev::Value(port, x + 10 * u64::from(port)));
            }
        }
    }
    events
}

fn case() -> impl Strategy<Value = Case> {
    let feed = prop_oneof![
        proptest::collection::vec(1usize..5, 1..4).prop_map(Feed::Batches),
        Just(Feed::OneByOne),
    ];
    (
        (
            proptest::collection::vec((any::<bool>(), 0u64..4), 0..16),
            proptest::option::of(0usize..18),
            proptest::option::of(0usize..18),
            any::<bool>(),
        ),
        proptest::option::of(20u64..22),
        proptest::option::of(30u64..32),
        proptest::option::of(0u64..5),
        proptest::option::of(0u64..5),
        proptest::option::of(0u64..6),
        feed,
        proptest::option::of(0usize..20),
    )
        .prop_map(
            |((values, c0, c1, right_first), ls, rs, lk, rk, after, feed, reload_at)| Case {
                events: schedule(&values, c0, c1, right_first),
                starts: (ls, rs),
                takes: (lk, rk),
                after,
                feed,
                reload_at,
            },
        )
}

/// Where in a schedule something happened: at subscription, or at event `i`.
type At = Option<usize>;

/// What one side produced.
#[derive(Debug, PartialEq, Eq)]
struct Ran {
    /// The outputs' Debug texts, then `|` if the output completed.
    out: Vec<String>,
    /// Ours: each port reported `PORT_DONE`, and where. rxRust: each input whose stream
    /// completed before the output did, and where.
    inputs_done: Vec<(u32, At)>,
    /// Where the output completed.
    completed: Option<At>,
}

/// Runs the pipeline `build` registers through `case`'s schedule as the host runs two
/// sources: start, then each event on its port until the pipeline completes; a port that
/// reported `PORT_DONE` gets nothing more. Runs of values on one port go as one batch (cut
/// at the sizes `case.feed` cycles through) or one by one.
fn run_ours(
    build: impl Fn(&mut Plugin<'_>) + Clone + 'static,
    rebuild: impl Fn(&mut Plugin<'_>) + Clone + 'static,
    case: &Case,
) -> Ran {
    let mut run = only_pipeline(register(build));
    let mut completed = None;
    let mut done = match run.start() {
        status::CONTINUE => false,
        status::COMPLETE => {
            completed = Some(None);
            true
        }
        other => panic!("start returned {other}: {:?}", run.errors()),
    };
    let mut port_done = [false; 2];
    let mut inputs_done = Vec::new();
    let mut sizes = match &case.feed {
        Feed::Batches(sizes) => sizes.clone(),
        Feed::OneByOne => vec![1],
    };
    sizes.retain(|&n| n > 0);
    if sizes.is_empty() {
        sizes.push(1);
    }
    let mut size = sizes.iter().copied().cycle();
    let events = &case.events;
    let mut i = 0;
    while !done && i < events.len() {
        if case.reload_at == Some(i) {
            run.reload(only_captured(register(rebuild.clone())));
        }
        let (port, s, n, at) = match events[i] {
            Ev::Complete(port) => {
                if port_done[port as usize] {
                    i += 1;
                    continue;
                }
                (port, run.complete_port(port), 1, i)
            }
            Ev::Value(port, _) => {
                // The run of values on `port` from `i`, up to the batch size and the reload.
                let mut end = i;
                let limit = size.next().expect("cycled");
                while end < events.len()
                    && end - i < limit
                    && (end == i || case.reload_at != Some(end))
                    && matches!(events[end], Ev::Value(p, _) if p == port)
                {
                    end += 1;
                }
                let xs: Vec<u64> = events[i..end]
                    .iter()
                    .map(|e| match e {
                        Ev::Value(_, x) => *x,
                        Ev::Complete(_) => unreachable!(),
                    })
                    .collect();
                if port_done[port as usize] {
                    i = end;
                    continue;
                }
                let (s, at) = match case.feed {
                    Feed::Batches(_) => {
                        let (s, consumed) = run.push_port(port, &xs);
                        if s != status::CONTINUE {
                            assert!(consumed >= 1 && consumed <= xs.len(), "{consumed}");
                        }
                        (s, i + consumed.max(1) - 1)
                    }
                    Feed::OneByOne => (run.push_one_port(port, xs[0]), i),
                };
                (port, s, end - i, at)
            }
        };
        match s {
            status::CONTINUE => {}
            status::COMPLETE => {
                done = true;
                completed = Some(Some(at));
            }
            status::PORT_DONE => {
                port_done[port as usize] = true;
                inputs_done.push((port, Some(at)));
            }
            other => panic!("event {i} returned {other}: {:?}", run.errors()),
        }
        i += n;
    }
    assert_eq!(run.errors(), vec![]);
    let mut out = run.logs();
    if done {
        out.push("|".to_owned());
    }
    Ran {
        out,
        inputs_done,
        completed,
    }
}

/// What the code a reload brings adds to every value the pipeline emits (a `map` after the
/// operator, 0 before the reload): the output shows which code each value went through.
const NEW_CODE: u64 = 1_000_000;

/// Our output: the pipeline `join` (an expression on the inputs `l` and `r`) builds, with
/// the case's `start_with`s and `take`s, then `take(a)` and `log`.
macro_rules! ours {
    ($case:expr, |$l:ident, $r:ident| $join:expr) => {{
        let case: &Case = $case;
        let (lk, rk) = (
            case.takes.0.unwrap_or(u64::MAX),
            case.takes.1.unwrap_or(u64::MAX),
        );
        let after = case.after.unwrap_or(u64::MAX);
        let starts = case.starts;
        let code = |off: u64| {
            move |p: &mut Plugin<'_>| {
                let c = p.pipeline("p", range(0, 0));
                let inner = range(0, 0);
                match starts {
                    (Some(u), Some(v)) => {
                        let $l = c.start_with(u).take(lk);
                        let $r = inner.start_with(v).take(rk);
                        $join.map(move |x: u64| x + off).take(after).log();
                    }
                    (Some(u), None) => {
                        let $l = c.start_with(u).take(lk);
                        let $r = inner.take(rk);
                        $join.map(move |x: u64| x + off).take(after).log();
                    }
                    (None, Some(v)) => {
                        let $l = c.take(lk);
                        let $r = inner.start_with(v).take(rk);
                        $join.map(move |x: u64| x + off).take(after).log();
                    }
                    (None, None) => {
                        let $l = c.take(lk);
                        let $r = inner.take(rk);
                        $join.map(move |x: u64| x + off).take(after).log();
                    }
                }
            }
        };
        run_ours(code(0), code(NEW_CODE), case)
    }};
}

/// rxRust's output: `join` on the two subjects' streams with the same `start_with`s and
/// `take`s, then `take(a)`, fed the schedule.
macro_rules! theirs {
    ($case:expr, |$l:ident, $r:ident| $join:expr) => {{
        #[allow(unused_imports)]
        use rx::{Observable, ObservableFactory, Observer};
        let case: &Case = $case;
        let (lk, rk) = (
            case.takes.0.map_or(usize::MAX, |k| k as usize),
            case.takes.1.map_or(usize::MAX, |k| k as usize),
        );
        let after = case.after.map_or(usize::MAX, |a| a as usize);
        let log = Rc::new(RefCell::new(Vec::<(String, At)>::new()));
        // Where the schedule is: `None` while subscribing, then each event's index.
        let now = Rc::new(std::cell::Cell::new(None::<usize>));
        let a = rx::Local::subject::<u64, std::convert::Infallible>();
        let b = rx::Local::subject::<u64, std::convert::Infallible>();
        let note = {
            let (log, now) = (log.clone(), now.clone());
            move |e: String| log.borrow_mut().push((e, now.get()))
        };
        let (n0, n1, n2, n3) = (note.clone(), note.clone(), note.clone(), note);
        let l_done = move || n0("0 done".to_owned());
        let r_done = move || n1("1 done".to_owned());
        let end = move || n2("|".to_owned());
        // From the reload's event on, the values are the new code's: `NEW_CODE` added.
        let reload_at = case.reload_at;
        let at = now.clone();
        let each = move |x: u64| {
            let new = reload_at.is_some_and(|r| at.get().is_some_and(|i| i >= r));
            n3(format!("{:?}", if new { x + NEW_CODE } else { x }))
        };
        match case.starts {
            (Some(u), Some(v)) => {
                let $l = a.clone().start_with(vec![u]).take(lk).on_complete(l_done);
                let $r = b.clone().start_with(vec![v]).take(rk).on_complete(r_done);
                $join
                    .take(after)
                    .on_complete(end)
                    .subscribe(move |x| each(x));
            }
            (Some(u), None) => {
                let $l = a.clone().start_with(vec![u]).take(lk).on_complete(l_done);
                let $r = b.clone().take(rk).on_complete(r_done);
                $join
                    .take(after)
                    .on_complete(end)
                    .subscribe(move |x| each(x));
            }
            (None, Some(v)) => {
                let $l = a.clone().take(lk).on_complete(l_done);
                let $r = b.clone().start_with(vec![v]).take(rk).on_complete(r_done);
                $join
                    .take(after)
                    .on_complete(end)
                    .subscribe(move |x| each(x));
            }
            (None, None) => {
                let $l = a.clone().take(lk).on_complete(l_done);
                let $r = b.clone().take(rk).on_complete(r_done);
                $join
                    .take(after)
                    .on_complete(end)
                    .subscribe(move |x| each(x));
            }
        }
        let mut subjects = [Some(a), Some(b)];
        for (i, ev) in case.events.iter().enumerate() {
            now.set(Some(i));
            match *ev {
                Ev::Value(port, x) => {
                    if let Some(s) = subjects[port as usize].as_mut() {
                        s.next(x);
                    }
                }
                Ev::Complete(port) => {
                    if let Some(s) = subjects[port as usize].take() {
                        s.complete();
                    }
                }
            }
        }
        split(log.take(), &case.events)
    }};
}

/// rxRust's log as a [`Ran`], with the input completions our pipeline must report: those
/// before the output's completion (rxRust's `take` completes its observer after a last value
/// that completed the output downstream) and not at the same step (there our status is
/// `COMPLETE`); one at subscription is reported at that port's first step, if the output has
/// not completed by then.
fn split(log: Vec<(String, At)>, events: &[Ev]) -> Ran {
    let end = log.iter().position(|(e, _)| e == "|");
    let completed = end.map(|i| log[i].1);
    let log = &log[..end.map_or(log.len(), |i| i + 1)];
    let inputs_done = log
        .iter()
        .filter_map(|(e, at)| Some((e.strip_suffix(" done")?.parse::<u32>().ok()?, *at)))
        .filter_map(|(port, at)| {
            let at = match at {
                Some(i) => i,
                None => events.iter().position(|e| match e {
                    Ev::Value(p, _) | Ev::Complete(p) => *p == port,
                })?,
            };
            let before_end = completed.is_none_or(|c| c.is_some_and(|c| at < c));
            before_end.then_some((port, Some(at)))
        })
        .collect();
    let out = log
        .iter()
        .filter(|(e, _)| !e.ends_with(" done"))
        .map(|(e, _)| e.clone())
        .collect();
    Ran {
        out,
        inputs_done,
        completed,
    }
}

type Runs = (Ran, Ran);

fn merge(case: &Case) -> Runs {
    (
        ours!(case, |l, r| l.merge(r)),
        theirs!(case, |l, r| l.merge(r)),
    )
}

fn zip(case: &Case) -> Runs {
    (
        ours!(case, |l, r| l.zip(r, |a: u64, b: u64| a * 100 + b)),
        theirs!(case, |l, r| l.zip(r).map(|(a, b): (u64, u64)| a * 100 + b)),
    )
}

fn combine_latest(case: &Case) -> Runs {
    (
        ours!(case, |l, r| l
            .combine_latest(r, |a: &u64, b: &u64| a * 100 + b)),
        theirs!(case, |l, r| l
            .combine_latest(r, |a: u64, b: u64| a * 100 + b)),
    )
}

fn with_latest_from(case: &Case) -> Runs {
    (
        ours!(case, |l, r| l
            .with_latest_from(r, |a: u64, b: &u64| a * 100 + b)),
        theirs!(case, |l, r| l
            .with_latest_from(r)
            .map(|(a, b): (u64, u64)| a * 100 + b)),
    )
}

type Check = fn(&Case) -> Runs;

const OPERATORS: [(&str, Check); 4] = [
    ("merge", merge),
    ("zip", zip),
    ("combine_latest", combine_latest),
    ("with_latest_from", with_latest_from),
];

/// Checks one run: the same outputs, the same completion point, and `PORT_DONE` where
/// rxRust's input completed.
fn check(name: &str, case: &Case, (ours, theirs): Runs) -> Result<(), String> {
    if ours != theirs {
        return Err(format!(
            "{name}: ours {ours:?}, rxRust {theirs:?} on {case:?}"
        ));
    }
    Ok(())
}

/// The edge cases, written out so that every operator meets each of them on every run:
/// empty inputs (nothing, or only completions in either order), a `take(0)` on either input
/// or downstream, start values, and a short schedule with each input completing first.
#[test]
fn every_fan_in_on_the_edge_cases() {
    let short = [(false, 1), (true, 2), (false, 3), (true, 0), (true, 1)];
    let mut schedules = Vec::new();
    for (c0, c1) in [
        (None, None),
        (Some(0), None),
        (None, Some(0)),
        (Some(0), Some(0)),
    ] {
        for right_first in [false, true] {
            schedules.push(schedule(&[], c0, c1, right_first));
        }
    }
    for (c0, c1) in [
        (None, None),
        (Some(2), Some(9)),
        (Some(9), Some(2)),
        (Some(3), None),
    ] {
        schedules.push(schedule(&short, c0, c1, false));
    }
    let mut cases = Vec::new();
    for events in &schedules {
        for takes in [
            (None, None),
            (Some(0), None),
            (None, Some(0)),
            (Some(1), Some(2)),
        ] {
            for after in [None, Some(0), Some(2)] {
                for starts in [
                    (None, None),
                    (Some(20), None),
                    (None, Some(30)),
                    (Some(21), Some(31)),
                ] {
                    cases.push(Case {
                        events: events.clone(),
                        starts,
                        takes,
                        after,
                        feed: Feed::Batches(vec![2]),
                        reload_at: Some(2),
                    });
                }
            }
        }
    }
    for (name, run) in OPERATORS {
        for case in &cases {
            if let Err(e) = check(name, case, run(case)) {
                panic!("{e}");
            }
        }
    }
}

/// What a few schedules must produce, written by hand: the reference itself is checked, so a
/// test comparing two equally wrong outputs would fail here.
#[test]
fn the_reference_gives_the_expected_outputs() {
    use Ev::{Complete, Value};
    let case = |events: Vec<Ev>, takes: (Option<u64>, Option<u64>)| Case {
        events,
        starts: (None, None),
        takes,
        after: None,
        feed: Feed::OneByOne,
        reload_at: None,
    };
    // Left 1, right 11, left 2, right 12, right 13, right completes, left 3, left completes.
    let events = vec![
        Value(0, 1),
        Value(1, 11),
        Value(0, 2),
        Value(1, 12),
        Value(1, 13),
        Complete(1),
        Value(0, 3),
        Complete(0),
    ];
    // Each: the operator, the case, the outputs, where ports report `PORT_DONE` (port, step),
    // and the step where the output completes.
    type Expected<'a> = (&'a str, Case, &'a [&'a str], &'a [(u32, usize)], usize);
    let cases: [Expected<'_>; 6] = [
        (
            "merge",
            case(events.clone(), (None, None)),
            &["1", "11", "2", "12", "13", "3", "|"],
            &[(1, 5)],
            7,
        ),
        // The right input's `take(1)` completes its port; the merge goes on until the left.
        (
            "merge",
            case(events.clone(), (None, Some(1))),
            &["1", "11", "2", "3", "|"],
            &[(1, 1)],
            7,
        ),
        // 13 waits in the right queue when the right input completes; the left 3 takes it,
        // and with nothing queued on a completed input, the zip completes.
        (
            "zip",
            case(events.clone(), (None, None)),
            &["111", "212", "313", "|"],
            &[(1, 5)],
            6,
        ),
        (
            "combine_latest",
            case(events.clone(), (None, None)),
            &["111", "211", "212", "213", "313", "|"],
            &[(1, 5)],
            7,
        ),
        // An input completing without a value: nothing can be combined any more.
        (
            "combine_latest",
            case(vec![Complete(1), Value(0, 1)], (None, None)),
            &["|"],
            &[],
            0,
        ),
        (
            "with_latest_from",
            case(events, (None, None)),
            &["211", "313", "|"],
            &[(1, 5)],
            7,
        ),
    ];
    for (name, case, out, done, completed) in cases {
        let run = OPERATORS.iter().find(|o| o.0 == name).expect("listed").1;
        let (ours, theirs) = run(&case);
        let expected = Ran {
            out: out.iter().map(|s| s.to_string()).collect(),
            inputs_done: done.iter().map(|&(p, i)| (p, Some(i))).collect(),
            completed: Some(Some(completed)),
        };
        assert_eq!(theirs, expected, "rxRust's {name} on {case:?}");
        assert_eq!(ours, expected, "our {name} on {case:?}");
    }
}

/// 1024 cases an operator from a fixed seed, so every run checks the same inputs (a failure
/// is reproducible, never a flake); `PROPTEST_RNG_SEED` picks another seed for exploring.
fn config() -> ProptestConfig {
    common::fixed_seed(1024, 20_261_126)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn merge_matches_rxrust(case in case()) {
        check("merge", &case, merge(&case)).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn zip_matches_rxrust(case in case()) {
        check("zip", &case, zip(&case)).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn combine_latest_matches_rxrust(case in case()) {
        check("combine_latest", &case, combine_latest(&case)).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn with_latest_from_matches_rxrust(case in case()) {
        check("with_latest_from", &case, with_latest_from(&case)).map_err(TestCaseError::fail)?;
    }
}

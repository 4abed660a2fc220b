//! A completion happens once: values that still arrive on another port of a stream that
//! completed (a `take` after an inner `merge`, an inner `zip` ended by its other input) are
//! refused with `PORT_DONE` and emit nothing, and what flushes at completion (`count`) runs
//! once. Ports: 0 the outer `range`, 1 and 2 the inner stream's.

mod common;

use common::{only_pipeline, register};
use plugin_api::abi::status;
use plugin_api::prelude::*;

/// `x.merge(b.merge(c).take(2).count())`: the inner `take` completes with port 1's second
/// value; port 2's next value is refused and the `count` emits once, 2.
#[test]
fn a_take_after_an_inner_merge_completes_once() {
    let run = only_pipeline(register(|p| {
        p.pipeline("p", range(0, 10))
            .merge(range(100, 110).merge(range(200, 210)).take(2).count())
            .log();
    }));
    assert_eq!(run.start(), status::CONTINUE);
    assert_eq!(run.push_one_port(1, 100), status::CONTINUE);
    assert_eq!(run.push_one_port(1, 101), status::PORT_DONE);
    assert_eq!(
        run.logs(),
        ["2"],
        "the count flushed at the take's completion"
    );
    // The inner stream's other port: refused, nothing emitted again.
    assert_eq!(run.push_one_port(2, 200), status::PORT_DONE);
    assert_eq!(run.push_one_port(2, 201), status::PORT_DONE);
    assert_eq!(run.logs(), ["2"], "completed once");
    // The outer port goes on.
    assert_eq!(run.push_one_port(0, 7), status::CONTINUE);
    assert_eq!(run.logs(), ["2", "7"]);
}

/// `x.merge(b.zip(c, f))` where `c` completes empty: the inner `zip` completes, and `b`'s
/// values are refused (its port is done) instead of queueing for ever.
#[test]
fn an_inner_zip_ended_by_its_other_input_refuses_values() {
    let run = only_pipeline(register(|p| {
        p.pipeline("p", range(0, 10))
            .merge(range(100, 110).zip(range(200, 210), |a: u64, b: u64| a + b))
            .log();
    }));
    assert_eq!(run.start(), status::CONTINUE);
    assert_eq!(run.complete_port(2), status::PORT_DONE);
    for x in 100..105 {
        assert_eq!(run.push_one_port(1, x), status::PORT_DONE, "value {x}");
    }
    // The zip (operator 1, inside the merge, operator 0) holds no queued value: nothing
    // grows.
    let zip_state = run.state_text(1);
    assert!(zip_state.starts_with("([], [], "), "{zip_state}");
    assert_eq!(run.push_one_port(0, 3), status::CONTINUE);
    assert_eq!(run.logs(), ["3"]);
}

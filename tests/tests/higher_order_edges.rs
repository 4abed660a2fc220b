//! Higher-order operators at their edges, on real builds: what an inner stream may not hold
//! is refused with an error at the operator (and the outer stream goes on), and a panic in an
//! inner stream's operator is reported at that operator's own path.

use host::events::HostEvent;
use host::testkit::{Fixture, Harness};
use integration_tests::{SETTLE, plugin, value};

fn errors(host: &mut Harness) -> Vec<(String, String)> {
    host.drain();
    host.history()
        .iter()
        .filter_map(|e| match e {
            HostEvent::Error { path, message, .. } => Some((path.clone(), message.clone())),
            _ => None,
        })
        .collect()
}

/// Each case: a pipeline body whose inner stream the host refuses, the path of the error and
/// a part of its message. The outer stream goes on: the values of the other branch arrive.
#[test]
fn refused_inner_streams_are_errors_at_the_operator() -> anyhow::Result<()> {
    let cases = [
        (
            "file",
            r#"p.pipeline("r", range(0, 3))
        .merge_map(|n: u64| file_lines("in.log").map(move |_l: String| n))
        .log();"#,
            "r|0:merge_map",
            "inner streams take `interval_ms`, `range` and `of`",
        ),
        (
            "nested",
            r#"p.pipeline("r", range(0, 3))
        .merge_map(|n: u64| of(vec![n]).switch_map(move |m: u64| of(vec![m, n])))
        .log();"#,
            "r|0:merge_map|#1:inner|0:switch_map",
            "a higher-order operator inside an inner stream is not supported",
        ),
    ];
    for (name, body, path, message) in cases {
        let fixture = Fixture::new(&format!("higher_refused_{name}"), &plugin(body));
        let (clock, time) = host::clock::Clock::virtual_clock();
        let mut options = fixture.options();
        options.clock = clock;
        let mut host = Harness::start(&options)?;
        host.wait_loaded()?;
        assert!(time.settle(SETTLE), "{name}");
        let errs = errors(&mut host);
        assert!(
            errs.iter().any(|(p, m)| p == path && m.contains(message)),
            "{name}: {errs:?}"
        );
        host.stop();
    }
    Ok(())
}

/// A panic in an inner stream's operator is an error at that operator's path (under the
/// subscription's track); that value is dropped and the subscription goes on.
#[test]
fn a_panic_in_an_inner_operator_names_its_path() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_inner_panic",
        &plugin(
            r#"    p.pipeline("q", range(0, 2))
        .concat_map(|n: u64| of(vec![1u64, 2, 3]).map(move |x: u64| {
            if n == 1 && x == 2 {
                panic!("inner {n} refuses {x}");
            }
            n * 10 + x
        }))
        .log();"#,
        ),
    );
    let (clock, time) = host::clock::Clock::virtual_clock();
    let mut options = fixture.options();
    options.clock = clock;
    let mut host = Harness::start(&options)?;
    host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    let errs = errors(&mut host);
    assert!(
        errs.iter()
            .any(|(p, m)| p == "q|0:concat_map|#2:inner|0:map" && m.contains("inner 1 refuses 2")),
        "{errs:?}"
    );
    let got: Vec<i64> = host.emissions("q").iter().map(|(_, v)| value(v)).collect();
    assert_eq!(got, [1, 2, 3, 11, 13]);
    host.stop();
    Ok(())
}

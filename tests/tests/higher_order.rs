//! Higher-order operators on real builds, under a virtual clock: inner subscriptions created
//! at run time keep running through reloads (re-projected, swapped in place: an inner
//! interval continues its count through new code), a changed inner source restarts the
//! subscription with the reason told, a `concat_map` queue survives a reload, a panic in a
//! projection is reported at the operator, and an inner type change resets the operator.

use std::time::Duration;

use host::events::HostEvent;
use host::testkit::{EMISSION_TIMEOUT, Fixture, Harness};
use integration_tests::{reload_fields, reload_version, value};

const SETTLE: Duration = Duration::from_secs(30);

fn plugin(body: &str) -> String {
    format!(
        "use plugin_api::prelude::*;\n\nfn register(p: &mut Plugin) {{\n{body}\n}}\n\n\
         plugin_api::export_plugin!(register);\n"
    )
}

fn values(host: &mut Harness, p: &str) -> Vec<(u64, i64)> {
    host.drain();
    host.emissions(p)
        .iter()
        .map(|(v, x)| (*v, value(x)))
        .collect()
}

fn advance(time: &host::clock::VirtualClock, ms: u64) {
    time.advance(Duration::from_millis(ms));
    assert!(time.settle(SETTLE), "the pipelines settled");
}

fn notices(host: &mut Harness) -> Vec<String> {
    host.drain();
    host.history()
        .iter()
        .filter_map(|e| match e {
            HostEvent::Notice { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// A live inner interval keeps its count through a reload that edits the inner `map` (the
/// subscription is re-projected and swapped, not restarted), and a reload that edits the
/// inner source restarts it from the new projection, saying why.
#[test]
fn a_live_inner_subscription_is_swapped_not_restarted() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_switch",
        &plugin(
            r#"    p.pipeline("s", interval_ms(1000).take(3))
        .switch_map(|n: u64| interval_ms(100).map(move |i: u64| n * 100 + i + 0))
        .log();"#,
        ),
    );
    let (clock, time) = host::clock::Clock::virtual_clock();
    let mut options = fixture.options();
    options.clock = clock;
    let mut host = Harness::start(&options)?;
    let (v1, _) = host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    advance(&time, 350);
    assert_eq!(values(&mut host, "s"), [(v1, 0), (v1, 1), (v1, 2), (v1, 3)]);

    fixture.edit("src/lib.rs", "i + 0", "i + 50");
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (swapped, reset, added, removed) = reload_fields(&reload);
    // The pipeline's four tracks and the live subscription's `map`, re-projected before the
    // reload was reported.
    assert_eq!(swapped, 5, "{reload:?}");
    assert!(
        reset.is_empty() && added.is_empty() && removed.is_empty(),
        "{reload:?}"
    );
    assert!(time.settle(SETTLE));
    advance(&time, 100); // t = 450: the inner interval's 5th value, through v2
    assert_eq!(values(&mut host, "s").last(), Some(&(v2, 54)));
    // Reported in the reload, not again in a notice.
    assert_eq!(notices(&mut host), Vec::<String>::new());

    // t = 1000: the outer value 1 ends subscription #1 and starts #2.
    advance(&time, 550);
    assert_eq!(values(&mut host, "s").last(), Some(&(v2, 150)));

    fixture.edit("src/lib.rs", "interval_ms(100)", "interval_ms(40)");
    let reload = host.wait_reload()?;
    let v3 = reload_version(&reload);
    let (_, reset, _, _) = reload_fields(&reload);
    assert_eq!(
        reset,
        [
            "s|1:switch_map|#2:inner: its source changed (interval_ms(100) -> interval_ms(40)); \
             restarted from the new projection"
        ],
        "{reload:?}"
    );
    assert!(time.settle(SETTLE));
    // Restarted at t = 1000 from the new projection: 0 at once, then every 40 ms.
    let before = values(&mut host, "s").len();
    advance(&time, 80);
    let got = values(&mut host, "s");
    assert_eq!(
        got[before - 1..],
        [(v3, 150), (v3, 151), (v3, 152)],
        "{got:?}"
    );
    host.stop();
    Ok(())
}

/// `concat_map`'s queue of outer values is state: a reload in the middle keeps it, and the
/// queued values run through the new code, in order, then the pipeline completes.
#[test]
fn a_concat_map_queue_survives_a_reload() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_concat",
        &plugin(
            r#"    p.pipeline("c", range(0, 3))
        .concat_map(|n: u64| interval_ms(100).take(3).map(move |i: u64| n * 10 + i + 0))
        .log();"#,
        ),
    );
    let (clock, time) = host::clock::Clock::virtual_clock();
    let mut options = fixture.options();
    options.clock = clock;
    let mut host = Harness::start(&options)?;
    let (v1, _) = host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    advance(&time, 100);
    assert_eq!(values(&mut host, "c"), [(v1, 0), (v1, 1)]);
    fixture.edit("src/lib.rs", "i + 0", "i + 1000");
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    assert!(time.settle(SETTLE));
    for _ in 0..8 {
        advance(&time, 100);
    }
    let done = host.wait_for(
        "completed",
        EMISSION_TIMEOUT,
        |e| matches!(e, HostEvent::Completed { pipeline, .. } if pipeline == "c"),
    )?;
    assert!(
        matches!(done, HostEvent::Completed { emissions: 3, .. }),
        "{done:?}"
    );
    assert_eq!(
        values(&mut host, "c"),
        [
            (v1, 0),
            (v1, 1),
            (v2, 1002),
            (v2, 1010),
            (v2, 1011),
            (v2, 1012),
            (v2, 1020),
            (v2, 1021),
            (v2, 1022)
        ]
    );
    host.stop();
    Ok(())
}

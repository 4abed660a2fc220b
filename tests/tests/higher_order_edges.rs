//! Higher-order operators at their edges, on real builds: what an inner stream may not hold
//! is refused with an error at the operator (and the outer stream goes on), and a panic in an
//! inner stream's operator is reported at that operator's own path.

use host::events::HostEvent;
use host::testkit::{EMISSION_TIMEOUT, Fixture, Harness};
use integration_tests::{SETTLE, plugin, value};

/// A reloader running `fixture`'s plugin as version 1 (its library copied into `keep`), and
/// its events' channel; `prepare` runs on it before the load (the store's log kept, a clock
/// set).
fn load_v1(
    fixture: &Fixture,
    keep: &host::testkit::TempDir,
    prepare: impl FnOnce(&mut host::reloader::Reloader),
) -> anyhow::Result<(
    host::reloader::Reloader,
    std::sync::mpsc::Receiver<HostEvent>,
)> {
    let config = fixture.build_config(false)?;
    let (mut reloader, rx) = integration_tests::channel_reloader(config.clone())?;
    prepare(&mut reloader);
    let lib = integration_tests::build_copy(&config, keep.path(), "lib.so")?;
    assert_eq!(
        reloader.load_built(&lib, 0),
        host::reloader::Outcome::Loaded { version: 1 }
    );
    Ok((reloader, rx))
}

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
/// a part of its message (for the first subscription, `#1`). The outer stream goes on: each
/// of its three values gets its own refusal, once, and the pipeline completes.
#[test]
fn refused_inner_streams_are_errors_at_the_operator() -> anyhow::Result<()> {
    let cases = [
        (
            "subject_type",
            r#"p.pipeline("q", interval_ms(3_600_000)).publish("t");
    p.pipeline("r", range(0, 3))
        .merge_map(|n: u64| subject::<String>("t").map(move |x: String| n + x.len() as u64))
        .log();"#,
            "r|0:merge_map",
            "q publishes `u64` but r|0:merge_map|#1:inner reads `alloc::string::String`",
        ),
        (
            "publish_type",
            r#"p.pipeline("q", subject::<u64>("t")).log();
    p.pipeline("r", range(0, 3))
        .merge_map(|n: u64| of(vec![format!("{n}")]).publish("t").map(|s: String| s.len() as u64))
        .log();"#,
            "r|0:merge_map",
            "q reads `u64` but r|0:merge_map|#1:inner publishes `alloc::string::String`",
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
        let (options, time) = fixture.virtual_options();
        let mut host = Harness::start(&options)?;
        host.wait_loaded()?;
        assert!(time.settle(SETTLE), "{name}");
        let errs = errors(&mut host);
        assert_eq!(errs.len(), 3, "{name}: {errs:?}");
        for k in 1..=3 {
            let (path, message) = (
                path.replace("#1", &format!("#{k}")),
                message.replace("#1", &format!("#{k}")),
            );
            let found = errs
                .iter()
                .filter(|(p, m)| *p == path && m.contains(&message))
                .count();
            assert_eq!(found, 1, "{name}: #{k} in {errs:?}");
        }
        let completed = host
            .history()
            .iter()
            .any(|e| matches!(e, HostEvent::Completed { pipeline, .. } if pipeline == "r"));
        assert!(completed, "{name}: {:?}", host.history());
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
    let (options, time) = fixture.virtual_options();
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

/// An inner `file_lines` is a host source of its subscription: a reload that swaps the
/// subscription keeps the file's task and position (the next line appended is the next value,
/// through the new code; nothing is read twice).
#[test]
fn an_inner_file_keeps_its_position_across_a_reload() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_inner_file",
        &plugin(
            r#"    p.pipeline("f", range(0, 1))
        .switch_map(|_n: u64| file_lines("in.log").map(|l: String| l.len() as u64 + 0))
        .log();"#,
        ),
    );
    fixture.write("in.log", "a\nbb\n");
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    host.wait_emission("f", |v| value(v) == 2)?;
    fixture.edit("src/lib.rs", "as u64 + 0", "as u64 + 100");
    let reload = host.wait_reload()?;
    let v2 = integration_tests::reload_version(&reload);
    let (_, reset, added, removed) = integration_tests::reload_fields(&reload);
    assert!(
        reset.is_empty() && added.is_empty() && removed.is_empty(),
        "{reload:?}"
    );
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(fixture.path().join("in.log"))?;
    std::io::Write::write_all(&mut log, b"ccc\n")?;
    drop(log);
    host.wait_emission("f", |v| value(v) == 103)?;
    let got: Vec<(u64, i64)> = host
        .emissions("f")
        .iter()
        .map(|(v, x)| (*v, value(x)))
        .collect();
    assert_eq!(got, [(v1, 1), (v1, 2), (v2, 103)]);
    host.stop();
    Ok(())
}

/// A pipeline too busy to answer the reload's question in time (`PREPARE_WAIT`: its thread
/// is inside a line's `tap`, which waits for a file the test creates only after the reload
/// was reported) is not counted in the reload. It answers late (the answer is refused) and
/// applies that re-projection when it takes the code, telling it in a notice.
#[test]
fn a_busy_pipeline_re_projects_when_it_takes_the_code_and_says_so() -> anyhow::Result<()> {
    let dir = host::testkit::TempDir::new("higher_busy_gate");
    let go = dir.path().join("go");
    let fixture = Fixture::new(
        "higher_busy",
        &plugin(&format!(
            r#"    p.pipeline("busy", file_lines("in.log"))
        .map(|l: String| l.trim().parse::<u64>().unwrap_or(0))
        .tap(|n: &u64| {{
            while *n == 1 && !std::path::Path::new({go:?}).exists() {{
                std::thread::sleep(std::time::Duration::from_millis(5));
            }}
        }})
        .switch_map(|n: u64| interval_ms(3_600_000).map(move |i: u64| n * 10 + i + 0))
        .log();"#
        )),
    );
    fixture.write("in.log", "0\n");
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    // Subscription #1 is live (its first value came); then line 1 holds the thread in its
    // `tap` (the watchdog says so), with the reload's question waiting behind it.
    host.wait_emission("busy", |v| value(v) == 0)?;
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(fixture.path().join("in.log"))?;
    std::io::Write::write_all(&mut log, b"1\n")?;
    drop(log);
    host.wait_for(
        "the thread held in the tap",
        EMISSION_TIMEOUT,
        |e| matches!(e, HostEvent::Stuck { path, .. } if path == "busy|1:tap"),
    )?;
    fixture.edit("src/lib.rs", "n * 10 + i + 0", "n * 10 + i + 5");
    let reload = host.wait_reload()?;
    let v2 = integration_tests::reload_version(&reload);
    let (swapped, reset, added, removed) = integration_tests::reload_fields(&reload);
    assert!(
        reset.is_empty() && added.is_empty() && removed.is_empty(),
        "{reload:?}"
    );
    // Held in a call, it is listed as stuck, its code staged: none of its tracks (nor the
    // live subscription's `map`, which it could not answer for) is counted as swapped.
    let HostEvent::Reload { stuck, .. } = &reload else {
        unreachable!("a reload")
    };
    assert_eq!(
        (swapped, &stuck[..]),
        (0, &["busy".to_owned()][..]),
        "{reload:?}"
    );
    std::fs::write(&go, "")?;
    let prefix = format!(
        "re-projected 1 inner subscription(s) with version {v2}: busy|2:switch_map|#2:inner: swapped"
    );
    host.wait_for(
        "the re-projection notice",
        EMISSION_TIMEOUT,
        |e| matches!(e, HostEvent::Notice { message, .. } if *message == prefix),
    )?;
    // Subscription #2 (line 1's, made by the old code) runs the new code, from its first value.
    host.wait_emission("busy", |v| value(v) == 15)?;
    let got: Vec<(u64, i64)> = integration_tests::numbers(&mut host, "busy");
    assert_eq!(got, [(1, 0), (v2, 15)]);
    host.stop();
    Ok(())
}

/// A call stuck in an inner stream's operator is reported at the higher-order operator that
/// runs it (the watchdog knows the outer chain's operators), not at whichever outer operator
/// has the inner one's number.
#[test]
fn a_stuck_inner_operator_is_reported_at_its_higher_order_operator() -> anyhow::Result<()> {
    let dir = host::testkit::TempDir::new("higher_stuck_gate");
    let go = dir.path().join("go");
    let fixture = Fixture::new(
        "higher_stuck",
        &plugin(&format!(
            r#"    p.pipeline("s", range(0, 1))
        .map(|n: u64| n + 1)
        .switch_map(|n: u64| interval_ms(3_600_000).map(move |i: u64| {{
            while !std::path::Path::new({go:?}).exists() {{
                std::thread::sleep(std::time::Duration::from_millis(5));
            }}
            n + i
        }}))
        .log();"#
        )),
    );
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    let stuck = host.wait_for("the stuck report", EMISSION_TIMEOUT, |e| {
        matches!(e, HostEvent::Stuck { .. })
    })?;
    let HostEvent::Stuck { path, .. } = &stuck else {
        unreachable!("matched above")
    };
    assert_eq!(path, "s|1:switch_map");
    std::fs::write(&go, "")?;
    host.wait_emission("s", |v| value(v) == 1)?;
    host.stop();
    Ok(())
}

/// A panic in a reload's re-projection follows `--on-panic` like any panic: with `drop` the
/// subscription ends and the pipeline goes on (the next outer value projects with the new
/// code); with `error` the pipeline ends.
#[test]
fn a_panic_in_a_re_projection_follows_the_panic_policy() -> anyhow::Result<()> {
    use host::runtime::PanicPolicy;
    let body = plugin(
        r#"    const FAIL: bool = false;
    p.pipeline("r", interval_ms(100))
        .switch_map(|n: u64| {
            if FAIL && n == 0 {
                panic!("cannot project {n} again");
            }
            interval_ms(1000).map(move |i: u64| n * 10 + i)
        })
        .log();"#,
    );
    for (policy, goes_on) in [(PanicPolicy::Drop, true), (PanicPolicy::Error, false)] {
        let fixture = Fixture::new(&format!("higher_reproject_{policy:?}"), &body);
        let (mut options, time) = fixture.virtual_options();
        options.on_panic = policy;
        let mut host = Harness::start(&options)?;
        host.wait_loaded()?;
        assert!(time.settle(SETTLE));
        // t = 0: value 0's subscription emits 0.
        let first: Vec<i64> = integration_tests::numbers(&mut host, "r")
            .iter()
            .map(|(_, x)| *x)
            .collect();
        assert_eq!(first, [0], "{policy:?}");
        fixture.edit("src/lib.rs", "FAIL: bool = false", "FAIL: bool = true");
        host.wait_reload()?;
        assert!(time.settle(SETTLE));
        integration_tests::advance(&time, 100); // t = 100: outer value 1
        host.drain();
        let errors: Vec<&HostEvent> = host
            .history()
            .iter()
            .filter(|e| matches!(e, HostEvent::Error { path, .. } if path == "r|0:switch_map"))
            .collect();
        assert_eq!(errors.len(), 1, "{policy:?}: {errors:?}");
        assert!(
            matches!(errors[0], HostEvent::Error { message, .. } if message.contains("cannot project 0 again")),
            "{policy:?}: {errors:?}"
        );
        // The live subscription of 0 ended at the reload, and says why (its next value was
        // not due before the switch to 1 would have ended it anyway).
        let ended = host.history().iter().any(|e| {
            matches!(e, HostEvent::Notice { pipeline, message } if pipeline == "r"
                && message.ends_with("r|0:switch_map|#1:inner: ended (the new projection of 0 failed)"))
        });
        assert!(ended, "{policy:?}: {:?}", host.history());
        let got: Vec<i64> = host.emissions("r").iter().map(|(_, v)| value(v)).collect();
        let want: &[i64] = if goes_on { &[0, 10] } else { &[0] };
        assert_eq!(got, want, "{policy:?}");
        host.stop();
    }
    Ok(())
}

/// Two inner streams that use a subject no pipeline's own code uses are not checked against
/// each other when they start: a value of another type reaching the reader is dropped with
/// an error at the reading inner subscription's own path (not its pipeline's), once per
/// value, and the reader goes on.
#[test]
fn an_inner_reader_refuses_a_value_of_another_type_at_its_own_path() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_inner_reader_path",
        &plugin(
            r#"    p.pipeline("r", of(vec![7u64]))
        .switch_map(|k: u64| subject::<u64>("t").map(move |x: u64| k + x))
        .log();
    p.pipeline("w", interval_ms(100).skip(1).take(3))
        .merge_map(|n: u64| of(vec![format!("{n}")]).publish("t"))
        .log();"#,
        ),
    );
    let (options, time) = fixture.virtual_options();
    let mut host = Harness::start(&options)?;
    host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    // The reader subscribed when its thread started (the first settle waits for that); the
    // first value is published at 100 (an interval's 0 at the start races the reader).
    for ms in [100, 100, 100] {
        integration_tests::advance(&time, ms);
    }
    let refused = (
        "r|0:switch_map|#1:inner".to_owned(),
        "subject \"t\": a value of `alloc::string::String` was not delivered: \
         r|0:switch_map|#1:inner reads `u64`"
            .to_owned(),
    );
    let got = errors(&mut host);
    assert_eq!(got, vec![refused; 3]);
    assert_eq!(host.emissions("w").len(), 3, "{got:?}");
    host.stop();
    Ok(())
}

/// A bare synchronous inner source (`of(..)`, `range(..)` with no operator) runs inside its
/// outer value's call without being subscribed (nothing is held for it), yet it is a
/// subscription like any other: it takes the next number of its pipeline, and the tracking
/// store hears it start and end. Here each outer tick's `switch_map` runs a bare `of` whose
/// two values each start a live `merge_map` subscription (the long way): the numbers
/// alternate between the two operators, and each tick enters into the store the ids of one
/// transient subscription (itself and its `#N:inner` track: the store's log kept, as the
/// reloader enters those only then) and of two live ones (each with its `#N:inner`, `take`
/// and `map` tracks).
#[test]
fn a_bare_synchronous_inner_source_is_numbered_and_told_to_the_store() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_bare_sync",
        &plugin(
            r#"    p.pipeline("b", interval_ms(100).take(3))
        .switch_map(|n: u64| of(vec![n * 10, n * 10 + 1]))
        .merge_map(|k: u64| interval_ms(3_600_000).take(2).map(move |i: u64| k + i))
        .log();"#,
        ),
    );
    let (clock, time) = host::clock::Clock::virtual_clock();
    let keep = host::testkit::TempDir::new("higher-bare-sync");
    let (mut reloader, _rx) = load_v1(&fixture, &keep, |r| {
        r.keep_store_log();
        r.runtime().set_clock(clock);
    })?;
    assert!(time.settle(SETTLE));
    reloader.idle();
    let mut ids = vec![reloader.recorder().state.next_id];
    for _ in 0..2 {
        integration_tests::advance(&time, 100);
        reloader.idle();
        ids.push(reloader.recorder().state.next_id);
    }
    let per_tick: Vec<u64> = ids.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(per_tick, [2 + 2 * 4, 2 + 2 * 4], "ids entered per tick");
    assert_eq!(reloader.passed_inner_subscriptions(), 3, "one a tick");
    let live: Vec<String> = reloader
        .tracks()
        .into_iter()
        .filter(|t| t.path.ends_with(":inner"))
        .map(|t| t.path)
        .collect();
    let want: Vec<String> = [2, 3, 5, 6, 8, 9]
        .iter()
        .map(|id| format!("b|2:merge_map|#{id}:inner"))
        .collect();
    assert_eq!(live, want);
    Ok(())
}

/// Synchronous inner streams with operators, one level running inside the other's call: a
/// panic at either level names that level's operator, the other values arrive, and a
/// `scan` whose seed panics when cloned ends its stream unrun with an error at that
/// operator while the outer stream goes on (as the host refuses such a subscription).
#[test]
fn nested_synchronous_inner_streams_name_their_own_operators() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_sync_nested",
        r#"
use plugin_api::prelude::*;

state! {
    #[derive(Debug)]
    pub struct Seed { pub n: u64 }
}

impl Clone for Seed {
    fn clone(&self) -> Seed {
        if self.n == 1 {
            panic!("no seed for 1");
        }
        Seed { n: self.n }
    }
}

fn register(p: &mut Plugin) {
    p.pipeline("n", range(0, 2))
        .concat_map(|n: u64| of(vec![1u64, 2]).map(move |x: u64| {
            if n == 1 && x == 2 {
                panic!("outer refuses {}", n * 10 + x);
            }
            n * 10 + x
        }))
        .merge_map(|v: u64| of(vec![v]).map(|x: u64| {
            if x == 2 {
                panic!("inner refuses {x}");
            }
            x + 100
        }))
        .log();
    p.pipeline("s", range(0, 3))
        .merge_map(|n: u64| of(vec![n]).scan(Seed { n }, |s: Seed, x: u64| Seed { n: s.n + x }))
        .map(|s: Seed| s.n)
        .log();
    p.pipeline("c", range(0, 2))
        .concat_map(|n: u64| of(vec![n, n + 10]).map(|x: u64| x))
        .merge_map(|y: u64| {
            of(vec![y, 1]).reduce(0u64, |a: u64, v: u64| a + v).map(|s: u64| {
                if s == 2 {
                    panic!("the sum refuses {s}");
                }
                s + 1000
            })
        })
        .map(|v: u64| {
            if v == 1012 {
                panic!("late refuses {v}");
            }
            v
        })
        .log();
}

plugin_api::export_plugin!(register);
"#,
    );
    let (options, time) = fixture.virtual_options();
    let mut host = Harness::start(&options)?;
    host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    let errs = errors(&mut host);
    let got: Vec<i64> = host.emissions("n").iter().map(|(_, v)| value(v)).collect();
    assert_eq!(got, [101, 111], "{errs:?}");
    let got: Vec<i64> = host.emissions("s").iter().map(|(_, v)| value(v)).collect();
    assert_eq!(got, [0, 4], "{errs:?}");
    let got: Vec<i64> = host.emissions("c").iter().map(|(_, v)| value(v)).collect();
    assert_eq!(got, [1001, 1011], "{errs:?}");
    let mut errs = errs;
    errs.sort();
    // The outer level's panic comes after an inner level ran inside its call (value 11):
    // each is named by its own subscription.
    let want = [
        ("c|1:merge_map|#5:inner|1:map", "the sum refuses 2"),
        ("c|2:map", "late refuses 1012"),
        ("n|0:concat_map|#4:inner|0:map", "outer refuses 12"),
        ("n|1:merge_map|#3:inner|0:map", "inner refuses 2"),
        ("s|0:merge_map|#2:inner|0:scan", "the seed panicked"),
    ];
    assert_eq!(errs.len(), want.len(), "{errs:?}");
    for ((path, message), (want_path, want_message)) in errs.iter().zip(want) {
        assert_eq!(path, want_path, "{errs:?}");
        assert!(message.contains(want_message), "{errs:?}");
    }
    host.stop();
    Ok(())
}

/// A burst of inner streams run inside their calls is told to the tracking store as runs,
/// not as two messages each: 10,000 of them queue a handful of census messages. With the
/// store's log kept, the store enters each (itself, its `#N:inner` track and its `map`
/// track) and removes it, and the log shows each; without, entering and removing them would
/// leave the store's contents as they were (only its ids move on), and it is not done (it
/// would hold the dev loop for 10 to 100 ms here), but every one is counted.
#[test]
fn a_burst_of_synchronous_inner_streams_is_told_to_the_store_in_runs() -> anyhow::Result<()> {
    use hmr_track::Event;
    use host::reloader::Outcome;
    const N: u64 = 10_000;
    let fixture = Fixture::new(
        "higher_sync_burst",
        &plugin(&format!(
            r#"    p.pipeline("burst", range(0, {N}))
        .merge_map(|x: u64| of(vec![x]).map(|v: u64| v + 1))
        .reduce(0u64, |a: u64, v: u64| a + v)
        .log();"#
        )),
    );
    let config = fixture.build_config(false)?;
    let keep = host::testkit::TempDir::new("higher-sync-burst");
    let lib = integration_tests::build_copy(&config, keep.path(), "lib.so")?;
    for keep_log in [true, false] {
        let (mut reloader, rx) = integration_tests::channel_reloader(config.clone())?;
        if keep_log {
            reloader.keep_store_log();
        }
        let before = reloader.recorder().state.next_id;
        assert_eq!(reloader.load_built(&lib, 0), Outcome::Loaded { version: 1 });
        let loaded = reloader.recorder().state.next_id;
        let events = reloader.recorder().log.len();
        integration_tests::next_matching(
            &rx,
            EMISSION_TIMEOUT,
            |e| matches!(e, HostEvent::Completed { pipeline, .. } if pipeline == "burst"),
        )?;
        let backlog = reloader.runtime().census_backlog();
        assert!(
            backlog <= 16,
            "{backlog} census messages for {N} subscriptions"
        );
        reloader.idle();
        assert_eq!(
            reloader.passed_inner_subscriptions(),
            N,
            "log kept: {keep_log}"
        );
        let entered = reloader.recorder().state.next_id - loaded;
        let subscribed = reloader.recorder().log[events..]
            .iter()
            .filter(|e| matches!(e, Event::SubscribeCall { .. }))
            .count() as u64;
        let want = if keep_log { (3 * N, N) } else { (0, 0) };
        assert_eq!(
            (entered, subscribed),
            want,
            "ids entered and subscriptions logged, log kept: {keep_log} (registration took {})",
            loaded - before
        );
        let live: Vec<String> = reloader
            .tracks()
            .into_iter()
            .filter(|t| t.path.contains(":inner"))
            .map(|t| t.path)
            .collect();
        assert!(live.is_empty(), "{live:?}");
    }
    Ok(())
}

/// Inner streams run inside their calls whose seeds differ from one outer value to the next
/// (`scan(x * 1000, ..)`, and a `scan_map` whose seed's text outgrows the plugin's stack
/// buffer, beside a `take(1)` whose seed does not change) share one binding, but the
/// tracking store hears each subscription with its own seeds: every track entered shows its
/// outer value's seeds, in order, across more subscriptions than one census message logs.
#[test]
fn each_synchronous_inner_stream_reaches_the_store_with_its_own_seeds() -> anyhow::Result<()> {
    use hmr_track::Event;
    const N: u64 = 15_000;
    let fixture = Fixture::new(
        "higher_sync_seeds",
        &plugin(&format!(
            r#"    p.pipeline("seeds", range(0, {N}))
        .merge_map(|x: u64| {{
            of(vec![x])
                .scan(x * 1000, |a: u64, v: u64| a + v)
                .scan_map(format!("{{x:0>100}}"), |s: &mut String, v: u64| v + s.len() as u64)
                .take(1)
        }})
        .reduce(0u64, |a: u64, v: u64| a.wrapping_add(v))
        .log();
    p.pipeline("cycle", range(0, {N}))
        .merge_map(|x: u64| of(vec![x]).scan_map((x % 3) * 1000, |a: &mut u64, v: u64| *a + v))
        .reduce(0u64, |a: u64, v: u64| a.wrapping_add(v))
        .log();"#
        )),
    );
    let keep = host::testkit::TempDir::new("higher-sync-seeds");
    let (mut reloader, rx) = load_v1(&fixture, &keep, |r| r.keep_store_log())?;
    // Each inner stream of "seeds" emits x * 1000 + x + 100 once.
    let want_sum: u64 = (0..N).map(|x| x * 1001 + 100).sum();
    let (mut sum, mut completed) = (None, 0);
    while completed < 2 {
        match integration_tests::next_matching(&rx, EMISSION_TIMEOUT, |e| {
            matches!(e, HostEvent::Emission { pipeline, .. } if pipeline == "seeds")
                || matches!(e, HostEvent::Completed { .. })
        })? {
            HostEvent::Emission { value: v, .. } => sum = Some(value(&v)),
            _ => completed += 1,
        }
    }
    assert_eq!(sum, Some(want_sum as i64));
    reloader.idle();
    // By kind, each track's seed as the store was told it, in order; "cycle"'s `scan_map`s
    // apart (its seeds come back to its first subscription's, the binding's, every third:
    // runs with and without a log of seeds alternate).
    let mut seeds: std::collections::BTreeMap<&str, Vec<Option<String>>> = Default::default();
    for event in &reloader.recorder().log {
        if let Event::TrackCall {
            kind, signature, ..
        } = event
            && ["scan", "scan_map", "take"].contains(&kind.as_str())
        {
            // "seeds"' `scan_map` seeds are over 100 bytes, "cycle"'s under.
            let cycle =
                kind == "scan_map" && signature.seed.as_ref().is_some_and(|s| s.len() < 100);
            let key = if cycle {
                "cycle scan_map"
            } else {
                kind.as_str()
            };
            seeds.entry(key).or_default().push(signature.seed.clone());
        }
    }
    let want =
        |f: &dyn Fn(u64) -> String| -> Vec<Option<String>> { (0..N).map(|x| Some(f(x))).collect() };
    for (kind, want) in [
        ("scan", want(&|x| (x * 1000).to_string())),
        ("scan_map", want(&|x| format!("{:?}", format!("{x:0>100}")))),
        ("take", want(&|_| "1".to_owned())),
        ("cycle scan_map", want(&|x| ((x % 3) * 1000).to_string())),
    ] {
        let got = seeds.get(kind).cloned().unwrap_or_default();
        assert_eq!(got.len(), want.len(), "{kind} tracks entered");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            panic!(
                "subscription {} entered its {kind} with seed {:?}, want {:?}",
                i + 1,
                got[i],
                want[i]
            );
        }
    }
    Ok(())
}

/// A higher-order operator whose synchronous inner streams the host answered with a memo
/// names that memo instead of describing each stream again (no seed's text is written then):
/// once the store's log is kept, the seeds are logged, and the host refuses the name until
/// it is described again, so every subscription from then on reaches the store with its own
/// seeds, not those of the binding named before.
#[test]
fn seeds_reach_the_store_from_when_its_log_is_kept() -> anyhow::Result<()> {
    use hmr_track::Event;
    use std::io::Write;
    const N: u64 = 200;
    let addr: std::net::SocketAddr =
        format!("127.0.0.1:{}", integration_tests::free_port()).parse()?;
    let fixture = Fixture::new(
        "higher_sync_seeds_later",
        &plugin(&format!(
            r#"    p.pipeline("net", tcp_lines("{addr}"))
        .merge_map(|l: String| {{
            let x: u64 = l.trim().parse().unwrap_or(0);
            of(vec![x]).scan(x * 1000, |a: u64, v: u64| a + v)
        }})
        .log();"#
        )),
    );
    let keep = host::testkit::TempDir::new("higher-sync-seeds-later");
    let (mut reloader, rx) = load_v1(&fixture, &keep, |_| {})?;
    let mut conn = integration_tests::connect(addr);
    // Each line `x` emits x * 1001 once; all of `lines` are awaited.
    let mut send = |lines: std::ops::Range<u64>| -> anyhow::Result<()> {
        let text: String = lines.clone().map(|x| format!("{x}\n")).collect();
        conn.write_all(text.as_bytes())?;
        for x in lines {
            let e = integration_tests::next_matching(
                &rx,
                EMISSION_TIMEOUT,
                |e| matches!(e, HostEvent::Emission { pipeline, .. } if pipeline == "net"),
            )?;
            let HostEvent::Emission { value: v, .. } = e else {
                unreachable!()
            };
            assert_eq!(value(&v), (x * 1001) as i64, "line {x}");
        }
        Ok(())
    };
    // Without the log: the operator's streams are named by memo after the first. The store
    // is told of each subscription once the pass that ran it is done, after its emission.
    send(1..N / 2)?;
    let told = |n: u64| move |r: &host::reloader::Reloader| r.passed_inner_subscriptions() == n;
    assert!(
        reloader.idle_until(EMISSION_TIMEOUT, told(N / 2 - 1)),
        "told of the first half"
    );
    // All but the first, described once, were named.
    assert_eq!(reloader.named_inner_subscriptions(), N / 2 - 2, "named");
    reloader.keep_store_log();
    send(N / 2..N)?;
    assert!(
        reloader.idle_until(EMISSION_TIMEOUT, told(N - 1)),
        "told of them all"
    );
    assert_eq!(
        reloader.named_inner_subscriptions(),
        N / 2 - 2,
        "named with the log kept"
    );
    let seeds: Vec<Option<String>> = reloader
        .recorder()
        .log
        .iter()
        .filter_map(|event| match event {
            Event::TrackCall {
                kind, signature, ..
            } if kind == "scan" => Some(signature.seed.clone()),
            _ => None,
        })
        .collect();
    // Those after the log was kept, each with its own seed (those before were told before).
    let want: Vec<Option<String>> = (N / 2..N).map(|x| Some((x * 1000).to_string())).collect();
    assert_eq!(seeds, want, "the scans' seeds the store heard");
    Ok(())
}

/// A pipeline restarted by a reload (its source changed) numbers its inner subscriptions
/// after its old thread's, which may still be ending them: two subscriptions of one pipeline
/// never share a path, so the old one's end cannot take the new one out of the tracking
/// store, and the store ends holding the new one alone.
#[test]
fn a_restarted_pipeline_numbers_its_inner_subscriptions_after_the_old_ones() -> anyhow::Result<()> {
    use host::reloader::Outcome;
    let fixture = Fixture::new(
        "higher_restart_ids",
        &plugin(
            r#"    p.pipeline("r", of(vec![1u64]))
        .switch_map(|n: u64| interval_ms(3_600_000).map(move |i: u64| n + i))
        .log();"#,
        ),
    );
    let config = fixture.build_config(false)?;
    let (mut reloader, rx) = integration_tests::channel_reloader(config.clone())?;
    let keep = host::testkit::TempDir::new("higher-restart-ids");
    let inner_paths = |reloader: &host::reloader::Reloader| -> Vec<String> {
        reloader
            .tracks()
            .into_iter()
            .filter(|t| t.path.contains(":inner"))
            .map(|t| t.path)
            .collect()
    };
    let emitted = |rx: &std::sync::mpsc::Receiver<HostEvent>, want: i64| {
        integration_tests::next_matching(rx, EMISSION_TIMEOUT, |e| {
            matches!(e, HostEvent::Emission { pipeline, value: v, .. }
                if pipeline == "r" && value(v) == want)
        })
    };
    let lib = integration_tests::build_copy(&config, keep.path(), "v1.so")?;
    assert_eq!(reloader.load_built(&lib, 0), Outcome::Loaded { version: 1 });
    emitted(&rx, 1)?;
    reloader.idle();
    let old = inner_paths(&reloader);
    assert_eq!(
        old,
        ["r|0:switch_map|#1:inner", "r|0:switch_map|#1:inner|0:map"]
    );
    // Another source: the pipeline restarts on a new thread while the old one ends.
    fixture.edit("src/lib.rs", "of(vec![1u64])", "range(5, 6)");
    let lib = integration_tests::build_copy(&config, keep.path(), "v2.so")?;
    assert_eq!(reloader.load_built(&lib, 0), Outcome::Loaded { version: 2 });
    emitted(&rx, 5)?;
    let deadline = std::time::Instant::now() + EMISSION_TIMEOUT;
    let new = loop {
        reloader.idle();
        let now = inner_paths(&reloader);
        if now.len() == 2 && !now.iter().any(|p| old.contains(p)) {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store still holds {now:?} (the old subscription was {old:?})"
        );
        std::thread::yield_now();
    };
    assert!(new[0].starts_with("r|0:switch_map|#"), "{new:?}");
    assert_eq!(new[1], format!("{}|0:map", new[0]));
    Ok(())
}

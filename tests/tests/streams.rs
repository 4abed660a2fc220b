//! Streams on real builds: typed sources (`of`), fan-in operators (`zip`, `merge`) whose
//! state lives in host slots and survives reloads, inner-stream paths, and subjects
//! (synchronous delivery, identity across reloads, a type mismatch rejected).

use host::events::HostEvent;
use host::testkit::{EMISSION_TIMEOUT, Fixture, Harness};
use integration_tests::{SETTLE, advance, numbers, plugin, reload_fields, reload_version, value};

/// `of` emits its items in order (any value type) and completes.
#[test]
fn of_emits_each_item_then_completes() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "streams_of",
        &plugin(
            r#"    p.pipeline("words", of(vec!["a".to_string(), "bb".into(), "ccc".into()]))
        .map(|s: String| s.len() as u64 * 10)
        .log();"#,
        ),
    );
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    let done = host.wait_for(
        "completed",
        EMISSION_TIMEOUT,
        |e| matches!(e, HostEvent::Completed { pipeline, .. } if pipeline == "words"),
    )?;
    let HostEvent::Completed { emissions, .. } = done else {
        unreachable!()
    };
    assert_eq!(emissions, 3);
    let got: Vec<String> = host
        .emissions("words")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(got, ["10", "20", "30"]);
    host.stop();
    Ok(())
}

/// A `zip` whose left input (a `range`) is queued in full at once keeps that queue across a
/// reload that edits its function: after the reload, the values still pair `k` with `k`,
/// through the new code, and the pipeline completes when the queue is empty. Under a virtual
/// clock: two pairs before the edit (t = 0 and 150), the other ten after the reload, so each
/// pair's version is known.
#[test]
fn a_zip_keeps_its_queue_across_a_reload() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "streams_zip",
        &plugin(
            r#"    p.pipeline("pairs", range(0, 12))
        .zip(interval_ms(150), |a: u64, b: u64| a * 1000 + b + 0)
        .log();"#,
        ),
    );
    let (options, time) = fixture.virtual_options();
    let mut host = Harness::start(&options)?;
    let (v1, tracks) = host.wait_loaded()?;
    let paths: Vec<&str> = tracks.iter().map(|t| t.path.as_str()).collect();
    assert_eq!(paths, ["pairs", "pairs|0:zip", "pairs|1:log"], "{paths:?}");
    assert!(time.settle(SETTLE));
    advance(&time, 150);
    fixture.edit("src/lib.rs", "a * 1000 + b + 0", "a * 1000 + b + 500000");
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (_, reset, added, removed) = reload_fields(&reload);
    assert!(
        reset.is_empty() && added.is_empty() && removed.is_empty(),
        "{reload:?}"
    );
    assert!(time.settle(SETTLE));
    advance(&time, 150 * 10);
    host.wait_for(
        "completed",
        EMISSION_TIMEOUT,
        |e| matches!(e, HostEvent::Completed { pipeline, .. } if pipeline == "pairs"),
    )?;
    let got = numbers(&mut host, "pairs");
    let want: Vec<(u64, i64)> = (0..12)
        .map(|k| {
            if k < 2 {
                (v1, k * 1000 + k)
            } else {
                (v2, k * 1000 + k + 500_000)
            }
        })
        .collect();
    assert_eq!(got, want);
    host.stop();
    Ok(())
}

/// The operators of an inner stream are tracks under the fan-in operator that takes it,
/// indexed per parent; editing the inner `map`'s body swaps it in place (same paths), and
/// the `scan` after the `merge` keeps its total.
#[test]
fn inner_stream_paths_are_stable_across_a_body_edit() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "streams_merge",
        &plugin(
            r#"    p.pipeline("m", interval_ms(5).map(|_n: u64| 1u64))
        .merge(interval_ms(7).map(|_n: u64| 1u64))
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .log();"#,
        ),
    );
    let mut host = Harness::start(&fixture.options())?;
    let (v1, tracks) = host.wait_loaded()?;
    let paths: Vec<&str> = tracks.iter().map(|t| t.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "m",
            "m|0:map",
            "m|1:merge",
            "m|1:merge|0:map",
            "m|2:scan",
            "m|3:log"
        ],
        "{paths:?}"
    );
    host.wait_emission("m", |v| value(v) >= 10)?;
    fixture.edit(
        "src/lib.rs",
        "interval_ms(7).map(|_n: u64| 1u64)",
        "interval_ms(7).map(|_n: u64| 1000u64)",
    );
    let reload = host.wait_reload()?;
    let (_, reset, added, removed) = reload_fields(&reload);
    assert!(
        reset.is_empty() && added.is_empty() && removed.is_empty(),
        "{reload:?}"
    );
    let HostEvent::Reload { tracks, .. } = &reload else {
        unreachable!()
    };
    let after: Vec<&str> = tracks.iter().map(|t| t.path.as_str()).collect();
    assert_eq!(after, paths);
    // The total carries on: each value is the one before plus what one input's `map` gave,
    // 1 from either input under v1, and under v2 1 (the left input) or 1000 (the right one,
    // the new inner code). Some 3,000 further: either several steps of 1000, or 3,000 steps
    // of 1 in about 9 s if the new inner code never ran.
    let before = host
        .emissions("m")
        .last()
        .map(|(_, v)| value(v))
        .unwrap_or(0);
    host.wait_emission("m", |v| value(v) >= before + 3000)?;
    let got = host.emissions("m");
    let mut big_steps = 0;
    for w in got.windows(2) {
        let ((_, a), (version, b)) = (&w[0], &w[1]);
        let step = value(b) - value(a);
        let steps: &[i64] = if *version == v1 { &[1] } else { &[1, 1000] };
        assert!(
            steps.contains(&step),
            "{a} then {b} (v{version}): a step of {step}"
        );
        big_steps += i64::from(step == 1000);
    }
    assert!(
        big_steps >= 2,
        "the new inner code gave {big_steps} steps of 1000 in {} values, the last {:?}",
        got.len(),
        &got[got.len().saturating_sub(5)..]
    );
    host.stop();
    Ok(())
}

const SUBJECTS: &str = r#"    p.pipeline("src", interval_ms(5))
        .map(|n: u64| n * 2)
        .publish("evens");
    p.pipeline("count", subject::<u64>("evens"))
        .scan(0u64, |acc: u64, _n: u64| acc + 1)
        .log();
    p.pipeline("echo", subject::<u64>("evens")).log();"#;

/// A subject delivers every published value, in order, to each subscriber; a reload that
/// edits the publisher keeps the subject and its subscribers (the `count` total goes on).
#[test]
fn a_subject_and_its_subscribers_survive_a_reload() -> anyhow::Result<()> {
    let fixture = Fixture::new("streams_subject", &plugin(SUBJECTS));
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    host.wait_emission("count", |v| value(v) >= 5)?;
    fixture.edit("src/lib.rs", "n * 2", "n * 2 + 1");
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (_, reset, _, _) = reload_fields(&reload);
    assert!(reset.is_empty(), "{reset:?}");
    host.wait_emission_from("echo", v2)?;
    let (_, odd) = host.wait_emission("echo", |v| value(v) % 2 == 1)?;
    let odd = value(&odd);
    host.wait_emission("count", |v| value(v) >= 20)?;
    // `count` went 1, 2, 3, ... across the reload: its state and subscription were kept.
    let counts: Vec<i64> = host
        .emissions("count")
        .into_iter()
        .map(|(_, v)| value(&v))
        .collect();
    for (k, c) in counts.iter().enumerate() {
        assert_eq!(*c, k as i64 + 1, "{counts:?}");
    }
    // `echo` saw every value the publisher sent, in order, none twice: tick `n` gave `2n`
    // under v1 and `2n + 1` under v2, so halved they count up by one, across the reload too;
    // the even ones all come before the odd ones.
    let echoes: Vec<i64> = host
        .emissions("echo")
        .into_iter()
        .map(|(_, v)| value(&v))
        .collect();
    assert!(
        echoes.windows(2).all(|w| w[1] / 2 == w[0] / 2 + 1),
        "a tick lost or repeated: {echoes:?}"
    );
    assert!(
        echoes.windows(2).all(|w| w[0] % 2 <= w[1] % 2),
        "{echoes:?}"
    );
    assert!(echoes.contains(&odd));
    host.stop();
    Ok(())
}

/// A reload where a subject's publisher and subscriber disagree on the value type is
/// rejected, naming the subject and both types; the last good version keeps running.
#[test]
fn a_subject_type_mismatch_is_rejected() -> anyhow::Result<()> {
    let fixture = Fixture::new("streams_subject_types", &plugin(SUBJECTS));
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    host.wait_emission("count", |v| value(v) >= 2)?;
    fixture.edit(
        "src/lib.rs",
        ".map(|n: u64| n * 2)",
        ".map(|n: u64| n as u32 * 2)",
    );
    match host.wait_outcome()? {
        HostEvent::LoadFailed { error } => {
            assert!(error.contains("subject \"evens\""), "{error}");
            assert!(error.contains("`u32`"), "{error}");
            assert!(error.contains("`u64`"), "{error}");
        }
        other => panic!("expected load-failed, got {other:?}"),
    }
    let (v, _) = host.wait_emission("count", |_| true)?;
    assert_eq!(v, v1, "the last good version keeps running");
    host.stop();
    Ok(())
}

/// Under a virtual clock, intervals tick only when the test moves time, in deadline order
/// across the ports of a pipeline (two intervals merged interleave as their deadlines do),
/// and `settle` says when everything due has run: the emissions are exact.
#[test]
fn intervals_follow_a_virtual_clock() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "streams_virtual_clock",
        &plugin(
            r#"    p.pipeline("ticks", interval_ms(100)).log();
    p.pipeline("both", interval_ms(30))
        .merge(interval_ms(70).map(|n: u64| n + 1000))
        .log();"#,
        ),
    );
    let (options, time) = fixture.virtual_options();
    let mut host = Harness::start(&options)?;
    host.wait_loaded()?;
    let settle = std::time::Duration::from_secs(30);
    let values = |host: &Harness, p: &str| -> Vec<i64> {
        host.emissions(p).iter().map(|(_, v)| value(v)).collect()
    };
    host.wait_emission("both", |v| value(v) == 1000)?;
    assert!(
        time.settle(settle),
        "the pipelines ran what was due at t = 0"
    );
    host.drain();
    assert_eq!(values(&host, "ticks"), [0]);
    assert_eq!(values(&host, "both"), [0, 1000]);

    time.advance(std::time::Duration::from_millis(250));
    assert!(time.settle(settle));
    host.drain();
    assert_eq!(values(&host, "ticks"), [0, 1, 2]);
    // 30, 60, 70, 90, 120, 140, 150, 180, 210 (30 first: the lower port), 210, 240.
    assert_eq!(
        values(&host, "both"),
        [0, 1000, 1, 2, 1001, 3, 4, 1002, 5, 6, 7, 1003, 8]
    );

    time.advance(std::time::Duration::from_millis(50));
    assert!(time.settle(settle));
    host.drain();
    assert_eq!(values(&host, "ticks"), [0, 1, 2, 3]);
    assert_eq!(
        values(&host, "both"),
        // then 270, 280, 300.
        [
            0, 1000, 1, 2, 1001, 3, 4, 1002, 5, 6, 7, 1003, 8, 9, 1004, 10
        ]
    );
    host.stop();
    Ok(())
}

/// A `take` inside a merged stream ends that port only (the pipeline goes on with the other
/// input), and a `take` after the merge completes the pipeline: exact under a virtual clock.
#[test]
fn a_take_inside_an_inner_stream_ends_only_its_port() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "streams_port_done",
        &plugin(
            r#"    p.pipeline("m", interval_ms(10))
        .merge(interval_ms(10).map(|n: u64| n + 100).take(2))
        .take(8)
        .log();"#,
        ),
    );
    let (options, time) = fixture.virtual_options();
    let mut host = Harness::start(&options)?;
    host.wait_loaded()?;
    // The pipeline's thread starts after the load is reported: its intervals start at the
    // virtual time it subscribes, so let it subscribe (tick at t = 0) before moving time.
    host.wait_emission("m", |v| value(v) == 100)?;
    for _ in 0..6 {
        time.advance(std::time::Duration::from_millis(10));
        assert!(time.settle(std::time::Duration::from_secs(30)));
    }
    let done = host.wait_for(
        "completed",
        EMISSION_TIMEOUT,
        |e| matches!(e, HostEvent::Completed { pipeline, .. } if pipeline == "m"),
    )?;
    let HostEvent::Completed { emissions, .. } = done else {
        unreachable!()
    };
    let values: Vec<i64> = host.emissions("m").iter().map(|(_, v)| value(v)).collect();
    // t = 0: 0, 100; t = 10: 1, 101 (the inner take is done); then the outer port alone
    // until the take after the merge has its 8.
    assert_eq!(values, [0, 100, 1, 101, 2, 3, 4, 5]);
    assert_eq!(emissions, 8, "source values taken");
    host.stop();
    Ok(())
}

/// A pipeline that reads only a subject has a thread of its own for its subscription
/// (`start_with` emits at once, before any value is published) and completes through a
/// delivery (its `take`), while the publisher and the other subscribers run on.
#[test]
fn a_subject_reader_starts_and_completes_on_its_own() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "streams_subject_reader",
        &plugin(
            r#"    p.pipeline("src", interval_ms(5)).publish("n");
    p.pipeline("firsts", subject::<u64>("n")).start_with(99).take(3).log();
    p.pipeline("all", subject::<u64>("n")).log();"#,
        ),
    );
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    host.wait_for(
        "firsts completed",
        EMISSION_TIMEOUT,
        |e| matches!(e, HostEvent::Completed { pipeline, .. } if pipeline == "firsts"),
    )?;
    let (_, later) = host.wait_emission("all", |v| value(v) >= 5)?;
    let firsts: Vec<i64> = host
        .emissions("firsts")
        .iter()
        .map(|(_, v)| value(v))
        .collect();
    assert_eq!(firsts.len(), 3, "{firsts:?}");
    assert_eq!(firsts[0], 99, "start_with first: {firsts:?}");
    assert!(firsts[1] < firsts[2], "{firsts:?}");
    assert!(value(&later) >= 5);
    let completions = host
        .history()
        .iter()
        .filter(|e| matches!(e, HostEvent::Completed { pipeline, .. } if pipeline == "firsts"))
        .count();
    assert_eq!(completions, 1, "a completed subscriber gets nothing more");
    host.stop();
    Ok(())
}

/// A pipeline restarted because one of its sources changed takes over the others that did
/// not: the file (a relative path, the plugin crate's) keeps its position, so no line is
/// read twice, and what is appended after the reload reaches the new code.
#[test]
fn a_restart_for_one_source_keeps_the_others_position() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "streams_restart_keeps_file",
        &plugin(
            r#"    p.pipeline("mixed", file_lines("in.log").map(|l: String| l.len() as u64 * 10))
        .merge(interval_ms(3_600_000))
        .log();"#,
        ),
    );
    fixture.write("in.log", "a\nbb\nccc\n");
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    host.wait_emission("mixed", |v| v == "30")?;
    fixture.edit(
        "src/lib.rs",
        "interval_ms(3_600_000)",
        "interval_ms(3_500_000)",
    );
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let HostEvent::Reload { restarts, .. } = &reload else {
        unreachable!()
    };
    assert_eq!(restarts.len(), 1, "{reload:?}");
    // Only the one that changed is named.
    assert_eq!(
        restarts[0].reason,
        "its sources changed (interval_ms(3600000) -> interval_ms(3500000))"
    );
    // The restarted pipeline's interval ticks 0 when it starts; then a line appended now.
    host.wait_emission_from("mixed", v2)?;
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(fixture.path().join("in.log"))?;
    std::io::Write::write_all(&mut log, b"dddd\n")?;
    host.wait_emission("mixed", |v| v == "40")?;
    let got: Vec<(u64, String)> = host.emissions("mixed");
    let v1_lines: Vec<&str> = got
        .iter()
        .filter(|(v, x)| *v == v1 && x != "0")
        .map(|(_, x)| x.as_str())
        .collect();
    let v2_values: Vec<&str> = got
        .iter()
        .filter(|(v, _)| *v == v2)
        .map(|(_, x)| x.as_str())
        .collect();
    assert_eq!(v1_lines, ["10", "20", "30"], "{got:?}");
    assert_eq!(v2_values, ["0", "40"], "nothing read twice: {got:?}");
    host.stop();
    Ok(())
}

/// A registration whose subjects form a cycle (a value published would come back to the
/// pipeline that published it, synchronously) is refused, naming the loop: two pipelines
/// feeding each other, and one pipeline reading the subject it publishes to.
#[test]
fn subjects_forming_a_cycle_are_refused() -> anyhow::Result<()> {
    let cases = [
        (
            "streams_cycle_two",
            r#"    p.pipeline("a", subject::<u64>("x")).map(|n: u64| n + 1).publish("y");
    p.pipeline("b", subject::<u64>("y")).publish("x");
    p.pipeline("src", interval_ms(5)).publish("x");"#,
            "subjects form a cycle (a publishes \"y\" read by b, b publishes \"x\" read by a)",
        ),
        (
            "streams_cycle_self",
            r#"    p.pipeline("echo", subject::<u64>("s")).merge(interval_ms(10)).publish("s");"#,
            "subjects form a cycle (echo publishes \"s\" read by echo)",
        ),
    ];
    for (name, body, expected) in cases {
        let fixture = Fixture::new(name, &plugin(body));
        let mut host = Harness::start(&fixture.options())?;
        match host.wait_outcome()? {
            HostEvent::LoadFailed { error } => {
                assert!(error.contains(expected), "{name}: {error}");
            }
            other => panic!("{name}: expected load-failed, got {other:?}"),
        }
        host.stop();
    }
    Ok(())
}

/// A reload that changes a subject's type on both sides: the reader restarts on its new
/// code at once, while the publisher finishes the batch it is in with its old code. Those
/// values are not read as the new type: each is an error of the reader, naming both types,
/// and once the publisher runs its new code, values flow again.
#[test]
fn a_value_of_the_old_type_is_not_read_as_the_new_one() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "streams_subject_retyped",
        &plugin(
            r#"    p.pipeline("src", range(0, 1_000_000))
        .map(|n: u64| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            n
        })
        .publish("v");
    p.pipeline("reader", subject::<u64>("v")).log();"#,
        ),
    );
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    host.wait_emission("reader", |v| value(v) >= 3)?;
    // Both sides become `String`s at once: the registration agrees with itself.
    fixture.edit(
        "src/lib.rs",
        ".map(|n: u64| {\n            std::thread::sleep(std::time::Duration::from_millis(2));\n            n\n        })",
        ".map(|n: u64| {\n            std::thread::sleep(std::time::Duration::from_millis(2));\n            format!(\"s{n}\")\n        })",
    );
    fixture.edit(
        "src/lib.rs",
        "subject::<u64>(\"v\")",
        "subject::<String>(\"v\")",
    );
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let error = host.wait_for(
        "an undelivered value",
        EMISSION_TIMEOUT * 2,
        |e| matches!(e, HostEvent::Error { pipeline, .. } if pipeline == "reader"),
    )?;
    let HostEvent::Error { message, .. } = &error else {
        unreachable!()
    };
    assert!(
        message.starts_with("subject \"v\": a value of `u64` was not delivered: this version of reader reads `alloc::string::String`"),
        "{message}"
    );
    // The publisher's next batch runs its new code: strings reach the reader.
    let (version, s) = host.wait_emission("reader", |v| v.starts_with("\"s"))?;
    assert_eq!(version, v2, "{s}");
    host.stop();
    Ok(())
}

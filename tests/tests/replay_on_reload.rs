//! Replay on reload, on real builds under a virtual clock: before the new code takes over,
//! each swapped pipeline's recent inputs run through the old and the new code, each on a copy
//! of the live state, muted, and the reload reports what changed.

use host::events::{HostEvent, ReplayInfo};
use host::testkit::{Fixture, Harness};
use integration_tests::{SETTLE, advance, numbers, plugin, reload_version};

/// One pipeline per case: what the edit below does to each is in its name.
const BEFORE: &str = r#"    p.pipeline("counter", interval_ms(100)).map(|n: u64| n * 2).log();
    p.pipeline("same", interval_ms(100)).map(|n: u64| n + 1).log();
    p.pipeline("total", interval_ms(100))
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .map(|t: u64| t)
        .log();
    p.pipeline("doubled", interval_ms(100)).map(|n: u64| n * 2).publish("doubled");
    p.pipeline("reader", subject::<u64>("doubled")).map(|v: u64| v).log();
    p.pipeline("fragile", interval_ms(100)).map(|n: u64| n + 1).log();
    p.pipeline("timed", interval_ms(100)).debounce_ms(50).log();
    p.pipeline("typed", interval_ms(100)).map(|n: u64| n).log();
    p.pipeline("kept", interval_ms(100)).take_last(3).log();
    p.pipeline("slow", interval_ms(100)).map(|n: u64| n + 0).log();
    p.pipeline("lines", file_lines("in.log")).map(|l: String| l.len()).log();
    p.pipeline("listed", interval_ms(100))
        .scan(Vec::new(), |mut all: Vec<u64>, n: u64| {
            all.push(n);
            all
        })
        .map(|all: Vec<u64>| all.len())
        .log();
    p.pipeline("higher", interval_ms(100)).switch_map(|n: u64| of(vec![n])).log();
    p.pipeline("batched", range(0, 1000))
        .merge(subject::<u64>("never"))
        .map(|n: u64| if n == 990 { panic!("at 990") } else { n })
        .scan(0u64, |sum: u64, b: u64| sum + b)
        .log();"#;

/// The edit: `counter` from `n * 2` to `n * 3`; `same` rewritten with the same outputs;
/// `total`'s `map` after its `scan` adds 1000; `doubled` publishes `n * 4`; `fragile`
/// panics on even values; `typed` logs `f64`s; `slow` sleeps 20 ms a value (past the
/// replay's budget); `lines` logs ten times the length.
fn after() -> String {
    BEFORE
        .replace("map(|n: u64| n * 2).log()", "map(|n: u64| n * 3).log()")
        .replace("map(|n: u64| n + 1).log();\n    p.pipeline(\"total\"", "map(|n: u64| 1 + n).log();\n    p.pipeline(\"total\"")
        .replace("map(|t: u64| t)", "map(|t: u64| t + 1000)")
        .replace("map(|n: u64| n * 2).publish", "map(|n: u64| n * 4).publish")
        .replace(
            "p.pipeline(\"fragile\", interval_ms(100)).map(|n: u64| n + 1)",
            "p.pipeline(\"fragile\", interval_ms(100)).map(|n: u64| {\n        if n % 2 == 0 {\n            panic!(\"even {n}\");\n        }\n        n + 1\n    })",
        )
        .replace("map(|n: u64| n).log()", "map(|n: u64| n as f64).log()")
        .replace(
            "map(|n: u64| n + 0)",
            "map(|n: u64| {\n        std::thread::sleep(std::time::Duration::from_millis(20));\n        n + 0\n    })",
        )
        .replace("map(|l: String| l.len())", "map(|l: String| l.len() * 10)")
        .replace("map(|v: u64| v)", "map(|v: u64| v + 1)")
        .replace("all.len())", "all.len() + 1000)")
        .replace("sum + b)", "sum + 2 * b)")
}

fn replay_of<'a>(reload: &'a HostEvent, pipeline: &str) -> &'a ReplayInfo {
    let HostEvent::Reload { replay, .. } = reload else {
        panic!("not a reload: {reload:?}");
    };
    replay
        .iter()
        .find(|r| r.pipeline == pipeline)
        .unwrap_or_else(|| panic!("no replay of {pipeline}: {replay:#?}"))
}

fn samples(r: &ReplayInfo) -> Vec<(&str, &str, &str)> {
    r.samples
        .iter()
        .map(|s| (s.input.as_str(), s.old.as_str(), s.new.as_str()))
        .collect()
}

#[test]
fn a_reload_reports_what_the_edit_changes_on_the_recent_inputs() -> anyhow::Result<()> {
    let fixture = Fixture::new("replay_on_reload", &plugin(BEFORE));
    fixture.write("in.log", "a\nbb\nccc\n");
    for (gone, new) in [
        ("n * 2).log()", "n * 3).log()"),
        (
            "|n: u64| n + 1).log();\n    p.pipeline(\"total\"",
            "|n: u64| 1 + n).log();",
        ),
        ("|t: u64| t)", "|t: u64| t + 1000)"),
        ("n * 2).publish", "n * 4).publish"),
        (
            "|n: u64| n + 1).log();\n    p.pipeline(\"timed\"",
            "even {n}",
        ),
        ("|n: u64| n).log()", "n as f64"),
        ("|n: u64| n + 0)", "from_millis(20)"),
        ("l.len())", "l.len() * 10)"),
        ("|v: u64| v)", "|v: u64| v + 1)"),
        ("all.len())", "all.len() + 1000)"),
        ("sum + b)", "sum + 2 * b)"),
    ] {
        assert!(BEFORE.contains(gone) && !after().contains(gone), "{gone}");
        assert!(after().contains(new), "{new}");
    }
    let (options, time) = fixture.virtual_options();
    let mut host = Harness::start(&options)?;
    let (v1, _) = host.wait_loaded()?;
    for _ in 0..3 {
        host.wait_emission("lines", |_| true)?;
    }
    assert!(time.settle(SETTLE));
    // Ticks 0 to 40 (t = 0 to 4000 ms): the last 32 (9 to 40) are kept.
    advance(&time, 4000);
    host.drain();
    let emitted_before = host.history().len();
    let total: Vec<_> = numbers(&mut host, "total");
    assert_eq!(total.last(), Some(&(v1, 820)), "0 + 1 + ... + 40");

    fixture.write("src/lib.rs", &plugin(&after()));
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    // Muted: nothing was printed or published while both versions ran 32 inputs each (the
    // clock did not move, so nothing else could emit).
    host.drain();
    let since: Vec<&HostEvent> = host.history()[emitted_before..]
        .iter()
        .filter(|e| {
            matches!(
                e,
                HostEvent::Emission { .. } | HostEvent::Error { .. } | HostEvent::Notice { .. }
            )
        })
        .collect();
    assert!(
        since.is_empty(),
        "the replay reached the outside: {since:#?}"
    );

    let counter = replay_of(&reload, "counter");
    assert_eq!(
        (counter.status.as_str(), counter.inputs, counter.changed),
        ("compared", 32, 32),
        "{counter:?}"
    );
    assert_eq!(
        samples(counter),
        [
            ("9", "18", "27"),
            ("10", "20", "30"),
            ("11", "22", "33"),
            ("12", "24", "36"),
            ("13", "26", "39")
        ]
    );
    assert_eq!(
        host::replay::line(counter).as_deref(),
        Some("counter: 32 of 32 recent inputs now give other values, e.g. 9: 18 -> 27")
    );

    let same = replay_of(&reload, "same");
    assert_eq!(
        (same.status.as_str(), same.inputs, same.changed),
        ("compared", 32, 0),
        "{same:?}"
    );
    assert!(same.samples.is_empty() && host::replay::line(same).is_none());

    // On a copy of the live total (820): input 9 makes 829 with either version.
    let total = replay_of(&reload, "total");
    assert_eq!((total.inputs, total.changed), (32, 32), "{total:?}");
    assert_eq!(
        samples(total)[..2],
        [("9", "829", "1829"), ("10", "839", "1839")]
    );

    let doubled = replay_of(&reload, "doubled");
    assert_eq!((doubled.inputs, doubled.changed), (32, 32), "{doubled:?}");
    assert_eq!(
        samples(doubled)[0],
        ("9", "\"doubled\" <- 18", "\"doubled\" <- 36")
    );
    // A subject's values are kept as clones (the publisher's are borrowed): the reader's
    // last 32 are the old code's publications 18, 20, ..., 80.
    let reader = replay_of(&reload, "reader");
    assert_eq!((reader.inputs, reader.changed), (32, 32), "{reader:?}");
    assert_eq!(
        samples(reader)[..2],
        [("18", "18", "19"), ("20", "20", "21")]
    );

    // The even inputs (10, 12, ..., 40) panic in the new code; the reload went ahead.
    let fragile = replay_of(&reload, "fragile");
    assert_eq!((fragile.inputs, fragile.changed), (32, 16), "{fragile:?}");
    assert_eq!(samples(fragile)[0].0, "10");
    assert_eq!(samples(fragile)[0].1, "11");
    assert!(samples(fragile)[0].2.contains("even 10"), "{fragile:?}");
    assert!(
        fragile
            .panics
            .first()
            .is_some_and(|p| p.starts_with("new code: fragile|0:map: ") && p.contains("even 10")),
        "{fragile:?}"
    );

    let timed = replay_of(&reload, "timed");
    assert_eq!(timed.status, "not-replayed", "{timed:?}");
    assert!(
        timed
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("debounce_ms"),
        "{timed:?}"
    );
    let typed = replay_of(&reload, "typed");
    assert_eq!(typed.status, "incomparable", "{typed:?}");
    assert!(
        typed
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("`f64`, not `u64`"),
        "{typed:?}"
    );
    let kept = replay_of(&reload, "kept");
    assert_eq!(kept.status, "not-replayed", "{kept:?}");
    assert!(
        kept.reason.as_deref().unwrap_or("").contains("take_last"),
        "{kept:?}"
    );

    // Past its budget: cut short after a few inputs (20 ms each, the budget 100 ms).
    let slow = replay_of(&reload, "slow");
    assert_eq!(slow.status, "cut-short", "{slow:?}");
    assert!(slow.inputs < 32 && slow.changed == 0, "{slow:?}");
    assert!(
        slow.reason
            .as_deref()
            .unwrap_or("")
            .contains("budget of 100 ms"),
        "{slow:?}"
    );
    // Lines are kept as they came, and described as the chain reads them.
    let lines = replay_of(&reload, "lines");
    assert_eq!((lines.inputs, lines.changed), (3, 3), "{lines:?}");
    assert_eq!(
        samples(lines),
        [
            ("\"a\"", "1", "10"),
            ("\"bb\"", "2", "20"),
            ("\"ccc\"", "3", "30")
        ]
    );

    // A heap state is copied deeply: each copy of the 41 values grows by itself.
    let listed = replay_of(&reload, "listed");
    assert_eq!((listed.inputs, listed.changed), (32, 32), "{listed:?}");
    assert_eq!(samples(listed)[0], ("9", "42", "1042"));
    let higher = replay_of(&reload, "higher");
    assert_eq!(higher.status, "not-replayed", "{higher:?}");
    assert!(
        higher
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("higher|0:switch_map is switch_map, a higher-order operator"),
        "{higher:?}"
    );

    // A batch (a `range`) whose value 990 panicked: the values taken before the panic and
    // those pushed again after it are each kept once (969 to 999), then the completion. On a
    // copy of the live sum (0 + ... + 999 but 990 = 498510).
    let batched = replay_of(&reload, "batched");
    assert_eq!((batched.inputs, batched.changed), (32, 30), "{batched:?}");
    assert_eq!(
        samples(batched)[..2],
        [("969", "499479", "500448"), ("970", "500449", "502388")]
    );

    // The live total was untouched by the replay: tick 41 makes 861, through the new code.
    assert!(time.settle(SETTLE));
    advance(&time, 100);
    assert_eq!(numbers(&mut host, "total").last(), Some(&(v2, 1861)));
    assert_eq!(numbers(&mut host, "counter").last(), Some(&(v2, 123)));
    // The live list was not grown by the replay's copies: 42 values, through the new code.
    assert_eq!(numbers(&mut host, "listed").last(), Some(&(v2, 1042)));
    host.stop();

    // `--replay 0`: nothing kept, nothing replayed.
    let (mut options, time) = fixture.virtual_options();
    options.replay = 0;
    let mut host = Harness::start(&options)?;
    host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    advance(&time, 1000);
    fixture.write("src/lib.rs", &plugin(BEFORE));
    let reload = host.wait_reload()?;
    let HostEvent::Reload { replay, .. } = &reload else {
        unreachable!()
    };
    assert!(replay.is_empty(), "{replay:?}");
    host.stop();
    Ok(())
}

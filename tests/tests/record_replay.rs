//! `--record` and `--replay-from` on real builds: a session recorded under a virtual clock
//! replays with the same emissions on the same code and with the new values on edited code;
//! a recording spanning an hour replays at once under the replay's virtual clock; and each
//! kind of bad file is an error naming the file and line, or a warning.

use std::path::Path;

use host::testkit::{Fixture, Harness, TempDir, replay};
use integration_tests::{SETTLE, advance, plugin};

/// Every kind of source the host records, and a subject fed by one of them.
const SESSION: &str = r#"    p.pipeline("counter", interval_ms(1000))
        .map(|n: u64| n * 2)
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .log();
    p.pipeline("batch", range(0, 3000))
        .map(|n: u64| n * 2)
        .filter(|n: &u64| n % 1000 == 0)
        .log();
    p.pipeline("items", of(vec![7u64, 8, 9]))
        .map(|n: u64| n * 2)
        .log();
    p.pipeline("lines", file_lines("input.txt"))
        .map(|l: String| l.len() as u64 * 2)
        .log();
    p.pipeline("ticks", interval_ms(500))
        .skip(1)
        .map(|n: u64| n * 2)
        .publish("doubled");
    p.pipeline("reader", subject::<u64>("doubled"))
        .debounce_ms(300)
        .log();
    p.pipeline("inner", interval_ms(1000))
        .switch_map(|n: u64| interval_ms(300).map(move |x: u64| n * 10 + x))
        .log();
    p.pipeline("bounce", interval_ms(500)).debounce_ms(500).log();"#;

/// The pipelines of [`SESSION`] whose emissions a replay must reproduce.
const PIPELINES: [&str; 7] = [
    "counter", "batch", "items", "lines", "reader", "inner", "bounce",
];

/// Records [`SESSION`] for 4.5 virtual seconds into `file`; returns each pipeline's logged
/// values.
fn record_session(fixture: &Fixture, file: &Path) -> anyhow::Result<Vec<Vec<String>>> {
    fixture.write("input.txt", "q \"x\"\t\\\u{e9}\u{1}\nalpha\nbe\n");
    let (mut options, time) = fixture.virtual_options();
    options.record = Some(file.to_owned());
    let mut host = Harness::start(&options)?;
    host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    // The file's lines come through the i/o runtime, in real time.
    host.wait_emission("lines", |v| v == "4")?;
    // In steps shorter than the debounce, so the reader's timers and the ticks it reads
    // interleave as time says.
    for _ in 0..45 {
        advance(&time, 100);
    }
    host.stop();
    Ok(PIPELINES.iter().map(|p| values(&host, p)).collect())
}

/// Checks that the value lines of `pipeline` (one source, `source`) in `lines` hold its values
/// `0..values` in order, value `v` at time `v * dt`, each line exactly the one the writer
/// writes for the values it holds: a run (`"n"`, `"dt"`) of two or more, a plain line for
/// one. Returns how many lines they take.
fn check_runs(lines: &[&str], pipeline: &str, source: &str, dt: u64, values: u64) -> usize {
    let prefix = format!(
        "{{\"pipeline\":\"{pipeline}\",\"port\":0,\"source\":{},",
        serde_json::to_string(source).expect("a string")
    );
    let mut next = 0u64;
    let mut count = 0;
    for line in lines
        .iter()
        .filter(|l| l.starts_with(&prefix) && !l.contains("\"complete\""))
    {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let first = v["u64"].as_u64().expect("a u64 line");
        let n = v["n"].as_u64().unwrap_or(1);
        assert_eq!(first, next, "{line}");
        let t = first * dt;
        let want = if n == 1 {
            format!("{prefix}\"t\":{t},\"u64\":{first},\"debug\":\"{first}\"}}")
        } else {
            format!("{prefix}\"t\":{t},\"u64\":{first},\"n\":{n},\"dt\":{dt}}}")
        };
        assert_eq!(*line, want);
        next += n;
        count += 1;
    }
    assert_eq!(next, values, "{pipeline}'s values");
    count
}

fn values(host: &Harness, pipeline: &str) -> Vec<String> {
    host.emissions(pipeline)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn a_replay_on_the_same_code_reproduces_the_emissions_and_on_edited_code_gives_new_ones()
-> anyhow::Result<()> {
    let dir = TempDir::new("record_same");
    let file = dir.path().join("session.jsonl");
    let fixture = Fixture::new("record_same", &plugin(SESSION));
    let recorded = record_session(&fixture, &file)?;
    // What the session did, so the comparison below compares something.
    assert_eq!(recorded[0], ["0", "2", "6", "12", "20"], "counter");
    assert_eq!(
        recorded[1],
        ["0", "1000", "2000", "3000", "4000", "5000"],
        "batch"
    );
    assert_eq!(recorded[2], ["14", "16", "18"], "items");
    // The first line, 10 bytes: quotes, a tab, a backslash, a two-byte character, a control
    // character.
    assert_eq!(recorded[3], ["20", "10", "4"], "lines");
    // Ticks every 500 ms up to 4.5 s (the first skipped: the reader may not have subscribed
    // yet), debounced by 300 ms, through a subject: the last one is still pending when the
    // recording ends.
    assert_eq!(
        recorded[4],
        ["2", "4", "6", "8", "10", "12", "14", "16"],
        "reader"
    );
    // An inner interval is not recorded: it ticks again on the replay's virtual clock.
    assert_eq!(
        recorded[5],
        [
            "0", "1", "2", "3", "10", "11", "12", "13", "20", "21", "22", "23", "30", "31", "32",
            "33", "40", "41"
        ],
        "inner"
    );
    // Each tick is due with the debounce's timer of the tick before: the tick runs first (as
    // an interval does), so the debounce never fires. A replay must keep that order.
    assert!(recorded[6].is_empty(), "bounce: {:?}", recorded[6]);

    let text = std::fs::read_to_string(&file)?;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(r#"{"format":"hmr-record","version":2,"#),
        "{}",
        lines[0]
    );
    // An interval's ticks (deadlines one period apart) and a `range`'s batches (at one
    // instant) are runs: the writer may cut one where it takes the tape (every 100 ms).
    check_runs(&lines, "counter", "interval_ms(1000)", 1_000_000_000, 5);
    check_runs(&lines, "batch", "range(0, 3000)", 0, 3000);
    // `bounce` emits nothing, so its ticks must be shown recorded (and replayed, below).
    check_runs(&lines, "bounce", "interval_ms(500)", 500_000_000, 10);
    for want in [
        r#"{"pipeline":"batch","port":0,"source":"range(0, 3000)","t":0,"complete":true}"#,
        // One batch of three items, with their Debug texts.
        r#"{"pipeline":"items","port":0,"source":"of::<u64>([7, 8, 9])","t":0,"index":0,"n":3,"dt":0,"debug":["7","8","9"]}"#,
        r#"{"pipeline":"lines","port":0,"source":"file_lines(\"input.txt\")","t":0,"line":"be","debug":"\"be\""}"#,
    ] {
        let others: Vec<&&str> = lines.iter().filter(|l| !l.contains("range(")).collect();
        assert!(
            lines.contains(&want),
            "{want} not in (range values left out)\n{others:#?}"
        );
    }
    assert_eq!(lines.last(), Some(&r#"{"end":4500000000}"#));
    // Lines are kept exactly (JSON escapes).
    let read = host::record::read(&file)?;
    let texts: Vec<&host::record::Value> = read
        .entries
        .iter()
        .filter(|e| read.streams[e.stream].pipeline == "lines")
        .map(|e| &e.value)
        .collect();
    assert_eq!(
        texts,
        [
            &host::record::Value::Line("q \"x\"\t\\\u{e9}\u{1}".to_owned()),
            &host::record::Value::Line("alpha".to_owned()),
            &host::record::Value::Line("be".to_owned()),
        ]
    );
    // Subject values are not recorded: their publishers produce them again.
    assert!(!text.contains(r#""pipeline":"reader""#), "{text}");

    let same = replay(&fixture.options(), &file)?;
    assert!(same.loaded, "{:?}", same.events);
    assert!(same.warnings.is_empty(), "{:?}", same.warnings);
    for (p, want) in PIPELINES.iter().zip(&recorded) {
        assert_eq!(&same.emissions(p), want, "{p}");
    }
    // Its recorded ticks were fed (a source the file had nothing for would be told here).
    assert!(same.notices("bounce").is_empty(), "{:?}", same.events);

    fixture.edit(
        "src/lib.rs",
        "n * 2)\n        .scan",
        "n * 3)\n        .scan",
    );
    fixture.edit("src/lib.rs", "as u64 * 2", "as u64 * 3");
    let edited = replay(&fixture.options(), &file)?;
    assert!(edited.loaded, "{:?}", edited.events);
    assert_eq!(edited.emissions("counter"), ["0", "3", "9", "18", "30"]);
    assert_eq!(edited.emissions("lines"), ["30", "15", "6"]);
    assert_eq!(edited.emissions("batch"), recorded[1]);
    Ok(())
}

/// A recording header for the fixture at `dir`, at `version`.
fn header(dir: &Path, version: u64) -> String {
    let dir = dir.canonicalize().expect("the fixture exists");
    format!(
        "{{\"format\":\"hmr-record\",\"version\":{version},\"host\":\"0.1.0\",\"plugin\":{},\"start\":0}}\n",
        serde_json::to_string(&dir.to_string_lossy()).expect("a string")
    )
}

/// One recorded tick of `interval_ms(600000)` for the pipeline `slow`.
fn tick(n: u64) -> String {
    format!(
        "{{\"pipeline\":\"slow\",\"port\":0,\"source\":\"interval_ms(600000)\",\"t\":{},\"u64\":{n}}}\n",
        n * 600_000_000_000
    )
}

#[test]
fn an_hour_of_recorded_ticks_replays_on_the_virtual_clock_without_waiting() -> anyhow::Result<()> {
    // Ten-minute ticks for an hour, each delayed by five minutes: the replay runs the ticks and
    // the delay's timers at their recorded times on its virtual clock. Waiting for real time
    // would take an hour: a replay waits `REPLAY_SETTLE` (60 s) at most for its pipelines to
    // run what is due, so it would fail instead.
    let fixture = Fixture::new(
        "record_hour",
        &plugin(
            r#"    p.pipeline("slow", interval_ms(600000))
        .delay_ms(300000)
        .map(|n: u64| n * 10)
        .log();"#,
        ),
    );
    let dir = TempDir::new("record_hour");
    // As version 1 wrote it (a line a tick), and as a run (version 2): the same replay.
    let mut one_by_one = header(fixture.path(), 1);
    for n in 0..=6 {
        one_by_one.push_str(&tick(n));
    }
    let run = format!(
        "{}{{\"pipeline\":\"slow\",\"port\":0,\"source\":\"interval_ms(600000)\",\"t\":0,\"u64\":0,\"n\":7,\"dt\":600000000000}}\n",
        header(fixture.path(), 2)
    );
    for (what, mut text) in [("one_by_one", one_by_one), ("run", run)] {
        // The end, after the last tick's delay.
        text.push_str("{\"end\":3900000000000}\n");
        let file = dir.path().join(format!("{what}.jsonl"));
        std::fs::write(&file, text)?;
        let replayed = replay(&fixture.options(), &file)?;
        assert!(replayed.loaded, "{what}: {:?}", replayed.events);
        assert_eq!(
            replayed.emissions("slow"),
            ["0", "10", "20", "30", "40", "50", "60"],
            "{what}"
        );
    }
    Ok(())
}

#[test]
fn an_intervals_ticks_are_recorded_as_runs_and_replay_identically() -> anyhow::Result<()> {
    // 101 ticks of a 10 ms interval in one virtual second: their deadlines are one period
    // apart, so they make runs (one, unless the writer took the tape between two ticks).
    let fixture = Fixture::new(
        "record_runs",
        &plugin(
            r#"    p.pipeline("fast", interval_ms(10))
        .scan(0u64, |acc: u64, n: u64| acc + n * 3)
        .log();"#,
        ),
    );
    let dir = TempDir::new("record_runs");
    let file = dir.path().join("runs.jsonl");
    let (mut options, time) = fixture.virtual_options();
    options.record = Some(file.clone());
    let mut host = Harness::start(&options)?;
    host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    advance(&time, 1000);
    host.stop();
    let recorded = values(&host, "fast");
    assert_eq!(recorded.len(), 101, "{recorded:?}");
    assert_eq!(recorded.last().map(String::as_str), Some("15150"));

    let text = std::fs::read_to_string(&file)?;
    let lines: Vec<&str> = text.lines().collect();
    let count = check_runs(&lines, "fast", "interval_ms(10)", 10_000_000, 101);
    // A line a tick before runs; a cut every 100 ms of real time at most since.
    assert!(count <= 20, "{count} lines for 101 ticks:\n{text}");
    assert_eq!(
        lines.len(),
        count + 2,
        "the header, the ticks, the end:\n{text}"
    );

    let replayed = replay(&fixture.options(), &file)?;
    assert!(replayed.warnings.is_empty(), "{:?}", replayed.warnings);
    assert_eq!(replayed.emissions("fast"), recorded);
    Ok(())
}

#[test]
fn bad_recordings_are_errors_naming_the_file_and_line() -> anyhow::Result<()> {
    let dir = TempDir::new("record_bad");
    let here = dir.path();
    let good = header(here, 1);
    let run = |fields: &str| {
        format!("{good}{{\"pipeline\":\"slow\",\"port\":0,\"source\":\"x\",{fields}}}\n")
    };
    let cases: [(&str, String, &str); 13] = [
        (
            "empty",
            String::new(),
            ":1: not a recording: the file is empty",
        ),
        (
            "not json",
            "hello\n".to_owned(),
            ":1: not a recording: the first line is not an `hmr-record` header",
        ),
        (
            "another format",
            "{\"format\":\"other\",\"version\":1}\n".to_owned(),
            ":1: not a recording: the first line is not an `hmr-record` header",
        ),
        (
            "newer",
            header(here, 3),
            ":1: recording format version 3 is newer than this host reads (version 2); replay it \
             with a newer host",
        ),
        (
            "not a record",
            format!("{good}{}{{\"pipeline\":\"slow\"}}\n{}", tick(0), tick(1)),
            ":3: not a record: it has no `port`",
        ),
        (
            "two values",
            format!(
                "{good}{{\"pipeline\":\"slow\",\"port\":0,\"source\":\"x\",\"t\":0,\"u64\":1,\"line\":\"a\"}}\n"
            ),
            ":2: not a record: it needs exactly one of `u64`, `index`, `line` or `complete`",
        ),
        (
            "a run of none",
            run(r#""t":0,"u64":1,"n":0,"dt":5"#),
            ":2: not a record: a run of 0 values (`n` is at least 1)",
        ),
        (
            "a run without its step",
            run(r#""t":0,"u64":1,"n":3"#),
            ":2: not a record: a run (`n`) needs its time step `dt`",
        ),
        (
            "a step without a run",
            run(r#""t":0,"u64":1,"dt":3"#),
            ":2: not a record: a time step `dt` needs a run length `n`",
        ),
        (
            "a run of lines",
            run(r#""t":0,"line":"a","n":2,"dt":3"#),
            ":2: not a record: a run (`n`) is of `u64` or `index` values",
        ),
        (
            "a run past the last value",
            run(r#""t":0,"index":18446744073709551615,"n":2,"dt":0"#),
            ":2: not a record: the run's last value overflows: 18446744073709551615 + 1 is past \
             18446744073709551615",
        ),
        (
            "a run past the last time",
            run(r#""t":18446744073709551605,"u64":0,"n":3,"dt":6"#),
            ":2: not a record: the run's last time overflows: 18446744073709551605 + 2 * 6 is \
             past 18446744073709551615",
        ),
        (
            "a run too long to hold",
            run(r#""t":0,"u64":0,"n":18446744073709551615,"dt":0"#),
            ":2: a run of 18446744073709551615 values does not fit in memory",
        ),
    ];
    for (what, text, want) in cases {
        let file = here.join(format!("{}.jsonl", what.replace(' ', "_")));
        std::fs::write(&file, text)?;
        let e = host::record::read(&file).expect_err(what);
        let e = format!("{e:#}");
        assert_eq!(e, format!("{}{want}", file.display()), "{what}");
    }
    Ok(())
}

#[test]
fn a_cut_last_line_another_plugin_and_silent_pipelines_are_warned_about() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "record_warn",
        &plugin(
            r#"    p.pipeline("slow", interval_ms(600000)).map(|n: u64| n + 1).log();
    p.pipeline("quiet", interval_ms(10)).log();"#,
        ),
    );
    let dir = TempDir::new("record_warn");
    // A host that died while writing its third record; recorded from another plugin
    // directory, with a pipeline the code does not have.
    let file = dir.path().join("cut.jsonl");
    let other = header(dir.path(), 1);
    let gone = "{\"pipeline\":\"gone\",\"port\":0,\"source\":\"range(0, 1)\",\"t\":0,\"u64\":0}\n";
    let cut = &tick(2)[..30];
    std::fs::write(&file, format!("{other}{}{gone}{}{cut}", tick(0), tick(1)))?;
    let replayed = replay(&fixture.options(), &file)?;
    assert!(replayed.loaded, "{:?}", replayed.events);
    assert_eq!(replayed.emissions("slow"), ["1", "2"]);
    assert_eq!(replayed.emissions("quiet"), Vec::<String>::new());
    let name = file.display();
    let w = &replayed.warnings;
    assert_eq!(w.len(), 3, "{w:#?}");
    assert!(
        w[0].starts_with(&format!("{name}:5: the last line is cut short (")),
        "{w:#?}"
    );
    assert!(w[0].ends_with("); it is left out"), "{w:#?}");
    assert_eq!(
        w[1],
        format!(
            "{name}: recorded from the plugin {}, replayed on {}: pipelines get the values \
             recorded under their name",
            dir.path().canonicalize()?.display(),
            fixture.path().canonicalize()?.display()
        )
    );
    assert_eq!(
        w[2],
        format!(
            "{name}: the recorded pipeline gone is not in the code: its values are not replayed"
        )
    );
    assert_eq!(
        replayed.notices("quiet"),
        ["no recorded values for this pipeline: its sources stay silent"]
    );
    assert_eq!(replayed.notices("slow"), Vec::<String>::new());
    Ok(())
}

/// README.md, "Reproduce a bug": the same code as the README's example, run.
#[test]
fn readme_reproduce_a_bug() -> anyhow::Result<()> {
    use std::time::Duration;
    // README: begin
    let fixture = Fixture::new(
        "readme_bug",
        r#"
use plugin_api::prelude::*;
fn register(p: &mut Plugin) {
    p.pipeline("sizes", file_lines("input.log"))
        .map(|line: String| line.parse::<u64>().unwrap() * 2) // panics on a line that is not a number
        .log();
    p.pipeline("ticks", interval_ms(1000)).map(|n: u64| n * 2).log();
}
plugin_api::export_plugin!(register);
"#,
    );
    fixture.write("input.log", "1\n2\noops\n4\n");
    let dir = TempDir::new("readme_bug");
    let file = dir.path().join("session.jsonl");

    // Record a session (as `host --record session.jsonl` does), on a virtual clock.
    let (mut options, time) = fixture.virtual_options();
    options.record = Some(file.clone());
    let mut host = Harness::start(&options)?;
    host.wait_loaded()?;
    host.wait_emission("sizes", |v| v == "8")?; // the line `oops` panicked on the way
    time.advance(Duration::from_secs(3));
    assert!(time.settle(Duration::from_secs(30)));
    host.stop();

    // Fix the bug, and replay the same inputs through the new code (as
    // `host --replay-from session.jsonl` does): no waiting, the recorded schedule.
    fixture.edit(
        "src/lib.rs",
        ".map(|line: String| line.parse::<u64>().unwrap() * 2)",
        ".filter_map(|line: String| line.parse::<u64>().ok().map(|n| n * 2))",
    );
    let replayed = replay(&fixture.options(), &file)?;
    assert_eq!(replayed.emissions("sizes"), ["2", "4", "8"]);
    assert_eq!(replayed.emissions("ticks"), ["0", "2", "4", "6"]);
    // README: end
    // The recorded session did panic, and the replay did not.
    let panicked = |events: &[host::events::HostEvent]| {
        events
            .iter()
            .filter(|e| matches!(e, host::events::HostEvent::Error { pipeline, .. } if pipeline == "sizes"))
            .count()
    };
    assert_eq!(panicked(host.history()), 1);
    assert_eq!(panicked(&replayed.events), 0);
    Ok(())
}

/// README.md's example is the code of [`readme_reproduce_a_bug`] (whitespace aside).
#[test]
fn readme_shows_the_tested_code() -> anyhow::Result<()> {
    let root = host::testkit::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let test = std::fs::read_to_string(root.join("tests/tests/record_replay.rs"))?;
    let shown = readme
        .split("From a test, with `host::testkit`")
        .nth(1)
        .and_then(|s| s.split("```rust\n").nth(1))
        .and_then(|s| s.split("\n```").next())
        .expect("README.md has the example");
    let tested = test
        .split("// README: begin\n")
        .nth(1)
        .and_then(|s| s.split("    // README: end").next())
        .expect("the test has the example");
    let squeeze = |s: &str| s.split_whitespace().collect::<String>();
    assert_eq!(squeeze(shown), squeeze(tested));
    Ok(())
}

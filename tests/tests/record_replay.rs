//! `--record` and `--replay-from` on real builds: a session recorded under a virtual clock
//! replays with the same emissions on the same code and with the new values on edited code;
//! a recording spanning an hour replays at once under the replay's virtual clock; and each
//! kind of bad file is an error naming the file and line, or a warning.

use std::path::Path;
use std::time::{Duration, Instant};

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
        .log();"#;

/// The pipelines of [`SESSION`] whose emissions a replay must reproduce.
const PIPELINES: [&str; 5] = ["counter", "batch", "items", "lines", "reader"];

/// Records [`SESSION`] for 4.5 virtual seconds into `file`; returns each pipeline's logged
/// values.
fn record_session(fixture: &Fixture, file: &Path) -> anyhow::Result<Vec<Vec<String>>> {
    fixture.write("input.txt", "alpha\nbe\n");
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

fn values(host: &Harness, pipeline: &str) -> Vec<String> {
    host.emissions(pipeline).into_iter().map(|(_, v)| v).collect()
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
    assert_eq!(recorded[1], ["0", "1000", "2000", "3000", "4000", "5000"], "batch");
    assert_eq!(recorded[2], ["14", "16", "18"], "items");
    assert_eq!(recorded[3], ["10", "4"], "lines");
    // Ticks every 500 ms up to 4.5 s (the first skipped: the reader may not have subscribed
    // yet), debounced by 300 ms, through a subject: the last one is still pending when the
    // recording ends.
    assert_eq!(recorded[4], ["2", "4", "6", "8", "10", "12", "14", "16"], "reader");

    let text = std::fs::read_to_string(&file)?;
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with(r#"{"format":"hmr-record","version":1,"#), "{}", lines[0]);
    for want in [
        r#"{"pipeline":"counter","port":0,"source":"interval_ms(1000)","t":1000000000,"u64":1,"debug":"1"}"#,
        r#"{"pipeline":"batch","port":0,"source":"range(0, 3000)","t":0,"u64":2999,"debug":"2999"}"#,
        r#"{"pipeline":"batch","port":0,"source":"range(0, 3000)","t":0,"complete":true}"#,
        r#"{"pipeline":"items","port":0,"source":"of::<u64>([7, 8, 9])","t":0,"index":2}"#,
        r#"{"pipeline":"lines","port":0,"source":"file_lines(\"input.txt\")","t":0,"line":"be","debug":"\"be\""}"#,
    ] {
        let others: Vec<&&str> = lines.iter().filter(|l| !l.contains("range(")).collect();
        assert!(lines.contains(&want), "{want} not in (range values left out)\n{others:#?}");
    }
    assert_eq!(lines.last(), Some(&r#"{"end":4500000000}"#));
    // Subject values are not recorded: their publishers produce them again.
    assert!(!text.contains(r#""pipeline":"reader""#), "{text}");

    let same = replay(&fixture.options(), &file)?;
    assert!(same.loaded, "{:?}", same.events);
    assert!(same.warnings.is_empty(), "{:?}", same.warnings);
    for (p, want) in PIPELINES.iter().zip(&recorded) {
        assert_eq!(&same.emissions(p), want, "{p}");
    }

    fixture.edit("src/lib.rs", "n * 2)\n        .scan", "n * 3)\n        .scan");
    fixture.edit("src/lib.rs", "as u64 * 2", "as u64 * 3");
    let edited = replay(&fixture.options(), &file)?;
    assert!(edited.loaded, "{:?}", edited.events);
    assert_eq!(edited.emissions("counter"), ["0", "3", "9", "18", "30"]);
    assert_eq!(edited.emissions("lines"), ["15", "6"]);
    assert_eq!(edited.emissions("batch"), recorded[1]);
    Ok(())
}

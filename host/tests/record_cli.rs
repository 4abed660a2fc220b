//! `host --record FILE` and `host --replay-from FILE` as a person runs them: a `--no-watch`
//! run recorded and replayed with `--json` gives the same emissions; a bad file is one
//! error line naming the file and line, with the usage exit status, before anything builds.

use std::process::Command;

use host::testkit::{BUILD_TIMEOUT, Fixture, TempDir, fixture_target_dir, output_within};

/// Runs the host binary with `args`; returns its status, stdout and stderr.
fn host(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_host"));
    cmd.args(args).env("CARGO_TARGET_DIR", fixture_target_dir());
    let out = output_within(cmd, BUILD_TIMEOUT).expect("run the host binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `emission` events of a `--json` stream, as (pipeline, value).
fn emissions(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .filter(|e| e["event"] == "emission")
        .map(|e| {
            (
                e["pipeline"].as_str().unwrap_or_default().to_owned(),
                e["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_recorded_run_replays_with_the_same_emissions() {
    let fixture = Fixture::new(
        "record_cli",
        r#"
use plugin_api::prelude::*;
fn register(p: &mut Plugin) {
    p.pipeline("total", range(0, 2_000))
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .filter(|s: &u64| s % 7 == 0)
        .log();
    p.pipeline("firsts", interval_ms(1)).take(3).map(|n: u64| n * 2).log();
}
plugin_api::export_plugin!(register);
"#,
    );
    let dir = TempDir::new("record_cli");
    let file = dir.path().join("run.jsonl");
    let plugin = fixture.path().as_os_str();
    let (status, recorded, stderr) = host(&[
        "--no-watch".as_ref(),
        "--json".as_ref(),
        "--record".as_ref(),
        file.as_os_str(),
        "--plugin".as_ref(),
        plugin,
    ]);
    assert_eq!(status, Some(0), "{stderr}");
    let recorded = emissions(&recorded);
    assert!(recorded.len() > 10, "{recorded:?}");
    let text = std::fs::read_to_string(&file).expect("the recording");
    assert_eq!(text.lines().last(), text.lines().rev().find(|l| l.starts_with("{\"end\":")));

    let (status, replayed, stderr) = host(&[
        "--replay-from".as_ref(),
        file.as_os_str(),
        "--json".as_ref(),
        "--plugin".as_ref(),
        plugin,
    ]);
    assert_eq!(status, Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let per = |all: &[(String, String)], p: &str| -> Vec<String> {
        all.iter().filter(|(q, _)| q == p).map(|(_, v)| v.clone()).collect()
    };
    let replayed = emissions(&replayed);
    for p in ["total", "firsts"] {
        assert_eq!(per(&replayed, p), per(&recorded, p), "{p}");
    }
    assert_eq!(per(&replayed, "firsts"), ["0", "2", "4"]);
}

#[test]
fn a_bad_recording_is_one_error_line_and_the_usage_status() {
    let dir = TempDir::new("record_cli_bad");
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "shopping list\n").expect("write");
    let (status, stdout, stderr) = host(&[
        "--replay-from".as_ref(),
        file.as_os_str(),
        "--plugin".as_ref(),
        dir.path().as_os_str(),
    ]);
    assert_eq!(status, Some(2), "{stdout}{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: {}:1: not a recording: the first line is not an `hmr-record` header\n",
            file.display()
        )
    );
    let (status, _, stderr) = host(&[
        "--replay-from".as_ref(),
        file.as_os_str(),
        "--record".as_ref(),
        file.as_os_str(),
    ]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("--record"), "{stderr}");
}

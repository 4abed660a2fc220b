//! The `host` binary's command line: bad input gets one clear message naming the cause and
//! a non-zero exit, never a panic or a backtrace.

use std::process::Command;

use std::time::Duration;

use host::testkit::{TempDir, output_within};

fn host(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_host"));
    cmd.args(args).env("RUST_BACKTRACE", "1");
    let out = output_within(cmd, Duration::from_secs(60)).expect("run the host binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_command_lines_fail_with_one_clear_message() {
    let scratch = TempDir::new("cli");
    let empty = scratch.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let not_cdylib = scratch.path().join("not-cdylib");
    std::fs::create_dir_all(not_cdylib.join("src")).unwrap();
    std::fs::write(
        not_cdylib.join("Cargo.toml"),
        "[package]\nname = \"plain\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(not_cdylib.join("src/lib.rs"), "").unwrap();
    let missing = scratch.path().join("does-not-exist");
    let file = scratch.path().join("a-file");
    std::fs::write(&file, "").unwrap();

    // A port in use: the inspector cannot listen there.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap();
    let s = |p: &std::path::Path| p.display().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--plugin".into(), s(&missing)],
            format!("plugin directory {} does not exist", s(&missing)),
        ),
        (
            vec!["--plugin".into(), s(&empty)],
            format!("{} holds no Cargo.toml", s(&empty)),
        ),
        (
            vec!["--plugin".into(), s(&not_cdylib)],
            format!("{}/Cargo.toml does not build a cdylib", s(&not_cdylib)),
        ),
        (
            vec!["--plugin".into(), s(&file)],
            format!("plugin path {} is not a directory", s(&file)),
        ),
        (vec!["--plugin".into()], "--plugin needs a value".into()),
        (
            vec!["--frobnicate".into()],
            "unknown argument `--frobnicate`".into(),
        ),
        (
            vec!["--on-panic=maybe".into()],
            "--on-panic takes `drop` or `error`, not `maybe`".into(),
        ),
        (
            vec!["--debounce-ms".into(), "soon".into()],
            "--debounce-ms takes milliseconds, not `soon`".into(),
        ),
        (
            vec!["--json=false".into()],
            "--json takes no value, not `false`".into(),
        ),
        (
            vec!["--inspect".into(), "localhost".into()],
            "--inspect takes an address such as 127.0.0.1:7000, not `localhost`".into(),
        ),
        (
            vec!["--inspect".into(), taken.to_string()],
            format!("cannot listen on {taken} for --inspect"),
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = host(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr:?}");
        assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            lines[0].contains(&expected),
            "{args:?}: {stderr:?} lacks {expected:?}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
}

#[test]
fn help_names_every_option() {
    let (code, stdout, _) = host(&["--help"]);
    assert_eq!(code, Some(0));
    for option in [
        "--plugin DIR",
        "--release",
        "--no-watch",
        "--inspect ADDR",
        "--json",
        "--on-panic",
        "--debounce-ms",
    ] {
        assert!(stdout.contains(option), "--help lacks {option}");
    }
}

/// `--no-watch --json` prints the contract's events, one JSON object per line, and exits 0
/// once every pipeline has completed.
#[test]
fn no_watch_json_prints_the_contract_events_and_exits() {
    let fixture = host::testkit::Fixture::new(
        "cli_json",
        r#"
use plugin_api::prelude::*;
fn register(p: &mut Plugin) {
    p.pipeline("total", range(0, 1_000))
        .reduce(0u64, |acc: u64, n: u64| acc + n)
        .log();
    p.pipeline("firsts", interval_ms(1)).take(3).log();
}
plugin_api::export_plugin!(register);
"#,
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_host"));
    cmd.args(["--no-watch", "--json", "--plugin"])
        .arg(fixture.path())
        .env("CARGO_TARGET_DIR", host::testkit::fixture_target_dir());
    let out = output_within(cmd, host::testkit::BUILD_TIMEOUT).expect("run the host binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let of = |name: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["event"] == name).collect()
    };
    let loaded = of("loaded");
    assert_eq!(loaded.len(), 1, "{stdout}");
    assert_eq!(loaded[0]["version"], 1);
    let paths: Vec<&str> = loaded[0]["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "firsts",
            "firsts|0:take",
            "firsts|1:log",
            "total",
            "total|0:reduce",
            "total|1:log"
        ]
    );
    assert!(loaded[0]["tracks"][0]["kind"] == "pipeline");
    let emissions: Vec<(String, String)> = of("emission")
        .iter()
        .map(|e| {
            assert_eq!(e["version"], 1);
            (
                e["pipeline"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let total: Vec<&str> = emissions
        .iter()
        .filter(|(p, _)| p == "total")
        .map(|(_, v)| v.as_str())
        .collect();
    let firsts: Vec<&str> = emissions
        .iter()
        .filter(|(p, _)| p == "firsts")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(total, ["499500"]);
    assert_eq!(firsts, ["0", "1", "2"]);
    let mut completed: Vec<(String, u64)> = of("completed")
        .iter()
        .map(|e| {
            assert!(e["elapsed_us"].is_u64(), "{e}");
            (
                e["pipeline"].as_str().unwrap().to_owned(),
                e["emissions"].as_u64().unwrap(),
            )
        })
        .collect();
    completed.sort();
    assert_eq!(
        completed,
        [("firsts".to_owned(), 3), ("total".to_owned(), 1000)]
    );
}

//! The `host` binary's command line: bad input gets one clear message naming the cause and
//! a non-zero exit, never a panic or a backtrace.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use host::testkit::{
    BUILD_TIMEOUT, EMISSION_TIMEOUT, Fixture, TempDir, fixture_target_dir, output_within,
};

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
        (vec!["--plugin=".into()], "--plugin needs a value".into()),
        // The option after `--plugin` is not taken as its directory.
        (
            vec!["--plugin".into(), "--json".into()],
            "--plugin needs a value, and `--json` is an option".into(),
        ),
        (
            vec!["--json".into(), "--plugin".into(), "--no-watch".into()],
            "--plugin needs a value, and `--no-watch` is an option".into(),
        ),
        (vec!["--on-panic".into()], "--on-panic needs a value".into()),
        (
            vec!["--on-panic=".into()],
            "--on-panic needs a value".into(),
        ),
        (
            vec!["--debounce-ms=".into()],
            "--debounce-ms needs a value".into(),
        ),
        (vec!["stray".into()], "unknown argument `stray`".into()),
        (vec!["-x".into()], "unknown argument `-x`".into()),
        (
            vec!["--release=yes".into()],
            "--release takes no value, not `yes`".into(),
        ),
        (
            vec!["--debounce-ms=-3".into()],
            "--debounce-ms takes milliseconds, not `-3`".into(),
        ),
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

/// `--help` and `--version` print to stdout and exit 0; the help names every option and
/// shows the defaults the host really uses (taken from the named constants).
#[test]
fn help_and_version_print_and_exit_zero() {
    let debounce = format!("[default: {}]", host::watch::DEFAULT_DEBOUNCE.as_millis());
    let version = format!("host {}", env!("CARGO_PKG_VERSION"));
    let help: Vec<&str> = vec![
        "Usage: host [OPTIONS]",
        "--plugin <DIR>",
        "--release",
        "--no-watch",
        "--inspect <ADDR>",
        "--replay <N>",
        "[default: 32]",
        "--record <FILE>",
        "--replay-from <FILE>",
        "--json",
        "--on-panic <MODE>",
        "drop:",
        "error:",
        "[default: drop]",
        "--debounce-ms <N>",
        &debounce,
        "--version",
        "Exit status:",
        "141 the reader of the output went away",
    ];
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--help"], help.clone()),
        (vec!["-h"], vec!["--plugin <DIR>", "--on-panic <MODE>"]),
        // Help wins over a bad flag after it, as before.
        (vec!["--help", "--frobnicate"], vec!["Usage: host"]),
        (vec!["--json", "--help"], help),
        (vec!["--version"], vec![&version]),
        (vec!["-V"], vec![&version]),
    ];
    for (args, expected) in cases {
        let (code, stdout, stderr) = host(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        for text in expected {
            assert!(stdout.contains(text), "{args:?}: lacks {text:?}:\n{stdout}");
        }
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

/// A host binary on `fixture` with `args`, its stdout a pipe the test reads (or not) and its
/// stderr a file in `logs` (cargo's output must not fill a pipe nobody reads).
fn spawn_on(fixture: &Fixture, args: &[&str], logs: &TempDir) -> Child {
    let stderr = std::fs::File::create(logs.path().join("stderr")).expect("create stderr log");
    Command::new(env!("CARGO_BIN_EXE_host"))
        .args(args)
        .arg("--plugin")
        .arg(fixture.path())
        .env("CARGO_TARGET_DIR", fixture_target_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start the host binary")
}

/// Reads `stdout` line by line on a thread; each line arrives on the returned channel. The
/// thread reads at most `limit` lines, then drops `stdout`, closing the pipe.
fn read_lines(stdout: ChildStdout, limit: usize) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for _ in 0..limit {
            let Some(Ok(line)) = lines.next() else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The exit status of `child` once it has exited, or `None` (and the child killed) when it
/// is still running after `timeout`.
fn exit_within(mut child: Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let pid = child.id();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(status) => Some(status.expect("wait for the host")),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            None
        }
    }
}

fn stderr_of(logs: &TempDir) -> String {
    std::fs::read_to_string(logs.path().join("stderr")).unwrap_or_default()
}

/// `host --json | head -2`: once the reader has gone, the host exits promptly, silently,
/// with 141 (what a shell reports for a tool killed by SIGPIPE), watching or not.
#[test]
fn a_closed_output_pipe_ends_the_host() {
    let fixture = Fixture::new(
        "cli_epipe",
        r#"
use plugin_api::prelude::*;
fn register(p: &mut Plugin) {
    p.pipeline("ticks", interval_ms(1)).log();
}
plugin_api::export_plugin!(register);
"#,
    );
    let cases: [&[&str]; 4] = [&["--json"], &[], &["--json", "--no-watch"], &["--no-watch"]];
    for args in cases {
        let logs = TempDir::new("cli-epipe-logs");
        let mut child = spawn_on(&fixture, args, &logs);
        let lines = read_lines(child.stdout.take().expect("piped"), 2);
        for _ in 0..2 {
            lines
                .recv_timeout(BUILD_TIMEOUT)
                .unwrap_or_else(|_| panic!("{args:?}: no output: {}", stderr_of(&logs)));
        }
        // The reader has read two lines and closed the pipe.
        let status = exit_within(child, Duration::from_secs(10));
        let stderr = stderr_of(&logs);
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(141),
            "{args:?}: the host must exit once its output closed: {stderr}"
        );
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
    }
}

/// A reader that stops reading (`host --json | slow-tool`): values keep flowing through the
/// pipeline and reloads still happen (the plugin writes a marker file: the second channel),
/// memory stays bounded by dropping values; once reading resumes, the host says how many
/// it dropped, and prints the reload before any value of the new version.
#[test]
fn a_stalled_reader_stalls_neither_pipelines_nor_reloads() {
    let scratch = TempDir::new("cli-stall");
    let marker = scratch.path().join("marker");
    let fixture = Fixture::new(
        "cli_stall",
        &r#"
use plugin_api::prelude::*;
const VERSION: &str = "v1";
fn register(p: &mut Plugin) {
    p.pipeline("big", interval_ms(1))
        .map(|n: u64| {
            let _ = std::fs::write(MARKER, format!("{VERSION} {n}"));
            format!("{VERSION} {}", "x".repeat(10_000))
        })
        .log();
}
plugin_api::export_plugin!(register);
"#
        .replace("MARKER", &format!("{:?}", marker.display().to_string())),
    );
    // What the plugin's code last wrote: its version and its emission count.
    let seen = || -> Option<(String, u64)> {
        let text = std::fs::read_to_string(&marker).ok()?;
        let (v, n) = text.split_once(' ')?;
        Some((v.to_owned(), n.parse().ok()?))
    };
    let wait_until = |what: &str, ok: &dyn Fn((String, u64)) -> bool, timeout: Duration| {
        let deadline = Instant::now() + timeout;
        while !seen().is_some_and(ok) {
            assert!(
                Instant::now() < deadline,
                "{what}: the plugin's last mark is {:?}",
                seen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let logs = TempDir::new("cli-stall-logs");
    let mut child = spawn_on(&fixture, &["--json"], &logs);
    let stdout = child.stdout.take().expect("piped");
    wait_until("v1 is loaded", &|(v, _)| v == "v1", BUILD_TIMEOUT);
    // 3,000 values of 10 KB: 30 MB, far beyond the pipe (64 KiB) and the printer's budget.
    wait_until(
        "v1 keeps emitting while nobody reads",
        &|(v, n)| v == "v1" && n >= 3_000,
        EMISSION_TIMEOUT,
    );
    fixture.edit("src/lib.rs", "\"v1\"", "\"v2\"");
    wait_until(
        "v2 is loaded and runs while nobody reads",
        &|(v, n)| v == "v2" && n >= 3_100,
        BUILD_TIMEOUT,
    );
    // Read until a few values of v2 have been printed.
    let lines = read_lines(stdout, usize::MAX);
    let mut events = Vec::new();
    let mut v2 = 0;
    while v2 < 3 {
        let line = lines
            .recv_timeout(EMISSION_TIMEOUT)
            .unwrap_or_else(|_| panic!("no more output: {}", stderr_of(&logs)));
        let e: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if e["event"] == "emission" && e["version"] == 2 {
            v2 += 1;
        }
        events.push(e);
    }
    let _ = exit_within(child, Duration::from_secs(10));
    let at = |name: &str| events.iter().position(|e| e["event"] == name);
    let reload = at("reload").expect("the reload is printed");
    let first_v2 = events
        .iter()
        .position(|e| e["event"] == "emission" && e["version"] == 2)
        .expect("v2 emitted");
    assert!(reload < first_v2, "the reload comes before v2's values");
    let dropped: u64 = events
        .iter()
        .filter(|e| e["event"] == "dropped")
        .map(|e| e["emissions"].as_u64().expect("a count"))
        .sum();
    let printed = events.iter().filter(|e| e["event"] == "emission").count() as u64;
    assert!(
        dropped >= 3_000 - printed,
        "{dropped} dropped and {printed} printed of over 3,000"
    );
}

/// What a person reads when a plugin misbehaves, on real builds under `--no-watch`: each
/// case's plugin, flags, exit status, and what its stdout must and must not hold.
#[test]
fn misbehaving_plugins_get_short_messages_in_the_persons_terms() {
    struct Case {
        name: &'static str,
        register: &'static str,
        json: bool,
        status: i32,
        holds: Vec<String>,
        lacks: Vec<&'static str>,
    }
    let cap = host::events::MAX_MESSAGE_BYTES;
    let cases = vec![
        Case {
            name: "cli_msg_duplicate",
            register: r#"
    p.pipeline("a", range(0, 2)).log();
    p.pipeline("a", range(0, 3)).log();"#,
            json: true,
            status: 1,
            holds: vec!["two pipelines are named `a`".into()],
            lacks: vec!["track-call", "module 1", "duplicate path"],
        },
        Case {
            name: "cli_msg_nul",
            register: r#"
    p.pipeline("a\0b", range(0, 2)).log();"#,
            json: true,
            status: 1,
            holds: vec![
                r#"pipeline name \"a\\0b\" is not allowed"#.into(),
                "control character".into(),
            ],
            lacks: vec!["track-call"],
        },
        Case {
            name: "cli_msg_huge_panic",
            register: r#"
    p.pipeline("big", range(0, 3))
        .map(|n: u64| if n == 1 { panic!("{}", "x".repeat(5_000_000)) } else { n })
        .log();"#,
            json: true,
            status: 0,
            holds: vec![
                "more bytes cut".into(),
                format!("messages are capped at {cap} bytes"),
            ],
            lacks: vec![],
        },
        Case {
            name: "cli_msg_no_watch",
            register: r#"
    p.pipeline("a", range(0, 2)).log()"#,
            json: false,
            status: 1,
            holds: vec![
                "build failed".into(),
                "nothing is running (--no-watch: the host stops here)".into(),
            ],
            lacks: vec!["save"],
        },
    ];
    for case in cases {
        let fixture = Fixture::new(
            case.name,
            &format!(
                "use plugin_api::prelude::*;\nfn register(p: &mut Plugin) {{{}\n}}\n\
                 plugin_api::export_plugin!(register);\n",
                case.register
            ),
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_host"));
        cmd.arg("--no-watch")
            .args(case.json.then_some("--json"))
            .arg("--plugin")
            .arg(fixture.path())
            .env("CARGO_TARGET_DIR", fixture_target_dir());
        let out = output_within(cmd, BUILD_TIMEOUT).expect("run the host binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = case.name;
        assert_eq!(
            out.status.code(),
            Some(case.status),
            "{name}: {stdout}\n{stderr}"
        );
        for text in &case.holds {
            assert!(
                stdout.contains(text.as_str()),
                "{name}: lacks {text:?}:\n{stdout}"
            );
        }
        for text in case.lacks {
            assert!(!stdout.contains(text), "{name}: holds {text:?}:\n{stdout}");
        }
        assert!(
            stdout.len() < 64 * 1024,
            "{name}: {} bytes of output",
            stdout.len()
        );
        if case.json {
            for line in stdout.lines() {
                let e: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}: {line}"));
                for field in ["message", "error"] {
                    let len = e[field].as_str().map_or(0, str::len);
                    assert!(len <= cap, "{name}: a {len}-byte {field}");
                }
            }
        }
    }
}

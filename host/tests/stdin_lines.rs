//! `stdin_lines` through the `host` binary: the lines written to its standard input reach
//! every pipeline reading it (lines already waiting in the pipe when the sources start
//! included), go on being read across a reload and run the new code, and the end of input
//! completes every such pipeline.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use host::testkit::{BUILD_TIMEOUT, EMISSION_TIMEOUT, Fixture, fixture_target_dir};
use serde_json::Value;

/// A `host --json` process with its standard input piped; its output lines parsed as they
/// come (stderr lines are kept apart, for failure messages).
struct HostProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Result<Value, String>>,
    events: Vec<Value>,
    stderr: Vec<String>,
}

impl HostProc {
    /// Starts `host --plugin <dir> --json`, building into the shared fixture target dir.
    fn start(dir: &Path) -> HostProc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_host"))
            .arg("--plugin")
            .arg(dir)
            .arg("--json")
            .env("CARGO_TARGET_DIR", fixture_target_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the host binary");
        let (tx, rx) = channel();
        let err_tx = tx.clone();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                let _ = tx.send(Ok(v));
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(Err(line));
            }
        });
        HostProc {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            events: Vec::new(),
            stderr: Vec::new(),
        }
    }

    /// Writes `text` to the host's standard input.
    fn write(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to the host's stdin");
    }

    /// Ends the host's standard input.
    fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// The next event satisfying `pred`, within `timeout`.
    fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Ok(event)) => {
                    self.events.push(event.clone());
                    if pred(&event) {
                        return event;
                    }
                }
                Ok(Err(line)) => self.stderr.push(line),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "no {what} within {timeout:?}; events so far:\n{}\nstderr:\n{}",
                    self.events
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.stderr.join("\n")
                ),
            }
        }
    }

    /// The first event satisfying `pred` among those seen so far, or the next one.
    fn seen_or_next(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        match self.events.iter().find(|e| pred(e)) {
            Some(e) => e.clone(),
            None => self.wait_event(what, EMISSION_TIMEOUT, pred),
        }
    }

    /// The `n`th emission (from 1) of `pipeline`, seen or to come, as (version, value).
    fn nth_emission(&mut self, pipeline: &str, n: usize) -> (u64, String) {
        let deadline = Instant::now() + EMISSION_TIMEOUT;
        loop {
            if let Some(e) = self.emissions(pipeline).into_iter().nth(n - 1) {
                return e;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_event(&format!("emission {n} of {pipeline}"), left, |e| {
                e["event"] == "emission" && e["pipeline"] == pipeline
            });
        }
    }

    /// The emissions of `pipeline` seen so far, as (version, value).
    fn emissions(&self, pipeline: &str) -> Vec<(u64, String)> {
        self.events
            .iter()
            .filter(|e| e["event"] == "emission" && e["pipeline"] == pipeline)
            .map(|e| {
                (
                    e["version"].as_u64().expect("a version"),
                    e["value"].as_str().expect("a value").to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for HostProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const READERS: &str = r#"
use plugin_api::prelude::*;

const TAG: &str = "/1";

fn register(p: &mut Plugin) {
    p.pipeline("upper", stdin_lines())
        .map(|l: String| l.to_uppercase() + TAG)
        .log();
    // Started between the two readers (pipelines start in name order): each is a thread
    // spawned between their subscriptions to stdin.
    for k in 0..200 {
        p.pipeline(&format!("mid{k}"), interval_ms(3_600_000)).log();
    }
    p.pipeline("len", stdin_lines())
        .map(|l: String| format!("{}{TAG}", l.len()))
        .log();
}

plugin_api::export_plugin!(register);
"#;

/// What `pipeline` of [`READERS`] emits for `line` under the version tagged `tag`.
fn expected(pipeline: &str, line: &str, tag: &str) -> String {
    let v = match pipeline {
        "upper" => line.to_uppercase() + tag,
        _ => format!("{}{tag}", line.len()),
    };
    format!("{v:?}")
}

/// Two pipelines read the host's stdin, and each gets every line: one already in the pipe
/// when the host starts (read only once both have subscribed, however many pipelines start
/// in between), one written once it runs, and lines after a reload that edits both
/// (stdin is still read; once a line has run v2's code in both, every later line does too).
/// Closing stdin completes both.
#[test]
fn stdin_lines_reach_every_reader_across_a_reload_until_the_end_of_input() {
    let fixture = Fixture::new("stdin_lines_binary", READERS);
    let mut host = HostProc::start(fixture.path());
    let mut lines: Vec<String> = Vec::new();
    let mut write = |host: &mut HostProc, line: &str| {
        host.write(&format!("{line}\n"));
        lines.push(line.to_owned());
        lines.len()
    };
    // Waiting in the pipe before any pipeline reads it.
    write(&mut host, "early");
    let loaded = host.wait_event("loaded", BUILD_TIMEOUT, |e| {
        e["event"] == "loaded" || e["event"] == "build-failed" || e["event"] == "load-failed"
    });
    assert_eq!(loaded["event"], "loaded", "{loaded}");
    let v1 = loaded["version"].as_u64().expect("a version");
    host.nth_emission("upper", 1);
    host.nth_emission("len", 1);
    let n = write(&mut host, "ab");
    host.nth_emission("upper", n);
    host.nth_emission("len", n);
    fixture.edit("src/lib.rs", "TAG: &str = \"/1\"", "TAG: &str = \"/2\"");
    let reload = host.wait_event("reload", BUILD_TIMEOUT, |e| {
        e["event"] == "reload" || e["event"] == "build-failed" || e["event"] == "load-failed"
    });
    assert_eq!(reload["event"], "reload", "{reload}");
    assert_eq!(reload["restarts"], serde_json::json!([]), "{reload}");
    let v2 = reload["version"].as_u64().expect("a version");
    // The report comes just before the new code is committed: a line that arrives in
    // between runs v1. Lines until both have run v2.
    let probing = Instant::now();
    for k in 0.. {
        assert!(
            probing.elapsed() < EMISSION_TIMEOUT,
            "no line ran v2 in both pipelines within {EMISSION_TIMEOUT:?} ({k} lines)"
        );
        let n = write(&mut host, &format!("probe {k}"));
        let (a, _) = host.nth_emission("upper", n);
        let (b, _) = host.nth_emission("len", n);
        if a == v2 && b == v2 {
            break;
        }
    }
    let n = write(&mut host, "cde");
    assert_eq!(
        host.nth_emission("upper", n),
        (v2, expected("upper", "cde", "/2"))
    );
    assert_eq!(
        host.nth_emission("len", n),
        (v2, expected("len", "cde", "/2"))
    );
    host.close_stdin();
    for pipeline in ["upper", "len"] {
        let done = host.seen_or_next(&format!("completed of {pipeline}"), |e| {
            e["event"] == "completed" && e["pipeline"] == pipeline
        });
        assert_eq!(done["emissions"], lines.len(), "{done}");
        // Each line once, in order, through the code of its version; v1 then v2.
        let want: Vec<(u64, String)> = host
            .emissions(pipeline)
            .iter()
            .zip(&lines)
            .map(|((v, _), line)| {
                let tag = if *v == v1 { "/1" } else { "/2" };
                (*v, expected(pipeline, line, tag))
            })
            .collect();
        let got = host.emissions(pipeline);
        assert_eq!(got.len(), lines.len(), "{got:?}");
        assert_eq!(got, want);
        assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "{got:?}");
        assert!(got.iter().all(|(v, _)| *v == v1 || *v == v2), "{got:?}");
        assert_eq!(
            got[..2].iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            [v1, v1]
        );
    }
    let told: Vec<&Value> = host
        .events
        .iter()
        .filter(|e| e["event"] == "error" || e["event"] == "notice")
        .collect();
    assert!(told.is_empty(), "{told:?}");
}

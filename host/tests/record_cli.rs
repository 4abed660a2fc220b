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
    assert_eq!(
        text.lines().last(),
        text.lines().rev().find(|l| l.starts_with("{\"end\":"))
    );

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
        all.iter()
            .filter(|(q, _)| q == p)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let replayed = emissions(&replayed);
    for p in ["total", "firsts"] {
        assert_eq!(per(&replayed, p), per(&recorded, p), "{p}");
    }
    assert_eq!(per(&replayed, "firsts"), ["0", "2", "4"]);

    // The replay runs the file's values, not the sources again: `firsts`' ticks shifted by
    // 100 in a copy of the recording come out shifted (a replay that ran the interval live
    // would give 0, 2, 4 again).
    let edited = dir.path().join("edited.jsonl");
    let mut shifted = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            if v["pipeline"] == "firsts"
                && let Some(first) = v["u64"].as_u64()
            {
                v["u64"] = (first + 100).into();
                if v["debug"].is_string() {
                    v["debug"] = (first + 100).to_string().into();
                }
                shifted += 1;
                return v.to_string();
            }
            l.to_owned()
        })
        .collect();
    assert!(shifted > 0, "no tick of firsts in {text}");
    std::fs::write(&edited, lines.join("\n") + "\n").expect("write the edited copy");
    let (status, replayed, stderr) = host(&[
        "--replay-from".as_ref(),
        edited.as_os_str(),
        "--json".as_ref(),
        "--plugin".as_ref(),
        plugin,
    ]);
    assert_eq!(status, Some(0), "{stderr}");
    let replayed = emissions(&replayed);
    assert_eq!(per(&replayed, "firsts"), ["200", "202", "204"]);
    assert_eq!(per(&replayed, "total"), per(&recorded, "total"));
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

/// A `--no-watch --json --record FILE` host on a plugin whose interval never ends, the
/// emission events it has printed counted by a reader thread.
struct Recording {
    child: std::process::Child,
    emissions: std::sync::mpsc::Receiver<()>,
    /// The reader thread: it ends when the host's stdout closes.
    reader: std::thread::JoinHandle<()>,
    file: std::path::PathBuf,
    _dir: TempDir,
}

impl Recording {
    fn start(fixture: &Fixture, label: &str) -> Recording {
        use std::io::BufRead;
        let dir = TempDir::new(label);
        let file = dir.path().join("run.jsonl");
        let mut child = Command::new(env!("CARGO_BIN_EXE_host"))
            .args(["--no-watch", "--json", "--record"])
            .arg(&file)
            .arg("--plugin")
            .arg(fixture.path())
            .env("CARGO_TARGET_DIR", fixture_target_dir())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the host");
        let stdout = child.stdout.take().expect("piped");
        let (tx, emissions) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("\"event\":\"emission\"") && tx.send(()).is_err() {
                    return;
                }
            }
        });
        Recording {
            child,
            emissions,
            reader,
            file,
            _dir: dir,
        }
    }

    /// Waits until `n` emissions were printed.
    fn emitted(&self, n: usize) {
        for i in 0..n {
            if self.emissions.recv_timeout(BUILD_TIMEOUT).is_err() {
                panic!("only {i} emissions");
            }
        }
    }

    /// Waits until the file's whole lines hold `n` values (the writer writes every 100 ms;
    /// an interval's ticks are runs, many values a line).
    fn values_written(&self, n: usize) {
        let deadline = std::time::Instant::now() + BUILD_TIMEOUT;
        loop {
            let written = host::record::read(&self.file).map_or(0, |r| r.entries.len());
            if written >= n {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the file stays short");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn signal(&self, signal: libc::c_int) -> Option<i32> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) takes plain integers; the child has not been reaped (we hold it).
        let r = unsafe { libc::kill(pid, signal) };
        assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
        None
    }

    /// How many more emissions the reader has seen since the last wait or count.
    fn seen_since(&self) -> usize {
        self.emissions.try_iter().count()
    }

    fn wait(mut self) -> (Option<i32>, std::path::PathBuf, TempDir) {
        let status = self.child.wait().expect("wait for the host");
        self.reader.join().expect("the reader thread");
        (status.code(), self.file, self._dir)
    }
}

/// The recorded ticks of `recorded`: every value of `ticks`, in order from 0.
fn ticks_in_order(recorded: &host::record::Recorded) -> usize {
    for (i, e) in recorded.entries.iter().enumerate() {
        assert_eq!(recorded.streams[e.stream].pipeline, "ticks");
        assert_eq!(e.value, host::record::Value::U64(i as u64), "entry {i}");
    }
    recorded.entries.len()
}

const ENDLESS: &str = r#"
use plugin_api::prelude::*;
fn register(p: &mut Plugin) {
    p.pipeline("ticks", interval_ms(1)).log();
}
plugin_api::export_plugin!(register);
"#;

#[test]
fn a_killed_host_leaves_a_recording_readable_to_its_last_whole_line() {
    let fixture = Fixture::new("record_killed", ENDLESS);
    let host = Recording::start(&fixture, "record_killed");
    host.values_written(100);
    host.signal(libc::SIGKILL);
    let (status, file, _dir) = host.wait();
    assert_eq!(status, None, "killed by a signal");
    let recorded = host::record::read(&file).expect("a readable recording");
    // Whole lines only. (A SIGKILL inside the writer's write(2) could cut it short between
    // pages; the writer spends microseconds of every 100 ms there. The reader would then
    // leave that line out with a warning.)
    assert!(recorded.warnings.is_empty(), "{:?}", recorded.warnings);
    assert_eq!(recorded.end, None, "no end line: the host was killed");
    let whole = ticks_in_order(&recorded);
    assert!(whole >= 99);
    // The case the kill may not have produced, made by hand: the file cut in the middle of
    // its last line reads as its whole lines, with one warning naming that line.
    let text = std::fs::read_to_string(&file).expect("the recording");
    let last = text.trim_end_matches('\n').rfind('\n').expect("two lines") + 1;
    let cut = last + (text.len() - last) / 2;
    let torn = file.with_extension("torn");
    std::fs::write(&torn, &text[..cut]).expect("write the cut copy");
    let read = host::record::read(&torn).expect("a readable recording");
    let lines = text.lines().count();
    assert_eq!(read.warnings.len(), 1, "{:?}", read.warnings);
    assert!(
        read.warnings[0].contains(&format!(":{lines}: the last line is cut short")),
        "{:?}",
        read.warnings
    );
    let kept = ticks_in_order(&read);
    assert!(kept < whole && kept + 3000 > whole, "{kept} of {whole}");
}

#[test]
fn ctrl_c_writes_every_value_taken_and_the_end() {
    let fixture = Fixture::new("record_sigint", ENDLESS);
    let host = Recording::start(&fixture, "record_sigint");
    host.emitted(300);
    // Printed before the signal: the 300 waited for and those the reader saw since. (Ticks
    // taken after the signal, while the recording is written out, are printed but not
    // recorded.)
    let printed = 300 + host.seen_since();
    host.signal(libc::SIGINT);
    let (status, file, _dir) = host.wait();
    assert_eq!(status, Some(130));
    let recorded = host::record::read(&file).expect("a readable recording");
    assert!(recorded.warnings.is_empty(), "{:?}", recorded.warnings);
    assert!(recorded.end.is_some(), "the end line");
    // Every value printed before the signal was recorded (a tick is taken, recorded, then
    // pushed).
    let kept = ticks_in_order(&recorded);
    assert!(kept >= printed, "{kept} recorded, {printed} printed");
}

//! The `host` binary and its cargo child, end to end: cargo runs from the plugin's directory
//! (its `.cargo/config.toml` applies, its target dir there is never watched), a signal ends
//! the host together with its build, and a slow build says what it is waiting for.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use std::sync::Arc;

use host::cargo::Builder;
use host::events::{ChannelSink, EventSink, HostEvent, Sink};
use host::session::Session;
use host::testkit::{BUILD_TIMEOUT, Fixture, fixture_target_dir};

/// A `host` process whose output lines a test reads as they come.
struct HostProc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl HostProc {
    /// Starts `host --plugin <dir> <args>`; stderr lines arrive prefixed with `stderr: `.
    fn start(dir: &Path, args: &[&str], configure: impl FnOnce(&mut Command)) -> HostProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_host"));
        cmd.arg("--plugin")
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("start the host binary");
        let (tx, rx) = channel();
        let err_tx = tx.clone();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(format!("stderr: {line}"));
            }
        });
        HostProc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The next line satisfying `pred`, within `timeout`.
    fn wait_line(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "no {what} within {timeout:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Every line that arrives within `window` satisfying `pred`.
    fn lines_within(&mut self, window: Duration, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut hits = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line.clone());
            if pred(&line) {
                hits.push(line);
            }
        }
        hits
    }

    /// Sends `signal` to the host (not to its process group).
    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) takes plain integers; the child has not been reaped (we hold it),
        // so the pid is still the host's.
        let r = unsafe { libc::kill(pid, signal) };
        assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the host to exit; its exit code.
    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the host") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the host did not exit within {timeout:?}; output:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for HostProc {
    fn drop(&mut self) {
        // SIGTERM first, so a host that is building stops its cargo too (a failed test must
        // not leave a build holding the shared fixture target dir's lock); then SIGKILL.
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a process runs (a zombie waiting for its parent counts as gone).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; whether it held.
fn eventually(timeout: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A build script that records its pid in `build-script.pid` and then blocks until the file
/// `gate` appears in the crate (for two minutes at most, so a leaked one ends by itself).
const GATED_BUILD_RS: &str = r#"
use std::time::{Duration, Instant};
fn main() {
    let dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    std::fs::write(dir.join("build-script.pid.tmp"), std::process::id().to_string()).unwrap();
    std::fs::rename(dir.join("build-script.pid.tmp"), dir.join("build-script.pid")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !dir.join("gate").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("cargo:rerun-if-changed=build.rs");
}
"#;

const ONE_VALUE: &str = r#"
use plugin_api::prelude::*;
fn register(p: &mut Plugin) {
    p.pipeline("one", range(0, 1)).log();
}
plugin_api::export_plugin!(register);
"#;

/// A fixture whose build blocks in its build script until [`GATED_BUILD_RS`]'s gate opens.
fn gated_fixture(name: &str) -> Fixture {
    let fixture = Fixture::new(name, ONE_VALUE);
    fixture.write("build.rs", GATED_BUILD_RS);
    fixture
}

/// The pid the gated build script wrote, once it runs.
fn build_script_pid(fixture: &Fixture) -> u32 {
    let file = fixture.path().join("build-script.pid");
    assert!(
        eventually(BUILD_TIMEOUT, || file.exists()),
        "the build script never started"
    );
    std::fs::read_to_string(&file)
        .expect("read the pid")
        .trim()
        .parse()
        .expect("a pid")
}

fn fixture_target(cmd: &mut Command) {
    cmd.env("CARGO_TARGET_DIR", fixture_target_dir());
}

/// SIGINT or SIGTERM sent to the host's pid alone (not to a process group) during a build
/// ends the host with 128 + the signal, and its cargo child and the build script with it.
#[test]
fn a_signal_ends_the_host_and_its_build() {
    for (signal, name) in [(libc::SIGTERM, "sigterm"), (libc::SIGINT, "sigint")] {
        let fixture = gated_fixture(&format!("signal_{name}"));
        let mut host = HostProc::start(fixture.path(), &[], fixture_target);
        let pid = build_script_pid(&fixture);
        assert!(running(pid), "{name}: the build script runs");
        host.signal(signal);
        let code = host.wait_exit(Duration::from_secs(30));
        assert_eq!(code, Some(128 + signal), "{name}: {:?}", host.seen);
        let gone = eventually(Duration::from_secs(10), || !running(pid));
        if !gone {
            // End the leaked build script (and so its cargo) before failing.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        assert!(gone, "{name}: the build script {pid} outlived the host");
    }
}

/// The other ways out end the build too: a session stopped during a build (the library's
/// way, and what an error on the host's side does), and a panic that unwinds through a build
/// (here from the sink that receives its progress).
#[test]
fn a_stopped_session_or_a_panic_ends_the_build() {
    struct PanicOnProgress;
    impl EventSink for PanicOnProgress {
        fn event(&self, event: HostEvent) {
            if matches!(event, HostEvent::Building { .. }) {
                panic!("a panic during a build");
            }
        }
    }
    type WayOut = fn(&Fixture) -> u32;
    let cases: [(&str, WayOut); 2] = [
        ("stopped_session", |fixture| {
            let (tx, _rx) = channel();
            let session = Session::start(&fixture.options(), Arc::new(ChannelSink(tx)))
                .expect("start a session");
            let pid = build_script_pid(fixture);
            assert!(running(pid));
            let stopped = Instant::now();
            session.stop();
            assert!(
                stopped.elapsed() < Duration::from_secs(30),
                "stop waited for the build"
            );
            pid
        }),
        ("panic_in_build", |fixture| {
            let config = fixture.build_config(false).expect("a build config");
            let sink: Sink = Arc::new(PanicOnProgress);
            let (done, ended) = channel();
            std::thread::spawn(move || {
                // The builder is dropped with the panic: nothing of it is seen afterwards.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    Builder::new(config, Some(sink)).build().is_ok()
                }));
                let _ = done.send(outcome.is_err());
            });
            let pid = build_script_pid(fixture);
            // The panic comes at the first progress line, a second in; unwinding must not
            // wait for the build script (it waits two minutes for its gate).
            let panicked = ended.recv_timeout(Duration::from_secs(30));
            assert_eq!(panicked, Ok(true), "the build panicked and ended at once");
            pid
        }),
    ];
    for (name, way_out) in cases {
        let fixture = gated_fixture(name);
        let pid = way_out(&fixture);
        let gone = eventually(Duration::from_secs(10), || !running(pid));
        if !gone {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        assert!(gone, "{name}: the build script {pid} outlived the build");
    }
}

/// A build that takes more than a second says so, with cargo's status line: here a second
/// host blocked on the first one's build directory lock. `--json` output stays clean.
#[test]
fn a_slow_build_says_what_it_waits_for_and_json_stays_clean() {
    let fixture = gated_fixture("slow_build");
    let mut json = HostProc::start(fixture.path(), &["--json"], fixture_target);
    build_script_pid(&fixture);
    let mut human = HostProc::start(fixture.path(), &[], fixture_target);
    // The line is due one second after the host starts; a minute allows for a loaded machine.
    let line = human.wait_line("a progress line", Duration::from_secs(60), |l| {
        l.starts_with("[hmr] building (")
    });
    assert!(
        line.contains("Blocking waiting for file lock"),
        "the second host waits for the first's lock: {line}"
    );
    std::fs::write(fixture.path().join("gate"), "").expect("open the gate");
    human.wait_line("loaded", BUILD_TIMEOUT, |l| {
        l.starts_with("[hmr] loaded v1")
    });
    json.wait_line("loaded", BUILD_TIMEOUT, |l| {
        l.contains(r#""event":"loaded""#)
    });
    json.wait_line("the emission", BUILD_TIMEOUT, |l| {
        l.contains(r#""event":"emission""#)
    });
    json.signal(libc::SIGTERM);
    json.wait_exit(Duration::from_secs(30));
    json.lines_within(Duration::ZERO, |_| true);
    for line in json.seen.iter().filter(|l| !l.starts_with("stderr: ")) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            ["loaded", "emission", "completed"].contains(&v["event"].as_str().unwrap_or("")),
            "{line}"
        );
    }
}

/// The plugin's `.cargo/config.toml` applies although the host runs elsewhere: its rustflags
/// reach the code, and its target dir (inside the plugin, where a build script writes into
/// `OUT_DIR`) is never watched, so one edit is one reload and no build follows on its own.
#[test]
fn the_plugins_cargo_config_applies_and_its_target_dir_is_not_watched() {
    let fixture = Fixture::new(
        "own_config",
        r#"
use plugin_api::prelude::*;
include!(concat!(env!("OUT_DIR"), "/generated.rs"));
const STEP: u64 = 1;
fn register(p: &mut Plugin) {
    p.pipeline("config", range(0, 1))
        .map(|_n: u64| if cfg!(hmr_from_config) { 1000 } else { 0 } + generated() + STEP)
        .log();
}
plugin_api::export_plugin!(register);
"#,
    );
    fixture.write(
        "build.rs",
        r#"
fn main() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::write(out.join("generated.rs"), "fn generated() -> u64 { 10 }\n").unwrap();
}
"#,
    );
    fixture.write(
        ".cargo/config.toml",
        "[build]\ntarget-dir = \"build-out\"\nrustflags = [\"--cfg\", \"hmr_from_config\"]\n",
    );
    let mut host = HostProc::start(fixture.path(), &[], |cmd| {
        // Nothing from the test's environment may override the plugin's configuration.
        for var in [
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET_DIR",
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
        ] {
            cmd.env_remove(var);
        }
        // Started outside the plugin's directory.
        cmd.current_dir(std::env::temp_dir());
    });
    host.wait_line("loaded", BUILD_TIMEOUT, |l| {
        l.starts_with("[hmr] loaded v1")
    });
    host.wait_line("the first value", BUILD_TIMEOUT, |l| {
        l.starts_with("config v1: ")
    });
    assert!(
        host.seen.iter().any(|l| l == "config v1: 1011"),
        "rustflags from the plugin's config apply: {:?}",
        host.seen
    );
    let out: PathBuf = fixture.path().join("build-out");
    assert!(
        out.join("debug").is_dir(),
        "cargo built into the config's target dir"
    );

    fixture.edit("src/lib.rs", "STEP: u64 = 1;", "STEP: u64 = 2;");
    host.wait_line("the reload", BUILD_TIMEOUT, |l| {
        l.starts_with("[hmr] reload v2")
    });
    host.wait_line("the new value", BUILD_TIMEOUT, |l| l == "config v2: 1012");
    // A negative wait, bounded: a host that watched its target dir would start the next
    // build within a debounce (30 ms) of this one's end, as the build wrote OUT_DIR and
    // the target dir; three seconds is ten builds' time on this machine.
    let builds = host.lines_within(Duration::from_secs(3), |l| {
        [
            "[hmr] reload",
            "[hmr] no change",
            "[hmr] build failed",
            "[hmr] load failed",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    });
    assert!(builds.is_empty(), "builds nobody asked for: {builds:?}");
}

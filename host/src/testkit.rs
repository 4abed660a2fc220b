//! A test kit for plugin authors and for the host's own tests: write a fixture plugin crate
//! into a temp dir, start a host session on it, collect its events, edit a file, and wait
//! for the next reload or emission with a timeout (never a fixed sleep).
//!
//! ```no_run
//! use std::time::Duration;
//! use host::testkit::{Fixture, Harness};
//!
//! let fixture = Fixture::new("doc_example", r#"
//!     use plugin_api::prelude::*;
//!     fn register(p: &mut Plugin) {
//!         p.pipeline("ticks", interval_ms(10)).map(|n: u64| n + 1).log();
//!     }
//!     plugin_api::export_plugin!(register);
//! "#);
//! let mut host = Harness::start(&fixture.options())?;
//! host.wait_loaded()?;
//! host.wait_emission("ticks", |v| v == "3")?;
//! fixture.edit("src/lib.rs", "n + 1", "n + 100");
//! host.wait_reload()?;
//! host.wait_emission("ticks", |v| v.parse::<u64>().unwrap() > 100)?;
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Fixture crates are built into one shared target directory ([`fixture_target_dir`]), so
//! `plugin-api` is compiled once per test run and each fixture costs only its own crate.
//! Each fixture gets a unique package name so that fixtures built side by side never
//! overwrite each other's library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::events::{ChannelSink, HostEvent, TrackInfo};
use crate::reloader::Reloader;
use crate::session::{Options, Session};

/// How long a wait for a build-dependent event may take before a test fails. Generous: the
/// first fixture of a run compiles `plugin-api`, and tests build side by side on 2 cores.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(240);

/// How long a wait for an emission of an already running pipeline may take.
pub const EMISSION_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root (the directory holding `host/` and `plugin-api/`).
pub fn workspace_root() -> PathBuf {
    let host = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    host.parent().map(Path::to_owned).unwrap_or(host)
}

/// Where fixture plugins are built: `$HMR_FIXTURE_TARGET`, else `target/hmr-fixtures` in
/// the workspace (or under `$CARGO_TARGET_DIR` when that is set).
pub fn fixture_target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HMR_FIXTURE_TARGET") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("hmr-fixtures")
}

/// Runs `cmd` to its end and returns its output, or fails once `timeout` has passed (and
/// kills it), so a hung child fails a test instead of hanging the run.
pub fn output_within(
    mut cmd: std::process::Command,
    timeout: Duration,
) -> anyhow::Result<std::process::Output> {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            bail!("{cmd:?} did not finish within {timeout:?}")
        }
    }
}

/// Resident memory of this process in bytes, from `/proc/self/status` (0 where there is none).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A directory removed when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl TempDir {
    /// A new, empty directory under the system temp dir, named after `label`.
    pub fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "hmr-{label}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A plugin crate in a temp dir, depending on this workspace's `plugin-api`.
#[derive(Debug)]
pub struct Fixture {
    dir: TempDir,
    package: String,
}

impl Fixture {
    /// Writes a plugin crate whose `src/lib.rs` is `lib_rs`. `name` must be unique among
    /// the fixtures that may build at the same time (use the test's name).
    pub fn new(name: &str, lib_rs: &str) -> Fixture {
        let package = format!(
            "hmrfx_{}",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        let dir = TempDir::new(name);
        let fixture = Fixture { dir, package };
        fixture.write("Cargo.toml", &fixture.manifest());
        fixture.write("src/lib.rs", lib_rs);
        fixture
    }

    fn manifest(&self) -> String {
        let api = workspace_root().join("plugin-api");
        format!(
            r#"[package]
name = "{}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
plugin-api = {{ path = {:?} }}

# Not part of any enclosing workspace.
[workspace]

# What the README recommends for plugin crates: faster links, smaller libraries.
[profile.dev]
debug = false
"#,
            self.package,
            api.display().to_string()
        )
    }

    /// The crate's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `content` to `rel` (creating directories) the way careful editors save: into a
    /// hidden temp file beside it, renamed into place, so the host never sees a half-written
    /// file (a truncate-then-write could be built in between on a loaded machine).
    pub fn write(&self, rel: &str, content: &str) {
        let path = self.path().join(rel);
        let parent = path.parent().unwrap_or(self.path());
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let temp = parent.join(format!(".{name}.hmr-tmp"));
        std::fs::write(&temp, content)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", temp.display()));
        std::fs::rename(&temp, &path).unwrap_or_else(|e| {
            panic!(
                "cannot rename {} to {}: {e}",
                temp.display(),
                path.display()
            )
        });
    }

    /// Reads `rel`.
    pub fn read(&self, rel: &str) -> String {
        let path = self.path().join(rel);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// Replaces the one occurrence of `from` in `rel` by `to`; panics when `from` does not
    /// occur exactly once (a test whose edit does nothing must not pass).
    pub fn edit(&self, rel: &str, from: &str, to: &str) {
        let text = self.read(rel);
        let n = text.matches(from).count();
        assert_eq!(
            n, 1,
            "{rel} holds {n} occurrences of {from:?}, expected one"
        );
        self.write(rel, &text.replacen(from, to, 1));
    }

    /// Options for a host on this fixture, building into [`fixture_target_dir`].
    pub fn options(&self) -> Options {
        let mut o = Options::new(self.path());
        o.target_dir = Some(fixture_target_dir());
        o
    }

    /// [`Fixture::options`] with a virtual clock (`options.clock`), and the handle that
    /// moves it.
    pub fn virtual_options(&self) -> (Options, std::sync::Arc<crate::clock::VirtualClock>) {
        let (clock, time) = crate::clock::Clock::virtual_clock();
        let mut o = self.options();
        o.clock = clock;
        (o, time)
    }

    /// How to build this fixture directly with [`crate::cargo::build`] (tests that load
    /// libraries themselves), into [`fixture_target_dir`].
    pub fn build_config(&self, release: bool) -> anyhow::Result<crate::cargo::BuildConfig> {
        Ok(crate::cargo::BuildConfig {
            manifest: crate::reloader::plugin_manifest(self.path())?,
            release,
            target_dir: Some(fixture_target_dir()),
        })
    }
}

/// A host session whose events a test reads.
#[derive(Debug)]
pub struct Harness {
    session: Option<Session>,
    rx: Receiver<HostEvent>,
    history: Vec<HostEvent>,
}

impl Harness {
    /// Starts a watching session with `options`.
    pub fn start(options: &Options) -> anyhow::Result<Harness> {
        let (tx, rx) = channel();
        let session = Session::start(options, Arc::new(ChannelSink(tx)))?;
        Ok(Harness {
            session: Some(session),
            rx,
            history: Vec::new(),
        })
    }

    /// Every event received so far, in order.
    pub fn history(&self) -> &[HostEvent] {
        &self.history
    }

    /// The next event, if one arrives within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Option<HostEvent> {
        match self.rx.recv_timeout(timeout) {
            Ok(e) => {
                self.history.push(e.clone());
                Some(e)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Reads events until one satisfies `pred`; fails after `timeout`, naming `what` and
    /// the last events seen.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&HostEvent) -> bool,
    ) -> anyhow::Result<HostEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let tail: Vec<String> = self
                    .history
                    .iter()
                    .rev()
                    .take(8)
                    .map(|e| format!("{e:?}"))
                    .collect();
                bail!(
                    "timed out after {timeout:?} waiting for {what}; last events (newest first):\n{}",
                    tail.join("\n")
                );
            }
            if let Some(e) = self.next(left)
                && pred(&e)
            {
                return Ok(e);
            }
        }
    }

    /// Waits for the first `loaded` event; fails on a build or load failure.
    pub fn wait_loaded(&mut self) -> anyhow::Result<(u64, Vec<TrackInfo>)> {
        match self.wait_for("loaded", BUILD_TIMEOUT, |e| {
            matches!(
                e,
                HostEvent::Loaded { .. }
                    | HostEvent::BuildFailed { .. }
                    | HostEvent::LoadFailed { .. }
            )
        })? {
            HostEvent::Loaded {
                version, tracks, ..
            } => Ok((version, tracks)),
            other => bail!("the first load failed: {other:?}"),
        }
    }

    /// Waits for the next outcome of a build: `reload`, `build-failed`, `load-failed`, or
    /// `unchanged` (the library built is the one running; not a `--json` event).
    pub fn wait_outcome(&mut self) -> anyhow::Result<HostEvent> {
        self.wait_for("a reload outcome", BUILD_TIMEOUT, |e| {
            matches!(
                e,
                HostEvent::Reload { .. }
                    | HostEvent::BuildFailed { .. }
                    | HostEvent::LoadFailed { .. }
                    | HostEvent::Unchanged { .. }
            )
        })
    }

    /// Waits for the next `reload` event; fails on a build or load failure. A build of the
    /// library already running (`unchanged`, say a repeated build of the same save) is not an
    /// outcome here: the wait goes on.
    pub fn wait_reload(&mut self) -> anyhow::Result<HostEvent> {
        match self.wait_for("a reload", BUILD_TIMEOUT, |e| {
            matches!(
                e,
                HostEvent::Reload { .. }
                    | HostEvent::BuildFailed { .. }
                    | HostEvent::LoadFailed { .. }
            )
        })? {
            e @ HostEvent::Reload { .. } => Ok(e),
            other => bail!("expected a reload, got {other:?}"),
        }
    }

    /// Waits for an emission of `pipeline` whose value satisfies `pred`; returns its version
    /// and value.
    pub fn wait_emission(
        &mut self,
        pipeline: &str,
        mut pred: impl FnMut(&str) -> bool,
    ) -> anyhow::Result<(u64, String)> {
        let what = format!("an emission of {pipeline}");
        match self.wait_for(&what, EMISSION_TIMEOUT, |e| {
            matches!(e, HostEvent::Emission { pipeline: p, value, .. } if p == pipeline && pred(value))
        })? {
            HostEvent::Emission { version, value, .. } => Ok((version, value)),
            _ => unreachable!("wait_for returns a matching event"),
        }
    }

    /// The first emission of `pipeline` produced by plugin `version`, from the events seen so
    /// far or, if there is none yet, the next one; returns its value.
    pub fn wait_emission_from(&mut self, pipeline: &str, version: u64) -> anyhow::Result<String> {
        let seen = self.history.iter().find_map(|e| match e {
            HostEvent::Emission {
                pipeline: p,
                version: v,
                value,
            } if p == pipeline && *v == version => Some(value.clone()),
            _ => None,
        });
        if let Some(value) = seen {
            return Ok(value);
        }
        let what = format!("an emission of {pipeline} from v{version}");
        match self.wait_for(&what, EMISSION_TIMEOUT, |e| {
            matches!(e, HostEvent::Emission { pipeline: p, version: v, .. } if p == pipeline && *v == version)
        })? {
            HostEvent::Emission { value, .. } => Ok(value),
            _ => unreachable!("wait_for returns a matching event"),
        }
    }

    /// Takes every event sent so far into [`Harness::history`] without waiting (after a
    /// virtual clock's `settle`, everything it ran has been sent).
    pub fn drain(&mut self) {
        self.history.extend(self.rx.try_iter());
    }

    /// The `error` events received so far.
    pub fn errors(&self) -> Vec<&HostEvent> {
        self.history
            .iter()
            .filter(|e| matches!(e, HostEvent::Error { .. }))
            .collect()
    }

    /// Emissions of `pipeline` received so far, as (version, value).
    pub fn emissions(&self, pipeline: &str) -> Vec<(u64, String)> {
        self.history
            .iter()
            .filter_map(|e| match e {
                HostEvent::Emission {
                    pipeline: p,
                    version,
                    value,
                } if p == pipeline => Some((*version, value.clone())),
                _ => None,
            })
            .collect()
    }

    /// Stops the session, then moves every event it sent into [`Harness::history`];
    /// returns the reloader for inspection. A panic of the reloader's thread goes on here
    /// (and when a harness that was not stopped is dropped), so it fails the test.
    pub fn stop(&mut self) -> Option<Reloader> {
        let reloader = self.session.take().and_then(Session::stop);
        self.history.extend(self.rx.try_iter());
        reloader
    }
}

/// What a replay ([`replay`]) did: every event it reported, and its warnings.
#[derive(Debug)]
pub struct Replayed {
    /// Whether the plugin was built and loaded.
    pub loaded: bool,
    /// Every event, in order.
    pub events: Vec<HostEvent>,
    /// The warnings (a last line cut short, a recording of another plugin, recorded
    /// pipelines the code lacks), as the binary prints them after `warning: `.
    pub warnings: Vec<String>,
}

impl Replayed {
    /// The values `pipeline` logged, in order.
    pub fn emissions(&self, pipeline: &str) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                HostEvent::Emission {
                    pipeline: p, value, ..
                } if p == pipeline => Some(value.clone()),
                _ => None,
            })
            .collect()
    }

    /// The notices of `pipeline`.
    pub fn notices(&self, pipeline: &str) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                HostEvent::Notice {
                    pipeline: p,
                    message,
                } if p == pipeline => Some(message.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Replays the recording `file` (`--record`) on the plugin of `options`, as
/// `host --replay-from FILE` does ([`crate::session::replay_from`]), and returns what it
/// reported. A file that is not a recording is an error.
pub fn replay(options: &Options, file: &Path) -> anyhow::Result<Replayed> {
    let recorded = crate::record::read(file)?;
    let mut warnings = recorded.warnings.clone();
    let (tx, rx) = channel();
    let loaded =
        crate::session::replay_from(options, &recorded, Arc::new(ChannelSink(tx)), &mut |w| {
            warnings.push(w)
        })?;
    Ok(Replayed {
        loaded,
        events: rx.try_iter().collect(),
        warnings,
    })
}

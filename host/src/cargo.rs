//! Building a plugin crate with cargo and finding the library it produced.
//!
//! 1. **Ask cargo about the crate**: `cargo metadata --format-version 1 --no-deps` says where
//!    the target directory is (the watcher never watches it) and which crate types the
//!    plugin's targets have ([`plugin_manifest`] refuses a crate without a `cdylib`, and names
//!    the `cdylib` members of a virtual workspace).
//! 2. **Build**: `cargo build --lib --message-format=json --manifest-path <plugin>/Cargo.toml`,
//!    run *from the plugin's directory*, so the plugin's own `.cargo/config.toml` (rustflags,
//!    target-dir, ...) applies as it would to `cargo build` there. Cargo runs in a process
//!    group of its own; the group (cargo, rustc, build scripts) is killed when the build is
//!    stopped ([`Canceller`], [`stop_all_builds`]) or abandoned (an unwinding panic).
//! 3. **Read its messages**: the `compiler-artifact` of the plugin package names the `cdylib`
//!    file (so `CARGO_TARGET_DIR`, workspaces and profiles are cargo's business, not ours) and
//!    says whether cargo compiled it or found it `fresh`; the first `compiler-message` of level
//!    `error` is what a failed build reports, as cargo rendered it. Cargo's status lines on
//!    stderr (`Compiling`, `Blocking waiting for file lock`) become progress once a build has
//!    taken [`SLOW_BUILD`].
//! 4. **Read its dep-info**: `<library>.d` lists every file the build read ([`depinfo`]); the
//!    files outside the target directory are the build's inputs, what the watcher watches.
//! 5. **Distrust "fresh"**: cargo decides freshness by modification times. A file restored
//!    with an older time (`cp -p`, `mv` of an older file) leaves cargo's library as it was,
//!    though the source differs. [`Builder`] remembers a hash of every input as of the last
//!    build cargo compiled; when cargo calls the library fresh but an input's content differs,
//!    it sets the modification time of the differing files to now and builds once more.

pub mod depinfo;
mod group;
mod meta;
mod sources;

use group::ChildGuard;
pub use group::{Canceller, stop_all_builds};
pub use meta::{Metadata, Package, PackageTarget, check_plugin, metadata, plugin_manifest};
pub use sources::{Sources, content_hash};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::events::{HostEvent, Sink};

/// How long a build runs before the person is told what it is doing (`building ...`).
pub const SLOW_BUILD: Duration = Duration::from_secs(1);

/// How to build a plugin.
#[derive(Clone, Debug)]
pub struct BuildConfig {
    /// The plugin's `Cargo.toml`.
    pub manifest: PathBuf,
    /// `--release`.
    pub release: bool,
    /// A target directory for this build (`CARGO_TARGET_DIR`); `None` leaves it to cargo and
    /// the environment.
    pub target_dir: Option<PathBuf>,
}

/// A finished build.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// The `cdylib` cargo wrote.
    pub library: PathBuf,
    /// How long cargo ran.
    pub elapsed: Duration,
    /// Cargo found the library up to date and compiled nothing for it.
    pub fresh: bool,
    /// The files the build read, from cargo's dep-info (empty when there is none).
    pub inputs: Vec<PathBuf>,
}

/// Why a build produced no library.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Cargo could not be started.
    #[error("cannot run {cargo}: {source}")]
    Spawn {
        /// The cargo binary.
        cargo: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The compiler rejected the code: the first error, as cargo rendered it.
    #[error("{rendered}")]
    Compile {
        /// The rendered diagnostic.
        rendered: String,
    },
    /// Cargo failed without a compiler error (a bad manifest, a missing dependency).
    #[error("cargo build of {manifest} failed: {stderr}")]
    Cargo {
        /// The manifest.
        manifest: PathBuf,
        /// The end of cargo's stderr.
        stderr: String,
    },
    /// The build succeeded but produced no `cdylib`.
    #[error("cargo built {manifest} but produced no cdylib: add `[lib] crate-type = [\"cdylib\"]`")]
    NoLibrary {
        /// The manifest.
        manifest: PathBuf,
    },
    /// The build was stopped (the host is shutting down); cargo and its children were killed.
    #[error("the build was stopped: the host is shutting down")]
    Stopped,
}

#[derive(Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    manifest_path: Option<PathBuf>,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    filenames: Vec<PathBuf>,
    #[serde(default)]
    fresh: bool,
    #[serde(default)]
    message: Option<Diagnostic>,
}

#[derive(Deserialize)]
struct Target {
    #[serde(default)]
    kind: Vec<String>,
}

#[derive(Deserialize)]
struct Diagnostic {
    #[serde(default)]
    level: String,
    #[serde(default)]
    rendered: Option<String>,
}

/// The cargo binary: the one running us when we were started by `cargo run`, else `cargo`.
pub fn cargo_binary() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// `cargo <sub> --manifest-path <manifest>` run from the plugin's directory, with the target
/// directory of `config`. Paths are made absolute first: cargo runs elsewhere than we do.
fn cargo_command(config: &BuildConfig, sub: &str) -> Command {
    let manifest = std::path::absolute(&config.manifest).unwrap_or(config.manifest.clone());
    let mut cmd = Command::new(cargo_binary());
    cmd.arg(sub).arg("--manifest-path").arg(&manifest);
    if let Some(dir) = manifest.parent() {
        cmd.current_dir(dir);
    }
    let target = config
        .target_dir
        .clone()
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from));
    if let Some(dir) = target {
        // A relative CARGO_TARGET_DIR is relative to where the host was started.
        cmd.env("CARGO_TARGET_DIR", std::path::absolute(&dir).unwrap_or(dir));
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Builds the plugin described by `config` once: no progress, no stale-time check (tests and
/// benchmarks that load libraries themselves; the dev loop uses [`Builder`]).
pub fn build(config: &BuildConfig) -> Result<Artifact, BuildError> {
    run(config, &Canceller::new(), None, &mut |_, _| {})
}

/// What the reader threads hand back.
enum Line {
    /// A cargo status line (`Compiling ...`, `Blocking waiting for file lock ...`).
    Status(String),
    /// Stdout ended: what the JSON messages said.
    Messages(Parsed),
    /// Stderr ended: its last non-empty lines.
    Stderr(Vec<String>),
}

#[derive(Default)]
struct Parsed {
    library: Option<PathBuf>,
    fresh: bool,
    first_error: Option<String>,
}

/// Whether a line of cargo's stderr is one of its status lines worth showing a person.
pub fn is_status_line(line: &str) -> bool {
    let word = line.split_whitespace().next().unwrap_or("");
    matches!(
        word,
        "Blocking" | "Compiling" | "Updating" | "Downloading" | "Downloaded" | "Locking" | "Adding"
    )
}

/// One `cargo build`. `progress(elapsed, status)` is called once the build has taken
/// [`SLOW_BUILD`] (with cargo's latest status line) and then for each new status line.
fn run(
    config: &BuildConfig,
    cancel: &Canceller,
    target_dir: Option<&Path>,
    progress: &mut dyn FnMut(Duration, &str),
) -> Result<Artifact, BuildError> {
    let mut cmd = cargo_command(config, "build");
    cmd.arg("--lib")
        .arg("--message-format=json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if config.release {
        cmd.arg("--release");
    }
    let started = Instant::now();
    let mut child = cancel.spawn(&mut cmd)?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let guard = ChildGuard {
        child: Some(child),
        cancel,
    };
    let (tx, rx) = channel();
    let manifest = config.manifest.clone();
    let out_tx = tx.clone();
    let readers = [
        std::thread::Builder::new()
            .name("hmr-cargo-out".to_owned())
            .spawn(move || {
                let parsed = stdout.map(|s| parse_messages(s, &manifest));
                let _ = out_tx.send(Line::Messages(parsed.unwrap_or_default()));
            }),
        std::thread::Builder::new()
            .name("hmr-cargo-err".to_owned())
            .spawn(move || {
                let mut tail = Vec::new();
                if let Some(s) = stderr {
                    for line in BufReader::new(s).lines().map_while(Result::ok) {
                        let line = line.trim().to_owned();
                        if is_status_line(&line) {
                            let _ = tx.send(Line::Status(line.clone()));
                        }
                        if !line.is_empty() {
                            tail.push(line);
                            if tail.len() > 6 {
                                tail.remove(0);
                            }
                        }
                    }
                }
                let _ = tx.send(Line::Stderr(tail));
            }),
    ];
    for r in &readers {
        if let Err(e) = r {
            return Err(BuildError::Spawn {
                cargo: cargo_binary(),
                source: std::io::Error::other(format!("cannot start a reader thread: {e}")),
            });
        }
    }
    let mut parsed = None;
    let mut tail = None;
    let mut latest: Option<String> = None;
    let mut announced = false;
    while parsed.is_none() || tail.is_none() {
        let line = if announced {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(SLOW_BUILD.saturating_sub(started.elapsed()))
        };
        match line {
            Ok(Line::Status(s)) => {
                if announced {
                    progress(started.elapsed(), &s);
                }
                latest = Some(s);
            }
            Ok(Line::Messages(p)) => parsed = Some(p),
            Ok(Line::Stderr(t)) => tail = Some(t),
            Err(RecvTimeoutError::Timeout) => {
                announced = true;
                let status = latest.as_deref().unwrap_or("cargo has printed nothing yet");
                progress(started.elapsed(), status);
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = guard.wait().map_err(|source| BuildError::Spawn {
        cargo: cargo_binary(),
        source,
    })?;
    let elapsed = started.elapsed();
    if cancel.is_stopped() {
        return Err(BuildError::Stopped);
    }
    let parsed = parsed.unwrap_or_default();
    if !status.success() {
        if let Some(rendered) = parsed.first_error {
            return Err(BuildError::Compile {
                rendered: rendered.trim_end().to_owned(),
            });
        }
        return Err(BuildError::Cargo {
            manifest: config.manifest.clone(),
            stderr: tail.unwrap_or_default().join("\n"),
        });
    }
    let Some(library) = parsed.library else {
        return Err(BuildError::NoLibrary {
            manifest: config.manifest.clone(),
        });
    };
    let inputs = read_inputs(&library, target_dir);
    Ok(Artifact {
        library,
        elapsed,
        fresh: parsed.fresh,
        inputs,
    })
}

fn parse_messages(stdout: impl std::io::Read, manifest: &Path) -> Parsed {
    let mut parsed = Parsed::default();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let Ok(msg) = serde_json::from_str::<Message>(&line) else {
            continue;
        };
        match msg.reason.as_str() {
            "compiler-artifact" => {
                let is_plugin = msg
                    .manifest_path
                    .as_deref()
                    .is_some_and(|m| same_file(m, manifest));
                let is_cdylib = msg
                    .target
                    .as_ref()
                    .is_some_and(|t| t.kind.iter().any(|k| k == "cdylib"));
                if is_plugin && is_cdylib {
                    parsed.library = msg.filenames.into_iter().find(|f| is_dylib(f));
                    parsed.fresh = msg.fresh;
                }
            }
            "compiler-message" if parsed.first_error.is_none() => {
                if let Some(d) = msg.message.filter(|d| d.level == "error") {
                    parsed.first_error = d.rendered;
                }
            }
            _ => {}
        }
    }
    parsed
}

/// The inputs listed in `library`'s dep-info, without those under `target_dir` (generated
/// files in `OUT_DIR`); empty when there is no dep-info.
fn read_inputs(library: &Path, target_dir: Option<&Path>) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(depinfo::path_of(library)) else {
        return Vec::new();
    };
    let target = target_dir.map(|t| t.canonicalize().unwrap_or_else(|_| t.to_owned()));
    depinfo::inputs(&text)
        .into_iter()
        .map(|p| p.canonicalize().unwrap_or(p))
        .filter(|p| target.as_ref().is_none_or(|t| !p.starts_with(t)))
        .collect()
}

fn stderr_tail(stderr: &str) -> String {
    let tail: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(6)
        .collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn is_dylib(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("so" | "dylib" | "dll")
    )
}

/// Builds one plugin over and over: the dev loop's side of cargo. Knows the target
/// directory, reports slow builds to the person, can be stopped from another thread
/// ([`Builder::canceller`]), and does not believe a "fresh" library built from sources
/// that have changed since cargo last compiled it (step 5 of the module doc).
pub struct Builder {
    config: BuildConfig,
    sink: Option<Sink>,
    meta: Option<Metadata>,
    cancel: Canceller,
    inputs: Vec<PathBuf>,
    /// The inputs' content as of the last build cargo compiled (not fresh).
    compiled_from: Option<Sources>,
    /// The inputs' content as the last successful build read them.
    last_read: Option<Sources>,
    forced: usize,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// A builder for `config`; slow builds are reported to `sink` as
    /// [`HostEvent::Building`].
    pub fn new(config: BuildConfig, sink: Option<Sink>) -> Builder {
        Builder {
            config,
            sink,
            meta: None,
            cancel: Canceller::new(),
            inputs: Vec::new(),
            compiled_from: None,
            last_read: None,
            forced: 0,
        }
    }

    /// What is built.
    pub fn config(&self) -> &BuildConfig {
        &self.config
    }

    /// The plugin crate's directory.
    pub fn plugin_dir(&self) -> &Path {
        self.config.manifest.parent().unwrap_or(Path::new("."))
    }

    /// What `cargo metadata` said, asking it if it has not answered yet (it fails on a
    /// manifest it cannot read; the next call asks again).
    pub fn metadata(&mut self) -> Option<&Metadata> {
        if self.meta.is_none() {
            self.meta = metadata(&self.config).ok();
        }
        self.meta.as_ref()
    }

    /// The target directory cargo builds into, once known.
    pub fn target_dir(&mut self) -> Option<PathBuf> {
        self.metadata().map(|m| m.target_dir.clone())
    }

    /// Stops this builder's builds from another thread.
    pub fn canceller(&self) -> Canceller {
        self.cancel.clone()
    }

    /// The files the last successful build read (outside the target directory).
    pub fn inputs(&self) -> &[PathBuf] {
        &self.inputs
    }

    /// The inputs of the last build, if it succeeded, whose content changed since it read
    /// them: a save made between the build and the moment its inputs are watched (the watcher
    /// learns them from the build) would otherwise be missed. Empty after a failed build.
    pub fn inputs_changed_since_build(&self) -> Vec<PathBuf> {
        match &self.last_read {
            Some(read) => Sources::read(&self.inputs, Some(read)).changed_since(read),
            None => Vec::new(),
        }
    }

    /// How many times a "fresh" library was not believed and the build forced.
    pub fn forced_rebuilds(&self) -> usize {
        self.forced
    }

    /// Builds the plugin (step 2 to 5 of the module doc).
    pub fn build(&mut self) -> Result<Artifact, BuildError> {
        // Set again only when this build succeeds: after a failed build, nothing is known to
        // have been read (and the watches stay those of the last good one).
        self.last_read = None;
        let target = self.target_dir();
        let sink = self.sink.clone();
        let mut progress = |elapsed: Duration, status: &str| {
            if let Some(sink) = &sink {
                sink.event(HostEvent::Building {
                    elapsed_ms: elapsed.as_millis() as u64,
                    status: status.to_owned(),
                });
            }
        };
        let mut artifact = run(&self.config, &self.cancel, target.as_deref(), &mut progress)?;
        let mut sources = Sources::read(&artifact.inputs, self.compiled_from.as_ref());
        if artifact.fresh
            && let Some(before) = &self.compiled_from
        {
            let changed = sources.changed_since(before);
            if !changed.is_empty() {
                // Cargo judged by modification times: make the differing files newer than
                // the library, then cargo compiles them.
                let now = SystemTime::now();
                for path in &changed {
                    if let Ok(f) = std::fs::File::open(path) {
                        let _ = f.set_modified(now);
                    }
                }
                self.forced += 1;
                let elapsed = artifact.elapsed;
                artifact = run(&self.config, &self.cancel, target.as_deref(), &mut progress)?;
                artifact.elapsed += elapsed;
                sources = Sources::read(&artifact.inputs, None);
            }
        }
        if !artifact.fresh || self.compiled_from.is_none() {
            self.compiled_from = Some(sources.clone());
        }
        self.last_read = Some(sources);
        self.inputs = artifact.inputs.clone();
        Ok(artifact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_worth_showing() {
        let table = [
            ("Blocking waiting for file lock on build directory", true),
            ("Compiling plugin-api v0.1.0 (/w/plugin-api)", true),
            ("Updating crates.io index", true),
            (
                "Finished `dev` profile [unoptimized] target(s) in 0.1s",
                false,
            ),
            ("warning: unused manifest key", false),
            ("error: could not compile `p`", false),
            ("", false),
        ];
        for (line, expected) in table {
            assert_eq!(is_status_line(line), expected, "{line}");
        }
    }

    #[test]
    fn a_stopped_canceller_starts_no_build() {
        let cancel = Canceller::new();
        cancel.stop();
        let config = BuildConfig {
            manifest: PathBuf::from("/nonexistent/Cargo.toml"),
            release: false,
            target_dir: None,
        };
        assert!(matches!(
            run(&config, &cancel, None, &mut |_, _| {}),
            Err(BuildError::Stopped)
        ));
    }
}

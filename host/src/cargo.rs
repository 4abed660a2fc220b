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

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, Weak};
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

/// What `cargo metadata` says about the plugin's crate.
#[derive(Clone, Debug)]
pub struct Metadata {
    /// The target directory cargo builds into (config, environment and workspace included).
    pub target_dir: PathBuf,
    /// The workspace root (the plugin's own directory for a standalone crate).
    pub workspace_root: PathBuf,
    /// The workspace's member packages.
    pub packages: Vec<Package>,
}

/// A package of the workspace.
#[derive(Clone, Debug, Deserialize)]
pub struct Package {
    /// Its name.
    pub name: String,
    /// Its `Cargo.toml`.
    pub manifest_path: PathBuf,
    /// Its targets (lib, bins, build script, ...).
    pub targets: Vec<PackageTarget>,
}

/// A target of a package.
#[derive(Clone, Debug, Deserialize)]
pub struct PackageTarget {
    /// `lib`, `cdylib`, `bin`, `custom-build`, ...
    pub kind: Vec<String>,
    /// The crate types it builds.
    #[serde(default)]
    pub crate_types: Vec<String>,
}

impl Package {
    fn builds_cdylib(&self) -> bool {
        self.targets
            .iter()
            .any(|t| t.crate_types.iter().chain(&t.kind).any(|k| k == "cdylib"))
    }
}

#[derive(Deserialize)]
struct RawMetadata {
    target_directory: PathBuf,
    workspace_root: PathBuf,
    packages: Vec<Package>,
}

/// Runs `cargo metadata --format-version 1 --no-deps` for `config`'s crate.
pub fn metadata(config: &BuildConfig) -> Result<Metadata, BuildError> {
    let mut cmd = cargo_command(config, "metadata");
    cmd.args(["--format-version", "1", "--no-deps"]);
    let output = cmd.output().map_err(|source| BuildError::Spawn {
        cargo: cargo_binary(),
        source,
    })?;
    let failed = |stderr: String| BuildError::Cargo {
        manifest: config.manifest.clone(),
        stderr,
    };
    if !output.status.success() {
        return Err(failed(stderr_tail(&String::from_utf8_lossy(
            &output.stderr,
        ))));
    }
    let raw: RawMetadata = serde_json::from_slice(&output.stdout)
        .map_err(|e| failed(format!("cannot read cargo metadata's output: {e}")))?;
    Ok(Metadata {
        target_dir: raw.target_directory,
        workspace_root: raw.workspace_root,
        packages: raw.packages,
    })
}

/// Checks, with cargo's own reading of the manifest, that `manifest` builds a `cdylib`;
/// the error says what to do instead (for a virtual workspace: which members to run).
pub fn check_plugin(meta: &Metadata, manifest: &Path) -> Result<(), String> {
    if let Some(package) = meta
        .packages
        .iter()
        .find(|p| same_file(&p.manifest_path, manifest))
    {
        return if package.builds_cdylib() {
            Ok(())
        } else {
            Err(format!(
                "{} does not build a cdylib: add `[lib] crate-type = [\"cdylib\"]`",
                manifest.display()
            ))
        };
    }
    let members: Vec<String> = meta
        .packages
        .iter()
        .filter(|p| p.builds_cdylib())
        .map(|p| {
            let dir = p.manifest_path.parent().unwrap_or(&p.manifest_path);
            format!("{} ({})", p.name, dir.display())
        })
        .collect();
    if members.is_empty() {
        Err(format!(
            "{} is a workspace, not a plugin crate, and none of its members builds a cdylib",
            manifest.display()
        ))
    } else {
        Err(format!(
            "{} is a workspace, not a plugin crate: pass --plugin one of its cdylib members: {}",
            manifest.display(),
            members.join(", ")
        ))
    }
}

/// The manifest of the plugin crate in `dir`, after checking that it is one: a directory
/// holding a `Cargo.toml` whose package builds a `cdylib` (read by `cargo metadata`). A
/// manifest cargo cannot read passes: the first build reports what is wrong with it, and
/// the host picks up the fix.
pub fn plugin_manifest(dir: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::bail;
    if !dir.exists() {
        bail!("plugin directory {} does not exist", dir.display());
    }
    if !dir.is_dir() {
        bail!("plugin path {} is not a directory", dir.display());
    }
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} holds no Cargo.toml: a plugin directory is a cargo crate",
            dir.display()
        );
    }
    let config = BuildConfig {
        manifest: manifest.clone(),
        release: false,
        target_dir: None,
    };
    if let Ok(meta) = metadata(&config)
        && let Err(why) = check_plugin(&meta, &manifest)
    {
        bail!("{why}");
    }
    Ok(manifest)
}

/// Stops a build: kills cargo's process group and refuses further builds. Cheap to clone;
/// every clone stops the same builds.
#[derive(Clone, Debug)]
pub struct Canceller(Arc<Mutex<CancelState>>);

#[derive(Debug, Default)]
struct CancelState {
    stopped: bool,
    /// The process group of the cargo running now; `None` once it is about to be reaped (a
    /// reaped group id may be reused by an unrelated process).
    group: Option<u32>,
}

/// Every canceller of the process, for [`stop_all_builds`].
static CANCELLERS: Mutex<Vec<Weak<Mutex<CancelState>>>> = Mutex::new(Vec::new());

impl Default for Canceller {
    fn default() -> Canceller {
        Canceller::new()
    }
}

impl Canceller {
    /// A canceller with no build yet.
    pub fn new() -> Canceller {
        let state = Arc::new(Mutex::new(CancelState::default()));
        let mut all = CANCELLERS.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&state));
        Canceller(state)
    }

    /// Kills the running build's process group, if any; every later build returns
    /// [`BuildError::Stopped`] at once.
    pub fn stop(&self) {
        stop_state(&self.0);
    }

    /// Whether [`Canceller::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).stopped
    }

    /// Starts `cmd` in a process group of its own and remembers the group, unless stopped.
    fn spawn(&self, cmd: &mut Command) -> Result<Child, BuildError> {
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        // Held across the spawn, so a stop either comes first (no build) or sees the group.
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if state.stopped {
            return Err(BuildError::Stopped);
        }
        let child = cmd.spawn().map_err(|source| BuildError::Spawn {
            cargo: cargo_binary(),
            source,
        })?;
        state.group = Some(child.id());
        Ok(child)
    }

    /// Forgets the group before its leader is reaped.
    fn release(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).group = None;
    }
}

fn stop_state(state: &Mutex<CancelState>) {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    state.stopped = true;
    if let Some(group) = state.group {
        kill_group(group);
    }
}

/// Stops every build of this process (the signal handler's way out, [`crate::session`]).
pub fn stop_all_builds() {
    let all: Vec<_> = CANCELLERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for state in all {
        stop_state(&state);
    }
}

#[cfg(unix)]
fn kill_group(group: u32) {
    let Ok(group) = libc::pid_t::try_from(group) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours. `-group` addresses
    // the process group cargo was started in (`process_group(0)`: its id is cargo's pid).
    // The caller holds the canceller's lock and the group is still recorded, so cargo has
    // not been reaped and the id cannot belong to another process group.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
}

#[cfg(not(unix))]
fn kill_group(_group: u32) {}

/// Kills the group if the build is abandoned before it ends (an unwinding panic).
struct ChildGuard<'a> {
    child: Option<Child>,
    cancel: &'a Canceller,
}

impl ChildGuard<'_> {
    /// Waits for cargo, once its output has ended.
    fn wait(mut self) -> std::io::Result<std::process::ExitStatus> {
        self.cancel.release();
        match self.child.take() {
            Some(mut child) => child.wait(),
            None => Err(std::io::Error::other("cargo was already reaped")),
        }
    }
}

impl Drop for ChildGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            {
                let state = self.cancel.0.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(group) = state.group {
                    kill_group(group);
                }
            }
            self.cancel.release();
            let _ = child.wait();
        }
    }
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

/// The content of a build's inputs: a hash per file (`None` for a file that cannot be read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources(BTreeMap<PathBuf, Option<Stamp>>);

/// One file's content hash, with the length and modification time it was read at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    hash: u64,
}

impl Sources {
    /// Hashes every file of `inputs` now; a file whose length and modification time are those
    /// `known` recorded keeps `known`'s hash unread (a restored file has another time; a file
    /// given another content of the same length *and* the very time of the recorded one would
    /// be missed, as cargo misses it).
    pub fn read(inputs: &[PathBuf], known: Option<&Sources>) -> Sources {
        let stamp = |p: &PathBuf| -> Option<Stamp> {
            let meta = std::fs::metadata(p).ok()?;
            let (len, modified) = (meta.len(), meta.modified().ok());
            if let Some(Some(k)) = known.and_then(|k| k.0.get(p))
                && k.len == len
                && k.modified == modified
                && modified.is_some()
            {
                return Some(*k);
            }
            let bytes = std::fs::read(p).ok()?;
            Some(Stamp {
                len: bytes.len() as u64,
                modified,
                hash: hash(&bytes),
            })
        };
        Sources(inputs.iter().map(|p| (p.clone(), stamp(p))).collect())
    }

    /// The files whose content differs from `before` (or that `before` did not have).
    pub fn changed_since(&self, before: &Sources) -> Vec<PathBuf> {
        self.0
            .iter()
            .filter(|(p, s)| {
                let old = before.0.get(*p).map(|b| b.map(|b| b.hash));
                old != Some(s.map(|s| s.hash))
            })
            .map(|(p, _)| p.clone())
            .collect()
    }
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
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

    /// How many times a "fresh" library was not believed and the build forced.
    pub fn forced_rebuilds(&self) -> usize {
        self.forced
    }

    /// Builds the plugin (step 2 to 5 of the module doc).
    pub fn build(&mut self) -> Result<Artifact, BuildError> {
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
            self.compiled_from = Some(sources);
        }
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
    fn changed_sources_are_the_differing_and_the_new_files() {
        let dir = crate::testkit::TempDir::new("sources");
        let [a, b, c] = ["a.rs", "b.rs", "c.txt"].map(|n| dir.path().join(n));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        let before = Sources::read(&[a.clone(), b.clone()], None);
        assert!(
            Sources::read(&[a.clone(), b.clone()], Some(&before))
                .changed_since(&before)
                .is_empty()
        );
        std::fs::write(&b, "b2").unwrap();
        std::fs::write(&c, "c").unwrap();
        let after = Sources::read(&[a.clone(), b.clone(), c.clone()], Some(&before));
        assert_eq!(after.changed_since(&before), [b.clone(), c]);
        // Same length, restored with an older time (`cp -p`): read again, not taken from the
        // record.
        let time = std::fs::metadata(&a).unwrap().modified().unwrap();
        std::fs::write(&a, "A").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&a)
            .unwrap()
            .set_modified(time - Duration::from_secs(60))
            .unwrap();
        let restored = Sources::read(&[a.clone(), b.clone()], Some(&before));
        assert_eq!(restored.changed_since(&before), [a, b]);
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

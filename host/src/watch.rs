//! Watching what the plugin is built from, and driving the reloader: the dev loop.
//!
//! **What is watched** ([`plan`]): what cargo says the crate is built from. After every
//! successful build, cargo's dep-info lists every file the build read ([`crate::cargo`]):
//! the plugin's sources, its path dependencies' sources, files read with `include_str!`,
//! build scripts and their `rerun-if-changed` inputs. The watcher watches the directories
//! of those files (not recursively), the package directory of each (its `Cargo.toml`, its
//! `build.rs`), the plugin's directory and its `.cargo/`, the workspace root, and the
//! plugin's `src/` recursively (so a module added in a new directory is seen before it is
//! ever built). It never watches the target directory, which `cargo metadata` names
//! (wherever config or environment put it): cargo writes there during every build.
//!
//! **What rebuilds** ([`Plan::wants`]): a change to a file the last build read, whatever
//! its name, or to any `.rs` file, `Cargo.toml` or `.cargo/config.toml` in a watched
//! directory; not editors' lock, swap and backup files (`.#lib.rs`, `#lib.rs#`,
//! `.lib.rs.swp`, `lib.rs~`), and not a change of metadata only (permissions, times).
//!
//! **When** ([`classify`]): changes come in two sorts:
//!
//! - **finished** writes: a file closed after writing (`IN_CLOSE_WRITE`) or renamed into
//!   place. The build starts once the directory has been quiet for [`SETTLE`] (1 ms), which
//!   still gathers an editor's "save all" into one build.
//! - **unfinished** writes: a file created, modified but not (yet) closed, renamed away or
//!   removed (it may be about to be replaced). The build starts after [`DEFAULT_DEBOUNCE`]
//!   (`--debounce-ms`) of quiet, unless a finished write comes first.
//!
//! So a normal save costs about a millisecond of waiting, not a fixed debounce, and a writer
//! that never closes its file is still picked up. Builds never overlap: saves made during a
//! build queue up in the channel and cause exactly one follow-up build, of the newest files.
//!
//! **Watcher errors** ([`react`]) reach the person as an `error` event: a lost-events
//! overflow (`IN_Q_OVERFLOW`, notify's rescan flag), the watch limit
//! (`fs.inotify.max_user_watches`) or any other failure. After one, the host builds again,
//! in case the lost events were a save.
//!
//! # Known problems
//! - Editors save in different ways: truncate and write, write a temp file and rename it
//!   over, or several writes in a row. Truncate-and-write and rename both end in a finished
//!   event after the content is complete; several writes in a row that each close the file
//!   can start a build on the first, and the later ones cause one follow-up build.
//! - A build may still read a file another program is writing without closing it between
//!   writes (mmap writers). Cargo then compiles a partial file and fails; the writer's next
//!   event starts a follow-up build that sees the finished file.
//! - Until the first successful build there is no dep-info: only the plugin's directory, its
//!   `src/` and its workspace root are watched, so an edit to a path dependency that fixes
//!   the very first build is not seen (save a plugin file).
//! - A new file in a new directory of a path dependency is seen once a plugin file is saved
//!   and the build that follows reads it.
//! - The target directory is read once, at start: a `.cargo/config.toml` edited to move it
//!   while the host runs is followed by cargo, not by the watcher.
//! - Files on network mounts may produce no events at all (inotify limitation); untested.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher};

use crate::events::{HostEvent, Sink};
use crate::reloader::Reloader;

/// How long the plugin directory must be quiet after an unfinished write before a build
/// starts (`--debounce-ms`).
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(30);

/// How long the plugin directory must be quiet after a finished write before a build starts.
pub const SETTLE: Duration = Duration::from_millis(1);

/// What the dev loop reacts to.
#[derive(Debug)]
pub enum Msg {
    /// Something the plugin is built from changed; `finished` when the write is complete
    /// (closed, or renamed into place).
    Changed {
        /// Whether the change is a finished write.
        finished: bool,
    },
    /// Stop the loop.
    Stop,
}

/// Whether `kind` is a finished write (`Some(true)`), an unfinished one (`Some(false)`), or
/// not a change at all (`None`).
pub fn classify(kind: &EventKind) -> Option<bool> {
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(true),
        EventKind::Access(_) | EventKind::Other | EventKind::Any => None,
        // Permissions or times only: the content cargo compiles is the same.
        EventKind::Modify(ModifyKind::Metadata(_)) => None,
        // A file renamed into place is complete; one renamed away or removed may be about to
        // be replaced (an editor moving the original aside), so it waits for the debounce.
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => Some(false),
        EventKind::Modify(ModifyKind::Name(_)) => Some(true),
        EventKind::Modify(_) | EventKind::Create(_) => Some(false),
    }
}

/// What to watch, and which changes rebuild.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Directories to watch; `true` for recursively.
    pub dirs: BTreeMap<PathBuf, bool>,
    /// The files the last build read: a change to one rebuilds, whatever its name.
    pub files: BTreeSet<PathBuf>,
    /// Directories whose changes never rebuild (the target directory).
    pub ignore: Vec<PathBuf>,
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_owned())
}

/// What to watch for the plugin in `plugin_dir` (see the module doc): `inputs` are the files
/// the last build read (cargo's dep-info; empty before the first build), `ignore` the target
/// directory, `workspace_root` cargo's workspace root.
pub fn plan(
    plugin_dir: &Path,
    workspace_root: Option<&Path>,
    ignore: &[PathBuf],
    inputs: &[PathBuf],
) -> Plan {
    let ignore: Vec<PathBuf> = ignore.iter().map(|d| canonical(d)).collect();
    let ignored = |p: &Path| ignore.iter().any(|d| p.starts_with(d));
    let plugin_dir = canonical(plugin_dir);
    let mut dirs = BTreeMap::new();
    dirs.insert(plugin_dir.clone(), false);
    let src = plugin_dir.join("src");
    if src.is_dir() && !ignored(&src) {
        // Recursively only if the target directory is not inside it.
        let holds_target = ignore.iter().any(|d| d.starts_with(&src));
        dirs.insert(src, !holds_target);
    }
    let dot_cargo = plugin_dir.join(".cargo");
    if dot_cargo.is_dir() {
        dirs.insert(dot_cargo, false);
    }
    if let Some(root) = workspace_root {
        dirs.entry(canonical(root)).or_insert(false);
    }
    let recursive: Vec<PathBuf> = dirs
        .iter()
        .filter(|(_, r)| **r)
        .map(|(d, _)| d.clone())
        .collect();
    let covered = |d: &Path| recursive.iter().any(|r| d.starts_with(r));
    let mut files = BTreeSet::new();
    let mut package_roots = BTreeSet::new();
    for input in inputs {
        let input = canonical(input);
        if ignored(&input) {
            continue;
        }
        if let Some(parent) = input.parent() {
            if !covered(parent) {
                dirs.entry(parent.to_owned()).or_insert(false);
            }
            // The package the file belongs to: its manifest and build script.
            if let Some(root) = parent
                .ancestors()
                .find(|a| a.join("Cargo.toml").is_file())
                .filter(|r| package_roots.insert(r.to_path_buf()))
                .filter(|r| !covered(r) && !ignored(r))
            {
                dirs.entry(root.to_owned()).or_insert(false);
            }
        }
        files.insert(input);
    }
    // A file the build read may have gone since (a module deleted): nothing to watch there.
    dirs.retain(|d, _| d.is_dir());
    Plan {
        dirs,
        files,
        ignore,
    }
}

impl Plan {
    /// Whether a change to `path` (inside a watched directory) should trigger a rebuild.
    pub fn wants(&self, path: &Path) -> bool {
        if self.ignore.iter().any(|dir| path.starts_with(dir)) {
            return false;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name.starts_with('#') || name.ends_with('~') {
            return false;
        }
        if self.files.contains(path) {
            return true;
        }
        let in_dot_cargo = path
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == ".cargo");
        name == "Cargo.toml"
            || name.ends_with(".rs")
            || (in_dot_cargo && (name == "config.toml" || name == "config"))
    }
}

/// What one notify callback leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaction {
    /// A watcher error to show the person.
    pub report: Option<String>,
    /// A change for the dev loop: `Some(finished)`.
    pub change: Option<bool>,
}

/// The reaction to one notify callback: a change the plan wants becomes a build; a watcher
/// error or a lost-events overflow is reported and rebuilds (a lost event may have been a
/// save).
pub fn react(res: &notify::Result<notify::Event>, plan: &Plan) -> Reaction {
    match res {
        Err(e) => Reaction {
            report: Some(format!(
                "file watcher: {}; building again in case a save was missed",
                describe(e)
            )),
            change: Some(true),
        },
        Ok(event) if event.need_rescan() => Reaction {
            report: Some(
                "file watcher: the event queue overflowed and events were lost; building again \
                 in case a save was missed"
                    .to_owned(),
            ),
            change: Some(true),
        },
        Ok(event) => Reaction {
            report: None,
            change: classify(&event.kind).filter(|_| event.paths.iter().any(|p| plan.wants(p))),
        },
    }
}

/// A notify error, in lowercase, with what to do about the watch limit.
fn describe(e: &notify::Error) -> String {
    let paths: Vec<String> = e.paths.iter().map(|p| p.display().to_string()).collect();
    let what = match &e.kind {
        notify::ErrorKind::MaxFilesWatch => "the limit of watched directories is reached \
             (raise fs.inotify.max_user_watches)"
            .to_owned(),
        notify::ErrorKind::PathNotFound => "no such file or directory".to_owned(),
        notify::ErrorKind::Io(io) => io.to_string(),
        notify::ErrorKind::Generic(g) => g.to_lowercase(),
        notify::ErrorKind::WatchNotFound => "watch not found".to_owned(),
        notify::ErrorKind::InvalidConfig(c) => format!("invalid configuration {c:?}"),
    };
    if paths.is_empty() {
        what
    } else {
        format!("{what} ({})", paths.join(", "))
    }
}

/// The file watcher of a session: follows the plan of the last build.
pub struct Watch {
    watcher: notify::RecommendedWatcher,
    plan: Arc<Mutex<Plan>>,
    watched: BTreeMap<PathBuf, bool>,
    sink: Sink,
    tx: Sender<Msg>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("watched", &self.watched)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// A watcher that watches nothing yet; changes arrive on `tx` as [`Msg::Changed`],
    /// watcher errors go to `sink`.
    pub fn start(tx: Sender<Msg>, sink: Sink) -> anyhow::Result<Watch> {
        let plan = Arc::new(Mutex::new(Plan::default()));
        let shared = plan.clone();
        let report_to = sink.clone();
        let changes = tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let reaction = {
                let plan = shared.lock().unwrap_or_else(|e| e.into_inner());
                react(&res, &plan)
            };
            if let Some(message) = reaction.report {
                report_to.event(HostEvent::Error {
                    pipeline: String::new(),
                    path: String::new(),
                    message,
                });
            }
            if let Some(finished) = reaction.change {
                let _ = changes.send(Msg::Changed { finished });
            }
        })
        .context("cannot start the file watcher")?;
        Ok(Watch {
            watcher,
            plan,
            watched: BTreeMap::new(),
            sink,
            tx,
        })
    }

    /// The directories watched now (`true`: recursively).
    pub fn watched(&self) -> &BTreeMap<PathBuf, bool> {
        &self.watched
    }

    /// Watches what `plan` says, and stops watching the rest. Returns the directories that
    /// could not be watched, with why (also reported to the person).
    pub fn apply(&mut self, plan: Plan) -> Vec<(PathBuf, String)> {
        let wanted = plan.dirs.clone();
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = plan;
        let stale: Vec<PathBuf> = self
            .watched
            .iter()
            .filter(|(d, r)| wanted.get(*d) != Some(r))
            .map(|(d, _)| d.clone())
            .collect();
        for dir in stale {
            let _ = self.watcher.unwatch(&dir);
            self.watched.remove(&dir);
        }
        let mut failed = Vec::new();
        for (dir, recursive) in wanted {
            if self.watched.contains_key(&dir) {
                continue;
            }
            let mode = if recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match self.watcher.watch(&dir, mode) {
                Ok(()) => {
                    self.watched.insert(dir, recursive);
                }
                Err(e) => {
                    let why = describe(&e);
                    self.sink.event(HostEvent::Error {
                        pipeline: String::new(),
                        path: String::new(),
                        message: format!(
                            "cannot watch {}: {why}; its changes will not reload",
                            dir.display()
                        ),
                    });
                    failed.push((dir, why));
                }
            }
        }
        failed
    }

    /// Watches what the reloader's last build read. A file of it saved after the build read
    /// it and before it was watched (a path dependency's source, the first time) raised no
    /// event: it is found by content, and builds after the debounce, as a write not known to
    /// be finished does (it may still be open).
    pub fn follow(&mut self, reloader: &mut Reloader) {
        let plan = plan_for(reloader.builder());
        self.apply(plan);
        if !reloader.builder().inputs_changed_since_build().is_empty() {
            let _ = self.tx.send(Msg::Changed { finished: false });
        }
    }
}

/// The [`plan`] for a builder: its plugin, cargo's target dir and workspace root, and the
/// inputs of its last successful build.
pub fn plan_for(builder: &mut crate::cargo::Builder) -> Plan {
    let meta = builder.metadata().cloned();
    let ignore: Vec<PathBuf> = meta.iter().map(|m| m.target_dir.clone()).collect();
    plan(
        builder.plugin_dir(),
        meta.as_ref().map(|m| m.workspace_root.as_path()),
        &ignore,
        builder.inputs(),
    )
}

/// How often the dev loop, while it waits, enters the inner subscriptions that started and
/// ended into the tracking store ([`Reloader::idle`]).
pub const CENSUS_EVERY: Duration = Duration::from_millis(100);

/// The dev loop: waits for changes, debounces them, reloads, and after each build watches
/// what it read; returns on [`Msg::Stop`] or when every sender is gone.
pub fn dev_loop(
    reloader: &mut Reloader,
    rx: &Receiver<Msg>,
    debounce: Duration,
    mut watch: Option<&mut Watch>,
) {
    loop {
        // While waiting: the tracking store learns of the inner subscriptions that started
        // and ended (run-time tracks), so it is at most this late.
        let mut finished = loop {
            match rx.recv_timeout(CENSUS_EVERY) {
                Ok(Msg::Changed { finished }) => break finished,
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => reloader.idle(),
            }
        };
        // Wait until the directory has been quiet: briefly after a finished write, for the
        // debounce after an unfinished one.
        loop {
            let quiet = if finished { SETTLE } else { debounce };
            match rx.recv_timeout(quiet) {
                Ok(Msg::Changed { finished: f }) => finished |= f,
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        reloader.reload();
        if let Some(w) = watch.as_deref_mut() {
            w.follow(reloader);
        }
        // Saves made during the build are still queued: the next turn of the loop sees them
        // and builds once more.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, Flag, MetadataKind, ModifyKind, RemoveKind,
        RenameMode,
    };

    #[test]
    fn which_paths_trigger_a_build() {
        let plan = Plan {
            dirs: BTreeMap::new(),
            files: [
                PathBuf::from("/p/data/step.txt"),
                PathBuf::from("/dep/src/lib.rs"),
            ]
            .into_iter()
            .collect(),
            ignore: vec![PathBuf::from("/p/build-out")],
        };
        let table = [
            ("/p/src/lib.rs", true),
            ("/p/Cargo.toml", true),
            ("/p/build.rs", true),
            ("/p/src/nested/mod.rs", true),
            ("/p/data/step.txt", true),
            ("/p/data/other.txt", false),
            ("/p/.cargo/config.toml", true),
            ("/p/.cargo/credentials.toml", false),
            ("/p/Cargo.lock", false),
            ("/p/build-out/debug/build/x/out/gen.rs", false),
            ("/p/build-out/debug/libx.d", false),
            ("/p/src/.#lib.rs", false),
            ("/p/src/#lib.rs#", false),
            ("/p/src/.lib.rs.swp", false),
            ("/p/src/lib.rs~", false),
            ("/p/README.md", false),
            ("/p/build-script.pid", false),
        ];
        for (path, expected) in table {
            assert_eq!(plan.wants(Path::new(path)), expected, "{path}");
        }
    }

    #[test]
    fn which_events_are_finished_writes() {
        let table = [
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                Some(true),
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                Some(true),
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                Some(true),
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                Some(false),
            ),
            (EventKind::Remove(RemoveKind::File), Some(false)),
            (EventKind::Create(CreateKind::File), Some(false)),
            (
                EventKind::Modify(ModifyKind::Data(DataChange::Content)),
                Some(false),
            ),
            (
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::WriteTime)),
                None,
            ),
            (EventKind::Access(AccessKind::Open(AccessMode::Read)), None),
            (EventKind::Other, None),
        ];
        for (kind, expected) in table {
            assert_eq!(classify(&kind), expected, "{kind:?}");
        }
    }

    /// The plan of a plugin with a target dir inside it, a path dependency beside it and a
    /// file read with `include_str!`: the inputs' directories and packages, never the target.
    #[test]
    fn plan_watches_the_inputs_directories_and_packages_not_the_target() {
        let root = crate::testkit::TempDir::new("plan");
        let root = canonical(root.path());
        let p = root.join("plugin");
        let dep = root.join("dep");
        let target = p.join("build-out");
        for dir in [
            p.join("src/nested"),
            p.join("data"),
            p.join(".cargo"),
            dep.join("src/inner"),
            target.join("debug/build/x/out"),
        ] {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let inputs = [
            p.join("src/lib.rs"),
            p.join("src/nested/m.rs"),
            p.join("data/step.txt"),
            dep.join("src/inner/lib.rs"),
            dep.join("build.rs"),
            target.join("debug/build/x/out/gen.rs"),
        ];
        for f in inputs
            .iter()
            .chain([&p.join("Cargo.toml"), &dep.join("Cargo.toml")])
        {
            std::fs::write(f, "").unwrap();
        }
        let got = plan(&p, Some(&p), std::slice::from_ref(&target), &inputs);
        let expected: BTreeMap<PathBuf, bool> = [
            (p.clone(), false),
            (p.join("src"), true),
            (p.join(".cargo"), false),
            (p.join("data"), false),
            (dep.join("src/inner"), false),
            (dep.clone(), false),
        ]
        .into_iter()
        .collect();
        assert_eq!(got.dirs, expected);
        assert!(got.dirs.keys().all(|d| !d.starts_with(&target)));
        assert_eq!(got.files.len(), 5, "{:?}", got.files);
        assert!(!got.files.iter().any(|f| f.starts_with(&target)));
        assert_eq!(got.ignore, [target]);
    }

    #[test]
    fn watcher_errors_are_reported_and_rebuild() {
        let plan = Plan {
            dirs: BTreeMap::new(),
            files: BTreeSet::new(),
            ignore: vec![PathBuf::from("/p/target")],
        };
        let event =
            |kind: EventKind, path: &str| notify::Event::new(kind).add_path(PathBuf::from(path));
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let cases: Vec<(notify::Result<notify::Event>, Option<&str>, Option<bool>)> = vec![
            (Ok(event(close, "/p/src/lib.rs")), None, Some(true)),
            (Ok(event(close, "/p/target/debug/x.rs")), None, None),
            (
                Ok(notify::Event::new(EventKind::Other).set_flag(Flag::Rescan)),
                Some("the event queue overflowed"),
                Some(true),
            ),
            (
                Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch)
                    .add_path(PathBuf::from("/p/src"))),
                Some("raise fs.inotify.max_user_watches) (/p/src)"),
                Some(true),
            ),
            (
                Err(notify::Error::io(std::io::Error::other("read failed"))),
                Some("file watcher: read failed"),
                Some(true),
            ),
        ];
        for (res, report, change) in cases {
            let r = react(&res, &plan);
            match (report, &r.report) {
                (Some(want), Some(got)) => {
                    assert!(got.contains(want), "{got:?} lacks {want:?}");
                    assert!(got.starts_with("file watcher: "), "{got}");
                    assert_eq!(got, &got.to_lowercase(), "lowercase: {got}");
                }
                (None, None) => {}
                (want, got) => panic!("{res:?}: report {got:?}, expected {want:?}"),
            }
            assert_eq!(r.change, change, "{res:?}");
        }
    }
}

//! Watching the plugin crate and driving the reloader: the dev loop.
//!
//! The watcher (notify; inotify on Linux) reports changes under the plugin directory to a
//! `.rs` file, a `Cargo.toml` or a `build.rs`. Changes come in two sorts:
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
//! # Known problems
//! - Editors save in different ways: truncate and write, write a temp file and rename it
//!   over, or several writes in a row. Truncate-and-write and rename both end in a finished
//!   event after the content is complete; several writes in a row that each close the file
//!   can start a build on the first, and the later ones cause one follow-up build.
//! - A build may still read a file another program is writing without closing it between
//!   writes (mmap writers). Cargo then compiles a partial file and fails; the writer's next
//!   event starts a follow-up build that sees the finished file.
//! - `target/` and `Cargo.lock` are ignored: cargo writes them during every build, and
//!   watching them would rebuild forever.
//! - Files on network mounts may produce no events at all (inotify limitation); untested.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher};

use crate::reloader::Reloader;

/// How long the plugin directory must be quiet after an unfinished write before a build
/// starts (`--debounce-ms`).
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(30);

/// How long the plugin directory must be quiet after a finished write before a build starts.
pub const SETTLE: Duration = Duration::from_millis(1);

/// What the dev loop reacts to.
#[derive(Debug)]
pub enum Msg {
    /// Something changed under the plugin directory; `finished` when the write is complete
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
        // A file renamed into place is complete; one renamed away or removed may be about to
        // be replaced (an editor moving the original aside), so it waits for the debounce.
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => Some(false),
        EventKind::Modify(ModifyKind::Name(_)) => Some(true),
        EventKind::Modify(_) | EventKind::Create(_) => Some(false),
    }
}

/// Whether a change to `path` should trigger a rebuild: a `.rs` file or a `Cargo.toml` under
/// `plugin_dir`, outside `target/`, `.git/` and the directories in `ignore` (a target directory
/// inside the crate under another name), and not an editor's lock, swap or backup file
/// (`.#lib.rs`, `#lib.rs#`, `.lib.rs.swp`, `lib.rs~`).
pub fn is_source_change(plugin_dir: &Path, ignore: &[PathBuf], path: &Path) -> bool {
    if ignore.iter().any(|dir| path.starts_with(dir)) {
        return false;
    }
    let rel = path.strip_prefix(plugin_dir).unwrap_or(path);
    if rel
        .components()
        .any(|c| matches!(c.as_os_str().to_str(), Some("target" | ".git")))
    {
        return false;
    }
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with('.') || name.starts_with('#') {
        return false;
    }
    name == "Cargo.toml" || name.ends_with(".rs")
}

/// Starts watching `dir`; changes arrive on `tx` as [`Msg::Changed`]. Keep the returned
/// watcher alive as long as events are wanted.
pub fn watch(
    dir: &Path,
    ignore: &[PathBuf],
    tx: Sender<Msg>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let root = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let filter_root = root.clone();
    let ignore: Vec<PathBuf> = ignore
        .iter()
        .map(|d| d.canonicalize().unwrap_or_else(|_| d.clone()))
        .collect();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        let Some(finished) = classify(&event.kind) else {
            return;
        };
        if event
            .paths
            .iter()
            .any(|p| is_source_change(&filter_root, &ignore, p))
        {
            let _ = tx.send(Msg::Changed { finished });
        }
    })
    .context("cannot start the file watcher")?;
    watcher
        .watch(&root, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", root.display()))?;
    Ok(watcher)
}

/// The dev loop: waits for changes, debounces them, reloads; returns on [`Msg::Stop`] or
/// when every sender is gone.
pub fn dev_loop(reloader: &mut Reloader, rx: &Receiver<Msg>, debounce: Duration) {
    loop {
        let mut finished = match rx.recv() {
            Ok(Msg::Changed { finished }) => finished,
            Ok(Msg::Stop) | Err(_) => return,
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
        // Saves made during the build are still queued: the next turn of the loop sees them
        // and builds once more.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode,
    };

    #[test]
    fn which_paths_trigger_a_build() {
        let root = Path::new("/p");
        let ignore = [PathBuf::from("/p/build-out")];
        let table = [
            ("/p/src/lib.rs", true),
            ("/p/Cargo.toml", true),
            ("/p/build.rs", true),
            ("/p/src/nested/mod.rs", true),
            ("/p/Cargo.lock", false),
            ("/p/target/debug/build/x/out/gen.rs", false),
            ("/p/build-out/debug/build/x/out/gen.rs", false),
            ("/p/.git/HEAD", false),
            ("/p/src/.#lib.rs", false),
            ("/p/src/#lib.rs#", false),
            ("/p/src/.lib.rs.swp", false),
            ("/p/src/lib.rs~", false),
            ("/p/README.md", false),
        ];
        for (path, expected) in table {
            assert_eq!(
                is_source_change(root, &ignore, Path::new(path)),
                expected,
                "{path}"
            );
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
            (EventKind::Access(AccessKind::Open(AccessMode::Read)), None),
            (EventKind::Other, None),
        ];
        for (kind, expected) in table {
            assert_eq!(classify(&kind), expected, "{kind:?}");
        }
    }
}

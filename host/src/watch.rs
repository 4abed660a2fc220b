//! Watching the plugin crate and driving the reloader: the dev loop.
//!
//! The watcher (notify; inotify on Linux) reports changes under the plugin directory. A
//! change to a `.rs` file, a `Cargo.toml` or a `build.rs` starts a debounce window
//! ([`DEFAULT_DEBOUNCE`], `--debounce-ms`): the build starts once the directory has been quiet
//! that long. Builds never overlap: saves made during a build queue up in the channel and
//! cause exactly one follow-up build, of the newest files.
//!
//! # Known problems
//! - Editors save in different ways: truncate and write, write a temp file and rename it
//!   over, or several writes in a row. All of them show up as create / modify / rename
//!   events on the crate's files; the debounce turns a burst into one build.
//! - A build may read a file while the editor is still writing it. Cargo then compiles a
//!   half-written file and fails, or compiles an old version; the editor's final write is a
//!   new event, so a follow-up build sees the finished file.
//! - `target/` and `Cargo.lock` are ignored: cargo writes them during every build, and
//!   watching them would rebuild forever.
//! - Files on network mounts may produce no events at all (inotify limitation); untested.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher};

use crate::reloader::Reloader;

/// How long the plugin directory must be quiet before a build starts (`--debounce-ms`).
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(30);

/// What the dev loop reacts to.
#[derive(Debug)]
pub enum Msg {
    /// Something changed under the plugin directory.
    Changed,
    /// Stop the loop.
    Stop,
}

/// Whether a change to `path` should trigger a rebuild.
pub fn is_source_change(plugin_dir: &Path, path: &Path) -> bool {
    let rel = path.strip_prefix(plugin_dir).unwrap_or(path);
    if rel
        .components()
        .any(|c| matches!(c.as_os_str().to_str(), Some("target" | ".git")))
    {
        return false;
    }
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "Cargo.toml" || name.ends_with(".rs")
}

/// Starts watching `dir`; changes arrive on `tx` as [`Msg::Changed`]. Keep the returned
/// watcher alive as long as events are wanted.
pub fn watch(dir: &Path, tx: Sender<Msg>) -> anyhow::Result<notify::RecommendedWatcher> {
    let root = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let filter_root = root.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if matches!(event.kind, EventKind::Access(_) | EventKind::Other) {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| is_source_change(&filter_root, p))
        {
            let _ = tx.send(Msg::Changed);
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
        match rx.recv() {
            Ok(Msg::Changed) => {}
            Ok(Msg::Stop) | Err(_) => return,
        }
        // Debounce: wait until the directory has been quiet for `debounce`.
        loop {
            match rx.recv_timeout(debounce) {
                Ok(Msg::Changed) => continue,
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        reloader.reload();
        // Saves made during the build are still queued: the next turn of the loop sees them
        // and builds once more.
    }
}

//! A running host: the reloader on a thread of its own, fed by the file watcher; and the
//! signal handling of the `host` binary ([`exit_on_signals`]).

use std::path::PathBuf;
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::cargo::{BuildConfig, Canceller};
use crate::events::Sink;
use crate::reloader::{Outcome, Reloader, plugin_manifest};
use crate::runtime::PanicPolicy;
use crate::watch::{DEFAULT_DEBOUNCE, Msg, Watch, dev_loop, plan_for};

/// How to run a plugin.
#[derive(Clone, Debug)]
pub struct Options {
    /// The plugin crate directory (`--plugin`).
    pub plugin_dir: PathBuf,
    /// Build with `--release` (`--release`).
    pub release: bool,
    /// Watch the sources and reload on change (off with `--no-watch`).
    pub watch: bool,
    /// What a panic in a user function does (`--on-panic`).
    pub on_panic: PanicPolicy,
    /// Quiet time before a build (`--debounce-ms`).
    pub debounce: Duration,
    /// `CARGO_TARGET_DIR` for plugin builds; `None` leaves it to cargo.
    pub target_dir: Option<PathBuf>,
}

impl Options {
    /// Defaults for the plugin in `plugin_dir`.
    pub fn new(plugin_dir: impl Into<PathBuf>) -> Options {
        Options {
            plugin_dir: plugin_dir.into(),
            release: false,
            watch: true,
            on_panic: PanicPolicy::Drop,
            debounce: DEFAULT_DEBOUNCE,
            target_dir: None,
        }
    }

    fn reloader(&self, sink: Sink) -> anyhow::Result<Reloader> {
        let manifest = plugin_manifest(&self.plugin_dir)?;
        let build = BuildConfig {
            manifest,
            release: self.release,
            target_dir: self.target_dir.clone(),
        };
        Reloader::new(build, sink, self.on_panic).context("cannot create the library directory")
    }
}

/// Loads the plugin once and runs it until every pipeline has completed (`--no-watch`).
/// Returns false when the first build or load failed.
pub fn run_once(options: &Options, sink: Sink) -> anyhow::Result<bool> {
    let mut reloader = options.reloader(sink)?;
    if !matches!(reloader.reload(), Outcome::Loaded { .. }) {
        return Ok(false);
    }
    reloader.runtime().join_all();
    Ok(true)
}

/// A host watching its plugin, reloading on every save.
#[derive(Debug)]
pub struct Session {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<Reloader>>,
    builds: Canceller,
}

impl Session {
    /// Starts watching, then builds and loads the first version on the session's thread.
    pub fn start(options: &Options, sink: Sink) -> anyhow::Result<Session> {
        let mut reloader = options.reloader(sink.clone())?;
        let (tx, rx) = channel();
        let mut watch = Watch::start(tx.clone(), sink)?;
        // Before the first build: the plugin's directory and sources, not cargo's target
        // directory (`cargo metadata` names it); after each build, what it read.
        let initial = plan_for(reloader.builder());
        let plugin_dir = reloader.plugin_dir().canonicalize().ok();
        if let Some((dir, why)) = watch
            .apply(initial)
            .into_iter()
            .find(|(dir, _)| Some(dir) == plugin_dir.as_ref())
        {
            anyhow::bail!("cannot watch {}: {why}", dir.display());
        }
        let builds = reloader.builder().canceller();
        let debounce = options.debounce;
        let thread = std::thread::Builder::new()
            .name("hmr-reloader".to_owned())
            .spawn(move || {
                reloader.reload();
                watch.follow(&mut reloader);
                dev_loop(&mut reloader, &rx, debounce, Some(&mut watch));
                reloader
            })
            .context("cannot start the reloader thread")?;
        Ok(Session {
            tx,
            thread: Some(thread),
            builds,
        })
    }

    /// Waits for the reloader (it runs until [`Session::stop`]).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops watching, stops a build in progress (cargo and its children), stops every
    /// pipeline and returns the reloader's final state.
    pub fn stop(mut self) -> Option<Reloader> {
        self.builds.stop();
        let _ = self.tx.send(Msg::Stop);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.builds.stop();
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Makes SIGINT and SIGTERM end the host cleanly: every cargo build of the process is killed
/// with its children (cargo runs in a process group of its own, so a terminal's Ctrl-C no
/// longer reaches it directly), library copies not yet unlinked are removed, and the process
/// exits with 128 + the signal's number, as a shell reports a process killed by it.
pub fn exit_on_signals() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install the signal handlers")?;
    std::thread::Builder::new()
        .name("hmr-signals".to_owned())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                crate::cargo::stop_all_builds();
                crate::loader::remove_own_copies();
                std::process::exit(128 + signal);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

//! A running host: the reloader on a thread of its own, fed by the file watcher.

use std::path::PathBuf;
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::cargo::BuildConfig;
use crate::events::Sink;
use crate::inspect::Inspector;
use crate::reloader::{Outcome, Reloader, plugin_manifest};
use crate::runtime::PanicPolicy;
use crate::watch::{DEFAULT_DEBOUNCE, Msg, dev_loop, watch};

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
    /// How long a plugin's `register` may run before the load fails
    /// ([`crate::register::REGISTER_DEADLINE`]).
    pub register_deadline: Duration,
    /// Serve the inspector there (`--inspect`); `None`: no inspector, nothing counted.
    pub inspect: Option<std::net::SocketAddr>,
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
            register_deadline: crate::register::REGISTER_DEADLINE,
            inspect: None,
        }
    }

    /// Starts the inspector if asked for: the sink to report through (the inspector's, in
    /// front of `sink`) and the inspector, which lives as long as it is held.
    fn inspector(&self, sink: Sink) -> anyhow::Result<(Sink, Option<Inspector>)> {
        match self.inspect {
            Some(addr) => {
                let inspector = Inspector::start(addr, sink)?;
                Ok((inspector.sink(), Some(inspector)))
            }
            None => Ok((sink, None)),
        }
    }

    fn reloader(&self, sink: Sink) -> anyhow::Result<Reloader> {
        let manifest = plugin_manifest(&self.plugin_dir)?;
        let build = BuildConfig {
            manifest,
            release: self.release,
            target_dir: self.target_dir.clone(),
        };
        let mut reloader = Reloader::new(build, sink, self.on_panic)
            .context("cannot create the library directory")?;
        reloader.set_register_deadline(self.register_deadline);
        Ok(reloader)
    }
}

/// Loads the plugin once and runs it until every pipeline has completed (`--no-watch`).
/// Returns false when the first build or load failed.
pub fn run_once(options: &Options, sink: Sink) -> anyhow::Result<bool> {
    let (sink, inspector) = options.inspector(sink)?;
    let mut reloader = options.reloader(sink)?;
    if let Some(i) = &inspector {
        reloader.runtime().set_tallies(i.tallies());
    }
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
    _watcher: notify::RecommendedWatcher,
    inspector: Option<Inspector>,
}

impl Session {
    /// Starts watching, then builds and loads the first version on the session's thread.
    pub fn start(options: &Options, sink: Sink) -> anyhow::Result<Session> {
        let (sink, inspector) = options.inspector(sink)?;
        let mut reloader = options.reloader(sink)?;
        if let Some(i) = &inspector {
            reloader.runtime().set_tallies(i.tallies());
        }
        let (tx, rx) = channel();
        // Cargo writes build-script output (`.rs` files in OUT_DIR) under the target dir.
        let target = options
            .target_dir
            .clone()
            .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from));
        let ignore: Vec<PathBuf> = target.into_iter().collect();
        let watcher = watch(reloader.plugin_dir(), &ignore, tx.clone())?;
        let debounce = options.debounce;
        let thread = std::thread::Builder::new()
            .name("hmr-reloader".to_owned())
            .spawn(move || {
                reloader.reload();
                dev_loop(&mut reloader, &rx, debounce);
                reloader
            })
            .context("cannot start the reloader thread")?;
        Ok(Session {
            tx,
            thread: Some(thread),
            _watcher: watcher,
            inspector,
        })
    }

    /// The inspector, when started with [`Options::inspect`].
    pub fn inspector(&self) -> Option<&Inspector> {
        self.inspector.as_ref()
    }

    /// Waits for the reloader (it runs until [`Session::stop`]).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops watching, stops every pipeline and returns the reloader's final state.
    pub fn stop(mut self) -> Option<Reloader> {
        let _ = self.tx.send(Msg::Stop);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

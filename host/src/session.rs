//! A running host: the reloader on a thread of its own, fed by the file watcher; and the
//! signal handling of the `host` binary ([`exit_on_signals`]).

use std::path::PathBuf;
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};

use std::sync::Arc;

use crate::cargo::{BuildConfig, Canceller};
use crate::events::Sink;
use crate::inspect::Inspector;
use crate::record::{Mode, Recorded, Recorder, ReplayPlan};
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
    /// How long a plugin's `register` may run before the load fails
    /// ([`crate::register::REGISTER_DEADLINE`]).
    pub register_deadline: Duration,
    /// Serve the inspector there (`--inspect`); `None`: no inspector, nothing counted.
    pub inspect: Option<std::net::SocketAddr>,
    /// The clock pipelines read (the system's; tests drive a virtual one).
    pub clock: crate::clock::Clock,
    /// Recent inputs each pipeline keeps and replays on a reload (`--replay`; 0: off).
    pub replay: usize,
    /// Record every source value into this file (`--record`, see [`crate::record`]).
    pub record: Option<PathBuf>,
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
            clock: crate::clock::Clock::System,
            replay: crate::replay::DEFAULT_INPUTS,
            record: None,
        }
    }

    /// Starts the recording if asked for (`--record`): the runtime of `reloader` records
    /// into it until it is finished (or dropped).
    fn recorder(&self, reloader: &mut Reloader, sink: Sink) -> anyhow::Result<Option<Recorder>> {
        let Some(path) = &self.record else {
            return Ok(None);
        };
        let recorder = Recorder::create(path, &self.plugin_dir, self.clock.clone(), sink)?;
        reloader
            .runtime()
            .set_record_mode(Mode::Record(recorder.recording()));
        Ok(Some(recorder))
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
        reloader.runtime().set_clock(self.clock.clone());
        reloader.runtime().set_replay(self.replay);
        Ok(reloader)
    }
}

/// Loads the plugin once and runs it until every pipeline has completed (`--no-watch`).
/// Returns false when the first build or load failed.
pub fn run_once(options: &Options, sink: Sink) -> anyhow::Result<bool> {
    let (sink, inspector) = options.inspector(sink)?;
    let mut reloader = options.reloader(sink.clone())?;
    if let Some(i) = &inspector {
        reloader.runtime().set_tallies(i.tallies());
    }
    let recorder = options.recorder(&mut reloader, sink)?;
    if !matches!(reloader.reload(), Outcome::Loaded { .. }) {
        return Ok(false);
    }
    reloader.runtime().join_all();
    if let Some(r) = recorder {
        r.finish()?;
    }
    Ok(true)
}

/// How far after the replay's start its first recorded instant is (virtual time).
const REPLAY_START: Duration = Duration::from_millis(1);

/// How long a replay waits for the pipelines to run what one recorded instant made due.
pub const REPLAY_SETTLE: Duration = Duration::from_secs(60);

/// `--replay-from`: builds and loads the plugin once, feeds `recorded`'s values to its
/// pipelines by name under a virtual clock (each at its recorded time, no waiting), runs
/// what is due by the recording's end, and stops. Warnings (a recording of another plugin,
/// recorded pipelines the code lacks) go to `warn`; a pipeline with no recorded values
/// gets a `notice`. Returns false when the build or load failed.
pub fn replay_from(
    options: &Options,
    recorded: &Recorded,
    sink: Sink,
    warn: &mut dyn FnMut(String),
) -> anyhow::Result<bool> {
    let (clock, time) = crate::clock::Clock::virtual_clock();
    let mut options = options.clone();
    options.clock = clock;
    options.watch = false;
    options.record = None;
    let file = recorded.path.display();
    let here = options
        .plugin_dir
        .canonicalize()
        .unwrap_or_else(|_| options.plugin_dir.clone());
    let there = PathBuf::from(&recorded.header.plugin);
    if there != here {
        warn(format!(
            "{file}: recorded from the plugin {}, replayed on {}: pipelines get the values \
             recorded under their name",
            there.display(),
            here.display()
        ));
    }
    let (sink, _inspector) = options.inspector(sink)?;
    let mut reloader = options.reloader(sink)?;
    // Time 0 of the recording is a moment after the pipelines started (and subscribed to
    // their subjects): nothing recorded runs before every pipeline is ready.
    let base = time.now() + REPLAY_START;
    let plan = Arc::new(ReplayPlan::new(recorded, base));
    reloader
        .runtime()
        .set_record_mode(Mode::Replay(plan.clone()));
    if !matches!(reloader.reload(), Outcome::Loaded { .. }) {
        return Ok(false);
    }
    for name in plan.untaken() {
        warn(format!(
            "{file}: the recorded pipeline {name} is not in the code: its values are not replayed"
        ));
    }
    let settle = |at: &str| -> anyhow::Result<()> {
        if !time.settle(REPLAY_SETTLE) {
            bail!(
                "the replay of {file} did not settle within {} s at {at}: a pipeline is busy or \
                 stuck in plugin code",
                REPLAY_SETTLE.as_secs()
            );
        }
        Ok(())
    };
    settle("its start")?;
    // From one deadline to the next, whichever thread's it is (a recorded value waits in its
    // pipeline's deadline heap, with the operators' timers): pipelines that deliver to each
    // other (subjects) run their values and timers in time order, as they did.
    let last = recorded.entries.iter().map(|e| e.t).max().unwrap_or(0);
    let end = base + Duration::from_nanos(recorded.end.unwrap_or(last).max(last));
    loop {
        let now = time.now();
        let to = time
            .next_deadline()
            .filter(|d| *d > now && *d < end)
            .unwrap_or(end);
        if to > now {
            time.advance(to - now);
        }
        settle(&format!("{} ns", (to - base).as_nanos()))?;
        if to >= end {
            break;
        }
    }
    reloader.runtime().stop_all();
    Ok(true)
}

/// A host watching its plugin, reloading on every save.
#[derive(Debug)]
pub struct Session {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<Reloader>>,
    builds: Canceller,
    inspector: Option<Inspector>,
    /// The recording (`--record`), finished when the session stops.
    recorder: Option<Recorder>,
}

impl Session {
    /// Starts watching, then builds and loads the first version on the session's thread.
    pub fn start(options: &Options, sink: Sink) -> anyhow::Result<Session> {
        let (sink, inspector) = options.inspector(sink)?;
        let mut reloader = options.reloader(sink.clone())?;
        if let Some(i) = &inspector {
            reloader.runtime().set_tallies(i.tallies());
        }
        let recorder = options.recorder(&mut reloader, sink.clone())?;
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
            inspector,
            recorder,
        })
    }

    /// The inspector, when started with [`Options::inspect`].
    pub fn inspector(&self) -> Option<&Inspector> {
        self.inspector.as_ref()
    }

    /// Waits for the reloader (it runs until [`Session::stop`] or a [`Stopper`]). An error
    /// means the host died of an internal error: the reloader thread panicked (the panic
    /// hook has printed where).
    pub fn wait(mut self) -> anyhow::Result<()> {
        match self.thread.take() {
            Some(t) => ended(t.join()),
            None => Ok(()),
        }
    }

    /// A handle that ends the session from another thread: the reloader stops once the
    /// build or load in progress is over, and [`Session::wait`] returns.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.tx.clone())
    }

    /// Stops watching and a build in progress (cargo and its children), and returns the
    /// reloader; its pipelines run until it is dropped (or `runtime().stop_all()`). If the
    /// reloader's thread panicked, the panic goes on here (a test using the session fails).
    /// A recording (`--record`) ends here: what the pipelines did until then is written.
    pub fn stop(mut self) -> Option<Reloader> {
        self.builds.stop();
        let _ = self.tx.send(Msg::Stop);
        let t = self.thread.take()?;
        let joined = t.join();
        if let Some(r) = self.recorder.take()
            && let Err(e) = r.finish()
        {
            eprintln!("error: {e:#}");
        }
        match joined {
            Ok(reloader) => Some(reloader),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Ends a [`Session`] from another thread (see [`Session::stopper`]).
#[derive(Clone, Debug)]
pub struct Stopper(Sender<Msg>);

impl Stopper {
    /// Asks the session to stop; returns at once.
    pub fn stop(&self) {
        // A session already gone has nothing left to stop.
        let _ = self.0.send(Msg::Stop);
    }
}

/// How the reloader thread ended: an error if it panicked.
fn ended<T>(joined: std::thread::Result<T>) -> anyhow::Result<()> {
    match joined {
        Ok(_) => Ok(()),
        Err(payload) => bail!(
            "internal error: the reloader thread panicked ({}); the host stops",
            panic_text(payload.as_ref())
        ),
    }
}

/// A panic payload's message (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

impl Drop for Session {
    fn drop(&mut self) {
        self.builds.stop();
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take()
            && let Err(panic) = t.join()
            && !std::thread::panicking()
        {
            // The reloader's panic is not lost with the session (unless this thread is
            // already unwinding, when a second panic would abort).
            std::panic::resume_unwind(panic);
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
                crate::record::finish_all();
                std::process::exit(128 + signal);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reloader thread that panicked is an internal error naming the panic; one that
    /// returned is not.
    #[test]
    fn a_panicked_reloader_thread_is_an_internal_error() {
        /// A reloader thread's body, and the text its error must hold (none: no error).
        type Case = (Box<dyn FnOnce() + Send>, Option<&'static str>);
        let cases: Vec<Case> = vec![
            (Box::new(|| {}), None),
            (Box::new(|| panic!("boom")), Some("boom")),
            (
                Box::new(|| panic!("{}", String::from("owned boom"))),
                Some("owned boom"),
            ),
            (
                Box::new(|| std::panic::panic_any(7u8)),
                Some("a panic without a message"),
            ),
        ];
        for (body, expected) in cases {
            let joined = std::thread::spawn(body).join();
            match (ended(joined), expected) {
                (Ok(()), None) => {}
                (Err(e), Some(text)) => {
                    let e = e.to_string();
                    assert!(e.starts_with("internal error: "), "{e}");
                    assert!(e.contains(text), "{e} lacks {text}");
                }
                (got, want) => panic!("got {got:?}, want {want:?}"),
            }
        }
    }
}

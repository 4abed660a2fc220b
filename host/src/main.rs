//! The `host` binary: runs a plugin crate's pipelines and hot-reloads them on save.
//!
//! Exit status: 0 when the host ran and ended normally (`--no-watch`: every pipeline
//! completed; `--help`, `--version`); 1 when `--no-watch`'s first build or load failed, or
//! stdout failed otherwise than by closing; [`EXIT_USAGE`] (2) for a bad command line or
//! plugin directory; [`EXIT_INTERNAL`] (70) when the host died of an internal error;
//! [`EXIT_OUTPUT_CLOSED`] (141) when the reader of its output went away.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Parser, ValueEnum};
use host::events::Formatter;
use host::output::Printer;
use host::runtime::PanicPolicy;
use host::session::{Options, Session, Stopper, exit_on_signals, replay_from, run_once};
use host::watch::DEFAULT_DEBOUNCE;

/// Exit status for a bad command line or plugin directory (as clap and most tools use).
const EXIT_USAGE: u8 = 2;

/// Exit status when the host died of an internal error (a panic on the reloader thread):
/// sysexits' `EX_SOFTWARE`.
const EXIT_INTERNAL: u8 = 70;

/// Exit status when the reader of stdout went away (`host --json | head -2`): 128 + SIGPIPE,
/// what a shell reports for a Unix tool killed by a broken pipe.
const EXIT_OUTPUT_CLOSED: u8 = 141;

/// How long a watching host whose output closed waits for its reloader to stop (a build in
/// progress ends first) before it exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// host: hot module replacement for reactive pipelines
///
/// Runs the pipelines a plugin crate registers, watches its sources, and on every save
/// rebuilds it with cargo and swaps the new code in: subscriptions, sources and operator
/// state (a scan's running total) stay alive; the next value runs the new code.
#[derive(Debug, Parser)]
#[command(
    name = "host",
    version,
    args_override_self = true,
    after_help = after_help()
)]
struct Cli {
    /// The plugin crate to run: a directory holding a Cargo.toml with
    /// crate-type = ["cdylib"] [default: the workspace's example-plugin]
    #[arg(long, value_name = "DIR")]
    plugin: Option<PathBuf>,
    /// Build the plugin with optimizations
    #[arg(long)]
    release: bool,
    /// Load once and exit when every pipeline has completed
    #[arg(long)]
    no_watch: bool,
    /// Print one JSON object per line (events: loaded, emission, reload, build-failed,
    /// load-failed, error, completed)
    #[arg(long)]
    json: bool,
    /// What a panic in a user function does
    #[arg(long, value_name = "MODE", value_enum, default_value_t = OnPanic::from(PanicPolicy::default()))]
    on_panic: OnPanic,
    /// Quiet time in milliseconds before building after a write that did not close its
    /// file; a finished save builds after 1 ms
    #[arg(long, value_name = "N", value_parser = milliseconds, default_value_t = DEFAULT_DEBOUNCE.as_millis() as u64)]
    debounce_ms: u64,
    /// Serve the inspector (a live page and a JSON API) at ADDR, for example
    /// 127.0.0.1:7000 (port 0 picks a free one)
    #[arg(long, value_name = "ADDR", value_parser = address)]
    inspect: Option<std::net::SocketAddr>,
    /// Keep each pipeline's last N inputs, and on each reload replay them through the old
    /// and the new code (on copies of the state, muted) to report what the edit changed;
    /// 0 turns it off
    #[arg(long, value_name = "N", default_value_t = host::replay::DEFAULT_INPUTS)]
    replay: usize,
    /// Record every source value, with its time, into FILE (JSON lines; written off the
    /// emission path, at least every 100 ms and at exit)
    #[arg(long, value_name = "FILE", conflicts_with = "replay_from")]
    record: Option<PathBuf>,
    /// Build and load the plugin once, feed it the values recorded in FILE (--record)
    /// instead of its sources, on the recorded schedule under a virtual clock (no waiting),
    /// and exit
    #[arg(long, value_name = "FILE")]
    replay_from: Option<PathBuf>,
}

/// The end of `--help`: examples, and the exit statuses from their constants.
fn after_help() -> String {
    format!(
        "Examples:
  cargo run -p host
  cargo run -p host -- --plugin ../my-plugin --json
  cargo run -p host -- --plugin=-odd-name     (a directory whose name starts with '-')
  cargo run -p host -- --record session.jsonl
  cargo run -p host -- --replay-from session.jsonl --json

Exit status:
  0 normal end
  1 --no-watch's (or --replay-from's) build or load failed
  {EXIT_USAGE} bad command line, plugin directory or recording
  {EXIT_INTERNAL} internal error
  {EXIT_OUTPUT_CLOSED} the reader of the output went away"
    )
}

/// `--on-panic`: [`PanicPolicy`] as the command line spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OnPanic {
    /// Drop the value that panicked and keep the subscription
    Drop,
    /// End the subscription, as Rx does; the next good reload subscribes it again
    Error,
}

impl From<PanicPolicy> for OnPanic {
    fn from(p: PanicPolicy) -> OnPanic {
        match p {
            PanicPolicy::Drop => OnPanic::Drop,
            PanicPolicy::Error => OnPanic::Error,
        }
    }
}

impl From<OnPanic> for PanicPolicy {
    fn from(p: OnPanic) -> PanicPolicy {
        match p {
            OnPanic::Drop => PanicPolicy::Drop,
            OnPanic::Error => PanicPolicy::Error,
        }
    }
}

impl std::fmt::Display for OnPanic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.to_possible_value().expect("no value is skipped");
        f.write_str(v.get_name())
    }
}

/// `--debounce-ms`'s parser; its error completes "--debounce-ms ..., not `VALUE`".
fn milliseconds(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| "takes milliseconds".to_owned())
}

fn address(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse()
        .map_err(|_| "takes an address such as 127.0.0.1:7000".to_owned())
}

impl Cli {
    fn options(&self) -> Options {
        let mut options = Options::new(self.plugin.clone().unwrap_or_else(default_plugin_dir));
        options.release = self.release;
        options.watch = !self.no_watch;
        options.on_panic = self.on_panic.into();
        options.debounce = Duration::from_millis(self.debounce_ms);
        options.inspect = self.inspect;
        options.replay = self.replay;
        options.record = self.record.clone();
        if self.replay_from.is_some() {
            options.watch = false;
        }
        options
    }
}

fn default_plugin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("example-plugin")
}

/// What the command line asks for: run, or print (help, version) and exit 0.
enum Parsed {
    Run(Cli),
    Print(String),
}

/// Parses the command line; a usage error is one line in our words (clap's own text is
/// several lines and capitalised).
fn parse(args: &[OsString]) -> Result<Parsed, String> {
    match Cli::try_parse_from(args) {
        Ok(cli) => Ok(Parsed::Run(cli)),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            Ok(Parsed::Print(e.render().to_string()))
        }
        Err(e) => Err(usage_error(&e, args)),
    }
}

/// Clap's error `e` on `args` as one line: lowercase, naming the flag and the value.
fn usage_error(e: &clap::Error, args: &[OsString]) -> String {
    let text = |kind: ContextKind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => Some(v.join(", ")),
        _ => None,
    };
    // Clap names an argument with its placeholder (`--on-panic <MODE>`): keep the flag.
    let arg = text(ContextKind::InvalidArg)
        .map(|a| a.split([' ', '=']).next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let value = text(ContextKind::InvalidValue).unwrap_or_default();
    match e.kind() {
        // A flag given a value (`--json=false`) is reported as an unknown argument.
        ErrorKind::UnknownArgument => match args.iter().find_map(|a| {
            let a = a.to_string_lossy();
            let (flag, v) = a.split_once('=')?;
            (flag.starts_with("--") && flag == arg).then(|| v.to_owned())
        }) {
            Some(v) => format!("{arg} takes no value, not `{v}`"),
            None => format!("unknown argument `{arg}` (see --help)"),
        },
        ErrorKind::TooManyValues => format!("{arg} takes no value, not `{value}`"),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation if value.is_empty() => {
            // `--plugin --json`: the next word is an option, not the value.
            let next = args
                .iter()
                .skip_while(|a| a.to_string_lossy() != arg)
                .nth(1)
                .map(|a| a.to_string_lossy().into_owned());
            match next {
                Some(n) if n.starts_with('-') => format!(
                    "{arg} needs a value, and `{n}` is an option (for a value starting with '-', \
                     write {arg}={n}; see --help)"
                ),
                _ => format!("{arg} needs a value (see --help)"),
            }
        }
        ErrorKind::InvalidValue => {
            let valid = match e.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(v)) => v
                    .iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(" or "),
                _ => "another value".to_owned(),
            };
            format!("{arg} takes {valid}, not `{value}`")
        }
        ErrorKind::ValueValidation => {
            let why = std::error::Error::source(e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "takes another value".to_owned());
            format!("{arg} {why}, not `{value}`")
        }
        _ => {
            // Clap's first line, without its `error: ` prefix.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            first.trim_start_matches("error: ").to_owned()
        }
    }
}

/// How a run ended, and so the exit status.
enum End {
    /// Ended normally: 0.
    Done,
    /// `--no-watch`'s first build or load failed: 1.
    FirstLoadFailed,
    /// Writing stdout failed: [`EXIT_OUTPUT_CLOSED`] when the reader went away, else 1.
    Output(io::ErrorKind, String),
    /// The host died of an internal error: [`EXIT_INTERNAL`].
    Internal(anyhow::Error),
}

impl End {
    fn status(&self) -> u8 {
        match self {
            End::Done => 0,
            End::FirstLoadFailed => 1,
            End::Output(io::ErrorKind::BrokenPipe, _) => EXIT_OUTPUT_CLOSED,
            End::Output(..) => 1,
            End::Internal(_) => EXIT_INTERNAL,
        }
    }

    /// Says why on stderr (the first build's failure is printed where it happens; a closed
    /// pipe is silent, as for a tool killed by SIGPIPE).
    fn say(&self) {
        match self {
            End::Output(kind, e) if *kind != io::ErrorKind::BrokenPipe => {
                eprintln!("error: cannot write the output, the host stops: {e}");
            }
            End::Internal(e) => eprintln!("error: {e:#}"),
            _ => {}
        }
    }
}

/// Once the output has closed, ends the host: stops the session through `stop` and exits
/// when it has stopped, or after [`SHUTDOWN_GRACE`] (a build in progress ends first; a user
/// function may never return); with nothing to stop (`--no-watch`), exits at once.
fn exit_when_closed(
    closed: mpsc::Receiver<(io::ErrorKind, String)>,
    stop: Option<Stopper>,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("hmr-shutdown".to_owned())
        .spawn(move || {
            let Ok((kind, e)) = closed.recv() else {
                return;
            };
            host::record::finish_all();
            if let Some(stop) = stop {
                stop.stop();
                std::thread::sleep(SHUTDOWN_GRACE);
                eprintln!(
                    "error: the host did not stop within {} s of its output closing; it exits",
                    SHUTDOWN_GRACE.as_secs()
                );
            }
            let end = End::Output(kind, e);
            end.say();
            std::process::exit(end.status().into());
        })
        .context("cannot start the shutdown thread")?;
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<End> {
    exit_on_signals()?;
    let options = cli.options();
    let formatter = if cli.json {
        Formatter::json()
    } else {
        Formatter::human(options.watch)
    };
    let (closed_tx, closed) = mpsc::channel();
    let printer = Printer::stdout(formatter, !options.watch, move |e| {
        let _ = closed_tx.send((e.kind(), e.to_string()));
    })
    .context("cannot start the printer thread")?;
    let sink = printer.sink();
    if let Some(file) = &cli.replay_from {
        // A bad file is an error before anything is built.
        let recorded = host::record::read(file)?;
        for w in &recorded.warnings {
            eprintln!("warning: {w}");
        }
        exit_when_closed(closed, None)?;
        let loaded = replay_from(&options, &recorded, sink, &mut |w| {
            eprintln!("warning: {w}")
        })?;
        if !loaded {
            printer.finish();
            eprintln!(
                "error: the build or load of {} failed (the cause is printed above)",
                options.plugin_dir.display()
            );
            return Ok(End::FirstLoadFailed);
        }
    } else if options.watch {
        let session = Session::start(&options, sink)?;
        exit_when_closed(closed, Some(session.stopper()))?;
        if let Err(e) = session.wait() {
            printer.finish();
            return Ok(End::Internal(e));
        }
    } else {
        exit_when_closed(closed, None)?;
        if !run_once(&options, sink)? {
            printer.finish();
            eprintln!(
                "error: the first build or load of {} failed (the cause is printed above)",
                options.plugin_dir.display()
            );
            return Ok(End::FirstLoadFailed);
        }
    }
    let failure = printer.failure();
    printer.finish();
    Ok(match failure {
        Some((kind, e)) => End::Output(kind, e),
        None => End::Done,
    })
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match parse(&args) {
        Ok(Parsed::Run(cli)) => cli,
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(cli) {
        Ok(end) => {
            end.say();
            ExitCode::from(end.status())
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

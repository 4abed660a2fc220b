//! The `host` binary: runs a plugin crate's pipelines and hot-reloads them on save.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use host::events::{HumanSink, JsonSink, Sink};
use host::runtime::PanicPolicy;
use host::session::{Options, Session, run_once};
use host::watch::DEFAULT_DEBOUNCE;

const HELP: &str = "\
host: hot module replacement for reactive pipelines

Runs the pipelines a plugin crate registers, watches its sources, and on every save
rebuilds it with cargo and swaps the new code in: subscriptions, sources and operator
state (a scan's running total) stay alive; the next value runs the new code.

USAGE:
    host [OPTIONS]

OPTIONS:
    --plugin DIR         the plugin crate to run (a directory holding Cargo.toml with
                         crate-type = [\"cdylib\"]); default: the workspace's example-plugin
    --release            build the plugin with optimizations
    --no-watch           load once and exit when every pipeline has completed
    --json               print one JSON object per line (events: loaded, emission, reload,
                         build-failed, load-failed, error, completed)
    --on-panic MODE      what a panic in a user function does: `drop` (default) drops that
                         value and keeps the subscription; `error` ends the subscription as
                         Rx does, and the next good reload subscribes it again
    --inspect ADDR       serve the inspector (a live page and a JSON API) at ADDR, for
                         example 127.0.0.1:7000 (port 0 picks a free one)
    --debounce-ms N      quiet time before building after a write that did not close its
                         file (default: 30); a finished save builds after 1 ms
    -h, --help           print this help
    -V, --version        print the version

EXAMPLES:
    cargo run -p host
    cargo run -p host -- --plugin ../my-plugin --json
";

struct Cli {
    options: Options,
    json: bool,
}

fn default_plugin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("example-plugin")
}

fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Option<Cli>> {
    let mut options = Options::new(default_plugin_dir());
    options.debounce = DEFAULT_DEBOUNCE;
    let mut json = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let flag_only = |name: &str| -> anyhow::Result<()> {
            match &inline {
                Some(v) => bail!("{name} takes no value, not `{v}`"),
                None => Ok(()),
            }
        };
        let mut value = |name: &str| -> anyhow::Result<String> {
            match inline.clone().or_else(|| args.next()) {
                Some(v) => Ok(v),
                None => bail!("{name} needs a value (see --help)"),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("host {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--plugin" => options.plugin_dir = PathBuf::from(value("--plugin")?),
            "--release" => {
                flag_only("--release")?;
                options.release = true;
            }
            "--no-watch" => {
                flag_only("--no-watch")?;
                options.watch = false;
            }
            "--json" => {
                flag_only("--json")?;
                json = true;
            }
            "--on-panic" => {
                options.on_panic = match value("--on-panic")?.as_str() {
                    "drop" => PanicPolicy::Drop,
                    "error" => PanicPolicy::Error,
                    other => bail!("--on-panic takes `drop` or `error`, not `{other}`"),
                }
            }
            "--inspect" => {
                let v = value("--inspect")?;
                options.inspect = Some(v.parse().with_context(|| {
                    format!("--inspect takes an address such as 127.0.0.1:7000, not `{v}`")
                })?);
            }
            "--debounce-ms" => {
                let v = value("--debounce-ms")?;
                let ms: u64 = v
                    .parse()
                    .with_context(|| format!("--debounce-ms takes milliseconds, not `{v}`"))?;
                options.debounce = Duration::from_millis(ms);
            }
            other => bail!("unknown argument `{other}` (see --help)"),
        }
    }
    Ok(Some(Cli { options, json }))
}

fn run() -> anyhow::Result<bool> {
    let Some(cli) = parse(std::env::args().skip(1))? else {
        return Ok(true);
    };
    let sink: Sink = if cli.json {
        Arc::new(JsonSink)
    } else {
        Arc::new(HumanSink::default())
    };
    if !cli.options.watch {
        let ran = run_once(&cli.options, sink)?;
        if !ran {
            eprintln!(
                "error: the first build or load of {} failed (the cause is printed above)",
                cli.options.plugin_dir.display()
            );
        }
        return Ok(ran);
    }
    let session = Session::start(&cli.options, sink)?;
    session.wait();
    Ok(true)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

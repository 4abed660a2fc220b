//! Fixtures and expectation helpers shared by the integration tests in `tests/`; the host's
//! test kit (`host::testkit`) does the driving.

pub mod cdp;
pub mod inspect;

use host::events::{HostEvent, TrackInfo};

/// A counter whose running total makes lost, repeated or reset state visible: every value
/// adds one step (the `map`'s constant) to the total.
pub const COUNTER: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("counter", interval_ms(5))
        .map(|_n: u64| 1u64)
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .log();
}

plugin_api::export_plugin!(register);
"#;

/// `spin`'s `map` never returns from its third value (it blocks for good, which costs no CPU;
/// a `loop {}` is the same to the watchdog); `ok` runs on beside it.
pub const STUCK: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("spin", interval_ms(5))
        .map(|n: u64| {
            if n == 2 {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
            n
        })
        .log();
    p.pipeline("ok", interval_ms(5)).map(|n: u64| n + 1).log();
}

plugin_api::export_plugin!(register);
"#;

/// A plugin crate's `lib.rs` whose `register` runs `body` (with the prelude in scope).
pub fn plugin(body: &str) -> String {
    format!(
        "use plugin_api::prelude::*;\n\nfn register(p: &mut Plugin) {{\n{body}\n}}\n\n\
         plugin_api::export_plugin!(register);\n"
    )
}

/// How long a test waits for the pipelines to run what a virtual clock made due.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Moves the virtual clock by `ms` and waits until every pipeline ran what became due.
pub fn advance(time: &host::clock::VirtualClock, ms: u64) {
    time.advance(std::time::Duration::from_millis(ms));
    assert!(time.settle(SETTLE), "the pipelines settled");
}

/// (version, number) of each emission of pipeline `p` so far.
pub fn numbers(host: &mut host::testkit::Harness, p: &str) -> Vec<(u64, i64)> {
    host.drain();
    host.emissions(p)
        .iter()
        .map(|(v, x)| (*v, value(x)))
        .collect()
}

/// The number an emission's Debug text holds.
pub fn value(v: &str) -> i64 {
    v.parse().unwrap_or_else(|_| panic!("not a number: {v:?}"))
}

/// A reload's fields: swapped count, resets as `path: reason`, added and removed paths.
pub fn reload_fields(e: &HostEvent) -> (usize, Vec<String>, Vec<String>, Vec<String>) {
    match e {
        HostEvent::Reload {
            swapped,
            reset,
            added,
            removed,
            resets,
            added_paths,
            removed_paths,
            ..
        } => {
            assert_eq!(
                (*reset, *added, *removed),
                (resets.len(), added_paths.len(), removed_paths.len()),
                "counts and lists disagree in {e:?}"
            );
            (
                *swapped,
                resets
                    .iter()
                    .map(|r| format!("{}: {}", r.path, r.reason))
                    .collect(),
                added_paths.clone(),
                removed_paths.clone(),
            )
        }
        other => panic!("not a reload: {other:?}"),
    }
}

/// The version a reload event installed.
pub fn reload_version(e: &HostEvent) -> u64 {
    match e {
        HostEvent::Reload { version, .. } => *version,
        other => panic!("not a reload: {other:?}"),
    }
}

/// The paths of `tracks`.
pub fn paths(tracks: &[TrackInfo]) -> Vec<String> {
    tracks.iter().map(|t| t.path.clone()).collect()
}

/// Checks that `emissions` (version, value) of a [`COUNTER`]-like pipeline step the total by
/// exactly the step of the version that produced each value: nothing lost, nothing repeated,
/// state carried across versions. `step_of` maps a version to its step.
pub fn assert_steps(emissions: &[(u64, String)], start: i64, step_of: impl Fn(u64) -> i64) {
    let mut previous = start;
    for (version, v) in emissions {
        let step = step_of(*version);
        assert_eq!(
            value(v),
            previous + step,
            "at {v} (v{version}) in {emissions:?}"
        );
        previous = value(v);
    }
}

/// Builds `config` with cargo and copies the library to `keep/name` (a later build of the
/// same fixture overwrites cargo's file, not the copy).
pub fn build_copy(
    config: &host::cargo::BuildConfig,
    keep: &std::path::Path,
    name: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let built = host::cargo::build(config)?;
    let path = keep.join(name);
    std::fs::copy(&built.library, &path)?;
    Ok(path)
}

/// A reloader for `config` whose events arrive on the returned channel.
pub fn channel_reloader(
    config: host::cargo::BuildConfig,
) -> anyhow::Result<(
    host::reloader::Reloader,
    std::sync::mpsc::Receiver<HostEvent>,
)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let r = host::reloader::Reloader::new(
        config,
        std::sync::Arc::new(host::events::ChannelSink(tx)),
        host::runtime::PanicPolicy::Drop,
    )?;
    Ok((r, rx))
}

/// The next event on `rx` that `pred` accepts, within `timeout`.
pub fn next_matching(
    rx: &std::sync::mpsc::Receiver<HostEvent>,
    timeout: std::time::Duration,
    mut pred: impl FnMut(&HostEvent) -> bool,
) -> anyhow::Result<HostEvent> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let e = rx
            .recv_timeout(left)
            .map_err(|_| anyhow::anyhow!("no matching event within {timeout:?}"))?;
        if pred(&e) {
            return Ok(e);
        }
    }
}

/// The name prefix every library copy of `reloader` shares (the loader's `<pid>-<n>-v`), to
/// look for copies left behind in their directory.
pub fn copies_prefix(reloader: &host::reloader::Reloader) -> String {
    let names: Vec<String> = reloader
        .versions()
        .iter()
        .map(|v| {
            v.path()
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let Some(first) = names.first() else {
        return String::new();
    };
    names.iter().fold(first.clone(), |p, n| {
        p.chars()
            .zip(n.chars())
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a)
            .collect()
    })
}

/// A port nobody listens on now (bound, then freed).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Connects to `addr`, trying again while nobody listens yet (the host binds once the
/// pipeline starts, after its `loaded` or `reload` event).
pub fn connect(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let deadline = std::time::Instant::now() + host::testkit::EMISSION_TIMEOUT;
    loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => {
                s.set_read_timeout(Some(host::testkit::EMISSION_TIMEOUT))
                    .expect("set a read timeout");
                return s;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!(
                "cannot connect to {addr} within {:?}: {e}",
                host::testkit::EMISSION_TIMEOUT
            ),
        }
    }
}

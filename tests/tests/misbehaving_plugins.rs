//! Plugins that misbehave in ways a panic handler cannot catch: code that never returns.
//! Real builds, a real watching host.

use std::time::Duration;

use host::events::HostEvent;
use host::testkit::{Fixture, Harness};
use integration_tests::{COUNTER, reload_version};

/// A `register` that never returns (here it blocks for good; a spinning loop is the same to
/// the host) fails that load after the deadline, naming the version; the old version keeps
/// running, the watcher keeps watching, and the fix loads. The stuck thread keeps its version
/// mapped and live.
#[test]
fn a_register_that_never_returns_fails_the_load_and_the_fix_loads() -> anyhow::Result<()> {
    let fixture = Fixture::new("register_never_returns", COUNTER);
    let mut options = fixture.options();
    options.register_deadline = Duration::from_secs(2);
    let mut host = Harness::start(&options)?;
    let (v1, _) = host.wait_loaded()?;
    host.wait_emission("counter", |_| true)?;
    let original = fixture.read("src/lib.rs");

    fixture.edit(
        "src/lib.rs",
        "fn register(p: &mut Plugin) {",
        "fn register(p: &mut Plugin) {\n    loop { std::thread::sleep(std::time::Duration::from_secs(3600)); }\n    #[allow(unreachable_code)]",
    );
    let failed = host.wait_outcome()?;
    let HostEvent::LoadFailed { error } = &failed else {
        panic!("expected load-failed, got {failed:?}");
    };
    assert!(
        error.contains("register() of v2 did not return within 2s")
            && error.contains("cannot be stopped"),
        "{error}"
    );
    // The old version still runs.
    let (v, _) = host.wait_emission("counter", |_| true)?;
    assert_eq!(v, v1);

    // The fix is picked up: the reloader was not captured by the stuck registration.
    // (A fix that restored v1 exactly would be "no change": it also changes the step.)
    fixture.write(
        "src/lib.rs",
        &original.replace("|_n: u64| 1u64", "|_n: u64| 2u64"),
    );
    let reload = host.wait_reload()?;
    let v3 = reload_version(&reload);
    assert_eq!(v3, 3, "the stuck attempt used up v2: {reload:?}");
    host.wait_emission_from("counter", v3)?;

    let mut reloader = host.stop().expect("the reloader ends cleanly");
    reloader.runtime().stop_all();
    let live: Vec<u64> = reloader
        .versions()
        .iter()
        .filter(|v| std::sync::Arc::strong_count(v) > 1)
        .map(|v| v.version())
        .collect();
    assert_eq!(
        live,
        vec![2],
        "only the stuck registration's version stays live"
    );
    Ok(())
}

/// A plugin that names a pipeline after the (Linux) thread its `register` runs on, and never returns
/// from `register` while the file `{MARKER}` exists.
#[cfg(target_os = "linux")]
const THREAD_NAMER: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    while std::path::Path::new("{MARKER}").exists() {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
    // The kernel's thread id (`std::thread::current().id()` would be the plugin's own std's,
    // which counts afresh in every loaded copy).
    let tid = std::fs::read_link("/proc/thread-self").expect("linux");
    let tid = tid.file_name().expect("a thread id").to_string_lossy().into_owned();
    p.pipeline(&format!("on-{tid}"), interval_ms(3_600_000))
        .map(|n: u64| n + 1);
}

plugin_api::export_plugin!(register);
"#;

/// Registrations run on one thread, kept from one reload to the next (no thread is started
/// per reload), until a `register` misses its deadline: that thread is left stuck, and the
/// next registration runs on a new one, kept in turn.
#[cfg(target_os = "linux")]
#[test]
fn registrations_share_one_thread_until_one_is_stuck() -> anyhow::Result<()> {
    let scratch = host::testkit::TempDir::new("register_thread_marker");
    let marker = scratch.path().join("stuck");
    let source = THREAD_NAMER.replace("{MARKER}", &marker.display().to_string());
    let fixture = Fixture::new("register_thread_namer", &source);
    let config = fixture.build_config(false)?;
    let library = host::cargo::build(&config)?.library;
    let (mut reloader, _events) = integration_tests::channel_reloader(config)?;
    reloader.set_register_deadline(Duration::from_secs(1));
    let mut thread_of_load = || -> anyhow::Result<Option<String>> {
        let outcome = reloader.load_built(&library, 0);
        if outcome == host::reloader::Outcome::LoadFailed {
            return Ok(None);
        }
        let named: Vec<String> = reloader
            .tracks()
            .into_iter()
            .map(|t| t.path)
            .filter(|p| p.starts_with("on-") && !p.contains('|'))
            .collect();
        anyhow::ensure!(
            named.len() == 1,
            "one pipeline named after its thread: {named:?}"
        );
        Ok(named.into_iter().next())
    };
    let first = thread_of_load()?.expect("v1 loads");
    let second = thread_of_load()?.expect("v2 loads");
    assert_eq!(
        first, second,
        "the second registration ran on another thread"
    );
    std::fs::write(&marker, "")?;
    assert_eq!(
        thread_of_load()?,
        None,
        "a register() that never returns fails the load"
    );
    std::fs::remove_file(&marker)?;
    let after = thread_of_load()?.expect("v4 loads");
    assert_ne!(
        after, first,
        "the stuck thread cannot run the next registration"
    );
    let again = thread_of_load()?.expect("v5 loads");
    assert_eq!(after, again, "the new thread is kept in turn");
    Ok(())
}

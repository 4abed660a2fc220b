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

//! Faults: every failure keeps the last good code running, loses nothing, and says what
//! went wrong. Real cargo builds and real library loads throughout.

use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::Duration;

use host::cargo::{self};
use host::events::{ChannelSink, HostEvent};
use host::reloader::{Outcome, Reloader};
use host::runtime::PanicPolicy;
use host::testkit::{Fixture, Harness, TempDir};
use integration_tests::{COUNTER, assert_steps, reload_fields, reload_version, value};

/// Waits for two more emissions of `counter` from `version`: the old code still runs.
fn still_running(host: &mut Harness, version: u64) -> anyhow::Result<()> {
    for _ in 0..2 {
        let (v, _) = host.wait_emission("counter", |_| true)?;
        assert_eq!(v, version, "the last good version keeps emitting");
    }
    Ok(())
}

/// A compile error is reported with cargo's first diagnostic; the old code keeps emitting;
/// the next good save reloads with the state kept.
#[test]
fn compile_error_keeps_old_code_and_the_fix_keeps_state() -> anyhow::Result<()> {
    let fixture = Fixture::new("compile_error", COUNTER);
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    host.wait_emission("counter", |v| value(v) >= 3)?;

    fixture.edit("src/lib.rs", "acc + n)", "acc + n +)");
    match host.wait_outcome()? {
        HostEvent::BuildFailed { error } => {
            // The first diagnostic: the syntax error the edit made, where it is.
            assert!(error.starts_with("error: expected expression"), "{error}");
            assert!(error.contains("src/lib.rs:"), "names the file: {error}");
        }
        other => panic!("expected build-failed, got {other:?}"),
    }
    still_running(&mut host, v1)?;

    fixture.edit("src/lib.rs", "acc + n +)", "acc + 10 * n)");
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (_, reset, _, _) = reload_fields(&reload);
    assert!(reset.is_empty(), "{reset:?}");
    // The fix runs (a value of v2, not merely a large one: v1 may get there first on a
    // loaded machine), and the total stepped on from v1's without a gap.
    host.wait_emission_from("counter", v2)?;
    let emissions = host.emissions("counter");
    assert_steps(&emissions, 0, |v| if v == v1 { 1 } else { 10 });
    assert!(emissions.iter().any(|(v, _)| *v == v2));
    Ok(())
}

/// A header forged into a plugin: the library exports `hmr_plugin_header` itself.
fn forged(field: &str) -> String {
    format!(
        r#"
use plugin_api::abi::*;

unsafe extern "C" fn register(_host: *const HostApi) -> bool {{
    true
}}

static HEADER: PluginHeader = PluginHeader {{
    {field},
    ..PluginHeader::new(register)
}};

#[unsafe(no_mangle)]
pub extern "C" fn hmr_plugin_header() -> *const PluginHeader {{
    &HEADER
}}
"#
    )
}

/// Libraries the loader must refuse, each with a part of the error it must print; after
/// each, the old code is still running. The last good source then reloads with state kept.
#[test]
fn bad_libraries_are_refused_and_old_code_kept() -> anyhow::Result<()> {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no entry symbol",
            "#[unsafe(no_mangle)]\npub extern \"C\" fn unrelated() -> u32 { 7 }\n".to_owned(),
            "does not export `hmr_plugin_header`",
        ),
        (
            "another ABI version",
            forged("abi_version: 999"),
            "ABI version 999",
        ),
        (
            "another rustc",
            forged("rustc_version: RStr::new(\"rustc 1.0.0 (forged)\")"),
            "rustc rustc 1.0.0 (forged)",
        ),
        (
            "another target",
            forged("target: RStr::new(\"riscv64gc-unknown-none-elf\")"),
            "target riscv64gc-unknown-none-elf",
        ),
        (
            "not our header",
            forged("magic: *b\"NOTHMR\\0\\0\""),
            r#"starts with "NOTHMR\x00\x00", expected "RXHMR\x00\x01\x00""#,
        ),
        (
            "another header size",
            forged("header_size: 8"),
            "header size 8",
        ),
    ];
    let fixture = Fixture::new("bad_libraries", COUNTER);
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    for (what, source, expected) in &cases {
        fixture.write("src/lib.rs", source);
        match host.wait_outcome()? {
            HostEvent::LoadFailed { error } => {
                assert!(error.contains(expected), "{what}: {error}");
                // Named as the person knows it: cargo's library, not the private copy.
                assert!(
                    error.contains("/debug/libhmrfx_bad_libraries.so")
                        && !error.contains(&format!("/{}/", host::loader::COPY_DIR)),
                    "{what}: {error}"
                );
            }
            other => panic!("{what}: expected load-failed, got {other:?}"),
        }
        still_running(&mut host, v1)?;
    }
    // The good source again, with a new step so the library differs from the running one
    // (an identical library is not loaded at all).
    fixture.write("src/lib.rs", &COUNTER.replace("1u64", "7u64"));
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (swapped, reset, added, removed) = reload_fields(&reload);
    assert!(
        reset.is_empty() && added.is_empty() && removed.is_empty(),
        "{reload:?}"
    );
    assert_eq!(swapped, 4);
    host.wait_emission_from("counter", v2)?;
    assert_steps(
        &host.emissions("counter"),
        0,
        |v| if v == v1 { 1 } else { 7 },
    );
    Ok(())
}

/// A truncated (half-written) library is refused with the loader's message, and the
/// running version is untouched.
#[test]
fn truncated_library_is_refused() -> anyhow::Result<()> {
    let fixture = Fixture::new("truncated", COUNTER);
    let config = fixture.build_config(false)?;
    let built = cargo::build(&config)?;
    let (tx, rx) = channel();
    let mut reloader = Reloader::new(config, Arc::new(ChannelSink(tx)), PanicPolicy::Drop)?;
    assert_eq!(
        reloader.load_built(&built.library, 0),
        Outcome::Loaded { version: 1 }
    );

    let scratch = TempDir::new("truncated-lib");
    let bytes = std::fs::read(&built.library)?;
    // A writer stopped after its first page, after the ELF header, before anything; and a
    // file that is not a library at all.
    let cases: [(&str, &[u8]); 5] = [
        ("first page", &bytes[..4096]),
        ("all but the last byte", &bytes[..bytes.len() - 1]),
        ("header only", &bytes[..64]),
        ("empty", &[]),
        ("not a library", b"fn main() {}\n"),
    ];
    for (what, content) in cases {
        let path = scratch
            .path()
            .join(format!("lib{}.so", what.replace(' ', "_")));
        std::fs::write(&path, content)?;
        assert_eq!(reloader.load_built(&path, 0), Outcome::LoadFailed, "{what}");
    }
    assert_eq!(reloader.current(), Some(1));
    let events: Vec<HostEvent> = rx.try_iter().collect();
    let failures: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            HostEvent::LoadFailed { error } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), cases.len(), "{events:?}");
    for error in failures {
        assert!(
            error.contains("is not a complete shared library"),
            "{error}"
        );
    }
    // Version 1 still runs: its pipeline keeps emitting after the refusals.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(HostEvent::Emission { version, .. }) => {
                assert_eq!(version, 1);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("no emission from version 1 after the refusals: {e}"),
        }
    }
    Ok(())
}

/// A panic inside `register` rejects the whole reload with its message; nothing of the
/// half-run registration stays in the store, and the old code keeps running.
#[test]
fn registration_panic_rejects_the_whole_reload() -> anyhow::Result<()> {
    let fixture = Fixture::new("register_panic", COUNTER);
    let mut host = Harness::start(&fixture.options())?;
    let (v1, tracks) = host.wait_loaded()?;
    host.wait_emission("counter", |_| true)?;

    fixture.edit(
        "src/lib.rs",
        "        .log();\n}",
        "        .log();\n    p.pipeline(\"half\", interval_ms(5)).map(|n: u64| n).log();\n    \
         panic!(\"registration exploded\");\n}",
    );
    match host.wait_outcome()? {
        HostEvent::LoadFailed { error } => {
            assert!(error.contains("registration exploded"), "{error}");
        }
        other => panic!("expected load-failed, got {other:?}"),
    }
    still_running(&mut host, v1)?;
    let half = host
        .history()
        .iter()
        .any(|e| matches!(e, HostEvent::Emission { pipeline, .. } if pipeline == "half"));
    assert!(!half, "a pipeline of the rejected run started");

    let reloader = host.stop().expect("the reloader");
    let state = &reloader.recorder().state;
    assert!(
        state.find_by_path("half").is_none(),
        "half-registered track left"
    );
    assert_eq!(state.store.tracks.len(), tracks.len());
    assert!(
        state
            .store
            .tracks
            .values()
            .all(|t| t.pending.is_none() && t.module == v1)
    );
    assert!(state.stack.is_empty());
    Ok(())
}

const PANICKY: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("counter", interval_ms(5))
        .map(|n: u64| if n % 4 == 2 { panic!("bad value {n}") } else { 1u64 })
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .log();
}

plugin_api::export_plugin!(register);
"#;

/// By default a panic in a user function reports an error with the operator's path and
/// message, drops that value only, and the subscription lives on. The source value itself is
/// passed through, so the test sees which values arrived: exactly the panicking ones are
/// missing, each with its error.
#[test]
fn user_panic_drops_that_value_and_the_subscription_lives() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "user_panic",
        &PANICKY
            .replace("{ 1u64 }", "{ n }")
            .replace("        .scan(0u64, |acc: u64, n: u64| acc + n)\n", ""),
    );
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    host.wait_emission("counter", |v| value(v) >= 12)?;
    let arrived: Vec<i64> = host
        .emissions("counter")
        .iter()
        .map(|(_, v)| value(v))
        .collect();
    let last = *arrived.last().expect("emissions");
    let expected: Vec<i64> = (0..=last).filter(|n| n % 4 != 2).collect();
    assert_eq!(arrived, expected, "only the panicking values are missing");
    let errors: Vec<(String, String, String)> = host
        .history()
        .iter()
        .filter_map(|e| match e {
            HostEvent::Error {
                pipeline,
                path,
                message,
            } => Some((pipeline.clone(), path.clone(), message.clone())),
            _ => None,
        })
        .collect();
    let expected: Vec<(String, String, String)> = (0..=last)
        .filter(|n| n % 4 == 2)
        .map(|n| {
            (
                "counter".to_owned(),
                "counter|0:map".to_owned(),
                format!("bad value {n}"),
            )
        })
        .collect();
    // One source thread sends both kinds in value order: the errors read so far are those
    // of the values up to the last emission read.
    assert_eq!(errors, expected, "one error a dropped value");
    Ok(())
}

/// With `--on-panic error` the panic ends the subscription (strict Rx semantics); the next
/// good reload subscribes it again, from a fresh state.
#[test]
fn strict_panic_ends_the_subscription_until_the_next_good_reload() -> anyhow::Result<()> {
    let fixture = Fixture::new("strict_panic", PANICKY);
    let mut options = fixture.options();
    options.on_panic = PanicPolicy::Error;
    let mut host = Harness::start(&options)?;
    let (v1, _) = host.wait_loaded()?;
    host.wait_for(
        "the panic",
        Duration::from_secs(30),
        |e| matches!(e, HostEvent::Error { message, .. } if message == "bad value 2"),
    )?;
    let ended_at = host.history().len();

    fixture.edit("src/lib.rs", "n % 4 == 2", "n % 4 == 99");
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let between: Vec<&HostEvent> = host.history()[ended_at..]
        .iter()
        .filter(|e| matches!(e, HostEvent::Emission { .. } | HostEvent::Error { .. }))
        .collect();
    assert!(
        between.is_empty(),
        "the ended subscription emitted: {between:?}"
    );
    let HostEvent::Reload { restarts, .. } = &reload else {
        unreachable!()
    };
    let restarts: Vec<(&str, &str)> = restarts
        .iter()
        .map(|r| (r.pipeline.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(restarts, vec![("counter", "it had ended with an error")]);
    let (version, first) = host.wait_emission("counter", |_| true)?;
    assert_eq!(
        (version, value(&first)),
        (v2, 1),
        "subscribed again from the seed"
    );
    assert!(v2 > v1);
    Ok(())
}

/// Types that changed across versions: each is reset with its reason, or rejected, as
/// the product brief says; old state is never read as another type.
#[test]
fn changed_types_reset_or_reject_with_a_reason() -> anyhow::Result<()> {
    const STRUCT_STATE: &str = r#"
use plugin_api::prelude::*;

state! {
    #[derive(Clone, Debug)]
    pub struct Acc { pub a: u32, pub b: u32 }
}

fn register(p: &mut Plugin) {
    p.pipeline("counter", interval_ms(5))
        .map(|_n: u64| 1u64)
        .scan(Acc { a: 0, b: 1000 }, |acc: Acc, n: u64| Acc { a: acc.a + n as u32, b: acc.b })
        .map(|acc: Acc| acc.a as u64 * 1_000_000 + acc.b as u64)
        .log();
}

plugin_api::export_plugin!(register);
"#;
    let fixture = Fixture::new("changed_types", STRUCT_STATE);
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    host.wait_emission("counter", |v| value(v) >= 3_000_000)?;

    // 1. A struct whose fields were swapped: same name, same size, another layout.
    fixture.edit(
        "src/lib.rs",
        "pub a: u32, pub b: u32",
        "pub b: u32, pub a: u32",
    );
    let reload = host.wait_reload()?;
    let (_, reset, _, _) = reload_fields(&reload);
    assert!(
        reset
            .iter()
            .any(|r| r.starts_with("counter|1:scan: state type") && r.contains("Acc")),
        "{reset:?}"
    );
    // Fresh from the seed (a = 0 + 1, b = 1000), not the old bytes read with swapped fields.
    let first = host.wait_emission_from("counter", reload_version(&reload))?;
    assert_eq!(value(&first), 1_000_000 + 1000);

    // 2. The value type between two operators.
    fixture.edit(
        "src/lib.rs",
        ".map(|acc: Acc| acc.a as u64 * 1_000_000 + acc.b as u64)",
        ".map(|acc: Acc| acc.a as i64 * 1_000_000 + acc.b as i64)",
    );
    let reload = host.wait_reload()?;
    let (_, reset, _, _) = reload_fields(&reload);
    assert!(
        reset
            .iter()
            .any(|r| r == "counter|2:map: output type changed from u64 to i64"),
        "{reset:?}"
    );
    assert!(
        reset
            .iter()
            .any(|r| r == "counter|3:log: input type changed from u64 to i64"),
        "{reset:?}"
    );
    assert!(
        !reset.iter().any(|r| r.starts_with("counter|1:scan")),
        "{reset:?}"
    );

    // 3. A first operator that no longer takes the source's type: rejected by the compiler,
    //    reported, old code kept.
    fixture.edit("src/lib.rs", ".map(|_n: u64| 1u64)", ".map(|_n: i32| 1u64)");
    match host.wait_outcome()? {
        HostEvent::BuildFailed { error } => {
            // What rustc says of exactly this edit: the closure takes `i32` where the
            // source gives `u64`.
            for part in [
                "error[E0631]: type mismatch in closure arguments",
                "expected closure signature `fn(u64) -> _`",
                "found closure signature `fn(i32) -> _`",
                "src/lib.rs",
            ] {
                assert!(error.contains(part), "{part:?} not in {error}");
            }
        }
        other => panic!("expected build-failed, got {other:?}"),
    }
    let (v, _) = host.wait_emission("counter", |_| true)?;
    assert_eq!(v, reload_version(&reload));
    Ok(())
}

/// Where the cargo wrapper of [`save_storm_ends_on_the_last_save`] logs its builds.
const BUILD_LOG: &str = "HMR_TEST_BUILD_LOG";

/// A cargo that logs when each build starts and ends (nanoseconds since the epoch), then runs
/// the real one. Other commands (the host's `cargo metadata`) are passed through unlogged.
const CARGO_WRAPPER: &str = r#"#!/bin/sh
if [ "$1" != "build" ]; then
    exec "$HMR_TEST_REAL_CARGO" "$@"
fi
echo "start $(date +%s%N)" >> "$HMR_TEST_BUILD_LOG"
"$HMR_TEST_REAL_CARGO" "$@"
rc=$?
echo "end $(date +%s%N)" >> "$HMR_TEST_BUILD_LOG"
exit $rc
"#;

/// Runs this test again in a child process whose cargo is [`CARGO_WRAPPER`], so the builds
/// are counted and timed outside the host (the host's own `build_windows` are filled one
/// after another on one thread and could not show an overlap). The child process has the
/// environment from its start: nothing sets a variable while other tests' threads run.
fn storm_in_a_child() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let scratch = TempDir::new("save-storm-cargo");
    let wrapper = scratch.path().join("cargo");
    std::fs::write(&wrapper, CARGO_WRAPPER)?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args([
        "save_storm_ends_on_the_last_save",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("CARGO", &wrapper)
    .env("HMR_TEST_REAL_CARGO", host::cargo::cargo_binary())
    .env(BUILD_LOG, scratch.path().join("builds.log"));
    let out = host::testkit::output_within(cmd, Duration::from_secs(600))?;
    assert!(
        out.status.success(),
        "the storm failed in its child process:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the child ran no test: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

/// Nanoseconds since the epoch (the clock `date +%s%N` reads).
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos()
}

/// The builds the wrapper logged, as (start, end), and whether the last one was stopped
/// before it ended (stopping the host kills a build in progress, wrapper included: it has no
/// outcome, and `end` is `u128::MAX`); fails if two overlapped.
fn logged_builds(log: &std::path::Path) -> (Vec<(u128, u128)>, bool) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut lines: Vec<(&str, u128)> = text
        .lines()
        .map(|l| {
            let (kind, t) = l.split_once(' ').expect("`kind time`");
            (kind, t.parse().expect("nanoseconds"))
        })
        .collect();
    let stopped = !lines.len().is_multiple_of(2);
    if stopped {
        assert_eq!(
            lines.last().map(|l| l.0),
            Some("start"),
            "a build did not end: {text}"
        );
        lines.push(("end", u128::MAX));
    }
    let builds = lines
        .chunks(2)
        .map(|pair| match pair {
            [("start", s), ("end", e)] => (*s, *e),
            other => panic!("two builds overlapped: {other:?} in\n{text}"),
        })
        .collect();
    (builds, stopped)
}

/// Twenty saves within a second end on the last save, with one build at a time, and no build
/// that no save asked for.
#[test]
fn save_storm_ends_on_the_last_save() -> anyhow::Result<()> {
    let Some(log) = std::env::var_os(BUILD_LOG) else {
        return storm_in_a_child();
    };
    let log = std::path::PathBuf::from(log);
    let fixture = Fixture::new("save_storm", COUNTER);
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    host.wait_emission("counter", |_| true)?;

    let mut current = "1u64".to_owned();
    let mut saves = Vec::new();
    for step in 2..=21 {
        let next = format!("{step}u64");
        let before = now_ns();
        fixture.edit(
            "src/lib.rs",
            &format!("|_n: u64| {current}"),
            &format!("|_n: u64| {next}"),
        );
        // The write happened between these two readings of the clock.
        saves.push((before, now_ns()));
        current = next;
        // A person typing and saving: about twenty saves in a second. This paces the test's
        // own writes; nothing waits on the host here.
        std::thread::sleep(Duration::from_millis(45));
    }
    // The last save's code runs: the total steps by 21.
    let mut last = None;
    host.wait_for(
        "a value stepped by the last save",
        Duration::from_secs(240),
        |e| {
            if let HostEvent::Emission {
                pipeline, value: v, ..
            } = e
                && pipeline == "counter"
            {
                let v = value(v);
                let stepped = last.is_some_and(|l| v - l == 21);
                last = Some(v);
                return stepped;
            }
            false
        },
    )?;
    host.stop().expect("the reloader");
    let count = |f: fn(&HostEvent) -> bool| host.history().iter().filter(|e| f(e)).count();
    let reloads = count(|e| matches!(e, HostEvent::Reload { .. }));
    let failures = count(|e| {
        matches!(
            e,
            HostEvent::BuildFailed { .. } | HostEvent::LoadFailed { .. }
        )
    });
    let unchanged = count(|e| matches!(e, HostEvent::Unchanged { .. }));
    let (builds, stopped) = logged_builds(&log);
    eprintln!(
        "{} builds for {} saves: {reloads} reloads, {unchanged} unchanged, {failures} failed; \
         builds took {:?} ms",
        builds.len(),
        saves.len(),
        builds
            .iter()
            .map(|(s, e)| (e - s) / 1_000_000)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        1 + reloads + failures + unchanged + usize::from(stopped),
        builds.len(),
        "the first load, then one outcome a build (but a build stopped with the host)"
    );
    // Coalesced, tightly: every build after the first load was asked for by a save made
    // after the previous build started (at most one follow-up per build).
    for pair in builds.windows(2) {
        let ((previous, _), (start, _)) = (pair[0], pair[1]);
        assert!(
            saves
                .iter()
                .any(|&(before, after)| previous < after && before < start),
            "a build no save asked for: {pair:?}, saves {saves:?}"
        );
    }
    // At most one build after the last save. None when the last save landed while a build
    // was reading the sources: that build compiled it (its value ran, checked above), and the
    // watcher, which compares what changed with what that build read, asks for no other.
    let (last_save, saved) = *saves.last().expect("saves");
    let after = builds.iter().filter(|(s, _)| *s > last_save).count();
    assert!(after <= 1, "builds after the last save: {builds:?}");
    if after == 0 {
        let (_, last_end) = *builds.last().expect("builds");
        assert!(
            last_end > saved,
            "no build after the last save, and the last build ended before it: {builds:?}"
        );
    }
    Ok(())
}

//! Reloads while a source pushes millions of values a second through a stateful pipeline:
//! nothing lost, nothing delivered twice, every output from exactly one version, no
//! deadlock. And a soak: hundreds of reloads, every version stays mapped, memory stays flat.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use host::cargo::{self, BuildConfig};
use host::events::{ChannelSink, HostEvent};
use host::reloader::{Outcome, Reloader, plugin_manifest};
use host::runtime::PanicPolicy;
use host::testkit::{Fixture, TempDir, fixture_target_dir, rss_bytes, workspace_root};

const LOAD: &str = r#"
use plugin_api::prelude::*;

const TAG: u64 = 1;

state! {
    #[derive(Clone, Debug)]
    pub struct Tally { pub count: u64, pub sum: u64, pub mixed: u64, pub a: u64, pub b: u64 }
}

fn register(p: &mut Plugin) {
    p.pipeline("load", range(0, 1 << 40))
        .map(|n: u64| (n, TAG))
        .scan(
            Tally { count: 0, sum: 0, mixed: 0, a: 0, b: 0 },
            |mut t: Tally, (n, tag): (u64, u64)| {
                t.count += 1;
                t.sum = t.sum.wrapping_add(n);
                if tag != TAG {
                    t.mixed += 1;
                }
                if TAG == 1 { t.a += 1 } else { t.b += 1 }
                t
            },
        )
        .filter(|t: &Tally| t.count % (1 << 18) == 0)
        .log();
}

plugin_api::export_plugin!(register);
"#;

/// Builds `fixture` as it is now and keeps a copy of its library in `keep` named `name`.
fn build_copy(config: &BuildConfig, keep: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let built = cargo::build(config)?;
    let path = keep.join(name);
    std::fs::copy(&built.library, &path)?;
    Ok(path)
}

fn reloader(config: BuildConfig) -> anyhow::Result<(Reloader, Receiver<HostEvent>)> {
    let (tx, rx) = channel();
    let r = Reloader::new(config, Arc::new(ChannelSink(tx)), PanicPolicy::Drop)?;
    Ok((r, rx))
}

/// Parses `Tally { count: 1, sum: 2, mixed: 0, a: 1, b: 0 }`.
fn tally(text: &str) -> [u64; 5] {
    let mut out = [0u64; 5];
    for (i, field) in ["count", "sum", "mixed", "a", "b"].iter().enumerate() {
        let at = text.find(&format!("{field}: ")).expect(field) + field.len() + 2;
        let digits: String = text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        out[i] = digits.parse().expect("a number");
    }
    out
}

#[test]
fn fifty_reloads_under_load_lose_and_repeat_nothing() -> anyhow::Result<()> {
    let fixture = Fixture::new("under_load", LOAD);
    let config = BuildConfig {
        manifest: plugin_manifest(fixture.path())?,
        release: false,
        target_dir: Some(fixture_target_dir()),
    };
    let keep = TempDir::new("under-load-libs");
    let a = build_copy(&config, keep.path(), "liba.so")?;
    fixture.edit("src/lib.rs", "const TAG: u64 = 1;", "const TAG: u64 = 2;");
    let b = build_copy(&config, keep.path(), "libb.so")?;

    let (mut reloader, rx) = reloader(config)?;
    assert_eq!(reloader.load_built(&a, 0), Outcome::Loaded { version: 1 });
    let mut last = 1;
    for i in 0..50 {
        let lib = if i % 2 == 0 { &b } else { &a };
        match reloader.load_built(lib, 0) {
            Outcome::Loaded { version } => last = version,
            other => panic!("reload {i}: {other:?}"),
        }
    }
    // Wait for a checkpoint produced by the last version.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut checkpoints = Vec::new();
    let mut reloads = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = rx
            .recv_timeout(left)
            .map_err(|_| anyhow::anyhow!("no checkpoint from v{last} within 60 s (deadlock?)"))?;
        match e {
            HostEvent::Emission { version, value, .. } => {
                checkpoints.push((version, tally(&value)));
                if version == last {
                    break;
                }
            }
            HostEvent::Reload { reset, .. } => {
                assert!(
                    reset.is_empty(),
                    "a same-signature reload reset state: {reset:?}"
                );
                reloads += 1;
            }
            HostEvent::Error { message, .. } => panic!("error under load: {message}"),
            _ => {}
        }
    }
    drop(reloader);
    assert_eq!(reloads, 50);
    assert!(!checkpoints.is_empty());
    let step = 1u64 << 18;
    let mut previous = 0;
    for (version, [count, sum, mixed, in_a, in_b]) in &checkpoints {
        assert_eq!(
            *count,
            previous + step,
            "a checkpoint lost or repeated at v{version}"
        );
        previous = *count;
        let model = (u128::from(*count) * u128::from(count - 1) / 2) as u64;
        assert_eq!(*sum, model, "values lost or delivered twice before {count}");
        assert_eq!(*mixed, 0, "an emission ran through two versions");
        assert_eq!(
            in_a + in_b,
            *count,
            "every value ran through exactly one version"
        );
    }
    let [_, _, _, in_a, in_b] = checkpoints.last().expect("checkpoints").1;
    assert!(
        in_a > 0 && in_b > 0,
        "both versions ran: a {in_a}, b {in_b}"
    );
    Ok(())
}

/// How many of `reloader`'s library copies the process still maps.
fn still_mapped(reloader: &Reloader) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mapped: std::collections::BTreeSet<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    reloader
        .versions()
        .iter()
        .filter(|v| {
            let p = v.path().display().to_string();
            mapped.contains(p.as_str()) || mapped.contains(format!("{p} (deleted)").as_str())
        })
        .count()
}

/// 200 reloads of the example plugin: resident memory grows by at most 1 MiB a reload,
/// every version stays mapped, and retired versions stop being live once their pipelines
/// moved on.
#[test]
fn soak_two_hundred_reloads_of_the_example_plugin() -> anyhow::Result<()> {
    let config = BuildConfig {
        manifest: plugin_manifest(&workspace_root().join("example-plugin"))?,
        release: false,
        target_dir: Some(fixture_target_dir()),
    };
    let built = cargo::build(&config)?;
    let (mut reloader, rx) = reloader(config)?;
    let mut version = 0;
    let mut reload = |reloader: &mut Reloader| match reloader.load_built(&built.library, 0) {
        Outcome::Loaded { version: v } => version = v,
        other => panic!("{other:?}"),
    };
    for _ in 0..20 {
        reload(&mut reloader);
    }
    let before = rss_bytes();
    for _ in 0..200 {
        reload(&mut reloader);
    }
    let after = rss_bytes();
    let per_reload = after.saturating_sub(before) / 200;
    eprintln!("soak: resident {before} -> {after} bytes over 200 reloads, {per_reload} a reload");
    assert!(
        per_reload <= 1 << 20,
        "resident memory grew {per_reload} bytes per reload ({before} -> {after})"
    );
    assert_eq!(reloader.mapped_versions(), 220);
    if cfg!(target_os = "linux") {
        assert_eq!(still_mapped(&reloader), 220, "a version was unmapped");
    }
    // Once the counter ticked on the last version, older versions hold nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left)? {
            HostEvent::Emission {
                pipeline,
                version: v,
                ..
            } if pipeline == "counter" && v == version => break,
            _ => {}
        }
    }
    let live = reloader.live_versions();
    assert!(
        live <= 2,
        "{live} versions still live after the pipelines moved on"
    );
    Ok(())
}

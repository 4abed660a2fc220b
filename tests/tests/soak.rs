//! A soak: 200 reloads of the example plugin in a process of its own (this file is its own
//! test binary, so nothing else moves its memory): every version stays mapped, resident
//! memory grows by at most 1 MiB a reload, no library copy is left on disk, and retired
//! versions stop being live.

use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use host::cargo::{self, BuildConfig};
use host::events::{ChannelSink, HostEvent};
use host::reloader::{Outcome, Reloader, plugin_manifest};
use host::runtime::PanicPolicy;
use host::testkit::{fixture_target_dir, rss_bytes, workspace_root};

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
    let (tx, rx) = channel();
    let mut reloader = Reloader::new(config, Arc::new(ChannelSink(tx)), PanicPolicy::Drop)?;
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
    // Every copy was unlinked once mapped: none of the 220 is on disk, in the target dir
    // beside cargo's library (not the system temp dir, where a tmpfs would keep them in RAM).
    let copies = built
        .library
        .parent()
        .expect("a directory")
        .join(host::loader::COPY_DIR);
    for v in reloader.versions() {
        assert_eq!(
            v.path().parent(),
            Some(copies.as_path()),
            "{}",
            v.path().display()
        );
        assert!(!v.path().exists(), "{} remains", v.path().display());
    }
    let live = reloader.live_versions();
    assert!(
        live <= 2,
        "{live} versions still live after the pipelines moved on"
    );
    Ok(())
}

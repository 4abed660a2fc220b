//! Reloads while a source pushes millions of values a second through a stateful pipeline:
//! nothing lost, nothing delivered twice, every output from exactly one version, no
//! deadlock. (The soak, which measures this process's memory, has a file of its own.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use host::cargo::{self, BuildConfig};
use host::events::{ChannelSink, HostEvent};
use host::reloader::{Outcome, Reloader};
use host::runtime::PanicPolicy;
use host::testkit::{Fixture, TempDir};

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
    let config = fixture.build_config(false)?;
    let keep = TempDir::new("under-load-libs");
    let a = build_copy(&config, keep.path(), "liba.so")?;
    fixture.edit("src/lib.rs", "const TAG: u64 = 1;", "const TAG: u64 = 2;");
    let b = build_copy(&config, keep.path(), "libb.so")?;

    let (mut reloader, rx) = reloader(config)?;
    let mut checkpoints = Vec::new();
    let mut reloads = 0;
    // Reads events until a checkpoint of `version` has been seen (keeping every checkpoint
    // and counting reloads); fails after 60 s.
    let mut read_until = |version: u64, reloads_seen: usize| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut reached = checkpoints.iter().any(|(v, _)| *v == version);
        while !(reached && reloads >= reloads_seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = rx.recv_timeout(left).map_err(|_| {
                anyhow::anyhow!("no checkpoint from v{version} within 60 s (deadlock?)")
            })?;
            match e {
                HostEvent::Emission {
                    version: v, value, ..
                } => {
                    reached |= v == version;
                    checkpoints.push((v, tally(&value)));
                }
                HostEvent::Reload { resets, .. } => {
                    assert!(
                        resets.is_empty(),
                        "a same-signature reload reset state: {resets:?}"
                    );
                    reloads += 1;
                }
                HostEvent::Error { message, .. } => panic!("error under load: {message}"),
                _ => {}
            }
        }
        Ok(())
    };
    // Version 1 (body a) runs, then version 2 (body b) runs, so both bodies certainly
    // emitted whatever the scheduler does; then 49 more reloads, as fast as they go.
    assert_eq!(reloader.load_built(&a, 0), Outcome::Loaded { version: 1 });
    read_until(1, 0)?;
    assert_eq!(reloader.load_built(&b, 0), Outcome::Loaded { version: 2 });
    read_until(2, 1)?;
    let mut last = 2;
    for i in 1..50 {
        let lib = if i % 2 == 0 { &b } else { &a };
        match reloader.load_built(lib, 0) {
            Outcome::Loaded { version } => last = version,
            other => panic!("reload {i}: {other:?}"),
        }
    }
    read_until(last, 50)?;
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
        // True by construction (one library runs each push): kept as the model's check.
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

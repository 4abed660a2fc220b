//! Support for the benchmarks in `benches/summary.rs`: release-built fixture plugins, loading
//! them into [`Publisher`]s the way the host does, statistics, and sinks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use host::cargo::{self, BuildConfig};
use host::code::PipelineCode;
use host::events::{EventSink, HostEvent};
use host::loader::{LibVersion, Loader};
use host::runtime::Publisher;
use host::testkit::Fixture;

/// A fixture plugin built with `--release` into the shared fixture target dir.
#[derive(Debug)]
pub struct Built {
    /// The crate (kept alive: its directory is removed on drop).
    pub fixture: Fixture,
    /// Cargo's output library.
    pub library: PathBuf,
}

/// Writes `source` as a plugin crate named `name` and builds it with `--release`.
pub fn build_release(name: &str, source: &str) -> anyhow::Result<Built> {
    let fixture = Fixture::new(name, source);
    let built = cargo::build(&release_config(&fixture)?)
        .with_context(|| format!("building the {name} fixture"))?;
    Ok(Built {
        fixture,
        library: built.library,
    })
}

/// The build configuration of `fixture`, release.
pub fn release_config(fixture: &Fixture) -> anyhow::Result<BuildConfig> {
    fixture.build_config(true)
}

/// One loaded plugin version, its pipelines ready to drive.
#[derive(Debug)]
pub struct Loaded {
    /// The library.
    pub lib: Arc<LibVersion>,
    /// Each pipeline's publisher, by name.
    pub pipelines: BTreeMap<String, Publisher>,
}

/// Loads `library` as the host does (check, copy, open, header, registration) and returns
/// its compiled pipelines.
pub fn load_codes(
    loader: &Loader,
    library: &std::path::Path,
    version: u64,
) -> anyhow::Result<(Arc<LibVersion>, Vec<PipelineCode>)> {
    let (lib, _) = loader.load(library, version)?;
    let mut recorder = hmr_track::Recorder::new();
    let (_, codes) =
        host::register::register(&lib, &mut recorder, host::register::REGISTER_DEADLINE)?;
    Ok((lib, codes))
}

/// Loads `library` as the host does, each pipeline behind its own [`Publisher`].
pub fn load(loader: &Loader, library: &std::path::Path, version: u64) -> anyhow::Result<Loaded> {
    let (lib, codes) = load_codes(loader, library, version)?;
    let pipelines = codes
        .into_iter()
        .map(|c| (c.name.clone(), Publisher::new(c)))
        .collect();
    Ok(Loaded { lib, pipelines })
}

/// A sink that counts events and keeps the last emission's value.
#[derive(Debug, Default)]
pub struct CountingSink {
    /// Events seen.
    pub events: AtomicU64,
    /// The last emission's value.
    pub last: std::sync::Mutex<Option<String>>,
}

impl EventSink for CountingSink {
    fn event(&self, event: HostEvent) {
        self.events.fetch_add(1, Ordering::Relaxed);
        if let HostEvent::Emission { value, .. } = event
            && let Ok(mut last) = self.last.lock()
        {
            *last = Some(value);
        }
    }
}

/// The median of `samples` (sorted in place).
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len();
    if n == 0 {
        return f64::NAN;
    }
    if !n.is_multiple_of(2) {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..=1) of `samples` (sorted in place).
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    if samples.is_empty() {
        return f64::NAN;
    }
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i]
}

/// Nanoseconds per item of `elapsed` over `items`.
pub fn ns_per(elapsed: Duration, items: u64) -> f64 {
    elapsed.as_nanos() as f64 / items as f64
}

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
/// its compiled pipelines. Each call registers into a fresh store: for one-off loads only
/// (reloads go through a `Reloader`, whose reconcile decides what state is kept).
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

impl CountingSink {
    /// The last emission's value as a `u64`: what a chain ending in `reduce(..).log()` computed.
    pub fn last_u64(&self) -> anyhow::Result<u64> {
        let last = self
            .last
            .lock()
            .map_err(|_| anyhow::anyhow!("the sink's lock is poisoned"))?
            .clone()
            .context("the pipeline emitted nothing to the host")?;
        last.parse()
            .with_context(|| format!("the pipeline emitted {last:?}, not a number"))
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

/// What the batch and push chains (`map(n * 2)` -> `filter(n % 3 == 0)` -> wrapping sum)
/// compute over the values `0..n`, in closed form: the multiples of 3 below `n`, doubled and
/// summed, `3k(k - 1)` for `k = ceil(n / 3)` of them. Independent of every contender.
pub fn chain_sum(n: u64) -> u64 {
    let k = n.div_ceil(3);
    3u64.wrapping_mul(k).wrapping_mul(k.saturating_sub(1))
}

/// The C source of the `LD_PRELOAD` allocation counter (scenario 6).
pub const MALLOC_COUNTER_C: &str = include_str!("../alloc-counter/malloc_count.c");

/// Compiles the allocation counter with the machine's C compiler (`$CC`, else `cc`) into
/// `dir/malloc_count.so` and returns its path.
pub fn build_malloc_counter(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let source = dir.join("malloc_count.c");
    std::fs::write(&source, MALLOC_COUNTER_C)
        .with_context(|| format!("writing {}", source.display()))?;
    let out = dir.join("malloc_count.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = std::process::Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .with_context(|| {
            format!("running the C compiler {cc} (the allocation counter needs one)")
        })?;
    anyhow::ensure!(
        status.success(),
        "compiling the allocation counter with {cc} failed: {status}"
    );
    Ok(out)
}

/// The process-wide allocation count of the preloaded counter (`hmr_bench_allocations`),
/// read through a function found once.
pub struct AllocationCounter {
    read: unsafe extern "C" fn() -> u64,
}

impl AllocationCounter {
    /// Finds the counter in this process (preloaded with `LD_PRELOAD`).
    pub fn find() -> anyhow::Result<AllocationCounter> {
        let this = libloading::os::unix::Library::this();
        // SAFETY: `hmr_bench_allocations` is defined by `malloc_count.c` as
        // `uint64_t hmr_bench_allocations(void)`, which is the type given here; a preloaded
        // library stays mapped for the life of the process, so the pointer stays valid
        // after `this` is dropped.
        let read = unsafe {
            *this
                .get::<unsafe extern "C" fn() -> u64>(b"hmr_bench_allocations\0")
                .context("the allocation counter is not preloaded (LD_PRELOAD)")?
        };
        Ok(AllocationCounter { read })
    }

    /// Allocations made so far by every thread and library of the process.
    pub fn get(&self) -> u64 {
        // SAFETY: see `find`: a C function without arguments that reads an atomic.
        unsafe { (self.read)() }
    }
}

/// One row of the verdict table: a target, what was measured, and whether it was met.
#[derive(Debug)]
pub struct Verdict {
    /// The target as DESIGN.md (or the issue that set it) states it.
    pub target: String,
    /// The figures the verdict was computed from.
    pub measured: String,
    /// `Some(true)` met, `Some(false)` missed, `None` for information only.
    pub met: Option<bool>,
}

impl Verdict {
    /// The verdict's word.
    pub fn word(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "info",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed form against the chain itself, run directly, for small and edge counts.
    #[test]
    fn chain_sum_matches_the_chain() {
        for n in [0u64, 1, 2, 3, 4, 5, 6, 7, 100, 1_000, 12_345] {
            let direct = (0..n)
                .map(|x| x * 2)
                .filter(|x| x % 3 == 0)
                .fold(0u64, |a, x| a.wrapping_add(x));
            assert_eq!(chain_sum(n), direct, "n = {n}");
        }
    }
}

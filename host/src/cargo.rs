//! Building a plugin crate with cargo and finding the library it produced.
//!
//! The host runs `cargo build --lib --message-format=json` on the plugin's manifest and reads
//! cargo's JSON messages: the `compiler-artifact` of the plugin package names the `cdylib`
//! file (so `CARGO_TARGET_DIR`, workspaces and profiles are cargo's business, not ours), and
//! the first `compiler-message` of level `error` is what a failed build reports, as cargo
//! rendered it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How to build a plugin.
#[derive(Clone, Debug)]
pub struct BuildConfig {
    /// The plugin's `Cargo.toml`.
    pub manifest: PathBuf,
    /// `--release`.
    pub release: bool,
    /// A target directory for this build (`CARGO_TARGET_DIR`); `None` leaves it to cargo and
    /// the environment.
    pub target_dir: Option<PathBuf>,
}

/// A finished build.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// The `cdylib` cargo wrote.
    pub library: PathBuf,
    /// How long cargo ran.
    pub elapsed: Duration,
}

/// Why a build produced no library.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Cargo could not be started.
    #[error("cannot run {cargo}: {source}")]
    Spawn {
        /// The cargo binary.
        cargo: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The compiler rejected the code: the first error, as cargo rendered it.
    #[error("{rendered}")]
    Compile {
        /// The rendered diagnostic.
        rendered: String,
    },
    /// Cargo failed without a compiler error (a bad manifest, a missing dependency).
    #[error("cargo build of {manifest} failed: {stderr}")]
    Cargo {
        /// The manifest.
        manifest: PathBuf,
        /// The end of cargo's stderr.
        stderr: String,
    },
    /// The build succeeded but produced no `cdylib`.
    #[error("cargo built {manifest} but produced no cdylib: add `[lib] crate-type = [\"cdylib\"]`")]
    NoLibrary {
        /// The manifest.
        manifest: PathBuf,
    },
}

#[derive(Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    manifest_path: Option<PathBuf>,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    filenames: Vec<PathBuf>,
    #[serde(default)]
    message: Option<Diagnostic>,
}

#[derive(Deserialize)]
struct Target {
    #[serde(default)]
    kind: Vec<String>,
}

#[derive(Deserialize)]
struct Diagnostic {
    #[serde(default)]
    level: String,
    #[serde(default)]
    rendered: Option<String>,
}

/// The cargo binary: the one running us when we were started by `cargo run`, else `cargo`.
pub fn cargo_binary() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Builds the plugin described by `config`.
pub fn build(config: &BuildConfig) -> Result<Artifact, BuildError> {
    let cargo = cargo_binary();
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--lib")
        .arg("--message-format=json")
        .arg("--manifest-path")
        .arg(&config.manifest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if config.release {
        cmd.arg("--release");
    }
    if let Some(dir) = &config.target_dir {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    let started = Instant::now();
    let output = cmd.output().map_err(|source| BuildError::Spawn {
        cargo: cargo.clone(),
        source,
    })?;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut library = None;
    let mut first_error = None;
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<Message>(line) else {
            continue;
        };
        match msg.reason.as_str() {
            "compiler-artifact" => {
                let is_plugin = msg
                    .manifest_path
                    .as_deref()
                    .is_some_and(|m| same_file(m, &config.manifest));
                let is_cdylib = msg
                    .target
                    .as_ref()
                    .is_some_and(|t| t.kind.iter().any(|k| k == "cdylib"));
                if is_plugin && is_cdylib {
                    library = msg.filenames.into_iter().find(|f| is_dylib(f));
                }
            }
            "compiler-message" if first_error.is_none() => {
                if let Some(d) = msg.message.filter(|d| d.level == "error") {
                    first_error = d.rendered;
                }
            }
            _ => {}
        }
    }
    if !output.status.success() {
        if let Some(rendered) = first_error {
            return Err(BuildError::Compile {
                rendered: rendered.trim_end().to_owned(),
            });
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .rev()
            .take(6)
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(BuildError::Cargo {
            manifest: config.manifest.clone(),
            stderr: tail.join("\n"),
        });
    }
    match library {
        Some(library) => Ok(Artifact { library, elapsed }),
        None => Err(BuildError::NoLibrary {
            manifest: config.manifest.clone(),
        }),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn is_dylib(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("so" | "dylib" | "dll")
    )
}

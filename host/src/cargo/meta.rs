//! `cargo metadata`: where the target directory is, and whether the crate is a plugin.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{BuildConfig, BuildError, cargo_binary, cargo_command, same_file, stderr_tail};

/// What `cargo metadata` says about the plugin's crate.
#[derive(Clone, Debug)]
pub struct Metadata {
    /// The target directory cargo builds into (config, environment and workspace included).
    pub target_dir: PathBuf,
    /// The workspace root (the plugin's own directory for a standalone crate).
    pub workspace_root: PathBuf,
    /// The workspace's member packages.
    pub packages: Vec<Package>,
}

/// A package of the workspace.
#[derive(Clone, Debug, Deserialize)]
pub struct Package {
    /// Its name.
    pub name: String,
    /// Its `Cargo.toml`.
    pub manifest_path: PathBuf,
    /// Its targets (lib, bins, build script, ...).
    pub targets: Vec<PackageTarget>,
}

/// A target of a package.
#[derive(Clone, Debug, Deserialize)]
pub struct PackageTarget {
    /// `lib`, `cdylib`, `bin`, `custom-build`, ...
    pub kind: Vec<String>,
    /// The crate types it builds.
    #[serde(default)]
    pub crate_types: Vec<String>,
}

impl Package {
    fn builds_cdylib(&self) -> bool {
        self.targets
            .iter()
            .any(|t| t.crate_types.iter().chain(&t.kind).any(|k| k == "cdylib"))
    }
}

#[derive(Deserialize)]
struct RawMetadata {
    target_directory: PathBuf,
    workspace_root: PathBuf,
    packages: Vec<Package>,
}

/// Runs `cargo metadata --format-version 1 --no-deps` for `config`'s crate.
pub fn metadata(config: &BuildConfig) -> Result<Metadata, BuildError> {
    let mut cmd = cargo_command(config, "metadata");
    cmd.args(["--format-version", "1", "--no-deps"]);
    let output = cmd.output().map_err(|source| BuildError::Spawn {
        cargo: cargo_binary(),
        source,
    })?;
    let failed = |stderr: String| BuildError::Cargo {
        manifest: config.manifest.clone(),
        stderr,
    };
    if !output.status.success() {
        return Err(failed(stderr_tail(&String::from_utf8_lossy(
            &output.stderr,
        ))));
    }
    let raw: RawMetadata = serde_json::from_slice(&output.stdout)
        .map_err(|e| failed(format!("cannot read cargo metadata's output: {e}")))?;
    Ok(Metadata {
        target_dir: raw.target_directory,
        workspace_root: raw.workspace_root,
        packages: raw.packages,
    })
}

/// Checks, with cargo's own reading of the manifest, that `manifest` builds a `cdylib`;
/// the error says what to do instead (for a virtual workspace: which members to run).
pub fn check_plugin(meta: &Metadata, manifest: &Path) -> Result<(), String> {
    if let Some(package) = meta
        .packages
        .iter()
        .find(|p| same_file(&p.manifest_path, manifest))
    {
        return if package.builds_cdylib() {
            Ok(())
        } else {
            Err(format!(
                "{} does not build a cdylib: add `[lib] crate-type = [\"cdylib\"]`",
                manifest.display()
            ))
        };
    }
    let members: Vec<String> = meta
        .packages
        .iter()
        .filter(|p| p.builds_cdylib())
        .map(|p| {
            let dir = p.manifest_path.parent().unwrap_or(&p.manifest_path);
            format!("{} ({})", p.name, dir.display())
        })
        .collect();
    if members.is_empty() {
        Err(format!(
            "{} is a workspace, not a plugin crate, and none of its members builds a cdylib",
            manifest.display()
        ))
    } else {
        Err(format!(
            "{} is a workspace, not a plugin crate: pass --plugin one of its cdylib members: {}",
            manifest.display(),
            members.join(", ")
        ))
    }
}

/// The manifest of the plugin crate in `dir`, after checking that it is one: a directory
/// holding a `Cargo.toml` whose package builds a `cdylib` (read by `cargo metadata`). A
/// manifest cargo cannot read passes: the first build reports what is wrong with it, and
/// the host picks up the fix.
pub fn plugin_manifest(dir: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::bail;
    if !dir.exists() {
        bail!("plugin directory {} does not exist", dir.display());
    }
    if !dir.is_dir() {
        bail!("plugin path {} is not a directory", dir.display());
    }
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} holds no Cargo.toml: a plugin directory is a cargo crate",
            dir.display()
        );
    }
    let config = BuildConfig {
        manifest: manifest.clone(),
        release: false,
        target_dir: None,
    };
    if let Ok(meta) = metadata(&config)
        && let Err(why) = check_plugin(&meta, &manifest)
    {
        bail!("{why}");
    }
    Ok(manifest)
}

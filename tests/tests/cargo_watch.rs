//! What cargo says the plugin is built from, end to end on real builds: edits to a path
//! dependency and to a file read with `include_str!` reload; a file restored with an older
//! modification time is rebuilt instead of reported as "no change"; library copies live under
//! the target directory and none is left behind; the plugin check reads cargo's metadata.

use std::path::{Path, PathBuf};

use anyhow::Context;
use std::time::{Duration, SystemTime};

use host::events::HostEvent;
use host::loader::COPY_DIR;
use host::testkit::{Fixture, Harness, TempDir, fixture_target_dir};
use integration_tests::{assert_steps, reload_version, value};

/// How long a reload after an edit may take here: a dependency and the plugin are rebuilt
/// (seconds), on a loaded machine. Shorter than the kit's first-build timeout, so a missed
/// edit fails the test in a minute rather than four.
const EDIT_TIMEOUT: Duration = Duration::from_secs(90);

/// Waits for the outcome of the build an edit caused; fails unless it is a reload.
fn wait_edit_reload(host: &mut Harness) -> anyhow::Result<HostEvent> {
    let e = host.wait_for("the reload of an edit", EDIT_TIMEOUT, |e| {
        matches!(
            e,
            HostEvent::Reload { .. }
                | HostEvent::BuildFailed { .. }
                | HostEvent::LoadFailed { .. }
                | HostEvent::Unchanged { .. }
        )
    })?;
    anyhow::ensure!(
        matches!(e, HostEvent::Reload { .. }),
        "expected a reload, got {e:?}"
    );
    Ok(e)
}

/// A counter whose step comes from `step_expr`.
fn counter_with_step(prelude: &str, step_expr: &str) -> String {
    format!(
        r#"
use plugin_api::prelude::*;
{prelude}
fn register(p: &mut Plugin) {{
    p.pipeline("counter", interval_ms(5))
        .map(|_n: u64| {step_expr})
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .log();
}}

plugin_api::export_plugin!(register);
"#
    )
}

/// Edits to the sources of a path dependency outside the plugin's directory, and to a file
/// the plugin reads with `include_str!`, reload: the watcher watches what cargo's dep-info
/// lists, not just the plugin's `.rs` files.
#[test]
fn edits_to_path_dependencies_and_included_files_reload() -> anyhow::Result<()> {
    /// (test name, prepare the fixture and return the file to edit with its from/to text)
    type Case = (
        &'static str,
        fn(&Fixture, &Path) -> (std::path::PathBuf, &'static str, &'static str),
    );
    let cases: [Case; 2] = [
        ("path_dep_edit", |fixture, scratch| {
            let dep = scratch.join("dep");
            std::fs::create_dir_all(dep.join("src")).unwrap();
            std::fs::write(
                dep.join("Cargo.toml"),
                "[package]\nname = \"hmrdep_path_dep_edit\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
            )
            .unwrap();
            std::fs::write(dep.join("src/lib.rs"), "pub fn step() -> u64 {\n    1\n}\n").unwrap();
            fixture.edit(
                "Cargo.toml",
                "[dependencies]\n",
                &format!(
                    "[dependencies]\nhmrdep_path_dep_edit = {{ path = {:?} }}\n",
                    dep.display().to_string()
                ),
            );
            fixture.write(
                "src/lib.rs",
                &counter_with_step("", "hmrdep_path_dep_edit::step()"),
            );
            (dep.join("src/lib.rs"), "    1\n", "    1000\n")
        }),
        ("include_str_edit", |fixture, _| {
            fixture.write("data/step.txt", "1");
            fixture.write(
                "src/lib.rs",
                &counter_with_step(
                    "const STEP: &str = include_str!(\"../data/step.txt\");",
                    "STEP.trim().parse::<u64>().unwrap_or(0)",
                ),
            );
            (fixture.path().join("data/step.txt"), "1", "1000")
        }),
    ];
    for (name, prepare) in cases {
        let scratch = TempDir::new(name);
        let fixture = Fixture::new(name, "");
        let (file, from, to) = prepare(&fixture, scratch.path());
        let mut host = Harness::start(&fixture.options())?;
        let (v1, _) = host.wait_loaded()?;
        host.wait_emission("counter", |v| value(v) >= 3)?;

        let text = std::fs::read_to_string(&file)?;
        assert_eq!(text.matches(from).count(), 1, "{name}: {text}");
        // Renamed into place, as careful editors save.
        let temp = file.with_extension("hmr-tmp");
        std::fs::write(&temp, text.replacen(from, to, 1))?;
        std::fs::rename(&temp, &file)?;

        let v2 = reload_version(
            &wait_edit_reload(&mut host).with_context(|| format!("{name}: {}", file.display()))?,
        );
        // A v2 value and one after it (v1 passes any threshold too, given time).
        host.wait_emission_from("counter", v2)?;
        host.wait_emission("counter", |_| true)?;
        let emissions = host.emissions("counter");
        host.stop();
        assert_steps(&emissions, 0, |v| if v == v1 { 1 } else { 1000 });
        assert!(
            emissions.iter().any(|(v, _)| *v == v2),
            "{name}: {emissions:?}"
        );
    }
    Ok(())
}

/// A file restored with an older modification time (as `cp -p` or `mv` of an older file
/// does) makes cargo call the library fresh; the host notices that the source differs from
/// what cargo last compiled, forces the rebuild, and loads the restored code.
#[test]
fn a_file_restored_with_an_older_time_is_rebuilt() -> anyhow::Result<()> {
    let fixture = Fixture::new("restored_older", &counter_with_step("", "1u64"));
    let lib = fixture.path().join("src/lib.rs");
    let original = fixture.read("src/lib.rs");
    let original_time = std::fs::metadata(&lib)?.modified()?;
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    host.wait_emission("counter", |v| value(v) >= 3)?;

    fixture.edit("src/lib.rs", "1u64", "1000u64");
    let v2 = reload_version(&wait_edit_reload(&mut host)?);
    host.wait_emission_from("counter", v2)?;
    // A total past 3000 by v2's steps, before the restore (the check of `first` below).
    host.wait_emission("counter", |v| value(v) >= 3000)?;
    assert!(std::fs::metadata(&lib)?.modified()? > original_time);

    // Restore the original text with its original (older) time, renamed into place.
    let temp = fixture.path().join("src/.lib.rs.restore");
    std::fs::write(&temp, &original)?;
    std::fs::File::options()
        .write(true)
        .open(&temp)?
        .set_modified(original_time)?;
    std::fs::rename(&temp, &lib)?;
    assert_eq!(std::fs::metadata(&lib)?.modified()?, original_time);

    let v3 = reload_version(&wait_edit_reload(&mut host)?);
    let first = value(&host.wait_emission_from("counter", v3)?);
    let emissions = host.emissions("counter");
    let reloader = host.stop().expect("the reloader");
    assert_steps(&emissions, 0, |v| if v == v2 { 1000 } else { 1 });
    for v in [v1, v2, v3] {
        assert!(
            emissions.iter().any(|(x, _)| *x == v),
            "v{v}: {emissions:?}"
        );
    }
    assert!(first > 3000, "state kept across the restore: {first}");
    let mut reloader = reloader;
    assert_eq!(reloader.builder().forced_rebuilds(), 1);
    assert!(
        std::fs::metadata(&lib)?.modified()? > SystemTime::now() - Duration::from_secs(600),
        "the restored file was made newer for cargo"
    );
    Ok(())
}

/// Library copies are made under the build's target directory, never in the system temp
/// dir; each is unlinked once mapped, so none remains after reloads or after the host stops;
/// a copy left by a dead host is removed by the next host to load there.
#[test]
fn library_copies_live_under_the_target_dir_and_none_remain() -> anyhow::Result<()> {
    let copies = fixture_target_dir().join("debug").join(COPY_DIR);
    std::fs::create_dir_all(&copies)?;
    // A host that died between copying and unlinking: a pid that is no longer running.
    let mut dead = std::process::Command::new("true").spawn()?;
    dead.wait()?;
    let stale = copies.join(format!("{}-0-v1-0-libhmrfx_dead.so", dead.id()));
    std::fs::write(&stale, b"half a library")?;

    let fixture = Fixture::new("copies", &counter_with_step("", "1u64"));
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    assert!(!stale.exists(), "{} was not cleaned up", stale.display());
    for step in [2, 3, 4] {
        fixture.edit(
            "src/lib.rs",
            &format!("{}u64", step - 1),
            &format!("{step}u64"),
        );
        wait_edit_reload(&mut host)?;
    }
    let reloader = host.stop().expect("the reloader");
    let versions = reloader.versions();
    assert_eq!(versions.len(), 4);
    let copies = copies.canonicalize()?;
    for v in versions {
        let path = v.path();
        assert!(
            path.parent().and_then(|p| p.canonicalize().ok()).as_deref() == Some(&copies),
            "{} is not in {}",
            path.display(),
            copies.display()
        );
        assert!(!path.exists(), "{} remains", path.display());
    }
    drop(reloader);
    Ok(())
}

/// The plugin check reads the crate types from cargo's metadata, not the manifest's text,
/// and a virtual workspace root is told it is one, with the names of its cdylib members.
#[test]
fn the_plugin_check_reads_cargo_metadata() -> anyhow::Result<()> {
    let scratch = TempDir::new("plugin_check");
    let write = |rel: &str, text: &str| {
        let path = scratch.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    let package = |name: &str, lib: &str| {
        format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n{lib}")
    };
    // Says "cdylib" in a comment only: a text search took it for a plugin.
    write(
        "comment/Cargo.toml",
        &format!(
            "{}\n# not a cdylib yet\n[workspace]\n",
            package("comment", "")
        ),
    );
    write("comment/src/lib.rs", "");
    write(
        "plugin/Cargo.toml",
        &format!(
            "{}[workspace]\n",
            package("plugin", "[lib]\ncrate-type = [\"cdylib\"]\n")
        ),
    );
    write("plugin/src/lib.rs", "");
    write(
        "ws/Cargo.toml",
        "[workspace]\nresolver = \"3\"\nmembers = [\"fast\", \"slow\", \"plain\"]\n",
    );
    for (member, lib) in [
        ("fast", "[lib]\ncrate-type = [\"cdylib\"]\n"),
        ("slow", "[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n"),
        ("plain", ""),
    ] {
        write(&format!("ws/{member}/Cargo.toml"), &package(member, lib));
        write(&format!("ws/{member}/src/lib.rs"), "");
    }
    write("ws-none/Cargo.toml", "[workspace]\nmembers = [\"plain\"]\n");
    write("ws-none/plain/Cargo.toml", &package("plain", ""));
    write("ws-none/plain/src/lib.rs", "");

    let dir = |rel: &str| scratch.path().join(rel);
    let s = |rel: &str| dir(rel).display().to_string();
    /// A directory, `Ok` or the texts the error must hold, and texts it must not hold.
    type Case<'a> = (&'a str, Result<(), Vec<String>>, Vec<String>);
    let cases: Vec<Case> = vec![
        ("plugin", Ok(()), vec![]),
        (
            "comment",
            Err(vec![format!(
                "{}/Cargo.toml does not build a cdylib: add `[lib] crate-type = [\"cdylib\"]`",
                s("comment")
            )]),
            vec![],
        ),
        (
            "ws",
            Err(vec![
                format!("{}/Cargo.toml is a workspace, not a plugin crate", s("ws")),
                format!("fast ({})", s("ws/fast")),
                format!("slow ({})", s("ws/slow")),
            ]),
            vec!["plain".to_owned(), "add `[lib]".to_owned()],
        ),
        (
            "ws-none",
            Err(vec![format!(
                "{}/Cargo.toml is a workspace, not a plugin crate, and none of its members builds a cdylib",
                s("ws-none")
            )]),
            vec![],
        ),
    ];
    for (rel, expected, absent) in cases {
        let got = host::reloader::plugin_manifest(&dir(rel));
        match (expected, got) {
            (Ok(()), Ok(manifest)) => assert_eq!(manifest, dir(rel).join("Cargo.toml")),
            (Err(wants), Err(e)) => {
                let e = format!("{e:#}");
                for want in wants {
                    assert!(e.contains(&want), "{rel}: {e:?} lacks {want:?}");
                }
                for not in absent {
                    assert!(!e.contains(&not), "{rel}: {e:?} holds {not:?}");
                }
            }
            (expected, got) => panic!("{rel}: expected {expected:?}, got {got:?}"),
        }
    }
    Ok(())
}

/// A save between the build that read a file and the watch on it raises no event (the
/// watcher learns what to watch from that build): the builder finds it by content, and the
/// session builds once its watches are in place (`Watch::follow`).
#[test]
fn a_save_before_the_watch_is_in_place_is_found_by_content() -> anyhow::Result<()> {
    let fixture = Fixture::new("save_before_watch", integration_tests::COUNTER);
    let mut builder = host::cargo::Builder::new(fixture.build_config(false)?, None);
    builder.build()?;
    let lib_rs = fixture.path().join("src/lib.rs").canonicalize()?;
    assert!(
        builder.inputs().iter().any(|p| p == &lib_rs),
        "src/lib.rs is an input: {:?}",
        builder.inputs()
    );
    assert_eq!(builder.inputs_changed_since_build(), Vec::<PathBuf>::new());
    fixture.edit("src/lib.rs", "1u64", "2u64");
    assert_eq!(builder.inputs_changed_since_build(), vec![lib_rs]);
    Ok(())
}

/// After a failed build nothing is reported changed: the broken file is what that build read
/// (a rebuild of it would fail again, and the person's next save is seen by the watcher).
#[test]
fn after_a_failed_build_nothing_is_reported_changed() -> anyhow::Result<()> {
    let fixture = Fixture::new("changed_after_failure", integration_tests::COUNTER);
    let mut builder = host::cargo::Builder::new(fixture.build_config(false)?, None);
    builder.build()?;
    fixture.edit("src/lib.rs", "acc + n)", "acc + n +)");
    assert!(builder.build().is_err(), "the edit breaks the build");
    assert_eq!(builder.inputs_changed_since_build(), Vec::<PathBuf>::new());
    Ok(())
}

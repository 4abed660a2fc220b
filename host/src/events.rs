//! What the host reports: the [`HostEvent`]s of the command-line contract, and the sinks
//! that print them (one JSON object per line, or text for a person) or hand them to tests.

use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use serde::Serialize;

/// A track as reported in `loaded` and `reload` events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrackInfo {
    /// Structural path, e.g. `counter|2:scan`.
    pub path: String,
    /// Operator kind (`pipeline`, `map`, `scope`, ...).
    pub kind: std::sync::Arc<str>,
    /// How many times its code was swapped or its state reset.
    pub version: u64,
}

/// A track whose state was reset by a reload, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResetInfo {
    /// Structural path.
    pub path: String,
    /// Why its signature no longer matches.
    pub reason: String,
}

/// A pipeline a reload started afresh instead of swapping its code in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RestartInfo {
    /// Pipeline name.
    pub pipeline: String,
    /// Why (its source changed; it had completed; it had ended with an error).
    pub reason: String,
}

/// One event of the host's `--json` output contract (README.md lists them).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum HostEvent {
    /// The first version was loaded and its pipelines started.
    Loaded {
        /// Plugin version (1 for the first load).
        version: u64,
        /// Every track of the version.
        tracks: Vec<TrackInfo>,
        /// Milliseconds cargo took.
        build_ms: u64,
        /// Milliseconds to copy, open, check and register the library.
        load_ms: u64,
    },
    /// A `log` operator saw a value.
    Emission {
        /// Pipeline name.
        pipeline: String,
        /// Plugin version whose code produced the value.
        version: u64,
        /// The value's Debug text.
        value: String,
    },
    /// A new version replaced the running one.
    Reload {
        /// The new plugin version.
        version: u64,
        /// How many tracks had their code swapped with their state kept.
        swapped: usize,
        /// How many tracks had their state reset (`resets` says which and why).
        reset: usize,
        /// How many tracks are new (`added_paths`).
        added: usize,
        /// How many tracks were not registered again and were disposed (`removed_paths`).
        removed: usize,
        /// How many pipelines were started afresh rather than swapped (`restarts`); their
        /// tracks are not counted in `swapped`.
        restarted: usize,
        /// Each reset track, with the reason.
        resets: Vec<ResetInfo>,
        /// Paths of the new tracks.
        added_paths: Vec<String>,
        /// Paths of the disposed tracks.
        removed_paths: Vec<String>,
        /// Each restarted pipeline, with the reason.
        restarts: Vec<RestartInfo>,
        /// Pipelines whose thread is stuck inside a call into plugin code (a `stuck` event
        /// named it): their new code is staged, not swapped, and runs if that call returns.
        /// Their tracks are not counted in `swapped`.
        stuck: Vec<String>,
        /// Milliseconds cargo took.
        build_ms: u64,
        /// Milliseconds to copy, open, check and register the library.
        load_ms: u64,
        /// Microseconds to reconcile and publish the new code.
        swap_us: u64,
        /// Library versions still mapped (never unmapped, see ARCHITECTURE.md).
        mapped_versions: usize,
        /// Versions whose code may still run or own something.
        live_versions: usize,
        /// Every track of the new version.
        tracks: Vec<TrackInfo>,
    },
    /// Cargo built a library identical to the running one (a save the compiler does not
    /// see): nothing was loaded. Printed for a person; not part of the `--json` contract, so
    /// the JSON sink leaves it out.
    #[serde(skip)]
    Unchanged {
        /// Milliseconds cargo took.
        build_ms: u64,
    },
    /// Cargo failed; the running version stays.
    BuildFailed {
        /// The first error diagnostic as cargo rendered it.
        error: String,
    },
    /// The library could not be loaded or registered; the running version stays.
    LoadFailed {
        /// The cause.
        error: String,
    },
    /// Something went wrong while the host ran: a user function panicked during an emission
    /// (`pipeline` and `path` name the operator), a pipeline could not be run (its thread did
    /// not start, its state could not be seeded: `path` is the pipeline), or the host itself
    /// failed (`pipeline` and `path` empty, the cause in `message`).
    Error {
        /// Pipeline name, or empty for a failure of the host's own.
        pipeline: String,
        /// The structural path of the operator that panicked, the pipeline's name, or empty.
        path: String,
        /// The panic's message, or the cause.
        message: String,
    },
    /// A pipeline's source thread has been inside one call into plugin code for longer than
    /// [`crate::runtime::STUCK_AFTER`] (a user function that loops or blocks): it emits
    /// nothing and cannot take new code until that call returns. Reported once per call.
    Stuck {
        /// Pipeline name.
        pipeline: String,
        /// The structural path of the operator whose user function it is in.
        path: String,
        /// How long it has been inside that call.
        seconds: f64,
        /// Whether the pipeline was already removed or restarted: its old thread cannot be
        /// stopped (threads cannot be killed) and keeps running until the host exits.
        retired: bool,
    },
    /// The inspector (`--inspect`) listens: its page is at `url`.
    Inspector {
        /// `http://ADDR/`.
        url: String,
    },
    /// A pipeline's source completed (or a `take` completed it).
    Completed {
        /// Pipeline name.
        pipeline: String,
        /// Values its source produced.
        emissions: u64,
        /// Microseconds from its first source value to its completion.
        elapsed_us: u64,
    },
}

/// Where events go. Called from source threads and the reloader at once.
pub trait EventSink: Send + Sync {
    /// Delivers one event.
    fn event(&self, event: HostEvent);
}

/// Prints each event as one JSON object per line on stdout.
#[derive(Debug, Default)]
pub struct JsonSink;

impl EventSink for JsonSink {
    fn event(&self, event: HostEvent) {
        if matches!(event, HostEvent::Unchanged { .. }) {
            return;
        }
        let line = serde_json::to_string(&event).unwrap_or_else(|e| {
            format!(r#"{{"event":"error","pipeline":"","path":"","message":"cannot encode event: {e}"}}"#)
        });
        let mut out = std::io::stdout().lock();
        // A closed stdout (the reader went away) is not worth crashing the host for.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Prints events for a person.
#[derive(Debug, Default)]
pub struct HumanSink {
    /// Whether a version has been loaded (so a failure can say what keeps running).
    loaded: std::sync::atomic::AtomicBool,
}

impl EventSink for HumanSink {
    fn event(&self, event: HostEvent) {
        use std::sync::atomic::Ordering;
        if matches!(event, HostEvent::Loaded { .. }) {
            self.loaded.store(true, Ordering::Relaxed);
        }
        let text = human(&event, self.loaded.load(Ordering::Relaxed));
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

fn human(event: &HostEvent, running: bool) -> String {
    let keeps = if running {
        "still running the last good version"
    } else {
        "nothing is running yet; fix it and save"
    };
    match event {
        HostEvent::Loaded {
            version,
            tracks,
            build_ms,
            load_ms,
        } => {
            let mut s = format!(
                "[hmr] loaded v{version}: {} tracks (build {build_ms} ms, load {load_ms} ms)",
                tracks.len()
            );
            for t in tracks {
                s.push_str(&format!("\n[hmr]   {}", t.path));
            }
            s
        }
        HostEvent::Emission {
            pipeline,
            version,
            value,
        } => format!("{pipeline} v{version}: {value}"),
        HostEvent::Reload {
            version,
            swapped,
            resets,
            added_paths,
            removed_paths,
            restarts,
            build_ms,
            load_ms,
            swap_us,
            mapped_versions,
            live_versions,
            stuck,
            ..
        } => {
            let mut s = format!(
                "[hmr] reload v{version}: {swapped} swapped, {} reset, {} added, {} removed, \
                 {} restarted (build {build_ms} ms, load {load_ms} ms, swap {swap_us} us; \
                 {mapped_versions} versions mapped, {live_versions} live)",
                resets.len(),
                added_paths.len(),
                removed_paths.len(),
                restarts.len()
            );
            for r in resets {
                s.push_str(&format!("\n[hmr]   reset {}: {}", r.path, r.reason));
            }
            for a in added_paths {
                s.push_str(&format!("\n[hmr]   added {a}"));
            }
            for r in removed_paths {
                s.push_str(&format!("\n[hmr]   removed {r}"));
            }
            for r in restarts {
                s.push_str(&format!("\n[hmr]   restarted {}: {}", r.pipeline, r.reason));
            }
            for p in stuck {
                s.push_str(&format!(
                    "\n[hmr]   not swapped {p}: its thread is stuck in plugin code; the new code \
                     runs when that call returns"
                ));
            }
            s
        }
        HostEvent::Unchanged { build_ms } => {
            format!("[hmr] no change: cargo built the library that is running ({build_ms} ms)")
        }
        HostEvent::BuildFailed { error } => format!("[hmr] build failed, {keeps}:\n{error}"),
        HostEvent::LoadFailed { error } => format!("[hmr] load failed, {keeps}: {error}"),
        HostEvent::Error {
            pipeline,
            path,
            message,
        } if pipeline.is_empty() => format!("[hmr] error: {message}"),
        HostEvent::Error {
            pipeline,
            path,
            message,
        } => format!("[hmr] error in {pipeline} at {path}: {message}"),
        HostEvent::Stuck {
            pipeline,
            path,
            seconds,
            retired,
        } => {
            let mut s = format!(
                "[hmr] warning: {pipeline} is stuck at {path}: one call has not returned for \
                 {seconds:.1} s; it emits nothing and cannot take new code until it returns"
            );
            if *retired {
                s.push_str(
                    " (the pipeline was removed or restarted; its old thread cannot be killed \
                     and keeps running until the host exits)",
                );
            }
            s
        }
        HostEvent::Completed {
            pipeline,
            emissions,
            elapsed_us,
        } => format!("[hmr] {pipeline} completed after {emissions} values in {elapsed_us} us"),
        HostEvent::Inspector { url } => format!("inspector: {url}"),
    }
}

/// Sends every event to a channel (the test kit reads it).
#[derive(Debug)]
pub struct ChannelSink(pub Sender<HostEvent>);

impl EventSink for ChannelSink {
    fn event(&self, event: HostEvent) {
        // A receiver that went away (a finished test) just stops listening.
        let _ = self.0.send(event);
    }
}

/// A shared sink.
pub type Sink = Arc<dyn EventSink>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The `--json` contract: each event's name and the fields outside tools rely on, with
    /// their JSON types.
    #[test]
    fn json_events_carry_the_contract_fields() {
        let track = TrackInfo {
            path: "counter|0:map".into(),
            kind: "map".into(),
            version: 1,
        };
        /// An event, its name, and its (field, JSON type) pairs.
        type Case = (HostEvent, &'static str, Vec<(&'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            (
                HostEvent::Loaded {
                    version: 1,
                    tracks: vec![track.clone()],
                    build_ms: 100,
                    load_ms: 1,
                },
                "loaded",
                vec![("version", "number"), ("tracks", "array")],
            ),
            (
                HostEvent::Emission {
                    pipeline: "counter".into(),
                    version: 2,
                    value: "42".into(),
                },
                "emission",
                vec![
                    ("pipeline", "string"),
                    ("version", "number"),
                    ("value", "string"),
                ],
            ),
            (
                HostEvent::Reload {
                    version: 2,
                    swapped: 3,
                    reset: 1,
                    added: 0,
                    removed: 0,
                    restarted: 0,
                    resets: vec![ResetInfo {
                        path: "counter|1:scan".into(),
                        reason: "seed changed from 0 to 1".into(),
                    }],
                    added_paths: vec![],
                    removed_paths: vec![],
                    restarts: vec![],
                    stuck: vec!["slow".into()],
                    build_ms: 120,
                    load_ms: 1,
                    swap_us: 50,
                    mapped_versions: 2,
                    live_versions: 1,
                    tracks: vec![track],
                },
                "reload",
                vec![
                    ("version", "number"),
                    ("swapped", "number"),
                    ("reset", "number"),
                    ("added", "number"),
                    ("removed", "number"),
                    ("build_ms", "number"),
                    ("load_ms", "number"),
                    ("swap_us", "number"),
                    ("tracks", "array"),
                    ("resets", "array"),
                    ("stuck", "array"),
                ],
            ),
            (
                HostEvent::BuildFailed {
                    error: "error[E0308]: mismatched types".into(),
                },
                "build-failed",
                vec![("error", "string")],
            ),
            (
                HostEvent::LoadFailed {
                    error: "cannot open".into(),
                },
                "load-failed",
                vec![("error", "string")],
            ),
            (
                HostEvent::Error {
                    pipeline: "counter".into(),
                    path: "counter|0:map".into(),
                    message: "boom".into(),
                },
                "error",
                vec![
                    ("pipeline", "string"),
                    ("path", "string"),
                    ("message", "string"),
                ],
            ),
            (
                HostEvent::Stuck {
                    pipeline: "slow".into(),
                    path: "slow|0:map".into(),
                    seconds: 2.1,
                    retired: false,
                },
                "stuck",
                vec![
                    ("pipeline", "string"),
                    ("path", "string"),
                    ("seconds", "number"),
                    ("retired", "boolean"),
                ],
            ),
            (
                HostEvent::Inspector {
                    url: "http://127.0.0.1:7000/".into(),
                },
                "inspector",
                vec![("url", "string")],
            ),
            (
                HostEvent::Completed {
                    pipeline: "total".into(),
                    emissions: 1000,
                    elapsed_us: 30,
                },
                "completed",
                vec![
                    ("pipeline", "string"),
                    ("emissions", "number"),
                    ("elapsed_us", "number"),
                ],
            ),
        ];
        for (event, name, fields) in cases {
            let json: serde_json::Value =
                serde_json::from_str(&serde_json::to_string(&event).expect("serializes"))
                    .expect("parses");
            assert_eq!(json["event"], name, "{json}");
            for (field, ty) in fields {
                let v = &json[field];
                let found = match v {
                    serde_json::Value::Number(_) => "number",
                    serde_json::Value::String(_) => "string",
                    serde_json::Value::Array(_) => "array",
                    serde_json::Value::Bool(_) => "boolean",
                    _ => "other",
                };
                assert_eq!(found, ty, "{name}.{field} in {json}");
            }
            if name == "loaded" || name == "reload" {
                assert_eq!(json["tracks"][0]["path"], "counter|0:map");
                assert_eq!(json["tracks"][0]["kind"], "map");
            }
        }
    }
}

//! What the host reports: the [`HostEvent`]s of the command-line contract, the [`Formatter`]
//! that turns them into lines (one JSON object per line, or text for a person), and the
//! sink that hands them to tests. [`crate::output`] prints them.

use std::borrow::Cow;
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

/// What a reload's replay of one pipeline's recent inputs found (`reload.replay`): the
/// inputs run through the old and the new code, each on a copy of the live state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplayInfo {
    /// Pipeline name.
    pub pipeline: String,
    /// Inputs run through both versions and compared (for `incomparable`: the inputs kept,
    /// none of them run).
    pub inputs: usize,
    /// Of those, how many made the new code emit something else.
    pub changed: usize,
    /// Up to [`crate::replay::SAMPLES`] of the changed inputs.
    pub samples: Vec<ReplaySample>,
    /// `compared`; `cut-short` (the budget ran out: `inputs` says how far it got);
    /// `incomparable` (a `log` or `publish` operator changed its type, or is new or gone:
    /// not run); `not-replayed` (see `reason`).
    pub status: String,
    /// Why, unless `compared`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Panics during the replay (`old code: path: message`, `new code: ...`), the first
    /// few of each version's. The reload goes ahead all the same.
    pub panics: Vec<String>,
}

/// One input whose outputs changed: Debug texts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplaySample {
    /// The input (a source value, or `complete (port N)`).
    pub input: String,
    /// What the old code emitted for it (`nothing`, or the values joined by `, `).
    pub old: String,
    /// What the new code emits for it.
    pub new: String,
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
        /// What the new code does with each swapped pipeline's recent inputs (`--replay`).
        replay: Vec<ReplayInfo>,
    },
    /// Cargo built a library identical to the running one (a save the compiler does not
    /// see): nothing was loaded. Printed for a person; not part of the `--json` contract, so
    /// the JSON sink leaves it out.
    #[serde(skip)]
    Unchanged {
        /// Milliseconds cargo took.
        build_ms: u64,
    },
    /// A build has taken more than [`crate::cargo::SLOW_BUILD`]: what cargo is doing (its
    /// latest status line, such as `Compiling ...` or `Blocking waiting for file lock ...`);
    /// sent once at that mark and then for each new status line of the same build. Printed
    /// for a person; not part of the `--json` contract, so the JSON sink leaves it out.
    #[serde(skip)]
    Building {
        /// Milliseconds since cargo started.
        elapsed_ms: u64,
        /// Cargo's status line.
        status: String,
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
    /// A source of a pipeline has something to say once (`file_lines` waiting for its file,
    /// following a truncation or a rotation).
    Notice {
        /// Pipeline name.
        pipeline: String,
        /// What happened.
        message: String,
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
    /// The reader of the output (a terminal, a pipe) could not keep up, so per-value events
    /// were left out here (see [`HostEvent::is_per_value`]); printed where the gap is.
    Dropped {
        /// Emissions left out.
        emissions: u64,
        /// User-function errors left out.
        errors: u64,
    },
}

/// Where events go. Called from source threads and the reloader at once.
pub trait EventSink: Send + Sync {
    /// Delivers one event.
    fn event(&self, event: HostEvent);

    /// Delivers one emission (a `log` operator's value), given borrowed: a sink that keeps
    /// it can copy it into storage it reuses ([`crate::output::Printer`] does: no allocation
    /// per emission once warm). By default, an [`HostEvent::Emission`] to [`Self::event`].
    fn emission(&self, pipeline: &str, version: u64, value: &str) {
        self.event(HostEvent::Emission {
            pipeline: pipeline.to_owned(),
            version,
            value: value.to_owned(),
        });
    }
}

/// The longest panic or error message reported, in bytes; a longer one is cut at a
/// character boundary to fit, with a note saying how much was cut.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// `message` cut to at most [`MAX_MESSAGE_BYTES`] bytes, note included, saying how many
/// bytes were cut (so cutting a cut message changes nothing).
pub fn cap_message(message: &str) -> Cow<'_, str> {
    if message.len() <= MAX_MESSAGE_BYTES {
        return Cow::Borrowed(message);
    }
    let note = |cut: usize| {
        format!("... [{cut} more bytes cut: messages are capped at {MAX_MESSAGE_BYTES} bytes]")
    };
    // The note's length depends on the count only through its digits: the longest count
    // gives a prefix that always fits.
    let mut end = MAX_MESSAGE_BYTES - note(message.len()).len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{}", &message[..end], note(message.len() - end)))
}

impl HostEvent {
    /// Whether the event comes once per value (an emission, or a user function's panic,
    /// which can happen on every value): the printer may drop these when its reader cannot
    /// keep up. Every other event says what the host did and is never dropped.
    pub fn is_per_value(&self) -> bool {
        match self {
            HostEvent::Emission { .. } => true,
            // A user function's panic names its operator (`pipeline|i:kind`); a failure of a
            // pipeline (its thread, its seed) names the pipeline itself, and the host's own
            // nothing: those are never dropped, nor waited on for room.
            HostEvent::Error { pipeline, path, .. } => !pipeline.is_empty() && path != pipeline,
            _ => false,
        }
    }

    /// The event with its messages cut to [`MAX_MESSAGE_BYTES`].
    fn capped(&self) -> Cow<'_, HostEvent> {
        let mut event = Cow::Borrowed(self);
        let text = match self {
            HostEvent::Error { message: t, .. }
            | HostEvent::LoadFailed { error: t }
            | HostEvent::BuildFailed { error: t } => t,
            _ => return event,
        };
        if let Cow::Owned(cut) = cap_message(text) {
            match event.to_mut() {
                HostEvent::Error { message: t, .. }
                | HostEvent::LoadFailed { error: t }
                | HostEvent::BuildFailed { error: t } => *t = cut,
                _ => {}
            }
        }
        event
    }
}

/// Turns events into lines: one JSON object per line (`--json`), or text for a person.
#[derive(Debug)]
pub struct Formatter {
    json: bool,
    /// Whether the host watches and reloads (so a failure can say "fix it and save").
    watching: bool,
    /// Whether a version has been loaded (so a failure can say what keeps running).
    running: bool,
}

impl Formatter {
    /// One JSON object per line: the `--json` contract.
    pub fn json() -> Formatter {
        Formatter {
            json: true,
            watching: true,
            running: false,
        }
    }

    /// Text for a person; `watching` is false under `--no-watch`.
    pub fn human(watching: bool) -> Formatter {
        Formatter {
            json: false,
            watching,
            running: false,
        }
    }

    /// Appends the line for `event` (without its newline) to `out`; false when this format
    /// leaves it out. An emission is written straight into `out` (a buffer the printer
    /// reuses): no allocation per value.
    pub fn line_into(&mut self, event: &HostEvent, out: &mut Vec<u8>) -> bool {
        if let HostEvent::Emission {
            pipeline,
            version,
            value,
        } = event
        {
            return self.emission_into(pipeline, *version, value, out);
        }
        match self.line(event) {
            Some(line) => {
                out.extend_from_slice(line.as_bytes());
                true
            }
            None => false,
        }
    }

    /// An emission's line (without its newline) appended to `out`, from borrowed texts: no
    /// allocation. The same line as [`Formatter::line`] gives for a [`HostEvent::Emission`].
    pub fn emission_into(
        &mut self,
        pipeline: &str,
        version: u64,
        value: &str,
        out: &mut Vec<u8>,
    ) -> bool {
        use std::io::Write as _;
        if self.json {
            /// `HostEvent::Emission`'s JSON, borrowed.
            #[derive(serde::Serialize)]
            #[serde(tag = "event", rename = "emission")]
            struct Emission<'a> {
                pipeline: &'a str,
                version: u64,
                value: &'a str,
            }
            serde_json::to_writer(
                &mut *out,
                &Emission {
                    pipeline,
                    version,
                    value,
                },
            )
            .is_ok()
        } else {
            write!(out, "{pipeline} v{version}: {value}").is_ok()
        }
    }

    /// The line for `event` (without its newline), or `None` when this format leaves it out.
    pub fn line(&mut self, event: &HostEvent) -> Option<String> {
        if matches!(event, HostEvent::Loaded { .. }) {
            self.running = true;
        }
        let event = event.capped();
        if !self.json {
            return Some(human(&event, self.running, self.watching));
        }
        if matches!(
            *event,
            HostEvent::Unchanged { .. } | HostEvent::Building { .. }
        ) {
            return None;
        }
        Some(serde_json::to_string(&*event).unwrap_or_else(|e| {
            format!(r#"{{"event":"error","pipeline":"","path":"","message":"cannot encode event: {e}"}}"#)
        }))
    }
}

fn human(event: &HostEvent, running: bool, watching: bool) -> String {
    let keeps = match (running, watching) {
        (true, _) => "still running the last good version",
        (false, true) => "nothing is running yet; fix it and save",
        (false, false) => "nothing is running (--no-watch: the host stops here)",
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
            replay,
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
            for line in replay.iter().filter_map(crate::replay::line) {
                s.push_str(&format!("\n[hmr]   replay {line}"));
            }
            s
        }
        HostEvent::Unchanged { build_ms } => {
            format!("[hmr] no change: cargo built the library that is running ({build_ms} ms)")
        }
        HostEvent::Building { elapsed_ms, status } => format!(
            "[hmr] building ({}.{} s): {status}",
            elapsed_ms / 1000,
            elapsed_ms % 1000 / 100
        ),
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
        HostEvent::Dropped { emissions, errors } => {
            let mut s = format!("[hmr] dropped {emissions} emissions");
            if *errors > 0 {
                s.push_str(&format!(" and {errors} errors"));
            }
            s.push_str(": output could not keep up");
            s
        }
        HostEvent::Inspector { url } => format!("inspector: {url}"),
        HostEvent::Notice { pipeline, message } => format!("[hmr] {pipeline}: {message}"),
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

    /// An emission printed from borrowed texts (the printer's queue) reads as the event's own
    /// line, in both formats, whatever the text holds (quotes, escapes, non-ASCII).
    #[test]
    fn borrowed_emission_lines_are_the_events_lines() {
        for value in ["42", "\"a\\b\"", "Some([1, 2])", "é\n\t", ""] {
            for json in [false, true] {
                let mut f = if json {
                    Formatter::json()
                } else {
                    Formatter::human(false)
                };
                let event = HostEvent::Emission {
                    pipeline: "counter".into(),
                    version: 7,
                    value: value.into(),
                };
                let mut borrowed = Vec::new();
                assert!(f.emission_into("counter", 7, value, &mut borrowed));
                let owned = f.line(&event).expect("an emission has a line");
                assert_eq!(
                    String::from_utf8(borrowed).unwrap(),
                    owned,
                    "json {json}: {value:?}"
                );
            }
        }
    }

    /// Only values may be dropped by the printer: emissions and user-function panics (which
    /// name an operator path); a pipeline's or the host's own failure never.
    #[test]
    fn only_values_are_per_value() {
        let error = |pipeline: &str, path: &str| HostEvent::Error {
            pipeline: pipeline.into(),
            path: path.into(),
            message: "m".into(),
        };
        let cases = [
            (
                HostEvent::Emission {
                    pipeline: "p".into(),
                    version: 1,
                    value: "1".into(),
                },
                true,
            ),
            (error("p", "p|0:map"), true),
            (error("p", "p"), false),
            (error("", ""), false),
            (
                HostEvent::Completed {
                    pipeline: "p".into(),
                    emissions: 1,
                    elapsed_us: 1,
                },
                false,
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(event.is_per_value(), expected, "{event:?}");
        }
    }

    /// Short messages pass; long ones fit the cap, note included, cut on a character
    /// boundary, and say how much was cut; a cut message is not cut again.
    #[test]
    fn long_messages_are_capped_and_say_how_much_was_cut() {
        let max = MAX_MESSAGE_BYTES;
        let cases: Vec<(String, Option<usize>)> = vec![
            (String::new(), None),
            ("x".repeat(max), None),
            ("x".repeat(max + 1), Some(max + 1)),
            ("x".repeat(5_000_000), Some(5_000_000)),
            ("é".repeat(max), Some(2 * max)),
            ("🦀".repeat(3 * max), Some(12 * max)),
        ];
        for (message, cut_from) in cases {
            let capped = cap_message(&message);
            let Some(len) = cut_from else {
                assert_eq!(capped, message);
                continue;
            };
            assert!(capped.len() <= max, "{len}: {} bytes", capped.len());
            let (kept, note) = capped.split_once("... [").expect("a note");
            assert!(message.starts_with(kept), "{len}");
            let cut: usize = note.split(' ').next().unwrap().parse().unwrap();
            assert_eq!(kept.len() + cut, len, "{note}");
            assert!(note.ends_with(&format!("capped at {max} bytes]")), "{note}");
            assert_eq!(cap_message(&capped), capped, "{len}: cut once");
        }
    }

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
                vec![
                    ("version", "number"),
                    ("tracks", "array"),
                    ("build_ms", "number"),
                    ("load_ms", "number"),
                ],
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
                    added: 1,
                    removed: 1,
                    restarted: 1,
                    resets: vec![ResetInfo {
                        path: "counter|1:scan".into(),
                        reason: "seed changed from 0 to 1".into(),
                    }],
                    added_paths: vec!["extra".into()],
                    removed_paths: vec!["gone".into()],
                    restarts: vec![RestartInfo {
                        pipeline: "total".into(),
                        reason: "it had completed".into(),
                    }],
                    stuck: vec!["slow".into()],
                    build_ms: 120,
                    load_ms: 1,
                    swap_us: 50,
                    mapped_versions: 2,
                    live_versions: 1,
                    tracks: vec![track],
                    replay: vec![ReplayInfo {
                        pipeline: "counter".into(),
                        inputs: 32,
                        changed: 12,
                        samples: vec![ReplaySample {
                            input: "7".into(),
                            old: "14".into(),
                            new: "21".into(),
                        }],
                        status: "compared".into(),
                        reason: None,
                        panics: vec![],
                    }],
                },
                "reload",
                vec![
                    ("version", "number"),
                    ("swapped", "number"),
                    ("reset", "number"),
                    ("added", "number"),
                    ("removed", "number"),
                    ("load_ms", "number"),
                    ("restarted", "number"),
                    ("build_ms", "number"),
                    ("swap_us", "number"),
                    ("mapped_versions", "number"),
                    ("live_versions", "number"),
                    ("tracks", "array"),
                    ("replay", "array"),
                    ("resets", "array"),
                    ("added_paths", "array"),
                    ("removed_paths", "array"),
                    ("restarts", "array"),
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
            (
                HostEvent::Dropped {
                    emissions: 1200,
                    errors: 3,
                },
                "dropped",
                vec![("emissions", "number"), ("errors", "number")],
            ),
        ];
        for (event, name, fields) in cases {
            let json: serde_json::Value =
                serde_json::from_str(&serde_json::to_string(&event).expect("serializes"))
                    .expect("parses");
            assert_eq!(json["event"], name, "{json}");
            // Exactly these fields: one left out of the list (or added to the event without
            // a decision about the contract) fails here.
            let keys: std::collections::BTreeSet<&str> = json
                .as_object()
                .expect("an object")
                .keys()
                .map(String::as_str)
                .collect();
            let listed: std::collections::BTreeSet<&str> = std::iter::once("event")
                .chain(fields.iter().map(|(f, _)| *f))
                .collect();
            assert_eq!(keys, listed, "{name}: {json}");
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
                assert_eq!(
                    json["tracks"],
                    serde_json::json!([{"path": "counter|0:map", "kind": "map", "version": 1}])
                );
            }
            if name == "reload" {
                // The details' shapes and values.
                let details = [
                    (
                        "resets",
                        serde_json::json!([
                            {"path": "counter|1:scan", "reason": "seed changed from 0 to 1"}
                        ]),
                    ),
                    ("added_paths", serde_json::json!(["extra"])),
                    ("removed_paths", serde_json::json!(["gone"])),
                    (
                        "restarts",
                        serde_json::json!([{"pipeline": "total", "reason": "it had completed"}]),
                    ),
                    ("stuck", serde_json::json!(["slow"])),
                    ("restarted", serde_json::json!(1)),
                    ("mapped_versions", serde_json::json!(2)),
                    ("live_versions", serde_json::json!(1)),
                ];
                for (field, expected) in details {
                    assert_eq!(json[field], expected, "reload.{field} in {json}");
                }
            }
        }
    }

    /// `unchanged` is not part of the `--json` contract: it serializes to nothing the JSON
    /// sink prints, and the sink leaves it out.
    #[test]
    fn unchanged_is_not_in_the_json_contract() {
        assert!(serde_json::to_string(&HostEvent::Unchanged { build_ms: 3 }).is_err());
    }

    /// What a person reads for each event, exactly; failures say whether a version keeps
    /// running.
    #[test]
    fn human_output_for_each_event() {
        let track = |path: &str, kind: &str| TrackInfo {
            path: path.into(),
            kind: kind.into(),
            version: 1,
        };
        let reload = HostEvent::Reload {
            version: 3,
            swapped: 2,
            reset: 1,
            added: 1,
            removed: 1,
            restarted: 1,
            resets: vec![ResetInfo {
                path: "counter|1:scan".into(),
                reason: "seed changed from 0 to 100".into(),
            }],
            added_paths: vec!["extra".into()],
            removed_paths: vec!["gone".into()],
            restarts: vec![RestartInfo {
                pipeline: "total".into(),
                reason: "it had completed".into(),
            }],
            stuck: vec!["slow".into()],
            build_ms: 120,
            load_ms: 4,
            swap_us: 50,
            mapped_versions: 3,
            live_versions: 1,
            tracks: vec![],
            replay: vec![],
        };
        let cases: Vec<(HostEvent, bool, &str)> = vec![
            (
                HostEvent::Loaded {
                    version: 1,
                    tracks: vec![track("counter", "pipeline"), track("counter|0:map", "map")],
                    build_ms: 100,
                    load_ms: 2,
                },
                false,
                "[hmr] loaded v1: 2 tracks (build 100 ms, load 2 ms)\n[hmr]   counter\n\
                 [hmr]   counter|0:map",
            ),
            (
                HostEvent::Emission {
                    pipeline: "counter".into(),
                    version: 2,
                    value: "42".into(),
                },
                true,
                "counter v2: 42",
            ),
            (
                reload,
                true,
                "[hmr] reload v3: 2 swapped, 1 reset, 1 added, 1 removed, 1 restarted (build \
                 120 ms, load 4 ms, swap 50 us; 3 versions mapped, 1 live)\n\
                 [hmr]   reset counter|1:scan: seed changed from 0 to 100\n\
                 [hmr]   added extra\n\
                 [hmr]   removed gone\n\
                 [hmr]   restarted total: it had completed\n\
                 [hmr]   not swapped slow: its thread is stuck in plugin code; the new code runs \
                 when that call returns",
            ),
            (
                HostEvent::Unchanged { build_ms: 7 },
                true,
                "[hmr] no change: cargo built the library that is running (7 ms)",
            ),
            (
                HostEvent::BuildFailed {
                    error: "error[E0308]: mismatched types".into(),
                },
                true,
                "[hmr] build failed, still running the last good version:\n\
                 error[E0308]: mismatched types",
            ),
            (
                HostEvent::BuildFailed {
                    error: "error: expected `;`".into(),
                },
                false,
                "[hmr] build failed, nothing is running yet; fix it and save:\nerror: expected `;`",
            ),
            (
                HostEvent::LoadFailed {
                    error: "ABI version 999".into(),
                },
                true,
                "[hmr] load failed, still running the last good version: ABI version 999",
            ),
            (
                HostEvent::LoadFailed {
                    error: "ABI version 999".into(),
                },
                false,
                "[hmr] load failed, nothing is running yet; fix it and save: ABI version 999",
            ),
            (
                HostEvent::Error {
                    pipeline: "counter".into(),
                    path: "counter|0:map".into(),
                    message: "boom".into(),
                },
                true,
                "[hmr] error in counter at counter|0:map: boom",
            ),
            (
                HostEvent::Error {
                    pipeline: String::new(),
                    path: String::new(),
                    message: "a host bug".into(),
                },
                true,
                "[hmr] error: a host bug",
            ),
            (
                HostEvent::Stuck {
                    pipeline: "slow".into(),
                    path: "slow|0:map".into(),
                    seconds: 2.14,
                    retired: false,
                },
                true,
                "[hmr] warning: slow is stuck at slow|0:map: one call has not returned for 2.1 s; \
                 it emits nothing and cannot take new code until it returns",
            ),
            (
                HostEvent::Stuck {
                    pipeline: "slow".into(),
                    path: "slow|0:map".into(),
                    seconds: 2.0,
                    retired: true,
                },
                true,
                "[hmr] warning: slow is stuck at slow|0:map: one call has not returned for 2.0 s; \
                 it emits nothing and cannot take new code until it returns (the pipeline was \
                 removed or restarted; its old thread cannot be killed and keeps running until \
                 the host exits)",
            ),
            (
                HostEvent::Completed {
                    pipeline: "total".into(),
                    emissions: 100,
                    elapsed_us: 30,
                },
                true,
                "[hmr] total completed after 100 values in 30 us",
            ),
        ];
        for (event, running, expected) in cases {
            assert_eq!(human(&event, running, true), expected, "{event:?}");
        }
        // Without watching, a failure before anything runs does not ask for a save; events
        // the `--json` contract leaves out still read for a person.
        let unwatched: Vec<(HostEvent, bool, &str)> = vec![
            (
                HostEvent::BuildFailed {
                    error: "error: expected `;`".into(),
                },
                false,
                "[hmr] build failed, nothing is running (--no-watch: the host stops here):\n\
                 error: expected `;`",
            ),
            (
                HostEvent::Building {
                    elapsed_ms: 1_250,
                    status: "Blocking waiting for file lock on build directory".into(),
                },
                false,
                "[hmr] building (1.2 s): Blocking waiting for file lock on build directory",
            ),
            (
                HostEvent::Dropped {
                    emissions: 7,
                    errors: 2,
                },
                true,
                "[hmr] dropped 7 emissions and 2 errors: output could not keep up",
            ),
        ];
        for (event, running, expected) in unwatched {
            assert_eq!(human(&event, running, false), expected, "{event:?}");
        }
    }
}

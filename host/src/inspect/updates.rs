//! `GET /api/updates`: what changed, as batched deltas, for the page.
//!
//! Each client's stream builds its own deltas, at most one every [`TICK`]: it
//! keeps a [`Cursor`]-like memory of what it sent (per-track counts, state texts, the number
//! of the last reload, error and state change, the hub's sequence number for the tracks,
//! failures and lints, each pipeline's emission total) and sends only what is newer. Nothing
//! is queued per value or per event for it: a client that reads slowly gets fewer, larger
//! deltas, and the pipelines never wait for it. A delta is one server-sent event
//! `event: delta` whose data is a JSON object with only the fields that changed (README.md,
//! "The inspector", lists them).
//!
//! The delta is built by [`Parts`]: each field has one part, which owns its memory of what
//! was sent and adds its field to the delta when it has something new. A new field is one
//! more part (a struct implementing [`Part`]) in [`Parts::new`].

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::{Stream, StreamExt, future, stream};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::tally::Counts;
use super::{Inspected, count_cells, lock};

/// The shortest time between two deltas to one client.
pub const TICK: Duration = Duration::from_millis(250);

/// How often the state texts are asked of the source threads (each answers after its next
/// call into the plugin; the next delta after the answer carries the texts that changed).
pub const STATE_EVERY: Duration = Duration::from_secs(1);

/// How long an updates stream stays silent at most: then it sends a comment.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Where a snapshot stands ([`super::Snapshot::cursor`]), given back as the query of
/// `/api/updates` so that the stream sends what came after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The hub's sequence number (tracks, failures, lints).
    pub seq: u64,
    /// The number of the last reload.
    pub reloads: u64,
    /// The number of the last error.
    pub errors: u64,
    /// The number of the last state change.
    pub changes: u64,
    /// The run-time tracks' generation.
    pub run_time: u64,
}

impl Cursor {
    /// Parses a query (`seq=1&reloads=2&errors=3&changes=4`) into its numbers by name; a
    /// field left out or not a number is not there (the stream then starts from now for it).
    pub fn parse(query: &str) -> BTreeMap<String, u64> {
        query
            .split('&')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }
}

/// The value of `key` in `query` (`a=1&lanes=my%20pipe`), decoded (`%XX`, `+`); `None`
/// when it is not there.
pub fn query_value(query: &str, key: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v)
        })
        .or_else(|| query.split('&').any(|k| k == key).then_some(""))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// What a part reads from.
pub struct Now<'a> {
    /// The inspector's shared parts.
    pub inspected: &'a Inspected,
    /// Set by the `tracks` part when this delta carries a new track list: the `counts` part
    /// then sends every count (the client drops counts of paths it does not know yet).
    pub tracks_sent: std::cell::Cell<bool>,
}

/// One field of the delta, with its memory of what it sent to this client.
pub trait Part: Send {
    /// The field's name in the delta.
    fn name(&self) -> &'static str;
    /// The field's value if something changed since the last call, else `None`.
    fn next(&mut self, now: &Now<'_>) -> Option<Value>;
}

/// Every part of the delta, for one client.
pub struct Parts {
    parts: Vec<Box<dyn Part>>,
    /// When the stream began (a delta's `ms` counts from it).
    started: Instant,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.parts.iter().map(|p| p.name()).collect();
        f.debug_struct("Parts").field("parts", &names).finish()
    }
}

impl Parts {
    /// A client's parts, starting after `since` (the query of its request: a snapshot's
    /// cursor), or from now for what `since` leaves out.
    pub fn new(inspected: &Inspected, since: &BTreeMap<String, u64>) -> Parts {
        let (seq, reloads, errors) = {
            let r = lock(&inspected.hub.record);
            (r.seq, r.reloads.pushed, r.errors.pushed)
        };
        let at = |k: &str, now: u64| since.get(k).copied().unwrap_or(now);
        let emitted = lock(&inspected.hub.emitted)
            .iter()
            .map(|(k, e)| (k.clone(), e.total))
            .collect();
        let changes = at("changes", inspected.tallies.last_change());
        let parts: Vec<Box<dyn Part>> = vec![
            Box::new(Tracks {
                at: at("seq", seq),
                generation: at("run_time", inspected.tallies.run_time().generation()),
            }),
            Box::new(CountsPart::default()),
            Box::new(Events {
                reloads: at("reloads", reloads),
                errors: at("errors", errors),
                missed: [0, 0],
                sent_missed: [0, 0],
            }),
            Box::new(ErrorHistory {
                after: at("errors", errors),
            }),
            Box::new(States {
                asked: None,
                answers: HashMap::new(),
                texts: HashMap::new(),
            }),
            Box::new(Changes {
                start: changes,
                after: HashMap::new(),
            }),
            Box::new(Failed { at: at("seq", seq) }),
            Box::new(Lints { at: at("seq", seq) }),
            Box::new(Emissions { sent: emitted }),
            Box::new(Dropped::default()),
            Box::new(Versions::default()),
        ];
        Parts {
            parts,
            started: Instant::now(),
        }
    }

    /// Sends the marbles of `pipeline` too (`?lanes=NAME`): all it keeps in the next delta,
    /// then the new ones. Without it (or with `None`) no marbles are sent.
    pub fn watch_lanes(&mut self, pipeline: Option<String>) {
        if let Some(pipeline) = pipeline.filter(|p| !p.is_empty()) {
            self.parts.push(Box::new(Marbles { pipeline, after: 0 }));
        }
    }

    /// The next delta: the fields that changed (with `ms`, the time since the stream began),
    /// or `None` when nothing did.
    pub fn delta(&mut self, inspected: &Inspected) -> Option<Value> {
        let now = Now {
            inspected,
            tracks_sent: std::cell::Cell::new(false),
        };
        let mut delta = Map::new();
        for part in &mut self.parts {
            if let Some(v) = part.next(&now) {
                delta.insert(part.name().to_owned(), v);
            }
        }
        if delta.is_empty() {
            return None;
        }
        delta.insert(
            "ms".to_owned(),
            json!(self.started.elapsed().as_millis() as u64),
        );
        Some(Value::Object(delta))
    }
}

/// `version` and `tracks` (`[{path, kind, version, inner?, subscriptions?}]`, with
/// `inner_dropped`, the run-time tracks not listed), when a load or a reload changed them, or
/// an inner subscription started or ended.
struct Tracks {
    at: u64,
    /// The run-time tracks' generation last sent.
    generation: u64,
}

/// One track of the list a delta sends.
#[derive(Serialize)]
struct Listed<'a> {
    path: &'a str,
    kind: &'a str,
    version: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    inner: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscriptions: Option<u64>,
}

impl Part for Tracks {
    fn name(&self) -> &'static str {
        "tracks"
    }

    fn next(&mut self, now: &Now<'_>) -> Option<Value> {
        let run_time = now.inspected.tallies.run_time();
        let generation = run_time.generation();
        let r = lock(&now.inspected.hub.record);
        if r.tracks_at <= self.at && generation == self.generation {
            return None;
        }
        self.at = self.at.max(r.tracks_at);
        self.generation = generation;
        now.tracks_sent.set(true);
        let run_time = run_time.listed(super::inner::RUN_TIME_CAP);
        let list: Vec<Listed<'_>> = super::listed_tracks(&r, &run_time)
            .map(|(t, inner, subscriptions)| Listed {
                path: &t.path,
                kind: &t.kind,
                version: t.version,
                inner,
                subscriptions,
            })
            .collect();
        Some(json!({"version": r.version, "list": list, "inner_dropped": run_time.dropped}))
    }
}

/// One pipeline's counts as a client last read them: the counters, their cells by path
/// ([`count_cells`]), the values last sent.
type Sent = (Arc<Counts>, Vec<(String, usize)>, Vec<u64>);

/// `counts`: `{path: emissions}` for the tracks whose count changed (the run-time tracks
/// listed too).
#[derive(Default)]
struct CountsPart {
    /// Per pipeline, what was sent.
    pipelines: HashMap<String, Sent>,
    /// The run-time tracks' counts sent (of those still listed).
    inner: HashMap<String, u64>,
    /// The run-time tracks listed, as of the generation with it (listed again only when
    /// inner subscriptions started or ended).
    listed: Option<(u64, super::inner::Listed)>,
}

impl Part for CountsPart {
    fn name(&self) -> &'static str {
        "counts"
    }

    fn next(&mut self, now: &Now<'_>) -> Option<Value> {
        if now.tracks_sent.get() {
            // A new track list: every count again, paths the client just learnt included.
            self.pipelines.clear();
            self.inner.clear();
        }
        let mut out = Map::new();
        for (name, t) in now.inspected.tallies.all() {
            let counts = t.counts();
            let p = match self.pipelines.get_mut(&name) {
                Some(p) if Arc::ptr_eq(&p.0, &counts) => p,
                _ => {
                    // New code: new cells; every count is sent again.
                    let cells = count_cells(&name, &counts);
                    let sent = vec![u64::MAX; cells.len()];
                    self.pipelines.insert(name.clone(), (counts, cells, sent));
                    self.pipelines.get_mut(&name)?
                }
            };
            let (counts, cells, sent) = p;
            for ((path, cell), sent) in cells.iter().zip(sent.iter_mut()) {
                let n = counts.get(*cell);
                if n != *sent {
                    *sent = n;
                    out.insert(path.clone(), json!(n));
                }
            }
        }
        let run_time = now.inspected.tallies.run_time();
        let generation = run_time.generation();
        if generation != 0 {
            if self.listed.as_ref().is_none_or(|(g, _)| *g != generation) {
                self.listed = Some((generation, run_time.listed(super::inner::RUN_TIME_CAP)));
            }
            let listed = self.listed.as_ref().map(|(_, l)| l)?;
            let mut counts = HashMap::new();
            now.inspected.inner_counts(listed, |path, n| {
                counts.insert(path, n);
            });
            for (path, &n) in &counts {
                if self.inner.get(path) != Some(&n) {
                    out.insert(path.clone(), json!(n));
                }
            }
            self.inner = counts;
        }
        (!out.is_empty()).then_some(Value::Object(out))
    }
}

/// `reloads` and `errors`: the events newer than the last sent, and the number of those the
/// hub dropped before this client was sent them (told by [`Dropped`]).
struct Events {
    reloads: u64,
    errors: u64,
    missed: [u64; 2],
    sent_missed: [u64; 2],
}

impl Part for Events {
    fn name(&self) -> &'static str {
        "events"
    }

    fn next(&mut self, now: &Now<'_>) -> Option<Value> {
        let r = lock(&now.inspected.hub.record);
        let (reloads, missed_r) = r.reloads.after(self.reloads);
        let (errors, missed_e) = r.errors.after(self.errors);
        self.reloads = r.reloads.pushed;
        self.errors = r.errors.pushed;
        self.missed[0] += missed_r;
        self.missed[1] += missed_e;
        drop(r);
        let mut out = Map::new();
        if !reloads.is_empty() {
            out.insert("reloads".to_owned(), json!(reloads));
        }
        if !errors.is_empty() {
            out.insert("errors".to_owned(), json!(errors));
        }
        if self.missed != self.sent_missed {
            self.sent_missed = self.missed;
            out.insert(
                "missed".to_owned(),
                json!({"reloads": self.missed[0], "errors": self.missed[1]}),
            );
        }
        (!out.is_empty()).then_some(Value::Object(out))
    }
}

/// `error_history`: the entries of the hub's error counts by operator and version that
/// changed (`[{path, version, count, last}]`, the whole entry each).
struct ErrorHistory {
    /// The number of the last error counted in what was sent.
    after: u64,
}

impl Part for ErrorHistory {
    fn name(&self) -> &'static str {
        "error_history"
    }

    fn next(&mut self, now: &Now<'_>) -> Option<Value> {
        let r = lock(&now.inspected.hub.record);
        if r.errors.pushed <= self.after {
            return None;
        }
        let changed: Vec<&super::ErrorTally> = r
            .error_history
            .values()
            .filter(|(_, at)| *at > self.after)
            .map(|(t, _)| t)
            .collect();
        self.after = r.errors.pushed;
        (!changed.is_empty()).then(|| json!(changed))
    }
}

/// `states`: `{path: text}` for the state texts that changed (`null`: no state). The source
/// threads are asked every [`STATE_EVERY`]; their answers come with their next call.
struct States {
    asked: Option<Instant>,
    /// Per pipeline, the number of its answers last read.
    answers: HashMap<String, u64>,
    texts: HashMap<String, Option<String>>,
}

impl Part for States {
    fn name(&self) -> &'static str {
        "states"
    }

    fn next(&mut self, now: &Now<'_>) -> Option<Value> {
        let tallies = &now.inspected.tallies;
        if self.asked.is_none_or(|t| t.elapsed() >= STATE_EVERY) {
            tallies.ask_states();
            self.asked = Some(Instant::now());
        }
        let mut out = Map::new();
        for (name, t) in tallies.all() {
            if t.answers() == self.answers.get(&name).copied().unwrap_or(0) {
                continue;
            }
            let (answers, texts) = t.last_states();
            self.answers.insert(name, answers);
            for (path, text) in texts {
                if self.texts.get(&path) != Some(&text) {
                    out.insert(path.clone(), json!(text));
                    self.texts.insert(path, text);
                }
            }
        }
        (!out.is_empty()).then_some(Value::Object(out))
    }
}

/// `state_changes`: what reloads did to stateful operators' states, newer than the last sent
/// (the snapshot's `state_changes` items).
struct Changes {
    /// Where the client started (its snapshot's cursor).
    start: u64,
    /// Per pipeline, the number of the last change sent.
    after: HashMap<String, u64>,
}

impl Part for Changes {
    fn name(&self) -> &'static str {
        "state_changes"
    }

    fn next(&mut self, now: &Now<'_>) -> Option<Value> {
        let mut out = Vec::new();
        for (name, t) in now.inspected.tallies.all() {
            let after = self.after.entry(name).or_insert(self.start);
            let new = t.changes_after(*after);
            if let Some(last) = new.last() {
                *after = last.seq;
            }
            out.extend(new);
        }
        (!out.is_empty()).then(|| json!(out))
    }
}

/// `failed`: `{build_failed, load_failed}` (each text or `null`) when either changed.
struct Failed {
    at: u64,
}

impl Part for Failed {
    fn name(&self) -> &'static str {
        "failed"
    }

    fn next(&mut self, now: &Now<'_>) -> Option<Value> {
        let r = lock(&now.inspected.hub.record);
        if r.failed_at <= self.at {
            return None;
        }
        self.at = r.failed_at;
        Some(json!({"build_failed": r.build_failed, "load_failed": r.load_failed}))
    }
}

/// `lints`: the whole list (as the snapshot's `lints`) when it changed.
struct Lints {
    at: u64,
}

impl Part for Lints {
    fn name(&self) -> &'static str {
        "lints"
    }

    fn next(&mut self, now: &Now<'_>) -> Option<Value> {
        let r = lock(&now.inspected.hub.record);
        if r.lints_at <= self.at {
            return None;
        }
        self.at = r.lints_at;
        Some(json!(r.stuck.values().collect::<Vec<_>>()))
    }
}

/// `emissions`: `{pipeline: {count, last: [{version, value}]}}`: for each pipeline whose
/// `log` operators emitted since the last delta, how many values and the last
/// [`super::KEPT_TEXTS`] of them at most (never one message per value).
struct Emissions {
    /// Per pipeline, the hub's total when last sent.
    sent: HashMap<String, u64>,
}

impl Part for Emissions {
    fn name(&self) -> &'static str {
        "emissions"
    }

    fn next(&mut self, now: &Now<'_>) -> Option<Value> {
        let emitted = lock(&now.inspected.hub.emitted);
        let mut out = Map::new();
        for (name, e) in emitted.iter() {
            let sent = self.sent.get(name).copied().unwrap_or(0);
            if e.total <= sent {
                continue;
            }
            let last: Vec<Value> = e
                .last
                .iter()
                .filter(|(n, _, _)| *n > sent)
                .map(|(_, version, value)| json!({"version": version, "value": value}))
                .collect();
            out.insert(name.clone(), json!({"count": e.total - sent, "last": last}));
            self.sent.insert(name.clone(), e.total);
        }
        (!out.is_empty()).then_some(Value::Object(out))
    }
}

/// `dropped`: what the inspector no longer keeps (`reloads`, `errors`, `state_changes`,
/// `error_history` dropped from their bounded records, as the snapshot's `dropped`), when
/// it changed.
#[derive(Default)]
struct Dropped {
    sent: Option<[u64; 4]>,
}

impl Part for Dropped {
    fn name(&self) -> &'static str {
        "dropped"
    }

    fn next(&mut self, now: &Now<'_>) -> Option<Value> {
        let r = lock(&now.inspected.hub.record);
        let d = [
            r.reloads.dropped(),
            r.errors.dropped(),
            now.inspected.tallies.dropped_changes(),
            r.dropped_history,
        ];
        drop(r);
        if self.sent == Some(d) {
            return None;
        }
        self.sent = Some(d);
        Some(json!({
            "reloads": d[0], "errors": d[1], "state_changes": d[2], "error_history": d[3]
        }))
    }
}

/// `marbles`: `{pipeline, now_ms, lanes: [{path, marbles: [{t_ms, version, value, seq}]}]}`,
/// the watched pipeline's marbles numbered after the last sent (at most
/// [`super::tally::MARBLES_PER_TRACK`] per lane and a few a second: the sampler's rate).
struct Marbles {
    pipeline: String,
    after: u64,
}

impl Part for Marbles {
    fn name(&self) -> &'static str {
        "marbles"
    }

    fn next(&mut self, now: &Now<'_>) -> Option<Value> {
        let tallies = &now.inspected.tallies;
        let (lanes, last) = tallies.get(&self.pipeline)?.lanes_after(self.after);
        if lanes.is_empty() {
            return None;
        }
        self.after = last;
        Some(json!({"pipeline": self.pipeline, "now_ms": tallies.now_ms(), "lanes": lanes}))
    }
}

/// `versions`: `{now_ms, list: [{version, at_ms}]}`, when each plugin version was loaded on
/// the marbles' time axis, when a version was loaded since the last sent.
#[derive(Default)]
struct Versions {
    sent: Option<(usize, u64)>,
}

impl Part for Versions {
    fn name(&self) -> &'static str {
        "versions"
    }

    fn next(&mut self, now: &Now<'_>) -> Option<Value> {
        let r = lock(&now.inspected.hub.record);
        let key = (r.loaded_at.len(), r.loaded_at.back().map_or(0, |(v, _)| *v));
        if self.sent == Some(key) {
            return None;
        }
        self.sent = Some(key);
        let list = now.inspected.versions(&r);
        drop(r);
        Some(json!({"now_ms": now.inspected.tallies.now_ms(), "list": list}))
    }
}

/// One updates client's stream, between two deltas.
struct Streaming {
    inspected: Arc<Inspected>,
    /// Made with the first delta (from `since`, the query's cursor), then kept.
    parts: Option<Parts>,
    since: Option<BTreeMap<String, u64>>,
    /// The pipeline whose marbles the stream sends (`lanes=NAME`), until the first delta.
    lanes: Option<String>,
    ticks: tokio::time::Interval,
    last_write: Instant,
    stop: super::serve::Stop,
    /// Emissions are kept for the page while the stream lives.
    _watching: super::UpdatesGuard,
}

/// `/api/updates` (`query`: a snapshot's cursor, see [`Cursor::parse`]): a delta at most
/// every [`TICK`] when something changed, a comment after [`KEEPALIVE`] of silence; until
/// the client goes (the server then drops the stream) or the inspector stops. The deltas
/// are built on the blocking pool: they read what the pipelines write, and take the hub's
/// locks.
pub(super) fn stream(
    inspected: Arc<Inspected>,
    query: &str,
    stop: super::serve::Stop,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Streaming {
        _watching: inspected.hub.watch_emissions(),
        inspected,
        parts: None,
        since: Some(Cursor::parse(query)),
        lanes: query_value(query, "lanes"),
        ticks,
        last_write: Instant::now(),
        stop,
    };
    let head = stream::once(future::ready(Ok(Bytes::from_static(
        b": hmr inspector updates\n\n",
    ))));
    let rest = stream::unfold(state, |mut s| async move {
        loop {
            tokio::select! {
                biased;
                () = s.stop.stopped() => return None,
                _ = s.ticks.tick() => {}
            }
            let (inspected, parts, since, lanes) = (
                s.inspected.clone(),
                s.parts.take(),
                s.since.take(),
                s.lanes.take(),
            );
            let built = tokio::task::spawn_blocking(move || {
                let mut parts = parts.unwrap_or_else(|| {
                    let mut parts = Parts::new(&inspected, &since.unwrap_or_default());
                    parts.watch_lanes(lanes);
                    parts
                });
                let mut out = Vec::new();
                if let Some(delta) = parts.delta(&inspected) {
                    out.extend_from_slice(b"event: delta\ndata: ");
                    // A `Value` always encodes.
                    let _ = serde_json::to_writer(&mut out, &delta);
                    out.extend_from_slice(b"\n\n");
                }
                (parts, out)
            })
            .await;
            // The runtime is shutting down.
            let Ok((parts, mut out)) = built else {
                return None;
            };
            s.parts = Some(parts);
            if out.is_empty() {
                if s.last_write.elapsed() < KEEPALIVE {
                    continue;
                }
                out.extend_from_slice(b": keepalive\n\n");
            }
            s.last_write = Instant::now();
            return Some((Ok(Bytes::from(out)), s));
        }
    });
    head.chain(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_value_is_found_and_decoded() {
        let cases = [
            ("seq=1&lanes=counter", "lanes", Some("counter")),
            ("lanes=my%20pipe&seq=2", "lanes", Some("my pipe")),
            ("lanes=a+b", "lanes", Some("a b")),
            ("lanes=", "lanes", Some("")),
            ("lanes", "lanes", Some("")),
            ("seq=1", "lanes", None),
            ("", "lanes", None),
            ("lanes=%zz%4", "lanes", Some("%zz%4")),
            ("lanes=%C3%A9t%C3%A9", "lanes", Some("été")),
            ("xlanes=1&lanes=2", "lanes", Some("2")),
        ];
        for (query, key, want) in cases {
            assert_eq!(query_value(query, key).as_deref(), want, "{query:?}");
        }
    }
    use crate::events::{EventSink, HostEvent, TrackInfo};
    use crate::inspect::{Hub, tally::Tallies};

    fn inspected() -> Inspected {
        let sink = Arc::new(crate::events::ChannelSink(std::sync::mpsc::channel().0));
        Inspected::new(Arc::new(Hub::new(sink)), Arc::new(Tallies::default()))
    }

    fn loaded(version: u64) -> HostEvent {
        HostEvent::Loaded {
            version,
            tracks: vec![TrackInfo {
                path: "p".into(),
                kind: "pipeline".into(),
                version: 0,
            }],
            build_ms: 1,
            load_ms: 1,
        }
    }

    fn error(n: u64) -> HostEvent {
        HostEvent::Error {
            pipeline: "p".into(),
            path: "p|0:map".into(),
            message: format!("boom {n}"),
        }
    }

    #[test]
    fn a_delta_carries_what_changed_once_and_errors_with_their_version() {
        let i = inspected();
        i.hub.event(loaded(1));
        let mut parts = Parts::new(&i, &BTreeMap::new());
        // From now: the tracks loaded before are not sent again, only the dropped totals
        // (sent once, as the first thing the client learns).
        let first = parts.delta(&i).expect("a first delta");
        assert_eq!(first.get("tracks"), None, "{first}");
        assert_eq!(first["dropped"]["errors"], 0, "{first}");
        assert_eq!(parts.delta(&i), None, "nothing changed");
        i.hub.event(error(1));
        i.hub.event(loaded(2));
        i.hub.event(error(2));
        let d = parts.delta(&i).expect("a delta");
        assert_eq!(d["tracks"]["version"], 2, "{d}");
        let errors = d["events"]["errors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let tagged: Vec<(Value, Value, Value)> = errors
            .iter()
            .map(|e| {
                (
                    e["event"].clone(),
                    e["message"].clone(),
                    e["version"].clone(),
                )
            })
            .collect();
        assert_eq!(
            tagged,
            [
                (json!("error"), json!("boom 1"), json!(1)),
                (json!("error"), json!("boom 2"), json!(2))
            ],
            "{d}"
        );
        let history = d["error_history"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            history,
            [
                json!({"path": "p|0:map", "version": 1, "count": 1, "last": "boom 1"}),
                json!({"path": "p|0:map", "version": 2, "count": 1, "last": "boom 2"})
            ],
            "{d}"
        );
        assert_eq!(parts.delta(&i), None, "sent once");
        i.hub.event(error(3));
        let d = parts.delta(&i).expect("a delta");
        assert_eq!(
            d["error_history"],
            json!([{"path": "p|0:map", "version": 2, "count": 2, "last": "boom 3"}]),
            "only the entry that changed: {d}"
        );
        // A client starting from a snapshot's cursor gets what came after it.
        let cursor = i.snapshot().cursor;
        i.hub.event(error(4));
        let since = Cursor::parse(&format!(
            "seq={}&reloads={}&errors={}&changes={}",
            cursor.seq, cursor.reloads, cursor.errors, cursor.changes
        ));
        let d = Parts::new(&i, &since).delta(&i).expect("a delta");
        assert_eq!(d["events"]["errors"][0]["message"], "boom 4", "{d}");
        assert_eq!(
            d["events"]["errors"].as_array().map(Vec::len),
            Some(1),
            "{d}"
        );
    }

    #[test]
    fn errors_dropped_before_a_client_got_them_are_counted_as_missed() {
        let i = inspected();
        let mut parts = Parts::new(&i, &BTreeMap::new());
        let _ = parts.delta(&i);
        let extra = 7;
        for n in 0..super::super::KEPT_EVENTS as u64 + extra {
            i.hub.event(error(n));
        }
        let d = parts.delta(&i).expect("a delta");
        assert_eq!(
            d["events"]["errors"].as_array().map(Vec::len),
            Some(super::super::KEPT_EVENTS),
            "{d}"
        );
        assert_eq!(d["events"]["missed"]["errors"], extra, "{d}");
        assert_eq!(d["dropped"]["errors"], extra, "{d}");
    }

    #[test]
    fn emissions_are_kept_only_while_an_updates_client_is_connected() {
        let i = inspected();
        let emit = |n: u64| i.hub.emission("p", 1, &n.to_string());
        for n in 0..10 {
            emit(n);
        }
        assert!(lock(&i.hub.emitted).is_empty(), "kept with no client");
        let guard = i.hub.watch_emissions();
        let mut parts = Parts::new(&i, &BTreeMap::new());
        let _ = parts.delta(&i);
        for n in 10..1010 {
            emit(n);
        }
        let d = parts.delta(&i).expect("a delta");
        assert_eq!(d["emissions"]["p"]["count"], 1000, "{d}");
        let last: Vec<&str> = d["emissions"]["p"]["last"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["value"].as_str())
            .collect();
        assert_eq!(last, ["1007", "1008", "1009"], "{d}");
        emit(1010);
        let d = parts.delta(&i).expect("a delta");
        assert_eq!(d["emissions"]["p"]["count"], 1, "{d}");
        assert_eq!(d["emissions"]["p"]["last"][0]["value"], "1010", "{d}");
        drop(guard);
        assert!(
            lock(&i.hub.emitted).is_empty(),
            "kept after the last client"
        );
        emit(1011);
        assert!(lock(&i.hub.emitted).is_empty(), "kept with no client");
    }
}

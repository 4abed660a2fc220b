//! The inspector (`--inspect ADDR`): a read-only page and JSON API served by the host.
//!
//! - `GET /`: the page ([`PAGE`], plain HTML, CSS and JS compiled into the binary);
//! - `GET /api/snapshot`: version, tracks with their emission counts and state texts (with
//!   the live inner subscriptions' run-time tracks, see [`inner`]), their recent values
//!   (marbles), the `reload` and `error` events, the build failure showing (if any);
//! - `GET /api/events`: the `--json` events as server-sent events (for tools);
//! - `GET /api/updates`: what changed, as server-sent deltas, a few a second ([`updates`]):
//!   what the page reads after one snapshot.
//!
//! Served by axum on hyper, on a one-thread tokio runtime of its own (`serve.rs`; at most
//! [`MAX_CONNECTIONS`] connections at once). Nothing here can change the running host. A
//! request whose `Host` header is not `127.0.0.1:PORT`, `localhost:PORT`, `[::1]:PORT` or the
//! address it listens on gets 403, so a page of another origin cannot read it through DNS
//! rebinding.
//!
//! Events reach the inspector through [`Hub`], a sink wrapped around the host's own: it keeps
//! the last version's tracks, the last [`KEPT_EVENTS`] reloads and errors, and the build
//! failure showing, and hands every event to each event-stream client through a bounded queue
//! ([`CLIENT_QUEUE`]). A slow or stuck client loses events (counted, and told in the stream)
//! and never slows the thread that reports them. Counts and states come from
//! [`tally::Tallies`], written by the source threads.

pub mod inner;
mod serve;
pub mod tally;
pub mod updates;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::mpsc::{Receiver, Sender, channel, error::TrySendError};

use crate::events::{EventSink, HostEvent, Sink, TrackInfo};
use tally::Tallies;

/// The page, compiled in.
pub const PAGE: &str = include_str!("page.html");

/// How many `reload` and `error` events the snapshot keeps (older ones are dropped and
/// counted).
pub const KEPT_EVENTS: usize = 256;

/// How many events wait for one event-stream client before newer ones are dropped for it.
pub const CLIENT_QUEUE: usize = 1024;

/// Connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a snapshot waits for the source threads to report their states.
pub const STATE_WAIT: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the inspector remembers of the events.
#[derive(Debug, Default)]
struct Record {
    version: u64,
    tracks: Vec<TrackInfo>,
    reloads: Kept<HostEvent>,
    errors: Kept<Versioned>,
    /// cargo's rendered diagnostic, from the last build if it failed.
    build_failed: Option<String>,
    /// The last load failure, until the next good load.
    load_failed: Option<String>,
    /// The last `stuck` event of each pipeline whose thread is stuck, by pipeline: a lint,
    /// until a reload no longer lists the pipeline as stuck (its call returned).
    stuck: BTreeMap<String, HostEvent>,
    /// The hub's sequence number, bumped at every event it records; `tracks_at`,
    /// `failed_at` and `lints_at` hold its value when the tracks (and the version), the
    /// build or load failure, and the lints last changed. An updates client sends a field
    /// when it changed after the sequence number it last saw.
    seq: u64,
    tracks_at: u64,
    failed_at: u64,
    lints_at: u64,
    /// Errors by operator and plugin version: how many, the last message, and the number of
    /// the last error counted (the updates send the entries changed since they last sent).
    error_history: BTreeMap<(String, u64), (ErrorTally, u64)>,
    /// Entries dropped from `error_history` to keep it within [`KEPT_HISTORY`].
    dropped_history: u64,
    /// When each plugin version was loaded (the last [`KEPT_EVENTS`]): the reload lines
    /// across the marble lanes.
    loaded_at: VecDeque<(u64, Instant)>,
}

impl Record {
    fn loaded(&mut self, version: u64) {
        if self.loaded_at.len() == KEPT_EVENTS {
            self.loaded_at.pop_front();
        }
        self.loaded_at.push_back((version, Instant::now()));
    }
}

/// How many (operator, version) entries the error history keeps; the oldest versions' go
/// first.
pub const KEPT_HISTORY: usize = 4096;

/// The errors one operator reported while one plugin version ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorTally {
    /// The operator's path (or the pipeline's, for a failure of the pipeline).
    pub path: String,
    /// The plugin version running.
    pub version: u64,
    /// How many errors.
    pub count: u64,
    /// The last one's message.
    pub last: String,
}

/// The tracks of a registration among `tracks`: the run-time ones a reload lists are those
/// live at the reload, which [`inner::RunTimeTracks`] keeps current instead.
fn registered(tracks: &[TrackInfo]) -> Vec<TrackInfo> {
    tracks
        .iter()
        .filter(|t| !inner::is_run_time(&t.path))
        .cloned()
        .collect()
}

/// A bounded list of the last [`KEPT_EVENTS`] items, each numbered (from 1) in the order
/// it came, with how many were dropped.
#[derive(Debug)]
struct Kept<T> {
    items: VecDeque<T>,
    /// How many came in all: the last item's number.
    pushed: u64,
}

impl<T> Default for Kept<T> {
    fn default() -> Kept<T> {
        Kept {
            items: VecDeque::new(),
            pushed: 0,
        }
    }
}

impl<T: Clone> Kept<T> {
    fn push(&mut self, item: T) {
        if self.items.len() == KEPT_EVENTS {
            self.items.pop_front();
        }
        self.items.push_back(item);
        self.pushed += 1;
    }

    /// Items dropped to keep the bound.
    fn dropped(&self) -> u64 {
        self.pushed - self.items.len() as u64
    }

    /// The items numbered after `n`, and how many of those are no longer kept.
    fn after(&self, n: u64) -> (Vec<T>, u64) {
        let new = self.pushed.saturating_sub(n);
        let kept = new.min(self.items.len() as u64);
        let from = self.items.len() - kept as usize;
        (self.items.range(from..).cloned().collect(), new - kept)
    }
}

/// An event with the plugin version running when the hub saw it (an error's version: the
/// snapshot's errors are grouped by it). Serialised as the event's fields plus `version`.
#[derive(Clone, Debug, Serialize)]
pub struct Versioned {
    /// The event.
    #[serde(flatten)]
    pub event: HostEvent,
    /// The plugin version running when it was reported.
    pub version: u64,
}

/// The emissions of one pipeline's `log` operators, while an updates client is connected:
/// how many, and the last few texts.
#[derive(Debug, Default)]
struct Emitted {
    /// Emissions since the first updates client connected.
    total: u64,
    /// The last [`KEPT_TEXTS`] values: number (`total` when it came), version and text.
    last: VecDeque<(u64, u64, String)>,
}

/// How many emission texts per pipeline the hub keeps for the page (the newest).
pub const KEPT_TEXTS: usize = 3;

struct Client {
    tx: Sender<Arc<str>>,
    dropped: Arc<AtomicU64>,
}

/// The sink the host reports through when the inspector is on: records what the snapshot
/// shows, feeds event-stream clients, then hands the event to the host's own sink.
pub struct Hub {
    inner: Sink,
    record: Mutex<Record>,
    clients: Mutex<Vec<Client>>,
    /// `clients.len()`, read without the lock: with no client, an event costs no encoding.
    n_clients: AtomicUsize,
    /// Updates clients connected (`/api/updates`): while there are none, emissions are not
    /// counted nor kept here (`emitted` stays empty).
    n_updates: AtomicUsize,
    emitted: Mutex<HashMap<String, Emitted>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("clients", &self.n_clients.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub in front of `inner`.
    pub fn new(inner: Sink) -> Hub {
        Hub {
            inner,
            record: Mutex::default(),
            clients: Mutex::default(),
            n_clients: AtomicUsize::new(0),
            n_updates: AtomicUsize::new(0),
            emitted: Mutex::default(),
        }
    }

    fn remember(&self, event: &HostEvent) {
        if matches!(
            event,
            HostEvent::Emission { .. } | HostEvent::Completed { .. } | HostEvent::Inspector { .. }
        ) {
            // Not recorded: an emission (the most frequent event) takes no lock here.
            return;
        }
        let mut r = lock(&self.record);
        let r = &mut *r;
        let seq = r.seq + 1;
        let failed = (r.build_failed.clone(), r.load_failed.clone());
        let lints = r.stuck.len();
        match event {
            HostEvent::Loaded {
                version, tracks, ..
            } => {
                r.loaded(*version);
                r.version = *version;
                r.tracks = registered(tracks);
                r.tracks_at = seq;
                r.build_failed = None;
                r.load_failed = None;
            }
            HostEvent::Reload {
                version,
                tracks,
                stuck,
                ..
            } => {
                r.loaded(*version);
                r.version = *version;
                r.tracks = registered(tracks);
                r.tracks_at = seq;
                r.build_failed = None;
                r.load_failed = None;
                r.stuck.retain(|pipeline, _| stuck.contains(pipeline));
                r.reloads.push(event.clone());
            }
            HostEvent::Unchanged { .. } => r.build_failed = None,
            HostEvent::BuildFailed { error } => r.build_failed = Some(error.clone()),
            HostEvent::LoadFailed { error } => {
                r.build_failed = None;
                r.load_failed = Some(error.clone());
            }
            HostEvent::Error { path, message, .. } => {
                r.errors.push(Versioned {
                    event: event.clone(),
                    version: r.version,
                });
                let n = r.errors.pushed;
                let key = (path.clone(), r.version);
                if let Some((t, at)) = r.error_history.get_mut(&key) {
                    t.count += 1;
                    t.last.clone_from(message);
                    *at = n;
                } else {
                    if r.error_history.len() == KEPT_HISTORY {
                        // The oldest version's first entry goes.
                        let oldest = r
                            .error_history
                            .iter()
                            .min_by_key(|((_, v), _)| *v)
                            .map(|(k, _)| k.clone());
                        if let Some(k) = oldest {
                            r.error_history.remove(&k);
                            r.dropped_history += 1;
                        }
                    }
                    let tally = ErrorTally {
                        path: key.0.clone(),
                        version: key.1,
                        count: 1,
                        last: message.clone(),
                    };
                    r.error_history.insert(key, (tally, n));
                }
            }
            HostEvent::Stuck { pipeline, .. } => {
                r.stuck.insert(pipeline.clone(), event.clone());
                r.lints_at = seq;
            }
            _ => {}
        }
        if (&r.build_failed, &r.load_failed) != (&failed.0, &failed.1) {
            r.failed_at = seq;
        }
        if r.stuck.len() != lints {
            r.lints_at = seq;
        }
        r.seq = seq;
    }

    /// Counts an emission and keeps its text (the last [`KEPT_TEXTS`] per pipeline) for the
    /// updates clients. Called only while one is connected.
    #[cold]
    fn keep_emission(&self, pipeline: &str, version: u64, value: &str) {
        let mut emitted = lock(&self.emitted);
        let e = match emitted.get_mut(pipeline) {
            Some(e) => e,
            None => emitted.entry(pipeline.to_owned()).or_default(),
        };
        e.total += 1;
        // The oldest text's buffer is reused for the newest.
        let mut text = if e.last.len() == KEPT_TEXTS {
            e.last.pop_front().map(|(_, _, t)| t).unwrap_or_default()
        } else {
            String::new()
        };
        text.clear();
        text.push_str(value);
        e.last.push_back((e.total, version, text));
    }

    /// Registers an updates client: from now until the guard drops, emissions are counted
    /// and their last texts kept.
    pub fn watch_emissions(self: &Arc<Hub>) -> UpdatesGuard {
        self.n_updates.fetch_add(1, Ordering::AcqRel);
        UpdatesGuard(self.clone())
    }

    fn broadcast(&self, event: &HostEvent) {
        if self.n_clients.load(Ordering::Relaxed) == 0
            || matches!(event, HostEvent::Unchanged { .. })
        {
            return;
        }
        let Ok(json) = serde_json::to_string(event) else {
            return;
        };
        let json: Arc<str> = json.into();
        let mut clients = lock(&self.clients);
        clients.retain(|c| match c.tx.try_send(json.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Closed(_)) => false,
        });
        self.n_clients.store(clients.len(), Ordering::Relaxed);
    }

    fn subscribe(&self) -> (Receiver<Arc<str>>, Arc<AtomicU64>) {
        let (tx, rx) = channel(CLIENT_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut clients = lock(&self.clients);
        clients.push(Client {
            tx,
            dropped: dropped.clone(),
        });
        self.n_clients.store(clients.len(), Ordering::Relaxed);
        (rx, dropped)
    }
}

impl EventSink for Hub {
    fn event(&self, event: HostEvent) {
        self.remember(&event);
        self.broadcast(&event);
        self.inner.event(event);
    }

    fn emission(&self, pipeline: &str, version: u64, value: &str) {
        // With no client of either kind, the emission goes on borrowed (the printer copies
        // it into recycled strings), as without the inspector: two relaxed loads.
        if self.n_updates.load(Ordering::Relaxed) == 0
            && self.n_clients.load(Ordering::Relaxed) == 0
        {
            return self.inner.emission(pipeline, version, value);
        }
        self.emission_watched(pipeline, version, value);
    }
}

impl Hub {
    /// An emission while a client is connected: an updates client counts it and keeps its
    /// text (the last few per pipeline); an event-stream client is sent it.
    #[inline(never)]
    fn emission_watched(&self, pipeline: &str, version: u64, value: &str) {
        if self.n_updates.load(Ordering::Relaxed) != 0 {
            self.keep_emission(pipeline, version, value);
        }
        if self.n_clients.load(Ordering::Relaxed) == 0 {
            return self.inner.emission(pipeline, version, value);
        }
        self.event(HostEvent::Emission {
            pipeline: pipeline.to_owned(),
            version,
            value: value.to_owned(),
        });
    }
}

/// An updates client's registration (see [`Hub::watch_emissions`]): when the last one
/// drops, the hub forgets the emissions it kept.
#[derive(Debug)]
pub struct UpdatesGuard(Arc<Hub>);

impl Drop for UpdatesGuard {
    fn drop(&mut self) {
        let mut emitted = lock(&self.0.emitted);
        if self.0.n_updates.fetch_sub(1, Ordering::AcqRel) == 1 {
            emitted.clear();
        }
    }
}

/// One track in the snapshot.
#[derive(Debug, Serialize)]
pub struct TrackView {
    /// Structural path.
    pub path: String,
    /// Kind.
    pub kind: Arc<str>,
    /// How many times its code was swapped or its state reset.
    pub version: u64,
    /// Values it emitted since it was added: an operator's outputs, a pipeline's source
    /// values, a scope's last operator's outputs; `None` before its first count.
    pub emissions: Option<u64>,
    /// The Debug text of its state (capped), `None` without state.
    pub state: Option<String>,
    /// A run-time track: a live inner subscription's own (`#N:inner`, under its higher-order
    /// operator) or one of its inner stream's. Left out (false) for a registration's track.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inner: bool,
    /// On a higher-order operator (`switch_map`, `merge_map`, `concat_map`, `exhaust_map`):
    /// how many of its inner subscriptions are live, listed or not. Left out on others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<u64>,
}

/// `GET /api/snapshot`.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// The running plugin version (0 before the first load).
    pub version: u64,
    /// Every track of that version, in path order: the registration's, and the run-time
    /// tracks of the live inner subscriptions (`inner: true`), at most
    /// [`inner::RUN_TIME_CAP`] of those (the rest counted in `dropped.inner_tracks`).
    pub tracks: Vec<TrackView>,
    /// The last [`KEPT_EVENTS`] `reload` events.
    pub reloads: Vec<HostEvent>,
    /// The last [`KEPT_EVENTS`] `error` events, each with the plugin `version` running when
    /// it was reported.
    pub errors: Vec<Versioned>,
    /// Older reloads, errors and state changes no longer kept, and run-time tracks not
    /// listed.
    pub dropped: BTreeMap<&'static str, u64>,
    /// cargo's rendered diagnostic while the last build failed, else `None`.
    pub build_failed: Option<String>,
    /// The last load failure, until the next good load.
    pub load_failed: Option<String>,
    /// What each reload did to each stateful operator's state (the last
    /// [`tally::KEPT_CHANGES`] of each pipeline), by version, then path.
    pub state_changes: Vec<tally::StateChange>,
    /// Lints: the `stuck` event of each pipeline whose thread is stuck in one call into
    /// plugin code (see `runtime::STUCK_AFTER`), until a reload no longer lists it as stuck.
    pub lints: Vec<HostEvent>,
    /// Every error counted by operator and plugin version (beyond the last
    /// [`KEPT_EVENTS`] errors listed), the last [`KEPT_HISTORY`] entries.
    pub error_history: Vec<ErrorTally>,
    /// Where this snapshot stands: `GET /api/updates?` with these as its query sends what
    /// changed after it.
    pub cursor: updates::Cursor,
    /// The time axis' reading now, in milliseconds (marble times count on it).
    pub now_ms: u64,
    /// When each plugin version was loaded (on the marbles' time axis), oldest first.
    pub versions: Vec<VersionAt>,
    /// Each track's recent values (at most [`tally::MARBLES_PER_TRACK`], a few a second at
    /// most), by path.
    pub marbles: Vec<tally::Lane>,
}

/// When a plugin version was loaded.
#[derive(Debug, Serialize)]
pub struct VersionAt {
    /// The version.
    pub version: u64,
    /// When, in milliseconds on the marbles' time axis.
    pub at_ms: u64,
}

/// The inspector's shared parts: what the server reads.
#[derive(Debug)]
pub struct Inspected {
    hub: Arc<Hub>,
    tallies: Arc<Tallies>,
}

/// Which count each of a pipeline's tracks shows: `(path, cell)` with cell 0 the source's
/// values (the pipeline's own track), `1 + i` operator `i`'s outputs, and a scope the cell of
/// its last operator (walking the operators from the last, the first one met inside it).
pub fn count_cells(pipeline: &str, counts: &tally::Counts) -> Vec<(String, usize)> {
    let mut cells = vec![(pipeline.to_owned(), 0)];
    let mut scopes = std::collections::HashSet::new();
    for (i, (_, path)) in counts.ops.iter().enumerate().rev() {
        cells.push((path.clone(), i + 1));
        let mut outer = path.as_str();
        while let Some((parent, _)) = outer.rsplit_once('|') {
            if parent != pipeline && scopes.insert(parent) {
                cells.push((parent.to_owned(), i + 1));
            }
            outer = parent;
        }
    }
    cells
}

/// The tracks listed now, in path order: the registration's (`r.tracks`) and the live
/// run-time ones of `run_time`, each with whether it is a run-time track and, for a
/// higher-order operator, its live inner subscriptions (listed or not).
fn listed_tracks<'a>(
    r: &'a Record,
    run_time: &'a inner::Listed,
) -> impl Iterator<Item = (&'a TrackInfo, bool, Option<u64>)> {
    let mut tracks: Vec<(&TrackInfo, bool)> = r.tracks.iter().map(|t| (t, false)).collect();
    if !run_time.subs.is_empty() {
        tracks.extend(
            run_time
                .subs
                .iter()
                .flat_map(|(_, _, ts)| ts)
                .map(|t| (t, true)),
        );
        tracks.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    }
    tracks.into_iter().map(|(t, inner)| {
        let subscriptions = matches!(
            &*t.kind,
            "switch_map" | "merge_map" | "concat_map" | "exhaust_map"
        )
        .then(|| run_time.live_on.get(&t.path).copied().unwrap_or(0));
        (t, inner, subscriptions)
    })
}

impl Inspected {
    /// When each plugin version `r` remembers was loaded, on the marbles' time axis.
    fn versions(&self, r: &Record) -> Vec<VersionAt> {
        r.loaded_at
            .iter()
            .map(|&(version, at)| VersionAt {
                version,
                at_ms: self.tallies.ms_at(at),
            })
            .collect()
    }

    /// Hands `out` the count of each run-time track `run_time` lists: an inner operator
    /// counts what it emitted, its subscription's track what the last one emitted.
    fn inner_counts(&self, run_time: &inner::Listed, mut out: impl FnMut(String, u64)) {
        let mut by_pipeline: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (pipeline, id, _) in &run_time.subs {
            by_pipeline.entry(pipeline).or_default().push(*id);
        }
        for (pipeline, ids) in by_pipeline {
            let Some(tally) = self.tallies.get(pipeline) else {
                continue;
            };
            for c in tally.inner_counts(ids) {
                let ops: Vec<(&str, u64)> = c.by_path().collect();
                let mut seen = std::collections::HashSet::new();
                for &(path, n) in ops.iter().rev() {
                    out(path.to_owned(), n);
                    seen.insert(path);
                    // Up to the subscription's own track, not beyond: the higher-order
                    // operator counts what it emitted itself. The last operator met first
                    // gives each enclosing track that is not an operator its count.
                    let mut outer = path;
                    while let Some((parent, _)) = outer.rsplit_once('|')
                        && inner::is_run_time(parent)
                    {
                        if seen.insert(parent) {
                            out(parent.to_owned(), n);
                        }
                        outer = parent;
                    }
                }
            }
        }
    }

    /// The parts of a running inspector, for a caller that reports events through `hub` and
    /// counts into `tallies` without serving them (a bench, a test of the updates).
    pub fn new(hub: Arc<Hub>, tallies: Arc<Tallies>) -> Inspected {
        Inspected { hub, tallies }
    }

    /// The snapshot as of now (waits up to [`STATE_WAIT`] for state texts), with every
    /// pipeline's marble lanes.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_with(None)
    }

    /// [`Inspected::snapshot`] with the marble lanes of pipeline `lanes` only (`Some("")`:
    /// none; `None`: every pipeline's).
    pub fn snapshot_with(&self, lanes: Option<&str>) -> Snapshot {
        let last_change = self.tallies.last_change();
        let states = self.tallies.states(STATE_WAIT);
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut state_changes = Vec::new();
        for (name, t) in self.tallies.all() {
            state_changes.extend(t.changes());
            let c = t.counts();
            for (path, cell) in count_cells(&name, &c) {
                counts.insert(path, c.get(cell));
            }
        }
        // The live run-time tracks, and the counts of those listed (their generation read
        // first: a change after it is sent again by an updates stream from this cursor).
        let run_time_generation = self.tallies.run_time().generation();
        let run_time = self.tallies.run_time().listed(inner::RUN_TIME_CAP);
        self.inner_counts(&run_time, |path, n| {
            counts.insert(path, n);
        });
        let r = lock(&self.hub.record);
        let tracks = listed_tracks(&r, &run_time)
            .map(|(t, inner, subscriptions)| TrackView {
                path: t.path.clone(),
                kind: t.kind.clone(),
                version: t.version,
                emissions: counts.get(&t.path).copied(),
                state: states.get(&t.path).cloned().flatten(),
                inner,
                subscriptions,
            })
            .collect();
        Snapshot {
            version: r.version,
            tracks,
            reloads: r.reloads.items.iter().cloned().collect(),
            errors: r.errors.items.iter().cloned().collect(),
            dropped: BTreeMap::from([
                ("reloads", r.reloads.dropped()),
                ("errors", r.errors.dropped()),
                ("state_changes", self.tallies.dropped_changes()),
                ("error_history", r.dropped_history),
                ("inner_tracks", run_time.dropped),
            ]),
            build_failed: r.build_failed.clone(),
            load_failed: r.load_failed.clone(),
            state_changes: {
                state_changes.sort_by(|a, b| (a.version, &a.path).cmp(&(b.version, &b.path)));
                state_changes
            },
            lints: r.stuck.values().cloned().collect(),
            now_ms: self.tallies.now_ms(),
            versions: self.versions(&r),
            marbles: self.tallies.lanes(lanes),
            error_history: r.error_history.values().map(|(t, _)| t.clone()).collect(),
            cursor: updates::Cursor {
                seq: r.seq,
                reloads: r.reloads.pushed,
                errors: r.errors.pushed,
                changes: last_change,
                run_time: run_time_generation,
            },
        }
    }
}

/// A listening inspector. Dropping it stops serving, ends the streams and joins its
/// threads.
#[derive(Debug)]
pub struct Inspector {
    addr: SocketAddr,
    inspected: Arc<Inspected>,
    /// Dropped to stop the server (its thread then ends).
    stop_server: Option<tokio::sync::watch::Sender<()>>,
    server: Option<JoinHandle<()>>,
    /// Stops the marble sampler.
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<()>>,
}

impl Inspector {
    /// Binds `addr` (port 0: a free one), starts serving, and reports the `inspector` event
    /// to `sink`. Returns the inspector; report the host's events through
    /// [`Inspector::sink`] and run pipelines with [`Inspector::tallies`].
    pub fn start(addr: SocketAddr, sink: Sink) -> anyhow::Result<Inspector> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} for --inspect"))?;
        let addr = listener
            .local_addr()
            .context("cannot read the inspector's address")?;
        listener
            .set_nonblocking(true)
            .context("cannot make the inspector's socket non-blocking")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .thread_name("hmr-inspector-blocking")
            .max_blocking_threads(8)
            .build()
            .context("cannot start the inspector's runtime")?;
        let listener = {
            let _in = runtime.enter();
            tokio::net::TcpListener::from_std(listener)
                .context("cannot register the inspector's socket")?
        };
        let inspected = Arc::new(Inspected {
            hub: Arc::new(Hub::new(sink.clone())),
            tallies: Arc::default(),
        });
        let (stop_server, stopped) = serve::Stop::new();
        let i = inspected.clone();
        let server = std::thread::Builder::new()
            .name("hmr-inspector".to_owned())
            .spawn(move || {
                runtime.block_on(serve::run(listener, i, addr, stopped));
                // What is still running (a snapshot on the blocking pool) gets a moment.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .context("cannot start the inspector's thread")?;
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (inspected.tallies.clone(), stop.clone());
        let sampler = std::thread::Builder::new()
            .name("hmr-inspector-marbles".to_owned())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    t.ask_marbles();
                    std::thread::park_timeout(tally::MARBLE_PERIOD);
                }
            })
            .context("cannot start the inspector's marble sampler")?;
        sink.event(HostEvent::Inspector {
            url: format!("http://{addr}/"),
        });
        Ok(Inspector {
            addr,
            inspected,
            stop_server: Some(stop_server),
            server: Some(server),
            stop,
            sampler: Some(sampler),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The sink to report the host's events through.
    pub fn sink(&self) -> Sink {
        self.inspected.hub.clone()
    }

    /// The tallies the runtime counts into ([`crate::runtime::Runtime::set_tallies`]).
    pub fn tallies(&self) -> Arc<Tallies> {
        self.inspected.tallies.clone()
    }

    /// The snapshot `GET /api/snapshot` answers now.
    pub fn snapshot(&self) -> Snapshot {
        self.inspected.snapshot()
    }
}

impl Drop for Inspector {
    fn drop(&mut self) {
        // The streams end at once; the server's thread after its connections (a second at
        // most for a client that does not read).
        drop(self.stop_server.take());
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.sampler.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Whether `host` (a `Host` header) names the inspector itself.
fn host_allowed(host: Option<&str>, addr: SocketAddr) -> bool {
    let Some(host) = host else { return false };
    let port = addr.port();
    let host = host.to_ascii_lowercase();
    [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        addr.to_string(),
    ]
    .contains(&host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_inspectors_own_host_names_are_allowed() {
        let addr: SocketAddr = "127.0.0.1:7000".parse().expect("address");
        let cases = [
            (Some("127.0.0.1:7000"), true),
            (Some("localhost:7000"), true),
            (Some("LOCALHOST:7000"), true),
            (Some("[::1]:7000"), true),
            (Some("evil.example:7000"), false),
            (Some("localhost:7001"), false),
            (Some("127.0.0.1"), false),
            (Some("localhost"), false),
            (Some(""), false),
            (None, false),
        ];
        for (host, allowed) in cases {
            assert_eq!(host_allowed(host, addr), allowed, "{host:?}");
        }
    }

    /// Takes what is queued for a client, without waiting; how many.
    fn drain(rx: &mut Receiver<Arc<str>>) -> usize {
        std::iter::from_fn(|| rx.try_recv().ok()).count()
    }

    #[test]
    fn a_client_that_never_reads_loses_events_counted_and_blocks_nobody() {
        let hub = Arc::new(Hub::new(Arc::new(crate::events::ChannelSink(
            std::sync::mpsc::channel().0,
        ))));
        let (mut stuck, dropped) = hub.subscribe();
        let (mut live, live_dropped) = hub.subscribe();
        let extra = 10;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let h = hub.clone();
        let reporter = std::thread::spawn(move || {
            let mut received = 0;
            for n in 0..CLIENT_QUEUE + extra {
                h.event(HostEvent::Emission {
                    pipeline: "p".into(),
                    version: 1,
                    value: n.to_string(),
                });
                // The live client keeps up: it reads each event as it comes.
                received += drain(&mut live);
            }
            let _ = done_tx.send(received);
        });
        // Reporting never waits for the stuck client (a blocking send would hang here).
        let received = done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("reporting events blocked on a client that does not read");
        reporter.join().expect("reporter");
        assert_eq!(received, CLIENT_QUEUE + extra);
        assert_eq!(live_dropped.load(Ordering::Relaxed), 0);
        assert_eq!(drain(&mut stuck), CLIENT_QUEUE);
        assert_eq!(dropped.load(Ordering::Relaxed), extra as u64);
        // Clients that went away (both, now) are forgotten at the next event.
        drop(stuck);
        hub.event(HostEvent::LoadFailed { error: "x".into() });
        assert_eq!(hub.n_clients.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_record_keeps_the_last_events_and_clears_a_build_failure_on_the_next_build() {
        let hub = Hub::new(Arc::new(crate::events::ChannelSink(
            std::sync::mpsc::channel().0,
        )));
        hub.event(HostEvent::BuildFailed {
            error: "error[E0308]".into(),
        });
        assert_eq!(
            lock(&hub.record).build_failed.as_deref(),
            Some("error[E0308]")
        );
        hub.event(HostEvent::Unchanged { build_ms: 1 });
        assert_eq!(lock(&hub.record).build_failed, None);
        for i in 0..KEPT_EVENTS + 3 {
            hub.event(HostEvent::Error {
                pipeline: "p".into(),
                path: format!("p|{i}:map"),
                message: "boom".into(),
            });
        }
        let r = lock(&hub.record);
        assert_eq!(r.errors.items.len(), KEPT_EVENTS);
        assert_eq!(r.errors.dropped(), 3);
        assert!(
            matches!(&r.errors.items[0].event, HostEvent::Error { path, .. } if path == "p|3:map")
        );
    }
}

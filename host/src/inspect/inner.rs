//! The run-time tracks of live inner subscriptions (higher-order operators), for the
//! snapshot.
//!
//! The tracking store lives on the reloader's thread. Each time the reloader enters what the
//! pipelines' inner subscriptions did (`Reloader::enter_census`, at most
//! `watch::CENSUS_EVERY` late, and a reload's re-projections), it copies each changed
//! subscription's run-time tracks here, as the store derived them (path, kind, version); an
//! ended subscription's leave. The snapshot lists them under their higher-order operator, at
//! most [`RUN_TIME_CAP`] tracks (a `merge_map` over a large `range` has one subscription per
//! value): the rest are counted, not listed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::events::TrackInfo;

/// The most run-time tracks a snapshot lists; the others are counted
/// (`dropped.inner_tracks`).
pub const RUN_TIME_CAP: usize = 10_000;

/// One live subscription's run-time tracks.
#[derive(Debug)]
struct Sub {
    /// Its higher-order operator's path.
    op_path: String,
    /// Its tracks in path order: its own `#N:inner` first, then the inner stream's.
    tracks: Vec<TrackInfo>,
}

#[derive(Debug, Default)]
struct Live {
    /// By pipeline and subscription number (so oldest first within a pipeline).
    subs: BTreeMap<(Arc<str>, u64), Sub>,
    /// Live subscriptions by higher-order operator path.
    on: HashMap<String, u64>,
}

/// The live run-time tracks, written by the reloader, read by the snapshot.
#[derive(Debug, Default)]
pub struct RunTimeTracks {
    live: Mutex<Live>,
    /// Bumped at every change (an updates client sends the track list again).
    generation: std::sync::atomic::AtomicU64,
}

/// What a snapshot lists of the run-time tracks.
#[derive(Debug, Default)]
pub struct Listed {
    /// The subscriptions listed (pipeline, number, tracks), whole, until the cap.
    pub subs: Vec<(Arc<str>, u64, Vec<TrackInfo>)>,
    /// Run-time tracks of the subscriptions not listed.
    pub dropped: u64,
    /// Live inner subscriptions of each higher-order operator (listed or not), by its path.
    pub live_on: HashMap<String, u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RunTimeTracks {
    /// Subscription `id` of `pipeline` started or was re-projected: its tracks now (path
    /// order, its `#N:inner` first). An empty list is ignored.
    pub(crate) fn set(&self, pipeline: &Arc<str>, id: u64, tracks: Vec<TrackInfo>) {
        let Some(op_path) = tracks
            .first()
            .and_then(|t| t.path.rsplit_once('|'))
            .map(|(op, _)| op.to_owned())
        else {
            return;
        };
        let mut live = lock(&self.live);
        let sub = Sub {
            op_path: op_path.clone(),
            tracks,
        };
        // A re-projection replaces the tracks of a subscription already counted.
        if live.subs.insert((pipeline.clone(), id), sub).is_none() {
            *live.on.entry(op_path).or_default() += 1;
        }
        self.bump();
    }

    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// A number that changes whenever the live run-time tracks do.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Subscription `id` of `pipeline` ended: its tracks leave.
    pub(crate) fn end(&self, pipeline: &Arc<str>, id: u64) {
        let mut live = lock(&self.live);
        if let Some(sub) = live.subs.remove(&(pipeline.clone(), id))
            && let Some(n) = live.on.get_mut(&sub.op_path)
        {
            *n -= 1;
            if *n == 0 {
                live.on.remove(&sub.op_path);
            }
            self.bump();
        }
    }

    /// The subscriptions whose tracks fit in `cap`, whole, in order of pipeline and number;
    /// the others' tracks counted.
    pub fn listed(&self, cap: usize) -> Listed {
        let live = lock(&self.live);
        let mut out = Listed {
            live_on: live.on.clone(),
            ..Listed::default()
        };
        let mut listed = 0usize;
        for ((pipeline, id), sub) in &live.subs {
            let n = sub.tracks.len();
            if out.dropped == 0 && listed + n <= cap {
                listed += n;
                out.subs.push((pipeline.clone(), *id, sub.tracks.clone()));
            } else {
                out.dropped += n as u64;
            }
        }
        out
    }
}

/// Whether `path` is a run-time track's: it runs through an inner subscription's own track
/// (`#N:inner`, which only the host makes; a scope is `#key:scope`).
pub(crate) fn is_run_time(path: &str) -> bool {
    path.split('|').any(|segment| {
        segment
            .strip_prefix('#')
            .and_then(|s| s.strip_suffix(":inner"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(path: &str) -> TrackInfo {
        TrackInfo {
            path: path.to_owned(),
            kind: Arc::from(path.rsplit(':').next().unwrap_or("")),
            version: 0,
        }
    }

    #[test]
    fn run_time_paths_are_those_through_an_inner_subscription() {
        let cases = [
            ("s|1:switch_map|#3:inner", true),
            ("s|1:switch_map|#3:inner|0:map", true),
            ("s|1:switch_map", false),
            ("s|#3:scope|0:map", false),
            ("s|#inner:scope", false),
            ("s|#:inner", false),
            ("s|#x3:inner", false),
            ("s|0:inner", false),
            ("inner", false),
        ];
        for (path, run_time) in cases {
            assert_eq!(is_run_time(path), run_time, "{path}");
        }
    }

    #[test]
    fn listed_until_the_cap_whole_subscriptions_and_counts_per_operator() {
        let view = RunTimeTracks::default();
        let p: Arc<str> = Arc::from("m");
        for id in 1..=5 {
            view.set(
                &p,
                id,
                vec![
                    info(&format!("m|1:merge_map|#{id}:inner")),
                    info(&format!("m|1:merge_map|#{id}:inner|0:map")),
                ],
            );
        }
        // A re-projection replaces, it does not count twice.
        view.set(
            &p,
            2,
            vec![
                info("m|1:merge_map|#2:inner"),
                info("m|1:merge_map|#2:inner|0:map"),
            ],
        );
        let l = view.listed(5);
        let ids: Vec<u64> = l.subs.iter().map(|(_, id, _)| *id).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(l.dropped, 6);
        assert_eq!(l.live_on.get("m|1:merge_map"), Some(&5));
        view.end(&p, 1);
        view.end(&p, 1);
        let l = view.listed(100);
        assert_eq!(l.subs.len(), 4);
        assert_eq!(l.dropped, 0);
        assert_eq!(l.live_on.get("m|1:merge_map"), Some(&4));
        for id in 2..=5 {
            view.end(&p, id);
        }
        let l = view.listed(100);
        assert!(l.subs.is_empty() && l.live_on.is_empty(), "{l:?}");
    }
}

//! Read-only queries on a [`State`]: structural paths, lookups, children, a module's tracks,
//! orphans, pending updates and subjects.

use std::ops::Bound;

use crate::accumulator::State;
use crate::error::ApplyError;
use crate::model::{Id, ModuleId, Subject, Subscription, Track};
use crate::path;

impl State {
    /// The track with this id.
    pub fn track(&self, id: Id) -> Option<&Track> {
        self.store.tracks.get(&id)
    }

    /// The track at this structural path (O(log n) through the path index).
    pub fn find_by_path(&self, path: &str) -> Option<&Track> {
        self.store
            .track_at(path)
            .and_then(|id| self.store.tracks.get(&id))
    }

    /// Rebuilds a track's path by walking its parents (`deriveStructuralPath` in the seed).
    /// Always equal to the stored [`Track::path`] for a store built by `apply`.
    pub fn derive_structural_path(&self, track: Id) -> Result<String, ApplyError> {
        const QUERY: &str = "derive-structural-path";
        let broken = |detail: String| ApplyError::BrokenTrack {
            event: QUERY,
            track,
            detail,
        };
        let mut current = self.track(track).ok_or(ApplyError::UnknownTrack {
            event: QUERY,
            track,
        })?;
        let mut segments = Vec::new();
        loop {
            if segments.len() > self.store.tracks.len() {
                return Err(broken("the parent chain has a cycle".into()));
            }
            match current.parent {
                None => {
                    let key = current.key.as_deref().ok_or_else(|| {
                        broken(format!("top-level track {} has no key", current.id))
                    })?;
                    segments.push(key.to_owned());
                    break;
                }
                Some(parent) => {
                    if current.key.is_none() && current.index.is_none() {
                        return Err(broken(format!(
                            "track {} has neither key nor index",
                            current.id
                        )));
                    }
                    segments.push(path::nested_segment(
                        current.index,
                        current.key.as_deref(),
                        &current.kind,
                    ));
                    current = self.track(parent).ok_or_else(|| {
                        broken(format!(
                            "parent {parent} of track {} is missing",
                            current.id
                        ))
                    })?;
                }
            }
        }
        segments.reverse();
        Ok(segments.join(&path::SEPARATOR.to_string()))
    }

    /// Tracks in the subtree below `path` (not `path` itself), in path order.
    fn descendants<'a>(&'a self, path: &str) -> impl Iterator<Item = &'a Track> + 'a {
        let prefix = path::descendant_prefix(path);
        self.store
            .paths
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .filter_map(|(_, id)| self.store.tracks.get(id))
    }

    /// The direct children of a track: unkeyed ones by index, then keyed ones by key.
    /// Empty for an unknown track.
    pub fn children(&self, track: Id) -> Vec<&Track> {
        let Some(parent) = self.track(track) else {
            return Vec::new();
        };
        let mut children: Vec<&Track> = self
            .descendants(&parent.path)
            .filter(|t| t.parent == Some(track))
            .collect();
        children.sort_by(|a, b| {
            (a.index.is_none(), a.index, &a.key).cmp(&(b.index.is_none(), b.index, &b.key))
        });
        children
    }

    /// Registration tracks committed by `module` or pending from it, in path order (run-time
    /// tracks are their subscription's: see [`State::tracks_of_subscription`]).
    pub fn tracks_of_module(&self, module: ModuleId) -> Vec<&Track> {
        self.tracks_in_path_order()
            .filter(|t| t.subscription.is_none() && (t.module == module || pending_from(t, module)))
            .collect()
    }

    /// Registration tracks with a registration pending from `module`, in path order (a
    /// re-projection's pendings: [`State::projection_updates`]).
    pub fn pending_updates(&self, module: ModuleId) -> Vec<Id> {
        self.tracks_in_path_order()
            .filter(|t| t.subscription.is_none() && pending_from(t, module))
            .map(|t| t.id)
            .collect()
    }

    /// Registration tracks that existed before run `module` and were not registered again in
    /// it, children before parents (reverse path order), so they can be removed one by one.
    /// Never a run-time track: a registration does not make those, their subscription's end
    /// removes them (a re-projection's: [`State::projection_orphans`]).
    pub fn orphans(&self, module: ModuleId) -> Vec<Id> {
        self.store
            .paths
            .values()
            .rev()
            .filter_map(|id| self.store.tracks.get(id))
            .filter(|t| t.subscription.is_none() && t.module < module && !pending_from(t, module))
            .map(|t| t.id)
            .collect()
    }

    /// The run-time tracks `subscription` holds, in path order (empty for an unknown or
    /// ended inner subscription).
    pub fn tracks_of_subscription(&self, subscription: Id) -> Vec<&Track> {
        let Some(stored) = self.store.subscriptions.get(&subscription) else {
            return Vec::new();
        };
        let mut tracks: Vec<&Track> = stored
            .tracks
            .iter()
            .filter_map(|id| self.store.tracks.get(id))
            .collect();
        tracks.sort_by(|a, b| a.path.cmp(&b.path));
        tracks
    }

    /// The run-time tracks of `subscription` its last re-projection registered again, waiting
    /// for a `track-update` `swapped` / `reset` (with its module, [`Subscription::code`]), in
    /// path order.
    pub fn projection_updates(&self, subscription: Id) -> Vec<Id> {
        let Some(code) = self.store.subscriptions.get(&subscription).map(|s| s.code) else {
            return Vec::new();
        };
        self.tracks_of_subscription(subscription)
            .into_iter()
            .filter(|t| pending_from(t, code))
            .map(|t| t.id)
            .collect()
    }

    /// The run-time tracks of `subscription` its last re-projection did not register again,
    /// children before parents (reverse path order): to remove with `track-update` `removed`
    /// (module [`Subscription::code`]) once the re-projection returned.
    pub fn projection_orphans(&self, subscription: Id) -> Vec<Id> {
        let Some(code) = self.store.subscriptions.get(&subscription).map(|s| s.code) else {
            return Vec::new();
        };
        let mut orphans: Vec<&Track> = self
            .tracks_of_subscription(subscription)
            .into_iter()
            .filter(|t| t.module < code && !pending_from(t, code))
            .collect();
        orphans.reverse();
        orphans.into_iter().map(|t| t.id).collect()
    }

    /// The live subscriptions (active, or being made) on `track`, by id.
    pub fn subscriptions_on(&self, track: Id) -> Vec<&Subscription> {
        self.store
            .subscriptions
            .values()
            .filter(|s| {
                s.track == track
                    && (s.active
                        || self
                            .stack
                            .subscriptions
                            .iter()
                            .any(|f| f.subscription == s.id))
            })
            .collect()
    }

    /// The subject with this name.
    pub fn subject(&self, name: &str) -> Option<&Subject> {
        self.store.subjects.get(name)
    }

    /// Every subject, by name.
    pub fn subjects(&self) -> impl Iterator<Item = &Subject> {
        self.store.subjects.values()
    }

    /// The subjects a pipeline track publishes to or reads (as committed), by name.
    pub fn subjects_of_track(&self, track: Id) -> Vec<&Subject> {
        self.subjects()
            .filter(|s| s.publishers.contains(&track) || s.subscribers.contains(&track))
            .collect()
    }

    fn tracks_in_path_order(&self) -> impl Iterator<Item = &Track> {
        self.store
            .paths
            .values()
            .filter_map(|id| self.store.tracks.get(id))
    }
}

fn pending_from(track: &Track, module: ModuleId) -> bool {
    track.pending.as_ref().is_some_and(|p| p.module == module)
}

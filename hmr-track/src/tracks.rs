//! [`TrackMap`]: the store's tracks by id, hashed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{Id, Track};

/// Tracks by id. A registration looks each of its tracks up by id several times (its
/// `track-call`, its return, its update), so the ids are hashed (a one-multiply hash), not
/// kept in a B-tree (a dozen comparisons and as many cache lines down 10,000 tracks). The
/// tracks themselves sit side by side in chunks of [`CHUNK`], in the order they were
/// created: a registration, which meets them in that same order, and a pass over all of them
/// (settling a run) read memory front to back instead of chasing one allocation per track
/// (boxed tracks made settling 10,000 of them 0.4 ms slower). Chunks, not one vector: a
/// track is ~570 bytes, and growing one vector would copy them all at once (milliseconds at
/// 50,000 tracks, in the middle of a registration).
///
/// Iteration order is unspecified; it serializes and prints in id order, like the store's
/// other maps, and compares as a map.
#[derive(Clone, Default)]
pub struct TrackMap {
    /// Id -> position in `slots` (chunk `at / CHUNK`, entry `at % CHUNK`).
    index: HashMap<Id, u32, BuildIdHash>,
    /// The tracks, with the id each was inserted under; every chunk but the last is full.
    chunks: Vec<Vec<(Id, Track)>>,
    len: usize,
}

/// Tracks per chunk of a [`TrackMap`] (~36 KiB).
pub const CHUNK: usize = 64;

impl TrackMap {
    /// The track with this id.
    #[inline]
    pub fn get(&self, id: &Id) -> Option<&Track> {
        let at = *self.index.get(id)? as usize;
        self.chunks.get(at / CHUNK)?.get(at % CHUNK).map(|(_, t)| t)
    }

    /// The track with this id, mutably (change the store through events, see [`crate::Store`]).
    #[inline]
    pub fn get_mut(&mut self, id: &Id) -> Option<&mut Track> {
        let at = *self.index.get(id)? as usize;
        self.chunks
            .get_mut(at / CHUNK)?
            .get_mut(at % CHUNK)
            .map(|(_, t)| t)
    }

    /// True when a track has this id.
    #[inline]
    pub fn contains_key(&self, id: &Id) -> bool {
        self.index.contains_key(id)
    }

    /// Adds or replaces the track `id`; returns the one replaced.
    pub fn insert(&mut self, id: Id, track: Track) -> Option<Track> {
        if let Some(slot) = self.get_mut(&id) {
            return Some(std::mem::replace(slot, track));
        }
        let at = u32::try_from(self.len).expect("fewer than 2^32 tracks");
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push((id, track)),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push((id, track));
                self.chunks.push(chunk);
            }
        }
        self.index.insert(id, at);
        self.len += 1;
        None
    }

    /// Removes the track `id` (the last track takes its place).
    pub fn remove(&mut self, id: &Id) -> Option<Track> {
        let at = self.index.remove(id)? as usize;
        // The last track takes the removed one's place.
        let last = self.chunks.last_mut()?.pop()?;
        if self.chunks.last().is_some_and(Vec::is_empty) {
            self.chunks.pop();
        }
        self.len -= 1;
        if at == self.len {
            return Some(last.1);
        }
        let moved = last.0;
        let slot = self.chunks.get_mut(at / CHUNK)?.get_mut(at % CHUNK)?;
        let (_, track) = std::mem::replace(slot, last);
        self.index.insert(moved, at as u32);
        Some(track)
    }

    /// Keeps the tracks for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Id, &mut Track) -> bool) {
        let mut kept = TrackMap::default();
        let before = self.len;
        for (id, mut track) in std::mem::take(&mut self.chunks).into_iter().flatten() {
            if keep(&id, &mut track) {
                kept.insert(id, track);
            }
        }
        debug_assert!(kept.len <= before);
        *self = kept;
    }

    /// How many tracks.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there is no track.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ids, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Id> {
        self.chunks.iter().flatten().map(|(id, _)| id)
    }

    /// The tracks, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &Track> {
        self.chunks.iter().flatten().map(|(_, t)| t)
    }

    /// The tracks, mutably, in no particular order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Track> {
        self.chunks.iter_mut().flatten().map(|(_, t)| t)
    }

    /// The tracks by id, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Id, &Track)> {
        self.chunks.iter().flatten().map(|(id, t)| (id, t))
    }

    /// The tracks by id, in id order.
    pub fn sorted(&self) -> BTreeMap<Id, &Track> {
        self.iter().map(|(id, t)| (*id, t)).collect()
    }
}

/// Equal when they hold the same tracks under the same ids, in whatever order.
impl PartialEq for TrackMap {
    fn eq(&self, other: &TrackMap) -> bool {
        self.len() == other.len() && self.iter().all(|(id, t)| other.get(id) == Some(t))
    }
}

impl Eq for TrackMap {}

impl fmt::Debug for TrackMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.sorted()).finish()
    }
}

impl Serialize for TrackMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.sorted().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TrackMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TrackMap, D::Error> {
        let tracks = BTreeMap::<Id, Track>::deserialize(deserializer)?;
        Ok(tracks.into_iter().collect())
    }
}

impl FromIterator<(Id, Track)> for TrackMap {
    fn from_iter<I: IntoIterator<Item = (Id, Track)>>(iter: I) -> TrackMap {
        let mut map = TrackMap::default();
        for (id, track) in iter {
            map.insert(id, track);
        }
        map
    }
}

/// Ids are small integers the store hands out: one multiply spreads them, no SipHash. For
/// maps keyed by track id, in this crate and in the host.
pub type BuildIdHash = std::hash::BuildHasherDefault<IdHasher>;

/// The hasher of [`BuildIdHash`].
#[derive(Debug, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 =
                (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(id: Id) -> Track {
        Track {
            id,
            path: format!("p{id}"),
            entity_id: None,
            prev_entity_ids: Vec::new(),
            parent: None,
            index: None,
            key: Some(format!("p{id}")),
            kind: "pipeline".into(),
            signature: crate::Signature::default(),
            version: 0,
            module: 1,
            created_by: 1,
            pending: None,
            subscription: None,
        }
    }

    /// Whatever the insertion order, the map serializes and prints in id order and round-trips.
    #[test]
    fn serializes_in_id_order_and_round_trips() {
        let mut map = TrackMap::default();
        for id in [40, 3, 17, 1_000_000, 0] {
            map.insert(id, track(id));
        }
        let text = serde_json::to_string(&map).unwrap();
        let at: Vec<Option<usize>> = [0, 3, 17, 40, 1_000_000]
            .iter()
            .map(|id| text.find(&format!("\"{id}\":")))
            .collect();
        assert!(at.iter().all(Option::is_some), "{text}");
        assert!(at.is_sorted(), "not in id order: {text}");
        let back: TrackMap = serde_json::from_str(&text).unwrap();
        assert_eq!(back, map);
        let debug = format!("{map:?}");
        assert!(debug.find("p40") < debug.find("p1000000"), "{debug}");
        assert_eq!(map.remove(&17).map(|t| t.id), Some(17));
        assert_eq!(map.len(), 4);
    }

    /// Inserts, replacements, removals (of the last slot and of others) and retains, checked
    /// against a `BTreeMap` after every step; equality ignores order.
    #[test]
    fn behaves_as_a_map() {
        let mut map = TrackMap::default();
        let mut model: BTreeMap<Id, Track> = BTreeMap::new();
        let check = |map: &TrackMap, model: &BTreeMap<Id, Track>| {
            assert_eq!(map.len(), model.len());
            for (id, track) in model {
                assert_eq!(map.get(id), Some(track), "track {id}");
                assert!(map.contains_key(id));
            }
            assert_eq!(map.sorted(), model.iter().map(|(id, t)| (*id, t)).collect());
            assert_eq!(*map, model.clone().into_iter().collect::<TrackMap>());
        };
        let mut x: u64 = 7;
        let mut largest = 0;
        for step in 0..3_000u64 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // Up to 5 chunks: removals move tracks across chunk boundaries.
            let id = (x >> 33) % (5 * CHUNK as u64);
            match step % 7 {
                0..=2 => {
                    let mut t = track(id);
                    t.version = step;
                    assert_eq!(map.insert(id, t.clone()), model.insert(id, t));
                }
                3 | 4 => assert_eq!(map.remove(&id), model.remove(&id)),
                5 => {
                    if let Some(t) = map.get_mut(&id) {
                        t.version += 1000;
                    }
                    if let Some(t) = model.get_mut(&id) {
                        t.version += 1000;
                    }
                }
                _ => {
                    map.retain(|id, t| (id + t.version) % 3 != 0);
                    model.retain(|id, t| (id + t.version) % 3 != 0);
                }
            }
            check(&map, &model);
            largest = largest.max(map.len());
        }
        assert!(largest > 2 * CHUNK, "the map spanned {largest} tracks only");
    }
}

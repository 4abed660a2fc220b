//! [`TrackMap`]: the store's tracks by id, hashed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{Id, Track};

/// Tracks by id. A registration looks each of its tracks up by id several times (its
/// `track-call`, its return, its update), so this is a hash map with a one-multiply hash of
/// the id, not a B-tree (a dozen comparisons and as many cache lines down 10,000 tracks).
/// Iteration order is unspecified; it serializes and prints in id order, like the store's
/// other maps, and compares as a map.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrackMap {
    map: HashMap<Id, Box<Track>, BuildIdHash>,
}

impl TrackMap {
    /// The track with this id.
    #[inline]
    pub fn get(&self, id: &Id) -> Option<&Track> {
        self.map.get(id).map(|t| &**t)
    }

    /// The track with this id, mutably (change the store through events, see [`crate::Store`]).
    #[inline]
    pub fn get_mut(&mut self, id: &Id) -> Option<&mut Track> {
        self.map.get_mut(id).map(|t| &mut **t)
    }

    /// True when a track has this id.
    #[inline]
    pub fn contains_key(&self, id: &Id) -> bool {
        self.map.contains_key(id)
    }

    /// Adds or replaces the track `id`; returns the one replaced.
    pub fn insert(&mut self, id: Id, track: Track) -> Option<Track> {
        self.map.insert(id, Box::new(track)).map(|t| *t)
    }

    /// Removes the track `id`.
    pub fn remove(&mut self, id: &Id) -> Option<Track> {
        self.map.remove(id).map(|t| *t)
    }

    /// Keeps the tracks for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Id, &mut Track) -> bool) {
        self.map.retain(|id, t| keep(id, t));
    }

    /// How many tracks.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there is no track.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The ids, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Id> {
        self.map.keys()
    }

    /// The tracks, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &Track> {
        self.map.values().map(|t| &**t)
    }

    /// The tracks, mutably, in no particular order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Track> {
        self.map.values_mut().map(|t| &mut **t)
    }

    /// The tracks by id, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Id, &Track)> {
        self.map.iter().map(|(id, t)| (id, &**t))
    }

    /// The tracks by id, in id order.
    pub fn sorted(&self) -> BTreeMap<Id, &Track> {
        self.iter().map(|(id, t)| (*id, t)).collect()
    }
}

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
        TrackMap {
            map: iter.into_iter().map(|(id, t)| (id, Box::new(t))).collect(),
        }
    }
}

/// Ids are small integers the store hands out: one multiply spreads them, no SipHash.
type BuildIdHash = std::hash::BuildHasherDefault<IdHasher>;

#[derive(Default)]
struct IdHasher(u64);

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
}

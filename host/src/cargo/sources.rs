//! What a build's inputs held: the check behind a forced rebuild when cargo's "fresh" was
//! decided by modification times that lie (a file restored with an older time).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

/// The content of a build's inputs: a hash per file (`None` for a file that cannot be read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources(BTreeMap<PathBuf, Option<Stamp>>);

/// One file's content hash, with the length and modification time it was read at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    hash: u64,
}

impl Sources {
    /// Hashes every file of `inputs` now; a file whose length and modification time are those
    /// `known` recorded keeps `known`'s hash unread (a restored file has another time; a file
    /// given another content of the same length *and* the very time of the recorded one would
    /// be missed, as cargo misses it).
    pub fn read(inputs: &[PathBuf], known: Option<&Sources>) -> Sources {
        let stamp = |p: &PathBuf| -> Option<Stamp> {
            let meta = std::fs::metadata(p).ok()?;
            let (len, modified) = (meta.len(), meta.modified().ok());
            if let Some(Some(k)) = known.and_then(|k| k.0.get(p))
                && k.len == len
                && k.modified == modified
                && modified.is_some()
            {
                return Some(*k);
            }
            let bytes = std::fs::read(p).ok()?;
            Some(Stamp {
                len: bytes.len() as u64,
                modified,
                hash: content_hash(&bytes),
            })
        };
        Sources(inputs.iter().map(|p| (p.clone(), stamp(p))).collect())
    }

    /// The files whose content differs from `before` (or that `before` did not have).
    pub fn changed_since(&self, before: &Sources) -> Vec<PathBuf> {
        self.0
            .iter()
            .filter(|(p, s)| {
                let old = before.0.get(*p).map(|b| b.map(|b| b.hash));
                old != Some(s.map(|s| s.hash))
            })
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// A hash of a file's content (inputs here; the reloader's libraries too).
pub fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn changed_sources_are_the_differing_and_the_new_files() {
        let dir = crate::testkit::TempDir::new("sources");
        let [a, b, c] = ["a.rs", "b.rs", "c.txt"].map(|n| dir.path().join(n));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        let before = Sources::read(&[a.clone(), b.clone()], None);
        assert!(
            Sources::read(&[a.clone(), b.clone()], Some(&before))
                .changed_since(&before)
                .is_empty()
        );
        std::fs::write(&b, "b2").unwrap();
        std::fs::write(&c, "c").unwrap();
        let after = Sources::read(&[a.clone(), b.clone(), c.clone()], Some(&before));
        assert_eq!(after.changed_since(&before), [b.clone(), c]);
        // Same length, restored with an older time (`cp -p`): read again, not taken from the
        // record.
        let time = std::fs::metadata(&a).unwrap().modified().unwrap();
        std::fs::write(&a, "A").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&a)
            .unwrap()
            .set_modified(time - Duration::from_secs(60))
            .unwrap();
        let restored = Sources::read(&[a.clone(), b.clone()], Some(&before));
        assert_eq!(restored.changed_since(&before), [a, b]);
    }
}

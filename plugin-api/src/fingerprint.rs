//! Type fingerprints: how the host tells whether two plugin versions agree on a type.
//!
//! A fingerprint is the type's name (`core::any::type_name`), size, alignment and a hash.
//! For value types flowing between operators ([`of`]) the hash covers those three: rustc
//! type-checks a whole chain within one version, so they only serve reports. For state
//! types, which cross versions, the hash is the layout description of [`crate::shape`]
//! ([`of_state`]): field names, offsets and types, recursively. Function bodies never enter
//! either.

use crate::abi::{RFingerprint, RStr};
use crate::shape::{Shape, layout_hash};

/// FNV-1a over `bytes`, continuing from `h`.
pub const fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

/// The FNV-1a offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The fingerprint of `T`.
pub fn of<T: 'static>() -> RFingerprint {
    let name = core::any::type_name::<T>();
    let size = core::mem::size_of::<T>();
    let align = core::mem::align_of::<T>();
    let mut h = fnv1a(FNV_OFFSET, name.as_bytes());
    h = fnv1a(h, &(size as u64).to_le_bytes());
    h = fnv1a(h, &(align as u64).to_le_bytes());
    RFingerprint {
        name: RStr::new(name),
        size,
        align,
        hash: h,
    }
}

/// The fingerprint of a state type `T`: its hash is `T`'s layout description.
pub fn of_state<T: Shape>() -> RFingerprint {
    RFingerprint {
        hash: layout_hash::<T>(),
        ..of::<T>()
    }
}

/// The fingerprint meaning "no type here" (an operator without input, output or state).
pub const NONE: RFingerprint = RFingerprint {
    name: RStr::NONE,
    size: 0,
    align: 1,
    hash: 0,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_type_same_fingerprint_and_different_types_differ() {
        let cases: [(RFingerprint, RFingerprint, bool); 4] = [
            (of::<u64>(), of::<u64>(), true),
            (of::<u64>(), of::<i64>(), false),
            (of::<(u32, u32)>(), of::<u64>(), false),
            (of::<Vec<u8>>(), of::<Vec<u8>>(), true),
        ];
        for (a, b, same) in cases {
            assert_eq!(a.hash == b.hash, same, "{a:?} vs {b:?}");
        }
    }
}

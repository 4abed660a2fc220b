//! Layout descriptions of operator state types: what lets the host tell that a `scan`'s
//! state written by one plugin version may be read by the next.
//!
//! A type's name and size are not enough: `struct Acc { a: u32, b: u32 }` edited into
//! `struct Acc { b: u32, a: u32 }` keeps both, and reading the old bytes as the new type
//! would swap the fields silently. So every state type describes its layout (each field's
//! name, offset and type, recursively) through [`Shape`], and the fingerprint the host
//! compares is a hash of that description.
//!
//! [`Shape`] is implemented for the primitive types, tuples, arrays, `Option`, `Vec`,
//! `VecDeque`, `HashSet`, `String` and `Box`. Declare your own state structs inside [`state!`](crate::state), which
//! writes the struct as given and derives its description from its fields.

use std::collections::{HashSet, VecDeque};

use crate::fingerprint::{FNV_OFFSET, fnv1a};

/// Accumulates a layout description into a hash.
#[derive(Clone, Copy, Debug)]
pub struct Describer {
    hash: u64,
}

impl Default for Describer {
    fn default() -> Self {
        Describer { hash: FNV_OFFSET }
    }
}

impl Describer {
    /// Adds a word of the description.
    pub fn text(&mut self, s: &str) -> &mut Self {
        self.hash = fnv1a(self.hash, s.as_bytes());
        self.hash = fnv1a(self.hash, &[0xff]);
        self
    }

    /// Adds a number.
    pub fn number(&mut self, n: u64) -> &mut Self {
        self.hash = fnv1a(self.hash, &n.to_le_bytes());
        self
    }

    /// Adds a nested type.
    pub fn nested<T: Shape + ?Sized>(&mut self) -> &mut Self {
        T::describe(self);
        self
    }

    /// Adds a field: its name, offset and type.
    pub fn field<T: Shape>(&mut self, name: &str, offset: usize) -> &mut Self {
        self.text(name).number(offset as u64).nested::<T>()
    }

    /// Adds the size and alignment of `T`.
    pub fn layout_of<T>(&mut self) -> &mut Self {
        self.number(core::mem::size_of::<T>() as u64)
            .number(core::mem::align_of::<T>() as u64)
    }

    /// The hash of everything added.
    pub fn finish(&self) -> u64 {
        self.hash
    }
}

/// A type that can be kept as operator state across plugin versions.
///
/// # Safety
/// [`Shape::describe`] must describe everything that determines how the type's bytes (and
/// the heap data it owns) are read: two versions of a type that describe themselves alike
/// must be safe to read as each other. Getting this wrong lets a new plugin version read old
/// state as a different type, which is undefined behaviour. Use [`state!`](crate::state) instead of
/// implementing it by hand.
///
/// A state that owns heap memory (`String`, `Vec`, `Box`) is allocated by one plugin version
/// and freed by a later one, so every version must use the same allocator: plugin crates must
/// not set a `#[global_allocator]` (each version would get its own, and freeing across them
/// corrupts the heap). Plugins built as the README says use the system allocator, as the host
/// does.
///
/// A type without drop glue (`!core::mem::needs_drop`) must be plain data: a copy of its
/// bytes must be a valid value of its own, independent of the original. A replay on reload
/// keeps a subject's value of such a type as such a copy (`SourceDesc::value_plain`), reads
/// and clones it while the publisher's value may be gone, and never drops it. The built-in
/// impls and [`state!`](crate::state) structs of them are; a hand-written impl for a type
/// holding atomics, raw pointers or `ManuallyDrop` heap data is not, and must not be a
/// subject's value type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be kept as operator state across reloads",
    note = "declare the struct inside `plugin_api::state! {{ ... }}` so the host can fingerprint its layout"
)]
pub unsafe trait Shape: 'static {
    /// Feeds the type's layout description to `d`.
    fn describe(d: &mut Describer);
}

/// The hash of `T`'s layout description.
pub fn layout_hash<T: Shape>() -> u64 {
    let mut d = Describer::default();
    T::describe(&mut d);
    d.finish()
}

macro_rules! primitive_shapes {
    ($($t:ty),*) => {$(
        // SAFETY: a primitive is described by its name and layout, which fix how its bytes
        // are read.
        unsafe impl Shape for $t {
            fn describe(d: &mut Describer) {
                d.text(stringify!($t)).layout_of::<$t>();
            }
        }
    )*};
}

primitive_shapes!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    bool,
    char,
    ()
);

// SAFETY: a `String` is a `Vec<u8>` holding UTF-8; name and layout fix it.
unsafe impl Shape for String {
    fn describe(d: &mut Describer) {
        d.text("String").layout_of::<String>();
    }
}

// SAFETY: described by its element's description, so a changed element changes it.
unsafe impl<T: Shape> Shape for Option<T> {
    fn describe(d: &mut Describer) {
        d.text("Option").layout_of::<Option<T>>().nested::<T>();
    }
}

// SAFETY: as for `Option`: the container's layout plus its element's description.
unsafe impl<T: Shape> Shape for Vec<T> {
    fn describe(d: &mut Describer) {
        d.text("Vec").layout_of::<Vec<T>>().nested::<T>();
    }
}

// SAFETY: as for `Vec`.
unsafe impl<T: Shape> Shape for VecDeque<T> {
    fn describe(d: &mut Describer) {
        d.text("VecDeque").layout_of::<VecDeque<T>>().nested::<T>();
    }
}

// SAFETY: as for `Vec`. The hasher is std's `RandomState`, whose keys live in the set, so
// every version hashes with the keys the set was created with. A `Hash` of `T` edited
// between versions makes lookups miss: a logic error (as std documents for a key whose hash
// changes), never undefined behaviour.
unsafe impl<T: Shape> Shape for HashSet<T> {
    fn describe(d: &mut Describer) {
        d.text("HashSet").layout_of::<HashSet<T>>().nested::<T>();
    }
}

// SAFETY: as for `Vec`.
unsafe impl<T: Shape> Shape for Box<T> {
    fn describe(d: &mut Describer) {
        d.text("Box").layout_of::<Box<T>>().nested::<T>();
    }
}

// SAFETY: the length and the element's description fix an array's layout.
unsafe impl<T: Shape, const N: usize> Shape for [T; N] {
    fn describe(d: &mut Describer) {
        d.text("array")
            .number(N as u64)
            .layout_of::<[T; N]>()
            .nested::<T>();
    }
}

macro_rules! tuple_shapes {
    ($(($($n:tt $t:ident),+)),*) => {$(
        // SAFETY: each element's offset and description, plus the tuple's layout.
        unsafe impl<$($t: Shape),+> Shape for ($($t,)+) {
            fn describe(d: &mut Describer) {
                d.text("tuple").layout_of::<Self>();
                $( d.field::<$t>(stringify!($n), core::mem::offset_of!(Self, $n)); )+
            }
        }
    )*};
}

tuple_shapes!(
    (0 A),
    (0 A, 1 B),
    (0 A, 1 B, 2 C),
    (0 A, 1 B, 2 C, 3 D),
    (0 A, 1 B, 2 C, 3 D, 4 E),
    (0 A, 1 B, 2 C, 3 D, 4 E, 5 F)
);

/// Declares state structs whose layout the host can check across reloads.
///
/// Write the struct as usual inside the macro (no generics); it is emitted unchanged, and
/// its [`Shape`] describes the struct's name, size, alignment and, for every field, its
/// name, offset and type. Reordering, renaming, retyping, adding or removing a field all
/// change the description, so the host resets the state instead of misreading it.
///
/// ```
/// plugin_api::state! {
///     #[derive(Clone, Debug, Default)]
///     pub struct Stats { pub count: u64, pub sum: i64 }
/// }
/// ```
#[macro_export]
macro_rules! state {
    ($(
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    )*) => {$(
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field : $ty ),*
        }

        // SAFETY: the description lists every field of the struct as declared above (name,
        // offset, type) plus the struct's own layout, so any change to how its bytes are
        // read changes the description.
        unsafe impl $crate::shape::Shape for $name {
            fn describe(d: &mut $crate::shape::Describer) {
                d.text(stringify!($name)).layout_of::<Self>();
                $( d.field::<$ty>(stringify!($field), ::core::mem::offset_of!(Self, $field)); )*
            }
        }
    )*};
}

#[cfg(test)]
mod tests {
    use super::*;

    mod v1 {
        crate::state! {
            #[derive(Clone, Debug)]
            pub struct Acc { pub a: u32, pub b: u32 }
        }
    }
    mod v2 {
        // The same name, size and alignment; the fields swapped.
        crate::state! {
            #[derive(Clone, Debug)]
            pub struct Acc { pub b: u32, pub a: u32 }
        }
    }
    mod v3 {
        // The same fields, one retyped to a same-sized type.
        crate::state! {
            #[derive(Clone, Debug)]
            pub struct Acc { pub a: u32, pub b: i32 }
        }
    }
    mod v1_again {
        crate::state! {
            #[derive(Clone, Debug)]
            pub struct Acc { pub a: u32, pub b: u32 }
        }
    }

    #[test]
    fn layout_hash_tells_changed_types_apart() {
        let cases: [(&str, u64, u64, bool); 7] = [
            (
                "same struct",
                layout_hash::<v1::Acc>(),
                layout_hash::<v1_again::Acc>(),
                true,
            ),
            (
                "fields swapped",
                layout_hash::<v1::Acc>(),
                layout_hash::<v2::Acc>(),
                false,
            ),
            (
                "field retyped",
                layout_hash::<v1::Acc>(),
                layout_hash::<v3::Acc>(),
                false,
            ),
            (
                "u64 vs i64",
                layout_hash::<u64>(),
                layout_hash::<i64>(),
                false,
            ),
            (
                "tuple order",
                layout_hash::<(u32, u64)>(),
                layout_hash::<(u64, u32)>(),
                false,
            ),
            (
                "vec element",
                layout_hash::<Vec<u8>>(),
                layout_hash::<Vec<i8>>(),
                false,
            ),
            (
                "array length",
                layout_hash::<[u8; 4]>(),
                layout_hash::<[u8; 5]>(),
                false,
            ),
        ];
        for (what, a, b, same) in cases {
            assert_eq!(a == b, same, "{what}");
        }
    }
}

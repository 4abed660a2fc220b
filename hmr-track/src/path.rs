//! Structural paths: segment format, key and kind rules.
//!
//! A top-level track's segment is its key verbatim (`counter`); a nested unkeyed track's is
//! `"{index}:{kind}"` (`0:map`); a nested keyed track's is `"#{key}:{kind}"` (`#norm:scope`).
//! Segments are joined with [`SEPARATOR`]: `counter|#norm:scope|0:map`.

use crate::error::ApplyError;

/// Joins the segments of a path.
pub const SEPARATOR: char = '|';

/// Characters a key may not hold (they delimit segments).
pub const KEY_FORBIDDEN: [char; 3] = ['|', ':', '#'];

/// Checks a key: non-empty, none of `|`, `:`, `#`, no control character (a pipeline's key
/// is its name, which also names its thread and is printed: a NUL or a newline in it would
/// fail the one and garble the other).
pub fn check_key(event: &'static str, key: &str) -> Result<(), ApplyError> {
    // Bytes first (this runs once per registered track): the forbidden characters and the
    // ASCII controls are single bytes that never occur inside a multi-byte character; only
    // a key with non-ASCII text is searched for the other controls (U+0080 to U+009F).
    let ascii_refused = |b: u8| b.is_ascii_control() || KEY_FORBIDDEN.contains(&char::from(b));
    if key.is_empty()
        || key.bytes().any(ascii_refused)
        || (!key.is_ascii() && key.contains(char::is_control))
    {
        return Err(ApplyError::InvalidKey {
            event,
            key: key.to_owned(),
        });
    }
    Ok(())
}

/// Checks a kind: non-empty, no `|`.
pub fn check_kind(event: &'static str, kind: &str) -> Result<(), ApplyError> {
    if kind.is_empty() || kind.contains(SEPARATOR) {
        return Err(ApplyError::InvalidKind {
            event,
            kind: kind.to_owned(),
        });
    }
    Ok(())
}

/// The segment of a nested track: `#{key}:{kind}` when keyed, else `{index}:{kind}`.
pub fn nested_segment(index: Option<u32>, key: Option<&str>, kind: &str) -> String {
    match key {
        Some(key) => format!("#{key}:{kind}"),
        None => format!("{}:{kind}", index.unwrap_or_default()),
    }
}

/// `parent|segment` for the segment [`nested_segment`] would make, built in one allocation.
pub fn nested_path(parent: &str, index: Option<u32>, key: Option<&str>, kind: &str) -> String {
    let mut path = String::with_capacity(parent.len() + 14 + key.map_or(0, str::len) + kind.len());
    nested_path_into(&mut path, parent, index, key, kind);
    path
}

/// [`nested_path`] appended to `path` (a reused buffer: looking an existing track up by its
/// path then allocates nothing).
pub fn nested_path_into(
    path: &mut String,
    parent: &str,
    index: Option<u32>,
    key: Option<&str>,
    kind: &str,
) {
    path.push_str(parent);
    path.push(SEPARATOR);
    match key {
        Some(key) => {
            path.push('#');
            path.push_str(key);
        }
        None => {
            // Decimal digits without the formatting machinery (this runs once per track).
            let mut digits = [0u8; 10];
            let mut n = index.unwrap_or_default();
            let mut at = digits.len();
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            for &d in &digits[at..] {
                path.push(char::from(d));
            }
        }
    }
    path.push(':');
    path.push_str(kind);
}

/// `parent|segment`.
pub fn join(parent: &str, segment: &str) -> String {
    let mut path = String::with_capacity(parent.len() + 1 + segment.len());
    path.push_str(parent);
    path.push(SEPARATOR);
    path.push_str(segment);
    path
}

/// The prefix every descendant path of `path` starts with (`path|`).
pub fn descendant_prefix(path: &str) -> String {
    join(path, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_spell_every_index() {
        for (index, key, expected) in [
            (Some(0), None, "p|0:map"),
            (Some(9), None, "p|9:map"),
            (Some(10), None, "p|10:map"),
            (Some(1_000_007), None, "p|1000007:map"),
            (Some(u32::MAX), None, "p|4294967295:map"),
            (None, Some("k"), "p|#k:map"),
        ] {
            assert_eq!(nested_path("p", index, key, "map"), expected);
        }
    }

    #[test]
    fn segments() {
        assert_eq!(nested_segment(Some(3), None, "map"), "3:map");
        assert_eq!(nested_segment(None, Some("norm"), "scope"), "#norm:scope");
        assert_eq!(join("counter", "0:map"), "counter|0:map");
        assert_eq!(descendant_prefix("counter"), "counter|");
        for (index, key, kind) in [
            (Some(3), None, "map"),
            (None, Some("norm"), "scope"),
            (Some(12), None, "scan"),
        ] {
            assert_eq!(
                nested_path("counter|0:map", index, key, kind),
                join("counter|0:map", &nested_segment(index, key, kind))
            );
        }
    }

    #[test]
    fn key_rules() {
        let table = [
            ("norm", true),
            ("counter-2", true),
            ("with space", true),
            ("", false),
            ("a|b", false),
            ("a:b", false),
            ("#a", false),
            ("a\nb", false),
            ("nul\0", false),
            ("del\u{7f}", false),
            ("naïve", true),
            ("日本", true),
            ("é|", false),
            ("next\u{85}line", false),
            ("\u{9f}", false),
            ("\u{a0}", true),
        ];
        for (key, ok) in table {
            assert_eq!(check_key("track-call", key).is_ok(), ok, "{key:?}");
        }
        for (kind, ok) in [("map", true), ("", false), ("a|b", false), ("a:b", true)] {
            assert_eq!(check_kind("track-call", kind).is_ok(), ok, "{kind:?}");
        }
    }
}

//! Cargo's dep-info files: which files a build read.
//!
//! After a successful build cargo writes `<lib>.d` beside the library it built
//! (`target/debug/libmy_plugin.d`), in Makefile syntax: `<outputs>: <inputs>`, one rule per
//! line, spaces inside paths escaped as `\ `. The inputs are every source file rustc read for
//! the library and for its local (path) dependencies, files read with `include_str!` /
//! `include_bytes!` / `include!`, the build scripts' sources, and the files the build scripts
//! named with `cargo:rerun-if-changed`. This is what the watcher watches
//! ([`crate::watch::plan`]) and what the "no change" check hashes ([`super::Sources`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One rule of a dep-info file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// What the rule builds (left of the colon).
    pub targets: Vec<PathBuf>,
    /// What it was built from (right of the colon).
    pub inputs: Vec<PathBuf>,
}

/// Parses a dep-info file's text into its rules. Comment lines (`# env-dep:...`) and empty
/// rules (`src/lib.rs:`, which rustc adds for every input) are kept as rules without inputs;
/// lines ending in an unescaped `\` continue on the next line.
pub fn parse(text: &str) -> Vec<Rule> {
    let mut rules = Vec::new();
    let mut logical = String::new();
    for line in text.lines() {
        if let Some(head) = line.strip_suffix('\\')
            && !head.ends_with('\\')
        {
            logical.push_str(head);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let full = std::mem::take(&mut logical);
        if full.trim_start().starts_with('#') {
            continue;
        }
        if let Some(rule) = parse_rule(&full) {
            rules.push(rule);
        }
    }
    if !logical.is_empty()
        && let Some(rule) = parse_rule(&logical)
    {
        rules.push(rule);
    }
    rules
}

/// Every input of every rule, in order of first appearance, without repeats.
pub fn inputs(text: &str) -> Vec<PathBuf> {
    let mut seen = BTreeMap::new();
    for rule in parse(text) {
        for input in rule.inputs {
            let next = seen.len();
            seen.entry(input).or_insert(next);
        }
    }
    let mut ordered: Vec<(usize, PathBuf)> = seen.into_iter().map(|(p, i)| (i, p)).collect();
    ordered.sort();
    ordered.into_iter().map(|(_, p)| p).collect()
}

/// Where cargo writes the dep-info of `library`: beside it, with the extension `.d` and
/// without the platform's library prefix removed (`libfoo.so` → `libfoo.d`).
pub fn path_of(library: &Path) -> PathBuf {
    library.with_extension("d")
}

/// One `targets: inputs` line; `None` when there is no separating colon.
fn parse_rule(line: &str) -> Option<Rule> {
    let words = words(line);
    let colon = words.iter().position(|w| w.colon)?;
    let mut targets: Vec<PathBuf> = Vec::new();
    let mut inputs = Vec::new();
    for (i, w) in words.into_iter().enumerate() {
        if w.text.is_empty() {
            continue;
        }
        if i <= colon {
            targets.push(w.text.into());
        } else {
            inputs.push(w.text.into());
        }
    }
    Some(Rule { targets, inputs })
}

/// A word of a rule; `colon` when the word ends the rule's target list.
struct Word {
    text: String,
    colon: bool,
}

/// Splits on unescaped blanks, unescaping `\ `, `\#`, `\\` and `$$`; marks the word an
/// unescaped `:` followed by a blank (or the end) ends. A colon inside a word (`C:\`) is kept.
fn words(line: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut seen_colon = false;
    let mut chars = line.chars().peekable();
    fn finish(cur: &mut String, colon: bool, out: &mut Vec<Word>) {
        if !cur.is_empty() || colon {
            out.push(Word {
                text: std::mem::take(cur),
                colon,
            });
        }
    }
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(&n @ (' ' | '#' | '\\' | '\t')) => {
                    cur.push(n);
                    chars.next();
                }
                _ => cur.push('\\'),
            },
            '$' if chars.peek() == Some(&'$') => {
                cur.push('$');
                chars.next();
            }
            ':' if !seen_colon && chars.peek().is_none_or(|n| n.is_whitespace()) => {
                seen_colon = true;
                finish(&mut cur, true, &mut out);
            }
            c if c.is_whitespace() => finish(&mut cur, false, &mut out),
            c => cur.push(c),
        }
    }
    finish(&mut cur, false, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(targets: &[&str], inputs: &[&str]) -> Rule {
        Rule {
            targets: targets.iter().map(PathBuf::from).collect(),
            inputs: inputs.iter().map(PathBuf::from).collect(),
        }
    }

    #[test]
    fn parses_cargo_and_rustc_dep_info() {
        let cases: Vec<(&str, &str, Vec<Rule>)> = vec![
            (
                "cargo's uplifted file",
                "/t/debug/libp.so: /p/src/lib.rs /api/build.rs /api/src/abi.rs\n",
                vec![rule(
                    &["/t/debug/libp.so"],
                    &["/p/src/lib.rs", "/api/build.rs", "/api/src/abi.rs"],
                )],
            ),
            (
                "escaped spaces in a path",
                "/t/lib\\ p.so: /my\\ plugin/src/lib.rs /my\\ plugin/data\\ file.txt\n",
                vec![rule(
                    &["/t/lib p.so"],
                    &["/my plugin/src/lib.rs", "/my plugin/data file.txt"],
                )],
            ),
            (
                "several targets, empty rules, comments",
                "/t/a.rmeta /t/a.so: src/lib.rs src/m.rs\n\nsrc/lib.rs:\nsrc/m.rs:\n\n# env-dep:OUT_DIR=/t/out\n",
                vec![
                    rule(&["/t/a.rmeta", "/t/a.so"], &["src/lib.rs", "src/m.rs"]),
                    rule(&["src/lib.rs"], &[]),
                    rule(&["src/m.rs"], &[]),
                ],
            ),
            (
                "escaped hash, doubled dollar, a colon inside a word, a continued line",
                "/t/x.so: /p/a\\#b.rs /p/$$HOME.rs \\\n  /p/c:d.rs\n",
                vec![rule(
                    &["/t/x.so"],
                    &["/p/a#b.rs", "/p/$HOME.rs", "/p/c:d.rs"],
                )],
            ),
            ("no colon at all", "just words\n", vec![]),
        ];
        for (what, text, expected) in cases {
            assert_eq!(parse(text), expected, "{what}");
        }
    }

    #[test]
    fn inputs_of_all_rules_once_each_in_order() {
        let text = "/t/a.so /t/a.rlib: /p/b.rs /p/a.rs\n/t/a.d: /p/a.rs /p/c.txt\n/p/b.rs:\n";
        assert_eq!(
            inputs(text),
            ["/p/b.rs", "/p/a.rs", "/p/c.txt"].map(PathBuf::from)
        );
    }

    #[test]
    fn dep_info_sits_beside_the_library() {
        assert_eq!(
            path_of(Path::new("/t/debug/libp.so")),
            PathBuf::from("/t/debug/libp.d")
        );
    }
}

//! Properties of the host's own reconcile, on real builds: a random plugin (pipelines of
//! `map`, `filter`, `scan` and keyed `scope`s) is built and loaded, then a random edit of it
//! (bodies changed, seeds changed, operators inserted or removed, keyed scopes reordered,
//! pipelines added or removed) is built and loaded by the same [`Reloader`]. Its `reload`
//! report must say what the path rules say: a path only in the new version is added, one only
//! in the old is removed, a path in both is reset when its signature (kind, seed, the kinds of
//! its children) changed and swapped otherwise. The host's reconcile runs inside
//! `Reloader::load_built` and is not callable on its own, hence real builds: each case costs
//! two cargo builds, so the cases are few (24, from a fixed seed).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use host::events::HostEvent;
use host::reloader::Outcome;
use host::testkit::{Fixture, TempDir};
use integration_tests::{build_copy, channel_reloader, next_matching};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Clone, Debug, PartialEq)]
enum Op {
    /// `.map(|n| n + c)`.
    Map(u8),
    /// `.filter(|n| n % d != 0)`.
    Filter(u8),
    /// `.scan(seed, |a, n| a + n)`.
    Scan(u8),
    /// `.scope(key, |c| c <ops>)`.
    Scope(String, Vec<Op>),
}

#[derive(Clone, Debug, PartialEq)]
struct Pipeline {
    name: String,
    ops: Vec<Op>,
}

fn leaf() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4).prop_map(Op::Map),
        (2u8..5).prop_map(Op::Filter),
        (0u8..2).prop_map(Op::Scan),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => leaf(),
        1 => vec(leaf(), 0..3).prop_map(|ops| Op::Scope(String::new(), ops)),
    ]
}

/// Keys unique among siblings: `k0`, `k1`, ... by position at generation.
fn keyed(mut ops: Vec<Op>) -> Vec<Op> {
    for (i, op) in ops.iter_mut().enumerate() {
        if let Op::Scope(key, _) = op {
            *key = format!("k{i}");
        }
    }
    ops
}

fn program() -> impl Strategy<Value = Vec<Pipeline>> {
    vec(vec(op(), 0..5), 1..4).prop_map(|pipelines| {
        pipelines
            .into_iter()
            .enumerate()
            .map(|(i, ops)| Pipeline {
                name: format!("p{i}"),
                ops: keyed(ops),
            })
            .collect()
    })
}

/// One edit: what, where (pipeline, position), and a value.
#[derive(Clone, Debug)]
enum Edit {
    Body(Index, Index, u8),
    Seed(Index, Index, u8),
    Insert(Index, Index, Op),
    Remove(Index, Index),
    RotateKeyed(Index),
    RemovePipeline(Index),
    AddPipeline(Vec<Op>),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), any::<Index>(), 4u8..8).prop_map(|(p, i, c)| Edit::Body(p, i, c)),
        (any::<Index>(), any::<Index>(), 2u8..4).prop_map(|(p, i, s)| Edit::Seed(p, i, s)),
        (any::<Index>(), any::<Index>(), op()).prop_map(|(p, i, o)| Edit::Insert(p, i, o)),
        (any::<Index>(), any::<Index>()).prop_map(|(p, i)| Edit::Remove(p, i)),
        any::<Index>().prop_map(Edit::RotateKeyed),
        any::<Index>().prop_map(Edit::RemovePipeline),
        vec(op(), 0..3).prop_map(Edit::AddPipeline),
    ]
}

/// The operator lists of `program`: a pipeline's (`(p, None)`), and each scope's in it
/// (`(p, Some(i))`, the scope being its `i`-th operator).
fn lists(program: &[Pipeline]) -> Vec<(usize, Option<usize>)> {
    let mut out = Vec::new();
    for (p, pipeline) in program.iter().enumerate() {
        out.push((p, None));
        for (i, op) in pipeline.ops.iter().enumerate() {
            if matches!(op, Op::Scope(..)) {
                out.push((p, Some(i)));
            }
        }
    }
    out
}

/// The list `l` (an [`Index`] into [`lists`]) of `program`.
fn list_mut<'a>(program: &'a mut [Pipeline], l: &Index) -> &'a mut Vec<Op> {
    let all = lists(program);
    let (p, scope) = all[l.index(all.len())];
    let ops = &mut program[p].ops;
    match scope {
        None => ops,
        Some(i) => match &mut ops[i] {
            Op::Scope(_, inner) => inner,
            _ => unreachable!("lists names scopes only"),
        },
    }
}

fn apply(program: &mut Vec<Pipeline>, edit: &Edit, fresh: &mut usize) {
    match edit {
        Edit::Body(l, i, c) | Edit::Seed(l, i, c) => {
            let list = list_mut(program, l);
            if list.is_empty() {
                return;
            }
            let at = i.index(list.len());
            match (&mut list[at], edit) {
                (Op::Map(x), Edit::Body(..)) | (Op::Scan(x), Edit::Seed(..)) => *x = *c,
                _ => {}
            }
        }
        Edit::Insert(l, i, op) => {
            let list = list_mut(program, l);
            let mut op = op.clone();
            if let Op::Scope(key, _) = &mut op {
                *fresh += 1;
                *key = format!("n{fresh}");
            }
            let at = i.index(list.len() + 1);
            list.insert(at, op);
        }
        Edit::Remove(l, i) => {
            let list = list_mut(program, l);
            if !list.is_empty() {
                let at = i.index(list.len());
                list.remove(at);
            }
        }
        Edit::RotateKeyed(l) => {
            let list = list_mut(program, l);
            let slots: Vec<usize> = (0..list.len())
                .filter(|&i| matches!(list[i], Op::Scope(..)))
                .collect();
            if slots.len() >= 2 {
                let keyed: Vec<Op> = slots.iter().map(|&i| list[i].clone()).collect();
                for (n, &slot) in slots.iter().enumerate() {
                    list[slot] = keyed[(n + 1) % keyed.len()].clone();
                }
            }
        }
        Edit::RemovePipeline(p) => {
            if program.len() > 1 {
                let at = p.index(program.len());
                program.remove(at);
            }
        }
        Edit::AddPipeline(ops) => {
            *fresh += 1;
            program.push(Pipeline {
                name: format!("q{fresh}"),
                ops: keyed(ops.clone()),
            });
        }
    }
}

fn rust_ops(ops: &[Op], out: &mut String) {
    for op in ops {
        match op {
            Op::Map(c) => out.push_str(&format!(".map(|n: u64| n.wrapping_add({c}))")),
            Op::Filter(d) => out.push_str(&format!(".filter(|n: &u64| n % {d} != 0)")),
            Op::Scan(s) => out.push_str(&format!(
                ".scan({s}u64, |a: u64, n: u64| a.wrapping_add(n))"
            )),
            Op::Scope(key, inner) => {
                out.push_str(&format!(".scope(\"{key}\", |c| c"));
                rust_ops(inner, out);
                out.push(')');
            }
        }
    }
}

fn source(program: &[Pipeline]) -> String {
    let mut body = String::new();
    for p in program {
        body.push_str(&format!(
            "    p.pipeline(\"{}\", interval_ms(3_600_000))",
            p.name
        ));
        rust_ops(&p.ops, &mut body);
        body.push_str(".log();\n");
    }
    format!(
        "use plugin_api::prelude::*;\n\nfn register(p: &mut Plugin) {{\n{body}}}\n\n\
         plugin_api::export_plugin!(register);\n"
    )
}

/// A track's signature as far as these programs vary it: kind, seed, children's kinds.
type Sig = (&'static str, Option<u8>, Vec<&'static str>);

fn kind(op: &Op) -> &'static str {
    match op {
        Op::Map(_) => "map",
        Op::Filter(_) => "filter",
        Op::Scan(_) => "scan",
        Op::Scope(..) => "scope",
    }
}

/// The tracks of `ops` under `parent` (the path rules: unkeyed children by their index among
/// unkeyed siblings, keyed ones by key); `log` ends a pipeline's list.
fn tracks_of(parent: &str, ops: &[Op], log: bool, out: &mut BTreeMap<String, Sig>) {
    let mut index = 0;
    for op in ops {
        match op {
            Op::Scope(key, inner) => {
                let path = format!("{parent}|#{key}:scope");
                out.insert(
                    path.clone(),
                    ("scope", None, inner.iter().map(kind).collect()),
                );
                tracks_of(&path, inner, false, out);
            }
            other => {
                let seed = match other {
                    Op::Scan(s) => Some(*s),
                    _ => None,
                };
                out.insert(
                    format!("{parent}|{index}:{}", kind(other)),
                    (kind(other), seed, vec![]),
                );
                index += 1;
            }
        }
    }
    if log {
        out.insert(format!("{parent}|{index}:log"), ("log", None, vec![]));
    }
}

fn tracks(program: &[Pipeline]) -> BTreeMap<String, Sig> {
    let mut out = BTreeMap::new();
    for p in program {
        let mut children: Vec<&'static str> = p.ops.iter().map(kind).collect();
        children.push("log");
        out.insert(p.name.clone(), ("pipeline", None, children));
        tracks_of(&p.name, &p.ops, true, &mut out);
    }
    out
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 24,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(20_261_126),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_reload_report_follows_the_path_rules(
        old in program(),
        edits in vec(edit(), 1..5),
    ) {
        let mut new = old.clone();
        let mut fresh = 0;
        for e in &edits {
            apply(&mut new, e, &mut fresh);
        }
        let (swapped, reset, added, removed) = reload_of(&old, &new).expect("builds and loads");
        let (before, after) = (tracks(&old), tracks(&new));
        let expected_added: BTreeSet<String> =
            after.keys().filter(|p| !before.contains_key(*p)).cloned().collect();
        let expected_removed: BTreeSet<String> =
            before.keys().filter(|p| !after.contains_key(*p)).cloned().collect();
        let expected_reset: BTreeSet<String> = after
            .iter()
            .filter(|(p, sig)| before.get(*p).is_some_and(|old| old != *sig))
            .map(|(p, _)| p.clone())
            .collect();
        let expected_swapped = after
            .iter()
            .filter(|(p, sig)| before.get(*p) == Some(*sig))
            .count();
        eprintln!(
            "case: {swapped} swapped, {} reset, {} added, {} removed",
            reset.len(),
            added.len(),
            removed.len()
        );
        prop_assert_eq!(added, expected_added, "{}", source(&new));
        prop_assert_eq!(removed, expected_removed, "{}", source(&new));
        prop_assert_eq!(reset, expected_reset, "{}", source(&new));
        prop_assert_eq!(swapped, expected_swapped, "{}", source(&new));
    }
}

/// A reload's swapped count and its reset, added and removed paths.
type Report = (usize, BTreeSet<String>, BTreeSet<String>, BTreeSet<String>);

/// Builds `old` and `new`, loads both into one reloader, and returns the second load's
/// swapped count and reset, added and removed paths.
fn reload_of(old: &[Pipeline], new: &[Pipeline]) -> anyhow::Result<Report> {
    let fixture = Fixture::new("reconcile_property", &source(old));
    let config = fixture.build_config(false)?;
    let keep = TempDir::new("reconcile-property-libs");
    let a = build_copy(&config, keep.path(), "liba.so")?;
    fixture.write("src/lib.rs", &source(new));
    let b = build_copy(&config, keep.path(), "libb.so")?;
    let (mut reloader, rx) = channel_reloader(config)?;
    anyhow::ensure!(reloader.load_built(&a, 0) == Outcome::Loaded { version: 1 });
    anyhow::ensure!(reloader.load_built(&b, 0) == Outcome::Loaded { version: 2 });
    let reload = next_matching(&rx, Duration::from_secs(30), |e| {
        matches!(e, HostEvent::Reload { .. })
    })?;
    let HostEvent::Reload {
        swapped,
        resets,
        added_paths,
        removed_paths,
        restarts,
        ..
    } = reload
    else {
        unreachable!()
    };
    anyhow::ensure!(restarts.is_empty(), "restarts: {restarts:?}");
    Ok((
        swapped,
        resets.into_iter().map(|r| r.path).collect(),
        added_paths.into_iter().collect(),
        removed_paths.into_iter().collect(),
    ))
}

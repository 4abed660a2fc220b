//! The entities of the store (tracks, modules, pipelines, operators, subscriptions, subjects) and their signatures.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One id space for tracks, core entities (pipelines, operators) and subscriptions.
pub type Id = u64;

/// A plugin version number: 1, 2, 3 ... strictly increasing, one per run of a registration.
pub type ModuleId = u64;

/// The identity of a Rust type as the host sees it: its name, layout and a hash of its `TypeId`
/// (or of anything the host chooses that changes when the type changes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The type name, e.g. `u64` (shared: the same few names recur in every signature).
    pub name: Arc<str>,
    /// `size_of` the type.
    pub size: u64,
    /// `align_of` the type.
    pub align: u64,
    /// A hash that changes when the type does.
    pub hash: u64,
}

/// What must stay equal for a track's state to survive a swap (function bodies are not part of it).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Signature {
    /// The operator kind (`map`, `scan`, `pipeline`, `scope`, ...). Shared, like every kind
    /// and type name in the store: cloning a signature allocates only its seed.
    pub kind: Arc<str>,
    /// The type flowing in.
    pub input: Option<Fingerprint>,
    /// The type flowing out.
    pub output: Option<Fingerprint>,
    /// The type of the operator's state (a `scan` accumulator).
    pub state: Option<Fingerprint>,
    /// Debug text of seed arguments (scan seed, `take(n)`, source params).
    pub seed: Option<String>,
    /// Kinds of the direct children in call order. Filled by the accumulator at
    /// `track-call-return`; whatever a `track-call` event carries here is ignored.
    pub children: Vec<Arc<str>>,
}

/// What a later run of the registration proposed for an existing track, waiting for its
/// `track-update`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The run that registered the track again.
    pub module: ModuleId,
    /// The signature it registered (children filled at `track-call-return`).
    pub signature: Signature,
    /// The core entity that run's scope produced (see the correlation rule in the crate doc).
    pub entity_id: Option<Id>,
}

/// An `hmr_track`: one scope of the registration, named by its structural path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    /// The track's id (stable across runs: the same path keeps the same id).
    pub id: Id,
    /// The structural path, e.g. `counter|0:map|1:filter` (see [`crate::path`]).
    pub path: String,
    /// The core entity (pipeline or operator) the committed version of this scope produced.
    pub entity_id: Option<Id>,
    /// Earlier values of `entity_id`, oldest first, one per swap or reset that replaced one.
    pub prev_entity_ids: Vec<Id>,
    /// The enclosing track (`None` for a top-level track).
    pub parent: Option<Id>,
    /// Position among the parent's unkeyed children in a run; `None` when keyed.
    pub index: Option<u32>,
    /// The explicit key (a pipeline's name at top level, `scope("name", ..)` below).
    pub key: Option<String>,
    /// The scope kind (`pipeline`, `map`, `scope`, ...).
    pub kind: Arc<str>,
    /// The committed signature.
    pub signature: Signature,
    /// 0 when created, +1 on every swapped or reset update.
    pub version: u64,
    /// The last registration run whose version of this track is committed.
    pub module: ModuleId,
    /// The run that created the track.
    pub created_by: ModuleId,
    /// A later run's registration of this track, waiting for a `track-update`.
    pub pending: Option<Pending>,
    /// For a run-time track (made inside a `subscribe-call`, see the crate doc's run-time
    /// tracks): the subscription that made it, whose end removes it. `None` for a track of a
    /// registration run. A run-time track's `module` and `created_by` are the module whose
    /// code made it or last re-projected it ([`Subscription::code`]), and a pending on it
    /// comes from a re-projection.
    #[serde(default)]
    pub subscription: Option<Id>,
}

/// How a registration run of a plugin version ended (or that it is still running).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ModuleStatus {
    /// Between `module-call` and its return.
    Running,
    /// Returned `Ok`: the run's tracks are committed or pending.
    Ok,
    /// Returned `Failed`: everything of the run was rolled back.
    Failed {
        /// Why the run failed.
        reason: String,
    },
}

/// An `hmr_module`: one run of one plugin version's registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// The plugin version number.
    pub id: ModuleId,
    /// A label for people (e.g. the library file name).
    pub label: String,
    /// How the run ended.
    pub status: ModuleStatus,
}

/// A pipeline (an observable) created by a registration run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipeline {
    /// The entity id.
    pub id: Id,
    /// The pipeline's name.
    pub name: String,
    /// The run that created it.
    pub module: ModuleId,
}

/// An operator instance created by a registration run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    /// The entity id.
    pub id: Id,
    /// The operator kind (`map`, `scan`, ...).
    pub kind: Arc<str>,
    /// The run that created it.
    pub module: ModuleId,
}

/// A subscription to a pipeline track. It follows the track, not a version of it: a swap keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The subscription id.
    pub id: Id,
    /// The pipeline track subscribed to.
    pub track: Id,
    /// True between `subscribe-call-return` and `unsubscribe-call-return`.
    pub active: bool,
    /// The registration run that was open when it was made (`None` outside a run); a failed run
    /// deletes the subscriptions made inside it (and their run-time tracks).
    pub module: Option<ModuleId>,
    /// True for an inner subscription: one on a track that is not a pipeline track (a
    /// higher-order operator's, or a run-time track). It leaves the store when it ends
    /// (a `switch_map` makes one per outer value); a pipeline subscription stays, inactive.
    #[serde(default)]
    pub inner: bool,
    /// The module whose code made the subscription's run-time tracks: the current module at
    /// its `subscribe-call` (0 before any run returned `ok`), then the current module of each
    /// re-projection. Its run-time tracks are committed at this module or pending from it.
    #[serde(default)]
    pub code: ModuleId,
    /// The run-time tracks it made and still holds, in creation order (a parent before its
    /// children).
    #[serde(default)]
    pub tracks: Vec<Id>,
    /// The subscription whose run-time track this one is on (a nested inner subscription).
    #[serde(default)]
    pub parent: Option<Id>,
    /// Inner subscriptions made on its run-time tracks (ended ones leave the list).
    #[serde(default)]
    pub nested: Vec<Id>,
}

/// A subject: a host-owned channel a plugin names (`.publish(name)` sends to it,
/// `subject::<T>(name)` reads it), keyed by its name. Every registration run declares anew the
/// subjects it uses (`subject-use`, one event per publisher or subscriber); what a run declares
/// replaces what the last one did when the run returns `ok`, and a subject the run no longer
/// mentions leaves the store then (it has no publisher and no subscriber left).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// The subject's name (the store's key).
    pub name: String,
    /// The type of its values, as the committed run declared it.
    pub item: Fingerprint,
    /// Pipeline tracks that publish to it.
    pub publishers: BTreeSet<Id>,
    /// Pipeline tracks that read it.
    pub subscribers: BTreeSet<Id>,
    /// The last registration run whose declaration is committed.
    pub module: ModuleId,
    /// The run that first declared it.
    pub created_by: ModuleId,
    /// A later run's declaration, committed when that run returns `ok`.
    pub pending: Option<SubjectPending>,
}

/// What a running registration declared for a subject that an earlier run made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectPending {
    /// The run declaring it.
    pub module: ModuleId,
    /// The type of its values.
    pub item: Fingerprint,
    /// Pipeline tracks that publish to it in this run.
    pub publishers: BTreeSet<Id>,
    /// Pipeline tracks that read it in this run.
    pub subscribers: BTreeSet<Id>,
}

/// Why `new` cannot keep the state built under `old`: `None` when equal, else a lowercase
/// reason naming the first differing field (in the order kind, state, input, output, seed,
/// children) with old -> new, e.g. `state type changed from u64 to i64`,
/// `seed changed from 0 to 10`, `children changed from [map] to [map, tap]`.
pub fn signature_change(old: &Signature, new: &Signature) -> Option<String> {
    if old.kind != new.kind {
        return Some(format!("kind changed from {} to {}", old.kind, new.kind));
    }
    // State first: it is what a reset throws away, so it is the reason worth naming.
    let types = [
        ("state", &old.state, &new.state),
        ("input", &old.input, &new.input),
        ("output", &old.output, &new.output),
    ];
    for (field, a, b) in types {
        if a != b {
            let (a, b) = describe_pair(a.as_ref(), b.as_ref());
            return Some(format!("{field} type changed from {a} to {b}"));
        }
    }
    if old.seed != new.seed {
        return Some(format!(
            "seed changed from {} to {}",
            old.seed.as_deref().unwrap_or("none"),
            new.seed.as_deref().unwrap_or("none")
        ));
    }
    if old.children != new.children {
        return Some(format!(
            "children changed from [{}] to [{}]",
            old.children.join(", "),
            new.children.join(", ")
        ));
    }
    None
}

/// Names two differing fingerprints; when the names are equal the layouts are shown too.
pub(crate) fn describe_pair(a: Option<&Fingerprint>, b: Option<&Fingerprint>) -> (String, String) {
    match (a, b) {
        (Some(a), Some(b)) if a.name == b.name => (describe_full(a), describe_full(b)),
        _ => (describe_name(a), describe_name(b)),
    }
}

fn describe_name(f: Option<&Fingerprint>) -> String {
    f.map_or_else(|| "none".to_owned(), |f| f.name.to_string())
}

fn describe_full(f: &Fingerprint) -> String {
    format!(
        "{} (size {}, align {}, hash {:#x})",
        f.name, f.size, f.align, f.hash
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(name: &str, size: u64) -> Option<Fingerprint> {
        Some(Fingerprint {
            name: name.into(),
            size,
            align: size,
            hash: size * 7,
        })
    }

    fn base() -> Signature {
        Signature {
            kind: "scan".into(),
            input: fp("u64", 8),
            output: fp("u64", 8),
            state: fp("u64", 8),
            seed: Some("0".into()),
            children: vec!["map".into()],
        }
    }

    #[test]
    fn signature_change_names_the_first_differing_field() {
        type Edit = fn(&mut Signature);
        let table: &[(Edit, Option<&str>)] = &[
            (|_| {}, None),
            (
                |s| s.kind = "fold".into(),
                Some("kind changed from scan to fold"),
            ),
            (
                |s| s.input = fp("i32", 4),
                Some("input type changed from u64 to i32"),
            ),
            (
                |s| s.output = None,
                Some("output type changed from u64 to none"),
            ),
            (
                |s| s.state = fp("i64", 8),
                Some("state type changed from u64 to i64"),
            ),
            (
                |s| s.state = fp("u64", 16),
                Some(
                    "state type changed from u64 (size 8, align 8, hash 0x38) to \
                     u64 (size 16, align 16, hash 0x70)",
                ),
            ),
            (
                |s| s.seed = Some("10".into()),
                Some("seed changed from 0 to 10"),
            ),
            (|s| s.seed = None, Some("seed changed from 0 to none")),
            (
                |s| s.children.push("tap".into()),
                Some("children changed from [map] to [map, tap]"),
            ),
            (
                |s| {
                    s.seed = Some("1".into());
                    s.children.clear();
                },
                Some("seed changed from 0 to 1"),
            ),
        ];
        for (i, (edit, expected)) in table.iter().enumerate() {
            let mut new = base();
            edit(&mut new);
            assert_eq!(
                signature_change(&base(), &new).as_deref(),
                *expected,
                "row {i}"
            );
        }
    }
}

//! Test support: a tiny text DSL for registration programs, a runner that emits their events
//! through a `Recorder`, and a reconciler that settles a run like the host does.

#![allow(dead_code, reason = "not every helper is used by every test module")]

use hmr_track::{
    ApplyError, Event, Fingerprint, Id, ModuleId, ModuleOutcome, Recorder, Signature, State,
    SubjectRole, UpdateOutcome, signature_change,
};

/// Where a scope's core entity is created relative to its children.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    None,
    Before,
    After,
}

/// One track scope of a registration program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: String,
    pub key: Option<String>,
    pub seed: Option<String>,
    pub entity: Place,
    pub children: Vec<Node>,
}

impl Node {
    pub fn new(kind: &str, key: Option<&str>, children: Vec<Node>) -> Node {
        let entity = if kind == "scope" {
            Place::None
        } else {
            Place::Before
        };
        Node {
            kind: kind.into(),
            key: key.map(Into::into),
            seed: None,
            entity,
            children,
        }
    }

    pub fn count(&self) -> usize {
        1 + self.children.iter().map(Node::count).sum::<usize>()
    }
}

/// Parses `counter{map filter #norm:scope{map} scan(0)}  total{reduce(0)}`.
/// Top level: `name{..}` is a pipeline keyed by its name; `#key:kind{..}` a keyed scope.
/// Below: `kind`, `kind(seed)`, `#key:kind`, each optionally with `{children}`.
pub fn parse(src: &str) -> Vec<Node> {
    let mut chars = src.chars().peekable();
    let nodes = parse_items(&mut chars);
    assert!(chars.next().is_none(), "trailing input in {src:?}");
    nodes
        .into_iter()
        .map(|mut n| {
            if n.key.is_none() {
                n.key = Some(std::mem::replace(&mut n.kind, "pipeline".into()));
                n.entity = Place::Before;
            }
            n
        })
        .collect()
}

fn parse_items(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Vec<Node> {
    let mut nodes = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.peek() {
            None | Some('}') => return nodes,
            _ => {}
        }
        let mut key = None;
        if chars.peek() == Some(&'#') {
            chars.next();
            key = Some(take_word(chars));
            assert_eq!(chars.next(), Some(':'));
        }
        let kind = take_word(chars);
        let mut seed = None;
        if chars.peek() == Some(&'(') {
            chars.next();
            seed = Some(chars.by_ref().take_while(|&c| c != ')').collect());
        }
        let mut children = Vec::new();
        if chars.peek() == Some(&'{') {
            chars.next();
            children = parse_items(chars);
            assert_eq!(chars.next(), Some('}'));
        }
        let mut node = Node::new(&kind, key.as_deref(), children);
        node.seed = seed;
        nodes.push(node);
    }
}

fn take_word(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    let mut word = String::new();
    while let Some(&c) = chars.peek() {
        if c.is_alphanumeric() || c == '_' || c == '-' {
            word.push(c);
            chars.next();
        } else {
            break;
        }
    }
    assert!(!word.is_empty(), "expected a word");
    word
}

pub fn signature(node: &Node) -> Signature {
    Signature {
        seed: node.seed.clone(),
        ..Signature::default()
    }
}

/// Emits one scope; returns (route, track id) for it and its subtree, preorder.
pub fn emit(
    rec: &mut Recorder,
    node: &Node,
    route: &mut Vec<usize>,
    out: &mut Vec<(Vec<usize>, Id)>,
) -> Result<(), ApplyError> {
    emit_hinted(rec, node, route, out, None)
}

/// [`emit`] through [`Recorder::track_call_hinted`], the hint of the n-th track (preorder)
/// being `hints[n]`.
fn emit_hinted(
    rec: &mut Recorder,
    node: &Node,
    route: &mut Vec<usize>,
    out: &mut Vec<(Vec<usize>, Id)>,
    hints: Option<&[Id]>,
) -> Result<(), ApplyError> {
    let sig = signature(node);
    let track = match hints {
        None => rec.track_call(&node.kind, node.key.as_deref(), sig)?,
        Some(hints) => {
            let hint = hints.get(out.len()).copied();
            rec.track_call_hinted(&node.kind, node.key.as_deref(), sig, hint)?
        }
    };
    out.push((route.clone(), track));
    let entity = |rec: &mut Recorder| -> Result<(), ApplyError> {
        if node.kind == "pipeline" {
            let name = node.key.as_deref().unwrap_or("anonymous");
            let id = rec.pipeline_call(name)?;
            rec.pipeline_call_return(id)
        } else {
            let id = rec.operator_call(&node.kind)?;
            rec.operator_call_return(id)
        }
    };
    if node.entity == Place::Before {
        entity(rec)?;
    }
    for (i, child) in node.children.iter().enumerate() {
        route.push(i);
        emit_hinted(rec, child, route, out, hints)?;
        route.pop();
    }
    if node.entity == Place::After {
        entity(rec)?;
    }
    rec.track_call_return(track)
}

/// One registration run, returned `Ok`.
pub struct Run {
    pub module: ModuleId,
    pub tracks: Vec<(Vec<usize>, Id)>,
}

pub fn run(rec: &mut Recorder, program: &[Node]) -> Result<Run, ApplyError> {
    let module = rec.module_call("test")?;
    let mut tracks = Vec::new();
    for (i, node) in program.iter().enumerate() {
        emit(rec, node, &mut vec![i], &mut tracks)?;
    }
    rec.module_call_return(module, ModuleOutcome::Ok)?;
    Ok(Run { module, tracks })
}

/// A value type named `name` (its layout and hash derived from the name).
pub fn item(name: &str) -> Fingerprint {
    let size = name.len() as u64;
    Fingerprint {
        name: name.into(),
        size,
        align: 8,
        hash: size * 31 + u64::from(name.as_bytes()[0]),
    }
}

/// One use of a subject by a top-level pipeline: (pipeline name, subject, role, value type).
pub type Use<'a> = (&'a str, &'a str, SubjectRole, &'a str);

/// [`run`] with `subject-use` events for `uses` after the tracks, before the return (as the
/// host emits them).
pub fn run_with_subjects(
    rec: &mut Recorder,
    program: &[Node],
    uses: &[Use<'_>],
) -> Result<Run, ApplyError> {
    let module = rec.module_call("test")?;
    let mut tracks = Vec::new();
    for (i, node) in program.iter().enumerate() {
        emit(rec, node, &mut vec![i], &mut tracks)?;
    }
    for &(pipeline, subject, role, ty) in uses {
        let track = rec.state.find_by_path(pipeline).map_or(Id::MAX, |t| t.id);
        rec.subject_use(subject, track, role, item(ty))?;
    }
    rec.module_call_return(module, ModuleOutcome::Ok)?;
    Ok(Run { module, tracks })
}

/// [`run`] with a hint for each track-call (preorder), right or wrong.
pub fn run_hinted(rec: &mut Recorder, program: &[Node], hints: &[Id]) -> Result<Run, ApplyError> {
    let module = rec.module_call("test")?;
    let mut tracks = Vec::new();
    for (i, node) in program.iter().enumerate() {
        emit_hinted(rec, node, &mut vec![i], &mut tracks, Some(hints))?;
    }
    rec.module_call_return(module, ModuleOutcome::Ok)?;
    Ok(Run { module, tracks })
}

/// Runs `src` as a fresh recorder's module 1.
pub fn recorded(src: &str) -> Recorder {
    let mut rec = Recorder::new();
    run(&mut rec, &parse(src)).expect("program runs");
    rec
}

/// All stored paths, sorted.
pub fn paths(state: &State) -> Vec<String> {
    state.store.paths.keys().cloned().collect()
}

/// What the host did after a run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    pub added: Vec<String>,
    pub swapped: Vec<String>,
    pub reset: Vec<(String, String)>,
    pub removed: Vec<String>,
}

/// Reconciles run `module` like the host: swap equal signatures, reset the others, unsubscribe
/// and remove the orphans.
pub fn settle(rec: &mut Recorder, module: ModuleId) -> Result<Settled, ApplyError> {
    let mut settled = Settled {
        added: rec
            .state
            .tracks_of_module(module)
            .iter()
            .filter(|t| t.created_by == module)
            .map(|t| t.path.clone())
            .collect(),
        ..Settled::default()
    };
    for id in rec.state.pending_updates(module) {
        let track = rec.state.track(id).expect("pending track exists");
        let pending = track.pending.as_ref().expect("pending");
        let path = track.path.clone();
        match signature_change(&track.signature, &pending.signature) {
            None => {
                rec.update(id, module, UpdateOutcome::Swapped)?;
                settled.swapped.push(path);
            }
            Some(reason) => {
                rec.update(
                    id,
                    module,
                    UpdateOutcome::Reset {
                        reason: reason.clone(),
                    },
                )?;
                settled.reset.push((path, reason));
            }
        }
    }
    for id in rec.state.orphans(module) {
        let active: Vec<Id> = rec
            .state
            .store
            .subscriptions
            .values()
            .filter(|s| s.track == id && s.active)
            .map(|s| s.id)
            .collect();
        for subscription in active {
            rec.unsubscribe(subscription)?;
        }
        let path = rec.state.track(id).expect("orphan exists").path.clone();
        rec.update(id, module, UpdateOutcome::Removed)?;
        settled.removed.push(path);
    }
    Ok(settled)
}

/// Applies events one by one; on the first refused one checks the state did not change and
/// returns the index and error.
pub fn replay_checked(events: &[Event]) -> (State, Option<(usize, ApplyError)>) {
    let mut state = State::default();
    for (i, event) in events.iter().enumerate() {
        let before = state.clone();
        if let Err(error) = state.apply(event) {
            assert_eq!(state, before, "refused {event:?} changed the state");
            assert_eq!(error.event(), event.name(), "error names its event");
            return (state, Some((i, error)));
        }
    }
    (state, None)
}

/// Applies `event` expecting a refusal; checks the state did not change and the error names
/// the event.
pub fn refuse_with(state: &mut State, event: Event) -> ApplyError {
    let before = state.clone();
    let error = state.apply(&event).expect_err("event must be refused");
    assert_eq!(*state, before, "refused {event:?} changed the state");
    assert_eq!(error.event(), event.name());
    error
}

//! [`ApplyError`]: why an event (or a query) was refused; the state is never changed by a refused event.

use crate::model::{Id, ModuleId};

/// Why [`crate::State::apply`] refused an event (or a query failed). Every variant names the
/// event (`event`, e.g. `"track-call-return"`, or the query name) and the ids or paths involved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A call that needs a running registration came outside any `module-call`.
    #[error("{event}: no module is open (call it between module-call and module-call-return)")]
    NoModuleOpen {
        /// The refused event.
        event: &'static str,
    },
    /// A `module-call` (or a `track-update`) came while a run was still open.
    #[error("{event}: module {open} is still open")]
    ModuleStillOpen {
        /// The refused event.
        event: &'static str,
        /// The open run.
        open: ModuleId,
    },
    /// A `module-call` whose id is not greater than every earlier module's.
    #[error("{event}: module {module} is not greater than the last module {last}")]
    ModuleNotIncreasing {
        /// The refused event.
        event: &'static str,
        /// The id given.
        module: ModuleId,
        /// The greatest earlier id.
        last: ModuleId,
    },
    /// A `track-update` for a module that is not the current (last returned `Ok`) one.
    #[error("{event}: module {module} is not the current module (current: {})", opt(.current))]
    ModuleNotCurrent {
        /// The refused event.
        event: &'static str,
        /// The module named by the event.
        module: ModuleId,
        /// The current module.
        current: Option<ModuleId>,
    },
    /// A return with no open call of its kind.
    #[error("{event}: return for {found} without its call (nothing is open)")]
    ReturnWithoutCall {
        /// The refused event.
        event: &'static str,
        /// The id the return named.
        found: Id,
    },
    /// A return that does not match the innermost open call of its kind.
    #[error("{event}: return for another id (expected {expected}, found {found})")]
    ReturnMismatch {
        /// The refused event.
        event: &'static str,
        /// The id of the innermost open call.
        expected: Id,
        /// The id the return named.
        found: Id,
    },
    /// A return of another kind than the innermost open call with that id.
    #[error("{event}: {id} is an open {open}, not this call")]
    WrongReturnKind {
        /// The refused event.
        event: &'static str,
        /// The id.
        id: Id,
        /// The open call, e.g. `pipeline-call`.
        open: String,
    },
    /// A call for an id that already has an open call.
    #[error("{event}: a call for {id} is already open")]
    CallAlreadyOpen {
        /// The refused event.
        event: &'static str,
        /// The id.
        id: Id,
    },
    /// A scope was closed while a call opened inside it is still open.
    #[error("{event}: {scope} is closed while {open} opened inside it is still open")]
    OpenCallsInside {
        /// The refused event.
        event: &'static str,
        /// What was being closed, e.g. `track 3` or `module 2`.
        scope: String,
        /// The open call, e.g. `operator 7`.
        open: String,
    },
    /// A pipeline/operator return while a track opened after its call is still open.
    #[error(
        "{event}: entity {entity} returns inside track {track}, which was opened after its call"
    )]
    CrossesTrack {
        /// The refused event.
        event: &'static str,
        /// The returning entity.
        entity: Id,
        /// The track opened after the entity's call.
        track: Id,
    },
    /// A top-level track-call without a key.
    #[error("{event}: a top-level track must be keyed (kind {kind} has no key)")]
    TopLevelNotKeyed {
        /// The refused event.
        event: &'static str,
        /// The kind of the track.
        kind: String,
    },
    /// A key that is empty or holds `|`, `:`, `#` or a control character.
    #[error(
        "{event}: invalid key {key:?} (keys are non-empty and hold none of '|', ':', '#' and no control character)"
    )]
    InvalidKey {
        /// The refused event.
        event: &'static str,
        /// The key.
        key: String,
    },
    /// A kind that is empty or holds `|`.
    #[error("{event}: invalid kind {kind:?} (kinds are non-empty and hold no '|')")]
    InvalidKind {
        /// The refused event.
        event: &'static str,
        /// The kind.
        kind: String,
    },
    /// A track-call whose signature names another kind than the call.
    #[error("{event}: signature kind {signature_kind} differs from track kind {kind}")]
    KindMismatch {
        /// The refused event.
        event: &'static str,
        /// The track-call's kind.
        kind: String,
        /// The signature's kind.
        signature_kind: String,
    },
    /// A path registered twice within one run.
    #[error("{event}: duplicate path {path} in module {module}")]
    DuplicatePath {
        /// The refused event.
        event: &'static str,
        /// The path.
        path: String,
        /// The run.
        module: ModuleId,
    },
    /// A track-call for an existing path with another id than the track there.
    #[error("{event}: path {path} belongs to track {expected}, found {found}")]
    TrackIdMismatch {
        /// The refused event.
        event: &'static str,
        /// The path.
        path: String,
        /// The id of the track at the path.
        expected: Id,
        /// The id the event named.
        found: Id,
    },
    /// A new track, entity or subscription with an id already used.
    #[error("{event}: id {id} is already in use")]
    IdInUse {
        /// The refused event.
        event: &'static str,
        /// The id.
        id: Id,
    },
    /// A second core entity returned directly inside one track scope.
    #[error(
        "{event}: track {track} already produced entity {first}, a second one ({second}) is not allowed"
    )]
    SecondEntity {
        /// The refused event.
        event: &'static str,
        /// The scope.
        track: Id,
        /// The entity it produced first.
        first: Id,
        /// The entity refused.
        second: Id,
    },
    /// A track id that is not in the store.
    #[error("{event}: unknown track {track}")]
    UnknownTrack {
        /// The refused event (or query).
        event: &'static str,
        /// The id.
        track: Id,
    },
    /// A subscription id that is not in the store.
    #[error("{event}: unknown subscription {subscription}")]
    UnknownSubscription {
        /// The refused event.
        event: &'static str,
        /// The id.
        subscription: Id,
    },
    /// A `subject-use` naming a track whose entity is not a pipeline, or a `subscribe-call`
    /// on a track that takes no subscription (a scope that produced no pipeline or operator
    /// and is not a run-time track).
    #[error("{event}: track {track} is not a pipeline track")]
    NotAPipelineTrack {
        /// The refused event.
        event: &'static str,
        /// The track.
        track: Id,
    },
    /// An unsubscribe-call for a subscription that is not active.
    #[error("{event}: subscription {subscription} is not active")]
    SubscriptionNotActive {
        /// The refused event.
        event: &'static str,
        /// The subscription.
        subscription: Id,
    },
    /// A swapped/reset update for a track with no pending registration from the module.
    #[error("{event}: track {track} has no pending registration from module {module}")]
    NoPending {
        /// The refused event.
        event: &'static str,
        /// The track.
        track: Id,
        /// The module named by the event.
        module: ModuleId,
    },
    /// A swapped update whose pending signature differs from the committed one.
    #[error("{event}: track {track} cannot be swapped: {reason}")]
    SignatureChanged {
        /// The refused event.
        event: &'static str,
        /// The track.
        track: Id,
        /// [`crate::signature_change`]'s text.
        reason: String,
    },
    /// A removed update for a track that the module registered (or that is newer).
    #[error("{event}: track {track} is not an orphan of module {module}")]
    NotOrphan {
        /// The refused event.
        event: &'static str,
        /// The track.
        track: Id,
        /// The module named by the event.
        module: ModuleId,
    },
    /// A removed update for a track that still has children.
    #[error("{event}: track {track} still has child {child}")]
    HasChildren {
        /// The refused event.
        event: &'static str,
        /// The track.
        track: Id,
        /// One remaining child.
        child: Id,
    },
    /// A removed update for a track with an active subscription.
    #[error("{event}: track {track} still has active subscription {subscription}")]
    ActiveSubscription {
        /// The refused event.
        event: &'static str,
        /// The track.
        track: Id,
        /// The active subscription.
        subscription: Id,
    },
    /// A track-call under a parent that already has `u32::MAX` unkeyed children in this run.
    #[error("{event}: track {parent} has too many children")]
    TooManyChildren {
        /// The refused event.
        event: &'static str,
        /// The parent.
        parent: Id,
    },
    /// A subject name that is empty or holds a control character.
    #[error(
        "{event}: invalid subject name {subject:?} (a subject name is non-empty and holds no control character)"
    )]
    InvalidSubject {
        /// The refused event.
        event: &'static str,
        /// The name.
        subject: String,
    },
    /// A `subject-use` naming a track the running module did not register.
    #[error("{event}: track {track} is not registered by the running module {module}")]
    TrackNotInRun {
        /// The refused event.
        event: &'static str,
        /// The track.
        track: Id,
        /// The running module.
        module: ModuleId,
    },
    /// A `subject-use` whose value type differs from the one the run already declared for
    /// the subject.
    #[error(
        "{event}: subject {subject:?} carries {declared} in module {module}, track {track} uses it with {found}"
    )]
    SubjectTypeMismatch {
        /// The refused event.
        event: &'static str,
        /// The subject.
        subject: String,
        /// The running module.
        module: ModuleId,
        /// The type the run declared first.
        declared: String,
        /// The track that named another type.
        track: Id,
        /// The other type.
        found: String,
    },
    /// An event that is not allowed while another call is open (a `module-call` inside an
    /// open `subscribe-call`, a pipeline or operator made inside one, a `track-update` of a
    /// run-time track while its subscription is being re-projected...).
    #[error("{event}: not allowed while {open} is open")]
    CallNotAllowed {
        /// The refused event.
        event: &'static str,
        /// The open call, e.g. `the subscribe-call of subscription 9`.
        open: String,
    },
    /// A `track-call` whose path is held by a track of another owner: a registration's track
    /// at a run-time track's path, a run-time track at a registration track's path, or at a
    /// path another live subscription's track holds.
    #[error("{event}: path {path} is held by track {track} of {owner}")]
    PathTaken {
        /// The refused event.
        event: &'static str,
        /// The path.
        path: String,
        /// The track holding it.
        track: Id,
        /// Its owner: `subscription 9` or `the registration`.
        owner: String,
    },
    /// A re-projection (`subscribe-call` of an existing subscription) naming another track.
    #[error("{event}: subscription {subscription} is on track {track}, not on track {found}")]
    SubscriptionTrackMismatch {
        /// The refused event.
        event: &'static str,
        /// The subscription.
        subscription: Id,
        /// Its track.
        track: Id,
        /// The track the event named.
        found: Id,
    },
    /// A re-projection while the current module is not newer than the one the subscription
    /// was last projected with.
    #[error(
        "{event}: subscription {subscription} was projected with module {code}, a re-projection needs a newer current module (current: {})",
        opt(.current)
    )]
    AlreadyProjected {
        /// The refused event.
        event: &'static str,
        /// The subscription.
        subscription: Id,
        /// The module it was last projected with.
        code: ModuleId,
        /// The current module.
        current: Option<ModuleId>,
    },
    /// A removed update for a track under which a live subscription still holds run-time
    /// tracks.
    #[error(
        "{event}: track {track} still holds run-time track {child} of subscription {subscription} (unsubscribe it first)"
    )]
    HoldsRunTimeTracks {
        /// The refused event.
        event: &'static str,
        /// The track.
        track: Id,
        /// One run-time track below it.
        child: Id,
        /// That track's subscription.
        subscription: Id,
    },
    /// A run-time track-call (`Recorder::inner_track_call`) with no `subscribe-call` open.
    #[error("{event}: no subscribe-call is open (run-time tracks are made inside one)")]
    NoSubscriptionOpen {
        /// The refused event.
        event: &'static str,
    },
    /// A track whose parent chain is broken (only a store edited by hand can have one).
    #[error("{event}: track {track} has no valid parent chain ({detail})")]
    BrokenTrack {
        /// The query.
        event: &'static str,
        /// The track.
        track: Id,
        /// What is wrong.
        detail: String,
    },
}

impl ApplyError {
    /// The name of the refused event (or query).
    pub fn event(&self) -> &'static str {
        match self {
            ApplyError::NoModuleOpen { event }
            | ApplyError::ModuleStillOpen { event, .. }
            | ApplyError::ModuleNotIncreasing { event, .. }
            | ApplyError::ModuleNotCurrent { event, .. }
            | ApplyError::ReturnWithoutCall { event, .. }
            | ApplyError::ReturnMismatch { event, .. }
            | ApplyError::WrongReturnKind { event, .. }
            | ApplyError::CallAlreadyOpen { event, .. }
            | ApplyError::OpenCallsInside { event, .. }
            | ApplyError::CrossesTrack { event, .. }
            | ApplyError::TopLevelNotKeyed { event, .. }
            | ApplyError::InvalidKey { event, .. }
            | ApplyError::InvalidKind { event, .. }
            | ApplyError::KindMismatch { event, .. }
            | ApplyError::DuplicatePath { event, .. }
            | ApplyError::TrackIdMismatch { event, .. }
            | ApplyError::IdInUse { event, .. }
            | ApplyError::SecondEntity { event, .. }
            | ApplyError::UnknownTrack { event, .. }
            | ApplyError::UnknownSubscription { event, .. }
            | ApplyError::NotAPipelineTrack { event, .. }
            | ApplyError::SubscriptionNotActive { event, .. }
            | ApplyError::NoPending { event, .. }
            | ApplyError::SignatureChanged { event, .. }
            | ApplyError::NotOrphan { event, .. }
            | ApplyError::HasChildren { event, .. }
            | ApplyError::ActiveSubscription { event, .. }
            | ApplyError::TooManyChildren { event, .. }
            | ApplyError::InvalidSubject { event, .. }
            | ApplyError::TrackNotInRun { event, .. }
            | ApplyError::SubjectTypeMismatch { event, .. }
            | ApplyError::CallNotAllowed { event, .. }
            | ApplyError::PathTaken { event, .. }
            | ApplyError::SubscriptionTrackMismatch { event, .. }
            | ApplyError::AlreadyProjected { event, .. }
            | ApplyError::HoldsRunTimeTracks { event, .. }
            | ApplyError::NoSubscriptionOpen { event }
            | ApplyError::BrokenTrack { event, .. } => event,
        }
    }
}

fn opt(value: &Option<ModuleId>) -> String {
    value.map_or_else(|| "none".to_owned(), |m| m.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_lowercase_without_final_period_and_names_the_event() {
        let errors = [
            ApplyError::NoModuleOpen {
                event: "track-call",
            },
            ApplyError::ModuleNotCurrent {
                event: "track-update",
                module: 2,
                current: None,
            },
            ApplyError::ReturnMismatch {
                event: "track-call-return",
                expected: 3,
                found: 4,
            },
            ApplyError::DuplicatePath {
                event: "track-call",
                path: "counter|0:map".into(),
                module: 1,
            },
        ];
        let texts = [
            "track-call: no module is open (call it between module-call and module-call-return)",
            "track-update: module 2 is not the current module (current: none)",
            "track-call-return: return for another id (expected 3, found 4)",
            "track-call: duplicate path counter|0:map in module 1",
        ];
        for (error, text) in errors.iter().zip(texts) {
            let shown = error.to_string();
            assert_eq!(shown, text);
            assert!(shown.starts_with(error.event()));
            assert!(!shown.ends_with('.'));
            assert_eq!(shown.chars().next().map(char::is_lowercase), Some(true));
        }
    }
}

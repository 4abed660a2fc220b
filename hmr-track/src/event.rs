//! The closed event vocabulary: paired `*-call` / `*-call-return` events, `subject-use` and
//! `track-update`.

use serde::{Deserialize, Serialize};

use crate::model::{Fingerprint, Id, ModuleId, Signature};

/// How a registration run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ModuleOutcome {
    /// The registration ran to its end.
    Ok,
    /// The registration failed (panic, build or ABI error...): roll the run back.
    Failed {
        /// Why, for people.
        reason: String,
    },
}

/// What the host did with a track after a run of a newer plugin version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum UpdateOutcome {
    /// Same path, same signature: the new code runs on the old state.
    Swapped,
    /// Same path, different signature: the state was rebuilt.
    Reset {
        /// Why (usually [`crate::signature_change`]'s text).
        reason: String,
    },
    /// The track was not registered again: it was disposed.
    Removed,
}

/// How a pipeline uses a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectRole {
    /// The pipeline sends its values to the subject (`.publish(name)`).
    Publish,
    /// The pipeline reads the subject (`subject::<T>(name)` is one of its sources).
    Subscribe,
}

impl std::fmt::Display for SubjectRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SubjectRole::Publish => "publish",
            SubjectRole::Subscribe => "subscribe",
        })
    }
}

/// One event folded into the [`crate::State`]. Serialized with a `"type"` tag holding the
/// kebab-case variant name: `{"type":"track-call","track":3,...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[allow(
    clippy::large_enum_variant,
    reason = "the spec fixes `signature: Signature` inline; events are applied one at a time, \
              boxing it would cost an allocation per track-call"
)]
pub enum Event {
    /// A run of a plugin version's registration starts.
    ModuleCall {
        /// The plugin version; greater than every earlier one.
        module: ModuleId,
        /// A label for people.
        label: String,
    },
    /// The run ends.
    ModuleCallReturn {
        /// The run that ends (the one open).
        module: ModuleId,
        /// How it ended.
        outcome: ModuleOutcome,
    },
    /// A track scope is entered (its parent is the open track on top of the stack).
    TrackCall {
        /// The id: the existing track's at the same path, else a fresh one
        /// (see [`crate::State::track_id_for`]).
        track: Id,
        /// The scope kind.
        kind: String,
        /// The explicit key (required at top level).
        key: Option<String>,
        /// The signature; `children` is ignored (the accumulator fills it).
        signature: Signature,
    },
    /// The track scope on top of the stack is left.
    TrackCallReturn {
        /// Must be the top track.
        track: Id,
    },
    /// A pipeline (observable) is being created.
    PipelineCall {
        /// A fresh id.
        entity: Id,
        /// The pipeline's name.
        name: String,
    },
    /// The pipeline creation returns.
    PipelineCallReturn {
        /// Must be the top open entity.
        entity: Id,
    },
    /// An operator is being created.
    OperatorCall {
        /// A fresh id.
        entity: Id,
        /// The operator kind.
        kind: String,
    },
    /// The operator creation returns.
    OperatorCallReturn {
        /// Must be the top open entity.
        entity: Id,
    },
    /// A subscription starts: to a pipeline track, or an inner one to a higher-order
    /// operator's track (or a run-time track). The `track-call`s until its return make its
    /// run-time tracks. Naming an active subscription (and its track) again, it is a
    /// re-projection of it with the current module's code.
    SubscribeCall {
        /// A fresh id (or an active subscription's, for a re-projection).
        subscription: Id,
        /// A pipeline track, an operator's track or a run-time track.
        track: Id,
    },
    /// The subscription is active (or its re-projection registered).
    SubscribeCallReturn {
        /// Must be the top open subscription call.
        subscription: Id,
    },
    /// An active subscription is being ended.
    UnsubscribeCall {
        /// An active subscription.
        subscription: Id,
    },
    /// The subscription is inactive: its run-time tracks leave the store, and so does an
    /// inner subscription.
    UnsubscribeCallReturn {
        /// Must be the top open subscription call.
        subscription: Id,
    },
    /// Inside a run: a pipeline track of the run publishes to or reads a subject (not a
    /// scope: a single event). The run's first use of a subject declares it, with its value
    /// type; every later use in the run must name the same type.
    SubjectUse {
        /// The subject's name.
        subject: String,
        /// A pipeline track registered by the running module (closed already).
        track: Id,
        /// Publisher or subscriber.
        role: SubjectRole,
        /// The type of the values.
        item: Fingerprint,
    },
    /// A track moved to a new module version (or was removed from it).
    TrackUpdate {
        /// The track.
        track: Id,
        /// The run (the current module) the track moves to.
        module: ModuleId,
        /// What happened.
        outcome: UpdateOutcome,
    },
}

impl Event {
    /// The serialized `"type"` of the event, e.g. `"track-call-return"`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::ModuleCall { .. } => "module-call",
            Event::ModuleCallReturn { .. } => "module-call-return",
            Event::TrackCall { .. } => "track-call",
            Event::TrackCallReturn { .. } => "track-call-return",
            Event::PipelineCall { .. } => "pipeline-call",
            Event::PipelineCallReturn { .. } => "pipeline-call-return",
            Event::OperatorCall { .. } => "operator-call",
            Event::OperatorCallReturn { .. } => "operator-call-return",
            Event::SubscribeCall { .. } => "subscribe-call",
            Event::SubscribeCallReturn { .. } => "subscribe-call-return",
            Event::UnsubscribeCall { .. } => "unsubscribe-call",
            Event::UnsubscribeCallReturn { .. } => "unsubscribe-call-return",
            Event::SubjectUse { .. } => "subject-use",
            Event::TrackUpdate { .. } => "track-update",
        }
    }

    /// True for the `*-call-return` events.
    pub fn is_return(&self) -> bool {
        self.name().ends_with("-return")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_tag_is_the_kebab_case_name() {
        let events = [
            Event::ModuleCall {
                module: 1,
                label: "v1".into(),
            },
            Event::ModuleCallReturn {
                module: 1,
                outcome: ModuleOutcome::Failed {
                    reason: "panic".into(),
                },
            },
            Event::TrackCall {
                track: 0,
                kind: "pipeline".into(),
                key: Some("counter".into()),
                signature: Signature::default(),
            },
            Event::TrackCallReturn { track: 0 },
            Event::PipelineCall {
                entity: 1,
                name: "counter".into(),
            },
            Event::PipelineCallReturn { entity: 1 },
            Event::OperatorCall {
                entity: 2,
                kind: "map".into(),
            },
            Event::OperatorCallReturn { entity: 2 },
            Event::SubscribeCall {
                subscription: 3,
                track: 0,
            },
            Event::SubscribeCallReturn { subscription: 3 },
            Event::UnsubscribeCall { subscription: 3 },
            Event::UnsubscribeCallReturn { subscription: 3 },
            Event::SubjectUse {
                subject: "counts".into(),
                track: 0,
                role: SubjectRole::Subscribe,
                item: Fingerprint {
                    name: "u64".into(),
                    size: 8,
                    align: 8,
                    hash: 1,
                },
            },
            Event::TrackUpdate {
                track: 0,
                module: 2,
                outcome: UpdateOutcome::Reset {
                    reason: "seed changed from 0 to 1".into(),
                },
            },
        ];
        for event in &events {
            let json = serde_json::to_value(event).unwrap();
            assert_eq!(json["type"], event.name(), "{json}");
            let back: Event = serde_json::from_value(json).unwrap();
            assert_eq!(&back, event);
            assert_eq!(event.is_return(), event.name().ends_with("-call-return"));
        }
    }

    #[test]
    fn json_shape_is_stable() {
        let json = serde_json::to_string(&Event::TrackUpdate {
            track: 4,
            module: 2,
            outcome: UpdateOutcome::Swapped,
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"type":"track-update","track":4,"module":2,"outcome":{"type":"swapped"}}"#
        );
        let json = serde_json::to_string(&Event::ModuleCallReturn {
            module: 1,
            outcome: ModuleOutcome::Ok,
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"type":"module-call-return","module":1,"outcome":{"type":"ok"}}"#
        );
        let json = serde_json::to_string(&Event::SubjectUse {
            subject: "counts".into(),
            track: 3,
            role: SubjectRole::Publish,
            item: Fingerprint {
                name: "u64".into(),
                size: 8,
                align: 8,
                hash: 9,
            },
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"type":"subject-use","subject":"counts","track":3,"role":"publish","item":{"name":"u64","size":8,"align":8,"hash":9}}"#
        );
    }
}

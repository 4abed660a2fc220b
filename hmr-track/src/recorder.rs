//! [`Recorder`]: a [`State`] plus the log of the events applied to it, with helpers that pick ids.

use serde::{Deserialize, Serialize};

use crate::accumulator::{Settlement, State};
use crate::error::ApplyError;
use crate::event::{Event, ModuleOutcome, SubjectRole, UpdateOutcome};
use crate::model::{Fingerprint, Id, ModuleId, Signature};

/// A state and the events that built it. Every helper emits events through [`Recorder::record`],
/// so `State::replay(&recorder.log)` always rebuilds `recorder.state` (unless the log is off).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorder {
    /// The state after every event of `log`.
    pub state: State,
    /// The events applied, in order (refused events are not logged).
    pub log: Vec<Event>,
    /// When set, events are applied but not kept (see [`Recorder::without_log`]).
    #[serde(default)]
    pub log_disabled: bool,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// An empty recorder that keeps no log: for a long-running host, where a log of every
    /// registration would grow with every reload.
    pub fn without_log() -> Recorder {
        Recorder {
            log_disabled: true,
            ..Recorder::default()
        }
    }

    /// Applies `event`; logs it only if it was accepted (and logging is on).
    pub fn record(&mut self, event: Event) -> Result<(), ApplyError> {
        self.state.apply(&event)?;
        if !self.log_disabled {
            self.log.push(event);
        }
        Ok(())
    }

    /// The module id the next `module_call` takes: the last module + 1 (1 for the first).
    pub fn next_module(&self) -> ModuleId {
        self.state
            .store
            .modules
            .last_key_value()
            .map_or(1, |(&last, _)| last + 1)
    }

    /// `module-call` for the next module; returns its id.
    pub fn module_call(&mut self, label: &str) -> Result<ModuleId, ApplyError> {
        let module = self.next_module();
        self.record(Event::ModuleCall {
            module,
            label: label.to_owned(),
        })?;
        Ok(module)
    }

    /// `module-call-return`.
    pub fn module_call_return(
        &mut self,
        module: ModuleId,
        outcome: ModuleOutcome,
    ) -> Result<(), ApplyError> {
        self.record(Event::ModuleCallReturn { module, outcome })
    }

    /// `track-call` with the id [`State::track_id_for`] picks; returns it.
    pub fn track_call(
        &mut self,
        kind: &str,
        key: Option<&str>,
        signature: Signature,
    ) -> Result<Id, ApplyError> {
        self.track_call_hinted(kind, key, signature, None)
    }

    /// [`Recorder::track_call`] for a caller that expects the track `hint` (the one at the
    /// same place in its last run): when the hint is right, the path is neither built nor
    /// looked up (see `State::track_call_auto`). A wrong hint is ignored; the outcome is
    /// always [`Recorder::track_call`]'s.
    pub fn track_call_hinted(
        &mut self,
        kind: &str,
        key: Option<&str>,
        signature: Signature,
        hint: Option<Id>,
    ) -> Result<Id, ApplyError> {
        if self.log_disabled {
            // The same event, applied without being built: the path is planned once.
            return self.state.track_call_auto(kind, key, signature, hint);
        }
        let track = self.state.track_id_for(kind, key)?;
        self.record(Event::TrackCall {
            track,
            kind: kind.to_owned(),
            key: key.map(str::to_owned),
            signature,
        })?;
        Ok(track)
    }

    /// `track-call-return`.
    pub fn track_call_return(&mut self, track: Id) -> Result<(), ApplyError> {
        self.record(Event::TrackCallReturn { track })
    }

    /// `pipeline-call` with a fresh id; returns it.
    pub fn pipeline_call(&mut self, name: &str) -> Result<Id, ApplyError> {
        let entity = self.state.fresh_id();
        self.record(Event::PipelineCall {
            entity,
            name: name.to_owned(),
        })?;
        Ok(entity)
    }

    /// `pipeline-call-return`.
    pub fn pipeline_call_return(&mut self, entity: Id) -> Result<(), ApplyError> {
        self.record(Event::PipelineCallReturn { entity })
    }

    /// `operator-call` with a fresh id; returns it.
    pub fn operator_call(&mut self, kind: &str) -> Result<Id, ApplyError> {
        let entity = self.state.fresh_id();
        self.record(Event::OperatorCall {
            entity,
            kind: kind.to_owned(),
        })?;
        Ok(entity)
    }

    /// `operator-call-return`.
    pub fn operator_call_return(&mut self, entity: Id) -> Result<(), ApplyError> {
        self.record(Event::OperatorCallReturn { entity })
    }

    /// `subscribe-call` then `subscribe-call-return` with a fresh id; returns it.
    pub fn subscribe(&mut self, track: Id) -> Result<Id, ApplyError> {
        let subscription = self.state.fresh_id();
        self.record(Event::SubscribeCall {
            subscription,
            track,
        })?;
        self.record(Event::SubscribeCallReturn { subscription })?;
        Ok(subscription)
    }

    /// `subscribe-call` on `track` with a fresh id, left open: the run-time tracks the
    /// subscription makes follow ([`Recorder::inner_track_call`]), then
    /// [`Recorder::subscribe_call_return`]. For an inner subscription, `track` is the
    /// higher-order operator's; returns the subscription's id.
    pub fn subscribe_at(&mut self, track: Id) -> Result<Id, ApplyError> {
        let subscription = self.state.fresh_id();
        self.record(Event::SubscribeCall {
            subscription,
            track,
        })?;
        Ok(subscription)
    }

    /// `subscribe-call-return`: the subscription (or its re-projection) is made.
    pub fn subscribe_call_return(&mut self, subscription: Id) -> Result<(), ApplyError> {
        self.record(Event::SubscribeCallReturn { subscription })
    }

    /// `subscribe-call` of the active `subscription` again, left open: a re-projection with
    /// the current module's code. Its [`Recorder::inner_track_call`]s register the
    /// subscription's tracks again or add new ones; after
    /// [`Recorder::subscribe_call_return`], `State::projection_updates` and
    /// `State::projection_orphans` list what to `swap` / `reset` and `remove`.
    pub fn reproject(&mut self, subscription: Id) -> Result<(), ApplyError> {
        let track = self
            .state
            .store
            .subscriptions
            .get(&subscription)
            .map_or(Id::MAX, |s| s.track);
        self.record(Event::SubscribeCall {
            subscription,
            track,
        })
    }

    /// A `track-call` inside the open `subscribe-call` (a run-time track): the parent is the
    /// open run-time track, or the subscription's own track at first; the id is the one its
    /// path picks, as for [`Recorder::track_call`]. Refused when no `subscribe-call` is open
    /// (a registration's track-call is [`Recorder::track_call`]). Returns the id.
    pub fn inner_track_call(
        &mut self,
        kind: &str,
        key: Option<&str>,
        signature: Signature,
    ) -> Result<Id, ApplyError> {
        if self.state.open_subscribe().is_none() {
            return Err(ApplyError::NoSubscriptionOpen {
                event: "track-call",
            });
        }
        self.track_call_hinted(kind, key, signature, None)
    }

    /// `unsubscribe-call` then `unsubscribe-call-return`: the subscription's run-time tracks
    /// leave the store (and an inner subscription itself).
    pub fn unsubscribe(&mut self, subscription: Id) -> Result<(), ApplyError> {
        self.record(Event::UnsubscribeCall { subscription })?;
        self.record(Event::UnsubscribeCallReturn { subscription })
    }

    /// `subject-use`: the pipeline track `track` of the running module publishes to or reads
    /// `subject`, whose values are `item`s.
    pub fn subject_use(
        &mut self,
        subject: &str,
        track: Id,
        role: SubjectRole,
        item: Fingerprint,
    ) -> Result<(), ApplyError> {
        self.record(Event::SubjectUse {
            subject: subject.to_owned(),
            track,
            role,
            item,
        })
    }

    /// Settles the run `module` in one pass ([`State::settle_run`]): the same state as a
    /// `track-update` `swapped` or `reset` for each track the run registered again, decided
    /// once; logged as those events (in id order).
    pub fn settle_run(&mut self, module: ModuleId) -> Result<Settlement, ApplyError> {
        let settlement = self.state.settle_run(module)?;
        if !self.log_disabled {
            self.log.extend(settlement.updates());
        }
        Ok(settlement)
    }

    /// `track-update`.
    pub fn update(
        &mut self,
        track: Id,
        module: ModuleId,
        outcome: UpdateOutcome,
    ) -> Result<(), ApplyError> {
        self.record(Event::TrackUpdate {
            track,
            module,
            outcome,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UpdateOutcome;

    /// Two runs of a registration (pipeline, operators, a keyed scope), the second swapping
    /// every track; then a duplicate path that must be refused.
    fn program(rec: &mut Recorder) -> Vec<Result<(), ApplyError>> {
        let mut results = Vec::new();
        for _ in 0..2 {
            let mut run = || -> Result<(), ApplyError> {
                let module = rec.module_call("lib")?;
                let p = rec.track_call("pipeline", Some("p"), Signature::default())?;
                for kind in ["map", "filter"] {
                    let t = rec.track_call(kind, None, Signature::default())?;
                    rec.track_call_return(t)?;
                }
                let scope = rec.track_call("scope", Some("k"), Signature::default())?;
                let inner = rec.track_call("scan", None, Signature::default())?;
                rec.track_call_return(inner)?;
                rec.track_call_return(scope)?;
                rec.track_call_return(p)?;
                rec.module_call_return(module, ModuleOutcome::Ok)?;
                for t in rec.state.pending_updates(module) {
                    rec.update(t, module, UpdateOutcome::Swapped)?;
                }
                Ok(())
            };
            results.push(run());
        }
        let module = rec.module_call("lib").expect("a third run");
        let p = rec.track_call("pipeline", Some("p"), Signature::default());
        results.push(p.and_then(|p| rec.track_call_return(p)));
        results.push(
            rec.track_call("pipeline", Some("p"), Signature::default())
                .map(drop),
        );
        let _ = module;
        results
    }

    #[test]
    fn the_fast_track_call_without_log_builds_the_same_state() {
        let mut logged = Recorder::new();
        let mut fast = Recorder::without_log();
        let a = program(&mut logged);
        let b = program(&mut fast);
        assert_eq!(a, b);
        assert!(a[..3].iter().all(Result::is_ok), "{a:?}");
        assert!(a[3].is_err(), "a duplicate path is refused: {a:?}");
        assert_eq!(logged.state, fast.state);
        assert!(fast.log.is_empty());
        assert_eq!(State::replay(&logged.log).as_ref(), Ok(&logged.state));
    }
}

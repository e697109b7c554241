//! The deployment lifecycle as a pure transition function.
//!
//! ```text
//! awaiting_approval --approve (policy satisfied)--> approved --> queued --> running --> applied
//!         |  \--reject--> rejected                                   \--> failed --retry--> queued
//!         |--deadline passes--> expired                                        \--rollback--> rolled_back
//!         \--cancel--> cancelled            applied --rollback--> rolling_back --> rolled_back
//! emergency override: awaiting_approval --force + reason--> approved (flag emergency; review owed)
//! rolled_back --retry | amend--> awaiting_approval    applied --amend (first environment)--> rolling_back
//! ```
//!
//! No dead ends: `ways_on` names, for every state, what leads on and who brings it about.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    AwaitingApproval,
    Approved,
    Queued,
    Running,
    Applied,
    Failed,
    RollingBack,
    RolledBack,
    Rejected,
    Expired,
    Cancelled,
}

/// Something that happens to a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeploymentEvent {
    /// The approvals collected so far satisfy the policy.
    PolicySatisfied,
    /// An emergency override approves without the full set of approvals.
    EmergencyOverride,
    Reject,
    /// The approval deadline passed.
    Expire,
    Cancel,
    /// Approved deployments are released to the worker (automatically or by `migrate`).
    Release,
    /// The worker starts applying it.
    Start,
    Succeed,
    Fail,
    Retry,
    RequestRollback,
    RollbackSucceeded,
    RollbackFailed,
    /// The migration's scripts changed: every approval is void and approval starts again.
    Amend,
    /// A worker found a deployment marked running whose outcome the target does not show
    /// (the daemon stopped mid-apply): it goes back to the queue.
    Requeue,
    /// A lead records that the migration already ran on the database outside Sluice (adopting
    /// an existing project): applied without running.
    Baseline,
    /// The target was restored from a backup or reset: its history is the truth. What it no
    /// longer holds goes back to the queue, approved (applied again only by `migrate`); what
    /// it holds that Sluice had rolled back is applied again.
    Restore,
}

/// A change of state and what must happen with it, performed by the one commit path in the
/// same store transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: DeploymentState,
    pub to: DeploymentState,
    pub event: DeploymentEvent,
    pub effects: Vec<Effect>,
}

impl Transition {
    pub fn has(&self, effect: Effect) -> bool {
        self.effects.contains(&effect)
    }
}

/// An effect of a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Every approval of the deployment is void (they were given to something else: another
    /// version of the scripts, another schema, a version since undone).
    VoidApprovals,
    /// An emergency override's standing goes with the approvals: re-approved, the deployment
    /// respects freeze windows and the promotion order like any other.
    ClearEmergency,
    /// A new approval deadline from the policy, counted from now.
    NewDeadline,
    /// The error of the last attempt no longer describes the deployment.
    ClearError,
    /// The version applied is rolled back so that the amended one can be applied: once the
    /// rollback succeeds the deployment goes back to approval.
    ReapplyAfterRollback,
}

/// Who brings a way on about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WayOnBy {
    /// The holders of the roles the policy still needs.
    Approvers,
    /// A data_ops_lead or admin who is not an author (an emergency override).
    Lead,
    /// An operator of the environment (developers too where it approves itself).
    Operator,
    /// The migration's authors, or an operator.
    AuthorOrOperator,
    /// The daemon itself (the worker, the scheduler).
    System,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} a deployment that is {state}")]
pub struct InvalidTransition {
    pub state: &'static str,
    pub event: &'static str,
}

impl DeploymentEvent {
    pub fn verb(self) -> &'static str {
        match self {
            DeploymentEvent::PolicySatisfied => "approve",
            DeploymentEvent::EmergencyOverride => "force",
            DeploymentEvent::Reject => "reject",
            DeploymentEvent::Expire => "expire",
            DeploymentEvent::Cancel => "cancel",
            DeploymentEvent::Baseline => "baseline",
            DeploymentEvent::Restore => "reconcile after a restore",
            DeploymentEvent::Release => "release",
            DeploymentEvent::Start => "start",
            DeploymentEvent::Succeed => "complete",
            DeploymentEvent::Fail => "fail",
            DeploymentEvent::Retry => "retry",
            DeploymentEvent::RequestRollback => "roll back",
            DeploymentEvent::RollbackSucceeded => "complete the rollback of",
            DeploymentEvent::RollbackFailed => "fail the rollback of",
            DeploymentEvent::Requeue => "requeue",
            DeploymentEvent::Amend => "amend",
        }
    }
}

impl DeploymentState {
    pub const ALL: [DeploymentState; 11] = [
        DeploymentState::AwaitingApproval,
        DeploymentState::Approved,
        DeploymentState::Queued,
        DeploymentState::Running,
        DeploymentState::Applied,
        DeploymentState::Failed,
        DeploymentState::RollingBack,
        DeploymentState::RolledBack,
        DeploymentState::Rejected,
        DeploymentState::Expired,
        DeploymentState::Cancelled,
    ];

    /// The states that hold an environment's queue (everything not applied or finished).
    pub const OPEN: [DeploymentState; 6] = [
        DeploymentState::AwaitingApproval,
        DeploymentState::Approved,
        DeploymentState::Queued,
        DeploymentState::Running,
        DeploymentState::Failed,
        DeploymentState::RollingBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::AwaitingApproval => "awaiting_approval",
            DeploymentState::Approved => "approved",
            DeploymentState::Queued => "queued",
            DeploymentState::Running => "running",
            DeploymentState::Applied => "applied",
            DeploymentState::Failed => "failed",
            DeploymentState::RollingBack => "rolling_back",
            DeploymentState::RolledBack => "rolled_back",
            DeploymentState::Rejected => "rejected",
            DeploymentState::Expired => "expired",
            DeploymentState::Cancelled => "cancelled",
        }
    }

    /// A terminal state absorbs every event: the deployment has ended (rejected, expired,
    /// cancelled) and nothing leads on from it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeploymentState::Rejected | DeploymentState::Expired | DeploymentState::Cancelled
        )
    }

    /// Whether a later migration in the same environment must wait for this one. Applied,
    /// rolled back and terminal deployments are out of the way; everything else holds the
    /// queue in id order. (A rolled-back deployment is not terminal: it may be retried or its
    /// migration amended, and then it holds the queue again.)
    pub fn holds_queue(self) -> bool {
        !(self.is_terminal()
            || self == DeploymentState::Applied
            || self == DeploymentState::RolledBack)
    }

    /// The ways on from this state: the events that may leave it, each with who brings it
    /// about. Empty exactly for the terminal states (the deployment has ended) and `applied`
    /// (it is done; a rollback is a new decision, not a way on). No dead ends: every other
    /// state names at least one way on that a person can take, so nothing waits for ever
    /// on the system alone. The property tests check the list against `on`.
    pub fn ways_on(self) -> &'static [(DeploymentEvent, WayOnBy)] {
        use DeploymentEvent as E;
        use WayOnBy as B;
        match self {
            DeploymentState::AwaitingApproval => &[
                (E::PolicySatisfied, B::Approvers),
                (E::EmergencyOverride, B::Lead),
                (E::Reject, B::Approvers),
                (E::Cancel, B::AuthorOrOperator),
                (E::Amend, B::AuthorOrOperator),
                (E::Expire, B::System),
            ],
            DeploymentState::Approved => &[
                (E::Release, B::Operator),
                (E::Reject, B::Approvers),
                (E::Cancel, B::AuthorOrOperator),
                (E::Amend, B::AuthorOrOperator),
            ],
            DeploymentState::Queued => &[
                (E::Start, B::System),
                (E::Cancel, B::AuthorOrOperator),
                (E::Amend, B::AuthorOrOperator),
            ],
            DeploymentState::Running => &[
                (E::Succeed, B::System),
                (E::Fail, B::System),
                (E::Requeue, B::System),
            ],
            DeploymentState::Failed => &[
                (E::Retry, B::Operator),
                (E::RequestRollback, B::Operator),
                (E::Cancel, B::AuthorOrOperator),
                (E::Amend, B::AuthorOrOperator),
            ],
            DeploymentState::RollingBack => &[
                (E::RollbackSucceeded, B::System),
                (E::RollbackFailed, B::System),
            ],
            DeploymentState::RolledBack => {
                &[(E::Retry, B::Operator), (E::Amend, B::AuthorOrOperator)]
            }
            DeploymentState::Applied
            | DeploymentState::Rejected
            | DeploymentState::Expired
            | DeploymentState::Cancelled => &[],
        }
    }

    /// The transition with its effects: what the one commit path must do besides writing the
    /// new state. Every cause that sends a deployment back to approval voids its approvals
    /// and its emergency standing here, in one place (amend, drift, a retry after a rollback).
    pub fn transition(self, event: DeploymentEvent) -> Result<Transition, InvalidTransition> {
        let to = self.on(event)?;
        let mut effects = Vec::new();
        let reopens = to == DeploymentState::AwaitingApproval;
        let undoes_for_amend = self == DeploymentState::Applied && event == DeploymentEvent::Amend;
        if reopens || undoes_for_amend {
            effects.push(Effect::VoidApprovals);
            effects.push(Effect::ClearEmergency);
        }
        if reopens {
            effects.push(Effect::NewDeadline);
        }
        if reopens
            || matches!(
                event,
                DeploymentEvent::Retry | DeploymentEvent::RequestRollback
            )
        {
            effects.push(Effect::ClearError);
        }
        if undoes_for_amend {
            effects.push(Effect::ReapplyAfterRollback);
        }
        Ok(Transition {
            from: self,
            to,
            event,
            effects,
        })
    }

    /// The transition function. Every rule about which event may happen in which state is here.
    pub fn on(self, event: DeploymentEvent) -> Result<DeploymentState, InvalidTransition> {
        use DeploymentEvent as E;
        use DeploymentState as S;
        let next = match (self, event) {
            (S::AwaitingApproval, E::PolicySatisfied | E::EmergencyOverride) => S::Approved,
            (S::AwaitingApproval, E::Reject) => S::Rejected,
            (S::AwaitingApproval, E::Expire) => S::Expired,
            (S::AwaitingApproval | S::Approved | S::Queued | S::Failed, E::Cancel) => S::Cancelled,
            (S::Approved, E::Reject) => S::Rejected,
            (S::Approved, E::Release) => S::Queued,
            (S::Queued, E::Start) => S::Running,
            (S::Running, E::Succeed) => S::Applied,
            (S::Running, E::Fail) => S::Failed,
            (S::Running, E::Requeue) => S::Queued,
            (S::Failed, E::Retry) => S::Queued,
            // A cancelled deployment may be partly applied (a script run statement by
            // statement that failed part-way): the service decides whether it is.
            (S::Applied | S::Failed | S::Cancelled, E::RequestRollback) => S::RollingBack,
            (S::RollingBack, E::RollbackSucceeded) => S::RolledBack,
            (S::RollingBack, E::RollbackFailed) => S::Failed,
            (S::RollingBack, E::Requeue) => S::RollingBack,
            (S::AwaitingApproval | S::Approved | S::Queued, E::Baseline) => S::Applied,
            (S::Applied, E::Restore) => S::Approved,
            (S::RolledBack, E::Restore) => S::Applied,
            // Rolled back is not an end: the deployment may be applied again, after the
            // approvals the matrix demands for its environment (given again: those before the
            // rollback were spent on the version that was undone).
            (S::RolledBack, E::Retry) => S::AwaitingApproval,
            (
                S::AwaitingApproval | S::Approved | S::Queued | S::Failed | S::RolledBack,
                E::Amend,
            ) => S::AwaitingApproval,
            // The old version of a migration applied in the first environment is rolled back
            // (by its own down script) before the amended one is applied there.
            (S::Applied, E::Amend) => S::RollingBack,
            (state, event) => {
                return Err(InvalidTransition {
                    state: state.as_str(),
                    event: event.verb(),
                });
            }
        };
        Ok(next)
    }
}

impl fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeploymentState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeploymentState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown deployment state \"{s}\""))
    }
}

/// What the worker last did to a deployment on its target: applied its script, or ran its
/// rollback. A failure means "the apply failed" or "the rollback failed" by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LastAction {
    Apply,
    Rollback,
}

impl LastAction {
    pub const ALL: [LastAction; 2] = [LastAction::Apply, LastAction::Rollback];

    /// How the store spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LastAction::Apply => "apply",
            LastAction::Rollback => "rollback",
        }
    }
}

impl fmt::Display for LastAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LastAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LastAction::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown last action \"{s}\""))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn last_action_round_trips_and_refuses_unknown_words() {
        for a in LastAction::ALL {
            assert_eq!(a.as_str().parse::<LastAction>(), Ok(a));
        }
        assert!("Apply".parse::<LastAction>().is_err());
        assert!("".parse::<LastAction>().is_err());
    }

    use super::*;
    use DeploymentEvent as E;
    use DeploymentState as S;

    const EVENTS: [DeploymentEvent; 17] = [
        E::Restore,
        E::Baseline,
        E::Amend,
        E::PolicySatisfied,
        E::EmergencyOverride,
        E::Reject,
        E::Expire,
        E::Cancel,
        E::Release,
        E::Start,
        E::Succeed,
        E::Fail,
        E::Retry,
        E::RequestRollback,
        E::RollbackSucceeded,
        E::RollbackFailed,
        E::Requeue,
    ];

    #[test]
    fn happy_path_and_rollback() {
        let mut s = S::AwaitingApproval;
        for e in [
            E::PolicySatisfied,
            E::Release,
            E::Start,
            E::Succeed,
            E::RequestRollback,
            E::RollbackSucceeded,
        ] {
            s = s.on(e).unwrap();
        }
        assert_eq!(s, S::RolledBack);
    }

    #[test]
    fn failure_halts_until_retry() {
        let s = S::Queued.on(E::Start).unwrap().on(E::Fail).unwrap();
        assert_eq!(s, S::Failed);
        assert!(s.holds_queue());
        assert!(s.on(E::Start).is_err());
        assert_eq!(s.on(E::Retry).unwrap(), S::Queued);
        assert_eq!(s.on(E::Cancel).unwrap(), S::Cancelled);
    }

    #[test]
    fn open_states_are_exactly_those_holding_the_queue() {
        for state in DeploymentState::ALL {
            assert_eq!(
                DeploymentState::OPEN.contains(&state),
                state.holds_queue(),
                "{state}"
            );
        }
    }

    #[test]
    fn every_way_on_is_a_transition_the_machine_takes() {
        for state in DeploymentState::ALL {
            for (event, _) in state.ways_on() {
                assert!(state.on(*event).is_ok(), "{state} lists {event:?}");
            }
        }
    }

    #[test]
    fn only_ended_states_have_no_way_on_and_every_waiting_one_has_a_persons() {
        for state in DeploymentState::ALL {
            let ended = state.is_terminal() || state == S::Applied;
            assert_eq!(state.ways_on().is_empty(), ended, "{state}");
            // Running and rolling back are the worker's to finish (a crash requeues them);
            // every other open state can be moved on by a person.
            if !ended && !matches!(state, S::Running | S::RollingBack) {
                assert!(
                    state.ways_on().iter().any(|(_, by)| *by != WayOnBy::System),
                    "{state} waits on the system alone"
                );
            }
        }
    }

    #[test]
    fn a_rolled_back_deployment_is_retried_or_amended_back_to_approval() {
        assert_eq!(S::RolledBack.on(E::Retry).unwrap(), S::AwaitingApproval);
        assert_eq!(S::RolledBack.on(E::Amend).unwrap(), S::AwaitingApproval);
        assert!(!S::RolledBack.holds_queue());
        let applied_amended = S::Applied.transition(E::Amend).unwrap();
        assert_eq!(applied_amended.to, S::RollingBack);
        assert!(applied_amended.has(Effect::ReapplyAfterRollback));
        assert!(applied_amended.has(Effect::VoidApprovals));
    }

    #[test]
    fn error_message_names_state_and_event() {
        let err = S::Applied.on(E::Cancel).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot cancel a deployment that is applied"
        );
    }

    proptest::proptest! {
        /// Whatever happens, a deployment is either ended or has a way on; and every
        /// transition back to approval voids the approvals and the emergency standing with it
        /// (so no approval survives an amendment, a drift or a retry after a rollback).
        #[test]
        fn no_reachable_state_without_a_way_on(
            events in proptest::collection::vec(0usize..EVENTS.len(), 0..60)
        ) {
            let mut state = S::AwaitingApproval;
            for index in events {
                let Ok(transition) = state.transition(EVENTS[index]) else { continue };
                if transition.to == S::AwaitingApproval {
                    proptest::prop_assert!(transition.has(Effect::VoidApprovals));
                    proptest::prop_assert!(transition.has(Effect::ClearEmergency));
                    proptest::prop_assert!(transition.has(Effect::NewDeadline));
                }
                state = transition.to;
                let ended = state.is_terminal() || state == S::Applied;
                proptest::prop_assert!(ended || !state.ways_on().is_empty(), "{} is a dead end", state);
            }
        }

        /// A terminal state absorbs every event: whatever happens afterwards, it stays put.
        /// The one exception: a cancelled deployment may be rolled back (one that ran
        /// statement by statement may be partly applied; the service checks that it is).
        #[test]
        fn terminal_states_absorb_every_event(
            events in proptest::collection::vec(0usize..EVENTS.len(), 0..40)
        ) {
            let mut state = S::AwaitingApproval;
            let mut reached_terminal: Option<S> = None;
            for index in events {
                if state == S::Cancelled && EVENTS[index] == E::RequestRollback {
                    continue;
                }
                // A restore makes the store follow the target's history, which a backup put
                // back as it was (tested with the service).
                if EVENTS[index] == E::Restore {
                    continue;
                }
                if let Ok(next) = state.on(EVENTS[index]) {
                    state = next;
                }
                if let Some(terminal) = reached_terminal {
                    proptest::prop_assert_eq!(state, terminal);
                } else if state.is_terminal() {
                    reached_terminal = Some(state);
                }
            }
        }

        /// Nothing reaches `applied` without passing through `running`, and nothing runs without
        /// having been approved (normally or by an emergency override).
        #[test]
        fn applied_only_after_approval_and_running(
            events in proptest::collection::vec(0usize..EVENTS.len(), 0..40)
        ) {
            let mut state = S::AwaitingApproval;
            let mut approved = false;
            let mut ran = false;
            for index in events {
                // Rolling back a cancelled deployment is for one that ran (so was approved)
                // and stopped part-way: the service refuses it for any other (tested there).
                if state == S::Cancelled && EVENTS[index] == E::RequestRollback {
                    continue;
                }
                // A baseline records what ran outside Sluice: a lead's statement, audited.
                if EVENTS[index] == E::Baseline {
                    continue;
                }
                let Ok(next) = state.on(EVENTS[index]) else { continue };
                if next == S::Approved { approved = true; }
                if next == S::Running { proptest::prop_assert!(approved); ran = true; }
                if next == S::Applied { proptest::prop_assert!(ran); }
                state = next;
            }
        }
    }
}

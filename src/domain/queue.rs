//! The one queue planner: which deployments of an environment may start now, and why each of
//! the others waits. Environment status and the worker both ask it, so that what status says
//! and what the worker does cannot drift apart. Pure.
//!
//! Rules: deployments start in id order; a deployment that is merely waiting (awaiting
//! approval, approved but not released, or queued but blocked) holds every later one, except
//! an emergency override, which may go ahead of merely waiting deployments it does not depend
//! on (it is then recorded as applied out of order). A failed, running or rolling-back
//! deployment halts the queue for everyone, emergencies included.

use super::{Blocker, DeploymentState, StartFacts, start_blocker};
use std::collections::HashSet;

/// What the planner needs to know of one open deployment.
#[derive(Debug, Clone)]
pub struct QueueEntry<'a> {
    pub migration_id: &'a str,
    pub state: DeploymentState,
    pub emergency: bool,
    /// Each dependency with its deployment's state in this environment (`None`: it has none
    /// here).
    pub dependencies: Vec<(&'a str, Option<DeploymentState>)>,
    /// The previous environment of the promotion order and this migration's state there.
    pub previous_environment: Option<(&'a str, Option<DeploymentState>)>,
}

/// The planner's answer for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Queued and free to start now.
    pub start: bool,
    /// Why it does not start (queued or approved entries only).
    pub blocked_by: Option<String>,
    /// The same, as a fact: what it waits for.
    pub blocker: Option<Blocker>,
    /// Starts ahead of earlier deployments that are waiting (an emergency override).
    pub out_of_order: bool,
    /// The earlier deployments it goes ahead of.
    pub ahead_of: Vec<String>,
}

/// Plans an environment's open deployments, given in id order. `frozen` is the freeze window
/// in force and its end, if any.
pub fn plan(entries: &[QueueEntry<'_>], frozen: Option<(String, String)>) -> Vec<Planned> {
    let mut planned = Vec::with_capacity(entries.len());
    // The first earlier deployment that halts everything after it, and those merely waiting.
    let mut halting: Option<usize> = None;
    let mut waiting: Vec<usize> = Vec::new();
    let mut starting: HashSet<&str> = HashSet::new();
    for (index, entry) in entries.iter().enumerate() {
        if !entry.state.holds_queue() {
            planned.push(Planned {
                start: false,
                blocked_by: None,
                blocker: None,
                out_of_order: false,
                ahead_of: Vec::new(),
            });
            continue;
        }
        let may_pass_waiting = entry.emergency && halting.is_none();
        let earlier = halting
            .or(if may_pass_waiting {
                None
            } else {
                waiting.first().copied()
            })
            .map(|i| (entries[i].migration_id, entries[i].state));
        let mut blocker = None;
        if matches!(
            entry.state,
            DeploymentState::Queued | DeploymentState::Approved
        ) {
            let unapplied = entry
                .dependencies
                .iter()
                .find(|(dependency, state)| {
                    !starting.contains(dependency) && *state != Some(DeploymentState::Applied)
                })
                .map(|(dependency, state)| (*dependency, *state));
            blocker = match unapplied {
                Some((dependency, None)) => Some(Blocker::Dependency {
                    migration_id: dependency.to_owned(),
                    state: None,
                }),
                Some((dependency, Some(state))) => start_blocker(&StartFacts {
                    frozen: None,
                    earlier_unfinished: None,
                    unapplied_dependency: Some((dependency, state)),
                    previous_environment: None,
                    emergency: entry.emergency,
                }),
                None => start_blocker(&StartFacts {
                    frozen: frozen.clone(),
                    earlier_unfinished: earlier,
                    unapplied_dependency: None,
                    previous_environment: entry.previous_environment,
                    emergency: entry.emergency,
                }),
            };
            // An earlier deployment in the way comes first in what status says.
            if let Some((id, state)) = earlier
                && blocker.is_some()
            {
                blocker = Some(Blocker::Earlier {
                    migration_id: id.to_owned(),
                    state,
                });
            }
        }
        let blocked_by = blocker.as_ref().map(ToString::to_string);
        let start = entry.state == DeploymentState::Queued && blocker.is_none();
        if start {
            starting.insert(entry.migration_id);
            let ahead_of: Vec<String> = waiting
                .iter()
                .map(|&i| entries[i].migration_id.to_owned())
                .collect();
            planned.push(Planned {
                start,
                blocked_by,
                blocker,
                out_of_order: !ahead_of.is_empty(),
                ahead_of,
            });
            continue;
        }
        match entry.state {
            DeploymentState::Failed | DeploymentState::Running | DeploymentState::RollingBack => {
                halting.get_or_insert(index);
            }
            _ => waiting.push(index),
        }
        planned.push(Planned {
            start,
            blocked_by,
            blocker,
            out_of_order: false,
            ahead_of: Vec::new(),
        });
    }
    planned
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeploymentState as S;

    fn entry(id: &str, state: DeploymentState, emergency: bool) -> QueueEntry<'_> {
        QueueEntry {
            migration_id: id,
            state,
            emergency,
            dependencies: Vec::new(),
            previous_environment: Some(("staging", Some(S::Applied))),
        }
    }

    fn freeze() -> Option<(String, String)> {
        Some(("weekend".into(), "2026-11-30T00:00:00Z".into()))
    }

    #[test]
    fn id_order_and_a_waiting_deployment_holds_the_rest() {
        let entries = [
            entry("001", S::Queued, false),
            entry("002", S::AwaitingApproval, false),
            entry("003", S::Queued, false),
        ];
        let plan = plan(&entries, None);
        assert!(plan[0].start);
        assert!(!plan[2].start);
        assert_eq!(
            plan[2].blocked_by.as_deref(),
            Some("waits for 002 (awaiting_approval) which comes first in this environment")
        );
    }

    #[test]
    fn each_wait_is_given_as_a_fact_and_said_as_before() {
        let mut unapproved_before = entry("002", S::Queued, false);
        unapproved_before.previous_environment = Some(("staging", Some(S::AwaitingApproval)));
        let plan_ = plan(
            &[
                entry("001", S::Failed, false),
                entry("003", S::Queued, false),
            ],
            None,
        );
        assert_eq!(
            plan_[1].blocker,
            Some(Blocker::Earlier {
                migration_id: "001".into(),
                state: S::Failed
            })
        );
        assert_eq!(
            plan_[1].blocked_by,
            plan_[1].blocker.as_ref().map(ToString::to_string)
        );
        let plan_ = plan(&[unapproved_before], None);
        assert_eq!(
            plan_[0].blocker,
            Some(Blocker::PreviousEnvironment {
                environment: "staging".into(),
                state: Some(S::AwaitingApproval)
            })
        );
        assert_eq!(
            plan_[0].blocked_by.as_deref(),
            Some("must be applied in staging first (it is awaiting_approval there)")
        );
        let plan_ = plan(&[entry("001", S::Queued, false)], freeze());
        assert!(matches!(plan_[0].blocker, Some(Blocker::Frozen { .. })));
        assert!(!plan_[0].start);
    }

    #[test]
    fn an_emergency_goes_ahead_of_merely_waiting_deployments_in_a_freeze() {
        let entries = [
            entry("001", S::Queued, false),
            entry("002", S::AwaitingApproval, false),
            entry("003", S::Queued, true),
            entry("004", S::Queued, false),
        ];
        let plan = plan(&entries, freeze());
        assert!(!plan[0].start, "the freeze holds 001");
        assert!(plan[0].blocked_by.as_deref().unwrap().contains("freeze"));
        assert!(plan[2].start);
        assert!(plan[2].out_of_order);
        assert_eq!(plan[2].ahead_of, ["001", "002"]);
        assert!(!plan[3].start);
    }

    #[test]
    fn an_emergency_waits_for_what_it_depends_on_and_for_a_halted_queue() {
        let mut dependent = entry("003", S::Queued, true);
        dependent.dependencies = vec![("001", Some(S::Queued))];
        let plan_ = plan(
            &[entry("001", S::Queued, false), dependent.clone()],
            freeze(),
        );
        assert!(!plan_[1].start);
        assert!(plan_[1].blocked_by.as_deref().unwrap().contains("001"));
        let plan_ = plan(
            &[
                entry("001", S::Failed, false),
                entry("002", S::Queued, true),
            ],
            None,
        );
        assert!(!plan_[1].start);
        assert!(plan_[1].blocked_by.as_deref().unwrap().contains("failed"));
        // A dependency started in the same round counts as applied by then.
        let mut second = entry("002", S::Queued, false);
        second.dependencies = vec![("001", Some(S::Queued))];
        let plan_ = plan(&[entry("001", S::Queued, false), second], None);
        assert!(plan_[1].start);
        // A dependency with no deployment here never counts as satisfied.
        let mut orphan = entry("002", S::Queued, false);
        orphan.dependencies = vec![("000", None)];
        let plan_ = plan(&[orphan], None);
        assert!(!plan_[0].start);
        assert!(
            plan_[0]
                .blocked_by
                .as_deref()
                .unwrap()
                .contains("no deployment")
        );
    }
}

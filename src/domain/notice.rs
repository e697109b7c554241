//! What Sluice tells people about: the kinds of notification events, which deployment states
//! announce themselves, and when the reminders of an approval deadline fall. Pure: the service
//! writes the events to the outbox, the notifier delivers them.

use super::{DeploymentState, DomainError, Risk};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One kind of notification event. Channels route on these names (notifications.yml `events:`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum NoticeKind {
    Submitted,
    ApprovalRequested,
    ApprovalRecorded,
    Approved,
    Rejected,
    Expired,
    Cancelled,
    Started,
    Applied,
    /// A deployment failed; the message says that its environment's queue is halted.
    Failed,
    /// A failure halted an environment's queue (with every failure: for channels that list
    /// it, such as an incident tool's webhook; a channel with no `events` list does not take
    /// it, since `failed` says so already).
    QueueHalted,
    RolledBack,
    EnvironmentLocked,
    EnvironmentUnlocked,
    /// An environment's database was replaced with a backup Sluice took of it.
    Restored,
    /// An environment's database was emptied for its queue to be replayed.
    Reset,
    FreezeStarted,
    FreezeEnded,
    EmergencyOverride,
    ReviewOwed,
    ReviewRecorded,
    Reminder,
    Escalation,
    Test,
}

impl NoticeKind {
    pub const ALL: [NoticeKind; 24] = [
        NoticeKind::Submitted,
        NoticeKind::ApprovalRequested,
        NoticeKind::ApprovalRecorded,
        NoticeKind::Approved,
        NoticeKind::Rejected,
        NoticeKind::Expired,
        NoticeKind::Cancelled,
        NoticeKind::Started,
        NoticeKind::Applied,
        NoticeKind::Failed,
        NoticeKind::QueueHalted,
        NoticeKind::RolledBack,
        NoticeKind::EnvironmentLocked,
        NoticeKind::EnvironmentUnlocked,
        NoticeKind::Restored,
        NoticeKind::Reset,
        NoticeKind::FreezeStarted,
        NoticeKind::FreezeEnded,
        NoticeKind::EmergencyOverride,
        NoticeKind::ReviewOwed,
        NoticeKind::ReviewRecorded,
        NoticeKind::Reminder,
        NoticeKind::Escalation,
        NoticeKind::Test,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Submitted => "submitted",
            NoticeKind::ApprovalRequested => "approval_requested",
            NoticeKind::ApprovalRecorded => "approval_recorded",
            NoticeKind::Approved => "approved",
            NoticeKind::Rejected => "rejected",
            NoticeKind::Expired => "expired",
            NoticeKind::Cancelled => "cancelled",
            NoticeKind::Started => "started",
            NoticeKind::Applied => "applied",
            NoticeKind::Failed => "failed",
            NoticeKind::QueueHalted => "queue_halted",
            NoticeKind::RolledBack => "rolled_back",
            NoticeKind::EnvironmentLocked => "environment_locked",
            NoticeKind::EnvironmentUnlocked => "environment_unlocked",
            NoticeKind::Restored => "restored",
            NoticeKind::Reset => "reset",
            NoticeKind::FreezeStarted => "freeze_started",
            NoticeKind::FreezeEnded => "freeze_ended",
            NoticeKind::EmergencyOverride => "emergency_override",
            NoticeKind::ReviewOwed => "review_owed",
            NoticeKind::ReviewRecorded => "review_recorded",
            NoticeKind::Reminder => "reminder",
            NoticeKind::Escalation => "escalation",
            NoticeKind::Test => "test",
        }
    }

    /// A short phrase for subject lines and message titles.
    pub fn headline(self) -> &'static str {
        match self {
            NoticeKind::Submitted => "submitted",
            NoticeKind::ApprovalRequested => "approval needed",
            NoticeKind::ApprovalRecorded => "approval recorded",
            NoticeKind::Approved => "approved",
            NoticeKind::Rejected => "rejected",
            NoticeKind::Expired => "expired unapproved",
            NoticeKind::Cancelled => "cancelled",
            NoticeKind::Started => "started",
            NoticeKind::Applied => "applied",
            NoticeKind::Failed => "FAILED, queue halted",
            NoticeKind::QueueHalted => "queue HALTED",
            NoticeKind::RolledBack => "rolled back",
            NoticeKind::EnvironmentLocked => "environment locked",
            NoticeKind::EnvironmentUnlocked => "environment unlocked",
            NoticeKind::Restored => "database RESTORED from a backup",
            NoticeKind::Reset => "database RESET (emptied)",
            NoticeKind::FreezeStarted => "freeze window started",
            NoticeKind::FreezeEnded => "freeze window ended",
            NoticeKind::EmergencyOverride => "EMERGENCY OVERRIDE",
            NoticeKind::ReviewOwed => "post-deployment review owed",
            NoticeKind::ReviewRecorded => "review recorded",
            NoticeKind::Reminder => "approval deadline approaching",
            NoticeKind::Escalation => "ESCALATION: approval deadline approaching",
            NoticeKind::Test => "test message",
        }
    }

    /// The event a deployment announces on entering `state`, if any. Approval requests are
    /// sent by submission and amendment, not by a state: they need the missing roles.
    pub fn for_state(state: DeploymentState) -> Option<NoticeKind> {
        Some(match state {
            DeploymentState::Approved => NoticeKind::Approved,
            DeploymentState::Rejected => NoticeKind::Rejected,
            DeploymentState::Expired => NoticeKind::Expired,
            DeploymentState::Cancelled => NoticeKind::Cancelled,
            DeploymentState::Running => NoticeKind::Started,
            DeploymentState::Applied => NoticeKind::Applied,
            DeploymentState::Failed => NoticeKind::Failed,
            DeploymentState::RolledBack => NoticeKind::RolledBack,
            DeploymentState::AwaitingApproval
            | DeploymentState::Queued
            | DeploymentState::RollingBack => return None,
        })
    }
}

impl fmt::Display for NoticeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NoticeKind {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NoticeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                DomainError::Invalid(format!(
                    "unknown event \"{s}\" (known: {})",
                    NoticeKind::ALL.map(NoticeKind::as_str).join(", ")
                ))
            })
    }
}

impl TryFrom<String> for NoticeKind {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Which events a channel takes: by kind, by environment and by the deployment's effective risk
/// (events without a risk, such as a lock, pass any minimum).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// None: every kind but `queue_halted` (which only channels listing it take).
    pub kinds: Option<Vec<NoticeKind>>,
    /// None: every environment.
    pub environments: Option<Vec<String>>,
    pub min_risk: Option<Risk>,
}

impl Route {
    pub fn wants(&self, kind: NoticeKind, environment: Option<&str>, risk: Option<Risk>) -> bool {
        if kind == NoticeKind::Test {
            return true;
        }
        match &self.kinds {
            Some(kinds) if !kinds.contains(&kind) => return false,
            None if kind == NoticeKind::QueueHalted => return false,
            _ => {}
        }
        if let (Some(environments), Some(environment)) = (&self.environments, environment)
            && !environments.iter().any(|e| e == environment)
        {
            return false;
        }
        match (self.min_risk, risk) {
            (Some(min), Some(risk)) => risk >= min,
            _ => true,
        }
    }
}

/// The instants (milliseconds) at which reminders of an approval deadline fall: at each
/// fraction of the time between the request and the deadline, in order, each once. The last
/// one is where an escalation goes out.
pub fn reminder_points(requested_at: i64, deadline_at: i64, fractions: &[f64]) -> Vec<i64> {
    let span = (deadline_at - requested_at).max(0) as f64;
    let mut points: Vec<i64> = fractions
        .iter()
        .filter(|f| **f > 0.0 && **f < 1.0)
        .map(|f| requested_at + (span * f).round() as i64)
        .collect();
    points.sort_unstable();
    points.dedup();
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_back() {
        for kind in NoticeKind::ALL {
            assert_eq!(kind.as_str().parse::<NoticeKind>().unwrap(), kind);
        }
        let e = "aproved".parse::<NoticeKind>().unwrap_err().to_string();
        assert!(e.contains("unknown event \"aproved\""), "{e}");
    }

    #[test]
    fn routes_filter_by_kind_environment_and_risk() {
        let route = Route {
            kinds: Some(vec![NoticeKind::Failed, NoticeKind::ApprovalRequested]),
            environments: Some(vec!["production".into()]),
            min_risk: Some(Risk::Medium),
        };
        assert!(route.wants(NoticeKind::Failed, Some("production"), Some(Risk::High)));
        assert!(!route.wants(NoticeKind::Failed, Some("production"), Some(Risk::Low)));
        assert!(!route.wants(NoticeKind::Failed, Some("staging"), Some(Risk::High)));
        assert!(!route.wants(NoticeKind::Applied, Some("production"), Some(Risk::High)));
        assert!(route.wants(NoticeKind::Test, None, None));
        let locks = Route {
            min_risk: Some(Risk::High),
            ..Route::default()
        };
        assert!(locks.wants(NoticeKind::EnvironmentLocked, Some("production"), None));
    }

    #[test]
    fn queue_halted_goes_only_to_channels_that_list_it() {
        let every = Route::default();
        assert!(every.wants(NoticeKind::Failed, Some("production"), Some(Risk::Low)));
        assert!(!every.wants(NoticeKind::QueueHalted, Some("production"), Some(Risk::Low)));
        let pager = Route {
            kinds: Some(vec![NoticeKind::QueueHalted]),
            ..Route::default()
        };
        assert!(pager.wants(NoticeKind::QueueHalted, Some("production"), Some(Risk::Low)));
        assert!(!pager.wants(NoticeKind::Failed, Some("production"), Some(Risk::Low)));
    }

    #[test]
    fn reminders_fall_at_fractions_of_the_wait() {
        assert_eq!(reminder_points(0, 1000, &[0.9, 0.5]), vec![500, 900]);
        assert_eq!(reminder_points(0, 1000, &[0.5, 0.5, 1.0, 0.0]), vec![500]);
        assert!(reminder_points(10, 10, &[]).is_empty());
    }
}

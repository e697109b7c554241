//! Deployment events as they happen, for watchers (gRPC streams, the CLI's progress bars):
//! each state change once it is committed, and each log line as the target produces it.
//! In-process only: a replica sees the events of the work it does itself.

use super::LogView;
use crate::domain::DeploymentState;
use crate::store::DeploymentRow;
use serde::Serialize;
use tokio::sync::broadcast;

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeploymentEvent {
    pub deployment_id: String,
    pub migration_id: String,
    pub environment: String,
    pub at: String,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    State {
        state: DeploymentState,
        error: Option<String>,
    },
    Log(LogView),
}

/// The broadcast of deployment events. Slow subscribers miss events rather than slowing the
/// workers; they are told how many they missed.
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<DeploymentEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            sender: broadcast::channel(4096).0,
        }
    }
}

impl EventBus {
    pub fn subscribe(&self) -> broadcast::Receiver<DeploymentEvent> {
        self.sender.subscribe()
    }

    pub fn state(&self, deployment: &DeploymentRow, at: String) {
        crate::telemetry::deployment_changed(deployment);
        let _ = self.sender.send(DeploymentEvent {
            deployment_id: deployment.id.clone(),
            migration_id: deployment.migration_id.clone(),
            environment: deployment.environment.clone(),
            at,
            kind: EventKind::State {
                state: deployment.state,
                error: deployment.error.clone(),
            },
        });
    }

    pub fn log(&self, deployment: &DeploymentRow, line: LogView) {
        let _ = self.sender.send(DeploymentEvent {
            deployment_id: deployment.id.clone(),
            migration_id: deployment.migration_id.clone(),
            environment: deployment.environment.clone(),
            at: line.at.clone(),
            kind: EventKind::Log(line),
        });
    }
}

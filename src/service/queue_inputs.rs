//! The one builder of the queue planner's inputs (issue 19): the facts `domain::queue::plan`
//! needs about an environment's open deployments (their states in the previous environment
//! of the promotion order, their dependencies' states here, the freeze window in force), read
//! the same way for environment status, `migrate` and the worker, so that what status says
//! waits is exactly what the worker will not start.

use super::*;
use crate::domain::queue::{Planned, QueueEntry};

/// What the planner needs beyond the deployments themselves.
pub struct QueueInputs<'c> {
    previous: Option<&'c str>,
    previous_states: HashMap<String, DeploymentState>,
    dependency_states: HashMap<String, DeploymentState>,
    /// The freeze window in force and its end, if any.
    pub frozen: Option<(String, String)>,
}

/// Whether the planner looks at a deployment's dependencies and previous environment: only
/// for the deployments that could start (it says nothing else about the others).
fn may_start(d: &DeploymentRow) -> bool {
    matches!(d.state, DeploymentState::Queued | DeploymentState::Approved)
}

impl Service {
    /// Reads the planner's inputs for `open` (an environment's open deployments, in id order)
    /// in two queries at most.
    pub async fn queue_inputs<'c>(
        &'c self,
        conn: &mut sqlx::AnyConnection,
        env: &'c EnvironmentConfig,
        open: &[DeploymentRow],
        migrations: &HashMap<String, MigrationRow>,
    ) -> Result<QueueInputs<'c>> {
        let candidates: Vec<String> = open
            .iter()
            .filter(|d| may_start(d))
            .map(|d| d.migration_id.clone())
            .collect();
        let previous = self.config.previous_environment(&env.name);
        let previous_states = match previous {
            Some(p) if !candidates.is_empty() => self
                .store
                .states_in_environment(conn, p.name.as_str(), &candidates)
                .await?
                .into_iter()
                .collect(),
            _ => HashMap::new(),
        };
        let dependencies: Vec<String> = candidates
            .iter()
            .filter_map(|id| migrations.get(id))
            .flat_map(|m| m.depends_on.iter().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let dependency_states = if dependencies.is_empty() {
            HashMap::new()
        } else {
            self.store
                .states_in_environment(conn, env.name.as_str(), &dependencies)
                .await?
                .into_iter()
                .collect()
        };
        Ok(QueueInputs {
            previous: previous.map(|p| p.name.as_str()),
            previous_states,
            dependency_states,
            frozen: domain::freeze::describe(&env.freeze_windows, self.clock.now()),
        })
    }
}

impl QueueInputs<'_> {
    /// The planner's entries for `open`, in the same order.
    pub fn entries<'a>(
        &'a self,
        open: &'a [DeploymentRow],
        migrations: &'a HashMap<String, MigrationRow>,
    ) -> Vec<QueueEntry<'a>> {
        open.iter()
            .map(|d| QueueEntry {
                migration_id: d.migration_id.as_str(),
                state: d.state,
                emergency: d.emergency_reason.is_some(),
                dependencies: match migrations.get(&d.migration_id) {
                    Some(m) if may_start(d) => m
                        .depends_on
                        .iter()
                        .map(|dep| (dep.as_str(), self.dependency_states.get(dep).copied()))
                        .collect(),
                    _ => Vec::new(),
                },
                previous_environment: self
                    .previous
                    .map(|p| (p, self.previous_states.get(&d.migration_id).copied())),
            })
            .collect()
    }

    /// The one planner's answer for `open`, in the same order.
    pub fn plan(
        &self,
        open: &[DeploymentRow],
        migrations: &HashMap<String, MigrationRow>,
    ) -> Vec<Planned> {
        domain::queue::plan(&self.entries(open, migrations), self.frozen.clone())
    }
}

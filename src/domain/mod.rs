//! The pure core: identifiers, roles, risk, the deployment state machine and approval policy
//! evaluation. Nothing here reads a clock, touches a database or the network, or awaits: every
//! function takes what it needs (including `now`) and returns a value, so the rules can be tested
//! exhaustively without any I/O.

pub mod authz;
pub mod freeze;
mod ids;
pub mod lock;
pub mod notice;
mod policy;
pub mod queue;
mod state;
pub mod text;

pub use ids::{EnvironmentName, MigrationId, UserName, slugify, version_parts};
pub use policy::{ApprovalPolicy, ApprovalRecord, ApprovalRequest, PolicyProgress, check_approval};
pub use state::{
    DeploymentEvent, DeploymentState, Effect, InvalidTransition, LastAction, Transition, WayOnBy,
};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An error the domain reports when a request breaks one of its rules. Each variant carries
/// enough to tell the caller exactly what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
}

/// The roles of the approval matrix and of the operator permissions.
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
// Deserialized through FromStr, so that a value of the wrong type (`"risk": 5`) is a data
// error naming what is allowed, not a syntax error.
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Role {
    Developer,
    DataOps,
    DataOpsLead,
    Dba,
    TechLead,
    Cto,
    Admin,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Developer,
        Role::DataOps,
        Role::DataOpsLead,
        Role::Dba,
        Role::TechLead,
        Role::Cto,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Developer => "developer",
            Role::DataOps => "data_ops",
            Role::DataOpsLead => "data_ops_lead",
            Role::Dba => "dba",
            Role::TechLead => "tech_lead",
            Role::Cto => "cto",
            Role::Admin => "admin",
        }
    }

    /// Roles that may operate an environment: lock, unlock, migrate, roll back, retry, cancel.
    pub fn is_operator(self) -> bool {
        authz::OPERATOR_ROLES.contains(&self)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                DomainError::Invalid(format!(
                    "unknown role \"{s}\" (known: {}){}",
                    Role::ALL.map(|r| r.as_str()).join(", "),
                    text::did_you_mean(s, Role::ALL.map(|r| r.as_str()))
                ))
            })
    }
}

/// Declared or analysed risk of a migration. Ordered: low < medium < high.
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
// Deserialized through FromStr, so that a value of the wrong type (`"risk": 5`) is a data
// error naming what is allowed, not a syntax error.
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Risk {
    Low,
    Medium,
    High,
}

impl Risk {
    pub const ALL: [Risk; 3] = [Risk::Low, Risk::Medium, Risk::High];
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
        }
    }
}

impl FromStr for Risk {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Ok(Risk::Low),
            "medium" => Ok(Risk::Medium),
            "high" => Ok(Risk::High),
            _ => Err(DomainError::Invalid(format!(
                "unknown risk \"{s}\" (known: low, medium, high)"
            ))),
        }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What sort of change a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
// Deserialized through FromStr, so that a value of the wrong type (`"risk": 5`) is a data
// error naming what is allowed, not a syntax error.
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum MigrationKind {
    SchemaChange,
    DataMigration,
    Hotfix,
}

impl MigrationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationKind::SchemaChange => "schema_change",
            MigrationKind::DataMigration => "data_migration",
            MigrationKind::Hotfix => "hotfix",
        }
    }
}

impl FromStr for MigrationKind {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "schema_change" => Ok(MigrationKind::SchemaChange),
            "data_migration" => Ok(MigrationKind::DataMigration),
            "hotfix" => Ok(MigrationKind::Hotfix),
            _ => Err(DomainError::Invalid(format!(
                "unknown kind \"{s}\" (known: schema_change, data_migration, hotfix)"
            ))),
        }
    }
}

/// The id of a deployment: one migration in one environment.
pub fn deployment_id(migration: &MigrationId, environment: &EnvironmentName) -> String {
    format!("{migration}@{environment}")
}

/// Splits a deployment id back into its migration and environment.
pub fn parse_deployment_id(id: &str) -> Result<(MigrationId, EnvironmentName), DomainError> {
    let (migration, environment) = id.rsplit_once('@').ok_or_else(|| {
        DomainError::Invalid(format!(
            "deployment id \"{id}\" is not of the form <migration_id>@<environment>"
        ))
    })?;
    Ok((migration.parse()?, environment.parse()?))
}

/// SHA-256 of the up script followed by the down script, hex encoded: what approvals bind to.
pub fn checksum(up_sql: &str, down_sql: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(up_sql.as_bytes());
    hasher.update([0u8]);
    if let Some(down) = down_sql {
        hasher.update(down.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Why a deployment may not start yet, given the facts the worker gathered. Returns `None` when
/// it may start. Pure: the caller supplies every fact.
pub fn start_blocker(facts: &StartFacts<'_>) -> Option<Blocker> {
    if let Some((migration_id, state)) = facts.earlier_unfinished {
        return Some(Blocker::Earlier {
            migration_id: migration_id.to_owned(),
            state,
        });
    }
    if let Some((dependency, state)) = facts.unapplied_dependency {
        return Some(Blocker::Dependency {
            migration_id: dependency.to_owned(),
            state: Some(state),
        });
    }
    if let Some((window, until)) = freeze::stops(facts.frozen.clone(), facts.emergency) {
        return Some(Blocker::Frozen { window, until });
    }
    if !facts.emergency
        && let Some((previous_env, state)) = facts.previous_environment
        && state != Some(DeploymentState::Applied)
    {
        return Some(Blocker::PreviousEnvironment {
            environment: previous_env.to_owned(),
            state,
        });
    }
    None
}

/// Why a queued or approved deployment does not start, as a fact (its `Display` is what
/// status says). The service follows it to decide whether the deployment can still move on
/// without someone acting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// An earlier migration of this environment is not finished.
    Earlier {
        migration_id: String,
        state: DeploymentState,
    },
    /// A dependency is not applied in this environment (`None`: it has no deployment here).
    Dependency {
        migration_id: String,
        state: Option<DeploymentState>,
    },
    /// A freeze window holds until `until`.
    Frozen { window: String, until: String },
    /// Not applied in the previous environment of the promotion order (`None`: absent there).
    PreviousEnvironment {
        environment: String,
        state: Option<DeploymentState>,
    },
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blocker::Earlier {
                migration_id,
                state,
            } => write!(
                f,
                "waits for {migration_id} ({state}) which comes first in this environment"
            ),
            Blocker::Dependency {
                migration_id,
                state: None,
            } => write!(
                f,
                "depends on {migration_id}, which has no deployment in this environment"
            ),
            Blocker::Dependency {
                migration_id,
                state: Some(state),
            } => write!(
                f,
                "depends on {migration_id}, which is {state} in this environment"
            ),
            Blocker::Frozen { window, until } => write!(
                f,
                "the environment is in the freeze window {window} until {until}; only an emergency override starts now"
            ),
            Blocker::PreviousEnvironment { environment, state } => {
                let way_on = match state {
                    Some(DeploymentState::RolledBack) => {
                        "; retry it there or amend the migration, or cancel it here"
                    }
                    Some(DeploymentState::Failed) => "; retry, roll back or cancel it there",
                    None => "; it has no deployment there",
                    _ => "",
                };
                write!(
                    f,
                    "must be applied in {environment} first (it is {} there{way_on})",
                    state.map_or("absent", |s| s.as_str())
                )
            }
        }
    }
}

/// The facts that decide whether a queued deployment may start.
pub struct StartFacts<'a> {
    /// The first migration with a lower id in this environment that is not finished, if any.
    pub earlier_unfinished: Option<(&'a str, DeploymentState)>,
    /// A dependency whose deployment in this environment is not applied, if any.
    pub unapplied_dependency: Option<(&'a str, DeploymentState)>,
    /// The previous environment in the promotion order and this migration's state there.
    pub previous_environment: Option<(&'a str, Option<DeploymentState>)>,
    /// The freeze window in force and when the freeze ends, if any.
    pub frozen: Option<(String, String)>,
    /// An emergency override skips the promotion-order rule and freeze windows.
    pub emergency: bool,
}

impl TryFrom<String> for Role {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl TryFrom<String> for Risk {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl TryFrom<String> for MigrationKind {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_changes_with_either_script() {
        let a = checksum("create table t (id int);", Some("drop table t;"));
        let b = checksum("create table t (id int);", None);
        let c = checksum("create table t (id bigint);", Some("drop table t;"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn deployment_ids_round_trip() {
        let m: MigrationId = "001_20261125_101500_add_user_preferences".parse().unwrap();
        let e: EnvironmentName = "staging".parse().unwrap();
        let id = deployment_id(&m, &e);
        assert_eq!(id, "001_20261125_101500_add_user_preferences@staging");
        assert_eq!(parse_deployment_id(&id).unwrap(), (m, e));
        assert!(parse_deployment_id("nope").is_err());
    }

    #[test]
    fn promotion_order_blocks_until_previous_environment_applied() {
        let facts = StartFacts {
            earlier_unfinished: None,
            unapplied_dependency: None,
            previous_environment: Some(("staging", Some(DeploymentState::AwaitingApproval))),
            frozen: None,
            emergency: false,
        };
        assert_eq!(
            start_blocker(&facts).unwrap().to_string(),
            "must be applied in staging first (it is awaiting_approval there)"
        );
        let emergency = StartFacts {
            emergency: true,
            ..facts
        };
        assert_eq!(start_blocker(&emergency), None);
    }
}

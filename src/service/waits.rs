//! Waiting for released deployments. The one answer to "can this deployment still move on
//! without someone acting?" lives here (`fill_needs`, fed by the queue planner's blockers in
//! environment status: every open deployment's `needs`); the REST wait (`wait_settled`) and
//! the CLI's `migrate --wait` (through the status it reads) both end on it.
//!
//! The REST wait is woken by committed changes (the event bus), never by a polling loop; it is
//! bounded in time (`WAIT_MAX_SECONDS`) and in callers (`server.max_migrate_waiters` permits).

use super::*;
use crate::domain::Blocker;
use crate::domain::lock::Work;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How long a REST wait lasts when the caller does not say.
pub const WAIT_DEFAULT_SECONDS: u64 = 600;
/// The longest a REST wait may last, whatever the caller asks.
pub const WAIT_MAX_SECONDS: u64 = 3600;
/// What a caller refused for too many waiters is told to wait before trying again.
pub const RETRY_AFTER_SECONDS: u16 = 5;
/// Changes made through another daemon on the same store reach this one by no event (see
/// "Not built yet" in ARCHITECTURE.md): a waiter looks again this often as well as on every
/// event and lock change of its own daemon.
const LOOK_AGAIN: Duration = Duration::from_secs(5);

/// How a wait for released deployments ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// None of them is queued, running or rolling back any more.
    Done,
    /// Those still open cannot move on without someone acting: what is needed.
    Stopped(String),
    TimedOut,
}

/// A place among the REST waiters, held for the whole wait.
pub struct WaitPermit {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

pub(super) type NeedsFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

impl Service {
    /// A place among the REST waiters, or `Busy` when `server.max_migrate_waiters` wait already.
    pub fn wait_permit(&self) -> Result<WaitPermit> {
        match self.waiters.clone().try_acquire_owned() {
            Ok(permit) => Ok(WaitPermit { _permit: permit }),
            Err(_) => Err(ServiceError::Busy(format!(
                "{} migrate waits are in progress already (server.max_migrate_waiters); nothing was released: try again in {RETRY_AFTER_SECONDS} s, or migrate without wait=true and follow the environment's status",
                self.max_migrate_waiters()
            ))),
        }
    }

    fn max_migrate_waiters(&self) -> usize {
        self.config.settings.server.max_migrate_waiters.max(1)
    }

    /// How many REST waits are in progress.
    pub fn migrate_waiters(&self) -> usize {
        self.max_migrate_waiters()
            .saturating_sub(self.waiters.available_permits())
    }

    /// Waits until none of the given deployments of `environment` can still move on by itself:
    /// each has ended (or failed), or needs someone (what is needed is returned); or until the
    /// timeout passes (at most `WAIT_MAX_SECONDS`). Woken by the deployment state changes and
    /// the lock changes this daemon commits, and every `LOOK_AGAIN` for other daemons' changes.
    pub async fn wait_settled(
        &self,
        _permit: &WaitPermit,
        environment: &str,
        ids: &[String],
        timeout: Duration,
    ) -> Result<Settled> {
        let deadline =
            tokio::time::Instant::now() + timeout.min(Duration::from_secs(WAIT_MAX_SECONDS));
        // Subscribed before the first look, so that no change falls in between.
        let mut events = self.signals.events.subscribe();
        let mut lock_changes = self.signals.lock_changes();
        lock_changes.mark_unchanged();
        loop {
            if let Some(settled) = self.wait_verdict(environment, ids).await? {
                return Ok(settled);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Settled::TimedOut);
            }
            let look_again = (tokio::time::Instant::now() + LOOK_AGAIN).min(deadline);
            loop {
                tokio::select! {
                    received = events.recv() => match received {
                        // Log lines change nothing a waiter decides on.
                        Ok(event) if matches!(event.kind, EventKind::Log(_)) => continue,
                        Ok(_) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => {
                            tokio::time::sleep_until(look_again).await;
                            break;
                        }
                    },
                    changed = lock_changes.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep_until(look_again).await;
                        }
                        break;
                    }
                    _ = tokio::time::sleep_until(look_again) => break,
                }
            }
            // A burst of changes (a run claimed, a batch recorded) is one look.
            while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) =
                events.try_recv()
            {}
        }
    }

    /// `None` while one of `ids` can move on by itself; otherwise how the wait ends.
    async fn wait_verdict(&self, environment: &str, ids: &[String]) -> Result<Option<Settled>> {
        let status = self.environment_status(environment).await?;
        let mut needs: Vec<String> = Vec::new();
        for view in status.queue.iter().filter(|v| ids.contains(&v.id)) {
            // A failure is an outcome: the caller reads it in the status it gets back.
            if view.state == DeploymentState::Failed {
                continue;
            }
            match &view.needs {
                None => return Ok(None),
                Some(what) => {
                    let line = format!("{}: {what}", view.id);
                    if !needs.contains(&line) {
                        needs.push(line);
                    }
                }
            }
        }
        Ok(Some(if needs.is_empty() {
            Settled::Done
        } else {
            Settled::Stopped(needs.join("; "))
        }))
    }

    /// Sets each open deployment's `needs` (in id order, as the planner gave `blockers`): what
    /// someone must do before it can move on, or nothing while it moves on by itself. A
    /// deployment held by another one needs what that one needs; one held by the previous
    /// environment needs what its deployment there needs.
    ///
    /// Boxed: it may read the previous environment's status, which fills its own needs.
    pub(super) fn fill_needs<'a>(
        &'a self,
        env: &'a EnvironmentConfig,
        lock: Option<&'a LockRow>,
        queue: &'a mut [DeploymentView],
        blockers: &'a [Option<Blocker>],
    ) -> NeedsFuture<'a> {
        Box::pin(self.fill_needs_now(env, lock, queue, blockers))
    }

    async fn fill_needs_now(
        &self,
        env: &EnvironmentConfig,
        lock: Option<&LockRow>,
        queue: &mut [DeploymentView],
        blockers: &[Option<Blocker>],
    ) -> Result<()> {
        let name = env.name.as_str();
        let stopping_lock = domain::lock::lock_stops(lock.map(Into::into).as_ref(), Work::Start)
            .map(|lock| {
                format!(
                    "{name} is locked by {} since {}: {} (`sluice unlock {name}` lets it start)",
                    lock.locked_by,
                    format_millis(lock.locked_at),
                    lock.reason
                )
            });
        let mut by_migration: HashMap<String, Option<String>> = HashMap::new();
        let mut previous: Option<EnvironmentStatus> = None;
        for (view, blocker) in queue.iter_mut().zip(blockers) {
            let needs = match view.state {
                DeploymentState::AwaitingApproval => Some(approvals_needed(view)),
                DeploymentState::Approved => Some(format!(
                    "{} is approved but not released: `sluice migrate {name}` releases it",
                    view.id
                )),
                DeploymentState::Failed => Some(failure_needs(view, name)),
                DeploymentState::Queued if stopping_lock.is_some() => stopping_lock.clone(),
                DeploymentState::Queued => match blocker {
                    None => None,
                    Some(Blocker::Earlier { migration_id, .. })
                    | Some(Blocker::Dependency {
                        migration_id,
                        state: Some(_),
                    }) if by_migration.contains_key(migration_id) => {
                        by_migration[migration_id].clone()
                    }
                    Some(Blocker::Earlier {
                        migration_id,
                        state,
                    })
                    | Some(Blocker::Dependency {
                        migration_id,
                        state: Some(state),
                    }) => Some(format!(
                        "{} depends on {migration_id}, which is {state} in {name}",
                        view.migration_id
                    )),
                    Some(Blocker::Dependency {
                        migration_id,
                        state: None,
                    }) => Some(format!(
                        "{} depends on {migration_id}, which has no deployment in {name}: cancel it or submit {migration_id}",
                        view.migration_id
                    )),
                    Some(Blocker::Frozen { window, until }) => Some(format!(
                        "{name} is in the freeze window {window} until {until}: it starts then, or now through an emergency override (`sluice migrate {name} --force --emergency \"<reason>\"`)"
                    )),
                    Some(Blocker::PreviousEnvironment { environment, state }) => match state {
                        Some(state) if state.holds_queue() => {
                            if previous.is_none() {
                                previous = Some(self.environment_status(environment).await?);
                            }
                            previous
                                .as_ref()
                                .and_then(|p| {
                                    p.queue.iter().find(|v| v.migration_id == view.migration_id)
                                })
                                .and_then(|v| v.needs.clone())
                        }
                        // Ended there, or rolled back: the blocker says the way on.
                        _ => blocker
                            .as_ref()
                            .map(|b| format!("{} {b}", view.migration_id)),
                    },
                },
                _ => None,
            };
            by_migration.insert(view.migration_id.clone(), needs.clone());
            view.needs = needs;
        }
        Ok(())
    }
}

/// "X awaits approval: 2 from data_ops (`sluice approve ...`)".
fn approvals_needed(view: &DeploymentView) -> String {
    let extra = view.additional_approvals_needed;
    let roles: Vec<String> = view.required_roles.iter().map(|r| r.to_string()).collect();
    let mut parts: Vec<String> = view.missing_roles.iter().map(|r| r.to_string()).collect();
    if extra > 0 && roles.len() == 1 && view.missing_roles == view.required_roles {
        parts = vec![format!("{} approvals from {}", extra + 1, roles[0])];
    } else if extra > 0 {
        parts.push(format!("{extra} more from {}", roles.join("/")));
    }
    let who = if parts.is_empty() {
        "its approvals counted again".to_owned()
    } else {
        parts.join(", ")
    };
    format!(
        "{} awaits approval: needs {who} (`sluice approve {} <role> <approver> <comment> --environment {}`)",
        view.id, view.migration_id, view.environment
    )
}

/// "the queue is halted by the failed deployment X (error); retry or cancel it".
fn failure_needs(view: &DeploymentView, environment: &str) -> String {
    let error = view
        .error
        .as_deref()
        .and_then(|e| e.lines().next())
        .map(|line| {
            let line: String = line.chars().filter(|c| !c.is_control()).collect();
            format!(" ({line})")
        })
        .unwrap_or_default();
    format!(
        "the queue is halted by the failed deployment {}{error}; fix its cause and `sluice retry {environment} {}`, or skip it with `sluice cancel {environment} {}`",
        view.id, view.migration_id, view.migration_id
    )
}

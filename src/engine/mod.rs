//! Runs the background work under one supervisor: a worker per environment and the scheduler
//! (approval deadlines). Everything stops on one cancellation token, with a grace period for the
//! migration in flight. Workers expose `run_once`, which tests call directly.

pub mod worker;

pub use worker::{Outcome, Worker};

use crate::service::Service;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The longest a worker waits between rounds while its target cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long a worker waits after a round with `outcome` before the next (a wake-up comes
/// sooner), and the backoff it carries on: at once after something moved (more may be ready),
/// the poll interval when nothing could, and while the target cannot be reached (or the round
/// failed) a wait that doubles from twice the poll interval up to `MAX_BACKOFF`, so that an
/// unreachable target is not knocked on every second. `backoff` starts at the poll interval.
fn next_wait(
    outcome: &Result<Outcome, crate::service::ServiceError>,
    backoff: Duration,
    poll: Duration,
) -> (Duration, Duration) {
    match outcome {
        Ok(Outcome::TargetUnavailable(_)) | Err(_) => {
            let backoff = (backoff * 2).min(MAX_BACKOFF);
            (backoff, backoff)
        }
        Ok(Outcome::Worked {
            applied,
            rolled_back,
            failed,
        }) if *applied + *rolled_back > 0 || failed.is_some() => (Duration::ZERO, poll),
        Ok(_) => (poll, poll),
    }
}

pub struct Engine {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Engine {
    /// Starts one worker per environment and the scheduler.
    pub fn start(service: Service, cancel: CancellationToken) -> Engine {
        let tracker = TaskTracker::new();
        for environment in service.config.environments.clone() {
            let worker = Worker::new(service.clone(), environment, cancel.clone());
            let notify = service.signals.notifier(worker.environment().name.as_str());
            let poll =
                Duration::from_millis(service.config.settings.worker.poll_interval_ms.max(10));
            let cancel = cancel.clone();
            tracker.spawn(async move {
                let mut backoff = poll;
                loop {
                    let outcome = worker.run_once().await;
                    if outcome.is_ok() {
                        worker.service().signals.round_done(
                            worker.environment().name.as_str(),
                            crate::service::millis(worker.service().clock.now()),
                        );
                    }
                    let wait;
                    (wait, backoff) = next_wait(&outcome, backoff, poll);
                    if let Err(e) = &outcome {
                        tracing::error!(environment = %worker.environment().name, error = %e, "worker round failed");
                    }
                    if wait.is_zero() {
                        if cancel.is_cancelled() {
                            break;
                        }
                        continue;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = notify.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            });
        }
        if service.notifications_on() {
            tracker.spawn(crate::notify::fan_out(service.clone(), cancel.clone()));
        }
        if service.notifications_on() && service.config.notifications.delivery.enabled {
            match crate::notify::Notifier::new(service.clone()) {
                Ok(notifier) => {
                    tracker.spawn(notifier.run(cancel.clone()));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the notifier; notifications stay in the outbox")
                }
            }
        }
        let drift_every = service.config.settings.scheduler.drift_check_seconds;
        if drift_every > 0 {
            let service = service.clone();
            let cancel = cancel.clone();
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(drift_every)) => {}
                    }
                    for env in &service.config.environments {
                        let name = env.name.as_str();
                        match service.check_drift(name).await {
                            Ok(true) => tracing::warn!(
                                environment = name,
                                "the schema drifted from what Sluice applied; approvals given before are void"
                            ),
                            Ok(false) => {}
                            Err(e) => tracing::warn!(environment = name, error = %e, "drift check failed"),
                        }
                    }
                }
            });
        }
        let tick = Duration::from_secs(service.config.settings.scheduler.tick_seconds.max(1));
        let scheduler_cancel = cancel.clone();
        tracker.spawn(async move {
            loop {
                match service.expire_overdue().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        expired = n,
                        "expired deployments past their approval deadline"
                    ),
                    Err(e) => tracing::error!(error = %e, "scheduler round failed"),
                }
                match service.send_scheduled_notices().await {
                    Ok(round) if round != crate::service::ScheduledRound::default() => {
                        tracing::info!(?round, "scheduled notices written to the outbox")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "scheduled notices round failed"),
                }
                tokio::select! {
                    _ = scheduler_cancel.cancelled() => break,
                    _ = tokio::time::sleep(tick) => {}
                }
            }
        });
        tracker.close();
        Engine { tracker, cancel }
    }

    /// An engine with no tasks, for tests that drive workers with `run_once`.
    pub fn start_nothing() -> Engine {
        let tracker = TaskTracker::new();
        tracker.close();
        Engine {
            tracker,
            cancel: CancellationToken::new(),
        }
    }

    /// Asks every task to stop and waits up to `grace` for the work in flight.
    pub async fn shutdown(self, grace: Duration) {
        self.cancel.cancel();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("background work did not stop within the grace period");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_target_is_tried_again_after_a_wait_that_doubles_to_a_minute() {
        let poll = Duration::from_secs(1);
        let unavailable = Ok(Outcome::TargetUnavailable("connection refused".into()));
        let mut backoff = poll;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let wait;
            (wait, backoff) = next_wait(&unavailable, backoff, poll);
            waits.push(wait.as_secs());
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        // Reached again: back to the poll interval, and the next outage starts over.
        let (wait, backoff) = next_wait(&Ok(Outcome::Idle), backoff, poll);
        assert_eq!((wait, backoff), (poll, poll));
        assert_eq!(next_wait(&unavailable, backoff, poll).0, 2 * poll);
        // A round that moved something looks again at once.
        let worked = Ok(Outcome::Worked {
            applied: 0,
            rolled_back: 0,
            failed: Some("V1@development".into()),
        });
        assert_eq!(next_wait(&worked, backoff, poll).0, Duration::ZERO);
    }
}

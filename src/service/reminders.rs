//! The scheduler's notices, derived from stored state on every tick (never from timers in
//! memory): reminders at fractions of an approval's wait and the escalation at the last one,
//! reminders of owed post-emergency reviews, and the start and end of freeze windows. Each
//! notice is noted in `scheduled_notices` in the transaction that writes its audit record
//! (which carries the event to the notifier), so it goes out once whatever the number of
//! daemons and restarts.

use super::*;
use crate::config::Recipient;
use crate::domain::notice::{NoticeKind, reminder_points};
use notifications::Draft;

/// What one scheduler round sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScheduledRound {
    pub reminders: usize,
    pub escalations: usize,
    pub review_reminders: usize,
    pub freeze_notices: usize,
    /// Delivered outbox rows deleted (older than `delivery.keep_delivered_days`).
    pub pruned: u64,
}

impl Service {
    /// One round of scheduled notices at the clock's now.
    pub async fn send_scheduled_notices(&self) -> Result<ScheduledRound> {
        let mut round = ScheduledRound::default();
        if !self.notifications_on() {
            return Ok(round);
        }
        let at = self.now();
        self.approval_reminders(at, &mut round).await?;
        self.review_reminders(at, &mut round).await?;
        self.freeze_notices(at, &mut round).await?;
        let keep = self.config.notifications.delivery.keep_delivered_ms as i64;
        round.pruned = self.store.prune_delivered(at - keep).await?;
        if round.reminders + round.escalations + round.review_reminders + round.freeze_notices > 0 {
            self.events_written();
        }
        Ok(round)
    }

    async fn approval_reminders(&self, at: i64, round: &mut ScheduledRound) -> Result<()> {
        let waiting = {
            let mut conn = self.store.conn().await?;
            self.store.awaiting_with_deadline(&mut conn).await?
        };
        let fractions = &self.config.notifications.reminders.at;
        for d in waiting {
            let Some(deadline) = d.deadline_at else {
                continue;
            };
            if deadline <= at {
                continue; // expiry tells people about this one
            }
            let Some(hours) = self.policy_for(&d)?.timeout_hours else {
                continue;
            };
            let requested = deadline - i64::from(hours) * 3_600_000;
            let points = reminder_points(requested, deadline, fractions);
            let passed: Vec<(usize, i64)> = points
                .iter()
                .copied()
                .enumerate()
                .filter(|(_, p)| *p <= at)
                .collect();
            let Some(&(last_index, _)) = passed.last() else {
                continue;
            };
            let mut tx = self.store.begin().await?;
            // Points missed while no daemon ran are noted without a message of their own: one
            // reminder, the latest, says all of it.
            let mut fresh = false;
            for (index, _) in &passed {
                let key = format!("reminder:{deadline}:{index}");
                fresh |= self.store.insert_notice(&mut tx, &d.id, &key, at).await?;
            }
            if !fresh {
                continue;
            }
            let remaining = deadline - at;
            let note = format!(
                "{} left before the deadline; it then expires unapproved",
                human_duration(remaining)
            );
            let mut draft = Draft::new(NoticeKind::Reminder, "sluice");
            draft.note = Some(note.clone());
            draft.event_key = Some(format!("{}:reminder:{deadline}:{last_index}", d.id));
            let event = self.notify_deployment(&mut tx, &d, at, draft).await?;
            self.record_notice(&mut tx, at, "reminder_sent", Some(&d), None, &note, event)
                .await?;
            round.reminders += 1;
            let last_point = last_index + 1 == points.len();
            if last_point
                && let Some(escalate) = self.config.notifications.escalate_to.get(&d.environment)
                && self
                    .store
                    .insert_notice(&mut tx, &d.id, &format!("escalation:{deadline}"), at)
                    .await?
            {
                let mut draft = Draft::new(NoticeKind::Escalation, "sluice");
                draft.note = Some(note.clone());
                draft.event_key = Some(format!("{}:escalation:{deadline}", d.id));
                for who in escalate {
                    match who {
                        Recipient::Role(role) => draft.roles.push(*role),
                        Recipient::Address(address) => draft.addresses.push(address.clone()),
                    }
                }
                let event = self.notify_deployment(&mut tx, &d, at, draft).await?;
                self.record_notice(&mut tx, at, "escalated", Some(&d), None, &note, event)
                    .await?;
                round.escalations += 1;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    async fn review_reminders(&self, at: i64, round: &mut ScheduledRound) -> Result<()> {
        let every = self.config.notifications.reminders.review_every_ms.max(1);
        let owed = {
            let mut conn = self.store.conn().await?;
            self.store.owed_reviews(&mut conn).await?
        };
        let mut by_deployment: BTreeMap<String, Vec<crate::store::ReviewRow>> = BTreeMap::new();
        for review in owed {
            by_deployment
                .entry(review.deployment_id.clone())
                .or_default()
                .push(review);
        }
        for (deployment_id, reviews) in by_deployment {
            let owed_at = reviews.iter().map(|r| r.owed_at).min().unwrap_or(at);
            let periods = (at - owed_at) / every;
            if periods < 1 {
                continue;
            }
            let mut tx = self.store.begin().await?;
            if !self
                .store
                .insert_notice(&mut tx, &deployment_id, &format!("review:{periods}"), at)
                .await?
            {
                continue;
            }
            let Some(deployment) = self
                .store
                .deployment(&mut tx, &deployment_id, false)
                .await?
            else {
                continue;
            };
            let roles: Vec<Role> = reviews.iter().filter_map(|r| r.role.parse().ok()).collect();
            let mut draft = Draft::new(NoticeKind::ReviewOwed, "sluice");
            draft.roles = roles.clone();
            draft.reason = deployment.emergency_reason.clone();
            draft.note = Some(format!(
                "still owed by {} since {} ({}); record it with: sluice review {} {} \"what you found\"",
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                format_millis(owed_at),
                human_duration(at - owed_at),
                deployment.migration_id,
                deployment.environment
            ));
            draft.event_key = Some(format!("{deployment_id}:review:{periods}"));
            let note = draft.note.clone().unwrap_or_default();
            let event = self
                .notify_deployment(&mut tx, &deployment, at, draft)
                .await?;
            self.record_notice(
                &mut tx,
                at,
                "review_reminder_sent",
                Some(&deployment),
                None,
                &note,
                event,
            )
            .await?;
            tx.commit().await?;
            round.review_reminders += 1;
        }
        Ok(())
    }

    async fn freeze_notices(&self, at: i64, round: &mut ScheduledRound) -> Result<()> {
        let now = self.clock.now();
        for env in &self.config.environments {
            for window in &env.freeze_windows {
                let subject = format!("freeze:{}:{}", env.name, window.name);
                let mut tx = self.store.begin().await?;
                let mut changed = false;
                if let Some(end) = window.active_until(now) {
                    let end = millis(end);
                    if self
                        .store
                        .insert_notice(&mut tx, &subject, &format!("started:{end}"), at)
                        .await?
                    {
                        let mut draft = Draft::new(NoticeKind::FreezeStarted, "sluice");
                        draft.note = Some(format!(
                            "freeze window {window}: no deployment starts in {} until {} (an emergency override excepted)",
                            env.name,
                            format_millis(end)
                        ));
                        draft.event_key = Some(format!("{subject}:started:{end}"));
                        let note = draft.note.clone().unwrap_or_default();
                        let event = self.notify_environment(env.name.as_str(), at, draft);
                        self.record_notice(
                            &mut tx,
                            at,
                            "freeze_started",
                            None,
                            Some(env.name.as_str()),
                            &note,
                            event,
                        )
                        .await?;
                        changed = true;
                    }
                }
                // Every started window whose end has passed announces its end once.
                for notice in self.store.notices(&mut tx, &subject).await? {
                    let Some(end) = notice
                        .strip_prefix("started:")
                        .and_then(|e| e.parse::<i64>().ok())
                    else {
                        continue;
                    };
                    if end <= at
                        && self
                            .store
                            .insert_notice(&mut tx, &subject, &format!("ended:{end}"), at)
                            .await?
                    {
                        let mut draft = Draft::new(NoticeKind::FreezeEnded, "sluice");
                        draft.note = Some(format!(
                            "freeze window {window} ended at {}: deployments start again in {}",
                            format_millis(end),
                            env.name
                        ));
                        draft.event_key = Some(format!("{subject}:ended:{end}"));
                        let note = draft.note.clone().unwrap_or_default();
                        let event = self.notify_environment(env.name.as_str(), at, draft);
                        self.record_notice(
                            &mut tx,
                            at,
                            "freeze_ended",
                            None,
                            Some(env.name.as_str()),
                            &note,
                            event,
                        )
                        .await?;
                        changed = true;
                    }
                }
                if changed {
                    round.freeze_notices += 1;
                    tx.commit().await?;
                }
            }
        }
        Ok(())
    }
}

impl Service {
    /// The audit record of a notice the daemon sent on its own (who was reminded of what,
    /// when), carrying its event to the notifier.
    #[allow(clippy::too_many_arguments)]
    async fn record_notice(
        &self,
        tx: &mut Tx,
        at: i64,
        action: &str,
        deployment: Option<&DeploymentRow>,
        environment: Option<&str>,
        note: &str,
        event: Option<notifications::Event>,
    ) -> Result<()> {
        let to: Vec<&str> = event
            .iter()
            .flat_map(|e| e.notice.recipients.iter().map(|r| r.name.as_str()))
            .chain(
                event
                    .iter()
                    .flat_map(|e| e.notice.addresses.iter().map(String::as_str)),
            )
            .collect();
        let mut entry = audit(
            at,
            "sluice",
            action,
            deployment,
            None,
            serde_json::json!({"note": note, "to": to}),
        );
        if let Some(environment) = environment {
            entry.environment = Some(environment.to_owned());
        }
        let entry = notifications::carrying(entry, event.as_slice())?;
        self.store.insert_audit(tx, &entry).await?;
        Ok(())
    }
}

/// `3h05m`, `45m`, `20s`: how long, for people.
fn human_duration(ms: i64) -> String {
    let seconds = (ms / 1000).max(0);
    let (h, m, s) = (seconds / 3600, (seconds % 3600) / 60, seconds % 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    }
}

//! Notification events: what each one says and to whom, written to the outbox inside the
//! transaction of the change that causes it (never sent from a request), plus the operations on
//! the outbox (list, requeue a dead row, channel health, a test message) and post-emergency
//! reviews. Delivery is the notifier's (crate::notify).

use super::*;
use crate::domain::notice::NoticeKind;
use crate::store::{OutboxRow, ReviewRow};
use serde::Serialize;

/// One notification event as channels render it: self-contained, so that what is sent says
/// what was true when the event happened, however late it is delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notice {
    pub event_id: String,
    pub kind: NoticeKind,
    pub at: String,
    /// Who caused it ("sluice" for the daemon's own work).
    pub actor: String,
    pub environment: Option<String>,
    pub deployment_id: Option<String>,
    pub state: Option<DeploymentState>,
    pub migration: Option<NoticeMigration>,
    /// Who has approved the current scripts, with the role each signed as.
    #[serde(default)]
    pub approvals: Vec<NoticeApproval>,
    #[serde(default)]
    pub missing_roles: Vec<Role>,
    pub deadline: Option<String>,
    pub error: Option<String>,
    /// A rejection's comment, a lock's or override's reason, a review's comment.
    pub reason: Option<String>,
    /// A link to a page where the deployment can be read and decided on. None until the web
    /// dashboard serves such a page: the REST URL is not one (a browser gets 401 there).
    pub link: Option<String>,
    /// The CLI commands that show the deployment (its scripts, findings and checksum) and,
    /// where an approval is asked, decide on it: what the reader can run now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    /// The people the event is for (approval requests mention them in Slack; email goes to
    /// them besides a channel's fixed recipients).
    #[serde(default)]
    pub recipients: Vec<NoticeRecipient>,
    /// Fixed addresses the event is for (escalation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Anything else worth a line (the freeze window's name, the reminder's point).
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NoticeMigration {
    pub id: String,
    pub description: String,
    pub kind: String,
    pub author: String,
    pub ticket: String,
    pub declared_risk: String,
    pub effective_risk: String,
    /// Why the effective risk is what it is (the SQL analysis' findings).
    pub why: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NoticeApproval {
    pub approver: String,
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NoticeRecipient {
    pub name: String,
    pub email: Option<String>,
    pub slack: Option<String>,
}

impl Notice {
    /// The subject of the event, as a mail client sorts it:
    /// `[sluice][production] approval needed: 012_add_index (MEDIUM)`.
    pub fn subject(&self) -> String {
        let environment = self.environment.as_deref().unwrap_or("all");
        match &self.migration {
            Some(m) => format!(
                "[sluice][{environment}] {}: {} ({})",
                self.kind.headline(),
                m.id,
                m.effective_risk.to_uppercase()
            ),
            None => format!("[sluice][{environment}] {}", self.kind.headline()),
        }
    }
}

/// An event as its audit record carries it until the notifier fans it out: the notice, and
/// what routing and ordering need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub notice: Notice,
    /// Rows with one key are sent in order: the migration's id, or `environment:<name>`.
    pub ordering_key: String,
    pub risk: Option<Risk>,
    /// When it happened (ms): retries are given up counting from here.
    pub at: i64,
}

/// The `events` column of an audit record carrying `events` (None when there are none).
pub fn events_column(events: &[Event]) -> Result<Option<String>> {
    if events.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(events)
        .map(Some)
        .map_err(|e| ServiceError::Unexpected(anyhow::anyhow!("notification events: {e}")))
}

/// An audit record with the events the change causes riding on it.
pub fn carrying(mut entry: AuditRow, events: &[Event]) -> Result<AuditRow> {
    entry.events = events_column(events)?;
    Ok(entry)
}

/// An undelivered notification, as the API lists it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct NotificationView {
    pub id: i64,
    pub event_id: String,
    pub channel: String,
    pub kind: String,
    pub state: String,
    pub environment: Option<String>,
    pub migration_id: Option<String>,
    pub deployment_id: Option<String>,
    pub subject: String,
    pub attempts: i64,
    pub created_at: String,
    pub next_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    pub last_error: Option<String>,
}

impl NotificationView {
    fn from_row(row: OutboxRow) -> NotificationView {
        let subject = serde_json::from_str::<Notice>(&row.payload)
            .map(|n| n.subject())
            .unwrap_or_else(|_| row.kind.clone());
        NotificationView {
            id: row.id,
            subject,
            next_attempt_at: (row.state == "pending").then(|| format_millis(row.next_attempt_at)),
            event_id: row.event_id,
            channel: row.channel,
            kind: row.kind,
            state: row.state,
            environment: row.environment,
            migration_id: row.migration_id,
            deployment_id: row.deployment_id,
            attempts: row.attempts,
            created_at: format_millis(row.created_at),
            last_attempt_at: row.last_attempt_at.map(format_millis),
            last_error: row.last_error,
        }
    }
}

/// A channel's health.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ChannelView {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub enabled: bool,
    /// Why a channel is off.
    pub disabled_reason: Option<String>,
    pub pending: i64,
    pub dead: i64,
    pub delivered: i64,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// What a test message got back.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TestResult {
    pub channel: String,
    pub delivered: bool,
    pub answer: String,
    pub duration_ms: i64,
}

/// What an event is about, before the service fills in the rest.
pub(super) struct Draft<'a> {
    pub kind: NoticeKind,
    pub actor: &'a str,
    pub reason: Option<String>,
    pub note: Option<String>,
    /// Who it is for, by role (holders are looked up in users.yml)...
    pub roles: Vec<Role>,
    /// ... by name ...
    pub people: Vec<String>,
    /// ... and by address.
    pub addresses: Vec<String>,
    /// For scheduled notices: the event id derives from this key, so that two daemons that
    /// both decide to send one notice write one row.
    pub event_key: Option<String>,
    /// About the migration as a whole (submitted), not one of its deployments.
    pub whole_migration: bool,
    /// The deployment's migration, when the caller has it at hand (saves a read).
    pub migration: Option<&'a MigrationRow>,
    /// Also for the migration's author and everyone who approved the deployment.
    pub to_author_and_approvers: bool,
    /// The deployment's approvals, when the caller has them at hand (saves a read).
    pub approvals: Option<&'a [ApprovalRow]>,
}

impl<'a> Draft<'a> {
    pub fn new(kind: NoticeKind, actor: &'a str) -> Draft<'a> {
        Draft {
            kind,
            actor,
            reason: None,
            note: None,
            roles: Vec::new(),
            people: Vec::new(),
            addresses: Vec::new(),
            event_key: None,
            whole_migration: false,
            migration: None,
            to_author_and_approvers: false,
            approvals: None,
        }
    }
}

/// An event of `notice`; `event_key`, when given, makes its id derive from the key, so that
/// two daemons sending the same scheduled notice send one event id.
fn event(
    notice: Notice,
    ordering_key: String,
    risk: Option<Risk>,
    at: i64,
    event_key: Option<&str>,
) -> Event {
    let mut notice = notice;
    if let Some(key) = event_key {
        use sha2::{Digest, Sha256};
        notice.event_id = hex::encode(&Sha256::digest(key.as_bytes())[..12]);
    }
    Event {
        notice,
        ordering_key,
        risk,
        at,
    }
}

pub fn new_event_id(at: i64) -> String {
    let mut bytes = [0u8; 8];
    // A failure of the system's random source is not worth losing an event over: the time
    // still makes the id unique enough for a receiver's duplicate check.
    let _ = getrandom::fill(&mut bytes);
    format!("{at:x}-{}", hex::encode(bytes))
}

impl Service {
    /// Whether any channel is on at all (no channel: events cost nothing).
    pub fn notifications_on(&self) -> bool {
        !self.config.notifications.channels.is_empty()
    }

    /// The event of a deployment, for the audit record of the change to carry (None when no
    /// channel takes it). Reads what the caller has not at hand in its transaction.
    pub(super) async fn notify_deployment(
        &self,
        tx: &mut sqlx::AnyConnection,
        deployment: &DeploymentRow,
        at: i64,
        mut draft: Draft<'_>,
    ) -> Result<Option<Event>> {
        let environment = (!draft.whole_migration).then_some(deployment.environment.as_str());
        let risk: Option<Risk> = deployment.effective_risk.parse().ok();
        if !self.any_channel_wants(draft.kind, environment, risk) {
            return Ok(None);
        }
        let loaded;
        let migration = match draft.migration {
            Some(m) => m,
            None => {
                loaded = self
                    .store
                    .migration(&mut *tx, &deployment.migration_id)
                    .await?
                    .ok_or_else(|| {
                        ServiceError::Unexpected(anyhow::anyhow!(
                            "deployment {} has no migration",
                            deployment.id
                        ))
                    })?;
                &loaded
            }
        };
        let loaded_approvals;
        let approvals = match draft.approvals {
            Some(a) => a,
            None => {
                loaded_approvals = self.store.approvals(&mut *tx, &deployment.id).await?;
                &loaded_approvals[..]
            }
        };
        if draft.to_author_and_approvers {
            draft.people.push(migration.author.clone());
            draft
                .people
                .extend(approvals.iter().map(|a| a.approver.clone()));
        }
        let current: Vec<&ApprovalRow> = approvals
            .iter()
            .filter(|a| a.checksum == migration.checksum)
            .collect();
        let missing_roles = match self.policy_for(deployment) {
            Ok(policy) if deployment.state == DeploymentState::AwaitingApproval => {
                policy
                    .progress(&approval_records(approvals)?, &migration.checksum)
                    .missing_roles
            }
            _ => Vec::new(),
        };
        // Who an approval is asked of: the holders of the missing roles, never an author.
        let authors: Vec<String> = std::iter::once(migration.author.clone())
            .chain(migration.authors.iter().cloned())
            .collect();
        if matches!(
            draft.kind,
            NoticeKind::ApprovalRequested | NoticeKind::Reminder | NoticeKind::Escalation
        ) {
            draft.roles.extend(missing_roles.iter().copied());
        }
        let mut recipients = self.recipients(&draft.roles, &draft.people);
        if matches!(
            draft.kind,
            NoticeKind::ApprovalRequested | NoticeKind::Reminder | NoticeKind::Escalation
        ) {
            recipients.retain(|r| !authors.contains(&r.name));
        }
        // A notice goes out even when the findings cannot be read (the views report that).
        let findings: Vec<crate::lint::Finding> =
            serde_json::from_str(&migration.findings).unwrap_or_default();
        let why = findings
            .iter()
            .map(|f| format!("line {}: {}", f.line, f.message))
            .collect();
        let whole = draft.whole_migration;
        let commands = match environment.filter(|_| !whole) {
            Some(environment) => {
                let mut commands = vec![format!("sluice show {} {environment}", migration.id)];
                let asks = matches!(
                    draft.kind,
                    NoticeKind::ApprovalRequested | NoticeKind::Reminder | NoticeKind::Escalation
                );
                if asks && let Some(role) = missing_roles.first() {
                    commands.push(format!(
                        "sluice approve {} {role} <your name> \"<what you checked>\" --environment {environment}",
                        migration.id
                    ));
                }
                commands
            }
            None => vec![format!("sluice show {}", migration.id)],
        };
        let notice = Notice {
            event_id: new_event_id(at),
            kind: draft.kind,
            at: format_millis(at),
            actor: draft.actor.to_owned(),
            environment: environment.map(str::to_owned),
            deployment_id: (!whole).then(|| deployment.id.clone()),
            state: (!whole).then_some(deployment.state),
            migration: Some(NoticeMigration {
                id: migration.id.clone(),
                description: migration.description.clone(),
                kind: migration.kind.clone(),
                author: migration.author.clone(),
                ticket: migration.ticket.clone(),
                declared_risk: migration.declared_risk.clone(),
                effective_risk: deployment.effective_risk.clone(),
                why,
            }),
            approvals: current
                .iter()
                .map(|a| NoticeApproval {
                    approver: a.approver.clone(),
                    role: a.role.clone(),
                })
                .collect(),
            missing_roles: if whole { Vec::new() } else { missing_roles },
            deadline: deployment.deadline_at.filter(|_| !whole).map(format_millis),
            error: deployment.error.clone(),
            reason: draft.reason,
            link: None,
            commands,
            recipients,
            addresses: draft.addresses,
            note: draft.note,
        };
        Ok(Some(event(
            notice,
            migration.id.clone(),
            risk,
            at,
            draft.event_key.as_deref(),
        )))
    }

    /// The event of an environment (lock, freeze window), for an audit record to carry.
    pub(super) fn notify_environment(
        &self,
        environment: &str,
        at: i64,
        draft: Draft<'_>,
    ) -> Option<Event> {
        if !self.any_channel_wants(draft.kind, Some(environment), None) {
            return None;
        }
        let notice = Notice {
            event_id: new_event_id(at),
            kind: draft.kind,
            at: format_millis(at),
            actor: draft.actor.to_owned(),
            environment: Some(environment.to_owned()),
            deployment_id: None,
            state: None,
            migration: None,
            approvals: Vec::new(),
            missing_roles: Vec::new(),
            deadline: None,
            error: None,
            reason: draft.reason,
            link: None,
            commands: vec![format!("sluice status {environment}")],
            recipients: self.recipients(&draft.roles, &draft.people),
            addresses: draft.addresses,
            note: draft.note,
        };
        Some(event(
            notice,
            format!("environment:{environment}"),
            None,
            at,
            draft.event_key.as_deref(),
        ))
    }

    fn any_channel_wants(
        &self,
        kind: NoticeKind,
        environment: Option<&str>,
        risk: Option<Risk>,
    ) -> bool {
        self.config
            .notifications
            .channels
            .iter()
            .any(|c| c.route.wants(kind, environment, risk))
    }

    /// The users holding any of `roles`, and those named in `people`, once each.
    fn recipients(&self, roles: &[Role], people: &[String]) -> Vec<NoticeRecipient> {
        let users = self.users.read().expect("users lock").clone();
        users
            .iter()
            .filter(|u| {
                people.iter().any(|p| p == u.name.as_str())
                    || u.roles.iter().any(|r| roles.contains(r))
            })
            .map(|u| NoticeRecipient {
                name: u.name.to_string(),
                email: u.email.clone(),
                slack: u.slack.clone(),
            })
            .collect()
    }

    /// The outbox rows of an event: one per channel that takes it (an email channel only when
    /// someone has an address to send it to). Routing is decided at fan-out, by the channels
    /// in force then.
    fn outbox_rows(&self, event: &Event, payload: &str, rows: &mut Vec<OutboxRow>) {
        let notice = &event.notice;
        let at = event.at;
        let delivery = &self.config.notifications.delivery;
        for channel in &self.config.notifications.channels {
            if !channel
                .route
                .wants(notice.kind, notice.environment.as_deref(), event.risk)
            {
                continue;
            }
            if let crate::config::ChannelKind::Email(email) = &channel.kind
                && email.recipients.is_empty()
                && notice.addresses.is_empty()
                && !notice.recipients.iter().any(|r| r.email.is_some())
            {
                continue;
            }
            rows.push(OutboxRow {
                id: 0,
                event_id: notice.event_id.clone(),
                channel: channel.name.clone(),
                kind: notice.kind.to_string(),
                ordering_key: event.ordering_key.clone(),
                environment: notice.environment.clone(),
                migration_id: notice.migration.as_ref().map(|m| m.id.clone()),
                deployment_id: notice.deployment_id.clone(),
                payload: payload.to_owned(),
                state: "pending".into(),
                attempts: 0,
                created_at: at,
                next_attempt_at: at,
                give_up_at: at + delivery.give_up_after_ms as i64,
                claimed_until: None,
                claim_token: None,
                last_attempt_at: None,
                last_error: None,
                delivered_at: None,
            });
        }
    }

    /// Moves the events that audit records carry to the outbox, a row per channel that takes
    /// each, oldest first, and clears them from their records, in one transaction (a crash
    /// before the commit leaves them to the next fan-out; two daemons take turns). Returns
    /// how many records it emptied.
    pub async fn fan_out_events(&self, limit: usize) -> Result<usize> {
        let mut tx = self.store.begin().await?;
        self.store.lock_fan_out(&mut tx).await?;
        let carried = self
            .store
            .unsent_audit_events(&mut tx, limit.max(1) as i64)
            .await?;
        if carried.is_empty() {
            return Ok(0);
        }
        let mut rows = Vec::new();
        let mut ids = Vec::with_capacity(carried.len());
        for (id, column) in &carried {
            ids.push(*id);
            // What this daemon wrote it can read; anything else is kept out of the outbox
            // (and logged), not retried for ever.
            let events: Vec<serde_json::Value> = match serde_json::from_str(column) {
                Ok(events) => events,
                Err(e) => {
                    tracing::error!(audit_id = id, error = %e, "unreadable notification events on an audit record; dropped");
                    continue;
                }
            };
            for value in events {
                let payload = value.get("notice").map(|n| n.to_string());
                match (serde_json::from_value::<Event>(value), payload) {
                    (Ok(event), Some(payload)) => self.outbox_rows(&event, &payload, &mut rows),
                    (Err(e), _) => {
                        tracing::error!(audit_id = id, error = %e, "unreadable notification event on an audit record; dropped")
                    }
                    (Ok(_), None) => {}
                }
            }
        }
        self.store.insert_outbox_rows(&mut tx, &rows).await?;
        self.store.mark_fanned_out(&mut tx, &ids).await?;
        tx.commit().await?;
        Ok(carried.len())
    }

    /// Wakes the fan-out after a commit whose audit records may carry events.
    pub fn events_written(&self) {
        if self.notifications_on() {
            self.signals.fan_out.notify_one();
        }
    }

    /// The notice a deployment gives on entering its current state (see
    /// NoticeKind::for_state), with whom it concerns: the author and the approvers so far.
    pub async fn notify_state(
        &self,
        tx: &mut sqlx::AnyConnection,
        deployment: &DeploymentRow,
        at: i64,
        actor: &str,
        reason: Option<String>,
        migration: Option<&MigrationRow>,
    ) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        if !self.notifications_on() {
            return Ok(events);
        }
        let kind = if deployment.state == DeploymentState::AwaitingApproval {
            NoticeKind::ApprovalRequested
        } else {
            match NoticeKind::for_state(deployment.state) {
                Some(kind) => kind,
                None => return Ok(events),
            }
        };
        let mut draft = Draft::new(kind, actor);
        draft.reason = reason.clone();
        draft.migration = migration;
        draft.to_author_and_approvers = kind != NoticeKind::ApprovalRequested;
        events.extend(
            self.notify_deployment(&mut *tx, deployment, at, draft)
                .await?,
        );
        if kind == NoticeKind::Failed {
            // Every failure halts its environment's queue until the deployment is retried,
            // rolled back or cancelled: said to the leads who can do that, for channels that
            // take it.
            let mut draft = Draft::new(NoticeKind::QueueHalted, actor);
            draft.reason = reason;
            draft.migration = migration;
            draft.roles = vec![Role::DataOpsLead];
            draft.people = migration.map(|m| m.author.clone()).into_iter().collect();
            draft.note = Some(format!(
                "nothing after {} starts in {} until it is retried, rolled back or cancelled",
                deployment.migration_id, deployment.environment
            ));
            events.extend(
                self.notify_deployment(&mut *tx, deployment, at, draft)
                    .await?,
            );
        }
        Ok(events)
    }

    // ---- the API's operations -------------------------------------------------------------

    /// Undelivered notifications: `pending` (waiting for a retry or in flight) or `dead`.
    pub async fn notifications(
        &self,
        _caller: &Caller,
        state: &str,
        limit: Option<i64>,
    ) -> Result<Vec<NotificationView>> {
        if !matches!(state, "pending" | "dead") {
            return Err(ServiceError::Invalid(format!(
                "state: \"{}\" is not a state to list (known: pending, dead)",
                domain::text::printable_prefix(state)
            )));
        }
        let limit = limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ServiceError::Invalid(format!(
                "limit: {limit} is out of range (1 to 1000)"
            )));
        }
        let mut conn = self.store.conn().await?;
        let rows = self.store.outbox(&mut conn, state, limit).await?;
        Ok(rows.into_iter().map(NotificationView::from_row).collect())
    }

    /// Puts a dead notification back in line (data_ops_lead, admin), audited.
    pub async fn retry_notification(&self, caller: &Caller, id: &str) -> Result<NotificationView> {
        domain::authz::may_manage_notifications(
            &caller.name,
            &caller.roles,
            "requeue notifications",
        )?;
        let id: i64 = id.parse().map_err(|_| {
            ServiceError::Invalid(format!(
                "notification id \"{}\" is not a number",
                domain::text::printable_prefix(id)
            ))
        })?;
        let at = self.now();
        let give_up = at + self.config.notifications.delivery.give_up_after_ms as i64;
        let mut tx = self.store.begin().await?;
        let row = self
            .store
            .outbox_row(&mut tx, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no notification {id}")))?;
        if !self.store.requeue_outbox(&mut tx, id, at, give_up).await? {
            return Err(ServiceError::Conflict(format!(
                "notification {id} is {}; only a dead one can be requeued",
                row.state
            )));
        }
        self.store
            .insert_audit(
                &mut tx,
                &AuditRow {
                    id: 0,
                    at,
                    actor: caller.name.to_string(),
                    action: "notification_requeued".into(),
                    environment: row.environment.clone(),
                    migration_id: row.migration_id.clone(),
                    deployment_id: row.deployment_id.clone(),
                    detail: serde_json::json!({"notification": id, "channel": row.channel, "kind": row.kind, "last_error": row.last_error}).to_string(),
                    events: None,
                },
            )
            .await?;
        // The row as the requeue left it: read before the commit, since the
        // notifier may deliver it the moment the commit lands.
        let row = self
            .store
            .outbox_row(&mut tx, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no notification {id}")))?;
        tx.commit().await?;
        self.signals.outbox.notify_one();
        Ok(NotificationView::from_row(row))
    }

    /// Every channel of notifications.yml, with its health.
    pub async fn notification_channels(&self, _caller: &Caller) -> Result<Vec<ChannelView>> {
        let mut conn = self.store.conn().await?;
        let stats = self.store.channel_stats(&mut conn).await?;
        let mut views = Vec::new();
        for channel in &self.config.notifications.channels {
            let s = stats.iter().find(|s| s.channel == channel.name);
            views.push(ChannelView {
                name: channel.name.clone(),
                kind: channel.kind.type_name().into(),
                enabled: true,
                disabled_reason: None,
                pending: s.map_or(0, |s| s.pending),
                dead: s.map_or(0, |s| s.dead),
                delivered: s.map_or(0, |s| s.delivered),
                last_success_at: s.and_then(|s| s.last_success_at).map(format_millis),
                last_error: s.and_then(|s| s.last_error.clone()),
                last_error_at: s.and_then(|s| s.last_error_at).map(format_millis),
            });
        }
        for (name, why) in &self.config.notifications.disabled {
            views.push(ChannelView {
                name: name.clone(),
                kind: String::new(),
                enabled: false,
                disabled_reason: Some(why.clone()),
                pending: 0,
                dead: 0,
                delivered: 0,
                last_success_at: None,
                last_error: None,
                last_error_at: None,
            });
        }
        Ok(views)
    }

    /// Sends a test message through one channel now and returns the receiver's answer
    /// (data_ops_lead, admin). The one send made inside a request: it is what was asked for.
    pub async fn test_notification(&self, caller: &Caller, channel: &str) -> Result<TestResult> {
        domain::authz::may_manage_notifications(
            &caller.name,
            &caller.roles,
            "send test notifications",
        )?;
        let Some(config) = self.config.notifications.channel(channel) else {
            let known: Vec<&str> = self
                .config
                .notifications
                .channels
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            return Err(ServiceError::NotFound(format!(
                "unknown notification channel \"{}\" (on: {})",
                domain::text::printable_prefix(channel),
                if known.is_empty() {
                    "none; see config/notifications.yml".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        };
        let at = self.now();
        let notice = Notice {
            event_id: new_event_id(at),
            kind: NoticeKind::Test,
            at: format_millis(at),
            actor: caller.name.to_string(),
            environment: None,
            deployment_id: None,
            state: None,
            migration: None,
            approvals: Vec::new(),
            missing_roles: Vec::new(),
            deadline: None,
            error: None,
            reason: Some(format!("a test message sent by {}", caller.name)),
            link: None,
            commands: vec!["sluice notifications".into()],
            recipients: self.recipients(&[], &[caller.name.to_string()]),
            addresses: Vec::new(),
            note: None,
        };
        let sender = crate::notify::Sender::new(&self.config.notifications.delivery)
            .map_err(ServiceError::Unexpected)?;
        let started = std::time::Instant::now();
        let result = sender.send(config, &notice).await;
        let duration_ms = started.elapsed().as_millis() as i64;
        Ok(match result {
            Ok(answer) => TestResult {
                channel: channel.to_owned(),
                delivered: true,
                answer,
                duration_ms,
            },
            Err(e) => TestResult {
                channel: channel.to_owned(),
                delivered: false,
                answer: e.to_string(),
                duration_ms,
            },
        })
    }

    /// Records the review an emergency override owes, for a role the caller holds.
    pub async fn review(
        &self,
        caller: &Caller,
        deployment_id: &str,
        comment: &str,
    ) -> Result<DeploymentView> {
        domain::text::field("comment", comment, domain::text::COMMENT)?;
        if comment.trim().is_empty() {
            return Err(ServiceError::Invalid(
                "comment: say what the review found".into(),
            ));
        }
        let at = self.now();
        let mut tx = self.store.begin().await?;
        let (deployment, migration) = self.load_for_change(&mut tx, deployment_id).await?;
        let owed = self.store.reviews(&mut tx, deployment_id).await?;
        let approvals = self.store.approvals(&mut tx, deployment_id).await?;
        let open: Vec<&ReviewRow> = owed.iter().filter(|r| r.reviewer.is_none()).collect();
        let open_roles: Vec<Role> = open.iter().filter_map(|r| r.role.parse().ok()).collect();
        let reviewers: Vec<&str> = owed.iter().filter_map(|r| r.reviewer.as_deref()).collect();
        let approvers: Vec<&str> = approvals.iter().map(|a| a.approver.as_str()).collect();
        let role = domain::authz::may_review(
            &caller.name,
            &caller.roles,
            &approvals::authors_of(&migration)?,
            &approvers,
            &reviewers,
            &open_roles,
            deployment_id,
        )?;
        let review = open
            .iter()
            .find(|r| r.role == role.as_str())
            .expect("may_review picks one of the open roles");
        let filled = ReviewRow {
            deployment_id: deployment_id.to_owned(),
            role: review.role.clone(),
            owed_at: review.owed_at,
            reviewer: Some(caller.name.to_string()),
            comment: Some(comment.trim().to_owned()),
            reviewed_at: Some(at),
        };
        if !self.store.record_review(&mut tx, &filled).await? {
            return Err(ServiceError::Conflict(format!(
                "the {} review of {deployment_id} was recorded meanwhile by someone else",
                review.role
            )));
        }
        let still_owed: Vec<&str> = open
            .iter()
            .filter(|r| r.role != review.role)
            .map(|r| r.role.as_str())
            .collect();
        let mut draft = Draft::new(NoticeKind::ReviewRecorded, caller.name.as_str());
        draft.reason = Some(comment.trim().to_owned());
        draft.note = Some(if still_owed.is_empty() {
            format!(
                "{} review by {}; no review is owed any more",
                review.role, caller.name
            )
        } else {
            format!(
                "{} review by {}; still owed: {}",
                review.role,
                caller.name,
                still_owed.join(", ")
            )
        });
        let mut events = Vec::new();
        if self.notifications_on() {
            draft.to_author_and_approvers = true;
            events.extend(
                self.notify_deployment(&mut tx, &deployment, at, draft)
                    .await?,
            );
        }
        let entry = audit(
            at,
            caller.name.as_str(),
            "review_recorded",
            Some(&deployment),
            None,
            serde_json::json!({"role": review.role, "comment": comment.trim(), "still_owed": still_owed}),
        );
        self.store
            .insert_audit(&mut tx, &carrying(entry, &events)?)
            .await?;
        tx.commit().await?;
        self.events_written();
        self.deployment(deployment_id).await
    }

    /// Opens the reviews an emergency override owes (one per skipped role), in the override's
    /// transaction, and returns the override's events for its audit record: the override to
    /// everyone whose approval it stood in for, the review owed to the skipped roles.
    pub(super) async fn open_reviews(
        &self,
        tx: &mut Tx,
        deployment: &DeploymentRow,
        skipped: &[Role],
        at: i64,
        actor: &str,
        reason: &str,
    ) -> Result<Vec<Event>> {
        let mut roles: Vec<Role> = skipped.to_vec();
        roles.sort();
        roles.dedup();
        for role in &roles {
            self.store
                .insert_owed_review(&mut *tx, &deployment.id, role.as_str(), at)
                .await?;
        }
        let mut events = Vec::new();
        if !self.notifications_on() {
            return Ok(events);
        }
        let policy = self.policy_for(deployment)?;
        let mut draft = Draft::new(NoticeKind::EmergencyOverride, actor);
        draft.reason = Some(reason.to_owned());
        draft.roles = policy.required_roles.clone();
        draft.note = Some(format!(
            "approved without: {}",
            if roles.is_empty() {
                "nothing (every required role had approved)".to_owned()
            } else {
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
        events.extend(
            self.notify_deployment(&mut *tx, deployment, at, draft)
                .await?,
        );
        if !roles.is_empty() {
            let mut draft = Draft::new(NoticeKind::ReviewOwed, actor);
            draft.reason = Some(reason.to_owned());
            draft.roles = roles.clone();
            draft.note = Some(format!(
                "record it with: sluice review {} {} \"what you found\"",
                deployment.migration_id, deployment.environment
            ));
            events.extend(
                self.notify_deployment(&mut *tx, deployment, at, draft)
                    .await?,
            );
        }
        Ok(events)
    }
}

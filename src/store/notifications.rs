//! The notification tables: the outbox with its attempts, the scheduled notices already sent,
//! and the reviews an emergency override owes.

use super::{Backend, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    /// Shared by the event's rows in every channel: receivers use it to drop duplicates.
    pub event_id: String,
    pub channel: String,
    pub kind: String,
    pub ordering_key: String,
    pub environment: Option<String>,
    pub migration_id: Option<String>,
    pub deployment_id: Option<String>,
    /// The event as JSON (service::notifications::Notice).
    pub payload: String,
    /// pending, delivered or dead.
    pub state: String,
    pub attempts: i64,
    pub created_at: i64,
    pub next_attempt_at: i64,
    pub give_up_at: i64,
    pub claimed_until: Option<i64>,
    pub claim_token: Option<String>,
    pub last_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
}

/// One attempt to send a row, as recorded.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub id: i64,
    /// The claim the attempt was made under.
    pub token: String,
    pub at: i64,
    pub duration_ms: i64,
    /// The receiver's answer, or why the send failed.
    pub answer: String,
    pub result: DeliveryResult,
}

/// What one attempt to send a row came to.
#[derive(Debug, Clone)]
pub enum DeliveryResult {
    Delivered,
    /// Try again at this instant.
    Retry(i64),
    /// Given up: the row stays, marked dead.
    Dead,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    pub channel: String,
    pub pending: i64,
    pub dead: i64,
    pub delivered: i64,
    pub last_success_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReviewRow {
    pub deployment_id: String,
    pub role: String,
    pub owed_at: i64,
    pub reviewer: Option<String>,
    pub comment: Option<String>,
    pub reviewed_at: Option<i64>,
}

const OUTBOX_COLUMNS: &str = "id, event_id, channel, kind, ordering_key, environment, migration_id, deployment_id, payload, state, attempts, created_at, next_attempt_at, give_up_at, claimed_until, claim_token, last_attempt_at, last_error, delivered_at";

fn outbox_from_row(row: &AnyRow) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        channel: row.try_get("channel")?,
        kind: row.try_get("kind")?,
        ordering_key: row.try_get("ordering_key")?,
        environment: row.try_get("environment")?,
        migration_id: row.try_get("migration_id")?,
        deployment_id: row.try_get("deployment_id")?,
        payload: row.try_get("payload")?,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        created_at: row.try_get("created_at")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        give_up_at: row.try_get("give_up_at")?,
        claimed_until: row.try_get("claimed_until")?,
        claim_token: row.try_get("claim_token")?,
        last_attempt_at: row.try_get("last_attempt_at")?,
        last_error: row.try_get("last_error")?,
        delivered_at: row.try_get("delivered_at")?,
    })
}

fn review_from_row(row: &AnyRow) -> Result<ReviewRow, StoreError> {
    Ok(ReviewRow {
        deployment_id: row.try_get("deployment_id")?,
        role: row.try_get("role")?,
        owed_at: row.try_get("owed_at")?,
        reviewer: row.try_get("reviewer")?,
        comment: row.try_get("comment")?,
        reviewed_at: row.try_get("reviewed_at")?,
    })
}

impl Store {
    /// Writes outbox rows, many per statement (the fan-out's; see 0004_events_on_audit.sql).
    pub async fn insert_outbox_rows(
        &self,
        conn: &mut AnyConnection,
        rows: &[OutboxRow],
    ) -> Result<(), StoreError> {
        // 11 parameters a row: 50 rows stay far below either backend's limit.
        for chunk in rows.chunks(50) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p = |k: usize| format!("${}", i * 11 + k);
                    format!(
                        "({}, {}, {}, {}, {}, {}, {}, {}, 'pending', 0, {}, {}, {})",
                        p(1),
                        p(2),
                        p(3),
                        p(4),
                        p(5),
                        p(6),
                        p(7),
                        p(8),
                        p(9),
                        p(10),
                        p(11)
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO notification_outbox (event_id, channel, kind, ordering_key, environment, migration_id, deployment_id, payload, state, attempts, created_at, next_attempt_at, give_up_at) VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for row in chunk {
                query = query
                    .bind(&row.event_id)
                    .bind(&row.channel)
                    .bind(&row.kind)
                    .bind(&row.ordering_key)
                    .bind(&row.environment)
                    .bind(&row.migration_id)
                    .bind(&row.deployment_id)
                    .bind(&row.payload)
                    .bind(row.created_at)
                    .bind(row.next_attempt_at)
                    .bind(row.give_up_at);
            }
            query.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Serialises fan-outs (two daemons on one PostgreSQL store): held until the caller's
    /// transaction ends. SQLite's one writer serialises them already.
    pub async fn lock_fan_out(&self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query(
                "UPDATE counters SET value = value + 1 WHERE name = 'notification_fan_out'",
            )
            .execute(conn)
            .await?;
        }
        Ok(())
    }

    /// Audit records whose events are not fanned out yet, oldest first: (id, events).
    /// PostgreSQL: the records that still carry events (the fan-out clears them). SQLite:
    /// those after the fan-out's cursor (one writer commits records in id order).
    pub async fn unsent_audit_events(
        &self,
        conn: &mut AnyConnection,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let sql = match self.backend {
            Backend::Postgres => {
                "SELECT id, events FROM audit_log WHERE events IS NOT NULL ORDER BY id LIMIT $1"
            }
            Backend::Sqlite => {
                "SELECT id, events FROM audit_log WHERE id > (SELECT value FROM counters WHERE name = 'notification_fan_out') AND events IS NOT NULL ORDER BY id LIMIT $1"
            }
        };
        let rows = sqlx::query(sql).bind(limit).fetch_all(conn).await?;
        rows.iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("events")?)))
            .collect()
    }

    /// Marks these audit records' events fanned out. PostgreSQL: clears exactly these (a
    /// record with a smaller id may commit later, and must stay to be fanned out then).
    /// SQLite: moves the cursor past them.
    pub async fn mark_fanned_out(
        &self,
        conn: &mut AnyConnection,
        ids: &[i64],
    ) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            if let Some(last) = ids.iter().max() {
                sqlx::query(
                    "UPDATE counters SET value = $1 WHERE name = 'notification_fan_out' AND value < $1",
                )
                .bind(last)
                .execute(conn)
                .await?;
            }
            return Ok(());
        }
        for chunk in ids.chunks(500) {
            let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE audit_log SET events = NULL WHERE id IN ({})",
                list.join(", ")
            )))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    /// Claims up to `limit` rows that are due and first in line (no earlier pending row with
    /// the same channel and ordering key), until `claimed_until`, under `token`. On PostgreSQL
    /// rows another daemon is claiming are skipped (`FOR UPDATE SKIP LOCKED`); a claim that
    /// expired (its daemon died mid-send) is taken over.
    pub async fn claim_outbox(
        &self,
        now: i64,
        claimed_until: i64,
        token: &str,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let skip_locked = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE notification_outbox SET claimed_until = $1, claim_token = $2 WHERE id IN (\
             SELECT o.id FROM notification_outbox o WHERE o.state = 'pending' AND o.next_attempt_at <= $3 \
             AND (o.claimed_until IS NULL OR o.claimed_until <= $3) \
             AND NOT EXISTS (SELECT 1 FROM notification_outbox e WHERE e.channel = o.channel AND e.ordering_key = o.ordering_key AND e.state = 'pending' AND e.id < o.id) \
             ORDER BY o.id LIMIT $4{skip_locked}) RETURNING {OUTBOX_COLUMNS}"
        );
        let mut tx = self.begin().await?;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(claimed_until)
            .bind(token)
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut rows: Vec<OutboxRow> =
            rows.iter().map(outbox_from_row).collect::<Result<_, _>>()?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Records attempts and their results in one transaction, each on condition that its row
    /// is still claimed under the record's token (a daemon whose claim expired and was taken
    /// over records the attempt only). How many rows changed.
    pub async fn record_deliveries(&self, records: &[DeliveryRecord]) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        let mut changed = 0;
        for r in records {
            let ok = matches!(r.result, DeliveryResult::Delivered);
            sqlx::query(
                "INSERT INTO notification_attempts (outbox_id, at, ok, duration_ms, answer) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(r.id)
            .bind(r.at)
            .bind(i64::from(ok))
            .bind(r.duration_ms)
            .bind(&r.answer)
            .execute(&mut *tx)
            .await?;
            let answer = r.answer.as_str();
            let (state, next, error, delivered): (&str, Option<i64>, Option<&str>, Option<i64>) =
                match r.result {
                    DeliveryResult::Delivered => ("delivered", None, None, Some(r.at)),
                    DeliveryResult::Retry(next) => ("pending", Some(next), Some(answer), None),
                    DeliveryResult::Dead => ("dead", None, Some(answer), None),
                };
            let done = sqlx::query(
                "UPDATE notification_outbox SET state = $3, attempts = attempts + 1, last_attempt_at = $4, next_attempt_at = COALESCE($5, next_attempt_at), last_error = COALESCE($6, last_error), delivered_at = $7, claimed_until = NULL, claim_token = NULL WHERE id = $1 AND claim_token = $2 AND state = 'pending'",
            )
            .bind(r.id)
            .bind(&r.token)
            .bind(state)
            .bind(r.at)
            .bind(next)
            .bind(error)
            .bind(delivered)
            .execute(&mut *tx)
            .await?;
            changed += done.rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Deletes delivered rows (and their attempts) delivered before `before`; how many.
    pub async fn prune_delivered(&self, before: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "DELETE FROM notification_attempts WHERE outbox_id IN (SELECT id FROM notification_outbox WHERE state = 'delivered' AND delivered_at < $1)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query(
            "DELETE FROM notification_outbox WHERE state = 'delivered' AND delivered_at < $1",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Undelivered rows (`pending` or `dead`), oldest first.
    pub async fn outbox(
        &self,
        conn: &mut AnyConnection,
        state: &str,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {OUTBOX_COLUMNS} FROM notification_outbox WHERE state = $1 ORDER BY id LIMIT $2"
        )))
        .bind(state)
        .bind(limit)
        .fetch_all(conn)
        .await?;
        rows.iter().map(outbox_from_row).collect()
    }

    /// One outbox row.
    pub async fn outbox_row(
        &self,
        conn: &mut AnyConnection,
        id: i64,
    ) -> Result<Option<OutboxRow>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {OUTBOX_COLUMNS} FROM notification_outbox WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(conn)
        .await?;
        row.as_ref().map(outbox_from_row).transpose()
    }

    /// Puts a dead row back in line, to be sent at `now` and retried until `give_up_at`.
    pub async fn requeue_outbox(
        &self,
        conn: &mut AnyConnection,
        id: i64,
        now: i64,
        give_up_at: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE notification_outbox SET state = 'pending', next_attempt_at = $2, give_up_at = $3, claimed_until = NULL, claim_token = NULL WHERE id = $1 AND state = 'dead'",
        )
        .bind(id)
        .bind(now)
        .bind(give_up_at)
        .execute(conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The earliest instant a pending row falls due (for the notifier's sleep).
    pub async fn next_outbox_due(&self) -> Result<Option<i64>, StoreError> {
        let mut conn = self.conn().await?;
        let row = sqlx::query(
            "SELECT MIN(CASE WHEN claimed_until IS NOT NULL AND claimed_until > next_attempt_at THEN claimed_until ELSE next_attempt_at END) AS due FROM notification_outbox WHERE state = 'pending'",
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok(row.try_get("due")?)
    }

    pub async fn channel_stats(
        &self,
        conn: &mut AnyConnection,
    ) -> Result<Vec<ChannelStats>, StoreError> {
        let rows = sqlx::query(
            "SELECT channel, \
             SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS pending, \
             SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END) AS dead, \
             SUM(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END) AS delivered, \
             MAX(delivered_at) AS last_success_at \
             FROM notification_outbox GROUP BY channel ORDER BY channel",
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut stats = Vec::new();
        for row in &rows {
            let channel: String = row.try_get("channel")?;
            let last_error = sqlx::query(
                "SELECT a.answer, a.at FROM notification_attempts a JOIN notification_outbox o ON o.id = a.outbox_id WHERE o.channel = $1 AND a.ok = 0 ORDER BY a.id DESC LIMIT 1",
            )
            .bind(&channel)
            .fetch_optional(&mut *conn)
            .await?;
            stats.push(ChannelStats {
                pending: row.try_get("pending")?,
                dead: row.try_get("dead")?,
                delivered: row.try_get("delivered")?,
                last_success_at: row.try_get("last_success_at")?,
                last_error: last_error
                    .as_ref()
                    .map(|r| r.try_get("answer"))
                    .transpose()?,
                last_error_at: last_error.as_ref().map(|r| r.try_get("at")).transpose()?,
                channel,
            });
        }
        Ok(stats)
    }

    /// Notes that a scheduled notice went out; false when it already had (by this daemon or
    /// another one).
    pub async fn insert_notice(
        &self,
        conn: &mut AnyConnection,
        subject: &str,
        notice: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO scheduled_notices (subject, notice, at) VALUES ($1, $2, $3) ON CONFLICT (subject, notice) DO NOTHING",
        )
        .bind(subject)
        .bind(notice)
        .bind(at)
        .execute(conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The `started:<end>` notices of a subject with no `ended:<end>` beside them.
    pub async fn notices(
        &self,
        conn: &mut AnyConnection,
        subject: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.notice FROM scheduled_notices s WHERE s.subject = $1 AND s.notice LIKE 'started:%' AND NOT EXISTS (SELECT 1 FROM scheduled_notices e WHERE e.subject = s.subject AND e.notice = 'ended:' || substr(s.notice, 9))",
        )
        .bind(subject)
        .fetch_all(conn)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("notice").map_err(StoreError::from))
            .collect()
    }

    pub async fn insert_owed_review(
        &self,
        conn: &mut AnyConnection,
        deployment_id: &str,
        role: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO reviews (deployment_id, role, owed_at) VALUES ($1, $2, $3) ON CONFLICT (deployment_id, role) DO NOTHING",
        )
        .bind(deployment_id)
        .bind(role)
        .bind(at)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Fills an owed review; false if it was filled meanwhile.
    pub async fn record_review(
        &self,
        conn: &mut AnyConnection,
        review: &ReviewRow,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE reviews SET reviewer = $3, comment = $4, reviewed_at = $5 WHERE deployment_id = $1 AND role = $2 AND reviewer IS NULL",
        )
        .bind(&review.deployment_id)
        .bind(&review.role)
        .bind(&review.reviewer)
        .bind(&review.comment)
        .bind(review.reviewed_at)
        .execute(conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn reviews(
        &self,
        conn: &mut AnyConnection,
        deployment_id: &str,
    ) -> Result<Vec<ReviewRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT deployment_id, role, owed_at, reviewer, comment, reviewed_at FROM reviews WHERE deployment_id = $1 ORDER BY role",
        )
        .bind(deployment_id)
        .fetch_all(conn)
        .await?;
        rows.iter().map(review_from_row).collect()
    }

    /// Every review still owed, oldest first.
    pub async fn owed_reviews(
        &self,
        conn: &mut AnyConnection,
    ) -> Result<Vec<ReviewRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT deployment_id, role, owed_at, reviewer, comment, reviewed_at FROM reviews WHERE reviewer IS NULL ORDER BY owed_at, deployment_id, role",
        )
        .fetch_all(conn)
        .await?;
        rows.iter().map(review_from_row).collect()
    }
}

-- Notifications (issue 7). The outbox holds one row per event and channel, written in the same
-- transaction as the change that caused the event; the notifier claims due rows (a claim
-- expires, so a dead daemon's rows are taken over), sends them and records every attempt.
-- (Ids are plain rowids: a new row always gets more than the largest existing id, which is all
-- the ordering needs, without AUTOINCREMENT's extra write per row.)
CREATE TABLE notification_outbox (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    -- Rows with one key are sent in id order, one at a time (per migration, or environment).
    ordering_key TEXT NOT NULL,
    environment TEXT,
    migration_id TEXT,
    deployment_id TEXT,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    -- Past this instant a failing row is marked dead instead of being retried.
    give_up_at BIGINT NOT NULL,
    claimed_until BIGINT,
    claim_token TEXT,
    last_attempt_at BIGINT,
    last_error TEXT,
    delivered_at BIGINT
);
CREATE INDEX notification_outbox_due ON notification_outbox (state, next_attempt_at);
CREATE INDEX notification_outbox_order ON notification_outbox (channel, ordering_key, state, id);

CREATE TABLE notification_attempts (
    id INTEGER PRIMARY KEY,
    outbox_id BIGINT NOT NULL,
    at BIGINT NOT NULL,
    ok BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    answer TEXT NOT NULL
);
CREATE INDEX notification_attempts_by_row ON notification_attempts (outbox_id, id);

-- Scheduled notices already sent (a reminder point, an escalation, a day's review reminder, a
-- freeze window's start): the primary key makes each one go out once, whatever the number of
-- daemons and restarts.
CREATE TABLE scheduled_notices (
    subject TEXT NOT NULL,
    notice TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (subject, notice)
);

-- Post-deployment reviews an emergency override owes: one row per skipped role, filled in
-- when someone holding that role records the review.
CREATE TABLE reviews (
    deployment_id TEXT NOT NULL,
    role TEXT NOT NULL,
    owed_at BIGINT NOT NULL,
    reviewer TEXT,
    comment TEXT,
    reviewed_at BIGINT,
    PRIMARY KEY (deployment_id, role)
);

-- Notification events ride on the audit record of the change that causes them: the change
-- writes no row of its own for them (on the embedded SQLite store every statement inside a
-- write transaction costs the one writer; measured in ARCHITECTURE.md). `events` holds the
-- record's events as a JSON array; the notifier fans them out to the outbox (a row per channel).
-- Here, with one writer, records commit in id order, so the fan-out's progress is a cursor
-- (the last record fanned out) and the records keep their events: no page of audit_log is
-- written twice.
ALTER TABLE audit_log ADD COLUMN events TEXT;
INSERT INTO counters (name, value) VALUES ('notification_fan_out', 0);

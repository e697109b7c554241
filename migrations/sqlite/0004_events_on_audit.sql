-- Notification events ride on the audit record of the change that causes them: the change
-- writes no row of its own for them (on the embedded SQLite store every statement inside a
-- write transaction costs the one writer; measured in ARCHITECTURE.md). `events` holds the
-- record's events as a JSON array until the notifier fans them out to the outbox (a row per
-- channel) and clears it, in one transaction.
ALTER TABLE audit_log ADD COLUMN events TEXT;
CREATE INDEX audit_log_unsent_events ON audit_log (id) WHERE events IS NOT NULL;

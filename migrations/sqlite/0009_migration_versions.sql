-- The scripts of every version of a migration that an amendment replaced (issue 19): an
-- approver is shown what changed since the version approved or applied elsewhere, and a refused
-- approval shows what changed since the version its approver read. Keyed by checksum: amending
-- back to an earlier version keeps one row, with the latest replacement.
CREATE TABLE migration_versions (
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    checksum TEXT NOT NULL,
    up_sql TEXT NOT NULL,
    down_sql TEXT,
    replaced_at BIGINT NOT NULL,
    replaced_by TEXT NOT NULL,
    PRIMARY KEY (migration_id, checksum)
);

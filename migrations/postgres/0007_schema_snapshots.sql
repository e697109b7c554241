-- Drift detection (issue 9): each environment's reference schema (taken after every worker
-- round that ran something, or when an operator accepts the live schema), and the drift the
-- scheduler's check found against it: when, the live schema's hash then, and what differed.
CREATE TABLE schema_snapshots (
    environment TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    hash TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    drift_found_at BIGINT,
    drift_hash TEXT,
    drift TEXT
);

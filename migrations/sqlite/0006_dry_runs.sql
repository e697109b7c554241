-- The last dry run of each deployment (issue 9): the script applied in a transaction on the
-- target and rolled back. Shown to approvers with the checksum it ran, so that a dry run of an
-- older version of the scripts is seen to be stale.
CREATE TABLE dry_runs (
    deployment_id TEXT PRIMARY KEY REFERENCES deployments (id),
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    checksum TEXT NOT NULL,
    outcome TEXT NOT NULL,
    report TEXT NOT NULL
);

-- The last rollback test of each deployment (issue 9): up, down and up again on a scratch copy
-- of the environment's schema. Shown to approvers with the checksum it tested; environments
-- with require_rollback_test take no approval without a passing one for the current scripts.
CREATE TABLE rollback_tests (
    deployment_id TEXT PRIMARY KEY REFERENCES deployments (id),
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    checksum TEXT NOT NULL,
    outcome TEXT NOT NULL,
    report TEXT NOT NULL
);

-- The state store's schema (sqlite). Timestamps are milliseconds since the Unix epoch (UTC).
CREATE TABLE migrations (
    id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    description TEXT NOT NULL,
    declared_risk TEXT NOT NULL,
    effective_risk TEXT NOT NULL,
    findings TEXT NOT NULL,
    author TEXT NOT NULL,
    ticket TEXT NOT NULL,
    estimated_duration TEXT NOT NULL,
    up_sql TEXT NOT NULL,
    down_sql TEXT,
    depends_on TEXT NOT NULL,
    checksum TEXT NOT NULL,
    submitted_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    seq BIGINT NOT NULL,
    environment TEXT NOT NULL,
    state TEXT NOT NULL,
    effective_risk TEXT NOT NULL,
    emergency_reason TEXT,
    deadline_at BIGINT,
    error TEXT,
    last_action TEXT,
    started_at BIGINT,
    finished_at BIGINT,
    execution_ms BIGINT,
    transactional BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (environment, seq)
);
CREATE INDEX deployments_by_environment_state ON deployments (environment, state, seq);
CREATE INDEX deployments_by_migration ON deployments (migration_id);
CREATE INDEX deployments_by_deadline ON deployments (state, deadline_at);

CREATE TABLE approvals (
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    approver TEXT NOT NULL,
    role TEXT NOT NULL,
    comment TEXT NOT NULL,
    checksum TEXT NOT NULL,
    approved_at BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, approver, checksum)
);

CREATE TABLE environment_locks (
    environment TEXT PRIMARY KEY,
    locked_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    locked_at BIGINT NOT NULL
);

CREATE TABLE deployment_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX deployment_log_by_deployment ON deployment_log (deployment_id, id);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    environment TEXT,
    migration_id TEXT,
    deployment_id TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_by_migration ON audit_log (migration_id, id);

CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('migration_seq', 0);

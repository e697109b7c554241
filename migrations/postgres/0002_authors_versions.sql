-- Everyone who wrote any version of a migration's scripts is one of its authors (no one of them
-- may approve it outside development); deployments carry a version that every write checks, so
-- that two writers never silently overwrite each other.
ALTER TABLE migrations ADD COLUMN authors TEXT NOT NULL DEFAULT '[]';
UPDATE migrations SET authors = (
    SELECT json_agg(name ORDER BY name)::text FROM (
        SELECT migrations.author AS name
        UNION
        SELECT actor FROM audit_log WHERE audit_log.migration_id = migrations.id AND audit_log.action = 'amended'
    ) AS writers
);
ALTER TABLE deployments ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
-- Set when an emergency deployment was applied ahead of earlier deployments that were waiting.
ALTER TABLE deployments ADD COLUMN out_of_order BIGINT NOT NULL DEFAULT 0;

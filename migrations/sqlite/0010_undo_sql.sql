-- The down script of the version applied in an environment, kept when the migration is amended
-- there (issue 19): the worker rolls that version back with it, then the deployment goes back to
-- approval for the amended version. NULL for every other deployment.
ALTER TABLE deployments ADD COLUMN undo_sql TEXT;

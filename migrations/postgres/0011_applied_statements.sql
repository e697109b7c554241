-- How many statements of a script run statement by statement are applied on the target, for a
-- deployment that stopped part-way (failed, or cancelled since): written by the worker with the
-- error it describes, cleared when the error is (issue 19). NULL for every other deployment.
ALTER TABLE deployments ADD COLUMN applied_statements BIGINT;
-- Rows written before this column: the count was only in the error text the worker wrote,
-- "interrupted after statement k of n ..." (k applied) or "statement k (line ...): ..."
-- (statement k failed: k - 1 applied).
UPDATE deployments
SET applied_statements = CASE
    WHEN error ~ '^interrupted after statement [0-9]'
        THEN substring(error FROM '^interrupted after statement ([0-9]{1,18})')::BIGINT
    ELSE substring(error FROM '^statement ([0-9]{1,18})')::BIGINT - 1
END
WHERE transactional = 0
  AND state IN ('failed', 'cancelled')
  AND (error ~ '^interrupted after statement [0-9]' OR error ~ '^statement [0-9]');

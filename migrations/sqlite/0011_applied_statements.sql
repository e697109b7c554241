-- How many statements of a script run statement by statement are applied on the target, for a
-- deployment that stopped part-way (failed, or cancelled since): written by the worker with the
-- error it describes, cleared when the error is (issue 19). NULL for every other deployment.
ALTER TABLE deployments ADD COLUMN applied_statements BIGINT;
-- Rows written before this column: the count was only in the error text the worker wrote,
-- "interrupted after statement k of n ..." (k applied) or "statement k (line ...): ..."
-- (statement k failed: k - 1 applied). CAST takes the leading digits of the rest.
UPDATE deployments
SET applied_statements = CASE
    WHEN error LIKE 'interrupted after statement %'
        THEN CAST(substr(error, length('interrupted after statement ') + 1) AS INTEGER)
    ELSE CAST(substr(error, length('statement ') + 1) AS INTEGER) - 1
END
WHERE transactional = 0
  AND state IN ('failed', 'cancelled')
  AND (
    (error LIKE 'interrupted after statement %'
        AND substr(error, length('interrupted after statement ') + 1, 1) BETWEEN '0' AND '9')
    OR (error LIKE 'statement %'
        AND substr(error, length('statement ') + 1, 1) BETWEEN '0' AND '9')
  );

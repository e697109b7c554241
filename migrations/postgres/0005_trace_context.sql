-- The W3C trace context (traceparent) of the API call that submitted or released a deployment,
-- so that the worker's spans for it join that call's trace (issue 8).
ALTER TABLE deployments ADD COLUMN trace_context TEXT;

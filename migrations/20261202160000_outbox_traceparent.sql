-- migrate:up

-- The W3C traceparent of the span that wrote the row (OpenTelemetry tracing on), so the relay's delivery of the
-- message joins the trace of the request that caused it. NULL when tracing was off.
ALTER TABLE notify.outbox ADD COLUMN traceparent text;

-- migrate:down

ALTER TABLE notify.outbox DROP COLUMN traceparent;

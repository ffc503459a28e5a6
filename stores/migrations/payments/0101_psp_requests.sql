-- The simulated payment provider's request log: one row per request it
-- receives, answered or not. A real PSP keeps such a log on its side; here it
-- lets an operator or a test count how often the provider was asked, e.g.
-- that a replay of the payments service asked it nothing.
CREATE TABLE psp_requests (
    id              bigserial PRIMARY KEY,
    idempotency_key text NOT NULL,
    operation       text NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX psp_requests_by_key ON psp_requests (idempotency_key);

-- A row the broker refuses for good (too large, unknown topic, not authorised)
-- is set aside with its reason, so the rows after it keep flowing; it stays
-- here (never purged) for operators, and `oms check` reports it.
ALTER TABLE outbox ADD COLUMN parked_at timestamptz, ADD COLUMN park_reason text;
DROP INDEX outbox_unsent;
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_parked ON outbox (id) WHERE parked_at IS NOT NULL;

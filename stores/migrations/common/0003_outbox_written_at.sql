-- When the step inserted the row: clock_timestamp() is the moment of the insert,
-- while created_at (now()) is the transaction's start. The insert is a step's
-- last statement, so created_at -> written_at is the step's work and
-- written_at -> sent_at the commit plus the relay (scripts/bench_breakdown.py).
-- A column default: no extra statement per step. Added without a default, then
-- given one, so the table is not rewritten and older rows stay NULL.
ALTER TABLE outbox ADD COLUMN written_at timestamptz;
ALTER TABLE outbox ALTER COLUMN written_at SET DEFAULT clock_timestamp();

-- Payment intents. The step transaction only records what the payment
-- provider must be asked; the PSP caller (agents/payments/caller.py) asks it
-- after the commit and settles each answer in a short transaction of its own.
--   CHARGING    charge the order: InventoryReserved claimed, no answer yet
--   CANCELLING  refund or void it: OrderCancelled claimed, no answer yet
-- ``request`` is the claimed event the call is for (it holds the payment token,
-- so it is cleared once settled); ``trace`` is the trace context the answer's
-- event is published under. A caller leases the intents it works on
-- (``lease_owner`` until ``lease_until``, renewed while it works); an intent
-- whose lease ran out (its worker died) is taken over by any caller, which
-- first asks the PSP what it made of the request.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check CHECK (status IN
    ('CHARGING', 'CHARGED', 'DECLINED', 'UNKNOWN', 'CANCELLING', 'REFUNDED', 'VOIDED'));
ALTER TABLE payments
    ADD COLUMN request     bytea,
    ADD COLUMN trace       jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN lease_owner uuid,
    ADD COLUMN lease_until timestamptz,
    ADD CONSTRAINT payments_intent_has_request
        CHECK ((status IN ('CHARGING', 'CANCELLING')) = (request IS NOT NULL));
CREATE INDEX payments_intents ON payments (updated_at)
    WHERE status IN ('CHARGING', 'CANCELLING');

-- One payment row per order: the primary key makes a second charge
-- impossible; VOIDED remembers a cancel that arrived before any charge.
CREATE TABLE payments (
    order_id     uuid PRIMARY KEY,
    status       text NOT NULL CHECK (status IN ('CHARGED', 'DECLINED', 'UNKNOWN', 'REFUNDED', 'VOIDED')),
    amount_cents bigint NOT NULL DEFAULT 0 CHECK (amount_cents >= 0),
    charge_id    text UNIQUE,
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The simulated payment provider's own ledger. A real PSP keeps this on its
-- side; it is written outside the step transaction, like a remote call, and
-- keyed by the idempotency key (the order id).
CREATE TABLE psp_charges (
    idempotency_key text PRIMARY KEY,
    charge_id       text NOT NULL UNIQUE,
    amount_cents    bigint NOT NULL CHECK (amount_cents >= 0),
    status          text NOT NULL CHECK (status IN ('CAPTURED', 'DECLINED', 'REFUNDED', 'VOIDED')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

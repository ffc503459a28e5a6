CREATE TABLE orders (
    order_id      uuid PRIMARY KEY,
    customer_id   text NOT NULL,
    status        text NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED')),
    amount_cents  bigint NOT NULL CHECK (amount_cents >= 0),
    currency      text NOT NULL,
    lines         jsonb NOT NULL,
    payment_token text NOT NULL,
    reason        text,
    placed_at     timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_pending ON orders (placed_at) WHERE status = 'PENDING';

-- Overselling is impossible, not unlikely: available can never go negative
-- and every unit is always in exactly one of available / reserved / sold.
CREATE TABLE stock (
    sku         text PRIMARY KEY,
    price_cents bigint NOT NULL CHECK (price_cents >= 0),
    total       integer NOT NULL CHECK (total >= 0),
    available   integer NOT NULL CHECK (available >= 0),
    reserved    integer NOT NULL CHECK (reserved >= 0),
    sold        integer NOT NULL CHECK (sold >= 0),
    CHECK (available + reserved + sold = total)
);

-- One row per order the inventory service has decided on.
CREATE TABLE reservations (
    order_id   uuid PRIMARY KEY,
    status     text NOT NULL CHECK (status IN ('RESERVED', 'REJECTED', 'SOLD', 'RELEASED', 'CANCELLED')),
    reason     text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE reservation_lines (
    order_id uuid NOT NULL REFERENCES reservations (order_id),
    sku      text NOT NULL REFERENCES stock (sku),
    quantity integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
);

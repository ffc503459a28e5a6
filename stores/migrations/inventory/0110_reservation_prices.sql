-- The catalogue price of each reserved line, recorded when it is reserved:
-- the order is charged quantity x this price, and `oms check` proves the
-- capture equals it. Lines reserved before this migration have none (NULL).
ALTER TABLE reservation_lines
    ADD COLUMN unit_price_cents bigint CHECK (unit_price_cents >= 0);

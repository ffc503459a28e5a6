-- The orders service no longer prices an order: inventory does, from its
-- catalogue, and payments charges that. An order's amount is the captured
-- amount (from PaymentCompleted), unknown (NULL) until then.
ALTER TABLE orders ALTER COLUMN amount_cents DROP NOT NULL;

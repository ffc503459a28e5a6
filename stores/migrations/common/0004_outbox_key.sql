-- An order's events, as the console's timeline asks each service for them
-- (GET /events/{order_id}/): the key is the order id, so one index lookup
-- instead of a scan of every row the outbox keeps.
CREATE INDEX outbox_key ON outbox (key);

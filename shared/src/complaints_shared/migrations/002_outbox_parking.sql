-- A record the broker can never take (larger than the topic allows) is parked with its error
-- instead of blocking the relay; later events of its stream wait behind it.
ALTER TABLE outbox ADD COLUMN parked_at timestamptz, ADD COLUMN last_error text;
CREATE INDEX outbox_parked ON outbox (position) WHERE parked_at IS NOT NULL AND sent_at IS NULL;

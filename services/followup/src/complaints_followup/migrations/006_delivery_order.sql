-- The order messages were queued in: one complaint's messages that fall due at the same
-- instant (queued by one decision, say) go out in it.
ALTER TABLE deliveries ADD COLUMN seq bigserial;
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, seq) WHERE status = 'pending';

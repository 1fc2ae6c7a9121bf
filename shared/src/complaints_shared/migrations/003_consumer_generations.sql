-- A consumer's generation names its Kafka consumer group.  A rebuild moves it on in the
-- transaction that clears the consumer's inbox and projections; every replica sees the change
-- at its next batch (which checks it under FOR SHARE, so a rebuild waits for batches in flight)
-- and starts over in the new group, which reads every partition from offset 0.
CREATE TABLE consumer_generations (
    consumer text PRIMARY KEY,
    generation integer NOT NULL DEFAULT 0
);

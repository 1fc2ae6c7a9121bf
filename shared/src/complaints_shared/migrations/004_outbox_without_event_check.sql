-- The outbox no longer checks its event's existence on each insert (a foreign key: a trigger
-- and a row lock on the event for every row queued, about a tenth of an append's cost in
-- PostgreSQL).  What it guarded holds by construction: an outbox row is written only by the
-- event store's append statements, from the events that same statement inserted, and an event
-- is deleted only with its outbox row (a failed append's undo), the outbox row first.  The
-- contract tests check every queued row against its event.
ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_event_id_fkey;

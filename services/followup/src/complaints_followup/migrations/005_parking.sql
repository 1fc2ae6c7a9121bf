-- Work that failed (a message that cannot be rendered, a check that cannot be expired): retried
-- with backoff, then parked (and a FollowupParked event recorded).  One bad row never stops
-- the others.
CREATE TABLE work_failures (
    work            text        NOT NULL,   -- check | reminder | expiry
    ref             text        NOT NULL,   -- the check id
    complaint_id    uuid        NOT NULL,
    attempts        integer     NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    last_error      text        NOT NULL,   -- the error's type
    parked_at       timestamptz,
    PRIMARY KEY (work, ref)
);

-- Deliveries cancelled when their complaint is withdrawn or its case reopened (a survey).
-- status: pending | sent | failed | cancelled

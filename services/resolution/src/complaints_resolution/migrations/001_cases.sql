-- The worklist read model, kept in the transaction that appends the case's events.
CREATE TABLE cases (
    complaint_id     uuid        PRIMARY KEY,
    reference        text        NOT NULL,
    state            text        NOT NULL,
    severity         text        NOT NULL,
    category         text        NOT NULL,
    owner_id         text,
    escalation_level text,
    next_deadline_at timestamptz,
    received_at      timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    version          integer     NOT NULL
);
CREATE INDEX cases_worklist ON cases (next_deadline_at, complaint_id);
CREATE INDEX cases_owner ON cases (owner_id, state);

-- Durable SLA timers: replaced from the case's state after every change.
CREATE TABLE timers (
    complaint_id uuid        NOT NULL,
    key          text        NOT NULL,
    due_at       timestamptz NOT NULL,
    PRIMARY KEY (complaint_id, key)
);
CREATE INDEX timers_due ON timers (due_at);

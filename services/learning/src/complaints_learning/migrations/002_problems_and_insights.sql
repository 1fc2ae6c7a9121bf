-- Facts per complaint, assembled from the events of all services (a projection: rebuildable).
ALTER TABLE complaint_facts
    ADD COLUMN reference          text,
    ADD COLUMN product            text,
    ADD COLUMN safety_incident    boolean NOT NULL DEFAULT false,
    ADD COLUMN language           text,
    ADD COLUMN text               text,
    ADD COLUMN root_cause         text,
    ADD COLUMN responsible        text,
    ADD COLUMN cause_identified_at timestamptz,
    ADD COLUMN resolved_at        timestamptz,
    ADD COLUMN resolution_breached boolean NOT NULL DEFAULT false,
    ADD COLUMN first_response_breached boolean NOT NULL DEFAULT false,
    ADD COLUMN score              integer,
    ADD COLUMN solved             boolean,
    ADD COLUMN problem_id         uuid;
ALTER TABLE complaint_facts ALTER COLUMN category DROP NOT NULL;
ALTER TABLE complaint_facts ALTER COLUMN received_at DROP NOT NULL;

-- Occurrences of each root-cause signature (a projection of CauseIdentified).
CREATE TABLE occurrences (
    signature    text        NOT NULL,
    complaint_id uuid        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (signature, complaint_id)
);

-- Problems: a projection of learning's own events.
CREATE TABLE problems (
    problem_id      uuid        PRIMARY KEY,
    signature       text        NOT NULL UNIQUE,
    root_cause      text        NOT NULL,
    category        text        NOT NULL,
    product         text        NOT NULL,
    status          text        NOT NULL,   -- open | fixing | fixed | resolved
    occurrences     integer     NOT NULL,
    recurrences_after_fix integer NOT NULL DEFAULT 0,
    opened_at       timestamptz NOT NULL,
    fixed_at        timestamptz,
    resolved_at     timestamptz,
    last_occurrence_at timestamptz NOT NULL,
    version         integer     NOT NULL
);

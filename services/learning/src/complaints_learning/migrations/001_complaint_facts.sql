CREATE TABLE complaint_facts (
    complaint_id uuid        PRIMARY KEY,
    category     text        NOT NULL,
    channel      text,
    severity     text,
    received_at  timestamptz NOT NULL
);
CREATE INDEX complaint_facts_received ON complaint_facts (received_at);

-- What followup needs to reach the customer, from intake's ComplaintReceived.
ALTER TABLE contact_preferences
    ADD COLUMN reference  text,
    ADD COLUMN name       text,
    ADD COLUMN email      text,
    ADD COLUMN phone      text,
    ADD COLUMN postal_address text,
    ADD COLUMN consent_to_other_channel boolean NOT NULL DEFAULT false,
    ADD COLUMN category   text,
    ADD COLUMN received_channel text;

ALTER TABLE satisfaction_checks
    ADD COLUMN reminder_at  timestamptz,
    ADD COLUMN sent_at      timestamptz,
    ADD COLUMN reminded_at  timestamptz,
    ADD COLUMN answered_at  timestamptz,
    ADD COLUMN category     text;

-- Messages to customers waiting to be handed over, retried with backoff.
CREATE TABLE deliveries (
    id              uuid        PRIMARY KEY,
    complaint_id    uuid        NOT NULL,
    kind            text        NOT NULL,   -- check | reminder | message
    ref             text        NOT NULL,   -- check id, or the event whose message it is
    source_type     text        NOT NULL,
    channel         text        NOT NULL,
    language        text        NOT NULL,
    subject         text        NOT NULL,
    body            text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending',  -- pending | sent | failed
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    sent_at         timestamptz,
    UNIQUE (kind, ref)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';

-- Survey answers: the CSS read model, rebuildable from SatisfactionRecorded events.
CREATE TABLE satisfaction_answers (
    check_id     uuid        PRIMARY KEY,
    complaint_id uuid        NOT NULL,
    score        integer     NOT NULL,
    solved       boolean     NOT NULL,
    nps          integer,
    category     text,
    channel      text,
    answered_at  timestamptz NOT NULL
);

CREATE TABLE service_secrets (
    name  text PRIMARY KEY,
    value text NOT NULL
);

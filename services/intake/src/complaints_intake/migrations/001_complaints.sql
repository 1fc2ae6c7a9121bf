CREATE SEQUENCE complaint_reference_seq;

-- The complaints read model: kept in the transaction that appends the events.
CREATE TABLE complaints (
    id                    uuid        PRIMARY KEY,
    seq                   bigserial   UNIQUE,          -- cursor of the list (newest first)
    reference             text        NOT NULL UNIQUE,
    status                text        NOT NULL,
    channel               text        NOT NULL,
    category              text        NOT NULL,
    severity              text        NOT NULL,
    language              text        NOT NULL,
    customer_key          text        NOT NULL,        -- pseudonymous (sha-256)
    customer_id           text,
    subject               text        NOT NULL,
    description           text        NOT NULL,
    possible_duplicate_of uuid,
    alerts                text[]      NOT NULL DEFAULT '{}',
    received              jsonb       NOT NULL,        -- ComplaintReceived data
    acknowledgement       jsonb,
    details               jsonb       NOT NULL DEFAULT '[]'::jsonb,
    withdrawal            jsonb,
    received_at           timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    version               integer     NOT NULL
);
CREATE INDEX complaints_customer ON complaints (customer_key, received_at);
CREATE INDEX complaints_filters ON complaints (status, category, severity, channel);
CREATE INDEX complaints_received_at ON complaints (received_at);

-- A retried POST with the same Idempotency-Key gets the first answer.
CREATE TABLE idempotency_keys (
    key          text        PRIMARY KEY,
    request_hash text        NOT NULL,
    status_code  integer,
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Every event about a complaint, from all four services, in order.
CREATE TABLE timeline (
    event_id     uuid        PRIMARY KEY,
    complaint_id uuid        NOT NULL,
    service      text        NOT NULL,
    type         text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    version      integer     NOT NULL,
    summary      text        NOT NULL,
    position     bigserial
);
CREATE INDEX timeline_complaint ON timeline (complaint_id, occurred_at, position);

CREATE TABLE complaints (
    id          uuid        PRIMARY KEY,
    status      text        NOT NULL,
    channel     text        NOT NULL,
    category    text        NOT NULL,
    severity    text        NOT NULL,
    subject     text        NOT NULL,
    received_at timestamptz NOT NULL,
    version     integer     NOT NULL
);
CREATE INDEX complaints_received ON complaints (received_at, id);

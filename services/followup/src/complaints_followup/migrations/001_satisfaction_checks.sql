CREATE TABLE contact_preferences (
    complaint_id uuid PRIMARY KEY,
    channel      text,
    language     text
);

CREATE TABLE satisfaction_checks (
    check_id     uuid        PRIMARY KEY,
    complaint_id uuid        NOT NULL,
    status       text        NOT NULL,
    channel      text        NOT NULL,
    language     text        NOT NULL,
    due_at       timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    scheduled_at timestamptz NOT NULL
);
CREATE INDEX satisfaction_checks_complaint ON satisfaction_checks (complaint_id);
CREATE INDEX satisfaction_checks_due ON satisfaction_checks (due_at) WHERE status = 'scheduled';

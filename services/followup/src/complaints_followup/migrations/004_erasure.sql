-- A customer whose personal data was erased: no message is queued for them any more.
ALTER TABLE contact_preferences ADD COLUMN erased boolean NOT NULL DEFAULT false;

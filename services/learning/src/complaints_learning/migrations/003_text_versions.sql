-- Each change of a complaint's text (received, erased) takes the next number, so the
-- similar-complaints index of every instance can catch up with what changed since it looked.
CREATE SEQUENCE complaint_text_seq;
ALTER TABLE complaint_facts ADD COLUMN text_version bigint;
UPDATE complaint_facts SET text_version = nextval('complaint_text_seq');
CREATE INDEX complaint_facts_text_version ON complaint_facts (text_version);

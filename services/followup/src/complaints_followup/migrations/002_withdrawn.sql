ALTER TABLE contact_preferences ADD COLUMN withdrawn boolean NOT NULL DEFAULT false;

-- The signatures a complaint is counted for, read each time its cause or classification comes
-- in: by index, not by scanning every occurrence (which made a replay quadratic).
CREATE INDEX occurrences_complaint ON occurrences (complaint_id);

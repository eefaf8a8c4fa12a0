-- A study's history in the change feed (GET /api/changes?study=, the console's study page) read through an
-- index instead of a scan of the whole feed.
CREATE INDEX IF NOT EXISTS changes_study ON changes (study_instance_uid, seq);

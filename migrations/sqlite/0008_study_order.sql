-- QIDO-RS `orderby` (an extension, app/core/query/ordering.py): each key a study list may be sorted by has an
-- index, so a sorted page is read in index order and ends when it is full, as an unsorted one does. StudyDate
-- (study_datetime), PatientName, PatientID and AccessionNumber have theirs since 0001; an index here ends with
-- the row id, which breaks ties.
CREATE INDEX IF NOT EXISTS studies_study_description ON studies (study_description);
CREATE INDEX IF NOT EXISTS studies_series_count ON studies (number_of_study_related_series);
CREATE INDEX IF NOT EXISTS studies_instance_count ON studies (number_of_study_related_instances);

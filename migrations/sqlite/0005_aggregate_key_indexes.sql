-- ModalitiesInStudy and SOPClassesInStudy matched from the lower table: (value, study) indexes answer the
-- "which studies have this value" subquery and its count from the index alone, without reading rows
-- (ModalitiesInStudy=CT at 100k instances: page 52 -> 17 ms, count 43 -> 15 ms). They replace the
-- single-column indexes they extend.
CREATE INDEX IF NOT EXISTS series_modality_study ON series (modality, study_instance_uid);
DROP INDEX IF EXISTS series_modality;
CREATE INDEX IF NOT EXISTS instances_sop_class_study ON instances (sop_class_uid, study_instance_uid);
DROP INDEX IF EXISTS instances_sop_class;

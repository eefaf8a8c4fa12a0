-- Levels of the DICOM information model (PS3.4 C.3), each with indexed columns for its matching keys and
-- the level's attributes as DICOM JSON for answers. Names come from app/core/attributes.py.
CREATE TABLE IF NOT EXISTS patients (
    patient_key TEXT PRIMARY KEY,
    patient_name TEXT, patient_id TEXT, issuer_of_patient_id TEXT, patient_birth_date TEXT, patient_sex TEXT,
    number_of_patient_related_studies INTEGER NOT NULL DEFAULT 0,
    number_of_patient_related_series INTEGER NOT NULL DEFAULT 0,
    number_of_patient_related_instances INTEGER NOT NULL DEFAULT 0,
    attributes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS patients_patient_id ON patients (patient_id);
CREATE INDEX IF NOT EXISTS patients_patient_name ON patients (patient_name);

CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    study_instance_uid TEXT NOT NULL UNIQUE,
    patient_key TEXT NOT NULL,
    patient_name TEXT, patient_id TEXT, issuer_of_patient_id TEXT, patient_birth_date TEXT, patient_sex TEXT,
    study_date TEXT, study_time TEXT, study_datetime TEXT, accession_number TEXT, referring_physician_name TEXT,
    study_id TEXT, study_description TEXT,
    modalities_in_study TEXT NOT NULL DEFAULT '',
    sop_classes_in_study TEXT NOT NULL DEFAULT '',
    number_of_study_related_series INTEGER NOT NULL DEFAULT 0,
    number_of_study_related_instances INTEGER NOT NULL DEFAULT 0,
    attributes TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_patient_key ON studies (patient_key);
CREATE INDEX IF NOT EXISTS studies_patient_id ON studies (patient_id);
CREATE INDEX IF NOT EXISTS studies_patient_name ON studies (patient_name);
CREATE INDEX IF NOT EXISTS studies_patient_birth_date ON studies (patient_birth_date);
CREATE INDEX IF NOT EXISTS studies_study_date ON studies (study_date);
CREATE INDEX IF NOT EXISTS studies_study_datetime ON studies (study_datetime);
CREATE INDEX IF NOT EXISTS studies_accession_number ON studies (accession_number);
CREATE INDEX IF NOT EXISTS studies_study_id ON studies (study_id);
CREATE INDEX IF NOT EXISTS studies_referring_physician_name ON studies (referring_physician_name);

CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    series_instance_uid TEXT NOT NULL UNIQUE,
    study_instance_uid TEXT NOT NULL,
    modality TEXT, series_number INTEGER, series_description TEXT, series_date TEXT, series_time TEXT,
    body_part_examined TEXT, laterality TEXT, institution_name TEXT,
    performed_procedure_step_start_date TEXT, performed_procedure_step_start_time TEXT,
    number_of_series_related_instances INTEGER NOT NULL DEFAULT 0,
    attributes TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_study ON series (study_instance_uid, modality);
CREATE INDEX IF NOT EXISTS series_modality ON series (modality);
CREATE INDEX IF NOT EXISTS series_series_date ON series (series_date);

CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER, "rows" INTEGER, "columns" INTEGER, bits_allocated INTEGER, number_of_frames INTEGER,
    content_date TEXT, content_time TEXT,
    transfer_syntax_uid TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    size INTEGER NOT NULL,
    attributes TEXT NOT NULL,
    dataset TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_instance_uid, instance_number);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_instance_uid, sop_class_uid);
CREATE INDEX IF NOT EXISTS instances_sop_class ON instances (sop_class_uid);
CREATE INDEX IF NOT EXISTS instances_storage_key ON instances (storage_key);

-- Multi-valued keys, keys inside sequences, and each component of a person name: one row per value, so
-- "any value matches" is an indexed lookup. `owner` is the UID (or patient key) of the row at `level`.
CREATE TABLE IF NOT EXISTS attribute_values (
    level TEXT NOT NULL,
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attribute_values_lookup ON attribute_values (key, value, level, owner);
CREATE INDEX IF NOT EXISTS attribute_values_owner ON attribute_values (level, owner);

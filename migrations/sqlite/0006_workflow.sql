-- The workflow store (app/repository/sqlite/workflow.py): UPS workitems, Modality Performed Procedure Steps and
-- UPS subscriptions. Each record's DICOM JSON is kept whole in `dataset`; the other columns are the values a
-- search narrows on, written from the record in the same statement, and `version` for compare-and-set.

-- `on_worklist` is state = 'SCHEDULED' and not performed, kept in step with them on every write, so the
-- Modality Worklist reads one index in scheduled order.
CREATE TABLE IF NOT EXISTS workitems (
    sop_instance_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    transaction_uid TEXT,
    performed INTEGER NOT NULL DEFAULT 0,
    on_worklist INTEGER NOT NULL,
    scheduled_start TEXT NOT NULL DEFAULT '',
    patient_id TEXT NOT NULL DEFAULT '',
    station TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL,
    dataset TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS workitems_state ON workitems (state, sop_instance_uid);
CREATE INDEX IF NOT EXISTS workitems_worklist ON workitems (on_worklist, scheduled_start);
CREATE INDEX IF NOT EXISTS workitems_patient_id ON workitems (patient_id);
-- The Scheduled Station Name Code Value: a modality asks the worklist for its own station's work.
CREATE INDEX IF NOT EXISTS workitems_station ON workitems (station, on_worklist);

-- A step names its studies in order (`study_instance_uids`, a JSON array read back with the row);
-- performed_step_studies indexes them, one row per (study, step), for "the steps of this study".
CREATE TABLE IF NOT EXISTS performed_steps (
    sop_instance_uid TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    study_instance_uids TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    dataset TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS performed_steps_created ON performed_steps (created_at);

CREATE TABLE IF NOT EXISTS performed_step_studies (
    study_instance_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    PRIMARY KEY (study_instance_uid, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS performed_step_studies_step ON performed_step_studies (sop_instance_uid);

-- One subscription per (AE, workitem); a global one has workitem_uid '' (a key column is never NULL), read
-- back as None. `filter` is the Filtered Global Subscription's query keys as JSON text, NULL for none.
CREATE TABLE IF NOT EXISTS ups_subscriptions (
    ae_title TEXT NOT NULL,
    workitem_uid TEXT NOT NULL,
    deletion_lock INTEGER NOT NULL DEFAULT 0,
    filter TEXT,
    suspended INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ae_title, workitem_uid)
);
CREATE INDEX IF NOT EXISTS ups_subscriptions_workitem ON ups_subscriptions (workitem_uid, ae_title);

-- Study lifecycle (app/core/completion.py, app/core/changefeed.py, app/fhir, app/core/webhooks.py).

-- The change feed: one row per created/updated/deleted instance and completed study. AUTOINCREMENT so a
-- sequence number is never reused, even after the newest rows are deleted.
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT,
    sop_instance_uid TEXT,
    at REAL NOT NULL
);

-- Per study: the time of the last store and whether completion is still to be reported. Written in the same
-- transaction as each instance; the row goes with the study.
CREATE TABLE IF NOT EXISTS study_activity (
    study_instance_uid TEXT PRIMARY KEY,
    activity_at REAL NOT NULL,
    pending INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS study_activity_pending ON study_activity (pending, activity_at);

-- Work for outside systems (FHIR server, webhooks) that must survive restarts and outages.
CREATE TABLE IF NOT EXISTS outbox (
    target TEXT NOT NULL,
    key TEXT NOT NULL,
    payload TEXT NOT NULL,
    version INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (target, key)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (target, next_attempt_at);

-- Named positions in the change feed (each webhook URL's last delivered seq).
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

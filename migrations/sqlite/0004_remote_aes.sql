-- Remote Application Entities (app/core/aes.py): C-MOVE destinations, SCU targets of the REST API, Storage
-- Commitment report receivers. The AE title is the key (case-sensitive, PS3.5 Table 6.2-1).
CREATE TABLE IF NOT EXISTS remote_aes (
    ae_title TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    tls INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);

"""The Repository contract (app/core/ports.py), a file per role, run against SQLite and MongoDB alike."""

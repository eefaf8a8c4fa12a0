"""The embedded SQLite metadata store, one module per role of app/core/ports.py; repository.py composes them."""

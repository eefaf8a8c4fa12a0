"""Lifecycle: what happens to instances after they are stored. Deletion (delete.py), the event bus, the persisted
change feed, study completion, webhooks, the background loops that run them, the orphan sweep and maintenance
(statistics, re-index)."""

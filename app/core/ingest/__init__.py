"""Ingest: the one way an instance gets in (STOW-RS, C-STORE, import). Staging, header reading (raw_header.py, header.py,
parsing.py in worker processes), ingest rules, hooks and de-identification, the store transaction (service.py) and its
outcomes."""

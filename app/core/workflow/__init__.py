"""Workflow: the work a department schedules and performs, beside the images it produces.

Scheduled work is held as Unified Procedure Step workitems (PS3.4 Annex CC), which the Modality Worklist
(PS3.4 Annex K) reads as a view; performed work is reported as Modality Performed Procedure Steps (PS3.4
Annex F). One state machine (ups.py) serves UPS-RS (PS3.18 11) and the UPS DIMSE services alike, as ingest,
query and retrieve serve both doors.
"""

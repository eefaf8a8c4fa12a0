"""The protocol-neutral query model, built from QIDO-RS parameters (app/api/qido_params.py) or a C-FIND
identifier (dimse_bridge/identifier.py).

QIDO-RS (PS3.18 10.6) and C-FIND (PS3.4 C.4.1) ask the same question in two syntaxes, so both doors parse into
one `QueryModel` and one repository method (`Repository.search`) answers it: the matching rules of PS3.4
C.2.2.2 are implemented once per backend, in `app/repository/sqlite/search.py` and `mongo/search.py`, and can
never drift apart between the doors.

Everything a compiler needs is decided here, so the two compilers only translate:

* each key is resolved to an `Attribute` of the attribute table and its value validated against its VR
  (length, characters, date/time syntax), then normalised with the very functions ingest used
  (`app.core.dicom.values`), so a match compares like with like;
* the matching kind is chosen (single value, universal, wildcard, range, list of values); a StudyDate range
  with a StudyTime range becomes one combined date-time range (PS3.4 C.2.2.2.5);
* the levels whose attributes are returned, extra upper-level attributes and tags to copy from a
  representative instance header are worked out from `includefield` (PS3.18 8.3.4.3) or the identifier keys.

A value the archive cannot use as asked is a `QueryError` (400 at the HTTP door, 0xA900/0xC000 in DIMSE). A
valid DICOM attribute that is simply not indexed is ignored and reported back (PS3.18 8.3: "The origin server
shall ignore any unsupported Query Parameters"), and the door turns the report into a `Warning` header.
"""

"""Retrieve: the one way WADO-RS, WADO-URI, C-GET, C-MOVE and the SCU find and read instances.

What a client accepts and what the archive can produce (negotiation.py), the outcomes the doors translate
(outcomes.py), streaming stored bytes (streaming.py), frames and bulk data values cut out of a data set (bulk.py),
the bounds on rendering (turns.py), the stored files opened and parsed (files.py) with a small cache of parsed
instances (cache.py), and the service that ties them to the repository and the storage (service.py). Pixel work
itself is app.core.retrieve.transcode's and app.core.retrieve.render's.
"""

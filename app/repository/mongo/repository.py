"""The MongoDB repository, for archives that outgrow one SQLite file or want the metadata on its own server.

One class per role of app/core/ports.py, each in its own module over the shared connection (connection.py:
the client, the collections, migrations), all laid out the same way (layout.py); this class is all of them,
as `Repository` is, plus the repair a store without transactions needs (repair.py). Kept as composition only,
so each role's code is read in one place.
"""

from __future__ import annotations

from app.repository.mongo.aes import MongoAEStore
from app.repository.mongo.feed import MongoChangeFeed, MongoCompletion, MongoCursors, MongoLeases, MongoOutbox
from app.repository.mongo.instances import MongoInstanceIndex
from app.repository.mongo.repair import MongoRepair
from app.repository.mongo.search import MongoSearch
from app.repository.mongo.workflow import MongoPerformedSteps, MongoSubscriptions, MongoWorkitems


class MongoRepository(
    MongoInstanceIndex,
    MongoSearch,
    MongoChangeFeed,
    MongoCompletion,
    MongoOutbox,
    MongoCursors,
    MongoLeases,
    MongoAEStore,
    MongoWorkitems,
    MongoPerformedSteps,
    MongoSubscriptions,
    MongoRepair,
):
    """Every role of the metadata store on one MongoDB database: `MongoRepository(url, database)`."""

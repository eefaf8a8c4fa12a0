"""The MongoDB store's Search role: QueryModel -> MongoDB filters over the collections (layout.py), and the
search that runs them.

The same rules as the SQL compiler (app/repository/sqlite/search.py), in MongoDB's terms, each written so an
index serves it (migrations/mongo/0001_indexes.json):

* single values and lists are equality / `$in` on indexed fields;
* a wildcard with a literal prefix is an anchored prefix range `{"$gte": prefix, "$lt": successor}` on the
  normalised field, which uses the index on real MongoDB and on SecantusDB alike (an anchored `$regex`
  alone does not), plus a `$regex` for the rest, always in the `{"$regex": ..., "$options": ...}` form
  (SecantusDB finds nothing with a compiled pattern) and built from the pattern with every character but
  `*` and `?` escaped (PS3.4 C.2.2.2.4);
* multi-valued keys, sequence keys and fuzzy name words are matched on the `multi.<key>` arrays, with
  `$elemMatch` whenever two bounds apply, so both hold for the same value (a bare `{"$gte", "$lt"}` on an
  array is satisfied by two different elements on real MongoDB);
* keys of other levels are resolved first, on their own collection and index, to the UIDs that link the
  levels (`distinct`), then matched with `$in`: no `$lookup` over whole collections;
* results are ordered by `_id` (insertion order, as SQLite orders by row id), or by the `orderby` keys
  (app/core/query/ordering.py) with `_id` breaking ties in the last key's direction, served by the (key, `_id`)
  indexes of migrations/mongo/0008_study_order.json; paged with skip/limit, with one extra document read to
  learn whether more exist and a `count_documents` only then.
"""

from __future__ import annotations

import json
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from app.core.dicom.attributes import LEVEL_KEY, LEVEL_TABLE, Level, aggregates_at
from app.core.query.answers import aggregate_json, assemble
from app.core.query.model import Match, MatchKind, QueryModel, SearchResult, depth, table_level
from app.core.query.ordering import with_tie_break
from app.core.query.patterns import literal_prefix, prefix_successor, wildcard_regex
from app.repository.mongo.connection import MongoConnection, guarded
from app.repository.mongo.layout import Document, multi_path


def value_filter(match: Match) -> Document:
    """The operator document for a match's values (what goes under the field name); {} for universal."""
    values = match.values
    if match.kind is MatchKind.SINGLE:
        return {"$eq": values[0]}
    if match.kind is MatchKind.UID_LIST:
        return {"$in": list(values)}
    if match.kind is MatchKind.RANGE:
        low, high = values
        bounds: Document = {}
        if low is not None:
            bounds["$gte"] = low
        if high is not None:
            bounds["$lte"] = high
        return bounds
    if match.kind is MatchKind.WILDCARD:
        pattern = str(values[0])
        prefix = literal_prefix(pattern)
        out = prefix_range(prefix)
        if pattern != prefix + "*":
            out.update({"$regex": wildcard_regex(pattern), "$options": "s"})
        return out
    return {}


def prefix_range(prefix: str) -> Document:
    if not prefix:
        return {"$type": "string"}
    successor = prefix_successor(prefix)
    return {"$gte": prefix} if successor is None else {"$gte": prefix, "$lt": successor}


def match_filter(match: Match, field: str | None = None) -> Document:
    """The filter for one match on a document of the level that holds the attribute."""
    if match.fuzzy:
        # PS3.18 8.3.4.5 fuzzy matching as this archive defines it: each query word is a prefix of a name word.
        path = multi_path(match.attribute.key)
        words = [{path: {"$elemMatch": prefix_range(word)}} for word in match.words]
        return words[0] if len(words) == 1 else {"$and": words}
    operators = value_filter(match)
    if not operators:
        return {}
    if match.multi:
        text = {op: (str(v) if isinstance(v, int) else v) for op, v in operators.items()}
        if set(text) <= {"$eq", "$in"}:
            return {multi_path(match.attribute.key): text}
        return {multi_path(match.attribute.key): {"$elemMatch": text}}
    return {field or match.field: operators}


def sort_spec(model: QueryModel) -> list[tuple[str, int]]:
    """The page's sort: SQLite's order (null first ascending, last descending, as MongoDB sorts null and missing
    fields) with `_id` in the place of the row id."""
    return [(key.field, -1 if key.descending else 1) for key in with_tie_break(model.order, "_id")]


def _and(filters: list[Document]) -> Document:
    filters = [f for f in filters if f]
    if not filters:
        return {}
    return filters[0] if len(filters) == 1 else {"$and": filters}


class MongoSearch(MongoConnection):
    async def search(self, query: QueryModel) -> SearchResult:
        """QIDO-RS / C-FIND matching, compiled to MongoDB filters by this module."""
        with guarded():
            return await run_search(self._db, query)


class MongoQuery:
    """One search over a database laid out by MongoRepository."""

    def __init__(self, db: AsyncDatabase[Document], model: QueryModel) -> None:
        self.db = db
        self.model = model

    def collection(self, level: Level) -> AsyncCollection[Document]:
        return self.db[LEVEL_TABLE[level]]

    async def filter(self) -> Document | None:
        """The filter on the query level's collection; None when another level already rules out every match."""
        model = self.model
        level = model.level
        by_level: dict[Level, list[Document]] = {}
        lower: dict[Level, list[Document]] = {}
        conditions: list[Document] = []
        for match in model.matches:
            aggregate = match.aggregate
            if aggregate is not None:
                # ModalitiesInStudy / SOPClassesInStudy: some series / instance of the study has the value. The
                # entities of every level carry their study's UID (patients: studies carry the patient key).
                source_level, field = aggregate
                anchor = Level.PATIENT if level is Level.PATIENT else Level.STUDY
                keys = await self.keys_of(anchor, {source_level: [match_filter(match, field)]})
                conditions.append({LEVEL_KEY[anchor]: {"$in": keys}})
                continue
            holder = table_level(match.attribute, level)
            target = lower if depth(holder) > depth(level) else by_level
            target.setdefault(holder, []).append(match_filter(match))
        if lower:
            conditions.append({LEVEL_KEY[level]: {"$in": await self.keys_of(level, lower)}})
        for holder, filters in by_level.items():
            if holder is level:
                conditions.extend(filters)
                continue
            # A level above: its matching keys, resolved on its own collection to the key this level carries.
            keys = await self.collection(holder).distinct(LEVEL_KEY[holder], _and(filters))
            if not keys:
                return None
            conditions.append({LEVEL_KEY[holder]: {"$in": keys}})
        return _and(conditions)

    async def keys_of(self, anchor: Level, groups: dict[Level, list[Document]]) -> list[Any]:
        """Keys of the `anchor` entities that have one lower entity satisfying every filter of `groups`, all
        at levels below `anchor` (relational matching, PS3.4 C.4.1.2.2.2). Resolved from the deepest level up,
        each step a `distinct` of the link field over an indexed filter."""
        nearest = Level.STUDY if anchor is Level.PATIENT else min(groups, key=depth)
        own = list(groups.get(nearest, []))
        deeper = {lv: f for lv, f in groups.items() if depth(lv) > depth(nearest)}
        if deeper:
            own.append({LEVEL_KEY[nearest]: {"$in": await self.keys_of(nearest, deeper)}})
        return list(await self.collection(nearest).distinct(LEVEL_KEY[anchor], _and(own)))

    async def run(self) -> SearchResult:
        model = self.model
        level = model.level
        query = await self.filter()
        if query is None:
            return SearchResult([])
        projection: Document = {"_id": 0, LEVEL_KEY[level]: 1}
        for name in ("study_instance_uid", "series_instance_uid"):
            if depth(level) > depth(Level.STUDY) or (name == "study_instance_uid" and level is Level.STUDY):
                projection[name] = 1
        if level in model.fetched_levels:
            projection["attributes"] = 1
            projection.update(dict.fromkeys(aggregates_at(level), 1))
        if model.dataset_tags and level is Level.IMAGE:
            projection["dataset"] = 1
        cursor = self.collection(level).find(query, projection).sort(sort_spec(model)).skip(model.offset)
        if model.limit is not None:
            if model.limit == 0:  # MongoDB reads limit 0 as "no limit"
                total = await self.collection(level).count_documents(query)
                return SearchResult([], max(total - model.offset, 0))
            cursor = cursor.limit(model.limit + 1)
        docs = [doc async for doc in cursor]
        remaining = 0
        if model.limit is not None and len(docs) > model.limit:
            docs = docs[: model.limit]
            total = await self.collection(level).count_documents(query)
            remaining = max(total - model.offset - len(docs), 0)
        return SearchResult(await self.rows(docs), remaining)

    async def rows(self, docs: list[Document]) -> list[Document]:
        model = self.model
        level = model.level
        others: dict[Level, dict[str, Document]] = {}
        for other in model.fetched_levels - {level}:
            keys = list({doc[LEVEL_KEY[other]] for doc in docs if doc.get(LEVEL_KEY[other])})
            projection = {
                "_id": 0,
                LEVEL_KEY[other]: 1,
                "attributes": 1,
                **dict.fromkeys(aggregates_at(other), 1),
            }
            found = self.collection(other).find({LEVEL_KEY[other]: {"$in": keys}}, projection)
            others[other] = {d[LEVEL_KEY[other]]: d async for d in found}
        out = []
        for doc in docs:
            levels: dict[Level, Document] = {}
            aggregates: dict[Level, Document] = {}
            for lv in model.fetched_levels:
                source = doc if lv is level else others[lv].get(doc.get(LEVEL_KEY[lv], ""), {})
                levels[lv] = source.get("attributes") or {}
                aggregates[lv] = aggregate_json(lv, {f: source[f] for f in aggregates_at(lv) if f in source})
            uids = {
                "StudyInstanceUID": doc.get("study_instance_uid"),
                "SeriesInstanceUID": doc.get("series_instance_uid"),
                "SOPInstanceUID": doc.get("sop_instance_uid"),
            }
            dataset = await self.dataset(doc) if model.dataset_tags else None
            out.append(assemble(model, levels, aggregates, {k: v for k, v in uids.items() if v}, dataset))
        return out

    async def dataset(self, doc: Document) -> Document | None:
        """The header of the entity's first stored instance, for `includefield` keys no level holds."""
        level = self.model.level
        text: str | None
        if level is Level.IMAGE:
            text = doc.get("dataset")
        else:
            if level is Level.PATIENT:
                studies = await self.collection(Level.STUDY).distinct(
                    "study_instance_uid", {"patient_key": doc["patient_key"]}
                )
                where: Document = {"study_instance_uid": {"$in": studies}}
            else:
                where = {LEVEL_KEY[level]: doc[LEVEL_KEY[level]]}
            first = await self.collection(Level.IMAGE).find_one(
                where, {"_id": 0, "dataset": 1}, sort=[("_id", 1)]
            )
            text = None if first is None else first.get("dataset")
        return json.loads(text) if text else None


async def run_search(db: AsyncDatabase[Document], model: QueryModel) -> SearchResult:
    return await MongoQuery(db, model).run()


async def explain(db: AsyncDatabase[Document], model: QueryModel) -> Document:
    """The server's explain of the page query (tests assert that an index scan serves it)."""
    search = MongoQuery(db, model)
    query = await search.filter()
    result: Document = await db.command(
        "explain", {"find": LEVEL_TABLE[model.level], "filter": query or {}, "sort": dict(sort_spec(model))}
    )
    return result

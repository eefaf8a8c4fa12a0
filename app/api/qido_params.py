"""QIDO-RS query parameters (PS3.18 8.3.4) -> the query model: the HTTP door's own syntax, parsed here.

A parameter that names an attribute must resolve (400 otherwise: a typo must not silently widen the search); a
valid attribute the archive does not index is ignored and reported back for a `Warning` header (PS3.18 8.3); a
parameter that names no attribute at all (`_`, `callback`) is ignored the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from app.core.dicom.attributes import BY_KEY, BY_KEYWORD, Attribute, Level
from app.core.dicom.uids import InvalidUIDError, check_uid
from app.core.query.keys import KEYWORD_RE, keyword_ci, matchable, plan_returns, resolve_path, show
from app.core.query.matching import match_keys
from app.core.query.model import ALL, Include, Match, MatchKind, ParsedQuery, QueryError, QueryModel, SortKey
from app.core.query.ordering import parse_order


def parse_qido(
    level: Level,
    params: Iterable[tuple[str, str]],
    scope: Mapping[str, str] | None = None,
    *,
    default_limit: int | None = None,
    max_limit: int | None = None,
) -> ParsedQuery:
    """Parse QIDO-RS query parameters (PS3.18 8.3.4) for a search at `level` within `scope` (path UIDs).

    `limit` above `max_limit` is lowered to it (PS3.18 8.3.4.4: the origin server returns at most what it
    supports, and says how many more there are); the caller learns this from `model.limit`.
    """
    scope = dict(scope or {})
    limit: int | None = default_limit
    offset = 0
    fuzzy = False
    order: tuple[SortKey, ...] = ()
    include: set[str] = set()
    include_all = False
    seen: set[str] = set()
    raw: dict[Attribute, str] = {}
    ignored_attributes: list[str] = []
    ignored_parameters: list[str] = []
    for name, value in params:
        if name in ("limit", "offset", "fuzzymatching", "orderby"):
            if name in seen:
                raise QueryError(f"query parameter {name} is given more than once")
            seen.add(name)
        if name == "limit":
            limit = non_negative(name, value)
            if max_limit is not None and limit > max_limit:
                limit = max_limit
        elif name == "offset":
            offset = non_negative(name, value)
        elif name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise QueryError(f"fuzzymatching must be true or false, not {show(value)} (PS3.18 8.3.4.1)")
            fuzzy = value.lower() == "true"
        elif name == "orderby":
            keys = parse_order(level, value)
            if keys is None:
                # An extension for studies only; elsewhere ignored and reported, as any unknown parameter is,
                # so a client that sends dcm4chee-arc's orderby at every level still gets its answer.
                ignored_parameters.append(name)
            else:
                order = keys
        elif name == "includefield":
            for item in value.split(","):
                item = item.strip()
                if item.lower() == "all":
                    include_all = True
                elif item:
                    include.add(resolve_path(item)[0])
        else:
            key = attribute_key(name)
            if key is None:
                ignored_parameters.append(name)
                continue
            attribute = BY_KEY.get(key)
            if attribute is None or not matchable(attribute):
                # A real DICOM attribute the archive does not index: ignored, reported (PS3.18 8.3).
                include.add(key.split(".")[0])
                if value != "" and name not in ignored_attributes:
                    ignored_attributes.append(name)
                continue
            include.add(key.split(".")[0])
            if attribute in raw:
                if attribute.vr != "UI":
                    raise QueryError(f"{name} is given more than once; only UID keys may repeat (as a list)")
                raw[attribute] = raw[attribute] + "\\" + value if raw[attribute] and value else ""
            else:
                raw[attribute] = value
    for keyword, uid in scope.items():
        try:
            check_uid(uid, keyword)
        except InvalidUIDError as exc:
            raise QueryError(str(exc)) from exc
    matches = match_keys(raw, fuzzy)
    matches += tuple(Match(BY_KEYWORD[k], MatchKind.SINGLE, (uid,)) for k, uid in scope.items())
    included: Include = ALL if include_all else frozenset(include)
    returned, upper, tags = plan_returns(level, included, _qido_default_levels(level, scope))
    model = QueryModel(
        level=level,
        matches=matches,
        include=included,
        limit=limit,
        offset=offset,
        order=order,
        returned_levels=returned,
        upper_keys=upper,
        dataset_tags=tags,
        ignored=tuple(ignored_attributes),
    )
    return ParsedQuery(model, tuple(ignored_parameters))


def _qido_default_levels(level: Level, scope: Mapping[str, str]) -> frozenset[Level]:
    """The levels whose attributes a QIDO-RS answer carries (PS3.18 10.6.3.3): the searched level, plus the
    study (Table 10.6.3-3) and series (Table 10.6.3-4) attributes when the path does not fix them already."""
    levels = {level}
    if level in (Level.SERIES, Level.IMAGE) and "StudyInstanceUID" not in scope:
        levels.add(Level.STUDY)
    if level is Level.IMAGE and "SeriesInstanceUID" not in scope:
        levels.add(Level.SERIES)
    return frozenset(levels)


def non_negative(name: str, value: str) -> int:
    text = value.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 18:
        raise QueryError(f"{name} must be a non-negative integer, not {show(value)} (PS3.18 8.3.4.4)")
    return int(text)


def attribute_key(name: str) -> str | None:
    """The dotted hex key of a query parameter naming an attribute; None for a parameter that names none.

    Names that look like a keyword or tag must resolve (400 otherwise: a typo must not silently widen the
    search); other names (`_`, `callback`, ...) are parameters this server does not support, ignored (PS3.18 8.3).
    """
    first = name[:1]
    if first and (first.isupper() or first.isdigit() or "." in name):
        return resolve_path(name)[0]
    if KEYWORD_RE.fullmatch(name) and keyword_ci().get(name.lower()):
        raise QueryError(
            f"unknown attribute {name!r}: keywords are case-sensitive, did you mean "
            f"{keyword_ci()[name.lower()]}?"
        )
    return None

"""Query/Retrieve SCP (PS3.4 Annex C): C-FIND, C-GET and C-MOVE over the Patient Root and Study Root models.

Three generator handlers, pynetdicom's protocol (see its `_c_find_scp`, `_get_scp`, `_move_scp`), each a thin
adapter onto the archive services, so DIMSE and DICOMweb give the same answers:

* `handle_find` parses the identifier with `dimse_bridge.identifier.from_identifier` (the very matching QIDO-RS uses:
  single value, wildcard, range, UID list, sequence, on the same indexes), pages through `repository.search`
  on the app loop through the bridge, and yields one (0xFF00, identifier) per match holding only the keys that
  were asked for plus the ones the answer needs (QueryRetrieveLevel and the unique keys of the level and the
  levels above, PS3.4 C.4.1.2.1 / C.6.1.1.3, C.6.2.1.3).
* `handle_get` and `handle_move` share `matching_instances` (which instances an identifier names) and
  `_sub_operations` (read each instance's data set in a transfer syntax the receiving side accepted, through
  the one retrieve service: the stored bytes as they are when that syntax was accepted, sending.py; and hand it
  to pynetdicom, which sends the C-STORE sub-operation and keeps the Remaining/Completed/Failed/Warning counts
  of the pending and final responses).

Statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4): a malformed identifier or a level the information model
does not have is 0xA900 "Identifier does not match SOP Class"; a value the archive cannot match as given is
0xC000 "Unable to process", both with Error Comment and a log line; the archive out of reach is 0xA700 (find)
or 0xA701 (get/move, "unable to calculate number of matches"); C-CANCEL is 0xFE00; an unknown move destination
is 0xA801. Each sub-operation that cannot be performed (no presentation context for its SOP class, no
acceptable transfer syntax, unreadable file) is counted as failed and listed in Failed SOP Instance UID List,
so the final status is 0xB000 (some failed) or 0xA702 (all failed), as pynetdicom computes them.

Not supported (README, DIMSE section): relational queries and retrieves (SOP Class Extended Negotiation is not
answered, so only hierarchical ones are negotiated, PS3.4 C.4.1.2.2.1); the Patient/Study Only and Composite
Instance Root models; fuzzy semantic matching and timezone adjustment (C.4.1.3.1); C-FIND priority.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, Final

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.service_class import QueryRetrieveServiceClass

from app.core.dicom.attributes import Level
from app.core.dicom.transfer_syntax import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from app.core.query.model import QueryError, QueryModel
from app.core.query.pages import search_pages
from app.core.records import JSONDict, StoredInstance
from app.core.retrieve.outcomes import NotAcceptable, RetrieveFailed
from app.core.retrieve.streaming import EncodedInstance
from dimse_bridge import scu, sending, status
from dimse_bridge.access import peer
from dimse_bridge.bridge import BridgeError
from dimse_bridge.context import DimseContext
from dimse_bridge.identifier import from_identifier
from dimse_bridge.policy import VERIFICATION
from dimse_bridge.sending import EncodedDataSet
from dimse_bridge.tcp import handle_connection_open

log = logging.getLogger(__name__)

# PS3.4 C.6.1 (Patient Root) and C.6.2 (Study Root) information models.
PATIENT_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE: Final = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET: Final = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE: Final = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET: Final = "1.2.840.10008.5.1.4.1.2.2.3"
QR_SOP_CLASSES: Final = (
    PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, PATIENT_ROOT_GET, STUDY_ROOT_FIND, STUDY_ROOT_MOVE, STUDY_ROOT_GET,
)  # fmt: skip
GET_SOP_CLASSES: Final = (PATIENT_ROOT_GET, STUDY_ROOT_GET)
FIND_SOP_CLASSES: Final = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND)
MOVE_SOP_CLASSES: Final = (PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE)
SECONDARY_CAPTURE: Final = "1.2.840.10008.5.1.4.1.1.7"
_PATIENT_ROOT: Final = frozenset({PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, PATIENT_ROOT_GET})

# The levels of each model, top first (PS3.4 C.6.1.1, C.6.2.1).
_PATIENT_LEVELS: Final = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
_STUDY_LEVELS: Final = (Level.STUDY, Level.SERIES, Level.IMAGE)

# The unique key of each level (PS3.4 C.6.1.1.2-5, C.6.2.1.2-4), as DICOM JSON keys.
UNIQUE_KEY: Final = {
    Level.PATIENT: "00100020",  # PatientID
    Level.STUDY: "0020000D",  # StudyInstanceUID
    Level.SERIES: "0020000E",  # SeriesInstanceUID
    Level.IMAGE: "00080018",  # SOPInstanceUID
}
QUERY_RETRIEVE_LEVEL: Final = 0x00080052
SPECIFIC_CHARACTER_SET: Final = 0x00080005
RETRIEVE_AE_TITLE: Final = 0x00080054
INSTANCE_AVAILABILITY: Final = 0x00080056
_NOT_RETURN_KEYS: Final = frozenset({QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET})

# C-FIND answers are read a page at a time, so a huge match list neither sits in memory nor delays the first
# pending response, and a C-CANCEL is seen between pages.
FIND_PAGE_SIZE: Final = 200
CHARSET_UTF8: Final = "ISO_IR 192"


class IdentifierError(ValueError):
    """The identifier cannot be used as a query or retrieve of this information model; `code` says how."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- the identifier -------------------------------------------------------------------------------------------


def model_levels(sop_class_uid: str) -> tuple[Level, ...]:
    return _PATIENT_LEVELS if sop_class_uid in _PATIENT_ROOT else _STUDY_LEVELS


def request_level(identifier: Dataset, sop_class_uid: str) -> Level:
    """The QueryRetrieveLevel (0008,0052) of the identifier, which must be a level of the model (C.4.1.2.1)."""
    element = identifier.get(QUERY_RETRIEVE_LEVEL)
    text = str(element.value or "").strip().upper() if element is not None else ""
    levels = model_levels(sop_class_uid)
    for level in levels:
        if level.value == text:
            return level
    if not text:
        raise IdentifierError(
            status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "QueryRetrieveLevel (0008,0052) is missing"
        )
    model = "Patient Root" if sop_class_uid in _PATIENT_ROOT else "Study Root"
    raise IdentifierError(
        status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
        f"QueryRetrieveLevel {text!r} is not a level of the {model} model ({', '.join(levels)})",
    )


def required_keys(level: Level, sop_class_uid: str) -> tuple[str, ...]:
    """Unique keys of `level` and the levels above it in the model: every answer carries them."""
    levels = model_levels(sop_class_uid)
    return tuple(UNIQUE_KEY[lv] for lv in levels[: levels.index(level) + 1])


def decode_identifier(event: Event) -> Dataset:
    """The request's identifier, every element decoded; IdentifierError (0xA900) when it cannot be."""
    try:
        identifier = event.identifier
        if not isinstance(identifier, Dataset):
            raise TypeError("no identifier")
        for _ in identifier:  # decode every element now, so a damaged one is a refusal, not a crash later
            pass
    except Exception as exc:
        raise IdentifierError(
            status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"the identifier cannot be decoded: {exc}"
        ) from exc
    return identifier


def find_model(identifier: Dataset, level: Level, sop_class_uid: str) -> QueryModel:
    """The query of a C-FIND identifier; the required keys are added as return keys (on a copy)."""
    query = Dataset()
    for element in identifier:
        query.add(element)
    for key in required_keys(level, sop_class_uid):
        tag = int(key, 16)
        if tag not in query:
            query.add_new(tag, "LO" if key == UNIQUE_KEY[Level.PATIENT] else "UI", None)
    try:
        return from_identifier(level, query)
    except QueryError as exc:
        raise IdentifierError(status.UNABLE_TO_PROCESS, str(exc)) from exc


def retrieve_model(identifier: Dataset, level: Level, sop_class_uid: str) -> QueryModel:
    """The instances a C-GET / C-MOVE identifier names (PS3.4 C.4.2.2.1, C.4.3.2.1), as a query at IMAGE level.

    Hierarchical retrieve: only the unique keys of the requested level (required, a value or a UID list) and
    of the levels above (optional) are used; other keys are ignored. A unique key with a wildcard is refused:
    `PatientID=*` must not move the whole archive. The model is trimmed to return nothing but the UIDs.
    """
    keys = Dataset()
    for key in required_keys(level, sop_class_uid):
        element = identifier.get(int(key, 16))
        text = "" if element is None or element.value is None else str(element.value).strip()
        if key == UNIQUE_KEY[level] and not text:
            raise IdentifierError(
                status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                f"the unique key {keyword_for_tag(int(key, 16))} of level {level} is missing or empty",
            )
        if "*" in text or "?" in text:
            raise IdentifierError(
                status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                f"wildcards are not allowed in the unique key {keyword_for_tag(int(key, 16))}",
            )
        if element is not None and text:
            keys.add(element)
    try:
        model = from_identifier(Level.IMAGE, keys)
    except QueryError as exc:
        raise IdentifierError(status.UNABLE_TO_PROCESS, str(exc)) from exc
    return dataclasses.replace(
        model, include=frozenset(), returned_levels=frozenset(), upper_keys={}, dataset_tags=frozenset()
    )


# -- answers ------------------------------------------------------------------------------------------------


def _picked(value: JSONDict, request: Dataset | None) -> JSONDict:
    """A sequence element's items reduced to the keys of the request's item (PS3.4 C.2.2.2.6); all of each
    item when the request's sequence had no item or an empty one."""
    if request is None or len(request) == 0 or value.get("vr") != "SQ":
        return value
    wanted = {f"{int(e.tag):08X}": e for e in request if e.tag not in _NOT_RETURN_KEYS}
    items = []
    for item in value.get("Value") or ():
        picked: JSONDict = {}
        for key, element in wanted.items():
            held = item.get(key) if isinstance(item, dict) else None
            if held is None or "BulkDataURI" in held:
                picked[key] = {"vr": element.VR}
            else:
                picked[key] = _picked(held, _first_item(element))
        items.append(picked)
    return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}


def _first_item(element: Any) -> Dataset | None:
    if element.VR != "SQ" or not element.value:
        return None
    item = element.value[0]
    return item if isinstance(item, Dataset) else None


def find_answer(
    row: JSONDict, identifier: Dataset, level: Level, required: tuple[str, ...], ae_title: str
) -> Dataset:
    """One C-FIND response identifier: the requested keys (zero length when the archive holds no value,
    PS3.4 C.2.2.1.2) and the required ones, nothing else; Specific Character Set ISO_IR 192 when a value is not
    ASCII (the archive's values are Unicode: DICOM JSON), per PS3.4 C.4.1.1.3.2 / C.2.2.2.1."""
    out: JSONDict = {}
    for element in identifier:
        tag = int(element.tag)
        if tag in _NOT_RETURN_KEYS or element.tag.element == 0:  # group lengths are not keys (PS3.5 7.2)
            continue
        key = f"{tag:08X}"
        if tag == RETRIEVE_AE_TITLE:
            out[key] = {"vr": "AE", "Value": [ae_title]}
        elif tag == INSTANCE_AVAILABILITY:
            out[key] = {"vr": "CS", "Value": ["ONLINE"]}  # every instance is held on line (PS3.3 C.4.23.1.1)
        else:
            held = row.get(key)
            if held is None or "BulkDataURI" in held:
                out[key] = {"vr": element.VR}
            else:
                out[key] = _picked(held, _first_item(element))
    for key in required:
        if key in row:
            out[key] = row[key]
    ds = Dataset.from_json(out)
    ds.QueryRetrieveLevel = level.value
    if not json.dumps(out, ensure_ascii=False).isascii():
        ds.SpecificCharacterSet = CHARSET_UTF8
    return ds


def set_status(assoc: Any, response: Any, code: int | Dataset, statuses: dict[int, tuple[str, str]]) -> None:
    """Set `response`'s status from `code` (a status data set lends its Error Comment) as pynetdicom's
    Query/Retrieve service sets it; `statuses` is that service's table (pynetdicom's QR_FIND/GET/MOVE), which a
    service class built outside its SCP method does not know, and without which a pending status is logged as
    unknown."""
    service = QueryRetrieveServiceClass(assoc)
    service.statuses = statuses
    service.validate_status(code, response)


# -- C-FIND ---------------------------------------------------------------------------------------------------


FindResult = tuple[int | Dataset, Dataset | None]


async def find_results(dimse: DimseContext, event: Event, who: str) -> AsyncGenerator[list[FindResult], None]:
    """The responses to a C-FIND request (PS3.4 C.4.1), a page of matches at a time, for either door: (pending
    status, answer) per match; a refusal or a failure as (status data set, None), the last one. On the loop.

    The pending status is 0xFF01 instead of 0xFF00 when the identifier held optional keys the archive cannot
    match on (valid attributes that are not indexed, keys below the level): Table C.4-1 "Matches are
    continuing - Warning that one or more Optional Keys were not supported for existence and/or matching for
    this Identifier".
    """
    sop_class = str(event.request.AffectedSOPClassUID)
    try:
        identifier = decode_identifier(event)
        level = request_level(identifier, sop_class)
        model = find_model(identifier, level, sop_class)
    except IdentifierError as exc:
        log.warning("C-FIND from %s refused (0x%04X): %s", who, exc.code, exc)
        yield [(status.status_dataset(exc.code, str(exc)), None)]
        return
    pending = status.PENDING_OPTIONAL_KEYS_NOT_SUPPORTED if model.ignored else status.PENDING
    if model.ignored:
        log.info("C-FIND from %s: keys not supported for matching: %s", who, ", ".join(model.ignored))
    required = required_keys(level, sop_class)
    matches = 0
    pages = search_pages(dimse.archive.repository, model, FIND_PAGE_SIZE)
    try:
        while True:
            try:
                async with asyncio.timeout(dimse.settings.dimse_dimse_timeout):
                    page = await anext(pages, None)
            except TimeoutError:
                comment = f"no answer from the archive within {dimse.settings.dimse_dimse_timeout} s"
                log.warning("C-FIND from %s failed after %d matches: %s", who, matches, comment)
                yield [(status.status_dataset(status.OUT_OF_RESOURCES, comment), None)]
                return
            if page is None:
                break
            results: list[FindResult] = []
            for row in page:
                try:
                    results.append((pending, find_answer(row, identifier, level, required, dimse.ae_title)))
                except Exception as exc:  # a held value pydicom cannot take back (should not happen)
                    log.exception("C-FIND from %s: cannot build answer %d", who, matches + len(results) + 1)
                    comment = f"cannot build an answer: {exc}"
                    results.append((status.status_dataset(status.UNABLE_TO_PROCESS, comment), None))
                    yield results
                    return
            matches += len(results)
            yield results
    finally:
        await pages.aclose()  # stopped early (cancel, abort): the query's cursor goes now
    log.debug("C-FIND from %s at %s level: %d matches", who, level, matches)


def handle_find(event: Event, dimse: DimseContext) -> Iterator[FindResult]:
    """C-FIND SCP (PS3.4 C.4.1) in pynetdicom's association thread: `find_results`, one page per hop to the
    loop, then pynetdicom's final Success; 0xFE00 on C-CANCEL, 0xA700 when the archive cannot be asked."""
    who = peer(event.assoc)
    matches = 0
    pages = dimse.bridge.stream(find_results(dimse, event, who))
    try:
        for page in pages:
            for result in page:
                if result[1] is not None and event.is_cancelled:
                    log.info("C-FIND from %s cancelled after %d matches", who, matches)
                    yield status.CANCEL, None
                    return
                yield result
                matches += 1
    except BridgeError as exc:
        log.warning("C-FIND from %s failed after %d matches: %s", who, matches, exc)
        yield status.status_dataset(status.OUT_OF_RESOURCES, str(exc)), None
        return
    finally:
        # Stopped early (cancel, abort): close the stream now, which ends the query on the loop.
        close = getattr(pages, "close", None)
        if close is not None:
            close()
    if event.is_cancelled:
        yield status.CANCEL, None


# -- C-GET and C-MOVE -----------------------------------------------------------------------------------------


def retrieve_query(identifier: Dataset, sop_class_uid: str) -> QueryModel:
    """The query for the instances a C-GET or C-MOVE identifier names; IdentifierError when it names none
    validly."""
    return retrieve_model(identifier, request_level(identifier, sop_class_uid), sop_class_uid)


def matching_instances(dimse: DimseContext, identifier: Dataset, sop_class_uid: str) -> list[StoredInstance]:
    """The instances a C-GET or C-MOVE identifier names. IdentifierError when it names none validly,
    BridgeError when the archive cannot be asked."""
    model = retrieve_query(identifier, sop_class_uid)
    return dimse.bridge.call(dimse.archive.retrieve.resolve_matching(model))


def sending_contexts(assoc: Any) -> dict[str, dict[str, int]]:
    """SOP class -> {transfer syntax: context ID} of the contexts accepted on `assoc` in which we may send a
    C-STORE (we are SCU of it: our own request's contexts, or a C-GET requestor's role selection, PS3.7
    D.3.3.4); the first context of each pair wins, as pynetdicom picks it."""
    found: dict[str, dict[str, int]] = {}
    if assoc is None:
        return found
    for cx in assoc.accepted_contexts:
        if cx.as_scu:
            found.setdefault(str(cx.abstract_syntax), {}).setdefault(
                str(cx.transfer_syntax[0]), cx.context_id
            )
    return found


def accepted_syntaxes(assoc: Any, sop_class_uid: str) -> list[str]:
    """Transfer syntaxes in which we may send a C-STORE of the SOP class on `assoc` (`sending_contexts`)."""
    return list(sending_contexts(assoc).get(sop_class_uid, ()))


def read_for_sending(
    dimse: DimseContext, ref: StoredInstance, accepted: list[str], who: str
) -> EncodedInstance | None:
    """The instance's data set in one of the `accepted` syntaxes, for a C-STORE sub-operation (the stored bytes
    as they are when their syntax was accepted, sending.py); None, with the reason logged, when it cannot be
    sent, which counts as a failed sub-operation (PS3.4 C.4.2.3.1, C.4.3.3.1). Blocking: a file read."""
    if not accepted:
        log.warning(
            "%s: instance %s not sent: no accepted presentation context for SOP class %s",
            who, ref.sop_instance_uid, ref.sop_class_uid,
        )  # fmt: skip
        return None
    try:
        return dimse.archive.retrieve.encoded(ref, accepted)
    except (NotAcceptable, RetrieveFailed) as exc:
        log.warning("%s: instance %s not sent: %s", who, ref.sop_instance_uid, exc)
        return None


def _unsendable(ref: StoredInstance) -> Dataset:
    """A stand-in for an instance that cannot be sent, so pynetdicom counts a failed sub-operation and lists
    the instance in Failed SOP Instance UID List: it has no SOP Class UID, so `send_c_store` refuses it before
    anything goes on the wire (pynetdicom has no other way for a handler to report one failed sub-operation
    and go on; yielding a failure status would end the whole retrieve)."""
    ds = Dataset()
    ds.SOPInstanceUID = ref.sop_instance_uid
    return ds


def _sub_operations(
    event: Event, dimse: DimseContext, refs: list[StoredInstance], receiver: Callable[[], Any], who: str
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """(0xFF00, data set) per instance for pynetdicom to send; (0xFE00, None) on C-CANCEL."""
    # A study is mostly one SOP class: its accepted syntaxes are looked up once, not per instance among the
    # ~120 contexts a getscu proposes.
    syntaxes: dict[str, list[str]] = {}
    for sent, ref in enumerate(refs):
        if event.is_cancelled:
            log.info("%s cancelled after %d of %d sub-operations", who, sent, len(refs))
            yield status.CANCEL, None
            return
        if ref.sop_class_uid not in syntaxes:
            syntaxes[ref.sop_class_uid] = accepted_syntaxes(receiver(), ref.sop_class_uid)
        # Read in this thread: a file read needs no hop to the loop.
        encoded = read_for_sending(dimse, ref, syntaxes[ref.sop_class_uid], who)
        yield status.PENDING, (_unsendable(ref) if encoded is None else EncodedDataSet(encoded))


def _refusal(code: int, comment: str) -> Iterator[Any]:
    """A failure before any sub-operation. pynetdicom reads a count first, then a final status: one nominal
    sub-operation lets the failure (with its Error Comment) be the final response."""
    yield 1
    yield status.status_dataset(code, comment), None


def handle_get(event: Event, dimse: DimseContext) -> Iterator[Any]:
    """C-GET SCP (PS3.4 C.4.3): C-STORE sub-operations on the requestor's own association."""
    sop_class = str(event.request.AffectedSOPClassUID)
    who = f"C-GET from {peer(event.assoc)}"
    try:
        refs = matching_instances(dimse, decode_identifier(event), sop_class)
    except IdentifierError as exc:
        log.warning("%s refused (0x%04X): %s", who, exc.code, exc)
        yield from _refusal(exc.code, str(exc))
        return
    except BridgeError as exc:
        log.warning("%s refused: %s", who, exc)
        yield from _refusal(status.OUT_OF_RESOURCES_MATCHES, str(exc))
        return
    log.info("%s: %d instances to send", who, len(refs))
    sending.install(event.assoc)
    yield len(refs)
    yield from _sub_operations(event, dimse, refs, lambda: event.assoc, who)


def _placeholder_contexts() -> list[PresentationContext]:
    """Proposed when nothing is to be sent (a refusal answered after the association, see handle_move):
    contexts a destination is all but sure to accept, Verification (PS3.4 A) and Secondary Capture (every
    storage SCP's fallback), so the association is made and the refusal, not 0xA801, reaches the requestor."""
    return [
        build_context(VERIFICATION),
        build_context(SECONDARY_CAPTURE, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]),
    ]


class _Receiver:
    """The association pynetdicom opens to the move destination, caught when it is accepted (EVT_ACCEPTED),
    so each instance is loaded in a transfer syntax the destination accepted; its C-STOREs name `originator`,
    the C-MOVE's requestor (PS3.7 9.1.1.1.11)."""

    def __init__(self, originator: str) -> None:
        self.assoc: Any = None
        self.originator = originator

    def accepted(self, event: Event) -> None:
        self.assoc = event.assoc
        sending.install(event.assoc, self.originator)


def handle_move(event: Event, dimse: DimseContext) -> Iterator[Any]:
    """C-MOVE SCP (PS3.4 C.4.2): C-STORE sub-operations on a new association to the Move Destination, whose
    address comes from the AE registry (app/core/aes.py). pynetdicom opens and releases that association,
    and answers 0xA801 when the destination is unknown or cannot be reached."""
    sop_class = str(event.request.AffectedSOPClassUID)
    destination_title = str(event.move_destination or "").strip()
    who = f"C-MOVE from {peer(event.assoc)} to {destination_title}"
    try:
        destination = dimse.bridge.call(dimse.archive.aes.get(destination_title))
    except BridgeError as exc:
        # pynetdicom lets the first answer be a destination or 0xA801, so that is the status here too.
        log.warning("%s refused: the AE registry cannot be read: %s", who, exc)
        yield None, None
        return
    if destination is None:
        log.warning("%s refused: unknown move destination (register it with PUT /api/aes/{title})", who)
        yield None, None  # pynetdicom answers 0xA801 Move Destination unknown
        return
    failure: tuple[int, str] | None = None
    refs: list[StoredInstance] = []
    try:
        refs = matching_instances(dimse, decode_identifier(event), sop_class)
    except IdentifierError as exc:
        log.warning("%s refused (0x%04X): %s", who, exc.code, exc)
        failure = (exc.code, str(exc))
    except BridgeError as exc:
        log.warning("%s refused: %s", who, exc)
        failure = (status.OUT_OF_RESOURCES_MATCHES, str(exc))
    receiver = _Receiver(str(event.assoc.requestor.ae_title or "").strip())
    # The contexts scu.store proposes: per SOP class its stored syntaxes, then Explicit/Implicit VR LE. Only
    # one association is made, so instances of SOP classes beyond its 128 contexts fail (counted, listed).
    groups = scu.storage_contexts(refs)
    options: dict[str, Any] = {
        "contexts": groups[0] if groups else _placeholder_contexts(),
        "evt_handlers": [
            (evt.EVT_CONN_OPEN, handle_connection_open),
            (evt.EVT_ACCEPTED, receiver.accepted),
        ],
    }
    tls = scu.client_tls(scu.ScuOptions.from_settings(dimse.settings), destination)
    if tls is not None:
        options["tls_args"] = tls
    yield destination.host, destination.port, options
    # pynetdicom associates with the destination before it reads our final status, so a refused identifier is
    # answered after that association (or with 0xA801 when the destination is down).
    if failure is not None:
        yield from _refusal(*failure)
        return
    log.info("%s (%s:%d): %d instances to send", who, destination.host, destination.port, len(refs))
    yield len(refs)
    yield from _sub_operations(event, dimse, refs, lambda: receiver.assoc, who)

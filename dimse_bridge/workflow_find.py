"""C-FIND over workflow records (Modality Worklist, PS3.4 K; UPS Pull/Watch/Query, PS3.4 CC.2.8): the parts
the two handlers share, so a worklist item and a workitem are asked for and answered by the same rules.

The identifier becomes DICOM JSON (datasets.py); its keys with a value are matching keys, parsed by the query
model's `parse_value` (single value, wildcard, range, UID list, sequence matching: PS3.4 C.2.2.2), and every
element of it is a return key (C.2.2.1.2): an answer is the held record projected onto the identifier
(`app.core.workflow.attributes.project`), an attribute the record lacks returned zero length, a sequence asked
for with an empty item returned whole. Specific Character Set says how the identifier is encoded, not what to
match; the answer says its own (ISO_IR 192 when needed). Query/Retrieve Level is not part of these models and
is ignored when an SCU sends it.

Statuses (PS3.4 Table K.4-2, CC.2.8.4): an identifier that cannot be decoded is 0xA900 Identifier does not
match SOP Class; a value that cannot be matched as given (a malformed date range, an attribute outside the
data dictionary) is 0xC000 Unable to process, each with Error Comment, Offending Element and a log line; private
attributes cannot be matched and make the pending status 0xFF01; C-CANCEL is answered 0xFE00. A held record that
cannot be encoded as an answer is left out with a log line; the other matches are still sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from app.core.query.evaluate import identifier_keys, parse_matches
from app.core.query.model import Match, QueryError
from app.core.records import JSONDict
from app.core.workflow.attributes import project
from app.core.workflow.outcomes import FailureReason, WorkflowFailure
from dimse_bridge import datasets, status
from dimse_bridge import workflow_status as ws
from dimse_bridge.bridge import BridgeError

log = logging.getLogger(__name__)

_NOT_KEYS: Final = frozenset({"00080005", "00080052"})  # Specific Character Set, Query/Retrieve Level

Response = tuple[int | Dataset, Dataset | None]


class FindRefused(ValueError):
    """The identifier cannot be searched with; `code` is the status, `offending` the elements at fault."""

    def __init__(self, code: int, reason: str, offending: tuple[int, ...] = ()) -> None:
        super().__init__(reason)
        self.code = code
        self.offending = offending


@dataclass(frozen=True)
class FindRequest:
    """A parsed C-FIND identifier: what to return (`template`), what to match (`keys`), what was ignored."""

    template: JSONDict
    keys: tuple[Match, ...]
    ignored: tuple[str, ...]

    @property
    def pending(self) -> int:
        return ws.PENDING_OPTIONAL_KEYS_NOT_SUPPORTED if self.ignored else ws.PENDING


def parse(event: Event) -> FindRequest:
    """The identifier of the C-FIND request as a FindRequest; FindRefused with the status saying why not."""
    try:
        identifier = datasets.to_json(datasets.decoded(lambda: event.identifier, "identifier"))
    except datasets.UnreadableDataSet as exc:
        raise FindRefused(ws.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc)) from exc
    template: JSONDict = {}
    ignored: list[str] = []
    for key, element in identifier.items():
        if key in _NOT_KEYS or key[4:] == "0000":  # group lengths are not keys (PS3.5 7.2)
            continue
        if int(key[:4], 16) % 2:  # a private attribute: returned if held, never matched
            ignored.append(f"({key[:4]},{key[4:]})")
        template[key] = element
    matchable = {k: v for k, v in template.items() if not int(k[:4], 16) % 2}
    keys: list[Match] = []
    for path, value in identifier_keys(matchable).items():
        try:
            keys.extend(parse_matches({path: value}))
        except QueryError as exc:
            # "Sequence.Keyword: 'x' is not a date ..." -> the part after the path, which fits an Error Comment.
            reason = str(exc).partition(": ")[2] or str(exc)
            offending = tuple(int(tag, 16) for tag in path.split("."))
            raise FindRefused(ws.UNABLE_TO_PROCESS, reason, offending) from exc
    return FindRequest(template, tuple(keys), tuple(ignored))


def serve(event: Event, who: str, search: Callable[[Sequence[Match]], Iterable[JSONDict]]) -> Iterator[Response]:
    """A workflow C-FIND handler's whole run: parse the identifier, `search` with its keys (one call into the
    archive through the bridge), answer each record; every refusal logged once with its status."""
    try:
        request = parse(event)
    except FindRefused as exc:
        log.warning("%s refused (0x%04X): %s", who, exc.code, exc)
        yield refusal(exc.code, str(exc), exc.offending)
        return
    if request.ignored:
        log.info("%s: keys not supported for matching: %s", who, ", ".join(request.ignored))
    try:
        records = search(request.keys)
    except Exception as exc:  # the archive out of reach, the workflow store failing
        code = search_failure(exc)
        log.warning("%s failed (0x%04X): %s", who, code, exc)
        yield refusal(code, str(exc) or type(exc).__name__)
        return
    yield from answers(event, request, records, who)


def search_failure(exc: Exception) -> int:
    """The status of a search that could not be made: the archive out of reach or its workflow store
    unavailable is 0xA700 Refused: Out of resources; anything else 0xC000 Unable to process."""
    if isinstance(exc, BridgeError):
        return ws.OUT_OF_RESOURCES
    if isinstance(exc, WorkflowFailure) and exc.reason is FailureReason.UNAVAILABLE:
        return ws.OUT_OF_RESOURCES
    return ws.UNABLE_TO_PROCESS


def refusal(code: int, reason: str, offending: tuple[int, ...] = ()) -> Response:
    """A failed C-FIND's only response: Error Comment, and Offending Element (0000,0901) when known (PS3.7
    9.1.2.1.7)."""
    answer = status.status_dataset(code, reason)
    if offending:
        answer.OffendingElement = list(offending)
    return answer, None


def answers(event: Event, request: FindRequest, records: Iterable[JSONDict], who: str) -> Iterator[Response]:
    """One pending response per record, each holding only the identifier's keys; 0xFE00 on C-CANCEL. pynetdicom
    sends the final Success after the last."""
    sent = 0
    for record in records:
        if event.is_cancelled:
            log.info("%s cancelled after %d matches", who, sent)
            yield status.CANCEL, None
            return
        try:
            answer = datasets.from_json(project(record, request.template))
        except Exception:  # a held value pydicom cannot take back: that record is left out, not the others
            log.exception("%s: a match cannot be encoded and is left out", who)
            continue
        sent += 1
        yield request.pending, answer
    if event.is_cancelled:
        yield status.CANCEL, None
        return
    log.debug("%s: %d matches", who, sent)

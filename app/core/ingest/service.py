"""The one ingest path: STOW-RS, C-STORE and the import command all store an instance by calling `store`.

Order of work, so that no half-stored instance is ever visible:
1. the bytes are staged on the storage volume and the header parsed (a worker process; pixel data never parsed);
2. identity and consistency are checked, the duplicate policy applied;
3. the file is committed (fsync + atomic rename; a replaced file is kept aside);
4. the metadata is written in one repository transaction;
5. only then is the replaced file let go. A metadata failure rolls the file back, so the two never disagree; a
   metadata write whose outcome cannot be known (MongoDB gone mid-store: WriteOutcomeUnknown) keeps every file
   the metadata may name, so that whichever was left names a file that is there.
Ingest rules and the ingest hook (app/core/ingest/rules.py, app/core/ingest/hooks.py) judge the instance between 1 and 2; an
instance they coerce or de-identify is re-encoded into a new staged file (only then: otherwise the bytes are
stored exactly as received) and answered with warning 0xB000.
Every outcome is a protocol-neutral StoreOutcome; the doors turn it into HTTP or DIMSE statuses. Each refusal,
and what pydicom warned about the sender's values (the parser's notes), is logged here, one line an instance, in
the context of the request or association it belongs to; STOW-RS asks for none and writes one line per request.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from app.core.dicom.uids import InvalidUIDError
from app.core.ingest.hooks import HookContext, HookReject, IngestHook
from app.core.ingest.outcomes import DuplicatePolicy, FailureReason, StoreOutcome, StoreStatus, WarningReason
from app.core.ingest.parsing import HeaderParser, ParseFailure, parse_instance
from app.core.ingest.raw_header import NOT_PART10, is_part10
from app.core.ingest.rules import Edit, IngestRules, Verdict, attribute_tag, set_attribute
from app.core.leases import Leases
from app.core.lifecycle.events import EventBus, InstanceReplaced, InstanceStored
from app.core.ports import InstanceIndex, RepositoryUnavailable, WriteOutcomeUnknown
from app.core.records import InstanceRecord
from app.storage.base import StagedFile, Storage, StorageError, instance_key, write_whole

log = logging.getLogger(__name__)
HOOK_TIMEOUT_SECONDS = 30.0  # an INGEST_HOOK taking longer fails the instance with 0x0110


@dataclass
class _Prepared:
    staged: StagedFile
    record: InstanceRecord | None = None
    dataset: Dataset | None = None
    outcome: StoreOutcome | None = None
    notes: tuple[str, ...] = ()  # what pydicom warned about while the header was read


class IngestService:
    def __init__(
        self,
        repository: InstanceIndex,
        storage: Storage,
        duplicate_policy: DuplicatePolicy,
        *,
        leases: Leases,
        events: EventBus | None = None,
        rules: IngestRules | None = None,
        hook: IngestHook | None = None,
        parser: HeaderParser | None = None,
    ) -> None:
        self.repository = repository
        self.parser = parser if parser is not None else HeaderParser(workers=0)
        self.storage = storage
        self.duplicate_policy = duplicate_policy
        # Stored and replaced instances are published here (change feed, webhooks...); never waited for.
        self.events = events if events is not None else EventBus()
        self.rules = rules
        self.hook = hook
        self.leases = leases
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiters: dict[str, int] = {}

    async def store(
        self,
        payload: bytes | StagedFile,
        *,
        expected_study_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
        expected_sop_instance_uid: str | None = None,
        origin: str = "",
        calling_ae_title: str | None = None,
        log_outcome: bool = True,
    ) -> StoreOutcome:
        """Store one Part 10 instance given as bytes or as a file already staged (`StagedFile`).

        The `expected_*` UIDs are what the request claims (the STOW-RS URL's study, the C-STORE request's
        Affected SOP Class and Instance UIDs); an instance that contradicts its request fails with 0xA900.
        `calling_ae_title` is the peer's AE title when the instance came over DIMSE (C-STORE), for the ingest
        rules that match on it; None from the other doors. With `log_outcome` False a refusal and the parser's
        notes are left for the caller to log (STOW-RS sums up a whole request in one line).
        """
        outcome = await self._store(
            payload, expected_study_uid, expected_sop_class_uid, expected_sop_instance_uid, origin, calling_ae_title
        )
        if log_outcome:
            if outcome.notes:
                log.warning(
                    "values pydicom warns about in SOPInstanceUID=%s from %s: %s",
                    outcome.sop_instance_uid or "?",
                    origin or "?",
                    " | ".join(outcome.notes),
                )
            if not outcome.ok:
                log.warning(
                    "store refused from %s: SOPInstanceUID=%s reason=0x%04X %s",
                    origin or "?",
                    outcome.sop_instance_uid or "?",
                    outcome.failure or 0,
                    outcome.reason,
                )
        return outcome

    async def _store(
        self,
        payload: bytes | StagedFile,
        expected_study_uid: str | None,
        expected_sop_class_uid: str | None,
        expected_sop_instance_uid: str | None,
        origin: str,
        calling_ae_title: str | None,
    ) -> StoreOutcome:
        if isinstance(payload, bytes) and not is_part10(payload):
            # Refused before it costs a staged file and a parser's time: a body of 50,000 tiny parts is cheap.
            return _fail(StoreOutcome(StoreStatus.FAILED), FailureReason.CANNOT_UNDERSTAND, NOT_PART10)
        try:
            prepared = await self._prepare(payload)
        except OSError as exc:  # StorageError too: the staging area cannot take the instance (disk full...)
            failed = StoreOutcome(StoreStatus.FAILED)
            return _fail(failed, FailureReason.OUT_OF_RESOURCES, f"cannot stage the instance: {exc}")
        if prepared.outcome is not None:
            return await self._failed(prepared)
        record = prepared.record
        assert record is not None
        outcome = StoreOutcome(
            status=StoreStatus.STORED,
            sop_class_uid=record.sop_class_uid,
            sop_instance_uid=record.sop_instance_uid,
            study_instance_uid=record.study_instance_uid,
            series_instance_uid=record.series_instance_uid,
            notes=list(prepared.notes),
        )
        # PS3.18 10.5.1: every instance POSTed to /studies/{study} belongs to that study; PS3.4 B.2.3: a C-STORE
        # data set at odds with its request's Affected SOP Class/Instance UIDs "does not match" (0xA900).
        for name, expected, found in (
            ("StudyInstanceUID", expected_study_uid, record.study_instance_uid),
            ("SOPClassUID", expected_sop_class_uid, record.sop_class_uid),
            ("SOPInstanceUID", expected_sop_instance_uid, record.sop_instance_uid),
        ):
            if expected is not None and found != expected:
                prepared.outcome = _fail(
                    outcome,
                    FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                    # The meaning first: a DIMSE Error Comment keeps only 64 characters.
                    f"{name} differs from the request: {found} in the data set, {expected} in the request",
                )
                return await self._failed(prepared)
        if self.rules is not None or self.hook is not None:
            judged = await self._apply_rules(prepared, outcome, origin, calling_ae_title)
            if judged is not None:
                return judged
            record = prepared.record
            assert record is not None
        try:
            async with self.locked(record.sop_instance_uid):
                # File, metadata and the replaced file's release go together: a caller cancelled half-way (a
                # client gone, a shutdown) waits here, under the lock, until they are done or undone.
                commit = asyncio.ensure_future(self._commit(prepared, record, outcome))
                try:
                    return await asyncio.shield(commit)
                except asyncio.CancelledError:
                    await asyncio.wait({commit})
                    _log_orphaned(commit, record.sop_instance_uid)
                    raise
        except RepositoryUnavailable as exc:  # the lease could not be taken: nothing was committed
            prepared.outcome = _fail(outcome, FailureReason.OUT_OF_RESOURCES, f"metadata store unavailable: {exc}")
            return await self._failed(prepared)

    async def _apply_rules(
        self, prepared: _Prepared, outcome: StoreOutcome, origin: str, calling_ae_title: str | None
    ) -> StoreOutcome | None:
        """Judge the instance by the rules and the hook; the failed outcome if refused, else None (with the
        instance re-encoded and `outcome` updated when something was coerced)."""
        assert prepared.dataset is not None
        verdict = self.rules.evaluate(prepared.dataset, calling_ae_title) if self.rules else Verdict()
        if verdict.reject is None and self.hook is not None:
            try:
                # A hung hook must not hold the store (and a DIMSE association) forever.
                answer = await asyncio.wait_for(
                    self.hook(prepared.dataset, HookContext(calling_ae_title, origin)), HOOK_TIMEOUT_SECONDS
                )
            except Exception as exc:
                log.exception("ingest hook failed on %s", outcome.sop_instance_uid)
                verdict.reject = (
                    FailureReason.PROCESSING_FAILURE,
                    f"ingest hook failed: {type(exc).__name__} {exc}",
                )
            else:
                if isinstance(answer, str):
                    verdict.reject = (FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, answer)
                elif isinstance(answer, HookReject):
                    verdict.reject = (answer.status, answer.reason)
                elif answer:
                    try:
                        for name, value in answer.items():
                            verdict.edits.append(set_attribute(attribute_tag(name), value))
                    except (ValueError, KeyError) as exc:
                        verdict.reject = (
                            FailureReason.PROCESSING_FAILURE,
                            f"ingest hook answer unusable: {exc}",
                        )
                    verdict.changes.append("ingest hook coerced " + ", ".join(answer))
        if verdict.reject is not None:
            prepared.outcome = _fail(outcome, verdict.reject[0], verdict.reject[1])
            return await self._failed(prepared)
        if not verdict.edits:
            return None
        try:
            await asyncio.to_thread(self._rewrite, prepared, verdict.edits)
        except InvalidUIDError as exc:
            prepared.outcome = _fail(
                outcome, FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"after coercion: {exc}"
            )
            return await self._failed(prepared)
        except Exception as exc:
            log.exception("coercion of %s failed", outcome.sop_instance_uid)
            prepared.outcome = _fail(outcome, FailureReason.PROCESSING_FAILURE, f"coercion failed: {exc}")
            return await self._failed(prepared)
        record = prepared.record
        assert record is not None
        outcome.sop_class_uid = record.sop_class_uid
        outcome.sop_instance_uid = record.sop_instance_uid
        outcome.study_instance_uid = record.study_instance_uid
        outcome.series_instance_uid = record.series_instance_uid
        outcome.warnings.append(WarningReason.COERCION_OF_DATA_ELEMENTS)
        outcome.reason = "; ".join(verdict.changes)
        log.info("coerced %s from %s: %s", record.sop_instance_uid, origin or "?", outcome.reason)
        return None

    def _rewrite(self, prepared: _Prepared, edits: list[Edit]) -> None:
        """Re-encode the staged instance with `edits` applied (worker thread): the whole file is read, edited,
        written to a new staged file that replaces the old one, and its header read again for the record."""
        if prepared.staged.handle is not None:
            prepared.staged.handle.flush()
        full = pydicom.dcmread(str(prepared.staged.path))
        for edit in edits:
            edit(full)
        meta = getattr(full, "file_meta", None)
        if meta is not None:
            if "SOPInstanceUID" in full:
                meta.MediaStorageSOPInstanceUID = full.SOPInstanceUID
            if "SOPClassUID" in full:
                meta.MediaStorageSOPClassUID = full.SOPClassUID
        buffer = io.BytesIO()
        full.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        parsed = parse_instance(data, keep_dataset=True)
        if isinstance(parsed, ParseFailure):
            raise InvalidUIDError(parsed.message)
        staged = write_whole(self.storage.staging.new_path(), data)
        self.storage.discard(prepared.staged)
        prepared.staged, prepared.dataset, prepared.record = staged, parsed.dataset, parsed.record

    async def _commit(
        self, prepared: _Prepared, record: InstanceRecord, outcome: StoreOutcome
    ) -> StoreOutcome:
        if self.duplicate_policy is not DuplicatePolicy.REPLACE:
            # Keep and reject must know before the file is written; replace (the default) learns what it
            # replaced from the metadata write itself, and saves the lookup.
            try:
                held = await self.repository.get_instance(record.sop_instance_uid)
            except RepositoryUnavailable as exc:
                prepared.outcome = _fail(
                    outcome, FailureReason.OUT_OF_RESOURCES, f"metadata store unavailable: {exc}"
                )
                return await self._failed(prepared)
            if held is not None:
                if self.duplicate_policy is DuplicatePolicy.REJECT:
                    prepared.outcome = _fail(
                        outcome, FailureReason.DUPLICATE_SOP_INSTANCE, "SOP Instance UID already held"
                    )
                    return await self._failed(prepared)
                await asyncio.to_thread(self.storage.discard, prepared.staged)
                outcome.status = StoreStatus.KEPT
                return outcome

        key = instance_key(record.study_instance_uid, record.series_instance_uid, record.sop_instance_uid)
        record.storage_key, record.size = key, prepared.staged.size
        try:
            commit = await asyncio.to_thread(self.storage.commit, prepared.staged, key)
        except StorageError as exc:
            prepared.outcome = _fail(outcome, FailureReason.OUT_OF_RESOURCES, f"cannot write the file: {exc}")
            return await self._failed(prepared, discard=False)
        try:
            replaced = await self.repository.store_instance(record)
        except WriteOutcomeUnknown as exc:
            # The metadata may name this file or the one it replaced. Under one key, the old bytes go back (the
            # acknowledged ones; either document names that key). Under a new key, the new file stays beside the
            # predecessor's, which is deleted only after a success: the sweep removes the one nothing names,
            # whereas a rollback under a document naming the new file would lose the instance.
            if commit.keeps_predecessor:
                await asyncio.to_thread(commit.rollback)
            log.warning("store of %s may or may not have been applied: %s", record.sop_instance_uid, exc)
            prepared.outcome = _fail(outcome, FailureReason.OUT_OF_RESOURCES, f"metadata store unavailable: {exc}")
            return prepared.outcome
        except BaseException as exc:
            await asyncio.to_thread(commit.rollback)
            if isinstance(exc, RepositoryUnavailable):
                prepared.outcome = _fail(
                    outcome, FailureReason.OUT_OF_RESOURCES, f"metadata store unavailable: {exc}"
                )
            elif isinstance(exc, Exception):
                log.exception("metadata write failed for %s", record.sop_instance_uid)
                prepared.outcome = _fail(
                    outcome, FailureReason.PROCESSING_FAILURE, f"metadata write failed: {exc}"
                )
            else:
                raise
            return await self._failed(prepared, discard=False)
        if commit.keeps_predecessor:
            await asyncio.to_thread(commit.finalize)
        if replaced is not None:
            outcome.status = StoreStatus.REPLACED
            if replaced.storage_key != key:
                # The new copy moved to another study or series: the old file is no longer named by anything.
                await asyncio.to_thread(self.storage.delete, replaced.storage_key)
        event = InstanceReplaced if replaced is not None else InstanceStored
        self.events.publish(
            event(record.study_instance_uid, series=record.series_instance_uid, sop=record.sop_instance_uid)
        )
        return outcome

    async def _prepare(self, payload: bytes | StagedFile) -> _Prepared:
        """Stage and parse one instance: one hop to a worker process for bytes (app/core/ingest/parsing.py), a flush
        and that hop for a file the door staged."""
        # Rules and hooks read the pydicom Dataset, which stays in this process.
        keep_dataset = self.rules is not None or self.hook is not None
        if isinstance(payload, StagedFile):
            prepared = _Prepared(staged=payload)
            if payload.handle is not None:
                await asyncio.to_thread(payload.handle.flush)
            parsed = await self.parser.parse(str(payload.path), keep_dataset=keep_dataset)
        else:
            # A staging failure (disk full...) raises OSError, which `store` answers with 0xA700.
            path = self.storage.staging.new_path()
            job = asyncio.ensure_future(self.parser.stage_and_parse(payload, path, keep_dataset=keep_dataset))
            try:
                staged, parsed = await asyncio.shield(job)
            except asyncio.CancelledError:
                # The worker goes on writing; what it staged goes once it is done.
                def forget(done: asyncio.Future[Any]) -> None:
                    path.unlink(missing_ok=True)
                    _log_orphaned(done, "an abandoned instance")

                job.add_done_callback(forget)
                raise
            prepared = _Prepared(staged=staged)
        prepared.notes = parsed.notes
        if isinstance(parsed, ParseFailure):
            outcome = StoreOutcome(
                StoreStatus.FAILED,
                sop_class_uid=parsed.sop_class_uid,
                sop_instance_uid=parsed.sop_instance_uid,
                notes=list(parsed.notes),
            )
            prepared.outcome = _fail(outcome, parsed.reason, parsed.message)
        else:
            prepared.record, prepared.dataset = parsed.record, parsed.dataset
        return prepared

    async def _failed(self, prepared: _Prepared, *, discard: bool = True) -> StoreOutcome:
        outcome = prepared.outcome
        assert outcome is not None
        if discard:
            await asyncio.to_thread(self.storage.discard, prepared.staged)
        return outcome

    @asynccontextmanager
    async def locked(self, uid: str) -> AsyncIterator[None]:
        """Hold the SOP Instance UID: two copies of one instance arriving at once are stored one after the
        other, so the duplicate policy sees the first before deciding on the second, and a store and a delete
        never interleave (app/core/lifecycle/delete.py). An asyncio lock orders this process's own tasks; a
        lease in the repository (app/core/leases.py) then orders the archive processes sharing it, whose
        stores of one instance name the same file."""
        lock = self._locks.setdefault(uid, asyncio.Lock())
        self._waiters[uid] = self._waiters.get(uid, 0) + 1
        try:
            async with lock, self.leases.held(f"instance:{uid}"):
                yield
        finally:
            self._waiters[uid] -= 1
            if not self._waiters[uid]:
                del self._waiters[uid], self._locks[uid]


def _log_orphaned(task: asyncio.Future[Any], what: str) -> None:
    """A step whose caller was cancelled still ends: a failure it did not handle itself is logged here, not lost."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("store of %s failed after its caller left: %s", what, exc)


def _fail(outcome: StoreOutcome, reason: FailureReason, message: str) -> StoreOutcome:
    outcome.status = StoreStatus.FAILED
    outcome.failure = reason
    outcome.reason = message
    return outcome

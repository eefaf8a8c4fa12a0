"""The ports of core: the roles of the metadata store that core's services use, each a small interface, all
implemented by SQLite (embedded default) and MongoDB in app/repository/. Declared here, beside the services, so
core depends on nothing above it; the remote AE registry's role (AEStore) is declared with its service in aes.py.

Both implementations are exercised by one contract suite (tests/repository/, a file per role), so a service
never needs to know which one it talks to. Aggregates (NumberOfStudyRelatedInstances,
ModalitiesInStudy...) are maintained by the repository in the same unit of work as the instance, because only it
sees every store and delete from every door.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from app.core.aes import AEStore
from app.core.lifecycle.feed import Change, NewChange, OutboxEntry, OutboxStatus, PendingStudy
from app.core.query.model import QueryModel, SearchResult
from app.core.records import InstanceRecord, StoredDataset, StoredInstance
from app.core.workflow.records import PerformedProcedureStep, Subscription, Workitem


class RepositoryUnavailable(RuntimeError):
    """The metadata store cannot be reached or written; callers answer 503 / 0xA700 and retry later."""


class WriteOutcomeUnknown(RepositoryUnavailable):
    """The store went away after an instance's metadata was sent and before it could say, or undo, whether the
    write was applied (a lost connection to MongoDB). Ingest then keeps every file the metadata may name, so that
    whichever metadata the store holds names a file that is there; the sweep removes the file nothing names."""


class Connection(Protocol):
    """Opening, closing and checking the store (bootstrap, /ready, the admin API)."""

    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise RepositoryUnavailable unless the store answers."""

    async def schema_version(self) -> int: ...


class InstanceIndex(Protocol):
    """The instances held: store, delete, find, their stored DICOM JSON and the aggregates kept with them.

    `store_instance` also records the study's activity (last store time, "completion pending") in the same unit
    of work as the instance, so completion tracking costs no extra round trip and survives a restart."""

    async def get_instance(self, sop_instance_uid: str) -> StoredInstance | None: ...

    async def get_instances(self, sop_instance_uids: Sequence[str]) -> dict[str, StoredInstance]:
        """Those of the instances held, by SOP Instance UID, in a few queries however many are asked for."""

    async def store_instance(self, record: InstanceRecord) -> StoredInstance | None:
        """Insert or replace the instance and update every aggregate; return the replaced one, if any."""

    async def delete_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        """Remove the instance and correct every aggregate; return what was removed."""

    async def find_instances(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[StoredInstance]:
        """Instances of a study, series or one instance, in series then instance-number order."""

    async def instance_datasets(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[StoredDataset]:
        """The stored DICOM JSON headers of the same instances, in the same order as `find_instances`
        (WADO-RS metadata, PS3.18 10.4.1.1.2: answered without reading a file)."""

    async def page_instances(self, after: str | None, limit: int) -> list[StoredInstance]:
        """All instances in SOP Instance UID order, a page at a time (sweep, re-index, statistics)."""

    async def count_instances(self) -> int: ...

    async def study_aggregates(self, study_instance_uid: str) -> dict[str, Any] | None:
        """The study's computed attributes, or None when the study is not held: number_of_study_related_series,
        number_of_study_related_instances, modalities_in_study and sop_classes_in_study (lists, sorted)."""

    async def series_aggregates(self, series_instance_uid: str) -> dict[str, Any] | None:
        """{"number_of_series_related_instances": n}, or None when the series is not held."""

    async def patient_aggregates(self, patient_key: str) -> dict[str, Any] | None:
        """number_of_patient_related_studies / _series / _instances, or None when the patient is not held."""


class Search(Protocol):
    """Answers a compiled query (app/core/query/): QIDO-RS, C-FIND and the retrieves that match first."""

    async def search(self, query: QueryModel) -> SearchResult:
        """One page of the entities matching `query` (QIDO-RS and C-FIND share it), as DICOM JSON with the
        levels merged and aggregates added (app.core.query.answers.assemble), in a stable order, and how many further
        matches lie beyond the page."""


class ChangeFeedStore(Protocol):
    """The persisted change feed (app/core/lifecycle/changefeed.py)."""

    async def append_changes(self, changes: Sequence[NewChange]) -> int:
        """Append to the change feed in order, in one unit of work; return the last sequence number given."""

    async def changes(self, since: int, limit: int, study: str | None = None) -> list[Change]:
        """Feed entries with seq > since, in seq order, at most `limit`; only those of the study `study` (its
        history, read through an index) when given."""

    async def last_change_seq(self) -> int:
        """The highest sequence number given so far (0 when the feed is empty)."""


class CompletionStore(Protocol):
    """Study completion tracking (app/core/lifecycle/completion.py)."""

    async def pending_completions(self, quiet_before: float, limit: int) -> list[PendingStudy]:
        """Studies with completion pending whose last store was at or before `quiet_before`, oldest first."""

    async def mark_completed(self, study_instance_uid: str, activity_at: float) -> bool:
        """Clear the study's completion-pending flag unless a store came after `activity_at`; True if cleared.
        Either way the study's claim ends (a study stored to meanwhile completes again later)."""

    async def pending_completion(self, study_instance_uid: str) -> PendingStudy | None:
        """The study's pending completion, however recent its last store (an MPPS ends the wait at once)."""

    async def claim_completion(self, study_instance_uid: str, activity_at: float, now: float, until: float) -> bool:
        """Claim the study's completion at `activity_at` until `until`, in one atomic step: True only if it is
        still pending at that activity and unclaimed (or its claim expired by `now`). Of several archive
        processes reading the same pending study, one reports it; `mark_completed` ends the claim, and a
        process that dies holding one hands the study on when the claim expires."""


class Outbox(Protocol):
    """Work owed to an outside system, retried until done (app/fhir/sync.py)."""

    async def outbox_put(self, target: str, key: str, payload: str) -> None:
        """Add work for `target`, due now; the same (target, key) again replaces the payload (a newer
        version), resets the attempts and makes it due now."""

    async def outbox_due(self, target: str, now: float, limit: int) -> list[OutboxEntry]:
        """Entries of `target` due at `now` and not claimed (or claimed until `now` at the latest), earliest due
        first."""

    async def outbox_claim(self, target: str, key: str, version: int, now: float, until: float) -> bool:
        """Claim the entry at `version` until `until`, in one atomic step: True only if it is still at that
        version, due and unclaimed at `now`. Of several archive processes reading the same due entry, one does
        the work; `outbox_done` or `outbox_retry` ends the claim, and a process that dies holding one hands the
        entry on when the claim expires."""

    async def outbox_done(self, target: str, key: str, version: int) -> bool:
        """Remove the entry if it is still at `version`; True if removed. Otherwise (put again meanwhile) its
        claim ends, so the newer version is due at once."""

    async def outbox_retry(
        self, target: str, key: str, version: int, next_attempt_at: float, error: str
    ) -> None:
        """Record a failed attempt of the entry at `version` and when to try again; its claim ends."""

    async def outbox_status(self, target: str) -> OutboxStatus: ...


class Cursors(Protocol):
    """Named positions in the change feed (a webhook's last delivered seq)."""

    async def get_cursor(self, name: str) -> int | None:
        """A named position in the change feed (e.g. a webhook's last delivered seq), None if never set."""

    async def set_cursor(self, name: str, value: int) -> None: ...


class LeaseStore(Protocol):
    """Named leases: exclusive, expiring holds on a piece of shared work (a webhook URL's deliveries, one
    instance being stored or deleted) among the archive processes sharing this store (app/core/leases.py)."""

    async def acquire_lease(self, name: str, holder: str, now: float, until: float) -> bool:
        """Hold `name` for `holder` until `until` if it is free, expired at `now`, or already `holder`'s (a
        renewal), in one atomic step; True if `holder` holds it now."""

    async def release_lease(self, name: str, holder: str) -> None:
        """Give `name` up if `holder` holds it (another holder's lease is left alone)."""


class WorkitemStore(Protocol):
    """UPS workitems (app/core/workflow/ups.py), which the Modality Worklist also reads."""

    async def create_workitem(self, workitem: Workitem) -> bool:
        """Insert the workitem at version 1; False (nothing written) when its SOP Instance UID is held."""

    async def get_workitem(self, sop_instance_uid: str) -> Workitem | None: ...

    async def replace_workitem(self, workitem: Workitem, expected_version: int) -> bool:
        """Write the workitem as version `expected_version + 1` if the stored one is still at
        `expected_version`; False (nothing written) otherwise."""

    async def find_workitems(
        self,
        *,
        states: Sequence[str] | None = None,
        on_worklist: bool | None = None,
        scheduled_from: str | None = None,
        scheduled_to: str | None = None,
        patient_id: str | None = None,
        station: str | None = None,
        after: str | None = None,
        limit: int = 1000,
    ) -> list[Workitem]:
        """Workitems narrowed by the indexed values (None: any), in SOP Instance UID order after `after`.
        `scheduled_from`/`scheduled_to` compare `scheduled_start` as text, inclusive (`scheduled_to` at its own
        precision: "20261206" takes every time of that day)."""


class PerformedStepStore(Protocol):
    """Modality Performed Procedure Steps (app/core/workflow/mpps.py)."""

    async def create_performed_step(self, step: PerformedProcedureStep) -> bool:
        """Insert at version 1; False when its SOP Instance UID is held."""

    async def get_performed_step(self, sop_instance_uid: str) -> PerformedProcedureStep | None: ...

    async def replace_performed_step(self, step: PerformedProcedureStep, expected_version: int) -> bool:
        """As `replace_workitem`: written only over `expected_version`."""

    async def list_performed_steps(
        self, *, study_instance_uid: str | None = None, offset: int = 0, limit: int = 100
    ) -> list[PerformedProcedureStep]:
        """Newest first (created_at), optionally those that name the study."""


class SubscriptionStore(Protocol):
    """UPS subscriptions (PS3.4 CC.2.3.2): per workitem and global (workitem_uid None), one per AE and target."""

    async def put_subscription(self, subscription: Subscription) -> None:
        """Add or replace the subscription of (ae_title, workitem_uid)."""

    async def delete_subscription(self, ae_title: str, workitem_uid: str | None) -> bool: ...

    async def subscriptions(
        self, *, ae_title: str | None = None, workitem_uid: str | None = None, global_only: bool = False
    ) -> list[Subscription]:
        """Subscriptions by AE, by workitem, or the global ones (`global_only`), in (ae_title, workitem) order."""


class Repository(
    Connection,
    InstanceIndex,
    Search,
    ChangeFeedStore,
    CompletionStore,
    Outbox,
    Cursors,
    LeaseStore,
    AEStore,
    WorkitemStore,
    PerformedStepStore,
    SubscriptionStore,
    Protocol,
):
    """Every role of the metadata store, as SQLite and MongoDB implement it. Services take the roles they use;
    the composition root (app/bootstrap.py) and the admin door hold the whole."""

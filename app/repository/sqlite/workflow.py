"""The SQLite store's workflow roles: UPS workitems, Modality Performed Procedure Steps and UPS subscriptions.

Each record's DICOM JSON is kept whole as JSON text (`dataset`); beside it, the few values a search narrows on
(state, on_worklist, scheduled start, patient; a step's studies), written from the record in the same
statement, so matching itself stays with the query model (app/core/query/evaluate.py) and both stores answer
alike. Tables: migrations/sqlite/0006_workflow.sql.

Why a replace is a compare-and-set (`... WHERE version = ?` in the one UPDATE): two doors, or two archive
processes on one file, may decide on the same workitem at once, e.g. both claiming it IN PROGRESS, and PS3.4
CC.1.1 allows one performer only. Whoever writes first moves the version on; the other's write matches no row,
is refused, and its service reads again and decides anew (app/core/workflow/ups.py).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from app.core.records import JSONDict
from app.core.workflow.records import (
    PerformedProcedureStep,
    PerformedStepStatus,
    ProcedureStepState,
    Subscription,
    Workitem,
)
from app.repository.sqlite.connection import SQLiteConnection

_WORKITEM_COLUMNS = (
    "sop_instance_uid, state, transaction_uid, performed, on_worklist, scheduled_start, patient_id, station, "
    "version, dataset"
)
_STEP_COLUMNS = "sop_instance_uid, status, study_instance_uids, version, created_at, updated_at, dataset"
_SUBSCRIPTION_COLUMNS = "ae_title, workitem_uid, deletion_lock, filter, suspended"
_GLOBAL = ""  # workitem_uid of a global subscription: a key column is never NULL


class SQLiteWorkitems(SQLiteConnection):
    async def create_workitem(self, workitem: Workitem) -> bool:
        def create(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                f"INSERT INTO workitems ({_WORKITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (sop_instance_uid) DO NOTHING",
                (workitem.sop_instance_uid, *_workitem_values(workitem, 1)),
            )
            return cursor.rowcount == 1

        return await self._write(create)

    async def get_workitem(self, sop_instance_uid: str) -> Workitem | None:
        sql = f"SELECT {_WORKITEM_COLUMNS} FROM workitems WHERE sop_instance_uid = ?"
        row = await self._read(lambda conn: conn.execute(sql, (sop_instance_uid,)).fetchone())
        return None if row is None else _workitem(row)

    async def replace_workitem(self, workitem: Workitem, expected_version: int) -> bool:
        def replace(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE workitems SET state = ?, transaction_uid = ?, performed = ?, on_worklist = ?, "
                "scheduled_start = ?, patient_id = ?, station = ?, version = ?, dataset = ? "
                "WHERE sop_instance_uid = ? AND version = ?",
                (*_workitem_values(workitem, expected_version + 1), workitem.sop_instance_uid, expected_version),
            )
            return cursor.rowcount == 1

        return await self._write(replace)

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
        if limit <= 0:
            return []
        where: list[str] = []
        params: list[Any] = []
        if states is not None:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(states)
        if on_worklist is not None:
            where.append("on_worklist = ?")
            params.append(int(on_worklist))
        if scheduled_from is not None:
            where.append("scheduled_start >= ?")
            params.append(scheduled_from)
        if scheduled_to is not None:
            # At its own precision: "20261206" takes 20261206235959 too, as the start's first 8 characters.
            where.append("substr(scheduled_start, 1, length(?)) <= ?")
            params.extend((scheduled_to, scheduled_to))
        if patient_id is not None:
            where.append("patient_id = ?")
            params.append(patient_id)
        if station is not None:
            where.append("station = ?")
            params.append(station)
        if after is not None:
            where.append("sop_instance_uid > ?")
            params.append(after)
        sql = (
            f"SELECT {_WORKITEM_COLUMNS} FROM workitems"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY sop_instance_uid LIMIT ?"
        )
        params.append(limit)
        return await self._read(lambda conn: [_workitem(row) for row in conn.execute(sql, params)])


class SQLitePerformedSteps(SQLiteConnection):
    async def create_performed_step(self, step: PerformedProcedureStep) -> bool:
        def create(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                f"INSERT INTO performed_steps ({_STEP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (sop_instance_uid) DO NOTHING",
                (
                    step.sop_instance_uid, step.status.value, json.dumps(list(step.study_instance_uids)), 1,
                    step.created_at, step.updated_at, json.dumps(step.dataset),
                ),
            )  # fmt: skip
            if cursor.rowcount != 1:
                return False
            _index_studies(conn, step)
            return True

        return await self._write(create)

    async def get_performed_step(self, sop_instance_uid: str) -> PerformedProcedureStep | None:
        sql = f"SELECT {_STEP_COLUMNS} FROM performed_steps WHERE sop_instance_uid = ?"
        row = await self._read(lambda conn: conn.execute(sql, (sop_instance_uid,)).fetchone())
        return None if row is None else _performed_step(row)

    async def replace_performed_step(self, step: PerformedProcedureStep, expected_version: int) -> bool:
        """As `replace_workitem`; `created_at` stays as created."""

        def replace(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE performed_steps SET status = ?, study_instance_uids = ?, version = ?, updated_at = ?, "
                "dataset = ? WHERE sop_instance_uid = ? AND version = ?",
                (
                    step.status.value, json.dumps(list(step.study_instance_uids)), expected_version + 1,
                    step.updated_at, json.dumps(step.dataset), step.sop_instance_uid, expected_version,
                ),
            )  # fmt: skip
            if cursor.rowcount != 1:
                return False
            conn.execute("DELETE FROM performed_step_studies WHERE sop_instance_uid = ?", (step.sop_instance_uid,))
            _index_studies(conn, step)
            return True

        return await self._write(replace)

    async def list_performed_steps(
        self, *, study_instance_uid: str | None = None, offset: int = 0, limit: int = 100
    ) -> list[PerformedProcedureStep]:
        if limit <= 0:
            return []
        sql = f"SELECT {_STEP_COLUMNS} FROM performed_steps"
        params: tuple[Any, ...] = ()
        if study_instance_uid is not None:
            sql += (
                " WHERE sop_instance_uid IN "
                "(SELECT sop_instance_uid FROM performed_step_studies WHERE study_instance_uid = ?)"
            )
            params = (study_instance_uid,)
        sql += " ORDER BY created_at DESC, sop_instance_uid DESC LIMIT ? OFFSET ?"
        return await self._read(
            lambda conn: [_performed_step(row) for row in conn.execute(sql, (*params, limit, max(offset, 0)))]
        )


class SQLiteSubscriptions(SQLiteConnection):
    async def put_subscription(self, subscription: Subscription) -> None:
        s = subscription
        values = (
            s.ae_title, s.workitem_uid or _GLOBAL, int(s.deletion_lock),
            None if s.filter is None else json.dumps(s.filter), int(s.suspended),
        )  # fmt: skip
        await self._write(
            lambda conn: conn.execute(
                f"INSERT INTO ups_subscriptions ({_SUBSCRIPTION_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (ae_title, workitem_uid) DO UPDATE SET deletion_lock = excluded.deletion_lock, "
                "filter = excluded.filter, suspended = excluded.suspended",
                values,
            )
        )

    async def delete_subscription(self, ae_title: str, workitem_uid: str | None) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM ups_subscriptions WHERE ae_title = ? AND workitem_uid = ?",
                (ae_title, workitem_uid or _GLOBAL),
            )
            return cursor.rowcount > 0

        return await self._write(delete)

    async def subscriptions(
        self, *, ae_title: str | None = None, workitem_uid: str | None = None, global_only: bool = False
    ) -> list[Subscription]:
        where: list[str] = []
        params: list[str] = []
        if ae_title is not None:
            where.append("ae_title = ?")
            params.append(ae_title)
        if workitem_uid is not None:
            where.append("workitem_uid = ?")
            params.append(workitem_uid)
        if global_only:
            where.append("workitem_uid = ?")
            params.append(_GLOBAL)
        sql = (
            f"SELECT {_SUBSCRIPTION_COLUMNS} FROM ups_subscriptions"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY ae_title, workitem_uid"
        )
        return await self._read(lambda conn: [_subscription(row) for row in conn.execute(sql, params)])


# -- rows ------------------------------------------------------------------------------------------------------


def _workitem_values(workitem: Workitem, version: int) -> tuple[Any, ...]:
    """The columns after sop_instance_uid, in _WORKITEM_COLUMNS order, at `version`."""
    return (
        workitem.state.value, workitem.transaction_uid, int(workitem.performed), int(workitem.on_worklist),
        workitem.scheduled_start, workitem.patient_id, workitem.station, version, json.dumps(workitem.dataset),
    )  # fmt: skip


def _workitem(row: sqlite3.Row) -> Workitem:
    uid, state, transaction_uid, performed, _on_worklist, scheduled_start, patient_id, station, version, dataset = row
    return Workitem(
        sop_instance_uid=uid,
        state=ProcedureStepState(state),
        dataset=_json(dataset),
        transaction_uid=transaction_uid,
        performed=bool(performed),
        version=int(version),
        scheduled_start=scheduled_start,
        patient_id=patient_id,
        station=station,
    )


def _index_studies(conn: sqlite3.Connection, step: PerformedProcedureStep) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO performed_step_studies (study_instance_uid, sop_instance_uid) VALUES (?, ?)",
        [(study, step.sop_instance_uid) for study in step.study_instance_uids],
    )


def _performed_step(row: sqlite3.Row) -> PerformedProcedureStep:
    uid, status, studies, version, created_at, updated_at, dataset = row
    return PerformedProcedureStep(
        sop_instance_uid=uid,
        status=PerformedStepStatus(status),
        dataset=_json(dataset),
        study_instance_uids=tuple(json.loads(studies)),
        version=int(version),
        created_at=float(created_at),
        updated_at=float(updated_at),
    )


def _subscription(row: sqlite3.Row) -> Subscription:
    ae_title, workitem_uid, deletion_lock, filter_text, suspended = row
    return Subscription(
        ae_title=ae_title,
        workitem_uid=workitem_uid or None,
        deletion_lock=bool(deletion_lock),
        filter=None if filter_text is None else _json(filter_text),
        suspended=bool(suspended),
    )


def _json(text: str) -> JSONDict:
    value: JSONDict = json.loads(text)
    return value

"""The SQLite instance index's unit of work: what one store or delete writes, run on the writer thread.

Each instance is one transaction (a savepoint inside a group commit, see `store_each`): the instance row, its
series, study and patient rows, the multi-valued index, and every aggregate change commit together or not at
all. The aggregates (NumberOfStudyRelatedInstances, ModalitiesInStudy...) are kept here, in the same transaction
as the instance, because only the repository sees every store and delete from every door. The benchmarks fill
archives through `add` too, so they measure the code every store runs.

A series is counted in the study its row names: the study its newest instance names, as its other columns are
the newest instance's. A copy naming another study moves it there (`_series_left` uncounts it from the old one);
a study that goes while it still counts a series moved there (whose instances there are gone) hands the series
to the study its newest instance names (`_rehome_series`). The MongoDB store keeps the same rule.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Final

from app.core.dicom.attributes import LEVEL_TABLE, Kind, Level, stored_at
from app.core.records import InstanceRecord, LevelRecord, StoredInstance

INSTANCE_COLUMNS = (
    "study_instance_uid, series_instance_uid, sop_instance_uid, sop_class_uid, transfer_syntax_uid, "
    "storage_key, size"
)
STUDY_COUNTS = "number_of_study_related_series, number_of_study_related_instances"


@functools.cache
def _columns(level: Level) -> tuple[str, ...]:
    return tuple(a.field for a in stored_at(level) if a.kind is Kind.COLUMN)


@functools.cache
def _instance_columns() -> tuple[str, ...]:
    """The image-level columns after the four UIDs that open the instances row."""
    return tuple(c for c in _columns(Level.IMAGE) if c not in ("sop_instance_uid", "sop_class_uid"))


@functools.cache
def _insert_instance_sql() -> str:
    """The instance row's insert; its `id` (insertion order, the stores' tie-break) is given for a replace."""
    return (
        "INSERT INTO instances (id, sop_instance_uid, series_instance_uid, study_instance_uid, sop_class_uid, "
        + ", ".join(f'"{c}"' for c in _instance_columns())
        + ", transfer_syntax_uid, storage_key, size, attributes, dataset, created_at) VALUES ("
        + ", ".join("?" * (len(_instance_columns()) + 11))
        + ")"
    )


def stored(row: sqlite3.Row) -> StoredInstance:
    return StoredInstance(*row)


def store_each(
    conn: sqlite3.Connection, records: Sequence[InstanceRecord]
) -> list[StoredInstance | Exception | None]:
    """Each record stored under a savepoint: what it replaced, or the error that undid it alone. An
    OperationalError (disk full, I/O error) ends the whole transaction: the store is unusable for now."""
    outcomes: list[StoredInstance | Exception | None] = []
    for record in records:
        conn.execute("SAVEPOINT store_instance")
        try:
            previous = get_instance(conn, record.sop_instance_uid)
            if previous is None:
                add(conn, record)
            else:
                # The copy takes its predecessor's place (its row id, the order instances are listed in when
                # nothing else orders them), and is counted before the predecessor is uncounted, so that a series,
                # study or patient it stays in is never emptied and made again (keeping its place too), as in
                # the MongoDB store.
                instance_id, _, _ = _take_out(conn, previous.sop_instance_uid)
                add(conn, record, instance_id=instance_id)
                # A copy of the same class in the same study leaves its SOPClassesInStudy as it was: the study's
                # instances need not be read again.
                same_place = (previous.study_instance_uid, previous.sop_class_uid) == (
                    record.study_instance_uid,
                    record.sop_class_uid,
                )
                _uncount(
                    conn,
                    previous.study_instance_uid,
                    previous.series_instance_uid,
                    kept_class=record.sop_class_uid if same_place else None,
                )
            outcomes.append(previous)
        except sqlite3.OperationalError:
            raise
        except Exception as exc:
            conn.execute("ROLLBACK TO store_instance")
            outcomes.append(exc)
        conn.execute("RELEASE store_instance")
    return outcomes


def get_instance(conn: sqlite3.Connection, sop_instance_uid: str) -> StoredInstance | None:
    row = conn.execute(
        f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
    ).fetchone()
    return None if row is None else stored(row)


def _upsert(conn: sqlite3.Connection, table: str, key: str, row: dict[str, Any]) -> dict[str, Any] | None:
    """Insert `row` keyed by column `key`, or update the row there if any of its values differ; the row's values
    as they were held (`updated_at` and the key aside), or None when the row is new.

    After a study's first instance its patient, study and series rows usually hold these values already: they
    are read and compared (one indexed look-up) rather than written again, which would rewrite the row and its
    index entries for nothing: a CT series' store took 0.47 ms of SQLite work that way, 0.25 ms this way (the
    transaction's own included, bench/README.md).
    `updated_at`, if given, is written only with a change.
    """
    select, insert, update = _upsert_sql(table, key, tuple(row))
    compared = {name: value for name, value in row.items() if name not in (key, "updated_at")}
    held = conn.execute(select, (row[key],)).fetchone()
    if held is None:
        conn.execute(insert, list(row.values()))
        return None
    if tuple(held) != tuple(compared.values()):
        conn.execute(update, [value for name, value in row.items() if name != key] + [row[key]])
    return dict(zip(compared, held, strict=True))


@functools.cache
def _upsert_sql(table: str, key: str, names: tuple[str, ...]) -> tuple[str, str, str]:
    """`_upsert`'s statements for a row of `names`: the look-up of the compared values, the insert, the update."""
    compared = ", ".join(f'"{n}"' for n in names if n not in (key, "updated_at"))
    columns = ", ".join(f'"{n}"' for n in names)
    assignments = ", ".join(f'"{n}" = ?' for n in names if n != key)
    return (
        f"SELECT {compared} FROM {table} WHERE {key} = ?",
        f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(names))})",
        f"UPDATE {table} SET {assignments} WHERE {key} = ?",
    )


def _level_row(level: Level, record: LevelRecord) -> dict[str, Any]:
    return {name: record.values.get(name) for name in _columns(level)}


def _set_values(
    conn: sqlite3.Connection, level: Level, owner: str, multi: dict[str, list[str]], *, new: bool
) -> None:
    """Replace the multi-valued index entries of one row when they differ from those held; a `new` row has none
    (a removed row's go with it)."""
    rows = [(level.value, owner, key, value) for key, values in multi.items() for value in dict.fromkeys(values)]
    if not new:
        held = conn.execute(
            "SELECT key, value FROM attribute_values WHERE level = ? AND owner = ?", (level.value, owner)
        ).fetchall()
        if sorted(map(tuple, held)) == sorted((key, value) for _, _, key, value in rows):
            return
        conn.execute("DELETE FROM attribute_values WHERE level = ? AND owner = ?", (level.value, owner))
    if rows:
        conn.executemany("INSERT INTO attribute_values (level, owner, key, value) VALUES (?, ?, ?, ?)", rows)


def add(conn: sqlite3.Connection, record: InstanceRecord, *, instance_id: int | None = None) -> None:
    """Add the instance's row (at `instance_id`, a replaced predecessor's, or a new one) and count it."""
    now = time.time()
    patient_attrs = record.patient.attributes
    patient_row = _level_row(Level.PATIENT, record.patient)
    patient_fields = {
        "patient_key": record.patient_key,
        **patient_row,
        "attributes": json.dumps(patient_attrs),
    }
    new_patient = _upsert(conn, "patients", "patient_key", patient_fields) is None
    before = conn.execute(
        f"SELECT patient_key, {STUDY_COUNTS} FROM studies WHERE study_instance_uid = ?",
        (record.study_instance_uid,),
    ).fetchone()
    if before is not None and before[0] != record.patient_key:
        _move_study(conn, before[0], record.patient_key, series=before[1], instances=before[2])
    study_fields = {
        "study_instance_uid": record.study_instance_uid,
        "patient_key": record.patient_key,
        **patient_row,
        **_level_row(Level.STUDY, record.study),
        "study_datetime": record.study.values.get("study_datetime"),
        # In the Study Root model the patient's attributes are study attributes (PS3.4 C.6.2.1).
        "attributes": json.dumps({**patient_attrs, **record.study.attributes}),
        "updated_at": now,
    }
    new_study = _upsert(conn, "studies", "study_instance_uid", study_fields) is None
    held_series = _upsert(
        conn,
        "series",
        "series_instance_uid",
        {
            "series_instance_uid": record.series_instance_uid,
            "study_instance_uid": record.study_instance_uid,
            **_level_row(Level.SERIES, record.series),
            "attributes": json.dumps(record.series.attributes),
            "updated_at": now,
        },
    )
    new_series = held_series is None
    # A series is counted in the study its row names: the study its newest instance names, as its other
    # attributes are the newest instance's. One naming another study moves the series there (a study corrected
    # by re-sending its series under the right Study Instance UID, one instance at a time).
    held_in = None if held_series is None else held_series["study_instance_uid"]
    moved_from = held_in if held_in not in (None, record.study_instance_uid) else None
    conn.execute(
        _insert_instance_sql(),
        [
            instance_id,
            record.sop_instance_uid,
            record.series_instance_uid,
            record.study_instance_uid,
            record.sop_class_uid,
            *[record.instance.values.get(c) for c in _instance_columns()],
            record.transfer_syntax_uid,
            record.storage_key,
            record.size,
            json.dumps(record.instance.attributes),
            record.dataset_json,
            now,
        ],
    )
    _set_values(conn, Level.PATIENT, record.patient_key, record.patient.multi, new=new_patient)
    _set_values(
        conn,
        Level.STUDY,
        record.study_instance_uid,
        {**record.patient.multi, **record.study.multi},
        new=new_study,
    )
    _set_values(conn, Level.SERIES, record.series_instance_uid, record.series.multi, new=new_series)
    # The instance row was just inserted: a predecessor's entries went with `_take_out`.
    _set_values(conn, Level.IMAGE, record.sop_instance_uid, record.instance.multi, new=True)
    _count(
        conn,
        record.patient_key,
        record.study_instance_uid,
        record.series_instance_uid,
        +1,
        new_study=new_study,
        new_series=new_series or moved_from is not None,
    )
    if moved_from is not None:
        _series_left(conn, moved_from)
    _refresh_study_sets(conn, record.study_instance_uid, added_class=record.sop_class_uid)
    # The study's last activity, for the completion tracker (app/core/lifecycle/completion.py), in the same transaction.
    conn.execute(
        "INSERT INTO study_activity (study_instance_uid, activity_at, pending) VALUES (?, ?, 1) "
        "ON CONFLICT (study_instance_uid) DO UPDATE SET activity_at = excluded.activity_at, pending = 1",
        (record.study_instance_uid, now),
    )


def remove(conn: sqlite3.Connection, sop_instance_uid: str) -> None:
    _, study_uid, series_uid = _take_out(conn, sop_instance_uid)
    _uncount(conn, study_uid, series_uid)


def _take_out(conn: sqlite3.Connection, sop_instance_uid: str) -> tuple[int, str, str]:
    """Delete the instance's row and its multi-valued entries, not yet uncounted: the row id it had, its study
    and its series."""
    instance_id, study_uid, series_uid = conn.execute(
        "SELECT id, study_instance_uid, series_instance_uid FROM instances WHERE sop_instance_uid = ?",
        (sop_instance_uid,),
    ).fetchone()
    conn.execute("DELETE FROM instances WHERE id = ?", (instance_id,))
    conn.execute(
        "DELETE FROM attribute_values WHERE level = ? AND owner = ?", (Level.IMAGE.value, sop_instance_uid)
    )
    return int(instance_id), str(study_uid), str(series_uid)


def _uncount(conn: sqlite3.Connection, study_uid: str, series_uid: str, *, kept_class: str | None = None) -> None:
    """Take an instance taken out of `series_uid` out of the counts (under the study's patient as it is now: a
    replacing copy may have moved the study); levels left empty go. `kept_class`: a copy of that SOP class in
    the same study replaced it, so SOPClassesInStudy stays as it is and need not be read again."""
    (patient_key,) = conn.execute(
        "SELECT patient_key FROM studies WHERE study_instance_uid = ?", (study_uid,)
    ).fetchone()
    _count(conn, patient_key, study_uid, series_uid, -1)
    # Rows of levels left empty go, with their multi-valued index entries.
    series_gone = False
    left, series_study = conn.execute(
        "SELECT number_of_series_related_instances, study_instance_uid FROM series WHERE series_instance_uid = ?",
        (series_uid,),
    ).fetchone()
    if left <= 0:
        _drop(conn, Level.SERIES, series_uid)
        if series_study == study_uid:
            series_gone = True
            _count_series(conn, patient_key, study_uid, -1)
        else:  # counted in the study it had moved to, whose last instance of it had gone before
            _series_left(conn, series_study)
    left, series_counted = conn.execute(
        "SELECT number_of_study_related_instances, number_of_study_related_series FROM studies"
        " WHERE study_instance_uid = ?",
        (study_uid,),
    ).fetchone()
    if left <= 0:
        _drop(conn, Level.STUDY, study_uid)
        conn.execute("DELETE FROM study_activity WHERE study_instance_uid = ?", (study_uid,))
        # A series moved here whose instances here are gone is still counted (its row names this study, its
        # other instances another): the patient stops counting it with the study, and the series goes home.
        conn.execute(
            "UPDATE patients SET number_of_patient_related_studies = number_of_patient_related_studies - 1,"
            " number_of_patient_related_series = number_of_patient_related_series - ? WHERE patient_key = ?",
            (series_counted, patient_key),
        )
        if series_counted:
            _rehome_series(conn, study_uid)
    (left,) = conn.execute(
        "SELECT number_of_patient_related_instances FROM patients WHERE patient_key = ?", (patient_key,)
    ).fetchone()
    if left <= 0:
        _drop(conn, Level.PATIENT, patient_key)
    if (kept_class is None or series_gone) and conn.execute(
        "SELECT 1 FROM studies WHERE study_instance_uid = ?", (study_uid,)
    ).fetchone():
        # A series gone may take its modality out of the study.
        _refresh_study_sets(conn, study_uid, added_class=kept_class)


_LEVEL_KEY: Final = {
    Level.SERIES: "series_instance_uid",
    Level.STUDY: "study_instance_uid",
    Level.PATIENT: "patient_key",
}


def _drop(conn: sqlite3.Connection, level: Level, owner: str) -> None:
    """Delete the row of a level left empty, with its multi-valued index entries."""
    key = _LEVEL_KEY[level]
    conn.execute(f"DELETE FROM {LEVEL_TABLE[level]} WHERE {key} = ?", (owner,))
    conn.execute("DELETE FROM attribute_values WHERE level = ? AND owner = ?", (level.value, owner))


def _rehome_series(conn: sqlite3.Connection, gone_study: str) -> None:
    """Series rows still naming a study that went (each had moved there, and its instances there are gone) move to
    the study their newest instance names, and are counted there: a study made again under that UID later must
    not find a series it never counted."""
    for (series_uid,) in conn.execute(
        "SELECT series_instance_uid FROM series WHERE study_instance_uid = ?", (gone_study,)
    ).fetchall():
        (home,) = conn.execute(
            "SELECT study_instance_uid FROM instances WHERE series_instance_uid = ? "
            "ORDER BY created_at DESC, sop_instance_uid DESC LIMIT 1",
            (series_uid,),
        ).fetchone()
        conn.execute("UPDATE series SET study_instance_uid = ? WHERE series_instance_uid = ?", (home, series_uid))
        (patient_key,) = conn.execute(
            "SELECT patient_key FROM studies WHERE study_instance_uid = ?", (home,)
        ).fetchone()
        _count_series(conn, patient_key, home, +1)
        _refresh_study_sets(conn, home)


def _series_left(conn: sqlite3.Connection, study_uid: str) -> None:
    """A series counted in `study_uid` moved to another study or went: the study (if still held) and its patient
    count one series fewer, and the series' modality may leave the study."""
    row = conn.execute(
        "SELECT patient_key FROM studies WHERE study_instance_uid = ?", (study_uid,)
    ).fetchone()
    if row is not None:
        _count_series(conn, row[0], study_uid, -1)
        _refresh_study_sets(conn, study_uid)


def _move_study(conn: sqlite3.Connection, old_key: str, new_key: str, *, series: int, instances: int) -> None:
    """An instance naming another patient for an existing study moves the study to that patient (the newest
    instance's patient attributes win, as for every other study column): its counts go with it, and the old
    patient goes when left with nothing. Without this the old patient kept the counts forever and the new one
    was deleted while still owning the study."""
    for key, sign in ((old_key, -1), (new_key, +1)):
        conn.execute(
            "UPDATE patients SET number_of_patient_related_studies = number_of_patient_related_studies + ?, "
            "number_of_patient_related_series = number_of_patient_related_series + ?, "
            "number_of_patient_related_instances = number_of_patient_related_instances + ? WHERE patient_key = ?",
            (sign, sign * series, sign * instances, key),
        )
    left = conn.execute(
        "SELECT number_of_patient_related_instances FROM patients WHERE patient_key = ?", (old_key,)
    ).fetchone()
    if left is not None and left[0] <= 0:
        _drop(conn, Level.PATIENT, old_key)


def _count(
    conn: sqlite3.Connection,
    patient_key: str,
    study_uid: str,
    series_uid: str,
    delta: int,
    *,
    new_study: bool = False,
    new_series: bool = False,
) -> None:
    conn.execute(
        "UPDATE series SET number_of_series_related_instances = number_of_series_related_instances + ? "
        "WHERE series_instance_uid = ?",
        (delta, series_uid),
    )
    conn.execute(
        "UPDATE studies SET number_of_study_related_instances = number_of_study_related_instances + ? "
        "WHERE study_instance_uid = ?",
        (delta, study_uid),
    )
    conn.execute(
        "UPDATE patients SET number_of_patient_related_instances = number_of_patient_related_instances + ?, "
        "number_of_patient_related_studies = number_of_patient_related_studies + ? WHERE patient_key = ?",
        (delta, 1 if new_study else 0, patient_key),
    )
    if new_series:
        _count_series(conn, patient_key, study_uid, +1)


def _count_series(conn: sqlite3.Connection, patient_key: str, study_uid: str, delta: int) -> None:
    conn.execute(
        "UPDATE studies SET number_of_study_related_series = number_of_study_related_series + ? "
        "WHERE study_instance_uid = ?",
        (delta, study_uid),
    )
    conn.execute(
        "UPDATE patients SET number_of_patient_related_series = number_of_patient_related_series + ? "
        "WHERE patient_key = ?",
        (delta, patient_key),
    )


def _refresh_study_sets(conn: sqlite3.Connection, study_uid: str, *, added_class: str | None = None) -> None:
    """ModalitiesInStudy and SOPClassesInStudy, recomputed from the study's own rows (both indexed).

    After an added instance (`added_class`) the classes can only grow: the stored set gains it, rather than
    the study's instances being read again, which for a study of 100k instances cost 6 ms a store. A series'
    modality may change with any store, but a study has few series.
    """
    modalities = _distinct(
        conn, "SELECT DISTINCT modality FROM series WHERE study_instance_uid = ?", study_uid
    )
    if added_class is None:
        classes = _distinct(
            conn, "SELECT DISTINCT sop_class_uid FROM instances WHERE study_instance_uid = ?", study_uid
        )
    else:
        row = conn.execute(
            "SELECT sop_classes_in_study FROM studies WHERE study_instance_uid = ?", (study_uid,)
        ).fetchone()
        classes = sorted({c for c in str(row[0] or "").split("\\") if c} | {added_class})
    conn.execute(
        "UPDATE studies SET modalities_in_study = ?, sop_classes_in_study = ? WHERE study_instance_uid = ?",
        ("\\".join(modalities), "\\".join(classes), study_uid),
    )


def _distinct(conn: sqlite3.Connection, sql: str, arg: str) -> list[str]:
    return sorted(str(row[0]) for row in conn.execute(sql, (arg,)) if row[0])

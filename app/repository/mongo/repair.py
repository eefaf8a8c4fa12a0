"""The MongoDB store's repair: a study's counts and sets recomputed from its instance documents.

A crash (or lost connection) between the single-document writes of a store or delete can leave counts one too
high or an emptied level behind (see unit_of_work.py); the instance documents are the truth, and this puts the
rest back in line with them. Nothing calls it on its own yet (the sweep does not track suspect studies).
"""

from __future__ import annotations

from app.repository.mongo.connection import MongoConnection, guarded
from app.repository.mongo.layout import (
    MODALITIES,
    PATIENT_INSTANCES,
    PATIENT_SERIES,
    PATIENT_STUDIES,
    SERIES_INSTANCES,
    SOP_CLASSES,
    STUDY_INSTANCES,
    STUDY_SERIES,
    Document,
)


class MongoRepair(MongoConnection):
    async def recount_study(self, study_instance_uid: str) -> None:
        """Recompute a study's counts and sets, its series' and its patient's, from the instance documents.

        The repair for what a crash between two writes of a store can leave (see unit_of_work.py); nothing
        calls it yet. Run it when no one is storing into the study: it reads, then writes.
        """
        with guarded():
            await self._recount_study(study_instance_uid)

    async def _recount_study(self, study_uid: str) -> None:
        series_counts: dict[str, int] = {}
        pipeline: list[Document] = [
            {"$match": {"study_instance_uid": study_uid}},
            {"$group": {"_id": "$series_instance_uid", "n": {"$sum": 1}}},
        ]
        async for row in await self._instances.aggregate(pipeline):
            series_counts[row["_id"]] = row["n"]
        async for series in self._series.find({"study_instance_uid": study_uid}, {"series_instance_uid": 1}):
            uid = series["series_instance_uid"]
            if uid in series_counts:
                await self._series.update_one(
                    {"_id": series["_id"]}, {"$set": {SERIES_INSTANCES: series_counts[uid]}}
                )
            else:
                await self._series.delete_one({"_id": series["_id"]})
        study = await self._studies.find_one({"study_instance_uid": study_uid}, {"patient_key": 1})
        if study is None:
            return
        if not series_counts:
            await self._studies.delete_one({"_id": study["_id"]})
        else:
            await self._studies.update_one(
                {"_id": study["_id"]},
                {
                    "$set": {
                        STUDY_SERIES: len(series_counts),
                        STUDY_INSTANCES: sum(series_counts.values()),
                        MODALITIES: [
                            m
                            for m in await self._series.distinct(
                                "modality", {"study_instance_uid": study_uid}
                            )
                            if m
                        ],
                        SOP_CLASSES: await self._instances.distinct(
                            "sop_class_uid", {"study_instance_uid": study_uid}
                        ),
                    }
                },
            )
        await self._recount_patient(study["patient_key"])

    async def _recount_patient(self, patient_key: str) -> None:
        totals = [
            row
            async for row in await self._studies.aggregate(
                [
                    {"$match": {"patient_key": patient_key}},
                    {
                        "$group": {
                            "_id": None,
                            "studies": {"$sum": 1},
                            "series": {"$sum": f"${STUDY_SERIES}"},
                            "instances": {"$sum": f"${STUDY_INSTANCES}"},
                        }
                    },
                ]
            )
        ]
        if not totals:
            await self._patients.delete_one({"patient_key": patient_key})
            return
        await self._patients.update_one(
            {"patient_key": patient_key},
            {
                "$set": {
                    PATIENT_STUDIES: totals[0]["studies"],
                    PATIENT_SERIES: totals[0]["series"],
                    PATIENT_INSTANCES: totals[0]["instances"],
                }
            },
        )

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
        instances = await self._instances.count_documents({"study_instance_uid": study_uid})
        # The study's series are those whose documents name it (the study of each one's newest instance,
        # unit_of_work.py), each counted with all its instances, wherever the others are. A study left with no
        # instance hands such a series to the study its newest instance names, recounted after.
        series_held = 0
        homes: set[str] = set()
        async for series in self._series.find({"study_instance_uid": study_uid}, {"series_instance_uid": 1}):
            series_uid = series["series_instance_uid"]
            count = await self._instances.count_documents({"series_instance_uid": series_uid})
            if not count:
                await self._series.delete_one({"_id": series["_id"]})
                continue
            update: Document = {SERIES_INSTANCES: count}
            if instances:
                series_held += 1
            else:
                newest = await self._instances.find_one(
                    {"series_instance_uid": series_uid},
                    {"_id": 0, "study_instance_uid": 1},
                    sort=[("created_at", -1), ("sop_instance_uid", -1)],
                )
                assert newest is not None  # counted above
                update["study_instance_uid"] = newest["study_instance_uid"]
                homes.add(newest["study_instance_uid"])
            await self._series.update_one({"_id": series["_id"]}, {"$set": update})
        study = await self._studies.find_one({"study_instance_uid": study_uid}, {"patient_key": 1})
        if study is not None:
            if not instances:
                await self._studies.delete_one({"_id": study["_id"]})
            else:
                await self._studies.update_one(
                    {"_id": study["_id"]},
                    {
                        "$set": {
                            STUDY_SERIES: series_held,
                            STUDY_INSTANCES: instances,
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
        for home in homes:
            await self._recount_study(home)

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

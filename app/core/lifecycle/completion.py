"""Study completion: a study is complete when no instance of it arrived for STUDY_QUIET_SECONDS (the seeds'
`studyTimeout`), whichever door (STOW-RS, C-STORE, import) its instances came through.

The state is the repository's, not this process's memory: every store records the study's last activity and
sets "completion pending" in the same unit of work as the instance (`Repository.store_instance`), so tracking
costs no extra round trip and a restart loses nothing. A background task looks, every few seconds, for pending
studies quiet for the period, delivers `StudyCompleted` to the subscribers (change feed, FHIR outbox, webhooks)
and then clears the flag, but only if no store came in meanwhile (`mark_completed` compares the activity time).
So each burst of activity fires exactly one completion, at least once even across a crash (delivery comes
before the flag is cleared), and a study that receives more instances later completes again. A subscriber that
fails is logged and does not hold the completion back (one broken subscriber must not re-fire completions for
every study forever); the FHIR subscriber only records work in its persistent outbox, which rarely fails.
"""

from __future__ import annotations

import asyncio
import logging
import time

from app.core.lifecycle.background import run_rounds, start_task, stop_tasks
from app.core.lifecycle.events import EventBus, StudyCompleted
from app.core.ports import CompletionStore

log = logging.getLogger(__name__)

SCAN_BATCH = 100


class CompletionTracker:
    def __init__(
        self, repository: CompletionStore, bus: EventBus, quiet_seconds: float, *, interval: float | None = None
    ) -> None:
        self.repository = repository
        self.bus = bus
        self.quiet_seconds = quiet_seconds
        # Often enough that a completion fires at most a quarter of the quiet period late.
        self.interval = interval if interval is not None else max(0.1, min(5.0, quiet_seconds / 4))
        self._task: asyncio.Task[None] | None = None

    async def scan_once(self, now: float | None = None) -> int:
        """Fire completion for every study quiet since `now - quiet_seconds`; return how many fired."""
        quiet_before = (time.time() if now is None else now) - self.quiet_seconds
        fired = 0
        while True:
            pending = await self.repository.pending_completions(quiet_before, SCAN_BATCH)
            progressed = False
            for study in pending:
                await self.bus.deliver(
                    StudyCompleted(study.study_instance_uid, activity_at=study.activity_at)
                )
                if await self.repository.mark_completed(study.study_instance_uid, study.activity_at):
                    fired += 1
                    progressed = True
            if len(pending) < SCAN_BATCH or not progressed:
                return fired

    async def complete_now(self, study_instance_uid: str) -> bool:
        """Fire the study's completion now, quiet or not (an MPPS COMPLETED or DISCONTINUED says the
        modality is done with it, PS3.4 F.7.2); False when no completion is pending for it."""
        study = await self.repository.pending_completion(study_instance_uid)
        if study is None:
            return False
        await self.bus.deliver(StudyCompleted(study.study_instance_uid, activity_at=study.activity_at))
        return await self.repository.mark_completed(study.study_instance_uid, study.activity_at)

    def start(self) -> None:
        if self._task is None:
            work = run_rounds(self._round, what="study completion scan", interval=self.interval)
            self._task = start_task(work, "study-completion")

    async def stop(self) -> None:
        await stop_tasks(self._task)
        self._task = None

    async def _round(self) -> int:
        fired = await self.scan_once()
        if fired:
            log.info("%d studies completed", fired)
        return fired

"""Study completion: a study is complete when no instance of it arrived for STUDY_QUIET_SECONDS (the seeds'
`studyTimeout`), whichever door (STOW-RS, C-STORE, import) its instances came through.

The state is the repository's, not this process's memory: every store records the study's last activity and
sets "completion pending" in the same unit of work as the instance (`Repository.store_instance`), so tracking
costs no extra round trip and a restart loses nothing. A background task looks, every few seconds, for pending
studies quiet for the period, delivers `StudyCompleted` to the subscribers (change feed, FHIR outbox, webhooks)
and then clears the flag, but only if no store came in meanwhile (`mark_completed` compares the activity time).
So each burst of activity fires exactly one completion, at least once even across a crash (delivery comes
before the flag is cleared), and a study that receives more instances later completes again. Several archive
processes may scan the same repository: each study is claimed first (`claim_completion`, atomic, with a lease of
LEASE_SECONDS), so one of them reports it, and a process killed between the claim and `mark_completed` hands the
study on to the others when its claim expires (then it may be reported twice, never not at all). A subscriber that
fails is logged and does not hold the completion back (one broken subscriber must not re-fire completions for
every study forever); the FHIR subscriber only records work in its persistent outbox, which rarely fails.
"""

from __future__ import annotations

import asyncio
import logging
import time

from app.core.lifecycle.background import run_rounds, start_task, stop_tasks
from app.core.lifecycle.events import EventBus, StudyCompleted
from app.core.lifecycle.feed import PendingStudy
from app.core.ports import CompletionStore

log = logging.getLogger(__name__)

SCAN_BATCH = 100


class CompletionTracker:
    def __init__(
        self,
        repository: CompletionStore,
        bus: EventBus,
        quiet_seconds: float,
        *,
        interval: float | None = None,
        lease_seconds: float = 60.0,
    ) -> None:
        self.repository = repository
        self.bus = bus
        self.quiet_seconds = quiet_seconds
        self.lease_seconds = lease_seconds
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
                if await self._complete(study):
                    fired += 1
                    progressed = True
            if len(pending) < SCAN_BATCH or not progressed:
                return fired

    async def complete_now(self, study_instance_uid: str) -> bool:
        """Fire the study's completion now, quiet or not (an MPPS COMPLETED or DISCONTINUED says the
        modality is done with it, PS3.4 F.7.2); False when no completion is pending for it, or another
        process is reporting it already."""
        study = await self.repository.pending_completion(study_instance_uid)
        return study is not None and await self._complete(study)

    async def _complete(self, study: PendingStudy) -> bool:
        """Claim the study's completion, deliver it and clear the flag; False when another process has it
        claimed, or a store came in meanwhile (it completes again later)."""
        now = time.time()
        uid, activity_at = study.study_instance_uid, study.activity_at
        if not await self.repository.claim_completion(uid, activity_at, now, now + self.lease_seconds):
            return False
        await self.bus.deliver(StudyCompleted(uid, activity_at=activity_at))
        return await self.repository.mark_completed(uid, activity_at)

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

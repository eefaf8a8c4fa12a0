"""Leases held across archive processes (app/core/leases.py), on each repository."""

from __future__ import annotations

import asyncio

from app.core.leases import Leases
from app.core.ports import Repository


async def test_a_lease_held_longer_than_its_length_is_renewed_and_stays_exclusive(repository: Repository) -> None:
    """A store slower than LEASE_SECONDS (a large upload to S3) keeps its instance to itself all the while."""
    here, there = Leases(repository, seconds=0.3), Leases(repository, seconds=0.3)
    async with here.held("instance:1.2.3"):
        for _ in range(6):  # 1.2 s: four lease lengths
            await asyncio.sleep(0.2)
            assert not await there.acquire("instance:1.2.3")
    assert await there.acquire("instance:1.2.3")  # released at the end of the block

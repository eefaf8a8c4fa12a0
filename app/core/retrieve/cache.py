"""A small, bounded cache of parsed instances, so a viewer asking frame after frame parses a file once."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from pydicom.dataset import Dataset


class DatasetCache:
    """Parsed instances kept for a short while, bounded in bytes.

    Viewers ask for the frames of one multi-frame instance one request at a time; parsing the file once
    instead of once per frame is what makes that fast. Entries expire after `ttl` seconds; deletes and replaces
    clear the cache (ArchiveContext wires `invalidate` to both), since a replace may keep the key and the size.
    """

    def __init__(self, budget: int = 256 * 1024 * 1024, ttl: float = 30.0) -> None:
        self.budget = budget
        self.ttl = ttl
        self._entries: OrderedDict[tuple[str, int], tuple[float, Dataset]] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> Dataset | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if time.monotonic() - entry[0] > self.ttl:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def holds(self, size: int) -> bool:
        """Whether an instance of `size` bytes is kept: one huge instance must not evict everything else."""
        return size <= self.budget // 4

    def put(self, key: tuple[str, int], ds: Dataset) -> None:
        size = key[1]
        if not self.holds(size):
            return
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (time.monotonic(), ds)
            self._used += size
            while self._used > self.budget and self._entries:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[str, int]) -> None:
        self._entries.pop(key)
        self._used -= key[1]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._used = 0

"""A small bounded map for what association acceptance works out once and finds again.

The decoded A-ASSOCIATE-RQ of a PDU (acse_pdus.py), the facts drawn from its proposal and the negotiation's
answer to it (negotiation.py) are remembered so that a peer connecting again costs a look-up. The loop and
pynetdicom's association threads both ask, so every access is under a lock; the least recently used entry goes
once the map holds `size`, since what one peer sends once (a request decoded afresh by a thread, a crafted one)
must not push out what the regular peers send all day.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Remembered(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self._size = size
        self._values: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def find(self, key: K) -> tuple[bool, V | None]:
        """(True, the value) if `key` is held (it becomes the most recently used), else (False, None)."""
        with self._lock:
            if key not in self._values:
                return False, None
            self._values.move_to_end(key)
            return True, self._values[key]

    def keep(self, key: K, value: V) -> V:
        """Hold `value` for `key`, unless another caller got there first: the value held is returned, so that
        everyone works with the same object."""
        with self._lock:
            held = self._values.setdefault(key, value)
            self._values.move_to_end(key)
            while len(self._values) > self._size:
                self._values.popitem(last=False)
            return held

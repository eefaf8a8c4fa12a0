"""The bounded map association acceptance remembers things in (dimse_bridge/remembered.py)."""

from __future__ import annotations

from dimse_bridge.remembered import Remembered


def test_the_least_recently_used_entry_goes_first_and_a_found_one_counts_as_used() -> None:
    held: Remembered[str, int] = Remembered(2)
    held.keep("regular", 1)
    held.keep("once", 2)
    assert held.find("regular") == (True, 1)  # used again: now the most recent
    held.keep("newcomer", 3)

    assert held.find("once") == (False, None)
    assert held.find("regular") == (True, 1)
    assert held.find("newcomer") == (True, 3)


def test_the_first_value_kept_for_a_key_is_the_one_everyone_gets() -> None:
    held: Remembered[str, list[int]] = Remembered(4)
    first, second = [1], [1]
    assert held.keep("proposal", first) is first
    assert held.keep("proposal", second) is first  # a caller that worked it out too gets the same object

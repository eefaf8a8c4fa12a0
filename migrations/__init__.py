"""Schema migrations, one numbered file per step and backend: `sqlite/NNNN_name.sql`, `mongo/NNNN_name.json`.

The repositories apply the steps above their stored version at start-up; `python -m app migrate` and the health
report list them. This is the one place that knows how the steps are found.
"""

from __future__ import annotations

from importlib import resources
from typing import NamedTuple

SUFFIXES = {"sqlite": ".sql", "mongo": ".json"}


class Step(NamedTuple):
    version: int
    name: str
    text: str


def steps(backend: str) -> list[Step]:
    """The migration steps shipped for `backend` ("sqlite" or "mongo"), in version order."""
    suffix = SUFFIXES[backend]
    found = [
        Step(int(entry.name.split("_", 1)[0]), entry.name, entry.read_text(encoding="utf-8"))
        for entry in (resources.files(__name__) / backend).iterdir()
        if entry.name.endswith(suffix) and entry.name[:4].isdigit()
    ]
    return sorted(found)

"""DICOM wildcard patterns (PS3.4 C.2.2.2.4) turned into what an index can use: a literal prefix, its successor,
an anchored regular expression. Shared by the SQLite and MongoDB compilers."""

from __future__ import annotations

import re
from functools import lru_cache


def literal_prefix(pattern: str) -> str:
    """The characters before the first wildcard: what an index range can narrow on."""
    cut = min((i for i in (pattern.find("*"), pattern.find("?")) if i >= 0), default=len(pattern))
    return pattern[:cut]


def prefix_successor(prefix: str) -> str | None:
    """The least string greater than every string starting with `prefix` (code point order, which is also the
    byte order of UTF-8 that SQLite's BINARY collation and MongoDB's simple collation use); None if none."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def wildcard_regex(pattern: str) -> str:
    """An anchored regular expression for a DICOM wildcard pattern: `*` -> `.*`, `?` -> `.`, all else escaped."""
    out = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return "^" + "".join(out) + "$"


def wildcard_matches(pattern: str, text: str) -> bool:
    """Whether `text` matches the DICOM wildcard `pattern`, in time linear in the text for each part between
    stars: the first part is anchored at the start, the last at the end, and each part between them is taken
    at its earliest place after the one before (taking it later can never help). A regular expression with one
    `.*` per star backtracks exponentially on patterns such as `*A*A*A*A*A*A*AB`, so it is not used here,
    where a client writes the pattern and the text is the whole stored value."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return _part(pattern).fullmatch(text) is not None
    first, *middle, last = parts
    end = len(text) - len(last)
    if end < len(first) or _part(first).match(text) is None or _part(last).fullmatch(text, end) is None:
        return False
    position = len(first)
    for part in middle:
        if part:
            found = _part(part).search(text, position, end)
            if found is None:
                return False
            position = found.end()
    return True


@lru_cache(maxsize=1024)
def _part(part: str) -> re.Pattern[str]:
    """A run of a pattern without stars: `?` is any one character, all else literal (no repetition, so no
    backtracking)."""
    return re.compile("".join("." if char == "?" else re.escape(char) for char in part), re.DOTALL)

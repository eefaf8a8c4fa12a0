"""DICOM wildcard patterns (PS3.4 C.2.2.2.4) turned into what an index can use: a literal prefix, its successor,
an anchored regular expression. Shared by the SQLite and MongoDB compilers."""

from __future__ import annotations

import re


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

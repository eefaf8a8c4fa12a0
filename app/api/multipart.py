"""multipart/related (RFC 2046 §5.1, RFC 2387): what its reader and its writer share.

DICOM PS3.18 moves instances as multipart/related bodies in both directions: STOW-RS requests arrive as one
(often 1 GB or more) and WADO-RS answers go out as one (PS3.18 §8.6). Neither side can afford to hold a part
in memory, so both work on async iterators of byte chunks end to end: app/api/multipart_parser.py reads
(`iter_parts`), app/api/multipart_writer.py writes (`stream_multipart`, `multipart_body`).

What both need is here: the header grammar (tokens, and `parse_content_type`, which also reads Accept and
Content-Type values outside any multipart body), the boundary check, and :class:`MultipartError`.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["TOKEN_RE", "MultipartError", "boundary_bytes", "parse_content_type"]


class MultipartError(ValueError):
    """The body is not well-formed multipart; the message says why, for a 400 answer."""


# --------------------------------------------------------------------------- Content-Type

_TOKEN_CHARS: Final = r"!#$%&'*+.^_`|~0-9A-Za-z-"
TOKEN_RE: Final = re.compile(rf"[{_TOKEN_CHARS}]+")
_MEDIA_TYPE_RE: Final = re.compile(rf"[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)[ \t]*")
_PARAM_NAME_RE: Final = re.compile(rf"[ \t]*([{_TOKEN_CHARS}]+)[ \t]*=[ \t]*")
_QUOTED_RE: Final = re.compile(r'"((?:[^"\\]|\\.)*)"[ \t]*', re.DOTALL)
# Wider than a token on purpose: DICOM clients commonly send `type=application/dicom`
# unquoted, and '/' is not a token character.
_RAW_VALUE_RE: Final = re.compile(r'([^\s;"]+)[ \t]*')
_SEPARATOR_RE: Final = re.compile(r"[ \t]*;[ \t]*")
_ESCAPE_RE: Final = re.compile(r"\\(.)", re.DOTALL)


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into a lower-cased media type and its parameters.

    ``'multipart/related; type="application/dicom"; boundary=abc'`` gives
    ``('multipart/related', {'type': 'application/dicom', 'boundary': 'abc'})``.
    Parameter names are lower-cased; values are unquoted (RFC 9110 §5.6.4 escapes
    undone) or taken raw. Empty parameters (``;;`` or a trailing ``;``) are tolerated;
    anything else that cannot be parsed, and a repeated parameter, raise MultipartError.
    """
    m = _MEDIA_TYPE_RE.match(value)
    if m is None:
        raise MultipartError(f"cannot parse a media type from Content-Type {value!r}")
    media_type = f"{m.group(1)}/{m.group(2)}".lower()
    params: dict[str, str] = {}
    pos = m.end()
    end = len(value)
    while pos < end:
        sep = _SEPARATOR_RE.match(value, pos)
        if sep is None:
            raise MultipartError(f"expected ';' at offset {pos} of Content-Type {value!r}")
        pos = sep.end()
        if pos >= end or value[pos] == ";":
            continue
        name_m = _PARAM_NAME_RE.match(value, pos)
        if name_m is None:
            raise MultipartError(f"malformed parameter at offset {pos} of Content-Type {value!r}")
        name = name_m.group(1).lower()
        pos = name_m.end()
        quoted = _QUOTED_RE.match(value, pos)
        if quoted is not None:
            param_value = _ESCAPE_RE.sub(r"\1", quoted.group(1))
            pos = quoted.end()
        else:
            if pos < end and value[pos] == '"':
                raise MultipartError(f"unterminated quoted string in Content-Type {value!r}")
            raw = _RAW_VALUE_RE.match(value, pos)
            if raw is None:
                raise MultipartError(f"parameter {name!r} has no value in Content-Type {value!r}")
            param_value = raw.group(1)
            pos = raw.end()
        if name in params:
            # Two boundaries would let two parsers disagree on where parts are.
            raise MultipartError(f"parameter {name!r} repeated in Content-Type {value!r}")
        params[name] = param_value
    return media_type, params


# --------------------------------------------------------------------------- boundary


def boundary_bytes(boundary: str) -> bytes:
    """The boundary as ASCII bytes; MultipartError unless it is a non-empty value without CR or LF."""
    try:
        raw = boundary.encode("ascii")
    except UnicodeEncodeError:
        raise MultipartError(f"boundary {boundary!r} is not ASCII") from None
    # The parser relies on CR appearing only at the start of a delimiter.
    if not raw or b"\r" in raw or b"\n" in raw:
        raise MultipartError(f"invalid multipart boundary {boundary!r}")
    return raw

"""Reading multipart/related bodies as they arrive (RFC 2046 §5.1, RFC 2387; PS3.18 §8.6): STOW-RS requests.

A STOW-RS body is often 1 GB or more. :func:`iter_parts` turns a chunk stream whose chunk boundaries fall
anywhere (inside a delimiter, inside a CRLF) into :class:`Part` objects whose bodies are themselves chunk
streams. Memory stays bounded by about one chunk plus one delimiter, whatever the size of a part.

Malformed input raises :class:`~app.api.multipart.MultipartError` (a ``ValueError``), whose message is meant
for a 400 answer; a truncated body raises it only once the incomplete part is reached, so a consumer keeps the
parts it already stored.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Final

from app.api.multipart import TOKEN_RE, MultipartError, boundary_bytes

__all__ = ["Part", "iter_parts"]


# What may follow "CRLF--boundary": "--" closes, optional LWSP (RFC 2046 transport
# padding) then CRLF opens a part. Anything else means the match was body content.
_AFTER_DELIMITER_RE: Final = re.compile(rb"--|[ \t]*\r\n")
# Tails that could still become one of the above once more bytes arrive.
_UNDECIDED_RE: Final = re.compile(rb"-?|[ \t]*\r?")
_MAX_PADDING: Final = 1024

_PART: Final = 1
_CLOSE: Final = 2
_MORE: Final = 3
_NOT_DELIMITER: Final = 4

# Reader states.
_IN_BODY: Final = 0
_AT_PART: Final = 1
_AT_CLOSE: Final = 2


class _Reader:
    """Shared cursor over the chunk stream.

    ``_data[_pos:]`` holds the bytes received but not yet handed out. Between chunks
    only a possible delimiter prefix is kept there, so body data is yielded as slices of
    the incoming chunks, usually without copying.
    """

    __slots__ = ("_data", "_delimiter", "_eof", "_error", "_it", "_max_header_bytes", "_pos", "state")

    def __init__(self, chunks: AsyncIterable[bytes], boundary: str, max_header_bytes: int) -> None:
        self._it = aiter(chunks)
        self._delimiter = b"\r\n--" + boundary_bytes(boundary)
        self._max_header_bytes = max_header_bytes
        # A virtual CRLF lets a body that opens with "--boundary" (no preamble) match
        # the same delimiter as every later one.
        self._data = b"\r\n"
        self._pos = 0
        self._eof = False
        self._error: MultipartError | None = None
        self.state = _IN_BODY

    async def _next_chunk(self) -> bytes | None:
        if self._eof:
            return None
        while True:
            try:
                chunk = await anext(self._it)
            except StopAsyncIteration:
                self._eof = True
                return None
            if chunk:
                return chunk if type(chunk) is bytes else bytes(chunk)

    async def _fill(self) -> bool:
        chunk = await self._next_chunk()
        if chunk is None:
            return False
        if self._pos >= len(self._data):
            self._data = chunk
        else:
            self._data = self._data[self._pos :] + chunk
        self._pos = 0
        return True

    def _fail(self, message: str) -> MultipartError:
        self._error = MultipartError(message)
        return self._error

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def _classify(self, data: bytes, after: int) -> tuple[int, int]:
        """What the delimiter match ending at ``after`` turns out to be, and where it ends."""
        m = _AFTER_DELIMITER_RE.match(data, after)
        if m is not None:
            if m.end() - after == 2 and data[after] == 0x2D:
                return _CLOSE, m.end()
            # Stop before the line's CRLF: header parsing then finds "CRLF CRLF" even
            # when the header block is empty.
            return _PART, m.end() - 2
        if _UNDECIDED_RE.fullmatch(data, after):
            if len(data) - after > _MAX_PADDING:
                raise self._fail("transport padding after a boundary is too long")
            return _MORE, 0
        return _NOT_DELIMITER, 0

    async def until_delimiter(self, what: str) -> AsyncGenerator[bytes, None]:
        """Yield the bytes up to the next delimiter, leaving the cursor after it.

        ``what`` names the missing thing in the error raised if the stream ends first.
        """
        delimiter = self._delimiter
        dlen = len(delimiter)
        search = self._pos
        while True:
            data = self._data
            pos = self._pos
            i = data.find(delimiter, search)
            if i >= 0:
                kind, end = self._classify(data, i + dlen)
                if kind == _NOT_DELIMITER:
                    search = i + 1
                    continue
                if kind != _MORE:
                    self._pos = end
                    self.state = _AT_PART if kind == _PART else _AT_CLOSE
                    if i > pos:
                        yield data[pos:i]
                    return
                cut = i
            else:
                # Keep the longest tail that could begin a delimiter. Because the
                # boundary holds no CR, only the last CR can start such a tail.
                cut = len(data)
                cr = data.rfind(b"\r", max(search, cut - dlen + 1))
                if cr >= 0 and delimiter.startswith(data[cr:]):
                    cut = cr
            if cut > pos:
                self._pos = cut
                # A whole-chunk slice of bytes is the chunk itself: no copy.
                yield data[pos:cut]
            if not await self._fill():
                raise self._fail(what)
            search = self._pos

    async def skip_preamble(self) -> None:
        if not await self._fill():
            raise MultipartError("multipart body is empty")
        boundary = self._delimiter[4:].decode("ascii")
        async for _ in self.until_delimiter(f"no multipart boundary {boundary!r} found in the body"):
            pass

    async def read_headers(self) -> dict[str, str]:
        """Parse the header block that follows a part delimiter (cursor on its CRLF)."""
        limit = self._max_header_bytes
        data = self._data
        pos = self._pos
        # The window spans the delimiter line's CRLF, at most `limit` header bytes and
        # the CRLF CRLF that ends them.
        i = data.find(b"\r\n\r\n", pos, pos + limit + 6)
        if i >= 0:
            block = data[pos + 2 : i]
            self._pos = i + 4
        else:
            if len(data) - pos >= limit + 6:
                raise self._fail(f"part header block exceeds {limit} bytes")
            buf = bytearray(data[pos:])
            self._data = b""
            self._pos = 0
            while True:
                chunk = await self._next_chunk()
                if chunk is None:
                    raise self._fail("body ends inside a part's header block")
                start = max(0, len(buf) - 3)
                buf += chunk
                i = buf.find(b"\r\n\r\n", start, limit + 6)
                if i >= 0:
                    block = bytes(buf[2:i])
                    self._data = bytes(buf[i + 4 :])
                    break
                if len(buf) >= limit + 6:
                    raise self._fail(f"part header block exceeds {limit} bytes")
        self.state = _IN_BODY
        return self._parse_header_block(block)

    def _parse_header_block(self, block: bytes) -> dict[str, str]:
        headers: dict[str, str] = {}
        if not block:
            return headers
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            text = block.decode("latin-1")
        last: str | None = None
        for line in text.split("\r\n"):
            if "\r" in line or "\n" in line or "\0" in line:
                raise self._fail("part header contains a stray CR, LF or NUL")
            if line[:1] in (" ", "\t"):
                # Obsolete line folding (RFC 5322 §2.2.3): continue the previous header.
                if last is None:
                    raise self._fail("part header block starts with a continuation line")
                continuation = line.strip(" \t")
                headers[last] = f"{headers[last]} {continuation}" if headers[last] else continuation
                continue
            name, colon, value = line.partition(":")
            name = name.rstrip(" \t")
            if not colon or not TOKEN_RE.fullmatch(name):
                raise self._fail(f"malformed part header line {line[:100]!r}")
            key = name.lower()
            value = value.strip(" \t")
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
            last = key
        return headers


class _PartBody:
    """A part's body stream; refuses to be read once the parser has moved past it."""

    __slots__ = ("_finished", "_gen", "_stale")

    def __init__(self, gen: AsyncGenerator[bytes, None]) -> None:
        self._gen = gen
        self._finished = False
        self._stale = False

    def __aiter__(self) -> _PartBody:
        return self

    async def __anext__(self) -> bytes:
        if self._stale:
            raise RuntimeError("part body read after the next part was requested; its bytes were skipped")
        try:
            return await anext(self._gen)
        except StopAsyncIteration:
            self._finished = True
            raise

    async def discard(self) -> None:
        if not self._finished:
            self._stale = True
            async for _ in self._gen:
                pass
            self._finished = True


@dataclass
class Part:
    """One body part: its headers (names lower-cased) and its streamed content."""

    headers: dict[str, str]
    body: AsyncIterator[bytes]

    @property
    def content_type(self) -> str | None:
        """The part's raw Content-Type header, or None."""
        return self.headers.get("content-type")

    async def read(self, limit: int | None = None) -> bytes:
        """Read the whole body; raise MultipartError once it exceeds ``limit`` bytes."""
        pieces: list[bytes] = []
        size = 0
        async for chunk in self.body:
            size += len(chunk)
            if limit is not None and size > limit:
                raise MultipartError(f"part body exceeds {limit} bytes")
            pieces.append(chunk)
        return b"".join(pieces)


async def iter_parts(
    chunks: AsyncIterable[bytes], boundary: str, *, max_header_bytes: int = 16384
) -> AsyncIterator[Part]:
    """Yield the parts of a multipart body, in order, as the chunks arrive.

    A part's body may be read fully, partly or not at all before the next part is
    requested; what is left is skipped, and reading it afterwards raises RuntimeError.
    Preamble and epilogue are ignored, as is a missing CRLF before the first delimiter;
    a body whose only delimiter is the close delimiter yields no parts.

    Raises MultipartError for an empty body, a body with no delimiter, an oversized or
    malformed header block, and a body that ends before the close delimiter; the last
    surfaces while reading the unfinished part (or on the next request for a part).
    """
    reader = _Reader(chunks, boundary, max_header_bytes)
    await reader.skip_preamble()
    while reader.state == _AT_PART:
        headers = await reader.read_headers()
        body = _PartBody(reader.until_delimiter("multipart body is truncated: no close delimiter"))
        yield Part(headers, body)
        await body.discard()
        reader.check()

"""Behaviour of the streaming multipart/related parser and emitter (app.api.multipart)."""

from __future__ import annotations

import contextlib
import os
import tracemalloc
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.api.multipart import MultipartError, parse_content_type
from app.api.multipart_parser import Part, iter_parts
from app.api.multipart_writer import (
    close_delimiter,
    multipart_body,
    multipart_content_type,
    new_boundary,
    part_head,
    stream_multipart,
)

BOUNDARY = "7d3a9c1e0f2b4a6c8e5d"


# --------------------------------------------------------------------------- helpers


async def chunked(data: bytes, sizes: Iterable[int] | int) -> AsyncIterator[bytes]:
    """Yield ``data`` in pieces: a fixed size, or sizes taken in turn (then the rest)."""
    if isinstance(sizes, int):
        for i in range(0, len(data), sizes):
            yield data[i : i + sizes]
        return
    pos = 0
    for size in sizes:
        if pos >= len(data):
            return
        yield data[pos : pos + size]
        pos += size
    if pos < len(data):
        yield data[pos:]


async def from_list(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def collect(
    chunks: AsyncIterator[bytes], boundary: str = BOUNDARY, **kwargs: int
) -> list[tuple[dict[str, str], bytes]]:
    return [(part.headers, await part.read()) async for part in iter_parts(chunks, boundary, **kwargs)]


async def emit(parts: Sequence[tuple[Mapping[str, str], Sequence[bytes]]], boundary: str) -> bytes:
    async def source() -> AsyncIterator[tuple[Mapping[str, str], AsyncIterator[bytes]]]:
        for headers, content_chunks in parts:
            yield headers, from_list(content_chunks)

    return b"".join([chunk async for chunk in stream_multipart(source(), boundary)])


def build(parts: Sequence[tuple[Mapping[str, str], bytes]], boundary: str = BOUNDARY) -> bytes:
    return multipart_body(parts, boundary)


TWO_PARTS = build([({"Content-Type": "application/dicom"}, b"first"), ({"X-Id": "2"}, b"second")])


# --------------------------------------------------------------------------- Content-Type


def test_an_unquoted_boundary_is_taken_as_is() -> None:
    assert parse_content_type("multipart/related; boundary=abc123") == (
        "multipart/related",
        {"boundary": "abc123"},
    )


def test_a_quoted_boundary_is_unquoted_and_may_hold_non_token_characters() -> None:
    media_type, params = parse_content_type(
        'multipart/related; type="application/dicom"; boundary="a b:c=d/(e)?"'
    )
    assert media_type == "multipart/related"
    assert params == {"type": "application/dicom", "boundary": "a b:c=d/(e)?"}


def test_media_type_and_parameter_names_are_lower_cased_but_values_keep_their_case() -> None:
    media_type, params = parse_content_type("Multipart/Related; TYPE=application/DICOM; BoUnDaRy=AbC")
    assert media_type == "multipart/related"
    assert params == {"type": "application/DICOM", "boundary": "AbC"}


def test_quoted_string_backslash_escapes_are_undone() -> None:
    _, params = parse_content_type(r'multipart/related; boundary="a\"b\\c\d"')
    assert params["boundary"] == 'a"b\\cd'


def test_spaces_around_separators_and_equals_signs_are_tolerated() -> None:
    assert parse_content_type(' multipart/related ;  type = "application/dicom" ;boundary= x ;') == (
        "multipart/related",
        {"type": "application/dicom", "boundary": "x"},
    )


def test_an_unquoted_type_parameter_with_a_slash_is_accepted() -> None:
    _, params = parse_content_type("multipart/related; type=application/dicom+xml; boundary=x")
    assert params["type"] == "application/dicom+xml"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        ";",
        "multipart",
        "multipart/",
        "/related",
        "multipart/related; boundary",
        "multipart/related; boundary=",
        'multipart/related; boundary="abc',
        "multipart/related; =abc",
        "multipart/related; boundary=a b",
        "multipart/related boundary=abc",
        "multipart/related; boundary=a; boundary=b",
    ],
)
def test_unparseable_content_types_raise_multipart_error(value: str) -> None:
    with pytest.raises(MultipartError):
        parse_content_type(value)


def test_a_built_content_type_quotes_the_type_and_round_trips() -> None:
    value = multipart_content_type("XYZ", "application/dicom")
    assert value == 'multipart/related; type="application/dicom"; boundary=XYZ'
    assert parse_content_type(value) == (
        "multipart/related",
        {"type": "application/dicom", "boundary": "XYZ"},
    )


def test_extra_content_type_parameters_use_hyphens_and_are_quoted_only_when_needed() -> None:
    value = multipart_content_type("b", "application/octet-stream", transfer_syntax="1.2.840.10008.1.2.1")
    assert value == (
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1; boundary=b'
    )
    value = multipart_content_type('we"ird b', "application/dicom", note="a\\b")
    assert parse_content_type(value)[1] == {
        "type": "application/dicom",
        "note": "a\\b",
        "boundary": 'we"ird b',
    }


@settings(max_examples=300, deadline=None)
@given(
    boundary=st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=70),
    type_=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)
def test_any_printable_parameter_values_survive_a_content_type_round_trip(boundary: str, type_: str) -> None:
    media_type, params = parse_content_type(multipart_content_type(boundary, type_))
    assert media_type == "multipart/related"
    assert params == {"type": type_, "boundary": boundary}


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=80))
def test_garbage_content_types_raise_nothing_but_multipart_error(value: str) -> None:
    with contextlib.suppress(MultipartError):
        parse_content_type(value)


# --------------------------------------------------------------------------- emitting


def test_new_boundaries_are_unique_tokens() -> None:
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    for boundary in boundaries:
        assert parse_content_type(multipart_content_type(boundary, "application/dicom"))[1]["boundary"] == (
            boundary
        )
        assert boundary.isalnum() and 16 <= len(boundary) <= 70


def test_part_heads_and_close_delimiter_have_the_exact_rfc_2046_framing() -> None:
    assert part_head("b", {"Content-Type": "application/dicom"}, first=True) == (
        b"--b\r\nContent-Type: application/dicom\r\n\r\n"
    )
    assert part_head("b", {"A": "1", "B": "2"}, first=False) == b"\r\n--b\r\nA: 1\r\nB: 2\r\n\r\n"
    assert part_head("b", {}, first=True) == b"--b\r\n\r\n"
    assert close_delimiter("b") == b"\r\n--b--\r\n"


def test_a_header_value_with_a_line_break_is_refused_rather_than_injected() -> None:
    with pytest.raises(ValueError):
        part_head("b", {"Content-Type": "a\r\nX-Evil: 1"}, first=True)
    with pytest.raises(ValueError):
        part_head("b", {"Bad Name": "x"}, first=True)


async def test_streaming_no_parts_emits_only_the_close_delimiter_which_parses_to_no_parts() -> None:
    body = await emit([], "b")
    assert body == b"--b--\r\n"
    assert await collect(chunked(body, 3), "b") == []


async def test_streamed_output_matches_the_framing_of_part_head_and_close_delimiter() -> None:
    big = os.urandom(200_000)
    parts: list[tuple[Mapping[str, str], Sequence[bytes]]] = [
        ({"Content-Type": "application/dicom"}, [b"ab", b"", b"cd"]),
        ({}, []),
        ({"Content-Location": "/x"}, [big[:70_000], big[70_000:]]),
    ]
    expected = build([(h, b"".join(c)) for h, c in parts], "bb")
    assert await emit(parts, "bb") == expected


# --------------------------------------------------------------------------- parsing


async def test_parts_are_yielded_in_order_with_lower_cased_header_names() -> None:
    assert await collect(chunked(TWO_PARTS, 1 << 20)) == [
        ({"content-type": "application/dicom"}, b"first"),
        ({"x-id": "2"}, b"second"),
    ]


async def test_part_content_type_property_returns_the_raw_header_or_none() -> None:
    seen: list[str | None] = []
    async for part in iter_parts(chunked(TWO_PARTS, 7), BOUNDARY):
        seen.append(part.content_type)
    assert seen == ["application/dicom", None]


async def test_a_part_split_across_every_possible_chunk_boundary_is_reassembled() -> None:
    content = b"\r\n--" + BOUNDARY[:-1].encode() + b"\r\r\n-\r\n--x" + os.urandom(64)
    body = b"preamble\r\n" + build([({"Content-Type": "a/b"}, content), ({}, b"z")]) + b"epilogue"
    expected = [({"content-type": "a/b"}, content), ({}, b"z")]
    for split in range(len(body) + 1):
        assert await collect(from_list([body[:split], body[split:]])) == expected, split
    for first, second in ((5, 40), (37, 41), (60, 63)):
        assert await collect(from_list([body[:first], body[first:second], body[second:]])) == expected


async def test_one_byte_chunks_parse_the_same_as_one_big_chunk() -> None:
    assert await collect(chunked(TWO_PARTS, 1)) == await collect(chunked(TWO_PARTS, len(TWO_PARTS)))


async def test_empty_chunks_from_the_source_are_ignored() -> None:
    pieces = [b"", TWO_PARTS[:10], b"", b"", TWO_PARTS[10:], b""]
    assert len(await collect(from_list(pieces))) == 2


async def test_bytearray_and_memoryview_chunks_are_accepted() -> None:
    pieces: list[bytes] = [bytearray(TWO_PARTS[:20]), memoryview(TWO_PARTS[20:])]  # type: ignore[list-item]
    assert [c for _, c in await collect(from_list(pieces))] == [b"first", b"second"]


async def test_preamble_and_epilogue_are_ignored() -> None:
    body = b"This is a preamble --" + BOUNDARY.encode() + b" not at line start\r\n" + TWO_PARTS
    body += b"epilogue \r\n--" + BOUNDARY.encode() + b"\r\nNot: a part\r\n\r\nignored"
    assert [c for _, c in await collect(chunked(body, 9))] == [b"first", b"second"]


async def test_a_body_starting_with_a_crlf_before_the_first_delimiter_is_accepted() -> None:
    assert len(await collect(chunked(b"\r\n" + TWO_PARTS, 4))) == 2


async def test_transport_padding_after_a_boundary_is_accepted() -> None:
    b = BOUNDARY.encode()
    body = b"--" + b + b" \t \r\nA: 1\r\n\r\none\r\n--" + b + b"\t\r\n\r\ntwo\r\n--" + b + b"--  \r\n"
    for size in (1, 3, len(body)):
        assert await collect(chunked(body, size)) == [({"a": "1"}, b"one"), ({}, b"two")]


async def test_a_close_delimiter_without_a_trailing_crlf_ends_the_body() -> None:
    assert len(await collect(chunked(TWO_PARTS.removesuffix(b"\r\n"), 5))) == 2


async def test_a_part_with_no_headers_and_an_empty_part_are_kept() -> None:
    body = build([({}, b""), ({}, b"\r\n"), ({"A": "b"}, b"")])
    assert await collect(chunked(body, 2)) == [({}, b""), ({}, b"\r\n"), ({"a": "b"}, b"")]


async def test_a_full_boundary_followed_by_other_characters_is_content_not_a_delimiter() -> None:
    b = BOUNDARY.encode()
    content = b"x\r\n--" + b + b"X\r\n--" + b + b"-y\r\n--" + b + b" z\r\n--" + b + b"\r"
    assert await collect(chunked(build([({}, content)]), 3)) == [({}, content)]


async def test_header_values_are_trimmed_repeated_headers_joined_and_folded_lines_unfolded() -> None:
    b = BOUNDARY.encode()
    body = (
        b"--" + b + b"\r\nContent-Type :  application/dicom \r\nX-A: 1\r\nx-a: 2\r\n"
        b"X-Long: first\r\n \t second\r\n\r\nbody\r\n--" + b + b"--\r\n"
    )
    assert await collect(chunked(body, 6)) == [
        ({"content-type": "application/dicom", "x-a": "1, 2", "x-long": "first second"}, b"body")
    ]


async def test_utf8_header_values_are_decoded() -> None:
    body = build([({"Content-Description": "Ünïcode"}, b"x")])
    assert (await collect(chunked(body, 5)))[0][0] == {"content-description": "Ünïcode"}


async def test_a_consumer_that_skips_a_part_body_entirely_still_gets_the_next_part() -> None:
    big = os.urandom(300_000)
    body = build([({"N": "1"}, big), ({"N": "2"}, b"small"), ({"N": "3"}, big)])
    seen: list[tuple[str, bytes]] = []
    async for part in iter_parts(chunked(body, 8192), BOUNDARY):
        if part.headers["n"] == "2":
            seen.append(("2", await part.read()))
        else:
            seen.append((part.headers["n"], b""))
    assert seen == [("1", b""), ("2", b"small"), ("3", b"")]


async def test_a_partially_read_part_body_is_skipped_to_its_end() -> None:
    content = os.urandom(100_000)
    body = build([({}, content), ({}, b"next")])
    results: list[bytes] = []
    async for part in iter_parts(chunked(body, 4096), BOUNDARY):
        first_chunk = await anext(part.body)
        results.append(first_chunk)
    assert content.startswith(results[0]) and results[0]
    assert results[1] == b"next"


async def test_reading_a_body_after_asking_for_the_next_part_is_an_error_not_silent_loss() -> None:
    parts = iter_parts(chunked(TWO_PARTS, 3), BOUNDARY)
    first = await anext(parts)
    await anext(parts)
    with pytest.raises(RuntimeError):
        await anext(first.body)


async def test_reading_a_finished_body_again_just_ends() -> None:
    async for part in iter_parts(chunked(TWO_PARTS, 3), BOUNDARY):
        await part.read()
        assert await part.read() == b""


async def test_part_read_refuses_a_body_over_its_limit() -> None:
    body = build([({}, b"x" * 1000), ({}, b"ok")])
    parts = iter_parts(chunked(body, 100), BOUNDARY)
    with pytest.raises(MultipartError, match="exceeds 999"):
        await (await anext(parts)).read(limit=999)
    assert await (await anext(parts)).read(limit=2) == b"ok"


async def test_a_truncated_body_raises_after_the_complete_parts_were_yielded() -> None:
    truncated = build([({"N": "1"}, b"one"), ({"N": "2"}, b"two" * 1000)])[:-200]
    stored: list[bytes] = []
    with pytest.raises(MultipartError, match="truncated"):
        async for part in iter_parts(chunked(truncated, 64), BOUNDARY):
            stored.append(await part.read())
    assert stored == [b"one"]


async def test_a_truncation_surfaces_on_the_next_part_request_when_the_body_was_not_read() -> None:
    truncated = TWO_PARTS.removesuffix(close_delimiter(BOUNDARY))
    parts = iter_parts(chunked(truncated, 10), BOUNDARY)
    await anext(parts)
    await anext(parts)
    with pytest.raises(MultipartError, match="truncated"):
        await anext(parts)


async def test_after_a_truncation_error_asking_for_more_parts_raises_again() -> None:
    truncated = TWO_PARTS.removesuffix(close_delimiter(BOUNDARY))
    parts = iter_parts(chunked(truncated, 10), BOUNDARY)
    await anext(parts)
    second = await anext(parts)
    with pytest.raises(MultipartError):
        await second.read()
    with pytest.raises(MultipartError):
        await anext(parts)


@pytest.mark.parametrize(
    "cut",
    [
        b"\r\n--" + BOUNDARY.encode(),
        b"\r\n--" + BOUNDARY.encode() + b"-",
        b"\r\n--" + BOUNDARY.encode() + b"   ",
        b"\r\n--" + BOUNDARY.encode() + b"\r",
    ],
)
async def test_a_body_ending_inside_the_last_delimiter_is_truncated(cut: bytes) -> None:
    body = build([({}, b"one")]).removesuffix(close_delimiter(BOUNDARY)) + cut
    with pytest.raises(MultipartError):
        await collect(chunked(body, 1))


async def test_a_body_ending_inside_a_header_block_is_truncated() -> None:
    body = b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/di"
    for size in (1, len(body)):
        with pytest.raises(MultipartError, match="header"):
            await collect(chunked(body, size))


async def test_an_empty_body_is_an_error() -> None:
    with pytest.raises(MultipartError, match="empty"):
        await collect(from_list([]))
    with pytest.raises(MultipartError, match="empty"):
        await collect(from_list([b"", b""]))


async def test_a_body_without_any_delimiter_is_an_error() -> None:
    with pytest.raises(MultipartError, match="boundary"):
        await collect(chunked(os.urandom(10_000) + b"--other\r\n\r\nx\r\n--other--\r\n", 1000))


async def test_a_header_block_over_the_limit_is_an_error_whatever_the_chunking() -> None:
    b = BOUNDARY.encode()
    fits = b"--" + b + b"\r\nX: " + b"a" * 97 + b"\r\n\r\nbody\r\n--" + b + b"--\r\n"  # 100-byte block
    for size in (1, 7, len(fits)):
        assert await collect(chunked(fits, size), max_header_bytes=100) == [({"x": "a" * 97}, b"body")]
        with pytest.raises(MultipartError, match="exceeds 99"):
            await collect(chunked(fits, size), max_header_bytes=99)
    endless = b"--" + b + b"\r\nX: " + b"a" * 100_000
    with pytest.raises(MultipartError, match="exceeds"):
        await collect(chunked(endless, 4096), max_header_bytes=1000)


@pytest.mark.parametrize(
    "header_block",
    [b"no colon here", b"Bad Name: x", b": empty name", b" leading: continuation", b"A: 1\nB: 2"],
)
async def test_malformed_header_lines_are_errors(header_block: bytes) -> None:
    b = BOUNDARY.encode()
    body = b"--" + b + b"\r\n" + header_block + b"\r\n\r\nx\r\n--" + b + b"--\r\n"
    with pytest.raises(MultipartError, match="header"):
        await collect(chunked(body, 5))


async def test_endless_transport_padding_is_an_error_not_unbounded_buffering() -> None:
    body = b"--" + BOUNDARY.encode() + b" " * 100_000
    with pytest.raises(MultipartError, match="padding"):
        await collect(chunked(body, 512))


@pytest.mark.parametrize("boundary", ["", "a\r\nb", "bøundary"])
async def test_an_unusable_boundary_is_an_error(boundary: str) -> None:
    with pytest.raises(MultipartError):
        await collect(chunked(TWO_PARTS, 10), boundary)


async def test_errors_from_the_source_stream_propagate_unchanged() -> None:
    class Disconnected(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        yield TWO_PARTS[:30]
        raise Disconnected

    with pytest.raises(Disconnected):
        await collect(failing())


async def test_a_large_single_part_streams_in_bounded_memory() -> None:
    chunk_size = 64 * 1024
    total_chunks = 1024  # 64 MiB
    seed = os.urandom(chunk_size)

    async def source() -> AsyncIterator[bytes]:
        yield part_head(BOUNDARY, {"Content-Type": "application/dicom"}, first=True)
        for index in range(total_chunks):
            # Vary the chunk ends so that some carry a CR (a possible delimiter start)
            # into the next chunk and force the parser to keep a tail.
            yield seed[: chunk_size - 1] + (b"\r" if index % 3 == 0 else b"x")
        yield close_delimiter(BOUNDARY)

    received = 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        async for part in iter_parts(source(), BOUNDARY):
            async for data in part.body:
                received += len(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == chunk_size * total_chunks
    assert peak < 4 * 1024 * 1024, f"peak traced memory {peak} bytes"


# --------------------------------------------------------------------------- properties

header_names = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!"), min_size=1
)
header_values = st.text(
    st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f\x85"), max_size=30
)
headers_strategy = st.dictionaries(header_names, header_values, max_size=4).filter(
    lambda h: len({k.lower() for k in h}) == len(h)
)
boundaries = st.one_of(
    st.just(BOUNDARY),
    st.builds(new_boundary),
    st.text(st.sampled_from("abcXYZ019'()+_,-./:=? "), min_size=1, max_size=70).filter(
        lambda b: not b.endswith(" ")
    ),
)


def split_points(data: st.DataObject, length: int) -> list[int]:
    return data.draw(st.lists(st.integers(min_value=1, max_value=max(1, length)), max_size=40))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    boundary=boundaries,
    parts=st.lists(st.tuples(headers_strategy, st.binary(max_size=600)), max_size=6),
    data=st.data(),
)
async def test_round_trip_of_random_parts_through_random_chunking(
    boundary: str, parts: list[tuple[dict[str, str], bytes]], data: st.DataObject
) -> None:
    encoded = boundary.encode()
    parts = [(h, c) for h, c in parts if encoded not in c]
    body = await emit([(h, [c[: len(c) // 2], c[len(c) // 2 :]]) for h, c in parts], boundary)
    got = await collect(chunked(body, split_points(data, len(body))), boundary)
    assert got == [({k.lower(): v.strip(" \t") for k, v in h.items()}, c) for h, c in parts]


near_miss_pieces = st.sampled_from(
    [b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n--", b" ", b"\t", b"x", b"\x00"]
    + [b"--" + BOUNDARY[:n].encode() for n in range(1, len(BOUNDARY))]
    + [b"\r\n--" + BOUNDARY[:n].encode() for n in range(len(BOUNDARY))]
    + [b"\r\n--" + BOUNDARY.encode() + tail for tail in (b"x", b"-x", b" x", b"\rx", b"\t-")]
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    contents=st.lists(st.lists(near_miss_pieces, max_size=20).map(b"".join), min_size=1, max_size=4),
    data=st.data(),
)
async def test_content_full_of_near_miss_delimiters_is_preserved(
    contents: list[bytes], data: st.DataObject
) -> None:
    body = build([({"N": str(i)}, c) for i, c in enumerate(contents)])
    got = await collect(chunked(body, split_points(data, len(body))))
    assert got == [({"n": str(i)}, c) for i, c in enumerate(contents)]


garbage_pieces = st.one_of(
    st.binary(max_size=30),
    st.sampled_from(
        [
            b"\r\n",
            b"\r\n\r\n",
            b"--",
            b"--" + BOUNDARY.encode(),
            b"\r\n--" + BOUNDARY.encode(),
            b"\r\n--" + BOUNDARY.encode() + b"--",
            b"\r\n--" + BOUNDARY.encode() + b"\r\n",
            b"\r\n--" + BOUNDARY.encode() + b"\r\n\r\n",
            b"\r\n--" + BOUNDARY.encode() + b" \r\nContent-Type: a/b\r\n\r\n",
            b"Content-Type: application/dicom\r\n",
            b"X:",
            b" ",
            b"\t",
            b":",
            b"\n",
            b"\xff\xfe",
        ]
    ),
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(garbage_pieces, max_size=25),
    data=st.data(),
    read_bodies=st.lists(st.sampled_from(["all", "none", "one"]), min_size=1, max_size=4),
    max_header_bytes=st.sampled_from([4, 40, 16384]),
)
async def test_random_garbage_raises_nothing_but_multipart_error(
    pieces: list[bytes], data: st.DataObject, read_bodies: list[str], max_header_bytes: int
) -> None:
    body = b"".join(pieces)
    index = 0
    try:
        async for part in iter_parts(
            chunked(body, split_points(data, len(body))), BOUNDARY, max_header_bytes=max_header_bytes
        ):
            assert isinstance(part, Part)
            mode = read_bodies[index % len(read_bodies)]
            index += 1
            if mode == "all":
                await part.read()
            elif mode == "one":
                async for _ in part.body:
                    break
    except MultipartError:
        event(f"MultipartError after {min(index, 2)}+ parts")
    else:
        event(f"{min(index, 2)}+ parts then a clean end")

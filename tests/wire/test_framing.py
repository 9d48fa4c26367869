"""Newline framing: any chunking works, oversized lines are discarded and reported."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_relay.broker.lines import read_lines
from trio_relay.wire.lines import LineSplitter, OversizedLine


def feed_all(splitter: LineSplitter, chunks: list[bytes]) -> list[bytes | OversizedLine]:
    out: list[bytes | OversizedLine] = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
    return out


def test_one_byte_at_a_time() -> None:
    data = b'{"kind":"ready"}\n{"kind":"idle"}\n'
    assert feed_all(LineSplitter(), [bytes([b]) for b in data]) == [
        b'{"kind":"ready"}',
        b'{"kind":"idle"}',
    ]


def test_many_frames_in_one_read() -> None:
    data = b"".join(b'{"n":%d}\n' % i for i in range(1000))
    lines = LineSplitter().feed(data)
    assert len(lines) == 1000 and lines[-1] == b'{"n":999}'


def test_oversized_line_is_discarded_up_to_its_newline_and_the_stream_goes_on() -> None:
    splitter = LineSplitter(max_line=10)
    out = feed_all(splitter, [b"ok\n" + b"x" * 7, b"x" * 20, b"yy\nafter\n"])
    assert out[0] == b"ok"
    assert isinstance(out[1], OversizedLine) and out[1].length == 29
    assert out[2:] == [b"after"]
    assert splitter.buffered == 0


def test_oversized_line_within_one_chunk() -> None:
    out = LineSplitter(max_line=4).feed(b"12345\n1234\n")
    assert out == [OversizedLine(5, b"12345"), b"1234"]


def test_blank_lines_are_skipped() -> None:
    assert LineSplitter().feed(b"\n\na\n\n") == [b"a"]


@given(
    lines=st.lists(
        st.binary(min_size=1, max_size=30).filter(lambda b: b"\n" not in b), max_size=20
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=10),
)
def test_any_chunking_gives_the_same_lines(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    assert feed_all(LineSplitter(max_line=30), chunks) == lines


async def test_read_lines_yields_the_final_line_without_newline_at_eof() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(b"a\nb\nlast")
    await send.aclose()
    batches = [batch async for batch in read_lines(receive)]
    assert [line for batch in batches for line in batch] == [b"a", b"b", b"last"]


async def test_read_lines_from_a_pipe_in_pieces_until_eof() -> None:
    read_end, write_end = os.pipe()
    stream = trio.lowlevel.FdStream(read_end)
    got: list[bytes | OversizedLine] = []

    async def read_all() -> None:
        async for batch in read_lines(stream):
            got.extend(batch)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            for piece in (b"one\ntw", b"o\n", b"last"):
                os.write(write_end, piece)
                await trio.testing.wait_all_tasks_blocked()
            os.close(write_end)
    await stream.aclose()
    assert got == [b"one", b"two", b"last"]


async def test_closing_a_pipe_wakes_its_waiting_reader_with_closed_resource_error() -> None:
    read_end, write_end = os.pipe()
    stream = trio.lowlevel.FdStream(read_end)
    raised: list[BaseException] = []

    async def read_one() -> None:
        try:
            await read_lines(stream).__anext__()
        except trio.ClosedResourceError as exc:
            raised.append(exc)

    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_one)
                await trio.testing.wait_all_tasks_blocked()
                await stream.aclose()
        assert len(raised) == 1
        with pytest.raises(trio.ClosedResourceError):  # and a read after the close
            await read_lines(stream).__anext__()
    finally:
        os.close(write_end)


def test_max_line_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LineSplitter(max_line=0)

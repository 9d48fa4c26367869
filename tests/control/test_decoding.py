"""Decoding a control message: a typed request, or an error naming the problem with the
request's id when it has a valid one. The messages are part of the protocol: pinned here."""

from __future__ import annotations

import pytest

from trio_relay.control.decoding import Undecodable, decode_request
from trio_relay.errors import code_of
from trio_relay.wire import ResizeOp, SendOp, StatusOp


def test_a_request_decodes_into_its_struct() -> None:
    assert decode_request('{"op": "status", "id": "a"}') == StatusOp(id="a")
    send = decode_request('{"id": 1, "op": "send", "to": "w", "body": "hi", "from": "boss"}')
    assert send == SendOp(id=1, to="w", body="hi", sender="boss")
    assert decode_request('{"id":2,"op":"resize","name":"w","rows":5,"cols":9}') == ResizeOp(
        id=2, name="w", rows=5, cols=9
    )


@pytest.mark.parametrize(
    ("message", "request_id", "error"),
    [
        (b"{}", None, "binary messages are not supported: send JSON text"),
        ("not json", None, "JSON is malformed: invalid character (byte 4)"),
        ("[1, 2]", None, "a request must be a JSON object, not list"),
        ("7", None, "a request must be a JSON object, not int"),
        ('{"op": "status"}', None, "a request needs an `id` (a string or an integer)"),
        ('{"id": true, "op": "status"}', None, "a request needs an `id` (a string or an integer)"),
        ('{"id": 1.0, "op": "status"}', None, "a request needs an `id` (a string or an integer)"),
        ('{"id": 7}', 7, "a request needs an `op`"),
        ('{"id": 7, "op": "teleport"}', 7, "Invalid value 'teleport' - at `$.op`"),
        ('{"id": 7, "op": 5}', 7, "Expected `str`, got `int` - at `$.op`"),
        (
            '{"id": "r", "op": "resize", "name": "w", "rows": "many", "cols": 80}',
            "r",
            "Expected `int`, got `str` - at `$.rows`",
        ),
        ('{"id": 7, "op": "release"}', 7, "Object missing required field `name`"),
        ('{"id": 7, "op": "status", "bogus": 1}', 7, "Object contains unknown field `bogus`"),
        ("[" * 10000 + "]" * 10000, None, "JSON nested beyond the decoder's depth limit"),
        (
            '{"id": 7, "op": "status", "x": ' + "[" * 10000 + "]" * 10000 + "}",
            None,
            "JSON nested beyond the decoder's depth limit",
        ),
    ],
)
def test_a_bad_message_is_named_with_its_id(
    message: str | bytes, request_id: object, error: str
) -> None:
    with pytest.raises(Undecodable) as info:
        decode_request(message)
    assert (info.value.request_id, str(info.value)) == (request_id, error)
    assert code_of(info.value) == "bad_request"

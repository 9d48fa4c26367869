"""Turning one WebSocket message into a typed request, or into the reason it is not one.

A well-formed request is decoded once, straight into its :data:`~trio_relay.wire.ControlOp`
Struct. Only a message that fails is looked at again, to say what is wrong in the terms a
client can act on (not JSON, not an object, no usable ``id``, no ``op``, then msgspec's
own account of a wrong field), and to recover its ``id`` for the error answer.
"""

from __future__ import annotations

from typing import Any

import msgspec

from trio_relay.wire import ControlId, ControlOp, ControlRequest

_decoder = msgspec.json.Decoder(ControlOp)


class Undecodable(ValueError):
    """A message that is not a valid request (code ``bad_request``); ``request_id`` is its
    ``id`` when it has a valid one, else None."""

    def __init__(self, message: str, request_id: ControlId | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


def decode_request(message: str | bytes) -> ControlRequest:
    """The request a text message holds. Raises Undecodable naming the problem."""
    if isinstance(message, bytes):
        raise Undecodable("binary messages are not supported: send JSON text")
    try:
        return _decoder.decode(message)
    except (ValueError, RecursionError):  # msgspec's errors are ValueErrors
        return _diagnose(message)


def _diagnose(message: str) -> ControlRequest:
    """Why ``message`` is not a request, as Undecodable. It returns a request only where the
    generic decoder reads what the typed one refused: a repeated key, where the last one
    wins (``{"op": "status", "op": "shutdown"}`` is a shutdown, as it always was)."""
    try:
        raw: Any = msgspec.json.decode(message)
    except RecursionError:
        raise Undecodable("JSON nested beyond the decoder's depth limit") from None
    except ValueError as exc:  # msgspec.DecodeError, or a str that is not UTF-8
        raise Undecodable(str(exc)) from None
    if not isinstance(raw, dict):
        raise Undecodable(f"a request must be a JSON object, not {type(raw).__name__}")
    request_id = raw.get("id")
    if not isinstance(request_id, (int, str)) or isinstance(request_id, bool):
        raise Undecodable("a request needs an `id` (a string or an integer)")
    if "op" not in raw:
        raise Undecodable("a request needs an `op`", request_id)
    try:
        return msgspec.convert(raw, ControlOp)
    except msgspec.ValidationError as exc:
        raise Undecodable(str(exc), request_id) from None

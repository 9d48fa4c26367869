"""The JSON codec every wire type travels in: one encoder, built once, and the decoding step
that turns msgspec's errors into :class:`~trio_relay.errors.ProtocolError`.

Pure functions; no I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec

from trio_relay.errors import ProtocolError

#: The one JSON encoder of the wire types (the frames' and the control channel's).
ENCODER = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    """Encode a frame or event as one JSON line, newline included."""
    return ENCODER.encode(obj) + b"\n"


def decode_with(decoder: msgspec.json.Decoder, line: bytes) -> Any:
    """Decode ``line`` with ``decoder``. Raises ProtocolError naming the field at fault (or
    saying it is not JSON)."""
    try:
        return decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid frame: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None

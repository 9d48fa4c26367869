"""A native worker stub for fuzzing the broker's frame reader: it writes whatever bytes it
is told to on its stdout.

Requests (besides ``ping``): ``emit`` (``hex``, ``repeat``): writes ``bytes.fromhex(hex) *
repeat``, then a newline, then its answer ``{"n": length}``; ``emit_and_exit`` (``hex``,
``code``): writes the bytes with no newline after them and exits with ``code`` at once.
"""

import json
import os
import sys


def write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def frame(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def main() -> None:
    write(frame({"kind": "hello", "protocol": 1, "worker": "fuzz", "pid": os.getpid()}))
    for line in sys.stdin.buffer:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        kind, rid = message.get("kind"), message.get("request_id")
        if kind == "shutdown":
            return
        if kind == "ping":
            write(
                frame(
                    {
                        "kind": "response",
                        "request_id": rid,
                        "payload": {"pong": True},
                        "error": None,
                    }
                )
            )
        elif kind == "emit":
            data = bytes.fromhex(message["hex"]) * message.get("repeat", 1)
            write(
                data
                + b"\n"
                + frame(
                    {
                        "kind": "response",
                        "request_id": rid,
                        "payload": {"n": len(data)},
                        "error": None,
                    }
                )
            )
        elif kind == "emit_and_exit":
            write(bytes.fromhex(message["hex"]))
            os._exit(message["code"])


if __name__ == "__main__":
    main()

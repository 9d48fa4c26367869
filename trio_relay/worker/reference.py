"""The reference native worker: a program that speaks the worker protocol itself.

    python -m trio_relay.worker.reference [--ignore-sigterm] [--ignore-shutdown] [--no-hello]
                                          [--exit-after SECONDS [--exit-code CODE]]
                                          [--never-answer KIND ...]
                                          [--ignore-deliveries N] [--crash-on-deliver MARKER]
                                          [--journal FILE] [--program-pid PID]

It is the example to copy when writing a native worker in any language, and the program the
tests and benchmarks drive. It is deliberately plain: no Trio, one thread, ``selectors`` and
a timer heap, so many requests are in flight at once and it is never the bottleneck.

Requests it answers (each carries a ``request_id``):

=========================  ========================================================
``ping`` / ``echo``        ``{"data": data}`` at once
``sleep``                  ``{"data": data}`` after ``seconds``; others are served meanwhile
``fail``                   an error answer with ``code`` and ``message``
``hang``                   never answered
``garbage``                writes ``text`` to stdout as a raw line, then answers
``stderr``                 writes ``text`` to stderr, then answers
``crash``                  exits at once with ``code``, unanswered
``kill``                   kills itself with ``signal``, unanswered
``received``               ``{"deliveries": [ids received, in order], "senders": [their from],
                           "bodies": [their text]}``
``run``                    starts ``argv`` as a helper that inherits the worker's stdout and
                           stderr (in a session of its own with ``detach``); ``{"pid": pid}``
anything else              an error answer with code ``unknown_kind``
=========================  ========================================================

Fire-and-forget frames: ``shutdown`` exits 0 (unless ``--ignore-shutdown``); ``deliver`` is
recorded once per ``delivery_id`` and acknowledged with ``delivery_injected`` and
``delivery_verified``; ``write_input`` and ``resize`` are accepted and ignored. End of file
on stdin exits 0.

For testing durable delivery: ``--ignore-deliveries N`` drops the first N ``deliver`` frames
unacknowledged (duplicates count); ``--crash-on-deliver MARKER`` exits with code 3 on a new
delivery, before acknowledging it, if the file MARKER does not exist yet (creating it, so
only the first run crashes); ``--journal FILE`` appends ``<pid> <delivery_id>`` for each
delivery recorded, flushed at once, so a test can see what every run received.
``--program-pid PID`` names PID as the program it wraps in its hello (a wrapper's claim, which
the broker checks before it trusts it).
"""

from __future__ import annotations

import argparse
import heapq
import os
import selectors
import signal
import sys
import time
from typing import Any

import msgspec

from trio_relay.wire import (
    PROTOCOL_VERSION,
    DeliveryInjected,
    DeliveryVerified,
    ErrorInfo,
    Ready,
    Response,
    WorkerHello,
    encode,
)
from trio_relay.wire.lines import LineSplitter, OversizedLine


class Incoming(msgspec.Struct):
    """Every field any frame this worker understands may carry."""

    kind: str
    request_id: str | None = None
    data: Any = None
    seconds: float = 0.0
    code: Any = None
    message: str = ""
    text: str = ""
    signal: int = 0
    delivery_id: str = ""
    sender: str = msgspec.field(default="", name="from")
    body: str = ""
    argv: list[str] = []
    detach: bool = False


_decoder = msgspec.json.Decoder(Incoming)


class ReferenceWorker:
    def __init__(self, ignore_shutdown: bool, never_answer: frozenset[str] = frozenset()) -> None:
        self.ignore_shutdown = ignore_shutdown
        self.never_answer = never_answer
        self.out: list[bytes] = []
        self.timers: list[tuple[float, int, bytes]] = []
        self.timer_seq = 0
        self.deliveries: list[str] = []
        self.senders: list[str] = []
        self.bodies: list[str] = []
        self.ignore_deliveries = 0
        self.crash_marker: str | None = None
        self.journal: Any = None
        self.exit_code: int | None = None
        self.helpers: list[Any] = []  # started by ``run``; never waited for

    def answer(self, request_id: str, payload: Any = None, error: ErrorInfo | None = None) -> None:
        self.out.append(encode(Response(request_id=request_id, payload=payload, error=error)))

    def handle(self, line: bytes) -> None:
        """Act on one line from the broker: a bad frame is reported on stderr and skipped."""
        try:
            frame = _decoder.decode(line)
        except msgspec.MsgspecError as exc:
            print(f"reference_worker: bad frame: {exc}", file=sys.stderr, flush=True)
            return
        kind, rid = frame.kind, frame.request_id
        if kind == "shutdown":
            if not self.ignore_shutdown:
                self.exit_code = 0
        elif kind == "deliver":
            self.deliver(frame)
        elif rid is not None and kind not in self.never_answer:  # else fire-and-forget, or mute
            self.request(kind, rid, frame)

    def deliver(self, frame: Any) -> None:
        """Take a delivery (once per id) and report it injected and verified at once."""
        if self.ignore_deliveries > 0:
            self.ignore_deliveries -= 1
            return
        if not frame.delivery_id or frame.delivery_id in self.deliveries:
            return
        if self.crash_marker is not None and not os.path.exists(self.crash_marker):
            open(self.crash_marker, "w").close()
            self.flush()
            os._exit(3)
        self.deliveries.append(frame.delivery_id)
        self.senders.append(frame.sender)
        self.bodies.append(frame.body)
        if self.journal is not None:
            self.journal.write(f"{os.getpid()} {frame.delivery_id}\n")
            self.journal.flush()
        self.out.append(encode(DeliveryInjected(delivery_id=frame.delivery_id)))
        self.out.append(
            encode(DeliveryVerified(delivery_id=frame.delivery_id, verification="echo"))
        )

    def request(self, kind: str, rid: str, frame: Any) -> None:
        """Answer one request (``hang`` never is; ``crash`` and ``kill`` end the process)."""
        if kind in ("ping", "echo"):
            self.answer(rid, {"data": frame.data})
        elif kind == "sleep":
            self.timer_seq += 1
            frame_bytes = encode(Response(request_id=rid, payload={"data": frame.data}))
            heapq.heappush(
                self.timers, (time.monotonic() + frame.seconds, self.timer_seq, frame_bytes)
            )
        elif kind == "fail":
            self.answer(rid, error=ErrorInfo(str(frame.code or "failed"), frame.message))
        elif kind in ("garbage", "stderr"):
            if kind == "garbage":
                self.out.append(frame.text.encode() + b"\n")
            else:
                print(frame.text, file=sys.stderr, flush=True)
            self.answer(rid, {"ok": True})
        elif kind in ("crash", "kill"):
            self.flush()
            if kind == "crash":
                os._exit(int(frame.code or 0))
            os.kill(os.getpid(), frame.signal or signal.SIGKILL)
        elif kind == "run":
            import subprocess  # only this request needs it

            helper = subprocess.Popen(
                frame.argv, stdin=subprocess.DEVNULL, start_new_session=frame.detach
            )
            self.helpers.append(helper)
            self.answer(rid, {"pid": helper.pid})
        elif kind == "received":
            received = {
                "deliveries": self.deliveries,
                "senders": self.senders,
                "bodies": self.bodies,
            }
            self.answer(rid, {key: list(values) for key, values in received.items()})
        elif kind != "hang":
            self.answer(rid, error=ErrorInfo("unknown_kind", f"unknown request kind {kind!r}"))

    def fire_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            self.out.append(heapq.heappop(self.timers)[2])

    def flush(self) -> None:
        if self.out:
            data = memoryview(b"".join(self.out))
            self.out.clear()
            while data:
                data = data[os.write(1, data) :]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trio_relay.worker.reference",
        description="The reference native worker of the trio-relay worker protocol.",
    )
    parser.add_argument("--ignore-sigterm", action="store_true", help="ignore SIGTERM")
    parser.add_argument("--ignore-shutdown", action="store_true", help="ignore shutdown frames")
    parser.add_argument("--no-hello", action="store_true", help="never say hello")
    parser.add_argument(
        "--never-answer",
        action="append",
        default=[],
        metavar="KIND",
        help="never answer requests of KIND (repeatable)",
    )
    parser.add_argument(
        "--exit-after", type=float, metavar="SECONDS", help="exit on its own after SECONDS"
    )
    parser.add_argument(
        "--ignore-deliveries",
        type=int,
        default=0,
        metavar="N",
        help="leave the first N deliver frames unacknowledged",
    )
    parser.add_argument(
        "--crash-on-deliver",
        metavar="MARKER",
        help="exit 3 on a new delivery, unacknowledged, unless MARKER exists (then create it)",
    )
    parser.add_argument(
        "--journal", metavar="FILE", help="append '<pid> <delivery_id>' per delivery received"
    )
    parser.add_argument(
        "--exit-code", type=int, default=0, metavar="CODE", help="the code for --exit-after"
    )
    parser.add_argument(
        "--program-pid", type=int, metavar="PID", help="name PID as its program in the hello"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the worker until its stdin ends, a shutdown, a crash request or --exit-after."""
    args = parse_args(argv)
    exit_at = None if args.exit_after is None else time.monotonic() + args.exit_after
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    worker = ReferenceWorker(args.ignore_shutdown, frozenset(args.never_answer))
    worker.ignore_deliveries = args.ignore_deliveries
    worker.crash_marker = args.crash_on_deliver
    if args.journal:
        worker.journal = open(args.journal, "a")
    if not args.no_hello:
        worker.out.append(
            encode(
                WorkerHello(
                    protocol=PROTOCOL_VERSION,
                    worker="reference",
                    pid=os.getpid(),
                    program_pid=args.program_pid,
                )
            )
        )
        worker.out.append(encode(Ready()))
        worker.flush()
    return serve(worker, exit_at, args.exit_code)


def serve(worker: ReferenceWorker, exit_at: float | None, exit_code: int) -> int:
    """The selector loop: frames from stdin, timers, and the --exit-after deadline."""
    splitter = LineSplitter()
    selector = selectors.PollSelector()  # poll, unlike epoll, accepts any fd (/dev/null too)
    selector.register(0, selectors.EVENT_READ)
    while worker.exit_code is None:
        deadlines = [d for d in (worker.timers[0][0] if worker.timers else None, exit_at) if d]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        if selector.select(timeout):
            chunk = os.read(0, 65536)
            if not chunk:
                worker.exit_code = 0
            for line in splitter.feed(chunk):
                if isinstance(line, OversizedLine):
                    print(
                        f"reference_worker: oversized line ({line.length} bytes)", file=sys.stderr
                    )
                else:
                    worker.handle(line)
        worker.fire_timers()
        worker.flush()
        if exit_at is not None and time.monotonic() >= exit_at:
            return exit_code
    return worker.exit_code


if __name__ == "__main__":
    sys.exit(main())

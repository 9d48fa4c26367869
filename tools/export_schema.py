#!/usr/bin/env python3
"""Export the JSON Schema of the wire protocols from their msgspec types.

    .venv/bin/python tools/export_schema.py [--out docs/schema] [--check]

Writes ``worker-protocol.json`` (frames each way on a worker's stdin/stdout) and
``control-protocol.json`` (WebSocket requests, answers and broker events). With --check,
writes nothing and exits 1 if the files differ from what the code says.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trio_relay import wire


def _normalise(node: Any) -> Any:
    """The schema in a form that does not depend on msgspec's version: descriptions with
    their whitespace collapsed (0.23 dedents docstrings, older versions do not) and the
    members of each ``anyOf`` in a fixed order (versions list ``X | None`` differently)."""
    if isinstance(node, dict):
        out = {
            key: " ".join(value.split())
            if key == "description" and isinstance(value, str)
            else _normalise(value)
            for key, value in node.items()
        }
        if isinstance(out.get("anyOf"), list):
            out["anyOf"] = sorted(out["anyOf"], key=lambda item: json.dumps(item, sort_keys=True))
        return out
    if isinstance(node, list):
        return [_normalise(item) for item in node]
    return node


def schema(title: str, description: str, roots: dict[str, Any]) -> bytes:
    names = list(roots)
    refs, components = msgspec.json.schema_components(
        list(roots.values()), ref_template="#/$defs/{name}"
    )
    components = _normalise(components)
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "description": description,
        "$defs": {**components, **{name: ref for name, ref in zip(names, refs)}},
        "oneOf": [{"$ref": f"#/$defs/{name}"} for name in names],
    }
    return msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"


def documents() -> dict[str, bytes]:
    return {
        "worker-protocol.json": schema(
            "trio-relay worker protocol",
            "Newline-delimited JSON frames: BrokerFrame on the worker's stdin, WorkerFrame on "
            "its stdout. Requests carry a request_id and are answered by one response frame.",
            {"BrokerFrame": wire.BrokerFrame, "WorkerFrame": wire.WorkerFrame},
        ),
        "control-protocol.json": schema(
            "trio-relay control protocol",
            "JSON text messages over WebSocket: ControlRequest from the client; ControlAnswer "
            "(one per request) and ControlEvents (a subscription's events) from the broker.",
            {
                "ControlRequest": wire.ControlOp,
                "ControlAnswer": wire.ControlAnswer,
                "ControlEvents": wire.ControlEvents,
                "BrokerEvent": wire.BrokerEvent,
                # what an answer's result holds, by operation
                "AgentSummary": wire.AgentSummary,
                "SendReceipt": wire.SendReceipt,
                "DeliveryRecord": wire.DeliveryRecord,
                "ScreenSnapshot": wire.ScreenSnapshot,
                "BrokerStatus": wire.BrokerStatus,
                "PendingDeliveries": wire.PendingDeliveries,
                "ModeResult": wire.ModeResult,
                "FlushResult": wire.FlushResult,
            },
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "schema")
    parser.add_argument("--check", action="store_true", help="only compare with the files")
    args = parser.parse_args(argv)
    stale = []
    for name, content in documents().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_bytes() != content:
                stale.append(str(path))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            print(f"wrote {path}")
    if stale:
        print("out of date (run tools/export_schema.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

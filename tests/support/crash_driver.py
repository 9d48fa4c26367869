"""One broker life for the crash loop (tests/support/crash_harness.py), run as its own process.

    python tests/support/crash_driver.py STATE_DIR JOURNALS stream MESSAGES
        opens the broker on STATE_DIR, prints ``{"verified_at_start": [...]}`` (what the
        store held as verified before anything ran), respawns the stored agents (or spawns
        them the first time): two ``cat`` programs under the PTY worker, each appending
        what it reads from its terminal to ``JOURNALS/<CRASH_TAG>.<pid>.log``; prints
        ``{"agent", "worker", "program"}`` per agent, then sends MESSAGES messages,
        printing ``{"queued": delivery_id}`` as each is committed, and waits to be killed.
    python tests/support/crash_driver.py STATE_DIR JOURNALS drain
        the same start, then waits until every open delivery is terminal and every one
        verified by this run is in this run's journals, prints ``{"states": {id: state}}``
        and stops the broker normally.

``CRASH_TAG`` (from the environment, inherited by every process of this run) names the
run; the harness also uses it to find any process of a run left alive.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import trio

from trio_relay import AgentExists, RestartPolicy, open_broker
from trio_relay.broker.delivery import DeliveryPolicy
from trio_relay.wire.vocabulary import OPEN_STATES

AGENTS = ("cat1", "cat2")
POLICY = DeliveryPolicy(ack_timeout=8.0, max_attempts=5)
ALL = 10**9
ID = re.compile(r"\[([0-9a-f]+-\d+)\]")


def say(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def cat_argv(journals: str) -> list[str]:
    # cat's output goes to its journal; the terminal still echoes what is typed, which is
    # what the PTY worker verifies. exec: the journal is named by cat's own pid.
    script = f'exec cat >> "{journals}/$CRASH_TAG.$$.log"'
    return [
        sys.executable,
        "-m",
        "trio_relay.worker.pty",
        "--settle",
        "0.05",
        "--",
        "sh",
        "-c",
        script,
    ]


def journal_ids(journals: str, tag: str) -> set[str]:
    found: set[str] = set()
    for path in Path(journals).glob(f"{tag}.*.log"):
        found.update(ID.findall(path.read_text(errors="replace")))
    return found


async def main(state: str, journals: str, mode: str, messages: int = 0) -> None:
    async with open_broker(state, delivery=POLICY, respawn=False) as broker:
        verified = await broker.deliveries(states=("verified",), limit=ALL)
        say({"verified_at_start": [d.delivery_id for d in verified]})
        await broker.respawn()
        for name in AGENTS:
            try:
                await broker.spawn(name, cat_argv(journals), restart=RestartPolicy("on-failure"))
            except AgentExists:
                pass  # respawned from the store
        for name in AGENTS:
            agent = broker.supervisor.get(name)
            assert agent.hello is not None
            say({"agent": name, "worker": agent.proc.pid, "program": agent.hello.program_pid})  # type: ignore[union-attr]
        if mode == "stream":
            for i in range(messages):
                receipt = await broker.send(AGENTS[i % 2], f"message {i}", sender="driver")
                say({"queued": receipt.delivery_id})
            await trio.sleep_forever()
        tag = os.environ["CRASH_TAG"]
        with trio.fail_after(45):
            for delivery in await broker.deliveries(states=OPEN_STATES, limit=ALL):
                await broker.wait_delivery(delivery.delivery_id, timeout=45)
            final = await broker.deliveries(limit=ALL)
            mine = {d.delivery_id for d in final if d.state == "verified"} - {
                d.delivery_id for d in verified
            }
            while not mine <= journal_ids(journals, tag):  # cat has written what it read
                await trio.sleep(0.02)
        say({"states": {d.delivery_id: d.state for d in final}})


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:]))

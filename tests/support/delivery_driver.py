"""A broker on a state directory, for the SIGKILL test of durable delivery.

python tests/support/delivery_driver.py STATE_DIR send JOURNAL
    spawns the reference worker as agent ``w`` (its deliveries journalled to JOURNAL),
    prints ``{"worker": pid}``, then sends messages forever, printing
    ``{"queued": delivery_id}`` as each is acknowledged (committed).
python tests/support/delivery_driver.py STATE_DIR recover
    opens the same state directory, notes which deliveries were already verified,
    respawns the agents, waits until every open delivery is terminal, and prints one
    JSON object: ``verified_before``, ``states`` (id -> state), ``worker`` (pid).
"""

from __future__ import annotations

import json
import sys

import trio

from trio_relay import RestartPolicy, open_broker
from trio_relay.broker.delivery import DeliveryPolicy
from trio_relay.wire.vocabulary import OPEN_STATES

POLICY = DeliveryPolicy(ack_timeout=2.0, max_attempts=5)
ALL = 10**9


def say(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def send(state_dir: str, journal: str) -> None:
    async with open_broker(state_dir, delivery=POLICY) as broker:
        argv = [sys.executable, "-m", "trio_relay.worker.reference", "--journal", journal]
        info = await broker.spawn("w", argv, restart=RestartPolicy("on-failure"))
        say({"worker": info.pid})
        i = 0
        while True:
            receipt = await broker.send("w", f"message {i}", sender="driver")
            say({"queued": receipt.delivery_id})
            i += 1


async def recover(state_dir: str) -> None:
    async with open_broker(state_dir, delivery=POLICY, respawn=False) as broker:
        before = await broker.deliveries(states=("verified",), limit=ALL)
        (started,) = await broker.respawn()
        with trio.fail_after(40):
            for delivery in await broker.deliveries(states=OPEN_STATES, limit=ALL):
                await broker.wait_delivery(delivery.delivery_id, timeout=40)
        final = await broker.deliveries(limit=ALL)
        say(
            {
                "verified_before": [d.delivery_id for d in before],
                "states": {d.delivery_id: d.state for d in final},
                "worker": started.pid,
            }
        )


if __name__ == "__main__":
    state, mode = sys.argv[1], sys.argv[2]
    trio.run(send if mode == "send" else recover, state, *sys.argv[3:])

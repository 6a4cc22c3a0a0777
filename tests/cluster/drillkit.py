"""Helpers of the cluster drills: where a host's connection landed, a fault timed against
the handlers' own events, and the exact count every drill ends with.

Counting rules (the fault suite's, with duplicates allowed where a drill says so):

- *published*: the ids the test had confirmed by the broker.
- *processed*: distinct ids with an ``end`` event (their handler completed).
- *duplicates*: ids with more than one ``end`` event.
- *DLQ*: copies drained from the DLQ; *left*: copies still in the work (and retry) queues
  once no host runs.
- *lost*: published ids that are neither processed, nor in the DLQ, nor left. Always 0.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from brokertools import AmqpClient, HostProcess
from clustertools import RabbitCluster
from faultkit import DLQ, QUEUE, FaultRig, poll

#: The host's consuming connection is named "rabbitworker-host <hostname>:<pid>"; its
#: copies connection "rabbitworker-host copies <hostname>:<pid>".
HOST_CONNECTION = "rabbitworker-host "
COPIES_CONNECTION = "rabbitworker-host copies "
PUBLISH_TASK_CONNECTION = "rabbitworker publish_task "

#: Host settings every drill runs with: fail over fast, notice a silent node soon.
FAST_FAILOVER = {"RABBITWORKER_RECONNECT_INTERVAL": "0.2", "RABBITWORKER_HEARTBEAT": "5"}


def connections(cluster: RabbitCluster, vhost: str, prefix: str) -> list[dict[str, Any]]:
    """The vhost's connections whose client connection_name starts with ``prefix`` (the
    host's consuming ones: not its copies connection), from any node's management API."""
    found = []
    for connection in cluster.api("GET", "connections").json():
        name = str((connection.get("client_properties") or {}).get("connection_name", ""))
        if connection.get("vhost") != vhost or not name.startswith(prefix):
            continue
        if prefix == HOST_CONNECTION and name.startswith(COPIES_CONNECTION):
            continue
        found.append(connection)
    return found


async def node_of(
    cluster: RabbitCluster,
    vhost: str,
    pid: int,
    *,
    prefix: str = HOST_CONNECTION,
    not_on: str | None = None,
    within: float = 20,
) -> str:
    """The node process ``pid``'s connection named ``prefix...`` is on (polled: the
    management API lists a new connection a moment late). ``not_on``: wait until it is on
    another node than that one (after a failover)."""

    def lookup() -> str | None:
        for connection in connections(cluster, vhost, prefix):
            name = str(connection["client_properties"]["connection_name"])
            if name.endswith(f":{pid}") and connection.get("node") != not_on:
                return str(connection["node"])
        return None

    return await poll(  # type: ignore[no-any-return]
        lambda: asyncio.to_thread(lookup),
        within=within,
        interval=0.25,
        message=f"a {prefix.strip()!r} connection of pid {pid}"
        + (f" on a node other than {not_on}" if not_on else ""),
    )


def other_node(cluster: RabbitCluster, *avoid: str) -> str:
    """The first node name that is none of ``avoid``."""
    return next(name for name in cluster.node_names() if name not in avoid)


@dataclass
class FaultTimes:
    """Monotonic instants of a fault, comparable with the handlers' event times."""

    began: float
    returned: float
    #: When the test saw each watched host log text appear (absent: never seen).
    seen: dict[str, float] = field(default_factory=dict)


async def inject(
    fault: Callable[[], None],
    *,
    watch: Iterable[tuple[HostProcess, str]] = (),
) -> FaultTimes:
    """Run the (blocking) ``fault`` in a thread, noting when each watched host logs its
    text (from before the fault until it returned, and a few seconds after)."""
    watched = list(watch)
    baseline = {(id(h), text): h.log.count(text) for h, text in watched}
    seen: dict[str, float] = {}

    def look() -> None:
        now = time.monotonic()
        for host, text in watched:
            key = f"{host.process.pid}:{text}"
            if key not in seen and host.log.count(text) > baseline[(id(host), text)]:
                seen[key] = now

    began = time.monotonic()
    task = asyncio.ensure_future(asyncio.to_thread(fault))
    while not task.done():
        look()
        await asyncio.sleep(0.05)
    await task
    returned = time.monotonic()
    deadline = returned + 5
    while time.monotonic() < deadline and len(seen) < len(watched):
        look()
        await asyncio.sleep(0.05)
    return FaultTimes(began, returned, seen)


def resume_after(rig: FaultRig, since: float) -> tuple[float, float]:
    """``(resume, stall)``: seconds from ``since`` (the fault) to the first handler start
    after the longest pause in handler starts from then on, and that pause's length. A
    stream that never paused resumes at its first start after the fault."""
    starts = sorted(e["t"] for e in rig.events("start") if e["t"] >= since)
    if not starts:
        return float("inf"), float("inf")
    points = [since, *starts]
    gaps = [(b - a, b) for a, b in itertools.pairwise(points)]
    stall, resumed_at = max(gaps)
    return resumed_at - since, stall


@dataclass
class Count:
    """The exact outcome of a drill."""

    published: set[str]
    completions: Counter[str]
    dead: Counter[str]
    left: Counter[str]

    @property
    def processed(self) -> set[str]:
        return set(self.completions)

    @property
    def duplicates(self) -> set[str]:
        return {i for i, n in self.completions.items() if n > 1}

    @property
    def lost(self) -> set[str]:
        return self.published - self.processed - set(self.dead) - set(self.left)

    def line(self, drill: str, resume: float | None = None, **extra: Any) -> str:
        timing = "" if resume is None else f", time to resume {resume:.2f} s"
        more = "".join(f", {k} {v}" for k, v in extra.items())
        return (
            f"DRILL {drill}: published {len(self.published)}, processed {len(self.processed)}, "
            f"duplicates {len(self.duplicates)}, lost {len(self.lost)}, "
            f"left {sum(self.left.values())}, DLQ {sum(self.dead.values())}{timing}{more}"
        )


async def count(
    rig: FaultRig,
    amqp: AmqpClient,
    published: Iterable[str],
    *,
    queues: Iterable[str] = (QUEUE,),
) -> Count:
    """Drain the DLQ and ``queues`` (every host must have exited) and count."""
    for host in rig.hosts:
        assert host.process.poll() is not None, "stop every host before counting"
    dead = await amqp.take_all(DLQ)
    left = [m for queue in queues for m in await amqp.take_all(queue)]
    return Count(
        published=set(published),
        completions=Counter(e["id"] for e in rig.events("end")),
        dead=Counter(str(m.message_id) for m in dead),
        left=Counter(str(m.message_id) for m in left),
    )


async def wait_processed(
    rig: FaultRig,
    ids: Iterable[str],
    *,
    within: float,
    alive: Iterable[HostProcess] = (),
    extra: Callable[[], Awaitable[int]] | None = None,
) -> None:
    """Wait until every id in ``ids`` was processed (or, with ``extra``, until processed
    plus ``await extra()`` cover them), failing at once if an ``alive`` host exits."""
    wanted = set(ids)
    hosts = list(alive)

    async def done() -> bool:
        for host in hosts:
            if host.process.poll() is not None:
                raise AssertionError(
                    f"host {host.process.pid} exited with {host.process.returncode}:\n"
                    f"{host.log[-5000:]}"
                )
        have = len(wanted & rig.handled())
        if extra is not None:
            have += await extra()
        return have >= len(wanted)

    try:
        await poll(done, within=within, interval=0.25, message=f"{len(wanted)} ids processed")
    except AssertionError as error:
        missing = sorted(wanted - rig.handled())
        logs = "\n".join(f"--- host {h.process.pid}\n{h.log[-4000:]}" for h in rig.hosts)
        raise AssertionError(
            f"{error}; {len(missing)} not processed, e.g. {missing[:5]}\n{logs}"
        ) from error


async def stop_the_publishers_node_mid_stream(
    cluster: RabbitCluster,
    vhost: str,
    publish: Callable[[int], Awaitable[None]],
    total: int,
    *,
    hold_at: int,
) -> tuple[str, FaultTimes]:
    """Call ``publish(0)`` … ``publish(total - 1)`` one after another, 10 ms apart, and stop
    the node this process's ``publish_task`` connection is on in the middle: the calls after
    ``hold_at`` wait until the stop begins (finding that node through the management API
    can outlast the whole stream). Returns the node and the stop's times once every call
    returned; ``publish`` records its own results and errors."""
    halfway = asyncio.Event()
    stopping = asyncio.Event()

    async def publish_all() -> None:
        for index in range(total):
            await publish(index)
            if index == hold_at:
                halfway.set()
                await stopping.wait()
            await asyncio.sleep(0.01)

    publishing = asyncio.ensure_future(publish_all())
    try:
        await halfway.wait()
        node = await node_of(cluster, vhost, os.getpid(), prefix=PUBLISH_TASK_CONNECTION)
        stopping.set()
        fault = await inject(lambda: cluster.stop_node(node))
        await publishing
    except BaseException:
        publishing.cancel()
        raise
    return node, fault

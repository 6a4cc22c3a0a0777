"""The topology as an SVG drawn on the server: exchanges → queues → DLX → DLQ, with the
retry queues beside their queue. No script or CDN: the page only embeds the picture."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from rabbitworker.plugins import QueueRegistration
from rabbitworker.topology import Topology

BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 210, 46, 90, 22, 20
COLUMNS = ("exchanges", "queues", "retry queues / DLX", "DLQs")


def _columns(
    topology: Topology, registrations: Sequence[QueueRegistration]
) -> tuple[list[list[tuple[str, str, str]]], list[tuple[str, str, str, bool]]]:
    """Nodes per column as (id, title, detail), and edges (from, to, label, dead-letter)."""
    configs = {r.config.name: r.config for r in registrations}
    dlxs = {
        str(q.arguments["x-dead-letter-exchange"])
        for q in topology.queues.values()
        if q.name in configs and q.arguments.get("x-dead-letter-exchange")
    }
    columns: list[list[tuple[str, str, str]]] = [[], [], [], []]
    edges: list[tuple[str, str, str, bool]] = []
    for exchange in topology.exchanges.values():
        column = 2 if exchange.name in dlxs else 0
        columns[column].append((f"x:{exchange.name}", exchange.name, f"{exchange.type} exchange"))
    for queue in topology.queues.values():
        config = configs.get(queue.name)
        dlx = queue.arguments.get("x-dead-letter-exchange")
        exchange_name: str
        if config is not None:
            detail = f"prefetch {config.prefetch_count}: {', '.join(config.tasks)}"
            columns[1].append((f"q:{queue.name}", queue.name, detail))
            if dlx:
                edges.append((f"q:{queue.name}", f"x:{dlx}", "dead letters", True))
        elif dlx == "" and "x-dead-letter-routing-key" in queue.arguments:
            target = str(queue.arguments["x-dead-letter-routing-key"])
            ttl = queue.arguments.get("x-message-ttl", 0)
            columns[2].append((f"q:{queue.name}", queue.name, f"retry after {ttl} ms"))
            edges.append((f"q:{target}", f"q:{queue.name}", "retry", True))
            edges.append((f"q:{queue.name}", f"q:{target}", "", True))
        elif any(bound in dlxs for bound, _ in queue.bindings):
            columns[3].append((f"q:{queue.name}", queue.name, "dead-letter queue"))
        else:
            columns[1].append((f"q:{queue.name}", queue.name, ""))
        for exchange_name, routing_key in queue.bindings:
            edges.append((f"x:{exchange_name}", f"q:{queue.name}", routing_key, False))
    return columns, edges


def topology_svg(topology: Topology, registrations: Sequence[QueueRegistration]) -> str:
    """An SVG of the topology; ``data-node`` on each box names the exchange or queue."""
    columns, edges = _columns(topology, registrations)
    where: dict[str, tuple[int, int]] = {}
    tallest = max((len(c) for c in columns), default=1)
    height = MARGIN * 2 + 24 + max(tallest, 1) * (BOX_H + GAP_Y)
    width = MARGIN * 2 + len(columns) * BOX_W + (len(columns) - 1) * GAP_X
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" class="topology" role="img" '
        'aria-label="exchanges, queues, dead-letter exchanges and DLQs">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
    ]
    for index, (title, nodes) in enumerate(zip(COLUMNS, columns, strict=True)):
        x = MARGIN + index * (BOX_W + GAP_X)
        parts.append(
            f'<text x="{x + BOX_W / 2}" y="{MARGIN}" text-anchor="middle" '
            f'class="column">{escape(title)}</text>'
        )
        for row, (node, _, _) in enumerate(nodes):
            where[node] = (x, MARGIN + 24 + row * (BOX_H + GAP_Y))
    for source, target, label, dead in edges:
        if source not in where or target not in where:
            continue
        (x1, y1), (x2, y2) = where[source], where[target]
        forward = x2 > x1
        sx = x1 + BOX_W if forward else x1
        tx = x2 if forward else x2 + BOX_W
        if x1 == x2:
            sx = tx = x1 + BOX_W
        sy, ty = y1 + BOX_H / 2, y2 + BOX_H / 2
        bend = GAP_X / 2
        c1 = sx + (bend if forward or x1 == x2 else -bend)
        c2 = tx + (-bend if forward else bend)
        dash = ' stroke-dasharray="5 4"' if dead else ""
        parts.append(
            f'<path d="M {sx} {sy} C {c1} {sy}, {c2} {ty}, {tx} {ty}" fill="none" '
            f'stroke="#555"{dash} marker-end="url(#arrow)"/>'
        )
        if label:
            parts.append(
                f'<text x="{(sx + tx) / 2}" y="{(sy + ty) / 2 - 4}" text-anchor="middle" '
                f'class="edge">{escape(label)}</text>'
            )
    for index, nodes in enumerate(columns):
        for node, title, detail in nodes:
            x, y = where[node]
            kind = ("exchange", "queue", "retry" if node.startswith("q:") else "dlx", "dlq")[index]
            rounded = 14 if kind in ("exchange", "dlx") else 4
            parts.append(
                f'<g class="node {kind}" data-node="{escape(node)}">'
                f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="{rounded}"/>'
                f'<text x="{x + 8}" y="{y + 18}" class="title">{escape(title[:32])}</text>'
                f'<text x="{x + 8}" y="{y + 36}" class="detail">{escape(detail[:38])}</text>'
                "</g>"
            )
    parts.append("</svg>")
    return "\n".join(parts)

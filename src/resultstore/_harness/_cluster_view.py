"""What cluster nodes say about their cluster (``CLUSTER NODES``), and whether they agree."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping

__all__ = ["SLOTS", "NodeEntry", "View", "disagreement", "parse_nodes"]

SLOTS = 16384
"""Hash slots of a Redis Cluster."""

_UNHEALTHY = frozenset({"fail", "fail?", "handshake", "noaddr"})


@dataclasses.dataclass(frozen=True)
class NodeEntry:
    """One line of ``CLUSTER NODES``: one node as the answering node sees it.

    Attributes:
        node_id: the node's cluster id.
        host: its announced address ("" before it has met anyone).
        port: its client port (the TLS port on a TLS cluster).
        flags: ``master``/``slave``, ``fail?``, ``fail``, ``handshake``... (``myself`` dropped).
        myself: the answering node itself.
        primary_id: the id of its primary when it is a replica, else None.
        connected: the answering node's link to it is up.
        slots: the slot ranges it serves, ``(first, last)`` inclusive.
    """

    node_id: str
    host: str
    port: int
    flags: frozenset[str]
    myself: bool
    primary_id: str | None
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def is_primary(self) -> bool:
        """Flagged ``master`` (with or without slots)."""
        return "master" in self.flags

    @property
    def healthy(self) -> bool:
        """Linked, and flagged neither failing nor in handshake."""
        return self.connected and not self.flags & _UNHEALTHY

    def serves(self, slot: int) -> bool:
        """True when `slot` is in one of its ranges."""
        return any(first <= slot <= last for first, last in self.slots)

    def shape(self) -> tuple[bool, str | None, tuple[tuple[int, int], ...]]:
        """What every node must agree on: role, primary and slots."""
        return (self.is_primary, self.primary_id, self.slots)


def _slot_range(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    return (int(first), int(last or first))


def parse_nodes(text: str) -> dict[str, NodeEntry]:
    """Parse a ``CLUSTER NODES`` reply into entries by node id.

    Importing and migrating markers (``[slot->-id]``) are left out: they are not ownership.
    """
    entries: dict[str, NodeEntry] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0]
        host, _, port = address.rpartition(":")
        flags = frozenset(fields[2].split(","))
        entries[fields[0]] = NodeEntry(
            node_id=fields[0],
            host=host,
            port=int(port or 0),
            flags=flags - {"myself"},
            myself="myself" in flags,
            primary_id=None if fields[3] == "-" else fields[3],
            connected=fields[7] == "connected",
            slots=tuple(_slot_range(s) for s in fields[8:] if not s.startswith("[")),
        )
    return entries


def disagreement(
    views: Mapping[str, Mapping[str, NodeEntry]], running: Collection[str]
) -> str | None:
    """Why the views of the running nodes do not show one settled cluster; None if they do.

    Settled: every view lists every running node, healthy, with the same role, primary and
    slots as every other view, and the running primaries serve all 16384 slots. Nodes that do
    not run may look any way at all.

    Args:
        views: each running node's parsed ``CLUSTER NODES``, by that node's id.
        running: the ids of the nodes that run.
    """
    first_viewer: str | None = None
    first_shapes: dict[str, object] = {}
    for viewer, entries in views.items():
        shapes: dict[str, object] = {}
        served = 0
        for node_id in running:
            entry = entries.get(node_id)
            if entry is None:
                return f"{viewer[:8]} does not know {node_id[:8]}"
            if not entry.healthy:
                return f"{viewer[:8]} sees {node_id[:8]} as {','.join(sorted(entry.flags))}"
            shapes[node_id] = entry.shape()
            if entry.is_primary:
                served += sum(last - first + 1 for first, last in entry.slots)
        if served != SLOTS:
            return f"{viewer[:8]} sees {served} of {SLOTS} slots served by running primaries"
        if first_viewer is None:
            first_viewer, first_shapes = viewer, shapes
            continue
        for node_id, shape in shapes.items():
            if shape != first_shapes[node_id]:
                return f"{first_viewer[:8]} and {viewer[:8]} disagree about {node_id[:8]}"
    return None


class View:
    """One running node's ``CLUSTER NODES``, parsed: every node by id, and the slot owners."""

    def __init__(self, entries: Mapping[str, NodeEntry]) -> None:
        self.entries = dict(entries)

    def owner(self, slot: int) -> NodeEntry:
        """The primary that serves `slot` in this view.

        Raises:
            LookupError: no node serves it.
        """
        for entry in self.entries.values():
            if entry.is_primary and entry.serves(slot):
                return entry
        raise LookupError(f"no node serves slot {slot}")

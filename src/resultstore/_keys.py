"""Key and channel naming: Celery's ``{global_keyprefix}celery-task-meta-{task_id}``.

The same bytes name the result key and its Pub/Sub channel, so a message's channel maps straight
back to the task id without a lookup table.
"""

from __future__ import annotations

__all__ = ["KeyScheme"]


class KeyScheme:
    """Turns task ids into result keys (== channels) and back.

    Args:
        global_keyprefix: already normalised by the settings (Celery's ``_`` rule applied).
        key_prefix: the ``celery-task-meta-`` part.
    """

    __slots__ = ("_prefix", "_prefix_len")

    def __init__(self, global_keyprefix: str, key_prefix: str) -> None:
        self._prefix = (global_keyprefix + key_prefix).encode()
        self._prefix_len = len(self._prefix)

    @property
    def prefix(self) -> bytes:
        """Everything before the task id."""
        return self._prefix

    def key(self, task_id: str) -> bytes:
        """The result key, which is also the Pub/Sub channel, of ``task_id``."""
        return self._prefix + task_id.encode()

    def task_id(self, key: bytes) -> str:
        """The task id a key or channel names (the inverse of :meth:`key`)."""
        return key[self._prefix_len :].decode()

    def __repr__(self) -> str:
        return f"KeyScheme(prefix={self._prefix.decode()!r})"

"""Key and channel naming: Celery's ``{global_keyprefix}celery-task-meta-{task_id}``.

The same bytes name the result key and its Pub/Sub channel.
"""

from __future__ import annotations

__all__ = ["KeyScheme"]


class KeyScheme:
    """Turns task ids into result keys (== channels).

    Args:
        global_keyprefix: already normalised by the settings (Celery's ``_`` rule applied).
        key_prefix: the ``celery-task-meta-`` part.
    """

    __slots__ = ("_prefix",)

    def __init__(self, global_keyprefix: str, key_prefix: str) -> None:
        self._prefix = (global_keyprefix + key_prefix).encode()

    def key(self, task_id: str) -> bytes:
        """The result key, which is also the Pub/Sub channel, of ``task_id``."""
        return self._prefix + task_id.encode()

    def __repr__(self) -> str:
        return f"KeyScheme(prefix={self._prefix.decode()!r})"

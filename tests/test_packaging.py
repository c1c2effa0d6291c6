"""The wheel and the sdist build, and the wheel installs and runs in a fresh virtualenv.

Slow (tens of seconds: it builds in an isolated environment and installs the dependencies
from the package index, as a user would), so it runs once, with its own timeout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import smartsocket

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str | Path, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.timeout(900)
def test_wheel_and_sdist_install_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT, timeout=600)
    wheels = list(dist.glob("smartsocket-*.whl"))
    sdists = list(dist.glob("smartsocket-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(dist.iterdir())
    version = smartsocket.__version__
    assert f"-{version}-" in wheels[0].name and sdists[0].name.endswith(f"-{version}.tar.gz")

    # What each archive holds: the package (typed), and nothing of the work tree's clutter.
    names = zipfile.ZipFile(wheels[0]).namelist()
    for needed in ("smartsocket/__init__.py", "smartsocket/py.typed", "smartsocket/asgi.py",
                   "smartsocket/integrations/aiohttp.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "bench/", "examples/"))]
    with tarfile.open(sdists[0]) as sdist:
        members = sdist.getnames()
    root = f"smartsocket-{version}/"
    for needed in ("pyproject.toml", "README.md", "src/smartsocket/__init__.py"):
        assert root + needed in members, needed
    assert not [m for m in members if "/.venv/" in m or "/.git/" in m or "__pycache__" in m]
    assert sdists[0].stat().st_size < 10 << 20

    # A fresh virtualenv: pip installs the wheel and its dependencies from the index.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / ("Scripts" if sys.platform == "win32" else "bin")
    python = bin_dir / "python"
    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheels[0])
    assert run(bin_dir / "smartsocket", "--version").strip() == f"smartsocket {version}"
    # Importable without the test or integration extras (ASGI needs no dependency).
    out = run(python, "-c", "import smartsocket, smartsocket.asgi, smartsocket.testing; "
                            "from smartsocket import SmartSocket; "
                            "print(smartsocket.__version__, SmartSocket().port)")
    assert out.split() == [version, "8080"]
    result = subprocess.run([python, "-c", "import smartsocket.integrations.aiohttp"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "aiohttp" in result.stderr  # needs smartsocket[aiohttp]
    # The outbox's migration ships in the wheel; its consumer needs smartsocket[postgres].
    out = run(python, "-c", "from smartsocket.outbox import schema_sql; "
                            "print('smartsocket_outbox' in schema_sql())")
    assert out.strip() == "True"
    result = subprocess.run([python, "-c", "from smartsocket.outbox import OutboxConsumer"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "asyncpg" in result.stderr


@pytest.mark.timeout(600)
def test_the_docker_build_context_is_enough_to_build_the_wheel(tmp_path: Path) -> None:
    """The Dockerfile's build stage copies a few files and runs ``pip wheel .``: those files
    alone must build (Docker itself cannot run here)."""
    context = tmp_path / "context"
    context.mkdir()
    text = (ROOT / "Dockerfile").read_text()
    build_stage = text.split("FROM ", 2)[1]  # up to the second FROM
    for line in build_stage.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                src = ROOT / source
                if src.is_dir():
                    shutil.copytree(src, context / source,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(src, context / source)
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
        "--wheel-dir", wheels, context, timeout=500)
    assert [w.name for w in wheels.glob("smartsocket-*.whl")]

"""The installed package: a wheel built from a clean copy of the checkout, installed in a fresh
virtualenv outside it, serves the chat from an empty folder and streams to a core-protocol client
that opens the root path."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, TERMINAL
from websockets.asyncio.client import connect

from aistream.children import Child

pytestmark = pytest.mark.timeout(900)

CLEAN_ENV = {
    key: value
    for key, value in os.environ.items()
    if not key.startswith(("AISTREAM_", "OPENAI_", "PYTHON", "VIRTUAL_ENV"))
}
"""The environment of a new user: no settings, no upstream, no checkout on the path."""


def _run(*argv: str | Path, cwd: Path | None = None) -> None:
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env={**CLEAN_ENV, "npm_config_prefer_offline": "true"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{argv[:3]} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy holding only what git tracks (or would): no node_modules,
    no built web client, no virtualenv."""
    source = tmp_path_factory.mktemp("source")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheels")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, source)
    (built,) = out.glob("aistream-*.whl")
    return built


def test_the_wheel_installs_one_import_name_and_the_web_client(wheel: Path) -> None:
    """Top-level names are aistream and its SDK only; the built page is package data."""
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"aistream", "aistream_client", re.sub(r"-py3.*", ".dist-info", wheel.name)}
    assert "aistream/generator/service.py" in names
    assert "aistream/bridge/server.py" in names
    assert "aistream/webclient/index.html" in names
    assert any(re.fullmatch(r"aistream/webclient/assets/.+\.js", n) for n in names)


def _fetch(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read()


async def test_installed_aistream_up_serves_the_chat_from_an_empty_folder(
    wheel: Path, tmp_path: Path
) -> None:
    """pip install the wheel, `aistream up` in an empty folder: the page, its script, and an
    answer streamed to a client of the core protocol on the root path."""
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
    _run(base, "-m", "venv", venv)
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel)
    empty = tmp_path / "empty"
    empty.mkdir()
    up = Child(
        [str(venv / "bin" / "aistream"), "up", "--port", "0"],
        r"aistream is up: open http://([\d.]+):(\d+)/",
        name="aistream up",
        env={"AISTREAM_LOG_LEVEL": "WARNING"},
        cwd=empty,
        timeout=60,
    )
    try:
        host, port = up.ready[1], up.ready[2]
        status, kind, page = await asyncio.to_thread(_fetch, f"http://{host}:{port}/")
        assert (status, kind.split(";")[0]) == (200, "text/html")
        script = re.search(rb'src="(/assets/[^"]+\.js)"', page)
        assert script is not None, page[:500]
        status, kind, body = await asyncio.to_thread(
            _fetch, f"http://{host}:{port}{script[1].decode()}"
        )
        assert (status, kind.split(";")[0]) == (200, "text/javascript")
        assert len(body) > 10_000

        async with connect(f"ws://{host}:{port}") as ws:
            await ws.send('{"type":"ai:generate","requestId":"r1","prompt":"hello"}')
            frames = []
            while not frames or frames[-1]["type"] not in TERMINAL:
                frames.append(orjson.loads(await ws.recv()))
        types = [f["type"] for f in frames]
        # (the simulated model thinks before it answers: ai:reasoning, a type a core client
        # ignores; its ai:token frames are the answer alone)
        assert (types[0], types[-1]) == ("ai:start", "ai:done")
        assert set(types[1:-1]) == {"ai:reasoning", "ai:token"}
        assert "simulated" in frames[0]["model"]
        assert "".join(f["chunk"] for f in frames[1:-1] if f["type"] == "ai:token").strip()
    finally:
        code = up.stop()
    assert code == 0

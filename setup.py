"""The wheel carries the web client: building it builds ``webclient/`` and packs its ``dist/``.

Everything else about the distribution is in pyproject.toml. This hook only extends ``build_py``:
when a wheel is built (not an editable install, where the bridge serves the checkout's own
``webclient/dist``), it runs ``npm ci`` if the web client's packages are missing, then
``npm run build`` into a temporary folder, and copies the result into the wheel as the package
data ``aistream/webclient/`` — where ``aistream.bridge`` looks first. Without Node.js it stops
with a message saying so; ``AISTREAM_WEBCLIENT_DIST=/path/to/dist`` packs a web client built
elsewhere instead (no Node needed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
WEBCLIENT = ROOT / "webclient"
PACKAGED = Path("aistream", "webclient")


class WebClientError(SystemExit):
    """The web client could not be built for the wheel."""


def _npm(*args: str) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise WebClientError(
            "aistream: building the wheel builds the web client (webclient/), which needs "
            "Node.js >= 20.19 and npm on PATH. Install Node.js, or set "
            "AISTREAM_WEBCLIENT_DIST to a web client already built with `npm run build`."
        )
    done = subprocess.run([npm, *args], cwd=WEBCLIENT)
    if done.returncode != 0:
        raise WebClientError(f"aistream: `npm {' '.join(args)}` failed in webclient/")


def _build_webclient(into: Path) -> None:
    """Build the web client into ``into`` (or copy the one AISTREAM_WEBCLIENT_DIST names)."""
    given = os.environ.get("AISTREAM_WEBCLIENT_DIST")
    if given:
        source = Path(given)
        if not (source / "index.html").is_file():
            raise WebClientError(f"aistream: AISTREAM_WEBCLIENT_DIST={given} has no index.html")
        shutil.copytree(source, into, ignore=shutil.ignore_patterns(".source-hash"))
        return
    if not (WEBCLIENT / "package.json").is_file():
        raise WebClientError("aistream: webclient/ is missing from this source tree")
    if not (WEBCLIENT / "node_modules").is_dir():
        _npm("ci", "--no-audit", "--no-fund", "--loglevel=error")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "dist"
        _npm("run", "build", "--silent", "--", "--outDir", str(out), "--logLevel", "warn")
        shutil.copytree(out, into)


class BuildPyWithWebClient(build_py):
    """``build_py`` that also puts the built web client into the wheel."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # a checkout serves webclient/dist itself (scripts/run.sh builds it)
        target = Path(self.build_lib) / PACKAGED
        shutil.rmtree(target, ignore_errors=True)
        _build_webclient(target)


setup(cmdclass={"build_py": BuildPyWithWebClient})

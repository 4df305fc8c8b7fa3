"""Run ``mypy --strict`` over the whole ``aistream`` package, and prove it saw every module.

The services keep the top-level folders the product is known by (``generator/``, ``bridge/``) and
install as ``aistream.generator`` / ``aistream.bridge`` through setuptools' ``package-dir``
(pyproject.toml). mypy does not follow an editable install's import hook, so ``mypy -p aistream``
run on the checkout would find ``aistream/`` alone and report success having checked a third of
the code. This script lays out the package as it is installed — a tree of symlinks under
``.typecheck/`` built from pyproject's own package list — points mypy at it, maps the paths in
mypy's messages back to the files in the checkout, and fails unless the modules mypy checked are
exactly the modules the package holds (generated code excepted).

Usage: ``python tools/typecheck.py [mypy options]`` from anywhere in the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".typecheck"
GENERATED = re.compile(r"^(aistream\.v1|aistream_client)(\.|$)")
"""Packages mypy is told to skip (pyproject's ``[tool.mypy] exclude``): generated code."""


def package_dirs() -> dict[str, Path]:
    """Every package of the distribution and the folder of the checkout that holds it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools.get("package-dir", {})
    result: dict[str, Path] = {}
    for package in setuptools["packages"]:
        # The longest mapped prefix wins, as in setuptools; unmapped packages follow their name.
        base = max(
            (p for p in mapping if package == p or package.startswith(p + ".")),
            key=len,
            default=None,
        )
        if base is None:
            result[package] = ROOT / package.replace(".", "/")
        else:
            rest = package[len(base) :].lstrip(".").replace(".", "/")
            result[package] = ROOT / mapping[base] / rest
    return result


def expected_modules() -> set[str]:
    """The modules mypy must check: every ``.py`` file of every non-generated package."""
    modules: set[str] = set()
    for package, folder in package_dirs().items():
        if GENERATED.match(package):
            continue
        for file in folder.glob("*.py"):
            modules.add(package if file.stem == "__init__" else f"{package}.{file.stem}")
    return modules


def build_tree() -> dict[Path, Path]:
    """Lay out the ``aistream`` package as installed under ``.typecheck/`` (symlinks to the
    checkout's files); returns each link folder → the checkout folder it mirrors."""
    shutil.rmtree(TREE, ignore_errors=True)
    mirrors: dict[Path, Path] = {}
    for package, folder in package_dirs().items():
        if not package.startswith("aistream.") and package != "aistream":
            continue
        target = TREE / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        mirrors[target] = folder
        for file in folder.iterdir():
            if file.is_file() and (file.suffix in (".py", ".pyi") or file.name == "py.typed"):
                (target / file.name).symlink_to(file)
    return mirrors


def main(argv: list[str]) -> int:
    mirrors = build_tree()
    with tempfile.TemporaryDirectory() as report:
        env = dict(os.environ, MYPYPATH=str(TREE))
        done = subprocess.run(
            [sys.executable, "-m", "mypy", "--linecount-report", report, *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        out = done.stdout + done.stderr
        # Longest first, so aistream/generator/ maps before aistream/.
        for link, folder in sorted(mirrors.items(), key=lambda m: -len(str(m[0]))):
            relative_link = os.path.relpath(link, ROOT) + "/"
            out = out.replace(relative_link, os.path.relpath(folder, ROOT) + "/")
        sys.stdout.write(out)
        if done.returncode != 0:
            return done.returncode
        lines = (Path(report) / "linecount.txt").read_text().splitlines()[1:]
        checked = {line.split()[-1] for line in lines}
    missing = expected_modules() - checked
    if missing:
        print(f"typecheck: mypy did not check {len(missing)} module(s): {sorted(missing)}")
        return 1
    print(f"typecheck: mypy --strict checked all {len(checked)} modules of the aistream package")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

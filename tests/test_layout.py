"""The package layout: one import name, every module seen by the tools, services below the CLI."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from typecheck import GENERATED, expected_modules, package_dirs

SERVICES = ("aistream.generator", "aistream.bridge")
ABOVE_SERVICES = {"aistream.cli", "aistream.__main__"}
"""The command line starts the services; nothing else outside a service may import one."""


def _source_files() -> dict[str, Path]:
    """Module name → file, for every hand-written module of the distribution."""
    files: dict[str, Path] = {}
    for package, folder in package_dirs().items():
        if GENERATED.match(package):
            continue
        for file in folder.glob("*.py"):
            files[package if file.stem == "__init__" else f"{package}.{file.stem}"] = file
    return files


def _imports(file: Path) -> set[str]:
    """Every absolute module name ``file`` imports (also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_every_module_imports_under_the_aistream_name() -> None:
    """Each source file is importable as its ``aistream.…`` module, from that very file."""
    files = _source_files()
    assert set(files) == expected_modules()
    assert len(files) >= 30  # aistream/, generator/, bridge/ — not one folder alone
    for name, file in files.items():
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        assert Path(module.__file__ or "").resolve() == file.resolve(), name


def test_no_top_level_service_names() -> None:
    """Nothing imports ``generator`` or ``bridge`` as top-level modules (the wheel has none)."""
    for path in [*ROOT.glob("*/**/*.py")]:
        if {".venv", "node_modules", ".typecheck", "build"} & set(path.parts):
            continue
        bad = {n for n in _imports(path) if n.split(".")[0] in ("generator", "bridge")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_services_sit_below_the_command_line() -> None:
    """Shared modules import no service; a service imports no other service."""
    for name, file in _source_files().items():
        own = next((s for s in SERVICES if name == s or name.startswith(s + ".")), None)
        for imported in _imports(file):
            service = next(
                (s for s in SERVICES if imported == s or imported.startswith(s + ".")), None
            )
            if service is None or service == own:
                continue
            assert name in ABOVE_SERVICES, f"{name} imports the service module {imported}"


def test_ruff_lints_every_module() -> None:
    """Ruff's file list holds every source module of the package (none hidden by the mapping)."""
    ruff = Path(sys.executable).parent / "ruff"
    shown = subprocess.run(
        [str(ruff), "check", "--show-files", "."], cwd=ROOT, capture_output=True, text=True
    ).stdout
    linted = {Path(line.strip()).resolve() for line in shown.splitlines() if line.strip()}
    missing = [str(f) for f in _source_files().values() if f.resolve() not in linted]
    assert not missing, missing

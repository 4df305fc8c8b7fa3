"""The schema is the source of truth: buf lint, buf breaking, and generated code that is current."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
GENERATED = ("aistream/v1", "aistream_client", "webclient/src/generated")


def buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the buf CLI from the project's virtualenv."""
    exe = shutil.which("buf", path=ENV["PATH"])
    assert exe is not None, "buf is not installed (pip install buf-bin)"
    return subprocess.run(
        [exe, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120
    )


def test_buf_lint_standard_is_clean() -> None:
    """`buf lint` (STANDARD rules) reports nothing."""
    result = buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_main() -> None:
    """`buf breaking` against the main branch finds no wire- or source-breaking change."""
    has_main = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "main"], cwd=ROOT, capture_output=True
    )
    if has_main.returncode != 0:
        pytest.fail("no local 'main' branch to compare the schema against")
    result = buf("breaking", "--against", ".git#branch=main")
    assert result.returncode == 0, result.stdout + result.stderr


def _files(root: Path) -> set[str]:
    found = set()
    for sub in GENERATED:
        base = root / sub
        if base.is_dir():
            found |= {
                p.relative_to(root).as_posix()
                for p in base.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            }
    return found - {"aistream/v1/__init__.py"}  # hand-written package marker


def test_generated_code_is_what_buf_generate_makes(tmp_path: Path) -> None:
    """Running `buf generate` now would not change any committed generated file."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "generate.sh"), str(tmp_path)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fresh, committed = _files(tmp_path), _files(ROOT)
    assert fresh == committed, f"stale or missing generated files: {fresh ^ committed}"
    changed = [f for f in sorted(fresh) if not filecmp.cmp(tmp_path / f, ROOT / f, shallow=False)]
    assert not changed, f"generated files differ from buf generate: {changed}"


def test_stream_batched_is_deprecated_and_still_served_by_the_schema() -> None:
    """Of the three RPCs only StreamBatched is retired, the buf way: deprecated, not removed."""
    from aistream.v1 import generator_pb2

    service = generator_pb2.DESCRIPTOR.services_by_name["Generator"]
    assert {m.name for m in service.methods} == {"Stream", "StreamBatched", "StreamBatches"}
    assert {m.name for m in service.methods if m.GetOptions().deprecated} == {"StreamBatched"}

"""The soak script, short: mixed load with faults on real processes, then the books balance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_short_soak_has_no_violations_and_leaves_nothing_open(tmp_path: Path) -> None:
    """8 s of completions, cancels, closes, slow readers and upstream faults: zero lifecycle
    violations, zero upstream responses or connections left open, clean exits."""
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--seconds", "8", "--workers", "6", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["actions"] > 0
    assert report["lifecycle_violations"] == 0
    assert report["upstream_responses_in_progress_after_load"] == 0
    assert report["upstream_connections_open_after_stop"] == 0
    outcomes = report["requests_by_outcome"]
    assert outcomes.get("done", 0) > 0
    assert not [k for k in outcomes if k.startswith("client_failure")], outcomes

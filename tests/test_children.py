"""Starting a child process and waiting for its ready line (aistream.children)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import UNIT

from aistream.children import AsyncChild, Child, ChildError

READY = r"ready on port (\d+)"


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_ready_line_is_matched_and_later_lines_are_read() -> None:
    """The ready line's match is kept; later stdout lines come from ``line``, then the exit."""
    child = Child(
        _python("print('ready on port 42', flush=True); input(); print('bye')"),
        READY,
        name="child",
        timeout=10 * UNIT,
    )
    try:
        assert child.ready[1] == "42"
        assert child.popen.stdin is not None
        child.popen.stdin.write("go\n")
        child.popen.stdin.flush()
        assert child.line(10 * UNIT) == "bye\n"
        with pytest.raises(ChildError) as caught:
            child.line(10 * UNIT)
        assert (caught.value.reason, caught.value.returncode) == ("exited", 0)
    finally:
        assert child.stop() == 0


def test_child_that_exits_first_says_its_code_and_stderr(tmp_path: Path) -> None:
    """A child that exits before its ready line: ChildError with its exit code and stderr end."""
    code = "import sys; print('no such upstream', file=sys.stderr); sys.exit(3)"
    with pytest.raises(ChildError) as caught:
        Child(_python(code), READY, name="child", log=tmp_path / "child.log", timeout=10 * UNIT)
    error = caught.value
    assert (error.reason, error.returncode) == ("exited", 3)
    assert error.tail == ["no such upstream"]
    assert "child exited with code 3 before its ready line: no such upstream" in str(error)


def test_child_that_prints_something_else_is_killed() -> None:
    """A first line that is not the ready line: ChildError naming it; the child is killed."""
    code = "import time; print('garbage', flush=True); time.sleep(60)"
    with pytest.raises(ChildError) as caught:
        Child(_python(code), READY, name="child", timeout=10 * UNIT)
    error = caught.value
    assert (error.reason, error.line, error.returncode) == ("unexpected", "garbage\n", None)
    assert "printed 'garbage\\n' before its ready line" in str(error)


def test_silent_child_times_out() -> None:
    """A child that says nothing within the timeout: ChildError ``silent``."""
    with pytest.raises(ChildError) as caught:
        Child(_python("import time; time.sleep(60)"), READY, name="child", timeout=0.2)
    assert caught.value.reason == "silent"


async def test_async_flavour_matches_and_reports_the_exit_code() -> None:
    """``AsyncChild.start``: the ready match on success; exit code 4 when the child exits first."""
    ok = await AsyncChild.start(
        _python("import sys; print('ready on port 7', flush=True); sys.stdin.read()"),
        READY,
        name="child",
        timeout=10 * UNIT,
    )
    assert ok.ready[1] == "7"
    assert ok.process.stdin is not None
    ok.process.stdin.close()  # the child reads to the end of its stdin, then exits
    assert await ok.process.wait() == 0
    with pytest.raises(ChildError) as caught:
        await AsyncChild.start(
            _python("raise SystemExit(4)"), READY, name="child", timeout=10 * UNIT
        )
    assert (caught.value.reason, caught.value.returncode) == ("exited", 4)

"""Child processes of the harness and what they cost: start, talk by lines, CPU and RSS, stop.

Every server and load client is a separate process (``python -m …``), an
``aistream.children.Child``: ready when it prints its listening line, its stdout read on a thread
(so waiting for a line has a timeout), its stderr in a log file whose end ``ChildError`` quotes
when it dies. ``Meter`` samples CPU time and RSS of a set of children over a measuring window
(psutil): CPU is reported in percent of one core, RSS at the end and at its peak.
"""

from __future__ import annotations

import atexit
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

from aistream import children
from aistream.children import ChildError

__all__ = ["ROOT", "Child", "ChildError", "Meter", "raise_fd_limit", "wait_quiet"]

ROOT = Path(__file__).resolve().parent.parent
_LOGS = Path(tempfile.gettempdir()) / "aistream-bench-logs"
_LIVE: set[Child] = set()
"""Children not stopped yet: stopped at exit, so an interrupted run leaves no server behind."""


@atexit.register
def _stop_all() -> None:
    for child in list(_LIVE):
        child.stop(5)


def _busy_seconds() -> float:
    """CPU seconds spent by the whole machine (all cores) so far."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))


def wait_quiet(
    ours: Mapping[str, psutil.Process], limit: float = 25.0, patience: float = 30.0
) -> float:
    """Wait (up to ``patience`` s) until processes other than ``ours`` use less than ``limit`` %
    of one core over a second; return the last such figure. Other work on a shared machine would
    otherwise be measured as ours."""
    if patience <= 0:
        return 0.0
    deadline = time.monotonic() + patience
    while True:
        busy0, ours0, t0 = _busy_seconds(), _sum_cpu(ours), time.monotonic()
        time.sleep(1.0)
        elapsed = time.monotonic() - t0
        others = 100 * ((_busy_seconds() - busy0) - (_sum_cpu(ours) - ours0)) / elapsed
        if others < limit or time.monotonic() > deadline:
            return round(max(0.0, others), 1)


def _sum_cpu(processes: Mapping[str, psutil.Process]) -> float:
    total = 0.0
    for process in processes.values():
        try:
            t = process.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def raise_fd_limit() -> None:
    """Raise this process's open-file limit to its hard limit (10k connections need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Child(children.Child):
    """One harness child, ``python -m module args`` run from the checkout: its stderr in a log
    file, its stdout read line by line, stopped at exit if still running."""

    def __init__(
        self,
        name: str,
        module: str,
        args: list[str],
        ready: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Start ``python -m module args`` and wait for a stdout line matching ``ready``."""
        _LOGS.mkdir(exist_ok=True)
        super().__init__(
            [sys.executable, "-m", module, *args],
            ready,
            name=name,
            env=env,
            cwd=ROOT,
            log=_LOGS / f"{name}.log",
            timeout=timeout,
            preexec_fn=raise_fd_limit,
        )
        _LIVE.add(self)
        self.process = psutil.Process(self.popen.pid)

    def event(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the JSON line ``{"event": name, …}`` (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(0.01, deadline - time.monotonic()))
            if line.startswith("{"):
                obj: dict[str, Any] = orjson.loads(line)
                if obj.get("event") == name:
                    return obj

    def send(self, line: str) -> None:
        """Write one line to the child's stdin."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait (SIGKILL after ``timeout``); the exit code."""
        _LIVE.discard(self)
        return super().stop(timeout)


@dataclass
class _Sample:
    cpu_start: float
    rss_start: int
    rss_peak: int


@dataclass
class Meter:
    """CPU and RSS of named processes over a window, sampled on a thread every ``period`` s."""

    processes: dict[str, psutil.Process]
    period: float = 0.25
    _samples: dict[str, _Sample] = field(default_factory=dict)
    _started: float = 0.0
    _busy_start: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        """Begin the window."""
        self._started = time.monotonic()
        self._busy_start = _busy_seconds()
        for name, process in self.processes.items():
            rss = process.memory_info().rss
            self._samples[name] = _Sample(self._cpu(process), rss, rss)
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.period):
            for name, process in self.processes.items():
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                sample = self._samples[name]
                sample.rss_peak = max(sample.rss_peak, rss)

    def stop(self) -> dict[str, dict[str, float]]:
        """End the window: per process ``cpu_pct`` (of one core), ``rss_mb``, ``rss_peak_mb``;
        under ``machine``: ``cpu_pct`` of the whole machine and ``others_pct``, what processes
        outside the harness used (both in % of one core, so at most 100 × cores)."""
        elapsed = max(1e-9, time.monotonic() - self._started)
        busy = 100 * (_busy_seconds() - self._busy_start) / elapsed
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        out: dict[str, dict[str, float]] = {}
        for name, process in self.processes.items():
            sample = self._samples[name]
            try:
                cpu, rss = self._cpu(process), process.memory_info().rss
            except psutil.Error:
                continue
            out[name] = {
                "cpu_pct": round(100 * (cpu - sample.cpu_start) / elapsed, 1),
                "rss_mb": round(rss / 2**20, 1),
                "rss_peak_mb": round(max(sample.rss_peak, rss) / 2**20, 1),
                "rss_start_mb": round(sample.rss_start / 2**20, 1),
            }
        ours = sum(u["cpu_pct"] for u in out.values())
        out["machine"] = {
            "cpu_pct": round(busy, 1),
            "others_pct": round(max(0.0, busy - ours), 1),
            "rss_mb": 0.0,
        }
        return out

    def rss(self) -> dict[str, int]:
        """RSS of each process now, in bytes."""
        return {name: p.memory_info().rss for name, p in self.processes.items()}

"""Child processes that say they are ready with one stdout line.

Every aistream command prints one line once it listens (``aistream generator listening on
127.0.0.1:50123 …``); whoever starts one as a child waits for that line and reads the real port
from it. ``Child`` does so with ``subprocess.Popen``: a thread reads stdout, so the wait has a
timeout and every later line is kept for ``Child.line``. ``AsyncChild.start`` does so with asyncio,
for a parent whose event loop also watches the child exit. Either way stdin is a pipe (a child
run with ``--exit-with-parent`` exits when it closes, a harness child is sent lines on it), the
first line must match, and a child that exits, prints another line first or stays silent is
killed and reported as ``ChildError`` with its exit code and the last lines it wrote.

This module imports no service: the command line uses it at run time, the bench and tests too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

__all__ = ["AsyncChild", "Child", "ChildError"]

Reason = Literal["exited", "unexpected", "silent"]

GRACE = 0.5
"""Seconds a child that stopped talking gets to exit by itself, so its exit code can be told."""


class ChildError(RuntimeError):
    """A child process exited, printed an unexpected line, or was silent for too long."""

    def __init__(
        self,
        name: str,
        reason: Reason,
        *,
        returncode: int | None = None,
        line: str | None = None,
        tail: Sequence[str] = (),
        timeout: float = 0.0,
        before_ready: bool = False,
    ) -> None:
        self.name = name
        self.reason: Reason = reason
        self.returncode = returncode
        """The exit code, ``None`` while the child was still running (it is killed then)."""
        self.line = line
        """The unexpected line."""
        self.tail = list(tail)
        """The last lines of the child's stderr log, when it has one."""
        if reason == "exited":
            what = "closed its stdout" if returncode is None else f"exited with code {returncode}"
        elif reason == "unexpected":
            what = f"printed {line!r}"
        else:
            what = f"said nothing for {timeout:g} s"
        if before_ready:
            what += " before its ready line"
        if reason == "unexpected" and returncode is not None:
            what += f", exit code {returncode}"
        if self.tail:
            what += ": " + " | ".join(self.tail)
        super().__init__(f"{name} {what}")


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    return {**os.environ, **(env or {})}


class Child:
    """A child process, started once its first stdout line matched ``ready``; a thread reads the
    rest of its stdout line by line (so it never blocks on a full pipe), for ``line``."""

    def __init__(
        self,
        argv: Sequence[str],
        ready: str | re.Pattern[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log: Path | None = None,
        timeout: float = 30.0,
        preexec_fn: Callable[[], Any] | None = None,
    ) -> None:
        """Start ``argv`` (``env`` added to this process's environment) and wait up to
        ``timeout`` s for its ready line; ``ready.search`` of that line is kept as ``ready``.
        With ``log`` the child's stderr goes to that file (and its end into errors), else to
        this process's stderr."""
        self.name = name
        self.log = log
        pattern = re.compile(ready)
        with contextlib.ExitStack() as files:
            stderr = None if log is None else files.enter_context(log.open("w"))
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                errors="replace",
                cwd=cwd,
                env=_environment(env),
                preexec_fn=preexec_fn,
            )
        assert self.popen.stdout is not None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(
            target=self._read, args=(self.popen.stdout,), name=f"{name} stdout", daemon=True
        )
        self._reader.start()
        try:
            first = self._next(timeout, before_ready=True)
            match = pattern.search(first)
            if match is None:
                code = self._exit_code()
                raise ChildError(
                    name,
                    "unexpected",
                    line=first,
                    returncode=code,
                    tail=self.tail(),
                    before_ready=True,
                )
        except BaseException:
            self.kill()
            raise
        self.ready = match

    def _read(self, stream: IO[str]) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed under us: the end all the same
            for line in stream:
                self._lines.put(line)
        self._lines.put(None)

    def _exit_code(self) -> int | None:
        try:
            return self.popen.wait(GRACE)
        except subprocess.TimeoutExpired:
            return None

    def _next(self, timeout: float, before_ready: bool = False) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise ChildError(
                self.name, "silent", timeout=timeout, tail=self.tail(), before_ready=before_ready
            ) from None
        if line is None:
            self._lines.put(None)  # every later call ends the same way
            code = self._exit_code()
            raise ChildError(
                self.name, "exited", returncode=code, tail=self.tail(), before_ready=before_ready
            )
        return line

    def line(self, timeout: float) -> str:
        """The next stdout line; ChildError if the child exits or is silent for ``timeout`` s."""
        return self._next(timeout)

    def tail(self, lines: int = 8) -> list[str]:
        """The last lines of the child's stderr log (none without a log)."""
        if self.log is None:
            return []
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return text.strip().splitlines()[-lines:]

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout`` s); close the pipes; the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._close()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL (the child dies without any clean-up), wait, close the pipes."""
        self.popen.kill()
        self.popen.wait(10)
        self._close()

    def _close(self) -> None:
        self._reader.join(5)  # the child is gone: its stdout ends
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class AsyncChild:
    """The asyncio flavour: ``await AsyncChild.start(...)``; ``process`` is the running child.
    Its stdout is not read past the ready line (asyncio buffers what little more comes)."""

    def __init__(
        self, process: asyncio.subprocess.Process, name: str, ready: re.Match[str]
    ) -> None:
        self.process = process
        self.name = name
        self.ready = ready

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        ready: str | re.Pattern[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 30.0,
    ) -> AsyncChild:
        """Start ``argv`` (stderr: this process's) and wait up to ``timeout`` s for its ready
        line, as ``Child`` does."""
        pattern = re.compile(ready)
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_environment(env),
            cwd=cwd,
        )
        assert process.stdout is not None
        try:
            try:
                async with asyncio.timeout(timeout):
                    raw = await process.stdout.readline()
            except TimeoutError:
                raise ChildError(name, "silent", timeout=timeout, before_ready=True) from None
            line = raw.decode(errors="replace")
            match = pattern.search(line)
            if match is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), GRACE)
                raise ChildError(
                    name,
                    "unexpected" if line else "exited",
                    line=line or None,
                    returncode=process.returncode,
                    before_ready=True,
                )
        except BaseException:
            if process.returncode is None:
                process.kill()
            await process.wait()
            raise
        return cls(process, name, match)

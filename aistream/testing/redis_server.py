"""A real ``redis-server`` for tests and the bench: Debian's package (``scripts/bootstrap.sh``
installs it), started on 127.0.0.1 and a free port, with no persistence, stopped at the end.

A free port is found by binding port 0 and closing it; another process may take it before Redis
binds it, in which case Redis exits at once ("Address already in use") and a new port is tried.
``restart`` stops the server and starts a new one on the same port — empty, as a real Redis
without persistence comes back — for the tests of an outage.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

__all__ = ["RedisServer", "redis_server_path"]

_READY_TIMEOUT = 10.0
_TRIES = 5


def redis_server_path() -> str | None:
    """Where ``redis-server`` is, or None if it is not installed."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    """Whether a Redis on ``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _used_memory(port: int) -> int:
    """``used_memory`` of the Redis on ``port``."""
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0) as client:
        used: int = client.info("memory")["used_memory"]
        return used


class RedisServer:
    """One ``redis-server`` process of the caller's (``start``, ``stop``, ``restart``)."""

    def __init__(self) -> None:
        path = redis_server_path()
        if path is None:
            raise RuntimeError("redis-server is not installed (scripts/bootstrap.sh browser)")
        self._path = path
        self._dir = Path(tempfile.mkdtemp(prefix="aistream-redis-"))
        self._popen: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.empty_memory = 0
        """``used_memory`` of the server as started, before any data (for sizing figures)."""

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id, while it runs."""
        return self._popen.pid if self.running and self._popen is not None else None

    def start(self, port: int | None = None) -> RedisServer:
        """Start on ``port`` (None: a free one, retried if another process takes it first)."""
        for _ in range(_TRIES if port is None else 1):
            self.port = port or _free_port()
            if self._launch():
                return self
        raise RuntimeError(f"redis-server did not start; see {self._dir / 'redis.log'}")

    def _launch(self) -> bool:
        log = (self._dir / "redis.log").open("ab")
        with log:
            self._popen = subprocess.Popen(
                [
                    self._path,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(self._dir),
                    "--logfile",
                    "",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._popen.poll() is not None:
                return False  # (the port was taken)
            if _answers(self.port):
                self.empty_memory = _used_memory(self.port)
                return True
            time.sleep(0.02)
        self.stop()
        return False

    def used_memory(self) -> int:
        """The server's ``used_memory`` now (bytes)."""
        return _used_memory(self.port)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 5 s)."""
        popen, self._popen = self._popen, None
        if popen is None or popen.poll() is not None:
            return
        popen.terminate()
        try:
            popen.wait(5)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)

    def restart(self) -> None:
        """Stop, then start again on the same port, empty."""
        self.stop()
        self.start(self.port)

    def close(self) -> None:
        """Stop and remove the server's directory."""
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)

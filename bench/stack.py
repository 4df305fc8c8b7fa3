"""The servers of a scenario, each its own process on loopback: upstream, generator, bridge, and
the bare baselines; plus how to reach each path and read the upstream's records.

A *path* is what a load client talks to: ``aistream`` (bridge → generator → upstream), ``direct``
(the ``openai`` SDK straight to the upstream), ``bare_ws`` and ``bare_grpc`` (the hop ceilings).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import psutil
from prometheus_client.parser import text_string_to_metric_families

from aistream.testing.redis_server import RedisServer
from bench.procs import Child

__all__ = ["PATHS", "SHEDDING", "Stack"]

PATHS = ("aistream", "direct", "bare_ws", "bare_grpc")

AISTREAM_ENV = {
    "AISTREAM_LOG_LEVEL": "WARNING",
    "AISTREAM_UPSTREAM_MAX_RETRIES": "0",
    "AISTREAM_MAX_TOKENS_CAP": "10000000",
    "AISTREAM_SHED_LOOP_LAG_MS": "0",
    "OPENAI_API_KEY": "bench",
}
"""The generator and bridge run with their defaults but these: quiet logs (one INFO line per
generation would be measured too), no SDK retries, no cap on ``max_tokens`` (long streams), and
no shedding: the scenarios at a fixed concurrency measure the data path at that load, whatever
this machine's capacity is that day (1,000 streams is past it on a slow stretch); admission is
what the capacity and overload scenarios measure, with the defaults (``SHEDDING``)."""

SHEDDING: dict[str, str | None] = {"AISTREAM_SHED_LOOP_LAG_MS": None}
"""The environment that restores the product's default shedding over ``AISTREAM_ENV`` (None:
the variable is not set)."""


def metrics_off() -> None:
    """Run the generator and bridge of every later stack with metrics off (``AISTREAM_METRICS``
    false: every recording a no-op), to measure what metrics cost (``--metrics off``)."""
    AISTREAM_ENV["AISTREAM_METRICS"] = "false"


class Stack:
    """Start the servers ``paths`` need; ``stop`` (or leaving ``with Stack(...)``) ends them all."""

    def __init__(
        self,
        paths: Iterable[str],
        upstream: str = "bench",
        env: Mapping[str, str | None] | None = None,
        quiet_patience: float = 0.0,
        redis: bool = False,
    ) -> None:
        """``upstream``: ``bench`` (``bench.upstream``) or ``fake`` (the product's fake);
        ``quiet_patience``: how long a run may wait for the rest of the machine to quieten;
        ``redis``: a redis-server of the stack's own, the generator's and the bridge's
        ``redis_url`` (durable streams across nodes)."""
        self.children: dict[str, Child] = {}
        self.quiet_patience = quiet_patience
        self.redis: RedisServer | None = None
        wanted = set(paths)
        try:
            if redis:
                self.redis = RedisServer().start()
                env = {**(env or {}), "AISTREAM_REDIS_URL": self.redis.url}
            if upstream == "fake":
                self._start(
                    "upstream",
                    "aistream.testing.fake_upstream",
                    ["--port", "0"],
                    r"listening on (http://\S+)/v1",
                )
            else:
                self._start("upstream", "bench.upstream", [], r"listening on (http://\S+)/v1")
            self.upstream_kind = upstream
            self.upstream_url = self.children["upstream"].ready[1]
            if "aistream" in wanted:
                merged = {**AISTREAM_ENV, **(env or {})}
                env_all = {k: v for k, v in merged.items() if v is not None}
                env_all["OPENAI_BASE_URL"] = self.upstream_url + "/v1"
                gen = self._start(
                    "generator",
                    "aistream",
                    ["generator", "--host", "127.0.0.1", "--port", "0"],
                    r"listening on 127\.0\.0\.1:(\d+)",
                    env_all,
                )
                self._start(
                    "bridge",
                    "aistream",
                    [
                        "bridge",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        "0",
                        "--generator",
                        f"127.0.0.1:{gen.ready[1]}",
                    ],
                    r"http://127\.0\.0\.1:(\d+)/",
                    env_all,
                )
            if "bare_ws" in wanted:
                self._start("bare_ws", "bench.baselines", ["ws"], r"ws://127\.0\.0\.1:(\d+)/")
            if "bare_grpc" in wanted:
                self._start("bare_grpc", "bench.baselines", ["grpc"], r"127\.0\.0\.1:(\d+)")
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(
        self,
        name: str,
        module: str,
        args: list[str],
        ready: str,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        child = Child(name, module, args, ready, env)
        self.children[name] = child
        return child

    @property
    def upstream_port(self) -> int:
        """The upstream's TCP port."""
        return int(self.upstream_url.rsplit(":", 1)[1])

    def target(self, path: str) -> dict[str, Any]:
        """The client job fields that reach ``path``."""
        host = "127.0.0.1"
        if path == "aistream":
            return {"transport": "ws", "host": host, "port": int(self.children["bridge"].ready[1])}
        if path == "direct":
            return {"transport": "openai", "host": host, "port": self.upstream_port}
        if path == "bare_ws":
            return {"transport": "ws", "host": host, "port": int(self.children["bare_ws"].ready[1])}
        if path == "bare_grpc":
            port = int(self.children["bare_grpc"].ready[1])
            return {"transport": "grpc", "host": host, "port": port}
        raise ValueError(path)

    def processes(self) -> dict[str, psutil.Process]:
        """Every server process by name (``redis`` too, with one)."""
        found = {name: child.process for name, child in self.children.items()}
        if self.redis is not None and self.redis.pid is not None:
            found["redis"] = psutil.Process(self.redis.pid)
        return found

    def redis_memory(self) -> int | None:
        """Bytes the stack's Redis uses for data (``used_memory`` less what an empty server
        uses), or None without one."""
        if self.redis is None:
            return None
        return self.redis.used_memory() - self.redis.empty_memory

    def records(self) -> list[dict[str, Any]]:
        """The upstream's request records as ``{tag, received_at, first_token_at, closed_at,
        outcome, tokens_sent}`` (the product's fake is translated to the same shape)."""
        if self.upstream_kind == "bench":
            return list(self._get("/_bench/records"))
        out = []
        for r in self._get("/_fake/records"):
            messages = (r.get("body") or {}).get("messages") or [{}]
            prompt = str(messages[-1].get("content", ""))
            out.append(
                {
                    "tag": prompt.rsplit(" ", 1)[-1],
                    "received_at": r["received_at"],
                    "first_token_at": r["first_token_at"],
                    "closed_at": r["client_closed_at"],
                    "outcome": r["outcome"],
                    "tokens_sent": r["tokens_sent"],
                }
            )
        return out

    def bridge_metric(self, name: str, **labels: str) -> float | None:
        """The sum of the bridge's ``/metrics`` samples called ``name`` whose labels include
        ``labels`` (0 when there is none yet), or None without a bridge or with metrics off."""
        child = self.children.get("bridge")
        if child is None:
            return None
        url = f"http://127.0.0.1:{child.ready[1]}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
        if name not in text:
            return None
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def reset(self) -> None:
        """Forget the upstream's records."""
        self._get("/_bench/reset" if self.upstream_kind == "bench" else "/_fake/reset", b"")

    def _get(self, path: str, data: bytes | None = None) -> Any:
        request = urllib.request.Request(self.upstream_url + path, data=data)
        with urllib.request.urlopen(request, timeout=30) as response:
            return orjson.loads(response.read())

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every server (bridge first); their exit codes."""
        codes = {}
        for name in ("bridge", "generator", "bare_ws", "bare_grpc", "upstream"):
            child = self.children.pop(name, None)
            if child is not None:
                codes[name] = child.stop()
        if self.redis is not None:
            self.redis.close()
            self.redis = None
        return codes

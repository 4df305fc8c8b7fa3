"""The load client process: ``python -m bench.client JOB_JSON``.

One process drives many connections over one transport and records what it saw:

* ``ws``: the browser protocol (JSON frames) to the bridge or to the bare websockets baseline,
  through the lean ``bench.wsclient`` protocol;
* ``grpc``: ``Generator.Stream`` calls on one grpc.aio channel, to the bare grpc.aio baseline
  (or to the generator itself);
* ``openai``: the ``openai`` SDK's typed streaming path straight to the upstream — what a user
  would write without aistream.

Modes: ``loop`` (each connection runs generations back to back, staggered; time to the first
answer token and to the first reasoning part, gaps between part messages of either kind, and
tokens delivered are recorded inside a measuring window; a generation refused with
``too_many_requests`` counts as an error and is followed, after its hint, by the next),
``cancel`` (every connection holds one long stream; a sample of them is cancelled — or its socket
closed — one at a time and replaced, and the send time of each cancel is reported for matching
against the upstream's records), ``overload`` (``loop`` past capacity: a generation refused with
``too_many_requests`` is sent again after its ``retryAfterMs`` hint, as the web client does; the
refusals are timed and counted apart from the admitted streams; meanwhile a sample of live
streams is cancelled or closed, as in ``cancel``, and every frame goes through the lifecycle
checker), ``probe`` (beside an ``overload`` load: a few connections ask for one generation
every ``spacing`` s and time the refusals, cancelling what is admitted), ``idle`` (connections
only) and ``slow`` (streams whose reader stops reading). The client talks to the harness by
lines: it prints ``{"event": "ready"}``, waits for ``go`` on stdin, runs, and prints
``{"event": "result", …}``; ``idle`` and ``slow`` hold their connections after ``ready`` until
``stop``.

Reasoning parts (``ai:reasoning``) are parts, never answer tokens: they count in the gaps and
the messages, apart in ``reasoning``, and their first one times ``reasoning_ms``, not the TTFT.
Where the transport carries ``seq``, each request's parts (of both kinds) must follow one
another with no gap (``seq`` = the last part's ``seq + count``); a request that skips counts once
under the error ``seq_gap``.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from aistream.lifecycle import Lifecycle, LifecycleViolation
from bench.procs import raise_fd_limit
from bench.spec import StreamSpec
from bench.wsclient import WsClient, connect

__all__ = ["Tracker", "main"]


@dataclass(slots=True)
class _Request:
    sent_at: float
    done: asyncio.Future[str]
    first_at: float | None = None
    """When the first answer token arrived."""
    reasoning_at: float | None = None
    """When the first reasoning part arrived."""
    last_at: float | None = None
    """When the last part (of either kind) arrived."""
    tokens: int = 0
    next_seq: int = 0
    """The ``seq`` the next part must have."""
    seq_gap: bool = False


@dataclass
class Tracker:
    """Per-request accounting shared by every transport: TTFT, time to the first reasoning part,
    gaps between parts, tokens in the window, seq continuity."""

    window: tuple[float, float] = (0.0, float("inf"))
    requests: dict[str, _Request] = field(default_factory=dict)
    ttft_ms: list[float] = field(default_factory=list)
    """Sent → first answer token, for requests sent inside the window."""
    reasoning_ms: list[float] = field(default_factory=list)
    """Sent → first reasoning part, for requests sent inside the window."""
    gaps_ms: list[float] = field(default_factory=list)
    """Between two consecutive parts (of either kind) of a request, inside the window."""
    tokens: int = 0
    """Answer tokens received inside the window."""
    reasoning: int = 0
    """Reasoning tokens received inside the window."""
    messages: int = 0
    """Part messages (answer or reasoning) received inside the window."""
    completed: int = 0
    timeline: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Request id → (sent, first part received), for requests sent inside the window."""
    errors: dict[str, int] = field(default_factory=dict)
    benign: frozenset[str] = frozenset()
    """Outcomes that are not errors (``overload``: refusals, cancels, closes): counted in
    ``outcomes`` for requests sent inside the window."""
    outcomes: dict[str, int] = field(default_factory=dict)
    refused_ms: list[float] = field(default_factory=list)
    """Sent → ``too_many_requests``, for requests sent inside the window."""
    started: int = 0
    """Generations sent inside the window that got their ``ai:start`` (admitted)."""
    violations: list[str] = field(default_factory=list)
    """What the lifecycle checker found wrong (``overload``)."""
    hints: dict[str, int] = field(default_factory=dict)
    first_seq: int = 0
    """The first part's ``seq``: 1 for resumable generations (their start is position 0)."""
    tokens_of: dict[str, str] = field(default_factory=dict)
    """Request id → its ``resumeToken`` (``resume`` mode)."""
    """Request id → the ``retryAfterMs`` of the error that ended it (taken by the caller)."""

    def begin(self, request_id: str, now: float) -> asyncio.Future[str]:
        """A generation was just requested; the future resolves with how it ended."""
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.requests[request_id] = _Request(now, done, next_seq=self.first_seq)
        return done

    def token(self, request_id: str, count: int, now: float, seq: int | None = None) -> None:
        """An answer part of ``count`` tokens (at ``seq``, if known) of ``request_id`` arrived at
        ``now``."""
        req = self.requests.get(request_id)
        if req is None:
            return
        inside = self._part(request_id, req, count, now, seq)
        if req.first_at is None:
            req.first_at = now
            if self.window[0] <= req.sent_at <= self.window[1]:
                self.ttft_ms.append(round((now - req.sent_at) * 1000, 3))
        req.tokens += count
        if inside:
            self.tokens += count

    def reasoning_part(
        self, request_id: str, count: int, now: float, seq: int | None = None
    ) -> None:
        """A reasoning part of ``count`` tokens (at ``seq``, if known) of ``request_id`` arrived
        at ``now``."""
        req = self.requests.get(request_id)
        if req is None:
            return
        inside = self._part(request_id, req, count, now, seq)
        if req.reasoning_at is None:
            req.reasoning_at = now
            if self.window[0] <= req.sent_at <= self.window[1]:
                self.reasoning_ms.append(round((now - req.sent_at) * 1000, 3))
        if inside:
            self.reasoning += count

    def _part(
        self, request_id: str, req: _Request, count: int, now: float, seq: int | None
    ) -> bool:
        """What every part counts for (gap, message, timeline, seq); whether it is inside the
        window."""
        lo, hi = self.window
        inside = lo <= now <= hi
        if req.last_at is None:
            if lo <= req.sent_at <= hi:
                self.timeline[request_id] = (req.sent_at, now)
        elif inside:
            self.gaps_ms.append(round((now - req.last_at) * 1000, 3))
        req.last_at = now
        if seq is not None:
            if seq != req.next_seq and not req.seq_gap:
                req.seq_gap = True
                self.errors["seq_gap"] = self.errors.get("seq_gap", 0) + 1
            req.next_seq = seq + count
        if inside:
            self.messages += 1
        return inside

    def start(self, request_id: str) -> None:
        """``request_id`` was admitted (its ``ai:start``)."""
        req = self.requests.get(request_id)
        if req is not None and self.window[0] <= req.sent_at <= self.window[1]:
            self.started += 1

    def end(self, request_id: str, outcome: str, retry_after_ms: int | None = None) -> None:
        """The generation ended: ``done``, or an error code (``too_many_requests`` with its
        hint)."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return
        now = time.monotonic()
        lo, hi = self.window
        if outcome in self.benign:
            if lo <= req.sent_at <= hi:
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
                if outcome == "too_many_requests":
                    self.refused_ms.append(round((now - req.sent_at) * 1000, 3))
        elif now > hi + 0.1:
            pass  # cut short by the end of the window: not an error
        elif outcome == "done":
            self.completed += 1
        else:
            self.errors[outcome] = self.errors.get(outcome, 0) + 1
        if retry_after_ms is not None:
            self.hints[request_id] = retry_after_ms
        if not req.done.done():
            req.done.set_result(outcome)

    def first_token(self, request_id: str) -> bool:
        """Whether ``request_id`` has received a part."""
        req = self.requests.get(request_id)
        return req is not None and req.last_at is not None


# --- transports -------------------------------------------------------------------------------


class Conn:
    """One connection of some transport: start and cancel generations, close."""

    async def open(self) -> None:
        """Open the connection (for transports that have one up front)."""

    def generate(self, request_id: str, prompt: str) -> None:
        """Ask for a generation."""
        raise NotImplementedError

    def cancel(self, request_id: str) -> None:
        """Cancel a generation."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection (cancelling what runs on it)."""

    def pause_reading(self) -> None:
        """Stop reading."""
        raise NotImplementedError


class WsConn(Conn):
    """The browser protocol over the lean WebSocket client; with ``check``, every frame goes
    through the product's lifecycle checker (strict: each start and rejection answers a
    generate), a violation counting once per connection under the error ``lifecycle``."""

    def __init__(
        self,
        tracker: Tracker,
        host: str,
        port: int,
        path: str,
        rcvbuf: int = 0,
        check: bool = False,
    ) -> None:
        self._tracker = tracker
        self._address = (host, port, path)
        self._rcvbuf = rcvbuf
        self.ws: WsClient | None = None
        self._lifecycle: Lifecycle | None = Lifecycle(strict=True) if check else None
        self.resumable = False
        """Ask for resumable generations."""

    async def open(self) -> None:
        host, port, path = self._address
        self.ws = await connect(host, port, path, self._on_message, self._rcvbuf)

    def _on_message(self, payload: bytes, now: float) -> None:
        frame = orjson.loads(payload)
        kind = frame.get("type")
        if self._lifecycle is not None:
            self._check(frame)
        if kind == "ai:token":
            count = frame.get("count") or 1
            self._tracker.token(frame["requestId"], count, now, frame.get("seq"))
        elif kind == "ai:reasoning":
            count = frame.get("count") or 1
            self._tracker.reasoning_part(frame["requestId"], count, now, frame.get("seq"))
        elif kind == "ai:start":
            self._tracker.start(frame["requestId"])
            if "resumeToken" in frame:
                self._tracker.tokens_of[frame["requestId"]] = frame["resumeToken"]
        elif kind == "ai:done":
            self._tracker.end(frame["requestId"], "done")
        elif kind == "ai:error":
            code = str(frame.get("code", "error"))
            self._tracker.end(frame.get("requestId", ""), code, frame.get("retryAfterMs"))

    def _check(self, frame: dict[str, Any]) -> None:
        kind = str(frame.get("type", ""))[3:]
        if kind not in _CHECKED:
            return
        lifecycle = self._lifecycle
        assert lifecycle is not None
        try:
            lifecycle.observe(
                kind,  # type: ignore[arg-type]  # one of _CHECKED
                str(frame.get("requestId", "")),
                int(frame.get("seq") or 0),
                int(frame.get("count") or 1),
            )
        except LifecycleViolation as exc:
            errors = self._tracker.errors
            errors["lifecycle"] = errors.get("lifecycle", 0) + 1
            self._tracker.violations.append(str(exc))
            self._lifecycle = None  # once per connection: the rest would follow from it

    def generate(self, request_id: str, prompt: str) -> None:
        assert self.ws is not None
        if self._lifecycle is not None:
            self._lifecycle.expect(request_id)
        frame = {"type": "ai:generate", "requestId": request_id, "prompt": prompt}
        if self.resumable:
            frame["resumable"] = True
        self.ws.send_text(orjson.dumps(frame))

    def resume(self, request_id: str, token: str, after_seq: int) -> None:
        """Follow a resumable generation again from ``after_seq``."""
        assert self.ws is not None
        frame = {
            "type": "ai:resume",
            "requestId": request_id,
            "resumeToken": token,
            "afterSeq": after_seq,
        }
        self.ws.send_text(orjson.dumps(frame))

    def abort(self) -> None:
        """Drop the connection with no close frame (a phone changing networks)."""
        if self.ws is not None:
            self.ws.abort()

    def cancel(self, request_id: str) -> None:
        assert self.ws is not None
        if self._lifecycle is not None:
            self._lifecycle.cancel(request_id)
        self.ws.send_text(orjson.dumps({"type": "ai:cancel", "requestId": request_id}))

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()

    def pause_reading(self) -> None:
        assert self.ws is not None
        self.ws.pause_reading()


_CHECKED = frozenset({"start", "token", "reasoning", "done", "error"})
"""The frame kinds (``ai:`` dropped) the lifecycle checker is given."""


class GrpcConn(Conn):
    """One ``Generator.Stream`` call; a reader task feeds the tracker."""

    def __init__(self, tracker: Tracker, stub: Any) -> None:
        from aistream.v1 import events_pb2

        self._pb = events_pb2
        self._tracker = tracker
        self._call = stub.Stream()
        self._reader = asyncio.create_task(self._read())
        self._writes: asyncio.Queue[Any] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write())

    async def _read(self) -> None:
        tracker = self._tracker
        try:
            async for event in self._call:
                now = time.monotonic()
                kind = event.WhichOneof("event")
                if kind == "token":
                    part = event.token
                    tracker.token(part.request_id, part.count or 1, now, part.seq)
                elif kind == "reasoning":
                    part = event.reasoning
                    tracker.reasoning_part(part.request_id, part.count or 1, now, part.seq)
                elif kind == "done":
                    tracker.end(event.done.request_id, "done")
                elif kind == "error":
                    tracker.end(event.error.request_id, f"code{event.error.code}")
        except Exception:  # the call was cancelled by close(); nothing to record
            return

    async def _write(self) -> None:
        while True:
            await self._call.write(await self._writes.get())

    def generate(self, request_id: str, prompt: str) -> None:
        pb = self._pb
        generate = pb.Generate(request_id=request_id, prompt=prompt)
        self._writes.put_nowait(pb.ClientEvent(generate=generate))

    def cancel(self, request_id: str) -> None:
        pb = self._pb
        self._writes.put_nowait(pb.ClientEvent(cancel=pb.Cancel(request_id=request_id)))

    def close(self) -> None:
        self._writer.cancel()
        self._call.cancel()


class OpenAIConn(Conn):
    """Streams through the ``openai`` SDK's typed chunks, one task per generation."""

    def __init__(self, tracker: Tracker, client: Any) -> None:
        self._tracker = tracker
        self._client = client
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def generate(self, request_id: str, prompt: str) -> None:
        task = asyncio.create_task(self._stream(request_id, prompt))
        self._tasks[request_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(request_id, None))

    async def _stream(self, request_id: str, prompt: str) -> None:
        tracker = self._tracker
        try:
            stream = await self._client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": prompt}], stream=True
            )
            async with stream:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        tracker.token(request_id, 1, time.monotonic())
            tracker.end(request_id, "done")
        except asyncio.CancelledError:
            tracker.end(request_id, "cancelled")
        except Exception as exc:
            tracker.end(request_id, type(exc).__name__)

    def cancel(self, request_id: str) -> None:
        task = self._tasks.get(request_id)
        if task is not None:
            task.cancel()  # leaves `async with stream`, which closes the HTTP response

    def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()


def _conn_factory(job: dict[str, Any], tracker: Tracker) -> Callable[[], Conn]:
    kind = job["transport"]
    if kind == "ws":
        host, port, path = job["host"], job["port"], job.get("path", "/ws")
        rcvbuf, check = int(job.get("rcvbuf", 0)), bool(job.get("check", False))
        resumable = bool(job.get("resumable", False))
        tracker.first_seq = 1 if resumable else 0

        def make() -> WsConn:
            conn = WsConn(tracker, host, port, path, rcvbuf, check)
            conn.resumable = resumable
            return conn

        return make
    if kind == "grpc":
        import grpc

        from aistream.v1 import generator_pb2_grpc

        channel = grpc.aio.insecure_channel(f"{job['host']}:{job['port']}")
        stub = generator_pb2_grpc.GeneratorStub(channel)
        return lambda: GrpcConn(tracker, stub)
    if kind == "openai":
        import openai

        client = openai.AsyncOpenAI(
            base_url=f"http://{job['host']}:{job['port']}/v1", api_key="bench", max_retries=0
        )
        return lambda: OpenAIConn(tracker, client)
    raise ValueError(f"unknown transport {kind!r}")


# --- modes ------------------------------------------------------------------------------------


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


async def _wait_line(expected: str) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == expected:
            return


async def _open_all(conns: list[Conn], parallel: int = 200) -> None:
    limit = asyncio.Semaphore(parallel)

    async def one(conn: Conn) -> None:
        async with limit:
            await conn.open()

    await asyncio.gather(*(one(c) for c in conns))


async def _loop_mode(job: dict[str, Any], tracker: Tracker, conns: list[Conn]) -> dict[str, Any]:
    spec = StreamSpec(**job["spec"])
    stagger, warmup, duration = job["stagger"], job["warmup"], job["duration"]
    prefix = job["prefix"]
    start = time.monotonic()
    tracker.window = (start + warmup, start + warmup + duration)
    stop_at = tracker.window[1]

    rng = random.Random(prefix)

    async def run(i: int, conn: Conn) -> None:
        await asyncio.sleep(stagger * i / max(1, len(conns)))
        k = 0
        while time.monotonic() < stop_at:
            rid = f"{prefix}{i}-{k}"
            k += 1
            done = tracker.begin(rid, time.monotonic())
            conn.generate(rid, spec.prompt(rid))
            if await done == "too_many_requests":  # (shed: it counts as an error here)
                await _back_off(tracker.hints.pop(rid, 1000), rng)

    runners = [asyncio.create_task(run(i, c)) for i, c in enumerate(conns)]
    # generations still running when the window ends are cut short by closing the connections
    await asyncio.sleep(max(0.0, stop_at - time.monotonic()) + 0.2)
    for runner in runners:
        runner.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
    return {"window_s": duration}


async def _one_stream_each(
    job: dict[str, Any], tracker: Tracker, conns: list[Conn], suffix: str = ""
) -> list[str]:
    """Start one stream of ``job["spec"]`` on each connection, spread over ``job["ramp"]`` s,
    and wait until every one is live (a first token seen), or as many as are after
    ``live_timeout``; their request ids."""
    spec = StreamSpec(**job["spec"])
    prefix = job["prefix"]
    current: list[str] = []
    ramp = job.get("ramp", 0.0) / max(1, len(conns))
    began = time.monotonic()
    for i, conn in enumerate(conns):
        rid = f"{prefix}{i}{suffix}"
        tracker.begin(rid, time.monotonic())
        conn.generate(rid, spec.prompt(rid))
        current.append(rid)
        delay = began + (i + 1) * ramp - time.monotonic()  # absolute schedule: a busy loop
        if delay > 0:  # catches up instead of adding its lag to every step
            await asyncio.sleep(delay)
    deadline = time.monotonic() + job.get("live_timeout", 120.0)
    # polling a counter the protocol callbacks update: cheaper than an event per token
    while time.monotonic() < deadline and not all(tracker.first_token(r) for r in current):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return current


async def _cancel_mode(
    job: dict[str, Any], tracker: Tracker, conns: list[Conn], factory: Callable[[], Conn]
) -> dict[str, Any]:
    spec = StreamSpec(**job["spec"])
    prefix, how = job["prefix"], job["how"]  # how: "cancel" | "close"
    current = await _one_stream_each(job, tracker, conns, "-0")
    live = [i for i, rid in enumerate(current) if tracker.first_token(rid)]
    _say({"event": "live", "live": len(live)})
    await _wait_line("go")
    sent: dict[str, float] = {}
    began = time.monotonic()
    step = max(1, len(live) // max(1, job["samples"]))
    for n, i in enumerate(live[::step][: job["samples"]]):
        rid = current[i]
        sent[rid] = time.monotonic()
        if how == "cancel":
            conns[i].cancel(rid)
        else:
            conns[i].close()
            conns[i] = factory()
            await conns[i].open()
        # keep the number of live streams where it was
        new = f"{prefix}{i}-{n + 1}"
        tracker.begin(new, time.monotonic())
        conns[i].generate(new, spec.prompt(new))
        current[i] = new
        # absolute schedule: a saturated loop catches up instead of stretching the sampling
        await asyncio.sleep(max(0.0, began + (n + 1) * job["spacing"] - time.monotonic()))
    await asyncio.sleep(0.5)
    return {"sent": sent, "live": len(live)}


async def _back_off(hint_ms: int, rng: random.Random) -> None:
    """Wait before sending a refused generation again, as the web client does: the hint (1 s
    when there is none: a limit, not shedding) plus up to a fifth more (at least 100 ms) at
    random, so clients refused together do not all come back together."""
    await asyncio.sleep((hint_ms + rng.random() * max(hint_ms * 0.2, 100)) / 1000)


async def _overload_mode(
    job: dict[str, Any], tracker: Tracker, conns: list[Conn], factory: Callable[[], Conn]
) -> dict[str, Any]:
    """``loop`` past capacity. A generation refused with ``too_many_requests`` is sent again
    after its hint plus up to a fifth of it (at least 100 ms) at random, as the web client does;
    the window's admitted and refused generations are counted apart. From the window's start, a
    sample of live streams is cancelled (even samples) or has its connection closed and replaced
    (odd ones) every ``spacing`` s: their send times are reported for matching against the
    upstream's records."""
    spec = StreamSpec(**job["spec"])
    stagger, warmup, duration = job["stagger"], job["warmup"], job["duration"]
    prefix = job["prefix"]
    tracker.benign = frozenset({"too_many_requests", "cancelled", "closed"})
    start = time.monotonic()
    tracker.window = (start + warmup, start + warmup + duration)
    stop_at = tracker.window[1]
    current: list[str | None] = [None] * len(conns)
    rng = random.Random(prefix)

    async def run(i: int) -> None:
        await asyncio.sleep(stagger * i / max(1, len(conns)))
        k = 0
        while time.monotonic() < stop_at:
            rid = f"{prefix}{i}-{k}"
            k += 1
            done = tracker.begin(rid, time.monotonic())
            current[i] = rid
            conns[i].generate(rid, spec.prompt(rid))
            outcome = await done
            current[i] = None
            if outcome == "too_many_requests":
                await _back_off(tracker.hints.pop(rid, 1000), rng)

    cancels: dict[str, float] = {}
    closes: dict[str, float] = {}

    async def sample() -> None:
        await asyncio.sleep(max(0.0, tracker.window[0] - time.monotonic()))
        began = time.monotonic()
        for n in range(job["samples"]):
            live = [i for i, rid in enumerate(current) if rid and tracker.first_token(rid)]
            if live:
                i = rng.choice(live)
                rid = current[i]
                assert rid is not None
                if n % 2 == 0:
                    cancels[rid] = time.monotonic()
                    conns[i].cancel(rid)
                else:
                    fresh = factory()
                    await fresh.open()
                    old, conns[i] = conns[i], fresh
                    ended = current[i]  # (the sampled one may have finished meanwhile)
                    if ended == rid:
                        closes[rid] = time.monotonic()
                    old.close()
                    if ended is not None:
                        tracker.end(ended, "closed")
            await asyncio.sleep(max(0.0, began + (n + 1) * job["spacing"] - time.monotonic()))

    lags: list[float] = []
    runners = [asyncio.create_task(run(i)) for i in range(len(conns))]
    helpers = (asyncio.create_task(sample()), asyncio.create_task(_watch(tracker.window, lags)))
    await asyncio.sleep(max(0.0, stop_at - time.monotonic()) + 0.2)
    for task in (*runners, *helpers):
        task.cancel()
    await asyncio.gather(*runners, *helpers, return_exceptions=True)
    return {
        "window_s": duration,
        "cancels": cancels,
        "closes": closes,
        "refused_ms": tracker.refused_ms,
        "admitted": tracker.started,
        "outcomes": tracker.outcomes,
        "violations": tracker.violations[:10],
        "client_lags_ms": lags,
    }


async def _watch(window: tuple[float, float], lags: list[float]) -> None:
    """This client's own loop lag in the window, every 10 ms: how late it reads what it times."""
    await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
    while time.monotonic() < window[1]:
        due = time.monotonic() + 0.01
        await asyncio.sleep(0.01)
        lags.append(round(max(0.0, time.monotonic() - due) * 1000, 3))


async def _probe_mode(job: dict[str, Any], tracker: Tracker, conns: list[Conn]) -> dict[str, Any]:
    """A refusal probe beside an ``overload`` load: from the window's start, every ``spacing``
    s one generation is asked for on the next of its few connections. A refused one is timed
    (sent → ``too_many_requests``); an admitted one is cancelled at the next tick, so the probe
    carries no streams of its own. Its loop has nothing else to do when an answer arrives: the
    refusals it times are the servers' time, where a load client reading hundreds of sockets
    adds its own lag to each."""
    spec = StreamSpec(**job["spec"])
    prefix, spacing = job["prefix"], job["spacing"]
    tracker.benign = frozenset({"too_many_requests", "cancelled"})
    start = time.monotonic()
    tracker.window = (start + job["warmup"], start + job["warmup"] + job["duration"])
    lags: list[float] = []
    watcher = asyncio.create_task(_watch(tracker.window, lags))
    await asyncio.sleep(max(0.0, tracker.window[0] - time.monotonic()))
    began = time.monotonic()
    last: tuple[Conn, str] | None = None  # the generation last asked for

    def hold_nothing() -> None:
        if last is not None and last[1] in tracker.requests:  # admitted, or not yet answered
            last[0].cancel(last[1])

    n = 0
    while time.monotonic() < tracker.window[1]:
        hold_nothing()
        conn, rid = conns[n % len(conns)], f"{prefix}{n}"
        last = (conn, rid)
        tracker.begin(rid, time.monotonic())
        conn.generate(rid, spec.prompt(rid))
        tracker.hints.clear()  # (the probe does not back off: it times, it is not a user)
        n += 1
        await asyncio.sleep(max(0.0, began + n * spacing - time.monotonic()))
    hold_nothing()
    await asyncio.sleep(0.2)  # the last answers
    watcher.cancel()
    return {
        "window_s": job["duration"],
        "refused_ms": tracker.refused_ms,
        "admitted": tracker.started,
        "outcomes": tracker.outcomes,
        "violations": tracker.violations[:10],
        "client_lags_ms": lags,
    }


async def _resume_mode(
    job: dict[str, Any], tracker: Tracker, conns: list[Conn], factory: Callable[[], Conn]
) -> dict[str, Any]:
    """Every connection holds one long resumable stream; on ``go`` every one of them drops at
    once (no close frame), opens a new connection and resumes from the last position it holds:
    the time from each resume sent to its first event, and whether that event is the next
    position (a gap or a repeat counts under ``seq_gap``). Then every stream is cancelled."""
    tracker.benign = frozenset({"cancelled"})  # (how every stream ends here)
    rids = await _one_stream_each(job, tracker, conns)
    _say({"event": "live", "live": sum(tracker.first_token(r) for r in rids)})
    await _wait_line("go")
    fresh = [factory() for _ in conns]
    await _open_all(fresh)  # (connected before the drop: what is timed is the resume)
    sent: dict[str, float] = {}
    for i, (old, new) in enumerate(zip(conns, fresh, strict=True)):
        rid = rids[i]
        req = tracker.requests.get(rid)
        token = tracker.tokens_of.get(rid)
        if req is None or token is None:
            continue
        old.abort()
        req.last_at = None  # the next event times the resume
        sent[rid] = time.monotonic()
        assert isinstance(new, WsConn)
        new.resume(rid, token, req.next_seq - 1)
    conns[:] = fresh
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and any(  # noqa: ASYNC110
        tracker.requests.get(r) is not None and tracker.requests[r].last_at is None for r in sent
    ):
        await asyncio.sleep(0.02)
    resumed_ms = []
    for rid, at in sent.items():
        req = tracker.requests.get(rid)
        if req is not None and req.last_at is not None:
            resumed_ms.append(round((req.last_at - at) * 1000, 3))
    for conn, rid in zip(conns, rids, strict=True):
        conn.cancel(rid)
    await asyncio.sleep(0.5)
    return {"resumed_ms": resumed_ms, "resumes": len(sent)}


async def _hold_mode(job: dict[str, Any], tracker: Tracker, conns: list[Conn]) -> dict[str, Any]:
    """``idle``: just connections; ``slow``: one stream each, reading stopped after a while."""
    paused = 0
    if job["mode"] == "slow":
        spec = StreamSpec(**job["spec"])
        for i, conn in enumerate(conns):
            rid = f"{job['prefix']}{i}-0"
            tracker.begin(rid, time.monotonic())
            conn.generate(rid, spec.prompt(rid))
        async with asyncio.timeout(30):
            while tracker.messages < job["read_first"] * len(conns):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        if job.get("pause", True):  # (the control run keeps reading)
            for conn in conns:
                conn.pause_reading()
            paused = len(conns)
    _say({"event": "holding", "paused": paused})
    await _wait_line("stop")
    return {"paused": paused}


async def _run(job: dict[str, Any]) -> dict[str, Any]:
    tracker = Tracker()
    if job["mode"] == "slow":
        tracker.window = (0.0, float("inf"))
    factory = _conn_factory(job, tracker)
    conns = [factory() for _ in range(job["connections"])]
    await _open_all(conns)
    _say({"event": "ready"})
    if job["mode"] == "cancel":
        extra = await _cancel_mode(job, tracker, conns, factory)
    elif job["mode"] == "overload":
        await _wait_line("go")
        extra = await _overload_mode(job, tracker, conns, factory)
    elif job["mode"] == "probe":
        await _wait_line("go")
        extra = await _probe_mode(job, tracker, conns)
    elif job["mode"] == "resume":
        tracker.window = (0.0, float("inf"))
        extra = await _resume_mode(job, tracker, conns, factory)
    elif job["mode"] in ("idle", "slow"):
        extra = await _hold_mode(job, tracker, conns)
    else:
        await _wait_line("go")
        extra = await _loop_mode(job, tracker, conns)
    for conn in conns:
        conn.close()
    await asyncio.sleep(0.05)
    result = {
        "event": "result",
        "ttft_ms": tracker.ttft_ms,
        "reasoning_ms": tracker.reasoning_ms,
        "gaps_ms": tracker.gaps_ms,
        "tokens": tracker.tokens,
        "reasoning": tracker.reasoning,
        "messages": tracker.messages,
        "completed": tracker.completed,
        "errors": tracker.errors,
        "timeline": tracker.timeline,
        **extra,
    }
    _say(result)
    # stay alive (and measurable) until the harness has read the result and stops us
    await _wait_line("exit")
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the job given as a JSON argument and print its result as one JSON line."""
    args = sys.argv[1:] if argv is None else argv
    job = orjson.loads(args[0])
    raise_fd_limit()
    asyncio.run(_run(job))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One generation: Start, its parts, exactly one terminal event. Knows nothing of gRPC.

The parts are what the upstream streams, in its order: reasoning, answer text (tokens), a
refusal, tool calls (a ToolCallStart, then ToolArgs pieces). They share one ``seq`` count, with
no gap, so a follower can tell it has everything. Tool calls and, with a ``response_format``, the
answer text are also kept (``parts.ToolCalls``, ``parts.Output``) and checked when the upstream
finishes: Done hands them over complete and valid, or the generation ends ``invalid_output``.

``Generation.run`` drives an upstream stream under three time limits that aistream decides, not the
model: the first part (of any kind: reasoning is the model at work) must come within
``first_token_timeout`` of acceptance, no gap between parts may exceed ``stall_timeout``, and
the whole generation must end within its deadline
(``deadline`` from settings, lowered by the request's ``timeout_ms``, clamped to ``max_deadline``).
Only a stream the upstream really finished ends in ``Done``; everything else ends in ``Error``.

``Generation.end`` ends it from outside (cancel, client gone, shutdown): the terminal event is
queued at once, and the owner cancels the task, which closes the upstream request on its way out.

Either way the end is told once (``_report``): one log line with the request id, model, outcome
and code, TTFT, duration, tokens and trace id, and, with tracing on, the end of the generation's
``chat {model}`` span (``aistream.tracing``; it was started on acceptance, as the child of the
Generate's ``traceparent``, and the upstream request is its child).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import orjson

from aistream import codes, tracing
from aistream.errors import UpstreamFailure
from aistream.generator.limits import TimeLimits
from aistream.generator.parts import Output, ToolCalls
from aistream.generator.upstream import (
    Abortable,
    Call,
    CallPiece,
    Delta,
    Message,
    Role,
    Upstream,
    UpstreamRequest,
)
from aistream.metrics import GENERATOR_OFF, GeneratorMetrics
from aistream.outbox import REASONING, REFUSAL, TOKEN, TOOL_ARGS, Outbox

if TYPE_CHECKING:
    from aistream.generator.followers import Relay
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb
from aistream.validation import tool_choice_of

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["Generation", "upstream_request"]

log = logging.getLogger(__name__)

_ROLES: dict[int, Role] = {
    pb.ROLE_SYSTEM: "system",
    pb.ROLE_USER: "user",
    pb.ROLE_ASSISTANT: "assistant",
    pb.ROLE_TOOL: "tool",
}
_FINISH_REASONS = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
    "function_call": pb.FINISH_REASON_TOOL_CALLS,
}
# The one line a generation's end logs (logs.py: the JSON format makes each key a field).
_END = (
    "end request_id=%s model=%s outcome=%s code=%s finish=%s ttft_ms=%s duration_ms=%d "
    "input_tokens=%d output_tokens=%d reasoning_tokens=%s tool_calls=%d usage=%s trace_id=%s"
)


def upstream_request(
    generate: pb.Generate, settings: Settings, traceparent: str = ""
) -> UpstreamRequest:
    """The upstream request for a (validated) Generate: history, then the prompt as user turn,
    tools and response format in the Chat Completions shape; ``traceparent``: the trace
    context its HTTP request carries."""
    messages = [_message(m) for m in generate.messages]
    if generate.prompt:
        messages.append(Message("user", generate.prompt))
    max_tokens = settings.max_tokens_cap
    if generate.HasField("max_tokens"):
        max_tokens = min(generate.max_tokens, max_tokens)
    choice = tool_choice_of(generate, generate.request_id)
    return UpstreamRequest(
        request_id=generate.request_id,
        messages=tuple(messages),
        model=generate.model or None,
        max_tokens=max_tokens,
        temperature=generate.temperature if generate.HasField("temperature") else None,
        traceparent=traceparent,
        tools=tuple(_tool(tool) for tool in generate.tools),
        tool_choice=(
            {"type": "function", "function": {"name": choice[5:]}}
            if choice is not None and choice.startswith("name:")
            else choice
        ),
        response_format=(
            _response_format(generate.response_format)
            if generate.HasField("response_format")
            else None
        ),
    )


def _message(message: pb.ChatMessage) -> Message:
    if not message.tool_calls and not message.tool_call_id:
        return Message(_ROLES[message.role], message.content)
    calls = tuple(Call(c.id, c.name, c.arguments) for c in message.tool_calls)
    return Message(_ROLES[message.role], message.content, calls, message.tool_call_id)


def _tool(tool: pb.Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    if tool.HasField("parameters"):
        function["parameters"] = orjson.loads(tool.parameters.text)
    return {"type": "function", "function": function}


def _response_format(fmt: pb.ResponseFormat) -> dict[str, Any]:
    if fmt.type == pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        return {"type": "json_object"}
    schema: dict[str, Any] = {
        "name": fmt.name or "response",
        "schema": orjson.loads(fmt.schema.text),
    }
    if fmt.HasField("strict"):
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


class Generation:
    """The state and task body of one accepted Generate."""

    __slots__ = (
        "_abortable",
        "_answer_at",
        "_calls",
        "_limits",
        "_metrics",
        "_model",
        "_on_end",
        "_outbox",
        "_output",
        "_reasoning_at",
        "_refusal",
        "_reported",
        "_reported_details",
        "_settings",
        "_span",
        "_upstream",
        "_upstream_open",
        "ended",
        "prompt_tokens",
        "reasoning_tokens",
        "request",
        "request_id",
        "resume_token",
        "seq",
        "started_at",
        "tokens",
    )

    def __init__(
        self,
        generate: pb.Generate,
        upstream: Upstream,
        settings: Settings,
        outbox: Outbox | Relay,
        traceparent: str = "",
        metrics: GeneratorMetrics = GENERATOR_OFF,
        resume_token: str = "",
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """``outbox``: where its events go (a resumable generation's: its ``Relay``, which
        logs them and sends them to every follower); ``traceparent``: the trace context of a
        Generate that carries none (its call's); ``metrics``: what the generation records into
        (its start, first token and end); ``resume_token``: a resumable generation's token, given
        with its Start (then every event has a position: the start 0, the parts from 1);
        ``on_end``: called once, as its terminal event is queued (its task may still be closing
        the upstream: the room it leaves is told with that event)."""
        self.request_id = generate.request_id
        self._on_end = on_end
        # The trace: the Generate's context (an invalid one is ignored), else its call's; with
        # tracing on, this generation's span joins it and the upstream request is its child.
        traceparent = tracing.incoming(generate.traceparent) or traceparent
        self._span: Span | None = None
        if tracing.enabled():
            self._span = tracing.chat_span(
                generate,
                traceparent,
                upstream.model_name(generate.model or None),
                "openai" if upstream.kind == "openai" else "aistream.simulated",
                min(generate.max_tokens or settings.max_tokens_cap, settings.max_tokens_cap),
            )
            traceparent = tracing.traceparent(self._span)
        self.request = upstream_request(generate, settings, traceparent)
        self._upstream = upstream
        self._settings = settings
        self._outbox = outbox
        loop = asyncio.get_running_loop()
        self.started_at = loop.time()
        limit = settings.deadline
        if generate.HasField("timeout_ms"):
            limit = min(generate.timeout_ms / 1000, settings.max_deadline)
        self._limits = TimeLimits(
            self.started_at,
            settings.first_token_timeout,
            settings.stall_timeout,
            self.started_at + limit,
        )
        self.resume_token = resume_token
        self.seq = 1 if resume_token else 0
        """The next part's seq (parts of every kind share it; a resumable generation's start
        takes position 0)."""
        self.tokens = 0
        """Upstream tokens streamed, of every kind (an estimate of the completion's)."""
        self.reasoning_tokens = 0
        self._answer_at: float | None = None  # the first answer part (text, call, refusal)
        self._reasoning_at: float | None = None
        self._refusal = False
        self._calls: ToolCalls | None = None  # made on the first tool-call piece
        self._output: Output | None = None
        fmt = self.request.response_format
        if fmt is not None:
            schema = fmt["json_schema"]["schema"] if fmt["type"] == "json_schema" else None
            self._output = Output(schema, settings.max_output_chars)
        self._reported: tuple[int, int] | None = None  # the upstream's usage
        self._reported_details: tuple[int | None, int | None] = (None, None)
        self.prompt_tokens = math.ceil(sum(len(m.content) for m in self.request.messages) / 4)
        self.ended = False
        self._abortable: Abortable | None = None
        self._metrics = metrics
        self._model = metrics.model(upstream.model_name(self.request.model))
        self._upstream_open = metrics.upstream()
        metrics.started()

    def start(self) -> None:
        """Queue the Start event (before the task runs, so it precedes everything else)."""
        model = self._upstream.model_name(self.request.model)
        start = pb.Start(request_id=self.request_id, model=model)
        if self.resume_token:
            start.seq = 0
            start.resume_token = self.resume_token
        self._outbox.put(pb.ServerEvent(start=start))

    def end(self, code: codes.Code, message: str, *, retryable: bool | None = None) -> bool:
        """End the generation from outside with an Error; False if it had already ended."""
        if self.ended:
            return False
        self._finish_error(code, message, retryable)
        self._upstream_open.cancelled()  # the cancel clock runs until the upstream is closed
        if self._abortable is not None:
            self._abortable.abort()  # the owner cancels the task; the upstream hears it now
        return True

    async def run(self) -> None:
        """Stream the upstream answer to the outbox and end with exactly one terminal event."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        limits = self._limits
        limits.start(task)
        finish: str | None = None
        try:
            stream = self._upstream.stream(self.request)
            if isinstance(stream, Abortable):
                self._abortable = stream
            # (counted open until the stream's block has closed it: aistream.metrics)
            async with self._upstream_open, stream as deltas:
                async for delta in deltas:
                    if delta.reasoning:
                        await self._part(REASONING, delta.reasoning, delta.reasoning_count)
                    if delta.count:
                        await self._token(delta)
                    if delta.refusal:
                        await self._part(REFUSAL, delta.refusal, 1)
                    if delta.calls:
                        await self._tool_calls(delta.calls)
                    if delta.finish_reason is not None:
                        finish = delta.finish_reason
                    if delta.prompt_tokens is not None and delta.completion_tokens is not None:
                        self._reported = (delta.prompt_tokens, delta.completion_tokens)
                        self._reported_details = (delta.reasoning_tokens, delta.cached_tokens)
                    if finish is None and self.tokens >= self.request.max_tokens:
                        # An upstream that ignores max_tokens is cut off here: the limit is
                        # ours to keep (leaving the block closes its connection).
                        log.warning("upstream ignored max_tokens request_id=%s", self.request_id)
                        finish = "length"
                        break
                # The upstream finished: say so now, before the response is released
                # (which may wait briefly for the connection to be reusable).
                self._finish_done(finish)
        except asyncio.CancelledError:
            if not limits.claimed(task):
                raise  # cancelled from outside: whoever did it has ended the generation
            if limits.slow_consumer:
                message = "the client did not read fast enough"
                self._finish_error(pb.ERROR_CODE_SLOW_CONSUMER, message, None)
            else:
                self._finish_error(pb.ERROR_CODE_TIMEOUT, limits.reason(loop.time()), None)
        except UpstreamFailure as failure:
            self._finish_error(failure.code, failure.message, failure.retryable)
        except Exception:
            log.exception("generation failed request_id=%s", self.request_id)
            self._finish_error(pb.ERROR_CODE_INTERNAL, "internal error", None)
        finally:
            limits.stop()

    async def _token(self, delta: Delta) -> None:
        """Answer text (the hot path: ``_part`` for text, without the part bookkeeping)."""
        now = asyncio.get_running_loop().time()
        self._limits.token(now)
        if self.ended:
            return
        if self._answer_at is None:
            self._answered(now)
        if self._output is not None:
            self._output.add(delta.text)
        seq = self.seq
        self.seq = seq + delta.count
        self.tokens += delta.count
        await self._put(TOKEN, delta.text, seq, delta.count, 0, now)

    async def _part(self, kind: str, text: str, count: int, index: int = 0) -> None:
        """A part of ``kind`` other than answer text: reasoning, refusal, tool-call arguments."""
        now = asyncio.get_running_loop().time()
        self._limits.token(now)  # any part is the upstream at work
        if self.ended:
            return
        count = max(count, 1)
        if kind is REASONING:
            self.reasoning_tokens += count
            if self._reasoning_at is None:
                self._reasoning_at = now
        else:
            if kind is REFUSAL:
                self._refusal = True
            if self._answer_at is None:
                self._answered(now)
        seq = self.seq
        self.seq = seq + count
        self.tokens += count
        await self._put(kind, text, seq, count, index, now)

    def _answered(self, now: float) -> None:
        """The first answer part (text, tool call or refusal) came at ``now``: the TTFT."""
        self._answer_at = now
        self._metrics.first_token(self._model, now - self.started_at)

    async def _tool_calls(self, pieces: list[CallPiece]) -> None:
        calls = self._calls
        if calls is None:
            settings = self._settings
            calls = self._calls = ToolCalls(
                settings.max_tool_calls, settings.max_tool_arguments_chars
            )
        for piece in pieces:
            start = calls.add(piece)
            if start is not None and not self.ended:
                now = asyncio.get_running_loop().time()
                self._limits.token(now)
                if self._answer_at is None:
                    self._answered(now)
                start.request_id = self.request_id
                start.seq = self.seq
                self.seq += 1
                await self._wait_for_room(
                    now, self._outbox.put_waiting(pb.ServerEvent(tool_call=start))
                )
            if piece.arguments:
                await self._part(TOOL_ARGS, piece.arguments, 1, piece.index)

    async def _put(
        self, kind: str, text: str, seq: int, count: int, index: int, now: float
    ) -> None:
        outbox = self._outbox
        if not outbox.full:
            await outbox.put_part(kind, self.request_id, text, seq, count, index)
            return
        await self._wait_for_room(
            now, outbox.put_part(kind, self.request_id, text, seq, count, index)
        )

    async def _wait_for_room(self, now: float, put: Coroutine[None, None, None]) -> None:
        if not self._outbox.full:
            await put
            return
        self._limits.pause(now)  # a slow reader downstream is not the upstream stalling
        try:
            await put
        finally:
            self._limits.resume(asyncio.get_running_loop().time())

    def _usage(self) -> pb.Usage:
        """The upstream's usage when it reported one, else aistream's estimate."""
        if self._reported is not None:
            usage = pb.Usage(
                prompt_tokens=self._reported[0],
                completion_tokens=self._reported[1],
                source=pb.USAGE_SOURCE_UPSTREAM,
            )
            reasoning, cached = self._reported_details
            if reasoning is not None:
                usage.reasoning_tokens = reasoning
            if cached is not None:
                usage.cached_tokens = cached
            return usage
        usage = pb.Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.tokens,
            source=pb.USAGE_SOURCE_ESTIMATED,
        )
        if self.reasoning_tokens:
            usage.reasoning_tokens = self.reasoning_tokens
        return usage

    def _elapsed_ms(self, since: float | None) -> int:
        if since is None:
            return 0
        return max(0, round((since - self.started_at) * 1000))

    def _finish_done(self, finish: str | None) -> None:
        """End with Done, handing over the tool calls and the structured output; raises
        InvalidOutput (the generation not ended yet) if either is unusable."""
        if self.ended:
            return
        calls = self._calls.finish() if self._calls else []
        if not calls and _FINISH_REASONS.get(finish or "") == pb.FINISH_REASON_TOOL_CALLS:
            # ("tool_calls" and nothing to call: an agent loop would have nothing to run)
            raise UpstreamFailure(
                pb.ERROR_CODE_UPSTREAM_ERROR,
                "the upstream finished to call tools but sent no tool call",
                retryable=True,
            )
        output = None
        if self._output is not None and not calls and not self._refusal:
            output = self._output.finish()
        self.ended = True
        now = asyncio.get_running_loop().time()
        reason = _FINISH_REASONS.get(finish or "", pb.FINISH_REASON_UNSPECIFIED)
        done = pb.Done(
            request_id=self.request_id,
            finish_reason=reason,
            usage=self._usage(),
            ttft_ms=self._elapsed_ms(self._answer_at),
            duration_ms=self._elapsed_ms(now),
            tool_calls=calls,
            output=output,
        )
        if self._reasoning_at is not None:
            done.reasoning_ms = self._elapsed_ms(self._reasoning_at)
        if self.resume_token:
            done.seq = self.seq
        event = pb.ServerEvent(done=done)
        self._outbox.put(event)
        self._report(event.done, finish)

    def _finish_error(self, code: codes.Code, message: str, retryable: bool | None) -> None:
        if self.ended:
            return
        self.ended = True
        now = asyncio.get_running_loop().time()
        event = pb.ServerEvent(
            error=pb.Error(
                request_id=self.request_id,
                code=code,
                message=message,
                retryable=codes.is_retryable(code, retryable),
                usage=self._usage(),
                duration_ms=self._elapsed_ms(now),
            )
        )
        if self.resume_token:
            event.error.seq = self.seq
        self._outbox.put(event)
        self._report(event.error, None)

    def _report(self, end: pb.Done | pb.Error, finish: str | None) -> None:
        """Tell the generation's end, once: its one log line, the end of its span, its
        metrics, and its owner (``on_end``: it no longer counts against the capacity)."""
        first_token_at = self._answer_at
        ttft_ms = None if first_token_at is None else self._elapsed_ms(first_token_at)
        usage = end.usage
        code = codes.json_code(end.code) if isinstance(end, pb.Error) else None
        args = (
            self.request_id,
            self._upstream.model_name(self.request.model),
            "done" if code is None else "error",
            code or "-",
            finish or "-",
            "-" if ttft_ms is None else ttft_ms,
            end.duration_ms,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.reasoning_tokens if usage.HasField("reasoning_tokens") else "-",
            len(end.tool_calls) if isinstance(end, pb.Done) else 0,
            "upstream" if usage.source == pb.USAGE_SOURCE_UPSTREAM else "estimated",
            tracing.trace_id(self.request.traceparent),
        )
        if isinstance(end, pb.Error):
            log.info(_END + ": %s", *args, end.message)
        else:
            log.info(_END, *args)
        if self._span is not None:
            tracing.end_chat(self._span, [finish] if finish else [], usage, ttft_ms, code)
        self._metrics.ended(
            self._model,
            end.code if isinstance(end, pb.Error) else None,
            end.duration_ms / 1000,
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        self.settle()

    def settle(self) -> None:
        """Call ``on_end`` if it has not been called yet (its terminal queued, or — called by
        its owner when its task is done — a task that ended without one)."""
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()

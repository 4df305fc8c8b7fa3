"""One generation: Start, Tokens, exactly one terminal event. Knows nothing of gRPC.

``Generation.run`` drives an upstream stream under three time limits that aistream decides, not the
model: the first token must come within ``first_token_timeout`` of acceptance, no gap between
tokens may exceed ``stall_timeout``, and the whole generation must end within its deadline
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
from typing import TYPE_CHECKING

from aistream import codes, tracing
from aistream.errors import UpstreamFailure
from aistream.generator.limits import TimeLimits
from aistream.generator.upstream import Abortable, Delta, Role, Upstream, UpstreamRequest
from aistream.metrics import GENERATOR_OFF, GeneratorMetrics
from aistream.outbox import Outbox
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["Generation", "upstream_request"]

log = logging.getLogger(__name__)

_ROLES: dict[int, Role] = {
    pb.ROLE_SYSTEM: "system",
    pb.ROLE_USER: "user",
    pb.ROLE_ASSISTANT: "assistant",
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
    "input_tokens=%d output_tokens=%d usage=%s trace_id=%s"
)


def upstream_request(
    generate: pb.Generate, settings: Settings, traceparent: str = ""
) -> UpstreamRequest:
    """The upstream request for a (validated) Generate: history, then the prompt as user turn;
    ``traceparent``: the trace context its HTTP request carries."""
    messages: list[tuple[Role, str]] = [(_ROLES[m.role], m.content) for m in generate.messages]
    if generate.prompt:
        messages.append(("user", generate.prompt))
    max_tokens = settings.max_tokens_cap
    if generate.HasField("max_tokens"):
        max_tokens = min(generate.max_tokens, max_tokens)
    return UpstreamRequest(
        request_id=generate.request_id,
        messages=tuple(messages),
        model=generate.model or None,
        max_tokens=max_tokens,
        temperature=generate.temperature if generate.HasField("temperature") else None,
        traceparent=traceparent,
    )


class Generation:
    """The state and task body of one accepted Generate."""

    __slots__ = (
        "_abortable",
        "_limits",
        "_metrics",
        "_model",
        "_outbox",
        "_settings",
        "_span",
        "_upstream",
        "_upstream_open",
        "ended",
        "prompt_tokens",
        "request",
        "request_id",
        "started_at",
        "tokens",
    )

    def __init__(
        self,
        generate: pb.Generate,
        upstream: Upstream,
        settings: Settings,
        outbox: Outbox,
        traceparent: str = "",
        metrics: GeneratorMetrics = GENERATOR_OFF,
    ) -> None:
        """``traceparent``: the trace context of a Generate that carries none (its call's);
        ``metrics``: what the generation records into (its start, first token and end)."""
        self.request_id = generate.request_id
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
        self.tokens = 0
        self.prompt_tokens = math.ceil(sum(len(text) for _, text in self.request.messages) / 4)
        self.ended = False
        self._abortable: Abortable | None = None
        self._metrics = metrics
        self._model = metrics.model(upstream.model_name(self.request.model))
        self._upstream_open = metrics.upstream()
        metrics.started()

    def start(self) -> None:
        """Queue the Start event (before the task runs, so it precedes everything else)."""
        model = self._upstream.model_name(self.request.model)
        self._outbox.put(pb.ServerEvent(start=pb.Start(request_id=self.request_id, model=model)))

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
        reported: tuple[int, int] | None = None
        try:
            stream = self._upstream.stream(self.request)
            if isinstance(stream, Abortable):
                self._abortable = stream
            # (counted open until the stream's block has closed it: aistream.metrics)
            async with self._upstream_open, stream as deltas:
                async for delta in deltas:
                    if delta.count:
                        await self._token(delta)
                    if delta.finish_reason is not None:
                        finish = delta.finish_reason
                    if delta.prompt_tokens is not None and delta.completion_tokens is not None:
                        reported = (delta.prompt_tokens, delta.completion_tokens)
                    if finish is None and self.tokens >= self.request.max_tokens:
                        # An upstream that ignores max_tokens is cut off here: the limit is
                        # ours to keep (leaving the block closes its connection).
                        log.warning("upstream ignored max_tokens request_id=%s", self.request_id)
                        finish = "length"
                        break
                # The upstream finished: say so now, before the response is released
                # (which may wait briefly for the connection to be reusable).
                self._finish_done(finish, reported)
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
        now = asyncio.get_running_loop().time()
        self._limits.token(now)
        if self.ended:
            return
        seq = self.tokens
        if not seq:
            self._metrics.first_token(self._model, now - self.started_at)
        self.tokens += delta.count
        if not self._outbox.full:
            await self._outbox.put_token(self.request_id, delta.text, seq, delta.count)
            return
        self._limits.pause(now)  # a slow reader downstream is not the upstream stalling
        try:
            await self._outbox.put_token(self.request_id, delta.text, seq, delta.count)
        finally:
            self._limits.resume(asyncio.get_running_loop().time())

    def _usage(self, reported: tuple[int, int] | None) -> pb.Usage:
        if reported is not None:
            return pb.Usage(
                prompt_tokens=reported[0],
                completion_tokens=reported[1],
                source=pb.USAGE_SOURCE_UPSTREAM,
            )
        return pb.Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.tokens,
            source=pb.USAGE_SOURCE_ESTIMATED,
        )

    def _elapsed_ms(self, since: float | None) -> int:
        if since is None:
            return 0
        return max(0, round((since - self.started_at) * 1000))

    def _finish_done(self, finish: str | None, reported: tuple[int, int] | None) -> None:
        if self.ended:
            return
        self.ended = True
        now = asyncio.get_running_loop().time()
        reason = _FINISH_REASONS.get(finish or "", pb.FINISH_REASON_UNSPECIFIED)
        event = pb.ServerEvent(
            done=pb.Done(
                request_id=self.request_id,
                finish_reason=reason,
                usage=self._usage(reported),
                ttft_ms=self._elapsed_ms(self._limits.first_token_at),
                duration_ms=self._elapsed_ms(now),
            )
        )
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
                usage=self._usage(None),
                duration_ms=self._elapsed_ms(now),
            )
        )
        self._outbox.put(event)
        self._report(event.error, None)

    def _report(self, end: pb.Done | pb.Error, finish: str | None) -> None:
        """Tell the generation's end, once: its one log line, the end of its span, its
        metrics."""
        first_token_at = self._limits.first_token_at
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

"""One generation: Start, Tokens, exactly one terminal event. Knows nothing of gRPC.

``Generation.run`` drives an upstream stream under three time limits that aistream decides, not the
model: the first token must come within ``first_token_timeout`` of acceptance, no gap between
tokens may exceed ``stall_timeout``, and the whole generation must end within its deadline
(``deadline`` from settings, lowered by the request's ``timeout_ms``, clamped to ``max_deadline``).
Only a stream the upstream really finished ends in ``Done``; everything else ends in ``Error``.

``Generation.end`` ends it from outside (cancel, client gone, shutdown): the terminal event is
queued at once, and the owner cancels the task, which closes the upstream request on its way out.
"""

from __future__ import annotations

import asyncio
import logging
import math

from aistream import codes
from aistream.errors import UpstreamFailure
from aistream.generator.limits import TimeLimits
from aistream.generator.upstream import Abortable, Delta, Role, Upstream, UpstreamRequest
from aistream.outbox import Outbox
from aistream.settings import Settings
from aistream.v1 import events_pb2 as pb

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


def upstream_request(generate: pb.Generate, settings: Settings) -> UpstreamRequest:
    """The upstream request for a (validated) Generate: history, then the prompt as user turn."""
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
    )


class Generation:
    """The state and task body of one accepted Generate."""

    __slots__ = (
        "_abortable",
        "_limits",
        "_outbox",
        "_settings",
        "_upstream",
        "ended",
        "prompt_tokens",
        "request",
        "request_id",
        "started_at",
        "tokens",
    )

    def __init__(
        self, generate: pb.Generate, upstream: Upstream, settings: Settings, outbox: Outbox
    ) -> None:
        self.request_id = generate.request_id
        self.request = upstream_request(generate, settings)
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

    def start(self) -> None:
        """Queue the Start event (before the task runs, so it precedes everything else)."""
        model = self._upstream.model_name(self.request.model)
        self._outbox.put(pb.ServerEvent(start=pb.Start(request_id=self.request_id, model=model)))

    def end(self, code: codes.Code, message: str, *, retryable: bool | None = None) -> bool:
        """End the generation from outside with an Error; False if it had already ended."""
        if self.ended:
            return False
        self._finish_error(code, message, retryable)
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
            async with stream as deltas:
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
        self._outbox.put(
            pb.ServerEvent(
                done=pb.Done(
                    request_id=self.request_id,
                    finish_reason=reason,
                    usage=self._usage(reported),
                    ttft_ms=self._elapsed_ms(self._limits.first_token_at),
                    duration_ms=self._elapsed_ms(now),
                )
            )
        )
        log.info("done request_id=%s tokens=%d finish=%s", self.request_id, self.tokens, finish)

    def _finish_error(self, code: codes.Code, message: str, retryable: bool | None) -> None:
        if self.ended:
            return
        self.ended = True
        now = asyncio.get_running_loop().time()
        row = codes.info(code)
        self._outbox.put(
            pb.ServerEvent(
                error=pb.Error(
                    request_id=self.request_id,
                    code=code,
                    message=message,
                    retryable=codes.is_retryable(code, retryable),
                    usage=self._usage(None),
                    duration_ms=self._elapsed_ms(now),
                )
            )
        )
        log.info(
            "ended request_id=%s code=%s tokens=%d: %s",
            self.request_id,
            row.json,
            self.tokens,
            message,
        )

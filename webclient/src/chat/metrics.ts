// The numbers shown under an answer. Pure.

import type { RequestState } from "./request.ts";

/** Time to first token in ms: the server's measurement when it sent one, else this page's. */
export function timeToFirstToken(request: RequestState): number | undefined {
  const { ttftMs, sentAt, firstTokenAt } = request.timings;
  if (ttftMs !== undefined) return ttftMs;
  if (sentAt === undefined || firstTokenAt === undefined) return undefined;
  return Math.max(0, firstTokenAt - sentAt);
}

/**
 * Completion tokens, reasoning included: the server's count when it sent usage, else the
 * tokens received.
 */
export function completionTokens(request: RequestState): number {
  return request.usage?.completionTokens ?? request.tokens + request.reasoningTokens;
}

/** Of the completion tokens, those spent reasoning: the server's count, else those received. */
export function reasoningTokens(request: RequestState): number {
  return request.usage?.reasoningTokens ?? request.reasoningTokens;
}

/**
 * Generation speed in tokens per second, from the first answer token to the end (reasoning,
 * which came before, is left out): the server's durations when it sent both, else this page's
 * clock. Undefined while that span is too short to measure (a single chunk) or the request has
 * not ended.
 */
export function tokensPerSecond(request: RequestState): number | undefined {
  const { ttftMs, durationMs, firstTokenAt, endedAt } = request.timings;
  let spanMs: number | undefined;
  if (ttftMs !== undefined && durationMs !== undefined) spanMs = durationMs - ttftMs;
  else if (firstTokenAt !== undefined && endedAt !== undefined) spanMs = endedAt - firstTokenAt;
  const tokens = completionTokens(request) - reasoningTokens(request);
  if (spanMs === undefined || spanMs < 1 || tokens < 2) return undefined;
  return (tokens * 1000) / spanMs;
}

/**
 * How long the model thought: from its first reasoning part to its first answer part, by the
 * server's timings when it sent both, else this page's clock. Undefined until the answer began.
 */
export function thinkingTime(request: RequestState): number | undefined {
  const { reasoningMs, ttftMs, firstReasoningAt, firstTokenAt } = request.timings;
  if (reasoningMs !== undefined && ttftMs !== undefined) return Math.max(0, ttftMs - reasoningMs);
  if (firstReasoningAt === undefined || firstTokenAt === undefined) return undefined;
  return Math.max(0, firstTokenAt - firstReasoningAt);
}

/** "850 ms", "1.2 s". */
export function formatMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** "41.3 tok/s", "312 tok/s". */
export function formatRate(tokensPerS: number): string {
  return `${tokensPerS < 100 ? tokensPerS.toFixed(1) : Math.round(tokensPerS)} tok/s`;
}

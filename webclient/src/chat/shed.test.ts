// Whether and when a request a busy server refused is sent again by itself, without a store.

import { describe, expect, it } from "vitest";

import type { ServerFrame } from "../generated/frames.ts";
import { parseServerFrame } from "./protocol.ts";
import { applyFrame } from "./reducer.ts";
import { newRequest, sent, type RequestState } from "./request.ts";
import { DEFAULT_SHED_RETRY, secondsLeft, shedRetryDelay } from "./shed.ts";

/** A sent request after `frames`. */
function after(...frames: ServerFrame[]): RequestState {
  let request = sent(newRequest("r1", "hi", []), 0);
  for (const frame of frames) {
    const parsed = parseServerFrame(JSON.stringify(frame));
    if (!parsed.ok) throw new Error(parsed.reason);
    request = applyFrame(request, parsed, 1).request!;
  }
  return request.state;
}

const shed = (extra: Partial<Extract<ServerFrame, { type: "ai:error" }>> = {}): ServerFrame => ({
  type: "ai:error",
  requestId: "r1",
  code: "too_many_requests",
  message: "the server is at capacity; try again shortly",
  retryable: true,
  retryAfterMs: 1000,
  durationMs: 0,
  ...extra,
});

describe("shedRetryDelay", () => {
  it("waits the hint, plus up to a fifth of it at random, never less", () => {
    const state = after(shed());
    expect(shedRetryDelay(state, 0, DEFAULT_SHED_RETRY, () => 0)).toBe(1000);
    expect(shedRetryDelay(state, 0, DEFAULT_SHED_RETRY, () => 0.5)).toBe(1100);
    expect(shedRetryDelay(state, 0, DEFAULT_SHED_RETRY, () => 0.999_999)).toBe(1200);
    // A hint of 0 is spread over the least jitter range.
    const now = after(shed({ retryAfterMs: 0 }));
    expect(shedRetryDelay(now, 0, DEFAULT_SHED_RETRY, () => 0.5)).toBe(50);
  });

  it("retries at most maxRetries times per request the user made", () => {
    const state = after(shed());
    expect(shedRetryDelay(state, 2, DEFAULT_SHED_RETRY, () => 0)).toBe(1000);
    expect(shedRetryDelay(state, 3, DEFAULT_SHED_RETRY, () => 0)).toBeUndefined();
    expect(shedRetryDelay(state, 0, { ...DEFAULT_SHED_RETRY, maxRetries: 0 })).toBeUndefined();
  });

  it("does not wait out a hint longer than maxHintMs", () => {
    expect(shedRetryDelay(after(shed({ retryAfterMs: 30_000 })), 0, undefined, () => 0)).toBe(
      30_000,
    );
    expect(shedRetryDelay(after(shed({ retryAfterMs: 30_001 })), 0)).toBeUndefined();
  });

  it("leaves every other ending alone: no hint, another code, after ai:start, not failed", () => {
    const noHint: ServerFrame = {
      type: "ai:error",
      requestId: "r1",
      code: "too_many_requests",
      message: "too many generations on this connection",
      retryable: true,
      durationMs: 0,
    };
    expect(shedRetryDelay(after(noHint), 0)).toBeUndefined();
    expect(shedRetryDelay(after(shed({ code: "rate_limited" })), 0)).toBeUndefined();
    expect(shedRetryDelay(after(shed({ code: "unavailable" })), 0)).toBeUndefined();
    const started = after({ type: "ai:start", requestId: "r1", model: "m" }, shed());
    expect(shedRetryDelay(started, 0)).toBeUndefined();
    expect(shedRetryDelay(after(), 0)).toBeUndefined();
    expect(shedRetryDelay(after(shed({ code: "cancelled" })), 0)).toBeUndefined();
  });
});

describe("secondsLeft", () => {
  it("counts a part of a second as a whole one", () => {
    expect([2000, 1999, 1001, 1000, 1, 0, -5].map(secondsLeft)).toEqual([2, 2, 2, 1, 1, 0, 0]);
  });
});

import { describe, expect, it } from "vitest";

import {
  completionTokens,
  formatMs,
  formatRate,
  thinkingTime,
  timeToFirstToken,
  tokensPerSecond,
} from "./metrics.ts";
import type { RequestState } from "./store.ts";

const request = (over: Partial<RequestState>): RequestState => ({
  requestId: "r1",
  prompt: "q",
  messages: [],
  options: {},
  status: "done",
  queued: false,
  started: true,
  reconnecting: false,
  text: "",
  tokens: 10,
  reasoning: "",
  reasoningTokens: 0,
  thinking: false,
  refusal: "",
  toolCalls: [],
  timings: {},
  ...over,
});

describe("metrics", () => {
  it("prefers the server's timings and usage", () => {
    const r = request({
      timings: { sentAt: 0, firstTokenAt: 300, endedAt: 1300, ttftMs: 250, durationMs: 1250 },
      usage: { promptTokens: 3, completionTokens: 50, source: "upstream" },
    });
    expect(timeToFirstToken(r)).toBe(250);
    expect(tokensPerSecond(r)).toBe(50);
  });

  it("falls back to the page's clock and token count", () => {
    const r = request({ timings: { sentAt: 100, firstTokenAt: 400, endedAt: 2400 } });
    expect(timeToFirstToken(r)).toBe(300);
    expect(tokensPerSecond(r)).toBe(5);
  });

  it("gives no rate for a single chunk or before the end", () => {
    expect(tokensPerSecond(request({ timings: { firstTokenAt: 5, endedAt: 5 } }))).toBeUndefined();
    expect(tokensPerSecond(request({ timings: { firstTokenAt: 5 } }))).toBeUndefined();
    expect(timeToFirstToken(request({ timings: { sentAt: 5 } }))).toBeUndefined();
  });

  it("leaves reasoning out of the rate, but not out of the tokens", () => {
    const server = request({
      timings: { ttftMs: 1000, durationMs: 2000 },
      usage: { promptTokens: 3, completionTokens: 84, reasoningTokens: 24 },
    });
    expect(tokensPerSecond(server)).toBe(60);
    const page = request({
      tokens: 10,
      reasoningTokens: 5,
      timings: { firstTokenAt: 1000, endedAt: 2000 },
    });
    expect(completionTokens(page)).toBe(15);
    expect(tokensPerSecond(page)).toBe(10);
  });

  it("measures thinking from the first reasoning to the first answer part", () => {
    expect(thinkingTime(request({ timings: { reasoningMs: 100, ttftMs: 1300 } }))).toBe(1200);
    expect(thinkingTime(request({ timings: { firstReasoningAt: 50, firstTokenAt: 800 } }))).toBe(
      750,
    );
    expect(thinkingTime(request({ timings: { firstReasoningAt: 50 } }))).toBeUndefined();
  });

  it("formats", () => {
    expect(formatMs(851.4)).toBe("851 ms");
    expect(formatMs(1234)).toBe("1.2 s");
    expect(formatRate(41.26)).toBe("41.3 tok/s");
    expect(formatRate(312.4)).toBe("312 tok/s");
  });
});

// Whether and when a resume answered `unavailable` is sent again, without a store.

import { describe, expect, it } from "vitest";

import type { ErrorFrame } from "../generated/frames.ts";
import { parseServerFrame } from "./protocol.ts";
import { applyFrame } from "./reducer.ts";
import { interrupted, newRequest, resumed, sent, stopped, type RequestRecord } from "./request.ts";
import { RESUME_RETRY, resumeRetryDelay, resumesAgain } from "./unavailable.ts";

/** A resumable answer holding positions 0–1, dropped and (if `resume`) resumed. */
function request(resume = true): RequestRecord {
  let request = sent(newRequest("r1", "hi", []), 0);
  for (const text of [
    '{"type":"ai:start","requestId":"r1","model":"m","seq":0,"resumeToken":"tok"}',
    '{"type":"ai:token","requestId":"r1","chunk":"a","seq":1,"count":1}',
  ]) {
    const parsed = parseServerFrame(text);
    if (!parsed.ok) throw new Error(parsed.reason);
    request = applyFrame(request, parsed, 1).request!;
  }
  return resume ? resumed(interrupted(request, 2)) : request;
}

const unavailable = (extra: Partial<ErrorFrame> = {}): ErrorFrame => ({
  type: "ai:error",
  requestId: "r1",
  code: "unavailable",
  message: "resume is unavailable for now (the shared log cannot be reached); try again",
  retryable: true,
  retryAfterMs: 1000,
  durationMs: 0,
  ...extra,
});

describe("resumesAgain", () => {
  it("resumes again a resumed answer the server cannot serve for now, five times in a row", () => {
    expect(resumesAgain(request(), unavailable())).toBe(true);
    expect(resumesAgain({ ...request(), resumeRetries: 4 }, unavailable())).toBe(true);
    expect(resumesAgain({ ...request(), resumeRetries: 5 }, unavailable())).toBe(false);
    const { retryAfterMs: _, ...noHint } = unavailable();
    expect(resumesAgain(request(), noHint)).toBe(true);
  });

  it("leaves every other ending alone", () => {
    expect(resumesAgain(request(false), unavailable())).toBe(false); // never resumed
    expect(resumesAgain(stopped(request(), 3), unavailable())).toBe(false);
    expect(resumesAgain(request(), unavailable({ seq: 2 }))).toBe(false); // the generation's end
    expect(resumesAgain(request(), unavailable({ retryable: false }))).toBe(false);
    expect(resumesAgain(request(), unavailable({ code: "not_found" }))).toBe(false);
    expect(resumesAgain(request(), unavailable({ retryAfterMs: 30_001 }))).toBe(false);
  });
});

describe("resumeRetryDelay", () => {
  it("waits the hint (1 s without one), plus up to a fifth of it at random, never less", () => {
    expect(resumeRetryDelay(unavailable(), RESUME_RETRY, () => 0)).toBe(1000);
    expect(resumeRetryDelay(unavailable(), RESUME_RETRY, () => 0.5)).toBe(1100);
    expect(resumeRetryDelay(unavailable(), RESUME_RETRY, () => 0.999_999)).toBe(1200);
    expect(resumeRetryDelay(unavailable({ retryAfterMs: 2000 }), RESUME_RETRY, () => 0.5)).toBe(
      2200,
    );
    const { retryAfterMs: _, ...noHint } = unavailable();
    expect(resumeRetryDelay(noHint, RESUME_RETRY, () => 0)).toBe(1000);
  });
});

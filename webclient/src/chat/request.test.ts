// One request's own steps (ask, send, Stop, connection lost), without a store.

import { describe, expect, it } from "vitest";

import { parseServerFrame, type ParsedFrame } from "./protocol.ts";
import { applyFrame } from "./reducer.ts";
import { historyTurn, interrupted, newRequest, sent, stopped } from "./request.ts";

function frame(text: string): ParsedFrame {
  const result = parseServerFrame(text);
  if (!result.ok) throw new Error(result.reason);
  return result;
}

/** A sent request that has had ai:start and the token "half". */
function streaming() {
  let request = sent(newRequest("r1", "hi", []), 10);
  request = applyFrame(
    request,
    frame('{"type":"ai:start","requestId":"r1","model":"m"}'),
    11,
  ).request!;
  return applyFrame(
    request,
    frame('{"type":"ai:token","requestId":"r1","chunk":"half","seq":0,"count":1}'),
    12,
  ).request!;
}

describe("newRequest and sent", () => {
  it("starts streaming and queued, and names the request it retries only if there is one", () => {
    const messages = [{ role: "user" as const, content: "q" }];
    const request = newRequest("r2", "again", messages, "r1");
    expect(request).toEqual({
      state: {
        requestId: "r2",
        prompt: "again",
        messages,
        status: "streaming",
        queued: true,
        started: false,
        text: "",
        tokens: 0,
        timings: {},
        retryOf: "r1",
      },
      nextSeq: 0,
      awaiting: false,
      stopRequested: false,
    });
    expect(newRequest("r1", "first", []).state).not.toHaveProperty("retryOf");
  });

  it("once sent, is no longer queued, awaits frames and has its send time", () => {
    const queued = newRequest("r1", "hi", []);
    const request = sent(queued, 42);
    expect(request).toMatchObject({
      awaiting: true,
      state: { queued: false, timings: { sentAt: 42 } },
    });
    expect(queued.state.queued).toBe(true);
  });
});

describe("stopped", () => {
  it("cancels a sent request at once, keeps its text and drops what is still in flight", () => {
    const request = stopped(streaming(), 50);
    expect(request).toMatchObject({
      stopRequested: true,
      awaiting: true,
      state: { status: "cancelled", text: "half", timings: { endedAt: 50 } },
    });
  });

  it("takes a queued request back: cancelled, not queued, nothing in flight", () => {
    const request = stopped(newRequest("r1", "hi", []), 50);
    expect(request).toMatchObject({
      stopRequested: false,
      awaiting: false,
      state: { status: "cancelled", queued: false },
    });
  });

  it("does nothing to a request that already ended", () => {
    const ended = stopped(streaming(), 50);
    expect(stopped(ended, 60)).toBe(ended);
  });
});

describe("interrupted", () => {
  it("fails a request in flight as interrupted (retryable), keeping its text", () => {
    const request = interrupted(streaming(), 70);
    expect(request).toMatchObject({
      awaiting: false,
      state: {
        status: "error",
        text: "half",
        error: {
          code: "interrupted",
          message: "The connection was lost before the answer finished.",
          retryable: true,
        },
        timings: { endedAt: 70 },
      },
    });
  });

  it("leaves a stopped request stopped, and one not awaiting frames as it is", () => {
    const stop = interrupted(stopped(streaming(), 50), 70);
    expect(stop).toMatchObject({
      awaiting: false,
      state: { status: "cancelled", timings: { endedAt: 50 } },
    });
    expect(stop.state.error).toBeUndefined();
    const queued = newRequest("r1", "hi", []);
    expect(interrupted(queued, 70)).toBe(queued);
  });
});

describe("historyTurn", () => {
  it("counts finished answers and stopped ones with text, not failed, streaming or empty ones", () => {
    const complete = (request: ReturnType<typeof streaming>) => historyTurn(request.state).complete;
    expect(historyTurn(streaming().state)).toEqual({
      prompt: "hi",
      answer: "half",
      complete: false,
    });
    expect(complete(stopped(streaming(), 1))).toBe(true);
    expect(complete(stopped(sent(newRequest("r1", "hi", []), 0), 1))).toBe(false);
    expect(complete(interrupted(streaming(), 1))).toBe(false);
    const done = applyFrame(streaming(), frame('{"type":"ai:done","requestId":"r1"}'), 20);
    expect(complete(done.request!)).toBe(true);
  });
});

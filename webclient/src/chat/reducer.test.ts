// The reducer on its own: arrays of frames folded into one request, no socket, no store.

import { describe, expect, it } from "vitest";

import type { ServerFrame } from "../generated/frames.ts";
import { parseServerFrame, type ParsedFrame } from "./protocol.ts";
import { applyFrame } from "./reducer.ts";
import { newRequest, sent, stopped, type RequestRecord } from "./request.ts";

/** A frame as the parser delivers it; a string is parsed as-is (an older server's frame). */
function parsed(frame: ServerFrame | string): ParsedFrame {
  const result = parseServerFrame(typeof frame === "string" ? frame : JSON.stringify(frame));
  if (!result.ok) throw new Error(`test frame does not parse: ${result.reason}`);
  return result;
}

/** Fold `frames` into `request` one by one, frame i arriving at time 100 + i. */
function fold(request: RequestRecord | undefined, frames: readonly (ServerFrame | string)[]) {
  const problems: string[] = [];
  frames.forEach((frame, i) => {
    const applied = applyFrame(request, parsed(frame), 100 + i);
    request = applied.request;
    problems.push(...applied.problems);
  });
  return { request, state: request?.state, problems };
}

/** A request whose ai:generate went out at time 10. */
function sentRequest(id = "r1"): RequestRecord {
  return sent(newRequest(id, "hi", []), 10);
}

/** A sent request that has had ai:start and token "a" (seq 0). */
function streaming(): RequestRecord {
  return fold(sentRequest(), [start(), token("a", 0)]).request!;
}

/** Freeze a record all the way down, so a reducer that changed its input would throw. */
function frozen(request: RequestRecord): RequestRecord {
  Object.freeze(request.state.timings);
  Object.freeze(request.state);
  return Object.freeze(request);
}

const start = (requestId = "r1"): ServerFrame => ({ type: "ai:start", requestId, model: "m" });
const token = (chunk: string, seq: number, count = 1, requestId = "r1"): ServerFrame => ({
  type: "ai:token",
  requestId,
  chunk,
  seq,
  count,
});
const done = (extra: Partial<Extract<ServerFrame, { type: "ai:done" }>> = {}): ServerFrame => ({
  type: "ai:done",
  requestId: "r1",
  finishReason: "stop",
  ttftMs: 1,
  durationMs: 2,
  ...extra,
});
const error = (extra: Partial<Extract<ServerFrame, { type: "ai:error" }>> = {}): ServerFrame => ({
  type: "ai:error",
  requestId: "r1",
  code: "internal",
  message: "m",
  retryable: false,
  durationMs: 0,
  ...extra,
});

describe("a generation", () => {
  it("folds start, tokens and done into a finished answer with the server's numbers", () => {
    const { request, state, problems } = fold(sentRequest(), [
      { type: "ai:start", requestId: "r1", model: "simulated-echo" },
      token("Hel", 0),
      token("lo", 1),
      done({
        usage: { promptTokens: 4, completionTokens: 2, source: "estimated" },
        ttftMs: 120,
        durationMs: 480,
      }),
    ]);
    expect(problems).toEqual([]);
    expect(request).toMatchObject({ awaiting: false, nextSeq: 2, stopRequested: false });
    expect(state).toEqual({
      requestId: "r1",
      prompt: "hi",
      messages: [],
      status: "done",
      queued: false,
      started: true,
      text: "Hello",
      tokens: 2,
      model: "simulated-echo",
      finishReason: "stop",
      usage: { promptTokens: 4, completionTokens: 2, source: "estimated" },
      timings: { sentAt: 10, firstTokenAt: 101, endedAt: 103, ttftMs: 120, durationMs: 480 },
    });
  });

  it("leaves the model out when ai:start names none", () => {
    const { state } = fold(sentRequest(), [{ type: "ai:start", requestId: "r1", model: "" }]);
    expect(state).toMatchObject({ started: true, status: "streaming" });
    expect(state).not.toHaveProperty("model");
  });

  it("counts coalesced tokens (count 0 as 1) and expects seq + count next", () => {
    const { request, state, problems } = fold(sentRequest(), [
      start(),
      token("a b c", 0, 3),
      token(" d", 3, 0),
      token(" e", 4, 1),
    ]);
    expect(state).toMatchObject({ text: "a b c d e", tokens: 5 });
    expect(request!.nextSeq).toBe(5);
    expect(problems).toEqual([]);
  });

  it("counts on without checking when an older server sends no seq", () => {
    const { request, state, problems } = fold(sentRequest(), [
      start(),
      '{"type":"ai:token","requestId":"r1","chunk":"a","count":2}',
      '{"type":"ai:token","requestId":"r1","chunk":"b"}',
      token("c", 3),
    ]);
    expect(state).toMatchObject({ text: "abc", tokens: 4 });
    expect(request!.nextSeq).toBe(4);
    expect(problems).toEqual([]);
  });

  it("ends done when the bridge omits finishReason (an upstream that gave no known reason)", () => {
    const { state, problems } = fold(streaming(), [
      { type: "ai:done", requestId: "r1", ttftMs: 10, durationMs: 20 },
    ]);
    expect(state).toMatchObject({ status: "done", text: "a" });
    expect(state).not.toHaveProperty("finishReason");
    expect(problems).toEqual([]);
  });

  it("takes the server's ttft only when a token came, and its timings only when sent", () => {
    const empty = fold(sentRequest(), [start(), done({ ttftMs: 5, durationMs: 9 })]).state!;
    expect(empty.timings).toEqual({ sentAt: 10, endedAt: 101, durationMs: 9 });
    const older = fold(streaming(), ['{"type":"ai:done","requestId":"r1"}']).state!;
    expect(older.status).toBe("done");
    expect(older.timings).not.toHaveProperty("ttftMs");
    expect(older.timings).not.toHaveProperty("durationMs");
  });

  it("never changes the request it is given", () => {
    const before = frozen(streaming());
    const copy = structuredClone(before);
    const { request } = fold(before, [token("b", 1), done()]);
    expect(before).toEqual(copy);
    expect(request).not.toBe(before);
    expect(request!.state.text).toBe("ab");
  });
});

describe("errors from the server", () => {
  it("ends in error with the server's code, message and retryable, keeping the text", () => {
    const { request, state } = fold(streaming(), [
      error({ code: "timeout", message: "no token for 30 s", retryable: true, durationMs: 30_000 }),
    ]);
    expect(request!.awaiting).toBe(false);
    expect(state).toMatchObject({
      status: "error",
      text: "a",
      error: { code: "timeout", message: "no token for 30 s", retryable: true },
      timings: { durationMs: 30_000, endedAt: 100 },
    });
  });

  it("shows a rejected generate (no ai:start) as an error, with a default message if none came", () => {
    // An older bridge's frame: no message, no durationMs.
    const { state, problems } = fold(sentRequest(), [
      '{"type":"ai:error","requestId":"r1","code":"too_many_requests","retryable":true}',
    ]);
    expect(state!.error).toEqual({
      code: "too_many_requests",
      message: "Too many answers are being generated at once.",
      retryable: true,
    });
    expect(state!.timings).not.toHaveProperty("durationMs");
    expect(problems).toEqual([]);
  });

  it("applies a terminal frame with an unknown code as internal, reporting the code", () => {
    const { state, problems } = fold(streaming(), [
      '{"type":"ai:error","requestId":"r1","code":"quantum_flux","message":"odd","retryable":true}',
    ]);
    expect(state).toMatchObject({
      status: "error",
      error: { code: "internal", message: "odd", retryable: true },
    });
    expect(problems).toEqual([
      'ai:error for "r1": "code" has unknown value "quantum_flux", ignored',
    ]);
  });

  it("reports an ai:error that names no request", () => {
    const { request, problems } = fold(undefined, [
      error({ requestId: "", code: "invalid_request", message: "bad frame" }),
    ]);
    expect(request).toBeUndefined();
    expect(problems).toEqual(["ai:error without a request id: invalid_request: bad frame"]);
  });

  it('says "?" for an ai:error with neither a request id nor a code', () => {
    const { problems } = fold(undefined, ['{"type":"ai:error","requestId":"","message":"x"}']);
    expect(problems).toEqual(["ai:error without a request id: ?: x"]);
  });
});

describe("cancel", () => {
  it("shows an ai:error with code cancelled as stopped, not failed, keeping the text", () => {
    const { state } = fold(streaming(), [error({ code: "cancelled", message: "cancelled" })]);
    expect(state).toMatchObject({ status: "cancelled", text: "a" });
    expect(state!.error).toBeUndefined();
  });

  it("after Stop, drops tokens in flight quietly and takes usage from the cancelled error", () => {
    const stop = stopped(streaming(), 50);
    const late = applyFrame(stop, parsed(token(" late", 1)), 60);
    expect(late).toEqual({ request: stop, problems: [] });
    expect(late.request).toBe(stop);
    const { request, state, problems } = fold(stop, [
      error({
        code: "cancelled",
        message: "cancelled by the client",
        usage: { promptTokens: 2, completionTokens: 2, source: "estimated" },
        durationMs: 90,
      }),
    ]);
    expect(problems).toEqual([]);
    expect(request!.awaiting).toBe(false);
    expect(state).toMatchObject({
      status: "cancelled",
      text: "a",
      usage: { completionTokens: 2 },
      timings: { durationMs: 90, endedAt: 50 },
    });
    expect(state!.error).toBeUndefined();
  });

  it("stays stopped when the answer finished, or failed, just as Stop was pressed", () => {
    const finished = fold(stopped(streaming(), 50), [done({ durationMs: 7 })]);
    expect(finished.problems).toEqual([]);
    expect(finished.state).toMatchObject({ status: "cancelled", text: "a" });
    expect(finished.state!.timings.durationMs).toBe(7);
    expect(finished.state).not.toHaveProperty("finishReason");
    const failed = fold(stopped(streaming(), 50), [error({ code: "upstream_error" })]);
    expect(failed.state).toMatchObject({ status: "cancelled", text: "a" });
    expect(failed.state!.error).toBeUndefined();
  });
});

describe("protocol errors", () => {
  it("reports a seq gap naming the frame, keeps the chunk and goes on from there", () => {
    const { state, problems } = fold(streaming(), [token("c", 2), token("d", 3)]);
    expect(state!.text).toBe("acd");
    expect(problems).toEqual(['ai:token for "r1": seq 2, expected 1 (gap)']);
  });

  it("reports and drops a duplicate token", () => {
    const { state, problems } = fold(streaming(), [token("a", 0), token("b", 1)]);
    expect(state).toMatchObject({ text: "ab", tokens: 2 });
    expect(problems).toEqual(['ai:token for "r1": seq 0, expected 1 (duplicate, dropped)']);
  });

  it("reports a token before ai:start but keeps its text", () => {
    const { state, problems } = fold(sentRequest(), [token("early", 0)]);
    expect(state).toMatchObject({ text: "early", started: true });
    expect(problems).toEqual(['ai:token for "r1": a token before ai:start']);
  });

  it("reports a second ai:start and changes nothing", () => {
    const before = streaming();
    const { request, problems } = fold(before, [start()]);
    expect(request).toBe(before);
    expect(problems).toEqual(['ai:start for "r1": a second ai:start']);
  });

  it("reports every frame after the end and changes nothing", () => {
    const ended = fold(streaming(), [done()]).request!;
    const { request, problems } = fold(ended, [start(), token("late", 1), done(), error()]);
    expect(request).toBe(ended);
    expect(problems).toEqual([
      'ai:start for "r1" after the request ended',
      'ai:token for "r1" after the request ended',
      'ai:done for "r1" after the request ended',
      'ai:error for "r1" after the request ended',
    ]);
  });

  it("reports a frame for a request that was not sent yet", () => {
    const queued = newRequest("r1", "hi", []);
    const { request, problems } = fold(queued, [start()]);
    expect(request).toBe(queued);
    expect(problems).toEqual(['ai:start for "r1" before it was sent']);
  });

  it("reports a frame for an unknown request id", () => {
    const { request, problems } = fold(undefined, [token("boo", 0, 1, "ghost")]);
    expect(request).toBeUndefined();
    expect(problems).toEqual(['ai:token for "ghost": unknown request id']);
  });

  it("reports the fields the parser ignored, first, and still applies the frame", () => {
    const { state, problems } = fold(sentRequest(), [
      start(),
      '{"type":"ai:done","requestId":"r1","finishReason":"warp","usage":7}',
    ]);
    expect(state!.status).toBe("done");
    expect(problems).toEqual([
      'ai:done for "r1": "finishReason" has unknown value "warp", ignored',
      'ai:done for "r1": "usage" is not an object, ignored',
    ]);
  });
});

// The reducer on its own: arrays of frames folded into one request, no socket, no store.

import { describe, expect, it } from "vitest";

import type { ServerFrame } from "../generated/frames.ts";
import { parseServerFrame, type ParsedFrame } from "./protocol.ts";
import { applyFrame } from "./reducer.ts";
import { interrupted, newRequest, resumed, sent, stopped, type RequestRecord } from "./request.ts";

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
  toolCalls: [],
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
      options: {},
      status: "done",
      queued: false,
      started: true,
      reconnecting: false,
      text: "Hello",
      tokens: 2,
      reasoning: "",
      reasoningTokens: 0,
      thinking: false,
      refusal: "",
      toolCalls: [],
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
      { type: "ai:done", requestId: "r1", ttftMs: 10, durationMs: 20, toolCalls: [] },
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

  it("keeps a busy server's retry hint with the error", () => {
    const { state } = fold(sentRequest(), [
      error({ code: "too_many_requests", retryable: true, retryAfterMs: 1000 }),
    ]);
    expect(state).toMatchObject({
      status: "error",
      started: false,
      error: { code: "too_many_requests", retryable: true, retryAfterMs: 1000 },
    });
    expect(fold(sentRequest(), [error()]).state!.error).not.toHaveProperty("retryAfterMs");
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

// --- parts: reasoning, tool calls, refusal, structured output ------------------------------------

const reasoning = (chunk: string, seq: number, count = 1): ServerFrame => ({
  type: "ai:reasoning",
  requestId: "r1",
  chunk,
  seq,
  count,
});
const toolCall = (index: number, seq: number, id = `call_${index}`, name = "get_weather") =>
  ({ type: "ai:tool_call", requestId: "r1", seq, index, id, name }) satisfies ServerFrame;
const toolArgs = (index: number, chunk: string, seq: number, count = 1) =>
  ({ type: "ai:tool_args", requestId: "r1", chunk, seq, count, index }) satisfies ServerFrame;
const refusal = (chunk: string, seq: number): ServerFrame => ({
  type: "ai:refusal",
  requestId: "r1",
  chunk,
  seq,
  count: 1,
});

/** A sent request asking for structured output, that has had ai:start. */
function structured(): RequestRecord {
  const request = sent(newRequest("r1", "hi", [], { responseFormat: { type: "json_object" } }), 10);
  return fold(request, [start()]).request!;
}

describe("reasoning", () => {
  it("is kept apart from the answer, thinking until the first answer part", () => {
    let { request, state, problems } = fold(sentRequest(), [
      start(),
      reasoning("Let me ", 0),
      reasoning("think.", 1, 2),
    ]);
    expect(state).toMatchObject({
      reasoning: "Let me think.",
      reasoningTokens: 3,
      thinking: true,
      text: "",
      tokens: 0,
      timings: { firstReasoningAt: 101 },
    });
    expect(state!.timings.firstTokenAt).toBeUndefined();
    ({ request, state, problems } = fold(request, [token("Hi", 3), reasoning(" more", 4)]));
    expect(state).toMatchObject({
      reasoning: "Let me think. more",
      thinking: false, // reasoning between answer parts does not reopen it
      text: "Hi",
      tokens: 1,
      timings: { firstReasoningAt: 101, firstTokenAt: 100 },
    });
    expect(request!.nextSeq).toBe(5);
    expect(problems).toEqual([]);
  });

  it("takes the server's reasoning time from ai:done, and no ttft without an answer part", () => {
    const { state } = fold(sentRequest(), [
      start(),
      reasoning("hmm", 0),
      done({ reasoningMs: 15, ttftMs: 0, durationMs: 40 }),
    ]);
    expect(state).toMatchObject({ status: "done", thinking: false, reasoning: "hmm" });
    expect(state!.timings).toMatchObject({ reasoningMs: 15, durationMs: 40 });
    expect(state!.timings).not.toHaveProperty("ttftMs");
  });

  it("stops thinking on Stop, keeps the reasoning, and drops parts still in flight", () => {
    const thinking = fold(sentRequest(), [start(), reasoning("Step one", 0)]).request!;
    const stop = stopped(thinking, 50);
    expect(stop.state).toMatchObject({
      status: "cancelled",
      thinking: false,
      reasoning: "Step one",
    });
    for (const late of [
      reasoning(" two", 1),
      toolCall(0, 2),
      toolArgs(0, "{", 3),
      refusal("No", 4),
    ]) {
      expect(applyFrame(stop, parsed(late), 60)).toEqual({ request: stop, problems: [] });
    }
  });
});

describe("tool calls", () => {
  it("fill in by index as their arguments stream, and are complete once ai:done lists them", () => {
    const steps = fold(sentRequest(), [
      start(),
      reasoning("I should call the tool", 0),
      toolCall(0, 1),
      toolArgs(0, '{"city":"Par', 2),
      toolArgs(0, 'is","unit":"cel', 3, 2),
    ]);
    expect(steps.state).toMatchObject({
      thinking: false,
      tokens: 4,
      toolCalls: [
        {
          index: 0,
          id: "call_0",
          name: "get_weather",
          arguments: '{"city":"Paris","unit":"cel',
          complete: false,
        },
      ],
    });
    const final = '{"city":"Paris","unit":"celsius"}';
    const { state, problems } = fold(steps.request, [
      toolArgs(0, 'sius"}', 5),
      done({
        finishReason: "tool_calls",
        toolCalls: [{ id: "call_0", name: "get_weather", arguments: final }],
      }),
    ]);
    expect(problems).toEqual([]);
    expect(state).toMatchObject({ status: "done", finishReason: "tool_calls", text: "" });
    expect(state!.toolCalls).toEqual([
      { index: 0, id: "call_0", name: "get_weather", arguments: final, complete: true },
    ]);
    expect(state).not.toHaveProperty("output");
  });

  it("keeps interleaved calls in index order and changes only the call a part names", () => {
    const { request, state, problems } = fold(sentRequest(), [
      start(),
      toolCall(1, 0, "b", "second"),
      toolCall(0, 1, "a", "first"),
      toolArgs(1, "{}", 2),
      toolArgs(0, '{"x":', 3),
    ]);
    expect(problems).toEqual([]);
    expect(state!.toolCalls.map((c) => [c.index, c.id, c.arguments])).toEqual([
      [0, "a", '{"x":'],
      [1, "b", "{}"],
    ]);
    const before = request!.state.toolCalls;
    const after = fold(request, [toolArgs(0, "1}", 4)]).state!.toolCalls;
    expect(after[1]).toBe(before[1]);
    expect(after[0]!.arguments).toBe('{"x":1}');
  });

  it("reports arguments before their ai:tool_call and a second ai:tool_call for an index", () => {
    const { state, problems } = fold(sentRequest(), [
      start(),
      toolArgs(0, '{"a"', 0),
      toolCall(0, 1, "c0", "f"),
      toolCall(0, 2, "c9", "g"),
    ]);
    expect(state!.toolCalls).toEqual([
      { index: 0, id: "c0", name: "f", arguments: '{"a"', complete: false },
    ]);
    expect(problems).toEqual([
      'ai:tool_args for "r1": arguments for tool call 0 before its ai:tool_call',
      'ai:tool_call for "r1": a second ai:tool_call for index 0, ignored',
    ]);
  });

  it("takes ai:done's list as the truth: adds calls it never saw, reports calls left out", () => {
    const { state, problems } = fold(sentRequest(), [
      start(),
      toolCall(0, 0, "seen"),
      toolCall(1, 1, "dropped"),
      done({
        finishReason: "tool_calls",
        toolCalls: [
          { id: "seen", name: "get_weather", arguments: "{}" },
          { id: "new", name: "other", arguments: '{"k":1}' },
        ],
      }),
    ]);
    expect(state!.toolCalls).toEqual([
      { index: 0, id: "seen", name: "get_weather", arguments: "{}", complete: true },
      { index: 1, id: "new", name: "other", arguments: '{"k":1}', complete: true },
    ]);
    expect(problems).toEqual([]);
    const left = fold(sentRequest(), [
      start(),
      toolCall(0, 0, "a"),
      toolCall(1, 1, "b"),
      done({ toolCalls: [{ id: "a", name: "get_weather", arguments: "{}" }] }),
    ]);
    expect(left.state!.toolCalls.map((c) => c.complete)).toEqual([true, false]);
    expect(left.problems).toEqual(['ai:done for "r1": tool call 1 ("b") is not in toolCalls']);
  });

  it("stay incomplete when the generation fails", () => {
    const { state } = fold(sentRequest(), [
      start(),
      toolCall(0, 0),
      toolArgs(0, '{"city": tru', 1),
      error({ code: "invalid_output", message: "tool arguments are not JSON", retryable: true }),
    ]);
    expect(state).toMatchObject({
      status: "error",
      error: { code: "invalid_output", message: "tool arguments are not JSON" },
      toolCalls: [{ arguments: '{"city": tru', complete: false }],
    });
    expect(state).not.toHaveProperty("output"); // no responseFormat: no structured output
  });
});

describe("refusal", () => {
  it("is its own text, an answer part that ends thinking", () => {
    const { state, problems } = fold(sentRequest(), [
      start(),
      reasoning("hmm", 0),
      refusal("I can't ", 1),
      refusal("help with that.", 2),
      done({ ttftMs: 30 }),
    ]);
    expect(problems).toEqual([]);
    expect(state).toMatchObject({
      status: "done",
      refusal: "I can't help with that.",
      text: "",
      thinking: false,
      tokens: 2,
      timings: { ttftMs: 30 },
    });
  });
});

describe("structured output", () => {
  it("is valid with the value ai:done carries, JSON null included", () => {
    const value = { title: "Sky", tags: ["blue"] };
    const { state } = fold(structured(), [token('{"title":"Sky",', 0), done({ output: value })]);
    expect(state).toMatchObject({
      status: "done",
      text: '{"title":"Sky",',
      output: { valid: true, value },
    });
    expect(fold(structured(), [done({ output: null })]).state!.output).toEqual({
      valid: true,
      value: null,
    });
  });

  it("is invalid after an invalid_output error, keeping the text that streamed", () => {
    const { state } = fold(structured(), [
      token('{"title": ', 0),
      error({ code: "invalid_output", message: "not valid JSON", retryable: true }),
    ]);
    expect(state).toMatchObject({
      status: "error",
      text: '{"title": ',
      output: { valid: false },
      error: { code: "invalid_output", retryable: true },
    });
  });

  it("is not judged when the answer was a tool call or a refusal, or failed otherwise", () => {
    expect(fold(structured(), [refusal("No.", 0), done()]).state).not.toHaveProperty("output");
    expect(fold(structured(), [error({ code: "timeout" })]).state).not.toHaveProperty("output");
  });
});

describe("seq across parts", () => {
  it("numbers every kind of part in one sequence", () => {
    const { request, problems } = fold(sentRequest(), [
      start(),
      reasoning("a", 0, 3),
      toolCall(0, 3),
      toolArgs(0, "{}", 4, 2),
      refusal("x", 6),
      token("y", 7),
    ]);
    expect(problems).toEqual([]);
    expect(request!.nextSeq).toBe(8);
  });

  it("reports a gap between parts of different kinds, and keeps the part", () => {
    const { state, problems } = fold(sentRequest(), [
      start(),
      reasoning("think", 0, 2),
      token("answer", 3),
      toolCall(0, 4),
      toolArgs(0, "{", 6),
    ]);
    expect(state).toMatchObject({ text: "answer", toolCalls: [{ arguments: "{" }] });
    expect(problems).toEqual([
      'ai:token for "r1": seq 3, expected 2 (gap)',
      'ai:tool_args for "r1": seq 6, expected 5 (gap)',
    ]);
  });

  it("drops a part whose seq another kind already used", () => {
    const { state, problems } = fold(sentRequest(), [
      start(),
      reasoning("think", 0),
      token("dup", 0),
      refusal("no", 1),
    ]);
    expect(state).toMatchObject({ text: "", refusal: "no" });
    expect(problems).toEqual(['ai:token for "r1": seq 0, expected 1 (duplicate, dropped)']);
  });

  it("reports any part before ai:start", () => {
    const { problems } = fold(sentRequest(), [reasoning("early", 0)]);
    expect(problems).toEqual(['ai:reasoning for "r1": reasoning before ai:start']);
  });
});

describe("a resumable generation", () => {
  const resumableStart: ServerFrame = {
    type: "ai:start",
    requestId: "r1",
    model: "m",
    seq: 0,
    resumeToken: "tok",
  };

  it("keeps the resume token and numbers parts from 1, the terminal after them", () => {
    const { request, state, problems } = fold(sentRequest(), [
      resumableStart,
      token("Hel", 1),
      token("lo wor", 2, 2),
      token("ld", 4),
      done({ seq: 5 }),
    ]);
    expect(problems).toEqual([]);
    expect(request).toMatchObject({ resumeToken: "tok", nextSeq: 5, awaiting: false });
    expect(state).toMatchObject({ status: "done", text: "Hello world", tokens: 4 });
  });

  it("drops, and reports, any event that ends at or below the last position held", () => {
    const { request, state, problems } = fold(sentRequest(), [
      resumableStart,
      token("a", 1),
      token("bc", 2, 2),
      token("b", 2), // held already
      token("bc", 2, 2), // held already
      resumableStart, // position 0
      token("d", 4),
      error({ seq: 4, code: "cancelled" }), // held: not an end
    ]);
    expect(state).toMatchObject({ status: "streaming", text: "abcd", tokens: 4 });
    expect(request).toMatchObject({ nextSeq: 5, awaiting: true });
    expect(problems).toEqual([
      'ai:token for "r1": seq 2, expected 4 (duplicate, dropped)',
      'ai:token for "r1": seq 2, expected 4 (duplicate, dropped)',
      'ai:start for "r1": a second ai:start',
      'ai:error for "r1": seq 4, expected 5 (duplicate, dropped)',
    ]);
  });

  it("reports an event only partly held, and goes on after it", () => {
    const { request, problems } = fold(sentRequest(), [
      resumableStart,
      token("a", 1),
      token("ab", 1, 2),
    ]);
    expect(problems).toEqual(['ai:token for "r1": seq 1, expected 2 (overlap)']);
    expect(request?.nextSeq).toBe(3);
  });

  it("shows not_found (nothing left to resume) as an ended answer that Retry may ask again", () => {
    const { state } = fold(sentRequest(), [
      resumableStart,
      token("a", 1),
      error({ code: "not_found", message: "", retryable: false }),
    ]);
    expect(state).toMatchObject({
      status: "error",
      text: "a",
      error: {
        code: "not_found",
        message: "That answer can no longer be picked up.",
        retryable: true,
      },
    });
  });

  describe("an unavailable resume", () => {
    /** The bridge's answer to a resume while the shared log is out of reach. */
    const unavailable: Extract<ServerFrame, { type: "ai:error" }> = {
      type: "ai:error",
      requestId: "r1",
      code: "unavailable",
      message: "resume is unavailable for now (the shared log cannot be reached); try again",
      retryable: true,
      retryAfterMs: 1000,
      durationMs: 0,
    };

    /** A resumable answer with reasoning, text and a tool call (0–4), dropped and resumed. */
    function resumedRequest(): RequestRecord {
      const { request } = fold(sentRequest(), [
        resumableStart,
        { type: "ai:reasoning", requestId: "r1", chunk: "hm", seq: 1, count: 1 },
        token("Hel", 2),
        { type: "ai:tool_call", requestId: "r1", seq: 3, index: 0, id: "c1", name: "f" },
        { type: "ai:tool_args", requestId: "r1", seq: 4, count: 1, index: 0, chunk: "{" },
      ]);
      return resumed(interrupted(request!, 50));
    }

    it("is not the end: detached again, reconnecting, all it holds kept, then goes on", () => {
      const before = frozen(resumedRequest());
      const { request, state, problems } = fold(before, [unavailable]);
      expect(problems).toEqual([]);
      expect(request).toMatchObject({
        detached: true,
        awaiting: false,
        nextSeq: 5,
        resumeRetries: 1,
      });
      expect(state).toEqual({ ...before.state, reconnecting: true });
      // Resumed again: the count starts over with the next frame, which follows on.
      const after = fold(resumed(request!), [
        token("lo", 5),
        { type: "ai:tool_args", requestId: "r1", seq: 6, count: 1, index: 0, chunk: "}" },
        done({ seq: 7, toolCalls: [{ id: "c1", name: "f", arguments: "{}" }] }),
      ]);
      expect(after.problems).toEqual([]);
      expect(after.request).toMatchObject({ resumeRetries: 0 });
      expect(after.state).toMatchObject({
        status: "done",
        text: "Hello",
        tokens: 5,
        reasoning: "hm",
        reasoningTokens: 1,
        toolCalls: [{ index: 0, id: "c1", name: "f", arguments: "{}", complete: true }],
      });
    });

    it("ends as ever when not resumed, with a position, after Stop, or not retryable", () => {
      const ends = (request: RequestRecord, frame: ServerFrame) =>
        fold(request, [frame]).request!.detached === false;
      const plain = fold(sentRequest(), [resumableStart, token("a", 1)]).request!;
      expect(ends(plain, unavailable)).toBe(true);
      expect(fold(plain, [unavailable]).state).toMatchObject({
        status: "error",
        error: { code: "unavailable", retryable: true, retryAfterMs: 1000 },
      });
      expect(ends(resumedRequest(), { ...unavailable, seq: 5 })).toBe(true); // its own end
      expect(ends(stopped(resumedRequest(), 60), unavailable)).toBe(true);
      expect(ends(resumedRequest(), { ...unavailable, retryable: false })).toBe(true);
      expect(ends(resumedRequest(), { ...unavailable, code: "internal" })).toBe(true);
      expect(ends(resumedRequest(), unavailable)).toBe(false);
    });

    it("ends in error after five resumes again in a row", () => {
      let request = resumedRequest();
      for (let i = 1; i <= 5; i += 1) {
        request = fold(request, [unavailable]).request!;
        expect(request).toMatchObject({ detached: true, resumeRetries: i });
        request = resumed(request);
      }
      const { state } = fold(request, [unavailable]);
      expect(state).toMatchObject({
        status: "error",
        reconnecting: false,
        text: "Hel",
        error: { code: "unavailable", retryable: true },
      });
    });
  });
});

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import type { ServerFrame } from "../generated/frames.ts";
import { makeStore } from "../test/fakeSocket.ts";

beforeEach(() => {
  vi.useFakeTimers();
});

afterEach(() => {
  vi.useRealTimers();
});

/** A store whose socket is already open. */
function connected(options: Parameters<typeof makeStore>[0] = {}) {
  const t = makeStore(options);
  t.store.connect();
  t.socket.open();
  return t;
}

describe("connection", () => {
  it("opens the URL it was given and shows connecting, then connected", () => {
    const t = makeStore();
    expect(t.state.connection).toBe("connecting");
    t.store.connect();
    expect(t.socket.url).toBe("ws://bridge.test/ws");
    expect(t.state.connection).toBe("connecting");
    t.socket.open();
    expect(t.state.connection).toBe("connected");
  });

  it("connects once however often connect() is called", () => {
    const t = makeStore();
    t.store.connect();
    t.store.connect();
    expect(t.sockets).toHaveLength(1);
  });

  it("closes the socket on dispose and does not reconnect", () => {
    const t = connected();
    t.store.dispose();
    expect(t.socket.closedByClient).toEqual({ code: 1000, reason: "page closed" });
    t.socket.drop(1000);
    vi.advanceTimersByTime(60_000);
    expect(t.sockets).toHaveLength(1);
  });
});

describe("a generation", () => {
  it("sends ai:generate with the prompt and a fresh request id", () => {
    const t = connected();
    const id = t.store.send("  hello  ");
    expect(id).toBe("r1");
    expect(t.socket.frames).toEqual([
      { type: "ai:generate", requestId: "r1", prompt: "hello", resumable: true },
    ]);
    expect(t.request("r1")).toMatchObject({
      status: "streaming",
      queued: false,
      text: "",
      prompt: "hello",
    });
    expect(t.state.order).toEqual(["r1"]);
  });

  it("ignores an empty prompt", () => {
    const t = connected();
    expect(t.store.send("   \n")).toBeUndefined();
    expect(t.socket.sent).toEqual([]);
  });

  it("appends chunks in order and publishes them on the next animation frame only", () => {
    const t = connected();
    t.store.send("hi");
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "simulated-echo" });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "Hel", seq: 0, count: 1 });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "lo", seq: 1, count: 1 });
    expect(t.request("r1").text).toBe(""); // not yet published
    t.flush();
    expect(t.request("r1")).toMatchObject({
      text: "Hello",
      tokens: 2,
      model: "simulated-echo",
      started: true,
    });
  });

  it("ends done with finish reason, usage and the server's timings", () => {
    const t = connected();
    t.store.send("hi");
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m" });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "x", seq: 0, count: 1 });
    t.socket.receive({
      type: "ai:done",
      toolCalls: [],
      requestId: "r1",
      finishReason: "stop",
      usage: { promptTokens: 4, completionTokens: 1, source: "estimated" },
      ttftMs: 120,
      durationMs: 480,
    });
    t.flush();
    expect(t.request("r1")).toMatchObject({
      status: "done",
      text: "x",
      finishReason: "stop",
      usage: { promptTokens: 4, completionTokens: 1, source: "estimated" },
      timings: { ttftMs: 120, durationMs: 480 },
    });
    expect(t.request("r1").timings.endedAt).toBeTypeOf("number");
  });

  it("runs several generations at once, each with its own text", () => {
    const t = connected();
    t.store.send("a");
    t.store.send("b");
    t.socket.receive({ type: "ai:start", requestId: "r2", model: "m" });
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m" });
    t.socket.receive({ type: "ai:token", requestId: "r2", chunk: "B", seq: 0, count: 1 });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "A", seq: 0, count: 1 });
    t.socket.receive({
      type: "ai:done",
      toolCalls: [],
      requestId: "r2",
      finishReason: "stop",
      ttftMs: 1,
      durationMs: 2,
    });
    t.flush();
    expect(t.request("r1")).toMatchObject({ status: "streaming", text: "A" });
    expect(t.request("r2")).toMatchObject({ status: "done", text: "B" });
  });

  it("keeps the identity of requests that did not change", () => {
    const t = connected();
    t.store.send("a");
    t.store.send("b");
    const before = t.state;
    t.socket.receive({ type: "ai:start", requestId: "r2", model: "m" });
    t.flush();
    expect(t.state).not.toBe(before);
    expect(t.state.requests["r1"]).toBe(before.requests["r1"]);
    expect(t.state.requests["r2"]).not.toBe(before.requests["r2"]);
    expect(t.state.order).toBe(before.order);
  });
});

describe("stop", () => {
  it("sends ai:cancel, shows cancelled at once and keeps the text received so far", () => {
    const t = connected();
    t.store.send("hi");
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m" });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "Once upon", seq: 0, count: 1 });
    t.store.stop("r1"); // before the token was even painted
    expect(t.socket.frames.at(-1)).toEqual({ type: "ai:cancel", requestId: "r1" });
    expect(t.request("r1")).toMatchObject({ status: "cancelled", text: "Once upon" });
  });

  it("drops tokens still in flight quietly and takes usage from the bridge's cancelled error", () => {
    const t = connected();
    t.store.send("hi");
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m" });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "kept", seq: 0, count: 1 });
    t.store.stop("r1");
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: " late", seq: 1, count: 1 });
    t.socket.receive({
      type: "ai:error",
      requestId: "r1",
      code: "cancelled",
      message: "cancelled by the client",
      retryable: false,
      usage: { promptTokens: 2, completionTokens: 2, source: "estimated" },
      durationMs: 90,
    });
    t.flush();
    expect(t.request("r1")).toMatchObject({
      status: "cancelled",
      text: "kept",
      usage: { completionTokens: 2 },
      timings: { durationMs: 90 },
    });
    expect(t.state.protocolErrors).toEqual([]);
  });

  it("stays stopped when the answer finished just as Stop was pressed", () => {
    const t = connected();
    t.store.send("hi");
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m" });
    t.store.stop("r1");
    t.socket.receive({
      type: "ai:done",
      toolCalls: [],
      requestId: "r1",
      finishReason: "stop",
      ttftMs: 1,
      durationMs: 2,
    });
    t.flush();
    expect(t.request("r1").status).toBe("cancelled");
    expect(t.state.protocolErrors).toEqual([]);
  });

  it("takes a queued generate back without sending anything", () => {
    const t = makeStore();
    t.store.connect();
    t.store.send("hi");
    t.store.stop("r1");
    t.socket.open();
    expect(t.socket.sent).toEqual([]);
    expect(t.request("r1")).toMatchObject({ status: "cancelled", queued: false });
  });

  it("does nothing for an answer that already ended", () => {
    const t = connected();
    t.store.send("hi");
    t.socket.receive({
      type: "ai:error",
      requestId: "r1",
      code: "internal",
      message: "x",
      retryable: false,
      durationMs: 0,
    });
    t.flush();
    t.store.stop("r1");
    t.store.stop("nope");
    expect(t.socket.frames.map((f) => f.type)).toEqual(["ai:generate"]);
    expect(t.request("r1").status).toBe("error");
  });
});

describe("history", () => {
  it("sends the completed turns as messages with a follow-up", () => {
    const t = connected();
    t.store.send("What is 2+2?");
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m" });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "4", seq: 0, count: 1 });
    t.socket.receive({
      type: "ai:done",
      toolCalls: [],
      requestId: "r1",
      finishReason: "stop",
      ttftMs: 1,
      durationMs: 2,
    });
    // No flush: the history comes from the store's own state, not from what was painted.
    t.store.send("And times 3?");
    expect(t.socket.frames.at(-1)).toEqual({
      type: "ai:generate",
      requestId: "r2",
      prompt: "And times 3?",
      messages: [
        { role: "user", content: "What is 2+2?" },
        { role: "assistant", content: "4" },
      ],
      resumable: true,
    });
    expect(t.request("r2").messages).toHaveLength(2);
  });

  it("leaves out failed, streaming and empty stopped turns, keeps stopped text", () => {
    const t = connected();
    t.store.send("fails");
    t.socket.receive({
      type: "ai:error",
      requestId: "r1",
      code: "internal",
      message: "x",
      retryable: false,
      durationMs: 0,
    });
    t.store.send("still streaming");
    t.store.send("stopped with text");
    t.socket.receive({ type: "ai:start", requestId: "r3", model: "m" });
    t.socket.receive({ type: "ai:token", requestId: "r3", chunk: "partial", seq: 0, count: 1 });
    t.store.stop("r3");
    t.store.send("stopped empty");
    t.store.stop("r4");
    t.store.send("next");
    expect(t.socket.frames.at(-1)).toMatchObject({
      requestId: "r5",
      messages: [
        { role: "user", content: "stopped with text" },
        { role: "assistant", content: "partial" },
      ],
    });
  });
});

describe("retry", () => {
  it("sends the same prompt and history under a new id, in the failed one's place", () => {
    const t = connected();
    t.store.send("first");
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m" });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "one", seq: 0, count: 1 });
    t.socket.receive({
      type: "ai:done",
      toolCalls: [],
      requestId: "r1",
      finishReason: "stop",
      ttftMs: 1,
      durationMs: 2,
    });
    t.store.send("second");
    t.store.send("third");
    t.socket.receive({
      type: "ai:error",
      requestId: "r2",
      code: "rate_limited",
      message: "later",
      retryable: true,
      durationMs: 0,
    });
    t.flush();
    const sentBefore = t.socket.frames.find((f) => f.requestId === "r2");
    const id = t.store.retry("r2");
    expect(id).toBe("r4");
    const resent = t.socket.frames.at(-1);
    expect(resent).toEqual({ ...sentBefore, requestId: "r4" });
    expect(t.state.order).toEqual(["r1", "r4", "r3"]);
    expect(t.state.requests["r2"]).toBeUndefined();
    expect(t.request("r4")).toMatchObject({ status: "streaming", retryOf: "r2", prompt: "second" });
  });

  it("only retries failed requests", () => {
    const t = connected();
    t.store.send("hi");
    expect(t.store.retry("r1")).toBeUndefined();
    expect(t.store.retry("unknown")).toBeUndefined();
  });
});

describe("protocol errors", () => {
  function streaming() {
    const t = connected();
    t.store.send("hi");
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m" });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "a", seq: 0, count: 1 });
    return t;
  }

  it("reports a seq gap naming the frame, and still shows the chunk", () => {
    const t = streaming();
    const frame = '{"type":"ai:token","requestId":"r1","chunk":"c","seq":2,"count":1}';
    t.socket.receive(frame);
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "d", seq: 3, count: 1 });
    t.flush();
    expect(t.request("r1").text).toBe("acd");
    expect(t.state.protocolErrors).toEqual([
      { message: 'ai:token for "r1": seq 2, expected 1 (gap)', frame },
    ]);
    expect(t.warnings).toEqual([`aistream: ai:token for "r1": seq 2, expected 1 (gap): ${frame}`]);
  });

  it("reports frames for an unknown id, after the end, and a second start", () => {
    const t = streaming();
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m" });
    t.socket.receive({ type: "ai:token", requestId: "ghost", chunk: "boo", seq: 0, count: 1 });
    t.socket.receive({
      type: "ai:done",
      toolCalls: [],
      requestId: "r1",
      finishReason: "stop",
      ttftMs: 1,
      durationMs: 2,
    });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "late", seq: 1, count: 1 });
    t.socket.receive({
      type: "ai:error",
      requestId: "r1",
      code: "internal",
      message: "m",
      retryable: false,
      durationMs: 0,
    });
    t.flush();
    expect(t.request("r1")).toMatchObject({ status: "done", text: "a" });
    expect(t.state.protocolErrors.map((e) => e.message)).toEqual([
      'ai:start for "r1": a second ai:start',
      'ai:token for "ghost": unknown request id',
      'ai:token for "r1" after the request ended',
      'ai:error for "r1" after the request ended',
    ]);
    expect(t.state.protocolErrors[1]!.frame).toContain('"chunk":"boo"');
  });

  it("reports malformed frames with the frame quoted and goes on", () => {
    const t = streaming();
    t.socket.receive("{oops");
    t.socket.receive('{"type":"ai:teleport","requestId":"r1"}');
    t.socket.onmessage?.(new MessageEvent("message", { data: new ArrayBuffer(2) }));
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "b", seq: 1, count: 1 });
    t.flush();
    expect(t.request("r1").text).toBe("ab");
    expect(t.state.protocolErrors).toEqual([
      { message: "malformed frame (not valid JSON)", frame: "{oops" },
      {
        message: 'malformed frame (unknown type "ai:teleport")',
        frame: '{"type":"ai:teleport","requestId":"r1"}',
      },
      {
        message: "malformed frame (binary frame, expected JSON text)",
        frame: "<binary frame, 2 bytes>",
      },
    ]);
  });

  it("keeps only the most recent reports", () => {
    const t = connected({ maxProtocolErrors: 3 });
    for (let i = 0; i < 5; i++) t.socket.receive(`bad ${i}`);
    t.flush();
    expect(t.state.protocolErrors.map((e) => e.frame)).toEqual(["bad 2", "bad 3", "bad 4"]);
  });
});

describe("reconnect", () => {
  it("marks generations in flight as interrupted (retryable) and leaves the others alone", () => {
    const t = connected();
    t.store.send("finished");
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m" });
    t.socket.receive({
      type: "ai:done",
      toolCalls: [],
      requestId: "r1",
      finishReason: "stop",
      ttftMs: 1,
      durationMs: 2,
    });
    t.store.send("in flight");
    t.socket.receive({ type: "ai:start", requestId: "r2", model: "m" });
    t.socket.receive({ type: "ai:token", requestId: "r2", chunk: "half", seq: 0, count: 1 });
    t.store.send("stopped");
    t.store.stop("r3");
    t.socket.drop();
    expect(t.state.connection).toBe("reconnecting");
    expect(t.request("r1").status).toBe("done");
    expect(t.request("r2")).toMatchObject({
      status: "error",
      text: "half",
      error: { code: "interrupted", retryable: true },
    });
    expect(t.request("r3").status).toBe("cancelled");
  });

  it("reconnects with exponential backoff until the socket opens", () => {
    const t = connected();
    t.socket.drop();
    const waits: number[] = [];
    for (let attempt = 0; attempt < 4; attempt++) {
      const count = t.sockets.length;
      let waited = 0;
      while (t.sockets.length === count) {
        vi.advanceTimersByTime(100);
        waited += 100;
      }
      waits.push(waited);
      if (attempt < 3) t.socket.drop(); // the bridge is still down
    }
    expect(waits).toEqual([500, 1000, 2000, 4000]);
    expect(t.state.connection).toBe("reconnecting");
    t.socket.open();
    expect(t.state.connection).toBe("connected");
  });

  it("starts the backoff over after a connection that stayed up", () => {
    const t = connected();
    t.socket.drop();
    vi.advanceTimersByTime(500);
    t.socket.drop();
    vi.advanceTimersByTime(1000);
    t.socket.open();
    vi.advanceTimersByTime(10_000); // stable for a while
    t.socket.drop();
    vi.advanceTimersByTime(499);
    expect(t.sockets).toHaveLength(3);
    vi.advanceTimersByTime(1);
    expect(t.sockets).toHaveLength(4);
  });

  it("keeps backing off when connections open and drop at once", () => {
    const t = connected();
    t.socket.drop();
    vi.advanceTimersByTime(500);
    t.socket.open();
    t.socket.drop();
    vi.advanceTimersByTime(999);
    expect(t.sockets).toHaveLength(2);
    vi.advanceTimersByTime(1);
    expect(t.sockets).toHaveLength(3);
  });

  it("says connecting, not reconnecting, until the first connection opened", () => {
    const t = makeStore();
    t.store.connect();
    t.socket.drop();
    expect(t.state.connection).toBe("connecting");
  });

  it("queues questions asked while disconnected and sends them on open", () => {
    const t = makeStore();
    t.store.connect();
    t.store.send("early");
    expect(t.request("r1")).toMatchObject({ status: "streaming", queued: true });
    t.socket.open();
    expect(t.socket.frames).toEqual([
      { type: "ai:generate", requestId: "r1", prompt: "early", resumable: true },
    ]);
    expect(t.request("r1").queued).toBe(false);
  });

  it("reconnects at once, without waiting for the backoff, when a question is asked", () => {
    const t = connected();
    t.socket.drop();
    expect(t.sockets).toHaveLength(1);
    t.store.send("now please");
    expect(t.sockets).toHaveLength(2);
    t.socket.open();
    expect(t.socket.frames).toEqual([
      { type: "ai:generate", requestId: "r1", prompt: "now please", resumable: true },
    ]);
  });

  it("retries an interrupted generation on the new connection", () => {
    const t = connected();
    t.store.send("hi");
    t.socket.drop();
    const retried = t.store.retry("r1");
    t.socket.open();
    expect(t.socket.frames).toEqual([
      { type: "ai:generate", requestId: retried, prompt: "hi", resumable: true },
    ]);
  });

  it("ignores whatever an old socket says after it was replaced", () => {
    const t = connected();
    const old = t.socket;
    t.socket.drop();
    vi.advanceTimersByTime(500);
    t.socket.open();
    t.store.send("hi");
    old.receive({ type: "ai:start", requestId: "r1", model: "m" });
    old.drop();
    t.flush();
    expect(t.request("r1")).toMatchObject({ status: "streaming", started: false });
    expect(t.state.connection).toBe("connected");
  });

  it("treats a socket that cannot even be created as a failed attempt", () => {
    let calls = 0;
    const t = makeStore({
      socketFactory: () => {
        calls += 1;
        throw new SyntaxError("bad url");
      },
    });
    t.store.connect();
    vi.advanceTimersByTime(500);
    expect(calls).toBe(2);
    expect(t.warnings[0]).toContain("cannot open ws://bridge.test/ws");
  });
});

describe("parts", () => {
  const weather = {
    name: "get_weather",
    parameters: { type: "object", properties: { city: { type: "string" } } },
  };
  const call = { id: "c1", name: "get_weather", arguments: '{"city":"Oslo"}' };

  /** A store with request r1 (asked with the weather tool) done with one tool call. */
  function calledTool() {
    const t = connected();
    t.store.send("Weather in Oslo?", { tools: [weather], toolChoice: "auto" });
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m" });
    t.socket.receive({ type: "ai:reasoning", requestId: "r1", chunk: "hm", seq: 0, count: 1 });
    t.socket.receive({ type: "ai:tool_call", requestId: "r1", seq: 1, index: 0, ...call });
    t.socket.receive({
      type: "ai:tool_args",
      requestId: "r1",
      chunk: call.arguments,
      seq: 2,
      count: 3,
      index: 0,
    });
    t.socket.receive({
      type: "ai:done",
      requestId: "r1",
      finishReason: "tool_calls",
      toolCalls: [call],
      ttftMs: 1,
      durationMs: 2,
    });
    t.flush();
    return t;
  }

  it("sends tools, toolChoice and responseFormat with the prompt, and again on Retry", () => {
    const t = connected();
    const responseFormat = { type: "json_schema" as const, schema: { type: "object" } };
    t.store.send("a card", { responseFormat });
    expect(t.socket.frames[0]).toEqual({
      type: "ai:generate",
      requestId: "r1",
      prompt: "a card",
      responseFormat,
      resumable: true,
    });
    t.socket.receive({
      type: "ai:error",
      requestId: "r1",
      code: "invalid_output",
      message: "not JSON",
      retryable: true,
      durationMs: 3,
    });
    t.flush();
    expect(t.request("r1")).toMatchObject({ status: "error", output: { valid: false } });
    t.store.retry("r1");
    expect(t.socket.frames.at(-1)).toEqual({ ...t.socket.frames[0], requestId: "r2" });
  });

  it("publishes reasoning, tool calls and refusal on the next animation frame only", () => {
    const t = connected();
    t.store.send("hi");
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m" });
    t.flush();
    const before = t.state;
    let published = 0;
    t.store.subscribe(() => (published += 1));
    t.socket.receive({ type: "ai:reasoning", requestId: "r1", chunk: "a", seq: 0, count: 1 });
    t.socket.receive({ type: "ai:reasoning", requestId: "r1", chunk: "b", seq: 1, count: 1 });
    t.socket.receive({ type: "ai:refusal", requestId: "r1", chunk: "No", seq: 2, count: 1 });
    expect(t.state).toBe(before);
    t.flush();
    expect(published).toBe(1);
    expect(t.request("r1")).toMatchObject({ reasoning: "ab", refusal: "No", thinking: false });
  });

  it("reports a seq gap between parts of different kinds", () => {
    const t = connected();
    t.store.send("hi");
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m" });
    t.socket.receive({ type: "ai:reasoning", requestId: "r1", chunk: "a", seq: 0, count: 2 });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "b", seq: 5, count: 1 });
    t.flush();
    expect(t.state.protocolErrors.map((e) => e.message)).toEqual([
      'ai:token for "r1": seq 5, expected 2 (gap)',
    ]);
    expect(t.request("r1").text).toBe("b");
  });

  it("sends tool results as the next step: the calls and results as history, the same tools", () => {
    const t = calledTool();
    expect(t.request("r1").toolCalls).toEqual([{ index: 0, ...call, complete: true }]);
    t.store.send("Something else"); // asked meanwhile: not part of the loop's history
    const id = t.store.sendToolResults("r1", [{ toolCallId: "c1", content: '{"temp":3}' }]);
    expect(id).toBe("r3");
    expect(t.socket.frames.at(-1)).toEqual({
      type: "ai:generate",
      requestId: "r3",
      messages: [
        { role: "user", content: "Weather in Oslo?" },
        { role: "assistant", content: "", toolCalls: [call] },
        { role: "tool", toolCallId: "c1", content: '{"temp":3}' },
      ],
      tools: [weather],
      toolChoice: "auto",
      resumable: true,
    });
    expect(t.state.order).toEqual(["r1", "r3", "r2"]); // right after the request it continues
    expect(t.request("r1").toolResults).toEqual([{ toolCallId: "c1", content: '{"temp":3}' }]);
    expect(t.request("r3")).toMatchObject({ prompt: "", continues: "r1" });
    // Answered once only.
    expect(t.store.sendToolResults("r1", [{ toolCallId: "c1", content: "again" }])).toBeUndefined();
  });

  it("refuses results for a request that made no such call or is not done", () => {
    const t = calledTool();
    expect(t.store.sendToolResults("r1", [{ toolCallId: "nope", content: "x" }])).toBeUndefined();
    expect(t.store.sendToolResults("r1", [])).toBeUndefined();
    t.store.send("plain");
    expect(t.store.sendToolResults("r2", [{ toolCallId: "c1", content: "x" }])).toBeUndefined();
    expect(t.request("r1").toolResults).toBeUndefined();
  });

  it("puts the whole loop in the history of the next question", () => {
    const t = calledTool();
    t.store.sendToolResults("r1", [{ toolCallId: "c1", content: "3 degrees" }]);
    t.socket.receive({ type: "ai:start", requestId: "r2", model: "m" });
    t.socket.receive({ type: "ai:token", requestId: "r2", chunk: "It is 3.", seq: 0, count: 1 });
    t.socket.receive({
      type: "ai:done",
      requestId: "r2",
      finishReason: "stop",
      toolCalls: [],
      ttftMs: 1,
      durationMs: 2,
    });
    t.store.send("Thanks");
    expect(t.socket.frames.at(-1)).toMatchObject({
      requestId: "r3",
      prompt: "Thanks",
      messages: [
        { role: "user", content: "Weather in Oslo?" },
        { role: "assistant", content: "", toolCalls: [call] },
        { role: "tool", toolCallId: "c1", content: "3 degrees" },
        { role: "assistant", content: "It is 3." },
      ],
    });
  });

  it("keeps a retried step of the loop in its place, still continuing the same request", () => {
    const t = calledTool();
    t.store.sendToolResults("r1", [{ toolCallId: "c1", content: "3" }]);
    const sentFirst = t.socket.frames.at(-1);
    t.socket.receive({
      type: "ai:error",
      requestId: "r2",
      code: "upstream_error",
      message: "x",
      retryable: true,
      durationMs: 0,
    });
    t.store.retry("r2");
    expect(t.socket.frames.at(-1)).toEqual({ ...sentFirst, requestId: "r3" });
    expect(t.state.order).toEqual(["r1", "r3"]);
    expect(t.request("r3")).toMatchObject({ continues: "r1", retryOf: "r2" });
  });
});

describe("a busy server (load shedding)", () => {
  /** The refusal of a generate by a server at capacity (with the hint unless it is null). */
  function shed(requestId: string, retryAfterMs: number | null = 1000): ServerFrame {
    return {
      type: "ai:error",
      requestId,
      code: "too_many_requests",
      message: "the server is at capacity; try again shortly",
      retryable: true,
      ...(retryAfterMs !== null ? { retryAfterMs } : {}),
      durationMs: 0,
    };
  }

  /** The request ids of the generates sent so far, in order. */
  function generates(t: ReturnType<typeof connected>) {
    return t.socket.frames.filter((f) => f.type === "ai:generate").map((f) => f.requestId);
  }

  it("sends a shed generate again after the hint, under a new id in its place, and streams", () => {
    const t = connected();
    t.store.send("first");
    t.store.send("second");
    const first = t.socket.frames[0];
    t.socket.receive(shed("r1", 2000));
    t.flush();
    expect(t.state.order).toEqual(["r3", "r2"]);
    expect(t.state.requests["r1"]).toBeUndefined();
    expect(t.request("r3")).toMatchObject({
      status: "streaming",
      queued: true,
      retryInS: 2,
      retryOf: "r1",
      prompt: "first",
    });
    expect(t.request("r3").timings).not.toHaveProperty("sentAt");
    vi.advanceTimersByTime(1000);
    t.flush();
    expect(t.request("r3").retryInS).toBe(1);
    vi.advanceTimersByTime(999);
    expect(generates(t)).toEqual(["r1", "r2"]);
    vi.advanceTimersByTime(1);
    expect(t.socket.frames.at(-1)).toEqual({ ...first, requestId: "r3" });
    t.flush();
    expect(t.request("r3")).toMatchObject({ status: "streaming", queued: false });
    expect(t.request("r3")).not.toHaveProperty("retryInS");
    t.socket.receive({ type: "ai:start", requestId: "r3", model: "m" });
    t.socket.receive({ type: "ai:token", requestId: "r3", chunk: "Hello", seq: 0, count: 1 });
    t.socket.receive({
      type: "ai:done",
      toolCalls: [],
      requestId: "r3",
      finishReason: "stop",
      ttftMs: 1,
      durationMs: 2,
    });
    t.flush();
    expect(t.request("r3")).toMatchObject({ status: "done", text: "Hello" });
    expect(t.state.order).toEqual(["r3", "r2"]);
    expect(generates(t)).toEqual(["r1", "r2", "r3"]); // one generate per request id
    expect(t.warnings).toEqual([]);
  });

  it("adds a little jitter to the hint, never less than the hint", () => {
    const t = connected({ random: () => 0.5 });
    t.store.send("hi");
    t.socket.receive(shed("r1", 1000));
    t.flush();
    expect(t.request("r2").retryInS).toBe(2); // 1100 ms
    vi.advanceTimersByTime(100);
    t.flush();
    expect(t.request("r2").retryInS).toBe(1);
    vi.advanceTimersByTime(999);
    expect(generates(t)).toEqual(["r1"]);
    vi.advanceTimersByTime(1);
    expect(generates(t)).toEqual(["r1", "r2"]);
  });

  it("gives up after three automatic resends: the error stays, with Retry, which starts over", () => {
    const t = connected();
    t.store.send("hi");
    for (const id of ["r1", "r2", "r3"]) {
      t.socket.receive(shed(id));
      vi.advanceTimersByTime(1000);
    }
    expect(generates(t)).toEqual(["r1", "r2", "r3", "r4"]);
    t.socket.receive(shed("r4"));
    vi.advanceTimersByTime(60_000);
    t.flush();
    expect(generates(t)).toEqual(["r1", "r2", "r3", "r4"]);
    expect(t.state.order).toEqual(["r4"]);
    expect(t.request("r4")).toMatchObject({
      status: "error",
      retryOf: "r3",
      error: {
        code: "too_many_requests",
        message: "the server is at capacity; try again shortly",
        retryable: true,
        retryAfterMs: 1000,
      },
    });
    // The user's Retry is a new request, with three automatic resends of its own.
    expect(t.store.retry("r4")).toBe("r5");
    expect(generates(t)).toEqual(["r1", "r2", "r3", "r4", "r5"]);
    t.socket.receive(shed("r5"));
    t.flush();
    expect(t.request("r6")).toMatchObject({ status: "streaming", retryInS: 1 });
  });

  it("takes the resend back on Stop during the wait: cancelled, and nothing is sent", () => {
    const t = connected();
    t.store.send("hi");
    t.socket.receive(shed("r1", 2000));
    t.flush();
    t.store.stop("r2");
    expect(t.request("r2")).toMatchObject({ status: "cancelled", queued: false });
    expect(t.request("r2")).not.toHaveProperty("retryInS");
    vi.advanceTimersByTime(60_000);
    t.flush();
    expect(t.socket.frames).toEqual([
      { type: "ai:generate", requestId: "r1", prompt: "hi", resumable: true },
    ]);
    expect(t.request("r2").status).toBe("cancelled");
    expect(vi.getTimerCount()).toBe(0);
  });

  it("does not resend by itself a refusal without a hint, or one after ai:start", () => {
    const t = connected();
    t.store.send("per-connection limit");
    t.socket.receive(shed("r1", null));
    t.store.send("started");
    t.socket.receive({ type: "ai:start", requestId: "r2", model: "m" });
    t.socket.receive(shed("r2"));
    vi.advanceTimersByTime(60_000);
    t.flush();
    expect(generates(t)).toEqual(["r1", "r2"]);
    expect(t.state.order).toEqual(["r1", "r2"]);
    for (const id of ["r1", "r2"]) {
      expect(t.request(id)).toMatchObject({
        status: "error",
        error: { code: "too_many_requests", retryable: true },
      });
    }
    expect(t.request("r1").error).not.toHaveProperty("retryAfterMs");
  });

  it("counts down once a second, not once per frame", () => {
    const t = connected();
    t.store.send("hi");
    t.socket.receive(shed("r1", 3000));
    t.flush();
    const shown: (number | undefined)[] = [];
    t.store.subscribe(() => shown.push(t.state.requests["r2"]?.retryInS));
    for (let ms = 0; ms < 3200; ms += 16) {
      vi.advanceTimersByTime(16);
      t.flush();
    }
    expect(shown).toEqual([2, 1, undefined]);
    expect(generates(t)).toEqual(["r1", "r2"]);
  });

  it("waits for the connection when it dropped during the wait, then sends", () => {
    const t = connected();
    t.store.send("hi");
    t.socket.receive(shed("r1", 2000));
    t.socket.drop();
    t.flush();
    expect(t.request("r2")).toMatchObject({ status: "streaming", retryInS: 2 }); // not interrupted
    vi.advanceTimersByTime(2000); // the reconnect (after 500 ms) is still opening
    t.flush();
    expect(t.request("r2")).toMatchObject({ status: "streaming", queued: true });
    expect(t.request("r2")).not.toHaveProperty("retryInS");
    expect(t.sockets).toHaveLength(2);
    t.socket.open();
    expect(t.socket.frames).toEqual([
      { type: "ai:generate", requestId: "r2", prompt: "hi", resumable: true },
    ]);
  });

  it("resends a step of an agent loop in its place, still continuing the same request", () => {
    const t = connected();
    t.store.send("Weather?", { tools: [{ name: "get_weather", parameters: { type: "object" } }] });
    const call = { id: "c1", name: "get_weather", arguments: "{}" };
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m" });
    t.socket.receive({
      type: "ai:tool_call",
      requestId: "r1",
      seq: 0,
      index: 0,
      id: "c1",
      name: "get_weather",
    });
    t.socket.receive({
      type: "ai:done",
      toolCalls: [call],
      requestId: "r1",
      finishReason: "tool_calls",
      ttftMs: 1,
      durationMs: 2,
    });
    t.flush();
    t.store.sendToolResults("r1", [{ toolCallId: "c1", content: "3" }]);
    const step = t.socket.frames.at(-1);
    t.socket.receive(shed("r2"));
    vi.advanceTimersByTime(1000);
    t.flush();
    expect(t.socket.frames.at(-1)).toEqual({ ...step, requestId: "r3" });
    expect(t.state.order).toEqual(["r1", "r3"]);
    expect(t.request("r3")).toMatchObject({ continues: "r1", retryOf: "r2" });
  });

  it("forgets a pending resend when the store is disposed", () => {
    const t = connected();
    t.store.send("hi");
    t.socket.receive(shed("r1"));
    t.store.dispose();
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe("resume after a dropped connection", () => {
  /** A connected store streaming a resumable "Hello wor" for r1 (positions 0–3 held). */
  function streaming(options: Parameters<typeof makeStore>[0] = {}) {
    const t = connected(options);
    t.store.send("hi");
    t.socket.receive({
      type: "ai:start",
      requestId: "r1",
      model: "m",
      seq: 0,
      resumeToken: "tok",
    });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "Hello", seq: 1, count: 1 });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: " wor", seq: 2, count: 2 });
    return t;
  }

  const done = (seq: number): ServerFrame => ({
    type: "ai:done",
    toolCalls: [],
    requestId: "r1",
    finishReason: "stop",
    ttftMs: 1,
    durationMs: 2,
    seq,
  });

  /** Let the backoff run out and open the new socket. */
  function reconnect(t: ReturnType<typeof makeStore>) {
    const count = t.sockets.length;
    vi.advanceTimersByTime(500);
    expect(t.sockets).toHaveLength(count + 1);
    t.socket.open();
  }

  it("asks for resumable generations", () => {
    const t = connected();
    t.store.send("hi");
    expect(t.socket.frames[0]).toMatchObject({ type: "ai:generate", resumable: true });
    const plain = connected({ resumable: false });
    plain.store.send("hi");
    expect(plain.socket.frames[0]).not.toHaveProperty("resumable");
  });

  it("shows reconnecting, resumes from the last position held and ends with every word once", () => {
    const t = streaming();
    t.socket.drop(); // 1006: no close frame
    expect(t.state.connection).toBe("reconnecting");
    expect(t.request("r1")).toMatchObject({
      status: "streaming",
      reconnecting: true,
      text: "Hello wor",
    });
    expect(t.request("r1")).not.toHaveProperty("error");

    reconnect(t);
    expect(t.socket.frames).toEqual([
      { type: "ai:resume", requestId: "r1", resumeToken: "tok", afterSeq: 3 },
    ]);
    expect(t.request("r1").reconnecting).toBe(false);
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "ld", seq: 4, count: 1 });
    t.socket.receive(done(5));
    t.flush();
    expect(t.request("r1")).toMatchObject({ status: "done", text: "Hello world", tokens: 4 });
    expect(t.state.protocolErrors).toEqual([]);
  });

  it("resumes again after a second drop, from the new position", () => {
    const t = streaming();
    t.socket.drop();
    reconnect(t);
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "ld", seq: 4, count: 1 });
    t.socket.drop();
    vi.advanceTimersByTime(500); // the first connection was short: the backoff grew
    reconnect(t);
    expect(t.socket.frames).toEqual([
      { type: "ai:resume", requestId: "r1", resumeToken: "tok", afterSeq: 4 },
    ]);
  });

  it("never appends an event twice: one the page holds is dropped (and reported)", () => {
    const t = streaming();
    t.socket.drop();
    reconnect(t);
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: " wor", seq: 2, count: 2 });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "ld", seq: 4, count: 1 });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "ld", seq: 4, count: 1 });
    t.socket.receive(done(5));
    t.flush();
    expect(t.request("r1").text).toBe("Hello world");
    expect(t.state.protocolErrors.map((e) => e.message)).toEqual([
      'ai:token for "r1": seq 2, expected 4 (duplicate, dropped)',
      'ai:token for "r1": seq 4, expected 5 (duplicate, dropped)',
    ]);
  });

  it("still interrupts a generation that had no resume token yet", () => {
    const t = connected();
    t.store.send("hi"); // no ai:start before the drop
    t.socket.drop();
    expect(t.request("r1")).toMatchObject({ status: "error", error: { code: "interrupted" } });
    reconnect(t);
    expect(t.socket.frames).toEqual([]);
  });

  it("stops at once on Stop while reconnecting, and cancels on the next connection", () => {
    const t = streaming();
    t.socket.drop();
    const count = t.sockets.length;
    t.store.stop("r1");
    expect(t.request("r1")).toMatchObject({
      status: "cancelled",
      reconnecting: false,
      text: "Hello wor",
    });
    expect(t.sockets).toHaveLength(count + 1); // tried at once, not after the backoff
    t.socket.open();
    expect(t.socket.frames).toEqual([
      { type: "ai:resume", requestId: "r1", resumeToken: "tok", afterSeq: 3 },
      { type: "ai:cancel", requestId: "r1" },
    ]);
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "ld", seq: 4, count: 1 });
    t.socket.receive({
      type: "ai:error",
      requestId: "r1",
      code: "cancelled",
      message: "cancelled",
      retryable: false,
      durationMs: 9,
      seq: 5,
    });
    t.flush();
    expect(t.request("r1")).toMatchObject({ status: "cancelled", text: "Hello wor" });
    expect(t.state.protocolErrors).toEqual([]);
  });

  it("ends with not_found's message and Retry when there is nothing left to resume", () => {
    const t = streaming();
    t.socket.drop();
    reconnect(t);
    t.socket.receive({
      type: "ai:error",
      requestId: "r1",
      code: "not_found",
      message: "nothing to resume",
      retryable: false,
      durationMs: 0,
    });
    t.flush();
    expect(t.request("r1")).toMatchObject({
      status: "error",
      text: "Hello wor",
      reconnecting: false,
      error: { code: "not_found", message: "nothing to resume", retryable: true },
    });
    const retried = t.store.retry("r1");
    expect(t.socket.frames.at(-1)).toEqual({
      type: "ai:generate",
      requestId: retried,
      prompt: "hi",
      resumable: true,
    });
  });

  describe("when the server cannot serve the resume for now (unavailable)", () => {
    /** The bridge's answer to a resume while the shared log is out of reach (hint: null, none). */
    const unavailable = (
      message = "resume is unavailable for now (the shared log cannot be reached); try again",
      retryAfterMs: number | null = 1000,
    ): ServerFrame => ({
      type: "ai:error",
      requestId: "r1",
      code: "unavailable",
      message,
      retryable: true,
      ...(retryAfterMs !== null ? { retryAfterMs } : {}),
      durationMs: 0,
    });

    /** `streaming()`, dropped and resumed on a new socket (its ai:resume sent, afterSeq 3). */
    function resumedStreaming(options: Parameters<typeof makeStore>[0] = {}) {
      const t = streaming(options);
      t.socket.drop();
      reconnect(t);
      return t;
    }

    /** The afterSeq of each ai:resume sent on the current socket. */
    const resumes = (t: ReturnType<typeof makeStore>) =>
      t.socket.frames.flatMap((f) => (f.type === "ai:resume" ? [f.afterSeq] : []));

    it("shows reconnecting again, resumes after the hint from what it holds, every word once", () => {
      const t = resumedStreaming();
      t.socket.receive(unavailable());
      t.flush();
      expect(t.request("r1")).toMatchObject({
        status: "streaming",
        reconnecting: true,
        text: "Hello wor",
        tokens: 3,
      });
      expect(t.request("r1")).not.toHaveProperty("error");
      vi.advanceTimersByTime(999);
      expect(resumes(t)).toEqual([3]);
      vi.advanceTimersByTime(1);
      expect(resumes(t)).toEqual([3, 3]);
      t.flush();
      expect(t.request("r1").reconnecting).toBe(false);
      // It gets through, then loses the shared log mid-follow: resumed again from there.
      t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "ld", seq: 4, count: 1 });
      t.socket.receive(unavailable("the shared log cannot be reached; resume again"));
      t.flush();
      expect(t.request("r1")).toMatchObject({ reconnecting: true, text: "Hello world" });
      vi.advanceTimersByTime(1000);
      expect(resumes(t)).toEqual([3, 3, 4]);
      t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "!", seq: 5, count: 1 });
      t.socket.receive(done(6));
      t.flush();
      expect(t.request("r1")).toMatchObject({
        status: "done",
        reconnecting: false,
        text: "Hello world!",
        tokens: 5,
      });
      expect(t.sockets).toHaveLength(2); // all on the one open socket
      expect(t.state.protocolErrors).toEqual([]);
      expect(vi.getTimerCount()).toBe(0);
    });

    it("adds a little jitter to the hint, and waits 1 s when there is none", () => {
      const t = resumedStreaming({ random: () => 0.5 });
      t.socket.receive(unavailable(undefined, 2000));
      vi.advanceTimersByTime(2199);
      expect(resumes(t)).toEqual([3]);
      vi.advanceTimersByTime(1);
      expect(resumes(t)).toEqual([3, 3]);
      t.socket.receive(unavailable(undefined, null));
      vi.advanceTimersByTime(1099);
      expect(resumes(t)).toEqual([3, 3]);
      vi.advanceTimersByTime(1);
      expect(resumes(t)).toEqual([3, 3, 3]);
    });

    it("gives up after five resumes again in a row: the error shows, with Retry", () => {
      const t = resumedStreaming();
      for (let i = 0; i < 5; i += 1) {
        t.socket.receive(unavailable());
        vi.advanceTimersByTime(1000);
      }
      expect(resumes(t)).toEqual([3, 3, 3, 3, 3, 3]);
      t.socket.receive(unavailable());
      vi.advanceTimersByTime(60_000);
      t.flush();
      expect(resumes(t)).toHaveLength(6);
      expect(t.request("r1")).toMatchObject({
        status: "error",
        reconnecting: false,
        text: "Hello wor",
        error: {
          code: "unavailable",
          message: "resume is unavailable for now (the shared log cannot be reached); try again",
          retryable: true,
          retryAfterMs: 1000,
        },
      });
      const retried = t.store.retry("r1");
      expect(t.socket.frames.at(-1)).toEqual({
        type: "ai:generate",
        requestId: retried,
        prompt: "hi",
        resumable: true,
      });
    });

    it("starts the count over once a resume gets through", () => {
      const t = resumedStreaming();
      for (let i = 0; i < 5; i += 1) {
        t.socket.receive(unavailable());
        vi.advanceTimersByTime(1000);
      }
      t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "ld", seq: 4, count: 1 });
      t.socket.receive(unavailable("the generator running it is gone"));
      vi.advanceTimersByTime(1000);
      t.flush();
      expect(resumes(t)).toEqual([3, 3, 3, 3, 3, 3, 4]);
      expect(t.request("r1")).toMatchObject({ status: "streaming", text: "Hello world" });
    });

    it("stops at once on Stop during the wait, and cancels with the resume after the hint", () => {
      const t = resumedStreaming();
      t.socket.receive(unavailable());
      t.store.stop("r1");
      expect(t.request("r1")).toMatchObject({
        status: "cancelled",
        reconnecting: false,
        text: "Hello wor",
      });
      expect(t.sockets).toHaveLength(2); // the socket is open: nothing to reconnect
      vi.advanceTimersByTime(999);
      expect(t.socket.frames).toHaveLength(1);
      vi.advanceTimersByTime(1);
      expect(t.socket.frames).toEqual([
        { type: "ai:resume", requestId: "r1", resumeToken: "tok", afterSeq: 3 },
        { type: "ai:resume", requestId: "r1", resumeToken: "tok", afterSeq: 3 },
        { type: "ai:cancel", requestId: "r1" },
      ]);
      t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "ld", seq: 4, count: 1 });
      t.socket.receive({
        type: "ai:error",
        requestId: "r1",
        code: "cancelled",
        message: "cancelled",
        retryable: false,
        durationMs: 9,
        seq: 5,
      });
      t.flush();
      expect(t.request("r1")).toMatchObject({ status: "cancelled", text: "Hello wor" });
      expect(t.state.protocolErrors).toEqual([]);
    });

    it("resumes once, as the socket opens, when the connection drops during the wait", () => {
      const t = resumedStreaming();
      t.socket.receive(unavailable());
      t.socket.drop();
      vi.advanceTimersByTime(1000); // the hint ran out with the socket closed: nothing sent
      expect(t.sockets).toHaveLength(3);
      expect(t.socket.frames).toEqual([]);
      t.socket.open();
      expect(resumes(t)).toEqual([3]);
      vi.advanceTimersByTime(60_000);
      expect(t.socket.frames).toHaveLength(1);
    });

    it("ends as ever on unavailable for an answer that was never resumed", () => {
      const t = streaming();
      t.socket.receive(unavailable("the generator is unavailable", null));
      t.flush();
      expect(t.request("r1")).toMatchObject({
        status: "error",
        reconnecting: false,
        text: "Hello wor",
        error: { code: "unavailable", message: "the generator is unavailable", retryable: true },
      });
      vi.advanceTimersByTime(60_000);
      expect(t.socket.frames).toHaveLength(1); // its generate only
      expect(vi.getTimerCount()).toBe(0);
    });

    it("forgets a pending resume when the store is disposed", () => {
      const t = resumedStreaming();
      t.socket.receive(unavailable());
      t.store.dispose();
      expect(vi.getTimerCount()).toBe(0);
      vi.advanceTimersByTime(60_000);
      expect(resumes(t)).toEqual([3]);
      expect(t.sockets).toHaveLength(2);
    });
  });
});

describe("resume after a page reload", () => {
  /** sessionStorage's part, in memory. */
  function memoryStorage() {
    const items = new Map<string, string>();
    return {
      items,
      getItem: (key: string) => items.get(key) ?? null,
      setItem: (key: string, value: string) => void items.set(key, value),
      removeItem: (key: string) => void items.delete(key),
    };
  }

  const saved = (storage: ReturnType<typeof memoryStorage>) =>
    JSON.parse(storage.items.get("aistream.resume.v1") ?? "[]") as Record<string, unknown>[];

  /** A page that streamed "Hello wor" (positions 0–3) for r1, then went (pagehide → dispose). */
  function firstPage(storage: ReturnType<typeof memoryStorage>) {
    const t = connected({ storage });
    t.store.send("hi");
    t.socket.receive({ type: "ai:start", requestId: "r1", model: "m", seq: 0, resumeToken: "tok" });
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "Hello", seq: 1, count: 1 });
    t.flush();
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: " wor", seq: 2, count: 2 });
    return t;
  }

  it("keeps the answers in flight as they are published, and the latest when the page goes", () => {
    const storage = memoryStorage();
    const t = firstPage(storage);
    expect(saved(storage)).toMatchObject([
      { requestId: "r1", resumeToken: "tok", afterSeq: 1, text: "Hello", prompt: "hi" },
    ]);
    t.store.dispose();
    expect(saved(storage)).toMatchObject([{ afterSeq: 3, text: "Hello wor" }]);
  });

  it("shows the saved answers on load and resumes them once connected", () => {
    const storage = memoryStorage();
    firstPage(storage).store.dispose();
    const t = makeStore({ storage, newRequestId: () => "fresh" });
    expect(t.state.order).toEqual(["r1"]);
    expect(t.request("r1")).toMatchObject({
      status: "streaming",
      reconnecting: true,
      text: "Hello wor",
      prompt: "hi",
    });
    t.store.connect();
    t.socket.open();
    expect(t.socket.frames).toEqual([
      { type: "ai:resume", requestId: "r1", resumeToken: "tok", afterSeq: 3 },
    ]);
    t.socket.receive({ type: "ai:token", requestId: "r1", chunk: "ld", seq: 4, count: 1 });
    t.socket.receive({
      type: "ai:done",
      toolCalls: [],
      requestId: "r1",
      finishReason: "stop",
      ttftMs: 1,
      durationMs: 2,
      seq: 5,
    });
    t.flush();
    expect(t.request("r1")).toMatchObject({ status: "done", text: "Hello world" });
    expect(storage.items.size).toBe(0); // nothing in flight any more
  });

  it("cancels a restored answer stopped before the page connected", () => {
    const storage = memoryStorage();
    firstPage(storage).store.dispose();
    const t = makeStore({ storage, newRequestId: () => "fresh" });
    t.store.stop("r1");
    expect(t.request("r1").status).toBe("cancelled");
    expect(storage.items.size).toBe(0);
    t.socket.open(); // Stop opened the socket
    expect(t.socket.frames).toEqual([
      { type: "ai:resume", requestId: "r1", resumeToken: "tok", afterSeq: 3 },
      { type: "ai:cancel", requestId: "r1" },
    ]);
  });

  it("starts empty when the storage holds nothing it can read", () => {
    const storage = memoryStorage();
    storage.items.set("aistream.resume.v1", "{broken");
    const t = makeStore({ storage });
    expect(t.state.order).toEqual([]);
  });
});

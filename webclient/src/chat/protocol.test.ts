import { describe, expect, it } from "vitest";

import { encodeClientFrame, parseServerFrame, quoteFrame } from "./protocol.ts";

const ok = (data: unknown) => {
  const result = parseServerFrame(data);
  if (!result.ok) throw new Error(`expected a frame, got: ${result.reason}`);
  return result;
};

describe("parseServerFrame", () => {
  it("reads every server frame type with its fields", () => {
    expect(ok('{"type":"ai:start","requestId":"r1","model":"m"}').frame).toEqual({
      type: "ai:start",
      requestId: "r1",
      model: "m",
    });
    expect(ok('{"type":"ai:token","requestId":"r1","chunk":"hi","seq":3,"count":2}').frame).toEqual(
      {
        type: "ai:token",
        requestId: "r1",
        chunk: "hi",
        seq: 3,
        count: 2,
      },
    );
    const done = {
      type: "ai:done",
      requestId: "r1",
      finishReason: "length",
      usage: { promptTokens: 5, completionTokens: 7, source: "estimated" },
      ttftMs: 12,
      durationMs: 340,
      toolCalls: [],
    };
    expect(ok(JSON.stringify(done))).toEqual({ ok: true, frame: done, missing: [], warnings: [] });
    const error = {
      type: "ai:error",
      requestId: "r1",
      code: "rate_limited",
      message: "slow down",
      retryable: true,
      durationMs: 0,
    };
    expect(ok(JSON.stringify(error)).frame).toEqual(error);
  });

  it("reads a resumable generation's positions and resume token", () => {
    const start = { type: "ai:start", requestId: "r1", model: "m", seq: 0, resumeToken: "t.k" };
    expect(ok(JSON.stringify(start))).toEqual({
      ok: true,
      frame: start,
      missing: [],
      warnings: [],
    });
    const done = { type: "ai:done", requestId: "r1", ttftMs: 1, durationMs: 2, toolCalls: [] };
    expect(ok(JSON.stringify({ ...done, seq: 9 })).frame).toEqual({ ...done, seq: 9 });
    const error = {
      type: "ai:error",
      requestId: "r1",
      code: "not_found",
      message: "gone",
      retryable: false,
      durationMs: 0,
    };
    expect(ok(JSON.stringify({ ...error, seq: 4 })).frame).toEqual({ ...error, seq: 4 });
    const bad = ok('{"type":"ai:start","requestId":"r1","model":"m","seq":-1,"resumeToken":7}');
    expect(bad.frame).toEqual({ type: "ai:start", requestId: "r1", model: "m" });
    expect(bad.warnings).toEqual([
      '"seq" is not a non-negative integer',
      '"resumeToken" is not a string',
    ]);
  });

  it("reads the parts: reasoning, tool call, tool arguments, refusal", () => {
    const parts = [
      { type: "ai:reasoning", requestId: "r1", chunk: "Let me think", seq: 0, count: 2 },
      {
        type: "ai:tool_call",
        requestId: "r1",
        seq: 2,
        index: 0,
        id: "call_1",
        name: "get_weather",
      },
      { type: "ai:tool_args", requestId: "r1", chunk: '{"city":"Pa', seq: 3, count: 1, index: 0 },
      { type: "ai:refusal", requestId: "r1", chunk: "I can't", seq: 4, count: 1 },
    ];
    for (const part of parts) {
      expect(ok(JSON.stringify(part))).toEqual({
        ok: true,
        frame: part,
        missing: [],
        warnings: [],
      });
    }
  });

  it("reads ai:done's tool calls, structured output, reasoning time and usage details", () => {
    const done = {
      type: "ai:done",
      requestId: "r1",
      finishReason: "tool_calls",
      usage: {
        promptTokens: 50,
        completionTokens: 40,
        source: "upstream",
        reasoningTokens: 24,
        cachedTokens: 32,
      },
      ttftMs: 300,
      durationMs: 900,
      toolCalls: [{ id: "call_1", name: "get_weather", arguments: '{"city":"Paris"}' }],
      output: { city: "Paris", tags: [1, null] },
      reasoningMs: 20,
    };
    expect(ok(JSON.stringify(done))).toEqual({ ok: true, frame: done, missing: [], warnings: [] });
    // JSON null is an output like any other; an absent one is absent.
    expect(ok('{"type":"ai:done","requestId":"r1","output":null}').frame).toHaveProperty(
      "output",
      null,
    );
    expect(ok('{"type":"ai:done","requestId":"r1"}').frame).not.toHaveProperty("output");
  });

  it("keeps ai:done when its tool calls or new numbers are unusable, with warnings", () => {
    const result = ok(
      JSON.stringify({
        type: "ai:done",
        requestId: "r1",
        toolCalls: [{ id: "a", name: "f", arguments: "{}" }, { id: 1 }],
        reasoningMs: -3,
        usage: { promptTokens: 1, completionTokens: 1, reasoningTokens: "many" },
      }),
    );
    expect(result.frame).toMatchObject({
      toolCalls: [{ id: "a", name: "f", arguments: "{}" }],
      usage: { promptTokens: 1, completionTokens: 1 },
    });
    expect(result.frame).not.toHaveProperty("reasoningMs");
    expect(result.warnings).toEqual([
      '"toolCalls[1]" is not a tool call {id, name, arguments}',
      'usage."reasoningTokens" is not a non-negative integer',
      '"reasoningMs" is not a non-negative integer',
    ]);
    expect(ok('{"type":"ai:done","requestId":"r1","toolCalls":{}}').warnings).toEqual([
      '"toolCalls" is not an array',
    ]);
  });

  it("reads the core protocol's minimal frames, noting the absent keys", () => {
    const token = ok('{"type":"ai:token","requestId":"r1","chunk":"a"}');
    expect(token.frame).toMatchObject({ chunk: "a", seq: 0, count: 0 });
    expect(token.missing).toEqual(["seq", "count"]);
    expect(ok('{"type":"ai:done","requestId":"r1"}').warnings).toEqual([]);
    expect(ok('{"type":"ai:error","requestId":"r1","message":"x"}').frame).toMatchObject({
      message: "x",
      retryable: false,
    });
  });

  it.each([
    [new ArrayBuffer(4), "binary frame, expected JSON text"],
    ["{not json", "not valid JSON"],
    ["[1,2]", "not a JSON object"],
    ['"ai:token"', "not a JSON object"],
    ['{"requestId":"r1"}', 'no "type"'],
    ['{"type":"ai:generate","requestId":"r1"}', 'unknown type "ai:generate"'],
    ['{"type":"ai:token","chunk":"a"}', 'no string "requestId"'],
    ['{"type":"ai:token","requestId":"","chunk":"a"}', 'empty "requestId"'],
    ['{"type":"ai:token","requestId":"r1","chunk":5}', 'no string "chunk"'],
    ['{"type":"ai:reasoning","requestId":"r1","seq":0}', 'no string "chunk"'],
    ['{"type":"ai:tool_args","requestId":"r1","index":0}', 'no string "chunk"'],
    ['{"type":"ai:refusal","requestId":"r1","chunk":null}', 'no string "chunk"'],
    ['{"type":"ai:thought_bubble","requestId":"r1"}', 'unknown type "ai:thought_bubble"'],
  ])("refuses %s (%s)", (data, reason) => {
    expect(parseServerFrame(data)).toEqual({ ok: false, reason });
  });

  it("keeps a frame with a bad optional field, with a warning", () => {
    const result = ok(
      '{"type":"ai:error","requestId":"r1","code":"brand_new","message":"m","retryable":"yes","usage":7}',
    );
    expect(result.frame).toEqual({
      type: "ai:error",
      requestId: "r1",
      message: "m",
      retryable: false,
      durationMs: 0,
    });
    expect(result.warnings).toEqual([
      '"retryable" is not a boolean',
      '"code" has unknown value "brand_new"',
      '"usage" is not an object',
    ]);
  });

  it('reads an enum\'s zero value "unspecified" as absent, quietly', () => {
    const result = ok(
      '{"type":"ai:done","requestId":"r1","finishReason":"unspecified","ttftMs":1,"durationMs":2,' +
        '"usage":{"promptTokens":1,"completionTokens":2,"source":"unspecified"}}',
    );
    expect(result.frame).toEqual({
      type: "ai:done",
      requestId: "r1",
      ttftMs: 1,
      durationMs: 2,
      toolCalls: [],
      usage: { promptTokens: 1, completionTokens: 2 },
    });
    expect(result.warnings).toEqual([]);
  });

  it("treats a non-integer seq as absent", () => {
    const result = ok('{"type":"ai:token","requestId":"r1","chunk":"a","seq":-1,"count":1}');
    expect(result.missing).toContain("seq");
    expect(result.warnings).toEqual(['"seq" is not a non-negative integer']);
  });

  it("reads a busy server's retryAfterMs on ai:error, and drops a bad one with a warning", () => {
    const shed = {
      type: "ai:error",
      requestId: "r1",
      code: "too_many_requests",
      message: "the server is at capacity; try again shortly",
      retryable: true,
      retryAfterMs: 1000,
      durationMs: 0,
    };
    expect(ok(JSON.stringify(shed))).toEqual({ ok: true, frame: shed, missing: [], warnings: [] });
    expect(ok(JSON.stringify({ ...shed, retryAfterMs: 0 })).frame).toMatchObject({
      retryAfterMs: 0,
    });
    expect(ok(JSON.stringify({ ...shed, retryAfterMs: null })).warnings).toEqual([]);
    for (const bad of [-1, 1.5, "1000", {}]) {
      const result = ok(JSON.stringify({ ...shed, retryAfterMs: bad }));
      expect(result.frame).not.toHaveProperty("retryAfterMs");
      expect(result.frame).toMatchObject({ code: "too_many_requests", retryable: true });
      expect(result.warnings).toEqual(['"retryAfterMs" is not a non-negative integer']);
    }
  });

  it("accepts an ai:error without a request id (a rejected frame)", () => {
    expect(
      ok('{"type":"ai:error","requestId":"","code":"invalid_request","message":"bad"}').frame,
    ).toMatchObject({
      requestId: "",
      code: "invalid_request",
    });
  });
});

describe("encodeClientFrame", () => {
  it("writes tools, toolChoice, responseFormat and an agent loop's messages", () => {
    const frame = {
      type: "ai:generate" as const,
      requestId: "r2",
      messages: [
        { role: "user" as const, content: "weather?" },
        {
          role: "assistant" as const,
          content: "",
          toolCalls: [{ id: "c1", name: "get_weather", arguments: '{"city":"Oslo"}' }],
        },
        { role: "tool" as const, toolCallId: "c1", content: '{"temp":3}' },
      ],
      tools: [{ name: "get_weather", parameters: { type: "object" } }],
      toolChoice: { name: "get_weather" },
      responseFormat: { type: "json_schema" as const, schema: { type: "object" }, strict: true },
    };
    expect(JSON.parse(encodeClientFrame(frame))).toEqual(frame);
  });

  it("writes the frame as JSON with its JSON names", () => {
    const text = encodeClientFrame({
      type: "ai:generate",
      requestId: "r1",
      prompt: "hi",
      messages: [{ role: "user", content: "q" }],
      maxTokens: 5,
    });
    expect(JSON.parse(text)).toEqual({
      type: "ai:generate",
      requestId: "r1",
      prompt: "hi",
      messages: [{ role: "user", content: "q" }],
      maxTokens: 5,
    });
  });
});

describe("quoteFrame", () => {
  it("quotes text, cuts long frames and names binary ones", () => {
    expect(quoteFrame('{"a":1}')).toBe('{"a":1}');
    expect(quoteFrame("x".repeat(500))).toBe(`${"x".repeat(200)}…`);
    expect(quoteFrame(new ArrayBuffer(3))).toBe("<binary frame, 3 bytes>");
  });
});

// One request's own steps (ask, send, Stop, connection lost), without a store.

import { describe, expect, it } from "vitest";

import { parseServerFrame, type ParsedFrame } from "./protocol.ts";
import { applyFrame } from "./reducer.ts";
import {
  answered,
  canAnswer,
  historyTurn,
  interrupted,
  newRequest,
  resumeRefused,
  resumed,
  sent,
  stopped,
  waiting,
} from "./request.ts";

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
    const request = newRequest("r2", "again", messages, {}, { retryOf: "r1" });
    expect(request).toEqual({
      state: {
        requestId: "r2",
        prompt: "again",
        messages,
        options: {},
        status: "streaming",
        queued: true,
        started: false,
        reconnecting: false,
        text: "",
        tokens: 0,
        reasoning: "",
        reasoningTokens: 0,
        thinking: false,
        refusal: "",
        toolCalls: [],
        timings: {},
        retryOf: "r1",
      },
      nextSeq: 0,
      awaiting: false,
      stopRequested: false,
      autoRetries: 0,
      detached: false,
      viaResume: false,
      resumeRetries: 0,
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

describe("waiting for a busy server", () => {
  it("counts down while queued, and is sent (or waits for the connection only) without it", () => {
    const queued = newRequest("r2", "hi", [], {}, { retryOf: "r1", autoRetry: 2 });
    expect(queued.autoRetries).toBe(2);
    const two = waiting(queued, 2);
    expect(two.state).toMatchObject({ status: "streaming", queued: true, retryInS: 2 });
    expect(waiting(two, 2)).toBe(two);
    expect(waiting(two, undefined).state).not.toHaveProperty("retryInS");
    const out = sent(waiting(two, 1), 42);
    expect(out.state).not.toHaveProperty("retryInS");
    expect(out).toMatchObject({ awaiting: true, autoRetries: 2, state: { queued: false } });
    expect(waiting(out, 3)).toBe(out); // only a request not sent yet waits
    expect(queued.state).not.toHaveProperty("retryInS");
  });

  it("is taken back by Stop: cancelled, no longer waiting, nothing in flight", () => {
    const request = stopped(waiting(newRequest("r2", "hi", []), 1), 50);
    expect(request).toMatchObject({
      stopRequested: false,
      awaiting: false,
      state: { status: "cancelled", queued: false },
    });
    expect(request.state).not.toHaveProperty("retryInS");
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

describe("tool calls and refusals in the history", () => {
  /** A request done with one tool call c1 (or a refusal, with `refuse`). */
  function done(refuse = false) {
    let request = sent(newRequest("r1", "weather?", []), 10);
    const frames = [
      '{"type":"ai:start","requestId":"r1","model":"m"}',
      refuse
        ? '{"type":"ai:refusal","requestId":"r1","chunk":"No.","seq":0,"count":1}'
        : '{"type":"ai:tool_call","requestId":"r1","seq":0,"index":0,"id":"c1","name":"f"}',
      '{"type":"ai:done","requestId":"r1","toolCalls":' +
        (refuse ? "[]" : '[{"id":"c1","name":"f","arguments":"{}"}]') +
        "}",
    ];
    for (const text of frames) request = applyFrame(request, frame(text), 11).request!;
    return request;
  }

  it("carries the complete calls and the results sent for them", () => {
    const request = done();
    expect(canAnswer(request.state)).toBe(true);
    expect(historyTurn(request.state)).toEqual({
      prompt: "weather?",
      answer: "",
      complete: true,
      toolCalls: [{ id: "c1", name: "f", arguments: "{}" }],
    });
    const results = [{ toolCallId: "c1", content: "sunny" }];
    const withResults = answered(request, results)!;
    expect(withResults.state.toolResults).toBe(results);
    expect(historyTurn(withResults.state).toolResults).toBe(results);
    expect(canAnswer(withResults.state)).toBe(false);
    expect(answered(withResults, results)).toBeUndefined();
    expect(answered(request, [{ toolCallId: "other", content: "x" }])).toBeUndefined();
  });

  it("takes a refusal as what the assistant said", () => {
    const request = done(true);
    expect(canAnswer(request.state)).toBe(false);
    expect(historyTurn(request.state)).toEqual({
      prompt: "weather?",
      answer: "No.",
      complete: true,
    });
  });
});

describe("a resumable request when the connection drops", () => {
  /** A sent request whose ai:start carried a resume token, with the token "half" (seq 1). */
  function resumable() {
    let request = sent(newRequest("r1", "hi", []), 10);
    request = applyFrame(
      request,
      frame('{"type":"ai:start","requestId":"r1","model":"m","seq":0,"resumeToken":"tok"}'),
      11,
    ).request!;
    return applyFrame(
      request,
      frame('{"type":"ai:token","requestId":"r1","chunk":"half","seq":1,"count":1}'),
      12,
    ).request!;
  }

  it("is detached, still streaming and reconnecting, with its text and position", () => {
    const request = interrupted(resumable(), 70);
    expect(request).toMatchObject({ detached: true, awaiting: false, nextSeq: 2 });
    expect(request.state).toMatchObject({ status: "streaming", reconnecting: true, text: "half" });
    expect(request.state).not.toHaveProperty("error");
    expect(request.state.timings.endedAt).toBeUndefined();
  });

  it("awaits frames again once resumed, no longer reconnecting", () => {
    expect(resumable().viaResume).toBe(false);
    const request = resumed(interrupted(resumable(), 70));
    expect(request).toMatchObject({ detached: false, awaiting: true, viaResume: true });
    expect(request.state.reconnecting).toBe(false);
    const plain = resumable();
    expect(resumed(plain)).toBe(plain); // not detached: nothing to resume
  });

  it("shows stopped at once on Stop while detached, the cancel still to go out", () => {
    const request = stopped(interrupted(resumable(), 70), 80);
    expect(request).toMatchObject({ detached: true, stopRequested: true });
    expect(request.state).toMatchObject({ status: "cancelled", reconnecting: false, text: "half" });
  });

  it("is detached again, keeping all it holds, when the resume was unavailable", () => {
    const request = resumeRefused(resumed(interrupted(resumable(), 70)));
    expect(request).toMatchObject({
      detached: true,
      awaiting: false,
      viaResume: true,
      resumeRetries: 1,
      nextSeq: 2,
    });
    expect(request.state).toMatchObject({ status: "streaming", reconnecting: true, text: "half" });
    expect(request.state).not.toHaveProperty("error");
    expect(request.state.timings.endedAt).toBeUndefined();
    expect(resumeRefused(resumed(request)).resumeRetries).toBe(2);
  });

  it("stays stopped, to be cancelled on reconnect, when the drop came after Stop", () => {
    const request = interrupted(stopped(resumable(), 50), 70);
    expect(request).toMatchObject({ detached: true, stopRequested: true });
    expect(request.state).toMatchObject({ status: "cancelled", reconnecting: false });
  });
});

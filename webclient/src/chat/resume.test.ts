import { describe, expect, it } from "vitest";

import { parseServerFrame } from "./protocol.ts";
import { applyFrame } from "./reducer.ts";
import { interrupted, newRequest, sent, stopped, type RequestRecord } from "./request.ts";
import {
  STORAGE_KEY,
  decodeSaved,
  encodeSaved,
  fromSaved,
  readSaved,
  resumeFrame,
  toSaved,
  writeSaved,
  type ResumeStorage,
  type SavedRequest,
} from "./resume.ts";

/** Fold frames (JSON text) into `request`. */
function fold(request: RequestRecord, ...frames: string[]): RequestRecord {
  for (const text of frames) {
    const parsed = parseServerFrame(text);
    if (!parsed.ok) throw new Error(parsed.reason);
    request = applyFrame(request, parsed, 1).request!;
  }
  return request;
}

/** A resumable answer that holds up to position 3: "Hello wor" (start 0, tokens 1, 2–3). */
function streaming(): RequestRecord {
  const request = newRequest("r1", "hi", [{ role: "user", content: "before" }], {
    responseFormat: { type: "json_object" },
  });
  return fold(
    sent(request, 5),
    '{"type":"ai:start","requestId":"r1","model":"sim","seq":0,"resumeToken":"tok"}',
    '{"type":"ai:token","requestId":"r1","chunk":"Hello","seq":1,"count":1}',
    '{"type":"ai:token","requestId":"r1","chunk":" wor","seq":2,"count":2}',
  );
}

/** sessionStorage's part, in memory. */
function memoryStorage(): ResumeStorage & { items: Map<string, string> } {
  const items = new Map<string, string>();
  return {
    items,
    getItem: (key) => items.get(key) ?? null,
    setItem: (key, value) => void items.set(key, value),
    removeItem: (key) => void items.delete(key),
  };
}

describe("toSaved", () => {
  it("keeps a streaming answer's id, token, last position, text and what Retry needs", () => {
    expect(toSaved(streaming())).toEqual({
      requestId: "r1",
      resumeToken: "tok",
      afterSeq: 3,
      prompt: "hi",
      messages: [{ role: "user", content: "before" }],
      options: { responseFormat: { type: "json_object" } },
      model: "sim",
      text: "Hello wor",
      tokens: 3,
      reasoning: "",
      reasoningTokens: 0,
      refusal: "",
      toolCalls: [],
    });
  });

  it("keeps a detached answer the same way", () => {
    expect(toSaved(interrupted(streaming(), 9))).toMatchObject({ afterSeq: 3 });
  });

  it("keeps nothing of an answer that ended, was stopped, or has no token", () => {
    const ended = fold(
      streaming(),
      '{"type":"ai:done","requestId":"r1","finishReason":"stop","seq":4,"ttftMs":1,"durationMs":2}',
    );
    expect(toSaved(ended)).toBeUndefined();
    expect(toSaved(stopped(streaming(), 9))).toBeUndefined();
    const plain = fold(sent(newRequest("r2", "hi", []), 5), '{"type":"ai:start","requestId":"r2"}');
    expect(toSaved(plain)).toBeUndefined();
    expect(toSaved(newRequest("r3", "queued", []))).toBeUndefined();
  });
});

describe("fromSaved", () => {
  it("shows the saved answer again, streaming, detached and reconnecting from its position", () => {
    const saved = toSaved(streaming())!;
    const request = fromSaved(saved);
    expect(request).toMatchObject({
      resumeToken: "tok",
      nextSeq: 4,
      detached: true,
      awaiting: false,
      stopRequested: false,
    });
    expect(request.state).toMatchObject({
      requestId: "r1",
      status: "streaming",
      queued: false,
      started: true,
      reconnecting: true,
      text: "Hello wor",
      model: "sim",
      prompt: "hi",
      options: { responseFormat: { type: "json_object" } },
    });
    expect(toSaved(request)).toEqual(saved); // round trip
  });

  it("is thinking again when only reasoning had come", () => {
    const saved: SavedRequest = { ...toSaved(streaming())!, text: "", tokens: 0, reasoning: "hm" };
    expect(fromSaved(saved).state.thinking).toBe(true);
  });
});

describe("resumeFrame", () => {
  it("asks for everything after the last position held", () => {
    expect(resumeFrame(interrupted(streaming(), 9))).toEqual({
      type: "ai:resume",
      requestId: "r1",
      resumeToken: "tok",
      afterSeq: 3,
    });
    expect(resumeFrame(newRequest("r2", "hi", []))).toBeUndefined();
  });
});

describe("stored text", () => {
  it("reads back what it wrote", () => {
    const saved = [toSaved(streaming())!];
    expect(decodeSaved(encodeSaved(saved))).toEqual(saved);
  });

  it("leaves out whatever cannot be read, and never throws", () => {
    const good = toSaved(streaming())!;
    expect(decodeSaved(null)).toEqual([]);
    expect(decodeSaved("{not json")).toEqual([]);
    expect(decodeSaved('{"requestId":"r1"}')).toEqual([]);
    const bad = [
      { ...good, resumeToken: "" },
      { ...good, afterSeq: -1 },
      { ...good, afterSeq: 1.5 },
      { ...good, text: 3 },
      { ...good, messages: "no" },
      { ...good, toolCalls: [{ index: 0 }] },
      null,
      "r1",
    ];
    expect(decodeSaved(JSON.stringify([...bad, good]))).toEqual([good]);
  });
});

describe("readSaved and writeSaved", () => {
  it("keep the list under one key, and remove the key when nothing is in flight", () => {
    const storage = memoryStorage();
    const saved = [toSaved(streaming())!];
    expect(writeSaved(storage, saved)).toBe(true);
    expect([...storage.items.keys()]).toEqual([STORAGE_KEY]);
    expect(readSaved(storage)).toEqual(saved);
    expect(writeSaved(storage, [])).toBe(true);
    expect(storage.items.size).toBe(0);
    expect(readSaved(undefined)).toEqual([]);
  });

  it("never throw when the storage does (full, or disabled)", () => {
    const broken: ResumeStorage = {
      getItem: () => {
        throw new Error("SecurityError");
      },
      setItem: () => {
        throw new Error("QuotaExceededError");
      },
      removeItem: () => {
        throw new Error("SecurityError");
      },
    };
    expect(readSaved(broken)).toEqual([]);
    expect(writeSaved(broken, [toSaved(streaming())!])).toBe(false);
    expect(writeSaved(broken, [])).toBe(false);
  });
});

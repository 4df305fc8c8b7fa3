import { describe, expect, it } from "vitest";

import { buildHistory } from "./history.ts";

describe("buildHistory", () => {
  it("sends user and assistant messages of complete turns, oldest first", () => {
    expect(
      buildHistory([
        { prompt: "q1", answer: "a1", complete: true },
        { prompt: "q2", answer: "", complete: false },
        { prompt: "q3", answer: "a3", complete: true },
      ]),
    ).toEqual([
      { role: "user", content: "q1" },
      { role: "assistant", content: "a1" },
      { role: "user", content: "q3" },
      { role: "assistant", content: "a3" },
    ]);
  });

  it("drops the oldest turns to stay within the message and character limits", () => {
    const turns = ["1", "2", "3"].map((n) => ({
      prompt: `q${n}`,
      answer: `a${n}`,
      complete: true,
    }));
    expect(buildHistory(turns, { maxMessages: 4, maxChars: 1000 }).map((m) => m.content)).toEqual([
      "q2",
      "a2",
      "q3",
      "a3",
    ]);
    expect(buildHistory(turns, { maxMessages: 100, maxChars: 5 }).map((m) => m.content)).toEqual([
      "q3",
      "a3",
    ]);
    expect(buildHistory(turns, { maxMessages: 100, maxChars: 3 })).toEqual([]);
  });
});

describe("buildHistory with tool calls", () => {
  const call = { id: "c1", name: "get_weather", arguments: '{"city":"Oslo"}' };

  it("sends an answered call as the assistant's toolCalls and a tool message with the result", () => {
    expect(
      buildHistory([
        {
          prompt: "Weather in Oslo?",
          answer: "",
          complete: true,
          toolCalls: [call],
          toolResults: [{ toolCallId: "c1", content: '{"temp":3}' }],
        },
        { prompt: "", answer: "It is 3 degrees.", complete: true },
      ]),
    ).toEqual([
      { role: "user", content: "Weather in Oslo?" },
      { role: "assistant", content: "", toolCalls: [call] },
      { role: "tool", toolCallId: "c1", content: '{"temp":3}' },
      { role: "assistant", content: "It is 3 degrees." },
    ]);
  });

  it("leaves out calls nobody answered, and an answer that was only such calls", () => {
    const other = { id: "c2", name: "get_time", arguments: "{}" };
    expect(
      buildHistory([
        { prompt: "q1", answer: "", complete: true, toolCalls: [call] },
        {
          prompt: "q2",
          answer: "Let me look.",
          complete: true,
          toolCalls: [call, other],
          toolResults: [{ toolCallId: "c2", content: "noon" }],
        },
        { prompt: "q3", answer: "Calling.", complete: true, toolCalls: [call] },
      ]),
    ).toEqual([
      { role: "user", content: "q1" },
      { role: "user", content: "q2" },
      { role: "assistant", content: "Let me look.", toolCalls: [other] },
      { role: "tool", toolCallId: "c2", content: "noon" },
      { role: "user", content: "q3" },
      { role: "assistant", content: "Calling." },
    ]);
  });

  it("drops whole turns, never a tool message without its call", () => {
    const turns = [
      {
        prompt: "q1",
        answer: "",
        complete: true,
        toolCalls: [call],
        toolResults: [{ toolCallId: "c1", content: "r" }],
      },
      { prompt: "q2", answer: "a2", complete: true },
    ];
    expect(buildHistory(turns, { maxMessages: 4, maxChars: 1000 })).toEqual([
      { role: "user", content: "q2" },
      { role: "assistant", content: "a2" },
    ]);
    // Arguments count towards the character limit.
    expect(buildHistory(turns, { maxMessages: 100, maxChars: 10 })).toHaveLength(2);
  });
});

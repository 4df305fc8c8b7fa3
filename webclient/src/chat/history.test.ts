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

// The parts of an answer on the page: thinking, tool calls, structured output, refusal, and the
// composer's modes that ask for them.

import { act, render, screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";

import type { ServerFrame } from "../generated/frames.ts";
import { ChatStoreProvider } from "../react/useChat.ts";
import { makeStore } from "../test/fakeSocket.ts";
import { App } from "./App.tsx";

/** The app over a fake bridge, connected: `server(...)` delivers frames and paints them. */
function setup() {
  const t = makeStore();
  t.store.connect();
  t.socket.open();
  render(
    <ChatStoreProvider store={t.store}>
      <App />
    </ChatStoreProvider>,
  );
  const server = (...frames: ServerFrame[]) =>
    act(() => {
      for (const frame of frames) t.socket.receive(frame);
      t.flush();
    });
  const answer = (id: string) =>
    document.querySelector<HTMLElement>(`article[data-request-id="${id}"]`)!;
  return { ...t, user: userEvent.setup(), server, answer };
}

/** Ask `prompt` in `mode` (the radio's label) and have the server accept it as r1. */
async function ask(t: ReturnType<typeof setup>, prompt: string, mode?: string) {
  if (mode !== undefined) await t.user.click(screen.getByRole("radio", { name: mode }));
  await t.user.type(screen.getByRole("textbox", { name: "Prompt" }), `${prompt}{Enter}`);
  const id = t.socket.frames.at(-1)!.requestId;
  t.server({ type: "ai:start", requestId: id, model: "m" });
  return id;
}

const reasoning = (chunk: string, seq: number, requestId = "r1"): ServerFrame => ({
  type: "ai:reasoning",
  requestId,
  chunk,
  seq,
  count: 1,
});
const token = (chunk: string, seq: number, requestId = "r1"): ServerFrame => ({
  type: "ai:token",
  requestId,
  chunk,
  seq,
  count: 1,
});

describe("thinking", () => {
  it("is open while the model thinks and closes by itself when the answer starts", async () => {
    const t = setup();
    await ask(t, "Why?");
    t.server(reasoning("First, ", 0), reasoning("the sky.", 1));
    const section = within(t.answer("r1")).getByRole("region", { name: "Thinking" });
    const toggle = within(section).getByRole("button", { name: /^Thinking/ });
    expect(toggle).toHaveAttribute("aria-expanded", "true");
    expect(toggle).toHaveTextContent("Thinking…");
    expect(within(section).getByText("First, the sky.")).toBeVisible();
    expect(t.answer("r1").querySelector(".status-note")).toHaveTextContent("thinking…");

    t.server(token("Because", 2));
    expect(toggle).toHaveAttribute("aria-expanded", "false");
    expect(within(section).getByText("First, the sky.")).not.toBeVisible();
    expect(within(t.answer("r1")).getByText("Because")).toBeVisible();

    // The reader opens it again, and it stays open while the answer goes on.
    await t.user.click(toggle);
    expect(toggle).toHaveAttribute("aria-expanded", "true");
    t.server(token(" light scatters.", 3));
    expect(toggle).toHaveAttribute("aria-expanded", "true");
    expect(within(section).getByText("First, the sky.")).toBeVisible();
  });

  it("is kept, open, with what came so far, when the user stops while it thinks", async () => {
    const t = setup();
    await ask(t, "Hard question");
    t.server(reasoning("Let me see", 0));
    await t.user.click(within(t.answer("r1")).getByRole("button", { name: "Stop" }));
    t.server(reasoning(" (late)", 1), {
      type: "ai:error",
      requestId: "r1",
      code: "cancelled",
      message: "cancelled",
      retryable: false,
      durationMs: 5,
    });
    const article = t.answer("r1");
    expect(article).toHaveAttribute("data-status", "cancelled");
    const section = within(article).getByRole("region", { name: "Thinking" });
    expect(within(section).getByRole("button")).toHaveAttribute("aria-expanded", "true");
    expect(within(section).getByRole("button")).toHaveTextContent(/^Thinking$/);
    expect(within(section).getByText("Let me see")).toBeVisible();
  });

  it("says how long the model thought, and counts reasoning tokens apart", async () => {
    const t = setup();
    await ask(t, "q");
    t.server(reasoning("hm", 0), token("A", 1), token("B", 2), {
      type: "ai:done",
      requestId: "r1",
      finishReason: "stop",
      usage: { promptTokens: 1, completionTokens: 3, reasoningTokens: 1, source: "upstream" },
      ttftMs: 1300,
      durationMs: 1400,
      reasoningMs: 100,
      toolCalls: [],
    });
    const article = t.answer("r1");
    expect(within(article).getByRole("button", { name: /^Thinking/ })).toHaveTextContent(
      "Thinking · 1.2 s",
    );
    expect(article.querySelector(".metrics")).toHaveTextContent(
      "first token 1.3 s · 20.0 tok/s · 3 tokens (1 reasoning)",
    );
  });

  it("is not shown for an answer without reasoning", async () => {
    const t = setup();
    await ask(t, "q");
    t.server(token("A", 0));
    expect(within(t.answer("r1")).queryByRole("region", { name: "Thinking" })).toBeNull();
  });
});

describe("tool calls", () => {
  const args = (chunk: string, seq: number): ServerFrame => ({
    type: "ai:tool_args",
    requestId: "r1",
    chunk,
    seq,
    count: 1,
    index: 0,
  });

  it("show as a card whose arguments fill in, pretty-printed once complete", async () => {
    const t = setup();
    await ask(t, "Weather in Paris?", "Tools");
    t.server(reasoning("use the tool", 0), {
      type: "ai:tool_call",
      requestId: "r1",
      seq: 1,
      index: 0,
      id: "call_7",
      name: "get_weather",
    });
    const card = within(t.answer("r1")).getByRole("region", { name: "Tool call get_weather" });
    expect(within(card).getByText("call_7")).toBeInTheDocument();
    expect(within(card).getByText("receiving arguments…")).toBeInTheDocument();
    const argsBox = within(card).getByLabelText("Arguments");
    expect(argsBox).toHaveTextContent(/^$/);
    t.server(args('{"city":"Pa', 2));
    expect(argsBox.textContent).toBe('{"city":"Pa');
    t.server(args('ris","unit":"celsius"}', 3));
    expect(argsBox.textContent).toBe('{"city":"Paris","unit":"celsius"}');
    expect(t.answer("r1").querySelector(".status-note")).toHaveTextContent("calling tools…");

    t.server({
      type: "ai:done",
      requestId: "r1",
      finishReason: "tool_calls",
      ttftMs: 10,
      durationMs: 20,
      toolCalls: [
        { id: "call_7", name: "get_weather", arguments: '{"city":"Paris","unit":"celsius"}' },
      ],
    });
    expect(card).toHaveAttribute("data-complete", "true");
    expect(within(card).getByText("complete")).toBeInTheDocument();
    expect(argsBox.textContent).toBe('{\n  "city": "Paris",\n  "unit": "celsius"\n}');
    expect(t.answer("r1").querySelector(".status-note")).toHaveTextContent(
      "the model asked to call tools",
    );
  });

  it("can be answered: the results go back as the next step, shown in its place", async () => {
    const t = setup();
    await ask(t, "Weather in Paris?", "Tools");
    const call = {
      id: "call_7",
      name: "get_weather",
      arguments: '{"city":"Paris","unit":"celsius"}',
    };
    t.server(
      { type: "ai:tool_call", requestId: "r1", seq: 0, index: 0, id: call.id, name: call.name },
      args(call.arguments, 1),
      {
        type: "ai:done",
        requestId: "r1",
        finishReason: "tool_calls",
        ttftMs: 1,
        durationMs: 2,
        toolCalls: [call],
      },
    );
    const form = within(t.answer("r1")).getByRole("form", { name: "Tool results" });
    const result = within(form).getByRole("textbox", { name: /Result of get_weather/ });
    expect(JSON.parse((result as HTMLTextAreaElement).value)).toMatchObject({ city: "Paris" });
    await t.user.clear(result);
    await t.user.type(result, "sunny");
    await t.user.click(within(form).getByRole("button", { name: "Submit tool results" }));

    expect(t.socket.frames.at(-1)).toMatchObject({
      type: "ai:generate",
      requestId: "r2",
      messages: [
        { role: "user", content: "Weather in Paris?" },
        { role: "assistant", content: "", toolCalls: [call] },
        { role: "tool", toolCallId: "call_7", content: "sunny" },
      ],
      tools: [{ name: "get_weather" }],
    });
    expect(within(t.answer("r1")).queryByRole("form", { name: "Tool results" })).toBeNull();
    const next = t.answer("r2");
    expect(within(next).getByText(/sunny/)).toBeInTheDocument();
    expect(next.querySelector(".tool-results-sent")).toHaveTextContent("get_weather → sunny");
  });
});

describe("structured output", () => {
  it("streams as text, then shows the parsed value formatted, marked valid", async () => {
    const t = setup();
    await ask(t, "A card about rivers", "JSON");
    expect(t.socket.frames.at(-1)).toMatchObject({
      responseFormat: { type: "json_schema", schema: { type: "object" } },
    });
    t.server(token('{"title":"Rivers",', 0));
    const section = within(t.answer("r1")).getByRole("region", { name: "Structured output" });
    expect(section).toHaveAttribute("data-valid", "pending");
    expect(section).toHaveTextContent('{"title":"Rivers",');
    t.server(token('"tags":[]}', 1), {
      type: "ai:done",
      requestId: "r1",
      finishReason: "stop",
      ttftMs: 1,
      durationMs: 2,
      toolCalls: [],
      output: { title: "Rivers", tags: [] },
    });
    expect(section).toHaveAttribute("data-valid", "valid");
    expect(section.querySelector("code")!.textContent).toBe(
      '{\n  "title": "Rivers",\n  "tags": []\n}',
    );
    expect(within(section).getByText(/Valid JSON · matches the schema/)).toBeInTheDocument();
  });

  it("keeps the text that streamed and marks it invalid after invalid_output", async () => {
    const t = setup();
    await ask(t, "A card", "JSON");
    t.server(token('{"title": oops', 0), {
      type: "ai:error",
      requestId: "r1",
      code: "invalid_output",
      message: "the answer is not valid JSON",
      retryable: true,
      durationMs: 3,
    });
    const article = t.answer("r1");
    const section = within(article).getByRole("region", { name: "Structured output" });
    expect(section).toHaveAttribute("data-valid", "invalid");
    expect(section).toHaveTextContent('{"title": oops');
    expect(within(section).getByText("Invalid output")).toBeInTheDocument();
    expect(article.querySelector(".error-message")).toHaveTextContent(
      "the answer is not valid JSON (invalid_output)",
    );
    expect(within(article).getByRole("button", { name: "Retry" })).toBeInTheDocument();
  });
});

describe("refusal", () => {
  it("is shown apart from the answer, and the answer says refused", async () => {
    const t = setup();
    await ask(t, "Something bad");
    t.server(
      { type: "ai:refusal", requestId: "r1", chunk: "I can't help ", seq: 0, count: 1 },
      { type: "ai:refusal", requestId: "r1", chunk: "with that.", seq: 1, count: 1 },
      {
        type: "ai:done",
        requestId: "r1",
        finishReason: "stop",
        ttftMs: 1,
        durationMs: 2,
        toolCalls: [],
      },
    );
    const article = t.answer("r1");
    const note = within(article).getByRole("note", { name: "Refusal" });
    expect(note).toHaveTextContent("The model declined to answer");
    expect(note).toHaveTextContent("I can't help with that.");
    expect(article.querySelector(".answer-text")).toHaveTextContent(/^$/);
    expect(article.querySelector(".status-note")).toHaveTextContent("refused");
  });
});

describe("the composer's modes", () => {
  it("asks plainly in Chat, with the demo tool in Tools, for JSON in JSON; the mode stays", async () => {
    const t = setup();
    const radios = screen.getAllByRole("radio").map((r) => r.getAttribute("value"));
    expect(radios).toEqual(["chat", "tools", "json"]);
    expect(screen.getByRole("radio", { name: "Chat" })).toBeChecked();
    const box = screen.getByRole("textbox", { name: "Prompt" });
    await t.user.type(box, "plain{Enter}");
    await t.user.click(screen.getByRole("radio", { name: "Tools" }));
    await t.user.type(box, "tools{Enter}");
    await t.user.type(box, "tools again{Enter}");
    await t.user.click(screen.getByRole("radio", { name: "JSON" }));
    await t.user.type(box, "json{Enter}");
    const [plain, tools, again, json] = t.socket.frames;
    expect(plain).toEqual({
      type: "ai:generate",
      requestId: "r1",
      prompt: "plain",
      resumable: true,
    });
    expect(tools).toMatchObject({
      prompt: "tools",
      toolChoice: "auto",
      tools: [
        {
          name: "get_weather",
          parameters: {
            type: "object",
            properties: {
              city: { type: "string" },
              unit: { type: "string", enum: ["celsius", "fahrenheit"] },
            },
          },
        },
      ],
    });
    expect(tools).not.toHaveProperty("responseFormat");
    expect(again).toMatchObject({ prompt: "tools again", toolChoice: "auto" });
    expect(json).toMatchObject({
      prompt: "json",
      responseFormat: { type: "json_schema", name: "answer_card", strict: true },
    });
    expect(json).not.toHaveProperty("tools");
  });
});

import { act, fireEvent, render, screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, describe, expect, it, vi } from "vitest";

import type { ServerFrame } from "../generated/frames.ts";
import { ChatStoreProvider } from "../react/useChat.ts";
import { makeStore } from "../test/fakeSocket.ts";
import { App } from "./App.tsx";

/** The app over a fake bridge: `server(...)` delivers frames and paints them. */
function setup({ open = true } = {}) {
  const t = makeStore();
  t.store.connect();
  if (open) t.socket.open();
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

describe("asking", () => {
  it("sends the prompt with the Send button and clears the box", async () => {
    const t = setup();
    const box = screen.getByRole("textbox", { name: "Prompt" });
    await t.user.type(box, "Hello there");
    await t.user.click(screen.getByRole("button", { name: "Send" }));
    expect(t.socket.frames).toEqual([
      { type: "ai:generate", requestId: "r1", prompt: "Hello there", resumable: true },
    ]);
    expect(box).toHaveValue("");
    const article = screen.getByRole("article");
    expect(article).toHaveAttribute("data-request-id", "r1");
    expect(article).toHaveAttribute("data-status", "streaming");
    expect(within(article).getByText("Hello there")).toBeInTheDocument();
  });

  it("sends on Enter and adds a new line on Shift+Enter", async () => {
    const t = setup();
    const box = screen.getByRole("textbox", { name: "Prompt" });
    await t.user.type(box, "line one{Shift>}{Enter}{/Shift}line two");
    expect(box).toHaveValue("line one\nline two");
    expect(t.socket.sent).toEqual([]);
    await t.user.keyboard("{Enter}");
    expect(t.socket.frames).toEqual([
      { type: "ai:generate", requestId: "r1", prompt: "line one\nline two", resumable: true },
    ]);
    expect(box).toHaveValue("");
  });

  it("does not send an empty prompt", async () => {
    const t = setup();
    expect(screen.getByRole("button", { name: "Send" })).toBeDisabled();
    await t.user.type(screen.getByRole("textbox", { name: "Prompt" }), "   {Enter}");
    expect(t.socket.sent).toEqual([]);
  });

  it("works with the keyboard alone: type, Enter, Tab to Stop, Space", async () => {
    const t = setup();
    expect(screen.getByRole("textbox", { name: "Prompt" })).toHaveFocus();
    await t.user.keyboard("Tell me a story{Enter}");
    t.server({ type: "ai:start", requestId: "r1", model: "m" });
    await t.user.tab({ shift: true });
    expect(screen.getByRole("button", { name: "Stop" })).toHaveFocus();
    await t.user.keyboard(" ");
    expect(t.socket.frames.at(-1)).toEqual({ type: "ai:cancel", requestId: "r1" });
  });
});

describe("an answer", () => {
  it("streams in a live region with a cursor, shows its model, then its numbers", async () => {
    const t = setup();
    await t.user.type(screen.getByRole("textbox", { name: "Prompt" }), "hi{Enter}");
    const article = t.answer("r1");
    expect(article.querySelector(".cursor")).not.toBeNull();
    t.server(
      { type: "ai:start", requestId: "r1", model: "gpt-test" },
      { type: "ai:token", requestId: "r1", chunk: "Hello ", seq: 0, count: 1 },
      { type: "ai:token", requestId: "r1", chunk: "**world**", seq: 1, count: 1 },
    );
    const live = article.querySelector("[aria-live]")!;
    expect(live).toHaveAttribute("aria-live", "polite");
    expect(live).toHaveAttribute("aria-busy", "true");
    expect(live).toHaveClass("streaming");
    expect(within(article).getByText("world").tagName).toBe("STRONG");
    expect(within(article).getByText("gpt-test")).toBeInTheDocument();
    t.server({
      type: "ai:done",
      toolCalls: [],
      requestId: "r1",
      finishReason: "stop",
      usage: { promptTokens: 3, completionTokens: 2, source: "upstream" },
      ttftMs: 120,
      durationMs: 220,
    });
    expect(article).toHaveAttribute("data-status", "done");
    expect(live).toHaveAttribute("aria-busy", "false");
    expect(within(article).queryByRole("button", { name: "Stop" })).toBeNull();
    expect(
      within(article).getByText("first token 120 ms · 20.0 tok/s · 2 tokens"),
    ).toBeInTheDocument();
  });

  it('says "done" when the bridge sends no finishReason', async () => {
    const t = setup();
    await t.user.type(screen.getByRole("textbox", { name: "Prompt" }), "hi{Enter}");
    t.server(
      { type: "ai:start", requestId: "r1", model: "m" },
      { type: "ai:token", requestId: "r1", chunk: "Hello", seq: 0, count: 1 },
      { type: "ai:done", requestId: "r1", ttftMs: 5, durationMs: 9, toolCalls: [] },
    );
    const article = t.answer("r1");
    expect(article).toHaveAttribute("data-status", "done");
    expect(article.querySelector(".status-note")).toHaveTextContent(/^done$/);
    expect(article.querySelector(".metrics")).toHaveTextContent("1 token");
    expect(document.querySelector(".protocol-errors")).toBeNull();
  });

  it("labels the simulated model as not a real model", async () => {
    const t = setup();
    await t.user.type(screen.getByRole("textbox", { name: "Prompt" }), "hi{Enter}");
    t.server({ type: "ai:start", requestId: "r1", model: "aistream-simulated-1" });
    expect(within(t.answer("r1")).getByText(/simulated, not a real model/)).toBeInTheDocument();
  });

  it("renders Markdown code blocks and never injects raw HTML", async () => {
    const t = setup();
    await t.user.type(screen.getByRole("textbox", { name: "Prompt" }), "code{Enter}");
    const chunk =
      "Try:\n\n```python\nprint('hi')\n```\n\n<img src=x onerror=alert(1)><script>alert(2)</script>" +
      "[link](javascript:alert(3))";
    t.server(
      { type: "ai:start", requestId: "r1", model: "m" },
      { type: "ai:token", requestId: "r1", chunk, seq: 0, count: 1 },
    );
    const article = t.answer("r1");
    expect(article.querySelector("pre code")).toHaveTextContent("print('hi')");
    expect(article.querySelector("img")).toBeNull();
    expect(article.querySelector("script")).toBeNull();
    expect(article.querySelector("[onerror]")).toBeNull();
    expect(within(article).getByText("link").getAttribute("href") ?? "").not.toContain(
      "javascript",
    );
  });

  it("answers several questions at once", async () => {
    const t = setup();
    const box = screen.getByRole("textbox", { name: "Prompt" });
    await t.user.type(box, "one{Enter}");
    await t.user.type(box, "two{Enter}");
    t.server(
      { type: "ai:start", requestId: "r1", model: "m" },
      { type: "ai:start", requestId: "r2", model: "m" },
      { type: "ai:token", requestId: "r2", chunk: "second", seq: 0, count: 1 },
      { type: "ai:token", requestId: "r1", chunk: "first", seq: 0, count: 1 },
    );
    expect(screen.getAllByRole("article").map((a) => a.getAttribute("data-request-id"))).toEqual([
      "r1",
      "r2",
    ]);
    expect(screen.getAllByRole("button", { name: "Stop" })).toHaveLength(2);
    expect(within(t.answer("r1")).getByText("first")).toBeInTheDocument();
    expect(within(t.answer("r2")).getByText("second")).toBeInTheDocument();
  });
});

describe("Stop", () => {
  it("sends ai:cancel and shows the text so far as stopped, not failed", async () => {
    const t = setup();
    await t.user.type(screen.getByRole("textbox", { name: "Prompt" }), "long story{Enter}");
    t.server(
      { type: "ai:start", requestId: "r1", model: "m" },
      { type: "ai:token", requestId: "r1", chunk: "Once upon a time", seq: 0, count: 1 },
    );
    await t.user.click(within(t.answer("r1")).getByRole("button", { name: "Stop" }));
    expect(t.socket.frames.at(-1)).toEqual({ type: "ai:cancel", requestId: "r1" });
    t.server({
      type: "ai:error",
      requestId: "r1",
      code: "cancelled",
      message: "cancelled",
      retryable: false,
      durationMs: 0,
    });
    const article = t.answer("r1");
    expect(article).toHaveAttribute("data-status", "cancelled");
    expect(within(article).getByText("Once upon a time")).toBeInTheDocument();
    expect(within(article).getByText("stopped")).toBeInTheDocument();
    expect(within(article).queryByRole("button", { name: "Retry" })).toBeNull();
    expect(article.querySelector(".error-message")).toBeNull();
  });
});

describe("errors", () => {
  it("shows the message in place with Retry, which asks again under a new id", async () => {
    const t = setup();
    await t.user.type(screen.getByRole("textbox", { name: "Prompt" }), "hi{Enter}");
    t.server({
      type: "ai:error",
      requestId: "r1",
      code: "rate_limited",
      message: "Slow down a little.",
      retryable: true,
      durationMs: 0,
    });
    const article = t.answer("r1");
    expect(article).toHaveAttribute("data-status", "error");
    expect(within(article).getByText(/Slow down a little\./)).toBeInTheDocument();
    await t.user.click(within(article).getByRole("button", { name: "Retry" }));
    expect(t.socket.frames.at(-1)).toEqual({
      type: "ai:generate",
      requestId: "r2",
      prompt: "hi",
      resumable: true,
    });
    expect(screen.getAllByRole("article")).toHaveLength(1);
    expect(t.answer("r2")).toHaveAttribute("data-status", "streaming");
  });

  it("offers no Retry when the error is not retryable", async () => {
    const t = setup();
    await t.user.type(screen.getByRole("textbox", { name: "Prompt" }), "hi{Enter}");
    t.server({
      type: "ai:error",
      requestId: "r1",
      code: "invalid_request",
      message: "prompt is too long",
      retryable: false,
      durationMs: 0,
    });
    expect(within(t.answer("r1")).getByText(/prompt is too long/)).toBeInTheDocument();
    expect(within(t.answer("r1")).queryByRole("button", { name: "Retry" })).toBeNull();
  });

  it("marks an answer interrupted when the connection drops, and shows reconnecting", async () => {
    const t = setup();
    const status = screen.getByTestId("connection-status");
    expect(status).toHaveTextContent("connected");
    await t.user.type(screen.getByRole("textbox", { name: "Prompt" }), "hi{Enter}");
    t.server({ type: "ai:start", requestId: "r1", model: "m" });
    act(() => t.socket.drop());
    expect(status).toHaveTextContent("reconnecting");
    expect(t.answer("r1")).toHaveAttribute("data-status", "error");
    expect(within(t.answer("r1")).getByText(/connection was lost/)).toBeInTheDocument();
    expect(within(t.answer("r1")).getByRole("button", { name: "Retry" })).toBeInTheDocument();
  });

  it("shows reconnecting… in a resumable answer, which then streams on; Stop stops it at once", async () => {
    const t = setup();
    await t.user.type(screen.getByRole("textbox", { name: "Prompt" }), "hi{Enter}");
    t.server(
      { type: "ai:start", requestId: "r1", model: "m", seq: 0, resumeToken: "tok" },
      { type: "ai:token", requestId: "r1", chunk: "Hello", seq: 1, count: 1 },
    );
    act(() => t.socket.drop());
    const answer = t.answer("r1");
    expect(answer).toHaveAttribute("data-status", "streaming");
    expect(answer).toHaveAttribute("data-reconnecting");
    expect(within(answer).getByText("reconnecting…")).toBeInTheDocument();
    expect(within(answer).getByText("Hello")).toBeInTheDocument();
    act(() => {
      t.store.connect(); // at once, not after the backoff
      t.sockets.at(-1)!.open();
    });
    expect(answer).not.toHaveAttribute("data-reconnecting");
    t.server({ type: "ai:token", requestId: "r1", chunk: " there", seq: 2, count: 1 });
    expect(within(answer).getByText("Hello there")).toBeInTheDocument();

    act(() => t.socket.drop());
    await t.user.click(within(answer).getByRole("button", { name: "Stop" }));
    expect(answer).toHaveAttribute("data-status", "cancelled");
    expect(within(answer).queryByText("reconnecting…")).toBeNull();
  });
});

describe("a busy server", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  /** A server at capacity refuses `requestId` before it starts, with a retry hint. */
  const shed = (requestId: string, retryAfterMs = 2000): ServerFrame => ({
    type: "ai:error",
    requestId,
    code: "too_many_requests",
    message: "the server is at capacity; try again shortly",
    retryable: true,
    retryAfterMs,
    durationMs: 0,
  });

  /**
   * The app on fake timers, "hi" asked; `wait(ms)` lets them run and paints. (user-event waits
   * on a timer after each action, which fake timers would hold: fireEvent clicks here.)
   */
  function busySetup() {
    vi.useFakeTimers();
    const t = setup();
    fireEvent.change(screen.getByRole("textbox", { name: "Prompt" }), { target: { value: "hi" } });
    fireEvent.click(screen.getByRole("button", { name: "Send" }));
    const wait = (ms: number) =>
      act(() => {
        vi.advanceTimersByTime(ms);
        t.flush();
      });
    const click = (id: string, name: string) =>
      fireEvent.click(within(t.answer(id)).getByRole("button", { name }));
    return { ...t, wait, click };
  }

  it("counts down in the answer, sends again by itself, and Stop takes a resend back", () => {
    const t = busySetup();
    t.server(shed("r1"));
    expect(screen.getAllByRole("article")).toHaveLength(1);
    const article = t.answer("r2");
    expect(article).toHaveAttribute("data-status", "streaming");
    expect(within(article).getByText("Server busy — retrying in 2 s…")).toBeInTheDocument();
    expect(within(article).getByRole("button", { name: "Stop" })).toBeInTheDocument();
    t.wait(1000);
    expect(within(article).getByText("Server busy — retrying in 1 s…")).toBeInTheDocument();
    t.wait(1000);
    expect(t.socket.frames.at(-1)).toEqual({
      type: "ai:generate",
      requestId: "r2",
      prompt: "hi",
      resumable: true,
    });
    expect(within(article).getByText("thinking…")).toBeInTheDocument();

    t.server(shed("r2"));
    t.click("r3", "Stop");
    t.wait(10_000);
    expect(t.answer("r3")).toHaveAttribute("data-status", "cancelled");
    expect(within(t.answer("r3")).getByText("stopped before any text arrived")).toBeVisible();
    expect(t.socket.frames.map((f) => `${f.type} ${f.requestId}`)).toEqual([
      "ai:generate r1",
      "ai:generate r2",
    ]);
  });

  it("shows the error with Retry once the server stayed busy through three resends", () => {
    const t = busySetup();
    for (const id of ["r1", "r2", "r3"]) {
      t.server(shed(id, 1000));
      t.wait(1000);
    }
    t.server(shed("r4", 1000));
    t.wait(10_000);
    const article = t.answer("r4");
    expect(article).toHaveAttribute("data-status", "error");
    expect(within(article).getByText(/the server is at capacity/)).toBeInTheDocument();
    expect(within(article).queryByText(/Server busy/)).toBeNull();
    t.click("r4", "Retry");
    expect(t.socket.frames.at(-1)).toEqual({
      type: "ai:generate",
      requestId: "r5",
      prompt: "hi",
      resumable: true,
    });
  });
});

describe("connection status", () => {
  it("says connecting until the socket opens", () => {
    const t = setup({ open: false });
    const status = screen.getByTestId("connection-status");
    expect(status).toHaveTextContent("connecting");
    expect(status).toHaveAttribute("role", "status");
    act(() => t.socket.open());
    expect(status).toHaveTextContent("connected");
  });

  it("lists protocol errors for whoever is debugging", () => {
    const t = setup();
    act(() => {
      t.socket.receive("nonsense");
      t.flush();
    });
    expect(screen.getByText("1 protocol warning")).toBeInTheDocument();
    expect(screen.getByText("nonsense")).toBeInTheDocument();
  });
});

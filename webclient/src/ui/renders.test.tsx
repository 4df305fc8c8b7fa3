// The re-render storm test: 4 streams at 200 tokens/s each must not cost 800 renders a second.

import { act, render, screen } from "@testing-library/react";
import { Profiler } from "react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { animationFrame } from "../chat/schedule.ts";
import { ChatStoreProvider } from "../react/useChat.ts";
import { makeStore } from "../test/fakeSocket.ts";
import { App } from "./App.tsx";

const FRAME_MS = 16; // the fake clock's animation frame period

beforeEach(() => {
  vi.useFakeTimers({
    toFake: [
      "setTimeout",
      "clearTimeout",
      "setInterval",
      "clearInterval",
      "requestAnimationFrame",
      "cancelAnimationFrame",
      "performance",
      "Date",
    ],
  });
});

afterEach(() => {
  vi.useRealTimers();
});

describe("rendering under load", () => {
  it("renders at most once per animation frame with 4 streams at 200 tokens/s each", () => {
    expect(typeof requestAnimationFrame).toBe("function");
    // The store's real scheduler (animation frames), on the fake clock.
    const { store, sockets } = makeStore({ scheduleFrame: animationFrame() });
    store.connect();
    let commits = 0;
    render(
      <ChatStoreProvider store={store}>
        <Profiler id="app" onRender={() => (commits += 1)}>
          <App />
        </Profiler>
      </ChatStoreProvider>,
    );
    const socket = sockets[0]!;
    const ids: string[] = [];
    act(() => {
      socket.open();
      for (const prompt of ["one", "two", "three", "four"]) ids.push(store.send(prompt)!);
      for (const id of ids) socket.receive({ type: "ai:start", requestId: id, model: "simulated" });
      vi.advanceTimersByTime(FRAME_MS);
    });

    const streams = ids.length;
    const tokensPerSecond = 200;
    const stepMs = 1000 / tokensPerSecond; // each stream gets a token every 5 ms
    const steps = tokensPerSecond; // one simulated second
    commits = 0;
    let flushed = 0;
    store.subscribe(() => (flushed += 1));
    for (let step = 0; step < steps; step++) {
      act(() => {
        for (const id of ids) {
          socket.receive({ type: "ai:token", requestId: id, chunk: "w ", seq: step, count: 1 });
        }
        vi.advanceTimersByTime(stepMs);
      });
    }
    act(() => {
      vi.advanceTimersByTime(FRAME_MS); // the last frame
    });

    const tokens = streams * steps;
    const frames = Math.ceil((steps * stepMs + FRAME_MS) / FRAME_MS);
    expect(tokens).toBe(800);
    expect(flushed).toBeLessThanOrEqual(frames); // one snapshot per frame at most…
    expect(commits).toBeLessThanOrEqual(frames); // …and one React commit per snapshot
    expect(commits).toBeGreaterThan(frames / 2); // while still painting smoothly, every frame or so
    for (const id of ids) {
      const article = document.querySelector(`article[data-request-id="${id}"]`)!;
      expect(article.textContent).toContain("w ".repeat(steps).trim());
    }
    expect(screen.getAllByRole("button", { name: "Stop" })).toHaveLength(4);
    console.info(
      `renders: ${commits} commits, ${flushed} snapshots for ${tokens} tokens in 1 s (${frames} frames)`,
    );
  });

  it("renders at most once per animation frame with every kind of part streaming", () => {
    const { store, sockets } = makeStore({ scheduleFrame: animationFrame() });
    store.connect();
    let commits = 0;
    render(
      <ChatStoreProvider store={store}>
        <Profiler id="app" onRender={() => (commits += 1)}>
          <App />
        </Profiler>
      </ChatStoreProvider>,
    );
    const socket = sockets[0]!;
    const ids: string[] = [];
    act(() => {
      socket.open();
      for (const prompt of ["one", "two", "three", "four"]) ids.push(store.send(prompt)!);
      for (const id of ids) socket.receive({ type: "ai:start", requestId: id, model: "simulated" });
      vi.advanceTimersByTime(FRAME_MS);
    });

    // Each stream: 40 reasoning parts, a tool call, 60 argument pieces, 100 tokens, at 200/s.
    const steps = 201;
    const stepMs = 5;
    const part = (requestId: string, seq: number) => {
      if (seq < 40) return { type: "ai:reasoning", requestId, chunk: "r ", seq, count: 1 } as const;
      if (seq === 40)
        return { type: "ai:tool_call", requestId, seq, index: 0, id: "c", name: "f" } as const;
      if (seq < 101)
        return { type: "ai:tool_args", requestId, chunk: "1", seq, count: 1, index: 0 } as const;
      return { type: "ai:token", requestId, chunk: "w ", seq, count: 1 } as const;
    };
    commits = 0;
    let flushed = 0;
    store.subscribe(() => (flushed += 1));
    for (let step = 0; step < steps; step++) {
      act(() => {
        for (const id of ids) socket.receive(part(id, step));
        vi.advanceTimersByTime(stepMs);
      });
    }
    act(() => {
      vi.advanceTimersByTime(FRAME_MS);
    });

    const frames = Math.ceil((steps * stepMs + FRAME_MS) / FRAME_MS);
    expect(flushed).toBeLessThanOrEqual(frames);
    expect(commits).toBeLessThanOrEqual(frames); // the Thinking section closing costs no commit
    expect(commits).toBeGreaterThan(frames / 2);
    for (const id of ids) {
      const article = document.querySelector(`article[data-request-id="${id}"]`)!;
      expect(article.querySelector(".thinking-toggle")).toHaveAttribute("aria-expanded", "false");
      expect(article.querySelector(".tool-call-args")!.textContent).toBe("1".repeat(60));
      expect(article.textContent).toContain("w ".repeat(100).trim());
    }
    expect(store.getSnapshot().protocolErrors).toEqual([]);
  });

  it("renders at most once per animation frame while a shed request counts down and resends", () => {
    const { store, sockets } = makeStore({ scheduleFrame: animationFrame() });
    store.connect();
    let commits = 0;
    render(
      <ChatStoreProvider store={store}>
        <Profiler id="app" onRender={() => (commits += 1)}>
          <App />
        </Profiler>
      </ChatStoreProvider>,
    );
    const socket = sockets[0]!;
    const ids: string[] = [];
    act(() => {
      socket.open();
      for (const prompt of ["one", "two", "three", "busy"]) ids.push(store.send(prompt)!);
      for (const id of ids.slice(0, 3)) {
        socket.receive({ type: "ai:start", requestId: id, model: "simulated" });
      }
      vi.advanceTimersByTime(FRAME_MS);
    });
    commits = 0;
    let flushed = 0;
    store.subscribe(() => (flushed += 1));
    const steps = 600; // 3 s of 3 streams at 200 tokens/s; "busy" is shed at once, hint 2.5 s
    const stepMs = 5;
    for (let step = 0; step < steps; step++) {
      act(() => {
        for (const id of ids.slice(0, 3)) {
          socket.receive({ type: "ai:token", requestId: id, chunk: "w ", seq: step, count: 1 });
        }
        if (step === 0) {
          socket.receive({
            type: "ai:error",
            requestId: ids[3]!,
            code: "too_many_requests",
            message: "the server is at capacity; try again shortly",
            retryable: true,
            retryAfterMs: 2500,
            durationMs: 0,
          });
        }
        vi.advanceTimersByTime(stepMs);
      });
    }
    act(() => {
      vi.advanceTimersByTime(FRAME_MS);
    });

    const frames = Math.ceil((steps * stepMs + FRAME_MS) / FRAME_MS);
    expect(flushed).toBeLessThanOrEqual(frames);
    expect(commits).toBeLessThanOrEqual(frames);
    const resent = store.getSnapshot().order[3]!;
    expect(store.getSnapshot().requests[resent]).toMatchObject({ retryOf: ids[3], queued: false });
    expect(socket.sent.filter((text) => text.includes(`"${resent}"`))).toHaveLength(1);
    expect(store.getSnapshot().protocolErrors).toEqual([]);
  });
});

// Stop stops the model, not only the page: against the fake OpenAI-compatible upstream (a real
// HTTP/SSE server in its own process), the upstream sees its connection closed by the generator
// right after the click, long before the scripted answer would have ended.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  TEST_TIMEOUT_MS,
  closeBrowser,
  ensureBuilt,
  monotonic,
  poll,
  scenario,
} from "./harness.mjs";

before(() => ensureBuilt());
after(() => closeBrowser());

const SCRIPTED_TOKENS = 2000; // 40 s at 50 tokens/s: it only ends early if someone closes it

test(
  "Stop cancels the generation upstream: the fake sees the client close at once",
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    await scenario(async (s) => {
      const fake = await s.fake({ script: { tokens: SCRIPTED_TOKENS, interval: 0.02 } });
      const stack = await s.stack({
        env: { OPENAI_BASE_URL: fake.baseUrl, OPENAI_API_KEY: "x", AISTREAM_MODEL: "fake-model" },
      });
      const chat = await s.chat(stack.url);
      await chat.waitForConnection("connected");

      const id = await chat.ask("Tell me a very long story");
      // Some text is on the page, the upstream is mid-answer.
      await chat.waitForStreamingText(id, 5);
      const [streaming] = await fake.records();
      assert.equal(streaming.outcome, "in_progress");
      assert.equal(streaming.path, "/v1/chat/completions");

      // When the click really happened, on this process's monotonic clock: the page notes the
      // wall-clock time of the click event, converted with the wall-minus-monotonic offset here.
      await chat.page.evaluate(() => {
        const note = (event) => {
          if (event.target instanceof Element && event.target.closest("button.stop")) {
            window.stopClickedAt = performance.timeOrigin + performance.now();
          }
        };
        document.addEventListener("click", note, { capture: true });
      });
      const clickBegan = monotonic();
      await chat.answer(id).getByRole("button", { name: "Stop" }).click();
      await chat.waitForStatus(id, "cancelled");
      const offset = Date.now() / 1000 - monotonic();
      const clickAt = (await chat.page.evaluate(() => window.stopClickedAt)) / 1000 - offset;
      assert.ok(clickAt >= clickBegan - 0.05, "the click came after Playwright began it");

      // The upstream request ends, closed by its client (the generator), within moments.
      const record = await poll(
        async () => {
          const [r] = await fake.records();
          return r.outcome === "in_progress" ? undefined : r;
        },
        { timeoutMs: 5_000, what: "the upstream request to end" },
      );
      assert.equal(record.outcome, "client_closed", JSON.stringify(record));
      const closeLatency = record.client_closed_at - clickAt;
      t.diagnostic(
        `the upstream saw its connection closed ${(closeLatency * 1000).toFixed(1)} ms after ` +
          `the click on Stop, with ${record.tokens_sent} of ${SCRIPTED_TOKENS} tokens sent`,
      );
      // Typically 5-20 ms; the bound only leaves room for a loaded machine.
      assert.ok(
        closeLatency > 0 && closeLatency < 1.0,
        `closed ${(closeLatency * 1000).toFixed(1)} ms after the click on Stop`,
      );
      assert.ok(record.tokens_sent < SCRIPTED_TOKENS / 10, `${record.tokens_sent} tokens sent`);

      // Only the Stop did it: one ai:cancel on the one socket the page ever opened (no
      // reconnect), answered by the bridge's "cancelled" end; the upstream got no other request.
      const cancels = chat.frames.filter((f) => f.dir === "out" && f.type === "ai:cancel");
      assert.deepEqual(
        cancels.map((f) => [f.type, f.requestId]),
        [["ai:cancel", id]],
      );
      assert.equal(chat.sockets.length, 1);
      const cancel = cancels[0];
      assert.ok(cancel.at >= clickBegan);
      // (The bridge's end may reach the page just after the upstream saw its close.)
      await poll(() => chat.received(id).some((f) => f.type === "ai:error"), {
        timeoutMs: 5_000,
        what: "the bridge's cancelled end",
      });
      const frames = chat.received(id);
      const end = frames.at(-1);
      assert.equal(end.type, "ai:error");
      assert.equal(end.code, "cancelled");
      assert.equal(end.retryable, false);
      assert.ok(end.usage?.completionTokens > 0, "usage so far on the cancelled end");
      assert.equal(frames.filter((f) => f.type === "ai:error" || f.type === "ai:done").length, 1);
      assert.equal(await chat.status.getAttribute("data-state"), "connected");
      assert.equal((await fake.records()).length, 1);

      // The page keeps the text so far, marked stopped, with no Stop or Retry left.
      const answer = chat.answer(id);
      assert.equal(await answer.locator(".status-note").textContent(), "stopped");
      assert.ok((await chat.text(id)).startsWith("tok0 tok1 "));
      assert.equal(await answer.getByRole("button").count(), 0);

      // And the same socket still answers: the next question runs to the end.
      await fake.setScript({ tokens: 5 });
      const next = await chat.ask("Short one, please");
      await chat.waitForStatus(next, "done");
      assert.equal(await chat.text(next), "tok0 tok1 tok2 tok3 tok4");
      assert.deepEqual(
        (await fake.records()).map((r) => r.outcome),
        ["client_closed", "completed"],
      );
      assert.deepEqual(await chat.protocolWarnings(), []);
      assert.deepEqual(chat.problems, []);
    });
  },
);

// The chat in a real headless Chromium against a real `aistream up` on the simulated model:
// streaming, several answers at once, upstream errors in place.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";

import {
  TEST_TIMEOUT_MS,
  assertGeneration,
  closeBrowser,
  ensureArtifacts,
  ensureBuilt,
  monotonic,
  scenario,
} from "./harness.mjs";

before(() => ensureBuilt());
after(() => closeBrowser());

test(
  "streams an answer into the page token by token, before the generation ends",
  { timeout: TEST_TIMEOUT_MS },
  async () => {
    await scenario(async (s) => {
      // 60 tokens at 30/s: about 2 s per answer, time enough to look at one mid-stream.
      const stack = await s.stack({ env: { AISTREAM_SIMULATED_TOKENS_PER_S: "30" } });
      const chat = await s.chat(stack.url);
      await chat.waitForConnection("connected");

      const first = await chat.ask("Why is the sky blue?");
      await chat.waitForStatus(first, "done");

      const sentAt = monotonic();
      const second = await chat.ask("How does backpressure work in a WebSocket bridge?");
      await chat.waitForStreamingText(second, 20);
      const midText = await chat.text(second);
      const midAt = monotonic();
      const shot = join(ensureArtifacts(), "chat-mid-stream.png");
      await chat.page.screenshot({ path: shot, animations: "disabled" });
      const shotAt = monotonic();
      // The page follows the text: the streaming answer's Stop button is not under the prompt bar.
      const hidden = await chat.page.evaluate((id) => {
        const stop = document.querySelector(`article[data-request-id="${id}"] button.stop`);
        const bar = document.querySelector(".composer-bar");
        return stop.getBoundingClientRect().bottom - bar.getBoundingClientRect().top;
      }, second);
      assert.ok(hidden <= 0, `the Stop button is ${hidden}px under the prompt bar`);

      await chat.waitForStatus(second, "done");
      const finalText = await chat.text(second);
      assert.ok(
        midText.length > 0 && midText.length < finalText.length,
        `part of the answer (${midText.length} chars) was on the page before all of it (${finalText.length})`,
      );
      assert.ok(
        finalText.startsWith("Simulated answer to: How does backpressure work in a WebSocket"),
      );

      // The wire: tokens spread over the answer's life, and the end came after the screenshot.
      const { frames, tokens } = assertGeneration(chat, second, "ai:done");
      assert.equal(tokens, 60);
      const firstToken = frames.find((f) => f.type === "ai:token");
      const done = frames.at(-1);
      assert.ok(done.at > shotAt, "the screenshot shows the answer still streaming");
      assert.ok(firstToken.at < midAt, "tokens arrived before the page was read mid-stream");
      assert.ok(
        done.at - firstToken.at > 1.0,
        `tokens streamed over ${(done.at - firstToken.at).toFixed(2)} s, not in one burst`,
      );
      assert.equal(done.finishReason, "stop");
      assert.ok(firstToken.at - sentAt < 2, "the first token came quickly");

      // What a person sees at the end: the model (labelled simulated), "done", the numbers.
      const answer = chat.answer(second);
      assert.match(await answer.locator(".model").textContent(), /simulated, not a real model/);
      assert.equal(await answer.locator(".status-note").textContent(), "done");
      // Every completion token counted, the reasoning ones among them (the simulated model
      // thinks before it answers).
      const completion = done.usage.completionTokens;
      const reasoning = done.usage.reasoningTokens ?? 0;
      assert.equal(completion, 60 + reasoning);
      assert.match(
        await answer.locator(".metrics").textContent(),
        new RegExp(
          `first token .* tok/s · ${completion} tokens` +
            (reasoning > 0 ? ` \\(${reasoning} reasoning` : ""),
        ),
      );
      assert.equal(await answer.getByRole("button", { name: "Stop" }).count(), 0);
      assert.equal(await answer.locator("strong", { hasText: "Simulated answer" }).count(), 1);
      assert.deepEqual(await chat.protocolWarnings(), []);
      assert.deepEqual(chat.problems, []);
    });
  },
);

test(
  "runs two generations at once, each answer in its own place",
  { timeout: TEST_TIMEOUT_MS },
  async () => {
    await scenario(async (s) => {
      const stack = await s.stack({ env: { AISTREAM_SIMULATED_TOKENS_PER_S: "40" } });
      const chat = await s.chat(stack.url);
      await chat.waitForConnection("connected");

      const a = await chat.ask("Tell me about rivers");
      const b = await chat.ask("Tell me about mountains");
      // Both on the page at once, both growing.
      await chat.waitForStreamingText(a, 8);
      await chat.waitForStreamingText(b, 8);
      assert.equal(await chat.answer(a).getAttribute("data-status"), "streaming");
      await chat.waitForStatus(a, "done");
      await chat.waitForStatus(b, "done");

      assert.match(await chat.text(a), /^Simulated answer to: Tell me about rivers/);
      assert.match(await chat.text(b), /^Simulated answer to: Tell me about mountains/);
      assert.equal(assertGeneration(chat, a, "ai:done").tokens, 60);
      assert.equal(assertGeneration(chat, b, "ai:done").tokens, 60);

      // The two streams interleaved on the one socket: they really ran at the same time.
      const tokens = chat.frames.filter((f) => f.dir === "in" && f.type === "ai:token");
      const lastOfA = tokens.findLastIndex((f) => f.requestId === a);
      const firstOfB = tokens.findIndex((f) => f.requestId === b);
      assert.ok(
        firstOfB < lastOfA,
        "tokens of the second answer arrived before the first finished",
      );
      // The follow-up question went without the unfinished first turn as history.
      const generates = chat.frames.filter((f) => f.dir === "out" && f.type === "ai:generate");
      assert.deepEqual(
        generates.map((f) => [f.requestId, f.messages]),
        [
          [a, undefined],
          [b, undefined],
        ],
      );
      assert.deepEqual(await chat.protocolWarnings(), []);
      assert.deepEqual(chat.problems, []);
    });
  },
);

test(
  "shows an upstream error in place, with Retry, while other answers go on",
  { timeout: TEST_TIMEOUT_MS },
  async () => {
    await scenario(async (s) => {
      const stack = await s.stack();
      const chat = await s.chat(stack.url);
      await chat.waitForConnection("connected");

      const ok = await chat.ask('#simulate {"tokens": 40}\nA normal question');
      const mid = await chat.ask('#simulate {"fail_after": 5, "tokens_per_s": 20}\nFails midway');
      const early = await chat.ask('#simulate {"fail_before": true}\nFails at once');

      await chat.waitForStatus(early, "error");
      await chat.waitForStatus(mid, "error");
      await chat.waitForStatus(ok, "done");

      // Midway: the five tokens stay, the error shows under them, Retry is offered.
      const midAnswer = chat.answer(mid);
      assert.match(await chat.text(mid), /^Simulated answer to: Fails midway/);
      assert.equal(
        await midAnswer.locator(".error-message").textContent(),
        "the simulated upstream failed during the answer (upstream_error)",
      );
      assert.equal(await midAnswer.locator(".status-note").textContent(), "failed");
      await midAnswer.getByRole("button", { name: "Retry" }).waitFor();
      const midEnd = assertGeneration(chat, mid, "ai:error");
      assert.equal(midEnd.tokens, 5);
      assert.deepEqual(
        { code: midEnd.frames.at(-1).code, retryable: midEnd.frames.at(-1).retryable },
        { code: "upstream_error", retryable: true },
      );

      // Before the first token: no text, the error, Retry.
      const earlyAnswer = chat.answer(early);
      assert.equal(await chat.text(early), "");
      assert.equal(
        await earlyAnswer.locator(".error-message").textContent(),
        "the simulated upstream failed (upstream_error)",
      );
      const earlyFrames = chat.received(early);
      assert.deepEqual(
        earlyFrames.filter((f) => f.type !== "ai:start").map((f) => [f.type, f.code, f.retryable]),
        [["ai:error", "upstream_error", true]],
      );

      // Retry asks again under a new id, in the same place; this script fails again, in place.
      await earlyAnswer.getByRole("button", { name: "Retry" }).click();
      const retried = await chat.page
        .locator("article[data-request-id]")
        .nth(2)
        .getAttribute("data-request-id");
      assert.notEqual(retried, early);
      await chat.waitForStatus(retried, "error");
      const generate = chat.frames.find((f) => f.dir === "out" && f.requestId === retried);
      assert.equal(generate.prompt, '#simulate {"fail_before": true}\nFails at once');
      assert.equal(await chat.page.locator("article[data-request-id]").count(), 3);

      // The others were not harmed: the socket stayed up, the normal answer finished.
      assert.equal(assertGeneration(chat, ok, "ai:done").tokens, 40);
      assert.equal(await chat.status.getAttribute("data-state"), "connected");
      assert.deepEqual(await chat.protocolWarnings(), []);
      assert.deepEqual(chat.problems, []);
    });
  },
);

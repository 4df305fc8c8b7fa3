// The bridge dies mid-answer (SIGKILL of `aistream up`, its generator with it): the page says
// reconnecting, in the status and in the answer, which keeps its text; when a new `aistream up`
// listens on the same port the page reconnects by itself and asks to resume the answer, which
// the new generator never ran: it ends `not_found`, with Retry, and Retry gets a whole answer.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  TEST_TIMEOUT_MS,
  alive,
  childPids,
  closeBrowser,
  ensureBuilt,
  poll,
  scenario,
} from "./harness.mjs";

before(() => ensureBuilt());
after(() => closeBrowser());

test(
  "a killed bridge: reconnecting, then reconnect, nothing to resume (not_found), and Retry",
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    await scenario(async (s) => {
      const first = await s.stack({ env: { AISTREAM_SIMULATED_TOKENS_PER_S: "20" } });
      const generators = childPids(first.pid);
      assert.equal(generators.length, 1, "aistream up runs its generator as one child process");
      const chat = await s.chat(first.url);
      await chat.waitForConnection("connected");

      const prompt = '#simulate {"tokens": 200}\nA long answer, please';
      const id = await chat.ask(prompt);
      await chat.waitForStreamingText(id, 12);

      const status = await first.kill();
      assert.equal(status.signal, "SIGKILL");

      // The page: reconnecting, and the streaming answer waits to be resumed, text kept.
      await chat.waitForConnection("reconnecting");
      const answer = chat.answer(id);
      await chat.page.locator(`article[data-request-id="${id}"][data-reconnecting]`).waitFor();
      assert.equal(await answer.getAttribute("data-status"), "streaming");
      assert.equal(await answer.locator(".status-note").textContent(), "reconnecting…");
      assert.match(await chat.text(id), /^Simulated answer to: /); // the text so far stays
      assert.ok(
        !chat.received(id).some((f) => f.type === "ai:done" || f.type === "ai:error"),
        "no terminal frame: the socket just died",
      );

      // Its generator does not outlive it (it exits when its parent's pipe closes).
      await poll(() => generators.every((pid) => !alive(pid)), {
        timeoutMs: 5_000,
        what: `the orphaned generator ${generators} to exit`,
      });

      // A new stack on the same port: the page finds it on its own.
      const second = await s.stack({
        port: first.port,
        env: { AISTREAM_SIMULATED_TOKENS_PER_S: "200" },
      });
      assert.equal(second.url, first.url);
      const down = Date.now();
      await chat.waitForConnection("connected", 20_000);
      t.diagnostic(`reconnected ${Date.now() - down} ms after the new stack was up`);

      // The new generator never ran it: the resume finds nothing, and the answer ends, with Retry.
      await chat.waitForStatus(id, "error");
      assert.equal(
        chat.frames.filter((f) => f.dir === "out" && f.type === "ai:resume").length,
        1,
        "one resume, on the new connection",
      );
      assert.match(await answer.locator(".error-message").textContent(), / \(not_found\)$/);
      assert.match(await chat.text(id), /^Simulated answer to: /);
      assert.equal(await answer.getByRole("button", { name: "Stop" }).count(), 0);

      // Retry takes the interrupted answer's place and runs to the end.
      await answer.getByRole("button", { name: "Retry" }).click();
      const retried = await chat.page
        .locator("article[data-request-id]")
        .first()
        .getAttribute("data-request-id");
      assert.notEqual(retried, id);
      await chat.waitForStatus(retried, "done", 20_000);
      assert.equal(await chat.page.locator("article[data-request-id]").count(), 1);
      const frames = chat.received(retried);
      const tokens = frames.filter((f) => f.type === "ai:token");
      assert.equal(
        tokens.reduce((n, f) => n + f.count, 0),
        200,
      );
      assert.equal(frames.at(-1).type, "ai:done");
      assert.equal(frames.at(-1).finishReason, "stop");
      const generate = chat.frames.find((f) => f.dir === "out" && f.requestId === retried);
      assert.equal(generate.prompt, prompt);
      assert.match(await chat.text(retried), /^Simulated answer to: A long answer, please/);
      assert.deepEqual(await chat.protocolWarnings(), []);
      assert.deepEqual(chat.problems, []);
    });
  },
);

// Resume (issue 19): an answer survives its socket dying with no close frame, and a page reload.
// The page reconnects, sends ai:resume from the last position it holds, and the answer ends with
// exactly the text an uninterrupted run of the same prompt shows (the embedded simulated model
// is deterministic for a prompt: its words are seeded by it). The drop is a TCP reset through a
// proxy in front of the stack (`startCutProxy`): neither the browser nor the bridge gets a close
// frame, as on a network change.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  TEST_TIMEOUT_MS,
  assertGeneration,
  closeBrowser,
  ensureBuilt,
  poll,
  scenario,
} from "./harness.mjs";

before(() => ensureBuilt());
after(() => closeBrowser());

const PROMPT = '#simulate {"tokens": 200}\nA long answer that survives a dropped connection';
const STACK = { env: { AISTREAM_SIMULATED_TOKENS_PER_S: "40" } };

/** Ask PROMPT on a page of its own, uninterrupted; resolves with the text it ends with. */
async function uninterrupted(s, url) {
  const chat = await s.chat(url);
  await chat.waitForConnection("connected");
  const id = await chat.ask(PROMPT);
  await chat.waitForStatus(id, "done", 30_000);
  assert.equal(assertGeneration(chat, id, "ai:done").tokens, 200);
  return chat.text(id);
}

/** The ai:resume frames the page sent for `id`. */
const resumes = (chat, id) =>
  chat.frames.filter((f) => f.dir === "out" && f.type === "ai:resume" && f.requestId === id);

test(
  "a socket dropped with no close frame: reconnecting…, then the whole answer, every word once",
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    await scenario(async (s) => {
      const stack = await s.stack(STACK);
      // Alongside, on pages of their own: two uninterrupted runs, which must agree (the premise).
      const baseline = uninterrupted(s, stack.url);
      const again = uninterrupted(s, stack.url);

      const proxy = await s.proxy(stack.port);
      const chat = await s.chat(proxy.url);
      await chat.waitForConnection("connected");
      const id = await chat.ask(PROMPT);
      assert.equal(chat.frames.find((f) => f.dir === "out").resumable, true);
      await chat.waitForStreamingText(id, 12);

      const cut = proxy.cut({ refuseMs: 1500 });
      assert.ok(cut >= 1, "the page's socket went through the proxy");
      const answer = chat.answer(id);
      await chat.page
        .locator(`article[data-request-id="${id}"][data-reconnecting]`)
        .waitFor({ timeout: 5_000 });
      assert.equal(await answer.locator(".status-note").textContent(), "reconnecting…");
      assert.equal(await answer.getAttribute("data-status"), "streaming");
      await chat.waitForConnection("reconnecting", 1_000);
      const held = await chat.text(id);

      await chat.waitForConnection("connected", 20_000);
      await chat.waitForStatus(id, "done", 30_000);
      const text = await chat.text(id);
      assert.ok(text.startsWith(held.trimEnd()), "the text shown before the drop stayed");
      assert.equal(await again, await baseline, "the simulated model is deterministic per prompt");
      assert.equal(text, await baseline, "the same text as an uninterrupted run");

      // On the wire: one resume, from the last position received, and then no gap and no repeat.
      const [resume, ...more] = resumes(chat, id);
      assert.equal(more.length, 0);
      const before = chat.frames.slice(0, chat.frames.indexOf(resume));
      const last = before.filter((f) => f.dir === "in" && f.requestId === id).at(-1);
      assert.equal(resume.afterSeq, last.seq + (last.type === "ai:start" ? 1 : last.count) - 1);
      assert.equal(resume.resumeToken, chat.received(id)[0].resumeToken);
      assert.notEqual(resume.socket, undefined);
      assert.equal(assertGeneration(chat, id, "ai:done").tokens, 200);
      t.diagnostic(`resumed after position ${resume.afterSeq} on a new socket`);
      assert.deepEqual(await chat.protocolWarnings(), []);
      assert.deepEqual(chat.problems, []);
    });
  },
);

test(
  "a page reload mid-answer: the answer is shown again and completes",
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    await scenario(async (s) => {
      const stack = await s.stack(STACK);
      const baseline = uninterrupted(s, stack.url);

      const chat = await s.chat(stack.url);
      await chat.waitForConnection("connected");
      const id = await chat.ask(PROMPT);
      await chat.waitForStreamingText(id, 12);
      await chat.page.reload();

      // The reloaded page shows the answer (same request id, its text so far) and resumes it.
      await chat.answer(id).waitFor();
      assert.match(await chat.text(id), /^Simulated answer to: /);
      await chat.waitForStatus(id, "done", 30_000);
      assert.equal(await chat.text(id), await baseline, "the same text as an uninterrupted run");
      const [resume] = resumes(chat, id);
      assert.ok(resume.afterSeq > 0, "resumed from where the page was");
      assert.equal(chat.sockets.length, 2);
      t.diagnostic(`resumed after position ${resume.afterSeq} after the reload`);
      assert.deepEqual(await chat.protocolWarnings(), []);
      assert.deepEqual(chat.problems, []);
      // Nothing is left to resume once it ended: another reload shows an empty chat.
      await chat.page.reload();
      await chat.waitForConnection("connected");
      assert.equal(await chat.page.locator("article[data-request-id]").count(), 0);
    });
  },
);

test(
  "Stop while reconnecting: stopped at once, and cancelled at the server once connected",
  { timeout: TEST_TIMEOUT_MS },
  async () => {
    await scenario(async (s) => {
      const stack = await s.stack(STACK);
      const proxy = await s.proxy(stack.port);
      const chat = await s.chat(proxy.url);
      await chat.waitForConnection("connected");
      const id = await chat.ask(PROMPT);
      await chat.waitForStreamingText(id, 12);

      proxy.cut({ refuseMs: 2000 });
      const answer = chat.answer(id);
      await chat.page.locator(`article[data-request-id="${id}"][data-reconnecting]`).waitFor();
      await answer.getByRole("button", { name: "Stop" }).click();
      assert.equal(await answer.getAttribute("data-status"), "cancelled");
      assert.equal(await answer.locator(".status-note").textContent(), "stopped");
      const kept = await chat.text(id);

      // Once a socket opens: the resume, then the cancel; the server ends it as cancelled.
      await chat.waitForConnection("connected", 20_000);
      const end = await poll(
        () => chat.received(id).find((f) => f.type === "ai:error" || f.type === "ai:done"),
        { timeoutMs: 10_000, what: "the generation's end" },
      );
      assert.equal(end.type, "ai:error");
      assert.equal(end.code, "cancelled");
      const sent = chat.frames.filter((f) => f.dir === "out" && f.requestId === id);
      assert.deepEqual(
        sent.map((f) => f.type),
        ["ai:generate", "ai:resume", "ai:cancel"],
      );
      assert.equal(await chat.text(id), kept, "no text added after Stop");
      assert.equal(await answer.getAttribute("data-status"), "cancelled");
      assert.deepEqual(await chat.protocolWarnings(), []);
      assert.deepEqual(chat.problems, []);
    });
  },
);

// Parts in a real headless Chromium against a real `aistream up` on the simulated model: the
// model's thinking shown apart and folded away when the answer starts, a tool call as a card (and
// its result sent back: one turn of an agent loop), structured output checked, refusals.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";

import {
  TEST_TIMEOUT_MS,
  assertGeneration,
  closeBrowser,
  ensureArtifacts,
  ensureBuilt,
  scenario,
} from "./harness.mjs";

before(() => ensureBuilt());
after(() => closeBrowser());

/** Choose the composer's mode (Chat, Tools, JSON). */
async function chooseMode(chat, mode) {
  await chat.page.getByRole("radio", { name: mode }).check();
}

/** The answer's Thinking toggle. */
function thinkingToggle(chat, id) {
  return chat.answer(id).getByRole("region", { name: "Thinking" }).getByRole("button");
}

test(
  "shows the model thinking, open, then folds it away when the answer starts",
  { timeout: TEST_TIMEOUT_MS },
  async () => {
    await scenario(async (s) => {
      // ~24 reasoning tokens at 20/s: a second of thinking, time enough to see it live.
      const stack = await s.stack({ env: { AISTREAM_SIMULATED_TOKENS_PER_S: "20" } });
      const chat = await s.chat(stack.url);
      await chat.waitForConnection("connected");

      const id = await chat.ask("Why is the sky blue?");
      // While it thinks: the section is open, its text growing, the answer still empty.
      const live = chat.answer(id).locator('.thinking.live button[aria-expanded="true"]');
      await live.waitFor({ timeout: 10_000 });
      const thinkingText = chat.answer(id).locator(".thinking-text");
      await chat.page.waitForFunction(
        (id) =>
          (document.querySelector(`article[data-request-id="${id}"] .thinking-text`)?.textContent
            ?.length ?? 0) > 0,
        id,
      );
      assert.equal(await chat.text(id), "", "no answer text while the model thinks");
      assert.ok(await thinkingText.isVisible());

      // The answer starts: the section closes by itself, and stays on the page.
      await chat.waitForStreamingText(id, 3);
      const toggle = thinkingToggle(chat, id);
      assert.equal(await toggle.getAttribute("aria-expanded"), "false");
      assert.equal(await thinkingText.isVisible(), false);
      await chat.waitForStatus(id, "done");

      // The reasoning came first and is not part of the answer text.
      const { frames, end, kinds } = assertGeneration(chat, id, "ai:done");
      const reasoning = frames.filter((f) => f.type === "ai:reasoning");
      assert.ok(reasoning.length > 0, "the simulated model reasons before it answers");
      assert.equal(kinds.indexOf("ai:token"), reasoning.length, "reasoning, then the answer");
      const reasoningText = reasoning.map((f) => f.chunk).join("");
      const text = await chat.text(id);
      assert.match(text, /^Simulated answer to: Why is the sky blue\?/);
      assert.ok(!text.includes(reasoningText.trim()), "the reasoning is not in the answer");
      assert.equal(end.finishReason, "stop");
      assert.equal(typeof end.reasoningMs, "number");

      // The reader may open it again: the whole reasoning is there.
      await toggle.click();
      assert.equal(await toggle.getAttribute("aria-expanded"), "true");
      assert.equal(await thinkingText.textContent(), reasoningText);
      assert.match(await toggle.textContent(), /^Thinking · \d/);
      assert.match(
        await chat.answer(id).locator(".metrics").textContent(),
        new RegExp(`\\(${end.usage.reasoningTokens} reasoning`),
      );
      assert.deepEqual(await chat.protocolWarnings(), []);
      assert.deepEqual(chat.problems, []);
    });
  },
);

test(
  "Tools mode: a tool call card with complete arguments, and its result sent back",
  { timeout: TEST_TIMEOUT_MS },
  async () => {
    await scenario(async (s) => {
      const stack = await s.stack();
      const chat = await s.chat(stack.url);
      await chat.waitForConnection("connected");

      await chooseMode(chat, "Tools");
      const id = await chat.ask("What is the weather in Paris?");
      await chat.waitForStatus(id, "done");

      // The wire: the demo tool went out; the call streamed as tool_call + tool_args.
      const generate = chat.frames.find((f) => f.dir === "out" && f.requestId === id);
      assert.deepEqual(
        generate.tools.map((tool) => tool.name),
        ["get_weather"],
      );
      const { frames, end, kinds } = assertGeneration(chat, id, "ai:done");
      assert.ok(kinds.includes("ai:tool_call") && kinds.includes("ai:tool_args"), `${kinds}`);
      assert.equal(end.finishReason, "tool_calls");
      assert.equal(end.toolCalls.length, 1);
      const [call] = end.toolCalls;
      assert.equal(call.name, "get_weather");
      const streamed = frames
        .filter((f) => f.type === "ai:tool_args")
        .map((f) => f.chunk)
        .join("");
      assert.deepEqual(JSON.parse(streamed), JSON.parse(call.arguments));

      // The page: one card, complete, its arguments pretty-printed, valid for the tool's schema.
      const card = chat.answer(id).getByRole("region", { name: "Tool call get_weather" });
      assert.equal(await card.getAttribute("data-complete"), "true");
      assert.equal(await card.locator(".tool-call-id").textContent(), call.id);
      const shown = await card.getByLabel("Arguments").textContent();
      assert.equal(shown, JSON.stringify(JSON.parse(call.arguments), null, 2));
      const args = JSON.parse(shown);
      assert.equal(typeof args.city, "string");
      assert.ok(["celsius", "fahrenheit"].includes(args.unit), `unit ${args.unit}`);
      assert.equal(
        await chat.answer(id).locator(".status-note").textContent(),
        "the model asked to call tools",
      );

      // Sending the (made-up) result back: the model answers with it, in the next turn.
      const form = chat.answer(id).getByRole("form", { name: "Tool results" });
      const result = await form.getByRole("textbox").inputValue();
      await form.getByRole("button", { name: "Submit tool results" }).click();
      const next = await chat.page
        .locator("article[data-request-id]")
        .nth(1)
        .getAttribute("data-request-id");
      await chat.waitForStatus(next, "done");
      // (what the README shows: the call's card, its result sent back, the answer with it)
      await chat.answer(id).scrollIntoViewIfNeeded();
      const shot = join(ensureArtifacts(), "parts-tool-call.png");
      await chat.page.screenshot({ path: shot, animations: "disabled" });
      const step = chat.frames.find((f) => f.dir === "out" && f.requestId === next);
      assert.deepEqual(
        step.messages.map((m) => m.role),
        ["user", "assistant", "tool"],
      );
      assert.deepEqual(step.messages[1].toolCalls, [call]);
      assert.deepEqual(step.messages[2], { role: "tool", toolCallId: call.id, content: result });
      const answer = assertGeneration(chat, next, "ai:done");
      assert.equal(answer.end.finishReason, "stop");
      assert.ok((await chat.text(next)).length > 0, "an answer that uses the result");
      assert.equal(
        await chat
          .answer(next)
          .getByRole("region", { name: /^Tool call/ })
          .count(),
        0,
      );
      assert.deepEqual(await chat.protocolWarnings(), []);
      assert.deepEqual(chat.problems, []);
    });
  },
);

test(
  "JSON mode: a structured answer marked valid; invalid output and refusals shown as such",
  { timeout: TEST_TIMEOUT_MS },
  async () => {
    await scenario(async (s) => {
      const stack = await s.stack({ env: { AISTREAM_SIMULATED_TOKENS_PER_S: "200" } });
      const chat = await s.chat(stack.url);
      await chat.waitForConnection("connected");

      await chooseMode(chat, "JSON");
      const valid = await chat.ask("Tell me about rivers");
      const invalid = await chat.ask('#simulate {"invalid_json": true}\nTell me about lakes');
      await chooseMode(chat, "Chat");
      const refused = await chat.ask('#simulate {"refuse": true}\nSomething I should not ask');
      await chat.waitForStatus(valid, "done");
      await chat.waitForStatus(invalid, "error");
      await chat.waitForStatus(refused, "done");

      // Valid: ai:done carries the value; the page shows it formatted, marked valid.
      const generate = chat.frames.find((f) => f.dir === "out" && f.requestId === valid);
      assert.equal(generate.responseFormat.type, "json_schema");
      const { end } = assertGeneration(chat, valid, "ai:done");
      assert.equal(typeof end.output, "object");
      for (const key of generate.responseFormat.schema.required) {
        assert.ok(key in end.output, `output has "${key}": ${JSON.stringify(end.output)}`);
      }
      const section = chat.answer(valid).getByRole("region", { name: "Structured output" });
      assert.equal(await section.getAttribute("data-valid"), "valid");
      assert.equal(
        await section.locator(".output-mark").textContent(),
        "✓ Valid JSON · matches the schema",
      );
      assert.deepEqual(JSON.parse(await section.locator("code").textContent()), end.output);

      // Invalid: ai:error invalid_output; the text that streamed stays, marked invalid.
      const bad = assertGeneration(chat, invalid, "ai:error");
      assert.equal(bad.end.code, "invalid_output");
      const badSection = chat.answer(invalid).getByRole("region", { name: "Structured output" });
      assert.equal(await badSection.getAttribute("data-valid"), "invalid");
      assert.equal(await badSection.locator(".output-mark").textContent(), "✗ Invalid output");
      const streamed = bad.frames
        .filter((f) => f.type === "ai:token")
        .map((f) => f.chunk)
        .join("");
      assert.ok(streamed.length > 0);
      assert.equal(await badSection.locator("code").textContent(), streamed);
      assert.match(
        await chat.answer(invalid).locator(".error-message").textContent(),
        /\(invalid_output\)$/,
      );

      // Refused: the refusal shown apart, no answer text.
      const no = assertGeneration(chat, refused, "ai:done");
      assert.ok(no.kinds.includes("ai:refusal"));
      const refusal = no.frames
        .filter((f) => f.type === "ai:refusal")
        .map((f) => f.chunk)
        .join("");
      const note = chat.answer(refused).getByRole("note", { name: "Refusal" });
      assert.equal(await note.locator("p").textContent(), refusal);
      assert.equal(await chat.text(refused), "");
      assert.equal(await chat.answer(refused).locator(".status-note").textContent(), "refused");
      assert.deepEqual(await chat.protocolWarnings(), []);
      assert.deepEqual(chat.problems, []);
    });
  },
);

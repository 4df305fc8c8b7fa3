// The generated frame types are what the plugin makes of proto/ today (nobody edited them, nobody
// forgot to regenerate), and they say what the bridge's JSON mapping says.

import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join, resolve } from "node:path";
import { describe, expect, expectTypeOf, it } from "vitest";

import {
  CLIENT_FRAME_TYPES,
  ERROR_CODE_VALUES,
  SERVER_FRAME_TYPES,
  type ChatMessage,
  type DoneFrame,
  type ErrorFrame,
  type GenerateFrame,
  type TokenFrame,
  type ToolArgsFrame,
} from "../generated/frames.ts";

const root = resolve(import.meta.dirname, "../../..");
const venv = join(root, ".venv", "bin");
const buf = join(venv, "buf");

describe("generated/frames.ts", () => {
  it.skipIf(!existsSync(buf))("is up to date with proto/ and tools/protoc_gen_ts_frames.py", () => {
    const out = mkdtempSync(join(tmpdir(), "frames-"));
    try {
      const template = JSON.stringify({
        version: "v2",
        plugins: [{ local: ["python", "tools/protoc_gen_ts_frames.py"], out: "." }],
      });
      execFileSync(buf, ["generate", "proto", "--template", template, "--output", out], {
        cwd: root,
        env: { ...process.env, PATH: `${venv}${delimiter}${process.env["PATH"] ?? ""}` },
        stdio: ["ignore", "pipe", "pipe"],
      });
      const fresh = readFileSync(join(out, "frames.ts"), "utf8");
      const committed = readFileSync(join(root, "webclient/src/generated/frames.ts"), "utf8");
      expect(committed, "run scripts/generate.sh").toBe(fresh);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it("names the frames and enum values as the bridge sends them", () => {
    expect(CLIENT_FRAME_TYPES).toEqual(["ai:generate", "ai:cancel", "ai:resume", "ai:detach"]);
    expect(SERVER_FRAME_TYPES).toEqual([
      "ai:start",
      "ai:token",
      "ai:done",
      "ai:error",
      "ai:reasoning",
      "ai:tool_call",
      "ai:tool_args",
      "ai:refusal",
    ]);
    expect(ERROR_CODE_VALUES).toContain("invalid_output");
    expect(ERROR_CODE_VALUES).toContain("rate_limited");
    expect(ERROR_CODE_VALUES).not.toContain("unspecified");
  });

  it("types keys by their JSON names, optional as the mapping says", () => {
    expectTypeOf<GenerateFrame["requestId"]>().toEqualTypeOf<string>();
    expectTypeOf<GenerateFrame>().toHaveProperty("maxTokens").toEqualTypeOf<number | undefined>();
    expectTypeOf<GenerateFrame["messages"]>().toEqualTypeOf<ChatMessage[] | undefined>();
    expectTypeOf<ChatMessage["role"]>().toEqualTypeOf<
      "system" | "user" | "assistant" | "tool" | undefined
    >();
    expectTypeOf<TokenFrame["seq"]>().toEqualTypeOf<number>();
    expectTypeOf<DoneFrame["ttftMs"]>().toEqualTypeOf<number>();
    expectTypeOf<DoneFrame["usage"]>().toEqualTypeOf<
      | {
          promptTokens: number;
          completionTokens: number;
          source?: "upstream" | "estimated";
          reasoningTokens?: number;
          cachedTokens?: number;
        }
      | undefined
    >();
    expectTypeOf<DoneFrame["toolCalls"]>().toEqualTypeOf<
      { id: string; name: string; arguments: string }[]
    >();
    expectTypeOf<ToolArgsFrame["index"]>().toEqualTypeOf<number>();
    expectTypeOf<ErrorFrame["retryable"]>().toEqualTypeOf<boolean>();
  });
});

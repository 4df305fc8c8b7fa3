// The composer's modes: what a question asks for besides its text, so a person can try tools and
// structured output from the page. Plain data, and a made-up result for the demo tool.

import type { JsonValue } from "../generated/frames.ts";
import type { GenerateOptions } from "./request.ts";

/** How a question is asked: plain chat, with a demo tool, or for JSON matching a demo schema. */
export type ChatMode = "chat" | "tools" | "json";

/** The demo tool's arguments: a city and a unit. */
const WEATHER_PARAMETERS: JsonValue = {
  type: "object",
  properties: {
    city: { type: "string", description: "The city, e.g. Paris" },
    unit: { type: "string", enum: ["celsius", "fahrenheit"] },
  },
  required: ["city", "unit"],
  additionalProperties: false,
};

/** The demo schema of a structured answer: a small card about the question. */
const CARD_SCHEMA: JsonValue = {
  type: "object",
  properties: {
    title: { type: "string" },
    summary: { type: "string" },
    tags: { type: "array", items: { type: "string" } },
    confidence: { type: "number", minimum: 0, maximum: 1 },
  },
  required: ["title", "summary", "tags", "confidence"],
  additionalProperties: false,
};

/** The modes as the composer lists them, with what each sends. */
export const CHAT_MODES: readonly {
  readonly mode: ChatMode;
  readonly label: string;
  readonly hint: string;
  readonly options: GenerateOptions;
}[] = [
  { mode: "chat", label: "Chat", hint: "A plain answer", options: {} },
  {
    mode: "tools",
    label: "Tools",
    hint: "Offers the model a demo get_weather tool",
    options: {
      tools: [
        {
          name: "get_weather",
          description: "Get the current weather in a city.",
          parameters: WEATHER_PARAMETERS,
        },
      ],
      toolChoice: "auto",
    },
  },
  {
    mode: "json",
    label: "JSON",
    hint: "Asks for JSON matching a demo schema (title, summary, tags, confidence)",
    options: {
      responseFormat: {
        type: "json_schema",
        name: "answer_card",
        schema: CARD_SCHEMA,
        strict: true,
      },
    },
  },
];

/** What a question in `mode` sends besides its text. */
export function modeOptions(mode: ChatMode): GenerateOptions {
  return CHAT_MODES.find((m) => m.mode === mode)!.options;
}

/**
 * A result to offer for a tool call: made up for the demo tool (there is no real weather
 * service behind it), empty for any other tool.
 */
export function demoToolResult(name: string, args: string): string {
  if (name !== "get_weather") return "";
  let city = "the city";
  let unit = "celsius";
  try {
    const parsed: unknown = JSON.parse(args);
    if (typeof parsed === "object" && parsed !== null) {
      const { city: c, unit: u } = parsed as Record<string, unknown>;
      if (typeof c === "string" && c !== "") city = c;
      if (u === "fahrenheit") unit = u;
    }
  } catch {
    // arguments that do not parse: the defaults will do for a demo
  }
  const temperature = unit === "fahrenheit" ? 64 : 18;
  return JSON.stringify({ city, temperature, unit, conditions: "partly cloudy" });
}

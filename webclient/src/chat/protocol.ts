// The JSON frames on the wire: parsing what the bridge sends, encoding what we send. Pure.
//
// Every frame is checked against the generated types (../generated/frames.ts, from proto/), so a
// schema change that renames or adds a required key breaks the type check here. Parsing never
// throws: a frame that cannot be used at all is a `ParseFailure` naming the frame; a frame with
// one bad optional field is still delivered (a terminal event must never be lost because of its
// usage numbers) with a warning, so a newer server's enum value cannot leave an answer stuck.

import {
  ERROR_CODE_VALUES,
  FINISH_REASON_VALUES,
  SERVER_FRAME_TYPES,
  USAGE_SOURCE_VALUES,
  type ClientFrame,
  type JsonValue,
  type ServerFrame,
  type ServerFrameType,
  type ToolCall,
  type Usage,
} from "../generated/frames.ts";

/** A frame that could be read, with what was wrong with any of its fields. */
export interface ParsedFrame {
  ok: true;
  frame: ServerFrame;
  /** Plain scalar keys that were absent and read as their zero value (older servers). */
  missing: readonly string[];
  /** Fields that were present but unusable and so ignored, one sentence each. */
  warnings: readonly string[];
}

/** A frame that cannot be used at all. */
export interface ParseFailure {
  ok: false;
  /** Why, in a few words. */
  reason: string;
}

export type ParseResult = ParsedFrame | ParseFailure;

/** Longest excerpt of a raw frame quoted in a report. */
const QUOTE_CHARS = 200;

/** A raw frame as it is quoted in reports: its text, cut to a readable length. */
export function quoteFrame(data: unknown): string {
  let text: string;
  if (typeof data === "string") text = data;
  else if (data instanceof ArrayBuffer) text = `<binary frame, ${data.byteLength} bytes>`;
  else if (typeof Blob !== "undefined" && data instanceof Blob)
    text = `<binary frame, ${data.size} bytes>`;
  else text = `<${typeof data} frame>`;
  return text.length > QUOTE_CHARS ? `${text.slice(0, QUOTE_CHARS)}…` : text;
}

/** Encode one client frame as the JSON text the bridge reads. */
export function encodeClientFrame(frame: ClientFrame): string {
  return JSON.stringify(frame);
}

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isServerFrameType(value: unknown): value is ServerFrameType {
  return (SERVER_FRAME_TYPES as readonly unknown[]).includes(value);
}

/** Reads the fields of one frame object, collecting what was missing or wrong. */
class Fields {
  readonly missing: string[] = [];
  readonly warnings: string[] = [];

  constructor(private readonly obj: Json) {}

  /** A plain string (absent → ""). */
  string(key: string): string {
    const value = this.obj[key];
    if (value === undefined) {
      this.missing.push(key);
      return "";
    }
    if (typeof value === "string") return value;
    this.warnings.push(`"${key}" is not a string`);
    return "";
  }

  /** A plain non-negative integer (absent → 0). */
  count(key: string): number {
    const value = this.obj[key];
    if (value === undefined) {
      this.missing.push(key);
      return 0;
    }
    if (typeof value === "number" && Number.isInteger(value) && value >= 0) return value;
    this.warnings.push(`"${key}" is not a non-negative integer`);
    this.missing.push(key);
    return 0;
  }

  /** A plain boolean (absent → false). */
  boolean(key: string): boolean {
    const value = this.obj[key];
    if (value === undefined) {
      this.missing.push(key);
      return false;
    }
    if (typeof value === "boolean") return value;
    this.warnings.push(`"${key}" is not a boolean`);
    return false;
  }

  /**
   * An enum value; undefined when absent or "unspecified" (the zero value, which the schema
   * says is never sent, is tolerated quietly), or unknown to this client (with a warning).
   */
  enum<T extends string>(key: string, values: readonly T[]): T | undefined {
    const value = this.obj[key];
    if (value === undefined || value === "unspecified") return undefined;
    if ((values as readonly unknown[]).includes(value)) return value as T;
    this.warnings.push(`"${key}" has unknown value ${JSON.stringify(value)}`);
    return undefined;
  }

  /** The optional `usage` message. */
  usage(key: string): Usage | undefined {
    const value = this.obj[key];
    if (value === undefined) return undefined;
    if (!isObject(value)) {
      this.warnings.push(`"${key}" is not an object`);
      return undefined;
    }
    const inner = new Fields(value);
    const usage: Usage = {
      promptTokens: inner.count("promptTokens"),
      completionTokens: inner.count("completionTokens"),
    };
    const source = inner.enum("source", USAGE_SOURCE_VALUES);
    if (source !== undefined) usage.source = source;
    const reasoningTokens = inner.optionalCount("reasoningTokens");
    if (reasoningTokens !== undefined) usage.reasoningTokens = reasoningTokens;
    const cachedTokens = inner.optionalCount("cachedTokens");
    if (cachedTokens !== undefined) usage.cachedTokens = cachedTokens;
    this.warnings.push(...inner.warnings.map((w) => `${key}.${w}`));
    return usage;
  }

  /** An optional non-negative integer: undefined when absent (or unusable, with a warning). */
  optionalCount(key: string): number | undefined {
    const value = this.obj[key];
    if (value === undefined || value === null) return undefined;
    if (typeof value === "number" && Number.isInteger(value) && value >= 0) return value;
    this.warnings.push(`"${key}" is not a non-negative integer`);
    return undefined;
  }

  /** An optional string: undefined when absent or empty (or not a string, with a warning). */
  optionalString(key: string): string | undefined {
    const value = this.obj[key];
    if (value === undefined || value === null || value === "") return undefined;
    if (typeof value === "string") return value;
    this.warnings.push(`"${key}" is not a string`);
    return undefined;
  }

  /**
   * The tool calls of `ai:done`: absent means none (a repeated field). A call that is not an
   * object of three strings is left out, with a warning.
   */
  toolCalls(key: string): ToolCall[] {
    const value = this.obj[key];
    if (value === undefined) return [];
    if (!Array.isArray(value)) {
      this.warnings.push(`"${key}" is not an array`);
      return [];
    }
    const calls: ToolCall[] = [];
    value.forEach((item: unknown, i) => {
      if (
        isObject(item) &&
        typeof item["id"] === "string" &&
        typeof item["name"] === "string" &&
        typeof item["arguments"] === "string"
      ) {
        calls.push({ id: item["id"], name: item["name"], arguments: item["arguments"] });
      } else {
        this.warnings.push(`"${key}[${i}]" is not a tool call {id, name, arguments}`);
      }
    });
    return calls;
  }
}

/** Read one frame the bridge sent (a WebSocket message's `data`). Never throws. */
export function parseServerFrame(data: unknown): ParseResult {
  if (typeof data !== "string") return { ok: false, reason: "binary frame, expected JSON text" };
  let value: unknown;
  try {
    value = JSON.parse(data);
  } catch {
    return { ok: false, reason: "not valid JSON" };
  }
  if (!isObject(value)) return { ok: false, reason: "not a JSON object" };
  const type = value["type"];
  if (type === undefined) return { ok: false, reason: 'no "type"' };
  if (!isServerFrameType(type))
    return { ok: false, reason: `unknown type ${JSON.stringify(type)}` };
  const requestId = value["requestId"];
  if (typeof requestId !== "string") return { ok: false, reason: 'no string "requestId"' };
  if (requestId === "" && type !== "ai:error") return { ok: false, reason: 'empty "requestId"' };

  const fields = new Fields(value);
  let frame: ServerFrame;
  switch (type) {
    case "ai:start": {
      frame = { type, requestId, model: fields.string("model") };
      // A resumable generation's: its position (0) and the key a resume must give.
      const seq = fields.optionalCount("seq");
      if (seq !== undefined) frame.seq = seq;
      const resumeToken = fields.optionalString("resumeToken");
      if (resumeToken !== undefined) frame.resumeToken = resumeToken;
      break;
    }
    case "ai:token":
    case "ai:reasoning":
    case "ai:refusal": {
      const chunk = value["chunk"];
      if (typeof chunk !== "string") return { ok: false, reason: 'no string "chunk"' };
      frame = { type, requestId, chunk, seq: fields.count("seq"), count: fields.count("count") };
      break;
    }
    case "ai:tool_call":
      frame = {
        type,
        requestId,
        seq: fields.count("seq"),
        index: fields.count("index"),
        id: fields.string("id"),
        name: fields.string("name"),
      };
      break;
    case "ai:tool_args": {
      const chunk = value["chunk"];
      if (typeof chunk !== "string") return { ok: false, reason: 'no string "chunk"' };
      frame = {
        type,
        requestId,
        chunk,
        seq: fields.count("seq"),
        count: fields.count("count"),
        index: fields.count("index"),
      };
      break;
    }
    case "ai:done": {
      frame = {
        type,
        requestId,
        ttftMs: fields.count("ttftMs"),
        durationMs: fields.count("durationMs"),
        toolCalls: fields.toolCalls("toolCalls"),
      };
      const finishReason = fields.enum("finishReason", FINISH_REASON_VALUES);
      if (finishReason !== undefined) frame.finishReason = finishReason;
      const usage = fields.usage("usage");
      if (usage !== undefined) frame.usage = usage;
      // Any JSON value, null included: present means the answer was parsed and validated.
      if (Object.hasOwn(value, "output")) frame.output = value["output"] as JsonValue;
      const reasoningMs = fields.optionalCount("reasoningMs");
      if (reasoningMs !== undefined) frame.reasoningMs = reasoningMs;
      const seq = fields.optionalCount("seq");
      if (seq !== undefined) frame.seq = seq;
      break;
    }
    case "ai:error": {
      frame = {
        type,
        requestId,
        message: fields.string("message"),
        retryable: fields.boolean("retryable"),
        durationMs: fields.count("durationMs"),
      };
      const code = fields.enum("code", ERROR_CODE_VALUES);
      if (code !== undefined) frame.code = code;
      const usage = fields.usage("usage");
      if (usage !== undefined) frame.usage = usage;
      // A busy server's hint: when sending the same generate again may succeed.
      const retryAfterMs = fields.optionalCount("retryAfterMs");
      if (retryAfterMs !== undefined) frame.retryAfterMs = retryAfterMs;
      const seq = fields.optionalCount("seq");
      if (seq !== undefined) frame.seq = seq;
      break;
    }
  }
  return { ok: true, frame, missing: fields.missing, warnings: fields.warnings };
}

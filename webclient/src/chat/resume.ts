// What survives a page reload: the answers still streaming, kept in sessionStorage so that the
// reloaded page shows them again and resumes them (docs/protocol.md, "Resume: durable streams").
// Pure, but for `readSaved` / `writeSaved`, which only move text in and out of a storage they are
// given (and never throw: a full, disabled or corrupt storage means nothing is resumed).
//
// Kept per answer: its request id, resume token and the last position the page holds, what it
// showed so far (text, reasoning, refusal, tool calls, model), and what Retry needs (prompt,
// history, options). Not kept: timings (another page's clock) and answers that ended, were
// stopped, or cannot be resumed (no token yet).

import type { ChatMessage, ResumeFrame } from "../generated/frames.ts";
import { heldPosition } from "./positions.ts";
import {
  newRequest,
  type Draft,
  type GenerateOptions,
  type RequestRecord,
  type ToolCallState,
} from "./request.ts";

/** The sessionStorage key (versioned: a page of another version ignores what it cannot read). */
export const STORAGE_KEY = "aistream.resume.v1";

/** The part of `Storage` used (sessionStorage in the page, a Map in tests). */
export type ResumeStorage = Pick<Storage, "getItem" | "setItem" | "removeItem">;

/** One answer in flight, as kept across a reload. */
export interface SavedRequest {
  readonly requestId: string;
  readonly resumeToken: string;
  /** The last position the page holds (`afterSeq` of the resume). */
  readonly afterSeq: number;
  readonly prompt: string;
  readonly messages: readonly ChatMessage[];
  readonly options: GenerateOptions;
  readonly continues?: string;
  readonly model?: string;
  readonly text: string;
  readonly tokens: number;
  readonly reasoning: string;
  readonly reasoningTokens: number;
  readonly refusal: string;
  readonly toolCalls: readonly ToolCallState[];
}

/** What to keep of `request` across a reload: undefined unless it streams and can be resumed. */
export function toSaved(request: RequestRecord): SavedRequest | undefined {
  const { state, resumeToken } = request;
  if (resumeToken === undefined || state.status !== "streaming" || request.stopRequested) {
    return undefined;
  }
  const saved: SavedRequest = {
    requestId: state.requestId,
    resumeToken,
    afterSeq: heldPosition(request.nextSeq),
    prompt: state.prompt,
    messages: state.messages,
    options: state.options,
    text: state.text,
    tokens: state.tokens,
    reasoning: state.reasoning,
    reasoningTokens: state.reasoningTokens,
    refusal: state.refusal,
    toolCalls: state.toolCalls,
    ...(state.continues !== undefined ? { continues: state.continues } : {}),
    ...(state.model !== undefined ? { model: state.model } : {}),
  };
  return saved;
}

/**
 * A saved answer as a request again: streaming what it showed, detached and `reconnecting`
 * until the next connection resumes it from `afterSeq`.
 */
export function fromSaved(saved: SavedRequest): RequestRecord {
  const origin = saved.continues !== undefined ? { continues: saved.continues } : {};
  const fresh = newRequest(saved.requestId, saved.prompt, saved.messages, saved.options, origin);
  const state: Draft["state"] = {
    ...fresh.state,
    queued: false,
    started: true,
    reconnecting: true,
    text: saved.text,
    tokens: saved.tokens,
    reasoning: saved.reasoning,
    reasoningTokens: saved.reasoningTokens,
    thinking: saved.reasoning !== "" && saved.tokens === 0,
    refusal: saved.refusal,
    toolCalls: saved.toolCalls,
  };
  if (saved.model !== undefined) state.model = saved.model;
  return {
    ...fresh,
    state,
    nextSeq: saved.afterSeq + 1,
    resumeToken: saved.resumeToken,
    detached: true,
  };
}

/** The `ai:resume` that picks a request up from the last position it holds (none: no token). */
export function resumeFrame(request: RequestRecord): ResumeFrame | undefined {
  if (request.resumeToken === undefined) return undefined;
  return {
    type: "ai:resume",
    requestId: request.state.requestId,
    resumeToken: request.resumeToken,
    afterSeq: heldPosition(request.nextSeq),
  };
}

/** The saved answers as stored text. */
export function encodeSaved(saved: readonly SavedRequest[]): string {
  return JSON.stringify(saved);
}

/** The saved answers in stored text; whatever cannot be read is left out. Never throws. */
export function decodeSaved(text: string | null): SavedRequest[] {
  if (text === null) return [];
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return [];
  }
  if (!Array.isArray(value)) return [];
  return value.filter(isSavedRequest);
}

/** Read the saved answers from `storage` (none if it cannot be read). */
export function readSaved(storage: ResumeStorage | undefined): SavedRequest[] {
  if (storage === undefined) return [];
  try {
    return decodeSaved(storage.getItem(STORAGE_KEY));
  } catch {
    return [];
  }
}

/** Keep `saved` in `storage` (an empty list removes the key); false if the storage refused. */
export function writeSaved(storage: ResumeStorage, saved: readonly SavedRequest[]): boolean {
  try {
    if (saved.length === 0) storage.removeItem(STORAGE_KEY);
    else storage.setItem(STORAGE_KEY, encodeSaved(saved));
    return true;
  } catch {
    return false;
  }
}

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

const isString = (value: unknown): value is string => typeof value === "string";
const isCount = (value: unknown): value is number =>
  typeof value === "number" && Number.isInteger(value) && value >= 0;

function isToolCall(value: unknown): value is ToolCallState {
  return (
    isObject(value) &&
    isCount(value["index"]) &&
    isString(value["id"]) &&
    isString(value["name"]) &&
    isString(value["arguments"]) &&
    typeof value["complete"] === "boolean"
  );
}

/** Whether a stored value is a whole SavedRequest (its messages and options are only shape-checked). */
function isSavedRequest(value: unknown): value is SavedRequest {
  if (!isObject(value)) return false;
  const v = value;
  return (
    isString(v["requestId"]) &&
    v["requestId"] !== "" &&
    isString(v["resumeToken"]) &&
    v["resumeToken"] !== "" &&
    typeof v["afterSeq"] === "number" &&
    Number.isInteger(v["afterSeq"]) &&
    v["afterSeq"] >= 0 &&
    isString(v["prompt"]) &&
    Array.isArray(v["messages"]) &&
    v["messages"].every(isObject) &&
    isObject(v["options"]) &&
    (v["continues"] === undefined || isString(v["continues"])) &&
    (v["model"] === undefined || isString(v["model"])) &&
    isString(v["text"]) &&
    isCount(v["tokens"]) &&
    isString(v["reasoning"]) &&
    isCount(v["reasoningTokens"]) &&
    isString(v["refusal"]) &&
    Array.isArray(v["toolCalls"]) &&
    v["toolCalls"].every(isToolCall)
  );
}

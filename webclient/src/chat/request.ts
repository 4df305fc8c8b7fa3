// One request: its state as subscribers see it, and the steps of its lifecycle. Pure.
//
//   send ──▶ streaming ──▶ done                       (ai:done)
//                     ├──▶ error                      (ai:error, or the socket dropped: "interrupted")
//                     └──▶ cancelled                  (Stop, or ai:error "cancelled"; text kept)
//
// A resumable request (its ai:start carried a resume token) is not interrupted by a dropped
// socket: it is `detached` and stays streaming, `reconnecting`, until the next connection resumes
// it from the last position it holds (see positions.ts); a page reload restores it the same way
// (resume.ts). Stop while detached shows it stopped at once; the cancel goes out on reconnect.
// A resume the server cannot serve for now (`unavailable`, unavailable.ts) detaches it again,
// keeping all it holds, to be resumed once more after the server's hint.
//
// A request is `queued` (streaming, not sent yet) while it waits for the connection, or, with
// `retryInS`, for the hint of a busy server that refused the request it retries (see shed.ts).
//
// While streaming, its parts build up side by side: reasoning (shown apart, never part of the
// answer), answer text, a refusal, tool calls by index (arguments filling in until ai:done
// lists them complete); with a responseFormat, ai:done's parsed output (or an invalid_output
// error) says whether the answer text is the JSON that was asked for.
//
// The steps the page takes are here (`newRequest`, `sent`, `waiting`, `stopped`, `interrupted`,
// `resumed`, `resumeRefused`);
// the server's frames are folded in by `applyFrame` (reducer.ts). Every step returns a new object,
// never changing the one it was given; a step that changes nothing returns it as is.

import type {
  ChatMessage,
  ErrorCode,
  FinishReason,
  JsonValue,
  ResponseFormat,
  Tool,
  Usage,
} from "../generated/frames.ts";
import type { ToolResult, Turn } from "./history.ts";

/** How the model may use the tools: as `toolChoice` on the wire. */
export type ToolChoice = "auto" | "none" | "required" | { name: string };

/** What a generate asks for beyond the prompt and history (sent again as-is on Retry). */
export interface GenerateOptions {
  /** Tools the model may call. */
  readonly tools?: readonly Tool[];
  readonly toolChoice?: ToolChoice;
  /** Ask for JSON: the answer text is then structured output, checked by the server at the end. */
  readonly responseFormat?: ResponseFormat;
}

/** One tool call of an answer, as it streams in (`ai:tool_call`, then `ai:tool_args`). */
export interface ToolCallState {
  /** Its place among the answer's calls, from 0. */
  readonly index: number;
  readonly id: string;
  /** The tool's name. */
  readonly name: string;
  /** The arguments JSON text so far: incomplete (it may end anywhere) until `complete`. */
  readonly arguments: string;
  /** `ai:done` listed it: `arguments` is the whole text, and it parses. */
  readonly complete: boolean;
}

/** Whether the answer of a request with a responseFormat was the JSON asked for (at its end). */
export type StructuredOutput =
  /** `ai:done` carried it parsed and validated against the schema. */
  | { readonly valid: true; readonly value: JsonValue }
  /** It ended with an `invalid_output` error: not JSON, or not what the schema says. */
  | { readonly valid: false };

/** Where one request stands. */
export type RequestStatus = "streaming" | "done" | "error" | "cancelled";

/** Why a request failed: a code from the server, or `interrupted` when the connection dropped. */
export type RequestErrorCode = ErrorCode | "interrupted";

export interface RequestError {
  code: RequestErrorCode;
  /** Safe to show a person. */
  message: string;
  /** Whether sending the same request again may succeed (the UI offers Retry). */
  retryable: boolean;
  /** The server's hint: ms after which sending it again may succeed (a busy server shed it). */
  retryAfterMs?: number;
}

/** Client-side times (ms on the store's clock) and the server's own measurements. */
export interface RequestTimings {
  /** When the generate frame went out; absent while it waits for the connection. */
  sentAt?: number;
  /** When the first answer part (text, refusal or tool call) arrived here. */
  firstTokenAt?: number;
  /** When the first reasoning part arrived here. */
  firstReasoningAt?: number;
  /** When the request ended (terminal frame, Stop, or connection lost). */
  endedAt?: number;
  /** The server's time to the first answer part, from `ai:done`. */
  ttftMs?: number;
  /** The server's time to the first reasoning part, from `ai:done`. */
  reasoningMs?: number;
  /** The server's time from accepting the request to its end, from `ai:done` / `ai:error`. */
  durationMs?: number;
}

/** Everything about one request id. Immutable: a change makes a new object. */
export interface RequestState {
  readonly requestId: string;
  readonly prompt: string;
  /** The history sent with the prompt (sent again as-is on Retry). */
  readonly messages: readonly ChatMessage[];
  /** Tools and structured output asked for (sent again as-is on Retry). */
  readonly options: GenerateOptions;
  readonly status: RequestStatus;
  /** Not sent yet: waiting for the connection to open, or (with `retryInS`) for a busy server. */
  readonly queued: boolean;
  /**
   * A busy server refused the request this one retries: this one goes out by itself in this
   * many whole seconds (counting down, once a second). Absent otherwise, and once it is sent.
   */
  readonly retryInS?: number;
  /** `ai:start` arrived: the server accepted the request. */
  readonly started: boolean;
  /**
   * Its connection dropped while it streamed; it is picked up again (`ai:resume`) once the page
   * reconnects. The UI says "reconnecting…".
   */
  readonly reconnecting: boolean;
  /** The answer received so far. */
  readonly text: string;
  /** Answer tokens received: text, refusal and tool-call parts (a chunk may hold several). */
  readonly tokens: number;
  /** The model's reasoning received so far: shown apart, never part of the answer. */
  readonly reasoning: string;
  /** Reasoning tokens received. */
  readonly reasoningTokens: number;
  /** Reasoning has arrived and no answer part yet: the model is still thinking. */
  readonly thinking: boolean;
  /** The model's refusal received so far ("" when it did not refuse). */
  readonly refusal: string;
  /** The tool calls of the answer, in index order. */
  readonly toolCalls: readonly ToolCallState[];
  /** With a responseFormat, once known at the end: whether the answer is the JSON asked for. */
  readonly output?: StructuredOutput;
  /** The results the user sent back for `toolCalls` (the request continuing from them follows). */
  readonly toolResults?: readonly ToolResult[];
  /** This request carries the tool results of that request's calls (an agent loop's next step). */
  readonly continues?: string;
  /** The model serving it, from `ai:start`. */
  readonly model?: string;
  readonly finishReason?: FinishReason;
  readonly usage?: Usage;
  readonly error?: RequestError;
  readonly timings: Readonly<RequestTimings>;
  /** The request id this one retries. */
  readonly retryOf?: string;
}

/** A request as the store keeps it: what subscribers see, and what only the store needs. */
export interface RequestRecord {
  /** What subscribers see (the store publishes this very object). */
  readonly state: RequestState;
  /** The seq the next part (of any kind) should carry. */
  readonly nextSeq: number;
  /** Sent on the current socket and no terminal frame yet: frames for it are expected. */
  readonly awaiting: boolean;
  /** The user pressed Stop while it was awaiting: tokens still in flight are dropped quietly. */
  readonly stopRequested: boolean;
  /** How many automatic resends of the user's request this is (0: the user's own Send or Retry). */
  readonly autoRetries: number;
  /** From its `ai:start`: the key to resume it with. Absent: not resumable (it is interrupted). */
  readonly resumeToken?: string;
  /**
   * Its socket dropped (or the page reloaded), or a resume of it was `unavailable`: the next
   * connection (or, for the latter, the store after the server's hint) sends `ai:resume` for it.
   */
  readonly detached: boolean;
  /** The page resumed it: its frames come from an `ai:resume`, not from its generate. */
  readonly viaResume: boolean;
  /** Resumes of it answered `unavailable` in a row (any other frame starts over at 0). */
  readonly resumeRetries: number;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** A copy of a record that a step may change before returning it. */
export interface Draft extends Mutable<RequestRecord> {
  state: Mutable<RequestState> & { timings: RequestTimings };
}

/** Copy `request` to make the next version of it (the one given is left as it was). */
export function draft(request: RequestRecord): Draft {
  return { ...request, state: { ...request.state, timings: { ...request.state.timings } } };
}

/** What the user sees for a failure whose frame carried no message. */
export const DEFAULT_MESSAGES: Readonly<Record<RequestErrorCode, string>> = {
  cancelled: "The answer was stopped.",
  timeout: "The model took too long to answer.",
  upstream_error: "The model failed to answer.",
  rate_limited: "The model is rate limited right now.",
  invalid_request: "The request was not valid.",
  too_many_requests: "Too many answers are being generated at once.",
  unavailable: "The service is unavailable right now.",
  internal: "Something went wrong on the server.",
  slow_consumer: "The answer came faster than this page could take it.",
  unauthenticated: "The server refused the credentials.",
  invalid_output: "The model's output was not what was asked for.",
  not_found: "That answer can no longer be picked up.",
  interrupted: "The connection was lost before the answer finished.",
};

/** How a request came to be, beyond its prompt and history. */
export interface Origin {
  /** The request it retries. */
  retryOf?: string;
  /** The request whose tool results it carries. */
  continues?: string;
  /** It is the store's own resend number n of a request a busy server refused (see shed.ts). */
  autoRetry?: number;
}

/** A question just asked: streaming, queued until it is sent. */
export function newRequest(
  requestId: string,
  prompt: string,
  messages: readonly ChatMessage[],
  options: GenerateOptions = {},
  origin: Origin = {},
): RequestRecord {
  const state: Draft["state"] = {
    requestId,
    prompt,
    messages,
    options,
    status: "streaming",
    queued: true,
    started: false,
    reconnecting: false,
    text: "",
    tokens: 0,
    reasoning: "",
    reasoningTokens: 0,
    thinking: false,
    refusal: "",
    toolCalls: [],
    timings: {},
  };
  if (origin.retryOf !== undefined) state.retryOf = origin.retryOf;
  if (origin.continues !== undefined) state.continues = origin.continues;
  return {
    state,
    nextSeq: 0,
    awaiting: false,
    stopRequested: false,
    autoRetries: origin.autoRetry ?? 0,
    detached: false,
    viaResume: false,
    resumeRetries: 0,
  };
}

/** Its generate frame went out on the open socket at `now`: frames for it are expected. */
export function sent(request: RequestRecord, now: number): RequestRecord {
  const next = draft(request);
  next.state.queued = false;
  delete next.state.retryInS;
  next.awaiting = true;
  next.state.timings.sentAt = now;
  return next;
}

/**
 * A queued request will go out by itself in `inS` whole seconds (a busy server's hint), or,
 * with undefined, waits for nothing but the connection now. Only a queued request waits.
 */
export function waiting(request: RequestRecord, inS: number | undefined): RequestRecord {
  if (!request.state.queued || request.state.retryInS === inS) return request;
  const next = draft(request);
  if (inS === undefined) delete next.state.retryInS;
  else next.state.retryInS = inS;
  return next;
}

/**
 * The user pressed Stop: cancelled at once, keeping the text received so far. If it had been
 * sent, tokens still in flight are dropped from now on (the caller sends `ai:cancel`, at once or,
 * for a detached request, once it has resumed it); if it was still queued it is no longer. Only
 * a streaming request can be stopped.
 */
export function stopped(request: RequestRecord, now: number): RequestRecord {
  if (request.state.status !== "streaming") return request;
  const next = draft(request);
  next.state.status = "cancelled";
  next.state.thinking = false;
  next.state.reconnecting = false;
  next.state.timings.endedAt = now;
  if (next.state.queued) {
    next.state.queued = false;
    delete next.state.retryInS;
  } else if (next.awaiting || next.detached) {
    next.stopRequested = true;
  }
  return next;
}

/** The request has had its last frame from the server (or will get none). Changes `next`. */
export function end(next: Draft, now: number): void {
  next.awaiting = false;
  next.detached = false;
  next.state.reconnecting = false;
  next.state.thinking = false;
  next.state.timings.endedAt ??= now;
}

/**
 * The socket it was sent on closed before its last frame. A resumable request is detached: it
 * waits, `reconnecting`, for the next connection to resume it. Any other ends with an
 * `interrupted` error, which Retry may mend. A request that was not awaiting a frame is returned
 * as is.
 */
export function interrupted(request: RequestRecord, now: number): RequestRecord {
  if (!request.awaiting) return request;
  const next = draft(request);
  if (next.resumeToken !== undefined) {
    next.awaiting = false;
    next.detached = true;
    next.state.reconnecting = next.state.status === "streaming";
    return next;
  }
  end(next, now);
  if (next.stopRequested) return next; // already shown as stopped
  next.state.status = "error";
  next.state.error = {
    code: "interrupted",
    message: DEFAULT_MESSAGES.interrupted,
    retryable: true,
  };
  return next;
}

/**
 * A detached request was resumed on the open socket (the caller sends `ai:resume`, and `ai:cancel`
 * if it was stopped meanwhile): frames for it are expected again.
 */
export function resumed(request: RequestRecord): RequestRecord {
  if (!request.detached) return request;
  const next = draft(request);
  next.detached = false;
  next.awaiting = true;
  next.viaResume = true;
  next.state.reconnecting = false;
  return next;
}

/**
 * A resume of it was answered `unavailable` (see unavailable.ts): detached again, still streaming
 * and `reconnecting`, keeping all it holds, for the store to resume it once more from there.
 */
export function resumeRefused(request: RequestRecord): RequestRecord {
  const next = draft(request);
  next.awaiting = false;
  next.detached = true;
  next.resumeRetries += 1;
  next.state.reconnecting = true;
  return next;
}

/**
 * The user answered the tool calls of a finished request: it keeps the results, for the history
 * of the request that continues from them. Undefined when they cannot be taken (see `canAnswer`).
 */
export function answered(
  request: RequestRecord,
  results: readonly ToolResult[],
): RequestRecord | undefined {
  if (!canAnswer(request.state) || results.length === 0) return undefined;
  const ids = new Set(request.state.toolCalls.map((call) => call.id));
  if (!results.every((result) => ids.has(result.toolCallId))) return undefined;
  const next = draft(request);
  next.state.toolResults = results;
  return next;
}

/** Whether the user may send results for a request's tool calls: done, all complete, none sent. */
export function canAnswer(state: RequestState): boolean {
  return (
    state.status === "done" &&
    state.toolCalls.length > 0 &&
    state.toolCalls.every((call) => call.complete && call.id !== "") &&
    state.toolResults === undefined
  );
}

/** What a request contributes to the history of a later question (see history.ts). */
export function historyTurn(state: RequestState): Turn {
  // A refusal is what the model said instead of an answer: the next turn should know of it.
  const answer = state.text !== "" ? state.text : state.refusal;
  const complete =
    state.status === "done" || (state.status === "cancelled" && answer.trim() !== "");
  const turn: Turn = { prompt: state.prompt, answer, complete };
  const calls = state.toolCalls.filter((call) => call.complete);
  if (calls.length > 0) {
    turn.toolCalls = calls.map(({ id, name, arguments: args }) => ({ id, name, arguments: args }));
  }
  if (state.toolResults !== undefined) turn.toolResults = state.toolResults;
  return turn;
}

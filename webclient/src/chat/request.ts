// One request: its state as subscribers see it, and the steps of its lifecycle. Pure.
//
//   send ──▶ streaming ──▶ done                       (ai:done)
//                     ├──▶ error                      (ai:error, or the socket dropped: "interrupted")
//                     └──▶ cancelled                  (Stop, or ai:error "cancelled"; text kept)
//
// The steps the page takes are here (`newRequest`, `sent`, `stopped`, `interrupted`); the server's
// frames are folded in by `applyFrame` (reducer.ts). Every step is given the time and returns a
// new object, never changing the one it was given; a step that changes nothing returns it as is.

import type { ChatMessage, ErrorCode, FinishReason, Usage } from "../generated/frames.ts";
import type { Turn } from "./history.ts";

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
}

/** Client-side times (ms on the store's clock) and the server's own measurements. */
export interface RequestTimings {
  /** When the generate frame went out; absent while it waits for the connection. */
  sentAt?: number;
  /** When the first token arrived here. */
  firstTokenAt?: number;
  /** When the request ended (terminal frame, Stop, or connection lost). */
  endedAt?: number;
  /** The server's time to first token, from `ai:done`. */
  ttftMs?: number;
  /** The server's time from accepting the request to its end, from `ai:done` / `ai:error`. */
  durationMs?: number;
}

/** Everything about one request id. Immutable: a change makes a new object. */
export interface RequestState {
  readonly requestId: string;
  readonly prompt: string;
  /** The history sent with the prompt (sent again as-is on Retry). */
  readonly messages: readonly ChatMessage[];
  readonly status: RequestStatus;
  /** Still waiting for the connection to open before it can be sent. */
  readonly queued: boolean;
  /** `ai:start` arrived: the server accepted the request. */
  readonly started: boolean;
  /** The answer received so far. */
  readonly text: string;
  /** Tokens received (a chunk may hold several). */
  readonly tokens: number;
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
  /** The seq the next token should carry. */
  readonly nextSeq: number;
  /** Sent on the current socket and no terminal frame yet: frames for it are expected. */
  readonly awaiting: boolean;
  /** The user pressed Stop while it was awaiting: tokens still in flight are dropped quietly. */
  readonly stopRequested: boolean;
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
  interrupted: "The connection was lost before the answer finished.",
};

/** A question just asked: streaming, queued until it is sent. `retryOf` names the one it retries. */
export function newRequest(
  requestId: string,
  prompt: string,
  messages: readonly ChatMessage[],
  retryOf?: string,
): RequestRecord {
  const state: Draft["state"] = {
    requestId,
    prompt,
    messages,
    status: "streaming",
    queued: true,
    started: false,
    text: "",
    tokens: 0,
    timings: {},
  };
  if (retryOf !== undefined) state.retryOf = retryOf;
  return { state, nextSeq: 0, awaiting: false, stopRequested: false };
}

/** Its generate frame went out on the open socket at `now`: frames for it are expected. */
export function sent(request: RequestRecord, now: number): RequestRecord {
  const next = draft(request);
  next.state.queued = false;
  next.awaiting = true;
  next.state.timings.sentAt = now;
  return next;
}

/**
 * The user pressed Stop: cancelled at once, keeping the text received so far. If it had been
 * sent, tokens still in flight are dropped from now on (the caller sends `ai:cancel`); if it was
 * still queued it is no longer. Only a streaming request can be stopped.
 */
export function stopped(request: RequestRecord, now: number): RequestRecord {
  if (request.state.status !== "streaming") return request;
  const next = draft(request);
  next.state.status = "cancelled";
  next.state.timings.endedAt = now;
  if (next.state.queued) next.state.queued = false;
  else if (next.awaiting) next.stopRequested = true;
  return next;
}

/** The request has had its last frame from the server (or will get none). Changes `next`. */
export function end(next: Draft, now: number): void {
  next.awaiting = false;
  next.state.timings.endedAt ??= now;
}

/**
 * The socket it was sent on closed before its last frame: an `interrupted` error, which Retry
 * may mend. A request that was not awaiting a frame is returned as is.
 */
export function interrupted(request: RequestRecord, now: number): RequestRecord {
  if (!request.awaiting) return request;
  const next = draft(request);
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

/** What a request contributes to the history of a later question (see history.ts). */
export function historyTurn(state: RequestState): Turn {
  const complete =
    state.status === "done" || (state.status === "cancelled" && state.text.trim() !== "");
  return { prompt: state.prompt, answer: state.text, complete };
}

// Load shedding, seen from the page: a server at capacity refuses a new generate at once
// (`ai:error` `too_many_requests` with `retryAfterMs`, before any `ai:start`). The store then
// sends the same generate again by itself after the hint, under a new request id that takes the
// refused one's place, a few times at most. This module decides whether and when. Pure.
//
// A `too_many_requests` without the hint (a per-connection or per-client limit, the frame rate)
// is not retried by itself, and nothing is once the request has started: those show as errors.

import type { RequestState } from "./request.ts";

export interface ShedRetryOptions {
  /** Automatic resends per request the user made (Send, Retry); then the error shows, with Retry. */
  maxRetries: number;
  /** Up to this fraction of the hint is added at random, so pages shed together come back apart. */
  jitter: number;
  /** The least range of that random addition, in ms (a hint of 0 is spread too). */
  minJitterMs: number;
  /** A longer hint (ms) is not waited out by itself: the error shows, with Retry. */
  maxHintMs: number;
}

export const DEFAULT_SHED_RETRY: ShedRetryOptions = {
  maxRetries: 3,
  jitter: 0.2,
  minJitterMs: 100,
  maxHintMs: 30_000,
};

/**
 * How long (ms) to wait before sending a request again by itself, or undefined when it is not
 * to be: it did not end as a shed refusal (`too_many_requests` with a hint, before `ai:start`),
 * the hint is too long, or it already is automatic resend number `maxRetries`.
 * `retries`: how many automatic resends of the user's request it is; `random` returns [0, 1).
 */
export function shedRetryDelay(
  state: RequestState,
  retries: number,
  options: ShedRetryOptions = DEFAULT_SHED_RETRY,
  random: () => number = Math.random,
): number | undefined {
  const { status, error, started } = state;
  const hint = error?.retryAfterMs;
  if (status !== "error" || error?.code !== "too_many_requests" || hint === undefined) {
    return undefined;
  }
  if (started || retries >= options.maxRetries || hint > options.maxHintMs) return undefined;
  return hint + Math.round(random() * Math.max(hint * options.jitter, options.minJitterMs));
}

/** The whole seconds shown for `ms` still to wait: a part of a second counts as one. */
export function secondsLeft(ms: number): number {
  return Math.max(0, Math.ceil(ms / 1000));
}

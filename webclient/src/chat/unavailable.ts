// A resume the server cannot serve for now. With Redis-backed logs a bridge answers `ai:resume`
// with `ai:error` `unavailable` (retryable, with `retryAfterMs`) when the shared log cannot be
// reached — at once, or after some resumed events when it loses the log mid-follow — or when
// the generator that ran the answer is gone. The answer is not over: the store keeps what it
// holds, shows it reconnecting again and resumes it once more, from the same position, after the
// hint (plus a little jitter), a few times in a row at most. This module decides whether and
// when. Pure.
//
// Only an answer the page resumed is resumed again: one that gets `unavailable` while it follows
// its own generate ends as ever (Retry asks again). So does an `unavailable` with a position (the
// generation's own end, in its log: a resume would only replay it), one after Stop, and one whose
// hint is too long to wait out by itself.

import type { ErrorFrame } from "../generated/frames.ts";
import type { RequestRecord } from "./request.ts";

export interface ResumeRetryOptions {
  /** Resumes again in a row (any other frame starts the count over); then the error shows. */
  maxRetries: number;
  /** The wait when the server gave no hint, in ms. */
  defaultHintMs: number;
  /** Up to this fraction of the hint is added at random, so pages cut off together come apart. */
  jitter: number;
  /** The least range of that random addition, in ms. */
  minJitterMs: number;
  /** A longer hint (ms) is not waited out by itself: the error shows, with Retry. */
  maxHintMs: number;
}

export const RESUME_RETRY: ResumeRetryOptions = {
  maxRetries: 5,
  defaultHintMs: 1000,
  jitter: 0.2,
  minJitterMs: 100,
  maxHintMs: 30_000,
};

/** Whether `frame`, for `request` (awaiting it), is a resume to be sent again, not its end. */
export function resumesAgain(
  request: RequestRecord,
  frame: ErrorFrame,
  options: ResumeRetryOptions = RESUME_RETRY,
): boolean {
  return (
    request.viaResume &&
    !request.stopRequested &&
    frame.code === "unavailable" &&
    frame.retryable &&
    frame.seq === undefined &&
    (frame.retryAfterMs ?? options.defaultHintMs) <= options.maxHintMs &&
    request.resumeRetries < options.maxRetries
  );
}

/** How long (ms) to wait before resuming again after `frame`; `random` returns [0, 1). */
export function resumeRetryDelay(
  frame: ErrorFrame,
  options: ResumeRetryOptions = RESUME_RETRY,
  random: () => number = Math.random,
): number {
  const hint = frame.retryAfterMs ?? options.defaultHintMs;
  return hint + Math.round(random() * Math.max(hint * options.jitter, options.minJitterMs));
}

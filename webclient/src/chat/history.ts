// The conversation history sent with a follow-up question. Pure.

import type { ChatMessage } from "../generated/frames.ts";

/** What a previous turn contributes: the question and, if it counts, its answer. */
export interface Turn {
  prompt: string;
  answer: string;
  /** Whether the answer belongs in the history (finished, or stopped with text the user saw). */
  complete: boolean;
}

export interface HistoryLimits {
  /** Most messages sent (two per turn); the server rejects more than 200. */
  maxMessages: number;
  /** Most characters of all contents together; the server rejects more than 400 000 with the prompt. */
  maxChars: number;
}

export const DEFAULT_HISTORY_LIMITS: HistoryLimits = { maxMessages: 100, maxChars: 200_000 };

/**
 * The `messages` of a Generate: user + assistant for each complete previous turn, oldest first,
 * dropping the oldest turns until the limits hold (a long chat keeps working, with less context).
 */
export function buildHistory(
  turns: readonly Turn[],
  limits: HistoryLimits = DEFAULT_HISTORY_LIMITS,
): ChatMessage[] {
  const complete = turns.filter((turn) => turn.complete);
  const size = (turn: Turn) => turn.prompt.length + turn.answer.length;
  let chars = complete.reduce((n, turn) => n + size(turn), 0);
  let start = 0;
  const tooBig = () =>
    (complete.length - start) * 2 > limits.maxMessages || chars > limits.maxChars;
  while (start < complete.length && tooBig()) {
    chars -= size(complete[start]!);
    start += 1;
  }
  return complete.slice(start).flatMap((turn): ChatMessage[] => [
    { role: "user", content: turn.prompt },
    { role: "assistant", content: turn.answer },
  ]);
}

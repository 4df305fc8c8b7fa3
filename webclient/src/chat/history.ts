// The conversation history sent with a follow-up question. Pure.
//
// A plain turn is a user message and the assistant's answer. A turn whose answer called tools
// and got their results back (an agent loop's step) is the user message, the assistant message
// carrying its tool calls, and one "tool" message per result; the request that continues from
// those results has no prompt of its own, so it adds only its answer. A tool call without a
// result is left out: an upstream rejects a history with a call nobody answered.

import type { ChatMessage, ToolCall } from "../generated/frames.ts";

/** The result of one tool call, as the user (or the page) sent it back. */
export interface ToolResult {
  /** The id of the call it answers. */
  readonly toolCallId: string;
  /** What the tool returned (usually JSON text). */
  readonly content: string;
}

/** What a previous turn contributes: the question and, if it counts, its answer. */
export interface Turn {
  /** The question; "" for a turn that continues from tool results (no user message). */
  prompt: string;
  answer: string;
  /** Whether the answer belongs in the history (finished, or stopped with text the user saw). */
  complete: boolean;
  /** The tool calls the answer made, complete. */
  toolCalls?: readonly ToolCall[];
  /** The results sent back for them. */
  toolResults?: readonly ToolResult[];
}

export interface HistoryLimits {
  /** Most messages sent; the server rejects more than 200. */
  maxMessages: number;
  /** Most characters of all contents together; the server rejects more than 400 000 with the prompt. */
  maxChars: number;
}

export const DEFAULT_HISTORY_LIMITS: HistoryLimits = { maxMessages: 100, maxChars: 200_000 };

/** The messages one complete turn contributes, oldest first. */
export function turnMessages(turn: Turn): ChatMessage[] {
  const messages: ChatMessage[] = [];
  if (turn.prompt !== "") messages.push({ role: "user", content: turn.prompt });
  const results = new Map((turn.toolResults ?? []).map((r) => [r.toolCallId, r.content]));
  const calls = (turn.toolCalls ?? []).filter((call) => results.has(call.id));
  if (calls.length > 0) {
    messages.push({
      role: "assistant",
      content: turn.answer,
      toolCalls: calls.map(({ id, name, arguments: args }) => ({ id, name, arguments: args })),
    });
    for (const call of calls) {
      messages.push({ role: "tool", toolCallId: call.id, content: results.get(call.id)! });
    }
  } else if (turn.answer !== "" || (turn.toolCalls ?? []).length === 0) {
    // (an answer that only called tools, none answered, says nothing worth sending)
    messages.push({ role: "assistant", content: turn.answer });
  }
  return messages;
}

/** The characters a message adds to the request: its content and its calls' arguments. */
function chars(message: ChatMessage): number {
  let n = message.content?.length ?? 0;
  for (const call of message.toolCalls ?? []) n += call.arguments.length + call.name.length;
  return n;
}

/**
 * The `messages` of a Generate: the messages of each complete previous turn, oldest first,
 * dropping the oldest turns until the limits hold (a long chat keeps working, with less context).
 */
export function buildHistory(
  turns: readonly Turn[],
  limits: HistoryLimits = DEFAULT_HISTORY_LIMITS,
): ChatMessage[] {
  const groups = turns.filter((turn) => turn.complete).map(turnMessages);
  const size = (group: ChatMessage[]) => group.reduce((n, message) => n + chars(message), 0);
  let total = groups.reduce((n, group) => n + size(group), 0);
  let count = groups.reduce((n, group) => n + group.length, 0);
  let start = 0;
  while (start < groups.length && (count > limits.maxMessages || total > limits.maxChars)) {
    total -= size(groups[start]!);
    count -= groups[start]!.length;
    start += 1;
  }
  return groups.slice(start).flat();
}

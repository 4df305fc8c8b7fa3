// The reducer: folds one server frame into the request it names. Pure: no socket, no timers, no
// publishing; the store looks the request up, calls `applyFrame` and reports what it returns.
//
// The parts of a request (ai:token, ai:reasoning, ai:refusal, ai:tool_call, ai:tool_args) share
// one seq numbering, from 0 with no gap: a part covers seq .. seq + count - 1 (an ai:tool_call
// covers one number), so the next part of any kind carries seq + count. In a resumable
// generation ai:start is position 0 (with the resume token), the parts follow from 1 and the
// terminal event takes the next position (positions.ts); an event the page holds already — one
// that ends at or below the last position applied — is dropped, never applied twice.
//
// An `unavailable` answer to a resume the page sent (unavailable.ts) does not end the request:
// it is detached again (`resumeRefused`), all it holds kept, for the store to resume it once more.
// Any other frame for it starts that count over.
//
// Anything unexpected (an unknown id, a frame before the request was sent or after it ended, a
// second ai:start, a part before ai:start, a seq gap or duplicate, tool arguments for a call that
// never started, a field the parser had to ignore) comes back as a problem, one sentence naming
// the frame's type and request id; it never throws. A frame that could not be read at all never
// gets here (see protocol.ts).

import type { DoneFrame, ServerFrame, ToolCall } from "../generated/frames.ts";
import { lastPosition, placement } from "./positions.ts";
import type { ParsedFrame } from "./protocol.ts";
import {
  DEFAULT_MESSAGES,
  draft,
  end,
  resumeRefused,
  type Draft,
  type RequestRecord,
  type ToolCallState,
} from "./request.ts";
import { resumesAgain } from "./unavailable.ts";

/** What one frame did. */
export interface Applied {
  /** The request after the frame: the one given, unchanged, when the frame changed nothing. */
  readonly request: RequestRecord | undefined;
  /** What was wrong with the frame, oldest first; the frame itself still counts where it can. */
  readonly problems: readonly string[];
}

/** The frames that are parts of the answer (or of the reasoning before it). */
type PartFrame = Extract<
  ServerFrame,
  { type: "ai:token" | "ai:reasoning" | "ai:refusal" | "ai:tool_call" | "ai:tool_args" }
>;

/** How a problem names a part that came too early. */
const PART_NOUNS: Readonly<Record<PartFrame["type"], string>> = {
  "ai:token": "a token",
  "ai:reasoning": "reasoning",
  "ai:refusal": "a refusal",
  "ai:tool_call": "a tool call",
  "ai:tool_args": "tool arguments",
};

/**
 * Apply one readable frame to its request (`undefined` when no request has the frame's id).
 * `now` is the time it arrived, on the store's clock.
 */
export function applyFrame(
  request: RequestRecord | undefined,
  parsed: ParsedFrame,
  now: number,
): Applied {
  const { frame } = parsed;
  const name = `${frame.type} for "${frame.requestId}"`;
  const problems = parsed.warnings.map((warning) => `${name}: ${warning}, ignored`);
  const unchanged = (problem?: string): Applied => {
    if (problem !== undefined) problems.push(problem);
    return { request, problems };
  };
  if (frame.type === "ai:error" && frame.requestId === "") {
    return unchanged(`ai:error without a request id: ${frame.code ?? "?"}: ${frame.message}`);
  }
  if (request === undefined) return unchanged(`${name}: unknown request id`);
  if (!request.awaiting) {
    const when = request.state.queued ? "before it was sent" : "after the request ended";
    return unchanged(`${name} ${when}`);
  }
  if (frame.type !== "ai:error" && request.resumeRetries > 0) {
    request = { ...request, resumeRetries: 0 }; // the resume got through
  }
  switch (frame.type) {
    case "ai:start": {
      if (request.state.started) return unchanged(`${name}: a second ai:start`);
      const next = draft(request);
      next.state.started = true;
      if (frame.model !== "") next.state.model = frame.model;
      if (frame.seq !== undefined) next.nextSeq = frame.seq + 1;
      if (frame.resumeToken !== undefined) next.resumeToken = frame.resumeToken;
      return { request: next, problems };
    }
    case "ai:token":
    case "ai:reasoning":
    case "ai:refusal":
    case "ai:tool_call":
    case "ai:tool_args": {
      if (request.stopRequested) return unchanged(); // was in flight when the user pressed Stop
      const next = draft(request);
      if (!next.state.started) {
        problems.push(`${name}: ${PART_NOUNS[frame.type]} before ai:start`);
        next.state.started = true;
      }
      const count = frame.type === "ai:tool_call" || frame.count === 0 ? 1 : frame.count;
      if (!parsed.missing.includes("seq")) {
        const last = lastPosition(frame.seq, count);
        const where = placement(next.nextSeq, frame.seq, last);
        if (where === "held") {
          problems.push(`${name}: seq ${frame.seq}, expected ${next.nextSeq} (duplicate, dropped)`);
          return { request: next, problems };
        }
        if (where !== "next") {
          problems.push(`${name}: seq ${frame.seq}, expected ${next.nextSeq} (${where})`);
        }
        next.nextSeq = last + 1;
      } else {
        next.nextSeq += count;
      }
      applyPart(next, frame, count, now, name, problems);
      return { request: next, problems };
    }
    case "ai:done": {
      if (frame.seq !== undefined && placement(request.nextSeq, frame.seq, frame.seq) === "held") {
        return unchanged(
          `${name}: seq ${frame.seq}, expected ${request.nextSeq} (duplicate, dropped)`,
        );
      }
      const next = draft(request);
      const { state } = next;
      end(next, now);
      if (frame.usage !== undefined) state.usage = frame.usage;
      if (!parsed.missing.includes("durationMs")) state.timings.durationMs = frame.durationMs;
      if (frame.reasoningMs !== undefined) state.timings.reasoningMs = frame.reasoningMs;
      // Finished as the user stopped it: stays stopped.
      if (next.stopRequested) return { request: next, problems };
      state.status = "done";
      if (frame.finishReason !== undefined) state.finishReason = frame.finishReason;
      if (!parsed.missing.includes("ttftMs") && state.tokens > 0) {
        state.timings.ttftMs = frame.ttftMs;
      }
      if (frame.toolCalls.length > 0 || state.toolCalls.length > 0) {
        state.toolCalls = completeToolCalls(state.toolCalls, frame.toolCalls, name, problems);
      }
      if (Object.hasOwn(frame, "output")) state.output = { valid: true, value: outputOf(frame) };
      return { request: next, problems };
    }
    case "ai:error": {
      if (frame.seq !== undefined && placement(request.nextSeq, frame.seq, frame.seq) === "held") {
        return unchanged(
          `${name}: seq ${frame.seq}, expected ${request.nextSeq} (duplicate, dropped)`,
        );
      }
      // A resume the server cannot serve for now: not the end, it is resumed again.
      if (resumesAgain(request, frame)) return { request: resumeRefused(request), problems };
      const next = draft(request);
      const { state } = next;
      end(next, now);
      if (frame.usage !== undefined) state.usage = frame.usage;
      if (frame.durationMs > 0) state.timings.durationMs = frame.durationMs;
      if (next.stopRequested || frame.code === "cancelled") {
        state.status = "cancelled"; // stopped, not failed: the text stays
        return { request: next, problems };
      }
      const code = frame.code ?? "internal";
      state.status = "error";
      state.error = {
        code,
        message: frame.message !== "" ? frame.message : DEFAULT_MESSAGES[code],
        // A resume that found nothing cannot be resumed again, but the question can be asked again.
        retryable: frame.retryable || code === "not_found",
      };
      if (frame.retryAfterMs !== undefined) state.error.retryAfterMs = frame.retryAfterMs;
      // The text that streamed stays; it is marked as not the JSON that was asked for.
      if (code === "invalid_output" && state.options.responseFormat !== undefined) {
        state.output = { valid: false };
      }
      return { request: next, problems };
    }
  }
}

/** ai:done's output (present: the caller checked), JSON null included. */
function outputOf(frame: DoneFrame) {
  return frame.output ?? null;
}

/** Fold one part, already checked for order, into `next`. */
function applyPart(
  next: Draft,
  frame: PartFrame,
  count: number,
  now: number,
  name: string,
  problems: string[],
): void {
  const { state } = next;
  if (frame.type === "ai:reasoning") {
    state.reasoning += frame.chunk;
    state.reasoningTokens += count;
    state.timings.firstReasoningAt ??= now;
    // Thinking until the first answer part; reasoning between answer parts does not reopen it.
    if (state.timings.firstTokenAt === undefined) state.thinking = true;
    return;
  }
  state.thinking = false;
  state.tokens += count;
  state.timings.firstTokenAt ??= now;
  switch (frame.type) {
    case "ai:token":
      state.text += frame.chunk;
      return;
    case "ai:refusal":
      state.refusal += frame.chunk;
      return;
    case "ai:tool_call": {
      const at = state.toolCalls.findIndex((call) => call.index === frame.index);
      const existing = state.toolCalls[at];
      if (existing !== undefined && (existing.id !== "" || existing.name !== "")) {
        problems.push(`${name}: a second ai:tool_call for index ${frame.index}, ignored`);
        return;
      }
      const call: ToolCallState = {
        index: frame.index,
        id: frame.id,
        name: frame.name,
        arguments: existing?.arguments ?? "",
        complete: false,
      };
      state.toolCalls = withCall(state.toolCalls, call);
      return;
    }
    case "ai:tool_args": {
      const existing = state.toolCalls.find((call) => call.index === frame.index);
      if (existing === undefined) {
        problems.push(`${name}: arguments for tool call ${frame.index} before its ai:tool_call`);
      }
      const call: ToolCallState = existing ?? {
        index: frame.index,
        id: "",
        name: "",
        arguments: "",
        complete: false,
      };
      state.toolCalls = withCall(state.toolCalls, {
        ...call,
        arguments: call.arguments + frame.chunk,
      });
      return;
    }
  }
}

/** `calls` with `call` in its place (by index; the list stays in index order). */
function withCall(calls: readonly ToolCallState[], call: ToolCallState): ToolCallState[] {
  const others = calls.filter((c) => c.index !== call.index);
  const at = others.findIndex((c) => c.index > call.index);
  return at < 0 ? [...others, call] : [...others.slice(0, at), call, ...others.slice(at)];
}

/**
 * The streamed calls, completed by ai:done's list (the whole arguments text, which parses):
 * matched by id, else in order. A call that streamed but is not in the list stays incomplete
 * (reported); one listed that never streamed is added after the others.
 */
function completeToolCalls(
  streamed: readonly ToolCallState[],
  final: readonly ToolCall[],
  name: string,
  problems: string[],
): ToolCallState[] {
  const matched = new Map<ToolCallState, ToolCall>();
  const unmatched: ToolCall[] = [];
  for (const call of final) {
    const mate = streamed.find((s) => !matched.has(s) && s.id !== "" && s.id === call.id);
    if (mate !== undefined) matched.set(mate, call);
    else unmatched.push(call);
  }
  const rest = unmatched.filter((call) => {
    const mate = streamed.find((s) => !matched.has(s));
    if (mate === undefined) return true;
    matched.set(mate, call);
    return false;
  });
  let nextIndex = streamed.reduce((n, call) => Math.max(n, call.index + 1), 0);
  const calls = streamed.map((call): ToolCallState => {
    const done = matched.get(call);
    if (done === undefined) {
      problems.push(`${name}: tool call ${call.index} ("${call.id}") is not in toolCalls`);
      return call;
    }
    return { ...call, id: done.id, name: done.name, arguments: done.arguments, complete: true };
  });
  for (const call of rest) calls.push({ index: nextIndex++, ...call, complete: true });
  return calls;
}

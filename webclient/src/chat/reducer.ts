// The reducer: folds one server frame into the request it names. Pure: no socket, no timers, no
// publishing; the store looks the request up, calls `applyFrame` and reports what it returns.
//
// Anything unexpected (an unknown id, a frame before the request was sent or after it ended, a
// second ai:start, a token before ai:start, a seq gap or duplicate, a field the parser had to
// ignore) comes back as a problem, one sentence naming the frame's type and request id; it never
// throws. A frame that could not be read at all never gets here (see protocol.ts).

import type { ParsedFrame } from "./protocol.ts";
import { DEFAULT_MESSAGES, draft, end, type RequestRecord } from "./request.ts";

/** What one frame did. */
export interface Applied {
  /** The request after the frame: the one given, unchanged, when the frame changed nothing. */
  readonly request: RequestRecord | undefined;
  /** What was wrong with the frame, oldest first; the frame itself still counts where it can. */
  readonly problems: readonly string[];
}

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
  switch (frame.type) {
    case "ai:start": {
      if (request.state.started) return unchanged(`${name}: a second ai:start`);
      const next = draft(request);
      next.state.started = true;
      if (frame.model !== "") next.state.model = frame.model;
      return { request: next, problems };
    }
    case "ai:token": {
      if (request.stopRequested) return unchanged(); // was in flight when the user pressed Stop
      const next = draft(request);
      const { state } = next;
      if (!state.started) {
        problems.push(`${name}: a token before ai:start`);
        state.started = true;
      }
      const count = frame.count > 0 ? frame.count : 1;
      if (!parsed.missing.includes("seq")) {
        if (frame.seq < next.nextSeq) {
          problems.push(`${name}: seq ${frame.seq}, expected ${next.nextSeq} (duplicate, dropped)`);
          return { request: next, problems };
        }
        if (frame.seq > next.nextSeq) {
          problems.push(`${name}: seq ${frame.seq}, expected ${next.nextSeq} (gap)`);
        }
        next.nextSeq = frame.seq + count;
      } else {
        next.nextSeq += count;
      }
      state.text += frame.chunk;
      state.tokens += count;
      state.timings.firstTokenAt ??= now;
      return { request: next, problems };
    }
    case "ai:done": {
      const next = draft(request);
      const { state } = next;
      end(next, now);
      if (frame.usage !== undefined) state.usage = frame.usage;
      if (!parsed.missing.includes("durationMs")) state.timings.durationMs = frame.durationMs;
      // Finished as the user stopped it: stays stopped.
      if (next.stopRequested) return { request: next, problems };
      state.status = "done";
      if (frame.finishReason !== undefined) state.finishReason = frame.finishReason;
      if (!parsed.missing.includes("ttftMs") && state.tokens > 0) {
        state.timings.ttftMs = frame.ttftMs;
      }
      return { request: next, problems };
    }
    case "ai:error": {
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
        retryable: frame.retryable,
      };
      return { request: next, problems };
    }
  }
}

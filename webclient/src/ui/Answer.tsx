// One turn: the question and its answer, streaming in with a cursor, with Stop / Retry and the
// numbers when it is done. Around the answer text: the model's thinking (Thinking.tsx), its tool
// calls (ToolCalls.tsx), a refusal; an answer asked for as JSON shows as StructuredOutput.
// Re-renders only when its own request changes.

import { memo } from "react";

import {
  completionTokens,
  formatMs,
  formatRate,
  reasoningTokens,
  thinkingTime,
  timeToFirstToken,
  tokensPerSecond,
} from "../chat/metrics.ts";
import type { RequestState } from "../chat/store.ts";
import { useChatStore, useRequest } from "../react/useChat.ts";
import { Markdown } from "./Markdown.tsx";
import { StructuredOutput } from "./StructuredOutput.tsx";
import { Thinking } from "./Thinking.tsx";
import { ToolCalls, ToolResultsSent } from "./ToolCalls.tsx";

const FINISH_NOTES: Record<string, string> = {
  length: "cut off: the token limit was reached",
  content_filter: "cut off by the content filter",
  tool_calls: "the model asked to call tools",
};

export const Answer = memo(function Answer({
  requestId,
  index,
}: {
  requestId: string;
  index: number;
}) {
  const request = useRequest(requestId);
  const store = useChatStore();
  if (request === undefined) return null;
  const { status } = request;
  const streaming = status === "streaming";
  const structured = request.options.responseFormat !== undefined;
  const nothingYet =
    request.text === "" && request.refusal === "" && request.toolCalls.length === 0;

  return (
    <article
      className={`turn status-${status}`}
      data-request-id={requestId}
      data-status={status}
      data-reconnecting={request.reconnecting ? "" : undefined}
      aria-label={`Answer ${index + 1}`}
    >
      {request.continues !== undefined ? (
        <ToolResultsSent requestId={request.continues} />
      ) : (
        <div className="question">
          <span className="who">You</span>
          <p>{request.prompt}</p>
        </div>
      )}
      <div className="answer">
        <header className="answer-head">
          <ModelBadge model={request.model} />
          <StatusNote request={request} />
        </header>
        {request.reasoning !== "" && (
          <Thinking
            reasoning={request.reasoning}
            thinking={request.thinking}
            answered={request.timings.firstTokenAt !== undefined}
            thoughtMs={thinkingTime(request)}
          />
        )}
        <div
          className={`answer-text${streaming ? " streaming" : ""}`}
          aria-live="polite"
          aria-busy={streaming}
        >
          {structured ? (
            <StructuredOutput request={request} />
          ) : (
            request.text !== "" && <Markdown text={request.text} />
          )}
          {streaming && nothingYet && <span className="cursor" aria-hidden="true" />}
        </div>
        {request.refusal !== "" && (
          <div className="refusal" role="note" aria-label="Refusal">
            <strong>The model declined to answer</strong>
            <p>{request.refusal}</p>
          </div>
        )}
        <ToolCalls request={request} />
        <footer className="answer-foot">
          {streaming && (
            <button type="button" className="stop" onClick={() => store.stop(requestId)}>
              Stop
            </button>
          )}
          {status === "error" && request.error !== undefined && (
            <p className="error-message">
              {request.error.message} <span className="code">({request.error.code})</span>
            </p>
          )}
          {status === "error" && request.error?.retryable === true && (
            <button type="button" className="retry" onClick={() => store.retry(requestId)}>
              Retry
            </button>
          )}
          {(status === "done" || status === "cancelled") && <Metrics request={request} />}
        </footer>
      </div>
    </article>
  );
});

function ModelBadge({ model }: { model: string | undefined }) {
  if (model === undefined) return null;
  if (!/simulated/i.test(model)) return <span className="model">{model}</span>;
  return (
    <span
      className="model simulated"
      title="The embedded simulated model: made-up text, no real LLM"
    >
      {model} <strong>· simulated, not a real model</strong>
    </span>
  );
}

function StatusNote({ request }: { request: RequestState }) {
  let note: string;
  switch (request.status) {
    case "streaming":
      note = request.reconnecting
        ? "reconnecting…"
        : request.retryInS !== undefined
          ? `Server busy — retrying in ${request.retryInS} s…`
          : request.queued
            ? "waiting for the connection…"
            : request.tokens === 0
              ? "thinking…"
              : request.toolCalls.length > 0 && request.text === ""
                ? "calling tools…"
                : "streaming";
      break;
    case "done":
      note =
        request.refusal !== "" ? "refused" : (FINISH_NOTES[request.finishReason ?? ""] ?? "done");
      break;
    case "cancelled":
      note =
        request.text === "" && request.refusal === "" && request.toolCalls.length === 0
          ? "stopped before any text arrived"
          : "stopped";
      break;
    case "error":
      note = "failed";
      break;
  }
  return <span className="status-note">{note}</span>;
}

function Metrics({ request }: { request: RequestState }) {
  const ttft = timeToFirstToken(request);
  const rate = tokensPerSecond(request);
  const tokens = completionTokens(request);
  const reasoning = reasoningTokens(request);
  const cached = request.usage?.cachedTokens;
  const estimated = request.usage?.source === "estimated";
  const details = [reasoning > 0 && `${reasoning} reasoning`, estimated && "estimated"].filter(
    (detail): detail is string => typeof detail === "string",
  );
  const parts = [
    ttft !== undefined && `first token ${formatMs(ttft)}`,
    rate !== undefined && formatRate(rate),
    `${tokens} ${tokens === 1 ? "token" : "tokens"}` +
      (details.length > 0 ? ` (${details.join(", ")})` : ""),
    cached !== undefined && cached > 0 && `${cached} prompt tokens cached`,
  ].filter((part): part is string => typeof part === "string");
  return <p className="metrics">{parts.join(" · ")}</p>;
}

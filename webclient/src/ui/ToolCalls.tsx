// The tool calls of an answer as cards: name, id, and the arguments filling in as they stream,
// pretty-printed once ai:done says they are complete. Under a finished answer whose calls can be
// answered, a form sends their results back: the next step of an agent loop.

import { useState, type FormEvent } from "react";

import { demoToolResult } from "../chat/demo.ts";
import { canAnswer } from "../chat/request.ts";
import type { RequestState, ToolCallState } from "../chat/store.ts";
import { useChatStore, useRequest } from "../react/useChat.ts";

/** JSON text indented, or as it is when it does not parse (yet). */
export function prettyJson(text: string): string {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

export function ToolCallCard({ call, streaming }: { call: ToolCallState; streaming: boolean }) {
  const label = call.name !== "" ? call.name : `call ${call.index}`;
  const state = call.complete ? "complete" : streaming ? "receiving arguments…" : "incomplete";
  return (
    <section
      className={`tool-call${call.complete ? " complete" : ""}`}
      aria-label={`Tool call ${label}`}
      data-complete={call.complete}
    >
      <header className="tool-call-head">
        <span className="tool-call-kind">Tool call</span>
        <strong className="tool-call-name">{label}</strong>
        {call.id !== "" && <code className="tool-call-id">{call.id}</code>}
        <span className="tool-call-state">{state}</span>
      </header>
      <pre className="tool-call-args" aria-label="Arguments">
        <code>{call.complete ? prettyJson(call.arguments) : call.arguments}</code>
        {!call.complete && streaming && <span className="cursor" aria-hidden="true" />}
      </pre>
    </section>
  );
}

export function ToolCalls({ request }: { request: RequestState }) {
  if (request.toolCalls.length === 0) return null;
  const streaming = request.status === "streaming";
  return (
    <div className="tool-calls">
      {request.toolCalls.map((call) => (
        <ToolCallCard key={call.index} call={call} streaming={streaming} />
      ))}
      {canAnswer(request) && <ToolResultsForm request={request} />}
    </div>
  );
}

/** One box per call for its result (the demo tool's made up in advance), and one Send. */
function ToolResultsForm({ request }: { request: RequestState }) {
  const store = useChatStore();
  const [results, setResults] = useState(() =>
    request.toolCalls.map((call) => demoToolResult(call.name, call.arguments)),
  );
  const onSubmit = (event: FormEvent) => {
    event.preventDefault();
    store.sendToolResults(
      request.requestId,
      request.toolCalls.map((call, i) => ({ toolCallId: call.id, content: results[i] ?? "" })),
    );
  };
  return (
    <form className="tool-results" aria-label="Tool results" onSubmit={onSubmit}>
      {request.toolCalls.map((call, i) => (
        <label key={call.index}>
          <span>
            Result of <code>{call.name}</code> ({call.id})
          </span>
          <textarea
            rows={2}
            value={results[i] ?? ""}
            onChange={(event) =>
              setResults(results.map((r, j) => (j === i ? event.target.value : r)))
            }
          />
        </label>
      ))}
      <button type="submit">Submit tool results</button>
    </form>
  );
}

/** In place of the question, for a request that carries another's tool results. */
export function ToolResultsSent({ requestId }: { requestId: string }) {
  const request = useRequest(requestId);
  const results = request?.toolResults ?? [];
  const name = (id: string) => request?.toolCalls.find((call) => call.id === id)?.name ?? id;
  return (
    <div className="question tool-results-sent">
      <span className="who">Tool results</span>
      {results.map((result) => (
        <p key={result.toolCallId}>
          <code>{name(result.toolCallId)}</code> → {result.content}
        </p>
      ))}
    </div>
  );
}

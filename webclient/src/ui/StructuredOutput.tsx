// An answer asked for as JSON (responseFormat): the text as it streams, then the value the
// server parsed and validated, formatted, marked valid; or the text as it came, marked invalid.

import type { RequestState } from "../chat/store.ts";

export function StructuredOutput({ request }: { request: RequestState }) {
  const { output, text } = request;
  const schema = request.options.responseFormat?.type === "json_schema";
  const verdict = output === undefined ? "pending" : output.valid ? "valid" : "invalid";
  const shown = output?.valid === true ? JSON.stringify(output.value, null, 2) : text;
  if (shown === "" && output === undefined) return null;
  return (
    <section
      className={`structured ${verdict}`}
      aria-label="Structured output"
      data-valid={verdict}
    >
      <pre>
        <code>{shown}</code>
      </pre>
      {output !== undefined && (
        <p className={`output-mark ${verdict}`}>
          <span aria-hidden="true">{output.valid ? "✓ " : "✗ "}</span>
          {output.valid
            ? schema
              ? "Valid JSON · matches the schema"
              : "Valid JSON"
            : "Invalid output"}
        </p>
      )}
    </section>
  );
}

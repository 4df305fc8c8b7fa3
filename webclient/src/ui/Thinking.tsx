// The model's reasoning, apart from the answer: a disclosure that is open while the model thinks
// and closes by itself once the answer begins (the reader may open it again). Stopped or failed
// before any answer, it stays as it was, with the reasoning received so far.

import { useId, useState } from "react";

import { formatMs } from "../chat/metrics.ts";

export function Thinking({
  reasoning,
  thinking,
  answered,
  thoughtMs,
}: {
  /** The reasoning so far. */
  reasoning: string;
  /** Reasoning is still arriving, before any answer part. */
  thinking: boolean;
  /** An answer part arrived: the section closes then, once. */
  answered: boolean;
  /** How long the model thought, once known. */
  thoughtMs: number | undefined;
}) {
  const id = useId();
  const [open, setOpen] = useState(!answered);
  const [wasAnswered, setWasAnswered] = useState(answered);
  if (answered !== wasAnswered) {
    // Adjusted while rendering (not in an effect): the close costs no second commit.
    setWasAnswered(answered);
    if (answered) setOpen(false);
  }
  const detail = thinking ? "…" : thoughtMs !== undefined ? ` · ${formatMs(thoughtMs)}` : "";
  return (
    <section
      className={`thinking${thinking ? " live" : ""}`}
      aria-label="Thinking"
      data-open={open}
    >
      <button
        type="button"
        className="thinking-toggle"
        aria-expanded={open}
        aria-controls={id}
        onClick={() => setOpen(!open)}
      >
        Thinking{detail}
      </button>
      <div id={id} className="thinking-text" hidden={!open}>
        {reasoning}
      </div>
    </section>
  );
}

// The prompt box: Enter sends, Shift+Enter is a new line. Under it, the mode a question is asked
// in: plain chat, with a demo tool, or for JSON (see chat/demo.ts); the mode stays until changed.

import { useId, useState, type FormEvent, type KeyboardEvent } from "react";

import { CHAT_MODES, type ChatMode } from "../chat/demo.ts";

export function Composer({ onSend }: { onSend: (prompt: string, mode: ChatMode) => void }) {
  const [prompt, setPrompt] = useState("");
  const [mode, setMode] = useState<ChatMode>("chat");
  const id = useId();
  const empty = prompt.trim() === "";

  const send = () => {
    if (empty) return;
    onSend(prompt, mode);
    setPrompt("");
  };
  const onSubmit = (event: FormEvent) => {
    event.preventDefault();
    send();
  };
  const onKeyDown = (event: KeyboardEvent<HTMLTextAreaElement>) => {
    // Enter sends; Shift+Enter (and Enter that confirms an IME composition) does not.
    if (event.key !== "Enter" || event.shiftKey || event.nativeEvent.isComposing) return;
    event.preventDefault();
    send();
  };

  return (
    <form className="composer" onSubmit={onSubmit}>
      <label htmlFor={id} className="visually-hidden">
        Prompt
      </label>
      <textarea
        id={id}
        value={prompt}
        onChange={(event) => setPrompt(event.target.value)}
        onKeyDown={onKeyDown}
        placeholder="Ask something…  (Enter to send, Shift+Enter for a new line)"
        rows={2}
        autoFocus
        aria-describedby={`${id}-hint`}
      />
      <span id={`${id}-hint`} className="visually-hidden">
        Enter sends, Shift+Enter adds a new line.
      </span>
      <button type="submit" disabled={empty}>
        Send
      </button>
      <fieldset className="modes">
        <legend className="visually-hidden">Mode</legend>
        {CHAT_MODES.map((m) => (
          <label key={m.mode} title={m.hint} className={m.mode === mode ? "selected" : undefined}>
            <input
              type="radio"
              name={`${id}-mode`}
              value={m.mode}
              checked={m.mode === mode}
              onChange={() => setMode(m.mode)}
            />
            {m.label}
          </label>
        ))}
      </fieldset>
    </form>
  );
}

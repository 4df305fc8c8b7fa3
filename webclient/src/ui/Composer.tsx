// The prompt box: Enter sends, Shift+Enter is a new line.

import { useId, useState, type FormEvent, type KeyboardEvent } from "react";

export function Composer({ onSend }: { onSend: (prompt: string) => void }) {
  const [prompt, setPrompt] = useState("");
  const id = useId();
  const empty = prompt.trim() === "";

  const send = () => {
    if (empty) return;
    onSend(prompt);
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
    </form>
  );
}

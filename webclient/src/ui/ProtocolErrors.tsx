// What the server sent that made no sense, for whoever is debugging (collapsed by default).

import { useChat } from "../react/useChat.ts";

export function ProtocolErrors() {
  const errors = useChat((snapshot) => snapshot.protocolErrors);
  if (errors.length === 0) return null;
  return (
    <details className="protocol-errors">
      <summary>
        {errors.length} protocol {errors.length === 1 ? "warning" : "warnings"}
      </summary>
      <ol>
        {errors.map((error, i) => (
          <li key={i}>
            {error.message}
            <code>{error.frame}</code>
          </li>
        ))}
      </ol>
    </details>
  );
}

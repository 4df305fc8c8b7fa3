// The WebSocket's state, always visible.

import type { ConnectionStatus as Status } from "../chat/store.ts";
import { useChat } from "../react/useChat.ts";

export function ConnectionStatus() {
  const status: Status = useChat((snapshot) => snapshot.connection);
  return (
    <p className="connection" role="status" data-testid="connection-status" data-state={status}>
      <span className="connection-dot" aria-hidden="true" />
      {status}
    </p>
  );
}

// Entry point: one store for the page, connected to the bridge that served it.

import { StrictMode } from "react";
import { createRoot } from "react-dom/client";

import { browserSocket, bridgeUrl } from "./chat/socket.ts";
import { createChatStore } from "./chat/store.ts";
import { ChatStoreProvider } from "./react/useChat.ts";
import { App } from "./ui/App.tsx";
import "./ui/styles.css";

const store = createChatStore({
  url: bridgeUrl(window.location.href),
  socketFactory: browserSocket,
});
store.connect();
// Leaving the page closes the socket at once, so the bridge stops its generations (no ghosts).
// A page restored from the back/forward cache then starts afresh.
window.addEventListener("pagehide", () => store.dispose());
window.addEventListener("pageshow", (event) => {
  if (event.persisted) window.location.reload();
});

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <ChatStoreProvider store={store}>
      <App />
    </ChatStoreProvider>
  </StrictMode>,
);

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
  storage: sessionStorage(),
});
store.connect();
// Leaving the page closes the socket at once. Its answers in flight are resumable: the bridge
// keeps them running for the server's resume grace (30 s by default), and the store has kept
// them in sessionStorage, so a reload (or a page restored from the back/forward cache, which
// starts afresh) shows and resumes them; if nobody resumes them, the server cancels them.
window.addEventListener("pagehide", () => store.dispose());
window.addEventListener("pageshow", (event) => {
  if (event.persisted) window.location.reload();
});

/** The tab's sessionStorage, or none where the browser refuses it (some private modes). */
function sessionStorage(): Storage | undefined {
  try {
    return window.sessionStorage;
  } catch {
    return undefined;
  }
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <ChatStoreProvider store={store}>
      <App />
    </ChatStoreProvider>
  </StrictMode>,
);

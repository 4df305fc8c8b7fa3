// The page: connection status on top, the conversation, the prompt box at the bottom.

import { useEffect, useRef, type RefObject } from "react";

import { modeOptions, type ChatMode } from "../chat/demo.ts";
import { useChat, useChatStore } from "../react/useChat.ts";
import { Answer } from "./Answer.tsx";
import { Composer } from "./Composer.tsx";
import { ConnectionStatus } from "./ConnectionStatus.tsx";
import { ProtocolErrors } from "./ProtocolErrors.tsx";

export function App() {
  const store = useChatStore();
  const order = useChat((snapshot) => snapshot.order);
  const conversation = useRef<HTMLElement>(null);
  const follow = useFollowBottom(conversation);

  const send = (prompt: string, mode: ChatMode) => {
    follow.current = true; // a new question always scrolls into view
    store.send(prompt, modeOptions(mode));
  };

  return (
    <div className="app">
      <header className="topbar">
        <h1>aistream</h1>
        <ConnectionStatus />
      </header>
      <main className="conversation" ref={conversation} aria-label="Conversation">
        {order.length === 0 ? (
          <p className="welcome">
            Ask anything: answers stream in as they are generated. Several can run at once.
          </p>
        ) : (
          order.map((id, index) => <Answer key={id} requestId={id} index={index} />)
        )}
        <ProtocolErrors />
      </main>
      <footer className="composer-bar">
        <Composer onSend={send} />
      </footer>
    </div>
  );
}

/** Keep the page scrolled to the bottom while text arrives, unless the reader scrolled up. */
function useFollowBottom(target: RefObject<HTMLElement | null>) {
  const follow = useRef(true);
  useEffect(() => {
    const element = target.current;
    if (element === null || typeof MutationObserver === "undefined") return;
    const below = () =>
      document.documentElement.scrollHeight - (window.innerHeight + window.scrollY);
    // A reader within 48 px of the bottom is still following; but when following, go all the
    // way down, or a line or two of new text (and the Stop button) stays under the prompt bar.
    const onScroll = () => {
      follow.current = below() <= 48;
    };
    const observer = new MutationObserver(() => {
      if (follow.current && below() > 1)
        window.scrollTo({ top: document.documentElement.scrollHeight });
    });
    observer.observe(element, { childList: true, subtree: true, characterData: true });
    window.addEventListener("scroll", onScroll, { passive: true });
    return () => {
      observer.disconnect();
      window.removeEventListener("scroll", onScroll);
    };
  }, [target]);
  return follow;
}

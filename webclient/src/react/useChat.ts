// The React side of the store: a context to hand it down and hooks that subscribe to it with
// useSyncExternalStore. Components re-render only when the part they select changes.

import {
  createContext,
  createElement,
  useContext,
  useSyncExternalStore,
  type ReactNode,
} from "react";

import type { ChatSnapshot, ChatStore, RequestState } from "../chat/store.ts";

const StoreContext = createContext<ChatStore | null>(null);

/** Makes `store` available to the hooks below. */
export function ChatStoreProvider({ store, children }: { store: ChatStore; children: ReactNode }) {
  return createElement(StoreContext.Provider, { value: store }, children);
}

/** The store, for its actions (send, stop, retry). */
export function useChatStore(): ChatStore {
  const store = useContext(StoreContext);
  if (store === null) throw new Error("useChatStore needs a <ChatStoreProvider>");
  return store;
}

/**
 * A part of the snapshot. `select` must return something that keeps its identity while it does
 * not change (a field of the snapshot, a request): the snapshot is built that way.
 */
export function useChat<T>(select: (snapshot: ChatSnapshot) => T): T {
  const store = useChatStore();
  const get = () => select(store.getSnapshot());
  return useSyncExternalStore(store.subscribe, get, get);
}

/** One request's state (undefined once a retry replaced it). */
export function useRequest(requestId: string): RequestState | undefined {
  return useChat((snapshot) => snapshot.requests[requestId]);
}

// A scripted stand-in for the browser's WebSocket, and a store wired to it, for tests.

import type { ClientFrame, ServerFrame } from "../generated/frames.ts";
import type { WebSocketLike } from "../chat/socket.ts";
import { ChatStore, type ChatStoreOptions } from "../chat/store.ts";

/** A WebSocket whose other side is the test: it opens, delivers and drops on command. */
export class FakeWebSocket implements WebSocketLike {
  readyState = 0; // CONNECTING
  onopen: ((event: Event) => void) | null = null;
  onmessage: ((event: MessageEvent) => void) | null = null;
  onclose: ((event: CloseEvent) => void) | null = null;
  onerror: ((event: Event) => void) | null = null;
  /** Every text frame the store sent, as sent. */
  readonly sent: string[] = [];
  closedByClient: { code?: number | undefined; reason?: string | undefined } | undefined;

  constructor(readonly url: string) {}

  /** The frames the store sent, decoded. */
  get frames(): ClientFrame[] {
    return this.sent.map((text) => JSON.parse(text) as ClientFrame);
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error(`send in readyState ${this.readyState}`);
    this.sent.push(data);
  }

  close(code?: number, reason?: string): void {
    this.closedByClient = { code, reason };
    this.readyState = 2; // CLOSING
  }

  /** The server accepted the connection. */
  open(): void {
    this.readyState = 1;
    this.onopen?.(new Event("open"));
  }

  /** The server sent a frame (a frame object is sent as JSON; a string as-is, however odd). */
  receive(frame: ServerFrame | string): void {
    const data = typeof frame === "string" ? frame : JSON.stringify(frame);
    this.onmessage?.(new MessageEvent("message", { data }));
  }

  /** The connection ended (server gone, network down, or after the client's own close()). */
  drop(code = 1006): void {
    this.readyState = 3;
    this.onclose?.(new CloseEvent("close", { code, wasClean: code !== 1006 }));
  }
}

/** A store over fake sockets, publishing only when the test says so (`flush`). */
export function makeStore(options: Partial<ChatStoreOptions> = {}) {
  const sockets: FakeWebSocket[] = [];
  let pending: (() => void) | undefined;
  let ids = 0;
  const warnings: string[] = [];
  const store = new ChatStore({
    url: "ws://bridge.test/ws",
    socketFactory: (url) => {
      const socket = new FakeWebSocket(url);
      sockets.push(socket);
      return socket;
    },
    scheduleFrame: (callback) => {
      pending = callback;
      return () => {
        if (pending === callback) pending = undefined;
      };
    },
    newRequestId: () => `r${++ids}`,
    random: () => 0,
    now: () => Date.now(),
    log: (message) => warnings.push(message),
    ...options,
  });
  return {
    store,
    sockets,
    warnings,
    /** The socket opened most recently. */
    get socket(): FakeWebSocket {
      const socket = sockets.at(-1);
      if (socket === undefined) throw new Error("no socket opened yet");
      return socket;
    },
    /** Run the pending animation frame, if any. */
    flush(): void {
      const callback = pending;
      pending = undefined;
      callback?.();
    },
    /** The current snapshot. */
    get state() {
      return store.getSnapshot();
    },
    /** One request's current state (after a flush). */
    request(id: string) {
      const request = store.getSnapshot().requests[id];
      if (request === undefined) throw new Error(`no request ${id}`);
      return request;
    },
  };
}

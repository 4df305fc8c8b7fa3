// The connection to the bridge: one WebSocket at a time, opened through a SocketFactory and
// opened again with backoff (backoff.ts) whenever it drops. It tells one listener when the socket
// opened, when it closed and what each message said (parsed, see protocol.ts); it sends the frames
// it is given. It knows nothing of requests.

import type { ClientFrame } from "../generated/frames.ts";
import { DEFAULT_BACKOFF, backoffDelay, type BackoffOptions } from "./backoff.ts";
import { encodeClientFrame, parseServerFrame, type ParseResult } from "./protocol.ts";
import type { SocketFactory, WebSocketLike } from "./socket.ts";

/** The WebSocket as the user sees it. */
export type ConnectionStatus = "connecting" | "connected" | "reconnecting";

/** What the connection tells its owner. Only the current socket is heard from. */
export interface ConnectionListener {
  /** The socket opened (`status` is "connected"): frames sent now reach the bridge. */
  opened(): void;
  /**
   * The socket closed (`status` is "connecting" or "reconnecting"); the next attempt is already
   * scheduled. What was sent on it will get no more answers.
   */
  closed(): void;
  /** A message arrived; `data` is the raw message, for quoting. */
  received(parsed: ParseResult, data: unknown): void;
}

export interface ConnectionOptions {
  /** The bridge's WebSocket URL (see `bridgeUrl`). */
  url: string;
  /** Opens the socket; tests pass a fake. */
  socketFactory: SocketFactory;
  /** The clock, in ms (default `performance.now`). */
  now?: () => number;
  backoff?: BackoffOptions;
  /** Randomness for backoff jitter, [0, 1). */
  random?: () => number;
  /** A connection that stayed open this long (ms) resets the backoff. */
  stableAfterMs?: number;
  /** Where connection trouble is logged (default `console.warn`). */
  log?: (message: string) => void;
}

export class Connection {
  private readonly url: string;
  private readonly socketFactory: SocketFactory;
  private readonly now: () => number;
  private readonly backoff: BackoffOptions;
  private readonly random: () => number;
  private readonly stableAfterMs: number;
  private readonly log: (message: string) => void;

  private socket: WebSocketLike | null = null;
  private open = false;
  private everOpened = false;
  private openedAt = 0;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private closedForGood = false;
  private currentStatus: ConnectionStatus = "connecting";

  constructor(
    options: ConnectionOptions,
    private readonly listener: ConnectionListener,
  ) {
    this.url = options.url;
    this.socketFactory = options.socketFactory;
    this.now = options.now ?? (() => performance.now());
    this.backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.random = options.random ?? Math.random;
    this.stableAfterMs = options.stableAfterMs ?? 5_000;
    this.log = options.log ?? ((message) => console.warn(message));
  }

  /** "connecting" until the first socket opens, then "connected" or "reconnecting". */
  get status(): ConnectionStatus {
    return this.currentStatus;
  }

  /** Whether a socket is open, so that `send` reaches the bridge. */
  get isOpen(): boolean {
    return this.open;
  }

  /**
   * Open the socket (again). Called once at start; reconnects then happen on their own. Called
   * while waiting out the backoff, it tries at once; with a socket open or opening, it does nothing.
   */
  connect(): void {
    if (this.closedForGood || this.socket !== null) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    let socket: WebSocketLike;
    try {
      socket = this.socketFactory(this.url);
    } catch (error) {
      this.log(`aistream: cannot open ${this.url}: ${String(error)}`);
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    socket.onopen = () => this.onOpen(socket);
    socket.onmessage = (event) => this.onMessage(socket, event.data);
    socket.onclose = () => this.onClose(socket);
    socket.onerror = () => {}; // a close event follows; that is where it is handled
  }

  /** Send one frame if the socket is open (else it is dropped: the caller checks `isOpen`). */
  send(frame: ClientFrame): void {
    const socket = this.socket;
    if (socket === null || !this.open) return;
    try {
      socket.send(encodeClientFrame(frame));
    } catch (error) {
      // The socket is closing: its close event marks what was in flight as interrupted.
      this.log(`aistream: cannot send ${frame.type} for "${frame.requestId}": ${String(error)}`);
      socket.close();
    }
  }

  /** Close the socket and stop reconnecting; the listener hears nothing more. */
  close(): void {
    if (this.closedForGood) return;
    this.closedForGood = true;
    clearTimeout(this.reconnectTimer);
    const socket = this.socket;
    this.socket = null;
    this.open = false;
    if (socket !== null) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      socket.close(1000, "page closed");
    }
  }

  private onOpen(socket: WebSocketLike): void {
    if (socket !== this.socket) return;
    this.open = true;
    this.everOpened = true;
    this.openedAt = this.now();
    this.currentStatus = "connected";
    this.listener.opened();
  }

  private onClose(socket: WebSocketLike): void {
    if (socket !== this.socket) return;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    this.socket = null;
    const wasOpen = this.open;
    this.open = false;
    if (wasOpen && this.now() - this.openedAt >= this.stableAfterMs) this.attempt = 0;
    this.currentStatus = this.everOpened ? "reconnecting" : "connecting";
    this.scheduleReconnect();
    this.listener.closed();
  }

  private onMessage(socket: WebSocketLike, data: unknown): void {
    if (socket !== this.socket) return;
    this.listener.received(parseServerFrame(data), data);
  }

  private scheduleReconnect(): void {
    if (this.closedForGood || this.reconnectTimer !== undefined) return;
    const delay = backoffDelay(this.attempt, this.backoff, this.random);
    this.attempt += 1;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      this.connect();
    }, delay);
  }
}

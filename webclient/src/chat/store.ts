// The chat store: owns the WebSocket and the state of every request. No React in here.
//
// One entry per request id, in the order the user asked:
//
//   send ──▶ streaming ──▶ done                       (ai:done)
//                     ├──▶ error                      (ai:error, or the socket dropped: "interrupted")
//                     └──▶ cancelled                  (Stop, or ai:error "cancelled"; text kept)
//
// Frames change a private working copy at once; subscribers see a new immutable snapshot at most
// once per animation frame (`schedule`), so 800 tokens/s cost ~60 renders/s, not 800. User actions
// (send, stop, retry) and connection changes publish immediately. Anything unexpected on the wire
// (a malformed frame, an unknown id, a seq gap or duplicate, a frame after the end) is reported in
// `protocolErrors` and logged with the frame quoted; it never throws.

import type {
  ChatMessage,
  ClientFrame,
  ErrorCode,
  FinishReason,
  Usage,
} from "../generated/frames.ts";
import { DEFAULT_BACKOFF, backoffDelay, type BackoffOptions } from "./backoff.ts";
import { DEFAULT_HISTORY_LIMITS, buildHistory, type HistoryLimits } from "./history.ts";
import { newRequestId } from "./ids.ts";
import { encodeClientFrame, parseServerFrame, quoteFrame, type ParsedFrame } from "./protocol.ts";
import { animationFrame, type FrameScheduler } from "./schedule.ts";
import type { SocketFactory, WebSocketLike } from "./socket.ts";

/** The WebSocket as the user sees it. */
export type ConnectionStatus = "connecting" | "connected" | "reconnecting";

/** Where one request stands. */
export type RequestStatus = "streaming" | "done" | "error" | "cancelled";

/** Why a request failed: a code from the server, or `interrupted` when the connection dropped. */
export type RequestErrorCode = ErrorCode | "interrupted";

export interface RequestError {
  code: RequestErrorCode;
  /** Safe to show a person. */
  message: string;
  /** Whether sending the same request again may succeed (the UI offers Retry). */
  retryable: boolean;
}

/** Client-side times (ms on the store's clock) and the server's own measurements. */
export interface RequestTimings {
  /** When the generate frame went out; absent while it waits for the connection. */
  sentAt?: number;
  /** When the first token arrived here. */
  firstTokenAt?: number;
  /** When the request ended (terminal frame, Stop, or connection lost). */
  endedAt?: number;
  /** The server's time to first token, from `ai:done`. */
  ttftMs?: number;
  /** The server's time from accepting the request to its end, from `ai:done` / `ai:error`. */
  durationMs?: number;
}

/** Everything about one request id. Immutable: a change makes a new object. */
export interface RequestState {
  readonly requestId: string;
  readonly prompt: string;
  /** The history sent with the prompt (sent again as-is on Retry). */
  readonly messages: readonly ChatMessage[];
  readonly status: RequestStatus;
  /** Still waiting for the connection to open before it can be sent. */
  readonly queued: boolean;
  /** `ai:start` arrived: the server accepted the request. */
  readonly started: boolean;
  /** The answer received so far. */
  readonly text: string;
  /** Tokens received (a chunk may hold several). */
  readonly tokens: number;
  /** The model serving it, from `ai:start`. */
  readonly model?: string;
  readonly finishReason?: FinishReason;
  readonly usage?: Usage;
  readonly error?: RequestError;
  readonly timings: Readonly<RequestTimings>;
  /** The request id this one retries. */
  readonly retryOf?: string;
}

/** Something unexpected from the server, with the frame that carried it. */
export interface ProtocolError {
  /** What was wrong, naming the frame's type and request id when they could be read. */
  readonly message: string;
  /** The raw frame, quoted (cut to 200 characters). */
  readonly frame: string;
}

/** What subscribers read. Unchanged parts keep their identity between snapshots. */
export interface ChatSnapshot {
  readonly connection: ConnectionStatus;
  /** Request ids in conversation order (a retry takes the place of the request it retries). */
  readonly order: readonly string[];
  readonly requests: Readonly<Record<string, RequestState>>;
  /** The most recent protocol errors, oldest first. */
  readonly protocolErrors: readonly ProtocolError[];
}

export interface ChatStoreOptions {
  /** The bridge's WebSocket URL (see `bridgeUrl`). */
  url: string;
  /** Opens the socket; tests pass a fake. */
  socketFactory: SocketFactory;
  /** When to publish a snapshot after frames arrive (default: the next animation frame). */
  scheduleFrame?: FrameScheduler;
  /** The clock for timings, in ms (default `performance.now`). */
  now?: () => number;
  /** Makes request ids (default: random, see ids.ts). */
  newRequestId?: () => string;
  backoff?: BackoffOptions;
  /** Randomness for backoff jitter, [0, 1). */
  random?: () => number;
  /** A connection that stayed open this long (ms) resets the backoff. */
  stableAfterMs?: number;
  history?: HistoryLimits;
  /** How many protocol errors to keep. */
  maxProtocolErrors?: number;
  /** Where protocol errors and connection trouble are logged (default `console.warn`). */
  log?: (message: string) => void;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** The working copy of one request, with what only the store needs. */
interface Draft {
  state: Mutable<RequestState> & { timings: RequestTimings };
  /** The seq the next token should carry. */
  nextSeq: number;
  /** Sent on the current socket and no terminal frame yet: frames for it are expected. */
  awaiting: boolean;
  /** The user pressed Stop while it was awaiting: tokens still in flight are dropped quietly. */
  stopRequested: boolean;
}

/** What the user sees for a failure whose frame carried no message. */
const DEFAULT_MESSAGES: Record<RequestErrorCode, string> = {
  cancelled: "The answer was stopped.",
  timeout: "The model took too long to answer.",
  upstream_error: "The model failed to answer.",
  rate_limited: "The model is rate limited right now.",
  invalid_request: "The request was not valid.",
  too_many_requests: "Too many answers are being generated at once.",
  unavailable: "The service is unavailable right now.",
  internal: "Something went wrong on the server.",
  slow_consumer: "The answer came faster than this page could take it.",
  unauthenticated: "The server refused the credentials.",
  interrupted: "The connection was lost before the answer finished.",
};

const EMPTY: readonly never[] = Object.freeze([]);

export class ChatStore {
  private readonly url: string;
  private readonly socketFactory: SocketFactory;
  private readonly scheduleFrame: FrameScheduler;
  private readonly now: () => number;
  private readonly makeId: () => string;
  private readonly backoff: BackoffOptions;
  private readonly random: () => number;
  private readonly stableAfterMs: number;
  private readonly historyLimits: HistoryLimits;
  private readonly maxProtocolErrors: number;
  private readonly log: (message: string) => void;

  private socket: WebSocketLike | null = null;
  private connected = false;
  private everConnected = false;
  private openedAt = 0;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private disposed = false;

  private readonly drafts = new Map<string, Draft>();
  private order: readonly string[] = EMPTY;
  /** Ids waiting for the connection, oldest first. */
  private outbox: string[] = [];
  private connection: ConnectionStatus = "connecting";
  private protocolErrors: readonly ProtocolError[] = EMPTY;

  /** Request ids changed since the last snapshot. */
  private readonly dirty = new Set<string>();
  /** Anything else changed since the last snapshot. */
  private changed = false;
  private cancelScheduled: (() => void) | undefined;
  private snapshot: ChatSnapshot;
  private readonly listeners = new Set<() => void>();

  constructor(options: ChatStoreOptions) {
    this.url = options.url;
    this.socketFactory = options.socketFactory;
    this.scheduleFrame = options.scheduleFrame ?? animationFrame();
    this.now = options.now ?? (() => performance.now());
    this.makeId = options.newRequestId ?? newRequestId;
    this.backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.random = options.random ?? Math.random;
    this.stableAfterMs = options.stableAfterMs ?? 5_000;
    this.historyLimits = options.history ?? DEFAULT_HISTORY_LIMITS;
    this.maxProtocolErrors = options.maxProtocolErrors ?? 50;
    this.log = options.log ?? ((message) => console.warn(message));
    this.snapshot = {
      connection: this.connection,
      order: this.order,
      requests: {},
      protocolErrors: this.protocolErrors,
    };
  }

  // --- reading ---------------------------------------------------------------------------------

  /** Register a listener called after each new snapshot; returns the unsubscribe function. */
  readonly subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  };

  /** The current snapshot (the same object until something changes). */
  readonly getSnapshot = (): ChatSnapshot => this.snapshot;

  // --- actions ---------------------------------------------------------------------------------

  /** Open the socket (again). Called once at start; reconnects then happen on their own. */
  connect(): void {
    if (this.disposed || this.socket !== null) return;
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

  /**
   * Ask a question. The history of the complete previous turns goes with it. Returns the new
   * request id, or undefined for an empty prompt. Sent at once when connected, else queued.
   */
  send(prompt: string): string | undefined {
    const text = prompt.trim();
    if (this.disposed || text === "") return undefined;
    const turns = this.order.map((id) => {
      const { state } = this.drafts.get(id)!;
      const complete =
        state.status === "done" || (state.status === "cancelled" && state.text.trim() !== "");
      return { prompt: state.prompt, answer: state.text, complete };
    });
    return this.begin(text, buildHistory(turns, this.historyLimits));
  }

  /** Stop a streaming answer: sends `ai:cancel` and keeps the text received so far. */
  stop(requestId: string): void {
    const draft = this.drafts.get(requestId);
    if (draft === undefined || draft.state.status !== "streaming") return;
    const { state } = draft;
    state.status = "cancelled";
    state.timings.endedAt = this.now();
    if (state.queued) {
      state.queued = false;
      this.outbox = this.outbox.filter((id) => id !== requestId);
    } else if (draft.awaiting) {
      draft.stopRequested = true;
      this.transmit({ type: "ai:cancel", requestId });
    }
    this.dirty.add(requestId);
    this.publish();
  }

  /**
   * Ask a failed request again, with the same prompt and history under a new request id, which
   * takes its place in the conversation. Returns the new id (undefined if it had not failed).
   */
  retry(requestId: string): string | undefined {
    const draft = this.drafts.get(requestId);
    if (this.disposed || draft === undefined || draft.state.status !== "error") return undefined;
    return this.begin(draft.state.prompt, draft.state.messages, requestId);
  }

  /** Close the socket and stop reconnecting; the store is unusable afterwards. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    clearTimeout(this.reconnectTimer);
    this.cancelScheduled?.();
    const socket = this.socket;
    this.socket = null;
    this.connected = false;
    if (socket !== null) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      socket.close(1000, "page closed");
    }
  }

  // --- requests --------------------------------------------------------------------------------

  private begin(prompt: string, messages: readonly ChatMessage[], replaces?: string): string {
    const requestId = this.makeId();
    const state: Draft["state"] = {
      requestId,
      prompt,
      messages,
      status: "streaming",
      queued: true,
      started: false,
      text: "",
      tokens: 0,
      timings: {},
    };
    if (replaces !== undefined) state.retryOf = replaces;
    const draft: Draft = { state, nextSeq: 0, awaiting: false, stopRequested: false };
    this.drafts.set(requestId, draft);
    const at = replaces === undefined ? -1 : this.order.indexOf(replaces);
    if (at < 0) {
      this.order = [...this.order, requestId];
    } else {
      this.order = [...this.order.slice(0, at), requestId, ...this.order.slice(at + 1)];
      this.drafts.delete(replaces!);
      this.dirty.add(replaces!);
    }
    this.dirty.add(requestId);
    this.changed = true;
    if (this.connected) {
      this.sendGenerate(draft);
    } else {
      this.outbox.push(requestId);
      if (this.socket === null) this.connect(); // don't make a question wait for the backoff
    }
    this.publish();
    return requestId;
  }

  private sendGenerate(draft: Draft): void {
    const { state } = draft;
    state.queued = false;
    draft.awaiting = true;
    state.timings.sentAt = this.now();
    this.dirty.add(state.requestId);
    this.transmit({
      type: "ai:generate",
      requestId: state.requestId,
      prompt: state.prompt,
      ...(state.messages.length > 0 ? { messages: [...state.messages] } : {}),
    });
  }

  private transmit(frame: ClientFrame): void {
    const socket = this.socket;
    if (socket === null || !this.connected) return;
    try {
      socket.send(encodeClientFrame(frame));
    } catch (error) {
      // The socket is closing: its close event marks what was in flight as interrupted.
      this.log(`aistream: cannot send ${frame.type} for "${frame.requestId}": ${String(error)}`);
      socket.close();
    }
  }

  /** The request has had its last frame from the server (or will get none). */
  private end(draft: Draft): void {
    draft.awaiting = false;
    draft.state.timings.endedAt ??= this.now();
    this.dirty.add(draft.state.requestId);
  }

  // --- socket events ---------------------------------------------------------------------------

  private onOpen(socket: WebSocketLike): void {
    if (socket !== this.socket) return;
    this.connected = true;
    this.everConnected = true;
    this.openedAt = this.now();
    this.setConnection("connected");
    const queued = this.outbox;
    this.outbox = [];
    for (const id of queued) {
      const draft = this.drafts.get(id);
      if (draft !== undefined && draft.state.status === "streaming") this.sendGenerate(draft);
    }
    this.publish();
  }

  private onClose(socket: WebSocketLike): void {
    if (socket !== this.socket) return;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    this.socket = null;
    const wasConnected = this.connected;
    this.connected = false;
    for (const draft of this.drafts.values()) {
      if (!draft.awaiting) continue;
      this.end(draft);
      if (draft.stopRequested) continue; // already shown as stopped
      draft.state.status = "error";
      draft.state.error = {
        code: "interrupted",
        message: DEFAULT_MESSAGES.interrupted,
        retryable: true,
      };
    }
    if (wasConnected && this.now() - this.openedAt >= this.stableAfterMs) this.attempt = 0;
    this.setConnection(this.everConnected ? "reconnecting" : "connecting");
    this.scheduleReconnect();
    this.publish();
  }

  private scheduleReconnect(): void {
    if (this.disposed || this.reconnectTimer !== undefined) return;
    const delay = backoffDelay(this.attempt, this.backoff, this.random);
    this.attempt += 1;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      this.connect();
    }, delay);
  }

  private setConnection(status: ConnectionStatus): void {
    if (this.connection === status) return;
    this.connection = status;
    this.changed = true;
  }

  private onMessage(socket: WebSocketLike, data: unknown): void {
    if (socket !== this.socket) return;
    const parsed = parseServerFrame(data);
    if (!parsed.ok) {
      this.report(`malformed frame (${parsed.reason})`, data);
    } else {
      const { frame } = parsed;
      for (const warning of parsed.warnings) {
        this.report(`${frame.type} for "${frame.requestId}": ${warning}, ignored`, data);
      }
      this.apply(parsed, data);
    }
    this.schedule();
  }

  /** Apply one readable frame to its request. */
  private apply(parsed: ParsedFrame, data: unknown): void {
    const { frame } = parsed;
    const name = `${frame.type} for "${frame.requestId}"`;
    if (frame.type === "ai:error" && frame.requestId === "") {
      this.report(`ai:error without a request id: ${frame.code ?? "?"}: ${frame.message}`, data);
      return;
    }
    const draft = this.drafts.get(frame.requestId);
    if (draft === undefined) {
      this.report(`${name}: unknown request id`, data);
      return;
    }
    if (!draft.awaiting) {
      const when = draft.state.queued ? "before it was sent" : "after the request ended";
      this.report(`${name} ${when}`, data);
      return;
    }
    const { state } = draft;
    this.dirty.add(state.requestId);
    switch (frame.type) {
      case "ai:start": {
        if (state.started) {
          this.report(`${name}: a second ai:start`, data);
          return;
        }
        state.started = true;
        if (frame.model !== "") state.model = frame.model;
        return;
      }
      case "ai:token": {
        if (draft.stopRequested) return; // was in flight when the user pressed Stop
        if (!state.started) {
          this.report(`${name}: a token before ai:start`, data);
          state.started = true;
        }
        const count = frame.count > 0 ? frame.count : 1;
        if (!parsed.missing.includes("seq")) {
          if (frame.seq < draft.nextSeq) {
            this.report(
              `${name}: seq ${frame.seq}, expected ${draft.nextSeq} (duplicate, dropped)`,
              data,
            );
            return;
          }
          if (frame.seq > draft.nextSeq) {
            this.report(`${name}: seq ${frame.seq}, expected ${draft.nextSeq} (gap)`, data);
          }
          draft.nextSeq = frame.seq + count;
        } else {
          draft.nextSeq += count;
        }
        state.text += frame.chunk;
        state.tokens += count;
        state.timings.firstTokenAt ??= this.now();
        return;
      }
      case "ai:done": {
        this.end(draft);
        if (frame.usage !== undefined) state.usage = frame.usage;
        if (!parsed.missing.includes("durationMs")) state.timings.durationMs = frame.durationMs;
        if (draft.stopRequested) return; // finished as the user stopped it: stays stopped
        state.status = "done";
        if (frame.finishReason !== undefined) state.finishReason = frame.finishReason;
        if (!parsed.missing.includes("ttftMs") && state.tokens > 0) {
          state.timings.ttftMs = frame.ttftMs;
        }
        return;
      }
      case "ai:error": {
        this.end(draft);
        if (frame.usage !== undefined) state.usage = frame.usage;
        if (frame.durationMs > 0) state.timings.durationMs = frame.durationMs;
        if (draft.stopRequested || frame.code === "cancelled") {
          state.status = "cancelled"; // stopped, not failed: the text stays
          return;
        }
        const code = frame.code ?? "internal";
        state.status = "error";
        state.error = {
          code,
          message: frame.message !== "" ? frame.message : DEFAULT_MESSAGES[code],
          retryable: frame.retryable,
        };
        return;
      }
    }
  }

  private report(message: string, data: unknown): void {
    const error: ProtocolError = { message, frame: quoteFrame(data) };
    this.protocolErrors = [...this.protocolErrors.slice(1 - this.maxProtocolErrors), error];
    this.changed = true;
    this.log(`aistream: ${message}: ${error.frame}`);
  }

  // --- publishing ------------------------------------------------------------------------------

  /** Publish on the next frame (socket traffic). */
  private schedule(): void {
    if (this.cancelScheduled !== undefined || this.disposed) return;
    this.cancelScheduled = this.scheduleFrame(() => {
      this.cancelScheduled = undefined;
      this.publish();
    });
  }

  /** Publish now, if anything changed, and tell the listeners. */
  private publish(): void {
    this.cancelScheduled?.();
    this.cancelScheduled = undefined;
    if (!this.changed && this.dirty.size === 0) return;
    let requests = this.snapshot.requests;
    if (this.dirty.size > 0) {
      const next: Record<string, RequestState> = { ...requests };
      for (const id of this.dirty) {
        const draft = this.drafts.get(id);
        if (draft === undefined) delete next[id];
        else next[id] = { ...draft.state, timings: { ...draft.state.timings } };
      }
      requests = next;
      this.dirty.clear();
    }
    this.changed = false;
    this.snapshot = {
      connection: this.connection,
      order: this.order,
      requests,
      protocolErrors: this.protocolErrors,
    };
    for (const listener of [...this.listeners]) listener();
  }
}

/** Make a store (see `ChatStoreOptions`); call `connect()` to open the socket. */
export function createChatStore(options: ChatStoreOptions): ChatStore {
  return new ChatStore(options);
}

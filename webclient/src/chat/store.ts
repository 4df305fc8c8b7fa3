// The chat store: owns the connection (connection.ts) and every request, and publishes snapshots
// for the UI. No React in here, and no protocol logic: what a frame does to a request is
// reducer.ts, what the user's actions do is request.ts; the store calls them, sends what they
// call for, and keeps one entry per request id, in the order the user asked (a request that
// continues from another's tool results comes right after it: an agent loop reads top down).
//
// Frames update the store's requests at once (each update a new immutable object); subscribers
// see a new snapshot at most once per animation frame (`schedule`), so 800 tokens/s cost ~60
// renders/s, not 800. User actions (send, stop, retry) and connection changes publish
// immediately. Anything unexpected on the wire (a malformed frame, an unknown id, a seq gap or
// duplicate, a frame after the end) is reported in `protocolErrors` and logged with the frame
// quoted; it never throws.
//
// A generate that a busy server sheds (refused before it started, with a retry hint, shed.ts)
// is asked again by the store itself, like Retry: a new request id takes the refused one's place
// at once, waits out the hint (its `retryInS` counting down once a second, published like
// frames) and then goes out. Stop takes it back before it is sent. Each request id still gets
// one generate and one answer on the wire.
//
// Generations are resumable (`resumable: true`; docs/protocol.md "Resume: durable streams").
// When the socket drops, each one in flight that got its resume token waits, "reconnecting", for
// the connection (which reconnects with backoff, connection.ts) and is then resumed from the last
// position it holds (positions.ts): no word twice, none missing. Stop meanwhile shows it stopped
// at once and cancels it once connected. The answers in flight are kept in `storage`
// (sessionStorage, resume.ts) as they change, so a reloaded page shows and resumes them too.
// A resume the server cannot serve for now (`unavailable`, unavailable.ts) leaves the answer
// "reconnecting" again; the store resumes it once more after the server's hint, on the open
// socket (a closed one resumes it when it opens, as above), and Stop meanwhile cancels it with
// that resume.

import type { ChatMessage, ServerFrame } from "../generated/frames.ts";
import type { BackoffOptions } from "./backoff.ts";
import { Connection, type ConnectionStatus } from "./connection.ts";
import {
  DEFAULT_HISTORY_LIMITS,
  buildHistory,
  type HistoryLimits,
  type ToolResult,
} from "./history.ts";
import { newRequestId } from "./ids.ts";
import { quoteFrame, type ParseResult } from "./protocol.ts";
import { applyFrame } from "./reducer.ts";
import {
  answered,
  historyTurn,
  interrupted,
  newRequest,
  resumed,
  sent,
  stopped,
  waiting,
  type GenerateOptions,
  type Origin,
  type RequestRecord,
  type RequestState,
} from "./request.ts";
import {
  fromSaved,
  readSaved,
  resumeFrame,
  toSaved,
  writeSaved,
  type ResumeStorage,
  type SavedRequest,
} from "./resume.ts";
import { animationFrame, type FrameScheduler } from "./schedule.ts";
import { DEFAULT_SHED_RETRY, secondsLeft, shedRetryDelay, type ShedRetryOptions } from "./shed.ts";
import type { SocketFactory } from "./socket.ts";
import { resumeRetryDelay } from "./unavailable.ts";

export type { ConnectionStatus } from "./connection.ts";
export type { ToolResult } from "./history.ts";
export type { ShedRetryOptions } from "./shed.ts";
export type { ResumeStorage } from "./resume.ts";
export type {
  GenerateOptions,
  RequestError,
  RequestErrorCode,
  RequestState,
  RequestStatus,
  RequestTimings,
  StructuredOutput,
  ToolCallState,
  ToolChoice,
} from "./request.ts";

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
  /** Randomness for backoff, shed-retry and resume-retry jitter, [0, 1). */
  random?: () => number;
  /** A connection that stayed open this long (ms) resets the backoff. */
  stableAfterMs?: number;
  /** How a generate refused by a busy server is sent again by itself (see shed.ts). */
  shedRetry?: ShedRetryOptions;
  history?: HistoryLimits;
  /** Ask for resumable generations, resumed after a dropped socket (default true). */
  resumable?: boolean;
  /**
   * Where the answers in flight are kept across a page reload (the page: sessionStorage), and
   * read back from at start. Default: nowhere.
   */
  storage?: ResumeStorage | undefined;
  /** How many protocol errors to keep. */
  maxProtocolErrors?: number;
  /** Where protocol errors and connection trouble are logged (default `console.warn`). */
  log?: (message: string) => void;
}

const EMPTY: readonly never[] = Object.freeze([]);

export class ChatStore {
  private readonly scheduleFrame: FrameScheduler;
  private readonly now: () => number;
  private readonly makeId: () => string;
  private readonly random: () => number;
  private readonly shedRetry: ShedRetryOptions;
  private readonly historyLimits: HistoryLimits;
  private readonly resumable: boolean;
  private readonly storage: ResumeStorage | undefined;
  /** What was last written to `storage`, to write only changes. */
  private lastSaved = "[]";
  private readonly maxProtocolErrors: number;
  private readonly log: (message: string) => void;

  private readonly connection: Connection;
  private disposed = false;

  private readonly requests = new Map<string, RequestRecord>();
  private order: readonly string[] = EMPTY;
  /** Ids waiting for the connection, oldest first. */
  private outbox: string[] = [];
  /**
   * Ids waiting out a server's hint → its timer: a busy server's (the next countdown step), or
   * an unavailable resume's (the next resume).
   */
  private readonly retryTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private protocolErrors: readonly ProtocolError[] = EMPTY;

  /** Request ids changed since the last snapshot. */
  private readonly dirty = new Set<string>();
  /** Anything else changed since the last snapshot (the connection's status is compared). */
  private changed = false;
  private cancelScheduled: (() => void) | undefined;
  private snapshot: ChatSnapshot;
  private readonly listeners = new Set<() => void>();

  constructor(options: ChatStoreOptions) {
    this.scheduleFrame = options.scheduleFrame ?? animationFrame();
    this.now = options.now ?? (() => performance.now());
    this.makeId = options.newRequestId ?? newRequestId;
    this.random = options.random ?? Math.random;
    this.shedRetry = options.shedRetry ?? DEFAULT_SHED_RETRY;
    this.historyLimits = options.history ?? DEFAULT_HISTORY_LIMITS;
    this.resumable = options.resumable ?? true;
    this.storage = options.storage;
    this.maxProtocolErrors = options.maxProtocolErrors ?? 50;
    this.log = options.log ?? ((message) => console.warn(message));
    const { url, socketFactory, backoff, stableAfterMs } = options;
    this.connection = new Connection(
      {
        url,
        socketFactory,
        now: this.now,
        log: this.log,
        random: this.random,
        ...(backoff !== undefined ? { backoff } : {}),
        ...(stableAfterMs !== undefined ? { stableAfterMs } : {}),
      },
      {
        opened: () => this.onOpened(),
        closed: () => this.onClosed(),
        received: (parsed, data) => this.onReceived(parsed, data),
      },
    );
    this.snapshot = {
      connection: this.connection.status,
      order: this.order,
      requests: {},
      protocolErrors: this.protocolErrors,
    };
    this.restore(readSaved(this.storage));
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
    if (this.disposed) return;
    this.connection.connect();
  }

  /**
   * Ask a question, with tools or a responseFormat if `options` has them. The history of the
   * complete previous turns goes with it. Returns the new request id, or undefined for an empty
   * prompt. Sent at once when connected, else queued.
   */
  send(prompt: string, options: GenerateOptions = {}): string | undefined {
    const text = prompt.trim();
    if (this.disposed || text === "") return undefined;
    return this.begin(text, this.history(this.order), options);
  }

  /**
   * Send back the results of a finished request's tool calls: the next step of an agent loop.
   * A new request, with the same tools, carries the history up to that request, its calls and
   * these results (no prompt of its own); it takes its place right after it. Returns its id, or
   * undefined when the request's calls cannot be answered (not done, already answered, or a
   * result names no call of it).
   */
  sendToolResults(requestId: string, results: readonly ToolResult[]): string | undefined {
    const request = this.requests.get(requestId);
    if (this.disposed || request === undefined) return undefined;
    const next = answered(request, results);
    if (next === undefined) return undefined;
    this.update(next);
    const upTo = this.order.slice(0, this.order.indexOf(requestId) + 1);
    return this.begin("", this.history(upTo), request.state.options, { continues: requestId });
  }

  /**
   * Stop a streaming answer: sends `ai:cancel` and keeps the text received so far. One not sent
   * yet (waiting for the connection or for a busy server) is taken back: nothing is sent.
   */
  stop(requestId: string): void {
    const request = this.requests.get(requestId);
    if (request === undefined) return;
    const next = stopped(request, this.now());
    if (next === request) return; // not streaming
    this.update(next);
    if (request.state.queued) {
      this.outbox = this.outbox.filter((id) => id !== requestId);
      clearTimeout(this.retryTimers.get(requestId));
      this.retryTimers.delete(requestId);
    } else if (next.detached) {
      // The cancel goes out with its resume: don't wait for the backoff. (Open already, it waits
      // for the hint of an unavailable resume: a resume before then fails, cancel and all.)
      this.connection.connect();
    } else if (next.stopRequested) {
      this.connection.send({ type: "ai:cancel", requestId });
    }
    this.publish();
  }

  /**
   * Ask a failed request again, with the same prompt and history under a new request id, which
   * takes its place in the conversation. Returns the new id (undefined if it had not failed).
   */
  retry(requestId: string): string | undefined {
    const request = this.requests.get(requestId);
    if (this.disposed || request === undefined || request.state.status !== "error") {
      return undefined;
    }
    const { prompt, messages, options } = request.state;
    return this.begin(prompt, messages, options, retryOrigin(request.state));
  }

  /** Close the socket and stop reconnecting; the store is unusable afterwards. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.save(); // the page is going (a reload, perhaps): keep the latest of what it holds
    this.cancelScheduled?.();
    for (const timer of this.retryTimers.values()) clearTimeout(timer);
    this.retryTimers.clear();
    this.connection.close();
  }

  // --- requests --------------------------------------------------------------------------------

  /** The history of the complete turns among `ids`. */
  private history(ids: readonly string[]): ChatMessage[] {
    const turns = ids.map((id) => historyTurn(this.requests.get(id)!.state));
    return buildHistory(turns, this.historyLimits);
  }

  private begin(
    prompt: string,
    messages: readonly ChatMessage[],
    options: GenerateOptions,
    origin: Origin = {},
  ): string {
    const request = newRequest(this.makeId(), prompt, messages, options, origin);
    this.add(request, origin);
    this.dispatch(request);
    this.publish();
    return request.state.requestId;
  }

  /** Keep a new request in its place in the conversation (see `begin`). */
  private add(request: RequestRecord, origin: Origin): void {
    const { requestId } = request.state;
    this.requests.set(requestId, request);
    const replaces = origin.retryOf;
    const at = replaces === undefined ? -1 : this.order.indexOf(replaces);
    if (at >= 0) {
      this.order = [...this.order.slice(0, at), requestId, ...this.order.slice(at + 1)];
      this.requests.delete(replaces!);
      this.dirty.add(replaces!);
    } else if (origin.continues !== undefined) {
      // After the request it continues and whatever already continues from it.
      let after = this.order.indexOf(origin.continues);
      while (after + 1 < this.order.length && this.continuesFrom(this.order[after + 1]!, origin)) {
        after += 1;
      }
      this.order = [...this.order.slice(0, after + 1), requestId, ...this.order.slice(after + 1)];
    } else {
      this.order = [...this.order, requestId];
    }
    this.dirty.add(requestId);
    this.changed = true;
  }

  /** Send a queued request now, or as soon as the connection opens. */
  private dispatch(request: RequestRecord): void {
    if (this.connection.isOpen) {
      this.sendGenerate(request);
    } else {
      this.update(waiting(request, undefined));
      this.outbox.push(request.state.requestId);
      this.connection.connect(); // don't make a question wait for the backoff
    }
  }

  /**
   * If a busy server shed `refused` (shed.ts), ask again by itself: a new request takes its
   * place at once and goes out after the server's hint. Published with the frame that refused it.
   */
  private retryIfShed(refused: RequestRecord): void {
    const delay = shedRetryDelay(refused.state, refused.autoRetries, this.shedRetry, this.random);
    if (delay === undefined) return;
    const { prompt, messages, options } = refused.state;
    const origin = retryOrigin(refused.state, refused.autoRetries + 1);
    const request = newRequest(this.makeId(), prompt, messages, options, origin);
    this.add(request, origin);
    this.countDown(request.state.requestId, delay);
  }

  /**
   * `ms` before request `requestId` goes out by itself: show the whole seconds left and come back
   * when that number changes (at most once a second); at 0, send it.
   */
  private countDown(requestId: string, ms: number): void {
    this.retryTimers.delete(requestId);
    const request = this.requests.get(requestId);
    if (request === undefined || !request.state.queued) return;
    const inS = secondsLeft(ms);
    if (inS === 0) {
      this.dispatch(request);
      return;
    }
    this.update(waiting(request, inS));
    const step = ms - (inS - 1) * 1000;
    const timer = setTimeout(() => {
      this.countDown(requestId, ms - step);
      this.schedule();
    }, step);
    this.retryTimers.set(requestId, timer);
  }

  /** Whether request `id` is part of the chain that `origin.continues` started. */
  private continuesFrom(id: string, origin: Origin): boolean {
    let continues = this.requests.get(id)?.state.continues;
    while (continues !== undefined) {
      if (continues === origin.continues) return true;
      continues = this.requests.get(continues)?.state.continues;
    }
    return false;
  }

  private sendGenerate(request: RequestRecord): void {
    this.update(sent(request, this.now()));
    const { requestId, prompt, messages, options } = request.state;
    const { tools, toolChoice, responseFormat } = options;
    this.connection.send({
      type: "ai:generate",
      requestId,
      ...(prompt !== "" ? { prompt } : {}),
      ...(messages.length > 0 ? { messages: [...messages] } : {}),
      ...(tools !== undefined ? { tools: [...tools] } : {}),
      ...(toolChoice !== undefined ? { toolChoice } : {}),
      ...(responseFormat !== undefined ? { responseFormat } : {}),
      ...(this.resumable ? { resumable: true } : {}),
    });
  }

  /** Show the answers a previous page had in flight, to be resumed once connected. */
  private restore(saved: readonly SavedRequest[]): void {
    for (const item of saved) {
      if (this.requests.has(item.requestId)) continue;
      this.requests.set(item.requestId, fromSaved(item));
      this.order = [...this.order, item.requestId];
      this.dirty.add(item.requestId);
      this.changed = true;
    }
    this.publish();
  }

  /** Keep the answers in flight in `storage`, if they changed since last time. */
  private save(): void {
    if (this.storage === undefined) return;
    const saved = this.order
      .map((id) => this.requests.get(id))
      .map((request) => (request === undefined ? undefined : toSaved(request)))
      .filter((item): item is SavedRequest => item !== undefined);
    const text = JSON.stringify(saved);
    if (text === this.lastSaved) return;
    if (writeSaved(this.storage, saved)) this.lastSaved = text;
  }

  /** Keep the new version of a request, for the next snapshot. */
  private update(request: RequestRecord): void {
    this.requests.set(request.state.requestId, request);
    this.dirty.add(request.state.requestId);
  }

  // --- connection events -----------------------------------------------------------------------

  private onOpened(): void {
    for (const request of this.requests.values()) {
      if (request.detached) this.resume(request);
    }
    const queued = this.outbox;
    this.outbox = [];
    for (const id of queued) {
      const request = this.requests.get(id);
      if (request !== undefined && request.state.status === "streaming") this.sendGenerate(request);
    }
    this.publish();
  }

  /** Follow a detached request again on the open socket, and cancel it if it was stopped. */
  private resume(request: RequestRecord): void {
    const frame = resumeFrame(request);
    if (frame === undefined) return;
    clearTimeout(this.retryTimers.get(frame.requestId)); // resumed now: not again after a hint
    this.retryTimers.delete(frame.requestId);
    this.update(resumed(request));
    this.connection.send(frame);
    if (request.stopRequested)
      this.connection.send({ type: "ai:cancel", requestId: frame.requestId });
  }

  /**
   * A resume of `request` was answered `unavailable` (the frame detached it again, unavailable.ts):
   * resume it once more after the server's hint, if the socket is open then. A closed one resumes
   * it as it opens (and that clears this timer).
   */
  private resumeLater(request: RequestRecord, frame: ServerFrame): void {
    if (frame.type !== "ai:error") return;
    const { requestId } = request.state;
    const delay = resumeRetryDelay(frame, undefined, this.random);
    const timer = setTimeout(() => {
      this.retryTimers.delete(requestId);
      const current = this.requests.get(requestId);
      if (current === undefined || !current.detached || !this.connection.isOpen) return;
      this.resume(current);
      this.schedule();
    }, delay);
    this.retryTimers.set(requestId, timer);
  }

  private onClosed(): void {
    const now = this.now();
    for (const request of this.requests.values()) {
      const next = interrupted(request, now);
      if (next !== request) this.update(next);
    }
    this.publish();
  }

  private onReceived(parsed: ParseResult, data: unknown): void {
    if (!parsed.ok) {
      this.report(`malformed frame (${parsed.reason})`, data);
    } else {
      const request = this.requests.get(parsed.frame.requestId);
      const applied = applyFrame(request, parsed, this.now());
      for (const problem of applied.problems) this.report(problem, data);
      if (applied.request !== undefined && applied.request !== request) {
        this.update(applied.request);
        this.retryIfShed(applied.request);
        if (applied.request.detached) this.resumeLater(applied.request, parsed.frame);
      }
    }
    this.schedule();
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
    const connection = this.connection.status;
    if (!this.changed && this.dirty.size === 0 && connection === this.snapshot.connection) return;
    let requests = this.snapshot.requests;
    if (this.dirty.size > 0) {
      const next: Record<string, RequestState> = { ...requests };
      for (const id of this.dirty) {
        const request = this.requests.get(id);
        if (request === undefined) delete next[id];
        else next[id] = request.state;
      }
      requests = next;
      this.dirty.clear();
    }
    this.changed = false;
    this.save();
    this.snapshot = {
      connection,
      order: this.order,
      requests,
      protocolErrors: this.protocolErrors,
    };
    for (const listener of [...this.listeners]) listener();
  }
}

/** The origin of a request that asks `state`'s again: Retry, or resend `autoRetry` by the store. */
function retryOrigin(state: RequestState, autoRetry?: number): Origin {
  const origin: Origin = { retryOf: state.requestId };
  if (state.continues !== undefined) origin.continues = state.continues;
  if (autoRetry !== undefined) origin.autoRetry = autoRetry;
  return origin;
}

/** Make a store (see `ChatStoreOptions`); call `connect()` to open the socket. */
export function createChatStore(options: ChatStoreOptions): ChatStore {
  return new ChatStore(options);
}

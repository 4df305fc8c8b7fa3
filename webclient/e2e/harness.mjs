// What the end-to-end tests share: a real `aistream up` stack (and the fake OpenAI-compatible
// upstream) as child processes on port 0, the built web client, and Debian's headless Chromium
// driven by playwright-core. Nothing here sleeps to wait: processes are ready when they print
// their ready line, pages when the DOM says so (Playwright's auto-waiting).

import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync } from "node:fs";
import { createServer, connect } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

export const WEBCLIENT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const ROOT = resolve(WEBCLIENT, "..");
export const ARTIFACTS = join(WEBCLIENT, "e2e", "artifacts");
const VENV_BIN = join(ROOT, ".venv", "bin");
const AISTREAM = process.env["AISTREAM_E2E_AISTREAM"] ?? join(VENV_BIN, "aistream");
const PYTHON = process.env["AISTREAM_E2E_PYTHON"] ?? join(VENV_BIN, "python");
const CHROMIUM = process.env["AISTREAM_E2E_CHROMIUM"] ?? "/usr/bin/chromium";

/** Longest a process may take to print its ready line (a guard against hangs, not a wait). */
const START_TIMEOUT_MS = 30_000;
/** Longest one test may take before it fails (a hang must not stall the run). */
export const TEST_TIMEOUT_MS = 60_000;
/** How long SIGTERM gets before SIGKILL. */
const STOP_TIMEOUT_MS = 10_000;

/** CLOCK_MONOTONIC in seconds: the same clock as Python's `time.monotonic()` on Linux. */
export function monotonic() {
  return Number(process.hrtime.bigint()) / 1e9;
}

// --- the built web client ------------------------------------------------------------------------

function newestMtime(path) {
  const stat = statSync(path);
  if (!stat.isDirectory()) return stat.mtimeMs;
  let newest = 0;
  for (const entry of readdirSync(path)) newest = Math.max(newest, newestMtime(join(path, entry)));
  return newest;
}

/**
 * The bridge serves `webclient/dist`: build it when it is missing or older than its sources, so a
 * test never runs against a stale client. Runs once per test file (files run one at a time).
 */
export function ensureBuilt() {
  const index = join(WEBCLIENT, "dist", "index.html");
  const sources = ["src", "public", "index.html", "vite.config.ts", "package.json"].map((p) =>
    join(WEBCLIENT, p),
  );
  const newest = Math.max(...sources.filter(existsSync).map(newestMtime));
  if (existsSync(index) && statSync(index).mtimeMs >= newest) return;
  console.error("e2e: webclient/dist is missing or stale: running vite build");
  const vite = join(WEBCLIENT, "node_modules", "vite", "bin", "vite.js");
  const result = spawnSync(process.execPath, [vite, "build", "--logLevel", "warn"], {
    cwd: WEBCLIENT,
    stdio: "inherit",
  });
  if (result.status !== 0) throw new Error(`vite build failed (exit ${result.status})`);
}

// --- processes -------------------------------------------------------------------------------------

/** The environment of a child: this one without any aistream or upstream setting, plus `env`. */
function childEnv(env) {
  const clean = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !/^(AISTREAM_|OPENAI_)/.test(k)),
  );
  return { ...clean, PYTHONUNBUFFERED: "1", ...env };
}

/** Children still running: killed if this test process exits without stopping them. */
const running = new Set();
process.on("exit", () => {
  for (const proc of running) proc.kill("SIGKILL");
});

/** A child process whose output is kept (for failure reports) and read line by line. */
class Child {
  constructor(name, command, args, env) {
    this.name = name;
    this.output = [];
    this.proc = spawn(command, args, {
      cwd: ROOT,
      env: childEnv(env),
      stdio: ["ignore", "pipe", "pipe"],
    });
    running.add(this.proc);
    this.exited = new Promise((resolveExit) => {
      this.proc.on("exit", (code, signal) => {
        running.delete(this.proc);
        resolveExit({ code, signal });
      });
    });
    this.exitStatus = undefined;
    this.exited.then((status) => (this.exitStatus = status));
    this.lineWaiters = [];
    for (const [stream, tag] of [
      [this.proc.stdout, "out"],
      [this.proc.stderr, "err"],
    ]) {
      let partial = "";
      stream.setEncoding("utf8");
      stream.on("data", (data) => {
        const lines = (partial + data).split("\n");
        partial = lines.pop();
        for (const line of lines) this.onLine(tag, line);
      });
    }
  }

  get pid() {
    return this.proc.pid;
  }

  onLine(tag, line) {
    this.output.push(`[${this.name} ${tag}] ${line}`);
    for (const waiter of [...this.lineWaiters]) waiter(tag, line);
  }

  /** Resolves with the first match of `pattern` in a stdout line; rejects if the process exits. */
  waitForLine(pattern, what) {
    return new Promise((resolveLine, reject) => {
      const timer = setTimeout(
        () => done(new Error(`${this.name}: no ${what} in time`)),
        START_TIMEOUT_MS,
      );
      const waiter = (tag, line) => {
        const match = tag === "out" ? pattern.exec(line) : null;
        if (match) done(null, match);
      };
      const done = (error, match) => {
        clearTimeout(timer);
        this.lineWaiters = this.lineWaiters.filter((w) => w !== waiter);
        if (error) reject(new Error(`${error.message}\n${this.log()}`));
        else resolveLine(match);
      };
      this.lineWaiters.push(waiter);
      this.exited.then((status) =>
        done(new Error(`${this.name} exited (${JSON.stringify(status)}) before its ${what}`)),
      );
    });
  }

  /** Everything it printed. */
  log() {
    return this.output.join("\n");
  }

  /** SIGTERM, then SIGKILL if it has not exited in time. Resolves with the exit status. */
  async stop() {
    if (this.exitStatus !== undefined) return this.exitStatus;
    this.proc.kill("SIGTERM");
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), STOP_TIMEOUT_MS);
    const status = await this.exited;
    clearTimeout(timer);
    return status;
  }

  /** SIGKILL, at once. */
  async kill() {
    if (this.exitStatus !== undefined) return this.exitStatus;
    this.proc.kill("SIGKILL");
    return this.exited;
  }
}

/** The ids of the live processes whose parent is `pid` (from /proc; Linux only). */
export function childPids(pid) {
  const pids = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ")".
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(fields[1]) === pid && fields[0] !== "Z") pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/** Whether a process is alive (and not a zombie). */
export function alive(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** Poll `check` every `everyMs` until it returns something truthy; rejects after `timeoutMs`. */
export async function poll(check, { timeoutMs = 10_000, everyMs = 25, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Start `aistream up` on 127.0.0.1 (`port` 0: any free one) and resolve once it prints
 * "aistream is up: open URL". Fast simulated model by default; `env` adds or overrides settings.
 */
export async function startStack({ port = 0, env = {} } = {}) {
  const child = new Child(
    "aistream",
    AISTREAM,
    ["up", "--host", "127.0.0.1", "--port", String(port)],
    {
      AISTREAM_LOG_LEVEL: "INFO",
      AISTREAM_SIMULATED_TTFT: "0.1",
      AISTREAM_SIMULATED_TOKENS_PER_S: "40",
      AISTREAM_DRAIN_TIMEOUT: "1",
      ...env,
    },
  );
  const match = await child.waitForLine(/^aistream is up: open (http:\/\/\S+)/, "ready line");
  // The URL to open, as printed: with `?token=…` when the bridge wants a browser token.
  const url = match[1];
  return {
    url,
    /** The page without any query: `http://127.0.0.1:PORT/`. */
    base: `${new URL(url).origin}/`,
    port: Number(new URL(url).port),
    pid: child.pid,
    log: () => child.log(),
    stop: () => child.stop(),
    kill: () => child.kill(),
    exited: child.exited,
  };
}

/** Start the fake OpenAI-compatible upstream (`script`: its default script) on a free port. */
export async function startFakeUpstream({ script } = {}) {
  const args = ["-m", "aistream.testing.fake_upstream", "--port", "0"];
  if (script !== undefined) args.push("--script", JSON.stringify(script));
  const child = new Child("fake-upstream", PYTHON, args, {});
  const match = await child.waitForLine(
    /fake-upstream listening on (http:\/\/\S+\/v1)/,
    "ready line",
  );
  const baseUrl = match[1];
  const control = new URL("/_fake/", baseUrl).toString();
  return {
    baseUrl,
    log: () => child.log(),
    stop: () => child.stop(),
    /** Every request it got, as `RequestRecord.to_json()`. */
    async records() {
      const response = await fetch(`${control}records`);
      if (!response.ok) throw new Error(`GET /_fake/records: ${response.status}`);
      const body = await response.json();
      return Array.isArray(body) ? body : body.records;
    },
    async setScript(json) {
      const response = await fetch(`${control}script`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(json),
      });
      if (!response.ok)
        throw new Error(`POST /_fake/script: ${response.status} ${await response.text()}`);
    },
  };
}

/**
 * A TCP proxy on a free port to 127.0.0.1:`port` (a stack), through which a page can be opened.
 * `cut()` resets every connection through it at once: the browser and the bridge see the socket
 * die with no close frame, as on a network change; with `refuseMs`, new connections are reset
 * too for that long (the page stays disconnected).
 */
export async function startCutProxy(port) {
  const pairs = new Set();
  let refuseUntil = 0;
  const server = createServer((client) => {
    if (Date.now() < refuseUntil) {
      client.resetAndDestroy();
      return;
    }
    const upstream = connect(port, "127.0.0.1");
    const pair = [client, upstream];
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of pair) {
      socket.on("error", drop);
      socket.on("close", drop);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const proxyPort = server.address().port;
  return {
    url: `http://127.0.0.1:${proxyPort}/`,
    /** Reset every connection through the proxy; returns how many there were. */
    cut({ refuseMs = 0 } = {}) {
      refuseUntil = Date.now() + refuseMs;
      const cut = [...pairs];
      pairs.clear();
      for (const pair of cut) for (const socket of pair) socket.resetAndDestroy();
      return cut.length;
    },
    close() {
      for (const pair of pairs) for (const socket of pair) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve(undefined)));
    },
  };
}

// --- the browser -------------------------------------------------------------------------------

/**
 * Debian's Chromium, headless, with no network of its own: no background services, no QUIC, a
 * fresh temporary profile (Playwright makes one per launch and removes it on close).
 */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/**
 * A page on the chat at `url`, laptop-sized, recording what the test needs to judge it: every
 * WebSocket frame both ways (`frames`, parsed), page errors and console messages.
 */
export async function openChat(browser, url, { viewport = { width: 1280, height: 800 } } = {}) {
  const context = await browser.newContext({
    viewport,
    colorScheme: "light",
    reducedMotion: "no-preference",
  });
  const page = await context.newPage();
  const frames = [];
  const problems = [];
  const consoleLines = [];
  page.on("pageerror", (error) => problems.push(`pageerror: ${error.message}`));
  page.on("console", (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
  page.on("response", (response) => {
    if (response.status() >= 400) problems.push(`HTTP ${response.status()} ${response.url()}`);
  });
  const sockets = [];
  page.on("websocket", (socket) => {
    sockets.push(socket.url());
    const record = (dir) => (event) => {
      let frame;
      try {
        frame = JSON.parse(String(event.payload));
      } catch {
        frame = { raw: String(event.payload) };
      }
      frames.push({ dir, at: monotonic(), socket: socket.url(), ...frame });
    };
    socket.on("framesent", record("out"));
    socket.on("framereceived", record("in"));
  });
  await page.goto(url);
  return new Chat(page, frames, problems, consoleLines, sockets);
}

/** The chat page as a person uses it, plus what was recorded. */
export class Chat {
  constructor(page, frames, problems, consoleLines, sockets) {
    this.page = page;
    /** The URL of every WebSocket the page opened, in order. */
    this.sockets = sockets;
    this.frames = frames;
    this.problems = problems;
    this.consoleLines = consoleLines;
  }

  get status() {
    return this.page.getByTestId("connection-status");
  }

  /** Wait until the connection status shows `state` (connecting, connected, reconnecting). */
  async waitForConnection(state, timeout = 15_000) {
    await this.page
      .locator(`[data-testid="connection-status"][data-state="${state}"]`)
      .waitFor({ timeout });
  }

  /** Type a prompt, press Send; resolves with the new answer's request id. */
  async ask(prompt) {
    const before = await this.page.locator("article[data-request-id]").count();
    await this.page.getByRole("textbox", { name: "Prompt" }).fill(prompt);
    await this.page.getByRole("button", { name: "Send" }).click();
    const article = this.page.locator("article[data-request-id]").nth(before);
    await article.waitFor();
    return article.getAttribute("data-request-id");
  }

  answer(id) {
    return this.page.locator(`article[data-request-id="${id}"]`);
  }

  /** Wait until answer `id` has status `status` (streaming, done, error, cancelled). */
  async waitForStatus(id, status, timeout = 15_000) {
    await this.page
      .locator(`article[data-request-id="${id}"][data-status="${status}"]`)
      .waitFor({ timeout });
  }

  /**
   * Wait until answer `id` is streaming and shows at least `words` words of text. Fails at once,
   * saying how it ended, if it ends first.
   */
  async waitForStreamingText(id, words = 1, timeout = 15_000) {
    const handle = await this.page.waitForFunction(
      ([id, words]) => {
        const article = document.querySelector(`article[data-request-id="${id}"]`);
        if (article === null) return false;
        const status = article.getAttribute("data-status");
        if (status !== "streaming") {
          const error = article.querySelector(".error-message")?.textContent;
          return `it ended "${status}" first${error ? `: ${error}` : ""}`;
        }
        const text = article.querySelector(".answer-text")?.textContent ?? "";
        return text.split(/\s+/).filter(Boolean).length >= words ? "ok" : false;
      },
      [id, words],
      { timeout },
    );
    const outcome = await handle.jsonValue();
    if (outcome !== "ok")
      throw new Error(`waiting for ${words} words of ${id} streaming: ${outcome}`);
  }

  /** The answer's rendered text. */
  async text(id) {
    return (await this.answer(id).locator(".answer-text").textContent()) ?? "";
  }

  /** Frames received for one request id, in order. */
  received(id) {
    return this.frames.filter((f) => f.dir === "in" && f.requestId === id);
  }

  /** What to print when a test fails. */
  report() {
    return [
      "--- page problems",
      ...this.problems,
      "--- console",
      ...this.consoleLines,
      "--- frames",
      ...this.frames.map((f) => JSON.stringify(f)),
    ].join("\n");
  }

  /** Protocol warnings the page listed (an empty list is what every test expects). */
  async protocolWarnings() {
    return this.page.locator(".protocol-errors li").allTextContents();
  }
}

const PART_TYPES = ["ai:token", "ai:reasoning", "ai:tool_call", "ai:tool_args", "ai:refusal"];

/**
 * The frames the page received for `id` (on every socket) make one well-formed generation: one
 * ai:start, parts numbered with no gap and no repeat across every kind (an ai:tool_call covers
 * one number) — from 0, or, in a resumable generation, from 1 after the start's 0 and with the
 * terminal at the next position — and one terminal frame of type `terminal`. Returns the frames,
 * the terminal frame, the parts' types in order and the answer tokens counted.
 */
export function assertGeneration(chat, id, terminal) {
  const frames = chat.received(id);
  const types = frames.map((f) => f.type);
  assert.equal(types[0], "ai:start", `first frame for ${id}`);
  assert.equal(types.at(-1), terminal, `last frame for ${id}: ${JSON.stringify(frames.at(-1))}`);
  const parts = frames.slice(1, -1);
  const resumable = frames[0].seq !== undefined;
  if (resumable) assert.equal(typeof frames[0].resumeToken, "string", "a resumable start's token");
  let next = resumable ? frames[0].seq + 1 : 0;
  let tokens = 0;
  for (const part of parts) {
    assert.ok(PART_TYPES.includes(part.type), `a part: ${JSON.stringify(part)}`);
    assert.equal(part.seq, next, `seq of ${JSON.stringify(part)}`);
    next += part.type === "ai:tool_call" ? 1 : part.count;
    if (part.type === "ai:token") tokens += part.count;
  }
  if (resumable) assert.equal(frames.at(-1).seq, next, "the terminal's position");
  return { frames, end: frames.at(-1), kinds: parts.map((f) => f.type), tokens };
}

export function ensureArtifacts() {
  mkdirSync(ARTIFACTS, { recursive: true });
  return ARTIFACTS;
}

// --- one scenario ----------------------------------------------------------------------------------

let sharedBrowser;

/** The file's browser (launched on first use, closed by `closeBrowser`). */
function browser() {
  sharedBrowser ??= launchBrowser();
  return sharedBrowser;
}

/** Close the file's browser, if one was launched (call it from `after`). */
export async function closeBrowser() {
  if (sharedBrowser === undefined) return;
  const launched = sharedBrowser;
  sharedBrowser = undefined;
  await (await launched).close();
}

/**
 * Run one scenario with what it starts registered for clean-up (pages first, then the stacks, then
 * fake upstreams, each stopped with SIGTERM then SIGKILL). When it fails, the error carries every
 * process's output and every page's frames, console and errors.
 */
export async function scenario(body) {
  const cleanups = [];
  const reports = [];
  const s = {
    async stack(options) {
      const stack = await startStack(options);
      let killed = false;
      const kill = stack.kill;
      stack.kill = () => {
        killed = true;
        return kill();
      };
      cleanups.push([1, () => stack.stop(), () => killed]);
      reports.push(() => `=== aistream up (port ${stack.port})\n${stack.log()}`);
      return stack;
    },
    async fake(options) {
      const fake = await startFakeUpstream(options);
      cleanups.push([2, () => fake.stop(), () => false]);
      reports.push(() => `=== fake upstream\n${fake.log()}`);
      return fake;
    },
    async proxy(port) {
      const proxy = await startCutProxy(port);
      cleanups.push([0.5, () => proxy.close(), () => false]);
      return proxy;
    },
    async chat(url, options) {
      const chat = await openChat(await browser(), url, options);
      cleanups.push([0, async () => void (await chat.page.context().close()), () => false]);
      reports.push(() => `=== page ${url}\n${chat.report()}`);
      return chat;
    },
  };
  const detail = () => reports.map((report) => report()).join("\n");
  try {
    await body(s);
  } catch (error) {
    await cleanUp(cleanups);
    if (error instanceof Error) error.message += `\n\n${detail()}`;
    throw error;
  }
  // Every process the test did not kill itself must stop cleanly on SIGTERM: exit 0.
  const unclean = await cleanUp(cleanups);
  if (unclean.length > 0) throw new Error(`${unclean.join("; ")}\n\n${detail()}`);
}

/** Close pages first (their sockets close, so the stacks drain at once), then processes. */
async function cleanUp(cleanups) {
  const unclean = [];
  cleanups.sort((a, b) => a[0] - b[0]);
  for (const [, cleanup, killedOnPurpose] of cleanups) {
    try {
      const status = await cleanup();
      if (status !== undefined && status.code !== 0 && !killedOnPurpose())
        unclean.push(`a process did not exit cleanly on SIGTERM: ${JSON.stringify(status)}`);
    } catch (error) {
      unclean.push(`clean-up failed: ${error}`);
    }
  }
  return unclean;
}

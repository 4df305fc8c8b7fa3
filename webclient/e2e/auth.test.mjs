// The bridge's optional browser token: a page opened as /?token=… passes it on to /ws?token=…
// (browsers cannot set headers on a WebSocket), so it gets in; a page without it does not.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { TEST_TIMEOUT_MS, closeBrowser, ensureBuilt, poll, scenario } from "./harness.mjs";

before(() => ensureBuilt());
after(() => closeBrowser());

test(
  "a page opened with ?token= carries it to the socket; without it the bridge refuses",
  { timeout: TEST_TIMEOUT_MS },
  async () => {
    await scenario(async (s) => {
      const token = "s3cret+/=&é"; // characters a query must encode
      const stack = await s.stack({ env: { AISTREAM_AUTH_TOKEN: token } });
      const refusals = () =>
        stack
          .log()
          .split("\n")
          .filter((line) => line.includes("handshake refused (401"));

      // The URL `aistream up` prints carries the token; opened as is, the page gets in.
      assert.equal(new URL(stack.url).searchParams.get("token"), token);
      const printed = await s.chat(stack.url);
      await printed.waitForConnection("connected");
      const id = await printed.ask("Hello with a token");
      await printed.waitForStatus(id, "done");
      const socketUrl = new URL(printed.frames[0].socket);
      assert.equal(socketUrl.pathname, "/ws");
      assert.equal(socketUrl.searchParams.get("token"), token);

      // Only the token goes along, however the page's query is written.
      const other = await s.chat(`${stack.base}?lang=en&token=${encodeURIComponent(token)}#x`);
      await other.waitForConnection("connected");
      const otherSocket = new URL(other.sockets[0]);
      assert.equal(
        `${otherSocket.origin}${otherSocket.pathname}`,
        `${stack.base.replace("http", "ws")}ws`,
      );
      assert.deepEqual([...otherSocket.searchParams], [["token", token]]);

      // Without it: refused (401), the page stays "connecting", nothing is exchanged.
      const before = refusals().length;
      const without = await s.chat(stack.base);
      await poll(() => refusals().length > before, { what: "the bridge to refuse the handshake" });
      assert.equal(await without.status.getAttribute("data-state"), "connecting");
      assert.deepEqual(without.frames, []);
      assert.deepEqual([...printed.problems, ...other.problems, ...without.problems], []);
    });
  },
);

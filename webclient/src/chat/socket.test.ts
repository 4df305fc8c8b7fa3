import { describe, expect, it } from "vitest";

import { bridgeUrl } from "./socket.ts";

describe("bridgeUrl", () => {
  it("is /ws on the page's host, ws: for http: and wss: for https:", () => {
    expect(bridgeUrl("http://127.0.0.1:8080/")).toBe("ws://127.0.0.1:8080/ws");
    expect(bridgeUrl("https://chat.example.com/some/page?x=1#y")).toBe("wss://chat.example.com/ws");
    expect(bridgeUrl("http://[::1]:5173/index.html")).toBe("ws://[::1]:5173/ws");
  });
});
